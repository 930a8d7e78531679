//! JavaScript's number/string conversions, which JSON Logic inherits from json-logic-js:
//! `Number(string)`, `parseFloat(string)` and `String(number)`. Formatting goes through a stack
//! buffer so the common cases allocate nothing.

use std::fmt::{self, Write as _};

/// A fixed-capacity string on the stack, for formatting numbers without allocating.
pub(crate) struct StackStr<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> StackStr<N> {
    pub(crate) fn new() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only whole `&str`s are ever appended, so the bytes are valid UTF-8.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Write for StackStr<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > N {
            return Err(fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Enough for any `f64` in JavaScript's notation (at most 17 significant digits, 21 integer
/// digits, a sign, a point and an exponent).
pub(crate) type NumberStr = StackStr<40>;

/// `String(n)` in JavaScript (Number::toString): shortest round-trip digits, plain notation for
/// 1e-7 < |n| < 1e21, exponent notation (`1e+21`, `1.5e-7`) outside.
pub(crate) fn number_to_string(n: f64) -> NumberStr {
    let mut out = NumberStr::new();
    let _ = write_number(n, &mut out);
    out
}

fn write_number(n: f64, out: &mut impl fmt::Write) -> fmt::Result {
    if n.is_nan() {
        return out.write_str("NaN");
    }
    if n.is_infinite() {
        return out.write_str(if n > 0.0 { "Infinity" } else { "-Infinity" });
    }
    if n == 0.0 {
        return out.write_str("0");
    }
    if n.fract() == 0.0 && n.abs() < 1e21 {
        // Integers below 2^63 print exactly as JavaScript prints them.
        if n.abs() < 9.2e18 {
            return write!(out, "{}", n as i64);
        }
    }
    // Shortest round-trip digits and the decimal exponent, e.g. "1.2345e3".
    let mut scientific = StackStr::<40>::new();
    write!(scientific, "{:e}", n.abs())?;
    let text = scientific.as_str();
    let (mantissa, exponent) = text.split_once('e').unwrap_or((text, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let mut digits = StackStr::<24>::new();
    for c in mantissa.chars().filter(char::is_ascii_digit) {
        digits.write_char(c)?;
    }
    let digits = digits.as_str();
    let k = digits.len() as i32;
    let point = exponent + 1; // JavaScript's `n`: the position of the decimal point.
    if n < 0.0 {
        out.write_char('-')?;
    }
    if k <= point && point <= 21 {
        out.write_str(digits)?;
        for _ in 0..(point - k) {
            out.write_char('0')?;
        }
    } else if 0 < point && point <= 21 {
        let (int, frac) = digits.split_at(point as usize);
        write!(out, "{int}.{frac}")?;
    } else if -6 < point && point <= 0 {
        out.write_str("0.")?;
        for _ in 0..(-point) {
            out.write_char('0')?;
        }
        out.write_str(digits)?;
    } else {
        let (first, rest) = digits.split_at(1);
        out.write_str(first)?;
        if !rest.is_empty() {
            write!(out, ".{rest}")?;
        }
        let e = point - 1;
        write!(out, "e{}{}", if e >= 0 { "+" } else { "-" }, e.abs())?;
    }
    Ok(())
}

fn is_js_whitespace(c: char) -> bool {
    c.is_whitespace() || c == '\u{feff}'
}

/// `Number(s)` in JavaScript: the whole (trimmed) string must be a number; empty means 0.
pub(crate) fn string_to_number(s: &str) -> f64 {
    let t = s.trim_matches(is_js_whitespace);
    if t.is_empty() {
        return 0.0;
    }
    let (sign, unsigned) = match t.as_bytes()[0] {
        b'-' => (-1.0, &t[1..]),
        b'+' => (1.0, &t[1..]),
        _ => (1.0, t),
    };
    if unsigned == "Infinity" {
        return sign * f64::INFINITY;
    }
    if sign == 1.0 && t.as_bytes()[0] != b'+' {
        for (prefix, radix) in [
            ("0x", 16),
            ("0X", 16),
            ("0o", 8),
            ("0O", 8),
            ("0b", 2),
            ("0B", 2),
        ] {
            if let Some(body) = t.strip_prefix(prefix) {
                return radix_to_number(body, radix);
            }
        }
    }
    if decimal_literal_len(unsigned) == unsigned.len() && !unsigned.is_empty() {
        unsigned.parse::<f64>().map_or(f64::NAN, |n| sign * n)
    } else {
        f64::NAN
    }
}

fn radix_to_number(body: &str, radix: u32) -> f64 {
    if body.is_empty() {
        return f64::NAN;
    }
    let mut n = 0.0f64;
    for c in body.chars() {
        match c.to_digit(radix) {
            Some(d) => n = n * f64::from(radix) + f64::from(d),
            None => return f64::NAN,
        }
    }
    n
}

/// Length of the longest prefix of `s` that is a JavaScript StrUnsignedDecimalLiteral
/// (`digits[.digits][e[+-]digits]` or `.digits[...]`), 0 when there is none.
fn decimal_literal_len(s: &str) -> usize {
    let b = s.as_bytes();
    let digits_from = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let int_end = digits_from(0);
    let mut end = int_end;
    let mut has_digits = int_end > 0;
    if end < b.len() && b[end] == b'.' {
        let frac_end = digits_from(end + 1);
        if frac_end > end + 1 || has_digits {
            has_digits |= frac_end > end + 1;
            end = frac_end;
        }
    }
    if !has_digits {
        return 0;
    }
    if end < b.len() && (b[end] == b'e' || b[end] == b'E') {
        let mut i = end + 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let exp_end = digits_from(i);
        if exp_end > i {
            end = exp_end;
        }
    }
    end
}

/// `parseFloat(s)` in JavaScript: the longest numeric prefix after leading whitespace; NaN when
/// there is none.
pub(crate) fn parse_float(s: &str) -> f64 {
    let t = s.trim_start_matches(is_js_whitespace);
    let (sign, unsigned) = match t.as_bytes().first() {
        Some(b'-') => (-1.0, &t[1..]),
        Some(b'+') => (1.0, &t[1..]),
        _ => (1.0, t),
    };
    if unsigned.starts_with("Infinity") {
        return sign * f64::INFINITY;
    }
    let len = decimal_literal_len(unsigned);
    if len == 0 {
        return f64::NAN;
    }
    unsigned[..len]
        .parse::<f64>()
        .map_or(f64::NAN, |n| sign * n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_like_javascript() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-3.0, "-3"),
            (0.1, "0.1"),
            (1.5, "1.5"),
            (123456789.125, "123456789.125"),
            (1e21, "1e+21"),
            (1.5e22, "1.5e+22"),
            (1e20, "100000000000000000000"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (-2.5e-8, "-2.5e-8"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (n, expected) in cases {
            assert_eq!(number_to_string(n).as_str(), expected, "{n}");
        }
    }

    #[test]
    fn strings_convert_like_javascript() {
        assert_eq!(string_to_number(""), 0.0);
        assert_eq!(string_to_number("  42 "), 42.0);
        assert_eq!(string_to_number("-1.5e3"), -1500.0);
        assert_eq!(string_to_number("0x10"), 16.0);
        assert_eq!(string_to_number(".5"), 0.5);
        assert_eq!(string_to_number("5."), 5.0);
        assert!(string_to_number("inf").is_nan());
        assert!(string_to_number("1a").is_nan());
        assert!(string_to_number("--1").is_nan());
        assert_eq!(string_to_number("-Infinity"), f64::NEG_INFINITY);
        assert_eq!(parse_float("3.5abc"), 3.5);
        assert_eq!(parse_float("  -2e2x"), -200.0);
        assert!(parse_float("abc").is_nan());
        assert!(parse_float("").is_nan());
        assert_eq!(parse_float("1e"), 1.0);
    }
}

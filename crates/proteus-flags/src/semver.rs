//! flagd's `sem_ver` operator.
//!
//! flagd compares versions with Go's `golang.org/x/mod/semver` after prefixing a `v` (a leading
//! `V` becomes `v`, an existing `v` is kept). That package accepts *partial* versions (`1`,
//! `1.2` mean `1.0.0`, `1.2.0`), which the `semver` crate does not, so this module is a small
//! parser with the same rules:
//!
//! - `MAJOR[.MINOR[.PATCH[-PRERELEASE][+BUILD]]]`, numbers without leading zeros; pre-release
//!   and build only on full versions; identifiers `[0-9A-Za-z-]`, non-empty, numeric pre-release
//!   identifiers without leading zeros;
//! - build metadata is ignored; a pre-release sorts before its release; pre-release identifiers
//!   compare numerically (numbers first) or in ASCII order;
//! - numbers in the context are formatted as Go's `%v` does (`1.2`, `2`; `1e+06` from one
//!   million up, which is then not a version);
//! - `^` matches the same major version, `~` the same major and minor (flagd's definitions,
//!   which ignore pre-releases: `^0.1.0` matches `0.9.0`).
//!
//! Any argument that is not a version, or an unknown operator, makes the operation `null`, so
//! targeting falls back to the default variant (flagd's behaviour).

use std::cmp::Ordering;
use std::ops::Range;

use serde_json::Value;

use crate::error::json_type;
use crate::logic::js::StackStr;
use crate::logic::value::Val;
use crate::logic::{
    Args, Env, Failure, Node, Position, RuleCompiler, Scope, is_operation, root_value,
};

/// A version borrowed from its text. `minor`/`patch` are `"0"` when omitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Version<'t> {
    major: &'t str,
    minor: &'t str,
    patch: &'t str,
    /// With its leading `-`, or empty.
    prerelease: &'t str,
}

/// Parses a version as flagd normalises it: an optional leading `v` or `V`.
pub(crate) fn parse(text: &str) -> Option<Version<'_>> {
    let spans = parse_spans(text)?;
    Some(spans.view(text))
}

/// A version without pre-release or build, as numbers: `[major, minor, patch]`.
pub(crate) type Plain = [u64; 3];

/// Fast path for the usual `[v]MAJOR[.MINOR[.PATCH]]`: parses it into numbers without building
/// a [`Version`], so comparing two plain versions is comparing two arrays. `None` for anything
/// else (pre-release, build metadata, a number over 19 digits, or not a version), which then
/// takes the general path. When it is `Some`, [`parse`] accepts the same text and its parts
/// are these numbers (a property test checks it), so both paths agree.
// Always inlined: returned through memory, the 32-byte result costs more than the parse.
#[inline(always)]
pub(crate) fn parse_plain(text: &str) -> Option<Plain> {
    let b = text.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'v' | b'V')));
    let mut parts = [0u64; 3];
    for (index, part) in parts.iter_mut().enumerate() {
        let start = i;
        let mut n: u64 = 0;
        while let Some(&digit) = b.get(i).filter(|d| d.is_ascii_digit()) {
            // 19 digits always fit a u64; longer numbers go to the general path.
            if i - start == 19 {
                return None;
            }
            n = n * 10 + u64::from(digit - b'0');
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || (digits > 1 && b[start] == b'0') {
            return None;
        }
        *part = n;
        match b.get(i) {
            None => return Some(parts),
            Some(b'.') if index < 2 => i += 1,
            Some(_) => return None,
        }
    }
    None
}

/// A version literal parsed at compile time: its text and where its parts are.
#[derive(Debug)]
pub(crate) struct OwnedVersion {
    text: Box<str>,
    spans: Spans,
    /// The version as numbers when it is plain (see [`parse_plain`]).
    plain: Option<Plain>,
}

impl OwnedVersion {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let spans = parse_spans(text)?;
        Some(Self {
            text: text.into(),
            spans,
            plain: parse_plain(text),
        })
    }

    pub(crate) fn version(&self) -> Version<'_> {
        self.spans.view(&self.text)
    }
}

#[derive(Debug, Clone)]
struct Spans {
    major: Range<usize>,
    minor: Option<Range<usize>>,
    patch: Option<Range<usize>>,
    prerelease: Range<usize>,
}

impl Spans {
    fn view<'t>(&self, text: &'t str) -> Version<'t> {
        Version {
            major: &text[self.major.clone()],
            minor: self.minor.clone().map_or("0", |r| &text[r]),
            patch: self.patch.clone().map_or("0", |r| &text[r]),
            prerelease: &text[self.prerelease.clone()],
        }
    }
}

fn parse_spans(text: &str) -> Option<Spans> {
    let b = text.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'v' | b'V')));
    let number = |i: usize| -> Option<usize> {
        let mut end = i;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let ok = end > i && (end - i == 1 || b[i] != b'0');
        ok.then_some(end)
    };
    let major_end = number(i)?;
    let major = i..major_end;
    i = major_end;
    let empty = i..i;
    if i == b.len() {
        return Some(Spans {
            major,
            minor: None,
            patch: None,
            prerelease: empty,
        });
    }
    if b[i] != b'.' {
        return None;
    }
    let minor_end = number(i + 1)?;
    let minor = Some(i + 1..minor_end);
    i = minor_end;
    if i == b.len() {
        return Some(Spans {
            major,
            minor,
            patch: None,
            prerelease: i..i,
        });
    }
    if b[i] != b'.' {
        return None;
    }
    let patch_end = number(i + 1)?;
    let patch = Some(i + 1..patch_end);
    i = patch_end;
    let mut prerelease = i..i;
    if i < b.len() && b[i] == b'-' {
        let end = text[i + 1..].find('+').map_or(b.len(), |p| i + 1 + p);
        if !identifiers_valid(&text[i + 1..end], true) {
            return None;
        }
        prerelease = i..end;
        i = end;
    }
    if i < b.len() && (b[i] != b'+' || !identifiers_valid(&text[i + 1..], false)) {
        return None;
    }
    Some(Spans {
        major,
        minor,
        patch,
        prerelease,
    })
}

fn identifiers_valid(list: &str, prerelease: bool) -> bool {
    list.split('.').all(|id| {
        !id.is_empty()
            && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && !(prerelease && is_number(id) && id.len() > 1 && id.starts_with('0'))
    })
}

fn is_number(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|c| c.is_ascii_digit())
}

/// Compares digit strings without leading zeros: longer is larger, then lexically.
fn compare_numbers(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn compare_prerelease(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        (false, false) => {}
    }
    let mut a_ids = a[1..].split('.');
    let mut b_ids = b[1..].split('.');
    loop {
        match (a_ids.next(), b_ids.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let ordering = match (is_number(x), is_number(y)) {
                    (true, true) => compare_numbers(x, y),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => x.cmp(y),
                };
                if ordering != Ordering::Equal {
                    return ordering;
                }
            }
        }
    }
}

impl Version<'_> {
    pub(crate) fn compare(&self, other: &Version<'_>) -> Ordering {
        compare_numbers(self.major, other.major)
            .then_with(|| compare_numbers(self.minor, other.minor))
            .then_with(|| compare_numbers(self.patch, other.patch))
            .then_with(|| compare_prerelease(self.prerelease, other.prerelease))
    }
}

/// The operators flagd accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SemVerOp {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    SameMajor,
    SameMinor,
}

impl SemVerOp {
    pub(crate) fn parse(op: &str) -> Option<Self> {
        Some(match op {
            "=" => SemVerOp::Equal,
            "!=" => SemVerOp::NotEqual,
            "<" => SemVerOp::Less,
            "<=" => SemVerOp::LessOrEqual,
            ">" => SemVerOp::Greater,
            ">=" => SemVerOp::GreaterOrEqual,
            "^" => SemVerOp::SameMajor,
            "~" => SemVerOp::SameMinor,
            _ => return None,
        })
    }

    /// [`Self::holds`] for plain versions: numbers compare as the digit strings they were
    /// parsed from (no leading zeros), and neither has a pre-release.
    #[inline]
    pub(crate) fn holds_plain(self, a: &Plain, b: &Plain) -> bool {
        let ordering = a.cmp(b);
        match self {
            SemVerOp::Equal => ordering == Ordering::Equal,
            SemVerOp::NotEqual => ordering != Ordering::Equal,
            SemVerOp::Less => ordering == Ordering::Less,
            SemVerOp::LessOrEqual => ordering != Ordering::Greater,
            SemVerOp::Greater => ordering == Ordering::Greater,
            SemVerOp::GreaterOrEqual => ordering != Ordering::Less,
            SemVerOp::SameMajor => a[0] == b[0],
            SemVerOp::SameMinor => a[..2] == b[..2],
        }
    }

    pub(crate) fn holds(self, a: &Version<'_>, b: &Version<'_>) -> bool {
        let ordering = a.compare(b);
        match self {
            SemVerOp::Equal => ordering == Ordering::Equal,
            SemVerOp::NotEqual => ordering != Ordering::Equal,
            SemVerOp::Less => ordering == Ordering::Less,
            SemVerOp::LessOrEqual => ordering != Ordering::Greater,
            SemVerOp::Greater => ordering == Ordering::Greater,
            SemVerOp::GreaterOrEqual => ordering != Ordering::Less,
            SemVerOp::SameMajor => compare_numbers(a.major, b.major) == Ordering::Equal,
            SemVerOp::SameMinor => {
                compare_numbers(a.major, b.major) == Ordering::Equal
                    && compare_numbers(a.minor, b.minor) == Ordering::Equal
            }
        }
    }
}

/// A compiled `sem_ver`: literal versions and operator are parsed once.
#[derive(Debug)]
pub(crate) struct SemVerNode {
    pub(crate) left: SemVerArg,
    pub(crate) op: SemVerOpArg,
    pub(crate) right: SemVerArg,
}

#[derive(Debug)]
pub(crate) enum SemVerArg {
    Literal(OwnedVersion),
    Expr(Node),
}

#[derive(Debug)]
pub(crate) enum SemVerOpArg {
    Fixed(SemVerOp),
    Expr(Node),
}

/// Formats a context number as Go's `%v` does, then parses it; `None` when not a version.
fn number_version(n: f64, buffer: &mut StackStr<40>) -> Option<Version<'_>> {
    use std::fmt::Write as _;
    // %v switches to exponent notation from 1e6 up (and below 1e-4), which is never a version;
    // negative numbers and NaN are not versions either.
    if !(0.0..1e6).contains(&n) {
        return None;
    }
    write!(buffer, "{n}").ok()?;
    parse(buffer.as_str())
}

/// One evaluated version operand: a literal parsed at compile time, or the value of an
/// expression (a string, or a number already formatted as flagd formats it).
enum Operand<'a> {
    Literal(&'a OwnedVersion),
    Value(Val<'a>),
}

impl Operand<'_> {
    fn version(&self) -> Option<Version<'_>> {
        match self {
            Operand::Literal(version) => Some(version.version()),
            Operand::Value(value) => value.as_str().and_then(parse),
        }
    }
}

impl SemVerArg {
    /// Fast path: the plain version of a literal or of a string that a root `var` reads,
    /// looked at in place instead of being evaluated into a `Val`. `None` when the operand is
    /// anything else; then the general path evaluates it (reading a `var` has no effects and
    /// cannot fail, so reading it twice changes nothing).
    // Always inlined, for the reason `parse_plain` is.
    #[inline(always)]
    fn plain_at_root(&self, env: &Env<'_>, scope: Scope<'_, '_>) -> Option<Plain> {
        match self {
            SemVerArg::Literal(version) => version.plain,
            SemVerArg::Expr(node) => match (scope, node.as_root_var()) {
                (Scope::Root, Some(keys)) => match root_value(keys, env)? {
                    Value::String(text) => parse_plain(text),
                    _ => None,
                },
                _ => None,
            },
        }
    }

    fn operand<'a>(
        &'a self,
        env: &Env<'a>,
        scope: Scope<'_, 'a>,
    ) -> Result<Operand<'a>, Failure<'a>> {
        Ok(match self {
            SemVerArg::Literal(version) => Operand::Literal(version),
            SemVerArg::Expr(node) => Operand::Value(version_text(node.eval(env, scope)?)),
        })
    }
}

impl SemVerNode {
    /// Whether the comparison holds; `None` (the operation is `null`) when an operand is not a
    /// version or the operator is unknown.
    pub(crate) fn holds<'a>(
        &'a self,
        env: &Env<'a>,
        scope: Scope<'_, 'a>,
    ) -> Result<Option<bool>, Failure<'a>> {
        // Fast path: the usual `{"var": "app_version"}, ">=", "2.0.0"` with a plain version in
        // the context compares two number arrays.
        if let SemVerOpArg::Fixed(op) = self.op
            && let Some(left) = self.left.plain_at_root(env, scope)
            && let Some(right) = self.right.plain_at_root(env, scope)
        {
            return Ok(Some(op.holds_plain(&left, &right)));
        }
        self.holds_general(env, scope)
    }

    /// [`Self::holds`] without the fast path.
    pub(crate) fn holds_general<'a>(
        &'a self,
        env: &Env<'a>,
        scope: Scope<'_, 'a>,
    ) -> Result<Option<bool>, Failure<'a>> {
        let op = match &self.op {
            SemVerOpArg::Fixed(op) => Some(*op),
            SemVerOpArg::Expr(node) => node.eval(env, scope)?.as_str().and_then(SemVerOp::parse),
        };
        let left = self.left.operand(env, scope)?;
        let right = self.right.operand(env, scope)?;
        Ok(match (left.version(), op, right.version()) {
            (Some(left), Some(op), Some(right)) => Some(op.holds(&left, &right)),
            _ => None,
        })
    }
}

/// Strings are versions as they are; numbers are formatted as flagd formats them (Go's `%v`),
/// which allocates, but only for the rare numeric version.
fn version_text(value: Val<'_>) -> Val<'_> {
    match value {
        Val::Num(n) => {
            let mut buffer = StackStr::new();
            match number_version(n, &mut buffer) {
                Some(_) => Val::String(buffer.as_str().to_owned()),
                None => Val::Null,
            }
        }
        other => other,
    }
}

impl RuleCompiler<'_> {
    /// `sem_ver`: literal versions and operator are parsed now; a bad literal is a rule problem
    /// (flagd's operator would return null on every evaluation).
    pub(crate) fn sem_ver(&mut self, args: Args<'_>) -> Node {
        if !self.arity("sem_ver", args, 3, 3) {
            return Node::null();
        }
        let mut valid = true;
        let left = self.version_arg(args, 0, &mut valid);
        let op = match &args.items[1] {
            Value::String(op) => match SemVerOp::parse(op) {
                Some(op) => SemVerOpArg::Fixed(op),
                None => {
                    let reason = format!(
                        "unknown operator `{op}`; expected one of =, !=, <, <=, >, >=, ^, ~"
                    );
                    self.at_index(1, |c| c.invalid_argument("sem_ver", reason));
                    valid = false;
                    SemVerOpArg::Fixed(SemVerOp::Equal)
                }
            },
            op if is_operation(op) => SemVerOpArg::Expr(self.arg(args, 1, Position::Value)),
            other => {
                let reason = format!("the operator must be a string, found {}", json_type(other));
                self.at_index(1, |c| c.invalid_argument("sem_ver", reason));
                valid = false;
                SemVerOpArg::Fixed(SemVerOp::Equal)
            }
        };
        let right = self.version_arg(args, 2, &mut valid);
        if !valid {
            return Node::null();
        }
        Node::SemVer(Box::new(SemVerNode { left, op, right }))
    }

    fn version_arg(&mut self, args: Args<'_>, index: usize, valid: &mut bool) -> SemVerArg {
        let value = &args.items[index];
        let literal = match value {
            Value::String(text) => OwnedVersion::parse(text),
            Value::Number(n) => {
                let mut buffer = StackStr::new();
                let n = crate::logic::value::number_to_f64(n);
                let formatted = number_version(n, &mut buffer).is_some();
                if formatted {
                    OwnedVersion::parse(buffer.as_str())
                } else {
                    None
                }
            }
            expr if is_operation(expr) => {
                return SemVerArg::Expr(self.arg(args, index, Position::Value));
            }
            _ => None,
        };
        match literal {
            Some(version) => SemVerArg::Literal(version),
            None => {
                let reason = match value {
                    Value::String(_) | Value::Number(_) => {
                        format!("{value} is not a semantic version")
                    }
                    other => format!(
                        "expected a version or an expression, found {}",
                        json_type(other)
                    ),
                };
                self.at_index(index, |c| c.invalid_argument("sem_ver", reason));
                *valid = false;
                SemVerArg::Expr(Node::null())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Version-like text: mostly valid plain versions, with leading zeros, `v` prefixes,
    /// pre-releases, build metadata, 20-digit numbers and stray characters mixed in.
    fn version_text() -> impl Strategy<Value = String> {
        prop_oneof![
            // Small numbers, so that equal and nearly equal versions are frequent.
            "[vV]?[0-2](\\.[0-2]){0,2}",
            "[vV]?(0|[1-9][0-9]{0,2})(\\.(0|[1-9][0-9]{0,2})){0,2}",
            "[vV]?[0-9]{1,21}(\\.[0-9]{1,21}){0,3}",
            "[vV]?[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}([-+][0-9a-z.-]{0,6})?",
            "[0-9v.+-]{0,8}",
        ]
    }

    const OPS: [SemVerOp; 8] = [
        SemVerOp::Equal,
        SemVerOp::NotEqual,
        SemVerOp::Less,
        SemVerOp::LessOrEqual,
        SemVerOp::Greater,
        SemVerOp::GreaterOrEqual,
        SemVerOp::SameMajor,
        SemVerOp::SameMinor,
    ];

    proptest! {
        /// The fast path accepts only versions the general parser accepts, with the same parts.
        #[test]
        fn plain_parse_agrees_with_general_parse(text in version_text()) {
            let general = parse(&text);
            match parse_plain(&text) {
                Some([major, minor, patch]) => {
                    let general = general.expect("general parser accepts it");
                    prop_assert_eq!(general.major, major.to_string());
                    prop_assert_eq!(general.minor, minor.to_string());
                    prop_assert_eq!(general.patch, patch.to_string());
                    prop_assert_eq!(general.prerelease, "");
                }
                // Only what the fast path leaves to the general one: pre-release or build
                // metadata, numbers over 19 digits, or not a version.
                None => prop_assert!(
                    general.is_none()
                        || text.contains(['-', '+'])
                        || text.split(['.', 'v', 'V']).any(|n| n.len() > 19)
                ),
            }
        }

        /// Comparing plain versions as numbers agrees with the general comparison.
        #[test]
        fn plain_comparison_agrees_with_general_comparison(
            a in version_text(),
            b in version_text(),
        ) {
            if let (Some(plain_a), Some(plain_b)) = (parse_plain(&a), parse_plain(&b)) {
                let (general_a, general_b) = (parse(&a).unwrap(), parse(&b).unwrap());
                for op in OPS {
                    prop_assert_eq!(
                        op.holds_plain(&plain_a, &plain_b),
                        op.holds(&general_a, &general_b),
                        "{} {:?} {}", a, op, b
                    );
                }
            }
        }
    }

    fn cmp(a: &str, b: &str) -> Ordering {
        parse(a).unwrap().compare(&parse(b).unwrap())
    }

    #[test]
    fn parses_like_go_semver() {
        for valid in [
            "1",
            "v1",
            "V1",
            "1.2",
            "1.2.3",
            "1.2.3-alpha.1",
            "1.2.3+build.5",
            "0.0.0-0",
            "1.2.3-x-y",
        ] {
            assert!(parse(valid).is_some(), "{valid}");
        }
        for invalid in [
            "",
            "v",
            "vv1",
            "01",
            "1.02",
            "1.2.3.4",
            "1.2-pre",
            "1.2.3-",
            "1.2.3-01",
            "1.2.3+",
            "1e+06",
            "-1",
            "1.2.3-a..b",
        ] {
            assert!(parse(invalid).is_none(), "{invalid}");
        }
    }

    #[test]
    fn orders_like_semver() {
        assert_eq!(cmp("1", "1.0.0"), Ordering::Equal);
        assert_eq!(cmp("v1.0.0+build", "1.0.0"), Ordering::Equal);
        assert_eq!(cmp("2.0.0-alpha", "2.0.0"), Ordering::Less);
        assert_eq!(cmp("1.0.0-alpha", "1.0.0-alpha.1"), Ordering::Less);
        assert_eq!(cmp("1.0.0-alpha.1", "1.0.0-alpha.beta"), Ordering::Less);
        assert_eq!(cmp("1.0.0-beta.2", "1.0.0-beta.11"), Ordering::Less);
        assert_eq!(cmp("1.0.0-rc.1", "1.0.0"), Ordering::Less);
        assert_eq!(cmp("10.0.0", "9.99.99"), Ordering::Greater);
        assert_eq!(
            cmp("99999999999999999999999.0.0", "1.0.0"),
            Ordering::Greater
        );
    }

    #[test]
    fn numbers_format_like_go() {
        let mut buffer = StackStr::new();
        assert_eq!(number_version(1.2, &mut buffer), parse("1.2"));
        let mut buffer = StackStr::new();
        assert_eq!(number_version(2.0, &mut buffer), parse("2"));
        let mut buffer = StackStr::new();
        assert_eq!(number_version(1e6, &mut buffer), None);
        let mut buffer = StackStr::new();
        assert_eq!(number_version(-1.0, &mut buffer), None);
    }
}

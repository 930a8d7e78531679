//! How JSON values compare and add up, the same everywhere: in the projector (`min`, `max`),
//! in query filters and sorts, and so in every store adapter.
//!
//! The order is total. Values of different types order by type:
//! **missing < null < booleans < numbers < strings < arrays < objects**. Inside a type:
//!
//! - booleans: `false < true`;
//! - numbers: numerically, integers exactly (`1` equals `1.0`), others as `f64`;
//! - strings: by Unicode code point (the byte order of UTF-8), no locale, case-sensitive;
//! - arrays: element by element, then the shorter first;
//! - objects: as the sorted list of their `(name, value)` members.

use std::cmp::Ordering;
use std::io;

use serde_json::{Number, Value};

/// The rank of a value's type in the order between types.
pub fn type_rank(value: Option<&Value>) -> u8 {
    match value {
        None => 0,
        Some(Value::Null) => 1,
        Some(Value::Bool(_)) => 2,
        Some(Value::Number(_)) => 3,
        Some(Value::String(_)) => 4,
        Some(Value::Array(_)) => 5,
        Some(Value::Object(_)) => 6,
    }
}

enum Num {
    Int(i128),
    Float(f64),
}

fn num(number: &Number) -> Num {
    if let Some(i) = number.as_i64() {
        Num::Int(i128::from(i))
    } else if let Some(u) = number.as_u64() {
        Num::Int(i128::from(u))
    } else {
        Num::Float(number.as_f64().unwrap_or(0.0))
    }
}

/// Compares two numbers: integers exactly, anything else as `f64`.
pub fn compare_numbers(a: &Number, b: &Number) -> Ordering {
    match (num(a), num(b)) {
        (Num::Int(a), Num::Int(b)) => a.cmp(&b),
        (Num::Int(a), Num::Float(b)) => (a as f64).total_cmp(&b),
        (Num::Float(a), Num::Int(b)) => a.total_cmp(&(b as f64)),
        (Num::Float(a), Num::Float(b)) => a.total_cmp(&b),
    }
}

/// The total order of (possibly missing) JSON values described in the module documentation.
pub fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let by_type = type_rank(a).cmp(&type_rank(b));
    if by_type != Ordering::Equal {
        return by_type;
    }
    match (a, b) {
        (Some(Value::Bool(a)), Some(Value::Bool(b))) => a.cmp(b),
        (Some(Value::Number(a)), Some(Value::Number(b))) => compare_numbers(a, b),
        (Some(Value::String(a)), Some(Value::String(b))) => a.cmp(b),
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for (x, y) in a.iter().zip(b) {
                let order = compare(Some(x), Some(y));
                if order != Ordering::Equal {
                    return order;
                }
            }
            a.len().cmp(&b.len())
        }
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            // Sorted explicitly: serde_json keeps insertion order when another crate turns on
            // its `preserve_order` feature, and the order must not depend on that.
            let mut a: Vec<_> = a.iter().collect();
            let mut b: Vec<_> = b.iter().collect();
            a.sort_by(|x, y| x.0.cmp(y.0));
            b.sort_by(|x, y| x.0.cmp(y.0));
            for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
                let order = ka.cmp(kb).then_with(|| compare(Some(va), Some(vb)));
                if order != Ordering::Equal {
                    return order;
                }
            }
            a.len().cmp(&b.len())
        }
        _ => Ordering::Equal,
    }
}

/// Adds two numbers: integers stay integers while the sum fits an `i64` (or `u64`), anything
/// else is added as `f64`. `None` when the result is not finite.
pub fn add_numbers(a: &Number, b: &Number) -> Option<Number> {
    if let (Num::Int(x), Num::Int(y)) = (num(a), num(b)) {
        let sum = x + y;
        if let Ok(small) = i64::try_from(sum) {
            return Some(Number::from(small));
        }
        if let Ok(big) = u64::try_from(sum) {
            return Some(Number::from(big));
        }
    }
    Number::from_f64(a.as_f64()? + b.as_f64()?)
}

struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The length of a value serialised as compact JSON, in bytes, without allocating it.
pub fn json_bytes(value: &Value) -> usize {
    let mut counter = Counter(0);
    // Writing a `Value` to a writer that cannot fail does not fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cmp(a: Value, b: Value) -> Ordering {
        compare(Some(&a), Some(&b))
    }

    #[test]
    fn types_order_then_values() {
        assert_eq!(compare(None, Some(&Value::Null)), Ordering::Less);
        assert_eq!(cmp(json!(null), json!(false)), Ordering::Less);
        assert_eq!(cmp(json!(true), json!(0)), Ordering::Less);
        assert_eq!(cmp(json!(99), json!("1")), Ordering::Less);
        assert_eq!(cmp(json!("z"), json!([])), Ordering::Less);
        assert_eq!(cmp(json!([1]), json!({})), Ordering::Less);
        assert_eq!(cmp(json!(1), json!(1.0)), Ordering::Equal);
        assert_eq!(cmp(json!(2), json!(10)), Ordering::Less);
        assert_eq!(cmp(json!(-1.5), json!(-1)), Ordering::Less);
        assert_eq!(cmp(json!(u64::MAX), json!(i64::MAX)), Ordering::Greater);
        assert_eq!(cmp(json!("B"), json!("a")), Ordering::Less);
        assert_eq!(cmp(json!([1, 2]), json!([1, 2, 0])), Ordering::Less);
        assert_eq!(cmp(json!({"a": 1}), json!({"a": 2})), Ordering::Less);
    }

    #[test]
    fn sums_stay_integers_while_they_fit() {
        let n = |v: Value| v.as_number().unwrap().clone();
        assert_eq!(add_numbers(&n(json!(2)), &n(json!(3))), Some(n(json!(5))));
        assert_eq!(
            add_numbers(&n(json!(i64::MAX)), &n(json!(1))),
            Some(n(json!(9_223_372_036_854_775_808u64)))
        );
        assert_eq!(
            add_numbers(&n(json!(1.5)), &n(json!(1))),
            Some(n(json!(2.5)))
        );
        assert_eq!(add_numbers(&n(json!(f64::MAX)), &n(json!(f64::MAX))), None);
    }

    #[test]
    fn sizes_are_exact() {
        let value = json!({"a": [1, "x\"y"], "b": null});
        assert_eq!(
            json_bytes(&value),
            serde_json::to_vec(&value).unwrap().len()
        );
    }
}

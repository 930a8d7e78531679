//! flagd's `fractional` operator: deterministic weighted bucketing.
//!
//! Follows flagd's implementation (`core/pkg/evaluator/fractional.go`, "fractional v2"):
//!
//! - the bucketing value is the first argument when it evaluates to a string; when the first
//!   argument is a bucket (an array) or evaluates to `null`, it is `$flagd.flagKey` followed by
//!   the context's `targetingKey`, and a missing, empty or non-string targeting key yields
//!   `null` (so the default variant);
//! - the hash is MurmurHash3 x86_32 with seed 0 of the bucketing value's UTF-8 bytes;
//! - buckets are `[variant, weight]`; a missing or `null` weight counts 1 (the shorthand
//!   `["variant"]`); weights must be integers (otherwise the operation is `null`), negative ones
//!   count 0, and no weight nor the total may exceed 2,147,483,647;
//! - the bucket is `(hash × total) >> 32`, located in the cumulative weights in bucket order;
//!   a zero total yields `null`;
//! - variants and weights may be expressions; the chosen variant must evaluate to a string,
//!   boolean, number or `null`.
//!
//! Unlike flagd, which evaluates every bucket's variant before choosing, only the chosen
//! bucket's variant expression is evaluated; the result differs only when an unchosen variant
//! expression would produce an array or object.

use std::hash::Hasher as _;

use mur3::Hasher32;
use serde_json::Value;

use crate::FRACTIONAL_BUCKETS_MAX;
use crate::error::{DefinitionErrorKind as Kind, json_type};
use crate::logic::js;
use crate::logic::value::Val;
use crate::logic::{Args, Env, Failure, Node, Position, RuleCompiler, Scope, is_operation};

/// The largest weight and weight total flagd accepts (`math.MaxInt32`).
const WEIGHT_MAX: u64 = i32::MAX as u64;

#[derive(Debug)]
pub(crate) struct Fractional {
    bucket_by: BucketBy,
    buckets: Box<[Bucket]>,
    /// The total weight when every weight is a literal.
    fixed_total: Option<u64>,
}

#[derive(Debug)]
enum BucketBy {
    /// `$flagd.flagKey` + `targetingKey`.
    TargetingKey,
    Expr(Node),
    /// A `cat` expression, hashed part by part without building the string.
    Cat(Box<[Node]>),
}

#[derive(Debug)]
struct Bucket {
    variant: Node,
    weight: Weight,
}

#[derive(Debug)]
enum Weight {
    Fixed(u64),
    Expr(Node),
}

impl Fractional {
    /// The variant expression of the chosen bucket, or `None` when the operation is `null`.
    pub(crate) fn choose<'a>(
        &'a self,
        env: &Env<'a>,
        scope: Scope<'_, 'a>,
    ) -> Result<Option<&'a Node>, Failure<'a>> {
        let Some(hash) = self.hash(env, scope)? else {
            return Ok(None);
        };
        let total = match self.fixed_total {
            Some(total) => total,
            None => {
                let mut total = 0;
                for bucket in self.buckets.iter() {
                    match bucket.weight(env, scope)? {
                        Some(weight) => total += weight,
                        None => return Ok(None),
                    }
                }
                if total > WEIGHT_MAX {
                    return Ok(None);
                }
                total
            }
        };
        if total == 0 {
            return Ok(None);
        }
        let point = (u64::from(hash) * total) >> 32;
        let mut end = 0;
        for bucket in self.buckets.iter() {
            end += bucket.weight(env, scope)?.unwrap_or(0);
            if point < end {
                return Ok(Some(&bucket.variant));
            }
        }
        Ok(None)
    }

    fn hash<'a>(&'a self, env: &Env<'a>, scope: Scope<'_, 'a>) -> Result<Option<u32>, Failure<'a>> {
        let mut hasher = Hasher32::with_seed(0);
        match &self.bucket_by {
            BucketBy::TargetingKey => return Ok(targeting_key_hash(env)),
            BucketBy::Expr(node) => match node.eval(env, scope)? {
                Val::Null => return Ok(targeting_key_hash(env)),
                value => match value.as_str() {
                    Some(text) => hasher.write(text.as_bytes()),
                    None => return Ok(None),
                },
            },
            BucketBy::Cat(parts) => {
                for part in parts.iter() {
                    write_js_string(&part.eval(env, scope)?, &mut hasher);
                }
            }
        }
        Ok(Some(hasher.finish32()))
    }
}

impl Bucket {
    /// The weight, or `None` when it makes the whole operation `null`.
    fn weight<'a>(
        &'a self,
        env: &Env<'a>,
        scope: Scope<'_, 'a>,
    ) -> Result<Option<u64>, Failure<'a>> {
        Ok(match &self.weight {
            Weight::Fixed(weight) => Some(*weight),
            Weight::Expr(node) => match node.eval(env, scope)? {
                Val::Null => Some(1),
                Val::Num(n) => number_weight(n),
                _ => None,
            },
        })
    }
}

/// flagd's weight rules for a number: integers only, negative clamped to 0, at most `i32::MAX`.
fn number_weight(n: f64) -> Option<u64> {
    if n.fract() != 0.0 || n > WEIGHT_MAX as f64 {
        return None;
    }
    Some(if n < 0.0 { 0 } else { n as u64 })
}

fn targeting_key_hash(env: &Env<'_>) -> Option<u32> {
    match env.get("targetingKey") {
        Some(Value::String(key)) if !key.is_empty() => {
            Some(hash_concatenation(env.flag_key.as_bytes(), key.as_bytes()))
        }
        _ => None,
    }
}

/// MurmurHash3 x86_32 (seed 0) of `a` followed by `b`.
///
/// Fast path for the usual bucketing value, `flagKey` + `targetingKey`: hashing the two slices
/// in place (carrying the 0-3 bytes that end `a` into the block that `b` completes) needs
/// neither the concatenation nor mur3's streaming `Hasher32`, whose buffering and calls cost
/// more than the hash of a short key. Tests compare it with mur3 on the concatenation.
#[inline]
fn hash_concatenation(a: &[u8], b: &[u8]) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let scramble = |k: u32| k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    let mix = |h: u32, k: u32| {
        (h ^ scramble(k))
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64)
    };
    let block = |bytes: &[u8]| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);

    let total = a.len() + b.len();
    let mut h = 0u32;
    let mut a_blocks = a.chunks_exact(4);
    for bytes in a_blocks.by_ref() {
        h = mix(h, block(bytes));
    }
    // `pending` holds a block being assembled (little-endian, as `filled` bytes) from the end
    // of `a` and the start of `b`; built with shifts so it stays in a register.
    let partial = |bytes: &[u8]| {
        bytes
            .iter()
            .rev()
            .fold(0u32, |k, &b| (k << 8) | u32::from(b))
    };
    let a_rest = a_blocks.remainder();
    let (mut pending, mut filled) = (partial(a_rest), a_rest.len());
    let mut b = b;
    if filled > 0 {
        let take = (4 - filled).min(b.len());
        pending |= partial(&b[..take]) << (8 * filled);
        filled += take;
        b = &b[take..];
        if filled == 4 {
            h = mix(h, pending);
            (pending, filled) = (0, 0);
        }
    }
    // When a block is still partial here, `b` is used up and that block is the tail.
    let mut b_blocks = b.chunks_exact(4);
    for bytes in b_blocks.by_ref() {
        h = mix(h, block(bytes));
    }
    let b_rest = b_blocks.remainder();
    pending |= partial(b_rest) << (8 * filled);
    filled += b_rest.len();
    if filled > 0 {
        h ^= scramble(pending);
    }
    // Finalisation (fmix32) over the total length, as murmur3 takes it modulo 2^32.
    h ^= total as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hashes `String(value)` as `cat` would have built it.
fn write_js_string(value: &Val<'_>, hasher: &mut Hasher32) {
    match value {
        Val::Str(s) => hasher.write(s.as_bytes()),
        Val::String(s) => hasher.write(s.as_bytes()),
        Val::Num(n) => hasher.write(js::number_to_string(*n).as_str().as_bytes()),
        other => {
            let mut text = String::new();
            other.write_js_string(&mut text);
            hasher.write(text.as_bytes());
        }
    }
}

impl RuleCompiler<'_> {
    pub(crate) fn fractional(&mut self, args: Args<'_>, position: Position) -> Node {
        let items = args.items;
        let (bucket_by, first_bucket) = match items.first() {
            None => {
                self.arity("fractional", args, 1, usize::MAX);
                return Node::null();
            }
            Some(Value::Array(_)) => (BucketBy::TargetingKey, 0),
            Some(Value::Null) => (BucketBy::TargetingKey, 1),
            Some(first) if first.is_string() || is_operation(first) => {
                let node = self.arg(args, 0, Position::Value);
                match node {
                    Node::Cat(parts) => (BucketBy::Cat(parts), 1),
                    node => (BucketBy::Expr(node), 1),
                }
            }
            Some(other) => {
                let found = json_type(other);
                self.at_index(0, |c| {
                    c.invalid_argument(
                        "fractional",
                        format!(
                            "the bucketing value must be a string or an expression, found {found}"
                        ),
                    )
                });
                return Node::null();
            }
        };
        let count = items.len() - first_bucket;
        if count == 0 {
            self.invalid_argument(
                "fractional",
                "at least one bucket [variant, weight] is needed",
            );
            return Node::null();
        }
        if count > FRACTIONAL_BUCKETS_MAX {
            let error = Kind::TooMany {
                what: "fractional buckets",
                count,
                max: FRACTIONAL_BUCKETS_MAX,
            };
            self.limit_error(error);
            return Node::null();
        }
        let mut valid = true;
        let mut buckets = Vec::with_capacity(count);
        for (index, item) in items.iter().enumerate().skip(first_bucket) {
            match self.at_index(index, |c| c.bucket(item, position)) {
                Some(bucket) => buckets.push(bucket),
                None => valid = false,
            }
        }
        let fixed_total = buckets
            .iter()
            .try_fold(0u64, |total, bucket| match bucket.weight {
                Weight::Fixed(weight) => Some(total + weight),
                Weight::Expr(_) => None,
            });
        match fixed_total {
            Some(total) if total > WEIGHT_MAX => {
                self.invalid_argument(
                    "fractional",
                    format!("the weights add up to {total}, more than {WEIGHT_MAX}"),
                );
                valid = false;
            }
            Some(0) if valid => self.invalid_argument(
                "fractional",
                "the weights add up to 0, so no bucket can be chosen",
            ),
            _ => {}
        }
        if !valid {
            // flagd's operator returns nil for any malformed bucket.
            return Node::null();
        }
        Node::Fractional(Box::new(Fractional {
            bucket_by,
            buckets: buckets.into(),
            fixed_total,
        }))
    }

    /// One `[variant, weight]`; `None` when it is malformed (the problem is reported).
    fn bucket(&mut self, item: &Value, position: Position) -> Option<Bucket> {
        let parts = match item {
            Value::Array(parts) if !parts.is_empty() => parts,
            other => {
                let found = json_type(other);
                let reason = format!("each bucket is an array [variant, weight], found {found}");
                self.invalid_argument("fractional", reason);
                return None;
            }
        };
        if parts.len() > 2 {
            self.invalid_argument(
                "fractional",
                format!(
                    "a bucket has a variant and a weight, found {} items",
                    parts.len()
                ),
            );
        }
        let variant_value = &parts[0];
        if matches!(variant_value, Value::Array(_))
            || (variant_value.is_object() && !is_operation(variant_value))
        {
            let found = json_type(variant_value);
            self.at_index(0, |c| c.invalid_argument("fractional", format!("a variant must be a string, boolean, number, null or an expression, found {found}")));
            return None;
        }
        let variant = self.at_index(0, |c| c.compile(variant_value, position));
        let weight = match parts.get(1) {
            None | Some(Value::Null) => Weight::Fixed(1),
            Some(Value::Number(n)) => {
                let n = n.as_f64().unwrap_or(f64::NAN);
                match number_weight(n) {
                    Some(weight) if n >= 0.0 => Weight::Fixed(weight),
                    Some(_) => {
                        self.at_index(1, |c| {
                            c.invalid_argument(
                                "fractional",
                                format!("weights must not be negative, found {n}"),
                            )
                        });
                        Weight::Fixed(0)
                    }
                    None => {
                        self.at_index(1, |c| {
                            c.invalid_argument(
                                "fractional",
                                format!(
                                    "weights must be integers from 0 to {WEIGHT_MAX}, found {n}"
                                ),
                            )
                        });
                        return None;
                    }
                }
            }
            Some(expr) if is_operation(expr) => {
                Weight::Expr(self.at_index(1, |c| c.compile(expr, Position::Value)))
            }
            Some(other) => {
                let found = json_type(other);
                self.at_index(1, |c| {
                    c.invalid_argument(
                        "fractional",
                        format!("a weight must be a number or an expression, found {found}"),
                    )
                });
                return None;
            }
        };
        Some(Bucket { variant, weight })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys whose hashes sit on the boundaries, from flagd-testbed's `fractional.feature`.
    #[test]
    fn murmur3_matches_flagd_vectors() {
        let hash = |key: &str| mur3::murmurhash3_x86_32(key.as_bytes(), 0);
        assert_eq!(hash("ejOoVL"), 0);
        assert_eq!(hash("bY9fO-"), 1);
        assert_eq!(hash("SI7p-"), 2_147_483_647);
        assert_eq!(hash("6LvT0"), 2_147_483_648);
        assert_eq!(hash("ceQdGm"), 4_294_967_295);
        // SMHasher reference values.
        assert_eq!(hash(""), 0);
        assert_eq!(mur3::murmurhash3_x86_32(b"", 1), 0x514e_28b7);
    }

    #[test]
    fn streaming_hash_equals_hash_of_concatenation() {
        for split in 0..=11 {
            let text = "flag-keyuser";
            let mut hasher = Hasher32::with_seed(0);
            hasher.write(&text.as_bytes()[..split]);
            hasher.write(&text.as_bytes()[split..]);
            assert_eq!(
                hasher.finish32(),
                mur3::murmurhash3_x86_32(text.as_bytes(), 0),
                "split at {split}"
            );
        }
    }

    #[test]
    fn hash_of_two_slices_equals_mur3_of_their_concatenation() {
        // Every split of texts of every length modulo 4.
        for len in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 255, 256, 257, 300] {
            let text: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            for split in 0..=len {
                let (a, b) = text.split_at(split);
                assert_eq!(
                    hash_concatenation(a, b),
                    mur3::murmurhash3_x86_32(&text, 0),
                    "length {len}, split at {split}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn hash_of_two_slices_equals_mur3_of_any_concatenation(
            a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let joined = [a.as_slice(), b.as_slice()].concat();
            proptest::prop_assert_eq!(
                hash_concatenation(&a, &b),
                mur3::murmurhash3_x86_32(&joined, 0)
            );
        }
    }

    #[test]
    fn weights_follow_flagd() {
        assert_eq!(number_weight(3.0), Some(3));
        assert_eq!(number_weight(-5.0), Some(0));
        assert_eq!(number_weight(0.5), None);
        assert_eq!(number_weight(f64::NAN), None);
        assert_eq!(number_weight(3e9), None);
    }
}

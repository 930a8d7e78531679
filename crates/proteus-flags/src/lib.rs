//! Feature flags in the [flagd](https://flagd.dev) definition format.
//!
//! This crate parses and validates flagd flag documents, compiles them once into a [`FlagSet`],
//! and evaluates flags against an evaluation context without re-reading the JSON. It is a pure
//! domain crate: no I/O, no async runtime, no clock. The caller passes the current time
//! (`now_s`, Unix seconds) so `$flagd.timestamp` stays deterministic and testable.
//!
//! ```
//! use proteus_flags::{FlagSet, Reason};
//! use serde_json::{json, Map};
//!
//! let set = FlagSet::from_json(r#"{
//!   "flags": {
//!     "new-checkout": {
//!       "state": "ENABLED",
//!       "variants": { "on": true, "off": false },
//!       "defaultVariant": "off",
//!       "targeting": { "if": [{ "ends_with": [{ "var": "email" }, "@example.com"] }, "on"] }
//!     }
//!   }
//! }"#).unwrap();
//!
//! let mut context = Map::new();
//! context.insert("email".into(), json!("ada@example.com"));
//! let evaluation = set.evaluate("new-checkout", &context, 1_700_000_000);
//! assert_eq!(evaluation.variant, Some("on"));
//! assert_eq!(evaluation.reason, Reason::TargetingMatch);
//! ```
//!
//! # The format
//!
//! A document is `{"$schema"?, "flags": {...}, "$evaluators"?, "metadata"?, "segments"?}`
//! (`flags` may also be an array of flags carrying a `key`, as the flagd daemon accepts). A flag
//! has a `state` (`ENABLED`/`DISABLED`), `variants` whose values all share one JSON type (boolean,
//! string, number or object), an optional `defaultVariant` (absent or `null` means "use the
//! caller's default"), optional `targeting` (JSON Logic; `{}` means none) and optional
//! `metadata`, merged over the document's `metadata` as flagd does. `{"$ref": "name"}` anywhere in
//! targeting is replaced by the document's evaluator `name`.
//!
//! Targeting supports the JSON Logic operators of json-logic-js (`var`, `missing`,
//! `missing_some`, `if`/`?:`, `==`, `===`, `!=`, `!==`, `!`, `!!`, `or`, `and`, `<`, `<=`, `>`,
//! `>=`, `in`, `cat`, `substr`, `+`, `-`, `*`, `/`, `%`, `min`, `max`, `merge`, `map`, `filter`,
//! `reduce`, `all`, `some`, `none`) and flagd's custom operators `fractional`, `sem_ver`,
//! `starts_with` and `ends_with`, with flagd's semantics (see [`FlagSet`] for the evaluation
//! rules and the module docs of each operator for details).
//!
//! # Where flagd's behaviour had to be chosen
//!
//! The reference is flagd's evaluator (`core/pkg/evaluator`) and the flagd-testbed gherkin
//! suites (v3.9.0), which this crate passes (see `tests/it/testbed_cases.json`):
//!
//! - A disabled flag resolves with reason `DISABLED`, no variant and no value (the caller's
//!   default), as flagd does since open-feature/flagd#1965; older flagd answered
//!   `FLAG_NOT_FOUND`.
//! - Without a `defaultVariant`, "default" outcomes have reason `DEFAULT` and no value (flagd's
//!   internal `FALLBACK`, reported as `DEFAULT`); older flagd answered `FLAG_NOT_FOUND`.
//! - `fractional` reports `TARGETING_MATCH` (flagd never reports `SPLIT`) and buckets with
//!   flagd's "v2" algorithm, `(hash × total) >> 32`. The testbed's newer "v3" scenarios (typed
//!   hashing of non-string bucketing values) are not implemented, as flagd itself does not yet.
//! - A targeting result naming no variant is `ERROR`/`GENERAL`; an unknown operator or a `$ref`
//!   to a missing evaluator is `ERROR`/`PARSE_ERROR` when evaluated (flagd's JSON Logic engine
//!   fails lazily too); custom operators given bad input return `null`.
//! - `$flagd` in the context is replaced by the injected properties, as flagd does.
//!
//! Small differences from json-logic-js, each deliberate: `>` and `>=` accept a third operand
//! like `<` and `<=` (`a > b > c`; json-logic-js ignores it); `substr` counts Unicode scalar
//! values rather than UTF-16 code units; `fractional` evaluates only the chosen bucket's variant
//! expression; objects with several keys in targeting are literals (and a strict-mode error).
//! The typed [`FlagSet::evaluate_i64`] reports `TYPE_MISMATCH` for a value with a fractional
//! part, where flagd truncates.
//!
//! # Proteus extensions
//!
//! Two optional additions, rejected by neither flagd's schema nor its daemon (which ignore
//! unknown properties), let larger flag sets stay readable:
//!
//! - **Prerequisites** (per flag): `"prerequisites": [{"flag": "other-key", "variants": ["on"]}]`.
//!   The flag runs its own targeting only when every prerequisite flag evaluates, with the same
//!   context, to one of the listed variants. Otherwise it resolves to its `defaultVariant` with
//!   reason `DEFAULT` (or to the caller's default when it has none). A disabled or failing
//!   prerequisite counts as not met. References to unknown flags or variants, cycles, and chains
//!   deeper than [`PREREQUISITE_DEPTH_MAX`] are rejected when the set is compiled.
//! - **Segments** (per document, shared by the whole set): `"segments": {"beta-users": <JSON
//!   Logic>}`, used in targeting as `{"segment": "beta-users"}`, which evaluates the rule and
//!   yields its truthiness as a boolean. Unknown segment names are rejected at compile time;
//!   segments may use `$ref` but not other segments (so they can never form cycles).
//!
//! # Validation modes
//!
//! [`Validation::Strict`] rejects every definition problem with its JSON pointer path and reason:
//! unknown operators, wrong arity, `$ref` to a missing evaluator, literal arguments flagd would
//! discard at run time (bad `sem_ver` versions or operators, negative or fractional weights),
//! literal targeting results that are not variants, and so on. Use it where people author flags.
//!
//! [`Validation::FlagdCompatible`] loads everything flagd loads and evaluates it as flagd does at
//! run time: an unknown operator or missing evaluator yields a `PARSE_ERROR` evaluation,
//! malformed custom-operator calls yield `null` (so the default variant), negative weights are
//! clamped to zero. The problems strict mode would reject are returned as warnings. Structural
//! problems (not JSON, a `defaultVariant` that is not a variant, mixed variant types, broken
//! prerequisites or segments, limits exceeded) are errors in both modes.

mod compile;
mod diagnostics;
mod document;
mod error;
mod eval;
mod fractional;
mod logic;
mod path;
mod semver;
mod set;

pub use compile::{Compiled, FlagSetBuilder, Validation};
pub use error::{DefinitionError, DefinitionErrorKind, DefinitionErrors, ErrorCode, Reason};
pub use eval::{Evaluation, Resolution};
pub use set::{FlagRef, FlagSet, FlagState, VariantKind};

/// Largest flag document accepted as text, in bytes. Flag files are configuration, not data; a
/// bigger one is almost certainly a mistake and would only slow every reload.
pub const DOCUMENT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Most flags one [`FlagSet`] may hold (over all of its documents).
pub const FLAGS_MAX: usize = 10_000;

/// Most variants one flag may declare. Variants are addressed by a `u16` index once compiled.
pub const VARIANTS_MAX: usize = 1_000;

/// Deepest nesting of a targeting rule, counting the evaluators `$ref` pulls in. Evaluation is
/// recursive, so this bounds the stack an evaluation can use.
pub const TARGETING_DEPTH_MAX: usize = 64;

/// Most JSON Logic nodes in one compiled rule, after `$ref` expansion. Without it a chain of
/// evaluators each referring twice to the previous one would expand exponentially.
pub const TARGETING_NODES_MAX: usize = 20_000;

/// Most buckets in one `fractional` operation.
pub const FRACTIONAL_BUCKETS_MAX: usize = 1_000;

/// Most evaluators (`$evaluators`) one document may define.
pub const EVALUATORS_MAX: usize = 1_000;

/// Most segments one document may define.
pub const SEGMENTS_MAX: usize = 1_000;

/// Most prerequisites one flag may list.
pub const PREREQUISITES_MAX: usize = 32;

/// Longest chain of prerequisites (a flag whose prerequisite has a prerequisite, ...). Each
/// level is a nested evaluation, so this bounds the cost of one evaluation.
pub const PREREQUISITE_DEPTH_MAX: usize = 8;

/// Most definition errors collected before compilation stops reporting more; the first ones
/// are what a person fixes first anyway.
pub const DEFINITION_ERRORS_MAX: usize = 100;

/// Deepest context nesting that string conversion of an array (`cat`, `in`, comparisons) walks;
/// deeper levels convert to an empty string instead of recursing without bound.
pub const CONTEXT_DEPTH_MAX: usize = 32;

//! Property tests: each specialised fast path of the evaluator agrees with the general path (or,
//! where the general path is the definition, with the definition).

use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::eval::{bytes_eq, context_get};
use super::{Env, Node, RuleCompiler, Scope};
use crate::compile::Validation;
use crate::document::Diagnostics;
use crate::path::Path;

fn compile(rule: &Value) -> Node {
    let mut diag = Diagnostics::new(Validation::FlagdCompatible);
    let (evaluators, segments) = (Map::new(), HashMap::new());
    RuleCompiler::new(&mut diag, &evaluators, &segments, None).compile_rule(rule, Path::root())
}

fn env(context: &Map<String, Value>) -> Env<'_> {
    Env::new(context, "flag", 42, &[])
}

/// Keys from a small alphabet, so that equal lengths and equal keys are frequent; lengths from
/// 0 to 20 cover every branch of `bytes_eq`.
fn key() -> impl Strategy<Value = String> {
    "[ab]{0,20}"
}

/// A context and a `var` name, half the time one of the context's keys (`""` is never a name:
/// it would read the whole context).
fn context_and_name() -> impl Strategy<Value = (Map<String, Value>, String)> {
    let name = "[ab]{1,20}";
    (context(), name, any::<prop::sample::Index>(), any::<bool>()).prop_map(
        |(context, name, index, existing)| {
            let keys: Vec<&String> = context.keys().filter(|k| !k.is_empty()).collect();
            let name = match existing && !keys.is_empty() {
                true => index.get(&keys).to_string(),
                false => name,
            };
            (context, name)
        },
    )
}

/// Versions with small numbers, so that equal versions are frequent; some with a pre-release,
/// some with leading zeros.
const VERSION: &str = "v?[0-2](\\.[0-2]){0,2}|v?[0-9]{1,2}(\\.[0-9]{1,2}){0,2}(-[a-z0-9]{1,3})?";

/// Context values: strings (often versions or affixes), numbers, and the odd other type.
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => "[ab@.]{0,6}".prop_map(Value::from),
        4 => VERSION.prop_map(Value::from),
        1 => (0.0..30.0f64).prop_map(|n| json!((n * 10.0).round() / 10.0)),
        1 => Just(Value::Null),
        1 => Just(json!(["a"])),
    ]
}

fn context() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(key(), value(), 0..14).prop_map(|map| map.into_iter().collect())
}

proptest! {
    #[test]
    fn bytes_eq_is_slice_equality(a in "[ab]{0,20}", b in "[ab]{0,20}") {
        prop_assert_eq!(bytes_eq(a.as_bytes(), b.as_bytes()), a == b);
        prop_assert!(bytes_eq(a.as_bytes(), a.as_bytes()));
    }

    /// The scan of small objects and the root entries an evaluation reads as it goes find what
    /// `Map::get` finds (objects of up to 13 keys cover both sides of the scans' limit), in any
    /// order of reads: keys among those read already, keys further on, and absent keys.
    #[test]
    fn context_reads_are_map_get(
        context in context(),
        reads in prop::collection::vec((key(), any::<prop::sample::Index>(), any::<bool>()), 0..12),
    ) {
        let env = env(&context);
        let keys: Vec<&String> = context.keys().collect();
        for (key, index, present) in &reads {
            let key = match *present && !keys.is_empty() {
                true => index.get(&keys).as_str(),
                false => key.as_str(),
            };
            prop_assert_eq!(context_get(&context, key), context.get(key));
            prop_assert_eq!(env.get(key), context.get(key));
        }
    }

    /// `starts_with`/`ends_with` of a root `var` (compiled to `VarStringTest`, evaluated and
    /// tested without a `Val`) give what the operators are defined to give, at the root and
    /// inside `map` (the scoped path).
    #[test]
    fn var_string_tests_follow_their_definition(
        (context, name) in context_and_name(),
        affix in "[ab@.]{0,3}",
        ends in any::<bool>(),
    ) {
        let op = if ends { "ends_with" } else { "starts_with" };
        let rule = json!({op: [{"var": name}, affix]});
        let node = compile(&rule);
        prop_assert!(matches!(node, Node::VarStringTest(_)));
        let expected = match context.get(&name) {
            Some(Value::String(s)) if ends => json!(s.ends_with(&affix)),
            Some(Value::String(s)) => json!(s.starts_with(&affix)),
            _ => Value::Null,
        };
        let env = env(&context);
        prop_assert_eq!(node.eval(&env, Scope::Root).unwrap().to_value(), expected.clone());
        prop_assert_eq!(node.test(&env, Scope::Root).unwrap(), expected == json!(true));
        // Mapped over `[context]`, the same test reads the `var` from an item.
        let mapped = compile(&json!({"map": [[{"var": ""}], rule]}));
        prop_assert_eq!(
            mapped.eval(&env, Scope::Root).unwrap().to_value(),
            json!([expected])
        );
    }

    /// `in` of a root `var` and a literal list of strings (`VarInStrings`) is the general `in`.
    #[test]
    fn var_in_strings_is_general_in(
        (context, name) in context_and_name(),
        items in prop::collection::vec("[ab@.]{0,3}", 0..4),
    ) {
        let fast = compile(&json!({"in": [{"var": name}, items]}));
        prop_assert!(matches!(fast, Node::VarInStrings(_)));
        // The same list read from a missing `var`'s default takes the general path.
        let general = compile(&json!({"in": [{"var": name}, {"var": ["missing", items]}]}));
        prop_assert!(matches!(general, Node::In(_)));
        let env = env(&context);
        prop_assert_eq!(
            fast.eval(&env, Scope::Root).unwrap().to_value(),
            general.eval(&env, Scope::Root).unwrap().to_value()
        );
        prop_assert_eq!(
            fast.test(&env, Scope::Root).unwrap(),
            general.test(&env, Scope::Root).unwrap()
        );
    }

    /// `sem_ver` with the plain-version fast path agrees with the general path, whichever side
    /// the `var` is on and whatever the context holds there.
    #[test]
    fn sem_ver_fast_path_is_general_path(
        (context, name) in context_and_name(),
        literal in VERSION,
        op in prop::sample::select(vec!["=", "!=", "<", "<=", ">", ">=", "^", "~"]),
        var_first in any::<bool>(),
        version in VERSION,
        set_version in any::<bool>(),
    ) {
        // Half the time the `var` surely reads a version.
        let mut context = context;
        if set_version {
            context.insert(name.clone(), Value::from(version));
        }
        let var = json!({"var": name});
        let args = if var_first { json!([var, op, literal]) } else { json!([literal, op, var]) };
        let Node::SemVer(node) = compile(&json!({"sem_ver": args})) else {
            // A literal no version parser accepts makes the whole operation `null`.
            return Ok(());
        };
        let env = env(&context);
        prop_assert_eq!(
            node.holds(&env, Scope::Root).unwrap(),
            node.holds_general(&env, Scope::Root).unwrap()
        );
    }
}

//! JSON Logic semantics, case by case (expected values as json-logic-js computes them).

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::{Env, Node, RuleCompiler, Scope};
use crate::compile::Validation;
use crate::document::Diagnostics;
use crate::path::Path;

fn compile(rule: &Value) -> Node {
    let mut diag = Diagnostics::new(Validation::FlagdCompatible);
    let (evaluators, segments) = (Map::new(), HashMap::new());
    RuleCompiler::new(&mut diag, &evaluators, &segments, None).compile_rule(rule, Path::root())
}

fn eval(rule: Value, data: Value) -> Value {
    let node = compile(&rule);
    let context = data.as_object().cloned().unwrap_or_default();
    let env = Env::new(&context, "flag", 42, &[]);
    node.eval(&env, Scope::Root)
        .map_or(json!("<failed>"), |v| v.to_value())
}

#[test]
fn operators_follow_json_logic_js() {
    let cases = [
        (json!({"==": [1, 1]}), json!({}), json!(true)),
        (json!({"==": [1, "1"]}), json!({}), json!(true)),
        (json!({"==": [0, false]}), json!({}), json!(true)),
        (json!({"==": [null, 0]}), json!({}), json!(false)),
        (json!({"==": [null, null]}), json!({}), json!(true)),
        (json!({"==": [[1], "1"]}), json!({}), json!(true)),
        (json!({"===": [1, "1"]}), json!({}), json!(false)),
        (json!({"===": [1, 1.0]}), json!({}), json!(true)),
        (json!({"!=": ["a", "b"]}), json!({}), json!(true)),
        (json!({"!==": [1, 1]}), json!({}), json!(false)),
        (json!({">": [2, 1]}), json!({}), json!(true)),
        (json!({">=": ["2", "10"]}), json!({}), json!(true)),
        (json!({">=": [2, "10"]}), json!({}), json!(false)),
        (json!({"<": [1, 2, 3]}), json!({}), json!(true)),
        (json!({"<": [1, 1, 3]}), json!({}), json!(false)),
        (json!({"<=": [1, 1, 3]}), json!({}), json!(true)),
        (json!({">": [3, 2, 1]}), json!({}), json!(true)),
        (json!({"<": ["a", "b"]}), json!({}), json!(true)),
        (json!({"<": [null, 1]}), json!({}), json!(true)),
        (json!({"<": ["x", 1]}), json!({}), json!(false)),
        (json!({"!": [false]}), json!({}), json!(true)),
        (json!({"!": false}), json!({}), json!(true)),
        (json!({"!!": [[]]}), json!({}), json!(false)),
        (json!({"!!": ["0"]}), json!({}), json!(true)),
        (json!({"or": [false, 0, "a"]}), json!({}), json!("a")),
        (json!({"or": [false, 0]}), json!({}), json!(0)),
        (json!({"and": [true, "", 3]}), json!({}), json!("")),
        (json!({"and": [true, 3]}), json!({}), json!(3)),
        (json!({"if": [true, "yes", "no"]}), json!({}), json!("yes")),
        (json!({"if": [false, 1, false, 2, 3]}), json!({}), json!(3)),
        (json!({"if": [false, 1]}), json!({}), json!(null)),
        (json!({"if": [[], 1, 2]}), json!({}), json!(2)),
        (json!({"?:": [true, 1, 2]}), json!({}), json!(1)),
        (json!({"var": "a"}), json!({"a": 1}), json!(1)),
        (json!({"var": ["b", "def"]}), json!({"a": 1}), json!("def")),
        (
            json!({"var": "a.b.1"}),
            json!({"a": {"b": [1, 2]}}),
            json!(2),
        ),
        (
            json!({"var": "a.b.01"}),
            json!({"a": {"b": [1, 2]}}),
            json!(null),
        ),
        (json!({"var": ["x", 5]}), json!({"x": null}), json!(null)),
        (json!({"var": ["x.y", 5]}), json!({"x": null}), json!(5)),
        (json!({"var": ""}), json!({"a": 1}), json!({"a": 1})),
        (
            json!({"var": {"cat": ["a", ".b"]}}),
            json!({"a": {"b": 7}}),
            json!(7),
        ),
        (json!({"var": "$flagd.flagKey"}), json!({}), json!("flag")),
        (json!({"var": "$flagd.timestamp"}), json!({}), json!(42)),
        (
            json!({"var": "$flagd"}),
            json!({}),
            json!({"flagKey": "flag", "timestamp": 42}),
        ),
        (
            json!({"missing": ["a", "b"]}),
            json!({"a": 1}),
            json!(["b"]),
        ),
        (
            json!({"missing": [["a", "b"]]}),
            json!({"b": ""}),
            json!(["a", "b"]),
        ),
        (
            json!({"missing_some": [1, ["a", "b"]]}),
            json!({"a": 1}),
            json!([]),
        ),
        (
            json!({"missing_some": [1, ["a", "b"]]}),
            json!({}),
            json!(["a", "b"]),
        ),
        (
            json!({"in": ["Spring", "Springfield"]}),
            json!({}),
            json!(true),
        ),
        (json!({"in": [1, "a1"]}), json!({}), json!(true)),
        (json!({"in": ["i", ["a", "i"]]}), json!({}), json!(true)),
        (json!({"in": [1, ["1"]]}), json!({}), json!(false)),
        (json!({"in": ["a", null]}), json!({}), json!(false)),
        (
            json!({"cat": ["I love", " pie"]}),
            json!({}),
            json!("I love pie"),
        ),
        (
            json!({"cat": [1, null, true, [1, [2, null]]]}),
            json!({}),
            json!("1nulltrue1,2,"),
        ),
        (
            json!({"cat": [0.1, 1e21, -0.0]}),
            json!({}),
            json!("0.11e+210"),
        ),
        (
            json!({"substr": ["jsonlogic", 4]}),
            json!({}),
            json!("logic"),
        ),
        (
            json!({"substr": ["jsonlogic", -5]}),
            json!({}),
            json!("logic"),
        ),
        (
            json!({"substr": ["jsonlogic", 1, 3]}),
            json!({}),
            json!("son"),
        ),
        (
            json!({"substr": ["jsonlogic", 4, -2]}),
            json!({}),
            json!("log"),
        ),
        (json!({"substr": ["héllo", 1, 1]}), json!({}), json!("é")),
        (json!({"+": [1, "2"]}), json!({}), json!(3)),
        (json!({"+": ["3abc", 0.5]}), json!({}), json!(3.5)),
        (json!({"+": [true]}), json!({}), json!(null)),
        (json!({"*": [2, "3"]}), json!({}), json!(6)),
        (json!({"*": ["3"]}), json!({}), json!("3")),
        (json!({"-": [5]}), json!({}), json!(-5)),
        (json!({"-": [5, "2"]}), json!({}), json!(3)),
        (json!({"/": [1, 2]}), json!({}), json!(0.5)),
        (json!({"/": [1, 0]}), json!({}), json!(null)),
        (json!({"%": [7, 3]}), json!({}), json!(1)),
        (json!({"min": [1, "0", 3]}), json!({}), json!(0)),
        (json!({"max": [1, "x"]}), json!({}), json!(null)),
        (
            json!({"merge": [[1, 2], 3, [4, [5]]]}),
            json!({}),
            json!([1, 2, 3, 4, [5]]),
        ),
        (
            json!({"map": [[1, 2, 3], {"*": [{"var": ""}, 2]}]}),
            json!({}),
            json!([2, 4, 6]),
        ),
        (
            json!({"map": [{"var": "items"}, {"var": "name"}]}),
            json!({"items": [{"name": "a"}, {}]}),
            json!(["a", null]),
        ),
        (json!({"map": ["no array", 1]}), json!({}), json!([])),
        (
            json!({"filter": [[1, 2, 3], {">": [{"var": ""}, 1]}]}),
            json!({}),
            json!([2, 3]),
        ),
        (
            json!({"reduce": [[1, 2, 3], {"+": [{"var": "current"}, {"var": "accumulator"}]}, 10]}),
            json!({}),
            json!(16),
        ),
        (
            json!({"reduce": [{"var": "xs"}, {"cat": [{"var": "accumulator"}, {"var": "current.k"}]}, ""]}),
            json!({"xs": [{"k": "a"}, {"k": "b"}]}),
            json!("ab"),
        ),
        (
            json!({"all": [[1, 2], {">": [{"var": ""}, 0]}]}),
            json!({}),
            json!(true),
        ),
        (json!({"all": [[], true]}), json!({}), json!(false)),
        (
            json!({"some": [[1, 2], {">": [{"var": ""}, 1]}]}),
            json!({}),
            json!(true),
        ),
        (
            json!({"none": [[1, 2], {">": [{"var": ""}, 1]}]}),
            json!({}),
            json!(false),
        ),
        (
            json!({"starts_with": ["abc", "ab"]}),
            json!({}),
            json!(true),
        ),
        (
            json!({"ends_with": [{"var": "n"}, "3"]}),
            json!({"n": 3}),
            json!(null),
        ),
        (
            json!({"sem_ver": ["1.2.3", ">", "1.2.0"]}),
            json!({}),
            json!(true),
        ),
        (
            json!({"fractional": [["a", 1]]}),
            json!({"targetingKey": "k"}),
            json!("a"),
        ),
        (json!({"bogus": [1]}), json!({}), json!("<failed>")),
        (json!({"a": 1, "b": 2}), json!({}), json!({"a": 1, "b": 2})),
        (json!([1, {"var": "x"}]), json!({"x": 2}), json!([1, 2])),
    ];
    for (rule, data, expected) in cases {
        assert_eq!(eval(rule.clone(), data), expected, "{rule}");
    }
}

#[test]
fn constants_are_folded_at_compile_time() {
    for rule in [
        json!({"cat": ["a", "b"]}),
        json!({"if": [{"==": [1, 1]}, "yes", "no"]}),
        json!({"in": ["FR", ["FR", "DE"]]}),
        json!([1, 2, {"+": [1, 2]}]),
        json!({"!": [{"starts_with": ["abc", "a"]}]}),
    ] {
        assert!(matches!(compile(&rule), Node::Const(_)), "{rule} is folded");
    }
    assert!(matches!(
        compile(&json!({"cat": ["a", {"var": "b"}]})),
        Node::Cat(_)
    ));
}

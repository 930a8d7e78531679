//! Compiling the operations that reach outside the expression: `$ref` (evaluators), `var`
//! (the context), `segment` (the set's segments), and flagd's `starts_with`/`ends_with`, which
//! get a specialised node when they test a context value against a literal.

use serde_json::Value;

use super::compile::{Args, Position, RuleCompiler, is_operation};
use super::ops::parse_var_path;
use super::{Const, ConstValue, Node, PathKey, Var, VarPath, VarStringTest, js};
use crate::error::{DefinitionErrorKind as Kind, json_type};
use crate::path::Path;

impl RuleCompiler<'_> {
    pub(super) fn reference(&mut self, args: Args<'_>, position: Position) -> Node {
        let name = match args.items {
            [Value::String(name)] if args.bare => name,
            _ => {
                self.invalid_argument("$ref", "expected the name of an evaluator (a string)");
                return Node::Fail("`$ref` needs the name of an evaluator".into());
            }
        };
        let Some(rule) = self.evaluators.get(name) else {
            self.problem(Kind::MissingEvaluator(name.clone()));
            return Node::Fail(format!("evaluator `{name}` is not defined").into());
        };
        if self.refs.iter().any(|r| r == name) {
            let chain = self.refs.join(" -> ");
            self.problem(Kind::EvaluatorCycle(name.clone(), chain));
            return Node::Fail(format!("evaluator `{name}` refers to itself").into());
        }
        self.refs.push(name.clone());
        let outer = std::mem::replace(&mut self.path, Path::of(&["$evaluators", name]));
        let node = self.compile(rule, position);
        self.path = outer;
        self.refs.pop();
        node
    }

    pub(super) fn var(&mut self, args: Args<'_>) -> Node {
        self.arity("var", args, 0, 2);
        let default = (args.items.len() > 1).then(|| self.arg(args, 1, Position::Value));
        let path = match args.items.first() {
            None | Some(Value::Null) => VarPath::Whole,
            Some(Value::String(path)) => self.var_path(path),
            Some(Value::Number(n)) => {
                let text = js::number_to_string(super::value::number_to_f64(n));
                self.var_path(text.as_str())
            }
            Some(_) => {
                let path = self.arg(args, 0, Position::Value);
                let default = default.unwrap_or_else(Node::null);
                return Node::DynamicVar(Box::new([path, default]));
            }
        };
        Node::Var(Box::new(Var { path, default }))
    }

    fn var_path(&mut self, path: &str) -> VarPath {
        let at_root = self.scopes == 0;
        if let Some(property) = path.strip_prefix("$flagd.")
            && at_root
            && property != "flagKey"
            && property != "timestamp"
        {
            self.problem(Kind::UnknownFlagdProperty(property.to_owned()));
        }
        parse_var_path(path, at_root)
    }

    pub(super) fn string_test(&mut self, args: Args<'_>, ends: bool) -> Node {
        let name = if ends { "ends_with" } else { "starts_with" };
        if !self.arity(name, args, 2, 2) || args.bare {
            // flagd's operator returns null for anything but two arguments.
            return Node::null();
        }
        let mut valid = true;
        for (i, arg) in args.items.iter().enumerate() {
            if !matches!(arg, Value::String(_)) && !is_operation(arg) {
                let found = json_type(arg);
                self.at_index(i, |c| {
                    c.invalid_argument(
                        name,
                        format!("expected a string or an expression, found {found}"),
                    )
                });
                valid = false;
            }
        }
        let args = self.fixed(args, [Position::Value, Position::Value]);
        if !valid {
            return Node::null();
        }
        if let (
            Some(keys),
            Some(Const {
                value: ConstValue::Str(affix),
                ..
            }),
        ) = (args[0].as_root_var(), args[1].as_const())
        {
            let keys = keys
                .iter()
                .map(|k| PathKey {
                    key: k.key.clone(),
                    index: k.index,
                })
                .collect();
            return Node::VarStringTest(Box::new(VarStringTest {
                keys,
                affix: affix.clone(),
                ends,
            }));
        }
        Node::StringTest { ends, args }
    }

    pub(super) fn segment(&mut self, args: Args<'_>) -> Node {
        if self.in_segment {
            self.diag.error(&self.path, Kind::NestedSegment);
            return Node::null();
        }
        let name = match args.items {
            [Value::String(name)] => name,
            _ => {
                let reason = "expected the name of a segment (a string)".to_owned();
                self.diag.error(
                    &self.path,
                    Kind::InvalidArgument {
                        operator: "segment",
                        reason,
                    },
                );
                return Node::null();
            }
        };
        match self.segments.get(name) {
            Some(&id) => Node::Segment(id),
            None => {
                self.diag
                    .error(&self.path, Kind::UnknownSegment(name.clone()));
                Node::null()
            }
        }
    }
}

/// The items of an array made only of strings.
pub(super) fn string_list(value: &Value) -> Option<Box<[Box<str>]>> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(Box::from))
            .collect(),
        _ => None,
    }
}

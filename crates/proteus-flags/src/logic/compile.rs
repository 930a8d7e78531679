//! JSON Logic to [`Node`] trees, with validation.
//!
//! Every problem is reported at its JSON pointer. What flagd tolerates (unknown operators,
//! wrong arity, bad literal arguments) is a *rule problem*: an error in strict mode; in
//! flagd-compatible mode a warning, compiled into the node that reproduces flagd's run-time
//! behaviour (`Fail` for what makes flagd's JSON Logic engine error, `null` for what makes a
//! flagd custom operator return nil).

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::eval::{Env, Scope};
use super::value::Val;
use super::{ArithmeticOp, CompareOp, Const, ConstValue, IterateOp, Node, js};
use crate::document::Diagnostics;
use crate::error::DefinitionErrorKind as Kind;
use crate::path::Path;
use crate::set::Variants;
use crate::{TARGETING_DEPTH_MAX, TARGETING_NODES_MAX};

/// Whether a node's value is the targeting result (and so must name a variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Position {
    Result,
    Value,
}

/// The arguments of an operation: json-logic-js treats a non-array argument as a list of one.
#[derive(Clone, Copy)]
pub(crate) struct Args<'v> {
    pub(crate) items: &'v [Value],
    /// The argument was not an array, so its path has no index.
    pub(super) bare: bool,
}

impl<'v> Args<'v> {
    fn new(args: &'v Value) -> Self {
        match args {
            Value::Array(items) => Args { items, bare: false },
            other => Args {
                items: std::slice::from_ref(other),
                bare: true,
            },
        }
    }
}

/// Compiles the rules of one flag (or one segment).
pub(crate) struct RuleCompiler<'c> {
    pub(crate) diag: &'c mut Diagnostics,
    pub(super) evaluators: &'c Map<String, Value>,
    pub(super) segments: &'c HashMap<String, u32>,
    /// The flag's variants; `None` when compiling a segment.
    pub(crate) variants: Option<&'c Variants>,
    pub(super) path: Path,
    depth: usize,
    nodes: usize,
    /// Evaluators being expanded, to detect cycles.
    pub(super) refs: Vec<String>,
    /// How many `map`/`filter`/`reduce`/... bodies enclose the current node.
    pub(super) scopes: usize,
    /// A size limit was hit: stop compiling (and reporting) this rule.
    exhausted: bool,
    /// Compiling a segment, where `segment` is not allowed.
    pub(super) in_segment: bool,
}

impl<'c> RuleCompiler<'c> {
    pub(crate) fn new(
        diag: &'c mut Diagnostics,
        evaluators: &'c Map<String, Value>,
        segments: &'c HashMap<String, u32>,
        variants: Option<&'c Variants>,
    ) -> Self {
        RuleCompiler {
            diag,
            evaluators,
            segments,
            variants,
            path: Path::root(),
            depth: 0,
            nodes: 0,
            refs: Vec::new(),
            scopes: 0,
            exhausted: false,
            in_segment: false,
        }
    }

    /// This compiler compiles segments, which cannot use other segments.
    pub(crate) fn for_segments(mut self) -> Self {
        self.in_segment = true;
        self
    }

    /// Compiles a whole rule found at `path`: a flag's targeting (result position) or a segment.
    pub(crate) fn compile_rule(&mut self, rule: &Value, path: Path) -> Node {
        self.path = path;
        self.depth = 0;
        self.nodes = 0;
        self.exhausted = false;
        let position = if self.variants.is_some() {
            Position::Result
        } else {
            Position::Value
        };
        self.compile(rule, position)
    }

    /// Compiles evaluator `name` on its own (checking it even when no flag uses it).
    pub(crate) fn compile_evaluator(&mut self, name: &str, rule: &Value) -> Node {
        self.refs.push(name.to_owned());
        let node = self.compile_rule(rule, Path::of(&["$evaluators", name]));
        self.refs.pop();
        node
    }

    /// A rule problem at the current path.
    pub(crate) fn problem(&mut self, kind: Kind) {
        self.diag.rule(&self.path, kind);
    }

    /// A limit was exceeded: an error in every mode.
    pub(crate) fn limit_error(&mut self, kind: Kind) {
        self.diag.error(&self.path, kind);
    }

    pub(crate) fn invalid_argument(&mut self, operator: &'static str, reason: impl Into<String>) {
        self.problem(Kind::InvalidArgument {
            operator,
            reason: reason.into(),
        });
    }

    pub(crate) fn compile(&mut self, value: &Value, position: Position) -> Node {
        if self.exhausted {
            return Node::null();
        }
        self.nodes += 1;
        if self.nodes > TARGETING_NODES_MAX {
            self.exhausted = true;
            self.diag
                .error(&self.path, Kind::TargetingTooLarge(TARGETING_NODES_MAX));
            return Node::null();
        }
        if self.depth >= TARGETING_DEPTH_MAX {
            self.exhausted = true;
            self.diag
                .error(&self.path, Kind::TargetingTooDeep(TARGETING_DEPTH_MAX));
            return Node::null();
        }
        self.depth += 1;
        let node = match value {
            Value::Object(map) if map.len() == 1 => {
                let (operator, args) = map.iter().next().expect("one entry");
                let node = self.operation(operator, args, position);
                self.fold(node, position)
            }
            Value::Object(map) => {
                // json-logic-js returns such objects as data; in targeting they are mistakes.
                self.problem(Kind::MalformedOperation(map.len()));
                self.literal(value, position)
            }
            Value::Array(items) => self.array(items, position),
            scalar => self.literal(scalar, position),
        };
        self.depth -= 1;
        node
    }

    /// Compiles argument `index` of `args`, extending the path with the index.
    pub(crate) fn arg(&mut self, args: Args<'_>, index: usize, position: Position) -> Node {
        match args.items.get(index) {
            None => Node::null(),
            Some(value) if args.bare => self.compile(value, position),
            Some(value) => self.at_index(index, |c| c.compile(value, position)),
        }
    }

    /// Runs `f` with `index` appended to the path.
    pub(crate) fn at_index<T>(&mut self, index: usize, f: impl FnOnce(&mut Self) -> T) -> T {
        self.path.push_index(index);
        let out = f(self);
        self.path.pop();
        out
    }

    fn at_key<T>(&mut self, key: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        self.path.push_key(key);
        let out = f(self);
        self.path.pop();
        out
    }

    fn args(&mut self, args: Args<'_>, position: Position) -> Box<[Node]> {
        (0..args.items.len())
            .map(|i| self.arg(args, i, position))
            .collect()
    }

    /// The first `N` arguments, missing ones as `null` (json-logic-js's `undefined`).
    pub(super) fn fixed<const N: usize>(
        &mut self,
        args: Args<'_>,
        positions: [Position; N],
    ) -> Box<[Node; N]> {
        let mut index = 0;
        Box::new(positions.map(|position| {
            let node = self.arg(args, index, position);
            index += 1;
            node
        }))
    }

    /// Reports a rule problem unless `min <= count <= max`; returns whether the count is right.
    pub(crate) fn arity(
        &mut self,
        operator: &'static str,
        args: Args<'_>,
        min: usize,
        max: usize,
    ) -> bool {
        let count = args.items.len();
        if (min..=max).contains(&count) {
            return true;
        }
        let expected = match (min, max) {
            (1, 1) => "1",
            (2, 2) => "2",
            (3, 3) => "3",
            (1, 2) => "1 or 2",
            (2, 3) => "2 or 3",
            (0, usize::MAX) => "any number of",
            (1, usize::MAX) => "at least 1",
            _ => "a different number of",
        };
        self.problem(Kind::Arity {
            operator,
            expected,
            found: count,
        });
        false
    }

    fn literal(&mut self, value: &Value, position: Position) -> Node {
        let constant = match value {
            Value::Null => ConstValue::Null,
            Value::Bool(b) => ConstValue::Bool(*b),
            Value::Number(n) => ConstValue::Num(super::value::number_to_f64(n)),
            Value::String(s) => ConstValue::Str(s.as_str().into()),
            compound => {
                if exceeds_depth(compound, TARGETING_DEPTH_MAX.saturating_sub(self.depth)) {
                    self.exhausted = true;
                    self.diag
                        .error(&self.path, Kind::TargetingTooDeep(TARGETING_DEPTH_MAX));
                    return Node::null();
                }
                ConstValue::Json(Box::new(compound.clone()))
            }
        };
        self.constant(constant, position)
    }

    /// A constant node, resolved to its variant; in result position a constant that names no
    /// variant is a rule problem (flagd answers it with a `GENERAL` error at run time).
    pub(crate) fn constant(&mut self, value: ConstValue, position: Position) -> Node {
        let variant = self.variants.and_then(|variants| match &value {
            ConstValue::Str(s) => variants.find(s),
            ConstValue::Bool(b) => variants.find(if *b { "true" } else { "false" }),
            ConstValue::Num(n) => variants.find(js::number_to_string(*n).as_str()),
            ConstValue::Null | ConstValue::Json(_) => None,
        });
        let constant = Const { value, variant };
        if let (Position::Result, None, Some(variants)) = (position, variant, self.variants)
            && !constant.val().is_null()
        {
            let name = match &constant.value {
                ConstValue::Str(s) => s.to_string(),
                _ => constant.val().to_value().to_string(),
            };
            let known = variants.list();
            self.problem(Kind::UnknownVariant { name, known });
        }
        Node::Const(constant)
    }

    fn array(&mut self, items: &[Value], position: Position) -> Node {
        if position == Position::Result {
            let found = "an array";
            self.problem(Kind::WrongType {
                expected: "a variant name, a boolean or null",
                found,
            });
        }
        let nodes: Box<[Node]> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.at_index(i, |c| c.compile(item, Position::Value)))
            .collect();
        if nodes.iter().all(|node| node.as_const().is_some()) {
            let values = nodes
                .iter()
                .filter_map(Node::as_const)
                .map(|c| c.val().to_value())
                .collect();
            return Node::Const(Const {
                value: ConstValue::Json(Box::new(Value::Array(values))),
                variant: None,
            });
        }
        Node::Array(nodes)
    }

    fn operation(&mut self, operator: &str, args: &Value, position: Position) -> Node {
        self.at_key(operator, |c| {
            c.operation_at(operator, Args::new(args), position)
        })
    }

    fn operation_at(&mut self, operator: &str, args: Args<'_>, position: Position) -> Node {
        use Position::Value as V;
        match operator {
            "$ref" => self.reference(args, position),
            "var" => self.var(args),
            "missing" => Node::Missing(self.args(args, V)),
            "missing_some" => {
                self.arity("missing_some", args, 2, 2);
                Node::MissingSome(self.fixed(args, [V, V]))
            }
            "if" | "?:" => {
                self.arity(
                    if operator == "if" { "if" } else { "?:" },
                    args,
                    1,
                    usize::MAX,
                );
                let count = args.items.len();
                let nodes = (0..count)
                    .map(|i| {
                        let is_branch = i % 2 == 1 || i + 1 == count;
                        self.arg(args, i, if is_branch { position } else { V })
                    })
                    .collect();
                Node::If(nodes)
            }
            "and" | "or" => {
                self.arity(
                    if operator == "and" { "and" } else { "or" },
                    args,
                    1,
                    usize::MAX,
                );
                let count = args.items.len();
                let nodes = (0..count)
                    .map(|i| self.arg(args, i, if i + 1 == count { position } else { V }))
                    .collect();
                if operator == "and" {
                    Node::And(nodes)
                } else {
                    Node::Or(nodes)
                }
            }
            "!" | "!!" => {
                self.arity(if operator == "!" { "!" } else { "!!" }, args, 1, 1);
                let [arg] = *self.fixed(args, [V]);
                if operator == "!" {
                    Node::Not(Box::new(arg))
                } else {
                    Node::Truthy(Box::new(arg))
                }
            }
            "==" | "===" | "!=" | "!==" => {
                let name = match operator {
                    "==" => "==",
                    "===" => "===",
                    "!=" => "!=",
                    _ => "!==",
                };
                self.arity(name, args, 2, 2);
                let strict = operator.len() == 3;
                let negate = operator.starts_with('!');
                Node::Equals {
                    strict,
                    negate,
                    args: self.fixed(args, [V, V]),
                }
            }
            "<" | "<=" | ">" | ">=" => {
                let (name, op) = match operator {
                    "<" => ("<", CompareOp::Less),
                    "<=" => ("<=", CompareOp::LessOrEqual),
                    ">" => (">", CompareOp::Greater),
                    _ => (">=", CompareOp::GreaterOrEqual),
                };
                self.arity(name, args, 2, 3);
                let count = args.items.len().clamp(2, 3);
                Node::Compare {
                    op,
                    args: (0..count).map(|i| self.arg(args, i, V)).collect(),
                }
            }
            "in" => {
                self.arity("in", args, 2, 2);
                let args = self.fixed(args, [V, V]);
                match (args[0].as_root_var(), args[1].as_const().map(|c| &c.value)) {
                    (Some(keys), Some(ConstValue::Json(list)))
                        if super::compile_access::string_list(list).is_some() =>
                    {
                        let keys = keys
                            .iter()
                            .map(|k| super::PathKey {
                                key: k.key.clone(),
                                index: k.index,
                            })
                            .collect();
                        let items = super::compile_access::string_list(list).unwrap_or_default();
                        Node::VarInStrings(Box::new(super::VarInStrings { keys, items }))
                    }
                    _ => Node::In(args),
                }
            }
            "cat" => Node::Cat(self.args(args, V)),
            "substr" => {
                self.arity("substr", args, 2, 3);
                let count = args.items.len().clamp(2, 3);
                Node::Substr((0..count).map(|i| self.arg(args, i, V)).collect())
            }
            "+" | "-" | "*" | "/" | "%" | "min" | "max" => self.arithmetic(operator, args),
            "merge" => Node::Merge(self.args(args, V)),
            "map" | "filter" | "all" | "some" | "none" => {
                let (name, op) = match operator {
                    "map" => ("map", IterateOp::Map),
                    "filter" => ("filter", IterateOp::Filter),
                    "all" => ("all", IterateOp::All),
                    "some" => ("some", IterateOp::Some),
                    _ => ("none", IterateOp::None),
                };
                self.arity(name, args, 2, 2);
                let array = self.arg(args, 0, V);
                self.scopes += 1;
                let body = self.arg(args, 1, V);
                self.scopes -= 1;
                Node::Iterate {
                    op,
                    args: Box::new([array, body]),
                }
            }
            "reduce" => {
                self.arity("reduce", args, 3, 3);
                let array = self.arg(args, 0, V);
                self.scopes += 1;
                let body = self.arg(args, 1, V);
                self.scopes -= 1;
                let initial = self.arg(args, 2, V);
                Node::Reduce(Box::new([array, body, initial]))
            }
            "starts_with" => self.string_test(args, false),
            "ends_with" => self.string_test(args, true),
            "sem_ver" => self.sem_ver(args),
            "fractional" => self.fractional(args, position),
            "segment" => self.segment(args),
            unknown => {
                self.problem(Kind::UnknownOperator(unknown.to_owned()));
                Node::Fail(format!("unknown operator `{unknown}`").into())
            }
        }
    }

    fn arithmetic(&mut self, operator: &str, args: Args<'_>) -> Node {
        let (name, op, min, max) = match operator {
            "+" => ("+", ArithmeticOp::Add, 1, usize::MAX),
            "-" => ("-", ArithmeticOp::Subtract, 1, 2),
            "*" => ("*", ArithmeticOp::Multiply, 1, usize::MAX),
            "/" => ("/", ArithmeticOp::Divide, 2, 2),
            "%" => ("%", ArithmeticOp::Remainder, 2, 2),
            "min" => ("min", ArithmeticOp::Min, 1, usize::MAX),
            _ => ("max", ArithmeticOp::Max, 1, usize::MAX),
        };
        self.arity(name, args, min, max);
        Node::Arithmetic {
            op,
            args: self.args(args, Position::Value),
        }
    }

    /// Replaces an operation whose arguments are all constants by its value.
    fn fold(&mut self, node: Node, position: Position) -> Node {
        let children: &[Node] = match &node {
            Node::If(args)
            | Node::And(args)
            | Node::Or(args)
            | Node::Cat(args)
            | Node::Substr(args) => args,
            Node::Merge(args) | Node::Compare { args, .. } | Node::Arithmetic { args, .. } => args,
            Node::Not(arg) | Node::Truthy(arg) => std::slice::from_ref(&**arg),
            Node::Equals { args, .. } | Node::In(args) | Node::StringTest { args, .. } => &args[..],
            _ => return node,
        };
        if !children.iter().all(|child| child.as_const().is_some()) {
            return node;
        }
        let context = Map::new();
        let env = Env::new(&context, "", 0, &[]);
        let value = match node.eval(&env, Scope::Root) {
            Ok(value) => const_value(value),
            Err(_) => return node,
        };
        // The branches of `if`, `and` and `or` were checked in result position already.
        let checked = matches!(node, Node::If(_) | Node::And(_) | Node::Or(_));
        self.constant(value, if checked { Position::Value } else { position })
    }
}

/// Whether `value` is a JSON Logic operation (an object with one key).
pub(crate) fn is_operation(value: &Value) -> bool {
    matches!(value, Value::Object(map) if map.len() == 1)
}

fn const_value(value: Val<'_>) -> ConstValue {
    match value {
        Val::Null => ConstValue::Null,
        Val::Bool(b) => ConstValue::Bool(b),
        Val::Num(n) => ConstValue::Num(n),
        Val::Str(s) => ConstValue::Str(s.into()),
        Val::String(s) => ConstValue::Str(s.into()),
        other => ConstValue::Json(Box::new(other.to_value())),
    }
}

/// Whether `value` nests deeper than `max` levels (checked without unbounded recursion).
fn exceeds_depth(value: &Value, max: usize) -> bool {
    if max == 0 {
        return true;
    }
    match value {
        Value::Array(items) => items.iter().any(|item| exceeds_depth(item, max - 1)),
        Value::Object(map) => map.values().any(|item| exceeds_depth(item, max - 1)),
        _ => false,
    }
}

//! JSON Logic, compiled. A targeting rule is compiled once into a tree of [`Node`]s: operators
//! resolved to enum variants, `var` paths split into keys (array indexes pre-parsed), `$ref`s
//! inlined, constant sub-expressions folded, and string literals in result position resolved to
//! variant indexes. Evaluation walks that tree over borrowed values.

mod compile;
mod compile_access;
mod eval;
pub(crate) mod js;
mod ops;
pub(crate) mod value;

#[cfg(test)]
mod fast_path_tests;
#[cfg(test)]
mod tests;

use serde_json::Value;

use crate::fractional::Fractional;
use crate::semver::SemVerNode;

pub(crate) use compile::{Args, Position, RuleCompiler, is_operation};
pub(crate) use eval::{Env, Failure, Resolved, Scope, root_value};

/// One compiled JSON Logic expression.
#[derive(Debug)]
pub(crate) enum Node {
    /// A literal, or a sub-expression folded at compile time.
    Const(Const),
    Var(Box<Var>),
    /// `var` whose path is computed: `[path expression, default]`.
    DynamicVar(Box<[Node; 2]>),
    /// An array literal with at least one non-constant item.
    Array(Box<[Node]>),
    /// `if` / `?:`: condition, then, [condition, then, ...], [else].
    If(Box<[Node]>),
    And(Box<[Node]>),
    Or(Box<[Node]>),
    Not(Box<Node>),
    Truthy(Box<Node>),
    Equals {
        strict: bool,
        negate: bool,
        args: Box<[Node; 2]>,
    },
    /// `<`, `<=`, `>`, `>=` with two operands, or three (between: `a op b op c`).
    Compare {
        op: CompareOp,
        args: Box<[Node]>,
    },
    In(Box<[Node; 2]>),
    Arithmetic {
        op: ArithmeticOp,
        args: Box<[Node]>,
    },
    Cat(Box<[Node]>),
    /// `substr`: source, start, and an optional length.
    Substr(Box<[Node]>),
    Merge(Box<[Node]>),
    Missing(Box<[Node]>),
    MissingSome(Box<[Node; 2]>),
    /// `map`, `filter`, `all`, `some`, `none`: array, body (evaluated with the item as data).
    Iterate {
        op: IterateOp,
        args: Box<[Node; 2]>,
    },
    /// `reduce`: array, body (data is `{current, accumulator}`), initial accumulator.
    Reduce(Box<[Node; 3]>),
    /// flagd's `starts_with` / `ends_with`.
    StringTest {
        ends: bool,
        args: Box<[Node; 2]>,
    },
    /// `starts_with`/`ends_with` of a root `var` (no default) and a literal: the common case,
    /// evaluated without building intermediate values.
    VarStringTest(Box<VarStringTest>),
    /// `in` of a root `var` (no default) and a literal array of strings.
    VarInStrings(Box<VarInStrings>),
    SemVer(Box<SemVerNode>),
    Fractional(Box<Fractional>),
    /// Proteus segment: index into the set's segments.
    Segment(u32),
    /// A rule flagd cannot evaluate (unknown operator, missing evaluator): evaluating it fails
    /// with `PARSE_ERROR`, as flagd's JSON Logic engine does. Only in flagd-compatible mode.
    Fail(Box<str>),
}

/// A constant, with the variant it names when it is returned by targeting.
#[derive(Debug)]
pub(crate) struct Const {
    pub(crate) value: ConstValue,
    /// Index of the variant this constant names (as a string, `true`/`false`, or a number).
    pub(crate) variant: Option<u16>,
}

#[derive(Debug)]
pub(crate) enum ConstValue {
    Null,
    Bool(bool),
    Num(f64),
    Str(Box<str>),
    /// Arrays and objects.
    Json(Box<Value>),
}

impl Const {
    pub(crate) fn null() -> Self {
        Const {
            value: ConstValue::Null,
            variant: None,
        }
    }

    pub(crate) fn val(&self) -> value::Val<'_> {
        use value::Val;
        match &self.value {
            ConstValue::Null => Val::Null,
            ConstValue::Bool(b) => Val::Bool(*b),
            ConstValue::Num(n) => Val::Num(*n),
            ConstValue::Str(s) => Val::Str(s),
            ConstValue::Json(v) => Val::Json(v),
        }
    }
}

impl Node {
    pub(crate) fn null() -> Self {
        Node::Const(Const::null())
    }

    /// The path of a `var` read from the root context without a default, if this is one.
    pub(crate) fn as_root_var(&self) -> Option<&[PathKey]> {
        match self {
            Node::Var(var) if var.default.is_none() => match &var.path {
                VarPath::Keys(keys) => Some(keys),
                _ => None,
            },
            _ => None,
        }
    }

    pub(crate) fn as_const(&self) -> Option<&Const> {
        match self {
            Node::Const(c) => Some(c),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub(crate) struct VarStringTest {
    pub(crate) keys: Box<[PathKey]>,
    pub(crate) affix: Box<str>,
    pub(crate) ends: bool,
}

#[derive(Debug)]
pub(crate) struct VarInStrings {
    pub(crate) keys: Box<[PathKey]>,
    pub(crate) items: Box<[Box<str>]>,
}

/// A `var` with a path known at compile time.
#[derive(Debug)]
pub(crate) struct Var {
    pub(crate) path: VarPath,
    pub(crate) default: Option<Node>,
}

#[derive(Debug)]
pub(crate) enum VarPath {
    /// `""`, `null` or `[]`: the whole data object.
    Whole,
    /// `$flagd.flagKey`: the key of the flag being evaluated.
    FlagKey,
    /// `$flagd.timestamp`: the caller's `now_s`.
    Timestamp,
    /// `$flagd`: the object holding both.
    Flagd,
    /// Any other `$flagd.*`, which flagd never provides.
    Undefined,
    Keys(Box<[PathKey]>),
}

/// One dotted segment of a `var` path; `index` is set when it is a canonical array index.
#[derive(Debug)]
pub(crate) struct PathKey {
    pub(crate) key: Box<str>,
    pub(crate) index: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompareOp {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithmeticOp {
    Add,
    Subtract,
    Multiply,
    Divide,
    Remainder,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IterateOp {
    Map,
    Filter,
    All,
    Some,
    None,
}

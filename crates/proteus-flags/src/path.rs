//! JSON pointers (RFC 6901) to the values being compiled, built incrementally and rendered only
//! when an error is reported.

use std::fmt::Write as _;

/// A path from the document root, as a stack of reference tokens.
#[derive(Debug, Clone, Default)]
pub(crate) struct Path {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone)]
enum Token {
    Key(Box<str>),
    Index(usize),
}

impl Path {
    pub(crate) fn root() -> Self {
        Self::default()
    }

    /// A path starting with the given keys, e.g. `["flags", key]`.
    pub(crate) fn of(keys: &[&str]) -> Self {
        let mut path = Self::root();
        for key in keys {
            path.push_key(key);
        }
        path
    }

    pub(crate) fn push_key(&mut self, key: &str) {
        self.tokens.push(Token::Key(key.into()));
    }

    pub(crate) fn push_index(&mut self, index: usize) {
        self.tokens.push(Token::Index(index));
    }

    pub(crate) fn pop(&mut self) {
        self.tokens.pop();
    }

    /// This path extended by one key, leaving `self` unchanged.
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut path = self.clone();
        path.push_key(key);
        path
    }

    /// This path extended by one index, leaving `self` unchanged.
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut path = self.clone();
        path.push_index(index);
        path
    }

    /// The RFC 6901 rendering: `~` is escaped as `~0` and `/` as `~1`.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for token in &self.tokens {
            out.push('/');
            match token {
                Token::Key(key) => {
                    for c in key.chars() {
                        match c {
                            '~' => out.push_str("~0"),
                            '/' => out.push_str("~1"),
                            c => out.push(c),
                        }
                    }
                }
                Token::Index(index) => {
                    let _ = write!(out, "{index}");
                }
            }
        }
        out
    }
}

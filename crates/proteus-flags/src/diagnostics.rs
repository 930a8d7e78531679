//! Collecting definition problems while compiling.

use crate::DEFINITION_ERRORS_MAX;
use crate::compile::Validation;
use crate::error::{DefinitionError, DefinitionErrorKind as Kind};
use crate::path::Path;

/// Collects the problems of one compilation: errors always fail it; rule problems fail it in
/// strict mode and are warnings in flagd-compatible mode.
#[derive(Debug)]
pub(crate) struct Diagnostics {
    pub(crate) document: usize,
    pub(crate) validation: Validation,
    pub(crate) errors: Vec<DefinitionError>,
    pub(crate) warnings: Vec<DefinitionError>,
}

impl Diagnostics {
    pub(crate) fn new(validation: Validation) -> Self {
        Self {
            document: 0,
            validation,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// A problem that makes the definitions unusable in any mode.
    pub(crate) fn error(&mut self, path: &Path, kind: Kind) {
        let error = DefinitionError {
            document: self.document,
            path: path.render(),
            kind,
        };
        push_unique(&mut self.errors, error);
    }

    /// A problem flagd tolerates: an error in strict mode, a warning otherwise.
    pub(crate) fn rule(&mut self, path: &Path, kind: Kind) {
        let error = DefinitionError {
            document: self.document,
            path: path.render(),
            kind,
        };
        match self.validation {
            Validation::Strict => push_unique(&mut self.errors, error),
            Validation::FlagdCompatible => push_unique(&mut self.warnings, error),
        }
    }

    pub(crate) fn is_strict(&self) -> bool {
        self.validation == Validation::Strict
    }
}

/// Keeps the first [`DEFINITION_ERRORS_MAX`] distinct errors. An evaluator used by several
/// flags is compiled once per flag; its problems are still reported once.
fn push_unique(errors: &mut Vec<DefinitionError>, error: DefinitionError) {
    if errors.len() < DEFINITION_ERRORS_MAX && !errors.contains(&error) {
        errors.push(error);
    }
}

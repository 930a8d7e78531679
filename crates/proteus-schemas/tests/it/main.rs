//! Integration tests of the schema registry.

mod compat_matrix;
mod registry;
mod upcasting;
mod validation;

use proteus_schemas::EventTypeName;

pub fn name(text: &str) -> EventTypeName {
    EventTypeName::parse(text).unwrap()
}

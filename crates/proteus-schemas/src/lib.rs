//! The schema registry of Proteus: JSON Schemas per event type and version, compatibility modes
//! with Confluent Schema Registry's meaning, validation of appends, and declarative upcasters
//! that let consumers written for the latest version read every older event.
//!
//! The state is a [`SchemaRegistry`] changed only by [`RegistryChange`]s: a runtime calls
//! `prepare_register`/`prepare_set_mode`, appends the change to its log, then `apply`s it;
//! at start-up it replays the log through `apply`. Everything here is pure: no I/O, no clock.
//!
//! Compatibility ([`compat`]) is decided structurally on the schemas, so a change that breaks
//! readers is refused with each incompatibility's JSON pointer, kind and fix. When a version
//! declares an [`Upcaster`], backward checks compare the new schema with the *upcast* form of
//! the older ones: a rename with an upcaster is compatible, since readers never see the old
//! name. Validation uses boon (draft 2020-12 by default, formats asserted); each schema is
//! compiled once, when it is registered or replayed.

pub mod compat;
mod error;
mod mode;
mod name;
mod registry;
pub mod upcast;
mod validate;

pub use compat::{Direction, Incompatibility, IncompatibilityKind};
pub use error::SchemaError;
pub use mode::{COMPATIBILITY_MODES, CompatibilityMode, SchemaPolicy, UnknownCompatibilityMode};
pub use name::{EVENT_TYPE_NAME_BYTES_MAX, EventTypeName, InvalidEventTypeName};
pub use registry::{
    AppendCheck, CompatibilityReport, EventTypeInfo, RegisteredSchema, Registration,
    RegistryChange, RegistryConfig, RegistryLimits, SchemaRegistry,
};
pub use upcast::{UpcastStep, Upcaster, ValueType};
pub use validate::{CompiledSchema, Violation};

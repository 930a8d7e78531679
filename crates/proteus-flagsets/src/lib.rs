//! Flag sets: named, versioned flagd documents (environments such as `dev`, `staging`,
//! `prod`), changed only through [`Change`]s that each produce a [`Revision`].
//!
//! A revision is the audit record of one change: who made it (the API key's name, or the file
//! it was loaded from), when, why (an optional comment), what changed (an RFC 6902 JSON Patch
//! from the previous document) and the whole resulting document. Revisions are appended to the
//! log as CloudEvents ([`audit`]), which makes the log the flag sets' durable store: replaying
//! the audit topic rebuilds every set at its latest version, and any earlier version can be
//! restored from its revision.
//!
//! This crate is pure: it applies changes to documents, validates them by compiling them with
//! [`proteus_flags`], and encodes and decodes audit events. Storage, clocks and notification
//! belong to `proteus-flagsets-service`.

pub mod audit;
mod change;
mod name;
mod revision;
pub mod schedule;
pub mod stale;

pub use change::{Change, ChangeError, FlagStateChange, apply};
pub use name::{FlagSetName, InvalidFlagSetName};
pub use revision::{ChangeKind, Revision, ValidationMode, compile};
pub use schedule::{Schedule, ScheduleEnded, ScheduleOutcome};

/// Longest actor name recorded in a revision, in bytes.
pub const ACTOR_BYTES_MAX: usize = 128;
/// Longest comment recorded in a revision, in bytes.
pub const COMMENT_BYTES_MAX: usize = 4_096;

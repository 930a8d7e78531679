//! The registry: event types, their schema versions, modes and upcasters, changed only through
//! [`RegistryChange`]s so a runtime can log the changes and rebuild the state by replaying them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compat::{Direction, Incompatibility, IncompatibilityKind, incompatibilities};
use crate::error::SchemaError;
use crate::mode::{CompatibilityMode, SchemaPolicy};
use crate::name::EventTypeName;
use crate::upcast::{Upcaster, fill_defaults, upcast_schema};
use crate::validate::CompiledSchema;

/// Bounds of a registry. Every one is enforced with an error that names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryLimits {
    /// Largest schema, in bytes of compact JSON.
    pub schema_bytes_max: usize,
    /// Most versions of one event type; at least 3, so a consumer of the latest version can
    /// always read events two versions back.
    pub versions_per_type_max: usize,
    /// Most event types (with a schema or a mode).
    pub event_types_max: usize,
    /// Most violations one validation error reports.
    pub validation_errors_max: usize,
    /// Most `examples` of a schema checked at registration.
    pub examples_max: usize,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            schema_bytes_max: 64 * 1024,
            versions_per_type_max: 100,
            event_types_max: 10_000,
            validation_errors_max: 20,
            examples_max: 20,
        }
    }
}

/// Settings of a registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryConfig {
    pub limits: RegistryLimits,
    /// The mode of event types that have none of their own (Confluent's global default).
    pub default_mode: CompatibilityMode,
}

/// One registered version of an event type's schema.
#[derive(Clone, Debug)]
pub struct RegisteredSchema {
    pub event_type: EventTypeName,
    pub version: u32,
    pub schema: Value,
    /// How events of the previous version become this one; `None`: they are read as they are
    /// (only allowed when this version reads them unchanged).
    pub upcaster: Option<Upcaster>,
    compiled: Arc<CompiledSchema>,
}

impl RegisteredSchema {
    pub fn compiled(&self) -> &CompiledSchema {
        &self.compiled
    }
}

/// A summary of one event type, for listings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTypeInfo {
    pub event_type: EventTypeName,
    /// The effective mode (its own, or the registry's default).
    pub mode: CompatibilityMode,
    /// Whether the mode is the type's own rather than the default.
    pub mode_set: bool,
    /// The latest version; `None` when only a mode was set.
    pub latest_version: Option<u32>,
}

/// The answer of a dry run ([`SchemaRegistry::check`]), like Confluent's `POST /compatibility`
/// with `verbose=true`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompatibilityReport {
    pub event_type: EventTypeName,
    pub mode: CompatibilityMode,
    /// Whether the schema satisfies the mode.
    pub compatible: bool,
    /// The versions it was compared with.
    pub checked_versions: Vec<u32>,
    pub incompatibilities: Vec<Incompatibility>,
    /// Set when the schema is already registered: registering it again returns this version.
    pub existing_version: Option<u32>,
    /// Whether registering it needs an upcaster from the latest version (the new schema cannot
    /// read it as it is, and none was given).
    pub upcaster_required: bool,
}

/// A change to the registry: what a runtime appends to its log before applying it.
///
/// ```json
/// {"kind": "register", "event_type": "OrderPlaced", "version": 2, "schema": {...},
///  "upcaster": {"from_version": 1, "to_version": 2, "steps": [...]}}
/// {"kind": "set_mode", "event_type": "OrderPlaced", "mode": "FULL_TRANSITIVE"}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RegistryChange {
    Register {
        event_type: EventTypeName,
        version: u32,
        schema: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        upcaster: Option<Upcaster>,
    },
    SetMode {
        event_type: EventTypeName,
        mode: CompatibilityMode,
    },
}

/// What registering a schema amounts to.
#[derive(Clone, Debug, PartialEq)]
pub enum Registration {
    /// The schema is already this version: nothing to log (registration is idempotent).
    Existing(u32),
    /// A new version: log this change, then [`SchemaRegistry::apply`] it.
    New(RegistryChange),
}

/// What [`SchemaRegistry::check_append`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendCheck {
    /// The data is valid under this version.
    Validated { version: u32 },
    /// The type has no schema and the policy is lenient.
    Unchecked,
}

#[derive(Clone, Debug, Default)]
struct TypeEntry {
    mode: Option<CompatibilityMode>,
    versions: Vec<RegisteredSchema>,
}

/// The schema registry's state. Pure: every operation is a function of the state and its
/// arguments, and the only way to change it is [`SchemaRegistry::apply`] (which `register`
/// and `set_mode` call), so replaying the logged changes rebuilds it exactly.
#[derive(Clone, Debug, Default)]
pub struct SchemaRegistry {
    config: RegistryConfig,
    types: BTreeMap<EventTypeName, TypeEntry>,
}

fn version_number(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

impl SchemaRegistry {
    pub fn new(config: RegistryConfig) -> Result<SchemaRegistry, SchemaError> {
        let limits = &config.limits;
        if limits.versions_per_type_max < 3 {
            return Err(SchemaError::InvalidLimits(format!(
                "versions_per_type_max is {}, the least is 3 so consumers can read events two versions back",
                limits.versions_per_type_max
            )));
        }
        for (name, value) in [
            ("schema_bytes_max", limits.schema_bytes_max),
            ("event_types_max", limits.event_types_max),
            ("validation_errors_max", limits.validation_errors_max),
        ] {
            if value == 0 {
                return Err(SchemaError::InvalidLimits(format!(
                    "{name} is 0; it must be at least 1"
                )));
            }
        }
        Ok(SchemaRegistry {
            config,
            types: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The effective mode of `event_type`: its own, or the registry's default.
    pub fn mode(&self, event_type: &EventTypeName) -> CompatibilityMode {
        self.types
            .get(event_type)
            .and_then(|e| e.mode)
            .unwrap_or(self.config.default_mode)
    }

    /// Every event type with a schema or a mode, by name.
    pub fn list(&self) -> Vec<EventTypeInfo> {
        self.types
            .iter()
            .map(|(name, entry)| EventTypeInfo {
                event_type: name.clone(),
                mode: entry.mode.unwrap_or(self.config.default_mode),
                mode_set: entry.mode.is_some(),
                latest_version: entry.versions.last().map(|v| v.version),
            })
            .collect()
    }

    fn versions_of(&self, event_type: &EventTypeName) -> Result<&[RegisteredSchema], SchemaError> {
        match self.types.get(event_type) {
            Some(entry) if !entry.versions.is_empty() => Ok(&entry.versions),
            _ => Err(SchemaError::UnknownEventType {
                event_type: event_type.to_string(),
            }),
        }
    }

    /// Every version of `event_type`, oldest first.
    pub fn versions(&self, event_type: &EventTypeName) -> Result<&[RegisteredSchema], SchemaError> {
        self.versions_of(event_type)
    }

    pub fn get(
        &self,
        event_type: &EventTypeName,
        version: u32,
    ) -> Result<&RegisteredSchema, SchemaError> {
        let versions = self.versions_of(event_type)?;
        (version as usize)
            .checked_sub(1)
            .and_then(|i| versions.get(i))
            .ok_or_else(|| SchemaError::UnknownVersion {
                event_type: event_type.to_string(),
                version,
                latest: version_number(versions.len() - 1),
            })
    }

    pub fn latest(&self, event_type: &EventTypeName) -> Result<&RegisteredSchema, SchemaError> {
        let versions = self.versions_of(event_type)?;
        versions
            .last()
            .ok_or_else(|| SchemaError::UnknownEventType {
                event_type: event_type.to_string(),
            })
    }

    /// Size, shape and compilation of a schema (and its own `examples`).
    fn compile(
        &self,
        event_type: &EventTypeName,
        schema: &Value,
    ) -> Result<CompiledSchema, SchemaError> {
        let bytes = serde_json::to_vec(schema).map_or(usize::MAX, |b| b.len());
        if bytes > self.config.limits.schema_bytes_max {
            return Err(SchemaError::SchemaTooLarge {
                event_type: event_type.to_string(),
                bytes,
                max_bytes: self.config.limits.schema_bytes_max,
            });
        }
        let invalid = |reason: String| SchemaError::InvalidSchema {
            event_type: event_type.to_string(),
            reason,
        };
        if !(schema.is_object() || schema.is_boolean()) {
            return Err(invalid(
                "a JSON Schema is an object (or true/false), e.g. {\"type\": \"object\", \"properties\": {...}}".into(),
            ));
        }
        let compiled = CompiledSchema::compile(schema).map_err(invalid)?;
        if let Some(Value::Array(examples)) = schema.get("examples") {
            for (i, example) in examples
                .iter()
                .take(self.config.limits.examples_max)
                .enumerate()
            {
                let (violations, _) =
                    compiled.violations(example, self.config.limits.validation_errors_max);
                if let Some(first) = violations.first() {
                    return Err(invalid(format!(
                        "its example {i} does not match it ({first}); fix the example or the schema"
                    )));
                }
            }
        }
        Ok(compiled)
    }

    /// The schema of version `index + 1` as the new version will read it: upcast through the
    /// stored upcasters after it and then `new_upcaster`.
    fn upcast_writer(
        versions: &[RegisteredSchema],
        index: usize,
        new_upcaster: Option<&Upcaster>,
    ) -> Result<Value, String> {
        let mut schema = versions[index].schema.clone();
        let later = versions[index + 1..]
            .iter()
            .filter_map(|v| v.upcaster.as_ref());
        for upcaster in later.chain(new_upcaster) {
            schema = upcast_schema(&schema, upcaster).map_err(|reason| {
                format!(
                    "the upcaster from version {} to {}: {reason}",
                    upcaster.from_version, upcaster.to_version
                )
            })?;
        }
        Ok(schema)
    }

    fn compare(
        &self,
        event_type: &EventTypeName,
        schema: &Value,
        upcaster: Option<&Upcaster>,
    ) -> (CompatibilityMode, Vec<u32>, Vec<Incompatibility>) {
        let mode = self.mode(event_type);
        let versions = self
            .types
            .get(event_type)
            .map_or(&[][..], |e| &e.versions[..]);
        if mode == CompatibilityMode::None || versions.is_empty() {
            return (mode, Vec::new(), Vec::new());
        }
        let from = if mode.is_transitive() {
            0
        } else {
            versions.len() - 1
        };
        let mut checked = Vec::new();
        let mut found = Vec::new();
        for index in (from..versions.len()).rev() {
            let old = &versions[index];
            checked.push(old.version);
            let label = format!("version {}", old.version);
            if mode.checks_backward() {
                let has_steps = versions[index + 1..]
                    .iter()
                    .filter_map(|v| v.upcaster.as_ref())
                    .chain(upcaster)
                    .any(|u| !u.steps.is_empty());
                match Self::upcast_writer(versions, index, upcaster) {
                    Ok(writer) => {
                        let writer_label = if has_steps { format!("{label} after upcasting") } else { label.clone() };
                        found.extend(incompatibilities(
                            schema,
                            &writer,
                            Direction::Backward,
                            old.version,
                            "the new schema",
                            &writer_label,
                        ));
                    }
                    Err(reason) => found.push(Incompatibility {
                        version: old.version,
                        direction: Direction::Backward,
                        path: String::new(),
                        kind: IncompatibilityKind::UnsupportedConstruct,
                        message: format!(
                            "the effect of {reason} on the schema cannot be computed, so compatibility cannot be proven; address properties of objects without $ref or combinators, or use the mode NONE"
                        ),
                    }),
                }
            }
            if mode.checks_forward() {
                found.extend(incompatibilities(
                    &old.schema,
                    schema,
                    Direction::Forward,
                    old.version,
                    &label,
                    "the new schema",
                ));
            }
        }
        (mode, checked, found)
    }

    fn check_upcaster(
        &self,
        event_type: &EventTypeName,
        upcaster: &Upcaster,
        latest: u32,
    ) -> Result<(), SchemaError> {
        let next = latest.saturating_add(1);
        if latest == 0 {
            return Err(SchemaError::InvalidUpcaster {
                event_type: event_type.to_string(),
                reason: "the first version has no earlier version to upcast from; register it without an upcaster".into(),
            });
        }
        if upcaster.from_version != latest || upcaster.to_version != next {
            return Err(SchemaError::UpcasterVersions {
                event_type: event_type.to_string(),
                got_from: upcaster.from_version,
                got_to: upcaster.to_version,
                from: latest,
                to: next,
            });
        }
        upcaster
            .check()
            .map_err(|reason| SchemaError::InvalidUpcaster {
                event_type: event_type.to_string(),
                reason,
            })
    }

    /// Dry run of a registration: is `schema` compatible with the versions its mode names?
    /// Errors only for input that could never be registered (bad schema or upcaster).
    pub fn check(
        &self,
        event_type: &EventTypeName,
        schema: &Value,
        upcaster: Option<&Upcaster>,
    ) -> Result<CompatibilityReport, SchemaError> {
        self.compile(event_type, schema)?;
        let versions = self
            .types
            .get(event_type)
            .map_or(&[][..], |e| &e.versions[..]);
        let existing_version = versions
            .iter()
            .find(|v| v.schema == *schema)
            .map(|v| v.version);
        let latest = versions.last().map_or(0, |v| v.version);
        if let Some(upcaster) = upcaster {
            self.check_upcaster(event_type, upcaster, latest)?;
        }
        let (mode, checked_versions, incompatibilities) =
            self.compare(event_type, schema, upcaster);
        let upcaster_required = existing_version.is_none()
            && upcaster.is_none()
            && !self.gap(event_type, schema).is_empty();
        Ok(CompatibilityReport {
            event_type: event_type.clone(),
            mode,
            compatible: incompatibilities.is_empty(),
            checked_versions,
            incompatibilities,
            existing_version,
            upcaster_required,
        })
    }

    /// Why the new schema cannot read the latest version's events as they are (empty: it can).
    fn gap(&self, event_type: &EventTypeName, schema: &Value) -> Vec<Incompatibility> {
        let Some(latest) = self.types.get(event_type).and_then(|e| e.versions.last()) else {
            return Vec::new();
        };
        incompatibilities(
            schema,
            &latest.schema,
            Direction::Backward,
            latest.version,
            "the new schema",
            &format!("version {}", latest.version),
        )
    }

    /// Decides what registering `schema` as the next version of `event_type` means, without
    /// changing anything: the runtime logs a [`Registration::New`] change and then applies it.
    pub fn prepare_register(
        &self,
        event_type: &EventTypeName,
        schema: Value,
        upcaster: Option<Upcaster>,
    ) -> Result<Registration, SchemaError> {
        let compiled = self.compile(event_type, &schema)?;
        let entry = self.types.get(event_type);
        let versions = entry.map_or(&[][..], |e| &e.versions[..]);
        if let Some(existing) = versions.iter().find(|v| v.schema == schema) {
            if upcaster.is_some() && upcaster != existing.upcaster {
                return Err(SchemaError::UpcasterConflict {
                    event_type: event_type.to_string(),
                    version: existing.version,
                });
            }
            return Ok(Registration::Existing(existing.version));
        }
        if versions.len() >= self.config.limits.versions_per_type_max {
            return Err(SchemaError::TooManyVersions {
                event_type: event_type.to_string(),
                max: self.config.limits.versions_per_type_max,
            });
        }
        if entry.is_none() && self.types.len() >= self.config.limits.event_types_max {
            return Err(SchemaError::TooManyEventTypes {
                max: self.config.limits.event_types_max,
            });
        }
        let latest = versions.last().map_or(0, |v| v.version);
        let version = latest + 1;
        if let Some(upcaster) = &upcaster {
            self.check_upcaster(event_type, upcaster, latest)?;
        }
        let (mode, _, found) = self.compare(event_type, &schema, upcaster.as_ref());
        if !found.is_empty() {
            return Err(SchemaError::Incompatible {
                event_type: event_type.to_string(),
                mode,
                incompatibilities: found,
            });
        }
        if upcaster.is_none() {
            let gap = self.gap(event_type, &schema);
            if !gap.is_empty() {
                return Err(SchemaError::UpcasterMissing {
                    event_type: event_type.to_string(),
                    from: latest,
                    to: version,
                    incompatibilities: gap,
                });
            }
        }
        if let Some(previous) = versions.last() {
            self.check_examples(event_type, previous, &schema, &compiled, upcaster.as_ref())?;
        }
        Ok(Registration::New(RegistryChange::Register {
            event_type: event_type.clone(),
            version,
            schema,
            upcaster,
        }))
    }

    /// The previous version's `examples`, upcast, must be valid under the new schema: a cheap
    /// proof on real data that the upcaster does what its author meant.
    fn check_examples(
        &self,
        event_type: &EventTypeName,
        previous: &RegisteredSchema,
        schema: &Value,
        compiled: &CompiledSchema,
        upcaster: Option<&Upcaster>,
    ) -> Result<(), SchemaError> {
        let Some(Value::Array(examples)) = previous.schema.get("examples") else {
            return Ok(());
        };
        let to = previous.version + 1;
        for (i, example) in examples
            .iter()
            .take(self.config.limits.examples_max)
            .enumerate()
        {
            let mut data = example.clone();
            if let Some(upcaster) = upcaster {
                upcaster
                    .apply(&mut data)
                    .map_err(|f| SchemaError::UpcastFailed {
                        event_type: event_type.to_string(),
                        from: previous.version,
                        to,
                        step: f.step,
                        op: f.op,
                        reason: format!(
                            "on example {i} of version {}: {}",
                            previous.version, f.reason
                        ),
                    })?;
            }
            fill_defaults(schema, &mut data, 0);
            let (violations, _) =
                compiled.violations(&data, self.config.limits.validation_errors_max);
            if !violations.is_empty() {
                return Err(SchemaError::UpcasterExampleRejected {
                    event_type: event_type.to_string(),
                    from: previous.version,
                    to,
                    example: i,
                    violations,
                });
            }
        }
        Ok(())
    }

    /// Registers `schema` as the next version of `event_type` (or returns the version it
    /// already is) and returns the version with the change to log, if any. For runtimes that
    /// log before applying, use [`SchemaRegistry::prepare_register`] and [`SchemaRegistry::apply`].
    pub fn register(
        &mut self,
        event_type: &EventTypeName,
        schema: Value,
        upcaster: Option<Upcaster>,
    ) -> Result<u32, SchemaError> {
        match self.prepare_register(event_type, schema, upcaster)? {
            Registration::Existing(version) => Ok(version),
            Registration::New(change) => {
                let version = match &change {
                    RegistryChange::Register { version, .. } => *version,
                    RegistryChange::SetMode { .. } => 0,
                };
                self.apply(&change)?;
                Ok(version)
            }
        }
    }

    /// The change that sets the mode of `event_type` (which needs no schema yet, as in
    /// Confluent, so a mode can be chosen before the first version).
    pub fn prepare_set_mode(
        &self,
        event_type: &EventTypeName,
        mode: CompatibilityMode,
    ) -> Result<RegistryChange, SchemaError> {
        if !self.types.contains_key(event_type)
            && self.types.len() >= self.config.limits.event_types_max
        {
            return Err(SchemaError::TooManyEventTypes {
                max: self.config.limits.event_types_max,
            });
        }
        Ok(RegistryChange::SetMode {
            event_type: event_type.clone(),
            mode,
        })
    }

    pub fn set_mode(
        &mut self,
        event_type: &EventTypeName,
        mode: CompatibilityMode,
    ) -> Result<(), SchemaError> {
        let change = self.prepare_set_mode(event_type, mode)?;
        self.apply(&change)
    }

    /// Applies a change made by `prepare_*` (now, or replayed from a log). It does not judge
    /// compatibility or limits again: a logged change was accepted under the rules of its
    /// time, and replay must rebuild the same state. It checks only what keeps the state
    /// consistent: versions in order, a schema that compiles, an upcaster between the right
    /// versions.
    pub fn apply(&mut self, change: &RegistryChange) -> Result<(), SchemaError> {
        match change {
            RegistryChange::SetMode { event_type, mode } => {
                self.types.entry(event_type.clone()).or_default().mode = Some(*mode);
                Ok(())
            }
            RegistryChange::Register {
                event_type,
                version,
                schema,
                upcaster,
            } => {
                let expected = self
                    .types
                    .get(event_type)
                    .map_or(1, |e| version_number(e.versions.len()));
                if *version != expected {
                    return Err(SchemaError::ChangeOutOfOrder {
                        event_type: event_type.to_string(),
                        got: *version,
                        expected,
                    });
                }
                let compiled = CompiledSchema::compile(schema).map_err(|reason| {
                    SchemaError::InvalidSchema {
                        event_type: event_type.to_string(),
                        reason,
                    }
                })?;
                if let Some(upcaster) = upcaster {
                    self.check_upcaster(event_type, upcaster, expected - 1)?;
                }
                self.types
                    .entry(event_type.clone())
                    .or_default()
                    .versions
                    .push(RegisteredSchema {
                        event_type: event_type.clone(),
                        version: *version,
                        schema: schema.clone(),
                        upcaster: upcaster.clone(),
                        compiled: Arc::new(compiled),
                    });
                Ok(())
            }
        }
    }

    fn violations(&self, schema: &RegisteredSchema, data: &Value) -> Result<(), SchemaError> {
        let (violations, truncated) = schema
            .compiled
            .violations(data, self.config.limits.validation_errors_max);
        if violations.is_empty() {
            return Ok(());
        }
        Err(SchemaError::Invalid {
            event_type: schema.event_type.to_string(),
            version: schema.version,
            violations,
            truncated,
        })
    }

    /// Validates `data` against `version` (the latest when `None`) and returns the version
    /// used. The error lists each violation with JSON pointers into the data and the schema.
    pub fn validate(
        &self,
        event_type: &EventTypeName,
        version: Option<u32>,
        data: &Value,
    ) -> Result<u32, SchemaError> {
        let schema = match version {
            Some(version) => self.get(event_type, version)?,
            None => self.latest(event_type)?,
        };
        self.violations(schema, data)?;
        Ok(schema.version)
    }

    /// Whether `event_type` has a registered schema (names this registry cannot hold have
    /// none). Lets an append skip decoding data that [`SchemaRegistry::check_append`] will not
    /// look at.
    pub fn has_schema(&self, event_type: &str) -> bool {
        self.registered(event_type).is_some()
    }

    /// Whether any event type has a schema: when none does, an append under
    /// [`SchemaPolicy::Lenient`] has nothing to check and can skip looking up each event's type.
    pub fn has_any_schema(&self) -> bool {
        self.types.values().any(|entry| !entry.versions.is_empty())
    }

    /// The name of `event_type` if it has a schema. Looked up by text (no name is parsed and
    /// allocated): appends ask this for every event.
    fn registered(&self, event_type: &str) -> Option<&EventTypeName> {
        self.types
            .get_key_value(event_type)
            .filter(|(_, entry)| !entry.versions.is_empty())
            .map(|(name, _)| name)
    }

    /// The check of an append: events of types with a schema must match it (the version the
    /// producer declares, else the latest); types without one pass under
    /// [`SchemaPolicy::Lenient`] and are refused under [`SchemaPolicy::Strict`]. It takes the
    /// type as text because event stores accept names this registry cannot hold; those
    /// have no schema.
    pub fn check_append(
        &self,
        policy: SchemaPolicy,
        event_type: &str,
        schema_version: Option<u32>,
        data: &Value,
    ) -> Result<AppendCheck, SchemaError> {
        match (self.registered(event_type), policy) {
            (Some(name), _) => Ok(AppendCheck::Validated {
                version: self.validate(name, schema_version, data)?,
            }),
            (None, SchemaPolicy::Lenient) => Ok(AppendCheck::Unchecked),
            (None, SchemaPolicy::Strict) => Err(SchemaError::UnregisteredEventType {
                event_type: event_type.chars().take(256).collect(),
            }),
        }
    }

    /// Upcasts `data`, written with `from_version`, to the latest version; returns the latest
    /// version and the data. Consumers written for the latest version read every older event
    /// through this (at least two versions back is guaranteed by `versions_per_type_max >= 3`;
    /// in fact every version registered).
    pub fn upcast(
        &self,
        event_type: &EventTypeName,
        from_version: u32,
        data: Value,
    ) -> Result<(u32, Value), SchemaError> {
        let latest = self.latest(event_type)?.version;
        let data = self.upcast_to(event_type, from_version, latest, data)?;
        Ok((latest, data))
    }

    /// Upcasts `data` from `from_version` to `to_version` (for consumers written for a version
    /// older than the latest). Each link applies its upcaster's steps, then fills absent
    /// required properties that have a default in the target schema.
    pub fn upcast_to(
        &self,
        event_type: &EventTypeName,
        from_version: u32,
        to_version: u32,
        mut data: Value,
    ) -> Result<Value, SchemaError> {
        self.get(event_type, from_version)?;
        self.get(event_type, to_version)?;
        if from_version > to_version {
            return Err(SchemaError::UpcastBackwards {
                event_type: event_type.to_string(),
                from: from_version,
                to: to_version,
            });
        }
        let versions = self.versions_of(event_type)?;
        for version in from_version + 1..=to_version {
            let target = &versions[(version - 1) as usize];
            if let Some(upcaster) = &target.upcaster {
                if upcaster.from_version != version - 1 || upcaster.to_version != version {
                    return Err(SchemaError::UpcastGap {
                        event_type: event_type.to_string(),
                        from: version - 1,
                        to: version,
                    });
                }
                upcaster
                    .apply(&mut data)
                    .map_err(|f| SchemaError::UpcastFailed {
                        event_type: event_type.to_string(),
                        from: version - 1,
                        to: version,
                        step: f.step,
                        op: f.op,
                        reason: f.reason,
                    })?;
            }
            fill_defaults(&target.schema, &mut data, 0);
        }
        Ok(data)
    }
}

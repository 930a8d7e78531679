//! Running a projection: the [`Projection`] port, the declarative [`Projector`], and the batch
//! planner that turns a batch of events and the documents they touch into the writes of one
//! commit.
//!
//! The runtime loop, for each batch read after the checkpoint:
//!
//! 1. `keys = keys_for_batch(projection, &events)`, then `store.get_many(name, &keys)`;
//! 2. `plan = plan_batch(projection, &events, keys.zip(docs))`;
//! 3. `store.commit(name, plan.writes, plan.checkpoint(previous, now_ms))` when it handled any
//!    event;
//! 4. if `plan.error` is set, save `RunState::Failed` and stop: the checkpoint is right before
//!    the failing event, whose position the error names.
//!
//! Applying is deterministic: the documents depend only on the definition and the events, not
//! on how they were cut into batches, so a read model after any number of restarts equals one
//! rebuilt from zero.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Number, Value, json};

use crate::definition::{
    AggregateDefinition, EventPointer, Handler, Kind, ListDefinition, Measure, Missing, Operand,
    OperandSource, ProjectionDefinition, Root, Source, StateDefinition, Target,
};
use crate::error::{DefinitionErrors, ProcessingError};
use crate::event::EventView;
use crate::store::{
    Checkpoint, DOC_BYTES_MAX, KEY_BYTES_MAX, ListItem, Write, list_item_bytes_max,
};
use crate::value::{add_numbers, compare, json_bytes};

/// The documents a projection reads and writes while applying events.
pub trait DocAccess {
    /// The document under `key`: `Some(None)` when there is none, `None` when the key was not
    /// loaded (a runtime bug: every key of [`Projection::keys_touched`] must be loaded).
    fn get(&self, key: &str) -> Option<Option<&Value>>;
    /// Replaces (or with `None` deletes) the document under `key`.
    fn put(&mut self, key: &str, doc: Option<Value>);
    /// Appends `item` to the list under `key`, which keeps its last `max_items`. Lists are
    /// written without being read, so their keys need no loading.
    fn append(&mut self, key: &str, item: ListItem, max_items: usize);
}

/// A projection's logic. The declarative [`Projector`] implements it; projections compiled to
/// WASM will too, so the runtime drives both the same way.
pub trait Projection: Send + Sync {
    /// Whether the event is read at all (source and `event_types`). Events not wanted still
    /// advance the checkpoint.
    fn wants(&self, event: &EventView<'_>) -> bool;

    /// The document keys applying `event` reads or writes, to load before applying it.
    fn keys_touched(&self, event: &EventView<'_>) -> Result<Vec<String>, ProcessingError>;

    /// Applies one event. On error, `docs` is as before the call: an event applies entirely or
    /// not at all.
    fn apply(&self, event: &EventView<'_>, docs: &mut dyn DocAccess)
    -> Result<(), ProcessingError>;
}

/// The documents of one batch: those loaded from the store, the changes made since, and the
/// items appended to lists.
#[derive(Debug, Default)]
pub struct DocBatch {
    loaded: HashMap<String, Option<Value>>,
    changed: HashMap<String, Option<Value>>,
    /// By list key: the items appended in this batch, oldest first, and `max_items`.
    appended: HashMap<String, (Vec<ListItem>, usize)>,
}

impl DocBatch {
    /// `loaded` has every key the batch touches, with `None` for keys without a document.
    pub fn new(loaded: impl IntoIterator<Item = (String, Option<Value>)>) -> Self {
        DocBatch {
            loaded: loaded.into_iter().collect(),
            changed: HashMap::new(),
            appended: HashMap::new(),
        }
    }

    /// The changes, sorted by key, leaving out documents that ended as they were loaded.
    pub fn into_writes(self) -> Vec<Write> {
        let loaded = self.loaded;
        let mut writes: Vec<Write> = self
            .changed
            .into_iter()
            .filter(|(key, doc)| loaded.get(key) != Some(doc))
            .map(|(key, doc)| Write::Doc { key, doc })
            .chain(
                self.appended
                    .into_iter()
                    .map(|(key, (items, max_items))| Write::Append {
                        key,
                        items,
                        max_items,
                    }),
            )
            .collect();
        writes.sort_by(|a, b| a.key().cmp(b.key()));
        writes
    }
}

impl DocAccess for DocBatch {
    fn get(&self, key: &str) -> Option<Option<&Value>> {
        self.changed
            .get(key)
            .or_else(|| self.loaded.get(key))
            .map(Option::as_ref)
    }

    fn put(&mut self, key: &str, doc: Option<Value>) {
        self.changed.insert(key.to_owned(), doc);
    }

    fn append(&mut self, key: &str, item: ListItem, max_items: usize) {
        match self.appended.get_mut(key) {
            Some((items, _)) => items.push(item),
            None => {
                self.appended
                    .insert(key.to_owned(), (vec![item], max_items));
            }
        }
    }
}

/// What a batch did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchPlan {
    /// The writes of every event handled, sorted by key.
    pub writes: Vec<Write>,
    /// How many events, from the start of the batch, were handled (applied or not wanted).
    pub handled: usize,
    /// How many of them were applied.
    pub applied: u64,
    /// The position after the last event handled; `None` when none was.
    pub next_position: Option<u64>,
    /// The event the batch stopped at, when one could not be processed.
    pub error: Option<ProcessingError>,
}

impl BatchPlan {
    /// The checkpoint to commit with the writes; `None` when no event was handled.
    pub fn checkpoint(&self, previous: Option<&Checkpoint>, updated_ms: i64) -> Option<Checkpoint> {
        let position = self.next_position?;
        Some(Checkpoint {
            position,
            events_processed: previous.map_or(0, |c| c.events_processed) + self.applied,
            updated_ms,
            last_event: previous.and_then(|c| c.last_event.clone()),
        })
    }
}

/// Every key the events touch, sorted, up to the first event whose keys cannot be computed
/// (applying stops there too).
pub fn keys_for_batch(projection: &dyn Projection, events: &[EventView<'_>]) -> Vec<String> {
    let mut keys = BTreeSet::new();
    for event in events {
        match projection.keys_touched(event) {
            Ok(touched) => keys.extend(touched),
            Err(_) => break,
        }
    }
    keys.into_iter().collect()
}

/// Applies `events` in order over the `loaded` documents, stopping at the first event that
/// cannot be processed; the writes hold the effect of every event before it.
pub fn plan_batch(
    projection: &dyn Projection,
    events: &[EventView<'_>],
    loaded: impl IntoIterator<Item = (String, Option<Value>)>,
) -> BatchPlan {
    let mut docs = DocBatch::new(loaded);
    let mut plan = BatchPlan::default();
    for event in events {
        if projection.wants(event) {
            if let Err(error) = projection.apply(event, &mut docs) {
                plan.error = Some(error);
                break;
            }
            plan.applied += 1;
        }
        plan.handled += 1;
        plan.next_position = Some(event.position.saturating_add(1));
    }
    plan.writes = docs.into_writes();
    plan
}

/// The declarative projection of a [`ProjectionDefinition`].
#[derive(Clone, Debug)]
pub struct Projector {
    definition: ProjectionDefinition,
}

impl Projector {
    pub fn new(definition: ProjectionDefinition) -> Self {
        Projector { definition }
    }

    /// Parses a definition and builds its projector.
    pub fn from_json(json: &Value) -> Result<Self, DefinitionErrors> {
        ProjectionDefinition::parse(json).map(Projector::new)
    }

    pub fn definition(&self) -> &ProjectionDefinition {
        &self.definition
    }

    fn key(&self, event: &EventView<'_>) -> Result<Option<String>, ProcessingError> {
        match &self.definition.kind {
            Kind::State(state) => {
                if handler_of(state, event.event_type).is_none() {
                    return Ok(None);
                }
                key_text(event, &state.key).map(Some)
            }
            Kind::Aggregate(aggregate) => aggregate_key(event, aggregate).map(|(k, _)| Some(k)),
            Kind::List(list) => match &list.key {
                Some(key) => key_text(event, key).map(Some),
                None => Ok(Some(ALL_KEY.to_owned())),
            },
        }
    }
}

/// The key of the single document of an aggregate without `group_by` or a list without `key`.
pub const ALL_KEY: &str = "all";

impl Projection for Projector {
    fn wants(&self, event: &EventView<'_>) -> bool {
        let source = match &self.definition.source {
            Source::All => true,
            Source::Category(category) => event.category == category,
        };
        source
            && self
                .definition
                .event_types
                .as_ref()
                .is_none_or(|types| types.iter().any(|t| t == event.event_type))
    }

    fn keys_touched(&self, event: &EventView<'_>) -> Result<Vec<String>, ProcessingError> {
        if !self.wants(event) {
            return Ok(Vec::new());
        }
        if let Kind::List(_) = &self.definition.kind {
            // Appends to a list are written without reading it.
            return Ok(Vec::new());
        }
        Ok(self.key(event)?.into_iter().collect())
    }

    fn apply(
        &self,
        event: &EventView<'_>,
        docs: &mut dyn DocAccess,
    ) -> Result<(), ProcessingError> {
        if !self.wants(event) {
            return Ok(());
        }
        let Some(key) = self.key(event)? else {
            return Ok(());
        };
        if let Kind::List(list) = &self.definition.kind {
            return apply_list(event, list, &key, docs);
        }
        if docs.get(&key).is_none() {
            return Err(ProcessingError::at(
                event,
                format!(
                    "document '{key}' was not loaded before applying the event (a runtime bug: load every key of keys_touched)"
                ),
            ));
        }
        let current = docs.get(&key).flatten();
        let next = match &self.definition.kind {
            Kind::State(state) => {
                let Some(handler) = handler_of(state, event.event_type) else {
                    return Ok(());
                };
                apply_state(event, handler, current)?
            }
            Kind::Aggregate(aggregate) => Some(apply_aggregate(event, aggregate, current)?),
            Kind::List(_) => unreachable!("list projections return above"),
        };
        if let Some(doc) = &next {
            let bytes = json_bytes(doc);
            if bytes > DOC_BYTES_MAX {
                return Err(ProcessingError::at(
                    event,
                    format!(
                        "document '{key}' would be {bytes} bytes; the most is {DOC_BYTES_MAX}: lower max_items, or keep fewer fields"
                    ),
                ));
            }
        }
        docs.put(&key, next);
        Ok(())
    }
}

fn handler_of<'d>(state: &'d StateDefinition, event_type: &str) -> Option<&'d Handler> {
    state
        .handlers
        .binary_search_by(|(t, _)| t.as_str().cmp(event_type))
        .ok()
        .map(|i| &state.handlers[i].1)
}

/// Reads a pointer from the event; `None` when it points at nothing.
fn read<'e>(event: &EventView<'e>, pointer: &EventPointer) -> Option<Cow<'e, Value>> {
    let owned = |v: Value| Some(Cow::Owned(v));
    match pointer.root {
        Root::Stream => owned(Value::from(event.stream)),
        Root::Category => owned(Value::from(event.category)),
        Root::Version => owned(Value::from(event.version)),
        Root::Position => owned(Value::from(event.position)),
        Root::EventType => owned(Value::from(event.event_type)),
        Root::RecordedMs => owned(Value::from(event.recorded_ms)),
        Root::Data => event.data.pointer(&pointer.rest).map(Cow::Borrowed),
        Root::Metadata => event
            .metadata
            .and_then(|m| m.pointer(&pointer.rest))
            .map(Cow::Borrowed),
    }
}

/// An operand's value; `None` when it is missing and optional (skip the operation).
fn eval<'e, 'd>(
    event: &EventView<'e>,
    operand: &'d Operand,
) -> Result<Option<Cow<'d, Value>>, ProcessingError>
where
    'e: 'd,
{
    let pointer = match &operand.source {
        OperandSource::Const(value) => return Ok(Some(Cow::Borrowed(value))),
        OperandSource::Read(pointer) => pointer,
    };
    match read(event, pointer) {
        Some(value) => Ok(Some(value)),
        None => match &operand.missing {
            Missing::Default(value) => Ok(Some(Cow::Borrowed(value))),
            Missing::Skip => Ok(None),
            Missing::Fail => Err(ProcessingError::at(
                event,
                format!(
                    "{} is missing (read at {}); fix the event, or add \"default\" or \"optional\": true there",
                    pointer.text, operand.read_at
                ),
            )),
        },
    }
}

/// A key from a value: strings as they are, numbers and booleans as JSON text.
fn key_from(event: &EventView<'_>, value: &Value, at: &str) -> Result<String, ProcessingError> {
    let key = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => {
            return Err(ProcessingError::at(
                event,
                format!(
                    "the key read at {at} is {}; keys are strings, numbers or booleans",
                    kind_of(other)
                ),
            ));
        }
    };
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(ProcessingError::at(
            event,
            format!(
                "the key read at {at} is {} bytes; keys are 1 to {KEY_BYTES_MAX} bytes",
                key.len()
            ),
        ));
    }
    Ok(key)
}

fn key_text(event: &EventView<'_>, operand: &Operand) -> Result<String, ProcessingError> {
    let value = eval(event, operand)?.ok_or_else(|| {
        ProcessingError::at(event, format!("the key at {} is missing", operand.read_at))
    })?;
    key_from(event, &value, &operand.read_at)
}

fn aggregate_key(
    event: &EventView<'_>,
    aggregate: &AggregateDefinition,
) -> Result<(String, Vec<Value>), ProcessingError> {
    let mut values = Vec::with_capacity(aggregate.group_by.len());
    for (_, operand) in &aggregate.group_by {
        let value = eval(event, operand)?.ok_or_else(|| {
            ProcessingError::at(
                event,
                format!("the group at {} is missing", operand.read_at),
            )
        })?;
        if matches!(*value, Value::Array(_) | Value::Object(_)) {
            return Err(ProcessingError::at(
                event,
                format!(
                    "the group value read at {} is {}; group by strings, numbers, booleans or null",
                    operand.read_at,
                    kind_of(&value)
                ),
            ));
        }
        values.push(value.into_owned());
    }
    let key = match values.as_slice() {
        [] => ALL_KEY.to_owned(),
        [Value::String(s)] => s.clone(),
        [single] => single.to_string(),
        several => Value::Array(several.to_vec()).to_string(),
    };
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(ProcessingError::at(
            event,
            format!(
                "the group key is {} bytes; keys are 1 to {KEY_BYTES_MAX} bytes",
                key.len()
            ),
        ));
    }
    Ok((key, values))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The slot at `target`, creating objects on the way (over absent or `null` members); the error
/// names what is in the way.
fn slot<'v>(
    event: &EventView<'_>,
    doc: &'v mut Value,
    target: &Target,
    at: &str,
) -> Result<&'v mut Value, ProcessingError> {
    let mut node = doc;
    for (depth, segment) in target.segments.iter().enumerate() {
        if node.is_null() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else {
            let above: String = target.segments[..depth]
                .iter()
                .map(|s| format!("/{s}"))
                .collect();
            return Err(ProcessingError::at(
                event,
                format!(
                    "cannot write {} (at {at}): the document holds {} at '{above}', not an object",
                    target.text,
                    kind_of(node)
                ),
            ));
        };
        node = map.entry(segment.clone()).or_insert(Value::Null);
    }
    Ok(node)
}

fn remove_at(doc: &mut Value, target: &Target) {
    let Some((last, parents)) = target.segments.split_last() else {
        return;
    };
    let mut node = doc;
    for segment in parents {
        match node.get_mut(segment.as_str()) {
            Some(next) => node = next,
            None => return,
        }
    }
    if let Value::Object(map) = node {
        map.remove(last);
    }
}

/// The next document of a `state` projection; `None` deletes it. Works on a copy, so an error
/// half-way leaves the stored document untouched.
fn apply_state(
    event: &EventView<'_>,
    handler: &Handler,
    current: Option<&Value>,
) -> Result<Option<Value>, ProcessingError> {
    if handler.delete {
        return Ok(None);
    }
    let mut doc = current.cloned().unwrap_or_else(|| json!({}));
    for op in &handler.set {
        let Some(value) = eval(event, &op.value)? else {
            continue;
        };
        if op.target.segments.is_empty() && !value.is_object() {
            return Err(ProcessingError::at(
                event,
                format!(
                    "set of the whole document (at {}) needs an object, the value is {}",
                    op.value.at,
                    kind_of(&value)
                ),
            ));
        }
        *slot(event, &mut doc, &op.target, &op.value.at)? = value.into_owned();
    }
    for op in &handler.merge {
        let Some(value) = eval(event, &op.value)? else {
            continue;
        };
        let Value::Object(members) = value.as_ref() else {
            return Err(ProcessingError::at(
                event,
                format!(
                    "merge (at {}) needs an object, the value is {}",
                    op.value.at,
                    kind_of(&value)
                ),
            ));
        };
        let into = slot(event, &mut doc, &op.target, &op.value.at)?;
        if into.is_null() {
            *into = Value::Object(Map::new());
        }
        let Value::Object(into) = into else {
            return Err(ProcessingError::at(
                event,
                format!(
                    "merge into {} (at {}): the document holds {} there, not an object",
                    op.target.text,
                    op.value.at,
                    kind_of(into)
                ),
            ));
        };
        for (name, member) in members {
            into.insert(name.clone(), member.clone());
        }
    }
    for op in &handler.increment {
        let Some(value) = eval(event, &op.value)? else {
            continue;
        };
        let Value::Number(by) = value.as_ref() else {
            return Err(ProcessingError::at(
                event,
                format!(
                    "increment (at {}) needs a number, the value is {}",
                    op.value.at,
                    kind_of(&value)
                ),
            ));
        };
        let field = slot(event, &mut doc, &op.target, &op.value.at)?;
        let now = match field {
            Value::Null => by.clone(),
            Value::Number(n) => add_numbers(n, by).ok_or_else(|| {
                ProcessingError::at(event, format!("increment (at {}) overflowed", op.value.at))
            })?,
            other => {
                return Err(ProcessingError::at(
                    event,
                    format!(
                        "cannot increment {} (at {}): it holds {}, not a number",
                        op.target.text,
                        op.value.at,
                        kind_of(other)
                    ),
                ));
            }
        };
        *field = Value::Number(now);
    }
    for op in &handler.append {
        let Some(value) = eval(event, &op.value)? else {
            continue;
        };
        let field = slot(event, &mut doc, &op.target, &op.value.at)?;
        if field.is_null() {
            *field = Value::Array(Vec::new());
        }
        let Value::Array(items) = field else {
            return Err(ProcessingError::at(
                event,
                format!(
                    "cannot append to {} (at {}): it holds {}, not an array",
                    op.target.text,
                    op.value.at,
                    kind_of(field)
                ),
            ));
        };
        items.push(value.into_owned());
        if items.len() > op.max_items {
            let excess = items.len() - op.max_items;
            items.drain(..excess);
        }
    }
    for target in &handler.unset {
        remove_at(&mut doc, target);
    }
    Ok(Some(doc))
}

fn number_of(
    event: &EventView<'_>,
    value: &Value,
    name: &str,
    operand: &Operand,
) -> Result<Number, ProcessingError> {
    match value {
        Value::Number(n) => Ok(n.clone()),
        other => Err(ProcessingError::at(
            event,
            format!(
                "measure '{name}' needs a number at {}, the value is {}",
                operand.read_at,
                kind_of(other)
            ),
        )),
    }
}

fn apply_aggregate(
    event: &EventView<'_>,
    aggregate: &AggregateDefinition,
    current: Option<&Value>,
) -> Result<Value, ProcessingError> {
    let mut doc = match current {
        Some(doc) => doc.clone(),
        None => {
            let (_, values) = aggregate_key(event, aggregate)?;
            let mut doc = Map::new();
            for ((name, _), value) in aggregate.group_by.iter().zip(values) {
                doc.insert(name.clone(), value);
            }
            for (name, measure) in &aggregate.measures {
                let initial = match measure {
                    Measure::Count | Measure::Sum(_) => json!(0),
                    Measure::Min(_) | Measure::Max(_) | Measure::Avg(_) => Value::Null,
                };
                doc.insert(name.clone(), initial);
            }
            Value::Object(doc)
        }
    };
    let Value::Object(map) = &mut doc else {
        return Err(ProcessingError::at(
            event,
            "the stored aggregate document is not an object; reset the projection",
        ));
    };
    for (name, measure) in &aggregate.measures {
        let overflow = || ProcessingError::at(event, format!("measure '{name}' overflowed"));
        match measure {
            Measure::Count => {
                let now = map
                    .get(name)
                    .and_then(Value::as_number)
                    .map_or(Some(Number::from(1)), |n| add_numbers(n, &Number::from(1)))
                    .ok_or_else(overflow)?;
                map.insert(name.clone(), Value::Number(now));
            }
            Measure::Sum(operand) => {
                let Some(value) = eval(event, operand)? else {
                    continue;
                };
                let by = number_of(event, &value, name, operand)?;
                let now = match map.get(name).and_then(Value::as_number) {
                    Some(n) => add_numbers(n, &by).ok_or_else(overflow)?,
                    None => by,
                };
                map.insert(name.clone(), Value::Number(now));
            }
            Measure::Min(operand) | Measure::Max(operand) => {
                let Some(value) = eval(event, operand)? else {
                    continue;
                };
                if !matches!(*value, Value::Number(_) | Value::String(_)) {
                    return Err(ProcessingError::at(
                        event,
                        format!(
                            "measure '{name}' compares numbers or strings; the value at {} is {}",
                            operand.read_at,
                            kind_of(&value)
                        ),
                    ));
                }
                let wanted = if matches!(measure, Measure::Min(_)) {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Greater
                };
                let replace = match map.get(name) {
                    None | Some(Value::Null) => true,
                    Some(old) => compare(Some(&value), Some(old)) == wanted,
                };
                if replace {
                    map.insert(name.clone(), value.into_owned());
                }
            }
            Measure::Avg(operand) => {
                let Some(value) = eval(event, operand)? else {
                    continue;
                };
                let by = number_of(event, &value, name, operand)?;
                let parts = map
                    .entry("$avg")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .ok_or_else(|| {
                        ProcessingError::at(
                            event,
                            "the stored $avg is not an object; reset the projection",
                        )
                    })?
                    .entry(name.clone())
                    .or_insert_with(|| json!({"sum": 0, "count": 0}));
                let sum = parts
                    .get("sum")
                    .and_then(Value::as_number)
                    .cloned()
                    .unwrap_or_else(|| Number::from(0));
                let count = parts.get("count").and_then(Value::as_u64).unwrap_or(0) + 1;
                let sum = add_numbers(&sum, &by).ok_or_else(overflow)?;
                let avg = sum.as_f64().map(|s| s / count as f64);
                *parts = json!({"sum": sum, "count": count});
                let avg = avg.and_then(Number::from_f64).ok_or_else(overflow)?;
                map.insert(name.clone(), Value::Number(avg));
            }
        }
    }
    Ok(doc)
}

/// Appends the event's item to the key's list, keeping the last `max_items`.
///
/// A list document only grows by one item and loses the trimmed ones, so its size is tracked
/// as an upper bound from event to event (`+ item + 2` for a comma and a longer count, `-` the
/// trimmed items): the document is changed in place, and copied and encoded again only when
/// the bound nears [`DOC_BYTES_MAX`]. The outcome is the one an exact check after every event
/// gives, whatever the batching, since the bound is never below the exact size.
fn apply_list(
    event: &EventView<'_>,
    list: &ListDefinition,
    key: &str,
    docs: &mut dyn DocAccess,
) -> Result<(), ProcessingError> {
    // The item is written as JSON text directly: no map is built for it, and it is encoded
    // once for both the size check and the store.
    let mut json = Vec::with_capacity(128);
    match &list.fields {
        Some(fields) => {
            for (name, operand) in fields {
                if let Some(value) = eval(event, operand)? {
                    write_field(&mut json, name, value.as_ref());
                }
            }
        }
        None => {
            write_field(&mut json, "stream", event.stream);
            write_field(&mut json, "version", &event.version);
            write_field(&mut json, "position", &event.position);
            write_field(&mut json, "event_type", event.event_type);
            write_field(&mut json, "recorded_ms", &event.recorded_ms);
            write_field(&mut json, "data", event.data);
        }
    }
    if json.is_empty() {
        json.push(b'{');
    }
    json.push(b'}');
    // Checking each item against its share of DOC_BYTES_MAX keeps every list document within
    // it without reading the list, and gives the same answer however events are batched.
    let bytes = json.len();
    let item_bytes_max = list_item_bytes_max(list.max_items);
    if bytes > item_bytes_max {
        return Err(ProcessingError::at(
            event,
            format!(
                "the item for list '{key}' would be {bytes} bytes; with max_items {} an item may be at most {item_bytes_max}: lower max_items, or keep fewer fields",
                list.max_items
            ),
        ));
    }
    docs.append(key, ListItem::from_encoded(json), list.max_items);
    Ok(())
}

/// Adds `"name":value` to the JSON object being written in `json` (opening it first).
fn write_field<T: serde::Serialize + ?Sized>(json: &mut Vec<u8>, name: &str, value: &T) {
    json.push(if json.is_empty() { b'{' } else { b',' });
    // Serialising plain values into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *json, name);
    json.push(b':');
    let _ = serde_json::to_writer(&mut *json, value);
}

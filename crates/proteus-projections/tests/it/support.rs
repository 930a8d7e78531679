//! Events for tests: owned, turned into views on demand.

use std::collections::{BTreeMap, HashMap};

use proteus_projections::{
    EventView, Projection, Write, append_to_list_document, keys_for_batch, plan_batch,
};
use serde_json::Value;

#[derive(Clone, Debug)]
pub struct Event {
    pub stream: String,
    pub category: String,
    pub version: u64,
    pub position: u64,
    pub event_type: String,
    pub data: Value,
    pub metadata: Option<Value>,
    pub recorded_ms: i64,
}

impl Event {
    pub fn view(&self) -> EventView<'_> {
        EventView {
            stream: &self.stream,
            category: &self.category,
            version: self.version,
            position: self.position,
            event_type: &self.event_type,
            data: &self.data,
            metadata: self.metadata.as_ref(),
            recorded_ms: self.recorded_ms,
        }
    }
}

/// Numbers events in order: positions from 0, versions per stream from 0, category the part
/// of the stream before the first '-'.
pub fn events(raw: &[(&str, &str, Value)]) -> Vec<Event> {
    let mut versions: HashMap<String, u64> = HashMap::new();
    raw.iter()
        .enumerate()
        .map(|(position, (stream, event_type, data))| {
            let version = versions.entry(stream.to_string()).or_insert(0);
            let event = Event {
                stream: stream.to_string(),
                category: stream.split('-').next().unwrap_or_default().to_owned(),
                version: *version,
                position: position as u64,
                event_type: event_type.to_string(),
                data: data.clone(),
                metadata: None,
                recorded_ms: 1_700_000_000_000 + position as i64,
            };
            *version += 1;
            event
        })
        .collect()
}

/// A store of documents in memory, as the runtime would keep it in the real store.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Docs(pub BTreeMap<String, Value>);

impl Docs {
    pub fn commit(&mut self, writes: Vec<Write>) {
        for write in writes {
            match write {
                Write::Doc {
                    key,
                    doc: Some(doc),
                } => {
                    self.0.insert(key, doc);
                }
                Write::Doc { key, doc: None } => {
                    self.0.remove(&key);
                }
                Write::Append {
                    key,
                    items,
                    max_items,
                } => {
                    let doc = append_to_list_document(self.0.remove(&key), items, max_items);
                    self.0.insert(key, doc);
                }
            }
        }
    }
}

/// Runs `events` through the projection in batches of `batch` events, like the runtime does;
/// returns the documents and the error the projection stopped at, if any.
pub fn run(
    projection: &dyn Projection,
    events: &[Event],
    batch: usize,
) -> (Docs, Option<proteus_projections::ProcessingError>, u64) {
    let mut docs = Docs::default();
    let mut next = 0u64;
    for chunk in events.chunks(batch.max(1)) {
        let views: Vec<EventView<'_>> = chunk.iter().map(Event::view).collect();
        let keys = keys_for_batch(projection, &views);
        let loaded: Vec<(String, Option<Value>)> = keys
            .into_iter()
            .map(|k| {
                let doc = docs.0.get(&k).cloned();
                (k, doc)
            })
            .collect();
        let plan = plan_batch(projection, &views, loaded);
        docs.commit(plan.writes);
        if let Some(position) = plan.next_position {
            next = position;
        }
        if plan.error.is_some() {
            return (docs, plan.error, next);
        }
    }
    (docs, None, next)
}

//! `/v1/streams`: the event store over HTTP (event sourcing).
//!
//! - `POST /v1/streams/{stream}` appends events atomically with an expected version
//!   (`?expected_version=any|no_stream|exists|N`); a mismatch is 409 with the actual version.
//! - `GET /v1/streams/{stream}` reads a stream forwards or backwards from a version. The
//!   reserved names read feeds: `$all` (every event, by global position) and `$ce-{category}`
//!   (a category, as EventStoreDB names it), with `types` and `stream_prefix` filters.
//! - `GET …/subscribe` is a catch-up subscription over SSE: it replays from a version or
//!   position and turns live without gap or repeat; `Last-Event-ID` resumes it.
//! - `DELETE` tombstones a stream; `…/info`, `…/snapshot` and `…/aggregate` serve loading.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use proteus_eventstore::{
    ByteString, Category, Direction, ErrorKind, EventStore, EventStoreError, ExpectedVersion,
    ProposedEvent, ReadFilter, RecordedEvent, StreamName, ValidatedAppend,
};
use proteus_schemas::{AppendCheck, SchemaPolicy};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::AppState;
use crate::extract::{PathParams, QueryParams};
use crate::problem::Problem;

/// Events one read returns unless `limit` says otherwise.
const READ_LIMIT_DEFAULT: usize = 100;
/// Events read per step while a subscription catches up.
const SUBSCRIBE_READ_EVENTS: usize = 500;
/// The prefix EventStoreDB gives category streams.
const CATEGORY_PREFIX: &str = "$ce-";

impl From<EventStoreError> for Problem {
    fn from(error: EventStoreError) -> Problem {
        let detail = error.to_string();
        let (status, kind, title) = match error.kind() {
            ErrorKind::InvalidInput => (
                StatusCode::BAD_REQUEST,
                "invalid-event-store-request",
                "Invalid event store request",
            ),
            ErrorKind::NotFound => (
                StatusCode::NOT_FOUND,
                "stream-not-found",
                "Stream not found",
            ),
            ErrorKind::Conflict => match &error {
                EventStoreError::WrongExpectedVersion { .. } => (
                    StatusCode::CONFLICT,
                    "wrong-expected-version",
                    "Wrong expected version",
                ),
                _ => (StatusCode::CONFLICT, "stream-conflict", "Stream conflict"),
            },
            ErrorKind::Gone => (StatusCode::GONE, "stream-deleted", "Stream deleted"),
            ErrorKind::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "event-store-unavailable",
                "Event store unavailable",
            ),
            ErrorKind::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "event-store-failure",
                "Event store failure",
            ),
        };
        let problem = Problem::new(status, kind, title, detail);
        match error {
            EventStoreError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            } => problem
                .with("stream", stream.as_str())
                .with("expected_version", json!(expected))
                .with("actual_version", json!(actual)),
            _ => problem,
        }
    }
}

fn event_store(state: &AppState) -> Result<&Arc<dyn EventStore>, Problem> {
    state.events.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "event-store-disabled",
            "Event store disabled",
            "this server runs without an event store",
        )
    })
}

/// What a path names: one stream, a category feed or the `$all` feed.
enum Target {
    Stream(StreamName),
    Category(Category),
    All,
}

fn target(name: &str) -> Result<Target, Problem> {
    let invalid = |e: proteus_eventstore::InvalidName| {
        Problem::bad_request("invalid-stream-name", "Invalid stream name", e.to_string())
    };
    if name == "$all" {
        return Ok(Target::All);
    }
    if let Some(category) = name.strip_prefix(CATEGORY_PREFIX) {
        return Category::parse(category)
            .map(Target::Category)
            .map_err(invalid);
    }
    StreamName::parse(name).map(Target::Stream).map_err(invalid)
}

fn stream_name(name: &str) -> Result<StreamName, Problem> {
    match target(name)? {
        Target::Stream(stream) => Ok(stream),
        Target::All | Target::Category(_) => Err(Problem::bad_request(
            "invalid-stream-name",
            "Invalid stream name",
            format!(
                "'{name}' is a feed, read-only: append to, delete and snapshot named streams such as 'order-123'"
            ),
        )),
    }
}

fn expected_version(text: Option<&str>) -> Result<ExpectedVersion, Problem> {
    match text {
        None => Ok(ExpectedVersion::Any),
        Some(text) => text.parse().map_err(|_| {
            Problem::invalid_query(format!(
                "expected_version '{text}' is not 'any', 'no_stream', 'exists' or a version number"
            ))
        }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendQuery {
    expected_version: Option<String>,
}

/// The events of an append body: an array of events, one event, or `{"expected_version",
/// "events"}`. An event without `id` gets a fresh UUID (it then cannot be retried safely).
///
/// Events are cut out of the body as raw JSON and each parsed straight into a
/// [`ProposedEvent`], whose data and metadata stay the bytes they were sent as: building a
/// `Value` tree of every payload only to write it out again was the most expensive part of an
/// append over HTTP. Public for `benches/append_body.rs`.
pub fn parse_append(body: &Bytes) -> Result<(Option<String>, Vec<ProposedEvent>), Problem> {
    match parse_append_in_one_pass(body) {
        Some(parsed) => Ok(parsed),
        None => parse_append_step_by_step(body),
    }
}

/// [`parse_append`] for any body: the events cut out first, then each parsed, so that an
/// error names the event, and an event without id can be given one.
fn parse_append_step_by_step(
    body: &Bytes,
) -> Result<(Option<String>, Vec<ProposedEvent>), Problem> {
    let invalid = |detail: String| Problem::bad_request("invalid-events", "Invalid events", detail);
    let not_json = |e: serde_json::Error| invalid(format!("the body is not JSON: {e}"));
    let text =
        std::str::from_utf8(body).map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
    let (expected, events): (Option<String>, Vec<&RawValue>) = match text
        .trim_start()
        .as_bytes()
        .first()
    {
        Some(b'[') => (None, serde_json::from_str(text).map_err(not_json)?),
        Some(b'{') => {
            let mut object: BTreeMap<String, &RawValue> =
                serde_json::from_str(text).map_err(not_json)?;
            match object.remove("events") {
                Some(events) => {
                    let expected = match object
                        .remove("expected_version")
                        .map(|raw| serde_json::from_str::<Value>(raw.get()).map_err(not_json))
                    {
                        // `null` is no expectation, as an absent key.
                        None | Some(Ok(Value::Null)) => None,
                        Some(Ok(Value::String(text))) => Some(text),
                        Some(Ok(Value::Number(n))) => Some(n.to_string()),
                        Some(Ok(other)) => {
                            return Err(invalid(format!(
                                "\"expected_version\" is 'any', 'no_stream', 'exists' or a number, got {other}"
                            )));
                        }
                        Some(Err(problem)) => return Err(problem),
                    };
                    let events = serde_json::from_str(events.get())
                        .map_err(|_| invalid("\"events\" must be an array of events".into()))?;
                    (expected, events)
                }
                None => (None, vec![serde_json::from_str(text).map_err(not_json)?]),
            }
        }
        _ => {
            let other: Value = serde_json::from_str(text).map_err(not_json)?;
            return Err(invalid(format!(
                "expected an event object or an array of them, got {other}"
            )));
        }
    };
    let events = events
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let explain = |e: serde_json::Error| {
                invalid(format!(
                    "event {index}: {e}; an event is {{\"id\"?, \"type\", \"data\", \"metadata\"?, \"schema_version\"?}}"
                ))
            };
            match serde_json::from_str::<ProposedEvent>(raw.get()) {
                Ok(event) => Ok(event),
                Err(error) => {
                    // Perhaps only the id is missing: give it one and try again.
                    let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(raw.get())
                    else {
                        return Err(explain(error));
                    };
                    if object.contains_key("id") {
                        return Err(explain(error));
                    }
                    object.insert("id".into(), json!(uuid::Uuid::now_v7().to_string()));
                    serde_json::from_value::<ProposedEvent>(Value::Object(object)).map_err(explain)
                }
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((expected, events))
}

/// An event of a well-formed body, borrowing its data and metadata from the body: the same
/// fields and rules as [`ProposedEvent`]'s own deserialisation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BorrowedEvent<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "type", alias = "event_type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
}

impl BorrowedEvent<'_> {
    /// The event, its id, type, data and metadata slices of `body` rather than copies (`body`
    /// is what the event was parsed from); an id or type with escapes, which serde_json had to
    /// unescape, is the string it made.
    fn into_proposed(self, body: &ByteString) -> ProposedEvent {
        let slice = |raw: &RawValue| body.as_bytes().slice_ref(raw.get().as_bytes());
        let text = |text: Cow<'_, str>| match text {
            Cow::Borrowed(text) => body.slice_ref(text),
            Cow::Owned(text) => ByteString::from(text),
        };
        ProposedEvent {
            id: text(self.id),
            event_type: text(self.event_type),
            schema_version: self.schema_version,
            data: slice(self.data),
            metadata: self.metadata.map(slice),
        }
    }
}

/// The array of events of a body, each made a [`ProposedEvent`] of slices of `body` as it is
/// parsed: no vector of borrowed events built first and converted after.
struct EventsOf<'b> {
    body: &'b ByteString,
}

impl<'de> serde::de::DeserializeSeed<'de> for EventsOf<'_> {
    type Value = Vec<ProposedEvent>;

    fn deserialize<D: serde::Deserializer<'de>>(self, input: D) -> Result<Self::Value, D::Error> {
        input.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for EventsOf<'_> {
    type Value = Vec<ProposedEvent>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an array of events")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut events = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(event) = seq.next_element::<BorrowedEvent>()? {
            events.push(event.into_proposed(self.body));
        }
        Ok(events)
    }
}

/// The keys of an append body's envelope; any other is an error.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum EnvelopeKey {
    Events,
    ExpectedVersion,
}

/// The `{"events", "expected_version"?}` shape of an append body, each event made as in
/// [`EventsOf`].
struct EnvelopeOf<'b> {
    body: &'b ByteString,
}

impl<'de> serde::de::Visitor<'de> for EnvelopeOf<'_> {
    type Value = (Option<String>, Vec<ProposedEvent>);

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an object of \"events\" and \"expected_version\"")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let (mut expected, mut events) = (None, None);
        while let Some(key) = map.next_key::<EnvelopeKey>()? {
            match key {
                EnvelopeKey::Events if events.is_none() => {
                    events = Some(map.next_value_seed(EventsOf { body: self.body })?);
                }
                EnvelopeKey::ExpectedVersion if expected.is_none() => {
                    // `null` is no expectation, as an absent key.
                    expected = Some(map.next_value::<Option<ExpectedVersionJson>>()?.map(
                        |expected| match expected {
                            ExpectedVersionJson::Text(text) => text,
                            ExpectedVersionJson::Number(number) => number.to_string(),
                        },
                    ));
                }
                _ => return Err(A::Error::custom("a key given twice")),
            }
        }
        let events = events.ok_or_else(|| A::Error::missing_field("events"))?;
        Ok((expected.flatten(), events))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ExpectedVersionJson {
    Text(String),
    Number(u64),
}

/// A well-formed array or envelope body parsed in one pass over its bytes, or `None` for
/// anything else (a single event, an event without id, an error), left to
/// [`parse_append_step_by_step`] for its precise answer. Cutting the events out first and parsing
/// each again read every payload three times, the largest cost of a batched append in a
/// profile of the server (2026-11-26). The events' ids, types, data and metadata are slices of
/// `body`, not copies: a store that kept them would keep the whole body (none does; they are
/// encoded, or copied into what it keeps).
fn parse_append_in_one_pass(body: &Bytes) -> Option<(Option<String>, Vec<ProposedEvent>)> {
    // The body is checked to be UTF-8 once, as a whole: parsed as text, serde_json checks none
    // of its strings again (keys, ids, types, data), and ids and types are cut out of it
    // without another check. Checking each string as it came cost a sixth of the parse
    // (`benches/append_body.rs`).
    let body = ByteString::try_from(body.clone()).ok()?;
    let mut input = serde_json::Deserializer::from_str(&body);
    let parsed = match body.trim_ascii_start().as_bytes().first()? {
        b'[' => serde::de::DeserializeSeed::deserialize(EventsOf { body: &body }, &mut input)
            .map(|events| (None, events)),
        b'{' => serde::Deserializer::deserialize_map(&mut input, EnvelopeOf { body: &body }),
        _ => return None,
    };
    let (expected, events) = parsed.ok()?;
    // Only whitespace may follow, as `serde_json::from_str` requires.
    input.end().ok()?;
    Some((expected, events))
}

/// Checks each event against its type's schema (the version it declares, else the latest) and
/// records the version it was validated with, so reads can upcast it later. Types without a
/// schema pass under the lenient policy and are refused under the strict one.
fn validate_events(state: &AppState, events: &mut [ProposedEvent]) -> Result<(), Problem> {
    let Some(schemas) = &state.schemas else {
        return Ok(());
    };
    let registry = schemas.registry();
    // The common case, no schema at all and types without one let through, decides nothing
    // per event: two lookups and a `Value` per event were about 1% of a batched append.
    if schemas.policy() == SchemaPolicy::Lenient && !registry.has_any_schema() {
        return Ok(());
    }
    for (index, event) in events.iter_mut().enumerate() {
        // Data is decoded only for types with a schema; the others are decided on the type.
        let data: Value = if registry.has_schema(&event.event_type) {
            serde_json::from_slice(&event.data).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        match registry.check_append(
            schemas.policy(),
            &event.event_type,
            event.schema_version,
            &data,
        ) {
            Ok(AppendCheck::Validated { version }) => event.schema_version = Some(version),
            Ok(AppendCheck::Unchecked) => {}
            Err(error) => {
                let mut problem = Problem::from(error);
                problem.detail = format!(
                    "event {index} (id '{}', type '{}'): {}",
                    event.id, event.event_type, problem.detail
                );
                return Err(problem.with("index", index));
            }
        }
    }
    Ok(())
}

/// Turns events written with an older schema version into the latest one, so consumers
/// written for the latest version read every event. An event that cannot be upcast fails the
/// read with its position: never skipped.
pub(crate) fn upcast_events(state: &AppState, events: &mut [RecordedEvent]) -> Result<(), Problem> {
    let Some(schemas) = &state.schemas else {
        return Ok(());
    };
    schemas.upcast_events(events).map_err(|failure| {
        let position = failure.position;
        let mut problem = Problem::from(*failure.error);
        problem.detail = format!(
            "event at position {position} ({} version {}) cannot be upcast: {}; read with upcast=false to get it as written",
            failure.stream, failure.version, problem.detail
        );
        problem.with("position", position)
    })
}

/// `POST /v1/streams/{stream}`: appends atomically; 201, or 200 for a recognised retry.
pub async fn append(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(query): QueryParams<AppendQuery>,
    body: Bytes,
) -> Result<Response, Problem> {
    let store = event_store(&state)?;
    let stream = stream_name(&name)?;
    let (body_expected, events) = parse_append(&body)?;
    if query.expected_version.is_some() && body_expected.is_some() {
        return Err(Problem::invalid_query(
            "expected_version is both in the query and in the body; give it once",
        ));
    }
    let expected = expected_version(query.expected_version.or(body_expected).as_deref())?;
    let mut events = events;
    validate_events(&state, &mut events)?;
    // Both ways of `parse_append` take each event's data and metadata out of a body serde_json
    // parsed and accepted: they are valid JSON, which the store need not parse again.
    let append = ValidatedAppend::of_parsed_json(events)?;
    let outcome = store.append_validated(&stream, expected, append).await?;
    let status = if outcome.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let body = Appended {
        stream: stream.as_str(),
        outcome,
    };
    Ok((status, axum::Json(body)).into_response())
}

/// The body of an append's answer: the outcome and the stream it is in. Serialized as it is,
/// not through a `Value` tree (a map built and dropped for every append).
#[derive(serde::Serialize)]
struct Appended<'a> {
    stream: &'a str,
    #[serde(flatten)]
    outcome: proteus_eventstore::AppendOutcome,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// A version for a stream, a position for a feed; `end` reads backwards from the newest.
    from: Option<String>,
    direction: Option<Direction>,
    limit: Option<usize>,
    /// Feeds only: comma-separated event types.
    types: Option<String>,
    /// Feeds only: streams whose name starts with this.
    stream_prefix: Option<String>,
    /// Forward reads at the end wait this long for new events (long polling).
    wait_ms: Option<u64>,
    /// `false` returns events as written instead of upcast to the latest schema version.
    upcast: Option<bool>,
}

fn read_from(query: &ReadQuery, direction: Direction) -> Result<u64, Problem> {
    match (query.from.as_deref(), direction) {
        (None | Some("start"), Direction::Forward) => Ok(0),
        (None | Some("end"), Direction::Backward) => Ok(u64::MAX),
        (Some("end"), Direction::Forward) => Err(Problem::invalid_query(
            "from=end reads nothing forwards; use direction=backward, or subscribe to follow new events",
        )),
        (Some(text), _) => text.parse().map_err(|_| {
            Problem::invalid_query(format!(
                "'from' must be a version or position number, 'start' or 'end', got '{text}'"
            ))
        }),
    }
}

fn filter(query: &ReadQuery) -> ReadFilter {
    ReadFilter {
        event_types: query
            .types
            .as_deref()
            .map(|types| {
                types
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        stream_prefix: query.stream_prefix.clone(),
    }
}

fn check_wait(state: &AppState, wait_ms: u64) -> Result<Duration, Problem> {
    let wait_ms_max = state
        .config
        .wait_ms_max
        .min(proteus_eventstore::WAIT_MS_MAX);
    if wait_ms > wait_ms_max {
        return Err(Problem::invalid_query(format!(
            "'wait_ms' must be at most {wait_ms_max}, got {wait_ms}"
        )));
    }
    Ok(Duration::from_millis(wait_ms))
}

/// `GET /v1/streams/{stream}`: a page of a stream, of `$ce-{category}` or of `$all`.
pub async fn read(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(query): QueryParams<ReadQuery>,
) -> Result<Response, Problem> {
    let store = event_store(&state)?.clone();
    let direction = query.direction.unwrap_or_default();
    let from = read_from(&query, direction)?;
    let limit = query.limit.unwrap_or(READ_LIMIT_DEFAULT);
    let wait = check_wait(&state, query.wait_ms.unwrap_or(0))?;
    let target = target(&name)?;
    if matches!(target, Target::Stream(_))
        && (query.types.is_some() || query.stream_prefix.is_some())
    {
        return Err(Problem::invalid_query(
            "'types' and 'stream_prefix' filter feeds ($all, $ce-{category}), not a single stream",
        ));
    }
    if matches!(target, Target::Category(_)) && direction == Direction::Backward {
        return Err(Problem::invalid_query(
            "a category is read forwards only; read $all backwards with stream_prefix, or one stream backwards",
        ));
    }
    let filter = filter(&query);
    let mut waited = false;
    loop {
        let upcast = |events: &mut [RecordedEvent]| match query.upcast {
            Some(false) => Ok(()),
            _ => upcast_events(&state, events),
        };
        let (body, empty_at_end, head) = match &target {
            Target::Stream(stream) => {
                let mut page = store.read_stream(stream, from, direction, limit).await?;
                upcast(&mut page.events)?;
                let empty = page.events.is_empty();
                let head = page.head_position;
                (serde_json::to_vec(&page), empty, head)
            }
            Target::Category(category) => {
                let mut page = store.read_category(category, from, limit, &filter).await?;
                upcast(&mut page.events)?;
                let empty = page.events.is_empty() && page.is_end;
                let head = page.head_position;
                (serde_json::to_vec(&page), empty, head)
            }
            Target::All => {
                let mut page = store.read_all(from, direction, limit, &filter).await?;
                upcast(&mut page.events)?;
                let empty = page.events.is_empty() && page.is_end;
                let head = page.head_position;
                (serde_json::to_vec(&page), empty, head)
            }
        };
        if empty_at_end && !waited && !wait.is_zero() && direction == Direction::Forward {
            waited = true;
            tokio::select! {
                woke = store.wait_for_position(head, wait) => { woke?; }
                () = state.shutting_down() => {}
            }
            continue;
        }
        let body = body.map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "event-store-failure",
                "Event store failure",
                format!("a stored event cannot be rendered as JSON: {e}"),
            )
        })?;
        return Ok(crate::events::json_response(body));
    }
}

/// `DELETE /v1/streams/{stream}`: tombstones the stream for good.
pub async fn delete(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(query): QueryParams<AppendQuery>,
) -> Result<Response, Problem> {
    let store = event_store(&state)?;
    let stream = stream_name(&name)?;
    let expected = expected_version(query.expected_version.as_deref())?;
    let outcome = store.delete_stream(&stream, expected).await?;
    Ok(
        axum::Json(json!({ "stream": stream.as_str(), "deleted": true,
        "last_version": outcome.last_version }))
        .into_response(),
    )
}

/// `GET /v1/streams/{stream}/info`
pub async fn info(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<Response, Problem> {
    let store = event_store(&state)?;
    let stream = stream_name(&name)?;
    Ok(axum::Json(store.stream_info(&stream).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    version: u64,
    #[serde(rename = "type")]
    snapshot_type: String,
    data: Box<serde_json::value::RawValue>,
}

/// `PUT /v1/streams/{stream}/snapshot`: `{"version", "type", "data"}`.
pub async fn put_snapshot(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let store = event_store(&state)?;
    let stream = stream_name(&name)?;
    let snapshot: SnapshotBody = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(
            "invalid-snapshot",
            "Invalid snapshot",
            format!(
                "expected {{\"version\": N, \"type\": \"OrderState.v1\", \"data\": {{…}}}}: {e}"
            ),
        )
    })?;
    let data = Bytes::copy_from_slice(snapshot.data.get().as_bytes());
    store
        .put_snapshot(&stream, snapshot.version, &snapshot.snapshot_type, data)
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "stream": stream.as_str(), "version": snapshot.version })),
    )
        .into_response())
}

/// `GET /v1/streams/{stream}/snapshot`: the latest snapshot (404 when there is none).
pub async fn get_snapshot(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<Response, Problem> {
    let store = event_store(&state)?;
    let stream = stream_name(&name)?;
    match store.get_snapshot(&stream).await? {
        Some(snapshot) => Ok(axum::Json(snapshot).into_response()),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "snapshot-not-found",
            "Snapshot not found",
            format!(
                "stream '{stream}' has no snapshot; PUT one to …/snapshot",
                stream = stream.as_str()
            ),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateQuery {
    limit: Option<usize>,
    upcast: Option<bool>,
}

/// `GET /v1/streams/{stream}/aggregate`: the latest snapshot and the events after it.
pub async fn aggregate(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(query): QueryParams<AggregateQuery>,
) -> Result<Response, Problem> {
    let store = event_store(&state)?;
    let stream = stream_name(&name)?;
    let limit = query.limit.unwrap_or(proteus_eventstore::READ_COUNT_MAX);
    let mut aggregate = store.read_aggregate(&stream, limit).await?;
    if query.upcast != Some(false) {
        upcast_events(&state, &mut aggregate.events)?;
    }
    // Written by hand into one buffer sized up front: the events' data is copied as stored
    // rather than parsed again (what loading a large aggregate spends most of its time on).
    let payload: usize = aggregate
        .events
        .iter()
        .map(|e| e.data.len() + e.metadata.as_ref().map_or(0, |m| m.len()) + 160)
        .sum();
    let mut body = Vec::with_capacity(payload + 256);
    body.extend_from_slice(b"{\"stream\":");
    let _ = serde_json::to_writer(&mut body, aggregate.stream.as_str());
    body.extend_from_slice(b",\"snapshot\":");
    serde_json::to_writer(&mut body, &aggregate.snapshot).map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "event-store-failure",
            "Event store failure",
            format!("the stored snapshot cannot be rendered as JSON: {e}"),
        )
    })?;
    body.extend_from_slice(b",\"events\":[");
    for (index, event) in aggregate.events.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        event.write_json(&mut body);
    }
    body.extend_from_slice(
        format!(
            "],\"next_version\":{},\"is_end\":{},\"last_version\":{}}}",
            aggregate.next_version, aggregate.is_end, aggregate.last_version
        )
        .as_bytes(),
    );
    Ok(crate::events::json_response(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeQuery {
    /// First version (stream) or position (feed) to deliver; `end` for new events only.
    from: Option<String>,
    types: Option<String>,
    stream_prefix: Option<String>,
    upcast: Option<bool>,
}

/// Where a subscription is: the next version of a stream or the next position of a feed.
struct Subscription {
    store: Arc<dyn EventStore>,
    state: AppState,
    target: Target,
    filter: ReadFilter,
    next: u64,
    pending: std::collections::VecDeque<RecordedEvent>,
    keep_alive: Duration,
    finished: bool,
    upcast: bool,
}

impl Subscription {
    /// The next event, waiting for one when caught up; `None` ends the stream (shutdown or an
    /// error, which is sent as an `error` message first).
    async fn next_message(&mut self) -> Option<SseEvent> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(event) = self.pending.pop_front() {
                let id = match self.target {
                    Target::Stream(_) => event.version,
                    _ => event.position,
                };
                let data = serde_json::to_string(&event).unwrap_or_default();
                return Some(SseEvent::default().id(id.to_string()).data(data));
            }
            let read = match &self.target {
                Target::Stream(stream) => self
                    .store
                    .read_stream(stream, self.next, Direction::Forward, SUBSCRIBE_READ_EVENTS)
                    .await
                    .map(|page| (page.events, page.next_version, page.head_position)),
                Target::Category(category) => self
                    .store
                    .read_category(category, self.next, SUBSCRIBE_READ_EVENTS, &self.filter)
                    .await
                    .map(|page| (page.events, page.next_position, page.head_position)),
                Target::All => self
                    .store
                    .read_all(
                        self.next,
                        Direction::Forward,
                        SUBSCRIBE_READ_EVENTS,
                        &self.filter,
                    )
                    .await
                    .map(|page| (page.events, page.next_position, page.head_position)),
            };
            let (events, next, head) = match read {
                Ok(read) => read,
                // A stream that does not exist yet is one to wait for.
                Err(EventStoreError::StreamNotFound { .. }) => {
                    let head = self
                        .store
                        .read_all(u64::MAX, Direction::Backward, 1, &ReadFilter::default())
                        .await
                        .map_or(0, |page| page.head_position);
                    (Vec::new(), self.next, head)
                }
                Err(error) => {
                    self.finished = true;
                    return Some(error_message(Problem::from(error)));
                }
            };
            if events.is_empty() {
                // Positions are published only once committed, so waiting past `head` cannot
                // skip an event that commits later with a lower position.
                let head = match self.target {
                    // A stream's `next` is a version, not a position.
                    Target::Stream(_) => head,
                    _ => head.max(self.next.saturating_sub(1)),
                };
                tokio::select! {
                    waited = self.store.wait_for_position(head, self.keep_alive) => {
                        if let Err(error) = waited {
                            self.finished = true;
                            return Some(error_message(Problem::from(error)));
                        }
                    }
                    () = self.state.shutting_down() => return None,
                }
            }
            let mut events = events;
            if self.upcast
                && let Err(problem) = upcast_events(&self.state, &mut events)
            {
                self.finished = true;
                return Some(error_message(problem));
            }
            self.next = next;
            self.pending.extend(events);
        }
    }
}

/// The last message of a subscription that failed: an `error` event with the problem.
fn error_message(problem: Problem) -> SseEvent {
    SseEvent::default()
        .event("error")
        .data(problem.body().to_string())
}

/// `GET /v1/streams/{stream}/subscribe`: a catch-up subscription over SSE. Each message's id
/// is the event's version (stream) or position (feed); reconnecting with `Last-Event-ID`
/// resumes after it.
pub async fn subscribe(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(query): QueryParams<SubscribeQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    let store = event_store(&state)?.clone();
    let target = target(&name)?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|text| {
            text.parse::<u64>().map_err(|_| {
                Problem::bad_request(
                    "invalid-cursor",
                    "Invalid Last-Event-ID",
                    format!("Last-Event-ID '{text}' is not a version or position number"),
                )
            })
        })
        .transpose()?;
    let next = match (last_event_id, query.from.as_deref()) {
        (Some(last), _) => last + 1,
        (None, None | Some("start")) => 0,
        (None, Some("end")) => match &target {
            Target::Stream(stream) => match store.stream_info(stream).await {
                Ok(info) => info.last_version.map_or(0, |v| v + 1),
                Err(EventStoreError::StreamNotFound { .. }) => 0,
                Err(e) => return Err(e.into()),
            },
            _ => {
                let page = store
                    .read_all(u64::MAX, Direction::Backward, 1, &ReadFilter::default())
                    .await?;
                page.head_position + 1
            }
        },
        (None, Some(text)) => text.parse().map_err(|_| {
            Problem::invalid_query(format!(
                "'from' must be a version or position number, 'start' or 'end', got '{text}'"
            ))
        })?,
    };
    let filter = filter(&ReadQuery {
        from: None,
        direction: None,
        limit: None,
        types: query.types,
        stream_prefix: query.stream_prefix,
        wait_ms: None,
        upcast: None,
    });
    let keep_alive = Duration::from_millis(state.config.sse_keep_alive_ms);
    let subscription = Subscription {
        store,
        state,
        target,
        filter,
        next,
        pending: std::collections::VecDeque::new(),
        keep_alive,
        finished: false,
        upcast: query.upcast != Some(false),
    };
    let events = futures_util::stream::unfold(subscription, |mut subscription| async move {
        subscription
            .next_message()
            .await
            .map(|event| (Ok(event), subscription))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(keep_alive)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass parse reads well-formed bodies exactly as the step-by-step one does, and
    /// leaves every other body to it.
    #[test]
    fn the_one_pass_parse_agrees_with_the_step_by_step_one() {
        let agreeing = [
            r#"[]"#,
            r#" [{"id":"a","type":"T","data":{"x":[1,2.5,"\u00e9"]}}] "#,
            r#"[{"id":"a","event_type":"T","data":null,"metadata":{"m":1},"schema_version":2},
                {"id":"b","type":"U","data":"text"}]"#,
            r#"{"events":[{"id":"a","type":"T","data":{}}],"expected_version":7}"#,
            r#"{"expected_version":"no_stream","events":[{"id":"a","type":"T","data":{}}]}"#,
            r#"{"events":[]}"#,
            r#"{"events":[{"id":"a\u0062","type":"\u0054","data":{}}],"expected_version":null}"#,
        ];
        for text in agreeing {
            let body = Bytes::from(text);
            let fast = parse_append_in_one_pass(&body)
                .unwrap_or_else(|| panic!("{text} is left to the step-by-step parse"));
            let (expected, events) = parse_append_step_by_step(&body).unwrap();
            assert_eq!(fast.0, expected);
            assert_eq!(fast.1, events);
        }
        let left_to_the_other: [&[u8]; 10] = [
            br#"{"id":"a","type":"T","data":{}}"#,
            br#"[{"type":"T","data":{}}]"#,
            br#"{"events":[],"expected_version":-1}"#,
            br#"{"events":[],"expected_version":"any","other":1}"#,
            br#"[{"id":"a","type":"T","data":{}},]"#,
            b"[{\"id\":\"\xff\",\"type\":\"T\",\"data\":{}}]",
            b"42",
            br#"[{"id":"a","type":"T","data":{}}] x"#,
            br#"{"events":[],"events":[]}"#,
            br#"{"events":[{"id":"a","type":"T","data":{},"extra":1}]}"#,
        ];
        for body in left_to_the_other {
            assert!(
                parse_append_in_one_pass(&Bytes::from_static(body)).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

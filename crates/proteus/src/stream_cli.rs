//! `proteus stream`: append to and read event-sourced streams.

use std::time::Duration;

use clap::Subcommand;
use proteus_client::proteus_eventstore::{
    Direction, ExpectedVersion, ProposedEvent, RecordedEvent,
};
use proteus_client::{Client, FeedQuery};
use serde_json::Value;

use crate::cli::{ClientArgs, Output, client, json_arg, print_table, rfc3339_ms, say, truncate};

/// How long `read --follow` waits per request for new events.
const FOLLOW_WAIT_MS: u64 = 30_000;

#[derive(Subcommand, Debug)]
pub enum StreamCommand {
    /// Append events atomically: one from --type/--data, or a JSON array of events from
    /// --events (each {"id"?, "type", "data", "metadata"?, "schema_version"?}).
    Append {
        /// The stream, such as order-123 (its category is the part before the first '-').
        stream: String,
        /// The event's type, such as OrderPlaced (one event; --events for several).
        #[arg(long = "type", value_name = "EVENT_TYPE", conflicts_with = "events")]
        event_type: Option<String>,
        /// The event's data as JSON, or @FILE.
        #[arg(long, requires = "event_type", allow_hyphen_values = true)]
        data: Option<String>,
        /// The event's id (a retry with the same id is not written twice); default: a new UUID.
        #[arg(long, requires = "event_type")]
        id: Option<String>,
        /// A JSON array of events, or @FILE.
        #[arg(long)]
        events: Option<String>,
        /// any, no_stream (or no-stream), exists, or the version the stream must be at.
        #[arg(long, default_value = "any")]
        expected_version: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read a stream, a category ($ce-order) or every event ($all).
    Read {
        stream: String,
        /// First version (stream) or position (feed) to read.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Newest first (streams only).
        #[arg(long, conflicts_with = "follow")]
        backward: bool,
        /// Most events to print (without --follow).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Feeds only: comma-separated event types.
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
        /// Keep reading new events as they are appended (feeds: $all, $ce-…).
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn stream(command: StreamCommand) -> Result<(), String> {
    match command {
        StreamCommand::Append {
            stream,
            event_type,
            data,
            id,
            events,
            expected_version,
            client: args,
        } => {
            // `no-stream` too: command-line values are usually kebab-case.
            let expected: ExpectedVersion = match expected_version.as_str() {
                "no-stream" => "no_stream",
                other => other,
            }
            .parse()
            .map_err(|e| format!("--expected-version: {e}"))?;
            let events: Vec<ProposedEvent> = match (event_type, events) {
                (Some(event_type), _) => {
                    let data = match data.as_deref() {
                        Some(text) => json_arg("--data", text)?,
                        None => Value::Object(Default::default()),
                    };
                    let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
                    vec![ProposedEvent::new(
                        id,
                        event_type,
                        data.to_string().into_bytes(),
                    )]
                }
                (None, Some(text)) => {
                    let mut list = json_arg("--events", &text)?;
                    let Some(items) = list.as_array_mut() else {
                        return Err("--events must be a JSON array of events".into());
                    };
                    for item in items.iter_mut() {
                        if let Some(object) = item.as_object_mut()
                            && !object.contains_key("id")
                        {
                            object.insert("id".into(), uuid::Uuid::now_v7().to_string().into());
                        }
                    }
                    serde_json::from_value(list).map_err(|e| {
                        format!("--events: {e}; each event is {{\"id\"?, \"type\", \"data\", \"metadata\"?}}")
                    })?
                }
                (None, None) => {
                    return Err("say what to append: --type T --data JSON, or --events JSON_ARRAY (or @FILE)".into());
                }
            };
            let outcome = client(&args)?
                .append_events(&stream, expected, &events)
                .await
                .map_err(say)?;
            if args.output == Output::Json {
                println!("{}", serde_json::to_string(&outcome).unwrap_or_default());
            } else if outcome.duplicate {
                println!(
                    "already appended: {stream} versions {}..={} (a retry)",
                    outcome.first_version, outcome.last_version
                );
            } else {
                println!(
                    "appended to {stream}: versions {}..={}, positions {}..={}",
                    outcome.first_version,
                    outcome.last_version,
                    outcome.first_position,
                    outcome.last_position
                );
            }
            Ok(())
        }
        StreamCommand::Read {
            stream,
            from,
            backward,
            limit,
            types,
            follow,
            client: args,
        } => {
            let client = client(&args)?;
            let feed = stream == "$all" || stream.starts_with("$ce-");
            if !feed {
                if follow {
                    return Err("--follow reads feeds ($all, $ce-CATEGORY); for one stream, subscribe over SSE at /v1/streams/STREAM/subscribe".into());
                }
                let (from, direction) = if backward {
                    (if from == 0 { u64::MAX } else { from }, Direction::Backward)
                } else {
                    (from, Direction::Forward)
                };
                let page = client
                    .read_stream(&stream, from, direction, limit)
                    .await
                    .map_err(say)?;
                print_events(&page.events, args.output, true);
                return Ok(());
            }
            if backward {
                return Err(
                    "--backward reads a named stream; feeds are read forwards from --from".into(),
                );
            }
            let types: Vec<&str> = types.iter().map(String::as_str).collect();
            let mut next = from;
            loop {
                let query = FeedQuery {
                    from: next,
                    limit,
                    types: &types,
                    stream_prefix: None,
                    wait_ms: if follow { FOLLOW_WAIT_MS } else { 0 },
                };
                let page = read_feed(&client, &stream, &query).await?;
                print_events(&page.events, args.output, !follow);
                next = page.next_position;
                if !follow {
                    return Ok(());
                }
            }
        }
    }
}

async fn read_feed(
    client: &Client,
    feed: &str,
    query: &FeedQuery<'_>,
) -> Result<proteus_client::proteus_eventstore::FeedPage, String> {
    // A follower rides out a restarting server rather than exiting.
    let mut attempts = 0;
    loop {
        match client.read_feed(feed, query).await {
            Ok(page) => return Ok(page),
            Err(proteus_client::ClientError::Unreachable { .. })
                if query.wait_ms > 0 && attempts < 30 =>
            {
                attempts += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(say(e)),
        }
    }
}

fn print_events(events: &[RecordedEvent], output: Output, table: bool) {
    if output == Output::Json || !table {
        for event in events {
            println!("{}", serde_json::to_string(event).unwrap_or_default());
        }
        return;
    }
    let rows = events
        .iter()
        .map(|event| {
            vec![
                event.position.to_string(),
                event.stream.as_str().to_owned(),
                event.version.to_string(),
                event.event_type.to_string(),
                rfc3339_ms(event.recorded_ms),
                truncate(&String::from_utf8_lossy(&event.data), 60),
            ]
        })
        .collect();
    print_table(
        &["POSITION", "STREAM", "VERSION", "TYPE", "TIME", "DATA"],
        rows,
    );
}

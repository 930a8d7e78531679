//! The client commands: `topic`, `publish` and `tail` (groups are in `group_cli`).

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use futures_util::StreamExt;
use proteus_client::{Client, ClientError, EventRecord, TailOptions};
use proteus_log::TopicDescription;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON document per line, for scripts.
    Json,
}

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The Proteus server to talk to.
    #[arg(
        long,
        env = "PROTEUS_SERVER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub server: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table", global = true)]
    pub output: Output,
}

/// `args` with the client flags given before the command (`proteus --server URL topic list`,
/// as `nats --server` or `kubectl --server` take them) moved to just after the command's
/// name (`proteus topic list --server URL …`), where they are declared; other arguments are
/// left as they are, so a command without them still says they are unexpected.
pub fn client_flags_after_their_command(
    args: Vec<std::ffi::OsString>,
    root: &clap::Command,
) -> Vec<std::ffi::OsString> {
    // The long names of `ClientArgs`' flags, as clap declares them.
    let client = <ClientArgs as Args>::augment_args(clap::Command::new("client"));
    let client_flags: Vec<String> = client
        .get_arguments()
        .filter_map(|arg| arg.get_long().map(|long| format!("--{long}")))
        .collect();
    let mut leading = 0;
    while let Some(arg) = args.get(1 + leading).and_then(|a| a.to_str()) {
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, _)) => (flag, true),
            None => (arg, false),
        };
        if !client_flags.iter().any(|known| known == flag) {
            break;
        }
        leading += if inline_value { 1 } else { 2 };
    }
    if leading == 0 || 1 + leading > args.len() {
        return args;
    }
    let mut command = root;
    let mut after = 1 + leading;
    while let Some(sub) = args
        .get(after)
        .and_then(|a| a.to_str())
        .and_then(|name| command.find_subcommand(name))
    {
        command = sub;
        after += 1;
    }
    if after == 1 + leading {
        return args; // no command follows: clap says what is wrong
    }
    let mut moved = Vec::with_capacity(args.len());
    moved.push(args[0].clone());
    moved.extend_from_slice(&args[1 + leading..after]);
    moved.extend_from_slice(&args[1..1 + leading]);
    moved.extend_from_slice(&args[after..]);
    moved
}

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic, or update the settings of an existing one.
    Create {
        name: String,
        /// Number of partitions (fixed once created).
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Delete events older than this; 0 keeps them forever [default: 7 days].
        #[arg(long, value_name = "MS")]
        retention_ms: Option<u64>,
        /// Delete the oldest events when a partition holds more than this.
        #[arg(long, value_name = "BYTES")]
        retention_bytes: Option<u64>,
        /// Largest event accepted [default: 1048576].
        #[arg(long, value_name = "BYTES")]
        event_bytes_max: Option<u32>,
        /// Size at which a partition starts a new segment file [default: 67108864].
        #[arg(long, value_name = "BYTES")]
        segment_bytes: Option<u64>,
        /// Window in which a repeated (source, id) is recognised as a duplicate; 0 disables
        /// deduplication [default: 120000].
        #[arg(long, value_name = "MS")]
        dedup_window_ms: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List topics.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a topic's settings and partitions.
    Describe {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a topic and all its events.
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    pub topic: String,
    /// The event's type; with it, one event is built from these flags. Without it, CloudEvents
    /// are read as JSON lines from stdin (missing specversion and id are filled in).
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    /// The event's source [default: /proteus-cli].
    #[arg(long)]
    pub source: Option<String>,
    /// The event's id [default: a new UUIDv7].
    #[arg(long)]
    pub id: Option<String>,
    /// The event's subject (also its partition key unless --partition-key is given).
    #[arg(long)]
    pub subject: Option<String>,
    /// The partitionkey extension: events with the same key keep their order.
    #[arg(long)]
    pub partition_key: Option<String>,
    /// JSON data.
    #[arg(long, conflicts_with = "data_text", allow_hyphen_values = true)]
    pub data: Option<String>,
    /// Text data.
    #[arg(long)]
    pub data_text: Option<String>,
    /// An extension attribute, NAME=VALUE (repeatable).
    #[arg(long = "extension", value_name = "NAME=VALUE")]
    pub extensions: Vec<String>,
    /// Events per request when reading stdin.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_events: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct TailArgs {
    pub topic: String,
    /// Where to start: beginning, end, an offset (with --partition), or a position printed by
    /// an earlier tail (such as 0:12,1:7).
    #[arg(long, default_value = "end")]
    pub from: String,
    /// Start at the first event appended at or after this time (RFC 3339, or ms since epoch).
    #[arg(long, conflicts_with = "from")]
    pub from_time: Option<String>,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub(crate) fn client(args: &ClientArgs) -> Result<Client, String> {
    Client::new(&args.server).map_err(|e| e.to_string())
}

pub(crate) fn say(error: ClientError) -> String {
    error.to_string()
}

/// `proteus status`: the server's readiness and its shared backends; an error (exit 1) when
/// one is down, so scripts can wait on it.
pub async fn status(args: ClientArgs) -> Result<(), String> {
    let readiness = client(&args)?.readiness().await.map_err(say)?;
    let status = readiness["status"].as_str().unwrap_or("unknown").to_owned();
    if args.output == Output::Json {
        println!("{readiness}");
    } else {
        println!("{status} ({})", args.server);
        let backends = readiness["backends"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if backends.is_empty() {
            println!("every store is embedded: no shared backend to check");
        } else {
            let rows = backends
                .iter()
                .map(|b| {
                    vec![
                        b["store"].as_str().unwrap_or("").to_owned(),
                        b["backend"].as_str().unwrap_or("").to_owned(),
                        if b["up"] == true { "up" } else { "DOWN" }.to_owned(),
                        b["latency_ms"].to_string(),
                        b["error"].as_str().unwrap_or("").to_owned(),
                    ]
                })
                .collect();
            print_table(&["STORE", "BACKEND", "STATE", "CHECK MS", "ERROR"], rows);
        }
    }
    if status == "ready" {
        Ok(())
    } else {
        Err(format!(
            "{} is {status}: a shared backend is down (see above); calls that need it fail with 503 until it is back",
            args.server
        ))
    }
}

pub async fn topic(command: TopicCommand) -> Result<(), String> {
    match command {
        TopicCommand::Create {
            name,
            partitions,
            retention_ms,
            retention_bytes,
            event_bytes_max,
            segment_bytes,
            dedup_window_ms,
            client: args,
        } => {
            let mut config = json!({ "partitions": partitions });
            if let Some(ms) = retention_ms {
                config["retention_ms"] = if ms == 0 { Value::Null } else { ms.into() };
            }
            if let Some(bytes) = retention_bytes {
                config["retention_bytes"] = bytes.into();
            }
            if let Some(bytes) = event_bytes_max {
                config["event_bytes_max"] = bytes.into();
            }
            if let Some(bytes) = segment_bytes {
                config["segment_bytes"] = bytes.into();
            }
            if let Some(ms) = dedup_window_ms {
                config["dedup_window_ms"] = ms.into();
            }
            let topic = client(&args)?
                .put_topic(&name, &config)
                .await
                .map_err(say)?;
            print_topic(&topic, args.output);
        }
        TopicCommand::List { client: args } => {
            let topics = client(&args)?.list_topics().await.map_err(say)?;
            match args.output {
                Output::Json => {
                    for topic in &topics {
                        println!("{}", serde_json::to_string(topic).unwrap_or_default());
                    }
                }
                Output::Table => {
                    let rows = topics
                        .iter()
                        .map(|t| {
                            vec![
                                t.name.to_string(),
                                t.partitions.len().to_string(),
                                t.partitions
                                    .iter()
                                    .map(|p| p.next_offset - p.first_offset)
                                    .sum::<u64>()
                                    .to_string(),
                                human_bytes(t.partitions.iter().map(|p| p.bytes).sum()),
                                t.config.retention_ms.map_or("forever".into(), human_ms),
                            ]
                        })
                        .collect();
                    print_table(
                        &["TOPIC", "PARTITIONS", "EVENTS", "SIZE", "RETENTION"],
                        rows,
                    );
                }
            }
        }
        TopicCommand::Describe { name, client: args } => {
            let topic = client(&args)?.describe_topic(&name).await.map_err(say)?;
            print_topic(&topic, args.output);
        }
        TopicCommand::Delete { name, client: args } => {
            client(&args)?.delete_topic(&name).await.map_err(say)?;
            match args.output {
                Output::Json => println!("{}", json!({"deleted": name})),
                Output::Table => println!("deleted topic {name}"),
            }
        }
    }
    Ok(())
}

fn print_topic(topic: &TopicDescription, output: Output) {
    if output == Output::Json {
        println!("{}", serde_json::to_string(topic).unwrap_or_default());
        return;
    }
    let c = &topic.config;
    // A backend that keeps its own storage (NATS) has no segments: neither their size nor
    // their count means anything there.
    let segmented = topic.partitions.iter().any(|p| p.segments.is_some());
    println!("topic {}", topic.name);
    println!(
        "  retention: {} / {}   event max: {}{}   dedup window: {}",
        c.retention_ms.map_or("forever".into(), human_ms),
        c.retention_bytes
            .map_or("no size limit".into(), human_bytes),
        human_bytes(u64::from(c.event_bytes_max)),
        if segmented {
            format!("   segment: {}", human_bytes(c.segment_bytes))
        } else {
            String::new()
        },
        if c.dedup_window_ms == 0 {
            "off".into()
        } else {
            human_ms(c.dedup_window_ms)
        },
    );
    let rows = topic
        .partitions
        .iter()
        .map(|p| {
            let mut row = vec![
                p.partition.to_string(),
                p.first_offset.to_string(),
                p.next_offset.to_string(),
                human_bytes(p.bytes),
            ];
            if segmented {
                row.push(p.segments.map_or("-".into(), |n| n.to_string()));
            }
            row
        })
        .collect();
    let mut headers = vec!["PARTITION", "FIRST OFFSET", "NEXT OFFSET", "SIZE"];
    if segmented {
        headers.push("SEGMENTS");
    }
    print_table(&headers, rows);
}

pub async fn publish(args: PublishArgs) -> Result<(), String> {
    let client = client(&args.client)?;
    let source = args.source.clone().unwrap_or_else(|| "/proteus-cli".into());
    if let Some(event_type) = &args.event_type {
        let event = event_from_flags(&args, event_type, &source)?;
        let results = client.publish(&args.topic, &[event]).await.map_err(say)?;
        print_results(&results, &[], args.client.output);
        return Ok(());
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err("no event given: pass --type (with --data or --data-text) for one event, or pipe CloudEvents as JSON lines on stdin".into());
    }
    let mut pending = StdinBatch::default();
    for (index, line) in stdin.lock().lines().enumerate() {
        let line_number = index + 1;
        let line = line.map_err(|e| format!("reading stdin: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut event: Value = serde_json::from_str(&line).map_err(|e| {
            format!("line {line_number} is not JSON: {e}; each line must be one CloudEvent object")
        })?;
        let object = event.as_object_mut().ok_or_else(|| {
            format!(
                "line {line_number} is not a JSON object; each line must be one CloudEvent object"
            )
        })?;
        object.entry("specversion").or_insert_with(|| "1.0".into());
        object
            .entry("id")
            .or_insert_with(|| uuid::Uuid::now_v7().to_string().into());
        object
            .entry("source")
            .or_insert_with(|| source.clone().into());
        if !object.contains_key("type") {
            return Err(format!(
                "line {line_number} has no \"type\"; every CloudEvent needs one"
            ));
        }
        pending.events.push(event);
        pending.lines.push(line_number);
        if pending.events.len() >= args.batch_events as usize {
            pending
                .flush(&client, &args.topic, args.client.output)
                .await?;
        }
    }
    pending
        .flush(&client, &args.topic, args.client.output)
        .await?;
    let (published, duplicates) = (pending.published, pending.duplicates);
    if args.client.output == Output::Table {
        println!(
            "published {published} events to {} ({duplicates} were duplicates already stored)",
            args.topic
        );
    }
    Ok(())
}

/// Server errors name the event's index in its batch; say which stdin line that was.
fn with_lines(error: ClientError, lines: &[usize]) -> String {
    if let ClientError::Problem { body, .. } = &error
        && let Some(line) = body
            .get("event_index")
            .and_then(Value::as_u64)
            .and_then(|i| lines.get(i as usize))
    {
        return format!("{error} (stdin line {line})");
    }
    error.to_string()
}

/// Events read from stdin and not yet sent, with the line each came from, and running totals.
#[derive(Default)]
struct StdinBatch {
    events: Vec<Value>,
    lines: Vec<usize>,
    published: usize,
    duplicates: usize,
}

impl StdinBatch {
    async fn flush(&mut self, client: &Client, topic: &str, output: Output) -> Result<(), String> {
        if self.events.is_empty() {
            return Ok(());
        }
        let results = client
            .publish(topic, &self.events)
            .await
            .map_err(|e| with_lines(e, &self.lines))?;
        if output == Output::Json {
            print_results(&results, &self.lines, output);
        }
        self.published += results.len();
        self.duplicates += results.iter().filter(|r| r.duplicate).count();
        self.events.clear();
        self.lines.clear();
        Ok(())
    }
}

/// Prints append results; `lines` are the stdin lines the events came from, if any.
fn print_results(results: &[proteus_log::AppendReceipt], lines: &[usize], output: Output) {
    match output {
        Output::Json => {
            for (i, r) in results.iter().enumerate() {
                let mut line =
                    json!({"partition": r.partition, "offset": r.offset, "duplicate": r.duplicate});
                if let Some(number) = lines.get(i) {
                    line["line"] = (*number).into();
                }
                println!("{line}");
            }
        }
        Output::Table => {
            let rows = results
                .iter()
                .map(|r| {
                    vec![
                        r.partition.to_string(),
                        r.offset.to_string(),
                        if r.duplicate { "yes" } else { "no" }.into(),
                    ]
                })
                .collect();
            print_table(&["PARTITION", "OFFSET", "DUPLICATE"], rows);
        }
    }
}

fn event_from_flags(args: &PublishArgs, event_type: &str, source: &str) -> Result<Value, String> {
    let mut event = json!({
        "specversion": "1.0",
        "id": args.id.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        "source": source,
        "type": event_type,
    });
    if let Some(subject) = &args.subject {
        event["subject"] = subject.as_str().into();
    }
    if let Some(key) = &args.partition_key {
        event["partitionkey"] = key.as_str().into();
    }
    if let Some(data) = &args.data {
        let value: Value = serde_json::from_str(data).map_err(|e| {
            format!("--data is not valid JSON ({e}); use --data-text for plain text")
        })?;
        event["datacontenttype"] = "application/json".into();
        event["data"] = value;
    } else if let Some(text) = &args.data_text {
        event["datacontenttype"] = "text/plain".into();
        event["data"] = text.as_str().into();
    }
    for extension in &args.extensions {
        let (name, value) = extension
            .split_once('=')
            .ok_or_else(|| format!("--extension {extension:?} is not NAME=VALUE"))?;
        event[name] = value.into();
    }
    Ok(event)
}

/// Reconnection attempts after a broken stream, before giving up.
const TAIL_RECONNECTS_MAX: u32 = 10;

pub async fn tail(args: TailArgs) -> Result<(), String> {
    let client = client(&args.client)?;
    let mut options = TailOptions {
        from: args.from_time.is_none().then(|| args.from.clone()),
        from_time: args.from_time.clone(),
        partition: args.partition,
        resume_from: None,
    };
    let mut printed = 0u64;
    let mut reconnects = 0;
    let mut stdout = std::io::stdout().lock();
    loop {
        let stream = match client.tail(&args.topic, &options).await {
            Ok(stream) => stream,
            Err(e @ ClientError::Unreachable { .. })
                if options.resume_from.is_some() && reconnects < TAIL_RECONNECTS_MAX =>
            {
                reconnects += 1;
                eprintln!("{e}; reconnecting ({reconnects}/{TAIL_RECONNECTS_MAX})");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(reconnects))).await;
                continue;
            }
            Err(e) => return Err(say(e)),
        };
        let mut stream = std::pin::pin!(stream);
        let interrupted = tokio::signal::ctrl_c();
        let mut interrupted = std::pin::pin!(interrupted);
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                _ = &mut interrupted => return Ok(()),
            };
            match next {
                Some(Ok(event)) => {
                    reconnects = 0;
                    print_event(&mut stdout, &event.record, args.client.output);
                    options.resume_from = Some(event.position);
                    printed += 1;
                    if args.count.is_some_and(|count| printed >= count) {
                        return Ok(());
                    }
                }
                Some(Err(e @ ClientError::Problem { .. })) => return Err(say(e)),
                Some(Err(e)) => {
                    eprintln!("{e}");
                    break;
                }
                None => break,
            }
        }
        // Reconnect after the last event received (or from the requested start if none was).
        reconnects += 1;
        if reconnects > TAIL_RECONNECTS_MAX {
            return Err(format!(
                "the stream from {} kept breaking; giving up",
                client.base_url()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_event(out: &mut impl Write, record: &EventRecord, output: Output) {
    let _ = match output {
        Output::Json => writeln!(
            out,
            r#"{{"partition":{},"offset":{},"append_time_ms":{},"event":{}}}"#,
            record.partition,
            record.offset,
            record.append_time_ms,
            record.event.get()
        ),
        Output::Table => {
            let event: Value = serde_json::from_str(record.event.get()).unwrap_or_default();
            let text = |name: &str| {
                event
                    .get(name)
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_owned()
            };
            let data = event
                .get("data")
                .map(|d| d.to_string())
                .or_else(|| event.get("data_base64").map(|_| "(binary)".into()))
                .unwrap_or_default();
            writeln!(
                out,
                "{}:{}  {}  {}  {}  {}  {}",
                record.partition,
                record.offset,
                rfc3339_ms(record.append_time_ms),
                text("type"),
                text("source"),
                text("id"),
                truncate(&data, 120)
            )
        }
    };
    let _ = out.flush();
}

/// A time in milliseconds since the epoch as RFC 3339 in UTC, always with three digits of
/// milliseconds (`…:05.990Z`, not `…:05.99Z`), so the times of a table line up.
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => ms.to_string(),
    }
}

pub(crate) fn truncate(text: &str, chars_max: usize) -> String {
    if text.chars().count() <= chars_max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(chars_max - 1).collect();
        cut.push('…');
        cut
    }
}

pub(crate) fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn human_ms(ms: u64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A JSON argument given inline or as `@FILE`; errors name the flag.
pub(crate) fn json_arg(flag: &str, text: &str) -> Result<serde_json::Value, String> {
    let text = match text.strip_prefix('@') {
        Some(file) => {
            std::fs::read_to_string(file).map_err(|e| format!("{flag}: cannot read {file}: {e}"))?
        }
        None => text.to_owned(),
    };
    serde_json::from_str(&text).map_err(|e| format!("{flag} is not valid JSON: {e}"))
}

//! Consumer-group commands: `group`, `consume` and `dlq`.

use std::io::Write;

use clap::{Args, Subcommand, ValueEnum};
use proteus_client::Outage;
use serde_json::{Value, json};

use crate::cli::{ClientArgs, Output, client, print_table, rfc3339_ms, say, truncate};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PushModeArg {
    /// One event per request, CloudEvents binary mode.
    Binary,
    /// Batches as application/cloudevents-batch+json.
    Batch,
}

#[derive(Args, Debug)]
pub struct GroupSettings {
    /// Where a new group starts: beginning, end, an offset, or a time (RFC 3339 or ms since
    /// the epoch, written time:VALUE).
    #[arg(long, default_value = "beginning")]
    start: String,
    /// Redeliver an event not acked within this time [default: 30000].
    #[arg(long, value_name = "MS")]
    ack_wait_ms: Option<u64>,
    /// Deliveries before an event goes to the dead-letter topic [default: 5].
    #[arg(long)]
    deliveries_max: Option<u32>,
    /// First retry delay ceiling; doubles per retry, with full jitter [default: 1000].
    #[arg(long, value_name = "MS")]
    backoff_base_ms: Option<u64>,
    /// Largest retry delay [default: 60000].
    #[arg(long, value_name = "MS")]
    backoff_max_ms: Option<u64>,
    /// Most unacknowledged events across the group [default: 10000].
    #[arg(long)]
    unacked_events_max: Option<u32>,
    /// A member silent for this long is removed [default: 10000].
    #[arg(long, value_name = "MS")]
    session_timeout_ms: Option<u64>,
    /// Dead-letter topic [default: TOPIC.GROUP.dlq].
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// Push events to this webhook instead of waiting for pulls.
    #[arg(long, value_name = "URL")]
    push_url: Option<String>,
    /// How the webhook receives events: one per request or a batch [default: binary].
    #[arg(long, value_enum, requires = "push_url")]
    push_mode: Option<PushModeArg>,
    /// Requests in flight at once for a push group [default: 4].
    #[arg(long, requires = "push_url")]
    push_concurrency_max: Option<u32>,
    /// Webhook answer timeout [default: 10000].
    #[arg(long, value_name = "MS", requires = "push_url")]
    push_timeout_ms: Option<u64>,
    /// Sign webhook requests (Standard Webhooks HMAC-SHA256) with this secret.
    #[arg(long, env = "PROTEUS_HMAC_SECRET", requires = "push_url")]
    hmac_secret: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Create a consumer group on a topic, or update its settings.
    Create {
        topic: String,
        group: String,
        #[command(flatten)]
        settings: GroupSettings,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a topic's groups with their lag.
    List {
        topic: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a group: settings, members, and per partition its position, lag and events in flight.
    Describe {
        topic: String,
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a group and its positions (its dead-letter topic stays).
    Delete {
        topic: String,
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Move a group to another position: beginning, end, an offset, or time:VALUE.
    Reset {
        topic: String,
        group: String,
        /// `beginning`, `end`, an offset (`42`), or a time: `time:2026-11-24T10:00:00Z` or
        /// `time:` and milliseconds since the epoch (the first event appended at or after it).
        #[arg(long)]
        to: String,
        /// Only this partition (repeatable); all when absent.
        #[arg(long = "partition")]
        partitions: Vec<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    pub topic: String,
    /// The consumer group to join: its members share the topic's partitions, and what this
    /// command acks is committed for the whole group (create it with `proteus group create`,
    /// or pass --create).
    #[arg(long)]
    pub group: String,
    /// Rejoin under this member id (keeps the same partitions after a quick restart).
    #[arg(long)]
    pub member_id: Option<String>,
    /// Events per pull.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_events: u32,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Create the group (starting at the beginning) if it does not exist.
    #[arg(long)]
    pub create: bool,
    /// How long to keep retrying (joining, pulling, acking) while the server cannot be reached
    /// or answers 502, 503 or 504 (it restarts, or its backend elects a new leader) before
    /// exiting with the error; 0 exits at the first.
    #[arg(long, default_value_t = 60_000)]
    pub unavailable_wait_max_ms: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List a group's dead letters.
    List {
        topic: String,
        group: String,
        /// First dead-letter offset to list.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most dead letters to list.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send dead letters back to the group: all, or those at the given dead-letter offsets.
    Replay {
        topic: String,
        group: String,
        /// Replay every dead letter.
        #[arg(long, conflicts_with = "offsets", required_unless_present = "offsets")]
        all: bool,
        /// Replay the dead letter at this offset of the dead-letter topic (repeatable; see
        /// `proteus dlq list`).
        #[arg(long = "offset", value_name = "OFFSET")]
        offsets: Vec<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `beginning`, `end`, `42`, `time:2026-11-24T10:00:00Z` or `time:1795000000000`.
fn position_json(text: &str) -> Result<Value, String> {
    match text {
        "beginning" | "end" => Ok(json!(text)),
        _ => {
            if let Some(time) = text.strip_prefix("time:") {
                let ms = match time.parse::<i64>() {
                    Ok(ms) => ms,
                    Err(_) => time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                        .map_err(|e| format!("invalid time {time:?}: {e}; use RFC 3339 (2026-11-24T10:00:00Z) or milliseconds since the epoch"))?,
                };
                return Ok(json!({ "time_ms": ms }));
            }
            text.parse::<u64>()
                .map(|offset| json!({ "offset": offset }))
                .map_err(|_| {
                    format!(
                        "invalid position {text:?}: use beginning, end, an offset, or time:RFC3339"
                    )
                })
        }
    }
}

fn settings_json(settings: &GroupSettings) -> Result<Value, String> {
    let mut config = json!({ "start": position_json(&settings.start)? });
    let mut set = |path: &[&str], value: Option<Value>| {
        if let Some(value) = value {
            let mut target = &mut config;
            for key in &path[..path.len() - 1] {
                target = target
                    .as_object_mut()
                    .expect("objects all the way")
                    .entry(key.to_string())
                    .or_insert_with(|| json!({}));
            }
            target[path[path.len() - 1]] = value;
        }
    };
    set(&["ack_wait_ms"], settings.ack_wait_ms.map(Value::from));
    set(
        &["unacked_events_max"],
        settings.unacked_events_max.map(Value::from),
    );
    set(
        &["session_timeout_ms"],
        settings.session_timeout_ms.map(Value::from),
    );
    set(
        &["retry", "deliveries_max"],
        settings.deliveries_max.map(Value::from),
    );
    set(
        &["retry", "backoff_base_ms"],
        settings.backoff_base_ms.map(Value::from),
    );
    set(
        &["retry", "backoff_max_ms"],
        settings.backoff_max_ms.map(Value::from),
    );
    set(
        &["dead_letter_topic"],
        settings.dead_letter_topic.clone().map(Value::from),
    );
    set(&["push", "url"], settings.push_url.clone().map(Value::from));
    set(
        &["push", "mode"],
        settings.push_mode.map(|mode| match mode {
            PushModeArg::Binary => json!("binary"),
            PushModeArg::Batch => json!("batch"),
        }),
    );
    set(
        &["push", "concurrency_max"],
        settings.push_concurrency_max.map(Value::from),
    );
    set(
        &["push", "timeout_ms"],
        settings.push_timeout_ms.map(Value::from),
    );
    set(
        &["push", "hmac_secret"],
        settings.hmac_secret.clone().map(Value::from),
    );
    Ok(config)
}

fn print_json(value: &Value) {
    println!("{value}");
}

fn print_groups(groups: &[Value], output: Output) {
    if output == Output::Json {
        for group in groups {
            print_json(group);
        }
        return;
    }
    let rows = groups
        .iter()
        .map(|g| {
            vec![
                g["group"].as_str().unwrap_or("-").to_owned(),
                if g["config"]["push"].is_object() {
                    "push"
                } else {
                    "pull"
                }
                .to_owned(),
                g["members"].as_array().map_or(0, Vec::len).to_string(),
                g["lag_events"].to_string(),
                g["unacked_events"].to_string(),
                g["counters"]["dead_lettered"].to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "GROUP",
            "MODE",
            "MEMBERS",
            "LAG",
            "UNACKED",
            "DEAD LETTERED",
        ],
        rows,
    );
}

fn print_group(group: &Value, output: Output) {
    if output == Output::Json {
        print_json(group);
        return;
    }
    println!(
        "group {} on topic {} (generation {}, dead letters to {})",
        group["group"].as_str().unwrap_or("-"),
        group["topic"].as_str().unwrap_or("-"),
        group["generation"],
        group["dead_letter_topic"].as_str().unwrap_or("-")
    );
    println!(
        "lag {} events, {} unacked, {:.1} delivered/s, {:.1} acked/s; totals: {}",
        group["lag_events"],
        group["unacked_events"],
        group["delivery_rate_per_s"].as_f64().unwrap_or(0.0),
        group["ack_rate_per_s"].as_f64().unwrap_or(0.0),
        group["counters"]
    );
    let rows = group["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    vec![
                        p["partition"].to_string(),
                        p["owner"].as_str().unwrap_or("-").to_owned(),
                        p["committed"].to_string(),
                        p["end_offset"].to_string(),
                        p["lag_events"].to_string(),
                        format!("{:.1}", p["lag_seconds"].as_f64().unwrap_or(0.0)),
                        p["in_flight"].to_string(),
                        p["waiting_retry"].to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_table(
        &[
            "PARTITION",
            "OWNER",
            "COMMITTED",
            "END",
            "LAG",
            "LAG S",
            "IN FLIGHT",
            "RETRYING",
        ],
        rows,
    );
}

pub async fn group(command: GroupCommand) -> Result<(), String> {
    match command {
        GroupCommand::Create {
            topic,
            group,
            settings,
            client: args,
        } => {
            let config = settings_json(&settings)?;
            let description = client(&args)?
                .put_group(&topic, &group, &config)
                .await
                .map_err(say)?;
            print_group(&description, args.output);
        }
        GroupCommand::List {
            topic,
            client: args,
        } => {
            let groups = client(&args)?.list_groups(&topic).await.map_err(say)?;
            print_groups(&groups, args.output);
        }
        GroupCommand::Describe {
            topic,
            group,
            client: args,
        } => {
            let description = client(&args)?
                .describe_group(&topic, &group)
                .await
                .map_err(say)?;
            print_group(&description, args.output);
        }
        GroupCommand::Delete {
            topic,
            group,
            client: args,
        } => {
            client(&args)?
                .delete_group(&topic, &group)
                .await
                .map_err(say)?;
            if args.output == Output::Table {
                println!("deleted group {group} of topic {topic}");
            }
        }
        GroupCommand::Reset {
            topic,
            group,
            to,
            partitions,
            client: args,
        } => {
            let to = position_json(&to)?;
            let partitions = (!partitions.is_empty()).then_some(partitions.as_slice());
            let committed = client(&args)?
                .reset_group(&topic, &group, &to, partitions)
                .await
                .map_err(say)?;
            match args.output {
                Output::Json => print_json(&json!({ "committed": committed })),
                Output::Table => println!("group {group} now at {committed}"),
            }
        }
    }
    Ok(())
}

/// Pulls, prints each event, then acks the printed batch: an event is acked only once it
/// was written to stdout.
pub async fn consume(args: ConsumeArgs) -> Result<(), String> {
    let client = client(&args.client)?;
    let topic = args.topic.as_str();
    let group = args.group.as_str();
    if args.create
        && let Err(error) = client.describe_group(topic, group).await
    {
        if !matches!(
            &error,
            proteus_client::ClientError::Problem { status: 404, .. }
        ) {
            return Err(say(error));
        }
        client
            .put_group(topic, group, &json!({ "start": "beginning" }))
            .await
            .map_err(say)?;
    }
    let mut outage = Outage::new(args.unavailable_wait_max_ms);
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let joining = join(
        &client,
        topic,
        group,
        args.member_id.as_deref(),
        &mut outage,
        &mut stop,
    );
    let Some(mut membership) = joining.await? else {
        return Ok(());
    };
    let mut printed: u64 = 0;
    let stdout = std::io::stdout();
    loop {
        let remaining = args.count.map_or(u64::MAX, |count| count - printed);
        if remaining == 0 {
            break;
        }
        let max_events = (args.max_events as u64).min(remaining) as u32;
        let wait_ms = membership.heartbeat_interval_ms.min(5_000);
        let pulled = tokio::select! {
            _ = &mut stop => break,
            pulled = client.pull(topic, group, &membership.member_id, max_events, wait_ms) => pulled,
        };
        let pulled = match pulled {
            Ok(pulled) => pulled,
            Err(error) if problem_type(&error) == Some("/problems/unknown-member") => {
                let member = Some(membership.member_id.as_str());
                let rejoining = join(&client, topic, group, member, &mut outage, &mut stop);
                let Some(rejoined) = rejoining.await? else {
                    return Ok(());
                };
                membership = rejoined;
                continue;
            }
            Err(error) => {
                let pause = pause_or_exit(&mut outage, error, "pulling events")?;
                if Outage::sleep_unless_stopped(&mut stop, pause).await {
                    break;
                }
                continue;
            }
        };
        end_outage(&mut outage);
        if pulled.events.is_empty() {
            continue;
        }
        {
            let mut out = stdout.lock();
            for delivered in &pulled.events {
                print_delivered(&mut out, delivered, args.client.output);
            }
            out.flush()
                .map_err(|e| format!("cannot write to stdout: {e}"))?;
        }
        printed += pulled.events.len() as u64;
        let positions: Vec<String> = pulled.events.iter().map(|d| d.position.clone()).collect();
        // Acks are idempotent: one whose answer was lost is sent again.
        let acked = loop {
            let acked = client
                .ack(
                    topic,
                    group,
                    &membership.member_id,
                    pulled.generation,
                    &positions,
                )
                .await;
            match acked {
                Err(error) if Outage::is_transient(&error) => {
                    let pause = pause_or_exit(&mut outage, error, "acking events")?;
                    if Outage::sleep_unless_stopped(&mut stop, pause).await {
                        // Printed, not acked: the group delivers them again.
                        return Ok(());
                    }
                }
                acked => break acked,
            }
        };
        end_outage(&mut outage);
        match acked {
            Ok(_) => {}
            // The partition moved to another member meanwhile: it will deliver them again.
            Err(error)
                if matches!(
                    problem_type(&error),
                    Some(
                        "/problems/stale-generation"
                            | "/problems/not-owner"
                            | "/problems/unknown-member"
                    )
                ) =>
            {
                eprintln!("warning: {error}");
            }
            Err(error) => return Err(say(error)),
        }
    }
    let _ = client
        .leave_group(topic, group, &membership.member_id)
        .await;
    Ok(())
}

/// Joins `group` (as `member` when given), asking again through an outage; `None` when Ctrl-C
/// came first.
async fn join(
    client: &proteus_client::Client,
    topic: &str,
    group: &str,
    member: Option<&str>,
    outage: &mut Outage,
    stop: &mut std::pin::Pin<&mut impl std::future::Future>,
) -> Result<Option<proteus_client::Membership>, String> {
    loop {
        match client.join_group(topic, group, member).await {
            Ok(membership) => {
                end_outage(outage);
                return Ok(Some(membership));
            }
            Err(error) => {
                let pause = pause_or_exit(outage, error, "joining the group")?;
                if Outage::sleep_unless_stopped(stop, pause).await {
                    return Ok(None);
                }
            }
        }
    }
}

/// The pause before asking again after `error` while `doing`, or the error to exit with: it
/// is not transient, or the server has been unavailable longer than allowed. Says once per
/// outage that it waits.
fn pause_or_exit(
    outage: &mut Outage,
    error: proteus_client::ClientError,
    doing: &str,
) -> Result<std::time::Duration, String> {
    let ongoing = outage.is_ongoing();
    match outage.pause_for(&error) {
        Some(pause) => {
            if !ongoing {
                eprintln!(
                    "warning: {doing}: {error}; retrying for up to {} ms (--unavailable-wait-max-ms)",
                    outage.wait_max_ms()
                );
            }
            Ok(pause)
        }
        None if Outage::is_transient(&error) => Err(format!(
            "{doing}: {}; still unavailable after {} ms (raise --unavailable-wait-max-ms to wait \
             longer)",
            say(error),
            outage.wait_max_ms()
        )),
        None => Err(say(error)),
    }
}

/// A call succeeded: says how long the outage it ends lasted, if there was one.
fn end_outage(outage: &mut Outage) {
    if let Some(lasted) = outage.end() {
        eprintln!("served again after {} ms", lasted.as_millis());
    }
}

fn problem_type(error: &proteus_client::ClientError) -> Option<&str> {
    match error {
        proteus_client::ClientError::Problem { body, .. } => {
            body.get("type").and_then(Value::as_str)
        }
        _ => None,
    }
}

fn print_delivered(out: &mut impl Write, delivered: &proteus_client::Delivered, output: Output) {
    let _ = match output {
        Output::Json => writeln!(
            out,
            r#"{{"position":"{}","delivery_count":{},"replay":{},"append_time_ms":{},"event":{}}}"#,
            delivered.position,
            delivered.delivery_count,
            delivered.replay,
            delivered.append_time_ms,
            delivered.event.get()
        ),
        Output::Table => {
            let event: Value = serde_json::from_str(delivered.event.get()).unwrap_or_default();
            let text = |name: &str| {
                event
                    .get(name)
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_owned()
            };
            let data = event.get("data").map(|d| d.to_string()).unwrap_or_default();
            writeln!(
                out,
                "{}  #{}  {}  {}  {}  {}",
                delivered.position,
                delivered.delivery_count,
                rfc3339_ms(delivered.append_time_ms),
                text("type"),
                text("id"),
                truncate(&data, 120)
            )
        }
    };
}

pub async fn dlq(command: DlqCommand) -> Result<(), String> {
    match command {
        DlqCommand::List {
            topic,
            group,
            from,
            limit,
            client: args,
        } => {
            let (letters, next) = client(&args)?
                .dead_letters(&topic, &group, from, limit)
                .await
                .map_err(say)?;
            if args.output == Output::Json {
                for letter in &letters {
                    print_json(letter);
                }
                return Ok(());
            }
            if letters.is_empty() {
                println!("no dead letters at or after DLQ offset {from}");
                return Ok(());
            }
            let rows = letters
                .iter()
                .map(|l| {
                    vec![
                        l["dead_letter_offset"].to_string(),
                        format!("{}:{}", l["partition"], l["offset"]),
                        l["deliveries"].to_string(),
                        rfc3339_ms(l["dead_lettered_time_ms"].as_i64().unwrap_or(0)),
                        l["event"]["type"].as_str().unwrap_or("-").to_owned(),
                        l["event"]["id"].as_str().unwrap_or("-").to_owned(),
                        truncate(l["error"].as_str().unwrap_or("-"), 80),
                    ]
                })
                .collect();
            print_table(
                &[
                    "DLQ OFFSET",
                    "POSITION",
                    "DELIVERIES",
                    "DEAD LETTERED",
                    "TYPE",
                    "ID",
                    "LAST ERROR",
                ],
                rows,
            );
            println!("next page: --from {next}");
        }
        DlqCommand::Replay {
            topic,
            group,
            all,
            offsets,
            client: args,
        } => {
            let selection = (!all).then_some(offsets.as_slice());
            let replayed = client(&args)?
                .replay_dead_letters(&topic, &group, selection)
                .await
                .map_err(say)?;
            match args.output {
                Output::Json => print_json(&json!({ "replayed": replayed })),
                Output::Table => {
                    println!("{replayed} dead letters queued for redelivery to group {group}")
                }
            }
        }
    }
    Ok(())
}

//! `proteus migrate-topics`: copies the topics of an embedded log (the data directory of a
//! stopped server) to the log on NATS JetStream, each event in the partition and at the offset
//! it had, then verifies every partition: the same first and next offsets, and an xxh3 checksum
//! of every event's offset and JSON on both sides. A second run continues where one stopped.
//!
//! Consumer groups keep reading at the offsets they committed, since offsets are kept; with
//! `--groups-to` they are copied to a shared group store too (NATS or PostgreSQL). What
//! the copy cannot keep: append times (JetStream stamps each message when it stores it, so
//! reads by time and retention count from the copy) and the dedup window's memory (see
//! `NatsLog::import_partition`).

use std::path::Path;
use std::sync::Arc;

use proteus_groups_embedded::EmbeddedGroupStore;
use proteus_groups_nats::{NatsGroupStore, NatsGroupStoreConfig};
use proteus_groups_postgres::{PostgresGroupStore, PostgresGroupStoreConfig};
use proteus_groups_service::proteus_groups::GroupStore;
use proteus_log::port::{EventReader, PartitionDescription, READ_BYTES_MAX, TopicAdmin};
use proteus_log::{LogError, Offset, PartitionId, ReadFrom, ReadLimits, StoredEvent, TopicName};
use proteus_log_embedded::{EmbeddedConfig, EmbeddedLog};
use proteus_log_nats::{IMPORT_EVENTS_MAX, NatsLog, NatsLogConfig};
use xxhash_rust::xxh3::Xxh3;

#[derive(clap::Args, Debug)]
pub struct MigrateTopicsArgs {
    /// The topics to copy: `embedded:DIR`, the data directory of a stopped server.
    #[arg(long, value_name = "SOURCE")]
    pub from: String,
    /// Where to copy them: a NATS URL (`nats://HOST:PORT`), the log on JetStream.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// The JetStream stream prefix of the copy, as `serve --storage-log-prefix`.
    #[arg(long, default_value = "PROTEUS", value_name = "PREFIX")]
    pub to_prefix: String,
    /// Only this topic (repeatable); every topic when absent, the server's own included
    /// (flag-set audit, schemas, dead letters).
    #[arg(long = "topic", value_name = "TOPIC")]
    pub topics: Vec<String>,
    /// Events copied per request.
    #[arg(long, default_value_t = 1_000)]
    pub batch_events: usize,
    /// Also copy the consumer groups of the copied topics (settings and committed offsets)
    /// from the data directory to a shared group store, as `serve --groups` names it:
    /// `nats://HOST:PORT` (JetStream key-value buckets) or `postgres://USER@HOST:PORT/DB`.
    #[arg(long, value_name = "URL")]
    pub groups_to: Option<String>,
    /// The bucket prefix of groups in NATS, as `serve --groups-prefix`.
    #[arg(long, default_value = "PROTEUS", value_name = "PREFIX")]
    pub groups_prefix: String,
    /// The PostgreSQL schema of groups in PostgreSQL, as `serve --groups-schema`.
    #[arg(long, default_value = "proteus_groups", value_name = "SCHEMA")]
    pub groups_schema: String,
    #[command(flatten)]
    pub nats_security: crate::settings::NatsSecurityArgs,
}

/// What was copied and checked of one partition.
struct PartitionCopy {
    copied: u64,
    first_offset: Offset,
    next_offset: Offset,
    checksum: u64,
}

fn say(what: &str) -> impl FnOnce(LogError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The events of a partition from offset `at` up to (not including) `next`, at most `batch`:
/// never empty, and starting exactly at `at` (a read starting later means retention removed
/// `at` meanwhile).
async fn read_exactly(
    log: &dyn EventReader,
    topic: &TopicName,
    partition: PartitionId,
    (at, next): (Offset, Offset),
    batch: u32,
    what: &str,
) -> Result<Vec<StoredEvent>, String> {
    let limits = ReadLimits {
        events_max: batch,
        bytes_max: READ_BYTES_MAX,
    };
    let read = log
        .read(topic, partition, ReadFrom::Offset(at), limits)
        .await
        .map_err(say(what))?;
    match read.events.first() {
        Some(first) if first.offset == at => Ok(read
            .events
            .into_iter()
            .take_while(|e| e.offset < next)
            .collect()),
        Some(first) => Err(format!(
            "{what}: offset {at} is gone (the partition now starts at {}, retention); run the migration again",
            first.offset
        )),
        None => Err(format!(
            "{what}: no event at offset {at}, before its end {next}"
        )),
    }
}

/// Every event of a partition from `first` to `next`, hashed with its offset, read `batch` at
/// a time.
async fn checksum(
    log: &dyn EventReader,
    topic: &TopicName,
    partition: PartitionId,
    (first, next): (Offset, Offset),
    batch: u32,
    side: &str,
) -> Result<u64, String> {
    let what = format!("reading partition {partition} of topic '{topic}' in the {side}");
    let mut hash = Xxh3::new();
    let mut at = first;
    while at < next {
        let events = read_exactly(log, topic, partition, (at, next), batch, &what).await?;
        for event in &events {
            hash.update(&event.offset.to_le_bytes());
            hash.update(&(event.json.len() as u64).to_le_bytes());
            hash.update(&event.json);
        }
        at += events.len() as u64;
    }
    Ok(hash.digest())
}

/// Copies what the target's partition lacks of the source's (`bounds`), then compares both
/// sides.
async fn copy_partition(
    source: &EmbeddedLog,
    target: &NatsLog,
    topic: &TopicName,
    bounds: &PartitionDescription,
    batch: u32,
) -> Result<PartitionCopy, String> {
    let partition = bounds.partition;
    let what = format!("partition {partition} of topic '{topic}'");
    let (first, next) = (bounds.first_offset, bounds.next_offset);
    let (target_first, target_next) = target
        .partition_offsets(topic, partition)
        .await
        .map_err(say(&format!("reading {what} in the target")))?;
    let empty = target_first == target_next;
    let mut at = if empty && target_next <= first {
        first
    } else if (first..=next).contains(&target_next) {
        target_next
    } else {
        return Err(format!(
            "{what}: the target holds offsets {target_first} to {target_next}, which do not continue the source's {first} to {next}; delete the topic in the target (or use another --to-prefix) and migrate again"
        ));
    };
    let mut copied = 0;
    let reading = format!("reading {what} in the source");
    while at < next {
        let events: Vec<_> = read_exactly(source, topic, partition, (at, next), batch, &reading)
            .await?
            .into_iter()
            .map(|e| e.json)
            .collect();
        target
            .import_partition(topic, partition, at, &events)
            .await
            .map_err(say(&format!("copying {what}")))?;
        copied += events.len() as u64;
        at += events.len() as u64;
    }
    let (target_first, target_next) = target
        .partition_offsets(topic, partition)
        .await
        .map_err(say(&format!("reading {what} in the target")))?;
    if (target_first, target_next) != (first, next) {
        return Err(format!(
            "verification failed for {what}: the source holds offsets {first} to {next}, the copy {target_first} to {target_next}"
        ));
    }
    let expected = checksum(source, topic, partition, (first, next), batch, "source").await?;
    let actual = checksum(target, topic, partition, (first, next), batch, "copy").await?;
    if expected != actual {
        return Err(format!(
            "verification failed for {what}: checksum {expected:016x} in the source, {actual:016x} in the copy; delete the topic in the target and migrate again"
        ));
    }
    Ok(PartitionCopy {
        copied,
        first_offset: first,
        next_offset: next,
        checksum: expected,
    })
}

/// The directory of `--from embedded:DIR`.
fn source_dir(from: &str) -> Result<&str, String> {
    from.strip_prefix("embedded:").ok_or_else(|| {
        format!(
            "--from must be embedded:DIR (the data directory of a stopped server), got {from:?}"
        )
    })
}

async fn open_group_target(
    args: &MigrateTopicsArgs,
    url: &str,
) -> Result<Arc<dyn GroupStore>, String> {
    if crate::settings::is_nats_url(url) {
        let store = NatsGroupStore::open(NatsGroupStoreConfig {
            security: args.nats_security.files(),
            bucket_prefix: args.groups_prefix.clone(),
            ..NatsGroupStoreConfig::new(url)
        })
        .await
        .map_err(|e| {
            format!(
                "cannot open the NATS consumer groups (prefix {}): {e}",
                args.groups_prefix
            )
        })?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store =
            PostgresGroupStore::open(PostgresGroupStoreConfig::new(url, &args.groups_schema))
                .await
                .map_err(|e| {
                    format!(
                        "cannot open the PostgreSQL consumer groups (schema {}): {e}",
                        args.groups_schema
                    )
                })?;
        return Ok(Arc::new(store));
    }
    Err(format!(
        "--groups-to must be a NATS URL (nats://HOST:PORT) or a PostgreSQL URL (postgres://USER@HOST:PORT/DB), got {:?}",
        proteus_nats::redact(url)
    ))
}

/// Copies the groups of `topics` from the data directory's group store to `url`: a group
/// already there as it is here is left alone, one there with other settings or progress is
/// refused (it has moved on since, or is another group of the same name).
async fn copy_groups(
    args: &MigrateTopicsArgs,
    url: &str,
    dir: &str,
    topics: &[TopicName],
) -> Result<(), String> {
    let source = EmbeddedGroupStore::open(Path::new(dir))
        .map_err(|e| format!("cannot open the consumer groups in {dir}: {e}"))?;
    let target = open_group_target(args, url).await?;
    let groups = source
        .list_groups()
        .await
        .map_err(|e| format!("listing the consumer groups in {dir}: {e}"))?;
    let (mut copied, mut present) = (0, 0);
    for record in groups.iter().filter(|g| topics.contains(&g.topic)) {
        let name = format!("group '{}' of topic '{}'", record.group, record.topic);
        match target.load_group(&record.topic, &record.group).await {
            Ok(None) => {
                target
                    .create_group(record)
                    .await
                    .map_err(|e| format!("copying {name}: {e}"))?;
                copied += 1;
            }
            Ok(Some(held))
                if held.config == record.config && held.partitions == record.partitions =>
            {
                present += 1;
            }
            Ok(Some(_)) => {
                return Err(format!(
                    "{name} is already in the target with other settings or progress; delete it there (proteus group delete) or leave out --groups-to"
                ));
            }
            Err(e) => return Err(format!("reading {name} in the target: {e}")),
        }
    }
    println!(
        "consumer groups: copied {copied}, {present} already there; serve with --groups {}",
        proteus_nats::redact(url)
    );
    Ok(())
}

async fn open_source(from: &str) -> Result<EmbeddedLog, String> {
    let dir = source_dir(from)?;
    // Opening creates a log where there is none: a mistyped directory would then copy nothing.
    if !Path::new(dir).join("log").join("topics").is_dir() {
        return Err(format!(
            "--from {from}: there is no embedded log in {dir} (no log/topics); give the data directory of the server that holds it (its --data-dir, ./proteus-data by default)"
        ));
    }
    EmbeddedLog::open(EmbeddedConfig {
        // Nothing may be removed while it is copied (opening recovers the log as a server
        // start would; nothing else is written to it).
        retention_check_interval_ms: 86_400_000,
        ..EmbeddedConfig::new(dir)
    })
    .await
    .map_err(|e| match e {
        LogError::Unavailable { .. } => format!(
            "cannot open the embedded log in {dir}: a server is using it; stop it first (its events are copied while nothing writes to them)"
        ),
        e => format!("cannot open the embedded log in {dir}: {e}"),
    })
}

pub async fn run(args: MigrateTopicsArgs) -> Result<(), String> {
    if !(1..=IMPORT_EVENTS_MAX).contains(&args.batch_events) {
        return Err(format!(
            "--batch-events must be 1 to {IMPORT_EVENTS_MAX}, got {}",
            args.batch_events
        ));
    }
    let batch = args.batch_events as u32;
    if !crate::settings::is_nats_url(&args.to) {
        return Err(format!(
            "--to must be a NATS URL (nats://HOST:PORT), got {:?}",
            proteus_nats::redact(&args.to)
        ));
    }
    let wanted: Vec<TopicName> = args
        .topics
        .iter()
        .map(|name| TopicName::parse(name).map_err(|e| format!("--topic {name:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let source = open_source(&args.from).await?;
    let target = NatsLog::connect(NatsLogConfig {
        url: args.to.clone(),
        security: args.nats_security.files(),
        stream_prefix: args.to_prefix.clone(),
        subject_prefix: args.to_prefix.to_lowercase(),
        ..NatsLogConfig::default()
    })
    .await
    .map_err(|e| {
        format!(
            "cannot open the NATS JetStream log (prefix {}): {e}",
            args.to_prefix
        )
    })?;
    let topics = source
        .list_topics()
        .await
        .map_err(say("listing the source's topics"))?;
    for name in &wanted {
        if !topics.iter().any(|t| &t.name == name) {
            return Err(format!("--topic {name}: the source has no such topic"));
        }
    }
    let started = std::time::Instant::now();
    let (mut total_copied, mut total_events) = (0u64, 0u64);
    let copying: Vec<_> = topics
        .iter()
        .filter(|t| wanted.is_empty() || wanted.contains(&t.name))
        .collect();
    for topic in &copying {
        target
            .put_topic(&topic.name, topic.config.clone())
            .await
            .map_err(say(&format!(
                "creating topic '{}' in the target",
                topic.name
            )))?;
        let mut hash = Xxh3::new();
        let (mut copied, mut events) = (0u64, 0u64);
        for bounds in &topic.partitions {
            let done = copy_partition(&source, &target, &topic.name, bounds, batch).await?;
            copied += done.copied;
            events += done.next_offset - done.first_offset;
            hash.update(&done.checksum.to_le_bytes());
        }
        println!(
            "{}: {} partitions, copied {copied} events; verified: {events} events with the same offsets, checksum {:016x} on both sides",
            topic.name,
            topic.config.partitions,
            hash.digest()
        );
        total_copied += copied;
        total_events += events;
    }
    println!(
        "copied {total_copied} events in {:.1} s; {total_events} events verified; serve with --storage-log {} --storage-log-prefix {}",
        started.elapsed().as_secs_f64(),
        proteus_nats::redact(&args.to),
        args.to_prefix
    );
    if let Some(url) = &args.groups_to {
        // After the log: the groups' offsets point into the topics just copied.
        let names: Vec<TopicName> = copying.iter().map(|t| t.name.clone()).collect();
        copy_groups(&args, url, source_dir(&args.from)?, &names).await?;
    }
    Ok(())
}

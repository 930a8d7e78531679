//! `proteus migrate-topics`: copies the topics of one log to another, each event in the
//! partition and at the offset it had, then verifies every partition: the same first and next
//! offsets, and an xxh3 checksum of every event's offset and JSON (and append time, when the
//! target keeps times) on both sides. A second run continues where one stopped. Either side
//! is an embedded log (the data directory of a stopped server) or the log on NATS JetStream (a
//! stream prefix), so topics move up to NATS and back down; the source may also be a running
//! server, read through its HTTP API (`Source::Server`). `--follow` then keeps copying what
//! the source appends until Ctrl-C, when a last pass copies the rest and verifies everything.
//!
//! Consumer groups keep reading at the offsets they committed, since offsets are kept;
//! `--groups-to` / `--groups-from` copy them between group stores too. What a copy to NATS
//! cannot keep: append times (JetStream stamps each message when it stores it, so reads by
//! time and retention count from the copy) and the dedup window's memory (see the
//! `PartitionImport` of `proteus-log-nats`). A copy into an embedded log keeps both.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt, stream};
use proteus_client::Client;
use proteus_groups_embedded::EmbeddedGroupStore;
use proteus_groups_nats::{NatsGroupStore, NatsGroupStoreConfig};
use proteus_groups_postgres::{PostgresGroupStore, PostgresGroupStoreConfig};
use proteus_groups_service::proteus_groups::GroupStore;
use proteus_log::import::{IMPORT_EVENTS_MAX, PartitionImport};
use proteus_log::port::{Log, PartitionDescription, READ_BYTES_MAX, TopicDescription};
use proteus_log::{LogError, Offset, PartitionId, ReadFrom, ReadLimits, StoredEvent, TopicName};
use proteus_log_embedded::{EmbeddedConfig, EmbeddedLog};
use proteus_log_nats::{NatsLog, NatsLogConfig};
use xxhash_rust::xxh3::Xxh3;

use crate::migrate_cli::{
    PROGRESS_INTERVAL, StopSignals, again_after_a_failed_last_pass, embedded_dir, is_postgres_url,
    source_error,
};

mod follow;

#[derive(clap::Args, Debug)]
pub struct MigrateTopicsArgs {
    /// The topics to copy: `embedded:DIR` (the data directory of a stopped server), a NATS URL
    /// (`nats://HOST:PORT`, the log on JetStream under `--from-prefix`), or a running server
    /// (`http://HOST:PORT`, read through its API while it serves; run again from its data
    /// directory once it is stopped to copy the rest).
    #[arg(long, value_name = "SOURCE")]
    pub from: String,
    /// The JetStream stream prefix of a NATS source, as `serve --storage-log-prefix`.
    #[arg(long, default_value = "PROTEUS", value_name = "PREFIX")]
    pub from_prefix: String,
    /// Where to copy them: a NATS URL (`nats://HOST:PORT`, the log on JetStream under
    /// `--to-prefix`) or `embedded:DIR` (a data directory no server is using).
    #[arg(long, value_name = "TARGET")]
    pub to: String,
    /// The JetStream stream prefix of a NATS target, as `serve --storage-log-prefix`.
    #[arg(long, default_value = "PROTEUS", value_name = "PREFIX")]
    pub to_prefix: String,
    /// Only this topic (repeatable); every topic when absent, the server's own included
    /// (flag-set audit, schemas, dead letters).
    #[arg(long = "topic", value_name = "TOPIC")]
    pub topics: Vec<String>,
    /// Events copied per request.
    #[arg(long, default_value_t = 1_000)]
    pub batch_events: usize,
    /// Partitions of a topic copied and verified at the same time.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub partitions_in_flight: usize,
    /// How much each run reads back to verify: `all` (every event of every partition, on both
    /// sides) or `copied` (the events this run copied, and every partition's first and next
    /// offsets): for the last run of a cut-over, after a run that verified all before it.
    #[arg(long, value_enum, default_value_t = Verify::All)]
    pub verify: Verify,
    /// After the copy, keep copying what is appended to the source (new topics of the copy
    /// included) until Ctrl-C or SIGTERM, then copy what is left and verify every partition:
    /// a cut-over without a long stop. Needs a source something appends to meanwhile: a
    /// running server (`http://…`) or NATS.
    #[arg(long)]
    pub follow: bool,
    /// Also copy the consumer groups of the copied topics (settings and committed offsets) to
    /// a shared group store, as `serve --groups` names it: `nats://HOST:PORT` (JetStream
    /// key-value buckets) or `postgres://USER@HOST:PORT/DB`. Without it, groups copied from
    /// `--groups-from` go to the target's data directory (`--to embedded:DIR`).
    #[arg(long, value_name = "URL")]
    pub groups_to: Option<String>,
    /// Copy the consumer groups from this shared group store (`nats://…` or `postgres://…`,
    /// as `serve --groups`) rather than from the source's data directory (`--from
    /// embedded:DIR`).
    #[arg(long, value_name = "URL")]
    pub groups_from: Option<String>,
    /// The bucket prefix of groups in NATS, as `serve --groups-prefix`.
    #[arg(long, default_value = "PROTEUS", value_name = "PREFIX")]
    pub groups_prefix: String,
    /// The PostgreSQL schema of groups in PostgreSQL, as `serve --groups-schema`.
    #[arg(long, default_value = "proteus_groups", value_name = "SCHEMA")]
    pub groups_schema: String,
    #[command(flatten)]
    pub nats_security: crate::settings::NatsSecurityArgs,
    // Replicas of the streams and buckets created on a NATS target.
    #[command(flatten)]
    pub nats_replicas: crate::settings::NatsReplicasArg,
}

/// How much of each partition a run reads back from both sides and compares.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Every event.
    All,
    /// The events this run copied (first and next offsets are compared either way). Sound
    /// after a run that verified the rest: a log's events never change at their offsets, and
    /// an import refuses a partition anything else wrote to.
    Copied,
}

/// Most partitions copied at once (`--partitions-in-flight`): each holds a batch of events in
/// memory, read and being written.
const PARTITIONS_IN_FLIGHT_MAX: usize = 64;

/// How a run copies and verifies each partition.
#[derive(Clone, Copy)]
struct CopySettings {
    batch_events: u32,
    verify: Verify,
    partitions_in_flight: usize,
}

/// A log a copy writes to.
trait ImportTarget: Log + PartitionImport {}
impl<T: Log + PartitionImport> ImportTarget for T {}

/// Which end of a copy a store is: a source must already exist (a mistyped directory,
/// prefix or schema is refused, never created), a target may be made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Source,
    Target,
}

impl End {
    /// The option naming this end's log.
    fn flag(self) -> &'static str {
        match self {
            End::Source => "--from",
            End::Target => "--to",
        }
    }

    /// The option naming this end's shared group store.
    fn groups_flag(self) -> &'static str {
        match self {
            End::Source => "--groups-from",
            End::Target => "--groups-to",
        }
    }
}

/// One side of a copy, as `--from` / `--to` name it.
enum Side<'a> {
    Embedded(&'a str),
    Nats(&'a str),
    /// A running server (`http://HOST:PORT`), read through its HTTP API: a source only.
    Server(&'a str),
}

impl<'a> Side<'a> {
    fn parse(end: End, value: &'a str) -> Result<Side<'a>, String> {
        let flag = end.flag();
        if let Some(dir) = embedded_dir(flag, value)? {
            return Ok(Side::Embedded(dir));
        }
        if crate::settings::is_nats_url(value) {
            return Ok(Side::Nats(value));
        }
        let server = value.starts_with("http://") || value.starts_with("https://");
        if server && end == End::Source {
            return Ok(Side::Server(value));
        }
        let and_server = if end == End::Source {
            ", or a running server (http://HOST:PORT)"
        } else {
            ""
        };
        Err(format!(
            "{flag} must be embedded:DIR (a data directory no server is using) or a NATS URL (nats://HOST:PORT){and_server}, got {:?}",
            proteus_nats::redact(value)
        ))
    }
}

/// What was copied and checked of one partition.
struct PartitionCopy {
    copied: u64,
    /// Events read back from both sides and compared.
    verified: u64,
    first_offset: Offset,
    next_offset: Offset,
    checksum: u64,
}

fn say(what: &str) -> impl FnOnce(LogError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The log a copy reads: one opened here, or a running server's topics through its HTTP API
/// (so the bulk of a copy runs while the server serves; a second run from its data directory,
/// once it is stopped, adds what came meanwhile).
enum Source {
    Log(Arc<dyn ImportTarget>),
    Server(Client),
}

impl Source {
    async fn list_topics(&self) -> Result<Vec<TopicDescription>, String> {
        let listed = match self {
            Source::Log(log) => log.list_topics().await.map_err(|e| e.to_string()),
            Source::Server(client) => client.list_topics().await.map_err(source_error),
        };
        listed.map_err(|e| format!("listing the source's topics: {e}"))
    }

    /// Up to `batch` events of a partition from offset `at` (or the first kept after it).
    async fn read(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        at: Offset,
        batch: u32,
    ) -> Result<Vec<StoredEvent>, String> {
        match self {
            Source::Log(log) => {
                let limits = ReadLimits {
                    events_max: batch,
                    bytes_max: READ_BYTES_MAX,
                };
                let read = log
                    .read(topic, partition, ReadFrom::Offset(at), limits)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(read.events)
            }
            Source::Server(client) => {
                let read = client
                    .read(topic.as_str(), partition, &at.to_string(), batch, 0)
                    .await
                    .map_err(source_error)?;
                // The server writes each event's stored JSON as it is: the bytes are the log's.
                Ok(read
                    .events
                    .into_iter()
                    .map(|record| StoredEvent {
                        partition: record.partition,
                        offset: record.offset,
                        append_time_ms: record.append_time_ms,
                        json: record.event.get().as_bytes().to_vec().into(),
                    })
                    .collect())
            }
        }
    }
}

/// The events of a partition from offset `at` up to (not including) `next`, at most `batch`:
/// never empty, and starting exactly at `at` (a read starting later means retention removed
/// `at` meanwhile).
async fn read_exactly(
    log: &Source,
    topic: &TopicName,
    partition: PartitionId,
    (at, next): (Offset, Offset),
    batch: u32,
    what: &str,
) -> Result<Vec<StoredEvent>, String> {
    let events = log
        .read(topic, partition, at, batch)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    match events.first() {
        Some(first) if first.offset == at => {
            Ok(events.into_iter().take_while(|e| e.offset < next).collect())
        }
        Some(first) => Err(format!(
            "{what}: offset {at} is gone (the partition now starts at {}, retention); run the migration again",
            first.offset
        )),
        None => Err(format!(
            "{what}: no event at offset {at}, before its end {next}"
        )),
    }
}

/// Every event of a partition from `first` to `next`, hashed with its offset (and its append
/// time when `with_times`), read `batch` at a time.
async fn checksum(
    log: &Source,
    topic: &TopicName,
    partition: PartitionId,
    (first, next): (Offset, Offset),
    batch: u32,
    (side, with_times): (&str, bool),
) -> Result<u64, String> {
    let what = format!("reading partition {partition} of topic '{topic}' in the {side}");
    let mut hash = Xxh3::new();
    let mut at = first;
    while at < next {
        let events = read_exactly(log, topic, partition, (at, next), batch, &what).await?;
        for event in &events {
            hash.update(&event.offset.to_le_bytes());
            if with_times {
                hash.update(&event.append_time_ms.to_le_bytes());
            }
            hash.update(&(event.json.len() as u64).to_le_bytes());
            hash.update(&event.json);
        }
        at += events.len() as u64;
    }
    Ok(hash.digest())
}

/// Copies what the target's partition lacks of the source's (`bounds`); returns the offset
/// the copy started at (`bounds.next_offset` when there was nothing to copy).
async fn copy_missing(
    source: &Source,
    target: &Arc<dyn ImportTarget>,
    topic: &TopicName,
    bounds: &PartitionDescription,
    batch: u32,
) -> Result<Offset, String> {
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
            "{what}: the target holds offsets {target_first} to {target_next}, which do not continue the source's {first} to {next}; delete the topic in the target (or copy to another --to-prefix or directory) and migrate again"
        ));
    };
    let copied_from = at;
    let mut copied = 0;
    let reading = format!("reading {what} in the source");
    let started = Instant::now();
    let mut reported = started;
    while at < next {
        let events: Vec<StoredEvent> =
            read_exactly(source, topic, partition, (at, next), batch, &reading).await?;
        target
            .import_partition(topic, partition, &events)
            .await
            .map_err(say(&format!("copying {what}")))?;
        copied += events.len() as u64;
        // A partition of millions of events takes minutes: say how far it is.
        if reported.elapsed() >= PROGRESS_INTERVAL {
            reported = Instant::now();
            println!(
                "copying {what}: {copied} events so far, at offset {} of {next} ({:.0} events/s)",
                at + events.len() as u64,
                copied as f64 / started.elapsed().as_secs_f64()
            );
        }
        at += events.len() as u64;
    }
    Ok(copied_from)
}

/// Copies what the target's partition lacks of the source's (`bounds`), then compares both
/// sides.
async fn copy_partition(
    source: &Source,
    target: &Arc<dyn ImportTarget>,
    topic: &TopicName,
    bounds: &PartitionDescription,
    settings: CopySettings,
) -> Result<PartitionCopy, String> {
    let (batch, verify) = (settings.batch_events, settings.verify);
    let copied_from = copy_missing(source, target, topic, bounds, batch).await?;
    let partition = bounds.partition;
    let what = format!("partition {partition} of topic '{topic}'");
    let (first, next) = (bounds.first_offset, bounds.next_offset);
    let checked_from = match verify {
        Verify::All => first,
        Verify::Copied => copied_from,
    };
    let (target_first, target_next) = target
        .partition_offsets(topic, partition)
        .await
        .map_err(say(&format!("reading {what} in the target")))?;
    if (target_first, target_next) != (first, next) {
        return Err(format!(
            "verification failed for {what}: the source holds offsets {first} to {next}, the copy {target_first} to {target_next}"
        ));
    }
    // Times are compared where the target keeps them (a NATS target stamps its own).
    let with_times = target.keeps_append_times();
    let expected = checksum(
        source,
        topic,
        partition,
        (checked_from, next),
        batch,
        ("source", with_times),
    )
    .await?;
    let actual = checksum(
        &Source::Log(target.clone()),
        topic,
        partition,
        (checked_from, next),
        batch,
        ("copy", with_times),
    )
    .await?;
    if expected != actual {
        return Err(format!(
            "verification failed for {what}: checksum {expected:016x} in the source, {actual:016x} in the copy; delete the topic in the target and migrate again"
        ));
    }
    Ok(PartitionCopy {
        copied: next - copied_from,
        verified: next - checked_from,
        first_offset: first,
        next_offset: next,
        checksum: expected,
    })
}

/// The shared group store at `url`, as `serve --groups` opens it. A source (`--groups-from`)
/// must exist: a mistyped prefix or schema is refused, not created.
async fn open_group_store(
    args: &MigrateTopicsArgs,
    end: End,
    url: &str,
) -> Result<Arc<dyn GroupStore>, String> {
    let create = end == End::Target;
    if crate::settings::is_nats_url(url) {
        let store = NatsGroupStore::open(NatsGroupStoreConfig {
            security: args.nats_security.files(),
            replicas: if create {
                args.nats_replicas.replicas()
            } else {
                crate::settings::NATS_REPLICAS_DEFAULT
            },
            bucket_prefix: args.groups_prefix.clone(),
            create_buckets: create,
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
    if is_postgres_url(url) {
        let store = PostgresGroupStore::open(PostgresGroupStoreConfig {
            create_schema: create,
            ..PostgresGroupStoreConfig::new(url, &args.groups_schema)
        })
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
        "{} must be a NATS URL (nats://HOST:PORT) or a PostgreSQL URL (postgres://USER@HOST:PORT/DB), got {:?}",
        end.groups_flag(),
        proteus_nats::redact(url)
    ))
}

/// One end of a copy of groups: a shared store (`--groups-to` / `--groups-from`) or the group
/// store of an embedded side's data directory.
async fn group_store(
    args: &MigrateTopicsArgs,
    (end, url): (End, Option<&str>),
    side: &Side<'_>,
) -> Result<(Arc<dyn GroupStore>, String), String> {
    match (url, side) {
        (Some(url), _) => Ok((
            open_group_store(args, end, url).await?,
            proteus_nats::redact(url),
        )),
        (None, Side::Embedded(dir)) => {
            let store = EmbeddedGroupStore::open(Path::new(dir))
                .map_err(|e| format!("cannot open the consumer groups in {dir}: {e}"))?;
            Ok((Arc::new(store), format!("the data directory {dir}")))
        }
        (None, Side::Nats(_)) => Err(format!(
            "{} is needed to copy consumer groups when that side of the copy is NATS: give the group store its servers use (serve --groups), nats://HOST:PORT or postgres://USER@HOST:PORT/DB",
            end.groups_flag()
        )),
        (None, Side::Server(_)) => Err(
            "consumer groups cannot be copied from a running server (their progress keeps moving): copy the topics now, then stop the server and run again with --from embedded:DIR (its data directory) and the groups options; that run also copies what was appended meanwhile".to_owned(),
        ),
    }
}

/// Copies the groups of `topics` from `source` to `target`: a group already there as it is
/// here is left alone, one there with other settings or progress is refused (it has moved on
/// since, or is another group of the same name).
async fn copy_groups(
    (source, source_name): (Arc<dyn GroupStore>, String),
    (target, target_name): (Arc<dyn GroupStore>, String),
    topics: &[TopicName],
) -> Result<(), String> {
    let groups = source
        .list_groups()
        .await
        .map_err(|e| format!("listing the consumer groups in {source_name}: {e}"))?;
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
                    "{name} is already in {target_name} with other settings or progress; delete it there (proteus group delete) or leave out the groups"
                ));
            }
            Err(e) => return Err(format!("reading {name} in {target_name}: {e}")),
        }
    }
    println!(
        "consumer groups: copied {copied} from {source_name} to {target_name}, {present} already there"
    );
    Ok(())
}

/// An embedded log: a source must already hold one (opening creates a log where there is
/// none, and a mistyped directory would then copy nothing); a target may be new.
async fn open_embedded(flag: &str, dir: &str, must_exist: bool) -> Result<EmbeddedLog, String> {
    if must_exist && !Path::new(dir).join("log").join("topics").is_dir() {
        return Err(format!(
            "{flag} embedded:{dir}: there is no embedded log in {dir} (no log/topics); give the data directory of the server that holds it (its --data-dir, ./proteus-data by default)"
        ));
    }
    EmbeddedLog::open(EmbeddedConfig {
        // Nothing may be removed while it is copied (opening recovers the log as a server
        // start would).
        retention_check_interval_ms: 86_400_000,
        ..EmbeddedConfig::new(dir)
    })
    .await
    .map_err(|e| match e {
        LogError::Unavailable { .. } => format!(
            "cannot open the embedded log in {dir}: a server is using it; stop it first (a copy reads and writes logs nothing else writes to)"
        ),
        e => format!("cannot open the embedded log in {dir}: {e}"),
    })
}

/// The NATS log at `url`; `--nats-replicas` applies to the target's streams only (a source
/// creates none, and a source server too old for replicas must still be readable).
async fn open_nats(
    args: &MigrateTopicsArgs,
    (end, url, prefix): (End, &str, &str),
) -> Result<NatsLog, String> {
    let replicas = match end {
        End::Source => crate::settings::NATS_REPLICAS_DEFAULT,
        End::Target => args.nats_replicas.replicas(),
    };
    NatsLog::connect(NatsLogConfig {
        url: url.to_owned(),
        security: args.nats_security.files(),
        replicas,
        stream_prefix: prefix.to_owned(),
        subject_prefix: prefix.to_lowercase(),
        ..NatsLogConfig::default()
    })
    .await
    .map_err(|e| format!("cannot open the NATS JetStream log (prefix {prefix}): {e}"))
}

async fn open_side(
    args: &MigrateTopicsArgs,
    (end, side, prefix): (End, &Side<'_>, &str),
) -> Result<Source, String> {
    Ok(match side {
        Side::Embedded(dir) => Source::Log(Arc::new(
            open_embedded(end.flag(), dir, end == End::Source).await?,
        )),
        Side::Nats(url) => Source::Log(Arc::new(open_nats(args, (end, url, prefix)).await?)),
        Side::Server(url) => {
            Source::Server(Client::new(url).map_err(|e| format!("{} {url}: {e}", end.flag()))?)
        }
    })
}

/// How to serve the copy, for the last line.
fn serve_hint(args: &MigrateTopicsArgs, target: &Side<'_>) -> String {
    match target {
        Side::Embedded(dir) => format!("proteus serve --data-dir {dir}"),
        Side::Server(url) => proteus_nats::redact(url),
        Side::Nats(url) => format!(
            "--storage-log {} --storage-log-prefix {}",
            proteus_nats::redact(url),
            args.to_prefix
        ),
    }
}

/// Copies every partition of the `topics` chosen (`wanted`, or all when empty) and verifies
/// each, saying so topic by topic; returns the names of the topics copied.
async fn copy_and_verify(
    source: &Source,
    target: &Arc<dyn ImportTarget>,
    topics: &[TopicDescription],
    wanted: &[TopicName],
    settings: CopySettings,
) -> Result<Vec<TopicName>, String> {
    let kept = if target.keeps_append_times() {
        " and append times"
    } else {
        ""
    };
    let started = Instant::now();
    let (mut total_copied, mut total_verified, mut total_events) = (0u64, 0u64, 0u64);
    let copying: Vec<_> = chosen(topics, wanted).collect();
    for topic in &copying {
        put_topic(target, topic).await?;
        let mut hash = Xxh3::new();
        let (mut copied, mut verified, mut events) = (0u64, 0u64, 0u64);
        // In partition order (`buffered`), so the topic's checksum does not depend on timing.
        let partitions: Vec<PartitionCopy> = stream::iter(&topic.partitions)
            .map(|bounds| copy_partition(source, target, &topic.name, bounds, settings))
            .buffered(settings.partitions_in_flight)
            .try_collect()
            .await?;
        for done in partitions {
            copied += done.copied;
            verified += done.verified;
            events += done.next_offset - done.first_offset;
            hash.update(&done.checksum.to_le_bytes());
        }
        println!(
            "{}: {} partitions, copied {copied} events; verified: {} with the same offsets{kept}, checksum {:016x} on both sides",
            topic.name,
            topic.config.partitions,
            verified_count(verified, events),
            hash.digest()
        );
        total_copied += copied;
        total_verified += verified;
        total_events += events;
    }
    let times = if target.keeps_append_times() {
        "append times kept"
    } else {
        "append times are the target's own"
    };
    println!(
        "copied {total_copied} events in {:.1} s; verified: {} ({times})",
        started.elapsed().as_secs_f64(),
        verified_count(total_verified, total_events),
    );
    Ok(copying.iter().map(|t| t.name.clone()).collect())
}

/// The topics of `topics` a run copies: those `wanted`, or all when none is named.
fn chosen<'t>(
    topics: &'t [TopicDescription],
    wanted: &[TopicName],
) -> impl Iterator<Item = &'t TopicDescription> {
    topics
        .iter()
        .filter(move |t| wanted.is_empty() || wanted.contains(&t.name))
}

/// Creates `topic` in the target with the source's settings, or updates them.
async fn put_topic(target: &Arc<dyn ImportTarget>, topic: &TopicDescription) -> Result<(), String> {
    target
        .put_topic(&topic.name, topic.config.clone())
        .await
        .map_err(say(&format!(
            "creating topic '{}' in the target",
            topic.name
        )))?;
    Ok(())
}

/// "36 events", or "6 of 36 events" when `--verify copied` read back only some.
fn verified_count(verified: u64, events: u64) -> String {
    if verified == events {
        format!("{events} events")
    } else {
        format!("{verified} of {events} events (--verify copied)")
    }
}

pub async fn run(args: MigrateTopicsArgs) -> Result<(), String> {
    if !(1..=IMPORT_EVENTS_MAX).contains(&args.batch_events) {
        return Err(format!(
            "--batch-events must be 1 to {IMPORT_EVENTS_MAX}, got {}",
            args.batch_events
        ));
    }
    let nats_target = crate::settings::is_nats_url(&args.to)
        || args
            .groups_to
            .as_deref()
            .is_some_and(crate::settings::is_nats_url);
    if args.nats_replicas.replicas() != crate::settings::NATS_REPLICAS_DEFAULT && !nats_target {
        return Err(
            "--nats-replicas is for a NATS target (--to or --groups-to nats://…), and there is none: remove it"
                .into(),
        );
    }
    if !(1..=PARTITIONS_IN_FLIGHT_MAX).contains(&args.partitions_in_flight) {
        return Err(format!(
            "--partitions-in-flight must be 1 to {PARTITIONS_IN_FLIGHT_MAX}, got {}",
            args.partitions_in_flight
        ));
    }
    let batch = args.batch_events as u32;
    let from = Side::parse(End::Source, &args.from)?;
    let to = Side::parse(End::Target, &args.to)?;
    match (&from, &to) {
        (Side::Embedded(a), Side::Embedded(b)) if Path::new(a) == Path::new(b) => {
            return Err("--from and --to name the same directory; give another --to".into());
        }
        (Side::Nats(a), Side::Nats(b)) if a == b && args.from_prefix == args.to_prefix => {
            return Err(format!(
                "--from and --to name the same NATS log (prefix {}); give the copy another --to-prefix",
                args.to_prefix
            ));
        }
        _ => {}
    }
    if args.follow
        && let Side::Embedded(_) = from
    {
        return Err(
            "--follow copies what is appended during the copy, and nothing appends to --from embedded:DIR (its server is stopped): follow a running server (--from http://HOST:PORT) or the log on NATS (--from nats://…), or leave out --follow".into(),
        );
    }
    let wanted: Vec<TopicName> = args
        .topics
        .iter()
        .map(|name| TopicName::parse(name).map_err(|e| format!("--topic {name:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let source = open_side(&args, (End::Source, &from, &args.from_prefix)).await?;
    let topics = source.list_topics().await?;
    if topics.is_empty()
        && let Side::Nats(_) = from
    {
        return Err(format!(
            "--from {}: no topic under the prefix {}; check --from-prefix (the --storage-log-prefix of the servers using it)",
            proteus_nats::redact(&args.from),
            args.from_prefix
        ));
    }
    for name in &wanted {
        if !topics.iter().any(|t| &t.name == name) {
            return Err(format!("--topic {name}: the source has no such topic"));
        }
    }
    // The group stores are opened before anything is copied (the source's before the target
    // is made), so a mistyped one is refused first.
    let groups_source = if args.groups_to.is_some() || args.groups_from.is_some() {
        Some(group_store(&args, (End::Source, args.groups_from.as_deref()), &from).await?)
    } else {
        None
    };
    let Source::Log(target) = open_side(&args, (End::Target, &to, &args.to_prefix)).await? else {
        return Err("--to must be embedded:DIR or a NATS URL, not a server".into());
    };
    let group_stores = match groups_source {
        Some(source) => Some((
            source,
            group_store(&args, (End::Target, args.groups_to.as_deref()), &to).await?,
        )),
        None => None,
    };
    let settings = CopySettings {
        batch_events: batch,
        verify: args.verify,
        partitions_in_flight: args.partitions_in_flight,
    };
    let mut copied = copy_and_verify(&source, &target, &topics, &wanted, settings).await?;
    if args.follow {
        // Watched from here on, so a Ctrl-C ends the follow rather than the process.
        let mut stop = StopSignals::watch()?;
        follow::follow(&source, &target, &topics, &wanted, batch, &mut stop).await?;
        // The cut-over: the source as it is now (topics made while following included),
        // copied to its end and verified as the first pass was.
        println!(
            "stopping: copying what is left, then verifying every partition (Ctrl-C again to abort)"
        );
        const FINISH: &str = "run migrate-topics again without --follow to finish the copy (it continues where this one stopped)";
        let mut failures = 0;
        copied = loop {
            let last_pass = async {
                let topics = source.list_topics().await?;
                copy_and_verify(&source, &target, &topics, &wanted, settings).await
            };
            let done = tokio::select! {
                done = last_pass => done,
                _ = stop.received() => return Err(format!(
                    "interrupted before the last pass ended: {FINISH}"
                )),
            };
            match done {
                Ok(copied) => break copied,
                Err(e) => {
                    again_after_a_failed_last_pass(&mut failures, e, &mut stop, FINISH).await?
                }
            }
        };
    }
    println!("serve the copy with {}", serve_hint(&args, &to));
    if let Side::Server(url) = from {
        println!(
            "{} keeps serving: stop it, then run this again with --from embedded:DIR (its data directory, and the groups options if groups move) to copy what it appended meanwhile",
            proteus_nats::redact(url)
        );
    }
    if let Some((from_store, to_store)) = group_stores {
        // After the log: the groups' offsets point into the topics just copied.
        copy_groups(from_store, to_store, &copied).await?;
    }
    Ok(())
}

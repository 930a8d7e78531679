//! `proteus bench`: measurements of Proteus against its peers on the same machine.
//!
//! - `produce`: the same append workload against Proteus over HTTP, Proteus in-process, NATS
//!   JetStream, Redis Streams or PostgreSQL, chosen by the `--target` URL's scheme;
//! - `replay`: read throughput of a whole topic, over HTTP or in-process;
//! - `consume`: a consumer group against a NATS JetStream pull consumer: end-to-end latency at a
//!   steady rate, or the drain rate of a backlog;
//! - `ofrep`: feature-flag evaluation over OFREP, single flags or bulk;
//! - `disk`: the disk's sequential fdatasync bandwidth and small-write latency, the physical
//!   limit for any durable log on it;
//! - `startup`: how long the embedded log takes to open with a large log on disk;
//! - `projection`: how fast a projection catches up with a large event store, in-process;
//! - `experiment`: the experiments' statistics on synthetic traffic with a known truth (false
//!   positives under A/A with hourly peeking, and power).
//!
//! `bench/compare.sh` runs `produce` against every target one after the other and prints one
//! table.

mod consume;
mod disk;
mod events;
mod experiment;
mod experiment_scale;
mod limits;
mod ofrep;
mod produce;
mod projection;
mod replay;
mod report;
mod startup;
mod streams;
mod targets;

use clap::Subcommand;

pub use consume::{ConsumeArgs, ConsumeReport};
pub use disk::{DiskArgs, DiskReport};
pub use ofrep::{OfrepArgs, OfrepReport};
pub use produce::{ProduceArgs, produce};
pub use replay::{ReplayArgs, ReplayReport};
pub use report::ProduceReport;
pub use startup::{StartupArgs, StartupReport};
pub use targets::Target;

#[derive(Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// Append load: concurrent producers sending batches of events to one target for a fixed
    /// time; reports events/s, MB/s and batch latency percentiles.
    Produce(ProduceArgs),
    /// Read every event of a topic back with the largest pages (fills it first if needed).
    Replay(ReplayArgs),
    /// A consumer group beside a NATS JetStream pull consumer: produce-to-consume latency at a
    /// steady rate, or how fast one group drains a backlog.
    Consume(ConsumeArgs),
    /// OFREP flag evaluation over HTTP/1.1 keep-alive: requests/s and latency, single or bulk.
    Ofrep(OfrepArgs),
    /// Event-sourcing appends with exact expected versions to many streams, and whole
    /// aggregate reads, beside PostgreSQL doing the same (`--postgres`).
    Streams(streams::StreamsArgs),
    /// The disk's own sequential fdatasync bandwidth and 4 KiB write+fdatasync latency.
    Disk(DiskArgs),
    /// Time to open the embedded log with a large log on disk (fills it first if needed).
    Startup(StartupArgs),
    /// Projection catch-up in-process: fills an embedded event store (once, reused after),
    /// then times a fresh projection reading all of it and checks the read model it built.
    Projection(projection::ProjectionArgs),
    /// Synthetic experiments with a known truth through the experiments' aggregation and
    /// statistics: A/A false positives when peeking every hour, and power under a true lift.
    Experiment(experiment::ExperimentArgs),
    /// The experiments runtime aggregating a large experiment in-process on the embedded log
    /// and key-value store: catch-up events/s, results latency while it runs, memory, restart.
    ExperimentScale(experiment_scale::ExperimentScaleArgs),
}

/// Runs a benchmark and prints its report. Errors are sentences for the person running it.
pub async fn run(command: BenchCommand) -> Result<(), String> {
    match command {
        BenchCommand::Produce(args) => produce(args).await.map(drop),
        BenchCommand::Replay(args) => replay::run(args).await,
        BenchCommand::Consume(args) => consume::run(args).await,
        BenchCommand::Ofrep(args) => ofrep::run(args).await,
        BenchCommand::Streams(args) => streams::run(args).await,
        BenchCommand::Disk(args) => disk::run(args).await,
        BenchCommand::Startup(args) => startup::run(args).await,
        BenchCommand::Projection(args) => projection::run(args).await,
        BenchCommand::Experiment(args) => experiment::run(args),
        BenchCommand::ExperimentScale(args) => experiment_scale::run(args).await,
    }
}

/// How a report is printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// For people: one measurement a line.
    Table,
    /// One JSON object on one line, for scripts.
    Json,
}

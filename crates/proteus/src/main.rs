//! `proteus`: the server (`proteus serve`) and its command-line client.

mod chart;
mod cli;
mod experiment_cli;
mod flags_cli;
mod group_cli;
mod health_checks;
mod left_behind;
mod migrate_cli;
mod migrate_topics_cli;
mod projection_cli;
mod schema_cli;
mod serve;
mod settings;
mod stream_cli;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "proteus",
    version,
    about = "Proteus: a single-binary platform for evolvable, self-adapting services",
    after_help = "Start a server with `proteus serve`; the other commands talk to it (--server, default http://127.0.0.1:7070, or PROTEUS_SERVER), given before or after the command."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Proteus server (embedded storage in --data-dir, HTTP API on --listen).
    Serve(Box<settings::ServeArgs>),
    /// Create, list, describe and delete topics.
    Topic {
        #[command(subcommand)]
        command: cli::TopicCommand,
    },
    /// Publish CloudEvents: one from flags, or JSON lines from stdin.
    Publish(cli::PublishArgs),
    /// Print a topic's events as they arrive.
    Tail(cli::TailArgs),
    /// Create, list, describe, delete and reset consumer groups.
    Group {
        #[command(subcommand)]
        command: group_cli::GroupCommand,
    },
    /// Consume a topic as a member of a group: print each event, then ack it.
    Consume(group_cli::ConsumeArgs),
    /// List and replay a group's dead letters.
    Dlq {
        #[command(subcommand)]
        command: group_cli::DlqCommand,
    },
    /// Feature flags: validate flagd files, push, get, set, kill, history, rollback, evaluate.
    Flags {
        #[command(subcommand)]
        command: flags_cli::FlagsCommand,
    },
    /// Event sourcing: append to streams atomically, read streams, categories and $all.
    Stream {
        #[command(subcommand)]
        command: stream_cli::StreamCommand,
    },
    /// Projections (CQRS read models): create, status, query, rebuild, pause, resume, delete.
    Projection {
        #[command(subcommand)]
        command: projection_cli::ProjectionCommand,
    },
    /// Event schemas: register versions (with upcasters), check compatibility, list, set modes.
    Schema {
        #[command(subcommand)]
        command: schema_cli::SchemaCommand,
    },
    /// Experiments on feature flags: create, start, stop, decide, results.
    Experiment {
        #[command(subcommand)]
        command: experiment_cli::ExperimentCommand,
    },
    /// Copy an event store between backends (embedded, PostgreSQL, NATS JetStream, or a
    /// running server as the source), verify it, and optionally keep it in sync until cut-over.
    Migrate(migrate_cli::MigrateArgs),
    /// Copy topics between an embedded log (a stopped server's data directory) and NATS
    /// JetStream, either way, or from a running server, each event at its partition and
    /// offset, and verify them.
    MigrateTopics(migrate_topics_cli::MigrateTopicsArgs),
    /// Whether the server is ready, and each shared backend (NATS, PostgreSQL, Redis) as its
    /// latest health check found it; exits 1 unless all is well.
    Status(cli::ClientArgs),
    /// Measure Proteus and its peers (NATS JetStream, Redis, PostgreSQL) on this machine.
    Bench {
        #[command(subcommand)]
        command: proteus_bench::BenchCommand,
    },
}

/// mimalloc rather than glibc's allocator: with many short-lived allocations crossing the
/// runtime's threads (decoded events, documents, response buffers), glibc spent much of a
/// projection's catch-up in arena locking and consolidation (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long memory mimalloc freed stays with the process before it goes back to the OS.
/// mimalloc 3 gives it back after 1 s; under a steady load the same memory is soon needed
/// again, and each return then costs a page fault and the kernel zeroing a fresh (often 2 MiB)
/// page: 8% of the server's time in a profile of appends to the event store on NATS, whose
/// per-stream id indexes grow and move (2026-11-28, docs/benchmarks.md). 10 s, jemalloc's
/// default decay, keeps memory in use under load and still returns it after a burst. A user
/// who prefers otherwise sets `MIMALLOC_PURGE_DELAY` (milliseconds; -1 never returns memory),
/// which this leaves alone.
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 10_000;

unsafe extern "C" {
    // mimalloc's option API (include/mimalloc.h), linked through `libmimalloc-sys`; the
    // `mimalloc` crate only exposes it behind a feature whose extra dependency is not needed.
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (include/mimalloc.h).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Sets [`ALLOCATOR_PURGE_DELAY_MS`] unless `MIMALLOC_PURGE_DELAY` is set.
fn tune_allocator() {
    // An option at this index with another value than mimalloc 3's default is not the one
    // meant (another mimalloc), or was set by the user, and is left alone.
    const MIMALLOC_3_DEFAULT_PURGE_DELAY_MS: std::ffi::c_long = 1_000;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: both take an option index, which mimalloc range-checks, and a value; neither
    // touches memory of ours.
    unsafe {
        if mi_option_get(MI_OPTION_PURGE_DELAY) == MIMALLOC_3_DEFAULT_PURGE_DELAY_MS {
            mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS);
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let args =
        cli::client_flags_after_their_command(std::env::args_os().collect(), &Cli::command());
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        command => runtime(None).and_then(|runtime| runtime.block_on(run(command))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `proteus serve`: its settings are read before its runtime is built, which they size.
fn serve(args: settings::ServeArgs) -> Result<(), String> {
    let settings = settings::Settings::resolve(args)?;
    runtime(Some(settings.worker_threads))?.block_on(async {
        serve::init_logging(settings.log_format, &settings.log_level)?;
        serve::run(settings).await
    })
}

/// A multi-threaded runtime: `worker_threads` of them, else tokio's default (one per core,
/// or `TOKIO_WORKER_THREADS`).
fn runtime(worker_threads: Option<usize>) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads {
        builder.worker_threads(threads);
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Every command but `serve`: clients of a server, benches and migrations.
async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve(_) => unreachable!("serve builds its own runtime"),
        Command::Topic { command } => cli::topic(command).await,
        Command::Publish(args) => cli::publish(args).await,
        Command::Tail(args) => cli::tail(args).await,
        Command::Group { command } => group_cli::group(command).await,
        Command::Consume(args) => group_cli::consume(args).await,
        Command::Dlq { command } => group_cli::dlq(command).await,
        Command::Flags { command } => flags_cli::flags(command).await,
        Command::Stream { command } => stream_cli::stream(command).await,
        Command::Projection { command } => projection_cli::projection(command).await,
        Command::Schema { command } => schema_cli::schema(command).await,
        Command::Experiment { command } => experiment_cli::experiment(command).await,
        Command::Status(args) => cli::status(args).await,
        Command::Bench { command } => proteus_bench::run(command).await,
        Command::Migrate(args) => migrate_cli::run(args).await,
        Command::MigrateTopics(args) => migrate_topics_cli::run(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Result<Cli, clap::Error> {
        let args = line.split(' ').map(std::ffi::OsString::from).collect();
        Cli::try_parse_from(cli::client_flags_after_their_command(args, &Cli::command()))
    }

    fn server_and_output(line: &str) -> (String, cli::Output) {
        match parsed(line).unwrap().command {
            Command::Topic {
                command: cli::TopicCommand::List { client },
            }
            | Command::Status(client) => (client.server, client.output),
            _ => panic!("{line}: not the command meant"),
        }
    }

    /// Times in tables have three digits of milliseconds whatever they are, so they line up.
    #[test]
    fn times_are_printed_with_three_digits_of_milliseconds() {
        assert_eq!(
            cli::rfc3339_ms(1_795_930_925_990),
            "2026-11-29T05:42:05.990Z"
        );
        assert_eq!(
            cli::rfc3339_ms(1_795_930_925_000),
            "2026-11-29T05:42:05.000Z"
        );
        assert_eq!(cli::rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(cli::rfc3339_ms(i64::MAX), i64::MAX.to_string());
    }

    /// `--server` and `--output` are taken before the command as after it, in either form;
    /// given twice, or to a command without them, they are refused as before.
    #[test]
    fn client_flags_are_taken_before_the_command_too() {
        use cli::Output::{Json, Table};
        let at = |url: &str| url.to_owned();
        for (line, expected) in [
            (
                "proteus --server http://a:1 topic list",
                (at("http://a:1"), Table),
            ),
            (
                "proteus --server=http://a:1 --output json topic list",
                (at("http://a:1"), Json),
            ),
            (
                "proteus --output=json status",
                (at("http://127.0.0.1:7070"), Json),
            ),
            (
                "proteus topic list --server http://b:2",
                (at("http://b:2"), Table),
            ),
            (
                "proteus --output json topic list --server http://b:2",
                (at("http://b:2"), Json),
            ),
        ] {
            if std::env::var_os("PROTEUS_SERVER").is_some() && !line.contains("--server") {
                continue; // the environment's server would be the default
            }
            assert_eq!(server_and_output(line), expected, "{line}");
        }
        for refused in [
            "proteus --server http://a:1 topic list --server http://b:2",
            "proteus --server http://a:1 serve",
            "proteus --server http://a:1",
            "proteus --server",
        ] {
            assert!(parsed(refused).is_err(), "{refused} was accepted");
        }
        // Arguments after the command are left in place: a positional that looks like a
        // command name is not taken for one.
        match parsed("proteus --server http://a:1 topic describe list")
            .unwrap()
            .command
        {
            Command::Topic {
                command: cli::TopicCommand::Describe { name, client },
            } => assert_eq!(
                (name.as_str(), client.server.as_str()),
                ("list", "http://a:1")
            ),
            _ => panic!("not topic describe"),
        }
    }

    /// Fails when a mimalloc upgrade moves or re-defaults the purge-delay option, which
    /// `tune_allocator` would then silently leave alone.
    #[test]
    fn the_allocator_keeps_freed_memory_for_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the user's setting wins, by design
        }
        tune_allocator();
        // SAFETY: reads an option by index, range-checked by mimalloc.
        let purge_delay_ms = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(purge_delay_ms, ALLOCATOR_PURGE_DELAY_MS);
    }
}

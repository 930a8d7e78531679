//! Tests of the `proteus` binary as users run it: real processes, real signals, real sockets.

mod backend_health;
mod backend_logins;
mod bench_consume;
mod cli;
mod crash;
mod experiments_cli;
mod flags_cli;
mod group_chaos;
mod group_cli;
mod migrate_cli;
mod migrate_topics;
mod nats_cluster;
mod openfeature;
mod schema_policy;
mod shared_cache;
mod shared_event_store;
mod shared_groups;
mod shared_nats_log;
mod streams_cli;
mod support;

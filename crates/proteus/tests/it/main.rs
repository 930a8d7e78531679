//! Tests of the `proteus` binary as users run it: real processes, real signals, real sockets.

mod bench_consume;
mod cli;
mod crash;
mod group_chaos;
mod support;

//! The projection runtime against the real embedded event store and read-model store, in
//! temporary directories: convergence under concurrent appends, failures, control operations,
//! restarts, and SIGKILL during processing.

mod api;
mod cache;
mod control;
mod converge;
mod crash;
mod failure;
mod restart;
mod shared;
mod support;

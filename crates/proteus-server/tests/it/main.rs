//! HTTP tests of the API over a real embedded log and real sockets.

mod append;
mod flags;
mod groups;
mod problems;
mod projections;
mod read;
mod schemas;
mod stream;
mod streams;
mod support;
mod topics;

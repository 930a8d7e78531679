//! Integration tests of `proteus-flags`, one binary with a module per concern.

mod files;
mod fuzz;
mod invalid;
mod operators;
mod prerequisites;
mod segments;
mod support;
mod testbed;
mod typed;

//! `proteus-nats` against real NATS servers: what every adapter's connection shares.

mod login;
mod tls;

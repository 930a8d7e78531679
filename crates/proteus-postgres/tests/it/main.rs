//! `proteus-postgres` against real PostgreSQL servers: what every adapter's connections share.

mod hosts;
mod tls;

//! What the adapters' test support shares: ports for private test servers, and with the `tls`
//! feature, certificates. Nothing else, so every adapter's tests can use it without
//! rebuilding anything heavy.

#[cfg(feature = "tls")]
pub mod tls;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the kernel's ephemeral ports start when `/proc` does not say (Linux's default).
const EPHEMERAL_PORT_LOW_DEFAULT: u32 = 32768;
/// The lowest port handed out: below it live the usual services (PostgreSQL 5432, Redis 6379,
/// NATS 4222, RabbitMQ 5672, MariaDB 3306, their monitoring ports).
const RESTARTABLE_PORT_LOW: u32 = 10000;

/// How many ports this process has handed out (or tried).
static PORTS_TRIED: AtomicU32 = AtomicU32::new(0);

/// A free TCP port on 127.0.0.1 for a test's private server that the test will kill and start
/// again on the same port.
///
/// A port from `bind(0)` is an ephemeral port: once the server is killed, any outgoing
/// connection on the machine (another test's client, a cluster node's route) may take it as
/// its local port, and the restarted server then fails with "address already in use" (CI,
/// 2026-11-28). This one is below the kernel's ephemeral range, so only another explicit bind
/// can take it; ports are handed out in turn, so one process never hands out the same port
/// twice. Falls back to `bind(0)` when the ephemeral range starts too low to leave room.
pub fn restartable_port() -> u16 {
    let high = ephemeral_port_low();
    if high > RESTARTABLE_PORT_LOW + 1000 {
        let span = high - RESTARTABLE_PORT_LOW;
        for _ in 0..span {
            let port = RESTARTABLE_PORT_LOW + next_offset(span);
            let port = u16::try_from(port).expect("below the ephemeral range, so below 65536");
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("cannot find a free port on 127.0.0.1")
        .port()
}

/// The next candidate, as an offset into a range of `span` ports: in turn from a start seeded
/// by the process id, so two test binaries running at once start far apart.
fn next_offset(span: u32) -> u32 {
    let start = std::process::id().wrapping_mul(7919);
    start.wrapping_add(PORTS_TRIED.fetch_add(1, Ordering::Relaxed)) % span
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_port_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(EPHEMERAL_PORT_LOW_DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_distinct_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| restartable_port()).collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            ports.len(),
            "a port was handed out twice: {ports:?}"
        );
        for port in ports {
            assert!(
                u32::from(port) < ephemeral_port_low(),
                "{port} is an ephemeral port"
            );
            TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
        }
    }
}

//! `proteus bench ofrep`: OFREP evaluation over HTTP/1.1 keep-alive, as OpenFeature providers
//! call it.
//!
//! The bench first pushes its own flag set (through `/v1/flagsets`): one flag with three
//! targeting rules and a fractional split (the flag the engine benchmark measures), plus
//! enough plain flags to make `--flags` in all. Then `--connections` connections each send one
//! request after another for `--seconds`, either single-flag evaluations (`--mode single`) or
//! bulk evaluations of the whole set (`--mode bulk`), each with its own targeting key. Every
//! answer is checked (status 200 and, for single, the expected body shape); the report gives
//! requests/s and latency percentiles.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};

use crate::Output;
use crate::limits::in_range;
use crate::report::{latency_histogram, render_rows};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OfrepMode {
    /// `POST /ofrep/v1/evaluate/flags/{key}` of the targeted flag.
    Single,
    /// `POST /ofrep/v1/evaluate/flags`: every flag of the set.
    Bulk,
}

#[derive(Args, Debug, Clone)]
pub struct OfrepArgs {
    /// The Proteus server: http://HOST:PORT.
    #[arg(long, value_name = "URL")]
    pub target: String,
    #[arg(long, value_enum, default_value = "single")]
    pub mode: OfrepMode,
    /// Concurrent keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Flags in the set (bulk evaluates them all).
    #[arg(long, default_value_t = 100)]
    pub flags: usize,
    /// Flag set the bench pushes; OFREP without an API key evaluates `default`.
    #[arg(long, default_value = "default")]
    pub flag_set: String,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

pub const CONNECTIONS_MAX: usize = 1_024;
pub const SECONDS_MAX: u64 = 3_600;
pub const FLAGS_MAX: usize = 10_000;
/// The flag single mode evaluates.
const TARGETED_FLAG: &str = "checkout";

#[derive(Debug, Serialize)]
pub struct OfrepReport {
    pub target: String,
    pub mode: OfrepMode,
    pub connections: usize,
    pub flags: usize,
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

impl OfrepReport {
    fn table(&self) -> String {
        render_rows(&[
            ("target", self.target.clone()),
            (
                "workload",
                format!(
                    "{:?} evaluation, {} flags in the set, {} connections",
                    self.mode, self.flags, self.connections
                ),
            ),
            (
                "requests",
                format!("{} in {:.2} s", self.requests, self.seconds),
            ),
            ("requests/s", format!("{:.0}", self.requests_per_s)),
            ("latency p50 ms", format!("{:.3}", self.latency_p50_ms)),
            ("latency p90 ms", format!("{:.3}", self.latency_p90_ms)),
            ("latency p99 ms", format!("{:.3}", self.latency_p99_ms)),
            ("latency max ms", format!("{:.3}", self.latency_max_ms)),
        ])
    }
}

/// The bench's flag set: the targeted flag, then plain boolean flags up to `flags`.
pub fn flag_set(flags: usize) -> Value {
    let mut all = serde_json::Map::new();
    all.insert(
        TARGETED_FLAG.into(),
        json!({
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "defaultVariant": "off",
            "targeting": {"if": [
                {"ends_with": [{"var": "email"}, "@example.com"]}, "on",
                {"in": [{"var": "country"}, ["FR", "DE"]]}, "on",
                {"sem_ver": [{"var": "app_version"}, ">=", "2.0.0"]}, "on",
                {"fractional": [["on", 10], ["off", 90]]}
            ]}
        }),
    );
    for n in 1..flags {
        all.insert(
            format!("flag-{n:05}"),
            json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}),
        );
    }
    json!({ "flags": all })
}

async fn push_flag_set(url: &str, set: &str, flags: usize) -> Result<(), String> {
    let http = reqwest::Client::new();
    let response = http
        .put(format!(
            "{url}/v1/flagsets/{set}?comment=proteus+bench+ofrep"
        ))
        .json(&flag_set(flags))
        .send()
        .await
        .map_err(|e| crate::targets::http::unreachable(url, &e))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.bytes().await.unwrap_or_default();
        return Err(format!(
            "pushing the bench's flag set failed: {}",
            crate::targets::problem_message(status, &body)
        ));
    }
    Ok(())
}

pub async fn run(args: OfrepArgs) -> Result<(), String> {
    in_range("--connections", args.connections, 1, CONNECTIONS_MAX)?;
    in_range("--seconds", args.seconds, 1, SECONDS_MAX)?;
    in_range("--flags", args.flags, 1, FLAGS_MAX)?;
    let target: crate::Target = args.target.parse()?;
    let crate::Target::Http(url) = &target else {
        return Err(format!(
            "ofrep measures Proteus over HTTP (--target http://HOST:PORT), not {target}"
        ));
    };
    push_flag_set(url, &args.flag_set, args.flags).await?;
    let authority = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/')
        .to_owned();
    let path = match args.mode {
        OfrepMode::Single => format!("/ofrep/v1/evaluate/flags/{TARGETED_FLAG}"),
        OfrepMode::Bulk => "/ofrep/v1/evaluate/flags".to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::with_capacity(args.connections);
    for connection in 0..args.connections {
        let (authority, path) = (authority.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            drive(&authority, &path, connection, deadline).await
        }));
    }
    let started = Instant::now();
    let (requests, histogram) = crate::report::join_counted(tasks, "connection").await?;
    let seconds = started.elapsed().as_secs_f64();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1_000.0;
    let report = OfrepReport {
        target: target.to_string(),
        mode: args.mode,
        connections: args.connections,
        flags: args.flags,
        requests,
        seconds,
        requests_per_s: requests as f64 / seconds,
        latency_p50_ms: ms(0.5),
        latency_p90_ms: ms(0.9),
        latency_p99_ms: ms(0.99),
        latency_max_ms: histogram.max() as f64 / 1_000.0,
    };
    crate::report::print(args.output, &report, OfrepReport::table);
    Ok(())
}

/// One keep-alive connection sending requests back to back until `deadline`; returns how
/// many completed and their latencies in microseconds.
async fn drive(
    authority: &str,
    path: &str,
    connection: usize,
    deadline: Instant,
) -> Result<(u64, hdrhistogram::Histogram<u64>), String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("setting TCP_NODELAY failed: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {authority} failed: {e}"))?;
    tokio::spawn(conn);
    // A few distinct users per connection, so evaluations are not all the same.
    let bodies: Vec<Bytes> = (0..16)
        .map(|n| {
            Bytes::from(
                json!({"context": {
                    "targetingKey": format!("user-{connection}-{n}"),
                    "email": format!("user{n}@corp.com"),
                    "country": "US",
                    "app_version": "1.4.0"
                }})
                .to_string(),
            )
        })
        .collect();
    let mut histogram = latency_histogram();
    let mut count = 0u64;
    while Instant::now() < deadline {
        let body = bodies[count as usize % bodies.len()].clone();
        let request = Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| format!("building a request failed: {e}"))?;
        let sent = Instant::now();
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("an OFREP request failed: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading an OFREP answer failed: {e}"))?
            .to_bytes();
        histogram.saturating_record((sent.elapsed().as_micros() as u64).max(1));
        if status != hyper::StatusCode::OK || !body.starts_with(b"{") {
            return Err(format!(
                "an OFREP request was answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ));
        }
        count += 1;
    }
    Ok((count, histogram))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_set_has_the_targeted_flag_and_the_requested_size() {
        let set = flag_set(100);
        let flags = set["flags"].as_object().unwrap();
        assert_eq!(flags.len(), 100);
        assert!(flags[TARGETED_FLAG]["targeting"]["if"].is_array());
    }
}

//! Prometheus metrics: the process-wide recorder and the HTTP latency middleware.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the global metrics recorder on first use and returns its handle. Histograms
/// measured in seconds get latency buckets from 100 µs to 10 s.
pub fn install_metrics_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency_buckets = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ];
            let count_buckets = [
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
                10000.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency_buckets)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("proteus_log_group_commit_events".into()),
                        &count_buckets,
                    )
                })
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawning the metrics upkeep thread");
            handle
        })
        .clone()
}

/// Records `proteus_http_request_duration_seconds{method,route,status}`, where `route` is the
/// route template (`/v1/topics/{topic}`), never the raw path, to keep cardinality bounded.
pub async fn record(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(
        "proteus_http_request_duration_seconds",
        "method" => method,
        "route" => route,
        "status" => status
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// The async runtime's own metrics in Prometheus's text format, read when `/metrics` is
/// scraped: how many worker threads run requests, how busy each was, how often each parked
/// (slept for want of work) and what is queued. An operator sizing `--worker-threads` looks
/// here: workers busy most of each second want more threads (or cores); workers far from
/// busy on a machine they share with the backend may do the same work on fewer threads for
/// less CPU (docs/benchmarks.md, "One worker thread beside the backend").
/// Written here rather than through the `metrics` crate, whose counters are integers: busy
/// time is in seconds.
pub fn runtime_metrics_text(runtime: &tokio::runtime::RuntimeMetrics) -> String {
    let workers = runtime.num_workers();
    let mut text = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        text += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for (labels, value) in samples {
            text += &format!("{name}{labels} {value}\n");
        }
    };
    let one = |value: usize| vec![(String::new(), value.to_string())];
    let per_worker = |value: &dyn Fn(usize) -> String| {
        (0..workers)
            .map(|w| (format!("{{worker=\"{w}\"}}"), value(w)))
            .collect()
    };
    family(
        "proteus_runtime_workers",
        "gauge",
        "Worker threads of the async runtime (--worker-threads).",
        one(workers),
    );
    family(
        "proteus_runtime_alive_tasks",
        "gauge",
        "Tasks spawned on the runtime and not finished.",
        one(runtime.num_alive_tasks()),
    );
    family(
        "proteus_runtime_global_queue_depth",
        "gauge",
        "Tasks waiting in the runtime's global queue for a worker.",
        one(runtime.global_queue_depth()),
    );
    family(
        "proteus_runtime_worker_busy_seconds_total",
        "counter",
        "Time each worker thread spent running tasks.",
        per_worker(&|w| {
            let busy = runtime.worker_total_busy_duration(w);
            busy.as_secs_f64().to_string()
        }),
    );
    family(
        "proteus_runtime_worker_parks_total",
        "counter",
        "Times each worker thread parked for want of work.",
        per_worker(&|w| runtime.worker_park_count(w).to_string()),
    );
    text
}

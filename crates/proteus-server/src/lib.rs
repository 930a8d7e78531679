//! The HTTP API of Proteus.
//!
//! Routes (documented in `docs/http-api.md`):
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | liveness, readiness, Prometheus metrics |
//! | `GET /v1/topics` | list topics |
//! | `PUT`/`GET`/`DELETE /v1/topics/{topic}` | create or update, describe, delete a topic |
//! | `POST /v1/topics/{topic}/events` | append CloudEvents (structured, batch or binary mode) |
//! | `GET /v1/topics/{topic}/partitions/{p}/events` | read a partition, with long polling |
//! | `GET /v1/topics/{topic}/events/stream` | live tail as Server-Sent Events, resumable |
//! | `/v1/topics/{topic}/groups/...` | consumer groups: members, pull, ack/nack, dead letters |
//! | `/v1/experiments/...` | experiments on flags: create, start, stop, decide, results |
//!
//! Every error is an RFC 9457 `application/problem+json` body.

mod events;
mod experiments;
mod extract;
mod flagsets;
mod groups;
pub mod health;
mod metrics_layer;
pub mod ofrep;
mod problem;
mod projections;
mod schemas;
mod stream;
mod streams;
mod topics;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use proteus_flagsets_service::FlagService;
use proteus_groups_service::GroupService;
use proteus_log::port::Log;
use tokio::sync::watch;

pub use metrics_layer::install_metrics_recorder;
pub use problem::Problem;
pub use streams::parse_append;

/// Limits and settings of the HTTP layer.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Largest request body accepted.
    pub body_bytes_max: usize,
    /// Longest `wait_ms` a long-polling read may ask for.
    pub wait_ms_max: u64,
    /// Interval of SSE keep-alive comments.
    pub sse_keep_alive_ms: u64,
    /// API keys for OFREP and flag-set management; empty: no key needed, OFREP evaluates the
    /// `default` flag set.
    pub flag_api_keys: Vec<ofrep::ApiKey>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_bytes_max: 16 * 1024 * 1024,
            wait_ms_max: 30_000,
            sse_keep_alive_ms: 15_000,
            flag_api_keys: Vec::new(),
        }
    }
}

/// What every handler is served from. Cloned for each request (by each `State` extractor and
/// by the coordinator middleware), so it is one `Arc`: cloning the fields one by one (a dozen
/// reference counts, the API keys' strings) was 2% of the server's time on batched appends
/// (2026-11-29). Its fields are read through [`Deref`](std::ops::Deref).
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

impl AppState {
    /// The fields, to set while the state is built (before the router shares it).
    fn building(&mut self) -> &mut AppStateInner {
        Arc::make_mut(&mut self.0)
    }
}

/// The fields of [`AppState`].
#[derive(Clone)]
pub struct AppStateInner {
    pub log: Arc<dyn Log>,
    pub groups: GroupService,
    pub flags: FlagService,
    /// The event store behind `/v1/streams`; without one those routes answer 503.
    pub events: Option<Arc<dyn proteus_eventstore::EventStore>>,
    /// The schema registry behind `/v1/schemas`, validating appends and upcasting reads.
    pub schemas: Option<proteus_schemas_service::SchemaService>,
    /// The projections behind `/v1/projections`.
    pub projections: Option<proteus_projections_service::ProjectionService>,
    /// The experiments behind `/v1/experiments`.
    pub experiments: Option<proteus_experiments_service::ExperimentService>,
    pub config: HttpConfig,
    pub metrics: PrometheusHandle,
    /// Which instance coordinates each consumer group when several share a group store; `None`
    /// (one instance): every group is handled here.
    pub group_router: Option<Arc<dyn proteus_groups_service::coordination::GroupRouter>>,
    /// Forwards group requests to their coordinator.
    pub(crate) forwarder: reqwest::Client,
    /// The shared backends' latest checks, shown by `/readyz`.
    pub health: health::BackendHealth,
    ready: Arc<AtomicBool>,
    shutdown: watch::Receiver<bool>,
}

/// Tells long-running requests (long polls, SSE streams) to finish, and `/readyz` to fail, so
/// a graceful shutdown does not wait on them.
#[derive(Clone)]
pub struct ShutdownSignal {
    ready: Arc<AtomicBool>,
    sender: Arc<watch::Sender<bool>>,
}

impl ShutdownSignal {
    pub fn trigger(&self) {
        self.ready.store(false, Ordering::Release);
        self.sender.send_replace(true);
    }

    /// Resolves once [`ShutdownSignal::trigger`] was called.
    pub async fn triggered(&self) {
        let mut receiver = self.sender.subscribe();
        let _ = receiver.wait_for(|down| *down).await;
    }
}

impl AppState {
    pub fn new(
        log: Arc<dyn Log>,
        groups: GroupService,
        flags: FlagService,
        config: HttpConfig,
    ) -> (AppState, ShutdownSignal) {
        let (sender, receiver) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(true));
        let state = AppState(Arc::new(AppStateInner {
            log,
            groups,
            flags,
            events: None,
            schemas: None,
            projections: None,
            experiments: None,
            config,
            metrics: install_metrics_recorder(),
            group_router: None,
            forwarder: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap_or_default(),
            health: health::BackendHealth::default(),
            ready: ready.clone(),
            shutdown: receiver,
        }));
        let signal = ShutdownSignal {
            ready,
            sender: Arc::new(sender),
        };
        (state, signal)
    }

    /// Serves `/v1/streams` from `events`.
    pub fn with_event_store(mut self, events: Arc<dyn proteus_eventstore::EventStore>) -> Self {
        self.building().events = Some(events);
        self
    }

    /// Serves `/v1/schemas` and checks appends against it.
    pub fn with_schemas(mut self, schemas: proteus_schemas_service::SchemaService) -> Self {
        self.building().schemas = Some(schemas);
        self
    }

    /// Serves `/v1/projections` from `projections`.
    pub fn with_projections(
        mut self,
        projections: proteus_projections_service::ProjectionService,
    ) -> Self {
        self.building().projections = Some(projections);
        self
    }

    /// Serves `/v1/experiments` from `experiments`.
    pub fn with_experiments(
        mut self,
        experiments: proteus_experiments_service::ExperimentService,
    ) -> Self {
        self.building().experiments = Some(experiments);
        self
    }

    /// Reports `health`'s checks in `/readyz` (run them with [`health::BackendHealth::run`]).
    pub fn with_backend_health(mut self, health: health::BackendHealth) -> Self {
        self.building().health = health;
        self
    }

    /// Handles each consumer group's requests on the instance `router` names, forwarding them
    /// there when it is another one.
    pub fn with_group_router(
        mut self,
        router: Arc<dyn proteus_groups_service::coordination::GroupRouter>,
    ) -> Self {
        self.building().group_router = Some(router);
        self
    }

    /// Resolves when shutdown starts.
    pub(crate) async fn shutting_down(&self) {
        let mut shutdown = self.shutdown.clone();
        let _ = shutdown.wait_for(|down| *down).await;
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/topics", get(topics::list))
        .route(
            "/v1/topics/{topic}",
            get(topics::describe)
                .put(topics::put)
                .delete(topics::delete),
        )
        .route(
            "/v1/topics/{topic}/events",
            axum::routing::post(events::append),
        )
        .route(
            "/v1/topics/{topic}/partitions/{partition}/events",
            get(events::read),
        )
        .route("/v1/topics/{topic}/events/stream", get(stream::stream))
        .route("/v1/topics/{topic}/groups", get(groups::list))
        .route(
            "/v1/topics/{topic}/groups/{group}",
            get(groups::describe)
                .put(groups::put)
                .delete(groups::delete),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/reset",
            post(groups::reset),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/members",
            post(groups::join),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/members/{member}",
            axum::routing::delete(groups::leave),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/members/{member}/heartbeat",
            post(groups::heartbeat),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/members/{member}/pull",
            post(groups::pull),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/members/{member}/ack",
            post(groups::ack),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/members/{member}/nack",
            post(groups::nack),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/members/{member}/in-progress",
            post(groups::in_progress),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/dead-letters",
            get(groups::dead_letters),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/dead-letters/replay",
            post(groups::replay),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/dead-letters/{offset}",
            get(groups::dead_letter),
        )
        .route("/ofrep/v1/evaluate/flags", post(ofrep::evaluate_all))
        .route("/ofrep/v1/evaluate/flags/{key}", post(ofrep::evaluate_flag))
        .route("/ofrep/v1/events", get(ofrep::events))
        .route(
            "/v1/streams/{stream}",
            get(streams::read)
                .post(streams::append)
                .delete(streams::delete),
        )
        .route("/v1/streams/{stream}/info", get(streams::info))
        .route(
            "/v1/streams/{stream}/snapshot",
            get(streams::get_snapshot).put(streams::put_snapshot),
        )
        .route("/v1/streams/{stream}/aggregate", get(streams::aggregate))
        .route("/v1/streams/{stream}/subscribe", get(streams::subscribe))
        .route("/v1/projections", get(projections::list))
        .route(
            "/v1/projections/{name}",
            get(projections::status)
                .put(projections::create)
                .delete(projections::delete),
        )
        .route("/v1/projections/{name}/docs", get(projections::query))
        .route(
            "/v1/projections/{name}/docs/{key}",
            get(projections::get_doc),
        )
        .route(
            "/v1/projections/{name}/{action}",
            post(projections::control),
        )
        .route(
            "/v1/experiments",
            get(experiments::list).post(experiments::create),
        )
        .route(
            "/v1/experiments/{id}",
            get(experiments::get)
                .put(experiments::redefine)
                .delete(experiments::delete),
        )
        .route("/v1/experiments/{id}/results", get(experiments::results))
        .route(
            "/v1/experiments/{id}/results/history",
            get(experiments::history),
        )
        .route("/v1/experiments/{id}/{action}", post(experiments::action))
        .route("/v1/schemas", get(schemas::list))
        .route(
            "/v1/schemas/{event_type}",
            get(schemas::get_type).post(schemas::register),
        )
        .route("/v1/schemas/{event_type}/check", post(schemas::check))
        .route(
            "/v1/schemas/{event_type}/mode",
            axum::routing::put(schemas::set_mode),
        )
        .route(
            "/v1/schemas/{event_type}/versions/{version}",
            get(schemas::get_version),
        )
        .route("/v1/flagsets", get(flagsets::list))
        .route(
            "/v1/flagsets/{set}",
            get(flagsets::get_set)
                .put(flagsets::put_set)
                .delete(flagsets::delete_set),
        )
        .route("/v1/flagsets/{set}/history", get(flagsets::history))
        .route("/v1/flagsets/{set}/stale", get(flagsets::stale))
        .route("/v1/flagsets/{set}/events", get(flagsets::events))
        .route("/v1/flagsets/{set}/rollback", post(flagsets::rollback))
        .route(
            "/v1/flagsets/{set}/schedules",
            get(flagsets::schedules).post(flagsets::schedule),
        )
        .route(
            "/v1/flagsets/{set}/schedules/{id}",
            axum::routing::delete(flagsets::cancel_schedule),
        )
        .route(
            "/v1/flagsets/{set}/versions/{version}",
            get(flagsets::version),
        )
        .route(
            "/v1/flagsets/{set}/flags/{key}",
            get(flagsets::get_flag)
                .put(flagsets::put_flag)
                .delete(flagsets::delete_flag),
        )
        .route(
            "/v1/flagsets/{set}/flags/{key}/kill",
            post(flagsets::kill_flag),
        )
        .route(
            "/v1/flagsets/{set}/flags/{key}/enable",
            post(flagsets::enable_flag),
        )
        .route(
            "/v1/flagsets/{set}/flags/{key}/history",
            get(flagsets::flag_history),
        )
        .route(
            "/v1/flagsets/{set}/flags/{key}/restore",
            post(flagsets::restore_flag),
        )
        .route(
            "/v1/flagsets/{set}/flags/{key}/rollout",
            post(flagsets::rollout),
        )
        .route(
            "/v1/flagsets/{set}/flags/{key}/rollout/pause",
            post(flagsets::pause_rollout),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            groups::route_to_coordinator,
        ))
        .layer(axum::middleware::from_fn(metrics_layer::record))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then stops accepting connections and waits for the
/// requests in flight (including the fdatasync of their appends) to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadyzQuery {
    /// Answer 503 when a shared backend is down, not only during shutdown.
    #[serde(default)]
    require_backends: bool,
}

/// 200 while the server takes requests, with the latest check of each shared backend
/// (`"status": "degraded"` when one is down); 503 once shutdown starts, or with
/// `?require_backends=true` while a backend is down. See [`health`] for why an outage does not
/// fail readiness by default.
async fn readyz(
    State(state): State<AppState>,
    crate::extract::QueryParams(query): crate::extract::QueryParams<ReadyzQuery>,
) -> Result<impl IntoResponse, Problem> {
    if !state.ready.load(Ordering::Acquire) {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            "the server is shutting down",
        ));
    }
    let backends = state.health.statuses();
    let down: Vec<String> = backends
        .iter()
        .filter(|b| !b.up)
        .map(|b| {
            format!(
                "{} ({}): {}",
                b.store,
                b.backend,
                b.error.as_deref().unwrap_or("down")
            )
        })
        .collect();
    if query.require_backends && !down.is_empty() {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            format!("a shared backend is down: {}", down.join("; ")),
        )
        .with(
            "backends",
            serde_json::to_value(&backends).unwrap_or_default(),
        ));
    }
    let status = if down.is_empty() { "ready" } else { "degraded" };
    Ok(axum::Json(
        serde_json::json!({"status": status, "backends": backends}),
    ))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render()
            + &metrics_layer::runtime_metrics_text(&tokio::runtime::Handle::current().metrics()),
    )
}

async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!(
            "no route for {}; the API lives under /v1 (see docs/http-api.md)",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

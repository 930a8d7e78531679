use std::sync::Arc;

use proteus_log_embedded::{EmbeddedConfig, EmbeddedLog};
use proteus_server::{AppState, HttpConfig, ShutdownSignal};
use serde_json::{Value, json};

pub struct TestServer {
    pub url: String,
    pub http: reqwest::Client,
    pub signal: ShutdownSignal,
    log: Arc<dyn proteus_log::Log>,
    groups: proteus_groups_service::GroupService,
    events: Arc<dyn proteus_eventstore::EventStore>,
    projections: proteus_projections_service::ProjectionService,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::with_config(HttpConfig::default()).await
    }

    pub async fn with_config(config: HttpConfig) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut server = TestServer::open(dir.path(), config).await;
        server._dir = Some(dir);
        server
    }

    /// A server over the data in `dir`, which outlives it (for restarts).
    pub async fn in_dir(dir: &std::path::Path) -> TestServer {
        TestServer::open(dir, HttpConfig::default()).await
    }

    /// Stops serving and closes the log, as a shutdown does.
    pub async fn stop(self) {
        self.signal.trigger();
        self.served.await.unwrap().unwrap();
        self.groups.shutdown().await;
        self.projections.close().await;
        self.events.close().await.unwrap();
        self.log.shutdown().await.unwrap();
    }

    async fn open(dir: &std::path::Path, config: HttpConfig) -> TestServer {
        // As in `proteus serve`: the recorder exists before the log registers its gauges.
        proteus_server::install_metrics_recorder();
        let log = EmbeddedLog::open(EmbeddedConfig::new(dir)).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log: Arc<dyn proteus_log::Log> = Arc::new(log);
        let store = proteus_groups_embedded::EmbeddedGroupStore::open(dir).unwrap();
        let groups = proteus_groups_service::GroupService::open(
            log.clone(),
            Arc::new(store),
            proteus_groups_service::ServiceConfig::default(),
        )
        .await
        .unwrap();
        let flags = proteus_flagsets_service::FlagService::open(log.clone())
            .await
            .unwrap();
        let events: Arc<dyn proteus_eventstore::EventStore> = Arc::new(
            proteus_eventstore_embedded::EmbeddedEventStore::open(dir, Default::default()).unwrap(),
        );
        let (state, signal) = AppState::new(log.clone(), groups.clone(), flags, config);
        let schemas = proteus_schemas_service::SchemaService::open(
            log.clone(),
            Default::default(),
            proteus_schemas::SchemaPolicy::Lenient,
        )
        .await
        .unwrap();
        let read_models = proteus_projections_embedded::EmbeddedReadModelStore::open(dir).unwrap();
        let upcasting: Arc<dyn proteus_eventstore::EventStore> = Arc::new(
            proteus_schemas_service::UpcastingEventStore::new(events.clone(), schemas.clone()),
        );
        let projections = proteus_projections_service::ProjectionService::open(
            upcasting,
            Arc::new(read_models),
            Default::default(),
        )
        .await
        .unwrap();
        let state = state
            .with_event_store(events.clone())
            .with_schemas(schemas)
            .with_projections(projections.clone());
        let stop = signal.clone();
        let served = tokio::spawn(proteus_server::serve(listener, state, async move {
            stop.triggered().await
        }));
        TestServer {
            url,
            http: reqwest::Client::new(),
            signal,
            log,
            groups,
            events,
            projections,
            served,
            _dir: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub async fn create_topic(&self, name: &str, config: Value) {
        let response = self
            .http
            .put(self.url(&format!("/v1/topics/{name}")))
            .json(&config)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }

    pub async fn post_batch(&self, topic: &str, events: &[Value]) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/topics/{topic}/events")))
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(events).unwrap())
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// `/metrics`, in Prometheus's text format.
    pub async fn metrics(&self) -> String {
        let response = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "GET /metrics: {}",
            response.status()
        );
        response.text().await.unwrap()
    }
}

pub fn event(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/tests", "type": "test.event", "data": {"n": id}})
}

/// Checks a response is an RFC 9457 problem with this status and `type`, and returns it.
pub async fn problem(response: reqwest::Response, status: u16, kind: &str) -> Value {
    assert_eq!(response.status(), status, "unexpected status");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], format!("/problems/{kind}"), "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    assert!(
        body["detail"].as_str().is_some_and(|d| d.len() > 10),
        "a precise detail: {body}"
    );
    body
}

//! The client against a real server in this process (embedded log and group store in a
//! temporary directory, HTTP on an ephemeral port).

mod consumer;
mod local_flags;

use std::sync::Arc;

use proteus_log_embedded::{EmbeddedConfig, EmbeddedLog};
use proteus_server::{AppState, HttpConfig, ShutdownSignal};

pub struct TestServer {
    pub url: String,
    signal: ShutdownSignal,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        proteus_server::install_metrics_recorder();
        let log = EmbeddedLog::open(EmbeddedConfig::new(dir.path()))
            .await
            .unwrap();
        let log: Arc<dyn proteus_log::Log> = Arc::new(log);
        let store = proteus_groups_embedded::EmbeddedGroupStore::open(dir.path()).unwrap();
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (state, signal) = AppState::new(log.clone(), groups, flags, HttpConfig::default());
        let stop = signal.clone();
        tokio::spawn(proteus_server::serve(listener, state, async move {
            stop.triggered().await
        }));
        TestServer {
            url,
            signal,
            _dir: dir,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.signal.trigger();
    }
}

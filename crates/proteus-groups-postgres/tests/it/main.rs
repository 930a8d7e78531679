//! The PostgreSQL group store runs the whole GroupStore conformance suite, each test in a
//! schema of its own, dropped afterwards, and the crash check against a server of the test's
//! own killed and started again. PostgreSQL must be running (the tests fail, saying how to
//! start it, when it is not).

use std::sync::Arc;

use async_trait::async_trait;
use proteus_groups::GroupStore;
use proteus_groups::conformance::StoreHarness;
use proteus_groups_postgres::{PostgresGroupStore, PostgresGroupStoreConfig};
use proteus_postgres::test_support::{PrivatePostgres, TestSchema, admin, unreachable, url};

/// A schema of its own, dropped when the harness is.
struct Harness {
    schema: TestSchema,
}

impl Harness {
    fn new() -> Self {
        Harness {
            schema: TestSchema::new("proteus_groups"),
        }
    }
}

#[async_trait]
impl StoreHarness for Harness {
    async fn open(&self) -> Arc<dyn GroupStore> {
        let store = PostgresGroupStore::open(PostgresGroupStoreConfig {
            pool_size_max: 4,
            ..PostgresGroupStoreConfig::new(url(), self.schema.name.clone())
        })
        .await
        .unwrap_or_else(|e| panic!("{}", unreachable(e)));
        Arc::new(store)
    }
}

proteus_groups::group_store_conformance_tests!(Harness::new());

/// An unreachable server is a clear error saying how to start PostgreSQL.
#[tokio::test]
async fn an_unreachable_server_says_how_to_start_it() {
    let error = PostgresGroupStore::open(PostgresGroupStoreConfig {
        connect_timeout_ms: 2_000,
        ..PostgresGroupStoreConfig::new("postgres://postgres@127.0.0.1:1/test", "groups")
    })
    .await
    .err()
    .expect("nothing listens on port 1");
    assert!(error.to_string().contains("pg_ctlcluster"), "{error}");
    let error = PostgresGroupStore::open(PostgresGroupStoreConfig::new(url(), "Bad-Name"))
        .await
        .err()
        .expect("an invalid schema name");
    assert!(error.to_string().contains("invalid schema name"), "{error}");
}

/// Opened only to be read (`create_schema: false`, as `proteus migrate-topics --groups-from`
/// does), a schema that holds no groups is refused, naming it, and nothing is created.
#[tokio::test]
async fn a_store_opened_to_read_refuses_a_missing_schema_and_creates_none() {
    let harness = Harness::new();
    let reading = PostgresGroupStoreConfig {
        create_schema: false,
        ..PostgresGroupStoreConfig::new(url(), harness.schema.name.clone())
    };
    let error = PostgresGroupStore::open(reading.clone())
        .await
        .err()
        .expect("a missing schema is refused");
    let message = error.to_string();
    assert!(
        message.contains(&format!("schema {} at", harness.schema.name))
            && message.contains("holds no consumer groups"),
        "{message}"
    );
    let created = admin()
        .await
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
            &[&harness.schema.name],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(created, 0);
    harness.open().await;
    PostgresGroupStore::open(reading).await.unwrap();
}

/// The PostgreSQL server itself killed (`SIGKILL` to the postmaster and its backends) and
/// started again, which runs crash recovery (a server of the test's own):
/// `proteus_groups::crash`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_survives_a_killed_server_and_the_store_reconnects() {
    let server = PrivatePostgres::start().await;
    let config = PostgresGroupStoreConfig {
        pool_size_max: 2,
        connect_timeout_ms: 1_000,
        pool_wait_timeout_ms: 2_000,
        ..PostgresGroupStoreConfig::new(server.url(), "crash")
    };
    let open = || async {
        let store = PostgresGroupStore::open(config.clone())
            .await
            .unwrap_or_else(|error| panic!("the private PostgreSQL: {error}"));
        Arc::new(store) as Arc<dyn GroupStore>
    };
    // The connection refused, or a backend reporting the postmaster gone (57P01): either
    // names the server.
    let named = format!("PostgreSQL at {}", server.url());
    proteus_groups::crash::progress_survives_a_crash(
        open().await,
        &named,
        || server.kill(),
        server.restart(),
        open(),
    )
    .await;
}

//! What only the PostgreSQL adapter promises: its schema, its migrations, and how it behaves
//! when PostgreSQL goes away.

use std::time::Duration;

use proteus_eventstore::{
    Direction, ErrorKind, EventStore, EventStoreError, ExpectedVersion, ProposedEvent, StreamName,
};
use proteus_eventstore_postgres::{MIGRATIONS, PostgresEventStore, PostgresEventStoreConfig};

use crate::support::{TestSchema, admin, unreachable, url};

fn stream(name: &str) -> StreamName {
    StreamName::parse(name).unwrap()
}

fn event(id: &str) -> ProposedEvent {
    ProposedEvent::new(id, "T", &b"{\"x\":1}"[..])
}

#[tokio::test]
async fn postgres_is_reachable() {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{}", unreachable(e)));
    tokio::spawn(connection);
    let row = client.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_migrate_once() {
    let schema = TestSchema::new("migr");
    let mut opens = Vec::new();
    for _ in 0..4 {
        let config = schema.config();
        opens.push(tokio::spawn(async move {
            PostgresEventStore::open(config).await
        }));
    }
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.unwrap().expect("every concurrent open succeeds"));
    }
    let admin = admin().await;
    let rows = admin
        .query(
            &format!(
                "SELECT version FROM \"{}\".schema_migrations ORDER BY version",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    let wanted: Vec<i32> = MIGRATIONS.list.iter().map(|m| m.version).collect();
    assert_eq!(versions, wanted, "each migration applied once");
    // They all work on the same tables.
    stores[0]
        .append(&stream("m-1"), ExpectedVersion::NoStream, vec![event("a")])
        .await
        .unwrap();
    let info = stores[3].stream_info(&stream("m-1")).await.unwrap();
    assert_eq!(info.last_version, Some(0));
    for store in &stores {
        store.close().await.unwrap();
    }
    // Opening again applies nothing and keeps the data.
    let store = schema.open().await;
    assert_eq!(
        store
            .stream_info(&stream("m-1"))
            .await
            .unwrap()
            .last_version,
        Some(0)
    );
    store.close().await.unwrap();

    // A schema migrated by a newer build is refused.
    admin
        .execute(
            &format!(
                "INSERT INTO \"{}\".schema_migrations (version, name) VALUES (9999, 'future')",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    let error = PostgresEventStore::open(schema.config())
        .await
        .err()
        .expect("a newer schema is refused");
    assert!(error.to_string().contains("newer"), "{error}");
}

#[tokio::test]
async fn stores_in_different_schemas_are_separate() {
    let (a, b) = (TestSchema::new("sepa"), TestSchema::new("sepb"));
    let (store_a, store_b) = (a.open().await, b.open().await);
    store_a
        .append(&stream("s-1"), ExpectedVersion::NoStream, vec![event("a")])
        .await
        .unwrap();
    let error = store_b.stream_info(&stream("s-1")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
    let outcome = store_b
        .append(&stream("s-1"), ExpectedVersion::NoStream, vec![event("a")])
        .await
        .unwrap();
    assert_eq!(outcome.first_position, 1, "each schema has its own feed");
    // A wait in one schema is not woken by the other's appends.
    assert!(
        !store_a
            .wait_for_position(1, Duration::from_millis(300))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn invalid_configurations_are_refused() {
    for config in [
        PostgresEventStoreConfig::new(url(), "Not-A-Schema"),
        PostgresEventStoreConfig {
            pool_size_max: 0,
            ..PostgresEventStoreConfig::new(url(), "fine")
        },
        PostgresEventStoreConfig::new("postgres://u@h:notaport/db", "fine"),
    ] {
        let error = PostgresEventStore::open(config).await.err().unwrap();
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    }
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_with_a_hint() {
    let config = PostgresEventStoreConfig {
        connect_timeout_ms: 2_000,
        ..PostgresEventStoreConfig::new("postgres://postgres@127.0.0.1:1/test", "nowhere")
    };
    let error = PostgresEventStore::open(config).await.err().unwrap();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.to_string().contains("pg_ctlcluster"), "{error}");
}

/// A server that answers but refuses (unknown role, unknown database) is running: the error
/// says what it refused and how to fix the URL, not how to start PostgreSQL, and is not
/// retriable.
#[tokio::test]
async fn a_server_that_refuses_the_connection_says_why_not_to_start_it() {
    let config: tokio_postgres::Config = url().parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("the tests' PostgreSQL URL must name a TCP host, not {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    for (bad_url, refused, fix) in [
        (
            format!("postgres://proteus_no_such_role@{host}:{port}/test"),
            "28000",
            "CREATE ROLE",
        ),
        (
            format!("postgres://{user}@{host}:{port}/proteus_no_such_database"),
            "3D000",
            "CREATE DATABASE",
        ),
    ] {
        let config = PostgresEventStoreConfig::new(bad_url.as_str(), "refused");
        let error = PostgresEventStore::open(config).await.err().unwrap();
        let message = error.to_string();
        assert_ne!(error.kind(), ErrorKind::Unavailable, "{message}");
        assert!(message.contains("refused the connection"), "{message}");
        assert!(message.contains(refused), "{message}");
        assert!(message.contains(fix), "{message}");
        assert!(!message.contains("pg_ctlcluster"), "{message}");
    }
}

/// The health check takes one of the store's pooled connections, so a pool whose every
/// connection stays busy fails it like a server that does not answer; the message then says
/// which of the two it was, so an operator raises `pool_size_max` instead of restarting
/// PostgreSQL. Once a connection is free again the check passes.
#[tokio::test]
async fn a_health_check_on_a_busy_pool_says_the_pool_is_busy() {
    let schema = TestSchema::new("busy");
    let connection = proteus_postgres::Connection {
        url: url(),
        application_name: "proteus-it-busy",
        pool_size_max: 1,
        connect_timeout_ms: 5_000,
        pool_wait_timeout_ms: 5_000,
        statement_timeout_ms: 5_000,
    };
    let migrations = proteus_postgres::Migrations {
        table: "busy_migrations",
        what: "health-check test",
        list: &[],
    };
    let pool = connection.open(&schema.name, &migrations).await.unwrap();
    let timeout = Duration::from_millis(300);
    proteus_postgres::check_health(&pool, &url(), timeout)
        .await
        .expect("healthy with a free connection");
    let held = pool.get().await.unwrap();
    let busy = proteus_postgres::check_health(&pool, &url(), timeout)
        .await
        .unwrap_err();
    assert!(busy.contains("within 300 ms"), "{busy}");
    assert!(
        busy.contains("all 1 pooled connections stayed busy") && busy.contains("pool_size_max"),
        "{busy}"
    );
    drop(held);
    proteus_postgres::check_health(&pool, &url(), timeout)
        .await
        .expect("healthy once the connection is back in the pool");
}

/// Backends of the store are killed (as by a restart of PostgreSQL or a network cut): calls
/// fail with `Unavailable` (an append in flight says it may have been committed), never
/// panic, and the store recovers by itself, waits included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connections_are_unavailable_then_recover() {
    let schema = TestSchema::new("loss");
    let application = format!("it-{}", &schema.name[schema.name.len() - 12..]);
    let separator = if url().contains('?') { '&' } else { '?' };
    let config = PostgresEventStoreConfig {
        url: format!("{}{separator}application_name={application}", url()),
        ..schema.config()
    };
    let store = schema.open_with(config).await;
    let other = schema.open().await; // another process's view, not killed
    let s = stream("loss-1");
    store
        .append(&s, ExpectedVersion::NoStream, vec![event("a")])
        .await
        .unwrap();

    // Hold the stream's row so the next append blocks in PostgreSQL, then kill its backend.
    let mut admin = admin().await;
    let txn = admin.transaction().await.unwrap();
    txn.execute(
        &format!(
            "SELECT 1 FROM \"{}\".streams WHERE name = 'loss-1' FOR UPDATE",
            schema.name
        ),
        &[],
    )
    .await
    .unwrap();
    let blocked = {
        let (store, s) = (store.clone(), s.clone());
        tokio::spawn(async move {
            store
                .append(&s, ExpectedVersion::Exact(0), vec![event("b")])
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killer = crate::support::admin().await;
    let killed = killer
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&application],
        )
        .await
        .unwrap();
    assert!(!killed.is_empty(), "the store's backends were found");
    let error = blocked.await.unwrap().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.to_string().contains("same event ids"), "{error}");
    txn.rollback().await.unwrap();

    // The pool replaces its connections: within a few tries, calls work again, and a retry
    // of the append is exactly-once.
    let mut outcome = None;
    for _ in 0..50 {
        match store
            .append(&s, ExpectedVersion::Exact(0), vec![event("b")])
            .await
        {
            Ok(o) => {
                outcome = Some(o);
                break;
            }
            Err(EventStoreError::Unavailable { .. }) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(other) => panic!("{other}"),
        }
    }
    let outcome = outcome.expect("the store recovered");
    assert_eq!(outcome.first_version, 1);
    let page = store
        .read_stream(&s, 0, Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 2);

    // The LISTEN connection was killed too: a wait still ends when another process appends.
    let head = outcome.last_position;
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.wait_for_position(head, Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    killer
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&application],
        )
        .await
        .unwrap();
    other
        .append(&stream("loss-2"), ExpectedVersion::Any, vec![event("c")])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let woken = waiter.await.unwrap();
    assert!(
        matches!(woken, Ok(true)) || matches!(&woken, Err(e) if e.kind() == ErrorKind::Unavailable),
        "{woken:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not held to its timeout"
    );
    // And once reconnected, waits are woken by notifications again.
    let mut woke = false;
    for _ in 0..50 {
        match store.wait_for_position(head, Duration::from_secs(5)).await {
            Ok(found) => {
                woke = found;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(woke);
    store.close().await.unwrap();
    other.close().await.unwrap();
}

/// Imports take their streams' rows before the writers key, as appends do: racing appends to
/// the same streams, each import either lands or is refused for a precise reason (its versions
/// or positions no longer follow), and nothing deadlocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_racing_appends_to_the_same_streams_never_deadlock() {
    use bytes::Bytes;
    use proteus_eventstore::{RecordedEvent, StreamInfo};

    let schema = TestSchema::new("import_race");
    let store = schema.open().await;
    let names: Vec<StreamName> = (0..3).map(|i| stream(&format!("race-{i}"))).collect();
    let appender = {
        let (store, names) = (store.clone(), names.clone());
        tokio::spawn(async move {
            for round in 0..150 {
                store
                    .append(
                        &names[round % names.len()],
                        ExpectedVersion::Any,
                        vec![event(&format!("append-{round}"))],
                    )
                    .await
                    .unwrap();
            }
        })
    };
    let (mut landed, mut refused) = (0, 0);
    for round in 0..60u64 {
        let name = &names[round as usize % names.len()];
        let version = match store.stream_info(name).await {
            Ok(StreamInfo {
                last_version: Some(last),
                ..
            }) => last + 1,
            _ => 0,
        };
        let imported = RecordedEvent {
            stream: name.clone(),
            version,
            position: 10_000_000 * (round + 1),
            id: format!("import-{round}").into(),
            event_type: "Imported".into(),
            schema_version: None,
            data: Bytes::from_static(b"{}"),
            metadata: None,
            recorded_ms: 1_700_000_000_000,
        };
        match store.import(&[imported]).await {
            Ok(()) => landed += 1,
            Err(EventStoreError::InvalidRequest { .. }) => refused += 1,
            Err(other) => panic!("import {round} failed with {other}"),
        }
    }
    appender.await.unwrap();
    assert!(landed > 0, "{landed} imports landed, {refused} refused");
}

struct PostgresImporter(PostgresEventStore);

#[async_trait::async_trait]
impl proteus_eventstore::import_conformance::Importer for PostgresImporter {
    async fn import(
        &self,
        events: Vec<proteus_eventstore::RecordedEvent>,
    ) -> Result<(), EventStoreError> {
        self.0.import(&events).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_keep_positions_versions_and_times() {
    let schema = TestSchema::new("import_suite");
    let store = schema.open().await;
    let importer = PostgresImporter(store.clone());
    proteus_eventstore::import_conformance::imports_keep_everything(&store, &importer).await;
    store.close().await.unwrap();
}

/// A store opened only to be read (`proteus migrate --from postgres://…`) refuses a schema
/// that holds no event store, and creates nothing.
#[tokio::test]
async fn a_schema_opened_without_creating_must_hold_a_store() {
    let schema = TestSchema::new("must_exist");
    let config = PostgresEventStoreConfig {
        create_schema: false,
        ..schema.config()
    };
    let error = PostgresEventStore::open(config.clone())
        .await
        .err()
        .expect("a missing schema is refused");
    let message = error.to_string();
    assert!(
        message.contains(&format!("schema {} at", schema.name))
            && message.contains("holds no event streams")
            && message.contains("name the schema that does"),
        "{message}"
    );
    // Nothing was created; opening it to serve makes it, after which it opens both ways.
    let created = admin()
        .await
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(created, 0);
    schema.open().await.close().await.unwrap();
    PostgresEventStore::open(config)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
}

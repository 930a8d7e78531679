//! `proteus serve`: the embedded log behind the HTTP API.

use std::sync::Arc;
use std::time::Duration;

use proteus_cache::{RemoteCache, TieredCache, TieredConfig};
use proteus_cache_redis::RedisRemoteCache;
use proteus_eventstore::EventStore;
use proteus_eventstore_embedded::{EmbeddedConfig as EventStoreConfig, EmbeddedEventStore};
use proteus_eventstore_nats::{NatsEventStore, NatsEventStoreConfig};
use proteus_eventstore_postgres::{PostgresEventStore, PostgresEventStoreConfig};
use proteus_experiments_service::{ExperimentService, ExperimentServiceConfig};
use proteus_flagsets_service::exposures::ExposureConfig;
use proteus_flagsets_service::proteus_flagsets::FlagSetName;
use proteus_flagsets_service::usage::UsageConfig;
use proteus_flagsets_service::{FlagService, FlagServiceConfig, files};
use proteus_groups_embedded::EmbeddedGroupStore;
use proteus_groups_nats::{NatsGroupStore, NatsGroupStoreConfig};
use proteus_groups_postgres::{PostgresGroupStore, PostgresGroupStoreConfig};
use proteus_groups_service::coordination::{CoordinatorConfig, LeaseCoordinator};
use proteus_groups_service::proteus_groups::GroupStore;
use proteus_groups_service::{GroupService, ServiceConfig};
use proteus_kv::KvStore;
use proteus_kv_embedded::EmbeddedKvStore;
use proteus_kv_postgres::{PostgresKvStore, PostgresKvStoreConfig};
use proteus_log::port::Log;
use proteus_log_embedded::{EmbeddedConfig, EmbeddedLog};
use proteus_log_nats::{NatsLog, NatsLogConfig};
use proteus_projections::ReadModelStore;
use proteus_projections_embedded::EmbeddedReadModelStore;
use proteus_projections_postgres::{PostgresReadModelConfig, PostgresReadModelStore};
use proteus_projections_service::{ProjectionService, ProjectionServiceConfig, SharedMode};
use proteus_schemas_service::proteus_schemas::RegistryConfig;
use proteus_schemas_service::{SchemaService, UpcastingEventStore};
use proteus_server::health::{
    BACKEND_CHECK_INTERVAL_MS, BACKEND_CHECK_TIMEOUT_MS, BackendCheck, BackendHealth,
};
use proteus_server::ofrep::ApiKey;
use proteus_server::{AppState, HttpConfig};

use crate::health_checks;
use crate::left_behind;
use crate::settings::{CacheBackend, EventStoreBackend, LogBackend, LogFormat, Settings};

/// The settings of the NATS event store `serve --event-store nats://… --event-store-prefix
/// PREFIX` opens: streams `<PREFIX>_EVENTS` and `<PREFIX>_SNAPSHOTS`, subjects under the prefix
/// in lower case, created with `replicas`. `proteus migrate` opens a NATS source or target with
/// the same settings.
pub fn nats_event_store_config(
    url: &str,
    prefix: &str,
    (security, replicas): (&proteus_nats::NatsSecurity, usize),
) -> NatsEventStoreConfig {
    NatsEventStoreConfig {
        stream_prefix: prefix.to_owned(),
        subject_prefix: prefix.to_ascii_lowercase(),
        security: security.clone(),
        replicas,
        ..NatsEventStoreConfig::new(url)
    }
}

/// Opens (creating its streams if missing) the NATS event store `config` describes (from
/// [`nats_event_store_config`]).
pub async fn open_nats_event_store(config: NatsEventStoreConfig) -> Result<NatsEventStore, String> {
    let prefix = config.stream_prefix.clone();
    NatsEventStore::open(config)
        .await
        .map_err(|e| format!("cannot open the NATS event store (stream prefix {prefix}): {e}"))
}

pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("invalid log level {filter:?}: {e}; use e.g. info, debug or proteus_log_embedded=debug,info"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(|e| format!("cannot start logging: {e}"))
}

pub async fn run(settings: Settings) -> Result<(), String> {
    // The recorder must exist before the log opens so partition gauges are registered in it.
    proteus_server::install_metrics_recorder();
    let started = std::time::Instant::now();
    // Every store kept on a shared backend still leaves files here (the instance id, the
    // embedded stores not moved), so the directory is made whatever the backends.
    std::fs::create_dir_all(&settings.data_dir).map_err(|e| {
        format!(
            "cannot create the data directory {}: {e}; pick a writable one with --data-dir (or PROTEUS_DATA_DIR)",
            settings.data_dir.display()
        )
    })?;
    // One check per store on a shared backend, for /readyz and proteus_backend_up.
    let mut backend_checks: Vec<BackendCheck> = Vec::new();
    let log: Arc<dyn Log> = match &settings.log {
        LogBackend::Embedded => Arc::new(
            EmbeddedLog::open(EmbeddedConfig {
                durability: settings.durability,
                retention_check_interval_ms: settings.retention_check_interval_ms,
                ..EmbeddedConfig::new(&settings.data_dir)
            })
            .await
            .map_err(|e| {
                format!(
                    "cannot open the log in {}: {e}",
                    settings.data_dir.display()
                )
            })?,
        ),
        LogBackend::Nats { url, prefix } => {
            let log = Arc::new(
                NatsLog::connect(NatsLogConfig {
                    url: url.clone(),
                    stream_prefix: prefix.clone(),
                    subject_prefix: prefix.to_lowercase(),
                    retention_interval_ms: settings.retention_check_interval_ms,
                    security: settings.nats_security.clone(),
                    replicas: settings.nats_replicas,
                    ..NatsLogConfig::default()
                })
                .await
                .map_err(|e| {
                    format!("cannot open the NATS JetStream log (prefix {prefix}): {e}")
                })?,
            );
            backend_checks.push(health_checks::check("log", "nats", log.clone()));
            log
        }
    };
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {}: {e}; pick another address with --listen (or PROTEUS_LISTEN)",
                settings.listen
            )
        })?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    // Shared groups come with the store of their coordinator leases: NATS keeps both; groups
    // in PostgreSQL keep their leases in the metadata store (opened below).
    let (group_store, shared_groups, group_leases): (
        Arc<dyn GroupStore>,
        bool,
        Option<Arc<dyn KvStore>>,
    ) = match &settings.groups {
        EventStoreBackend::Embedded => (
            Arc::new(EmbeddedGroupStore::open(&settings.data_dir).map_err(|e| {
                format!(
                    "cannot open the consumer-group store in {}: {e}",
                    settings.data_dir.display()
                )
            })?),
            false,
            None,
        ),
        EventStoreBackend::Postgres { url, schema } => {
            let store = Arc::new(
                PostgresGroupStore::open(PostgresGroupStoreConfig::new(url, schema))
                    .await
                    .map_err(|e| {
                        format!("cannot open the PostgreSQL consumer groups (schema {schema}): {e}")
                    })?,
            );
            backend_checks.push(health_checks::check("groups", "postgres", store.clone()));
            (store, true, None)
        }
        EventStoreBackend::Nats { url, prefix } => {
            let store = NatsGroupStore::open(NatsGroupStoreConfig {
                security: settings.nats_security.clone(),
                replicas: settings.nats_replicas,
                bucket_prefix: prefix.clone(),
                ..NatsGroupStoreConfig::new(url)
            })
            .await
            .map_err(|e| format!("cannot open the NATS consumer groups (prefix {prefix}): {e}"))?;
            let leases: Arc<dyn KvStore> = Arc::new(store.lease_store());
            let store = Arc::new(store);
            backend_checks.push(health_checks::check("groups", "nats", store.clone()));
            (store, true, Some(leases))
        }
    };
    let groups = GroupService::open(
        log.clone(),
        group_store.clone(),
        ServiceConfig {
            shared: shared_groups,
            ..ServiceConfig::default()
        },
    )
    .await
    .map_err(|e| format!("cannot load the consumer groups: {e}"))?;
    let remote_cache = open_remote_cache(&settings, &mut backend_checks).await?;
    let flag_config = FlagServiceConfig {
        exposures: ExposureConfig {
            sample_rate: settings.flag_exposure_sample_rate,
            ..ExposureConfig::default()
        },
        usage: UsageConfig {
            flush_ms: settings.flag_usage_flush_ms,
        },
        // Revisions never change: no invalidation, so no log.
        revision_cache: Some(
            TieredCache::open(TieredConfig::new("flagsets"), remote_cache.clone(), None)
                .await
                .map_err(|e| format!("cannot open the flag-set revision cache: {e}"))?,
        ),
    };
    let flags = FlagService::open_with(log.clone(), flag_config)
        .await
        .map_err(|e| format!("cannot load the flag sets: {e}"))?;
    if let Some(path) = &settings.flags {
        let set = FlagSetName::default_set();
        files::apply(&flags, &set, path)
            .await
            .map_err(|e| format!("--flags: {e}"))?;
        tokio::spawn(files::watch(
            flags.clone(),
            set,
            path.clone(),
            Duration::from_millis(settings.flags_watch_ms),
            std::future::pending(),
        ));
    }
    let events: Arc<dyn EventStore> = match &settings.event_store {
        EventStoreBackend::Embedded => Arc::new(
            EmbeddedEventStore::open(&settings.data_dir, EventStoreConfig::default()).map_err(
                |e| {
                    format!(
                        "cannot open the event store in {}: {e}",
                        settings.data_dir.display()
                    )
                },
            )?,
        ),
        EventStoreBackend::Postgres { url, schema } => {
            let store = Arc::new(
                PostgresEventStore::open(PostgresEventStoreConfig::new(url, schema))
                    .await
                    .map_err(|e| {
                        format!("cannot open the PostgreSQL event store (schema {schema}): {e}")
                    })?,
            );
            backend_checks.push(health_checks::check(
                "event_store",
                "postgres",
                store.clone(),
            ));
            store
        }
        EventStoreBackend::Nats { url, prefix } => {
            let mut config = nats_event_store_config(
                url,
                prefix,
                (&settings.nats_security, settings.nats_replicas),
            );
            if let Some(ids) = settings.nats_id_cache_events_max {
                config.id_cache_events_max = ids;
            }
            let store = Arc::new(open_nats_event_store(config).await?);
            backend_checks.push(health_checks::check("event_store", "nats", store.clone()));
            store
        }
    };
    let schemas = SchemaService::open(
        log.clone(),
        RegistryConfig::default(),
        settings.schema_policy,
    )
    .await
    .map_err(|e| format!("cannot load the schema registry: {e}"))?;
    let read_models: Arc<dyn ReadModelStore> = match &settings.read_models {
        EventStoreBackend::Embedded => Arc::new(
            EmbeddedReadModelStore::open(&settings.data_dir).map_err(|e| {
                format!(
                    "cannot open the read-model store in {}: {e}",
                    settings.data_dir.display()
                )
            })?,
        ),
        EventStoreBackend::Postgres { url, schema } => {
            let store = Arc::new(
                PostgresReadModelStore::open(PostgresReadModelConfig::new(url, schema))
                    .await
                    .map_err(|e| {
                        format!("cannot open the PostgreSQL read models (schema {schema}): {e}")
                    })?,
            );
            backend_checks.push(health_checks::check(
                "read_models",
                "postgres",
                store.clone(),
            ));
            store
        }
        EventStoreBackend::Nats { .. } => {
            return Err("read models are kept embedded or in PostgreSQL, not in NATS".into());
        }
    };
    // Projections read events upcast to their latest schema, as HTTP readers do.
    let upcasting: Arc<dyn EventStore> =
        Arc::new(UpcastingEventStore::new(events.clone(), schemas.clone()));
    let cache = open_cache(&settings, log.clone(), remote_cache).await?;
    let metadata: Arc<dyn KvStore> = match &settings.metadata {
        EventStoreBackend::Embedded => {
            let path = settings.data_dir.join(proteus_kv_embedded::FILE_NAME);
            Arc::new(
                EmbeddedKvStore::open(&path).map_err(|e| {
                    format!("cannot open the metadata store {}: {e}", path.display())
                })?,
            )
        }
        EventStoreBackend::Postgres { url, schema } => {
            let store = Arc::new(
                PostgresKvStore::open(PostgresKvStoreConfig::new(url, schema))
                    .await
                    .map_err(|e| {
                        format!("cannot open the PostgreSQL metadata store (schema {schema}): {e}")
                    })?,
            );
            backend_checks.push(health_checks::check("metadata", "postgres", store.clone()));
            store
        }
        EventStoreBackend::Nats { .. } => {
            return Err("metadata is kept embedded or in PostgreSQL, not in NATS (JetStream cannot commit several keys atomically); consumer groups can keep their leases in NATS with --groups nats://…".into());
        }
    };
    // One id for this instance in every lease it takes (groups, projections, experiments),
    // kept in the data directory so a restart after kill -9 takes its own leases back at once
    // instead of waiting for them to expire.
    let instance_id = instance_id(&settings.data_dir)?;
    // Shared read models with shared metadata: each projection runs on one instance (a lease);
    // with embedded metadata every instance would take every lease, so they are not shared.
    let shared_projections = matches!(settings.read_models, EventStoreBackend::Postgres { .. })
        && matches!(settings.metadata, EventStoreBackend::Postgres { .. });
    let projections = if shared_projections {
        tracing::info!(%instance_id,
            "read models are shared: each projection runs on one instance, by lease");
        ProjectionService::open_shared(
            upcasting,
            read_models.clone(),
            ProjectionServiceConfig::default(),
            cache,
            SharedMode::new(metadata.clone(), instance_id.clone()),
        )
        .await
    } else {
        if matches!(settings.read_models, EventStoreBackend::Postgres { .. }) {
            tracing::warn!(
                "read models are in PostgreSQL but metadata is embedded: instances do not coordinate projections (use --metadata postgres://… to share them)"
            );
        }
        ProjectionService::open_with_cache(
            upcasting,
            read_models.clone(),
            ProjectionServiceConfig::default(),
            cache,
        )
        .await
    }
    .map_err(|e| format!("cannot start the projections: {e}"))?;
    // Shared groups: one coordinator per group, chosen by a lease in the metadata store.
    let coordinator = if shared_groups {
        let advertise_url = settings
            .advertise_url
            .clone()
            .unwrap_or_else(|| default_advertise_url(address));
        tracing::info!(%instance_id, %advertise_url,
            "consumer groups are shared: coordinating groups by lease");
        Some(
            LeaseCoordinator::start(
                group_leases.unwrap_or_else(|| metadata.clone()),
                groups.clone(),
                CoordinatorConfig::new(instance_id.clone(), advertise_url),
            )
            .map_err(|e| format!("cannot coordinate the consumer groups: {e}"))?,
        )
    } else {
        None
    };
    let experiments = ExperimentService::open(
        log.clone(),
        metadata,
        flags.clone(),
        ExperimentServiceConfig {
            instance_id: instance_id.clone(),
            ..ExperimentServiceConfig::default()
        },
    )
    .await
    .map_err(|e| format!("cannot load the experiments: {e}"))?;
    let flag_api_keys = settings
        .flag_api_keys
        .iter()
        .map(|key| ApiKey {
            name: key.name.clone(),
            flag_set: key.flag_set.clone(),
            secret: key.secret.clone(),
        })
        .collect();
    let (state, shutdown) = AppState::new(
        log.clone(),
        groups.clone(),
        flags.clone(),
        HttpConfig {
            body_bytes_max: settings.http_body_bytes_max,
            flag_api_keys,
            ..HttpConfig::default()
        },
    );
    let state = match &coordinator {
        Some(coordinator) => state.with_group_router(Arc::new(coordinator.clone())),
        None => state,
    };
    // The first round before serving, so /readyz reports every backend from the start.
    let backend_health = BackendHealth::new(backend_checks);
    let check_timeout = Duration::from_millis(BACKEND_CHECK_TIMEOUT_MS);
    backend_health.check_now(check_timeout).await;
    tokio::spawn(backend_health.clone().run(
        Duration::from_millis(BACKEND_CHECK_INTERVAL_MS),
        check_timeout,
        {
            let shutdown = shutdown.clone();
            async move { shutdown.triggered().await }
        },
    ));
    let state = state
        .with_event_store(events.clone())
        .with_schemas(schemas)
        .with_projections(projections.clone())
        .with_experiments(experiments.clone())
        .with_backend_health(backend_health);
    left_behind::warn_of_data_not_served(
        &settings,
        left_behind::Served {
            log: log.as_ref(),
            groups: group_store.as_ref(),
            read_models: read_models.as_ref(),
            events: events.as_ref(),
        },
    )
    .await;
    // Installed before announcing readiness: a SIGTERM sent as soon as the line below appears
    // must stop the server cleanly, not kill it with the signal's default action.
    let termination = termination_signals()?;
    tracing::info!(
        address = %format!("http://{address}"),
        data_dir = %settings.data_dir.display(),
        durability = %settings.durability,
        log = %settings.log,
        event_store = %settings.event_store,
        read_models = %settings.read_models,
        metadata = %settings.metadata,
        groups = %settings.groups,
        cache = %settings.cache,
        worker_threads = settings.worker_threads,
        startup_ms = started.elapsed().as_millis() as u64,
        "Proteus is serving"
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        termination.wait().await;
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        signal.trigger();
        let _ = stop_tx.send(());
    });
    let server = tokio::spawn(proteus_server::serve(listener, state, async move {
        let _ = stop_rx.await;
    }));
    // Wait for the server to drain; bounded so a stuck client cannot hold the process.
    let mut server = server;
    let finished = tokio::select! {
        result = &mut server => Some(result),
        () = async {
            shutdown_started(&shutdown).await;
            tokio::time::sleep(Duration::from_millis(settings.shutdown_timeout_ms)).await;
        } => None,
    };
    match finished {
        Some(Ok(Ok(()))) => {}
        Some(Ok(Err(e))) => return Err(format!("the HTTP server failed: {e}")),
        Some(Err(e)) => return Err(format!("the HTTP server task failed: {e}")),
        None => tracing::warn!(
            timeout_ms = settings.shutdown_timeout_ms,
            "requests still in flight after the shutdown timeout; closing anyway"
        ),
    }
    // Closing is bounded too: with NATS or PostgreSQL out of reach (stopped first, or a
    // network cut) a step would retry for as long as it is let, and the process must stop.
    // What was acknowledged is stored already, so a step cut short loses nothing answered.
    let closing = Closing::new();
    closing
        .step("flushing flag usage", flags.flush_usage())
        .await;
    closing
        .step("closing experiments", experiments.close())
        .await;
    closing
        .step("stopping consumer groups", groups.shutdown())
        .await;
    if let Some(coordinator) = &coordinator {
        // Progress is saved: let other instances take the groups over at once.
        closing
            .step("releasing group coordination", coordinator.release_all())
            .await;
    }
    closing
        .step("closing projections", projections.close())
        .await;
    if let Some(Err(e)) = closing
        .step("closing the event store", events.close())
        .await
    {
        tracing::warn!(error = %e, "closing the event store failed");
    }
    if let Some(result) = closing.step("shutting down the log", log.shutdown()).await {
        result.map_err(|e| format!("shutting down the log failed: {e}"))?;
    }
    if closing.cut_short.get() == 0 {
        tracing::info!("stopped cleanly; all acknowledged events are on disk");
    } else {
        tracing::warn!(
            steps_cut_short = closing.cut_short.get(),
            "stopped; what was acknowledged is stored, but not every store closed in time"
        );
    }
    Ok(())
}

/// Longest time closing the stores may take once requests have drained.
const CLOSE_TIMEOUT_MS: u64 = 10_000;
/// A step still gets this long once `CLOSE_TIMEOUT_MS` is spent, so that the stores closed
/// last (the log) close cleanly after an earlier step on an unreachable backend used it all.
const CLOSE_STEP_MIN_MS: u64 = 1_000;

/// The closing steps of a shutdown, sharing one time budget.
struct Closing {
    deadline: tokio::time::Instant,
    cut_short: std::cell::Cell<u32>,
}

impl Closing {
    fn new() -> Closing {
        Closing {
            deadline: tokio::time::Instant::now() + Duration::from_millis(CLOSE_TIMEOUT_MS),
            cut_short: std::cell::Cell::new(0),
        }
    }

    /// Runs `step` until it ends or the budget is spent (at least `CLOSE_STEP_MIN_MS`); its
    /// output, or `None` when it was cut short.
    async fn step<T>(&self, what: &str, step: impl std::future::Future<Output = T>) -> Option<T> {
        let floor = tokio::time::Instant::now() + Duration::from_millis(CLOSE_STEP_MIN_MS);
        let until = self.deadline.max(floor);
        match tokio::time::timeout_at(until, step).await {
            Ok(output) => Some(output),
            Err(_) => {
                self.cut_short.set(self.cut_short.get() + 1);
                tracing::warn!(
                    step = what,
                    close_timeout_ms = CLOSE_TIMEOUT_MS,
                    "did not finish in time (a backend out of reach?); stopping anyway"
                );
                None
            }
        }
    }
}

/// `http://<bound address>`; 127.0.0.1 (or ::1) when bound to every interface, which other
/// instances on the same machine reach (elsewhere, set --advertise-url).
fn default_advertise_url(address: std::net::SocketAddr) -> String {
    let mut address = address;
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
        tracing::warn!(%address, "listening on every interface: advertising {address} to other instances; set --advertise-url when they run on other machines");
    }
    format!("http://{address}")
}

async fn shutdown_started(signal: &proteus_server::ShutdownSignal) {
    signal.triggered().await;
}

/// SIGTERM and SIGINT, caught from the moment this returns.
struct TerminationSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

fn termination_signals() -> Result<TerminationSignals, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| format!("cannot install the {name} handler: {e}"))
    };
    Ok(TerminationSignals {
        terminate: install(SignalKind::terminate(), "SIGTERM")?,
        interrupt: install(SignalKind::interrupt(), "SIGINT")?,
    })
}

impl TerminationSignals {
    async fn wait(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// The shared L2 (`--cache redis://…`), if any, with its health check: one connection for
/// every tiered cache.
async fn open_remote_cache(
    settings: &Settings,
    backend_checks: &mut Vec<BackendCheck>,
) -> Result<Option<Arc<dyn RemoteCache>>, String> {
    match &settings.cache {
        CacheBackend::Memory => Ok(None),
        CacheBackend::Redis { url, prefix } => {
            let cache = Arc::new(
                RedisRemoteCache::connect_with(url, prefix, &settings.cache_tls)
                    .await
                    .map_err(|e| format!("cannot open the Redis cache (prefix {prefix}): {e}"))?,
            );
            backend_checks.push(health_checks::check("cache", "redis", cache.clone()));
            Ok(Some(cache))
        }
    }
}

/// The cache of projections' document reads, in front of `remote` (the L2, if any).
/// Invalidations go through the log whenever other instances may hold entries: with a Redis
/// L2, or with a log several instances share (NATS). Read models in PostgreSQL may be written
/// by other instances, whose invalidations only reach this one through a shared log: without
/// one there is no cache (`memory`) or a start-up error (Redis), never a stale read. The
/// follower runs for the life of the process.
async fn open_cache(
    settings: &Settings,
    log: Arc<dyn Log>,
    remote: Option<Arc<dyn RemoteCache>>,
) -> Result<Option<TieredCache>, String> {
    let shared_log = matches!(settings.log, LogBackend::Nats { .. });
    let shared_models = matches!(settings.read_models, EventStoreBackend::Postgres { .. });
    if shared_models && !shared_log {
        if remote.is_some() {
            return Err(
                "--cache redis://… with PostgreSQL read models needs a log every \
                 instance shares (--storage-log nats://…): cache invalidations travel through \
                 it; without one use --cache memory"
                    .into(),
            );
        }
        tracing::info!(
            "projection documents are not cached: PostgreSQL read models without a shared \
             log (--storage-log nats://…) could be changed by another instance unseen"
        );
        return Ok(None);
    }
    let l2 = remote;
    let publish = l2.is_some() || shared_log;
    let cache = TieredCache::open(TieredConfig::new("projections"), l2, publish.then_some(log))
        .await
        .map_err(|e| format!("cannot open the cache: {e}"))?;
    cache
        .follow_invalidations()
        .await
        .map_err(|e| format!("cannot follow cache invalidations: {e}"))?;
    Ok(Some(cache))
}

/// The instance id in `<data_dir>/instance.id`, created on first start.
fn instance_id(data_dir: &std::path::Path) -> Result<String, String> {
    let path = data_dir.join("instance.id");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) | Err(_) => {
            let id = uuid::Uuid::now_v7().simple().to_string();
            std::fs::write(&path, &id).map_err(|e| {
                format!(
                    "cannot write the instance id to {}: {e}; check that the data directory is writable",
                    path.display()
                )
            })?;
            Ok(id)
        }
    }
}

//! `proteus serve` settings: flags override `PROTEUS_*` environment variables, which override
//! the `--config` TOML file, which overrides the defaults.

use proteus_schemas_service::proteus_schemas::SchemaPolicy;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use proteus_log_embedded::Durability;
use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Whether `text` names a NATS server: `nats://…`, or `tls://…` (TLS required).
pub fn is_nats_url(text: &str) -> bool {
    text.starts_with("nats://") || text.starts_with("tls://")
}

/// TLS and login files for every NATS connection, for a server whose certificate a private CA
/// signed, that asks clients for a certificate, or that logs users in by credentials file or
/// NKEY. Shared by `serve`, `migrate` and `migrate-topics`.
#[derive(Args, Debug, Default, Clone)]
pub struct NatsSecurityArgs {
    /// PEM file of the CAs that may sign the NATS server's certificate (besides the system's);
    /// TLS is then required (in the config file: `nats_tls_ca` under `[storage]`).
    #[arg(long, env = "PROTEUS_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// PEM certificate Proteus presents to NATS servers that verify clients, with
    /// --nats-tls-key (in the config file: `nats_tls_cert` under `[storage]`).
    #[arg(
        long,
        env = "PROTEUS_NATS_TLS_CERT",
        value_name = "FILE",
        requires = "nats_tls_key"
    )]
    pub nats_tls_cert: Option<PathBuf>,
    /// PEM private key of --nats-tls-cert (in the config file: `nats_tls_key` under
    /// `[storage]`).
    #[arg(
        long,
        env = "PROTEUS_NATS_TLS_KEY",
        value_name = "FILE",
        requires = "nats_tls_cert"
    )]
    pub nats_tls_key: Option<PathBuf>,
    /// NATS credentials file (`.creds`: a user JWT and its seed, as `nsc` or a NATS service
    /// makes it), for a server in operator mode (in the config file: `nats_creds` under
    /// `[storage]`).
    #[arg(
        long,
        env = "PROTEUS_NATS_CREDS",
        value_name = "FILE",
        conflicts_with = "nats_nkey"
    )]
    pub nats_creds: Option<PathBuf>,
    /// File holding a NATS user's NKEY seed (`SU…`), for a server that lists users by public
    /// key (in the config file: `nats_nkey` under `[storage]`).
    #[arg(long, env = "PROTEUS_NATS_NKEY", value_name = "FILE")]
    pub nats_nkey: Option<PathBuf>,
}

impl NatsSecurityArgs {
    /// The files of the flags alone, for commands without a config file (`migrate`,
    /// `migrate-topics`).
    pub fn files(&self) -> proteus_nats::NatsSecurity {
        self.clone().resolve(proteus_nats::NatsSecurity::default())
    }

    /// The files, each flag (or its variable) taking precedence over the config file's key
    /// (`file`: what `[storage]` gives, `NatsSecurity::default()` without a config file).
    pub fn resolve(self, file: proteus_nats::NatsSecurity) -> proteus_nats::NatsSecurity {
        proteus_nats::NatsSecurity {
            ca_file: self.nats_tls_ca.or(file.ca_file),
            cert_file: self.nats_tls_cert.or(file.cert_file),
            key_file: self.nats_tls_key.or(file.key_file),
            creds_file: self.nats_creds.or(file.creds_file),
            nkey_file: self.nats_nkey.or(file.nkey_file),
        }
    }
}

/// Replicas of what Proteus creates on NATS JetStream (partition streams, the event store's
/// streams, the groups' buckets). Shared by `serve`, `migrate` and `migrate-topics`.
#[derive(Args, Debug, Default, Clone)]
pub struct NatsReplicasArg {
    /// JetStream replicas of each stream and key-value bucket Proteus creates on NATS: 1, 3 or
    /// 5 (a cluster of 3 keeps serving with one server down, of 5 with two); streams that
    /// exist keep theirs [default: 1] (in the config file: `nats_replicas` under `[storage]`).
    #[arg(long, env = "PROTEUS_NATS_REPLICAS", value_name = "N", value_parser = parse_nats_replicas)]
    pub nats_replicas: Option<usize>,
}

impl NatsReplicasArg {
    /// The flag's value, or 1 (commands without a config file).
    pub fn replicas(&self) -> usize {
        self.nats_replicas.unwrap_or(NATS_REPLICAS_DEFAULT)
    }
}

pub const NATS_REPLICAS_DEFAULT: usize = 1;

/// The largest `--nats-id-cache-events-max`, the store's own bound.
pub use proteus_eventstore_nats::ID_CACHE_EVENTS_MAX as NATS_ID_CACHE_EVENTS_MAX;

/// `--nats-replicas` (or `nats_replicas`): 1, 3 or 5, as JetStream allows.
pub fn parse_nats_replicas(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(replicas) if [1, 3, 5].contains(&replicas) => Ok(replicas),
        _ => Err(format!(
            "nats_replicas must be 1, 3 or 5, got {text:?}: JetStream keeps an odd number of copies so that a majority survives (3 with one server down, 5 with two); use 1 on a single NATS server"
        )),
    }
}

/// Flags of `proteus serve`; each can also come from the environment variable shown, or from
/// the key of the same name in the config file.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flag names with '_').
    #[arg(long, env = "PROTEUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve HTTP on [default: 127.0.0.1:7070].
    #[arg(long, env = "PROTEUS_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Directory holding all data [default: ./proteus-data].
    #[arg(long, env = "PROTEUS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log output format [default: pretty].
    #[arg(long, env = "PROTEUS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `proteus_log_embedded=debug,info` [default: info].
    #[arg(long, env = "PROTEUS_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// When appends are acknowledged: `fsync` (after fdatasync; survives power loss) or
    /// `interval_ms=N` (after the write; fdatasync every N ms) [default: fsync].
    #[arg(long, env = "PROTEUS_DURABILITY", value_name = "MODE")]
    pub durability: Option<String>,
    /// Largest HTTP request body accepted [default: 16777216].
    #[arg(long, env = "PROTEUS_HTTP_BODY_BYTES_MAX", value_name = "BYTES")]
    pub http_body_bytes_max: Option<usize>,
    /// How often retention deletes expired segments [default: 30000].
    #[arg(long, env = "PROTEUS_RETENTION_CHECK_INTERVAL_MS", value_name = "MS")]
    pub retention_check_interval_ms: Option<u64>,
    /// Longest wait for requests in flight at shutdown [default: 30000].
    #[arg(long, env = "PROTEUS_SHUTDOWN_TIMEOUT_MS", value_name = "MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// Threads running requests and background work [default: the machine's cores]; fewer may
    /// suit a server sharing its cores with its backend (`/metrics` shows how busy they are).
    #[arg(long, env = "PROTEUS_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<usize>,
    /// A flagd flag file, or a directory of them, loaded into the `default` flag set and
    /// reloaded when it changes.
    #[arg(long, env = "PROTEUS_FLAGS", value_name = "PATH")]
    pub flags: Option<PathBuf>,
    /// How often the flag files are checked for changes [default: 1000].
    #[arg(long, env = "PROTEUS_FLAGS_WATCH_MS", value_name = "MS")]
    pub flags_watch_ms: Option<u64>,
    /// API keys for OFREP and /v1/flagsets, comma-separated `NAME:FLAG_SET:SECRET`; with any
    /// configured, every flag request needs one (in the config file: `[[flag_api_keys]]` tables
    /// with `name`, `flag_set`, `secret`).
    #[arg(
        long,
        env = "PROTEUS_FLAG_API_KEYS",
        value_name = "KEYS",
        hide_env_values = true
    )]
    pub flag_api_keys: Option<String>,
    /// Share of targeting keys whose OFREP evaluations are recorded as exposure events in the
    /// topic `proteus.flags.exposures`, 0 (off) to 1 (all) [default: 0].
    #[arg(long, env = "PROTEUS_FLAG_EXPOSURE_SAMPLE_RATE", value_name = "RATE")]
    pub flag_exposure_sample_rate: Option<f64>,
    /// How often flags' last-evaluation times are saved for the stale-flag report (a kill -9
    /// loses at most this much usage) [default: 60000].
    #[arg(long, env = "PROTEUS_FLAG_USAGE_FLUSH_MS", value_name = "MS")]
    pub flag_usage_flush_ms: Option<u64>,
    /// Appends of event types without a registered schema: `lenient` accepts them, `strict`
    /// refuses them [default: lenient].
    #[arg(long, env = "PROTEUS_SCHEMA_POLICY", value_name = "POLICY")]
    pub schema_policy: Option<String>,
    /// Where event streams are stored: `embedded` (`eventstore.redb` in the data directory), a
    /// PostgreSQL URL such as `postgres://proteus@db:5432/proteus`, or a NATS JetStream URL
    /// such as `nats://127.0.0.1:4222`; several instances can share the last two
    /// [default: embedded] (in the config file: `event_store` under `[storage]`).
    #[arg(
        long,
        env = "PROTEUS_EVENT_STORE",
        value_name = "BACKEND",
        hide_env_values = true
    )]
    pub event_store: Option<String>,
    /// The PostgreSQL schema of a PostgreSQL event store, created if missing
    /// [default: proteus_eventstore] (in the config file: `event_store_schema` under
    /// `[storage]`).
    #[arg(long, env = "PROTEUS_EVENT_STORE_SCHEMA", value_name = "SCHEMA")]
    pub event_store_schema: Option<String>,
    /// The JetStream stream prefix of a NATS event store: its streams are `<PREFIX>_EVENTS`
    /// and `<PREFIX>_SNAPSHOTS` [default: PROTEUS_ES] (in the config file:
    /// `event_store_prefix` under `[storage]`).
    #[arg(long, env = "PROTEUS_EVENT_STORE_PREFIX", value_name = "PREFIX")]
    pub event_store_prefix: Option<String>,
    /// Event ids a NATS event store keeps in memory for idempotent retries, over all streams
    /// (10 to 30 bytes each); past it the least recently written streams' ids are dropped and
    /// read again from their histories on their next append. Size it to the ids of the
    /// streams being written [default: 6000000] (in the config file:
    /// `nats_id_cache_events_max` under `[storage]`).
    #[arg(long, env = "PROTEUS_NATS_ID_CACHE_EVENTS_MAX", value_name = "IDS")]
    pub nats_id_cache_events_max: Option<usize>,
    /// Where projections keep their read models: `embedded` (`readmodels.redb` in the data
    /// directory) or a PostgreSQL URL [default: embedded] (in the config file: `read_models`
    /// under `[storage]`).
    #[arg(
        long,
        env = "PROTEUS_READ_MODELS",
        value_name = "BACKEND",
        hide_env_values = true
    )]
    pub read_models: Option<String>,
    /// The PostgreSQL schema of PostgreSQL read models, created if missing
    /// [default: proteus_readmodels] (in the config file: `read_models_schema` under
    /// `[storage]`).
    #[arg(long, env = "PROTEUS_READ_MODELS_SCHEMA", value_name = "SCHEMA")]
    pub read_models_schema: Option<String>,
    /// Where key-value metadata (experiments' per-unit state and checkpoints) is kept:
    /// `embedded` (`kv.redb` in the data directory) or a PostgreSQL URL [default: embedded]
    /// (in the config file: `metadata` under `[storage]`).
    #[arg(
        long,
        env = "PROTEUS_METADATA",
        value_name = "BACKEND",
        hide_env_values = true
    )]
    pub metadata: Option<String>,
    /// The PostgreSQL schema of PostgreSQL metadata, created if missing
    /// [default: proteus_metadata] (in the config file: `metadata_schema` under `[storage]`).
    #[arg(long, env = "PROTEUS_METADATA_SCHEMA", value_name = "SCHEMA")]
    pub metadata_schema: Option<String>,
    /// Where consumer groups' settings and progress are kept: `embedded` (`groups.redb` in the
    /// data directory), a PostgreSQL URL or a NATS URL (`nats://…`, JetStream key-value
    /// buckets), which several instances share: each group is then coordinated by one
    /// instance at a time, chosen by a lease, and the others forward its requests there. Needs
    /// `--storage-log nats://…`; groups in PostgreSQL also need `--metadata postgres://…` (where
    /// their leases live), groups in NATS keep their leases in NATS [default: embedded] (in the
    /// config file: `groups` under `[storage]`).
    #[arg(
        long,
        env = "PROTEUS_GROUPS",
        value_name = "BACKEND",
        hide_env_values = true
    )]
    pub groups: Option<String>,
    /// The PostgreSQL schema of PostgreSQL consumer groups, created if missing
    /// [default: proteus_groups] (in the config file: `groups_schema` under `[storage]`).
    #[arg(long, env = "PROTEUS_GROUPS_SCHEMA", value_name = "SCHEMA")]
    pub groups_schema: Option<String>,
    /// With groups in NATS: the prefix of their key-value buckets (`<PREFIX>_GROUPS`,
    /// `<PREFIX>_LEASES`), so several deployments can share one NATS [default: PROTEUS] (in the
    /// config file: `groups_prefix` under `[storage]`).
    #[arg(long, env = "PROTEUS_GROUPS_PREFIX", value_name = "PREFIX")]
    pub groups_prefix: Option<String>,
    /// The base URL other instances use to reach this one, to forward requests of the consumer
    /// groups it coordinates [default: http://<listen address> with the bound port; 127.0.0.1
    /// when listening on every interface].
    #[arg(long, env = "PROTEUS_ADVERTISE_URL", value_name = "URL")]
    pub advertise_url: Option<String>,
    /// Where topics are stored: `embedded` (segment files in the data directory) or a NATS
    /// JetStream URL such as `nats://127.0.0.1:4222`, which several instances can share
    /// [default: embedded] (in the config file: `log` under `[storage]`).
    #[arg(
        long,
        env = "PROTEUS_STORAGE_LOG",
        value_name = "BACKEND",
        hide_env_values = true
    )]
    pub storage_log: Option<String>,
    /// With a NATS log: the prefix of its JetStream stream and subject names, so several
    /// Proteus deployments can share one NATS [default: PROTEUS] (in the config file:
    /// `log_prefix` under `[storage]`).
    #[arg(long, env = "PROTEUS_STORAGE_LOG_PREFIX", value_name = "PREFIX")]
    pub storage_log_prefix: Option<String>,
    /// The cache of projections' document reads: `memory` (an in-process L1 only) or a Redis
    /// URL such as `redis://127.0.0.1:6379` (`rediss://` for TLS,
    /// `redis+cluster://HOST:PORT,HOST:PORT` for a Redis Cluster,
    /// `redis+sentinel://SENTINEL:26379/PRIMARY` through Sentinel), an L2 shared by every
    /// instance behind the L1; invalidations travel through the log [default: memory] (in the
    /// config file: `cache` under `[storage]`).
    #[arg(
        long,
        env = "PROTEUS_CACHE",
        value_name = "BACKEND",
        hide_env_values = true
    )]
    pub cache: Option<String>,
    /// With a Redis cache: the prefix of every key, so several deployments can share one Redis
    /// [default: proteus:] (in the config file: `cache_prefix` under `[storage]`).
    #[arg(long, env = "PROTEUS_CACHE_PREFIX", value_name = "PREFIX")]
    pub cache_prefix: Option<String>,
    /// With a `rediss://` cache: a PEM file of the CAs that may sign Redis's certificate,
    /// trusted instead of the system's (in the config file: `cache_tls_ca` under `[storage]`).
    #[arg(long, env = "PROTEUS_CACHE_TLS_CA", value_name = "FILE")]
    pub cache_tls_ca: Option<PathBuf>,
    /// With a `rediss://` cache: a PEM certificate Proteus presents to a Redis that checks
    /// clients (`tls-auth-clients yes`), with --cache-tls-key (in the config file:
    /// `cache_tls_cert` under `[storage]`).
    #[arg(long, env = "PROTEUS_CACHE_TLS_CERT", value_name = "FILE")]
    pub cache_tls_cert: Option<PathBuf>,
    /// PEM private key (unencrypted) of --cache-tls-cert (in the config file: `cache_tls_key`
    /// under `[storage]`).
    #[arg(long, env = "PROTEUS_CACHE_TLS_KEY", value_name = "FILE")]
    pub cache_tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub nats_security: NatsSecurityArgs,
    #[command(flatten)]
    pub nats_replicas: NatsReplicasArg,
}

/// Where cached reads are kept besides the in-process L1.
#[derive(Clone, PartialEq, Eq)]
pub enum CacheBackend {
    /// The in-process L1 only.
    Memory,
    /// Redis as a shared L2, keys prefixed by `prefix`.
    Redis { url: String, prefix: String },
}

/// As an operator reads it at start-up: the server without its password.
impl std::fmt::Display for CacheBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheBackend::Memory => f.write_str("memory"),
            CacheBackend::Redis { url, prefix } => {
                write!(f, "{} (key prefix {prefix:?})", proteus_redact::redact(url))
            }
        }
    }
}

impl std::fmt::Debug for CacheBackend {
    // The URL may carry a password: never print it whole.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Longest Redis key prefix of a Redis cache, in bytes.
pub const CACHE_PREFIX_BYTES_MAX: usize = 64;

impl CacheBackend {
    fn parse(text: &str, prefix: Option<String>) -> Result<Self, String> {
        if text == "memory" {
            return Ok(CacheBackend::Memory);
        }
        if proteus_cache_redis::is_redis_url(text) {
            let prefix = prefix.unwrap_or_else(|| "proteus:".into());
            // Without a prefix Proteus's keys would mix with whatever else the Redis holds.
            if prefix.is_empty()
                || prefix.len() > CACHE_PREFIX_BYTES_MAX
                || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                let shown: String = prefix.chars().take(CACHE_PREFIX_BYTES_MAX).collect();
                return Err(format!(
                    "cache_prefix must be 1 to {CACHE_PREFIX_BYTES_MAX} bytes without spaces or control characters (such as 'shop:'), got {shown:?}"
                ));
            }
            return Ok(CacheBackend::Redis {
                url: text.to_owned(),
                prefix,
            });
        }
        let shown: String = text.chars().take(24).collect();
        Err(format!(
            "cache must be 'memory' or a Redis URL (redis://HOST:PORT, rediss:// for TLS, redis+cluster://HOST:PORT,HOST:PORT for a Redis Cluster, redis+sentinel://SENTINEL:26379/PRIMARY through Sentinel), got {shown:?}"
        ))
    }
}

/// Where topics are stored.
#[derive(Clone, PartialEq, Eq)]
pub enum LogBackend {
    /// Segment files in the data directory.
    Embedded,
    /// NATS JetStream: a stream per topic, named `<prefix>_<topic>`.
    Nats { url: String, prefix: String },
}

/// As an operator reads it at start-up: the server without its credentials.
impl std::fmt::Display for LogBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogBackend::Embedded => f.write_str("embedded"),
            LogBackend::Nats { url, prefix } => {
                write!(
                    f,
                    "{} (stream prefix {prefix})",
                    proteus_redact::redact(url)
                )
            }
        }
    }
}

impl std::fmt::Debug for LogBackend {
    // The URL may carry credentials: never print it whole.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl LogBackend {
    fn parse(text: &str, prefix: Option<String>) -> Result<Self, String> {
        if text == "embedded" {
            return Ok(LogBackend::Embedded);
        }
        if is_nats_url(text) {
            return Ok(LogBackend::Nats {
                url: text.to_owned(),
                prefix: prefix.unwrap_or_else(|| "PROTEUS".into()),
            });
        }
        let shown: String = text.chars().take(24).collect();
        Err(format!(
            "storage log must be 'embedded' or a NATS URL (nats://HOST:PORT), got {shown:?}"
        ))
    }
}

/// Where event streams are stored.
#[derive(Clone, PartialEq, Eq)]
pub enum EventStoreBackend {
    /// `<data_dir>/eventstore.redb`.
    Embedded,
    /// A PostgreSQL database, in one schema of it.
    Postgres { url: String, schema: String },
    /// NATS JetStream: the event store in the streams `<prefix>_EVENTS` and
    /// `<prefix>_SNAPSHOTS`; consumer groups in the key-value buckets `<prefix>_GROUPS` and
    /// `<prefix>_LEASES`.
    Nats { url: String, prefix: String },
}

/// As an operator reads it at start-up: the server without its password.
impl std::fmt::Display for EventStoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventStoreBackend::Embedded => f.write_str("embedded"),
            EventStoreBackend::Postgres { url, schema } => {
                write!(f, "{} (schema {schema})", proteus_redact::redact(url))
            }
            EventStoreBackend::Nats { url, prefix } => {
                write!(f, "{} (prefix {prefix})", proteus_redact::redact(url))
            }
        }
    }
}

impl std::fmt::Debug for EventStoreBackend {
    // The URL may carry a password: never print it whole.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl EventStoreBackend {
    /// `embedded` or a PostgreSQL URL, for the store named `setting` (its name in messages).
    fn parse_embedded_or_postgres(
        setting: &str,
        text: &str,
        schema: String,
    ) -> Result<Self, String> {
        if text == "embedded" {
            return Ok(EventStoreBackend::Embedded);
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(EventStoreBackend::Postgres {
                url: text.to_owned(),
                schema,
            });
        }
        if is_nats_url(text) {
            return Err(format!(
                "{setting} must be 'embedded' or a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE); NATS JetStream keeps the log, the event store and consumer groups, not this"
            ));
        }
        let shown: String = text.chars().take(24).collect();
        Err(format!(
            "{setting} must be 'embedded' or a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE), got {shown:?}"
        ))
    }

    /// `embedded`, a PostgreSQL URL or NATS JetStream (`nats://`, with its stream prefix).
    fn parse_event_store(
        text: &str,
        schema: Option<String>,
        prefix: Option<String>,
    ) -> Result<Self, String> {
        if is_nats_url(text) {
            return Ok(EventStoreBackend::Nats {
                url: text.to_owned(),
                prefix: prefix.unwrap_or_else(|| "PROTEUS_ES".into()),
            });
        }
        let schema = schema.unwrap_or_else(|| "proteus_eventstore".into());
        EventStoreBackend::parse_embedded_or_postgres("event_store", text, schema).map_err(|_| {
            let shown: String = text.chars().take(24).collect();
            format!(
                "event_store must be 'embedded', a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE) or a NATS URL (nats://HOST:PORT), got {shown:?}"
            )
        })
    }

    /// `embedded`, a PostgreSQL URL or NATS JetStream (`nats://`, with its bucket prefix).
    fn parse_groups(
        text: Option<String>,
        schema: Option<String>,
        prefix: Option<String>,
    ) -> Result<Self, String> {
        let text = text.as_deref().unwrap_or("embedded");
        if is_nats_url(text) {
            return Ok(EventStoreBackend::Nats {
                url: text.to_owned(),
                prefix: prefix.unwrap_or_else(|| "PROTEUS".into()),
            });
        }
        let schema = schema.unwrap_or_else(|| "proteus_groups".into());
        EventStoreBackend::parse_embedded_or_postgres("groups", text, schema).map_err(|_| {
            let shown: String = text.chars().take(24).collect();
            format!(
                "groups must be 'embedded', a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE) or a NATS URL (nats://HOST:PORT), got {shown:?}"
            )
        })
    }

    /// A store given by a setting and its schema (flag, else config file), embedded when
    /// neither says.
    fn resolve(
        setting: &str,
        value: Option<String>,
        schema: Option<String>,
        default_schema: &str,
    ) -> Result<Self, String> {
        EventStoreBackend::parse_embedded_or_postgres(
            setting,
            value.as_deref().unwrap_or("embedded"),
            schema.unwrap_or_else(|| default_schema.into()),
        )
    }
}

/// The `[storage]` table of the config file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct StorageFile {
    log: Option<String>,
    log_prefix: Option<String>,
    event_store: Option<String>,
    event_store_schema: Option<String>,
    event_store_prefix: Option<String>,
    nats_id_cache_events_max: Option<usize>,
    read_models: Option<String>,
    read_models_schema: Option<String>,
    metadata: Option<String>,
    metadata_schema: Option<String>,
    groups: Option<String>,
    groups_schema: Option<String>,
    groups_prefix: Option<String>,
    cache: Option<String>,
    cache_prefix: Option<String>,
    cache_tls_ca: Option<PathBuf>,
    cache_tls_cert: Option<PathBuf>,
    cache_tls_key: Option<PathBuf>,
    nats_tls_ca: Option<PathBuf>,
    nats_tls_cert: Option<PathBuf>,
    nats_tls_key: Option<PathBuf>,
    nats_creds: Option<PathBuf>,
    nats_nkey: Option<PathBuf>,
    nats_replicas: Option<usize>,
}

#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FlagApiKey {
    pub name: String,
    pub flag_set: proteus_flagsets::FlagSetName,
    pub secret: String,
}

/// Shortest API key secret accepted, in bytes: shorter ones can be guessed.
pub const FLAG_API_KEY_SECRET_BYTES_MIN: usize = 16;
/// Most API keys one server holds.
pub const FLAG_API_KEYS_MAX: usize = 1_000;

fn parse_api_keys(text: &str) -> Result<Vec<FlagApiKey>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let mut parts = entry.splitn(3, ':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(name), Some(flag_set), Some(secret)) => Ok(FlagApiKey {
                    name: name.to_owned(),
                    flag_set: proteus_flagsets::FlagSetName::parse(flag_set)
                        .map_err(|e| format!("flag_api_keys: key '{name}': {e}"))?,
                    secret: secret.to_owned(),
                }),
                _ => Err(format!(
                    "flag_api_keys: an entry is not NAME:FLAG_SET:SECRET (entry starting {:?})",
                    entry.chars().take(8).collect::<String>()
                )),
            }
        })
        .collect()
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    durability: Option<String>,
    http_body_bytes_max: Option<usize>,
    retention_check_interval_ms: Option<u64>,
    shutdown_timeout_ms: Option<u64>,
    worker_threads: Option<usize>,
    flags: Option<PathBuf>,
    flags_watch_ms: Option<u64>,
    flag_api_keys: Option<Vec<FlagApiKey>>,
    flag_exposure_sample_rate: Option<f64>,
    flag_usage_flush_ms: Option<u64>,
    schema_policy: Option<String>,
    advertise_url: Option<String>,
    #[serde(default)]
    storage: StorageFile,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub listen: String,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub log_level: String,
    pub durability: Durability,
    pub http_body_bytes_max: usize,
    pub retention_check_interval_ms: u64,
    pub shutdown_timeout_ms: u64,
    /// The async runtime's worker threads.
    pub worker_threads: usize,
    pub flags: Option<PathBuf>,
    pub flags_watch_ms: u64,
    pub flag_api_keys: Vec<FlagApiKey>,
    pub flag_exposure_sample_rate: f64,
    pub flag_usage_flush_ms: u64,
    /// What appends of event types without a schema get.
    pub schema_policy: SchemaPolicy,
    pub event_store: EventStoreBackend,
    /// With the event store on NATS: the ids it caches for idempotency (`None`: its default).
    pub nats_id_cache_events_max: Option<usize>,
    /// Where read models are kept: the same choices as the event store.
    pub read_models: EventStoreBackend,
    /// Where key-value metadata is kept: the same choices as the event store.
    pub metadata: EventStoreBackend,
    /// Where consumer groups are kept: embedded, or PostgreSQL or NATS (shared by instances).
    pub groups: EventStoreBackend,
    /// The base URL other instances reach this one at; `None`: derived from the bound address.
    pub advertise_url: Option<String>,
    pub log: LogBackend,
    /// The cache of projections' document reads.
    pub cache: CacheBackend,
    /// With a `rediss://` cache: a private CA and a client certificate.
    pub cache_tls: proteus_cache_redis::RedisTls,
    /// TLS and login files for every NATS connection (log, event store, groups).
    pub nats_security: proteus_nats::NatsSecurity,
    /// JetStream replicas of the streams and buckets created (1, 3 or 5).
    pub nats_replicas: usize,
}

pub const HTTP_BODY_BYTES_MIN: usize = 1024;
/// The most worker threads `proteus serve` starts.
pub const WORKER_THREADS_MAX: usize = 1024;

/// One worker thread per core the process may run on, as tokio would choose.
fn worker_threads_default() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get())
}
pub const HTTP_BODY_BYTES_LIMIT: usize = 256 * 1024 * 1024;

impl Settings {
    pub fn resolve(args: ServeArgs) -> Result<Settings, String> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let durability_text = args
            .durability
            .or(file.durability)
            .unwrap_or_else(|| "fsync".into());
        let durability: Durability = durability_text
            .parse()
            .map_err(|e: String| format!("durability: {e}"))?;
        let settings = Settings {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:7070".into()),
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| "./proteus-data".into()),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Pretty),
            log_level: args
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            durability,
            http_body_bytes_max: args
                .http_body_bytes_max
                .or(file.http_body_bytes_max)
                .unwrap_or(16 * 1024 * 1024),
            retention_check_interval_ms: args
                .retention_check_interval_ms
                .or(file.retention_check_interval_ms)
                .unwrap_or(30_000),
            shutdown_timeout_ms: args
                .shutdown_timeout_ms
                .or(file.shutdown_timeout_ms)
                .unwrap_or(30_000),
            worker_threads: args
                .worker_threads
                .or(file.worker_threads)
                .unwrap_or_else(worker_threads_default),
            flags: args.flags.or(file.flags),
            flags_watch_ms: args.flags_watch_ms.or(file.flags_watch_ms).unwrap_or(1_000),
            flag_api_keys: match args.flag_api_keys {
                Some(text) => parse_api_keys(&text)?,
                None => file.flag_api_keys.unwrap_or_default(),
            },
            flag_exposure_sample_rate: args
                .flag_exposure_sample_rate
                .or(file.flag_exposure_sample_rate)
                .unwrap_or(0.0),
            flag_usage_flush_ms: args
                .flag_usage_flush_ms
                .or(file.flag_usage_flush_ms)
                .unwrap_or(60_000),
            schema_policy: match args
                .schema_policy
                .or(file.schema_policy)
                .as_deref()
                .unwrap_or("lenient")
            {
                "lenient" => SchemaPolicy::Lenient,
                "strict" => SchemaPolicy::Strict,
                other => {
                    return Err(format!(
                        "schema_policy must be 'lenient' or 'strict', got '{other}'"
                    ));
                }
            },
            event_store: EventStoreBackend::parse_event_store(
                args.event_store
                    .or(file.storage.event_store)
                    .as_deref()
                    .unwrap_or("embedded"),
                args.event_store_schema.or(file.storage.event_store_schema),
                args.event_store_prefix.or(file.storage.event_store_prefix),
            )?,
            nats_id_cache_events_max: args
                .nats_id_cache_events_max
                .or(file.storage.nats_id_cache_events_max),
            read_models: EventStoreBackend::resolve(
                "read_models",
                args.read_models.or(file.storage.read_models),
                args.read_models_schema.or(file.storage.read_models_schema),
                "proteus_readmodels",
            )?,
            metadata: EventStoreBackend::resolve(
                "metadata",
                args.metadata.or(file.storage.metadata),
                args.metadata_schema.or(file.storage.metadata_schema),
                "proteus_metadata",
            )?,
            groups: EventStoreBackend::parse_groups(
                args.groups.or(file.storage.groups),
                args.groups_schema.or(file.storage.groups_schema),
                args.groups_prefix.or(file.storage.groups_prefix),
            )?,
            advertise_url: args.advertise_url.or(file.advertise_url),
            log: LogBackend::parse(
                args.storage_log
                    .or(file.storage.log)
                    .as_deref()
                    .unwrap_or("embedded"),
                args.storage_log_prefix.or(file.storage.log_prefix),
            )?,
            cache: CacheBackend::parse(
                args.cache
                    .or(file.storage.cache)
                    .as_deref()
                    .unwrap_or("memory"),
                args.cache_prefix.or(file.storage.cache_prefix),
            )?,
            cache_tls: proteus_cache_redis::RedisTls {
                ca_file: args.cache_tls_ca.or(file.storage.cache_tls_ca),
                cert_file: args.cache_tls_cert.or(file.storage.cache_tls_cert),
                key_file: args.cache_tls_key.or(file.storage.cache_tls_key),
            },
            nats_security: args.nats_security.resolve(proteus_nats::NatsSecurity {
                ca_file: file.storage.nats_tls_ca,
                cert_file: file.storage.nats_tls_cert,
                key_file: file.storage.nats_tls_key,
                creds_file: file.storage.nats_creds,
                nkey_file: file.storage.nats_nkey,
            }),
            nats_replicas: match (args.nats_replicas.nats_replicas, file.storage.nats_replicas) {
                (Some(flag), _) => flag,
                (None, Some(in_file)) => parse_nats_replicas(&in_file.to_string())?,
                (None, None) => NATS_REPLICAS_DEFAULT,
            },
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), String> {
        if !(HTTP_BODY_BYTES_MIN..=HTTP_BODY_BYTES_LIMIT).contains(&self.http_body_bytes_max) {
            return Err(format!(
                "http_body_bytes_max must be between {HTTP_BODY_BYTES_MIN} and {HTTP_BODY_BYTES_LIMIT}, got {}",
                self.http_body_bytes_max
            ));
        }
        if !(100..=86_400_000).contains(&self.retention_check_interval_ms) {
            return Err(format!(
                "retention_check_interval_ms must be between 100 and 86400000, got {}",
                self.retention_check_interval_ms
            ));
        }
        if !(1..=WORKER_THREADS_MAX).contains(&self.worker_threads) {
            return Err(format!(
                "worker_threads must be between 1 and {WORKER_THREADS_MAX}, got {}",
                self.worker_threads
            ));
        }
        if self.shutdown_timeout_ms > 600_000 {
            return Err(format!(
                "shutdown_timeout_ms must be at most 600000, got {}",
                self.shutdown_timeout_ms
            ));
        }
        if !(50..=3_600_000).contains(&self.flags_watch_ms) {
            return Err(format!(
                "flags_watch_ms must be between 50 and 3600000, got {}",
                self.flags_watch_ms
            ));
        }
        if !(100..=3_600_000).contains(&self.flag_usage_flush_ms) {
            return Err(format!(
                "flag_usage_flush_ms must be between 100 and 3600000, got {}",
                self.flag_usage_flush_ms
            ));
        }
        if !(0.0..=1.0).contains(&self.flag_exposure_sample_rate) {
            return Err(format!(
                "flag_exposure_sample_rate must be from 0 (off) to 1 (every evaluation), got {}",
                self.flag_exposure_sample_rate
            ));
        }
        if self.flag_api_keys.len() > FLAG_API_KEYS_MAX {
            return Err(format!(
                "flag_api_keys holds {} keys, the most is {FLAG_API_KEYS_MAX}",
                self.flag_api_keys.len()
            ));
        }
        let mut secrets = std::collections::HashSet::new();
        for key in &self.flag_api_keys {
            if key.name.is_empty() || key.name.len() > 128 {
                return Err("flag_api_keys: a key's name must be 1 to 128 bytes".into());
            }
            if key.secret.len() < FLAG_API_KEY_SECRET_BYTES_MIN {
                return Err(format!(
                    "flag_api_keys: key '{}' has a secret of {} bytes; use at least {FLAG_API_KEY_SECRET_BYTES_MIN} random bytes (e.g. `openssl rand -hex 16`)",
                    key.name,
                    key.secret.len()
                ));
            }
            if !secrets.insert(key.secret.as_str()) {
                return Err(format!(
                    "flag_api_keys: key '{}' reuses another key's secret; every key needs its own",
                    key.name
                ));
            }
        }
        // TLS files for a backend nothing uses are a mistake (a cache meant to be Redis,
        // say): said at start-up rather than ignored.
        if !self.cache_tls.is_empty() && !matches!(self.cache, CacheBackend::Redis { .. }) {
            return Err(
                "--cache-tls-ca, --cache-tls-cert and --cache-tls-key are for a Redis cache, and the cache is in memory: add --cache rediss://HOST:PORT, or remove them"
                    .into(),
            );
        }
        let on_nats = matches!(self.log, LogBackend::Nats { .. })
            || [
                &self.event_store,
                &self.read_models,
                &self.metadata,
                &self.groups,
            ]
            .iter()
            .any(|store| matches!(store, EventStoreBackend::Nats { .. }));
        if let Some(ids) = self.nats_id_cache_events_max {
            if !matches!(self.event_store, EventStoreBackend::Nats { .. }) {
                return Err(format!(
                    "--nats-id-cache-events-max {ids} is for an event store on NATS, and the event store is not: add --event-store nats://…, or remove it"
                ));
            }
            if !(1..=NATS_ID_CACHE_EVENTS_MAX).contains(&ids) {
                return Err(format!(
                    "--nats-id-cache-events-max must be between 1 and {NATS_ID_CACHE_EVENTS_MAX} ids (10 to 30 bytes each), got {ids}"
                ));
            }
        }
        if self.nats_security.is_set() && !on_nats {
            return Err(
                "--nats-tls-ca, --nats-tls-cert, --nats-tls-key, --nats-creds and --nats-nkey are for NATS, and no store is on NATS: add --storage-log, --event-store or --groups nats://…, or remove them"
                    .into(),
            );
        }
        if self.nats_replicas != NATS_REPLICAS_DEFAULT && !on_nats {
            return Err(format!(
                "--nats-replicas {} is for NATS, and no store is on NATS: add --storage-log, --event-store or --groups nats://…, or remove it",
                self.nats_replicas
            ));
        }
        if matches!(self.groups, EventStoreBackend::Nats { .. })
            && !matches!(self.log, LogBackend::Nats { .. })
        {
            return Err(
                "groups in NATS are shared by several instances, which also need to share the log \
                 (the topics groups read): add --storage-log nats://…, or keep groups embedded \
                 (--groups embedded)"
                    .into(),
            );
        }
        if matches!(self.groups, EventStoreBackend::Postgres { .. }) {
            let leases = matches!(self.metadata, EventStoreBackend::Postgres { .. });
            let log = matches!(self.log, LogBackend::Nats { .. });
            if !leases || !log {
                return Err(format!(
                    "groups in PostgreSQL are shared by several instances, which also need to share {}: \
                     add {}, or keep groups embedded (--groups embedded); with a NATS log, \
                     groups in NATS (--groups nats://…) keep their leases in NATS",
                    match (leases, log) {
                        (false, false) =>
                            "the metadata store (where coordinator leases live) and the log",
                        (false, true) => "the metadata store (where coordinator leases live)",
                        _ => "the log (the topics groups read)",
                    },
                    match (leases, log) {
                        (false, false) => "--metadata postgres://… and --storage-log nats://…",
                        (false, true) => "--metadata postgres://…",
                        _ => "--storage-log nats://…",
                    }
                ));
            }
        }
        if let Some(url) = &self.advertise_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "advertise_url must be an http(s) URL such as http://10.0.0.5:7070, got {url:?}"
            ));
        }
        if self
            .listen
            .rsplit_once(':')
            .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            return Err(format!(
                "listen address {:?} is not HOST:PORT, such as 127.0.0.1:7070 or 0.0.0.0:7070",
                self.listen
            ));
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<FileSettings, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("invalid config file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proteus.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:9000\"\ndata_dir = \"/tmp/file\"\ndurability = \"interval_ms = 50\"\n").unwrap();
        let settings = Settings::resolve(ServeArgs {
            config: Some(path.clone()),
            data_dir: Some("/tmp/flag".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(settings.listen, "0.0.0.0:9000");
        assert_eq!(settings.data_dir, PathBuf::from("/tmp/flag"));
        assert_eq!(
            settings.durability,
            Durability::Interval { interval_ms: 50 }
        );
        assert_eq!(settings.log_format, LogFormat::Pretty);
        assert_eq!(settings.http_body_bytes_max, 16 * 1024 * 1024);
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proteus.toml");
        std::fs::write(&path, "listn = \"x\"\n").unwrap();
        let error = Settings::resolve(ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(error.contains("unknown field `listn`"), "{error}");
        let error = Settings::resolve(ServeArgs {
            durability: Some("sometimes".into()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(error.contains("interval_ms=N"), "{error}");
        let error = Settings::resolve(ServeArgs {
            listen: Some("7070".into()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(error.contains("HOST:PORT"), "{error}");
        let error = Settings::resolve(ServeArgs {
            http_body_bytes_max: Some(10),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(error.contains("http_body_bytes_max"), "{error}");
        let error = Settings::resolve(ServeArgs {
            worker_threads: Some(0),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(
            error.contains("worker_threads must be between 1 and 1024, got 0"),
            "{error}"
        );
    }

    /// Worker threads default to the cores the process may use, and a file or a flag sets them.
    #[test]
    fn worker_threads_default_to_the_cores_and_are_set_by_file_or_flag() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let settings = Settings::resolve(ServeArgs::default()).unwrap();
        assert_eq!(settings.worker_threads, cores);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proteus.toml");
        std::fs::write(&path, "worker_threads = 3\n").unwrap();
        let from_file = Settings::resolve(ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(from_file.worker_threads, 3);
        let from_flag = Settings::resolve(ServeArgs {
            config: Some(path),
            worker_threads: Some(1),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(from_flag.worker_threads, 1);
    }

    /// The start-up line names each backend's server, so an operator sees where data goes,
    /// but never a password.
    #[test]
    fn backends_show_their_server_without_its_password() {
        let settings = Settings::resolve(ServeArgs {
            storage_log: Some("nats://app:SECRET@nats.internal:4222".into()),
            event_store: Some("postgres://app:SECRET@db.internal:5432/shop".into()),
            cache: Some("redis://:SECRET@cache.internal:6379".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        let shown = [
            settings.log.to_string(),
            settings.event_store.to_string(),
            settings.cache.to_string(),
            format!("{:?}", settings.event_store),
        ];
        for (text, server) in shown.iter().zip([
            "nats.internal:4222",
            "db.internal:5432/shop",
            "cache.internal:6379",
            "db.internal:5432/shop",
        ]) {
            assert!(text.contains(server), "{text}");
            assert!(!text.contains("SECRET"), "{text}");
        }
        assert!(
            shown[1].contains("schema proteus_eventstore"),
            "{}",
            shown[1]
        );
        assert_eq!(settings.read_models.to_string(), "embedded");
    }

    #[test]
    fn shared_groups_need_shared_metadata_and_log() {
        let settings = Settings::resolve(ServeArgs::default()).unwrap();
        assert_eq!(settings.groups, EventStoreBackend::Embedded);
        assert_eq!(settings.advertise_url, None);
        let pg = "postgres://postgres@127.0.0.1:5432/test";
        let error = Settings::resolve(ServeArgs {
            groups: Some(pg.into()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(
            error.contains("--metadata postgres://… and --storage-log nats://…"),
            "{error}"
        );
        let error = Settings::resolve(ServeArgs {
            groups: Some(pg.into()),
            metadata: Some(pg.into()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(error.contains("add --storage-log nats://…"), "{error}");
        let error = Settings::resolve(ServeArgs {
            groups: Some("nats://127.0.0.1:4222".into()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(error.contains("add --storage-log nats://…"), "{error}");
        let settings = Settings::resolve(ServeArgs {
            groups: Some("nats://127.0.0.1:4222".into()),
            groups_prefix: Some("TEAM_A".into()),
            storage_log: Some("nats://127.0.0.1:4222".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(
            settings.groups,
            EventStoreBackend::Nats {
                url: "nats://127.0.0.1:4222".into(),
                prefix: "TEAM_A".into()
            },
            "groups in NATS keep their leases in NATS: no --metadata needed"
        );
        let error = Settings::resolve(ServeArgs {
            groups: Some("redis://127.0.0.1:6379".into()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(error.starts_with("groups must be"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proteus.toml");
        std::fs::write(
            &path,
            format!(
                "advertise_url = \"http://10.0.0.5:7070\"\n[storage]\ngroups = \"{pg}\"\ngroups_schema = \"g1\"\nmetadata = \"{pg}\"\nlog = \"nats://127.0.0.1:4222\"\n"
            ),
        )
        .unwrap();
        let settings = Settings::resolve(ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(
            settings.groups,
            EventStoreBackend::Postgres {
                url: pg.into(),
                schema: "g1".into()
            }
        );
        assert_eq!(
            settings.advertise_url.as_deref(),
            Some("http://10.0.0.5:7070")
        );
        let error = Settings::resolve(ServeArgs {
            advertise_url: Some("10.0.0.5:7070".into()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(error.contains("advertise_url"), "{error}");
    }

    #[test]
    fn nats_tls_files_come_from_flags_before_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proteus.toml");
        std::fs::write(
            &path,
            "[storage]\nlog = \"tls://n:4222\"\nnats_tls_ca = \"/file/ca.pem\"\nnats_tls_cert = \"/file/c.pem\"\nnats_tls_key = \"/file/k.pem\"\nnats_creds = \"/file/app.creds\"\n",
        )
        .unwrap();
        let settings = Settings::resolve(ServeArgs {
            config: Some(path),
            nats_security: NatsSecurityArgs {
                nats_tls_ca: Some("/flag/ca.pem".into()),
                ..NatsSecurityArgs::default()
            },
            ..ServeArgs::default()
        })
        .unwrap();
        assert!(matches!(settings.log, LogBackend::Nats { ref url, .. } if url == "tls://n:4222"));
        assert_eq!(
            settings.nats_security,
            proteus_nats::NatsSecurity {
                ca_file: Some("/flag/ca.pem".into()),
                cert_file: Some("/file/c.pem".into()),
                key_file: Some("/file/k.pem".into()),
                creds_file: Some("/file/app.creds".into()),
                nkey_file: None,
            }
        );
        assert!(
            !Settings::resolve(ServeArgs::default())
                .unwrap()
                .nats_security
                .is_set()
        );
    }

    #[test]
    fn tls_files_for_a_backend_nothing_uses_are_refused() {
        let error = Settings::resolve(ServeArgs {
            cache_tls_ca: Some("/ca.pem".into()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(
            error.contains("the cache is in memory") && error.contains("--cache rediss://"),
            "{error}"
        );
        let settings = Settings::resolve(ServeArgs {
            cache: Some("rediss://r:6380".into()),
            cache_tls_cert: Some("/c.pem".into()),
            cache_tls_key: Some("/k.pem".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(
            settings.cache_tls,
            proteus_cache_redis::RedisTls {
                ca_file: None,
                cert_file: Some("/c.pem".into()),
                key_file: Some("/k.pem".into()),
            }
        );
        let error = Settings::resolve(ServeArgs {
            nats_security: NatsSecurityArgs {
                nats_tls_ca: Some("/ca.pem".into()),
                ..NatsSecurityArgs::default()
            },
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(
            error.contains("no store is on NATS") && error.contains("--storage-log"),
            "{error}"
        );
    }

    #[test]
    fn the_nats_id_cache_is_sized_only_for_an_event_store_on_nats() {
        let on_nats = |ids: usize| ServeArgs {
            event_store: Some("nats://127.0.0.1:4222".into()),
            nats_id_cache_events_max: Some(ids),
            ..ServeArgs::default()
        };
        let settings = Settings::resolve(on_nats(10_000_000)).unwrap();
        assert_eq!(settings.nats_id_cache_events_max, Some(10_000_000));
        assert_eq!(
            Settings::resolve(ServeArgs::default())
                .unwrap()
                .nats_id_cache_events_max,
            None
        );
        for ids in [0, NATS_ID_CACHE_EVENTS_MAX + 1] {
            let error = Settings::resolve(on_nats(ids)).unwrap_err();
            assert!(
                error.contains("--nats-id-cache-events-max must be between 1 and 1000000000"),
                "{error}"
            );
        }
        let error = Settings::resolve(ServeArgs {
            nats_id_cache_events_max: Some(1_000),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(
            error.contains("is for an event store on NATS")
                && error.contains("--event-store nats://"),
            "{error}"
        );
    }

    #[test]
    fn the_cache_is_memory_or_redis() {
        let settings = Settings::resolve(ServeArgs::default()).unwrap();
        assert_eq!(settings.cache, CacheBackend::Memory);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proteus.toml");
        std::fs::write(
            &path,
            "[storage]\ncache = \"redis://127.0.0.1:6379\"\ncache_prefix = \"p1:\"\n",
        )
        .unwrap();
        let settings = Settings::resolve(ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(
            settings.cache,
            CacheBackend::Redis {
                url: "redis://127.0.0.1:6379".into(),
                prefix: "p1:".into()
            }
        );
        let error = Settings::resolve(ServeArgs {
            cache: Some("memcached://x".into()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(
            error.contains("cache must be 'memory' or a Redis URL"),
            "{error}"
        );
        for url in [
            "rediss://r:6380",
            "redis+cluster://a:7000,b:7001",
            "rediss+cluster://cfg.example.com:6379",
            "redis+sentinel://s1:26379,s2:26379/cache",
        ] {
            let settings = Settings::resolve(ServeArgs {
                cache: Some(url.into()),
                ..ServeArgs::default()
            })
            .unwrap();
            assert!(
                matches!(settings.cache, CacheBackend::Redis { url: ref got, .. } if got == url)
            );
        }
        for prefix in ["", "two words", &"p".repeat(CACHE_PREFIX_BYTES_MAX + 1)] {
            let error = Settings::resolve(ServeArgs {
                cache: Some("redis://127.0.0.1:6379".into()),
                cache_prefix: Some(prefix.into()),
                ..ServeArgs::default()
            })
            .unwrap_err();
            assert!(
                error.contains("cache_prefix must be 1 to 64 bytes"),
                "{error}"
            );
        }
    }
}

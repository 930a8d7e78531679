//! Connecting to NATS the one way every adapter does (feature `client`): bounded connect and
//! request timeouts, reconnection with exponential back-off up to a ceiling, and a check that
//! the server answers JetStream requests, each failure worded with how to start NATS; and the
//! one way they read a fetch's messages, never waiting without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{NatsSecurity, START_HINT, redact};

/// How an adapter connects, borrowed from its configuration.
pub struct ClientSettings<'a> {
    /// Server URL(s), comma-separated.
    pub url: &'a str,
    /// The connection's name, shown by the server's monitoring (`proteus-log`, …).
    pub name: &'a str,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Longest pause between two reconnection attempts.
    pub reconnect_delay_max_ms: u64,
    /// When given, counted up each time the client (re)connects: what the server kept for
    /// this client in memory (ephemeral consumers) may be gone after a reconnection.
    pub connections: Option<Arc<AtomicU64>>,
    /// TLS and login files of the deployment's own (CA, client certificate, credentials, NKEY).
    pub security: &'a NatsSecurity,
}

fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

/// Connects, then checks that JetStream answers. The error says what failed at which
/// (redacted) URL and how to start NATS.
pub async fn connect(settings: &ClientSettings<'_>) -> Result<async_nats::Client, String> {
    let url = redact(settings.url);
    let delay_max = ms(settings.reconnect_delay_max_ms);
    let mut options = async_nats::ConnectOptions::new()
        .name(settings.name)
        .connection_timeout(ms(settings.connect_timeout_ms))
        .request_timeout(Some(ms(settings.request_timeout_ms)))
        .reconnect_delay_callback(move |attempts| {
            let exponent = attempts.min(16) as u32;
            ms(10u64.saturating_mul(1u64 << exponent)).min(delay_max)
        });
    if let Some(connections) = &settings.connections {
        let connections = connections.clone();
        options = options.event_callback(move |event| {
            let connections = connections.clone();
            async move {
                if matches!(event, async_nats::Event::Connected) {
                    connections.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    let security = settings.security;
    security.validate()?;
    let in_url = credentials_in(settings.url)?;
    if in_url.is_some() && (security.creds_file.is_some() || security.nkey_file.is_some()) {
        return Err(format!(
            "NATS at {url}: the URL holds a user or token and a credentials or NKEY file is given too; log in one way (remove the one from the URL, or --nats-creds / --nats-nkey)"
        ));
    }
    options = match in_url {
        Some(Credentials::UserPassword(user, password)) => {
            options.user_and_password(user, password)
        }
        Some(Credentials::Token(token)) => options.token(token),
        None => options,
    };
    if let Some(creds_file) = &security.creds_file {
        options = options.credentials_file(creds_file).await.map_err(|e| {
            format!(
                "creds_file {} is not a NATS credentials file ({e}); give the .creds file nsc or the NATS service made (a user JWT and its seed)",
                creds_file.display()
            )
        })?;
    }
    if let Some(nkey_file) = &security.nkey_file {
        options = options.nkey(user_seed_in(nkey_file)?);
    }
    if security.is_set_for_tls() {
        options = options.require_tls(true);
    }
    if let Some(ca_file) = &security.ca_file {
        options = options.add_root_certificates(ca_file.clone());
    }
    if let (Some(cert_file), Some(key_file)) = (&security.cert_file, &security.key_file) {
        options = options.add_client_certificate(cert_file.clone(), key_file.clone());
    }
    let client = options.connect(server_addrs(settings.url)?).await.map_err(|error| {
        use async_nats::ConnectErrorKind;
        let mut cause = String::new();
        let mut source = std::error::Error::source(&error);
        while let Some(next) = source {
            cause.push_str(&format!(": {next}"));
            source = next.source();
        }
        // A handshake refused by either side comes back as an I/O error whose cause is
        // rustls's, so the cause decides, not only the kind.
        if error.kind() == ConnectErrorKind::Tls
            || cause.contains("certificate")
            || cause.contains("TLS")
            || cause.contains("tls")
        {
            // async-nats shows its error's first cause itself; the chain adds the rest.
            let shown = error.to_string();
            let detail = if cause.len() > 2 && shown.contains(&cause[2..]) {
                shown
            } else {
                format!("{shown}{cause}")
            };
            return format!(
                "TLS with NATS at {url} failed ({detail}); {}",
                tls_hint(&detail)
            );
        }
        if matches!(
            error.kind(),
            ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication
        ) {
            let fix = if let Some(creds_file) = &security.creds_file {
                format!(
                    "the server does not accept the user of {}: check that it is signed by an account the server's resolver knows, and not expired or revoked",
                    creds_file.display()
                )
            } else if let Some(nkey_file) = &security.nkey_file {
                format!(
                    "the server does not list the public key of the seed in {} among its users (authorization {{ users = [ {{ nkey: U… }} ] }})",
                    nkey_file.display()
                )
            } else {
                "put the user and password (nats://user:password@host:4222) or the token (nats://token@host:4222) the server expects in the URL, or give --nats-creds FILE or --nats-nkey FILE".to_owned()
            };
            return format!("NATS at {url} refused the connection: {error}; {fix}");
        }
        format!("cannot connect to NATS at {url}: {error}; is it running? If not, {START_HINT}")
    })?;
    jetstream_answers(&client).await.map_err(|why| {
        format!("NATS at {url} does not answer JetStream requests ({why}); {START_HINT}")
    })?;
    Ok(client)
}

/// The oldest `nats-server` whose replicated streams keep what Proteus promises across a
/// change of stream leader: before 2.11 a new leader could take writes before applying what
/// the old one had replicated, so a retried write could be stored twice or, deduplicated
/// against a write never stored, answered as a duplicate and lost (nats-server pull requests
/// 6415, 6485 and 6486). Proteus's own cluster test stored an append twice on 2.9.10.
pub const REPLICATED_SERVER_VERSION_MIN: (u64, u64) = (2, 11);

/// Refuses `replicas` above 1 when the server `client` is connected to is older than
/// [`REPLICATED_SERVER_VERSION_MIN`]; the error says why and what to do instead.
pub fn check_replicas_supported(
    client: &async_nats::Client,
    url: &str,
    replicas: usize,
) -> Result<(), String> {
    if replicas <= 1 {
        return Ok(());
    }
    let version = client.server_info().version;
    if version_at_least(&version, REPLICATED_SERVER_VERSION_MIN) {
        return Ok(());
    }
    let (major, minor) = REPLICATED_SERVER_VERSION_MIN;
    Err(format!(
        "replicas = {replicas} needs nats-server {major}.{minor} or later, and NATS at {} runs {version}: before {major}.{minor} a stream whose leader changes (a server lost) can store a retried write twice, or drop it while answering it as a duplicate, which breaks exactly-once appends and expected versions; upgrade the cluster, or use replicas = 1 (with sync_interval: always in the server's jetstream block to survive a machine crash)",
        redact(url)
    ))
}

/// Whether a `nats-server` version (`2.9.10`, `v2.12.8`, `2.11.0-RC.1`) is at least
/// `(major, minor)`; an unreadable version is taken as too old. Public for tests that expect
/// what [`check_replicas_supported`] decides.
pub fn version_at_least(version: &str, (major, minor): (u64, u64)) -> bool {
    let mut parts = version
        .trim()
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|part| part.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(have_major), Some(have_minor)) => (have_major, have_minor) >= (major, minor),
        _ => false,
    }
}

/// The servers of a URL list: one URL, or several comma-separated (a cluster's nodes; the
/// client connects to any and moves to another when it fails). async-nats parses a `&str` as
/// one URL, so the list is cut here.
fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            url.parse::<async_nats::ServerAddr>().map_err(|error| {
                format!(
                    "{} is not a NATS server URL ({error}); write nats://HOST:PORT (tls://… to require TLS), several comma-separated for a cluster's servers",
                    redact(url)
                )
            })
        })
        .collect()
}

/// The user seed (`SU…`) an NKEY file holds: the file `nk -gen user` writes, or any text in
/// which the seed is the first word starting with `SU`.
fn user_seed_in(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("nkey_file: cannot read {}: {e}", path.display()))?;
    let seed = text
        .split_whitespace()
        .find(|word| word.starts_with("SU"))
        .ok_or_else(|| {
            format!(
                "nkey_file {} holds no user seed (a word starting with SU, as `nk -gen user` writes)",
                path.display()
            )
        })?;
    nkeys::KeyPair::from_seed(seed).map_err(|e| {
        format!(
            "nkey_file {}: the seed is not a valid NKEY seed ({e})",
            path.display()
        )
    })?;
    Ok(seed.to_owned())
}

/// What to do about a failed TLS connection, from its cause.
fn tls_hint(cause: &str) -> &'static str {
    if cause.contains("UnknownIssuer") || cause.contains("unknown issuer") {
        "the server's certificate is not signed by a CA this machine trusts: name the CA's PEM file with --nats-tls-ca"
    } else if cause.contains("NotValidForName") || cause.contains("not valid for name") {
        "the server's certificate does not name the host of the URL: connect by a name it lists"
    } else if cause.contains("CertificateRequired") || cause.contains("certificate required") {
        "the server asks for a client certificate: give one with --nats-tls-cert and --nats-tls-key"
    } else {
        "check the server's TLS settings, the URL (tls://… requires TLS) and the --nats-tls-* files"
    }
}

/// What a NATS URL says to log in with.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    /// `nats://user:password@host`.
    UserPassword(String, String),
    /// `nats://token@host`: a user name without a password is a token, as for every NATS client.
    Token(String),
}

/// The credentials of the first of the comma-separated URLs that has some. NATS clients take
/// them from the URL; async-nats does not, so they are handed to it here.
fn credentials_in(urls: &str) -> Result<Option<Credentials>, String> {
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .map(|text| text.into_owned())
            .map_err(|_| {
                format!(
                    "the credentials in the NATS URL {} are not UTF-8 once %-decoded",
                    redact(urls)
                )
            })
    };
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let Ok(address) = url.parse::<async_nats::ServerAddr>() else {
            continue; // async-nats says what is wrong with it when connecting
        };
        let Some(user) = address.username() else {
            continue;
        };
        return Ok(Some(match address.password() {
            Some(password) => Credentials::UserPassword(decode(user)?, decode(password)?),
            None => Credentials::Token(decode(user)?),
        }));
    }
    Ok(None)
}

/// Whether the server at `url` (redacted for the message) is reachable on `client` and
/// answers JetStream requests now, within `timeout`: a health check, cheap enough to run every
/// few seconds. A client that is reconnecting fails at once without a request.
pub async fn check_health(
    client: &async_nats::Client,
    url: &str,
    timeout: Duration,
) -> Result<(), String> {
    let url = redact(url);
    if client.connection_state() != async_nats::connection::State::Connected {
        return Err(format!(
            "not connected to NATS at {url} (reconnecting by itself); is it running? If not, {START_HINT}"
        ));
    }
    match tokio::time::timeout(timeout, jetstream_answers(client)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(format!(
            "NATS at {url} does not answer JetStream requests: {why}"
        )),
        Err(_) => Err(format!(
            "NATS at {url} did not answer a JetStream request within {} ms",
            timeout.as_millis()
        )),
    }
}

/// Whether JetStream answers on `client`: `Err` says why not.
pub async fn jetstream_answers(client: &async_nats::Client) -> Result<(), String> {
    // The account info request answers on every JetStream version (the typed
    // `query_account` expects fields older servers do not send).
    let answer = client
        .request("$JS.API.INFO", bytes::Bytes::new())
        .await
        .map_err(|error| error.to_string())?;
    let answer: serde_json::Value =
        serde_json::from_slice(&answer.payload).map_err(|error| error.to_string())?;
    match answer.get("error") {
        Some(error) => Err(error.to_string()),
        None => Ok(()),
    }
}

/// The next item of a no-wait fetch (`consumer.fetch()…messages()`) or of an ordered
/// consumer's messages, `Ok(None)` at its end, or `Err` if nothing arrived within `idle`.
/// async-nats gives such a fetch no expiry, so one whose pull request or answer was lost with
/// the connection (a server killed, restarted or cut off mid-fetch) would be waited for
/// forever, holding whatever lock its caller holds. The error says "timed out", which the
/// adapters' error mappings call retriable.
pub async fn next_fetched<S: futures_util::Stream + Unpin>(
    messages: &mut S,
    idle: Duration,
) -> Result<Option<S::Item>, String> {
    use futures_util::StreamExt;
    tokio::time::timeout(idle, messages.next()).await.map_err(|_| {
        format!(
            "a fetch timed out: no message or end of batch within {} ms (was the connection lost?)",
            idle.as_millis()
        )
    })
}

/// Whether a client error (its `Display` and `Debug` text) means the server could not be
/// reached, had no leader to answer, or did not answer in time: worth retrying, unlike a
/// refusal. Every adapter's error mapping asks this.
pub fn is_transient_error(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    [
        "timed out",
        "timedout",
        "no responders",
        "noresponders",
        // A pull answered 503 (no responders): on a cluster, a new consumer whose leader
        // does not take requests yet.
        "from the stream: 503",
        "broken pipe",
        "brokenpipe",
        "disconnect",
        "connection",
        "jetstreamunavailable",
        // JetStream's own "system temporarily unavailable" (503, error code 10008): a cluster
        // without a meta leader for a moment, as when a server was just killed.
        "temporarily unavailable",
        "error code 10008",
        "request",
        "flush",
        "subscribe",
        "pull",
        "max ack pending",
        "maxackpending",
    ]
    .iter()
    .any(|word| text.contains(word))
}

/// Whether a client error (its `Display` and `Debug` text) is a request nobody answered on a
/// stream's subjects: async-nats reports that as `StreamNotFound` ("no stream found for given
/// subject"). For a stream an adapter created and never deletes, it means the stream has no
/// leader right now, as while a JetStream cluster elects one after losing a server.
pub fn is_unanswered_by_stream(text: &str) -> bool {
    text.contains("StreamNotFound") || text.contains("no stream found for given subject")
}

/// How many times a read asks a new consumer again when its fetch is answered 503 (no
/// responders) before giving up: on a cluster, a consumer just created may not take pull
/// requests until its leader has started. With [`FRESH_CONSUMER_RETRY_MS`], about a second.
pub const FRESH_CONSUMER_FETCHES_MAX: u32 = 100;
/// Pause before asking a new consumer again after a 503, in milliseconds.
pub const FRESH_CONSUMER_RETRY_MS: u64 = 10;

/// How long a read waits for JetStream to create its consumer before reading another way
/// (gets). Creation takes milliseconds, but a cluster's metadata leader places every
/// consumer, and while it is being elected (seconds after its node fails) JetStream answers
/// no creation at all: the read would wait out the whole request timeout.
pub const CONSUMER_CREATE_WAIT_MS: u64 = 1_000;

/// A consumer of `stream` created with `config`, or `Ok(None)` when JetStream did not answer
/// within [`CONSUMER_CREATE_WAIT_MS`] (the caller then reads with gets, which need no
/// metadata leader). A consumer the server creates after all expires by itself when idle, as
/// every read consumer is configured to.
pub async fn consumer_in_time<C>(
    stream: &async_nats::jetstream::stream::Stream,
    config: C,
) -> Result<
    Option<async_nats::jetstream::consumer::Consumer<C>>,
    async_nats::jetstream::stream::ConsumerError,
>
where
    C: async_nats::jetstream::consumer::IntoConsumerConfig
        + async_nats::jetstream::consumer::FromConsumer,
{
    use async_nats::jetstream::stream::ConsumerErrorKind;
    let create = stream.create_consumer(config);
    match tokio::time::timeout(Duration::from_millis(CONSUMER_CREATE_WAIT_MS), create).await {
        Ok(Ok(consumer)) => Ok(Some(consumer)),
        Ok(Err(error)) if matches!(error.kind(), ConsumerErrorKind::TimedOut) => Ok(None),
        Ok(Err(error)) => Err(error),
        Err(_elapsed) => Ok(None),
    }
}

/// Whether a fetch's error is the 503 (no responders) a cluster answers while a new
/// consumer's leader starts: worth asking again, a few times, before anything was delivered.
pub fn is_unanswered_fetch(error: &dyn std::fmt::Display) -> bool {
    error.to_string().contains("503")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_url_as_for_every_nats_client() {
        assert_eq!(credentials_in("nats://127.0.0.1:4222").unwrap(), None);
        assert_eq!(
            credentials_in("nats://app:s%40cret@127.0.0.1:4222").unwrap(),
            Some(Credentials::UserPassword("app".into(), "s@cret".into()))
        );
        assert_eq!(
            credentials_in("tls://t0ken@nats.example:4222").unwrap(),
            Some(Credentials::Token("t0ken".into()))
        );
        assert_eq!(
            credentials_in("nats://a:4222, nats://u:p@b:4222").unwrap(),
            Some(Credentials::UserPassword("u".into(), "p".into())),
            "the first URL that has some"
        );
    }

    #[test]
    fn a_comma_separated_list_is_every_server_of_a_cluster() {
        let servers = server_addrs("nats://a:4222, nats://b:4223,tls://c:4224").unwrap();
        let hosts: Vec<(String, u16)> = servers
            .iter()
            .map(|server| (server.host().to_owned(), server.port()))
            .collect();
        assert_eq!(
            hosts,
            [("a".into(), 4222), ("b".into(), 4223), ("c".into(), 4224)]
        );
        let error = server_addrs("nats://a:4222,nats://u:secret@b:port").unwrap_err();
        assert!(
            error.contains("b:port") && error.contains("comma-separated"),
            "{error}"
        );
        assert!(!error.contains("secret"), "redacted: {error}");
    }

    #[test]
    fn failures_a_cluster_gives_while_electing_are_transient() {
        for text in [
            "JetStream error: JetStream system temporarily unavailable (code 503, error code 10008)",
            "no responders",
            "timed out: didn't receive ack in time",
            "error while processing messages from the stream: 503, None",
        ] {
            assert!(is_transient_error(text), "{text}");
        }
        for text in ["wrong last sequence: 7", "stream name already in use"] {
            assert!(!is_transient_error(text), "{text}");
        }
    }

    #[test]
    fn replicated_streams_need_a_server_of_2_11_or_later() {
        for (version, enough) in [
            ("2.9.10", false),
            ("2.10.29", false),
            ("2.11.0", true),
            ("v2.12.8", true),
            ("2.11.0-RC.1", true),
            ("3.0.0", true),
            ("garbage", false),
        ] {
            assert_eq!(
                version_at_least(version, REPLICATED_SERVER_VERSION_MIN),
                enough,
                "{version}"
            );
        }
    }
}

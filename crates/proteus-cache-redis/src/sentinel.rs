//! Redis behind Sentinel (`redis+sentinel://[user:password@]s1:26379[,s2:26379]/PRIMARY[/DB]
//! [?sentinel_password=…]`, `rediss+sentinel://` with TLS to the Sentinels and the primary):
//! the Sentinels name the current primary, and after any failed call the connection is dropped
//! and the primary asked for again, so a failover costs the calls in flight at that moment
//! (a cache miss each) and nothing after. The redis crate's own Sentinel client finds the
//! primary but keeps no connection that follows a failover; this is that connection.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, IntoConnectionInfo, TlsCertificates, TlsMode};
use tokio::sync::Mutex;

use crate::reopening::Reopening;

/// Bound of one connection attempt to the primary, and of each command's answer.
const CONNECT_TIMEOUT_MS: u64 = 5_000;
const RESPONSE_TIMEOUT_MS: u64 = 5_000;

/// What a `redis+sentinel://` URL says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    /// `redis://[:sentinel_password@]host:port` of each Sentinel (`rediss://` over TLS).
    pub(crate) sentinels: Vec<String>,
    /// The name the Sentinels monitor the primary under (`sentinel monitor NAME …`).
    pub(crate) primary_name: String,
    /// `redis://[user:password@]primary/DB`: the login and database for the primary, whose
    /// host is a placeholder (the Sentinels give the address).
    pub(crate) primary_login: String,
    /// `rediss+sentinel://`: TLS to the Sentinels and to the primary they name.
    pub(crate) tls: bool,
}

/// `Ok(None)`: not a Sentinel URL.
pub(crate) fn parse(url: &str, shown: &str) -> Result<Option<SentinelUrl>, String> {
    let (rest, tls) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
        (rest, true)
    } else {
        return Ok(None);
    };
    let scheme = if tls { "rediss" } else { "redis" };
    let usage = "write redis+sentinel://[user:password@]SENTINEL:26379[,SENTINEL:26379]/PRIMARY_NAME[/DB][?sentinel_password=PASSWORD] (rediss+sentinel:// for TLS)";
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut sentinel_login = String::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            // Kept percent-encoded: it goes into each Sentinel's URL as it came.
            Some(("sentinel_password", password)) => sentinel_login = format!(":{password}@"),
            _ => {
                let key = pair.split_once('=').map_or(pair, |(key, _)| key);
                return Err(format!(
                    "{shown}: unknown option {key:?}; the one option is sentinel_password (for Sentinels with requirepass)"
                ));
            }
        }
    }
    let (authority, path) = rest
        .split_once('/')
        .ok_or_else(|| format!("{shown}: no primary name; {usage}"))?;
    let (primary_name, database) = path.split_once('/').unwrap_or((path, ""));
    if primary_name.is_empty() {
        return Err(format!("{shown}: no primary name; {usage}"));
    }
    if !database.is_empty() && database.parse::<u16>().is_err() {
        return Err(format!(
            "{shown}: database {database:?} is not a number; {usage}"
        ));
    }
    let (login, hosts) = crate::connect::login_and_hosts(authority)
        .ok_or_else(|| format!("{shown}: an empty Sentinel address; {usage}"))?;
    Ok(Some(SentinelUrl {
        sentinels: hosts
            .into_iter()
            .map(|host| format!("{scheme}://{sentinel_login}{host}"))
            .collect(),
        primary_name: primary_name.to_owned(),
        primary_login: format!("redis://{login}primary/{database}"),
        tls,
    }))
}

/// A connection to the primary the Sentinels name, found again after a failed call.
pub(crate) struct SentinelConnection {
    sentinels: Mutex<SentinelClient>,
    primary: Reopening<MultiplexedConnection>,
}

impl SentinelConnection {
    /// `certificates`: the CA and client certificate of a `rediss+sentinel://` URL, used with
    /// the Sentinels and with the primary alike.
    pub(crate) fn new(
        url: &SentinelUrl,
        certificates: Option<TlsCertificates>,
    ) -> redis::RedisResult<SentinelConnection> {
        let primary_login = url.primary_login.as_str().into_connection_info()?;
        let primary_login = primary_login.redis_settings();
        let sentinels = url
            .sentinels
            .iter()
            .map(|sentinel| sentinel.as_str().into_connection_info())
            .collect::<redis::RedisResult<Vec<_>>>()?;
        let mut builder = SentinelClientBuilder::new(
            sentinels.iter().map(|sentinel| sentinel.addr().clone()),
            &url.primary_name,
            SentinelServerType::Master,
        )?
        .set_client_to_redis_db(primary_login.db());
        if let Some(password) = sentinels
            .first()
            .and_then(|sentinel| sentinel.redis_settings().password())
        {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if let Some(username) = primary_login.username() {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = primary_login.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if url.tls {
            builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
            if let Some(certificates) = certificates {
                builder = builder
                    .set_client_to_sentinel_certificates(certificates.clone())
                    .set_client_to_redis_certificates(certificates);
            }
        }
        Ok(SentinelConnection {
            sentinels: Mutex::new(builder.build()?),
            primary: Reopening::new(None),
        })
    }

    /// The connection to the primary and its generation, asking the Sentinels for it when
    /// there is none.
    pub(crate) async fn primary(&self) -> redis::RedisResult<(u64, MultiplexedConnection)> {
        self.primary.get(|| self.find_primary()).await
    }

    async fn find_primary(&self) -> redis::RedisResult<MultiplexedConnection> {
        let client = self.sentinels.lock().await.async_get_client().await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)))
            .set_response_timeout(Some(Duration::from_millis(RESPONSE_TIMEOUT_MS)));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// A call's answer on the connection of `generation`, passed on; after a failed call the
    /// primary may have changed (a failover turns it into a replica that refuses writes) or
    /// gone, so the connection is dropped and the next call asks the Sentinels again.
    pub(crate) async fn settle<T>(
        &self,
        generation: u64,
        answer: redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        if answer.is_err() {
            self.primary.drop_generation(generation).await;
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::{SentinelUrl, parse};

    #[test]
    fn sentinel_urls_name_the_sentinels_the_primary_and_its_login() {
        assert_eq!(parse("redis://h:6379", "x").unwrap(), None);
        assert_eq!(
            parse("redis+sentinel://:pw@s1:26379, s2:26380/cache/2", "x").unwrap(),
            Some(SentinelUrl {
                sentinels: vec!["redis://s1:26379".into(), "redis://s2:26380".into()],
                primary_name: "cache".into(),
                primary_login: "redis://:pw@primary/2".into(),
                tls: false,
            })
        );
        assert_eq!(
            parse(
                "redis+sentinel://s1:26379/cache?sentinel_password=p%40ss",
                "x"
            )
            .unwrap()
            .unwrap()
            .sentinels,
            vec!["redis://:p%40ss@s1:26379".to_owned()]
        );
        let over_tls = parse("rediss+sentinel://s1:26379/cache", "x")
            .unwrap()
            .unwrap();
        assert_eq!(over_tls.sentinels, vec!["rediss://s1:26379".to_owned()]);
        assert!(over_tls.tls);
        for secret in [
            "redis+sentinel://app:pw@s1:26379/cache",
            "redis+sentinel://s1:26379/cache?sentinel_password=pw",
        ] {
            let shown = crate::redact(secret);
            assert!(
                !shown.contains("pw") && shown.contains("s1:26379"),
                "{shown}"
            );
        }
        for (url, says) in [
            ("redis+sentinel://s1:26379", "no primary name"),
            ("redis+sentinel://s1:26379/", "no primary name"),
            ("redis+sentinel://s1:26379/cache/x", "is not a number"),
            ("redis+sentinel://s1,,s2/cache", "an empty Sentinel address"),
            (
                "redis+sentinel://s1/cache?password=x",
                "unknown option \"password\"",
            ),
        ] {
            let error = parse(url, url).unwrap_err();
            assert!(error.contains(says), "{url}: {error}");
        }
    }
}

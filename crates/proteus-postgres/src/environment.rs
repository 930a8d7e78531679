//! libpq's environment variables and password file, read as `psql` reads them: what the
//! connection string leaves out comes from `PGHOST`, `PGHOSTADDR`, `PGPORT`, `PGDATABASE`,
//! `PGUSER`, `PGPASSWORD`, `PGAPPNAME`, `PGOPTIONS`, `PGCONNECT_TIMEOUT` and
//! `PGTARGETSESSIONATTRS`, and a password none of them gives from the password file
//! (`PGPASSFILE`, default `~/.pgpass`). What the string writes always wins. (A service file's
//! settings are written into the string first, by [`crate::service::expand`].)
//! (`PGSSLMODE` and the other TLS variables are read by [`crate::tls::split`].)
//!
//! So a deployment can pass `postgres://` alone and keep every part of the connection in the
//! variables a Kubernetes operator's secret provides, as it would for `psql`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::{Host, TargetSessionAttrs};

/// Reads one environment variable (a closure, so tests need not touch the process's).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// PostgreSQL's port when nothing names one.
const DEFAULT_PORT: u16 = 5432;

/// libpq's shortest connect timeout: `PGCONNECT_TIMEOUT=1` waits this long, as in libpq.
const CONNECT_TIMEOUT_MIN_S: u64 = 2;

/// Largest password file read, in bytes: a `.pgpass` holds a few lines.
const PASSWORD_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// A variable that is set and not empty (libpq ignores empty ones too).
fn set(env: Env, name: &str) -> Option<String> {
    env(name).filter(|value| !value.is_empty())
}

/// Writes `PGPORT` into the hosts of a URL that lists hosts without ports, before the driver
/// parses it: the driver gives such a host port 5432 at once, where libpq would take `PGPORT`.
/// Any other string is returned as it is (the ports of a key=value string or of a URL without
/// hosts are added after parsing, by [`fill`]).
pub fn url_with_pgport(driver: &str, env: Env) -> Result<String, String> {
    let Some((scheme, rest)) = driver.split_once("://") else {
        return Ok(driver.to_owned());
    };
    let Some(pgport) = set(env, "PGPORT") else {
        return Ok(driver.to_owned());
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (login, hosts) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    let query = tail.split_once('?').map_or("", |(_, query)| query);
    if hosts.is_empty() || query_names(query, "port") {
        return Ok(driver.to_owned());
    }
    let chunks: Vec<&str> = hosts.split(',').collect();
    let ports = ports(&pgport, chunks.len())?;
    let with_ports: Vec<String> = chunks
        .iter()
        .enumerate()
        .map(|(index, chunk)| {
            if chunk_has_port(chunk) {
                (*chunk).to_owned()
            } else {
                format!("{chunk}:{}", ports[index])
            }
        })
        .collect();
    Ok(format!("{scheme}://{login}{}{tail}", with_ports.join(",")))
}

/// Whether a URL's query writes `key`.
fn query_names(query: &str, key: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair.split_once('=').map_or(pair, |(name, _)| name) == key)
}

/// Whether one `host[:port]` of a URL's authority has its port (`[::1]:5432`, `db:5432`).
fn chunk_has_port(chunk: &str) -> bool {
    match chunk.strip_prefix('[') {
        Some(bracketed) => bracketed.contains("]:"),
        None => chunk.contains(':'),
    }
}

/// `PGPORT` (one port, or one per host, comma-separated) as one port per host, or why not.
fn ports(pgport: &str, hosts: usize) -> Result<Vec<u16>, String> {
    let ports = pgport
        .split(',')
        .map(|port| {
            port.trim().parse::<u16>().map_err(|_| {
                format!("PGPORT: {port:?} is not a port number (1 to 65535, or one per host, comma-separated)")
            })
        })
        .collect::<Result<Vec<u16>, String>>()?;
    match ports.len() {
        1 => Ok(vec![ports[0]; hosts]),
        count if count == hosts => Ok(ports),
        count => Err(format!(
            "PGPORT lists {count} ports for {hosts} hosts: give one port for all of them, or one per host"
        )),
    }
}

/// Whether a key=value string or a URL's query writes `key` (a URL's authority is not looked
/// at: it holds only login, hosts and ports).
fn string_names(driver: &str, key: &str) -> bool {
    if driver.contains("://") {
        return driver
            .split_once('?')
            .is_some_and(|(_, query)| query_names(query, key));
    }
    // `key=value`, `key =value` and `key = value` are all accepted by the driver.
    let tokens: Vec<&str> = driver.split_whitespace().collect();
    tokens.iter().enumerate().any(|(index, token)| {
        token.split_once('=').map(|(name, _)| name) == Some(key)
            || (*token == key && tokens.get(index + 1).is_some_and(|t| t.starts_with('=')))
    })
}

/// `PGHOST=…[, PGPORT=…]` when `url` names no host and the environment does, for messages.
pub fn host_from_environment(url: &str, env: Env) -> Option<String> {
    let expanded = crate::service::expand(url, env).ok()?;
    let (driver, _) = crate::tls::split(&expanded, env).ok()?;
    let config = tokio_postgres::Config::from_str(&driver).ok()?;
    if !config.get_hosts().is_empty() || !config.get_hostaddrs().is_empty() {
        return None;
    }
    let host = set(env, "PGHOST")?;
    Some(match set(env, "PGPORT") {
        Some(port) => format!("PGHOST={host}, PGPORT={port}"),
        None => format!("PGHOST={host}"),
    })
}

/// Fills what `config` (parsed from `driver`) lacks from libpq's environment and password
/// file. `Err` says which variable or file is wrong, or that no host is named anywhere.
pub fn fill(config: &mut tokio_postgres::Config, driver: &str, env: Env) -> Result<(), String> {
    if config.get_hostaddrs().is_empty()
        && let Some(pghostaddr) = set(env, "PGHOSTADDR")
    {
        for address in pghostaddr.split(',').map(str::trim) {
            let address = IpAddr::from_str(address).map_err(|_| {
                format!(
                    "PGHOSTADDR: {address:?} is not an IP address (one per host, comma-separated)"
                )
            })?;
            config.hostaddr(address);
        }
    }
    // As in libpq, PGHOST names the hosts even beside addresses (which are then where it
    // connects, the names serving TLS and the password file).
    if config.get_hosts().is_empty()
        && let Some(pghost) = set(env, "PGHOST")
    {
        for host in pghost.split(',').map(str::trim) {
            if host.starts_with('/') {
                config.host_path(host);
            } else {
                config.host(host);
            }
        }
    }
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        return Err(
            "it names no host: write one (postgres://user@host:5432/database) or set PGHOST"
                .to_owned(),
        );
    }
    let (named_hosts, addresses) = (config.get_hosts().len(), config.get_hostaddrs().len());
    if named_hosts > 0 && addresses > 0 && named_hosts != addresses {
        return Err(format!(
            "it names {named_hosts} host(s) and {addresses} host address(es) (hostaddr or PGHOSTADDR): give one address per host, or none"
        ));
    }
    let hosts = named_hosts.max(addresses);
    if config.get_ports().is_empty()
        && let Some(pgport) = set(env, "PGPORT")
    {
        for port in ports(&pgport, hosts)? {
            config.port(port);
        }
    }
    if config.get_user().is_none()
        && let Some(user) = set(env, "PGUSER")
    {
        config.user(user);
    }
    if config.get_dbname().is_none()
        && let Some(database) = set(env, "PGDATABASE")
    {
        config.dbname(database);
    }
    if config.get_application_name().is_none()
        && let Some(name) = set(env, "PGAPPNAME")
    {
        config.application_name(name);
    }
    if !string_names(driver, "options")
        && let Some(options) = set(env, "PGOPTIONS")
    {
        config.options(options);
    }
    if !string_names(driver, "connect_timeout")
        && let Some(timeout) = set(env, "PGCONNECT_TIMEOUT")
    {
        let seconds = timeout.trim().parse::<i64>().map_err(|_| {
            format!("PGCONNECT_TIMEOUT={timeout:?} is not a whole number of seconds")
        })?;
        // libpq waits without end for 0 or less; Proteus never does, so those keep the
        // store's own `connect_timeout_ms`.
        if seconds > 0 {
            let seconds = (seconds as u64).max(CONNECT_TIMEOUT_MIN_S);
            config.connect_timeout(Duration::from_secs(seconds));
        }
    }
    if !string_names(driver, "target_session_attrs")
        && let Some(attrs) = set(env, "PGTARGETSESSIONATTRS")
    {
        config.target_session_attrs(match attrs.as_str() {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            other => {
                return Err(format!(
                    "PGTARGETSESSIONATTRS={other:?} is not supported: use any, read-write or read-only"
                ));
            }
        });
    }
    if config.get_password().is_none() {
        if let Some(password) = set(env, "PGPASSWORD") {
            config.password(password);
        } else if let Some(password) = password_from_file(config, env)? {
            config.password(password);
        }
    }
    Ok(())
}

/// The password file's password for the connection's hosts, port, database and user, as libpq
/// looks it up: the first line whose four fields match (`*` matches anything), from
/// `PGPASSFILE` or `~/.pgpass`. A missing file is no password; a file others may read is
/// refused (libpq ignores it with a warning, which would leave the start-up failing with "asks
/// for a password" and no hint why). libpq looks the password up again for each host it tries;
/// the driver sends one password to whichever host it reaches, so when the file gives the
/// hosts of a multi-host URL different passwords that is refused with what to do, rather than
/// one host's password failing at the others.
fn password_from_file(config: &tokio_postgres::Config, env: Env) -> Result<Option<String>, String> {
    let path = match set(env, "PGPASSFILE") {
        Some(path) => PathBuf::from(path),
        None => match set(env, "HOME") {
            Some(home) => Path::new(&home).join(".pgpass"),
            None => return Ok(None),
        },
    };
    let Ok(metadata) = std::fs::metadata(&path) else {
        return Ok(None);
    };
    let shown = path.display();
    if !metadata.is_file() {
        return Err(format!("the password file {shown} is not a plain file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if metadata.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "the password file {shown} can be read by group or others: chmod 0600 {shown} (libpq ignores such a file)"
            ));
        }
    }
    if metadata.len() > PASSWORD_FILE_BYTES_MAX {
        return Err(format!(
            "the password file {shown} is {} bytes, more than the {PASSWORD_FILE_BYTES_MAX} read",
            metadata.len()
        ));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("the password file {shown} cannot be read: {e}"))?;
    let Some(user) = config.get_user() else {
        return Ok(None);
    };
    let database = config.get_dbname().unwrap_or(user);
    // (host, port, password) of each host the file has a password for.
    let mut found: Vec<(String, String, String)> = Vec::new();
    for (host, port) in hosts_and_ports(config) {
        if let Some(password) = password_file_lookup(&text, [&host, &port, database, user]) {
            found.push((host, port, password));
        }
    }
    match found.as_slice() {
        [] => Ok(None),
        [(_, _, first), rest @ ..] => match rest.iter().find(|(_, _, other)| other != first) {
            None => Ok(Some(first.clone())),
            Some((host, port, _)) => Err(format!(
                "the password file {shown} gives {}:{} and {host}:{port} different passwords for user {user}, and one password is sent to whichever host answers: give the password in the URL or PGPASSWORD, or make the file's lines for these hosts agree",
                found[0].0, found[0].1
            )),
        },
    }
}

/// Each host a connection may try, with its port, as the password file names them: the host
/// name, else its address, else `localhost`; one port for every host, or one each.
fn hosts_and_ports(config: &tokio_postgres::Config) -> Vec<(String, String)> {
    let (hosts, addresses, ports) = (
        config.get_hosts(),
        config.get_hostaddrs(),
        config.get_ports(),
    );
    (0..hosts.len().max(addresses.len()).max(1))
        .map(|i| {
            let host = match (hosts.get(i), addresses.get(i)) {
                (Some(Host::Tcp(name)), _) => name.clone(),
                (Some(Host::Unix(directory)), _) => directory.display().to_string(),
                (None, Some(address)) => address.to_string(),
                (None, None) => "localhost".to_owned(),
            };
            let port = match ports {
                [one] => *one,
                many => many.get(i).copied().unwrap_or(DEFAULT_PORT),
            };
            (host, port.to_string())
        })
        .collect()
}

/// The password of the first line of a `.pgpass` text whose first four fields match `wanted`
/// (host, port, database, user). Fields are separated by `:`; `\:` and `\\` escape; `*` matches
/// anything; lines starting with `#` are comments.
fn password_file_lookup(text: &str, wanted: [&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut fields = Vec::with_capacity(5);
        let mut field = String::new();
        let mut characters = line.chars();
        while let Some(character) = characters.next() {
            match character {
                '\\' => field.extend(characters.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                other => field.push(other),
            }
        }
        fields.push(field);
        if fields.len() != 5 {
            continue;
        }
        let matches = fields[..4]
            .iter()
            .zip(wanted)
            .all(|(field, wanted)| field == "*" || field == wanted);
        if matches {
            return fields.pop();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    fn filled(driver: &str, env: Env) -> Result<tokio_postgres::Config, String> {
        let driver = url_with_pgport(driver, env)?;
        let mut config = tokio_postgres::Config::from_str(&driver).map_err(|e| e.to_string())?;
        fill(&mut config, &driver, env)?;
        Ok(config)
    }

    #[test]
    fn an_empty_url_takes_everything_from_the_environment() {
        let env = env_of(&[
            ("PGHOST", "db1.internal,db2.internal"),
            ("PGPORT", "6432"),
            ("PGDATABASE", "shop"),
            ("PGUSER", "app"),
            ("PGPASSWORD", "secret"),
            ("PGAPPNAME", "billing"),
            ("PGTARGETSESSIONATTRS", "read-write"),
        ]);
        for driver in ["postgres://", "postgresql://", ""] {
            let config = filled(driver, &env).unwrap();
            assert_eq!(
                config.get_hosts(),
                &[
                    Host::Tcp("db1.internal".into()),
                    Host::Tcp("db2.internal".into())
                ],
                "{driver:?}"
            );
            assert_eq!(config.get_ports(), &[6432, 6432], "{driver:?}");
            assert_eq!(config.get_dbname(), Some("shop"));
            assert_eq!(config.get_user(), Some("app"));
            assert_eq!(config.get_password(), Some(&b"secret"[..]));
            assert_eq!(config.get_application_name(), Some("billing"));
            assert_eq!(
                config.get_target_session_attrs(),
                TargetSessionAttrs::ReadWrite
            );
        }
    }

    #[test]
    fn what_the_string_writes_wins_over_the_environment() {
        let env = env_of(&[
            ("PGHOST", "elsewhere"),
            ("PGPORT", "6432"),
            ("PGDATABASE", "other"),
            ("PGUSER", "other"),
            ("PGPASSWORD", "other"),
            ("PGAPPNAME", "other"),
            ("PGTARGETSESSIONATTRS", "read-write"),
        ]);
        let config = filled(
            "postgres://owner:inline@db:7000/shop?application_name=mine&target_session_attrs=any",
            &env,
        )
        .unwrap();
        assert_eq!(config.get_hosts(), &[Host::Tcp("db".into())]);
        assert_eq!(config.get_ports(), &[7000]);
        assert_eq!(config.get_dbname(), Some("shop"));
        assert_eq!(config.get_user(), Some("owner"));
        assert_eq!(config.get_password(), Some(&b"inline"[..]));
        assert_eq!(config.get_application_name(), Some("mine"));
        assert_eq!(config.get_target_session_attrs(), TargetSessionAttrs::Any);
        let config = filled(
            "host=db port=7000 dbname=shop user=owner target_session_attrs = any",
            &env,
        )
        .unwrap();
        assert_eq!(config.get_ports(), &[7000]);
        assert_eq!(config.get_dbname(), Some("shop"));
        assert_eq!(config.get_target_session_attrs(), TargetSessionAttrs::Any);
    }

    #[test]
    fn pgport_fills_the_hosts_a_url_lists_without_a_port() {
        let env = env_of(&[("PGPORT", "6432")]);
        let config = filled("postgres://app@db1,db2:7000,[::1]/shop", &env).unwrap();
        assert_eq!(config.get_ports(), &[6432, 7000, 6432]);
        // A port in the query is the URL's: PGPORT is not added to it.
        let config = filled("postgres://app@db1/shop?port=7000", &env).unwrap();
        assert!(
            !config.get_ports().contains(&6432),
            "{:?}",
            config.get_ports()
        );
        let config = filled("postgres://app@db1,db2/shop", &|_| None).unwrap();
        assert_eq!(config.get_ports(), &[5432, 5432]);
        let per_host = env_of(&[("PGPORT", "6432,6433")]);
        let config = filled("postgres://app@db1,db2/shop", &per_host).unwrap();
        assert_eq!(config.get_ports(), &[6432, 6433]);
        let error = filled("postgres://app@db1,db2,db3/shop", &per_host).unwrap_err();
        assert!(
            error.contains("PGPORT lists 2 ports for 3 hosts"),
            "{error}"
        );
        let error = filled("postgres://app@db/shop", &env_of(&[("PGPORT", "x")])).unwrap_err();
        assert!(
            error.starts_with("PGPORT: \"x\" is not a port number"),
            "{error}"
        );
    }

    #[test]
    fn pghostaddr_pgoptions_and_pgconnect_timeout_fill_what_the_string_leaves_out() {
        let env = env_of(&[
            ("PGHOSTADDR", "10.0.0.7"),
            ("PGOPTIONS", "-c search_path=shop"),
            ("PGCONNECT_TIMEOUT", "9"),
        ]);
        // With PGHOST, the names stay beside the addresses.
        let named = env_of(&[("PGHOST", "db.internal"), ("PGHOSTADDR", "10.0.0.7")]);
        let config = filled("postgres://app@/shop", &named).unwrap();
        assert_eq!(config.get_hosts(), &[Host::Tcp("db.internal".into())]);
        assert_eq!(config.get_hostaddrs().len(), 1);
        // An address alone is enough to connect (no PGHOST needed), as with libpq.
        let config = filled("postgres://app@/shop", &env).unwrap();
        assert_eq!(
            config.get_hostaddrs(),
            &[IpAddr::from_str("10.0.0.7").unwrap()]
        );
        assert_eq!(config.get_options(), Some("-c search_path=shop"));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(9)));
        // With a host named, the address is where it connects (the name stays for TLS and the
        // password file).
        let config = filled("postgres://app@db.internal/shop", &env).unwrap();
        assert_eq!(config.get_hosts(), &[Host::Tcp("db.internal".into())]);
        assert_eq!(config.get_hostaddrs().len(), 1);
        // What the string writes wins.
        let config = filled(
            "postgres://app@db/shop?hostaddr=10.0.0.8&options=-c%20work_mem%3D64MB&connect_timeout=3",
            &env,
        )
        .unwrap();
        assert_eq!(
            config.get_hostaddrs(),
            &[IpAddr::from_str("10.0.0.8").unwrap()]
        );
        assert_eq!(config.get_options(), Some("-c work_mem=64MB"));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        // libpq's minimum of 2 s; 0 (libpq: no limit) keeps the store's own bound.
        let one = env_of(&[("PGCONNECT_TIMEOUT", "1")]);
        let config = filled("postgres://app@db/shop", &one).unwrap();
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(2)));
        let zero = env_of(&[("PGCONNECT_TIMEOUT", "0")]);
        let config = filled("postgres://app@db/shop", &zero).unwrap();
        assert_eq!(config.get_connect_timeout(), None);
        // Bad values name the variable.
        for (pairs, says) in [
            (
                &[("PGHOSTADDR", "db.internal")][..],
                "PGHOSTADDR: \"db.internal\" is not an IP address",
            ),
            (
                &[("PGCONNECT_TIMEOUT", "ten")][..],
                "PGCONNECT_TIMEOUT=\"ten\" is not a whole number",
            ),
            (
                &[("PGHOSTADDR", "10.0.0.7,10.0.0.8")][..],
                "names 1 host(s) and 2 host address(es)",
            ),
        ] {
            let error = filled("postgres://app@db/shop", &env_of(pairs)).unwrap_err();
            assert!(error.contains(says), "{error}");
        }
    }

    #[test]
    fn messages_name_the_host_the_environment_gave() {
        let env = env_of(&[("PGHOST", "db.internal"), ("PGPORT", "6432")]);
        assert_eq!(
            host_from_environment("postgres://app@/shop", &env).as_deref(),
            Some("PGHOST=db.internal, PGPORT=6432")
        );
        assert_eq!(host_from_environment("postgres://app@db/shop", &env), None);
        assert_eq!(
            host_from_environment("postgres://app@/shop", &|_| None),
            None
        );
    }

    #[test]
    fn a_socket_directory_in_pghost_is_a_unix_socket() {
        let env = env_of(&[("PGHOST", "/var/run/postgresql")]);
        let config = filled("postgres:///shop", &env).unwrap();
        assert_eq!(
            config.get_hosts(),
            &[Host::Unix("/var/run/postgresql".into())]
        );
    }

    #[test]
    fn no_host_anywhere_is_refused_with_where_to_write_one() {
        let error = filled("postgres://app@/shop", &|_| None).unwrap_err();
        assert!(error.contains("names no host"), "{error}");
        assert!(error.contains("PGHOST"), "{error}");
        let error = filled("user=app dbname=shop", &|_| None).unwrap_err();
        assert!(error.contains("names no host"), "{error}");
    }

    #[test]
    fn an_unsupported_target_session_attrs_names_the_variable() {
        let env = env_of(&[("PGHOST", "db"), ("PGTARGETSESSIONATTRS", "prefer-standby")]);
        let error = filled("postgres://", &env).unwrap_err();
        assert!(
            error.starts_with("PGTARGETSESSIONATTRS=\"prefer-standby\""),
            "{error}"
        );
    }

    #[test]
    fn password_file_lines_match_as_libpq_matches_them() {
        let text = "# host:port:database:user:password\n\
                    db:5432:shop:app:first\n\
                    db:*:*:app:any-port\n\
                    we\\:ird:5432:shop:app:pass\\:with\\\\colon\n\
                    *:*:*:*:fallback\n\
                    short:line\n";
        let lookup = |wanted| password_file_lookup(text, wanted);
        assert_eq!(
            lookup(["db", "5432", "shop", "app"]).as_deref(),
            Some("first")
        );
        assert_eq!(
            lookup(["db", "6432", "shop", "app"]).as_deref(),
            Some("any-port")
        );
        assert_eq!(
            lookup(["other", "5432", "shop", "ops"]).as_deref(),
            Some("fallback")
        );
        assert_eq!(
            lookup(["we:ird", "5432", "shop", "app"]).as_deref(),
            Some("pass:with\\colon")
        );
        assert_eq!(
            password_file_lookup("db:5432:shop:app:x\n", ["db", "5432", "shop", "ops"]),
            None
        );
    }

    #[test]
    fn the_password_file_gives_the_password_none_other_gives() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(".pgpass");
        std::fs::write(&path, "db:6432:shop:app:from-file\n*:*:*:*:wildcard\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let home = directory.path().display().to_string();
        let env = move |name: &str| (name == "HOME").then(|| home.clone());
        let config = filled("postgres://app@db:6432/shop", &env).unwrap();
        assert_eq!(config.get_password(), Some(&b"from-file"[..]));
        let config = filled("postgres://app@db/shop", &env).unwrap();
        assert_eq!(config.get_password(), Some(&b"wildcard"[..]));
        let config = filled("postgres://app:inline@db:6432/shop", &env).unwrap();
        assert_eq!(config.get_password(), Some(&b"inline"[..]));

        let named = path.display().to_string();
        let by_pgpassfile = move |name: &str| (name == "PGPASSFILE").then(|| named.clone());
        let config = filled("postgres://app@db:6432/shop", &by_pgpassfile).unwrap();
        assert_eq!(config.get_password(), Some(&b"from-file"[..]));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = filled("postgres://app@db:6432/shop", &by_pgpassfile).unwrap_err();
        assert!(
            error.contains("can be read by group or others: chmod 0600"),
            "{error}"
        );

        // Every host of a multi-host URL is looked up, as libpq does for each host it tries.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(
            &path,
            "replica:5433:shop:app:r-pass\nprimary:5432:shop:app:p-pass\nsame-a:*:*:app:same\nsame-b:*:*:app:same\n",
        )
        .unwrap();
        let config = filled(
            "postgres://app@unknown:5432,primary:5432/shop",
            &by_pgpassfile,
        )
        .unwrap();
        assert_eq!(config.get_password(), Some(&b"p-pass"[..]));
        let config = filled("postgres://app@same-a,same-b/shop", &by_pgpassfile).unwrap();
        assert_eq!(config.get_password(), Some(&b"same"[..]));
        let error = filled(
            "postgres://app@primary:5432,replica:5433/shop",
            &by_pgpassfile,
        )
        .unwrap_err();
        assert!(
            error.contains("gives primary:5432 and replica:5433 different passwords for user app")
                && error.contains("in the URL or PGPASSWORD"),
            "{error}"
        );

        let missing = |name: &str| (name == "HOME").then(|| "/nonexistent".to_owned());
        let config = filled("postgres://app@db:6432/shop", &missing).unwrap();
        assert_eq!(config.get_password(), None);
    }
}

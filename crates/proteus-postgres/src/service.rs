//! libpq's connection service file (`pg_service.conf`), read as `psql` reads it: a connection
//! string's `service=NAME` (or `PGSERVICE`) names a `[NAME]` section of `key=value` settings,
//! looked up in `PGSERVICEFILE` (default `~/.pg_service.conf`), then in `pg_service.conf` of
//! `PGSYSCONFDIR` (default `/etc/postgresql-common`, where Debian's libpq looks). The section's
//! settings fill what the string leaves out; they win over the other environment variables,
//! as in libpq. [`expand`] writes them into the string, so everything after it (TLS settings,
//! `PGPORT`, the rest of the environment) treats them as written there.

use std::path::{Path, PathBuf};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use crate::environment::Env;

/// Largest service file read, in bytes: a `pg_service.conf` holds a few sections.
const SERVICE_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Where libpq looks for the system-wide service file on Debian when `PGSYSCONFDIR` is unset.
const DEFAULT_SYSCONFDIR: &str = "/etc/postgresql-common";

/// The settings a service may give: those Proteus reads in a connection string.
const SERVICE_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "options",
    "application_name",
    "connect_timeout",
    "target_session_attrs",
    "keepalives",
    "keepalives_idle",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
];

/// A variable that is set and not empty (libpq ignores empty ones too).
fn set(env: Env, name: &str) -> Option<String> {
    env(name).filter(|value| !value.is_empty())
}

/// `url` with the settings of the service it (or `PGSERVICE`) names added where it writes none,
/// and its `service=` removed; `url` itself when no service is named. `Err` says which service
/// or file is wrong.
pub fn expand(url: &str, env: Env) -> Result<String, String> {
    let (without_service, named) = take_service(url);
    let Some(name) = named.or_else(|| set(env, "PGSERVICE")) else {
        return Ok(url.to_owned());
    };
    let settings = lookup(&name, env)?;
    let mut expanded = without_service;
    for (key, value) in settings {
        if !names(&expanded, &key) {
            expanded = with_setting(&expanded, &key, &value);
        }
    }
    Ok(expanded)
}

/// The string without its `service=` setting, and the service it names; the string exactly as
/// given when it names none.
fn take_service(url: &str) -> (String, Option<String>) {
    if url.contains("://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), None);
        };
        let (named, kept): (Vec<&str>, Vec<&str>) = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .partition(|pair| pair.starts_with("service="));
        let Some(pair) = named.last() else {
            return (url.to_owned(), None);
        };
        let name = percent_encoding::percent_decode_str(&pair["service=".len()..])
            .decode_utf8_lossy()
            .into_owned();
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (url, Some(name));
    }
    // A key=value string: the `service=NAME` token is cut out, the rest left as written.
    let Some(start) = url
        .match_indices("service=")
        .map(|(at, _)| at)
        .find(|&at| at == 0 || url[..at].ends_with(char::is_whitespace))
    else {
        return (url.to_owned(), None);
    };
    let end = url[start..]
        .find(char::is_whitespace)
        .map_or(url.len(), |length| start + length);
    let name = url[start + "service=".len()..end]
        .trim_matches('\'')
        .to_owned();
    let rest = format!("{}{}", &url[..start], &url[end..]);
    (rest.trim().to_owned(), Some(name))
}

/// The `[name]` section's settings from the first service file that defines it.
fn lookup(name: &str, env: Env) -> Result<Vec<(String, String)>, String> {
    let user_file = match set(env, "PGSERVICEFILE") {
        Some(path) => Some(PathBuf::from(path)),
        None => set(env, "HOME").map(|home| Path::new(&home).join(".pg_service.conf")),
    };
    let system_file = Path::new(&set(env, "PGSYSCONFDIR").unwrap_or(DEFAULT_SYSCONFDIR.into()))
        .join("pg_service.conf");
    let mut looked_in = Vec::new();
    for path in user_file.into_iter().chain([system_file]) {
        let Some(text) = read_service_file(&path)? else {
            looked_in.push(format!("{} (absent)", path.display()));
            continue;
        };
        if let Some(settings) = section(&text, name, &path)? {
            return Ok(settings);
        }
        looked_in.push(path.display().to_string());
    }
    Err(format!(
        "the connection service {name:?} (service= or PGSERVICE) is defined in no service file: looked in {}; add a [{name}] section, or name the file with PGSERVICEFILE",
        looked_in.join(", ")
    ))
}

fn read_service_file(path: &Path) -> Result<Option<String>, String> {
    let Ok(metadata) = std::fs::metadata(path) else {
        return Ok(None);
    };
    let shown = path.display();
    if !metadata.is_file() {
        return Err(format!("the service file {shown} is not a plain file"));
    }
    if metadata.len() > SERVICE_FILE_BYTES_MAX {
        return Err(format!(
            "the service file {shown} is {} bytes, more than the {SERVICE_FILE_BYTES_MAX} read",
            metadata.len()
        ));
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| format!("the service file {shown} cannot be read: {e}"))
}

/// The settings of section `[name]` of a service file's text, `None` when it has no such
/// section. Blank lines and lines starting with `#` are skipped; a line that is neither a
/// section nor `key=value`, or a key Proteus does not read, is refused with its line number.
fn section(text: &str, name: &str, path: &Path) -> Result<Option<Vec<(String, String)>>, String> {
    let mut settings = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if settings.is_some() {
                break;
            }
            if header == name {
                settings = Some(Vec::new());
            }
            continue;
        }
        let Some(found) = settings.as_mut() else {
            continue;
        };
        let at = || format!("{} line {}", path.display(), index + 1);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "{}: {line:?} is not key=value in service {name:?}",
                at()
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        if key == "service" {
            return Err(format!(
                "{}: service {name:?} names another service; nested services are not supported (libpq refuses them too)",
                at()
            ));
        }
        if !SERVICE_KEYS.contains(&key) {
            return Err(format!(
                "{}: service {name:?} sets {key:?}, which Proteus does not read; it reads {}",
                at(),
                SERVICE_KEYS.join(", ")
            ));
        }
        found.push((key.to_owned(), value.to_owned()));
    }
    Ok(settings)
}

/// Whether the string already writes `key` (in a URL's authority or path, or as a setting).
fn names(url: &str, key: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return url
            .split_whitespace()
            .any(|token| token.split_once('=').map(|(name, _)| name.trim()) == Some(key));
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let in_query = query
        .split('&')
        .any(|pair| pair.split_once('=').map_or(pair, |(name, _)| name) == key);
    let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
    let (login, hosts) = authority.rsplit_once('@').unwrap_or(("", authority));
    let (user, password) = login.split_once(':').unwrap_or((login, ""));
    in_query
        || match key {
            "host" => !hosts.is_empty(),
            "port" => hosts.split(',').any(|host| match host.strip_prefix('[') {
                Some(bracketed) => bracketed.contains("]:"),
                None => host.contains(':'),
            }),
            "user" => !user.is_empty(),
            "password" => !password.is_empty(),
            "dbname" => !path.is_empty(),
            _ => false,
        }
}

/// The string with `key=value` added: to a URL's query (percent-encoded) or, quoted, to a
/// key=value string.
fn with_setting(url: &str, key: &str, value: &str) -> String {
    if url.contains("://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        return format!(
            "{url}{separator}{key}={}",
            utf8_percent_encode(value, NON_ALPHANUMERIC)
        );
    }
    let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
    if url.is_empty() {
        format!("{key}='{quoted}'")
    } else {
        format!("{url} {key}='{quoted}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES: &str = "\
# services of the test
[shop]
host=db.internal
port = 6432
dbname=shop
user=app
sslmode=require

[other]
host=elsewhere
";

    fn env_with(
        file: &Path,
        extra: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Option<String> {
        let file = file.display().to_string();
        move |name| match name {
            "PGSERVICEFILE" => Some(file.clone()),
            "PGSYSCONFDIR" => Some("/nonexistent".into()),
            _ => extra
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned()),
        }
    }

    fn service_file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn a_service_fills_what_the_string_leaves_out() {
        let file = service_file(SERVICES);
        let env = env_with(file.path(), &[]);
        assert_eq!(
            expand("postgres://?service=shop", &env).unwrap(),
            "postgres://?host=db%2Einternal&port=6432&dbname=shop&user=app&sslmode=require"
        );
        // What the URL writes wins; the service is taken out of the string.
        assert_eq!(
            expand(
                "postgres://owner@primary:7000/mine?service=shop&application_name=x",
                &env
            )
            .unwrap(),
            "postgres://owner@primary:7000/mine?application_name=x&sslmode=require"
        );
        assert_eq!(
            expand("service=shop dbname=mine", &env).unwrap(),
            "dbname=mine host='db.internal' port='6432' user='app' sslmode='require'"
        );
        // PGSERVICE names it when the string does not; no service leaves the string alone.
        let from_env = env_with(file.path(), &[("PGSERVICE", "other")]);
        assert_eq!(
            expand("postgres://app@/shop", &from_env).unwrap(),
            "postgres://app@/shop?host=elsewhere"
        );
        assert_eq!(
            expand("postgres://app@db/shop", &env).unwrap(),
            "postgres://app@db/shop"
        );
        // A string naming no service is left exactly as written.
        let spaced = "host=db  options='-c  x=1'";
        assert_eq!(expand(spaced, &env).unwrap(), spaced);
    }

    #[test]
    fn unknown_services_keys_and_lines_are_refused_with_where() {
        let file = service_file(SERVICES);
        let env = env_with(file.path(), &[]);
        let error = expand("postgres://?service=missing", &env).unwrap_err();
        assert!(
            error.contains("\"missing\"") && error.contains("PGSERVICEFILE"),
            "{error}"
        );
        for (text, says) in [
            ("[s]\nhost\n", "line 2: \"host\" is not key=value"),
            ("[s]\nservice=t\n", "nested services are not supported"),
            (
                "[s]\ngssencmode=disable\n",
                "sets \"gssencmode\", which Proteus does not read",
            ),
        ] {
            let bad = service_file(text);
            let error = expand("postgres://?service=s", &env_with(bad.path(), &[])).unwrap_err();
            assert!(error.contains(says), "{error}");
        }
    }
}

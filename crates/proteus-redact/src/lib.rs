//! Connection URLs with their secrets hidden, for messages, logs and `Debug`.
//!
//! One function for every backend, so a message naming a server never shows a password, a
//! NATS token or a password option, whichever adapter wrote it. It works on the text (no URL
//! parsing), so a URL that would not parse is still redacted rather than shown or dropped.

/// `urls` (one URL, or several separated by commas as NATS takes them) with every secret
/// replaced by `***`:
///
/// - the password of the user info (`scheme://user:PASSWORD@host`), the user kept;
/// - on NATS schemes (`nats`, `tls`, `ws`, `wss`, or none), user info without a colon, which
///   NATS reads as a token (`nats://TOKEN@host`); elsewhere it is a user name and is kept;
/// - options after the path holding `password=` (libpq's `?password=…`), dropped whole;
/// - a libpq key=value connection string (`host=… password=…`), not shown at all if it holds
///   a password.
pub fn redact(urls: &str) -> String {
    if !urls.contains("://") && urls.contains('=') {
        return if urls.contains("password") {
            "(a key=value connection string with a password)".into()
        } else {
            urls.to_owned()
        };
    }
    urls.split(',')
        .map(|one| redact_one(one.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme, rest),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None if is_nats_scheme(scheme) => format!("***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = if tail.contains("password=") {
        "/…(options with a password)"
    } else {
        tail
    };
    let separator = if scheme.is_empty() && !url.contains("://") {
        ""
    } else {
        "://"
    };
    format!("{scheme}{separator}{authority}{tail}")
}

/// Schemes NATS clients accept, where user info without a password is a token.
fn is_nats_scheme(scheme: &str) -> bool {
    matches!(
        scheme.to_ascii_lowercase().as_str(),
        "" | "nats" | "tls" | "ws" | "wss"
    )
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn secrets_are_hidden_and_everything_else_kept() {
        let cases = [
            // Nothing secret: unchanged.
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("postgres://me@db/x", "postgres://me@db/x"),
            ("redis://127.0.0.1:6379/2", "redis://127.0.0.1:6379/2"),
            ("host=db user=me dbname=x", "host=db user=me dbname=x"),
            // Passwords in the user info.
            ("nats://me:secret@h:4222", "nats://me:***@h:4222"),
            (
                "postgres://me:secret@db:5432/x",
                "postgres://me:***@db:5432/x",
            ),
            (
                "postgresql://me:s%40c@db/x?sslmode=disable",
                "postgresql://me:***@db/x?sslmode=disable",
            ),
            (
                "redis://:secret@127.0.0.1:6379",
                "redis://:***@127.0.0.1:6379",
            ),
            ("redis://default:p@ss@h:6379", "redis://default:***@h:6379"),
            ("me:secret@h:4222", "me:***@h:4222"),
            // NATS tokens; a user name elsewhere is kept.
            ("nats://token@h:4222", "nats://***@h:4222"),
            ("tls://token@h:4222", "tls://***@h:4222"),
            ("redis://alice@h:6379", "redis://alice@h:6379"),
            // Several NATS servers.
            (
                "nats://a:b@h1:1, nats://h2:2",
                "nats://a:***@h1:1,nats://h2:2",
            ),
            // Options holding a password.
            (
                "postgres://db/x?user=me&password=secret",
                "postgres://db/…(options with a password)",
            ),
            (
                "postgres://db?password=secret",
                "postgres://db/…(options with a password)",
            ),
            (
                "host=db password=secret",
                "(a key=value connection string with a password)",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(redact(url), expected, "{url}");
        }
    }

    #[test]
    fn no_input_leaks_the_secret() {
        for url in [
            "nats://u:SECRET@h",
            "SECRET@h",
            "postgres://u:SECRET@h1,h2/db",
            "postgres://h/db?password=SECRET",
            "password=SECRET host=h",
            "redis://:SECRET@h",
            "wss://SECRET@h",
        ] {
            assert!(!redact(url).contains("SECRET"), "{url} -> {}", redact(url));
        }
    }
}

//! What every NATS JetStream adapter shares, written once: the rules their configurations'
//! names and timeouts follow, URL redaction for messages, and how to start NATS. Pure: no
//! connection, no runtime. With the `client` feature, [`client::connect`] opens a client the
//! way every adapter does. With the `test-support` feature, [`test_support`] has what their
//! integration tests share (a TCP proxy that cuts connections, stream cleanup).

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "test-support")]
pub mod test_support;

/// How to start NATS with JetStream on a developer machine, for messages.
pub const START_HINT: &str = "start NATS with JetStream enabled (nats-server -js -sd <dir>; on Debian: start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server)";

/// Longest `stream_prefix`, in bytes.
pub const STREAM_PREFIX_BYTES_MAX: usize = 64;
/// Longest `subject_prefix`, in bytes.
pub const SUBJECT_PREFIX_BYTES_MAX: usize = 128;
/// Smallest timeout or poll interval an adapter accepts, in milliseconds.
pub const TIMEOUT_MS_MIN: u64 = 10;

/// How a deployment's NATS connections prove who they are, beyond what the URL holds (a user
/// and password, or a token): TLS files for servers whose certificate a private CA signed or
/// that ask clients for a certificate (`tls { verify: true }`), and the files of NATS's own
/// logins, a credentials file (a user JWT and its seed, as `nsc` and NATS services such as
/// Synadia Cloud give them) or an NKEY seed. With any TLS file set, the connection must be TLS.
/// Every adapter's configuration has one (`security`), and `proteus serve` gives all of them
/// the same (`--nats-tls-ca`, `--nats-tls-cert`, `--nats-tls-key`, `--nats-creds`,
/// `--nats-nkey`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSecurity {
    /// PEM file of the CAs that may sign the server's certificate (besides the system's).
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM certificate this client presents, with `key_file`.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<std::path::PathBuf>,
    /// A credentials file (`.creds`: a user JWT and the user's NKEY seed), for servers in
    /// operator (decentralized JWT) mode.
    pub creds_file: Option<std::path::PathBuf>,
    /// A file holding a user's NKEY seed (`SU…`), for servers that list users by NKEY.
    pub nkey_file: Option<std::path::PathBuf>,
}

impl NatsSecurity {
    /// Whether any TLS file is set (then TLS is required).
    pub fn is_set_for_tls(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Whether any file is set.
    pub fn is_set(&self) -> bool {
        self.is_set_for_tls() || self.creds_file.is_some() || self.nkey_file.is_some()
    }

    /// A client certificate needs its key and the other way round; one login at most; every
    /// file must be readable. The error names the file.
    pub fn validate(&self) -> Result<(), String> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(
                "tls: a client certificate needs both cert_file and key_file (--nats-tls-cert and --nats-tls-key)"
                    .into(),
            );
        }
        if self.creds_file.is_some() && self.nkey_file.is_some() {
            return Err(
                "a credentials file and an NKEY seed are two logins; give one (--nats-creds or --nats-nkey)"
                    .into(),
            );
        }
        for (field, path) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
            ("creds_file", &self.creds_file),
            ("nkey_file", &self.nkey_file),
        ] {
            if let Some(path) = path {
                std::fs::File::open(path)
                    .map_err(|e| format!("{field}: cannot read {}: {e}", path.display()))?;
            }
        }
        Ok(())
    }
}

/// The settings every adapter's configuration has, borrowed for [`validate`].
pub struct CommonSettings<'a> {
    pub url: &'a str,
    pub stream_prefix: &'a str,
    /// `None` for an adapter whose subjects follow from its stream names (key-value buckets).
    pub subject_prefix: Option<&'a str>,
    /// Each timeout or interval with its field name.
    pub timeouts_ms: &'a [(&'a str, u64)],
    pub replicas: usize,
}

/// Checks the common settings; the error names the field and says what is allowed.
pub fn validate(settings: &CommonSettings<'_>) -> Result<(), String> {
    let word = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if settings.url.trim().is_empty() {
        return Err("url: must not be empty (e.g. nats://127.0.0.1:4222)".into());
    }
    let stream_prefix = settings.stream_prefix;
    if !word(stream_prefix) || stream_prefix.len() > STREAM_PREFIX_BYTES_MAX {
        return Err(format!(
            "stream_prefix: must be 1 to {STREAM_PREFIX_BYTES_MAX} bytes of A-Z, a-z, 0-9, '_' or '-', got {stream_prefix:?}"
        ));
    }
    if let Some(subject_prefix) = settings.subject_prefix
        && (subject_prefix.len() > SUBJECT_PREFIX_BYTES_MAX || !subject_prefix.split('.').all(word))
    {
        return Err(format!(
            "subject_prefix: must be 1 to {SUBJECT_PREFIX_BYTES_MAX} bytes of subject tokens (A-Z, a-z, 0-9, '_', '-') separated by '.', got {subject_prefix:?}"
        ));
    }
    for (field, value) in settings.timeouts_ms {
        if *value < TIMEOUT_MS_MIN {
            return Err(format!(
                "{field}: must be at least {TIMEOUT_MS_MIN}, got {value}"
            ));
        }
    }
    if ![1, 3, 5].contains(&settings.replicas) {
        return Err(format!(
            "replicas: must be 1, 3 or 5, got {}",
            settings.replicas
        ));
    }
    Ok(())
}

pub use proteus_redact::redact;

#[cfg(test)]
mod tests {
    use super::*;

    fn settings<'a>(stream_prefix: &'a str, subject_prefix: &'a str) -> CommonSettings<'a> {
        CommonSettings {
            url: "nats://127.0.0.1:4222",
            stream_prefix,
            subject_prefix: Some(subject_prefix),
            timeouts_ms: &[("request_timeout_ms", 5_000)],
            replicas: 1,
        }
    }

    #[test]
    fn bad_fields_are_named() {
        assert!(validate(&settings("PROTEUS", "proteus.events")).is_ok());
        assert!(
            validate(&settings("a.b", "p"))
                .unwrap_err()
                .starts_with("stream_prefix")
        );
        assert!(
            validate(&settings("P", "a..b"))
                .unwrap_err()
                .starts_with("subject_prefix")
        );
        let short = CommonSettings {
            timeouts_ms: &[("wait_poll_interval_ms", 1)],
            ..settings("P", "p")
        };
        assert!(
            validate(&short)
                .unwrap_err()
                .starts_with("wait_poll_interval_ms")
        );
        let even = CommonSettings {
            replicas: 2,
            ..settings("P", "p")
        };
        assert!(validate(&even).unwrap_err().starts_with("replicas"));
        let empty = CommonSettings {
            url: " ",
            ..settings("P", "p")
        };
        assert!(validate(&empty).unwrap_err().starts_with("url"));
    }
}

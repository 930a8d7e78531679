//! TLS to PostgreSQL as libpq does it, so a team's existing connection string just works:
//! `sslmode` (`disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full`) and
//! `sslrootcert` (a PEM file of trusted CAs, or `system`) in the URL or key=value string.
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require`, and never `sslrootcert`,
//! so [`split`] takes those out of the string it is given and [`connector`] builds the rustls
//! configuration that gives each mode libpq's meaning:
//!
//! | sslmode | TLS | certificate chain checked | host name checked |
//! |---|---|---|---|
//! | `disable` | never | | |
//! | `allow`, `prefer` (the default) | when the server offers it | no | no |
//! | `require` | always | only with `sslrootcert` (as libpq) | no |
//! | `verify-ca` | always | yes | no |
//! | `verify-full` | always | yes | yes |
//!
//! `verify-ca` and `verify-full` trust the CAs of `sslrootcert`, or the system's when it is
//! absent or `system`. (`allow` tries TLS first where libpq tries plain first: either way the
//! connection is made when the server takes one of the two.) `sslcert` and `sslkey` name a
//! client certificate (PEM, its chain allowed) and its unencrypted key, shown to a server that
//! asks for one (`cert` authentication, or `clientcert=verify-*` in `pg_hba.conf`); both must
//! be given, since libpq's defaults under `~/.postgresql/` are not read. `sslpassword` (an
//! encrypted key) is refused with how to decrypt the key.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};

/// What makes the TLS connections of a pool or a single client.
pub type Tls = tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }

    /// The nearest mode tokio-postgres parses; [`connector`] adds the checks it lacks.
    fn for_driver(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow | SslMode::Prefer => "prefer",
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
        }
    }
}

/// Where trusted CA certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file (`sslrootcert=/path/ca.pem`).
    File(PathBuf),
    /// The operating system's store (`sslrootcert=system`).
    System,
}

/// The TLS part of a connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_certs: Option<RootCerts>,
    /// `sslcert`: the client's certificate (PEM; its chain may follow it).
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: the client certificate's private key (PEM, unencrypted).
    pub client_key: Option<PathBuf>,
}

/// Splits `url` (a `postgres://` URL or a key=value string) into the string tokio-postgres
/// parses (`sslmode` mapped to the nearest mode it knows, `sslrootcert` and the client
/// certificate's files removed) and the TLS settings. A setting the string lacks is taken from
/// libpq's environment variable (`PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`), read
/// through `env`. `Err` says which setting is wrong.
pub fn split(
    url: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, TlsSettings), String> {
    let mut settings = TlsSettings {
        mode: SslMode::Prefer,
        root_certs: None,
        client_cert: None,
        client_key: None,
    };
    let mut mode_written = false;
    let mut take = |key: &str, value: &str| -> Result<Kept, String> {
        match key {
            "sslmode" => {
                mode_written = true;
                settings.mode = SslMode::parse(value)?;
                Ok(Kept::Replaced(format!(
                    "sslmode={}",
                    settings.mode.for_driver()
                )))
            }
            "sslrootcert" => {
                settings.root_certs = Some(if value == "system" {
                    RootCerts::System
                } else {
                    RootCerts::File(PathBuf::from(value))
                });
                Ok(Kept::Dropped)
            }
            "sslcert" => {
                settings.client_cert = Some(PathBuf::from(value));
                Ok(Kept::Dropped)
            }
            "sslkey" => {
                settings.client_key = Some(PathBuf::from(value));
                Ok(Kept::Dropped)
            }
            "sslpassword" => Err(
                "sslpassword: encrypted private keys are not supported; decrypt the key (openssl pkey -in key.pem -out plain-key.pem), keep it readable by Proteus alone, and name it with sslkey=".to_owned(),
            ),
            _ => Ok(Kept::AsWritten),
        }
    };
    let is_url = url.contains("://");
    let driver = match url.split_once('?') {
        Some((base, query)) if is_url => {
            let mut kept = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                match take(key, &percent_decode(value))? {
                    Kept::Replaced(replaced) => kept.push(replaced),
                    Kept::AsWritten => kept.push(pair.to_owned()),
                    Kept::Dropped => {}
                }
            }
            if kept.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        }
        _ if is_url => url.to_owned(),
        _ => {
            let mut kept = Vec::new();
            for token in url.split_whitespace() {
                let Some((key, value)) = token.split_once('=') else {
                    kept.push(token.to_owned());
                    continue;
                };
                match take(key, value.trim_matches('\''))? {
                    Kept::Replaced(replaced) => kept.push(replaced),
                    Kept::AsWritten => kept.push(token.to_owned()),
                    Kept::Dropped => {}
                }
            }
            kept.join(" ")
        }
    };
    let driver = with_libpq_environment(driver, is_url, mode_written, &mut settings, env)?;
    match (&settings.client_cert, &settings.client_key) {
        (Some(_), None) => {
            return Err(
                "sslcert without sslkey: name the certificate's private key with sslkey=/path/key.pem (libpq's default ~/.postgresql/postgresql.key is not read)"
                    .to_owned(),
            );
        }
        (None, Some(_)) => {
            return Err(
                "sslkey without sslcert: name the client certificate with sslcert=/path/cert.pem (libpq's default ~/.postgresql/postgresql.crt is not read)"
                    .to_owned(),
            );
        }
        _ => {}
    }
    Ok((driver, settings))
}

/// Fills what the string left out from libpq's environment variables, as `psql` would, and
/// writes the mode into the driver's string when one came from `PGSSLMODE`.
fn with_libpq_environment(
    driver: String,
    is_url: bool,
    mode_written: bool,
    settings: &mut TlsSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let set = |name: &str| env(name).filter(|value| !value.is_empty());
    if settings.root_certs.is_none() {
        settings.root_certs = set("PGSSLROOTCERT").map(|value| {
            if value == "system" {
                RootCerts::System
            } else {
                RootCerts::File(PathBuf::from(value))
            }
        });
    }
    if settings.client_cert.is_none() {
        settings.client_cert = set("PGSSLCERT").map(PathBuf::from);
    }
    if settings.client_key.is_none() {
        settings.client_key = set("PGSSLKEY").map(PathBuf::from);
    }
    if mode_written {
        return Ok(driver);
    }
    let Some(mode) = set("PGSSLMODE") else {
        return Ok(driver);
    };
    settings.mode = SslMode::parse(&mode).map_err(|e| format!("PGSSLMODE: {e}"))?;
    let written = format!("sslmode={}", settings.mode.for_driver());
    Ok(match (is_url, driver.contains('?')) {
        (true, true) => format!("{driver}&{written}"),
        (true, false) => format!("{driver}?{written}"),
        (false, _) => format!("{driver} {written}"),
    })
}

/// What becomes of one setting in the driver's string.
enum Kept {
    AsWritten,
    /// Written again, as the driver understands it.
    Replaced(String),
    /// Taken out: the driver refuses a key it does not know.
    Dropped,
}

/// `%XX` escapes of a URL query value (a path with spaces, say).
fn percent_decode(value: &str) -> String {
    percent_encoding::percent_decode_str(value)
        .decode_utf8_lossy()
        .into_owned()
}

/// The rustls configuration for `settings`, or why it cannot be built (a root certificate
/// file that cannot be read or holds no certificate).
pub fn connector(settings: &TlsSettings) -> Result<Tls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    let roots = || match &settings.root_certs {
        Some(RootCerts::File(path)) => roots_from_file(path),
        Some(RootCerts::System) | None => system_roots(),
    };
    let verified_chain = |roots: RootCertStore| {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("cannot set up TLS certificate checks: {e}"))
    };
    let verifier: Arc<dyn ServerCertVerifier> = match settings.mode {
        SslMode::VerifyFull => verified_chain(roots()?)?,
        SslMode::VerifyCa => Arc::new(ChainOnly(verified_chain(roots()?)?)),
        SslMode::Require if settings.root_certs.is_some() => {
            Arc::new(ChainOnly(verified_chain(roots()?)?))
        }
        SslMode::Disable | SslMode::Allow | SslMode::Prefer | SslMode::Require => {
            Arc::new(EncryptionOnly(provider.signature_verification_algorithms))
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&settings.client_cert, &settings.client_key) {
        (Some(cert_file), Some(key_file)) => {
            let (chain, key) = client_identity(cert_file, key_file)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "sslkey {} is not the private key of sslcert {}: {e}",
                    key_file.display(),
                    cert_file.display()
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Tls::new(config))
}

/// The client certificate's chain and its private key, read from PEM files.
fn client_identity(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| {
            format!(
                "cannot read sslcert {}: {e}; name a readable PEM file holding the client certificate",
                cert.display()
            )
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "sslcert {} is not a PEM file of certificates: {e}",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "sslcert {} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)",
            cert.display()
        ));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "cannot read sslkey {}: {e}; name a readable, unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)",
            key.display()
        )
    })?;
    Ok((chain, private_key))
}

fn roots_from_file(path: &std::path::Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
        format!(
            "cannot read sslrootcert {}: {e}; name a readable PEM file of CA certificates",
            path.display()
        )
    })?;
    for cert in certs {
        let cert = cert.map_err(|e| {
            format!(
                "sslrootcert {} is not a PEM file of certificates: {e}",
                path.display()
            )
        })?;
        roots.add(cert).map_err(|e| {
            format!(
                "sslrootcert {} holds a certificate that cannot be trusted as a CA: {e}",
                path.display()
            )
        })?;
    }
    if roots.is_empty() {
        return Err(format!(
            "sslrootcert {} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(format!(
            "no CA certificate found in the system's store{}; name a PEM file of CAs with sslrootcert=/path/ca.pem",
            found
                .errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    Ok(roots)
}

/// libpq's `prefer` and `require` without a root certificate: the connection is encrypted
/// and the handshake's signatures are checked, but not who signed the certificate.
#[derive(Debug)]
struct EncryptionOnly(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for EncryptionOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// libpq's `verify-ca`: the chain must lead to a trusted CA; the name in the certificate is
/// not compared with the host.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What to do about a TLS failure, from its cause's text (rustls's and tokio-postgres's).
pub(crate) fn hint(cause: &str) -> &'static str {
    if cause.contains("UnknownIssuer") || cause.contains("unknown issuer") {
        "the server's certificate is not signed by a trusted CA: name the CA with sslrootcert=/path/ca.pem in the URL (sslrootcert=system for the system's CAs), or use sslmode=require to encrypt without checking the certificate"
    } else if cause.contains("NotValidForName") || cause.contains("not valid for name") {
        "the server's certificate does not name the host of the URL: connect by a name the certificate lists, or use sslmode=verify-ca to check only the CA"
    } else if cause.contains("received fatal alert") {
        "the server ended the TLS connection: if it checks client certificates, name one signed by a CA in its ssl_ca_file with sslcert=/path/cert.pem&sslkey=/path/key.pem (its log says why it refused)"
    } else if cause.contains("does not support TLS") {
        "the server does not accept TLS (ssl = off in postgresql.conf): turn it on there, or use sslmode=prefer or sslmode=disable"
    } else {
        "check the server's TLS settings and sslmode / sslrootcert in the URL"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn libpq_settings_are_taken_out_of_urls_and_key_value_strings() {
        let (driver, settings) = split(
            "postgres://u:p@db.example:5432/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%201.pem",
            &no_env,
        )
        .unwrap();
        assert_eq!(
            driver,
            "postgres://u:p@db.example:5432/app?application_name=x&sslmode=require"
        );
        assert_eq!(settings.mode, SslMode::VerifyFull);
        assert_eq!(
            settings.root_certs,
            Some(RootCerts::File(PathBuf::from("/etc/ca 1.pem")))
        );

        let (driver, settings) = split("postgres://u@h/db?sslrootcert=system", &no_env).unwrap();
        assert_eq!(driver, "postgres://u@h/db");
        assert_eq!(settings.mode, SslMode::Prefer, "libpq's default");
        assert_eq!(settings.root_certs, Some(RootCerts::System));

        let (driver, settings) = split(
            "host=db user=u sslmode=verify-ca sslrootcert=/ca.pem dbname=app",
            &no_env,
        )
        .unwrap();
        assert_eq!(driver, "host=db user=u sslmode=require dbname=app");
        assert_eq!(settings.mode, SslMode::VerifyCa);

        let (driver, settings) = split("postgres://u@h/db", &no_env).unwrap();
        assert_eq!(driver, "postgres://u@h/db");
        assert_eq!(settings.mode, SslMode::Prefer);
        assert_eq!((settings.client_cert, settings.client_key), (None, None));

        let (driver, settings) =
            split("postgres://app@h/db?sslcert=%2Fkeys%2Fapp.crt&sslkey=/keys/app.key&sslmode=verify-full", &no_env)
                .unwrap();
        assert_eq!(driver, "postgres://app@h/db?sslmode=require");
        assert_eq!(settings.client_cert, Some(PathBuf::from("/keys/app.crt")));
        assert_eq!(settings.client_key, Some(PathBuf::from("/keys/app.key")));
        assert_eq!(
            split("postgres://h/db?sslmode=allow", &no_env).unwrap().0,
            "postgres://h/db?sslmode=prefer"
        );
    }

    #[test]
    fn libpq_environment_variables_fill_what_the_url_leaves_out() {
        let env = |name: &str| match name {
            "PGSSLMODE" => Some("verify-full".to_owned()),
            "PGSSLROOTCERT" => Some("/env/ca.pem".to_owned()),
            "PGSSLCERT" => Some("/env/app.crt".to_owned()),
            "PGSSLKEY" => Some("/env/app.key".to_owned()),
            _ => None,
        };
        let (driver, settings) = split("postgres://u@h/db", &env).unwrap();
        assert_eq!(driver, "postgres://u@h/db?sslmode=require");
        assert_eq!(settings.mode, SslMode::VerifyFull);
        assert_eq!(
            settings.root_certs,
            Some(RootCerts::File(PathBuf::from("/env/ca.pem")))
        );
        assert_eq!(settings.client_cert, Some(PathBuf::from("/env/app.crt")));
        let (driver, _) = split("host=h user=u", &env).unwrap();
        assert_eq!(driver, "host=h user=u sslmode=require");
        // What the URL says wins.
        let (driver, settings) = split(
            "postgres://u@h/db?application_name=a&sslmode=disable&sslrootcert=system",
            &env,
        )
        .unwrap();
        assert_eq!(
            driver,
            "postgres://u@h/db?application_name=a&sslmode=disable"
        );
        assert_eq!(settings.mode, SslMode::Disable);
        assert_eq!(settings.root_certs, Some(RootCerts::System));
        let wrong = |name: &str| (name == "PGSSLMODE").then(|| "on".to_owned());
        let error = split("postgres://u@h/db", &wrong).unwrap_err();
        assert!(error.starts_with("PGSSLMODE: "), "{error}");
    }

    #[test]
    fn wrong_settings_say_what_is_accepted() {
        let error = split("postgres://h/db?sslmode=verify", &no_env).unwrap_err();
        assert!(error.contains("verify-full"), "{error}");
        let error = split("postgres://h/db?sslcert=/c.pem", &no_env).unwrap_err();
        assert!(error.contains("sslcert without sslkey"), "{error}");
        let error = split("host=h sslkey=/k.pem", &no_env).unwrap_err();
        assert!(error.contains("sslkey without sslcert"), "{error}");
        let error = split(
            "postgres://h/db?sslcert=/c.pem&sslkey=/k.pem&sslpassword=x",
            &no_env,
        )
        .unwrap_err();
        assert!(
            error.contains("encrypted private keys are not supported")
                && error.contains("openssl pkey"),
            "{error}"
        );
        let error = connector(&TlsSettings {
            mode: SslMode::VerifyFull,
            root_certs: Some(RootCerts::File("/nonexistent/ca.pem".into())),
            client_cert: None,
            client_key: None,
        })
        .err()
        .unwrap();
        assert!(
            error.contains("cannot read sslrootcert /nonexistent/ca.pem"),
            "{error}"
        );
        let error = connector(&TlsSettings {
            mode: SslMode::Require,
            root_certs: None,
            client_cert: Some("/nonexistent/app.crt".into()),
            client_key: Some("/nonexistent/app.key".into()),
        })
        .err()
        .unwrap();
        assert!(
            error.contains("cannot read sslcert /nonexistent/app.crt"),
            "{error}"
        );
    }
}

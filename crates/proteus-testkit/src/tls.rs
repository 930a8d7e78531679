//! A certificate authority of a test's own and the certificates it signs (rcgen), for the
//! private servers (NATS, Redis, PostgreSQL) that tests run with TLS.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A CA made for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
pub struct SignedPem {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: OpenSSL (Redis) takes a certificate whose subject is its issuer's
        // for a self-signed one, and rcgen gives every certificate the same default name.
        params
            .distinguished_name
            .push(DnType::CommonName, "Proteus test CA");
        let key = KeyPair::generate().expect("a key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("a CA certificate"),
        }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` (host names or IP addresses; none for a client) with
    /// `common_name`, signed by this CA.
    pub fn sign(&self, names: &[&str], common_name: &str) -> SignedPem {
        let key = KeyPair::generate().expect("a key");
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer).expect("a certificate");
        SignedPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// Certificates made for one test by a CA of its own, as PEM files in a directory.
pub struct TlsFiles {
    pub ca: PathBuf,
    /// For `127.0.0.1` and `localhost`.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate the same CA signed.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Makes a CA and the certificates of [`TlsFiles`] in `dir`.
pub fn make_tls_files(dir: &Path) -> TlsFiles {
    let ca = TestCa::new();
    let write = |name: &str, contents: &str| {
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("cannot write a certificate file");
        path
    };
    let server = ca.sign(&["127.0.0.1", "localhost"], "proteus-test-server");
    let client = ca.sign(&[], "proteus-client");
    TlsFiles {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server.cert),
        server_key: write("server-key.pem", &server.key),
        client_cert: write("client.pem", &client.cert),
        client_key: write("client-key.pem", &client.key),
    }
}

//! TLS as libpq's `sslmode` and `sslrootcert` ask for it, against a private server with a
//! certificate for `localhost` signed by a CA made for the test. Every connection goes through
//! `Connection::open` (the migrating connection, then the pool), as every adapter's do, and
//! the server itself says whether the connection is encrypted (`pg_stat_ssl`).

use proteus_postgres::PgError;
use proteus_postgres::test_support::PrivatePostgres;
use proteus_testkit::tls::TestCa;

/// A CA, and a server certificate for `localhost` it signed (PEM).
struct Certificates {
    ca_pem: String,
    server_pem: String,
    server_key_pem: String,
}

fn certificates() -> Certificates {
    let ca = TestCa::new();
    let server = ca.sign(&["localhost"], "localhost");
    Certificates {
        ca_pem: ca.pem(),
        server_pem: server.cert,
        server_key_pem: server.key,
    }
}

/// Opens a pool on `url` as every adapter does and asks the server whether the pooled
/// connection is encrypted.
async fn encrypted(url: &str) -> Result<bool, PgError> {
    let ssl = crate::ask_pooled(
        url,
        "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await?;
    Ok(ssl == "true")
}

#[tokio::test]
async fn sslmode_and_sslrootcert_mean_what_they_mean_to_libpq() {
    let made = certificates();
    let server = PrivatePostgres::start().await;
    server
        .enable_tls(&made.server_pem, &made.server_key_pem)
        .await;
    let files = tempfile::tempdir().unwrap();
    let ca = files.path().join("ca.pem");
    std::fs::write(&ca, &made.ca_pem).unwrap();
    let other_ca = files.path().join("other-ca.pem");
    std::fs::write(&other_ca, certificates().ca_pem).unwrap();
    let ca = ca.display();
    let port = server.port;
    let at =
        |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/postgres?{query}");

    // libpq's default (prefer) encrypts when the server offers TLS; disable does not.
    assert!(encrypted(&server.url()).await.unwrap());
    assert!(
        !encrypted(&at("127.0.0.1", "sslmode=disable"))
            .await
            .unwrap()
    );
    // require encrypts without checking the certificate, as libpq does.
    assert!(
        encrypted(&at("127.0.0.1", "sslmode=require"))
            .await
            .unwrap()
    );
    // verify-full checks the CA and the host name.
    assert!(
        encrypted(&at(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}")
        ))
        .await
        .unwrap()
    );
    // The certificate names localhost, not 127.0.0.1: verify-full refuses, verify-ca accepts.
    let wrong_name = encrypted(&at(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .unwrap_err();
    assert!(!wrong_name.retriable, "{wrong_name}");
    assert!(
        wrong_name.message.contains("does not name the host")
            && wrong_name.message.contains("verify-ca"),
        "{wrong_name}"
    );
    assert!(
        encrypted(&at(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={ca}")
        ))
        .await
        .unwrap()
    );
    // A certificate signed by a CA that is not trusted is refused, saying what to name.
    let untrusted = encrypted(&at(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
    ))
    .await
    .unwrap_err();
    assert!(!untrusted.retriable, "{untrusted}");
    assert!(
        untrusted.message.contains("TLS with PostgreSQL")
            && untrusted.message.contains("sslrootcert="),
        "{untrusted}"
    );
    assert!(!untrusted.message.contains("pg_ctlcluster"), "{untrusted}");
    // require with a root certificate checks the CA too (libpq's rule).
    let untrusted = encrypted(&at(
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={}", other_ca.display()),
    ))
    .await
    .unwrap_err();
    assert!(!untrusted.retriable, "{untrusted}");
}

#[tokio::test]
async fn required_tls_on_a_server_without_it_is_refused_with_what_to_change() {
    let server = PrivatePostgres::start().await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
        server.port
    );
    let refused = encrypted(&url).await.unwrap_err();
    assert!(!refused.retriable, "{refused}");
    assert!(
        refused.message.contains("does not accept TLS")
            && refused.message.contains("sslmode=prefer"),
        "{refused}"
    );
    // prefer falls back to a plain connection.
    assert!(!encrypted(&server.url()).await.unwrap());
}

#[tokio::test]
async fn sslcert_and_sslkey_log_in_a_user_the_server_authenticates_by_certificate() {
    let made = certificates();
    let server = PrivatePostgres::start().await;
    server
        .enable_tls(&made.server_pem, &made.server_key_pem)
        .await;
    let clients_ca = TestCa::new();
    server
        .require_client_certificate("app", &clients_ca.pem())
        .await;
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, contents: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    };
    let server_ca = write("server-ca.pem", &made.ca_pem);
    // A client certificate's common name is the user it logs in.
    let app = clients_ca.sign(&[], "app");
    let (app_cert, app_key) = (write("app.crt", &app.cert), write("app.key", &app.key));
    let other = clients_ca.sign(&[], "someone-else");
    let (other_cert, other_key) = (
        write("other.crt", &other.cert),
        write("other.key", &other.key),
    );
    let untrusted = TestCa::new().sign(&[], "app");
    let (untrusted_cert, untrusted_key) = (
        write("untrusted.crt", &untrusted.cert),
        write("untrusted.key", &untrusted.key),
    );
    let port = server.port;
    let as_app = |query: &str| {
        format!(
            "postgres://app@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={server_ca}{query}"
        )
    };

    // The certificate logs the user in, over a connection checked both ways.
    assert!(
        encrypted(&as_app(&format!("&sslcert={app_cert}&sslkey={app_key}")))
            .await
            .unwrap()
    );
    // The same in libpq's key=value form, with the default sslmode (prefer).
    assert!(
        encrypted(&format!(
            "host=localhost port={port} user=app dbname=postgres sslcert={app_cert} sslkey={app_key}"
        ))
        .await
        .unwrap()
    );

    // Without one, the server's refusal comes with what to give it.
    let refused = encrypted(&as_app("")).await.unwrap_err();
    assert!(!refused.retriable, "{refused}");
    assert!(
        refused.message.contains("client certificate") && refused.message.contains("sslcert="),
        "{refused}"
    );
    // A certificate for another user is refused by the server.
    let refused = encrypted(&as_app(&format!(
        "&sslcert={other_cert}&sslkey={other_key}"
    )))
    .await
    .unwrap_err();
    assert!(!refused.retriable, "{refused}");
    assert!(refused.message.contains("certificate"), "{refused}");
    // A certificate from a CA the server does not trust is refused too.
    let refused = encrypted(&as_app(&format!(
        "&sslcert={untrusted_cert}&sslkey={untrusted_key}"
    )))
    .await
    .unwrap_err();
    assert!(!refused.retriable, "{refused}");
    assert!(
        refused.message.contains("ended the TLS connection")
            && refused.message.contains("ssl_ca_file"),
        "{refused}"
    );
    assert!(!refused.message.contains("pg_ctlcluster"), "{refused}");
    // A key that is not the certificate's is caught before connecting.
    let mismatched = encrypted(&as_app(&format!("&sslcert={app_cert}&sslkey={other_key}")))
        .await
        .unwrap_err();
    assert!(!mismatched.retriable, "{mismatched}");
    assert!(
        mismatched
            .message
            .contains("is not the private key of sslcert"),
        "{mismatched}"
    );
}

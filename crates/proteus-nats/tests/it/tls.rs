//! TLS with a deployment's own CA and client certificates (`NatsSecurity`), against private
//! servers started with `--tls` (and `--tlsverify`) and certificates made for the test by a CA
//! of its own: what every NATS adapter's connection does with `--nats-tls-*`.

use proteus_nats::NatsSecurity;
use proteus_nats::client::{ClientSettings, connect};
use proteus_nats::test_support::{PrivateNatsServer, ServerTls, make_tls_files};

async fn connect_with(url: &str, tls: &NatsSecurity) -> Result<async_nats::Client, String> {
    connect(&ClientSettings {
        url,
        name: "proteus-it-tls",
        connect_timeout_ms: 2_000,
        request_timeout_ms: 2_000,
        reconnect_delay_max_ms: 1_000,
        connections: None,
        security: tls,
    })
    .await
}

#[tokio::test]
async fn a_private_ca_is_trusted_when_named_and_refused_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let files = make_tls_files(dir.path());
    let server = PrivateNatsServer::start_with(
        None,
        Some(ServerTls {
            cert_file: files.server_cert.clone(),
            key_file: files.server_key.clone(),
            verify_clients_ca_file: None,
        }),
    )
    .await;
    let url = format!("tls://127.0.0.1:{}", server.port);
    let with_ca = NatsSecurity {
        ca_file: Some(files.ca.clone()),
        ..NatsSecurity::default()
    };
    connect_with(&url, &with_ca)
        .await
        .expect("TLS with the named CA, and JetStream answers");
    // A plain nats:// URL gets TLS too once a CA file is given (TLS is then required).
    connect_with(&format!("nats://127.0.0.1:{}", server.port), &with_ca)
        .await
        .expect("TLS required by the CA file");

    let refused = connect_with(&url, &NatsSecurity::default())
        .await
        .unwrap_err();
    assert!(refused.contains("TLS with NATS"), "{refused}");
    assert!(refused.contains("--nats-tls-ca"), "{refused}");
    assert!(!refused.contains("is it running"), "{refused}");

    let missing = NatsSecurity {
        ca_file: Some(dir.path().join("nowhere.pem")),
        ..NatsSecurity::default()
    };
    let refused = connect_with(&url, &missing).await.unwrap_err();
    assert!(refused.contains("ca_file: cannot read"), "{refused}");
}

#[tokio::test]
async fn a_server_that_verifies_clients_takes_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let files = make_tls_files(dir.path());
    let server = PrivateNatsServer::start_with(
        None,
        Some(ServerTls {
            cert_file: files.server_cert.clone(),
            key_file: files.server_key.clone(),
            verify_clients_ca_file: Some(files.ca.clone()),
        }),
    )
    .await;
    let url = format!("tls://127.0.0.1:{}", server.port);
    let without_certificate = NatsSecurity {
        ca_file: Some(files.ca.clone()),
        ..NatsSecurity::default()
    };
    let refused = connect_with(&url, &without_certificate).await.unwrap_err();
    assert!(refused.contains("NATS at"), "{refused}");
    let with_certificate = NatsSecurity {
        ca_file: Some(files.ca.clone()),
        cert_file: Some(files.client_cert.clone()),
        key_file: Some(files.client_key.clone()),
        ..NatsSecurity::default()
    };
    connect_with(&url, &with_certificate)
        .await
        .expect("TLS with a client certificate the server's CA signed");

    let half = NatsSecurity {
        cert_file: Some(files.client_cert.clone()),
        ..without_certificate
    };
    let refused = connect_with(&url, &half).await.unwrap_err();
    assert!(
        refused.contains("needs both cert_file and key_file"),
        "{refused}"
    );
}

//! `proteus serve` on a NATS server that requires TLS with a private CA and a login: the log,
//! the event store and the groups all connect with the URL's user and password and
//! `--nats-tls-ca`, and the server works as usual; without the CA it does not start, and says
//! which flag is missing.

use std::process::Command;

use proteus_nats::test_support::{Login, PrivateNatsServer, ServerTls, make_tls_files};
use serde_json::{Value, json};

use crate::support::{BINARY, ServerProcess};

const PASSWORD: &str = "s3cret-for-tls-test";

#[test]
fn serve_reaches_nats_over_tls_with_a_private_ca_and_a_login() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = make_tls_files(dir.path());
    let nats = runtime.block_on(PrivateNatsServer::start_with(
        Some(Login::UserPassword("app".into(), PASSWORD.into())),
        Some(ServerTls {
            cert_file: files.server_cert.clone(),
            key_file: files.server_key.clone(),
            verify_clients_ca_file: None,
        }),
    ));
    let url = format!("tls://app:{PASSWORD}@127.0.0.1:{}", nats.port);
    let data_dir = dir.path().join("data");

    let output = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .args(["--storage-log", &url])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TLS with NATS") && stderr.contains("--nats-tls-ca"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(PASSWORD),
        "the password is not shown: {stderr}"
    );

    let ca = files.ca.display().to_string();
    let server = ServerProcess::start_with(
        &data_dir,
        &[
            "--storage-log",
            &url,
            "--event-store",
            &url,
            "--groups",
            &url,
            "--nats-tls-ca",
            &ca,
        ],
        &[],
    );
    let http = reqwest::blocking::Client::new();
    let ready: Value = http
        .get(format!("{}/readyz", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["backends"].as_array().unwrap().len(), 3, "{ready}");

    let created = http
        .put(format!("{}/v1/topics/orders", server.url))
        .json(&json!({"partitions": 1}))
        .send()
        .unwrap();
    assert!(created.status().is_success(), "{}", created.status());
    let published = http
        .post(format!("{}/v1/topics/orders/events", server.url))
        .header("content-type", "application/cloudevents+json")
        .body(
            json!({"specversion": "1.0", "id": "o1", "source": "/shop", "type": "order.placed"})
                .to_string(),
        )
        .send()
        .unwrap();
    assert!(published.status().is_success(), "{}", published.status());
    let read: Value = http
        .get(format!(
            "{}/v1/topics/orders/partitions/0/events?from=0&limit=10",
            server.url
        ))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(read["events"][0]["event"]["id"], "o1", "{read}");

    let appended = http
        .post(format!("{}/v1/streams/order-1", server.url))
        .json(&json!({"type": "OrderPlaced", "data": {"total": 3}}))
        .send()
        .unwrap();
    assert_eq!(appended.status().as_u16(), 201);
    let stream: Value = http
        .get(format!("{}/v1/streams/order-1", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(stream["events"][0]["data"]["total"], 3, "{stream}");

    let logs = server.logs.lock().unwrap().join("\n");
    assert!(!logs.contains(PASSWORD), "the password is not logged");
}

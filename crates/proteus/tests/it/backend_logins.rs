//! `proteus serve` logging in to backends the ways their own clients do. NATS: a server that
//! requires TLS with a private CA and a password, and one in operator mode (a credentials
//! file): the log, the event store and the groups all connect with what they are given (the
//! URL's user and password and `--nats-tls-ca`; `--nats-creds`), and the server works as
//! usual; without it, it does not start, and says which flag is missing. PostgreSQL: a
//! password from `PGPASSWORD`, as libpq takes it, for a URL without one; and a bare
//! `postgres://` completed from `PGHOST`, `PGPORT`, `PGDATABASE`, `PGUSER` and a password file,
//! or from a libpq service file (`service=` or `PGSERVICE`).

use std::path::Path;
use std::process::Command;

use proteus_nats::test_support::{
    Login, OperatorLogin, PrivateNatsServer, ServerTls, make_tls_files,
};
use proteus_postgres::test_support::PrivatePostgres;
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

    let stderr = refused_start(&data_dir, &["--storage-log", &url], &[]);
    assert!(
        stderr.contains("TLS with NATS") && stderr.contains("--nats-tls-ca"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(PASSWORD),
        "the password is not shown: {stderr}"
    );

    let ca = files.ca.display().to_string();
    let server = serve_with_every_nats_store_on(&data_dir, &url, &["--nats-tls-ca", &ca]);
    topics_and_streams_work(&server);
    let logs = server.logs.lock().unwrap().join("\n");
    assert!(!logs.contains(PASSWORD), "the password is not logged");
}

#[test]
fn serve_logs_in_to_nats_in_operator_mode_with_a_credentials_file() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let login = OperatorLogin::generate();
    let nats = runtime.block_on(PrivateNatsServer::start_with_login(Some(Login::Operator(
        login.clone(),
    ))));
    let creds = dir.path().join("app.creds");
    std::fs::write(&creds, &login.user_creds).unwrap();
    let url = nats.url();
    let data_dir = dir.path().join("data");

    let stderr = refused_start(&data_dir, &["--storage-log", &url], &[]);
    assert!(
        stderr.contains("refused the connection") && stderr.contains("--nats-creds"),
        "{stderr}"
    );

    let creds = creds.display().to_string();
    let server = serve_with_every_nats_store_on(&data_dir, &url, &["--nats-creds", &creds]);
    topics_and_streams_work(&server);
    let logs = server.logs.lock().unwrap().join("\n");
    let seed = login
        .user_creds
        .lines()
        .find(|l| l.starts_with("SU"))
        .unwrap();
    assert!(!logs.contains(seed), "the seed is not logged");
}

/// `proteus serve` with its log, event store and groups on the NATS at `url`, and `login`
/// (the flags that reach it).
fn serve_with_every_nats_store_on(data_dir: &Path, url: &str, login: &[&str]) -> ServerProcess {
    let mut args = vec!["--storage-log", url, "--event-store", url, "--groups", url];
    args.extend_from_slice(login);
    ServerProcess::start_with(data_dir, &args, &[])
}

/// Runs `proteus serve` on `data_dir` with `args` and `env` (and no `PGPASSWORD` of this
/// process's), which must fail to start; its standard error.
fn refused_start(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env_remove("PGPASSWORD")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!output.status.success(), "proteus serve started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `/readyz` lists the three NATS backends as up, a topic takes and serves an event, and a
/// stream an append.
fn topics_and_streams_work(server: &ServerProcess) {
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
}

/// A private PostgreSQL on which the user `app` logs in with `password` only.
fn postgres_where_app_needs(runtime: &tokio::runtime::Runtime, password: &str) -> PrivatePostgres {
    runtime.block_on(async {
        let server = PrivatePostgres::start().await;
        server.require_password("app", password).await;
        server
    })
}

/// `server` appends to a stream, and `secret` is in none of its log lines.
fn appends_and_never_logs(server: &ServerProcess, secret: &str) {
    let appended = reqwest::blocking::Client::new()
        .post(format!("{}/v1/streams/order-1", server.url))
        .json(&json!({"type": "OrderPlaced", "data": {"total": 3}}))
        .send()
        .unwrap();
    assert_eq!(appended.status().as_u16(), 201);
    let logs = server.logs.lock().unwrap().join("\n");
    assert!(!logs.contains(secret), "the secret is not logged");
}

#[test]
fn serve_takes_the_postgres_password_from_pgpassword_as_libpq_does() {
    const PG_PASSWORD: &str = "pg-secret-from-env";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let postgres = postgres_where_app_needs(&runtime, PG_PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let url = format!("postgres://app@127.0.0.1:{}/postgres", postgres.port);

    for (env, says) in [
        (None, "asks for a password and none is given"),
        (Some("wrong"), "password authentication failed"),
    ] {
        let env: Vec<(&str, &str)> = env
            .map(|password| ("PGPASSWORD", password))
            .into_iter()
            .collect();
        let stderr = refused_start(&data_dir, &["--event-store", &url], &env);
        assert!(
            stderr.contains(says) && stderr.contains("PGPASSWORD"),
            "{stderr}"
        );
        assert!(!stderr.contains("is it running"), "{stderr}");
    }

    let server = ServerProcess::start_with(
        &data_dir,
        &["--event-store", &url],
        &[("PGPASSWORD", PG_PASSWORD)],
    );
    appends_and_never_logs(&server, PG_PASSWORD);
}

/// A URL that is only `postgres://`, everything else from libpq's variables and the password
/// from a password file, as a Kubernetes operator's secret hands them to `psql`.
#[test]
fn serve_takes_a_whole_postgres_connection_from_libpq_variables_and_a_password_file() {
    const PG_PASSWORD: &str = "pg-secret-from-pgpass";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let postgres = postgres_where_app_needs(&runtime, PG_PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let password_file = dir.path().join("pgpass");
    let port = postgres.port.to_string();
    let write_password_file = |password: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            &password_file,
            format!(
                "# host:port:database:user:password\n127.0.0.1:{port}:postgres:app:{password}\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let password_file_name = password_file.display().to_string();
    let env = [
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", port.as_str()),
        ("PGDATABASE", "postgres"),
        ("PGUSER", "app"),
        ("PGPASSFILE", password_file_name.as_str()),
    ];
    let args = ["--event-store", "postgres://"];

    let stderr = refused_start(&data_dir, &args, &[]);
    assert!(stderr.contains("names no host"), "{stderr}");
    assert!(stderr.contains("PGHOST"), "{stderr}");
    write_password_file("wrong", 0o600);
    let stderr = refused_start(&data_dir, &args, &env);
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(stderr.contains("PGPASSFILE"), "{stderr}");
    // The server is named by where its address came from: the URL alone names nothing.
    assert!(
        stderr.contains(&format!("(PGHOST=127.0.0.1, PGPORT={port})")),
        "{stderr}"
    );
    write_password_file(PG_PASSWORD, 0o644);
    let stderr = refused_start(&data_dir, &args, &env);
    assert!(stderr.contains("chmod 0600"), "{stderr}");

    write_password_file(PG_PASSWORD, 0o600);
    let server = ServerProcess::start_with(&data_dir, &args, &env);
    appends_and_never_logs(&server, PG_PASSWORD);
}

/// The whole connection from a libpq service file (`service=` in the URL, or `PGSERVICE`),
/// its address given as `hostaddr` beside the host's name, as `psql` takes it; an undefined
/// service is refused naming the file looked in.
#[test]
fn serve_takes_a_postgres_connection_from_a_service_file() {
    const PG_PASSWORD: &str = "pg-secret-from-service";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let postgres = postgres_where_app_needs(&runtime, PG_PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let service_file = dir.path().join("pg_service.conf");
    std::fs::write(
        &service_file,
        format!(
            "# the shop's database\n[shop]\nhost=localhost\nhostaddr=127.0.0.1\nport={}\ndbname=postgres\nuser=app\npassword={PG_PASSWORD}\n",
            postgres.port
        ),
    )
    .unwrap();
    let service_file_name = service_file.display().to_string();
    let env = [
        ("PGSERVICEFILE", service_file_name.as_str()),
        ("PGSYSCONFDIR", "/nonexistent"),
    ];

    let stderr = refused_start(
        &data_dir,
        &["--event-store", "postgres://?service=shopp"],
        &env,
    );
    assert!(
        stderr.contains("\"shopp\"") && stderr.contains(&service_file_name),
        "{stderr}"
    );
    let server = ServerProcess::start_with(
        &data_dir,
        &["--event-store", "postgres://?service=shop"],
        &env,
    );
    appends_and_never_logs(&server, PG_PASSWORD);
    drop(server);
    let with_pgservice = [env[0], env[1], ("PGSERVICE", "shop")];
    let server = ServerProcess::start_with(
        &data_dir,
        &["--event-store", "postgres://"],
        &with_pgservice,
    );
    appends_and_never_logs(&server, PG_PASSWORD);
}

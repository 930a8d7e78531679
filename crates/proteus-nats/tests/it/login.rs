//! Logins as every NATS client takes them, against private servers that require them:
//! credentials in the URL (`nats://user:password@host`, `nats://token@host`), a credentials
//! file (`.creds`, for a server in operator mode) and an NKEY seed file. The one connection
//! every NATS adapter opens logs in, JetStream answers it, and a wrong or missing login is
//! explained as a refusal, not as a server to start.

use proteus_nats::NatsSecurity;
use proteus_nats::client::{ClientSettings, connect};
use proteus_nats::test_support::{Login, OperatorLogin, PrivateNatsServer};

async fn connect_to(url: &str) -> Result<async_nats::Client, String> {
    connect_with(url, &NatsSecurity::default()).await
}

async fn connect_with(url: &str, security: &NatsSecurity) -> Result<async_nats::Client, String> {
    connect(&ClientSettings {
        url,
        name: "proteus-it-login",
        connect_timeout_ms: 2_000,
        request_timeout_ms: 2_000,
        reconnect_delay_max_ms: 1_000,
        connections: None,
        security,
    })
    .await
}

#[tokio::test]
async fn a_user_and_password_in_the_url_log_in() {
    let server = PrivateNatsServer::start_with_login(Some(Login::UserPassword(
        "app".into(),
        "s@cret".into(),
    )))
    .await;
    let port = server.port;
    connect_to(&format!("nats://app:s%40cret@127.0.0.1:{port}"))
        .await
        .expect("logged in with the URL's user and password");

    for url in [
        format!("nats://app:wrong@127.0.0.1:{port}"),
        format!("nats://127.0.0.1:{port}"),
    ] {
        let refused = connect_to(&url).await.unwrap_err();
        assert!(refused.contains("refused the connection"), "{refused}");
        assert!(
            refused.contains("nats://user:password@host:4222"),
            "{refused}"
        );
        assert!(
            !refused.contains("wrong"),
            "the password is not shown: {refused}"
        );
        assert!(!refused.contains("is it running"), "{refused}");
    }
}

#[tokio::test]
async fn a_token_in_the_url_logs_in() {
    let server = PrivateNatsServer::start_with_login(Some(Login::Token("t0ken".into()))).await;
    let port = server.port;
    connect_to(&format!("nats://t0ken@127.0.0.1:{port}"))
        .await
        .expect("logged in with the URL's token");
    let refused = connect_to(&format!("nats://other@127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(refused.contains("refused the connection"), "{refused}");
}

/// `contents` in a file of `dir`, for the `*_file` settings.
fn file_in(dir: &tempfile::TempDir, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[tokio::test]
async fn a_credentials_file_logs_in_to_a_server_in_operator_mode() {
    let login = OperatorLogin::generate();
    let server = PrivateNatsServer::start_with_login(Some(Login::Operator(login.clone()))).await;
    let files = tempfile::tempdir().unwrap();
    let url = server.url();
    let with_creds = NatsSecurity {
        creds_file: Some(file_in(&files, "app.creds", &login.user_creds)),
        ..NatsSecurity::default()
    };
    let client = connect_with(&url, &with_creds)
        .await
        .expect("logged in with the credentials file");
    // JetStream, which every adapter needs, answers the account.
    let streams = async_nats::jetstream::new(client);
    streams
        .create_stream(async_nats::jetstream::stream::Config {
            name: "CREDS_TEST".into(),
            subjects: vec!["creds.test".into()],
            ..Default::default()
        })
        .await
        .expect("a stream in the user's account");

    let refused = connect_to(&url).await.unwrap_err();
    assert!(
        refused.contains("refused the connection") && refused.contains("--nats-creds"),
        "{refused}"
    );
    // A user of another operator's account is refused, naming the file.
    let stranger = NatsSecurity {
        creds_file: Some(file_in(
            &files,
            "stranger.creds",
            &OperatorLogin::generate().user_creds,
        )),
        ..NatsSecurity::default()
    };
    let refused = connect_with(&url, &stranger).await.unwrap_err();
    assert!(
        refused.contains("refused the connection") && refused.contains("stranger.creds"),
        "{refused}"
    );
    assert!(!refused.contains("is it running"), "{refused}");
    // A file that is not a credentials file is refused before connecting.
    let garbage = NatsSecurity {
        creds_file: Some(file_in(&files, "garbage.creds", "not a creds file")),
        ..NatsSecurity::default()
    };
    let refused = connect_with(&url, &garbage).await.unwrap_err();
    assert!(
        refused.contains("is not a NATS credentials file"),
        "{refused}"
    );
    // Two logins at once are one too many.
    let both = NatsSecurity {
        nkey_file: Some(file_in(&files, "seed.nk", "SUAAAA")),
        ..with_creds.clone()
    };
    let refused = connect_with(&url, &both).await.unwrap_err();
    assert!(refused.contains("give one"), "{refused}");
    let refused = connect_with(
        &format!("nats://app:pw@127.0.0.1:{}", server.port),
        &with_creds,
    )
    .await
    .unwrap_err();
    assert!(refused.contains("log in one way"), "{refused}");
}

#[tokio::test]
async fn an_nkey_seed_file_logs_in_a_user_the_server_lists_by_public_key() {
    let login = Login::new_nkey_user();
    let Login::Nkey { seed } = &login else {
        unreachable!()
    };
    let seed = seed.clone();
    let server = PrivateNatsServer::start_with_login(Some(login)).await;
    let files = tempfile::tempdir().unwrap();
    let url = server.url();
    let with_seed = |contents: &str| NatsSecurity {
        nkey_file: Some(file_in(&files, "user.nk", contents)),
        ..NatsSecurity::default()
    };
    connect_with(&url, &with_seed(&format!("{seed}\n")))
        .await
        .expect("logged in with the seed");

    let other = Login::new_nkey_user();
    let Login::Nkey { seed: other_seed } = &other else {
        unreachable!()
    };
    let refused = connect_with(&url, &with_seed(other_seed))
        .await
        .unwrap_err();
    assert!(
        refused.contains("refused the connection") && refused.contains("public key of the seed"),
        "{refused}"
    );
    let refused = connect_with(&url, &with_seed("no seed here"))
        .await
        .unwrap_err();
    assert!(refused.contains("holds no user seed"), "{refused}");
    let refused = connect_with(&url, &with_seed("SUNOTASEED"))
        .await
        .unwrap_err();
    assert!(refused.contains("not a valid NKEY seed"), "{refused}");
}

//! Credentials in the URL, as every NATS client takes them (`nats://user:password@host`,
//! `nats://token@host`), against private servers that require them: the one connection every
//! NATS adapter opens logs in, and a wrong or missing login is explained as a refusal, not as a
//! server to start.

use proteus_nats::NatsTls;
use proteus_nats::client::{ClientSettings, connect};
use proteus_nats::test_support::{Login, PrivateNatsServer};

async fn connect_to(url: &str) -> Result<async_nats::Client, String> {
    connect(&ClientSettings {
        url,
        name: "proteus-it-login",
        connect_timeout_ms: 2_000,
        request_timeout_ms: 2_000,
        reconnect_delay_max_ms: 1_000,
        connections: None,
        tls: &NatsTls::default(),
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

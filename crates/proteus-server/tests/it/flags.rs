//! OFREP evaluation and flag-set management over HTTP: the shapes OpenFeature providers read,
//! ETags, API keys, the change stream, history, rollback and every refusal.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use proteus_flagsets::FlagSetName;
use proteus_server::HttpConfig;
use proteus_server::ofrep::ApiKey;
use serde_json::{Value, json};

use crate::support::{TestServer, problem};

fn checkout_set() -> Value {
    json!({
        "metadata": {"team": "payments"},
        "flags": {
            "new-checkout": {
                "state": "ENABLED",
                "variants": {"on": true, "off": false},
                "defaultVariant": "off",
                "targeting": {"if": [
                    {"ends_with": [{"var": "email"}, "@example.com"]}, "on",
                    {"fractional": [["on", 50], ["off", 50]]}
                ]},
                "metadata": {"owner": "ada"}
            },
            "banner-text": {
                "state": "ENABLED",
                "variants": {"hello": "Hello!", "bye": "Bye!"},
                "defaultVariant": "hello"
            },
            "old-feature": {
                "state": "DISABLED",
                "variants": {"on": true, "off": false},
                "defaultVariant": "on"
            }
        }
    })
}

async fn put_set(
    server: &TestServer,
    set: &str,
    document: &Value,
    query: &str,
) -> reqwest::Response {
    server
        .http
        .put(server.url(&format!("/v1/flagsets/{set}{query}")))
        .json(document)
        .send()
        .await
        .unwrap()
}

async fn evaluate(server: &TestServer, key: &str, context: Value) -> (u16, Value) {
    let response = server
        .http
        .post(server.url(&format!("/ofrep/v1/evaluate/flags/{key}")))
        .json(&json!({ "context": context }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/json");
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn ofrep_evaluates_with_the_shapes_and_reasons_providers_expect() {
    let server = TestServer::start().await;
    let response = put_set(&server, "default", &checkout_set(), "?comment=first").await;
    assert_eq!(response.status(), 201);

    let (status, body) = evaluate(
        &server,
        "new-checkout",
        json!({"targetingKey": "u1", "email": "ada@example.com"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"key": "new-checkout", "value": true, "variant": "on", "reason": "TARGETING_MATCH",
               "metadata": {"team": "payments", "owner": "ada"}})
    );
    let (_, body) = evaluate(&server, "banner-text", json!({"targetingKey": "u1"})).await;
    assert_eq!(
        (&body["value"], &body["reason"]),
        (&json!("Hello!"), &json!("STATIC"))
    );
    // Disabled: no value, so the provider uses the code default.
    let (status, body) = evaluate(&server, "old-feature", json!({"targetingKey": "u1"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["reason"], "DISABLED");
    assert!(body.get("value").is_none(), "{body}");
    // The fractional split puts about half of the users in each arm, each user always the same.
    let mut on = 0;
    for user in 0..400 {
        let context = json!({"targetingKey": format!("user-{user}"), "email": "x@corp.com"});
        let (_, first) = evaluate(&server, "new-checkout", context.clone()).await;
        let (_, again) = evaluate(&server, "new-checkout", context).await;
        assert_eq!(first["variant"], again["variant"]);
        on += usize::from(first["value"] == true);
    }
    assert!((140..=260).contains(&on), "{on} of 400 in the 50% arm");

    let (status, body) = evaluate(&server, "missing", json!({"targetingKey": "u1"})).await;
    assert_eq!(status, 404);
    assert_eq!(body["errorCode"], "FLAG_NOT_FOUND");
    assert_eq!(body["key"], "missing");

    for bad in [
        json!({"context": [1, 2]}),
        json!([]),
        json!({"context": {"targetingKey": 7}}),
    ] {
        let response = server
            .http
            .post(server.url("/ofrep/v1/evaluate/flags/banner-text"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errorCode"], "INVALID_CONTEXT", "{body}");
        assert!(body["errorDetails"].as_str().unwrap().len() > 10, "{body}");
    }
}

#[tokio::test]
async fn bulk_evaluation_answers_304_until_the_set_changes() {
    let server = TestServer::start().await;
    put_set(&server, "default", &checkout_set(), "").await;
    let bulk = |etag: Option<String>| {
        let mut request = server
            .http
            .post(server.url("/ofrep/v1/evaluate/flags"))
            .json(&json!({"context": {"targetingKey": "u1"}}));
        if let Some(etag) = etag {
            request = request.header("if-none-match", etag);
        }
        request.send()
    };
    let response = bulk(None).await.unwrap();
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let keys: Vec<&str> = body["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["banner-text", "new-checkout", "old-feature"]);
    assert_eq!(body["eventStreams"][0]["type"], "sse");
    assert_eq!(body["metadata"]["team"], "payments");

    assert_eq!(bulk(Some(etag.clone())).await.unwrap().status(), 304);
    server
        .http
        .post(server.url("/v1/flagsets/default/flags/banner-text/kill"))
        .send()
        .await
        .unwrap();
    let response = bulk(Some(etag.clone())).await.unwrap();
    assert_eq!(response.status(), 200, "the set changed");
    assert_ne!(response.headers()["etag"].to_str().unwrap(), etag);
}

#[tokio::test]
async fn a_change_reaches_connected_sse_clients_at_once() {
    let server = TestServer::start().await;
    put_set(&server, "default", &checkout_set(), "").await;
    let response = server
        .http
        .get(server.url("/ofrep/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    // Let the stream subscribe before changing anything.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let changed_at = Instant::now();
    server
        .http
        .post(server.url("/v1/flagsets/default/flags/new-checkout/kill"))
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains("refetchEvaluation") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a message within 5 s")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        changed_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        changed_at.elapsed()
    );
    assert!(text.contains("id: 2"), "{text}");
    assert!(text.contains(r#""etag":"\"default.2\"""#), "{text}");
}

#[tokio::test]
async fn history_records_who_what_and_why_and_versions_can_be_restored() {
    let server = TestServer::start().await;
    put_set(&server, "prod", &checkout_set(), "?comment=initial").await;
    server
        .http
        .put(server.url("/v1/flagsets/prod/flags/banner-text?comment=friendlier&expected_version=1"))
        .json(&json!({"state": "ENABLED", "variants": {"hello": "Hi there!", "bye": "Bye!"}, "defaultVariant": "hello"}))
        .send()
        .await
        .unwrap();
    server
        .http
        .post(server.url("/v1/flagsets/prod/flags/new-checkout/kill?comment=incident"))
        .send()
        .await
        .unwrap();

    let history = server
        .get_json("/v1/flagsets/prod/flags/banner-text/history")
        .await;
    let revisions = history["revisions"].as_array().unwrap();
    assert_eq!(revisions.len(), 2, "created, then changed: {history:#}");
    assert_eq!(revisions[0]["version"], 2);
    assert_eq!(revisions[0]["actor"], "anonymous");
    assert_eq!(revisions[0]["comment"], "friendlier");
    assert_eq!(
        revisions[0]["patch"],
        json!([{"op": "replace", "path": "/flags/banner-text/variants/hello", "value": "Hi there!"}])
    );
    let all = server.get_json("/v1/flagsets/prod/history").await;
    assert_eq!(all["revisions"].as_array().unwrap().len(), 3);

    // One flag back to version 1; the kill of the other flag stays.
    let response = server
        .http
        .post(server.url("/v1/flagsets/prod/flags/banner-text/restore"))
        .json(&json!({"version": 1, "comment": "revert copy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let set = server.get_json("/v1/flagsets/prod").await;
    assert_eq!(set["version"], 4);
    assert_eq!(
        set["document"]["flags"]["banner-text"]["variants"]["hello"],
        "Hello!"
    );
    assert_eq!(
        set["document"]["flags"]["new-checkout"]["state"],
        "DISABLED"
    );
    // The whole set back to version 1.
    let response = server
        .http
        .post(server.url("/v1/flagsets/prod/rollback"))
        .json(&json!({"version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let set = server.get_json("/v1/flagsets/prod").await;
    assert_eq!(set["version"], 5);
    assert_eq!(set["document"], checkout_set());
    let version = server.get_json("/v1/flagsets/prod/versions/3").await;
    assert_eq!(version["comment"], "incident");
    assert_eq!(version["kind"], "set_state");
}

#[tokio::test]
async fn changes_are_refused_with_precise_problems() {
    let server = TestServer::start().await;
    put_set(&server, "dev", &checkout_set(), "").await;

    let body = problem(
        put_set(&server, "dev", &json!({"flags": {"x": {"state": "ENABLED", "variants": {"a": 1, "b": "two"}, "defaultVariant": "c"}}}), "").await,
        422,
        "invalid-flag-definitions",
    )
    .await;
    let paths: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"/flags/x/variants/b"), "{body:#}");
    assert!(paths.contains(&"/flags/x/defaultVariant"), "{body:#}");

    let unknown_operator = json!({"flags": {"x": {"state": "ENABLED", "variants": {"a": true, "b": false},
        "defaultVariant": "a", "targeting": {"frobnicate": [1]}}}});
    let body = problem(
        put_set(&server, "dev", &unknown_operator, "").await,
        422,
        "invalid-flag-definitions",
    )
    .await;
    assert_eq!(
        body["errors"][0]["path"], "/flags/x/targeting/frobnicate",
        "{body:#}"
    );

    let body = problem(
        put_set(&server, "dev", &checkout_set(), "?expected_version=7").await,
        409,
        "flag-set-version-conflict",
    )
    .await;
    assert_eq!(body["actual_version"], 1);

    let missing = server
        .http
        .post(server.url("/v1/flagsets/dev/flags/nope/kill"))
        .send()
        .await
        .unwrap();
    problem(missing, 404, "flag-not-found").await;
    let missing = server
        .http
        .get(server.url("/v1/flagsets/nope"))
        .send()
        .await
        .unwrap();
    problem(missing, 404, "flag-set-not-found").await;
    let bad_name = server
        .http
        .get(server.url("/v1/flagsets/no%20spaces"))
        .send()
        .await
        .unwrap();
    problem(bad_name, 400, "invalid-flag-set-name").await;
    let not_json = server
        .http
        .put(server.url("/v1/flagsets/dev"))
        .body("{")
        .send()
        .await
        .unwrap();
    problem(not_json, 400, "invalid-json").await;
    let version = server
        .http
        .get(server.url("/v1/flagsets/dev/versions/9"))
        .send()
        .await
        .unwrap();
    problem(version, 404, "flag-set-version-not-found").await;
    // Nothing refused became a version.
    assert_eq!(server.get_json("/v1/flagsets/dev").await["version"], 1);
}

#[tokio::test]
async fn api_keys_choose_the_flag_set_and_guard_the_others() {
    let key = |name: &str, set: &str, secret: &str| ApiKey {
        name: name.into(),
        flag_set: FlagSetName::parse(set).unwrap(),
        secret: secret.into(),
    };
    let server = TestServer::with_config(HttpConfig {
        flag_api_keys: vec![
            key("web-prod", "prod", "prod-secret-0123456789"),
            key("ci-dev", "dev", "dev-secret-0123456789"),
        ],
        ..HttpConfig::default()
    })
    .await;
    for (set, text, secret) in [
        ("prod", "Prod!", "prod-secret-0123456789"),
        ("dev", "Dev!", "dev-secret-0123456789"),
    ] {
        let response = server
            .http
            .put(server.url(&format!("/v1/flagsets/{set}")))
            .header("x-api-key", secret)
            .json(&json!({"flags": {"banner": {"state": "ENABLED", "variants": {"v": text}, "defaultVariant": "v"}}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let evaluate_with = |header: (&'static str, String)| {
        server
            .http
            .post(server.url("/ofrep/v1/evaluate/flags/banner"))
            .header(header.0, header.1)
            .json(&json!({"context": {"targetingKey": "u"}}))
            .send()
    };
    let body: Value = evaluate_with(("x-api-key", "prod-secret-0123456789".into()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["value"], "Prod!");
    let body: Value = evaluate_with(("authorization", "Bearer dev-secret-0123456789".into()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["value"], "Dev!");
    assert_eq!(
        evaluate_with(("x-api-key", "wrong".into()))
            .await
            .unwrap()
            .status(),
        401
    );
    let no_key = server
        .http
        .post(server.url("/ofrep/v1/evaluate/flags/banner"))
        .json(&json!({"context": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);

    // A key may only change its own set, and the audit names it.
    let response = server
        .http
        .post(server.url("/v1/flagsets/prod/flags/banner/kill"))
        .header("x-api-key", "dev-secret-0123456789")
        .send()
        .await
        .unwrap();
    problem(response, 403, "forbidden").await;
    let history: Value = server
        .http
        .get(server.url("/v1/flagsets/prod/history"))
        .header("x-api-key", "prod-secret-0123456789")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["revisions"][0]["actor"], "web-prod");
}

#[tokio::test]
async fn flag_sets_survive_a_restart_from_the_audit_topic() {
    let dir = tempfile::tempdir().unwrap();
    {
        let server = TestServer::in_dir(dir.path()).await;
        put_set(&server, "default", &checkout_set(), "").await;
        server
            .http
            .post(server.url("/v1/flagsets/default/flags/banner-text/kill"))
            .send()
            .await
            .unwrap();
        server.stop().await;
    }
    let server = TestServer::in_dir(dir.path()).await;
    let set = server.get_json("/v1/flagsets/default").await;
    assert_eq!(set["version"], 2);
    let (_, body) = evaluate(&server, "banner-text", json!({"targetingKey": "u"})).await;
    assert_eq!(body["reason"], "DISABLED");
    let audit = server.get_json("/v1/topics/proteus.flagsets.audit").await;
    assert_eq!(audit["partitions"][0]["next_offset"], 2, "{audit:#}");
}

#[tokio::test]
async fn scheduled_changes_apply_on_time_and_can_be_cancelled() {
    let server = TestServer::start().await;
    put_set(&server, "default", &checkout_set(), "").await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let schedule = |body: Value| {
        server
            .http
            .post(server.url("/v1/flagsets/default/schedules"))
            .json(&body)
            .send()
    };
    let response = schedule(json!({"at": now_ms + 300, "comment": "launch off",
        "change": {"kind": "set_state", "key": "banner-text", "state": "DISABLED"}}))
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    let scheduled: Value = response.json().await.unwrap();
    let too_far = schedule(json!({"at": "2099-01-01T00:00:00Z",
        "change": {"kind": "delete_flag", "key": "old-feature"}}))
    .await
    .unwrap();
    problem(too_far, 422, "invalid-flag-change").await;
    let later = schedule(json!({"at": now_ms + 86_400_000,
        "change": {"kind": "delete_flag", "key": "old-feature"}}))
    .await
    .unwrap();
    let later: Value = later.json().await.unwrap();
    let pending = server.get_json("/v1/flagsets/default/schedules").await;
    assert_eq!(
        pending["schedules"].as_array().unwrap().len(),
        2,
        "{pending:#}"
    );
    assert_eq!(
        pending["schedules"][0]["id"], scheduled["id"],
        "soonest first"
    );

    let (_, body) = evaluate(&server, "banner-text", json!({"targetingKey": "u"})).await;
    assert_eq!(body["reason"], "STATIC", "not yet");
    let started = Instant::now();
    loop {
        let (_, body) = evaluate(&server, "banner-text", json!({"targetingKey": "u"})).await;
        if body["reason"] == "DISABLED" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the scheduled change never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let history = server
        .get_json("/v1/flagsets/default/flags/banner-text/history")
        .await;
    let comment = history["revisions"][0]["comment"].as_str().unwrap();
    assert!(
        comment.starts_with("scheduled change") && comment.ends_with("launch off"),
        "{comment}"
    );

    let cancel = |id: &str| {
        server
            .http
            .delete(server.url(&format!("/v1/flagsets/default/schedules/{id}")))
            .send()
    };
    assert_eq!(
        cancel(later["id"].as_str().unwrap())
            .await
            .unwrap()
            .status(),
        204
    );
    assert!(
        server.get_json("/v1/flagsets/default/schedules").await["schedules"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    problem(cancel("nope").await.unwrap(), 404, "schedule-not-found").await;

    // Refused now rather than failing later.
    let body = problem(
        schedule(
            json!({"at": now_ms + 60_000, "change": {"kind": "delete_flag", "key": "missing"}}),
        )
        .await
        .unwrap(),
        404,
        "flag-not-found",
    )
    .await;
    assert_eq!(body["flag"], "missing");
    problem(
        schedule(json!({"at": "tomorrow", "change": {"kind": "delete_set"}}))
            .await
            .unwrap(),
        400,
        "invalid-schedule",
    )
    .await;
    problem(
        schedule(json!({"at": now_ms, "change": {"kind": "explode"}}))
            .await
            .unwrap(),
        400,
        "invalid-schedule",
    )
    .await;
}

#[tokio::test]
async fn a_progressive_rollout_advances_on_its_own_keeps_early_users_and_can_be_paused() {
    let server = TestServer::start().await;
    put_set(&server, "default", &checkout_set(), "").await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let users: Vec<String> = (0..400).map(|n| format!("user-{n}")).collect();
    let served_on = |server: &TestServer| {
        let users = users.clone();
        let http = server.http.clone();
        let url = server.url("/ofrep/v1/evaluate/flags/banner-text");
        async move {
            let mut on = std::collections::BTreeSet::new();
            for user in users {
                let body: Value = http
                    .post(&url)
                    .json(&json!({"context": {"targetingKey": user}}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if body["variant"] == "bye" {
                    on.insert(user);
                }
            }
            on
        }
    };
    let response = server
        .http
        .post(server.url("/v1/flagsets/default/flags/banner-text/rollout"))
        .json(&json!({"variant": "bye", "comment": "new copy", "steps": [
            {"percent": 10},
            {"percent": 50, "at": now_ms + 2_000},
            {"percent": 100, "at": now_ms + 3_600_000}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let plan: Value = response.json().await.unwrap();
    assert_eq!(plan["steps"].as_array().unwrap().len(), 3);

    // The first step applies within a scheduler tick; the second after 2 s, well after the
    // sweep at 10% ends even on a slow machine.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let at_10 = served_on(&server).await;
    assert!(
        (15..=70).contains(&at_10.len()),
        "{} of 400 at 10%",
        at_10.len()
    );
    let started = Instant::now();
    while served_on(&server).await.len() <= 120 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the 50% step never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A sweep the step fell in the middle of served its first users at 10%: sweep again, all
    // of it after the step (the next one is an hour away).
    let at_50 = served_on(&server).await;
    assert!(
        (150..=250).contains(&at_50.len()),
        "{} of 400 at 50%",
        at_50.len()
    );
    assert!(
        at_10.is_subset(&at_50),
        "everyone served the new variant at 10% keeps it at 50%"
    );

    let response = server
        .http
        .post(server.url("/v1/flagsets/default/flags/banner-text/rollout/pause"))
        .send()
        .await
        .unwrap();
    let paused: Value = response.json().await.unwrap();
    assert_eq!(
        paused["cancelled"].as_array().unwrap().len(),
        1,
        "only the 100% step was pending"
    );
    let history = server
        .get_json("/v1/flagsets/default/flags/banner-text/history")
        .await;
    assert!(
        history["revisions"][0]["comment"]
            .as_str()
            .unwrap()
            .contains("to 50%: new copy"),
        "{history:#}"
    );

    for (plan, why) in [
        (
            json!({"variant": "nope", "steps": [{"percent": 5}]}),
            "no variant 'nope'",
        ),
        (
            json!({"variant": "bye", "steps": [{"percent": 50}, {"percent": 10, "at": now_ms + 1000}]}),
            "must not decrease",
        ),
        (json!({"variant": "bye", "steps": []}), "1 to 100 steps"),
        (
            json!({"variant": "bye", "steps": [{"percent": 5}, {"percent": 10}]}),
            "only the first step",
        ),
    ] {
        let response = server
            .http
            .post(server.url("/v1/flagsets/default/flags/banner-text/rollout"))
            .json(&plan)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert!(status == 400 || status == 422, "{status} {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(why),
            "{why}: {body}"
        );
    }
}

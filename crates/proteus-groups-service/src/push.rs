//! Push delivery: the server consumes a push group itself and POSTs its events to a webhook.
//!
//! - One worker per partition keeps the partition's order: it sends a batch, waits for the
//!   answer, and sends nothing newer while an event of the partition waits for a retry.
//! - `concurrency_max` bounds the requests in flight across partitions.
//! - A 2xx answer acks the batch. Anything else — another status, a timeout, a refused
//!   connection — nacks it with the error, so the retry policy and dead letters apply. A 429 or
//!   503 with `Retry-After: <seconds>` is retried after that delay.
//! - Binary mode sends one event per request with its attributes as `ce-` headers; batch mode
//!   sends `application/cloudevents-batch+json`. W3C `traceparent`/`tracestate` extension
//!   attributes are also sent as the `traceparent`/`tracestate` headers so the receiver's
//!   trace continues the producer's.
//! - With `hmac_secret`, requests are signed as Standard Webhooks specifies
//!   (<https://www.standardwebhooks.com>): `webhook-id`, `webhook-timestamp` (Unix seconds) and
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. A secret written
//!   `whsec_<base64>` is base64-decoded first, as Standard Webhooks libraries do.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use proteus_groups::config::{PushConfig, PushMode};
use proteus_groups::state::Position;
use proteus_groups::{GroupError, MemberId};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use crate::handle::GroupHandle;
use crate::pull::{Delivery, PullRequest};
use crate::{Inner, dead_letters, metrics_names as names};

/// The member id push groups use internally.
pub const PUSH_MEMBER: &str = "push";
/// Most bytes of a failing webhook's answer kept in the error message.
const ERROR_BODY_BYTES_MAX: usize = 512;

pub(crate) fn start(
    inner: Arc<Inner>,
    handle: Arc<GroupHandle>,
    config: PushConfig,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let member = MemberId::parse(PUSH_MEMBER).expect("a valid member id");
        let semaphore = Arc::new(Semaphore::new(config.concurrency_max as usize));
        let config = Arc::new(config);
        // Dropping the set (when this task is aborted) aborts the workers.
        let mut workers = JoinSet::new();
        let join = |handle: &GroupHandle, inner: &Inner| {
            let now_ms = inner.now_ms();
            handle.with_state(|state| state.join(member.clone(), now_ms))
        };
        if let Err(error) = join(&handle, &inner) {
            tracing::error!(group = %handle.group, %error, "push group cannot start");
            return;
        }
        for partition in 0..handle.partition_count() {
            workers.spawn(worker(
                inner.clone(),
                handle.clone(),
                member.clone(),
                partition,
                config.clone(),
                semaphore.clone(),
            ));
        }
        // Keep the internal member's session alive even while every partition is idle.
        let interval = Duration::from_millis((handle.config().session_timeout_ms / 3).max(10));
        loop {
            tokio::time::sleep(interval).await;
            let now_ms = inner.now_ms();
            if handle
                .with_state(|state| state.heartbeat(&member, now_ms))
                .is_err()
            {
                let _ = join(&handle, &inner);
                handle.changed.notify_waiters();
            }
        }
    })
}

async fn worker(
    inner: Arc<Inner>,
    handle: Arc<GroupHandle>,
    member: MemberId,
    partition: u32,
    config: Arc<PushConfig>,
    semaphore: Arc<Semaphore>,
) {
    loop {
        let batch = handle.config().batch;
        let events_max = match config.mode {
            PushMode::Binary => 1,
            PushMode::Batch => batch.events_max,
        };
        let request = PullRequest {
            events_max,
            bytes_max: batch.bytes_max,
            wait_ms: 1_000,
        };
        let response =
            match crate::pull::pull(&inner, &handle, &member, request, Some(partition)).await {
                Ok(response) => response,
                Err(error) => {
                    tracing::debug!(group = %handle.group, partition, %error, "push pull failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
        if response.deliveries.is_empty() {
            continue;
        }
        let positions: Vec<Position> = response.deliveries.iter().map(|d| d.position).collect();
        let outcome = {
            let _permit = semaphore.acquire().await.expect("semaphore never closed");
            send(&inner, &handle, &config, &response.deliveries).await
        };
        let now_ms = inner.now_ms();
        let status = match &outcome {
            Ok(()) => "ok",
            Err(_) => "failed",
        };
        metrics::counter!(names::PUSH_REQUESTS, "topic" => handle.topic.to_string(),
            "group" => handle.group.to_string(), "outcome" => status)
        .increment(1);
        match outcome {
            Ok(()) => {
                match handle.mutate_result(|state| {
                    state.ack(&member, response.generation, &positions, now_ms)
                }) {
                    Ok((acked, _version)) => handle.record_acks(&acked),
                    Err(error) => log_fenced(&handle, &error),
                }
            }
            Err(failure) => {
                tracing::debug!(group = %handle.group, partition, error = %failure.message,
                    "webhook delivery failed");
                match handle.mutate_result(|state| {
                    state.nack(
                        &member,
                        response.generation,
                        &positions,
                        failure.retry_after_ms,
                        Some(&failure.message),
                        now_ms,
                    )
                }) {
                    Ok((nacked, _version)) => {
                        metrics::counter!(names::NACKED, &handle.labels())
                            .increment(u64::from(nacked.nacked));
                        if !nacked.dead_letters.is_empty() {
                            drop(dead_letters::spawn_writes(
                                &inner,
                                &handle,
                                nacked.dead_letters,
                            ));
                        }
                    }
                    Err(error) => log_fenced(&handle, &error),
                }
            }
        }
        handle.changed.notify_waiters();
    }
}

fn log_fenced(handle: &GroupHandle, error: &GroupError) {
    tracing::debug!(group = %handle.group, %error, "push result not applied");
}

struct Failure {
    message: String,
    retry_after_ms: Option<u64>,
}

async fn send(
    inner: &Inner,
    handle: &GroupHandle,
    config: &PushConfig,
    deliveries: &[Delivery],
) -> Result<(), Failure> {
    let failure = |message: String| Failure {
        message,
        retry_after_ms: None,
    };
    let (mut headers, body) = match config.mode {
        PushMode::Binary if deliveries.len() == 1 => binary_request(&deliveries[0].json)
            .map_err(|e| failure(format!("cannot encode the event in binary mode: {e}")))?,
        _ => batch_request(deliveries),
    };
    let first = &deliveries[0];
    headers.insert(
        HeaderName::from_static("proteus-delivery-count"),
        HeaderValue::from(first.deliveries),
    );
    if let Some(secret) = &config.hmac_secret {
        let id = format!(
            "{}.{}.{}.{}",
            handle.group,
            first.position.partition,
            first.position.offset,
            deliveries.len()
        );
        let timestamp = (inner.now_ms() / 1_000).to_string();
        for (name, value) in sign(secret, &id, &timestamp, &body) {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
    }
    let response = inner
        .http
        .post(&config.url)
        .headers(headers)
        .timeout(Duration::from_millis(config.timeout_ms))
        .body(body)
        .send()
        .await
        .map_err(|error| {
            if error.is_timeout() {
                failure(format!(
                    "the webhook did not answer within timeout_ms = {}",
                    config.timeout_ms
                ))
            } else {
                failure(format!("cannot reach the webhook {}: {error}", config.url))
            }
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after_ms = if status.as_u16() == 429 || status.as_u16() == 503 {
        response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|seconds| {
                seconds
                    .saturating_mul(1_000)
                    .min(proteus_groups::config::limits::RETRY_DELAY_MS_MAX)
            })
    } else {
        None
    };
    let mut body = Vec::new();
    let mut response = response;
    while body.len() < ERROR_BODY_BYTES_MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(ERROR_BODY_BYTES_MAX);
    let text = String::from_utf8_lossy(&body);
    Err(Failure {
        message: format!("the webhook answered {status}: {}", text.trim()),
        retry_after_ms,
    })
}

/// Standard Webhooks signature headers.
pub fn sign(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> [(&'static str, String); 3] {
    let key = match secret.strip_prefix("whsec_") {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_else(|_| secret.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    [
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_owned()),
        ("webhook-signature", format!("v1,{signature}")),
    ]
}

fn batch_request(deliveries: &[Delivery]) -> (HeaderMap, Bytes) {
    let mut body =
        Vec::with_capacity(deliveries.iter().map(|d| d.json.len() + 1).sum::<usize>() + 2);
    body.push(b'[');
    for (index, delivery) in deliveries.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&delivery.json);
    }
    body.push(b']');
    let mut headers = HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        HeaderValue::from_static("application/cloudevents-batch+json"),
    );
    (headers, Bytes::from(body))
}

/// The CloudEvents HTTP binary mode: every attribute but the data as a `ce-` header
/// (`datacontenttype` as `Content-Type`), the data as the body.
pub fn binary_request(json: &[u8]) -> Result<(HeaderMap, Bytes), String> {
    let mut event: Map<String, Value> = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let data = event.remove("data");
    let data_base64 = event.remove("data_base64");
    let content_type = match event.remove("datacontenttype") {
        Some(Value::String(content_type)) => Some(content_type),
        _ => None,
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &event {
        let text = match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let header = HeaderName::from_bytes(format!("ce-{name}").as_bytes())
            .map_err(|e| format!("attribute {name}: {e}"))?;
        headers.insert(header, header_value(&text)?);
        if name == "traceparent" || name == "tracestate" {
            headers.insert(
                HeaderName::from_static(if name == "traceparent" {
                    "traceparent"
                } else {
                    "tracestate"
                }),
                header_value(&text)?,
            );
        }
    }
    let is_json = content_type.as_deref().is_none_or(|ct| ct.contains("json"));
    let body = match (data_base64, data) {
        (Some(Value::String(encoded)), _) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| format!("data_base64: {e}"))?,
        (_, Some(Value::String(text))) if !is_json => text.into_bytes(),
        (_, Some(value)) => serde_json::to_vec(&value).map_err(|e| e.to_string())?,
        _ => Vec::new(),
    };
    let content_type = content_type.unwrap_or_else(|| "application/json".to_owned());
    headers.insert(reqwest::header::CONTENT_TYPE, header_value(&content_type)?);
    Ok((headers, Bytes::from(body)))
}

/// Header values are printable ASCII; anything else is percent-encoded, as the CloudEvents
/// HTTP binding specifies.
fn header_value(text: &str) -> Result<HeaderValue, String> {
    const ENCODE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%').add(b'"');
    let encoded = percent_encoding::utf8_percent_encode(text, ENCODE).to_string();
    HeaderValue::from_str(&encoded).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_mode_maps_attributes_to_headers() {
        let json = br#"{"specversion":"1.0","id":"e1","source":"/orders","type":"order.created","subject":"caf\u00e9","datacontenttype":"application/json","data":{"total":12},"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#;
        let (headers, body) = binary_request(json).unwrap();
        assert_eq!(headers["ce-id"], "e1");
        assert_eq!(headers["ce-type"], "order.created");
        assert_eq!(headers["ce-subject"], "caf%C3%A9");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(
            headers["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(&body[..], br#"{"total":12}"#);
    }

    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let [_, _, (_, signature)] = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}

//! Outbound webhooks end to end: `postmesh dev` delivers events to a real
//! local receiver (an axum server on 127.0.0.1), signed per Standard
//! Webhooks; the tests check the signatures with HMAC computed here, not by
//! the service's code. Receivers fail and recover, secrets rotate, the SSRF
//! guard refuses internal targets, and workspaces stay apart.
//!
//! The receiver's address is allowlisted (`POSTMESH_WEBHOOK_SSRF_ALLOWLIST`)
//! and the retry schedule shortened (`POSTMESH_WEBHOOK_RETRY_SCHEDULE`) so
//! retries happen within a test.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::hmac;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use postmesh_kit::testing::TestEnv;
use postmesh_proto::postmesh::r#type::v1::Platform;
use postmesh_social::fakes::FakePlatforms;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::helpers::{Account, Api, Process, dev, sign_up};

/// How long a delivery may take to arrive before the test gives up.
const ARRIVE_WITHIN: Duration = Duration::from_secs(30);

/// One request the receiver got.
struct Received {
    headers: HeaderMap,
    body: Bytes,
    /// The status it was answered with.
    answered: u16,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

/// A local webhook receiver answering from a script of statuses (then
/// `fallback`), reporting every request on a channel.
struct Receiver {
    addr: SocketAddr,
    received: mpsc::UnboundedReceiver<Received>,
    script: Arc<Mutex<VecDeque<u16>>>,
    fallback: Arc<Mutex<u16>>,
}

impl Receiver {
    async fn start() -> Self {
        let (tx, received) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let fallback = Arc::new(Mutex::new(200u16));
        let (s, f) = (script.clone(), fallback.clone());
        let handler = move |headers: HeaderMap, body: Bytes| {
            let (tx, s, f) = (tx.clone(), s.clone(), f.clone());
            async move {
                let status = s.lock().unwrap().pop_front().unwrap_or(*f.lock().unwrap());
                let _ = tx.send(Received { headers, body, answered: status });
                let text = if status < 300 { "thanks" } else { "receiver is down" };
                (AxumStatus::from_u16(status).unwrap(), text)
            }
        };
        let app = axum::Router::new().route("/hook", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, received, script, fallback }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers the next requests with these statuses.
    fn script(&self, statuses: &[u16]) {
        self.script.lock().unwrap().extend(statuses);
    }

    /// Answers with `status` once the script is used up.
    fn fall_back_to(&self, status: u16) {
        *self.fallback.lock().unwrap() = status;
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(ARRIVE_WITHIN, self.received.recv())
            .await
            .expect("a delivery arrives in time")
            .expect("the receiver runs")
    }
}

/// HMAC-SHA256 signature per Standard Webhooks, computed here.
fn expected_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").expect("whsec_ prefix")).expect("base64 secret");
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), &signed);
    format!("v1,{}", STANDARD.encode(tag.as_ref()))
}

/// `postmesh dev` whose outbound webhooks may reach the local receiver.
fn start(env: &TestEnv, extra: &[(&str, &str)]) -> (Process, Api) {
    let mut vars = vec![
        ("POSTMESH_WEBHOOK_SSRF_ALLOWLIST", "127.0.0.1"),
        ("POSTMESH_WEBHOOK_RETRY_SCHEDULE", "200ms,200ms,200ms"),
        ("POSTMESH_JOBS_POLL_INTERVAL", "50ms"),
    ];
    for (key, value) in extra {
        vars.retain(|(k, _)| k != key);
        vars.push((key, value));
    }
    dev(env, &vars)
}

/// Registers an endpoint; returns (endpoint, secret).
async fn register(api: &Api, user: &Account, url: &str, event_types: &[&str]) -> (Value, String) {
    let body = json!({ "url": url, "event_types": event_types, "description": "test receiver" });
    let answer = api.call(Method::POST, "/api/webhooks/register", Some(&user.token), Some(body)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let secret = answer.body["secret"].as_str().expect("a secret").to_owned();
    (answer.body["endpoint"].clone(), secret)
}

async fn trigger(api: &Api, user: &Account, event_type: &str, payload: Value) -> Value {
    let body = json!({ "event_type": event_type, "payload": payload });
    let answer = api.call(Method::POST, "/api/webhooks/trigger", Some(&user.token), Some(body)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body
}

async fn logs(api: &Api, user: &Account, query: &str) -> Vec<Value> {
    let answer = api.call(Method::GET, &format!("/api/webhooks/logs?{query}"), Some(&user.token), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body["attempts"].as_array().cloned().unwrap_or_default()
}

/// The log lines of `query` once `done` holds for them (attempts are
/// recorded just after the receiver answered, so they trail its signal).
async fn logs_when(api: &Api, user: &Account, query: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + ARRIVE_WITHIN;
    loop {
        let lines = logs(api, user, query).await;
        if done(&lines) {
            return lines;
        }
        assert!(tokio::time::Instant::now() < deadline, "the log never showed what was expected: {lines:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_test_signature_matches_the_standard_webhooks_example() {
    // The example of the Standard Webhooks specification.
    let signature = expected_signature(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        br#"{"test": 2432232314}"#,
    );
    assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

#[tokio::test]
async fn a_triggered_event_reaches_a_local_receiver_signed_and_logged() {
    let env = TestEnv::new().await;
    let (_dev, api) = start(&env, &[]);
    let user = sign_up(&api, "outbound").await;
    let mut receiver = Receiver::start().await;
    let (endpoint, secret) = register(&api, &user, &receiver.url(), &["order.*"]).await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(STANDARD.decode(&secret["whsec_".len()..]).unwrap().len(), 32);
    assert_eq!(endpoint["status"], "ENDPOINT_STATUS_ENABLED");
    let endpoint_id = endpoint["id"].as_str().unwrap();

    // Not subscribed: nothing is delivered.
    let ignored = trigger(&api, &user, "invoice.paid", json!({ "n": 1 })).await;
    assert_eq!(ignored["delivery_ids"].as_array().map_or(0, Vec::len), 0, "{ignored}");

    let sent = trigger(&api, &user, "order.created", json!({ "order": "A-17", "total": 42.5 })).await;
    let message_id = sent["message_id"].as_str().unwrap();
    assert_eq!(sent["delivery_ids"].as_array().unwrap().len(), 1, "{sent}");

    let request = receiver.next().await;
    assert_eq!(request.header("webhook-id"), message_id);
    assert_eq!(request.header("content-type"), "application/json");
    let timestamp = request.header("webhook-timestamp");
    let sent_at: i64 = timestamp.parse().expect("Unix seconds");
    assert!((chrono::Utc::now().timestamp() - sent_at).abs() < 60, "{timestamp}");
    assert_eq!(
        request.header("webhook-signature"),
        expected_signature(&secret, message_id, timestamp, &request.body),
        "one signature, with the endpoint's secret"
    );
    assert!(!request.header("traceparent").is_empty() && !request.header("x-request-id").is_empty());
    let body = request.json();
    assert_eq!(body["type"], "order.created");
    assert_eq!(body["data"], json!({ "order": "A-17", "total": 42.5 }));
    assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok(), "{body}");

    // The attempt is in the log, with the receiver's answer.
    let query = format!("endpoint_id={endpoint_id}");
    let lines = logs_when(&api, &user, &query, |l| !l.is_empty()).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["message_id"], message_id);
    assert_eq!(line["status"], "DELIVERY_ATTEMPT_STATUS_SUCCEEDED");
    assert_eq!(line["status_code"], 200);
    assert_eq!(line["attempt_number"], 1);
    assert_eq!(line["trigger"], "DELIVERY_ATTEMPT_TRIGGER_SCHEDULED");
    assert_eq!(line["response_excerpt"], "thanks");
    assert_eq!(line["url"], receiver.url());
    assert!(line["latency"].as_str().is_some_and(|l| l.ends_with('s')), "{line}");

    // Filters narrow the log.
    assert!(logs(&api, &user, "status=DELIVERY_ATTEMPT_STATUS_FAILED").await.is_empty());
    assert_eq!(logs(&api, &user, &format!("message_id={message_id}")).await.len(), 1);
    assert!(logs(&api, &user, "event_type=invoice.paid").await.is_empty());

    // The same idempotency key emits once.
    let body =
        json!({ "event_type": "order.created", "payload": { "order": "B" }, "idempotency_key": "k-1" });
    let first = api.call(Method::POST, "/api/webhooks/trigger", Some(&user.token), Some(body.clone())).await;
    let again = api.call(Method::POST, "/api/webhooks/trigger", Some(&user.token), Some(body)).await;
    assert_eq!(again.body["message_id"], first.body["message_id"]);
    assert_eq!(again.body["delivery_ids"], first.body["delivery_ids"]);
    assert_eq!(again.body["duplicate"], true);
    assert_eq!(receiver.next().await.header("webhook-id"), first.body["message_id"].as_str().unwrap());

    // A bad event type names its field.
    let body = json!({ "event_type": "Order Created", "payload": {} });
    let bad = api.call(Method::POST, "/api/webhooks/trigger", Some(&user.token), Some(body)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.violated_field(), "event_type");

    // The mesh's own event types are listed.
    let types = api.call(Method::GET, "/api/webhooks/event-types", Some(&user.token), None).await;
    let names: Vec<&str> =
        types.body["event_types"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(names.contains(&"post.published") && names.contains(&"post.failed"), "{names:?}");
}

#[tokio::test]
async fn a_failing_receiver_gets_the_delivery_once_it_recovers() {
    let env = TestEnv::new().await;
    let (_dev, api) = start(&env, &[]);
    let user = sign_up(&api, "flaky").await;
    let mut receiver = Receiver::start().await;
    receiver.script(&[500, 503]);
    let (endpoint, secret) = register(&api, &user, &receiver.url(), &[]).await;
    let sent = trigger(&api, &user, "order.created", json!({ "order": "C-3" })).await;
    let message_id = sent["message_id"].as_str().unwrap();
    let delivery_id = sent["delivery_ids"][0].as_str().unwrap();

    let mut seen = Vec::new();
    loop {
        let request = receiver.next().await;
        // Every attempt is the same message, freshly signed.
        assert_eq!(request.header("webhook-id"), message_id);
        assert_eq!(
            request.header("webhook-signature"),
            expected_signature(&secret, message_id, request.header("webhook-timestamp"), &request.body)
        );
        seen.push(request.answered);
        if request.answered == 200 {
            break;
        }
    }
    assert_eq!(seen, [500, 503, 200]);

    let query = format!("delivery_id={delivery_id}");
    let lines = logs_when(&api, &user, &query, |l| l.len() == 3).await;
    // Newest first.
    let numbers: Vec<i64> = lines.iter().map(|l| l["attempt_number"].as_i64().unwrap()).collect();
    assert_eq!(numbers, [3, 2, 1]);
    let codes: Vec<i64> = lines.iter().map(|l| l["status_code"].as_i64().unwrap()).collect();
    assert_eq!(codes, [200, 503, 500]);
    assert_eq!(lines[2]["status"], "DELIVERY_ATTEMPT_STATUS_FAILED");
    assert_eq!(lines[2]["response_excerpt"], "receiver is down");
    assert!(lines[2]["next_attempt_at"].is_string(), "a failed attempt names the next: {}", lines[2]);
    assert!(lines[0]["next_attempt_at"].is_null(), "{}", lines[0]);
    let failed = logs(&api, &user, &format!("{query}&status=DELIVERY_ATTEMPT_STATUS_FAILED")).await;
    assert_eq!(failed.len(), 2);

    // The endpoint's failure run ended with the success.
    let path = format!("/api/webhooks/endpoints/{}", endpoint["id"].as_str().unwrap());
    let now = api.call(Method::GET, &path, Some(&user.token), None).await;
    assert!(now.body["endpoint"]["failures_started_at"].is_null(), "{}", now.body);
    // A succeeded delivery cannot be retried.
    let retry = api
        .call(Method::PUT, &format!("/api/webhooks/{delivery_id}/retry"), Some(&user.token), Some(json!({})))
        .await;
    assert_eq!(retry.status, StatusCode::BAD_REQUEST, "{}", retry.body);
}

#[tokio::test]
async fn a_failed_delivery_is_retried_by_hand_without_restarting_the_schedule() {
    let env = TestEnv::new().await;
    let (_dev, api) = start(&env, &[("POSTMESH_WEBHOOK_RETRY_SCHEDULE", "100ms")]);
    let user = sign_up(&api, "manual").await;
    let mut receiver = Receiver::start().await;
    receiver.fall_back_to(500);
    register(&api, &user, &receiver.url(), &[]).await;
    let sent = trigger(&api, &user, "order.created", json!({ "order": "D" })).await;
    let delivery_id = sent["delivery_ids"][0].as_str().unwrap().to_owned();
    assert_eq!(receiver.next().await.answered, 500);
    assert_eq!(receiver.next().await.answered, 500);
    let query = format!("delivery_id={delivery_id}");
    logs_when(&api, &user, &query, |l| l.len() == 2).await;

    receiver.fall_back_to(200);
    let path = format!("/api/webhooks/{delivery_id}/retry");
    let retry = api.call(Method::PUT, &path, Some(&user.token), Some(json!({}))).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.body);
    assert_eq!(retry.body["delivery"]["status"], "DELIVERY_STATUS_PENDING");
    assert_eq!(retry.body["delivery"]["attempt_count"], 2);
    assert_eq!(receiver.next().await.answered, 200);
    let lines = logs_when(&api, &user, &query, |l| l.len() == 3).await;
    assert_eq!(lines[0]["trigger"], "DELIVERY_ATTEMPT_TRIGGER_MANUAL_RETRY");
    assert_eq!(lines[0]["attempt_number"], 3);
    assert_eq!(lines[0]["status"], "DELIVERY_ATTEMPT_STATUS_SUCCEEDED");

    // Unknown deliveries are NOT_FOUND.
    let missing = format!("/api/webhooks/{}/retry", uuid::Uuid::now_v7());
    let answer = api.call(Method::PUT, &missing, Some(&user.token), Some(json!({}))).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_endpoint_failing_for_the_configured_span_is_disabled() {
    let env = TestEnv::new().await;
    let settings = [
        ("POSTMESH_WEBHOOK_RETRY_SCHEDULE", "300ms,300ms,300ms,300ms,300ms,300ms"),
        ("POSTMESH_WEBHOOK_AUTO_DISABLE_AFTER", "700ms"),
    ];
    let (_dev, api) = start(&env, &settings);
    let user = sign_up(&api, "broken").await;
    let mut receiver = Receiver::start().await;
    receiver.fall_back_to(503);
    let (endpoint, _) = register(&api, &user, &receiver.url(), &[]).await;
    let path = format!("/api/webhooks/endpoints/{}", endpoint["id"].as_str().unwrap());
    trigger(&api, &user, "order.created", json!({})).await;

    assert_eq!(receiver.next().await.answered, 503);
    let deadline = tokio::time::Instant::now() + ARRIVE_WITHIN;
    let disabled = loop {
        let answer = api.call(Method::GET, &path, Some(&user.token), None).await;
        if answer.body["endpoint"]["status"] == "ENDPOINT_STATUS_AUTO_DISABLED" {
            break answer.body["endpoint"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "never disabled: {}", answer.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // It failed for longer than the span before being disabled, and the
    // attempts stopped there: the delivery was cancelled.
    let attempts = logs(&api, &user, "").await;
    assert!(attempts.len() >= 3, "{attempts:?}");
    assert!(attempts.iter().all(|a| a["status"] == "DELIVERY_ATTEMPT_STATUS_FAILED"));
    assert_eq!(disabled["disabled_reason"], "HTTP 503");
    assert!(disabled["failures_started_at"].is_string() && disabled["disabled_at"].is_string());

    // Disabled: new events are not sent to it, retries are refused.
    let sent = trigger(&api, &user, "order.created", json!({})).await;
    assert_eq!(sent["delivery_ids"].as_array().map_or(0, Vec::len), 0, "{sent}");
    // Enabled again, it receives.
    let enabled = api.call(Method::POST, &format!("{path}/enable"), Some(&user.token), Some(json!({}))).await;
    assert_eq!(enabled.body["endpoint"]["status"], "ENDPOINT_STATUS_ENABLED", "{}", enabled.body);
    assert!(enabled.body["endpoint"]["failures_started_at"].is_null());
}

#[tokio::test]
async fn a_rotated_secret_signs_alongside_the_previous_one_new_first() {
    let env = TestEnv::new().await;
    let (_dev, api) = start(&env, &[]);
    let user = sign_up(&api, "rotate").await;
    let mut receiver = Receiver::start().await;
    let (endpoint, old_secret) = register(&api, &user, &receiver.url(), &[]).await;
    let path = format!("/api/webhooks/endpoints/{}/rotate-secret", endpoint["id"].as_str().unwrap());
    let rotated = api.call(Method::POST, &path, Some(&user.token), Some(json!({}))).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let new_secret = rotated.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, old_secret);
    assert!(rotated.body["endpoint"]["previous_secret_expires_at"].is_string(), "{}", rotated.body);

    let sent = trigger(&api, &user, "order.created", json!({ "k": "v" })).await;
    let id = sent["message_id"].as_str().unwrap();
    let request = receiver.next().await;
    let timestamp = request.header("webhook-timestamp");
    let signatures: Vec<&str> = request.header("webhook-signature").split(' ').collect();
    assert_eq!(
        signatures,
        [
            expected_signature(&new_secret, id, timestamp, &request.body).as_str(),
            expected_signature(&old_secret, id, timestamp, &request.body).as_str(),
        ]
    );

    // Without an overlap only the newest secret signs.
    let rotated = api.call(Method::POST, &path, Some(&user.token), Some(json!({ "overlap": "0s" }))).await;
    let newest = rotated.body["secret"].as_str().unwrap().to_owned();
    assert!(rotated.body["endpoint"]["previous_secret_expires_at"].is_null(), "{}", rotated.body);
    let sent = trigger(&api, &user, "order.created", json!({})).await;
    let id = sent["message_id"].as_str().unwrap();
    let request = receiver.next().await;
    assert_eq!(
        request.header("webhook-signature"),
        expected_signature(&newest, id, request.header("webhook-timestamp"), &request.body)
    );
    let bad = api.call(Method::POST, &path, Some(&user.token), Some(json!({ "overlap": "700000s" }))).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.violated_field(), "overlap");
}

#[tokio::test]
async fn internal_targets_are_refused_at_registration_unless_allowlisted() {
    let env = TestEnv::new().await;
    let (_dev, api) = dev(&env, &[]);
    let user = sign_up(&api, "ssrf").await;
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://192.168.1.20/",
        "http://[::1]:9000/",
        "http://localhost:9000/hook",
        "ftp://example.com/hook",
        "https://user:pass@example.com/hook",
    ] {
        let body = json!({ "url": url });
        let answer = api.call(Method::POST, "/api/webhooks/register", Some(&user.token), Some(body)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{url}: {}", answer.body);
        assert_eq!(answer.violated_field(), "url", "{url}: {}", answer.body);
    }
    let listed = api.call(Method::GET, "/api/webhooks/endpoints", Some(&user.token), None).await;
    assert!(listed.body["endpoints"].as_array().is_none_or(Vec::is_empty), "{}", listed.body);

    // The allowlist lets 127.0.0.1 through, and nothing else.
    let env = TestEnv::new().await;
    let (_dev, api) = start(&env, &[]);
    let user = sign_up(&api, "allowed").await;
    register(&api, &user, "http://127.0.0.1:9/hook", &[]).await;
    for url in ["http://10.0.0.1/hook", "http://169.254.169.254/", "http://127.0.0.2/"] {
        let body = json!({ "url": url });
        let answer = api.call(Method::POST, "/api/webhooks/register", Some(&user.token), Some(body)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{url}: {}", answer.body);
    }
}

#[tokio::test]
async fn another_workspace_sees_and_changes_nothing() {
    let env = TestEnv::new().await;
    let (_dev, api) = start(&env, &[]);
    let alice = sign_up(&api, "alice").await;
    let mallory = sign_up(&api, "mallory").await;
    let mut receiver = Receiver::start().await;
    let (endpoint, _) = register(&api, &alice, &receiver.url(), &[]).await;
    let endpoint_id = endpoint["id"].as_str().unwrap();
    let sent = trigger(&api, &alice, "order.created", json!({})).await;
    let delivery_id = sent["delivery_ids"][0].as_str().unwrap();
    receiver.next().await;
    logs_when(&api, &alice, &format!("delivery_id={delivery_id}"), |l| l.len() == 1).await;

    let path = format!("/api/webhooks/endpoints/{endpoint_id}");
    for (method, path, body) in [
        (Method::GET, path.clone(), None),
        (Method::PATCH, path.clone(), Some(json!({ "description": "mine now" }))),
        (Method::POST, format!("{path}/disable"), Some(json!({}))),
        (Method::POST, format!("{path}/rotate-secret"), Some(json!({}))),
        (Method::DELETE, path.clone(), None),
        (Method::PUT, format!("/api/webhooks/{delivery_id}/retry"), Some(json!({}))),
    ] {
        let answer = api.call(method.clone(), &path, Some(&mallory.token), body).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method} {path}: {}", answer.body);
    }
    assert!(logs(&api, &mallory, "").await.is_empty());
    assert!(logs(&api, &mallory, &format!("endpoint_id={endpoint_id}")).await.is_empty());
    let listed = api.call(Method::GET, "/api/webhooks/endpoints", Some(&mallory.token), None).await;
    assert!(listed.body["endpoints"].as_array().is_none_or(Vec::is_empty), "{}", listed.body);
    let body = json!({ "event_type": "order.created", "payload": {}, "endpoint_ids": [endpoint_id] });
    let answer = api.call(Method::POST, "/api/webhooks/trigger", Some(&mallory.token), Some(body)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert_eq!(answer.violated_field(), "endpoint_ids[0]");

    // Alice's endpoint is untouched.
    let mine = api.call(Method::GET, &path, Some(&alice.token), None).await;
    assert_eq!(mine.body["endpoint"]["status"], "ENDPOINT_STATUS_ENABLED");
    assert_eq!(mine.body["endpoint"]["description"], "test receiver");
}

#[tokio::test]
async fn a_time_range_is_replayed_with_the_same_message_ids() {
    let env = TestEnv::new().await;
    let (_dev, api) = start(&env, &[]);
    let user = sign_up(&api, "replay").await;
    let mut receiver = Receiver::start().await;
    let (endpoint, _) = register(&api, &user, &receiver.url(), &[]).await;
    let from = chrono::Utc::now() - chrono::Duration::seconds(5);
    let mut ids = Vec::new();
    for n in 0..2 {
        let sent = trigger(&api, &user, "order.created", json!({ "n": n })).await;
        ids.push(sent["message_id"].as_str().unwrap().to_owned());
        receiver.next().await;
    }
    let to = chrono::Utc::now() + chrono::Duration::seconds(5);
    let path = format!("/api/webhooks/endpoints/{}/replay", endpoint["id"].as_str().unwrap());
    let body = json!({ "start_at": from.to_rfc3339(), "end_at": to.to_rfc3339() });
    let answer = api.call(Method::POST, &path, Some(&user.token), Some(body)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["message_count"], 2);
    let mut replayed = vec![
        receiver.next().await.header("webhook-id").to_owned(),
        receiver.next().await.header("webhook-id").to_owned(),
    ];
    replayed.sort();
    ids.sort();
    assert_eq!(replayed, ids);
    let lines = logs_when(&api, &user, "", |l| l.len() == 4).await;
    assert_eq!(lines.iter().filter(|l| l["trigger"] == "DELIVERY_ATTEMPT_TRIGGER_REPLAY").count(), 2);

    // Only failed messages: none here.
    let body = json!({ "start_at": from.to_rfc3339(), "end_at": to.to_rfc3339(), "failed_only": true });
    let answer = api.call(Method::POST, &path, Some(&user.token), Some(body)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    // Zero is left out of proto3 JSON.
    assert_eq!(answer.body["message_count"].as_i64().unwrap_or_default(), 0, "{}", answer.body);
}

#[tokio::test]
async fn the_meshs_own_events_fan_out_to_subscribed_endpoints() {
    let env = TestEnv::new().await;
    let fakes = FakePlatforms::start().await;
    let mut vars = fakes.env();
    for (k, v) in [("POSTMESH_WEBHOOK_SSRF_ALLOWLIST", "127.0.0.1"), ("POSTMESH_JOBS_POLL_INTERVAL", "50ms")]
    {
        vars.push((k.to_owned(), v.to_owned()));
    }
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (_dev, api) = dev(&env, &vars);
    let user = sign_up(&api, "mesh").await;
    let mut receiver = Receiver::start().await;
    let (_, secret) = register(&api, &user, &receiver.url(), &["post.*"]).await;
    let body = json!({ "platform": Platform::Discord.as_str_name(), "credentials": fakes.credentials(Platform::Discord) });
    let connected = api.call(Method::POST, "/api/social/connect", Some(&user.token), Some(body)).await;
    assert_eq!(connected.status, StatusCode::OK, "{}", connected.body);
    let account_id = connected.body["account"]["id"].as_str().unwrap();
    let body = json!({ "text": "hello from the mesh", "target_account_ids": [account_id] });
    let created = api.call(Method::POST, "/api/content/posts", Some(&user.token), Some(body)).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    let post_id = created.body["post"]["id"].as_str().unwrap();

    let mut types = Vec::new();
    while types.len() < 2 {
        let request = receiver.next().await;
        assert_eq!(
            request.header("webhook-signature"),
            expected_signature(
                &secret,
                request.header("webhook-id"),
                request.header("webhook-timestamp"),
                &request.body
            )
        );
        let body = request.json();
        let post = if body["type"] == "post.created" {
            &body["data"]["post"]["id"]
        } else {
            &body["data"]["post_id"]
        };
        assert_eq!(post, post_id, "{body}");
        types.push(body["type"].as_str().unwrap().to_owned());
    }
    types.sort();
    assert_eq!(types, ["post.created", "post.published"]);
}

#[tokio::test]
async fn an_allowlisted_host_name_is_resolved_by_the_guarded_client() {
    let env = TestEnv::new().await;
    // The name is allowlisted, not its addresses: the attempt goes through
    // the guard's resolver, which lets the name's addresses through.
    let (_dev, api) = start(&env, &[("POSTMESH_WEBHOOK_SSRF_ALLOWLIST", "localhost")]);
    let user = sign_up(&api, "named").await;
    let mut receiver = Receiver::start().await;
    let url = format!("http://localhost:{}/hook", receiver.addr.port());
    let (_, secret) = register(&api, &user, &url, &[]).await;
    let sent = trigger(&api, &user, "order.created", json!({ "via": "name" })).await;
    let request = receiver.next().await;
    let id = sent["message_id"].as_str().unwrap();
    assert_eq!(
        request.header("webhook-signature"),
        expected_signature(&secret, id, request.header("webhook-timestamp"), &request.body)
    );
    // 127.0.0.1 itself is not allowlisted.
    let body = json!({ "url": format!("http://127.0.0.1:{}/hook", receiver.addr.port()) });
    let answer = api.call(Method::POST, "/api/webhooks/register", Some(&user.token), Some(body)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
}

#[tokio::test]
async fn the_guard_runs_again_at_every_attempt() {
    let env = TestEnv::new().await;
    let (mut first, api) = start(&env, &[("POSTMESH_WEBHOOK_RETRY_SCHEDULE", "100ms")]);
    let user = sign_up(&api, "rebound").await;
    let mut receiver = Receiver::start().await;
    register(&api, &user, &receiver.url(), &[]).await;
    trigger(&api, &user, "order.created", json!({})).await;
    receiver.next().await;
    assert!(first.terminate().await.success());

    // The same data without the allowlist: the endpoint is still there,
    // but no attempt reaches it any more.
    let (_second, api) = dev(&env, &[("POSTMESH_WEBHOOK_RETRY_SCHEDULE", "100ms")]);
    let sent = trigger(&api, &user, "order.created", json!({})).await;
    let delivery_id = sent["delivery_ids"][0].as_str().expect("still subscribed");
    let query = format!("delivery_id={delivery_id}");
    let lines = logs_when(&api, &user, &query, |l| l.len() == 2).await;
    for line in &lines {
        assert_eq!(line["status"], "DELIVERY_ATTEMPT_STATUS_FAILED", "{line}");
        assert!(line["error"].as_str().unwrap().starts_with("address refused by SSRF guard"), "{line}");
        assert!(line["status_code"].is_null(), "no request was sent: {line}");
    }
    assert!(receiver.received.try_recv().is_err(), "the receiver got nothing");
}

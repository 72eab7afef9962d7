//! Inbound webhooks end to end: Twitch EventSub callbacks through the
//! gateway (signatures computed here with an HMAC independent of the
//! service's), subscriptions through a fake Helix, generic Standard
//! Webhooks sources, and a `stream.online` notification turned by a rule
//! into a post published on a fake Discord.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use postmesh_kit::testing::TestEnv;
use postmesh_proto::postmesh::r#type::v1::Platform;
use postmesh_social::fakes::FakePlatforms;
use postmesh_webhook::twitch_fakes::{CALLBACK_URL, FakeStream, FakeTwitch, FakeUser};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Account, Api, Process, dev, sign_up};

/// The EventSub secret postmesh is configured with.
const SECRET: &str = "eventsub-secret-for-tests-0123";
/// How long background work may take before a test gives up.
const WITHIN: Duration = Duration::from_secs(30);

type HmacSha256 = Hmac<sha2::Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Twitch's signature: `sha256=` + hex HMAC-SHA256(secret, id + timestamp + body).
fn twitch_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    format!("sha256={}", hex(&hmac(secret.as_bytes(), &[id.as_bytes(), timestamp.as_bytes(), body])))
}

/// Standard Webhooks: `v1,` + base64 HMAC-SHA256(key, `id.timestamp.body`).
fn standard_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").expect("whsec_ secret")).expect("base64 key");
    let ts = timestamp.to_string();
    format!("v1,{}", STANDARD.encode(hmac(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body])))
}

fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[test]
fn the_tests_hmac_matches_the_published_vectors() {
    // RFC 4231 test case 2, and the well-known "quick brown fox" vector.
    assert_eq!(
        hex(&hmac(b"Jefe", &[b"what do ya want ", b"for nothing?"])),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        hex(&hmac(b"key", &[b"The quick brown fox jumps over the lazy dog"])),
        "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    );
}

struct Stage {
    _process: Process,
    api: Api,
    user: Account,
    twitch: FakeTwitch,
    platforms: FakePlatforms,
}

/// A raw answer (the challenge is not JSON).
struct Raw {
    status: StatusCode,
    content_type: String,
    text: String,
}

async fn stage(env: &TestEnv) -> Stage {
    let platforms = FakePlatforms::start().await;
    let twitch = FakeTwitch::start(SECRET).await;
    let mut vars = platforms.env();
    vars.extend(twitch.env());
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (process, api) = dev(env, &vars);
    twitch.deliver_to(&api.base);
    let user = sign_up(&api, "streamer").await;
    Stage { _process: process, api, user, twitch, platforms }
}

impl Stage {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let answer = self.api.call(method, path, Some(&self.user.token), body).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        answer.body
    }

    /// POSTs an EventSub message with the given headers to the gateway.
    async fn twitch(&self, headers: &[(&str, &str)], body: &[u8]) -> Raw {
        let mut request =
            self.api.request(Method::POST, "/api/webhooks/twitch").header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.body(body.to_vec()).send().await.expect("the gateway answers");
        let status = response.status();
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        Raw { status, content_type, text: response.text().await.unwrap_or_default() }
    }

    /// An EventSub message signed here with `secret`, sent at `at`.
    async fn signed(&self, secret: &str, id: &str, kind: &str, at: &str, body: &Value) -> Raw {
        let bytes = serde_json::to_vec(body).unwrap();
        let signature = twitch_signature(secret, id, at, &bytes);
        let headers = [
            ("Twitch-Eventsub-Message-Id", id),
            ("Twitch-Eventsub-Message-Timestamp", at),
            ("Twitch-Eventsub-Message-Signature", signature.as_str()),
            ("Twitch-Eventsub-Message-Type", kind),
            ("Twitch-Eventsub-Subscription-Type", body["subscription"]["type"].as_str().unwrap_or("")),
            ("Twitch-Eventsub-Subscription-Version", "1"),
        ];
        self.twitch(&headers, &bytes).await
    }

    /// Subscribes to `stream.online` of `broadcaster` and waits until the
    /// fake Twitch verified the callback; returns (ours, Twitch's JSON).
    async fn subscribe(&self, broadcaster: &str) -> (Value, Value) {
        let created = self
            .call(
                Method::POST,
                "/api/webhooks/twitch/subscriptions",
                Some(json!({ "type": "stream.online", "condition": { "broadcaster_user_id": broadcaster } })),
            )
            .await;
        let ours = created["subscription"].clone();
        assert_eq!(ours["version"], "1", "{ours}");
        let at_twitch = self
            .twitch
            .wait_for(WITHIN, |subs| {
                subs.iter()
                    .any(|s| s["condition"]["broadcaster_user_id"] == broadcaster && s["status"] == "enabled")
            })
            .await;
        let remote = at_twitch
            .into_iter()
            .find(|s| s["condition"]["broadcaster_user_id"] == broadcaster)
            .expect("at Twitch");
        assert_eq!(remote["transport"]["callback"], CALLBACK_URL);
        (ours, remote)
    }

    async fn subscription(&self, id: &str) -> Value {
        let list = self.call(Method::GET, "/api/webhooks/twitch/subscriptions", None).await;
        list["subscriptions"]
            .as_array()
            .and_then(|subs| subs.iter().find(|s| s["id"] == id).cloned())
            .unwrap_or_else(|| panic!("subscription {id} not listed: {list}"))
    }

    async fn events(&self) -> Vec<Value> {
        let list = self.call(Method::GET, "/api/webhooks/inbound-events", None).await;
        list["events"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until every listed inbound event is processed (or failed).
    async fn processed(&self, count: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let events = self.events().await;
            let done = events.iter().filter(|e| e["status"] != "INBOUND_EVENT_STATUS_RECEIVED").count();
            if events.len() >= count && done == events.len() {
                return events;
            }
            assert!(tokio::time::Instant::now() < deadline, "events not processed in time: {events:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn notification(subscription: &Value, event: Value) -> Value {
    json!({ "subscription": subscription, "event": event })
}

fn online(broadcaster: &str, login: &str, name: &str) -> Value {
    json!({
        "id": "9001", "broadcaster_user_id": broadcaster, "broadcaster_user_login": login,
        "broadcaster_user_name": name, "type": "live", "started_at": "2026-11-24T10:11:12.123Z",
    })
}

#[tokio::test]
async fn eventsub_signatures_and_ages_are_checked_before_anything_is_stored() {
    let env = TestEnv::new().await;
    let stage = stage(&env).await;
    let (ours, remote) = stage.subscribe("1111").await;
    let sub = stage.subscription(ours["id"].as_str().unwrap()).await;
    assert_eq!(sub["status"], "EVENT_SUB_SUBSCRIPTION_STATUS_ENABLED", "{sub}");
    assert_eq!(sub["twitch_subscription_id"], remote["id"], "{sub}");

    let body = notification(&remote, online("1111", "ana", "Ana"));
    let now = rfc3339(chrono::Utc::now());

    // Signed with another secret: 403, nothing stored.
    let answer = stage.signed("not-the-secret-at-all", "m-bad", "notification", &now, &body).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text);
    // The right signature over other bytes.
    let bytes = serde_json::to_vec(&body).unwrap();
    let signature = twitch_signature(SECRET, "m-tampered", &now, &bytes);
    let mut tampered = bytes.clone();
    tampered.extend_from_slice(b" ");
    let headers = [
        ("Twitch-Eventsub-Message-Id", "m-tampered"),
        ("Twitch-Eventsub-Message-Timestamp", now.as_str()),
        ("Twitch-Eventsub-Message-Signature", signature.as_str()),
        ("Twitch-Eventsub-Message-Type", "notification"),
    ];
    assert_eq!(stage.twitch(&headers, &tampered).await.status, StatusCode::FORBIDDEN);
    // No signature header at all.
    assert_eq!(stage.twitch(&headers[..2], &bytes).await.status, StatusCode::FORBIDDEN);
    // Correctly signed but 11 minutes old, or 11 minutes ahead.
    let stale = rfc3339(chrono::Utc::now() - chrono::Duration::minutes(11));
    let answer = stage.signed(SECRET, "m-stale", "notification", &stale, &body).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text);
    let ahead = rfc3339(chrono::Utc::now() + chrono::Duration::minutes(11));
    assert_eq!(
        stage.signed(SECRET, "m-ahead", "notification", &ahead, &body).await.status,
        StatusCode::FORBIDDEN
    );
    assert!(stage.events().await.is_empty(), "a refused message stored nothing");

    // Nine minutes old is still fine; a redelivery of it is answered but
    // processed once.
    let recent = rfc3339(chrono::Utc::now() - chrono::Duration::minutes(9));
    let first = stage.signed(SECRET, "m-good", "notification", &recent, &body).await;
    assert!(first.status.is_success(), "{}", first.text);
    assert!(first.text.is_empty(), "a notification is answered with an empty body: {}", first.text);
    let again = stage.signed(SECRET, "m-good", "notification", &now, &body).await;
    assert!(again.status.is_success(), "{}", again.text);
    let events = stage.processed(1).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["external_id"], "m-good");
    assert_eq!(events[0]["event_type"], "stream.online");
    assert_eq!(events[0]["source_kind"], "INBOUND_SOURCE_KIND_TWITCH");
    assert_eq!(events[0]["source_id"], ours["id"]);
    assert_eq!(events[0]["payload"]["event"]["broadcaster_user_login"], "ana");
}

#[tokio::test]
async fn the_verification_challenge_is_answered_as_plain_text() {
    let env = TestEnv::new().await;
    let stage = stage(&env).await;
    let created = stage
        .call(
            Method::POST,
            "/api/webhooks/twitch/subscriptions",
            Some(json!({ "type": "channel.follow", "version": "2", "condition": { "broadcaster_user_id": "42", "moderator_user_id": "42" } })),
        )
        .await;
    let id = created["subscription"]["id"].as_str().unwrap().to_owned();
    // Our own challenge, signed here, for the same subscription.
    let subscription = json!({
        "id": "f1c2a387-161a-49f9-a165-0f21d7a4e1c4", "status": "webhook_callback_verification_pending",
        "type": "channel.follow", "version": "2",
        "condition": { "broadcaster_user_id": "42", "moderator_user_id": "42" },
        "transport": { "method": "webhook", "callback": CALLBACK_URL }, "created_at": "2026-11-24T10:00:00Z",
    });
    let body = json!({ "challenge": "pogchamp-kappa-360noscope-vohiyo", "subscription": subscription });
    let now = rfc3339(chrono::Utc::now());
    let answer = stage.signed(SECRET, "c-1", "webhook_callback_verification", &now, &body).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.content_type.starts_with("text/plain"), "{}", answer.content_type);
    assert_eq!(answer.text, "pogchamp-kappa-360noscope-vohiyo");
    let sub = stage.subscription(&id).await;
    assert_eq!(sub["status"], "EVENT_SUB_SUBSCRIPTION_STATUS_ENABLED", "{sub}");
    // A challenge with a bad signature gets no challenge back.
    let forged =
        stage.signed("forged-secret-xxxxxxxx", "c-2", "webhook_callback_verification", &now, &body).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(!forged.text.contains("pogchamp"), "{}", forged.text);
    // The fake Twitch's own challenge went through the same way.
    let sent = stage.twitch.sent();
    let verification =
        sent.iter().find(|s| s.message_type == "webhook_callback_verification").expect("verified");
    assert_eq!(verification.status, 200, "{verification:?}");
}

#[tokio::test]
async fn a_revocation_marks_the_subscription() {
    let env = TestEnv::new().await;
    let stage = stage(&env).await;
    let (ours, remote) = stage.subscribe("2222").await;
    let answer = stage.twitch.revoke("r-1", &remote, "authorization_revoked").await;
    assert!((200..300).contains(&answer.status), "{answer:?}");
    let sub = stage.subscription(ours["id"].as_str().unwrap()).await;
    assert_eq!(sub["status"], "EVENT_SUB_SUBSCRIPTION_STATUS_REVOKED", "{sub}");
    assert_eq!(sub["status_reason"], "authorization_revoked", "{sub}");
    // Deleting it is idempotent; an unknown id is 404.
    let path = format!("/api/webhooks/twitch/subscriptions/{}", ours["id"].as_str().unwrap());
    stage.call(Method::DELETE, &path, None).await;
    stage.call(Method::DELETE, &path, None).await;
    let unknown = stage
        .api
        .call(
            Method::DELETE,
            "/api/webhooks/twitch/subscriptions/01900000-0000-7000-8000-000000000000",
            Some(&stage.user.token),
            None,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn generic_webhooks_are_verified_with_standard_webhooks() {
    let env = TestEnv::new().await;
    let stage = stage(&env).await;
    let created = stage
        .call(
            Method::POST,
            "/api/webhooks/inbound-sources",
            Some(json!({ "name": "ci", "description": "builds" })),
        )
        .await;
    let source = created["source"]["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(STANDARD.decode(&secret["whsec_".len()..]).unwrap().len(), 32);
    assert_eq!(created["source"]["url_path"], format!("/api/webhooks/inbound/{source}"));
    let path = format!("/api/webhooks/inbound/{source}");

    let send = |id: &'static str, ts: i64, signature: String, body: Vec<u8>| {
        let request = stage
            .api
            .request(Method::POST, &path)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body);
        stage.api.send(request)
    };
    let body =
        serde_json::to_vec(&json!({ "type": "build.finished", "data": { "branch": "main" } })).unwrap();
    let now = chrono::Utc::now().timestamp();

    let wrong = standard_signature("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "msg_1", now, &body);
    assert_eq!(send("msg_1", now, wrong, body.clone()).await.status, StatusCode::FORBIDDEN);
    let stale = now - 6 * 60;
    let old = standard_signature(&secret, "msg_1", stale, &body);
    assert_eq!(send("msg_1", stale, old, body.clone()).await.status, StatusCode::FORBIDDEN);
    assert!(stage.events().await.is_empty());

    // Several signatures: any one matching is enough.
    let good = format!("v1,bm90IGl0 {}", standard_signature(&secret, "msg_1", now, &body));
    let first = send("msg_1", now, good.clone(), body.clone()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.body["duplicate"], Value::Null, "{}", first.body);
    let event_id = first.body["event_id"].as_str().unwrap().to_owned();
    let again = send("msg_1", now, good, body.clone()).await;
    assert_eq!(again.body["duplicate"], true, "{}", again.body);
    assert_eq!(again.body["event_id"], event_id.as_str());
    let events = stage.processed(1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_type"], "build.finished");
    assert_eq!(events[0]["source_kind"], "INBOUND_SOURCE_KIND_GENERIC");

    // A body that is not a JSON object, correctly signed: 400.
    let list = b"[1,2]".to_vec();
    let signed = standard_signature(&secret, "msg_2", now, &list);
    assert_eq!(send("msg_2", now, signed, list).await.status, StatusCode::BAD_REQUEST);

    // Rotation: the old secret keeps working during the overlap, the new one at once.
    let rotated = stage
        .call(
            Method::POST,
            &format!("/api/webhooks/inbound-sources/{source}/rotate-secret"),
            Some(json!({ "overlap": "3600s" })),
        )
        .await;
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert!(rotated["source"]["previous_secret_expires_at"].is_string(), "{rotated}");
    let by_old = standard_signature(&secret, "msg_3", now, &body);
    assert_eq!(send("msg_3", now, by_old, body.clone()).await.status, StatusCode::OK);
    let by_new = standard_signature(&new_secret, "msg_4", now, &body);
    assert_eq!(send("msg_4", now, by_new, body.clone()).await.status, StatusCode::OK);
    // Overlap 0 ends the old secret at once.
    let rotated = stage
        .call(
            Method::POST,
            &format!("/api/webhooks/inbound-sources/{source}/rotate-secret"),
            Some(json!({ "overlap": "0s" })),
        )
        .await;
    let newest = rotated["secret"].as_str().unwrap().to_owned();
    let by_previous = standard_signature(&new_secret, "msg_5", now, &body);
    assert_eq!(send("msg_5", now, by_previous, body.clone()).await.status, StatusCode::FORBIDDEN);
    let by_newest = standard_signature(&newest, "msg_5", now, &body);
    assert_eq!(send("msg_5", now, by_newest, body.clone()).await.status, StatusCode::OK);

    // A deleted source answers 403.
    stage.call(Method::DELETE, &format!("/api/webhooks/inbound-sources/{source}"), None).await;
    let after = standard_signature(&newest, "msg_6", now, &body);
    assert_eq!(send("msg_6", now, after, body.clone()).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn stream_online_ends_as_one_published_post_and_the_interval_holds() {
    let env = TestEnv::new().await;
    let stage = stage(&env).await;
    stage.twitch.set_user(FakeUser {
        id: "3333".into(),
        login: "ferris".into(),
        display_name: "Ferris".into(),
        profile_image_url: "https://static-cdn.example/ferris.png".into(),
    });
    stage.twitch.set_stream(
        "3333",
        FakeStream {
            title: "Writing a webhook service".into(),
            game_name: "Software and Game Development".into(),
            viewer_count: 1234,
            tags: vec!["Rust".into(), "English".into()],
            language: "en".into(),
        },
    );
    let credentials = stage.platforms.credentials(Platform::Discord);
    let account = stage
        .call(
            Method::POST,
            "/api/social/connect",
            Some(json!({ "platform": "PLATFORM_DISCORD", "credentials": credentials })),
        )
        .await["account"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let template = stage
        .call(
            Method::POST,
            "/api/content/templates",
            Some(json!({ "template": {
                "name": "live",
                "body": "{who} is live: {title} ({viewer_count} watching) {stream_url}",
            } })),
        )
        .await["template"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, remote) = stage.subscribe("3333").await;

    // Unknown template and account are named.
    let bad = stage
        .api
        .call(
            Method::POST,
            "/api/webhooks/rules",
            Some(&stage.user.token),
            Some(json!({
                "name": "bad", "source_kind": "INBOUND_SOURCE_KIND_TWITCH", "event_type": "stream.online",
                "template_id": "01900000-0000-7000-8000-000000000000", "target_account_ids": [account],
            })),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert_eq!(bad.violated_field(), "template_id", "{}", bad.body);

    let rule = stage
        .call(
            Method::POST,
            "/api/webhooks/rules",
            Some(json!({
                "name": "Ferris goes live",
                "source_kind": "INBOUND_SOURCE_KIND_TWITCH",
                "event_type": "stream.online",
                "conditions": { "broadcaster_user_ids": ["3333"], "tags": ["rust"], "languages": ["en"] },
                "template_id": template,
                "variables": { "who": "**{broadcaster_user_name}**" },
                "target_account_ids": [account],
                "min_interval": "86400s",
            })),
        )
        .await["rule"]
        .clone();
    let rule_id = rule["id"].as_str().unwrap().to_owned();
    assert_eq!(rule["enabled"], true, "{rule}");

    // Delivered twice under the same message id (a Twitch retry).
    let event = online("3333", "ferris", "Ferris");
    let first = stage.twitch.notify("live-1", &remote, event.clone()).await;
    assert!((200..300).contains(&first.status), "{first:?}");
    let second = stage.twitch.notify("live-1", &remote, event.clone()).await;
    assert!((200..300).contains(&second.status), "{second:?}");

    let posts = stage.platforms.wait_for_posts(Platform::Discord, 1, WITHIN).await;
    assert!(posts[0].text.contains("**Ferris** is live: Writing a webhook service"), "{}", posts[0].text);
    assert!(posts[0].text.contains("1234 watching"), "{}", posts[0].text);
    assert!(posts[0].text.contains("https://twitch.tv/ferris"), "{}", posts[0].text);
    let events = stage.processed(1).await;
    assert_eq!(events.len(), 1, "one event for two deliveries: {events:#?}");
    let firing = &events[0]["firings"][0];
    assert_eq!(firing["rule_id"], rule_id.as_str());
    assert_eq!(firing["status"], "RULE_FIRING_STATUS_POST_CREATED", "{firing}");
    let post_id = firing["post_id"].as_str().unwrap().to_owned();
    let post = stage.call(Method::GET, &format!("/api/content/posts/{post_id}"), None).await;
    assert_eq!(post["post"]["origin"], format!("webhook_rule:{rule_id}"), "{post}");

    // A new stream within the interval: recorded as skipped, no post.
    let third = stage.twitch.notify("live-2", &remote, event).await;
    assert!((200..300).contains(&third.status), "{third:?}");
    let events = stage.processed(2).await;
    let newest = &events[0];
    assert_eq!(newest["external_id"], "live-2");
    assert_eq!(newest["firings"][0]["status"], "RULE_FIRING_STATUS_SKIPPED_MIN_INTERVAL", "{newest}");
    let rule = stage.call(Method::GET, &format!("/api/webhooks/rules/{rule_id}"), None).await;
    assert!(rule["rule"]["last_fired_at"].is_string(), "{rule}");
    let posts = stage.call(Method::GET, "/api/content/posts", None).await;
    assert_eq!(posts["posts"].as_array().map(Vec::len), Some(1), "exactly one post: {posts}");
    assert_eq!(stage.platforms.posts(Platform::Discord).len(), 1);
    // Enrichment is cached: one lookup per resource for two events.
    assert_eq!(stage.twitch.calls("/helix/users"), 1);
    assert_eq!(stage.twitch.calls("/helix/streams"), 1);

    // A disabled rule does not fire; the kind of sender cannot change.
    let path = format!("/api/webhooks/rules/{rule_id}");
    let updated =
        stage.call(Method::PATCH, &path, Some(json!({ "enabled": false, "min_interval": "0s" }))).await;
    assert_eq!(updated["rule"]["enabled"], false, "{updated}");
    assert_eq!(updated["rule"]["min_interval"], Value::Null, "{updated}");
    let refused = stage
        .api
        .call(
            Method::PATCH,
            &path,
            Some(&stage.user.token),
            Some(json!({ "source_kind": "INBOUND_SOURCE_KIND_GENERIC" })),
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    let fourth = stage.twitch.notify("live-3", &remote, online("3333", "ferris", "Ferris")).await;
    assert!((200..300).contains(&fourth.status), "{fourth:?}");
    let events = stage.processed(3).await;
    assert_eq!(events[0]["external_id"], "live-3");
    assert_eq!(events[0]["firings"], Value::Null, "no rule fired: {}", events[0]);
    assert_eq!(stage.platforms.posts(Platform::Discord).len(), 1);
    stage.call(Method::DELETE, &path, None).await;
    stage.call(Method::DELETE, &path, None).await;
    let gone = stage.api.call(Method::GET, &path, Some(&stage.user.token), None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn reconciliation_recreates_missing_and_removes_unwanted_subscriptions() {
    let env = TestEnv::new().await;
    let platforms = FakePlatforms::start().await;
    let twitch = FakeTwitch::start(SECRET).await;
    let mut vars = twitch.env();
    vars.push(("POSTMESH_WEBHOOK_RECONCILE_INTERVAL".into(), "1s".into()));
    vars.extend(platforms.env());
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (process, api) = dev(&env, &vars);
    twitch.deliver_to(&api.base);
    let user = sign_up(&api, "reconciler").await;
    let stage = Stage { _process: process, api, user, twitch, platforms };

    let (ours, remote) = stage.subscribe("4444").await;
    let stray = stage.twitch.add_subscription(
        "channel.update",
        json!({ "broadcaster_user_id": "5555" }),
        CALLBACK_URL,
    );
    let foreign = stage.twitch.add_subscription(
        "channel.update",
        json!({ "broadcaster_user_id": "6666" }),
        "https://other.example/cb",
    );
    // Twitch lost ours (expired, removed by hand).
    stage.twitch.forget_subscription(remote["id"].as_str().unwrap());

    let subs = stage
        .twitch
        .wait_for(WITHIN, |subs| {
            let recreated = subs.iter().any(|s| {
                s["condition"]["broadcaster_user_id"] == "4444"
                    && s["id"] != remote["id"]
                    && s["status"] == "enabled"
            });
            let stray_gone = !subs.iter().any(|s| s["id"] == stray.as_str());
            recreated && stray_gone
        })
        .await;
    assert!(
        subs.iter().any(|s| s["id"] == foreign.as_str()),
        "another callback's subscription is left alone"
    );
    let recreated = subs.iter().find(|s| s["condition"]["broadcaster_user_id"] == "4444").unwrap();
    // The record follows Twitch's new id.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let sub = stage.subscription(ours["id"].as_str().unwrap()).await;
        if sub["twitch_subscription_id"] == recreated["id"]
            && sub["status"] == "EVENT_SUB_SUBSCRIPTION_STATUS_ENABLED"
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "record not reconciled: {sub}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Deleted here: gone at Twitch too.
    stage
        .call(
            Method::DELETE,
            &format!("/api/webhooks/twitch/subscriptions/{}", ours["id"].as_str().unwrap()),
            None,
        )
        .await;
    stage
        .twitch
        .wait_for(WITHIN, |subs| !subs.iter().any(|s| s["condition"]["broadcaster_user_id"] == "4444"))
        .await;
}

/// A Discord account, a template, a `stream.online` subscription of
/// `broadcaster` and a rule posting to the account; returns Twitch's
/// subscription JSON and the rule id.
async fn live_rule(stage: &Stage, broadcaster: &str, min_interval: &str) -> (Value, String) {
    let credentials = stage.platforms.credentials(Platform::Discord);
    let connected = stage
        .call(
            Method::POST,
            "/api/social/connect",
            Some(json!({ "platform": "PLATFORM_DISCORD", "credentials": credentials })),
        )
        .await;
    let template = stage
        .call(
            Method::POST,
            "/api/content/templates",
            Some(json!({ "template": { "name": "on air", "body": "{broadcaster_user_name} is on air" } })),
        )
        .await;
    let (_, remote) = stage.subscribe(broadcaster).await;
    let rule = stage
        .call(
            Method::POST,
            "/api/webhooks/rules",
            Some(json!({
                "name": "on air", "source_kind": "INBOUND_SOURCE_KIND_TWITCH", "event_type": "stream.online",
                "template_id": template["template"]["id"], "target_account_ids": [connected["account"]["id"]],
                "min_interval": min_interval,
            })),
        )
        .await;
    (remote, rule["rule"]["id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn concurrent_events_fire_a_rule_with_an_interval_once() {
    let env = TestEnv::new().await;
    let stage = stage(&env).await;
    let (remote, _) = live_rule(&stage, "7777", "3600s").await;
    let event = online("7777", "crab", "Crab");
    let (a, b, c) = tokio::join!(
        stage.twitch.notify("race-a", &remote, event.clone()),
        stage.twitch.notify("race-b", &remote, event.clone()),
        stage.twitch.notify("race-c", &remote, event.clone()),
    );
    for sent in [a, b, c] {
        assert!((200..300).contains(&sent.status), "{sent:?}");
    }
    let events = stage.processed(3).await;
    let statuses: Vec<&str> =
        events.iter().map(|e| e["firings"][0]["status"].as_str().unwrap_or("")).collect();
    let created = statuses.iter().filter(|s| **s == "RULE_FIRING_STATUS_POST_CREATED").count();
    let skipped = statuses.iter().filter(|s| **s == "RULE_FIRING_STATUS_SKIPPED_MIN_INTERVAL").count();
    assert_eq!((created, skipped), (1, 2), "{statuses:?}");
    let posts = stage.platforms.wait_for_posts(Platform::Discord, 1, WITHIN).await;
    assert_eq!(posts[0].text, "Crab is on air");
    let listed = stage.call(Method::GET, "/api/content/posts", None).await;
    assert_eq!(listed["posts"].as_array().map(Vec::len), Some(1), "{listed}");
}

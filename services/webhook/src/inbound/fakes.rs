//! A fake Twitch (feature `fakes`), for the end-to-end tests and the
//! benchmarks: one real HTTP server on `127.0.0.1:0` serving the OAuth
//! client-credentials grant (`/oauth2/token`), the Helix endpoints the
//! webhook service calls (`/helix/eventsub/subscriptions`, `/helix/users`,
//! `/helix/streams`, `/helix/channels`), and an EventSub sender that signs
//! messages the way Twitch does.
//!
//! Like Twitch, creating a subscription answers 202 with status
//! `webhook_callback_verification_pending`, then sends the verification
//! challenge to the callback and enables the subscription if the answer is
//! the challenge. Because tests do not know the gateway's port before it
//! starts, challenges and notifications go to [`FakeTwitch::deliver_to`]'s
//! base URL + the callback's path, not to the callback's host.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::signature::eventsub_signature;

/// The client id the fake accepts.
pub const CLIENT_ID: &str = "fake-twitch-client";
/// The client secret the fake accepts.
pub const CLIENT_SECRET: &str = "fake-twitch-client-secret";
/// The callback URL postmesh is configured with in tests (its host is never
/// called: see [`FakeTwitch::deliver_to`]).
pub const CALLBACK_URL: &str = "https://postmesh.example/api/webhooks/twitch";

/// A Helix user, as `/helix/users` answers.
#[derive(Debug, Clone)]
pub struct FakeUser {
    pub id: String,
    pub login: String,
    pub display_name: String,
    pub profile_image_url: String,
}

/// A live stream, as `/helix/streams` answers.
#[derive(Debug, Clone)]
pub struct FakeStream {
    pub title: String,
    pub game_name: String,
    pub viewer_count: u64,
    pub tags: Vec<String>,
    pub language: String,
}

/// A message the fake sent to postmesh and what came back.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message_id: String,
    pub message_type: String,
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

#[derive(Default)]
struct Books {
    token: Option<String>,
    users: BTreeMap<String, FakeUser>,
    streams: BTreeMap<String, FakeStream>,
    /// Subscriptions by id: the Helix JSON plus the transport secret.
    subscriptions: BTreeMap<String, (Value, String)>,
    /// Types Helix refuses with 400.
    refused_types: Vec<String>,
    deliver_to: Option<String>,
    calls: BTreeMap<String, usize>,
    sent: Vec<Sent>,
}

struct Fake {
    books: Mutex<Books>,
    changed: Notify,
    http: reqwest::Client,
}

impl Fake {
    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running fake; the server stops when this is dropped.
pub struct FakeTwitch {
    base_url: String,
    secret: String,
    state: Arc<Fake>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeTwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTwitch").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

impl Drop for FakeTwitch {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl FakeTwitch {
    /// Starts the fake on a free port; `eventsub_secret` is the secret
    /// postmesh is configured with (used by [`FakeTwitch::send`]).
    pub async fn start(eventsub_secret: &str) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("a free local port");
        let addr: SocketAddr = listener.local_addr().expect("a bound listener has an address");
        let state = Arc::new(Fake {
            books: Mutex::new(Books::default()),
            changed: Notify::new(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
        });
        let app = Router::new()
            .route("/oauth2/token", post(token))
            .route(
                "/helix/eventsub/subscriptions",
                get(list_subscriptions).post(create_subscription).delete(delete_subscription),
            )
            .route("/helix/users", get(users))
            .route("/helix/streams", get(streams))
            .route("/helix/channels", get(channels))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the fake Twitch serves");
        });
        Self { base_url: format!("http://{addr}"), secret: eventsub_secret.to_owned(), state, server }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// `POSTMESH_*` variables pointing postmesh's webhook service here.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("POSTMESH_WEBHOOK_TWITCH_API_URL".into(), self.base_url.clone()),
            ("POSTMESH_WEBHOOK_TWITCH_AUTH_URL".into(), self.base_url.clone()),
            ("POSTMESH_WEBHOOK_TWITCH_CLIENT_ID".into(), CLIENT_ID.into()),
            ("POSTMESH_WEBHOOK_TWITCH_CLIENT_SECRET".into(), CLIENT_SECRET.into()),
            ("POSTMESH_WEBHOOK_TWITCH_EVENTSUB_SECRET".into(), self.secret.clone()),
            ("POSTMESH_WEBHOOK_EVENTSUB_CALLBACK_URL".into(), CALLBACK_URL.into()),
        ]
    }

    /// Where challenges and notifications are sent: `base` (the gateway,
    /// `http://host:port`) + the callback's path.
    pub fn deliver_to(&self, base: &str) {
        self.state.books().deliver_to = Some(base.trim_end_matches('/').to_owned());
    }

    /// Adds or replaces a user.
    pub fn set_user(&self, user: FakeUser) {
        self.state.books().users.insert(user.id.clone(), user);
    }

    /// Puts `user_id` live with this stream.
    pub fn set_stream(&self, user_id: &str, stream: FakeStream) {
        self.state.books().streams.insert(user_id.to_owned(), stream);
    }

    /// Makes Helix refuse subscriptions of this type (400).
    pub fn refuse_type(&self, r#type: &str) {
        self.state.books().refused_types.push(r#type.to_owned());
    }

    /// The app's subscriptions as Helix lists them.
    pub fn subscriptions(&self) -> Vec<Value> {
        self.state.books().subscriptions.values().map(|(v, _)| v.clone()).collect()
    }

    /// Adds an enabled subscription postmesh did not ask for (a leftover).
    pub fn add_subscription(&self, r#type: &str, condition: Value, callback: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let subscription = json!({
            "id": id, "status": "enabled", "type": r#type, "version": "1", "condition": condition,
            "created_at": now_rfc3339(), "transport": { "method": "webhook", "callback": callback }, "cost": 1,
        });
        self.state.books().subscriptions.insert(id.clone(), (subscription, self.secret.clone()));
        self.state.changed.notify_waiters();
        id
    }

    /// Removes a subscription behind postmesh's back (as if it expired).
    pub fn forget_subscription(&self, id: &str) {
        self.state.books().subscriptions.remove(id);
        self.state.changed.notify_waiters();
    }

    /// Helix calls made to `path` (e.g. `/helix/users`).
    pub fn calls(&self, path: &str) -> usize {
        self.state.books().calls.get(path).copied().unwrap_or_default()
    }

    /// Messages sent to postmesh so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.state.books().sent.clone()
    }

    /// Waits until `check` holds on the subscriptions, or panics after `within`.
    pub async fn wait_for(&self, within: Duration, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Registered before looking, so a change in between still wakes us.
            let notified = self.state.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let subs = self.subscriptions();
            if check(&subs) {
                return subs;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("the fake Twitch's subscriptions did not reach the expected state: {subs:?}");
            }
        }
    }

    /// A signed EventSub message as Twitch sends it: headers and body.
    pub fn message(
        &self,
        message_id: &str,
        message_type: &str,
        body: &Value,
    ) -> (Vec<(String, String)>, Vec<u8>) {
        message(&self.secret, message_id, message_type, body)
    }

    /// Sends a `notification` of subscription `subscription` (Helix JSON)
    /// with `event`, under `message_id`; returns what postmesh answered.
    pub async fn notify(&self, message_id: &str, subscription: &Value, event: Value) -> Sent {
        let body = json!({ "subscription": subscription, "event": event });
        send(&self.state, &self.secret, message_id, "notification", &body).await
    }

    /// Sends a `revocation` of `subscription` with Twitch's `reason` status.
    pub async fn revoke(&self, message_id: &str, subscription: &Value, reason: &str) -> Sent {
        let mut subscription = subscription.clone();
        subscription["status"] = json!(reason);
        if let Some(id) = subscription["id"].as_str() {
            self.forget_subscription(id);
        }
        let body = json!({ "subscription": subscription });
        send(&self.state, &self.secret, message_id, "revocation", &body).await
    }
}

fn message(
    secret: &str,
    message_id: &str,
    message_type: &str,
    body: &Value,
) -> (Vec<(String, String)>, Vec<u8>) {
    let bytes = serde_json::to_vec(body).expect("JSON");
    let timestamp = now_rfc3339();
    let signature = eventsub_signature(secret.as_bytes(), message_id, &timestamp, &bytes);
    let subscription = &body["subscription"];
    let headers = vec![
        ("Twitch-Eventsub-Message-Id".to_owned(), message_id.to_owned()),
        ("Twitch-Eventsub-Message-Timestamp".to_owned(), timestamp),
        ("Twitch-Eventsub-Message-Signature".to_owned(), signature),
        ("Twitch-Eventsub-Message-Type".to_owned(), message_type.to_owned()),
        ("Twitch-Eventsub-Message-Retry".to_owned(), "0".to_owned()),
        (
            "Twitch-Eventsub-Subscription-Type".to_owned(),
            subscription["type"].as_str().unwrap_or("").to_owned(),
        ),
        (
            "Twitch-Eventsub-Subscription-Version".to_owned(),
            subscription["version"].as_str().unwrap_or("1").to_owned(),
        ),
    ];
    (headers, bytes)
}

async fn send(state: &Fake, secret: &str, message_id: &str, message_type: &str, body: &Value) -> Sent {
    let target = state.books().deliver_to.clone().expect("FakeTwitch::deliver_to was called");
    let callback = body["subscription"]["transport"]["callback"].as_str().unwrap_or(CALLBACK_URL).to_owned();
    let path = url::Url::parse(&callback)
        .map(|u| u.path().to_owned())
        .unwrap_or_else(|_| "/api/webhooks/twitch".into());
    let (headers, bytes) = message(secret, message_id, message_type, body);
    let mut request = state.http.post(format!("{target}{path}")).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let sent = match request.body(bytes).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let content_type =
                response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let body = response.text().await.unwrap_or_default();
            Sent {
                message_id: message_id.to_owned(),
                message_type: message_type.to_owned(),
                status,
                content_type,
                body,
            }
        }
        Err(err) => Sent {
            message_id: message_id.to_owned(),
            message_type: message_type.to_owned(),
            status: 0,
            content_type: String::new(),
            body: err.to_string(),
        },
    };
    state.books().sent.push(sent.clone());
    sent
}

fn count(state: &Fake, path: &str) {
    *state.books().calls.entry(path.to_owned()).or_default() += 1;
}

fn helix_error(status: StatusCode, message: &str) -> Response {
    let body = json!({ "error": status.canonical_reason().unwrap_or(""), "status": status.as_u16(), "message": message });
    (status, axum::Json(body)).into_response()
}

/// Checks `Client-Id` and the bearer token as Helix does.
fn authorized(state: &Fake, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let client = headers.get("client-id").and_then(|v| v.to_str().ok()).unwrap_or("");
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let token = state.books().token.clone();
    if client != CLIENT_ID || token.as_deref() != Some(bearer) {
        return Err(Box::new(helix_error(StatusCode::UNAUTHORIZED, "Invalid OAuth token")));
    }
    Ok(())
}

async fn token(State(state): State<Arc<Fake>>, body: Bytes) -> Response {
    count(&state, "/oauth2/token");
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
        || form.get("grant_type").map(String::as_str) != Some("client_credentials")
    {
        return helix_error(StatusCode::FORBIDDEN, "invalid client secret");
    }
    let token = uuid::Uuid::now_v7().simple().to_string();
    state.books().token = Some(token.clone());
    axum::Json(json!({ "access_token": token, "expires_in": 5_000_000, "token_type": "bearer" }))
        .into_response()
}

async fn list_subscriptions(State(state): State<Arc<Fake>>, headers: HeaderMap) -> Response {
    count(&state, "/helix/eventsub/subscriptions");
    if let Err(denied) = authorized(&state, &headers) {
        return *denied;
    }
    let data: Vec<Value> = state.books().subscriptions.values().map(|(v, _)| v.clone()).collect();
    axum::Json(json!({ "data": data, "total": data.len(), "total_cost": 0, "max_total_cost": 10000, "pagination": {} }))
        .into_response()
}

async fn create_subscription(State(state): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    count(&state, "/helix/eventsub/subscriptions");
    if let Err(denied) = authorized(&state, &headers) {
        return *denied;
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return helix_error(StatusCode::BAD_REQUEST, "malformed body");
    };
    let r#type = request["type"].as_str().unwrap_or("").to_owned();
    let version = request["version"].as_str().unwrap_or("").to_owned();
    let condition = request["condition"].clone();
    let secret = request["transport"]["secret"].as_str().unwrap_or("").to_owned();
    if r#type.is_empty() || version.is_empty() || !condition.is_object() || secret.len() < 10 {
        return helix_error(StatusCode::BAD_REQUEST, "missing type, version, condition or secret");
    }
    let subscription = {
        let mut books = state.books();
        if books.refused_types.contains(&r#type) {
            return helix_error(StatusCode::BAD_REQUEST, &format!("unsupported subscription type {type}"));
        }
        let exists = books.subscriptions.values().any(|(s, _)| {
            s["type"] == r#type.as_str() && s["version"] == version.as_str() && s["condition"] == condition
        });
        if exists {
            return helix_error(StatusCode::CONFLICT, "subscription already exists");
        }
        let id = uuid::Uuid::new_v4().to_string();
        let subscription = json!({
            "id": id,
            "status": "webhook_callback_verification_pending",
            "type": r#type,
            "version": version,
            "condition": condition,
            "created_at": now_rfc3339(),
            "transport": { "method": "webhook", "callback": request["transport"]["callback"] },
            "cost": 1,
        });
        books.subscriptions.insert(id, (subscription.clone(), secret.clone()));
        subscription
    };
    state.changed.notify_waiters();
    // Like Twitch: answer first, then verify the callback.
    let verifier = state.clone();
    let pending = subscription.clone();
    tokio::spawn(async move { verify(verifier, pending, secret).await });
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "data": [subscription], "total": 1, "total_cost": 1, "max_total_cost": 10000 })),
    )
        .into_response()
}

async fn verify(state: Arc<Fake>, subscription: Value, secret: String) {
    if state.books().deliver_to.is_none() {
        return;
    }
    let challenge = uuid::Uuid::new_v4().simple().to_string();
    let body = json!({ "challenge": challenge, "subscription": subscription });
    let message_id = uuid::Uuid::new_v4().to_string();
    let sent = send(&state, &secret, &message_id, "webhook_callback_verification", &body).await;
    let ok = sent.status == 200 && sent.body == challenge;
    {
        let mut books = state.books();
        let id = subscription["id"].as_str().unwrap_or("");
        if let Some((stored, _)) = books.subscriptions.get_mut(id) {
            stored["status"] = json!(if ok { "enabled" } else { "webhook_callback_verification_failed" });
        }
    }
    state.changed.notify_waiters();
}

async fn delete_subscription(
    State(state): State<Arc<Fake>>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    count(&state, "/helix/eventsub/subscriptions");
    if let Err(denied) = authorized(&state, &headers) {
        return *denied;
    }
    let id = query.get("id").cloned().unwrap_or_default();
    let removed = state.books().subscriptions.remove(&id).is_some();
    state.changed.notify_waiters();
    if removed {
        StatusCode::NO_CONTENT.into_response()
    } else {
        helix_error(StatusCode::NOT_FOUND, "subscription not found")
    }
}

async fn users(
    State(state): State<Arc<Fake>>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    count(&state, "/helix/users");
    if let Err(denied) = authorized(&state, &headers) {
        return *denied;
    }
    let id = query.get("id").cloned().unwrap_or_default();
    let data: Vec<Value> = state
        .books()
        .users
        .get(&id)
        .map(|u| {
            json!({
                "id": u.id, "login": u.login, "display_name": u.display_name, "type": "",
                "broadcaster_type": "partner", "description": "", "profile_image_url": u.profile_image_url,
                "offline_image_url": "", "view_count": 0, "created_at": "2016-12-14T20:32:28Z",
            })
        })
        .into_iter()
        .collect();
    axum::Json(json!({ "data": data })).into_response()
}

async fn streams(
    State(state): State<Arc<Fake>>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    count(&state, "/helix/streams");
    if let Err(denied) = authorized(&state, &headers) {
        return *denied;
    }
    let id = query.get("user_id").cloned().unwrap_or_default();
    let books = state.books();
    let data: Vec<Value> = books
        .streams
        .get(&id)
        .map(|s| {
            let user = books.users.get(&id);
            json!({
                "id": "40952121085", "user_id": id,
                "user_login": user.map(|u| u.login.clone()).unwrap_or_default(),
                "user_name": user.map(|u| u.display_name.clone()).unwrap_or_default(),
                "game_id": "509658", "game_name": s.game_name, "type": "live", "title": s.title,
                "tags": s.tags, "viewer_count": s.viewer_count, "started_at": now_rfc3339(),
                "language": s.language, "thumbnail_url": "", "is_mature": false,
            })
        })
        .into_iter()
        .collect();
    axum::Json(json!({ "data": data, "pagination": {} })).into_response()
}

async fn channels(
    State(state): State<Arc<Fake>>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    count(&state, "/helix/channels");
    if let Err(denied) = authorized(&state, &headers) {
        return *denied;
    }
    let id = query.get("broadcaster_id").cloned().unwrap_or_default();
    let books = state.books();
    let data: Vec<Value> = books
        .users
        .get(&id)
        .map(|u| {
            let stream = books.streams.get(&id);
            json!({
                "broadcaster_id": id, "broadcaster_login": u.login, "broadcaster_name": u.display_name,
                "broadcaster_language": stream.map(|s| s.language.clone()).unwrap_or_else(|| "en".into()),
                "game_id": "509658", "game_name": stream.map(|s| s.game_name.clone()).unwrap_or_default(),
                "title": stream.map(|s| s.title.clone()).unwrap_or_default(), "delay": 0,
                "tags": stream.map(|s| s.tags.clone()).unwrap_or_default(),
            })
        })
        .into_iter()
        .collect();
    axum::Json(json!({ "data": data })).into_response()
}

//! Fake platform servers (feature `fakes`), for the end-to-end tests and the
//! benchmarks: one real HTTP server on `127.0.0.1:0` that speaks every
//! platform's wire format under its own path prefix (`/discord`,
//! `/mastodon`, `/bluesky`, `/telegram`, `/slack`, `/twitch`, `/webhook`),
//! errors included, plus `/media/<name>` serving files to attach.
//!
//! Tests create accounts with [`FakePlatforms::credentials`], script the next
//! answers of a platform's publish call with [`FakePlatforms::script`], and
//! read what was accepted with [`FakePlatforms::posts`]. Check calls refuse
//! wrong tokens with 401 as the platforms do; the Mastodon fake de-duplicates
//! by `Idempotency-Key`; the webhook fake verifies signatures.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_lc_rs::hmac;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use postmesh_kit::crypto::random_token;
use postmesh_proto::postmesh::r#type::v1::Platform;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::platforms::PlatformUrls;

/// What the next publish call to a platform gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Accepted, as the platform answers a good post.
    Ok,
    /// 429 with the platform's way of saying how long to wait.
    RateLimited {
        /// The wait announced (platforms that count in seconds round up).
        retry_after: Duration,
    },
    /// 500 in the platform's format.
    ServerError,
    /// The platform's answer to a bad token (401; Slack: 403 `invalid_token`).
    Unauthorized,
    /// The platform's answer to a token without the right (403).
    Forbidden,
    /// The platform's answer to content it refuses (400; Mastodon: 422).
    BadRequest,
    /// Waits this long, then answers as [`Answer::Ok`].
    Slow(Duration),
    /// Records the post as accepted, then never answers (the caller times
    /// out or is killed).
    AcceptAndHang,
}

/// A post a fake platform accepted.
#[derive(Debug, Clone)]
pub struct ReceivedPost {
    /// The platform.
    pub platform: Platform,
    /// The post's text as sent (Discord `content`, Mastodon `status`, Bluesky
    /// `record.text`, Telegram `text`, Slack `text`, Twitch `message`,
    /// webhook `text`).
    pub text: String,
    /// The id the platform answered with (empty for Slack and Twitch).
    pub external_id: String,
    /// The `Idempotency-Key` (Mastodon) or `webhook-id` (webhook) sent.
    pub idempotency_key: Option<String>,
    /// The request body as JSON.
    pub body: Value,
    /// The request headers, names in lower case.
    pub headers: Vec<(String, String)>,
}

/// The running fakes; the server stops when this is dropped.
pub struct FakePlatforms {
    base_url: String,
    state: Arc<Fake>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakePlatforms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakePlatforms").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

impl Drop for FakePlatforms {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakePlatforms {
    /// Starts the server on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("a free local port");
        let addr: SocketAddr = listener.local_addr().expect("a bound listener has an address");
        let base_url = format!("http://{addr}");
        let state = Arc::new(Fake {
            base_url: base_url.clone(),
            books: Mutex::new(Books { mastodon_max_characters: 500, ..Books::default() }),
            posted: Notify::new(),
        });
        let app = router(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the fake platforms serve");
        });
        Self { base_url, state, server }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// The base URLs of the platforms that have fixed ones, pointing here.
    pub fn urls(&self) -> PlatformUrls {
        PlatformUrls {
            telegram: format!("{}/telegram", self.base_url),
            twitch: format!("{}/twitch", self.base_url),
            twitch_auth: format!("{}/twitch", self.base_url),
            bluesky: format!("{}/bluesky", self.base_url),
        }
    }

    /// `POSTMESH_*` variables pointing postmesh at the fakes (Telegram,
    /// Twitch, Bluesky base URLs; the others come with the credentials).
    pub fn env(&self) -> Vec<(String, String)> {
        let urls = self.urls();
        vec![
            ("POSTMESH_SOCIAL_TELEGRAM_API_URL".into(), urls.telegram),
            ("POSTMESH_SOCIAL_TWITCH_API_URL".into(), urls.twitch),
            ("POSTMESH_SOCIAL_TWITCH_AUTH_URL".into(), urls.twitch_auth),
            ("POSTMESH_SOCIAL_BLUESKY_SERVICE_URL".into(), urls.bluesky),
        ]
    }

    /// Valid credentials for a new account on `platform`: each call a
    /// distinct account (webhook, user, chat, channel).
    pub fn credentials(&self, platform: Platform) -> BTreeMap<String, String> {
        let base = &self.base_url;
        let mut books = self.state.books();
        let n = books.next_id();
        let fields: Vec<(&str, String)> = match platform {
            Platform::Discord => {
                let (id, token) = (format!("{}", 1_100_000_000_000_000_000 + n), random_token(68));
                let webhook = DiscordWebhook {
                    token: token.clone(),
                    name: format!("Fake webhook {n}"),
                    channel_id: format!("{}", 1_200_000_000_000_000_000 + n),
                    guild_id: format!("{}", 1_300_000_000_000_000_000 + n),
                };
                books.discord.insert(id.clone(), webhook);
                vec![("webhook_url", format!("{base}/discord/api/webhooks/{id}/{token}"))]
            }
            Platform::Mastodon => {
                let token = random_token(43);
                books.mastodon.insert(
                    token.clone(),
                    MastodonAccount { id: n.to_string(), username: format!("user{n}") },
                );
                vec![("instance_url", format!("{base}/mastodon")), ("access_token", token)]
            }
            Platform::Bluesky => {
                let handle = format!("user{n}.bsky.test");
                let words: Vec<String> = (0..4).map(|_| random_token(4).to_ascii_lowercase()).collect();
                let password = words.join("-");
                let account =
                    BlueskyAccount { password: password.clone(), did: format!("did:plc:fake{n:020}") };
                books.bluesky.insert(handle.clone(), account);
                vec![("handle", handle), ("app_password", password)]
            }
            Platform::Telegram => {
                let token = format!("{}:{}", 7_000_000 + n, random_token(35));
                books.telegram_bots.insert(token.clone(), 7_000_000 + n);
                let chat = TelegramChat {
                    id: -1_000_000_000_000 - i64::try_from(n).expect("few accounts"),
                    username: format!("fake_channel_{n}"),
                    title: format!("Fake channel {n}"),
                    next_message_id: 0,
                };
                let chat_id = chat.id.to_string();
                books.telegram_chats.push(chat);
                vec![("bot_token", token), ("chat_id", chat_id)]
            }
            Platform::Slack => {
                let (webhook, token) = (format!("T{n:08}/B{n:08}"), random_token(24));
                books.slack.insert(webhook.clone(), token.clone());
                vec![("webhook_url", format!("{base}/slack/services/{webhook}/{token}"))]
            }
            Platform::Twitch => {
                let (client_id, token) =
                    (random_token(30).to_ascii_lowercase(), random_token(30).to_ascii_lowercase());
                let user = TwitchUser {
                    client_id: client_id.clone(),
                    id: (140_000_000 + n).to_string(),
                    login: format!("streamer{n}"),
                };
                let (refresh_token, client_secret) =
                    (random_token(50).to_ascii_lowercase(), random_token(30).to_ascii_lowercase());
                books.twitch_grants.insert(
                    refresh_token.clone(),
                    TwitchGrant { client_secret: client_secret.clone(), user: user.clone() },
                );
                books.twitch.insert(token.clone(), user);
                vec![
                    ("client_id", client_id),
                    ("access_token", token),
                    ("refresh_token", refresh_token),
                    ("client_secret", client_secret),
                ]
            }
            Platform::Webhook => {
                let key = postmesh_kit::crypto::random_bytes(24);
                let secret = format!("whsec_{}", STANDARD.encode(&key));
                books.webhooks.insert(n.to_string(), key);
                vec![("url", format!("{base}/webhook/{n}")), ("secret", secret)]
            }
            Platform::Unspecified => Vec::new(),
        };
        fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// The next publish calls to `platform` get these answers, in order;
    /// afterwards [`Answer::Ok`].
    pub fn script(&self, platform: Platform, answers: impl IntoIterator<Item = Answer>) {
        self.state.books().scripts.entry(platform).or_default().extend(answers);
    }

    /// The posts `platform` accepted (after de-duplication), in order.
    pub fn posts(&self, platform: Platform) -> Vec<ReceivedPost> {
        self.state.books().posts.get(&platform).cloned().unwrap_or_default()
    }

    /// Waits until `platform` accepted at least `n` posts and returns them;
    /// panics with what it has after `timeout`.
    pub async fn wait_for_posts(&self, platform: Platform, n: usize, timeout: Duration) -> Vec<ReceivedPost> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so a post in between still wakes us.
            let posted = self.state.posted.notified();
            tokio::pin!(posted);
            posted.as_mut().enable();
            let posts = self.posts(platform);
            if posts.len() >= n {
                return posts;
            }
            if tokio::time::timeout_at(deadline, posted).await.is_err() {
                panic!("{platform:?} accepted {} of {n} posts within {timeout:?}: {posts:#?}", posts.len());
            }
        }
    }

    /// How many publish calls `platform` received, accepted or not.
    pub fn attempts(&self, platform: Platform) -> usize {
        self.state.books().attempts.get(&platform).copied().unwrap_or_default()
    }

    /// Sets the length limit the fake Mastodon instance reports (default 500).
    pub fn set_mastodon_max_characters(&self, max: u32) {
        self.state.books().mastodon_max_characters = max;
    }

    /// Expires every Bluesky session: calls with them get `ExpiredToken`.
    pub fn expire_bluesky_sessions(&self) {
        self.state.books().bluesky_sessions.clear();
    }

    /// Sets how long new Twitch access tokens last (what `validate` and
    /// `token` say); by default four hours.
    pub fn set_twitch_token_lifetime(&self, lifetime: Duration) {
        self.state.books().twitch_token_lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
    }

    /// Revokes every Twitch refresh token: refreshes get 400.
    pub fn revoke_twitch_refresh_tokens(&self) {
        self.state.books().twitch_grants.clear();
    }

    /// Waits until Twitch granted at least `n` refreshed tokens; panics
    /// after `timeout`.
    pub async fn wait_for_twitch_refreshes(&self, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let refreshed = self.state.posted.notified();
            tokio::pin!(refreshed);
            refreshed.as_mut().enable();
            let done = self.state.books().twitch_refreshes;
            if done >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, refreshed).await.is_err() {
                panic!("Twitch refreshed {done} of {n} tokens within {timeout:?}");
            }
        }
    }

    /// How many Bluesky sessions were opened (`createSession` successes).
    pub fn bluesky_sessions_opened(&self) -> usize {
        self.state.books().bluesky_sessions_opened
    }
}

/// The server's state.
struct Fake {
    base_url: String,
    books: Mutex<Books>,
    posted: Notify,
}

/// Everything the fakes know, behind one lock never held across an await.
#[derive(Default)]
struct Books {
    next_id: u64,
    scripts: HashMap<Platform, VecDeque<Answer>>,
    posts: HashMap<Platform, Vec<ReceivedPost>>,
    attempts: HashMap<Platform, usize>,
    /// By webhook id.
    discord: HashMap<String, DiscordWebhook>,
    /// By access token.
    mastodon: HashMap<String, MastodonAccount>,
    /// Statuses by (account id, Idempotency-Key).
    mastodon_statuses: HashMap<(String, String), Value>,
    /// Uploaded media by id.
    mastodon_media: HashMap<String, Value>,
    mastodon_max_characters: u32,
    /// By handle.
    bluesky: HashMap<String, BlueskyAccount>,
    /// Handles by access JWT.
    bluesky_sessions: HashMap<String, String>,
    bluesky_sessions_opened: usize,
    /// Bot ids by token.
    telegram_bots: HashMap<String, u64>,
    telegram_chats: Vec<TelegramChat>,
    /// Tokens by `T…/B…`.
    slack: HashMap<String, String>,
    /// By access token.
    twitch: HashMap<String, TwitchUser>,
    /// By refresh token.
    twitch_grants: HashMap<String, TwitchGrant>,
    /// Seconds a Twitch access token lasts (0: the default, four hours).
    twitch_token_lifetime: i64,
    twitch_refreshes: usize,
    /// Signing keys by endpoint id.
    webhooks: HashMap<String, Vec<u8>>,
}

impl Books {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

struct DiscordWebhook {
    token: String,
    name: String,
    channel_id: String,
    guild_id: String,
}

struct MastodonAccount {
    id: String,
    username: String,
}

struct BlueskyAccount {
    password: String,
    did: String,
}

struct TelegramChat {
    id: i64,
    username: String,
    title: String,
    next_message_id: i64,
}

impl TelegramChat {
    fn json(&self) -> Value {
        json!({ "id": self.id, "type": "channel", "title": self.title, "username": self.username })
    }
}

/// What a Twitch refresh token trades for.
struct TwitchGrant {
    client_secret: String,
    user: TwitchUser,
}

#[derive(Clone)]
struct TwitchUser {
    client_id: String,
    id: String,
    login: String,
}

impl TwitchUser {
    fn json(&self) -> Value {
        json!({
            "id": self.id, "login": self.login, "display_name": self.login,
            "type": "", "broadcaster_type": "", "description": "",
            "profile_image_url": format!("https://static-cdn.jtvnw.net/{}.png", self.login),
            "offline_image_url": "", "view_count": 0, "created_at": "2020-01-01T00:00:00Z",
        })
    }
}

/// What a publish call does after its scripted answer.
enum Scripted {
    Accept,
    AcceptAndHang,
    Refuse(Answer),
}

impl Fake {
    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().expect("the fakes' books are never poisoned")
    }

    /// Counts a publish call to `platform` and takes its scripted answer,
    /// waiting out a [`Answer::Slow`].
    async fn next_answer(&self, platform: Platform) -> Scripted {
        let answer = {
            let mut books = self.books();
            *books.attempts.entry(platform).or_default() += 1;
            books.scripts.get_mut(&platform).and_then(VecDeque::pop_front)
        };
        match answer {
            None | Some(Answer::Ok) => Scripted::Accept,
            Some(Answer::Slow(wait)) => {
                tokio::time::sleep(wait).await;
                Scripted::Accept
            }
            Some(Answer::AcceptAndHang) => Scripted::AcceptAndHang,
            Some(refusal) => Scripted::Refuse(refusal),
        }
    }

    fn record(&self, post: ReceivedPost) {
        self.books().posts.entry(post.platform).or_default().push(post);
        self.posted.notify_waiters();
    }
}

fn router(state: Arc<Fake>) -> Router {
    Router::new()
        .route("/discord/api/webhooks/{id}/{token}", get(discord_webhook).post(discord_execute))
        .route("/mastodon/api/v1/accounts/verify_credentials", get(mastodon_verify_credentials))
        .route("/mastodon/api/v2/instance", get(mastodon_instance))
        .route("/mastodon/api/v2/media", post(mastodon_upload))
        .route("/mastodon/api/v1/statuses", post(mastodon_status))
        .route("/bluesky/xrpc/com.atproto.server.createSession", post(bluesky_create_session))
        .route("/bluesky/xrpc/com.atproto.identity.resolveHandle", get(bluesky_resolve_handle))
        .route("/bluesky/xrpc/com.atproto.repo.uploadBlob", post(bluesky_upload_blob))
        .route("/bluesky/xrpc/com.atproto.repo.createRecord", post(bluesky_create_record))
        .route("/telegram/{bot}/{method}", any(telegram_method))
        .route("/slack/services/{team}/{hook}/{token}", post(slack_webhook))
        .route("/twitch/oauth2/validate", get(twitch_validate))
        .route("/twitch/oauth2/token", post(twitch_token))
        .route("/twitch/helix/users", get(twitch_users))
        .route("/twitch/helix/chat/announcements", post(twitch_announcement))
        .route("/webhook/{id}", post(webhook_receive))
        .route("/media/{name}", get(media_file))
        .with_state(state)
}

// ---------------------------------------------------------------- helpers

/// A JSON error answer, small enough to travel in a `Result`.
type JsonError = (StatusCode, axum::Json<Value>);

fn json_answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn with_headers(mut response: Response, headers: &[(&'static str, String)]) -> Response {
    for (name, value) in headers {
        let value = HeaderValue::from_str(value).expect("fake header values are ASCII");
        response.headers_mut().insert(HeaderName::from_static(name), value);
    }
    response
}

fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned())
        })
        .collect()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    header(headers, "authorization")?.strip_prefix("Bearer ")
}

/// Whole seconds, rounded up, as platforms that count in seconds announce.
fn ceil_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Never answers: the caller times out, or its process dies.
async fn hang() -> Response {
    std::future::pending().await
}

// ---------------------------------------------------------------- Discord

async fn discord_webhook(
    State(fake): State<Arc<Fake>>,
    Path((id, token)): Path<(String, String)>,
) -> Response {
    let books = fake.books();
    match books.discord.get(&id) {
        None => json_answer(StatusCode::NOT_FOUND, json!({ "message": "Unknown Webhook", "code": 10015 })),
        Some(webhook) if webhook.token != token => json_answer(
            StatusCode::UNAUTHORIZED,
            json!({ "message": "Invalid Webhook Token", "code": 50027 }),
        ),
        Some(webhook) => json_answer(
            StatusCode::OK,
            json!({
                "application_id": null, "avatar": null, "channel_id": webhook.channel_id,
                "guild_id": webhook.guild_id, "id": id, "name": webhook.name, "type": 1, "token": token,
                "url": format!("https://discord.com/api/webhooks/{id}/{token}"),
            }),
        ),
    }
}

async fn discord_execute(
    State(fake): State<Arc<Fake>>,
    Path((id, token)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let hang_after = match fake.next_answer(Platform::Discord).await {
        Scripted::Refuse(answer) => return discord_refusal(&answer),
        Scripted::Accept => false,
        Scripted::AcceptAndHang => true,
    };
    let channel_id = {
        let books = fake.books();
        match books.discord.get(&id) {
            None => {
                return json_answer(
                    StatusCode::NOT_FOUND,
                    json!({ "message": "Unknown Webhook", "code": 10015 }),
                );
            }
            Some(webhook) if webhook.token != token => return discord_refusal(&Answer::Unauthorized),
            Some(webhook) => webhook.channel_id.clone(),
        }
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return json_answer(StatusCode::BAD_REQUEST, json!({ "message": "400: Bad Request", "code": 0 }));
    };
    let content = body["content"].as_str().unwrap_or_default().to_owned();
    let embeds = body["embeds"].as_array().cloned().unwrap_or_default();
    if content.is_empty() && embeds.is_empty() {
        let error = json!({ "message": "Cannot send an empty message", "code": 50006 });
        return json_answer(StatusCode::BAD_REQUEST, error);
    }
    if content.chars().count() > 2000 || embeds.len() > 10 {
        return discord_refusal(&Answer::BadRequest);
    }
    let message_id = format!("{}", 1_400_000_000_000_000_000 + fake.books().next_id());
    fake.record(ReceivedPost {
        platform: Platform::Discord,
        text: content.clone(),
        external_id: message_id.clone(),
        idempotency_key: None,
        body,
        headers: header_list(&headers),
    });
    if hang_after {
        return hang().await;
    }
    if query.get("wait").map(String::as_str) != Some("true") {
        return StatusCode::NO_CONTENT.into_response();
    }
    json_answer(
        StatusCode::OK,
        json!({
            "id": message_id, "type": 0, "content": content, "channel_id": channel_id, "embeds": embeds,
            "author": { "bot": true, "id": id, "username": "Fake webhook" }, "webhook_id": id,
            "timestamp": Utc::now().to_rfc3339(), "attachments": [], "mentions": [], "pinned": false,
        }),
    )
}

fn discord_refusal(answer: &Answer) -> Response {
    match answer {
        Answer::RateLimited { retry_after } => with_headers(
            json_answer(
                StatusCode::TOO_MANY_REQUESTS,
                json!({
                    "message": "You are being rate limited.",
                    "retry_after": retry_after.as_secs_f64(),
                    "global": false,
                }),
            ),
            &[
                ("retry-after", ceil_secs(*retry_after).to_string()),
                ("x-ratelimit-limit", "5".into()),
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset-after", format!("{:.3}", retry_after.as_secs_f64())),
                ("x-ratelimit-scope", "shared".into()),
            ],
        ),
        Answer::ServerError => json_answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "message": "500: Internal Server Error", "code": 0 }),
        ),
        Answer::Unauthorized => json_answer(
            StatusCode::UNAUTHORIZED,
            json!({ "message": "Invalid Webhook Token", "code": 50027 }),
        ),
        Answer::Forbidden => {
            json_answer(StatusCode::FORBIDDEN, json!({ "message": "Missing Permissions", "code": 50013 }))
        }
        _ => json_answer(
            StatusCode::BAD_REQUEST,
            json!({
                "message": "Invalid Form Body", "code": 50035,
                "errors": { "content": { "_errors": [
                    { "code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length." }
                ] } },
            }),
        ),
    }
}

// ---------------------------------------------------------------- Mastodon

fn mastodon_account(fake: &Fake, headers: &HeaderMap) -> Result<(String, String), JsonError> {
    let books = fake.books();
    let account = bearer(headers).and_then(|token| books.mastodon.get(token));
    let invalid =
        || (StatusCode::UNAUTHORIZED, axum::Json(json!({ "error": "The access token is invalid" })));
    account.map(|a| (a.id.clone(), a.username.clone())).ok_or_else(invalid)
}

async fn mastodon_verify_credentials(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> Response {
    let (id, username) = match mastodon_account(&fake, &headers) {
        Ok(account) => account,
        Err(refusal) => return refusal.into_response(),
    };
    json_answer(
        StatusCode::OK,
        json!({
            "id": id, "username": username, "acct": username, "display_name": format!("Fake user {id}"),
            "url": format!("{}/mastodon/@{username}", fake.base_url),
            "avatar": format!("{}/mastodon/avatars/{id}.png", fake.base_url),
            "locked": false, "bot": false, "created_at": "2020-01-01T00:00:00.000Z", "statuses_count": 0,
            "source": { "privacy": "public", "sensitive": false, "language": "" },
        }),
    )
}

async fn mastodon_instance(State(fake): State<Arc<Fake>>) -> Response {
    let max_characters = fake.books().mastodon_max_characters;
    json_answer(
        StatusCode::OK,
        json!({
            "domain": "mastodon.example", "title": "Fake Mastodon", "version": "4.3.0",
            "configuration": {
                "statuses": {
                    "max_characters": max_characters,
                    "max_media_attachments": 4,
                    "characters_reserved_per_url": 23,
                },
                "media_attachments": {
                    "supported_mime_types":
                        ["image/jpeg", "image/png", "image/gif", "image/webp", "video/mp4", "audio/mpeg"],
                    "image_size_limit": 16_777_216,
                    "video_size_limit": 103_809_024,
                    "description_limit": 1500,
                },
            },
        }),
    )
}

async fn mastodon_upload(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refusal) = mastodon_account(&fake, &headers) {
        return refusal.into_response();
    }
    let parts = multipart_parts(header(&headers, "content-type").unwrap_or_default(), &body);
    let Some(file) = parts.iter().find(|part| part.name == "file") else {
        return json_answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "error": "Validation failed: File can't be blank" }),
        );
    };
    let description = parts
        .iter()
        .find(|part| part.name == "description")
        .map(|p| String::from_utf8_lossy(&p.data).into_owned());
    let id = (fake.books().next_id() + 110_000_000_000_000_000).to_string();
    let kind = if file.content_type.starts_with("video/") { "video" } else { "image" };
    let attachment = json!({
        "id": id, "type": kind, "url": format!("{}/mastodon/media/{id}", fake.base_url),
        "description": description, "meta": { "size": file.data.len() },
    });
    fake.books().mastodon_media.insert(id, attachment.clone());
    json_answer(StatusCode::OK, attachment)
}

async fn mastodon_status(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let hang_after = match fake.next_answer(Platform::Mastodon).await {
        Scripted::Refuse(answer) => return mastodon_refusal(&answer),
        Scripted::Accept => false,
        Scripted::AcceptAndHang => true,
    };
    let (account_id, username) = match mastodon_account(&fake, &headers) {
        Ok(account) => account,
        Err(refusal) => return refusal.into_response(),
    };
    let key = header(&headers, "idempotency-key").map(str::to_owned);
    if let Some(key) = &key
        && let Some(status) = fake.books().mastodon_statuses.get(&(account_id.clone(), key.clone()))
    {
        // Mastodon answers a repeated key with the status it created.
        return json_answer(StatusCode::OK, status.clone());
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return json_answer(StatusCode::BAD_REQUEST, json!({ "error": "Error while parsing request body" }));
    };
    let text = body["status"].as_str().unwrap_or_default().to_owned();
    let media_ids: Vec<String> = body["media_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|id| id.as_str().map(str::to_owned))
        .collect();
    if text.trim().is_empty() && media_ids.is_empty() {
        return json_answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "error": "Validation failed: Text can't be blank" }),
        );
    }
    let max = fake.books().mastodon_max_characters;
    if text.chars().count() > max as usize {
        let error = format!("Validation failed: Text character limit of {max} exceeded");
        return json_answer(StatusCode::UNPROCESSABLE_ENTITY, json!({ "error": error }));
    }
    let status = {
        let mut books = fake.books();
        let Some(media) =
            media_ids.iter().map(|id| books.mastodon_media.get(id).cloned()).collect::<Option<Vec<_>>>()
        else {
            return json_answer(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "error": "Validation failed: media not found" }),
            );
        };
        let id = (books.next_id() + 112_000_000_000_000_000).to_string();
        let status = json!({
            "id": id,
            "created_at": Utc::now().to_rfc3339(),
            "visibility": body["visibility"].as_str().unwrap_or("public"),
            "language": body["language"],
            "uri": format!("{}/mastodon/users/{username}/statuses/{id}", fake.base_url),
            "url": format!("{}/mastodon/@{username}/{id}", fake.base_url),
            "content": format!("<p>{}</p>", escape_html(&text)),
            "media_attachments": media,
            "account": { "id": account_id, "username": username, "acct": username },
        });
        if let Some(key) = &key {
            books.mastodon_statuses.insert((account_id.clone(), key.clone()), status.clone());
        }
        status
    };
    fake.record(ReceivedPost {
        platform: Platform::Mastodon,
        text,
        external_id: status["id"].as_str().unwrap_or_default().to_owned(),
        idempotency_key: key,
        body,
        headers: header_list(&headers),
    });
    if hang_after {
        return hang().await;
    }
    json_answer(StatusCode::OK, status)
}

fn mastodon_refusal(answer: &Answer) -> Response {
    match answer {
        // Mastodon (rack-attack) says when the window resets, not how long to wait.
        Answer::RateLimited { retry_after } => {
            let reset = Utc::now() + chrono::Duration::from_std(*retry_after).expect("a short wait");
            with_headers(
                json_answer(StatusCode::TOO_MANY_REQUESTS, json!({ "error": "Too many requests" })),
                &[
                    ("x-ratelimit-limit", "300".into()),
                    ("x-ratelimit-remaining", "0".into()),
                    ("x-ratelimit-reset", reset.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                ],
            )
        }
        Answer::ServerError => json_answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": "We're sorry, but something went wrong on our end." }),
        ),
        Answer::Unauthorized => {
            json_answer(StatusCode::UNAUTHORIZED, json!({ "error": "The access token is invalid" }))
        }
        Answer::Forbidden => {
            json_answer(StatusCode::FORBIDDEN, json!({ "error": "This action is not allowed" }))
        }
        _ => json_answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "error": "Validation failed: Text character limit of 500 exceeded" }),
        ),
    }
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// One part of a `multipart/form-data` body.
struct Part {
    name: String,
    content_type: String,
    data: Vec<u8>,
}

/// The parts of a `multipart/form-data` body: enough of RFC 7578 for what
/// clients send (no nested multiparts, no transfer encodings).
fn multipart_parts(content_type: &str, body: &[u8]) -> Vec<Part> {
    let Some(boundary) = content_type.split(';').find_map(|p| p.trim().strip_prefix("boundary=")) else {
        return Vec::new();
    };
    let delimiter = format!("--{}", boundary.trim_matches('"')).into_bytes();
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(start) = find(rest, &delimiter) {
        rest = &rest[start + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let Some(end) = find(rest, &delimiter) else { break };
        let part = rest[..end].strip_prefix(b"\r\n").unwrap_or(&rest[..end]);
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        if let Some(split) = find(part, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&part[..split]);
            let field = |prefix: &str| {
                head.split([';', '\n']).find_map(|p| {
                    p.trim().strip_prefix(prefix).map(|v| v.trim_matches('"').trim().to_owned())
                })
            };
            parts.push(Part {
                name: field("name=").unwrap_or_default(),
                content_type: head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Type:").map(|v| v.trim().to_owned()))
                    .unwrap_or_default(),
                data: part[split + 4..].to_vec(),
            });
        }
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

// ---------------------------------------------------------------- Bluesky

fn xrpc_error(status: StatusCode, error: &str, message: &str) -> Response {
    json_answer(status, json!({ "error": error, "message": message }))
}

/// The handle and DID of the session `headers` carry.
fn bluesky_session(fake: &Fake, headers: &HeaderMap) -> Result<(String, String), JsonError> {
    let books = fake.books();
    let error = |status, error, message| (status, axum::Json(json!({ "error": error, "message": message })));
    let Some(jwt) = bearer(headers) else {
        return Err(error(StatusCode::UNAUTHORIZED, "AuthenticationRequired", "Authentication Required"));
    };
    let Some(handle) = books.bluesky_sessions.get(jwt) else {
        return Err(error(StatusCode::BAD_REQUEST, "ExpiredToken", "Token has expired"));
    };
    Ok((handle.clone(), books.bluesky[handle].did.clone()))
}

async fn bluesky_create_session(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let (Some(identifier), Some(password)) = (body["identifier"].as_str(), body["password"].as_str()) else {
        return xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Input must have the property \"identifier\"",
        );
    };
    let mut books = fake.books();
    let identifier = identifier.to_lowercase();
    let found =
        books.bluesky.iter().find(|(handle, account)| **handle == identifier || account.did == identifier);
    let Some((handle, account)) = found.filter(|(_, account)| account.password == password) else {
        return xrpc_error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationRequired",
            "Invalid identifier or password",
        );
    };
    let (handle, did) = (handle.clone(), account.did.clone());
    let jwt = format!("eyJ0eXAiOiJhdCtqd3QifQ.{}", random_token(40));
    books.bluesky_sessions.insert(jwt.clone(), handle.clone());
    books.bluesky_sessions_opened += 1;
    json_answer(
        StatusCode::OK,
        json!({
            "accessJwt": jwt, "refreshJwt": random_token(40), "handle": handle, "did": did, "active": true,
        }),
    )
}

async fn bluesky_resolve_handle(
    State(fake): State<Arc<Fake>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let books = fake.books();
    let account = query.get("handle").and_then(|handle| books.bluesky.get(&handle.to_lowercase()));
    match account {
        Some(account) => json_answer(StatusCode::OK, json!({ "did": account.did })),
        None => xrpc_error(StatusCode::BAD_REQUEST, "InvalidRequest", "Unable to resolve handle"),
    }
}

async fn bluesky_upload_blob(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refusal) = bluesky_session(&fake, &headers) {
        return refusal.into_response();
    }
    let digest = postmesh_kit::crypto::sha256_hex(&body);
    json_answer(
        StatusCode::OK,
        json!({ "blob": {
            "$type": "blob", "ref": { "$link": format!("bafkrei{}", &digest[..52]) },
            "mimeType": header(&headers, "content-type").unwrap_or("*/*"), "size": body.len(),
        } }),
    )
}

async fn bluesky_create_record(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let hang_after = match fake.next_answer(Platform::Bluesky).await {
        Scripted::Refuse(answer) => return bluesky_refusal(&answer),
        Scripted::Accept => false,
        Scripted::AcceptAndHang => true,
    };
    let (_handle, did) = match bluesky_session(&fake, &headers) {
        Ok(session) => session,
        Err(refusal) => return refusal.into_response(),
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return xrpc_error(StatusCode::BAD_REQUEST, "InvalidRequest", "Invalid JSON body");
    };
    if body["repo"].as_str() != Some(did.as_str()) {
        return xrpc_error(StatusCode::BAD_REQUEST, "InvalidRequest", "Invalid repo: not the session's DID");
    }
    let record = &body["record"];
    if body["collection"] != "app.bsky.feed.post" || record["$type"] != "app.bsky.feed.post" {
        return xrpc_error(StatusCode::BAD_REQUEST, "InvalidRequest", "Invalid collection or record type");
    }
    let text = record["text"].as_str().unwrap_or_default().to_owned();
    if text.len() > 3000 || record["createdAt"].as_str().is_none() {
        return bluesky_refusal(&Answer::BadRequest);
    }
    let rkey = format!("3lfake{:07}", fake.books().next_id());
    let uri = format!("at://{did}/app.bsky.feed.post/{rkey}");
    let cid = format!("bafyrei{}", &postmesh_kit::crypto::sha256_hex(uri.as_bytes())[..52]);
    fake.record(ReceivedPost {
        platform: Platform::Bluesky,
        text,
        external_id: uri.clone(),
        idempotency_key: None,
        body,
        headers: header_list(&headers),
    });
    if hang_after {
        return hang().await;
    }
    json_answer(
        StatusCode::OK,
        json!({ "uri": uri, "cid": cid, "commit": { "cid": cid, "rev": rkey }, "validationStatus": "valid" }),
    )
}

fn bluesky_refusal(answer: &Answer) -> Response {
    match answer {
        // A PDS says when the window resets, in Unix seconds.
        Answer::RateLimited { retry_after } => {
            let reset = Utc::now().timestamp().unsigned_abs() + ceil_secs(*retry_after);
            with_headers(
                xrpc_error(StatusCode::TOO_MANY_REQUESTS, "RateLimitExceeded", "Rate Limit Exceeded"),
                &[
                    ("ratelimit-limit", "5000".into()),
                    ("ratelimit-remaining", "0".into()),
                    ("ratelimit-reset", reset.to_string()),
                    ("ratelimit-policy", "5000;w=3600".into()),
                ],
            )
        }
        Answer::ServerError => {
            xrpc_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", "Internal Server Error")
        }
        Answer::Unauthorized => {
            xrpc_error(StatusCode::UNAUTHORIZED, "AuthenticationRequired", "Authentication Required")
        }
        Answer::Forbidden => {
            xrpc_error(StatusCode::FORBIDDEN, "Forbidden", "This account cannot write to the repo")
        }
        _ => xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Invalid app.bsky.feed.post record: Record/text must not be longer than 300 graphemes",
        ),
    }
}

// ---------------------------------------------------------------- Telegram

fn telegram_error(status: StatusCode, description: &str) -> Response {
    json_answer(status, json!({ "ok": false, "error_code": status.as_u16(), "description": description }))
}

fn telegram_ok(result: Value) -> Response {
    json_answer(StatusCode::OK, json!({ "ok": true, "result": result }))
}

async fn telegram_method(
    State(fake): State<Arc<Fake>>,
    Path((bot, method)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params: Value = if body.is_empty() {
        json!(query)
    } else {
        match serde_json::from_slice(&body) {
            Ok(params) => params,
            Err(_) => return telegram_error(StatusCode::BAD_REQUEST, "Bad Request: invalid JSON body"),
        }
    };
    let sending = method == "sendMessage";
    let mut hang_after = false;
    if sending {
        match fake.next_answer(Platform::Telegram).await {
            Scripted::Refuse(answer) => return telegram_refusal(&answer),
            Scripted::Accept => {}
            Scripted::AcceptAndHang => hang_after = true,
        }
    }
    let Some(token) = bot.strip_prefix("bot") else {
        return telegram_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let Some(bot_id) = fake.books().telegram_bots.get(token).copied() else {
        return telegram_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    let chat_id = match &params["chat_id"] {
        Value::String(id) => id.clone(),
        Value::Number(id) => id.to_string(),
        _ => String::new(),
    };
    let find_chat = |books: &Books| {
        books
            .telegram_chats
            .iter()
            .position(|chat| chat.id.to_string() == chat_id || format!("@{}", chat.username) == chat_id)
    };
    match method.as_str() {
        "getMe" => telegram_ok(json!({
            "id": bot_id, "is_bot": true, "first_name": format!("Fake bot {bot_id}"),
            "username": format!("fake_{bot_id}_bot"), "can_join_groups": true,
        })),
        "getChat" => {
            let books = fake.books();
            match find_chat(&books) {
                Some(index) => telegram_ok(books.telegram_chats[index].json()),
                None => telegram_error(StatusCode::BAD_REQUEST, "Bad Request: chat not found"),
            }
        }
        "sendMessage" => {
            let text = params["text"].as_str().unwrap_or_default().to_owned();
            if text.trim().is_empty() {
                return telegram_error(StatusCode::BAD_REQUEST, "Bad Request: message text is empty");
            }
            if params["parse_mode"] == "HTML"
                && let Some(problem) = telegram_html_problem(&text)
            {
                return telegram_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Bad Request: can't parse entities: {problem}"),
                );
            }
            if visible_utf16_len(&text, params["parse_mode"] == "HTML") > 4096 {
                return telegram_error(StatusCode::BAD_REQUEST, "Bad Request: message is too long");
            }
            let message = {
                let mut books = fake.books();
                let Some(index) = find_chat(&books) else {
                    return telegram_error(StatusCode::BAD_REQUEST, "Bad Request: chat not found");
                };
                let chat = &mut books.telegram_chats[index];
                chat.next_message_id += 1;
                json!({
                    "message_id": chat.next_message_id,
                    "date": Utc::now().timestamp(),
                    "chat": chat.json(),
                    "text": text,
                })
            };
            fake.record(ReceivedPost {
                platform: Platform::Telegram,
                text,
                external_id: message["message_id"].to_string(),
                idempotency_key: None,
                body: params,
                headers: header_list(&headers),
            });
            if hang_after {
                return hang().await;
            }
            telegram_ok(message)
        }
        _ => telegram_error(StatusCode::NOT_FOUND, "Not Found: method not found"),
    }
}

fn telegram_refusal(answer: &Answer) -> Response {
    match answer {
        // The Bot API says how long to wait in its JSON, in whole seconds.
        Answer::RateLimited { retry_after } => {
            let seconds = ceil_secs(*retry_after);
            json_answer(
                StatusCode::TOO_MANY_REQUESTS,
                json!({
                    "ok": false,
                    "error_code": 429,
                    "description": format!("Too Many Requests: retry after {seconds}"),
                    "parameters": { "retry_after": seconds },
                }),
            )
        }
        Answer::ServerError => telegram_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        Answer::Unauthorized => telegram_error(StatusCode::UNAUTHORIZED, "Unauthorized"),
        Answer::Forbidden => {
            telegram_error(StatusCode::FORBIDDEN, "Forbidden: bot is not a member of the channel chat")
        }
        _ => telegram_error(
            StatusCode::BAD_REQUEST,
            "Bad Request: can't parse entities: Unsupported start tag \"h1\" at byte offset 0",
        ),
    }
}

/// Why Telegram would refuse `text` as `parse_mode: HTML`: an unsupported
/// tag or an unterminated entity.
fn telegram_html_problem(text: &str) -> Option<String> {
    const TAGS: [&str; 16] = [
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "a",
        "tg-emoji",
        "code",
        "pre",
        "blockquote",
    ];
    let mut offset = 0;
    while offset < text.len() {
        let rest = &text[offset..];
        if rest.starts_with('<') {
            let Some(end) = rest.find('>') else {
                return Some(format!("Can't find end of the tag starting at byte offset {offset}"));
            };
            let tag = rest[1..end].trim_start_matches('/');
            let name = tag.split(|c: char| c.is_whitespace() || c == '/').next().unwrap_or_default();
            if !TAGS.contains(&name.to_ascii_lowercase().as_str()) {
                return Some(format!("Unsupported start tag \"{name}\" at byte offset {offset}"));
            }
            offset += end + 1;
        } else if let Some(after) = rest.strip_prefix('&') {
            let entity = after.split_once(';').map(|(entity, _)| entity).filter(|e| e.len() <= 10);
            let known = entity.is_some_and(|e| {
                matches!(e, "lt" | "gt" | "amp" | "quot")
                    || e.strip_prefix("#x")
                        .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
                    || e.strip_prefix('#')
                        .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
            });
            if !known {
                return Some(format!("Can't find end of the entity starting at byte offset {offset}"));
            }
            offset += 1;
        } else {
            offset += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    None
}

/// The length Telegram counts: UTF-16 units of the text without its markup.
fn visible_utf16_len(text: &str, html: bool) -> usize {
    if !html {
        return text.encode_utf16().count();
    }
    let mut visible = String::with_capacity(text.len());
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => visible.push(c),
            _ => {}
        }
    }
    let visible =
        visible.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&");
    visible.encode_utf16().count()
}

// ---------------------------------------------------------------- Slack

async fn slack_webhook(
    State(fake): State<Arc<Fake>>,
    Path((team, hook, token)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let hang_after = match fake.next_answer(Platform::Slack).await {
        Scripted::Refuse(answer) => return slack_refusal(&answer),
        Scripted::Accept => false,
        Scripted::AcceptAndHang => true,
    };
    match fake.books().slack.get(&format!("{team}/{hook}")) {
        None => return (StatusCode::NOT_FOUND, "no_service").into_response(),
        Some(known) if *known != token => return slack_refusal(&Answer::Unauthorized),
        Some(_) => {}
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    };
    let text = body["text"].as_str().unwrap_or_default().to_owned();
    if text.trim().is_empty() {
        return (StatusCode::BAD_REQUEST, "no_text").into_response();
    }
    fake.record(ReceivedPost {
        platform: Platform::Slack,
        text,
        external_id: String::new(),
        idempotency_key: None,
        body,
        headers: header_list(&headers),
    });
    if hang_after {
        return hang().await;
    }
    (StatusCode::OK, [("content-type", "text/html")], "ok").into_response()
}

fn slack_refusal(answer: &Answer) -> Response {
    match answer {
        Answer::RateLimited { retry_after } => with_headers(
            (StatusCode::TOO_MANY_REQUESTS, "rate_limited").into_response(),
            &[("retry-after", ceil_secs(*retry_after).to_string())],
        ),
        Answer::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, "rollup_error").into_response(),
        // Slack answers a revoked or wrong webhook token with 403, not 401.
        Answer::Unauthorized => (StatusCode::FORBIDDEN, "invalid_token").into_response(),
        Answer::Forbidden => (StatusCode::FORBIDDEN, "action_prohibited").into_response(),
        _ => (StatusCode::BAD_REQUEST, "invalid_payload").into_response(),
    }
}

// ---------------------------------------------------------------- Twitch

fn helix_error(status: StatusCode, message: &str) -> Response {
    helix_json_error(status, message).into_response()
}

fn helix_json_error(status: StatusCode, message: &str) -> JsonError {
    let reason = status.canonical_reason().unwrap_or_default();
    (status, axum::Json(json!({ "error": reason, "status": status.as_u16(), "message": message })))
}

/// The user whose token `headers` carry, checked against their `Client-Id`.
fn twitch_user(fake: &Fake, headers: &HeaderMap) -> Result<TwitchUser, JsonError> {
    let books = fake.books();
    let Some(user) = bearer(headers).and_then(|token| books.twitch.get(token)) else {
        return Err(helix_json_error(StatusCode::UNAUTHORIZED, "Invalid OAuth token"));
    };
    if header(headers, "client-id") != Some(user.client_id.as_str()) {
        return Err(helix_json_error(StatusCode::UNAUTHORIZED, "Client ID and OAuth token do not match"));
    }
    Ok(user.clone())
}

impl Books {
    fn twitch_lifetime(&self) -> i64 {
        if self.twitch_token_lifetime > 0 { self.twitch_token_lifetime } else { 4 * 3600 }
    }
}

/// `GET /oauth2/validate` with `Authorization: OAuth <token>`.
async fn twitch_validate(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> Response {
    let books = fake.books();
    let token = header(&headers, "authorization").and_then(|v| v.strip_prefix("OAuth ")).unwrap_or_default();
    let Some(user) = books.twitch.get(token) else {
        return json_answer(
            StatusCode::UNAUTHORIZED,
            json!({ "status": 401, "message": "invalid access token" }),
        );
    };
    json_answer(
        StatusCode::OK,
        json!({
            "client_id": user.client_id, "login": user.login, "user_id": user.id,
            "scopes": ["moderator:manage:announcements"], "expires_in": books.twitch_lifetime(),
        }),
    )
}

/// `POST /oauth2/token` with `grant_type=refresh_token`: a new access token
/// and a new refresh token; the old ones stop working.
async fn twitch_token(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let mut books = fake.books();
    let refused =
        |message: &str| json_answer(StatusCode::BAD_REQUEST, json!({ "status": 400, "message": message }));
    if field("grant_type") != "refresh_token" {
        return refused("unsupported grant type");
    }
    let Some(grant) = books.twitch_grants.get(field("refresh_token")) else {
        return refused("Invalid refresh token");
    };
    if grant.user.client_id != field("client_id") || grant.client_secret != field("client_secret") {
        return json_answer(
            StatusCode::FORBIDDEN,
            json!({ "status": 403, "message": "invalid client secret" }),
        );
    }
    let grant = books.twitch_grants.remove(field("refresh_token")).expect("looked up above");
    books.twitch.retain(|_, user| user.id != grant.user.id);
    let (access, refresh) = (random_token(30).to_ascii_lowercase(), random_token(50).to_ascii_lowercase());
    let lifetime = books.twitch_lifetime();
    books.twitch.insert(access.clone(), grant.user.clone());
    books.twitch_grants.insert(refresh.clone(), grant);
    books.twitch_refreshes += 1;
    drop(books);
    fake.posted.notify_waiters();
    json_answer(
        StatusCode::OK,
        json!({
            "access_token": access, "refresh_token": refresh, "expires_in": lifetime,
            "scope": ["moderator:manage:announcements"], "token_type": "bearer",
        }),
    )
}

async fn twitch_users(
    State(fake): State<Arc<Fake>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let user = match twitch_user(&fake, &headers) {
        Ok(user) => user,
        Err(refusal) => return refusal.into_response(),
    };
    let data: Vec<Value> = match query.get("id") {
        None => vec![user.json()],
        Some(id) => {
            fake.books().twitch.values().filter(|u| u.id == *id).take(1).map(TwitchUser::json).collect()
        }
    };
    json_answer(StatusCode::OK, json!({ "data": data }))
}

async fn twitch_announcement(
    State(fake): State<Arc<Fake>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let hang_after = match fake.next_answer(Platform::Twitch).await {
        Scripted::Refuse(answer) => return twitch_refusal(&answer),
        Scripted::Accept => false,
        Scripted::AcceptAndHang => true,
    };
    let user = match twitch_user(&fake, &headers) {
        Ok(user) => user,
        Err(refusal) => return refusal.into_response(),
    };
    for parameter in ["broadcaster_id", "moderator_id"] {
        if query.get(parameter).is_none_or(String::is_empty) {
            return helix_error(
                StatusCode::BAD_REQUEST,
                &format!("Missing required parameter \"{parameter}\""),
            );
        }
    }
    if query["moderator_id"] != user.id {
        return helix_error(
            StatusCode::UNAUTHORIZED,
            "The ID in moderator_id must match the user ID in the user access token.",
        );
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let text = body["message"].as_str().unwrap_or_default().to_owned();
    if text.trim().is_empty() {
        return helix_error(StatusCode::BAD_REQUEST, "Missing required parameter \"message\"");
    }
    fake.record(ReceivedPost {
        platform: Platform::Twitch,
        text,
        external_id: String::new(),
        idempotency_key: None,
        body,
        headers: header_list(&headers),
    });
    if hang_after {
        return hang().await;
    }
    StatusCode::NO_CONTENT.into_response()
}

fn twitch_refusal(answer: &Answer) -> Response {
    match answer {
        // Helix says when the bucket refills, in Unix seconds.
        Answer::RateLimited { retry_after } => {
            let reset = Utc::now().timestamp().unsigned_abs() + ceil_secs(*retry_after);
            with_headers(
                helix_error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests"),
                &[
                    ("ratelimit-limit", "800".into()),
                    ("ratelimit-remaining", "0".into()),
                    ("ratelimit-reset", reset.to_string()),
                ],
            )
        }
        Answer::ServerError => helix_error(StatusCode::INTERNAL_SERVER_ERROR, ""),
        Answer::Unauthorized => helix_error(StatusCode::UNAUTHORIZED, "Invalid OAuth token"),
        Answer::Forbidden => helix_error(
            StatusCode::FORBIDDEN,
            "The user in moderator_id is not one of the broadcaster's moderators",
        ),
        _ => helix_error(StatusCode::BAD_REQUEST, "Missing required parameter \"message\""),
    }
}

// ---------------------------------------------------------------- generic webhook

async fn webhook_receive(
    State(fake): State<Arc<Fake>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let hang_after = match fake.next_answer(Platform::Webhook).await {
        Scripted::Refuse(answer) => return webhook_refusal(&answer),
        Scripted::Accept => false,
        Scripted::AcceptAndHang => true,
    };
    let Some(key) = fake.books().webhooks.get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "unknown endpoint").into_response();
    };
    if let Err(problem) = verify_standard_webhook(&key, &headers, &body) {
        return (StatusCode::UNAUTHORIZED, problem).into_response();
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "the body is not JSON").into_response();
    };
    let message_id = format!("wh-{}", fake.books().next_id());
    fake.record(ReceivedPost {
        platform: Platform::Webhook,
        text: body["text"].as_str().unwrap_or_default().to_owned(),
        external_id: message_id.clone(),
        idempotency_key: header(&headers, "webhook-id").map(str::to_owned),
        body,
        headers: header_list(&headers),
    });
    if hang_after {
        return hang().await;
    }
    let url = format!("{}/webhook/{id}/messages/{message_id}", fake.base_url);
    json_answer(StatusCode::OK, json!({ "id": message_id, "url": url }))
}

/// Checks a Standard Webhooks signature the way a receiver does: any
/// `v1,` signature of `<id>.<timestamp>.<body>`, with a timestamp within
/// five minutes.
fn verify_standard_webhook(key: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header(headers, "webhook-id"),
        header(headers, "webhook-timestamp"),
        header(headers, "webhook-signature"),
    ) else {
        return Err("missing webhook-id, webhook-timestamp or webhook-signature");
    };
    let sent: i64 = timestamp.parse().map_err(|_| "webhook-timestamp is not a number")?;
    if (Utc::now().timestamp() - sent).abs() > 300 {
        return Err("webhook-timestamp is too far from now");
    }
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let valid = signatures.split(' ').filter_map(|s| s.strip_prefix("v1,")).any(|signature| {
        STANDARD.decode(signature).is_ok_and(|tag| hmac::verify(&key, &signed, &tag).is_ok())
    });
    if valid { Ok(()) } else { Err("no valid signature") }
}

fn webhook_refusal(answer: &Answer) -> Response {
    match answer {
        Answer::RateLimited { retry_after } => with_headers(
            (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response(),
            &[("retry-after", ceil_secs(*retry_after).to_string())],
        ),
        Answer::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, "the receiver failed").into_response(),
        Answer::Unauthorized => (StatusCode::UNAUTHORIZED, "no valid signature").into_response(),
        Answer::Forbidden => (StatusCode::FORBIDDEN, "this sender may not post here").into_response(),
        _ => (StatusCode::BAD_REQUEST, "the receiver refused the payload").into_response(),
    }
}

// ---------------------------------------------------------------- media

/// A 1×1 transparent PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00,
    0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00,
    0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00, 0x01,
    0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// Serves a small PNG under any name, except names starting with `missing`
/// (404), so tests can attach media by URL.
async fn media_file(Path(name): Path<String>) -> Response {
    if name.starts_with("missing") {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    }
    (StatusCode::OK, [("content-type", "image/png")], PNG).into_response()
}

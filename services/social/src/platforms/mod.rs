//! The platforms postmesh publishes to: the registry (credential fields,
//! limits, capabilities, paces) and [`Adapters`], the HTTP clients of each
//! platform's real API.
//!
//! An adapter does one try: [`Adapters::publish`] sends one post and says
//! what happened as a [`PublishError`] whose kind decides whether the job is
//! retried. Retries, backoff, rate limiting and de-duplication belong to the
//! publishing jobs. Base URLs come from the credentials (webhook URLs, a
//! Mastodon instance, a Bluesky service) or from [`PlatformUrls`], so tests
//! point every adapter at local fakes.
//!
//! Credentials never leave this module in a message: errors carry the
//! platform's own text with every secret value cut out, and
//! [`Credentials`]' `Debug` prints field names only.

mod bluesky;
mod discord;
mod http;
mod mastodon;
mod registry;
mod slack;
mod telegram;
mod twitch;
mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use postmesh_proto::postmesh::social::v1::{
    PlatformInfo, PlatformLimits, PublishErrorKind, PublishFailure, RenderedPost,
};
use postmesh_proto::postmesh::r#type::v1::Platform;

pub use http::parse_retry_after;
pub use registry::{info, registry};
pub use webhook::webhook_signature;

/// The longest credential value accepted, in characters.
pub const MAX_CREDENTIAL_CHARS: usize = 4096;

/// The longest [`PublishError::message`], in characters.
pub const MAX_MESSAGE_CHARS: usize = 1000;

/// Base URLs of the platforms whose API lives at one fixed place (the others
/// take theirs from the account's credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformUrls {
    /// Telegram Bot API, such as `https://api.telegram.org`.
    pub telegram: String,
    /// Twitch Helix API, such as `https://api.twitch.tv`.
    pub twitch: String,
    /// Twitch's OAuth server, such as `https://id.twitch.tv`.
    pub twitch_auth: String,
    /// Bluesky service (PDS or entryway) for accounts that name none.
    pub bluesky: String,
}

impl PlatformUrls {
    /// The URLs configured as `social_*_url`.
    pub fn from_config(config: &postmesh_kit::config::Config) -> Self {
        Self {
            telegram: config.social_telegram_api_url.clone(),
            twitch: config.social_twitch_api_url.clone(),
            twitch_auth: config.social_twitch_auth_url.clone(),
            bluesky: config.social_bluesky_service_url.clone(),
        }
    }
}

/// What identifies the credential several accounts may share, for paces
/// of scope `RATE_LIMIT_SCOPE_CREDENTIAL`: a Telegram bot's numeric id (the
/// part of its token before the colon, which is public). `None` where each
/// account has its own.
pub fn shared_credential(platform: Platform, credentials: &Credentials) -> Option<&str> {
    match platform {
        Platform::Telegram => credentials.get("bot_token")?.split_once(':').map(|(bot, _)| bot),
        _ => None,
    }
}

/// Credential values by field name; `Debug` prints names only, never values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials(pub BTreeMap<String, String>);

impl Credentials {
    /// The value of `name`, if present and not blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|value| !value.trim().is_empty())
    }

    /// The field names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The value of `name`, or the error a publish with incomplete stored
    /// credentials ends in (reconnecting the account fixes it).
    fn require(&self, name: &str) -> Result<&str, PublishError> {
        self.get(name).ok_or_else(|| {
            PublishError::new(
                PublishErrorKind::Unauthorized,
                format!("the stored credentials lack `{name}`; connect the account again"),
            )
        })
    }

    /// The URL stored as `name`.
    fn require_url(&self, name: &str) -> Result<url::Url, PublishError> {
        url::Url::parse(self.require(name)?).map_err(|_| {
            PublishError::new(
                PublishErrorKind::Unauthorized,
                format!("the stored `{name}` is not a URL; connect the account again"),
            )
        })
    }

    fn insert(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(name.to_owned(), value.into());
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Credentials").field(&self.0.keys().collect::<Vec<_>>()).finish()
    }
}

impl From<BTreeMap<String, String>> for Credentials {
    fn from(map: BTreeMap<String, String>) -> Self {
        Self(map)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Credentials {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

/// What connecting found out about the account.
#[derive(Debug, Clone)]
pub struct Connected {
    /// The account's identity on the platform (see `Account.external_id`).
    pub external_id: String,
    /// A name for display derived from the platform, at most 100 characters.
    pub display_name: String,
    /// The handle or channel name, if the platform has one.
    pub handle: String,
    /// A public link to the account or channel, if there is one.
    pub profile_url: String,
    /// A link to the avatar, if there is one.
    pub avatar_url: String,
    /// Limits the platform reported for this account (a Mastodon instance's
    /// configuration); `None` means the registry's defaults.
    pub limits: Option<PlatformLimits>,
    /// When the access token expires, if the platform said.
    pub token_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// What to store: the given fields, trimmed and normalised, plus what
    /// publishing needs that connecting found out (Discord `guild_id`,
    /// Twitch `broadcaster_id` and `moderator_id`).
    pub credentials: Credentials,
}

/// Why connecting an account failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A required field is missing, an unknown one given, or a value is
    /// malformed or too long (> 4096 characters). `field` is the credential's
    /// name (its request path is `credentials.<name>`), or `platform` when
    /// the platform itself is not one postmesh knows.
    #[error("credential {field} {reason}")]
    InvalidField {
        /// The credential's name.
        field: String,
        /// What is wrong with it, such as "is required".
        reason: String,
    },
    /// The platform refused the credentials (401/403/404 on the check call).
    #[error("the platform refused {field}: {message}")]
    Rejected {
        /// The credential the platform refused.
        field: String,
        /// The platform's own explanation.
        message: String,
    },
    /// The platform could not be reached or answered 5xx, 429 or too late.
    #[error("the platform is unavailable: {0}")]
    Unavailable(String),
}

/// A post the platform accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The post's id on the platform (Discord message id, Mastodon status id,
    /// Bluesky `at://` URI, Telegram message id, the generic webhook's
    /// message id). Empty where the platform gives none (Slack, Twitch).
    pub external_id: String,
    /// A public link to the post; empty where there is none.
    pub external_url: String,
}

/// Why one try to publish failed.
#[derive(Debug, Clone)]
pub struct PublishError {
    /// The kind of failure; decides whether the job retries.
    pub kind: PublishErrorKind,
    /// The platform's own message where it gave one, never credentials, at
    /// most [`MAX_MESSAGE_CHARS`] characters.
    pub message: String,
    /// The HTTP status the platform answered, or 0 without an answer.
    pub http_status: u16,
    /// How long the platform asked to wait (429), if it said.
    pub retry_after: Option<Duration>,
}

impl PublishError {
    /// A failure without an HTTP answer; `message` is cut to
    /// [`MAX_MESSAGE_CHARS`].
    pub fn new(kind: PublishErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: cut(&message.into(), MAX_MESSAGE_CHARS), http_status: 0, retry_after: None }
    }

    /// True if trying again later could succeed without changing anything.
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            PublishErrorKind::RateLimited
                | PublishErrorKind::PlatformError
                | PublishErrorKind::Timeout
                | PublishErrorKind::Network
                | PublishErrorKind::Internal
        )
    }

    /// The failure as shown in a post's status.
    pub fn to_failure(&self) -> PublishFailure {
        PublishFailure {
            kind: self.kind as i32,
            message: self.message.clone(),
            retryable: self.retryable(),
            http_status: i32::from(self.http_status),
        }
    }
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PublishError {}

/// The HTTP clients of every platform.
#[derive(Clone)]
pub struct Adapters {
    client: reqwest::Client,
    urls: Arc<PlatformUrls>,
    bluesky_sessions: bluesky::Sessions,
}

impl std::fmt::Debug for Adapters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapters").field("urls", &self.urls).finish_non_exhaustive()
    }
}

impl Adapters {
    /// Adapters calling `urls`; each HTTP call may take at most `timeout`.
    pub fn new(urls: PlatformUrls, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            // A webhook URL that redirects is not the one the user gave; and
            // following it would resend the post (and its secrets) elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("postmesh/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds with a static configuration");
        Self { client, urls: Arc::new(urls), bluesky_sessions: bluesky::Sessions::default() }
    }

    /// Checks `credentials` (their fields against the registry, then with the
    /// platform where it offers a check call) and says what to store.
    #[tracing::instrument(skip(self, credentials), fields(fields = ?credentials))]
    pub async fn connect(
        &self,
        platform: Platform,
        credentials: Credentials,
    ) -> Result<Connected, ConnectError> {
        let info = info(platform).ok_or_else(|| ConnectError::InvalidField {
            field: "platform".into(),
            reason: format!("{} is not a platform postmesh publishes to", platform.as_str_name()),
        })?;
        let credentials = validate_fields(info, credentials)?;
        let secrets = secret_values(platform, &credentials);
        let result = match platform {
            Platform::Discord => discord::connect(&self.client, credentials).await,
            Platform::Mastodon => mastodon::connect(&self.client, credentials).await,
            Platform::Bluesky => {
                bluesky::connect(&self.client, &self.urls, &self.bluesky_sessions, credentials).await
            }
            Platform::Telegram => telegram::connect(&self.client, &self.urls, credentials).await,
            Platform::Slack => slack::connect(credentials),
            Platform::Twitch => twitch::connect(&self.client, &self.urls, credentials).await,
            Platform::Webhook => webhook::connect(credentials),
            Platform::Unspecified => unreachable!("the registry has no entry for it"),
        };
        result.map_err(|error| match error {
            ConnectError::Rejected { field, message } => {
                ConnectError::Rejected { field, message: redact(&message, &secrets) }
            }
            ConnectError::Unavailable(message) => ConnectError::Unavailable(redact(&message, &secrets)),
            invalid @ ConnectError::InvalidField { .. } => invalid,
        })
    }

    /// One try at publishing `post` with `credentials` (as stored by
    /// [`Adapters::connect`]). `idempotency_key` goes to platforms that
    /// de-duplicate (Mastodon `Idempotency-Key`, the generic webhook's
    /// message id).
    #[tracing::instrument(skip(self, platform, credentials, post), fields(platform = platform.as_str_name()))]
    pub async fn publish(
        &self,
        platform: Platform,
        credentials: &Credentials,
        post: &RenderedPost,
        idempotency_key: &str,
    ) -> Result<Published, PublishError> {
        let result = match platform {
            Platform::Discord => discord::publish(&self.client, credentials, post).await,
            Platform::Mastodon => mastodon::publish(&self.client, credentials, post, idempotency_key).await,
            Platform::Bluesky => {
                bluesky::publish(&self.client, &self.urls, &self.bluesky_sessions, credentials, post).await
            }
            Platform::Telegram => telegram::publish(&self.client, &self.urls, credentials, post).await,
            Platform::Slack => slack::publish(&self.client, credentials, post).await,
            Platform::Twitch => twitch::publish(&self.client, &self.urls, credentials, post).await,
            Platform::Webhook => webhook::publish(&self.client, credentials, post, idempotency_key).await,
            Platform::Unspecified => Err(PublishError::new(
                PublishErrorKind::AccountDisconnected,
                "the account is on no known platform",
            )),
        };
        result.map_err(|mut error| {
            error.message = redact(&error.message, &secret_values(platform, credentials));
            let (kind, status) = (error.kind, error.http_status);
            tracing::debug!(?kind, status, message = %error.message, "publish failed");
            error
        })
    }
}

/// Credentials with a fresh access token, and when it expires.
#[derive(Debug)]
pub struct Refreshed {
    /// The stored credentials with the new token (and the new refresh
    /// token, where the platform rotates them).
    pub credentials: Credentials,
    /// When the new access token expires, if the platform says.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Why a token could not be refreshed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The platform refused the refresh for good (revoked or unknown
    /// refresh token, wrong application secret): the account must be
    /// connected again.
    #[error("{0}")]
    Refused(String),
    /// The platform could not be reached or failed; try again later.
    #[error("{0}")]
    Unavailable(String),
}

impl Adapters {
    /// Trades the refresh token in `credentials` for a new access token.
    #[tracing::instrument(skip(self, platform, credentials), fields(platform = platform.as_str_name()))]
    pub async fn refresh(
        &self,
        platform: Platform,
        credentials: &Credentials,
    ) -> Result<Refreshed, RefreshError> {
        let result = match platform {
            Platform::Twitch => twitch::refresh(&self.client, &self.urls, credentials).await,
            _ => Err(RefreshError::Refused(format!("{} tokens are not refreshed", platform.as_str_name()))),
        };
        result.map_err(|error| {
            let secrets = secret_values(platform, credentials);
            match error {
                RefreshError::Refused(message) => RefreshError::Refused(redact(&message, &secrets)),
                RefreshError::Unavailable(message) => RefreshError::Unavailable(redact(&message, &secrets)),
            }
        })
    }
}

/// Checks the given fields against the platform's credential fields and
/// returns them trimmed.
fn validate_fields(info: &PlatformInfo, credentials: Credentials) -> Result<Credentials, ConnectError> {
    let expected: Vec<&str> = info.credential_fields.iter().map(|f| f.name.as_str()).collect();
    let invalid = |field: &str, reason: String| ConnectError::InvalidField { field: field.into(), reason };
    if let Some(unknown) = credentials.names().find(|name| !expected.contains(name)) {
        let reason =
            format!("is not a credential of {} (expected: {})", info.display_name, expected.join(", "));
        return Err(invalid(unknown, reason));
    }
    let mut checked = Credentials::default();
    for field in &info.credential_fields {
        let value = credentials.0.get(&field.name).map(|v| v.trim()).unwrap_or_default();
        if value.is_empty() {
            if field.required {
                return Err(invalid(&field.name, "is required".into()));
            }
            continue;
        }
        if value.chars().count() > MAX_CREDENTIAL_CHARS {
            return Err(invalid(&field.name, format!("is longer than {MAX_CREDENTIAL_CHARS} characters")));
        }
        if value.chars().any(char::is_control) {
            return Err(invalid(&field.name, "contains control characters".into()));
        }
        checked.insert(&field.name, value);
    }
    Ok(checked)
}

/// Checks that `field` holds an absolute http(s) URL with a host, as the
/// URL-valued fields must.
fn parse_url_field(credentials: &Credentials, field: &str) -> Result<url::Url, ConnectError> {
    let value = credentials.get(field).unwrap_or_default();
    match url::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(url),
        _ => Err(ConnectError::InvalidField { field: field.into(), reason: "must be an http(s) URL".into() }),
    }
}

/// The values of `credentials` that must never appear in a message: those of
/// secret fields, and the long path segments of secret URLs (the token of a
/// webhook URL, which a platform may echo alone).
fn secret_values(platform: Platform, credentials: &Credentials) -> Vec<String> {
    let Some(info) = info(platform) else { return Vec::new() };
    let mut secrets = Vec::new();
    for field in info.credential_fields.iter().filter(|f| f.secret) {
        let Some(value) = credentials.get(&field.name) else { continue };
        secrets.push(value.to_owned());
        if let Ok(url) = url::Url::parse(value) {
            let segments = url.path_segments().into_iter().flatten();
            secrets.extend(segments.filter(|s| s.len() >= 16).map(str::to_owned));
        }
    }
    // Longest first, so that a URL is cut out whole before its segments.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
}

/// `message` with every secret (of at least 6 characters) replaced.
fn redact(message: &str, secrets: &[String]) -> String {
    let mut message = message.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 6) {
        message = message.replace(secret.as_str(), "[redacted]");
    }
    message
}

/// `text` cut to at most `max` characters, marked with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some(_) => {
            let end = text.char_indices().nth(max - 1).map_or(0, |(i, _)| i);
            format!("{}…", &text[..end])
        }
    }
}

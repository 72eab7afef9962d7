//! Layered configuration: built-in defaults < `postmesh.toml` < `POSTMESH_*`
//! environment < command-line flags. Parsing takes a [`ConfigSource`] so tests
//! build configs from a map; [`ConfigSource::from_process`] reads the real
//! environment. Every key is listed once in [`KEYS`], which also drives the
//! `--help` text, so a key cannot exist without documentation.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::kv::RateLimit;

/// Prefix of every environment variable postmesh reads.
pub const ENV_PREFIX: &str = "POSTMESH_";

/// Documentation of one configuration key.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// Key as written in `postmesh.toml`; the environment variable is
    /// `POSTMESH_` + the key in upper case.
    pub key: &'static str,
    /// Default, as a user would write it.
    pub default: &'static str,
    /// One line saying what it does.
    pub help: &'static str,
}

impl KeyDoc {
    /// The environment variable that sets this key.
    pub fn env_var(&self) -> String {
        format!("{ENV_PREFIX}{}", self.key.to_ascii_uppercase())
    }
}

/// Every configuration key, in the order `--help` lists them.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "data_dir",
        default: "./data",
        help: "directory for SQLite files, generated keys and other local state",
    },
    KeyDoc {
        key: "listen",
        default: "127.0.0.1:50051",
        help: "gRPC listen address (port 0 picks a free port)",
    },
    KeyDoc {
        key: "http_listen",
        default: "127.0.0.1:8080",
        help: "HTTP gateway listen address (`dev` and `serve gateway`)",
    },
    KeyDoc {
        key: "admin_listen",
        default: "127.0.0.1:9090",
        help: "admin HTTP address serving /metrics and /health/* (`serve`; in `dev` the gateway serves them)",
    },
    KeyDoc {
        key: "database_url",
        default: "(SQLite files under data_dir)",
        help: "postgres://user:pass@host/db to use PostgreSQL; each service gets its own schema",
    },
    KeyDoc {
        key: "database_max_connections",
        default: "10",
        help: "connection pool size per service database on PostgreSQL (SQLite uses one connection: it has one writer, and more connections only wait on its lock)",
    },
    KeyDoc {
        key: "redis_url",
        default: "(in-memory store)",
        help: "redis:// or rediss:// URL of the key-value store",
    },
    KeyDoc {
        key: "nats_url",
        default: "(local job bus)",
        help: "nats:// URL of a NATS server with JetStream enabled",
    },
    KeyDoc {
        key: "namespace",
        default: "(none)",
        help: "prefix for NATS subjects/streams and Redis keys, to share one server between deployments",
    },
    KeyDoc {
        key: "log",
        default: "info",
        help: "log filter in tracing's EnvFilter syntax, e.g. `info,postmesh_kit=debug`",
    },
    KeyDoc { key: "log_format", default: "text", help: "`text` or `json`" },
    KeyDoc {
        key: "user_url",
        default: "(this process in `dev`)",
        help: "address of the user service, e.g. http://user:50051; several comma-separated, each host re-resolved by DNS",
    },
    KeyDoc { key: "content_url", default: "(this process in `dev`)", help: "address of the content service" },
    KeyDoc { key: "social_url", default: "(this process in `dev`)", help: "address of the social service" },
    KeyDoc {
        key: "analytics_url",
        default: "(this process in `dev`)",
        help: "address of the analytics service",
    },
    KeyDoc { key: "ai_url", default: "(this process in `dev`)", help: "address of the ai service" },
    KeyDoc {
        key: "notification_url",
        default: "(this process in `dev`)",
        help: "address of the notification service",
    },
    KeyDoc { key: "webhook_url", default: "(this process in `dev`)", help: "address of the webhook service" },
    KeyDoc {
        key: "auth_keys",
        default: "(one generated under data_dir/keys)",
        help: "comma-separated Ed25519 PKCS#8 PEM files signing tokens (user service); the first signs, all verify",
    },
    KeyDoc { key: "auth_issuer", default: "postmesh", help: "`iss` of issued tokens, the only one accepted" },
    KeyDoc {
        key: "auth_audience",
        default: "postmesh",
        help: "`aud` of issued tokens, the only one accepted",
    },
    KeyDoc { key: "auth_access_ttl", default: "15m", help: "access token lifetime" },
    KeyDoc { key: "auth_refresh_ttl", default: "30d", help: "refresh token lifetime" },
    KeyDoc {
        key: "auth_service_secret",
        default: "(none: only `dev` mints service tokens)",
        help: "shared secret services exchange for service tokens at the user service",
    },
    KeyDoc {
        key: "encryption_keys",
        default: "(one generated under data_dir/keys)",
        help: "AEAD keys for secrets at rest as `id:base64(32 bytes)`, comma-separated; the first encrypts",
    },
    KeyDoc {
        key: "client_timeout",
        default: "10s",
        help: "deadline of a call to another service when the caller has none",
    },
    KeyDoc {
        key: "client_method_timeouts",
        default: "(none)",
        help: "per-method deadlines, e.g. `postmesh.ai.v1.AiService/GenerateContent=60s,...`",
    },
    KeyDoc {
        key: "client_breaker_failure_rate",
        default: "0.5",
        help: "failure rate (0-1) over the window that opens a target's breaker",
    },
    KeyDoc { key: "client_breaker_window", default: "20", help: "calls in the breaker's sliding window" },
    KeyDoc {
        key: "client_breaker_minimum_calls",
        default: "5",
        help: "calls in the window before the failure rate counts",
    },
    KeyDoc {
        key: "client_breaker_open_for",
        default: "5s",
        help: "how long an open breaker fails fast before probing",
    },
    KeyDoc { key: "client_breaker_probes", default: "3", help: "probe calls allowed while half-open" },
    KeyDoc {
        key: "client_retries",
        default: "2",
        help: "retries of an idempotent call that failed with UNAVAILABLE or a connection error",
    },
    KeyDoc {
        key: "client_retry_budget",
        default: "0.2",
        help: "retries allowed as a share of calls (plus 10/s), so retries cannot multiply an outage",
    },
    KeyDoc {
        key: "client_retry_backoff",
        default: "25ms",
        help: "first retry delay (doubling, with jitter)",
    },
    KeyDoc {
        key: "client_concurrency",
        default: "512",
        help: "calls in flight to one target service; beyond it calls are refused at once",
    },
    KeyDoc { key: "client_connect_timeout", default: "1s", help: "TCP connect timeout to another service" },
    KeyDoc { key: "client_dns_refresh", default: "5s", help: "how often service host names are re-resolved" },
    KeyDoc {
        key: "server_concurrency_per_connection",
        default: "256",
        help: "calls served at once per connection; beyond it RESOURCE_EXHAUSTED at once",
    },
    KeyDoc {
        key: "gateway_request_timeout",
        default: "30s",
        help: "longest a gateway request may take; a caller's shorter `grpc-timeout` header wins",
    },
    KeyDoc {
        key: "social_telegram_api_url",
        default: "https://api.telegram.org",
        help: "base URL of the Telegram Bot API (a test server or a local Bot API server)",
    },
    KeyDoc {
        key: "social_twitch_api_url",
        default: "https://api.twitch.tv",
        help: "base URL of the Twitch Helix API",
    },
    KeyDoc {
        key: "social_twitch_auth_url",
        default: "https://id.twitch.tv",
        help: "base URL of Twitch's OAuth server (token validation and refresh)",
    },
    KeyDoc {
        key: "social_token_refresh_margin",
        default: "10m",
        help: "OAuth access tokens are refreshed when they expire within this margin",
    },
    KeyDoc {
        key: "social_bluesky_service_url",
        default: "https://bsky.social",
        help: "Bluesky service (PDS or entryway) used when an account names none",
    },
    KeyDoc {
        key: "social_publish_timeout",
        default: "15s",
        help: "longest a platform may take to answer one publish call (then: retried as a timeout)",
    },
    KeyDoc {
        key: "social_publish_max_attempts",
        default: "8",
        help: "tries per publishing round before the target is Faulted and the job dead-lettered",
    },
    KeyDoc {
        key: "webhook_delivery_timeout",
        default: "30s",
        help: "longest an outbound webhook attempt may take (connect, send, answer); then it fails as `timeout`",
    },
    KeyDoc {
        key: "webhook_retry_schedule",
        default: "5s,5m,30m,2h,5h,10h,10h",
        help: "waits before each retry of a failed outbound delivery (the first attempt is immediate); after the last the delivery is FAILED",
    },
    KeyDoc {
        key: "webhook_auto_disable_after",
        default: "5d",
        help: "an outbound endpoint failing every attempt for this long is disabled automatically",
    },
    KeyDoc {
        key: "webhook_ssrf_allowlist",
        default: "(none)",
        help: "hosts, addresses or CIDR ranges outbound webhooks may reach despite the SSRF guard, comma-separated, e.g. `127.0.0.1,hooks.internal,10.1.0.0/16`",
    },
    KeyDoc {
        key: "webhook_log_retention",
        default: "30d",
        help: "how long outbound delivery attempts and inbound events are kept and listed (and how far back a replay may reach)",
    },
    KeyDoc {
        key: "webhook_twitch_eventsub_secret",
        default: "(none: EventSub callbacks are refused)",
        help: "secret Twitch signs EventSub callbacks with (10 to 100 characters); also sent when creating subscriptions",
    },
    KeyDoc {
        key: "webhook_twitch_client_id",
        default: "(none: EventSub subscriptions and enrichment are off)",
        help: "Twitch app client id used for the Helix API (EventSub subscriptions, enrichment)",
    },
    KeyDoc {
        key: "webhook_twitch_client_secret",
        default: "(none)",
        help: "Twitch app client secret; an app access token is fetched with the client-credentials grant",
    },
    KeyDoc {
        key: "webhook_twitch_api_url",
        default: "https://api.twitch.tv",
        help: "base URL of the Twitch Helix API (`/helix/...` is appended) used by the webhook service",
    },
    KeyDoc {
        key: "webhook_twitch_auth_url",
        default: "https://id.twitch.tv",
        help: "base URL of Twitch's OAuth server (`/oauth2/token` is appended) for the app access token",
    },
    KeyDoc {
        key: "webhook_eventsub_callback_url",
        default: "(none)",
        help: "public HTTPS URL of the gateway's `/api/webhooks/twitch`, given to Twitch as the EventSub callback",
    },
    KeyDoc {
        key: "webhook_twitch_cache_ttl",
        default: "5m",
        help: "how long Helix enrichment lookups (users, streams, channels) are cached in the key-value store",
    },
    KeyDoc {
        key: "webhook_reconcile_interval",
        default: "1h",
        help: "how often desired and actual EventSub subscriptions are reconciled (also at start-up)",
    },
    KeyDoc {
        key: "gateway_max_body_bytes",
        default: "10485760",
        help: "largest request body the gateway accepts (larger: 413)",
    },
    KeyDoc {
        key: "gateway_rate_limits",
        default: "*=600/1m",
        help: "requests per caller (API key, user or client address): `*=600/1m,POST /api/users/login=20/1m`; `off` disables",
    },
    KeyDoc {
        key: "gateway_cors_origins",
        default: "(none: no CORS)",
        help: "origins browsers may call the gateway from, comma-separated, e.g. `https://app.example.com`; `*` for any",
    },
    KeyDoc {
        key: "gateway_trusted_proxies",
        default: "0",
        help: "proxies in front of the gateway; the client address is that many hops back in X-Forwarded-For",
    },
    KeyDoc {
        key: "gateway_forward_headers",
        default: "(none)",
        help: "extra request headers passed to services as gRPC metadata, comma-separated",
    },
    KeyDoc {
        key: "shutdown_grace",
        default: "30s",
        help: "how long SIGTERM/Ctrl-C waits for in-flight calls and jobs to finish",
    },
    KeyDoc {
        key: "health_interval",
        default: "5s",
        help: "how often database, Redis and NATS connections are checked for readiness",
    },
    KeyDoc {
        key: "jobs_max_deliver",
        default: "5",
        help: "deliveries of a job before it goes to dead letters",
    },
    KeyDoc {
        key: "jobs_ack_wait",
        default: "30s",
        help: "how long a delivered job may run unacknowledged before it is delivered again",
    },
    KeyDoc {
        key: "jobs_backoff",
        default: "1s,5s,30s,2m",
        help: "delays before the 2nd, 3rd, ... delivery of a failed job (the last repeats)",
    },
    KeyDoc {
        key: "jobs_poll_interval",
        default: "500ms",
        help: "local job bus: how often consumers look for due jobs besides being woken",
    },
    KeyDoc {
        key: "outbox_poll_interval",
        default: "1s",
        help: "how often the outbox relay looks for unpublished messages besides being woken",
    },
];

/// The validated configuration of one postmesh process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory for SQLite files and generated local state.
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Gateway listen address.
    pub http_listen: SocketAddr,
    /// Admin (metrics, health) listen address.
    pub admin_listen: SocketAddr,
    /// PostgreSQL URL; SQLite under `data_dir` when unset.
    pub database_url: Option<DatabaseUrl>,
    /// Pool size per service database.
    pub database_max_connections: u32,
    /// Redis URL; in-memory store when unset.
    pub redis_url: Option<RedisUrl>,
    /// NATS URL; local job bus when unset.
    pub nats_url: Option<NatsUrl>,
    /// Prefix isolating this deployment on shared Redis/NATS servers.
    pub namespace: Option<Namespace>,
    /// Log filter.
    pub log: String,
    /// Log output format.
    pub log_format: LogFormat,
    /// Address of the user service.
    pub user_url: Option<ServiceUrls>,
    /// Address of the content service.
    pub content_url: Option<ServiceUrls>,
    /// Address of the social service.
    pub social_url: Option<ServiceUrls>,
    /// Address of the analytics service.
    pub analytics_url: Option<ServiceUrls>,
    /// Address of the ai service.
    pub ai_url: Option<ServiceUrls>,
    /// Address of the notification service.
    pub notification_url: Option<ServiceUrls>,
    /// Address of the webhook service.
    pub webhook_url: Option<ServiceUrls>,
    /// Deadline of outgoing calls without one.
    #[serde(with = "human_duration")]
    pub client_timeout: Duration,
    /// Per-method deadlines of outgoing calls.
    pub client_method_timeouts: MethodTimeouts,
    /// Failure rate opening a breaker.
    pub client_breaker_failure_rate: f64,
    /// Calls in the breaker window.
    pub client_breaker_window: usize,
    /// Calls before the failure rate counts.
    pub client_breaker_minimum_calls: usize,
    /// Time an open breaker waits before probing.
    #[serde(with = "human_duration")]
    pub client_breaker_open_for: Duration,
    /// Probe calls while half-open.
    pub client_breaker_probes: usize,
    /// Retries of idempotent calls.
    pub client_retries: u32,
    /// Retries as a share of calls.
    pub client_retry_budget: f32,
    /// First retry delay.
    #[serde(with = "human_duration")]
    pub client_retry_backoff: Duration,
    /// Calls in flight per target.
    pub client_concurrency: usize,
    /// Connect timeout.
    #[serde(with = "human_duration")]
    pub client_connect_timeout: Duration,
    /// DNS refresh period.
    #[serde(with = "human_duration")]
    pub client_dns_refresh: Duration,
    /// Calls served at once per connection.
    pub server_concurrency_per_connection: usize,
    /// Token signing key files; the first signs.
    #[serde(with = "path_list")]
    pub auth_keys: Vec<PathBuf>,
    /// Token issuer.
    pub auth_issuer: String,
    /// Token audience.
    pub auth_audience: String,
    /// Access token lifetime.
    #[serde(with = "human_duration")]
    pub auth_access_ttl: Duration,
    /// Refresh token lifetime.
    #[serde(with = "human_duration")]
    pub auth_refresh_ttl: Duration,
    /// Secret exchanged for service tokens.
    pub auth_service_secret: Option<Secret<String>>,
    /// AEAD keys for secrets at rest (`id:base64`, comma-separated).
    pub encryption_keys: Option<Secret<String>>,
    /// Longest a gateway request may take.
    #[serde(with = "human_duration")]
    pub gateway_request_timeout: Duration,
    /// Largest request body the gateway accepts.
    pub gateway_max_body_bytes: u64,
    /// Telegram Bot API base URL.
    pub social_telegram_api_url: String,
    /// Twitch Helix API base URL.
    pub social_twitch_api_url: String,
    /// Twitch OAuth server base URL.
    pub social_twitch_auth_url: String,
    /// Tokens expiring within this margin are refreshed.
    #[serde(with = "human_duration")]
    pub social_token_refresh_margin: Duration,
    /// Default Bluesky service URL.
    pub social_bluesky_service_url: String,
    /// Timeout of one publish call to a platform.
    #[serde(with = "human_duration")]
    pub social_publish_timeout: Duration,
    /// Tries per publishing round.
    pub social_publish_max_attempts: u32,
    /// Timeout of one outbound webhook attempt.
    #[serde(with = "human_duration")]
    pub webhook_delivery_timeout: Duration,
    /// Waits before the retries of a failed outbound delivery.
    #[serde(with = "human_duration_list")]
    pub webhook_retry_schedule: Vec<Duration>,
    /// Failing span after which an outbound endpoint is disabled.
    #[serde(with = "human_duration")]
    pub webhook_auto_disable_after: Duration,
    /// Hosts, addresses and CIDR ranges exempt from the SSRF guard.
    #[serde(with = "string_list")]
    pub webhook_ssrf_allowlist: Vec<String>,
    /// Retention of delivery attempts and inbound events.
    #[serde(with = "human_duration")]
    pub webhook_log_retention: Duration,
    /// Secret Twitch signs EventSub callbacks with.
    pub webhook_twitch_eventsub_secret: Option<Secret<String>>,
    /// Twitch app client id for Helix.
    pub webhook_twitch_client_id: Option<String>,
    /// Twitch app client secret for Helix.
    pub webhook_twitch_client_secret: Option<Secret<String>>,
    /// Twitch Helix API base URL (webhook service).
    pub webhook_twitch_api_url: String,
    /// Twitch OAuth base URL (webhook service).
    pub webhook_twitch_auth_url: String,
    /// Public URL of `/api/webhooks/twitch` given to Twitch.
    pub webhook_eventsub_callback_url: Option<String>,
    /// Cache lifetime of Helix enrichment lookups.
    #[serde(with = "human_duration")]
    pub webhook_twitch_cache_ttl: Duration,
    /// EventSub reconciliation period.
    #[serde(with = "human_duration")]
    pub webhook_reconcile_interval: Duration,
    /// Gateway rate limits per caller.
    pub gateway_rate_limits: RateLimits,
    /// Origins allowed by CORS.
    pub gateway_cors_origins: Origins,
    /// Proxies in front of the gateway.
    pub gateway_trusted_proxies: usize,
    /// Extra headers forwarded as metadata.
    #[serde(with = "string_list")]
    pub gateway_forward_headers: Vec<String>,
    /// Drain time on shutdown.
    #[serde(with = "human_duration")]
    pub shutdown_grace: Duration,
    /// Dependency check period.
    #[serde(with = "human_duration")]
    pub health_interval: Duration,
    /// Deliveries before dead letters.
    pub jobs_max_deliver: u32,
    /// Redelivery timeout of an unacknowledged job.
    #[serde(with = "human_duration")]
    pub jobs_ack_wait: Duration,
    /// Delays between deliveries of a failing job.
    #[serde(with = "human_duration_list")]
    pub jobs_backoff: Vec<Duration>,
    /// Local bus polling period.
    #[serde(with = "human_duration")]
    pub jobs_poll_interval: Duration,
    /// Outbox relay polling period.
    #[serde(with = "human_duration")]
    pub outbox_poll_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let addr = |s: &str| s.parse().expect("default address parses");
        Self {
            data_dir: PathBuf::from("./data"),
            listen: addr("127.0.0.1:50051"),
            http_listen: addr("127.0.0.1:8080"),
            admin_listen: addr("127.0.0.1:9090"),
            database_url: None,
            database_max_connections: 10,
            redis_url: None,
            nats_url: None,
            namespace: None,
            log: "info".into(),
            log_format: LogFormat::Text,
            user_url: None,
            content_url: None,
            social_url: None,
            analytics_url: None,
            ai_url: None,
            notification_url: None,
            webhook_url: None,
            client_timeout: Duration::from_secs(10),
            client_method_timeouts: MethodTimeouts::default(),
            client_breaker_failure_rate: 0.5,
            client_breaker_window: 20,
            client_breaker_minimum_calls: 5,
            client_breaker_open_for: Duration::from_secs(5),
            client_breaker_probes: 3,
            client_retries: 2,
            client_retry_budget: 0.2,
            client_retry_backoff: Duration::from_millis(25),
            client_concurrency: 512,
            client_connect_timeout: Duration::from_secs(1),
            client_dns_refresh: Duration::from_secs(5),
            server_concurrency_per_connection: 256,
            auth_keys: Vec::new(),
            auth_issuer: "postmesh".into(),
            auth_audience: "postmesh".into(),
            auth_access_ttl: Duration::from_secs(15 * 60),
            auth_refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            auth_service_secret: None,
            encryption_keys: None,
            gateway_request_timeout: Duration::from_secs(30),
            gateway_max_body_bytes: 10 * 1024 * 1024,
            social_telegram_api_url: "https://api.telegram.org".into(),
            social_twitch_api_url: "https://api.twitch.tv".into(),
            social_twitch_auth_url: "https://id.twitch.tv".into(),
            social_token_refresh_margin: Duration::from_secs(600),
            social_bluesky_service_url: "https://bsky.social".into(),
            social_publish_timeout: Duration::from_secs(15),
            social_publish_max_attempts: 8,
            webhook_delivery_timeout: Duration::from_secs(30),
            webhook_retry_schedule: [5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            webhook_auto_disable_after: Duration::from_secs(5 * 24 * 3600),
            webhook_ssrf_allowlist: Vec::new(),
            webhook_log_retention: Duration::from_secs(30 * 24 * 3600),
            webhook_twitch_eventsub_secret: None,
            webhook_twitch_client_id: None,
            webhook_twitch_client_secret: None,
            webhook_twitch_api_url: "https://api.twitch.tv".into(),
            webhook_twitch_auth_url: "https://id.twitch.tv".into(),
            webhook_eventsub_callback_url: None,
            webhook_twitch_cache_ttl: Duration::from_secs(5 * 60),
            webhook_reconcile_interval: Duration::from_secs(3600),
            gateway_rate_limits: RateLimits::try_from("*=600/1m".to_owned()).expect("default limits parse"),
            gateway_cors_origins: Origins::default(),
            gateway_trusted_proxies: 0,
            gateway_forward_headers: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
            health_interval: Duration::from_secs(5),
            jobs_max_deliver: 5,
            jobs_ack_wait: Duration::from_secs(30),
            jobs_backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(120),
            ],
            jobs_poll_interval: Duration::from_millis(500),
            outbox_poll_interval: Duration::from_secs(1),
        }
    }
}

impl Config {
    /// Loads and validates the configuration from `source`.
    pub fn load(source: &ConfigSource) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &source.file {
            if path.exists() {
                figment = figment.merge(Toml::file_exact(path));
            } else if source.file_required {
                return Err(ConfigError {
                    problems: vec![format!("config file {} does not exist", path.display())],
                });
            }
        }
        figment = figment
            .merge(EnvProvider::new("environment variable", &source.env))
            .merge(EnvProvider::new("command-line flag", &source.overrides));
        let config: Config = figment.extract_lossy().map_err(ConfigError::from_figment)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.database_max_connections == 0 {
            problems.push(problem("database_max_connections", "must be at least 1"));
        }
        if self.jobs_max_deliver == 0 {
            problems.push(problem("jobs_max_deliver", "must be at least 1"));
        }
        if self.jobs_backoff.is_empty() {
            problems.push(problem("jobs_backoff", "needs at least one delay"));
        }
        if !(self.client_breaker_failure_rate > 0.0 && self.client_breaker_failure_rate <= 1.0) {
            problems.push(problem("client_breaker_failure_rate", "must be above 0 and at most 1"));
        }
        if !(0.0..=1.0).contains(&self.client_retry_budget) {
            problems.push(problem("client_retry_budget", "must be between 0 and 1"));
        }
        for (key, value) in [
            ("client_breaker_window", self.client_breaker_window),
            ("client_breaker_minimum_calls", self.client_breaker_minimum_calls),
            ("client_breaker_probes", self.client_breaker_probes),
            ("client_concurrency", self.client_concurrency),
            ("server_concurrency_per_connection", self.server_concurrency_per_connection),
        ] {
            if value == 0 {
                problems.push(problem(key, "must be at least 1"));
            }
        }
        if self.client_breaker_minimum_calls > self.client_breaker_window {
            problems.push(problem("client_breaker_minimum_calls", "must not exceed client_breaker_window"));
        }
        if self.auth_access_ttl < Duration::from_secs(60)
            || self.auth_access_ttl > Duration::from_secs(24 * 3600)
        {
            problems.push(problem("auth_access_ttl", "must be between 1m and 24h"));
        }
        if self.auth_refresh_ttl <= self.auth_access_ttl {
            problems.push(problem("auth_refresh_ttl", "must be longer than auth_access_ttl"));
        }
        if self.auth_service_secret.as_ref().is_some_and(|s| s.expose().len() < 32) {
            problems.push(problem("auth_service_secret", "must be at least 32 characters"));
        }
        if let Some(keys) = &self.encryption_keys
            && let Err(err) = crate::crypto::Cipher::from_spec(keys.expose())
        {
            problems.push(problem("encryption_keys", &err.to_string()));
        }
        for (key, value) in [
            ("jobs_ack_wait", self.jobs_ack_wait),
            ("jobs_poll_interval", self.jobs_poll_interval),
            ("outbox_poll_interval", self.outbox_poll_interval),
            ("health_interval", self.health_interval),
            ("client_timeout", self.client_timeout),
            ("client_connect_timeout", self.client_connect_timeout),
            ("client_dns_refresh", self.client_dns_refresh),
            ("client_breaker_open_for", self.client_breaker_open_for),
            ("gateway_request_timeout", self.gateway_request_timeout),
            ("social_token_refresh_margin", self.social_token_refresh_margin),
        ] {
            if value.is_zero() {
                problems.push(problem(key, "must be longer than zero"));
            }
        }
        if self.gateway_max_body_bytes == 0 {
            problems.push(problem("gateway_max_body_bytes", "must be at least 1"));
        }
        for (key, value) in [
            ("social_telegram_api_url", &self.social_telegram_api_url),
            ("social_twitch_api_url", &self.social_twitch_api_url),
            ("social_twitch_auth_url", &self.social_twitch_auth_url),
            ("social_bluesky_service_url", &self.social_bluesky_service_url),
        ] {
            match url::Url::parse(value) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                _ => problems.push(problem(key, "must be an http or https URL")),
            }
        }
        if self.social_publish_max_attempts == 0 {
            problems.push(problem("social_publish_max_attempts", "must be at least 1"));
        }
        for (key, value) in [
            ("webhook_twitch_api_url", Some(&self.webhook_twitch_api_url)),
            ("webhook_twitch_auth_url", Some(&self.webhook_twitch_auth_url)),
            ("webhook_eventsub_callback_url", self.webhook_eventsub_callback_url.as_ref()),
        ] {
            let Some(value) = value else { continue };
            match url::Url::parse(value) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                _ => problems.push(problem(key, "must be an http or https URL")),
            }
        }
        if self
            .webhook_twitch_eventsub_secret
            .as_ref()
            .is_some_and(|s| !(10..=100).contains(&s.expose().len()))
        {
            problems.push(problem("webhook_twitch_eventsub_secret", "must be 10 to 100 characters"));
        }
        if self.webhook_reconcile_interval < Duration::from_secs(1) {
            problems.push(problem("webhook_reconcile_interval", "must be at least 1s"));
        }
        for (key, value) in [
            ("webhook_delivery_timeout", self.webhook_delivery_timeout),
            ("webhook_auto_disable_after", self.webhook_auto_disable_after),
            ("webhook_log_retention", self.webhook_log_retention),
        ] {
            if value.is_zero() {
                problems.push(problem(key, "must be longer than zero"));
            }
        }
        if self.webhook_retry_schedule.iter().any(Duration::is_zero) {
            problems.push(problem("webhook_retry_schedule", "waits must be longer than zero"));
        }
        for entry in &self.webhook_ssrf_allowlist {
            if entry.contains(['/', ' ']) && !is_cidr(entry) {
                problems.push(problem(
                    "webhook_ssrf_allowlist",
                    &format!("`{entry}` is not a host, an address or a CIDR range"),
                ));
            }
        }
        for header in &self.gateway_forward_headers {
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                problems
                    .push(problem("gateway_forward_headers", &format!("`{header}` is not a header name")));
            }
        }
        if let Err(err) = self.log.parse::<tracing_subscriber::EnvFilter>() {
            problems.push(problem("log", &format!("is not a valid log filter: {err}")));
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError { problems }) }
    }

    /// Points `service` at `url` (a process reaches the services it runs
    /// itself on its own listener).
    pub fn set_service_url(&mut self, service: &str, url: ServiceUrls) {
        let slot = match service {
            "user" => &mut self.user_url,
            "content" => &mut self.content_url,
            "social" => &mut self.social_url,
            "analytics" => &mut self.analytics_url,
            "ai" => &mut self.ai_url,
            "notification" => &mut self.notification_url,
            "webhook" => &mut self.webhook_url,
            _ => return,
        };
        *slot = Some(url);
    }

    /// The configured addresses of another service, if any.
    pub fn service_url(&self, service: &str) -> Option<&ServiceUrls> {
        match service {
            "user" => self.user_url.as_ref(),
            "content" => self.content_url.as_ref(),
            "social" => self.social_url.as_ref(),
            "analytics" => self.analytics_url.as_ref(),
            "ai" => self.ai_url.as_ref(),
            "notification" => self.notification_url.as_ref(),
            "webhook" => self.webhook_url.as_ref(),
            _ => None,
        }
    }
}

/// Whether `text` is an IP network such as `10.0.0.0/8` or `fd00::/8`.
fn is_cidr(text: &str) -> bool {
    let Some((addr, bits)) = text.split_once('/') else { return false };
    match (addr.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(bits)) => bits <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(bits)) => bits <= 128,
        _ => false,
    }
}

fn problem(key: &str, message: &str) -> String {
    format!("{} ({key}) {message}", env_name(key))
}

fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

/// Where configuration comes from. Tests build one from literals; the CLI
/// uses [`ConfigSource::from_process`].
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// `postmesh.toml` to read, if present.
    pub file: Option<PathBuf>,
    /// Whether a missing `file` is an error (it is when named explicitly).
    pub file_required: bool,
    /// Environment variables (only `POSTMESH_*` ones that name a key are used).
    pub env: Vec<(String, String)>,
    /// Command-line flags as `(key, value)`, applied last.
    pub overrides: Vec<(String, String)>,
}

impl ConfigSource {
    /// Reads the process environment; `file` is the `--config` flag.
    pub fn from_process(file: Option<&Path>) -> Self {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let explicit = file
            .map(Path::to_path_buf)
            .or_else(|| env.iter().find(|(k, _)| k == "POSTMESH_CONFIG").map(|(_, v)| PathBuf::from(v)));
        Self {
            file_required: explicit.is_some(),
            file: Some(explicit.unwrap_or_else(|| PathBuf::from("postmesh.toml"))),
            env,
            overrides: Vec::new(),
        }
    }

    /// Adds a command-line override for `key`.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.overrides.push((key.to_owned(), value.into()));
        self
    }
}

/// Feeds `POSTMESH_*` variables (or flags) into figment as strings. Unknown
/// `POSTMESH_*` names are ignored rather than refused: Kubernetes injects
/// `<SERVICE>_PORT`-style variables that would otherwise stop start-up.
struct EnvProvider {
    name: &'static str,
    values: Dict,
}

impl EnvProvider {
    fn new(name: &'static str, vars: &[(String, String)]) -> Self {
        let mut values = Dict::new();
        for (name_or_key, value) in vars {
            let key = match name_or_key.strip_prefix(ENV_PREFIX) {
                Some(rest) => rest.to_ascii_lowercase(),
                None if name == "command-line flag" => name_or_key.clone(),
                None => continue,
            };
            if KEYS.iter().any(|doc| doc.key == key) {
                values.insert(key, Value::from(value.clone()));
            }
        }
        Self { name, values }
    }
}

impl Provider for EnvProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// Invalid configuration: every problem found, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// One line per problem, each starting with the environment variable.
    pub problems: Vec<String>,
}

impl ConfigError {
    fn from_figment(err: figment::Error) -> Self {
        let problems = err
            .into_iter()
            .map(|e| {
                let key = e.path.join(".");
                let origin = e.metadata.as_ref().map(|m| format!(" (from {})", m.name)).unwrap_or_default();
                let what = match &e.kind {
                    figment::error::Kind::UnknownField(field, _) => {
                        format!("{} is not a configuration key", field)
                    }
                    kind => kind.to_string(),
                };
                if key.is_empty() {
                    format!("{what}{origin}")
                } else {
                    format!("{} ({key}): {what}{origin}", env_name(&key))
                }
            })
            .collect();
        Self { problems }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.problems.join("; "))
    }
}

impl std::error::Error for ConfigError {}

/// A value that must never reach a log line. `Debug` and `Display` redact it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Parses a URL and checks its scheme; the error names what was expected.
fn parse_url(value: &str, schemes: &[&str]) -> Result<url::Url, String> {
    let url = url::Url::parse(value).map_err(|e| format!("`{}` is not a URL: {e}", redact(value)))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!(
            "unsupported scheme `{}` (expected {})",
            url.scheme(),
            schemes.iter().map(|s| format!("{s}://")).collect::<Vec<_>>().join(" or ")
        ));
    }
    Ok(url)
}

/// A URL with its password removed, for messages and logs.
fn redact(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "<unparseable>".into(),
    }
}

macro_rules! url_type {
    ($(#[$doc:meta])* $name:ident, [$($scheme:literal),+]) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Secret<url::Url>);

        impl $name {
            /// The full URL, credentials included: only for connecting.
            pub fn expose(&self) -> &url::Url {
                self.0.expose()
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                parse_url(&value, &[$($scheme),+]).map(|u| Self(Secret::new(u)))
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.expose().to_string()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&redact(self.expose().as_str()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&redact(self.expose().as_str()))
            }
        }
    };
}

url_type!(
    /// A PostgreSQL URL (`postgres://` or `postgresql://`).
    DatabaseUrl, ["postgres", "postgresql"]
);
url_type!(
    /// A Redis URL (`redis://` or `rediss://`).
    RedisUrl, ["redis", "rediss"]
);
url_type!(
    /// A NATS URL (`nats://` or `tls://`).
    NatsUrl, ["nats", "tls"]
);

/// One or more addresses of a service (`http://` or `https://`),
/// comma-separated; each host is re-resolved by DNS, so a Kubernetes
/// headless service name reaches every replica.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceUrls(Vec<url::Url>);

impl ServiceUrls {
    /// The addresses.
    pub fn urls(&self) -> &[url::Url] {
        &self.0
    }
}

impl TryFrom<String> for ServiceUrls {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let urls: Vec<url::Url> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let url = parse_url(s, &["http", "https"])?;
                if url.host_str().is_none() {
                    return Err(format!("`{s}` has no host"));
                }
                Ok(url)
            })
            .collect::<Result<_, String>>()?;
        if urls.is_empty() { Err("no address given".into()) } else { Ok(Self(urls)) }
    }
}

impl From<ServiceUrls> for String {
    fn from(value: ServiceUrls) -> String {
        value.0.iter().map(url::Url::as_str).collect::<Vec<_>>().join(",")
    }
}

impl fmt::Debug for ServiceUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.0.iter().map(|u| redact(u.as_str())).collect();
        f.write_str(&shown.join(","))
    }
}

/// Gateway rate limits: `route=limit/period` entries, comma-separated.
/// `route` is `*` (every route without its own entry, one budget per
/// caller) or `METHOD /path/template` as the contract writes it (a budget of
/// its own); `off` instead of a rate exempts the route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RateLimits(Vec<(String, Option<RateLimit>)>);

impl RateLimits {
    /// The limit for `METHOD /template`: its own entry (`Some(None)` when
    /// `off`), or `None` when it falls under `*`.
    pub fn route(&self, method: &str, template: &str) -> Option<Option<RateLimit>> {
        let key = format!("{method} {template}");
        self.0.iter().find(|(route, _)| *route == key).map(|(_, limit)| *limit)
    }

    /// The `*` limit, if any.
    pub fn default_limit(&self) -> Option<RateLimit> {
        self.0.iter().find(|(route, _)| route == "*").and_then(|(_, limit)| *limit)
    }
}

impl TryFrom<String> for RateLimits {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let mut entries = Vec::new();
        for entry in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (route, rate) =
                entry.rsplit_once('=').ok_or_else(|| format!("`{entry}` is not route=limit/period"))?;
            let route = route.trim();
            let well_formed = route == "*"
                || route.split_once(' ').is_some_and(|(method, path)| {
                    !method.is_empty()
                        && method.chars().all(|c| c.is_ascii_uppercase())
                        && path.starts_with('/')
                });
            if !well_formed {
                return Err(format!("`{route}` is not `*` or `METHOD /path`"));
            }
            let rate = rate.trim();
            let limit = if rate == "off" {
                None
            } else {
                let (count, period) = rate
                    .split_once('/')
                    .ok_or_else(|| format!("`{rate}` is not limit/period, e.g. 600/1m"))?;
                let count: u32 = count.trim().parse().map_err(|_| format!("`{count}` is not a count"))?;
                let period = human_duration::parse(period.trim())?;
                if count == 0 || period.is_zero() || period / count < Duration::from_micros(1) {
                    return Err(format!("`{rate}` is not a usable rate"));
                }
                Some(RateLimit { limit: count, period, burst: count })
            };
            entries.push((route.to_owned(), limit));
        }
        Ok(Self(entries))
    }
}

impl From<RateLimits> for String {
    fn from(value: RateLimits) -> String {
        value
            .0
            .iter()
            .map(|(route, limit)| match limit {
                None => format!("{route}=off"),
                Some(l) => format!("{route}={}/{}", l.limit, humantime::format_duration(l.period)),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Origins allowed to call the gateway from a browser: `scheme://host[:port]`
/// entries, or `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Origins(Vec<String>);

impl Origins {
    /// Whether any origin is allowed.
    pub fn is_any(&self) -> bool {
        self.0.iter().any(|o| o == "*")
    }

    /// The allowed origins.
    pub fn list(&self) -> &[String] {
        &self.0
    }
}

impl TryFrom<String> for Origins {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let mut origins = Vec::new();
        for origin in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if origin != "*" {
                let url = url::Url::parse(origin).map_err(|_| format!("`{origin}` is not an origin"))?;
                let bare = url.path() == "/" && url.query().is_none() && !origin.ends_with('/');
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || !bare {
                    return Err(format!("`{origin}` is not an origin like https://app.example.com"));
                }
            }
            origins.push(origin.to_owned());
        }
        Ok(Self(origins))
    }
}

impl From<Origins> for String {
    fn from(value: Origins) -> String {
        value.0.join(",")
    }
}

/// Deadlines for particular methods: `package.Service/Method=duration`,
/// comma-separated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MethodTimeouts(Vec<(String, Duration)>);

impl MethodTimeouts {
    /// The deadline for the gRPC path `/package.Service/Method`, if set.
    pub fn get(&self, path: &str) -> Option<Duration> {
        let path = path.trim_start_matches('/');
        self.0.iter().find(|(method, _)| method == path).map(|(_, d)| *d)
    }

    /// Every `package.Service/Method` with its deadline.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Duration)> {
        self.0.iter().map(|(method, d)| (method.as_str(), *d))
    }
}

impl TryFrom<String> for MethodTimeouts {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|entry| {
                let (method, duration) = entry
                    .split_once('=')
                    .ok_or_else(|| format!("`{entry}` is not Service/Method=duration"))?;
                if !method.contains('/') {
                    return Err(format!("`{method}` is not package.Service/Method"));
                }
                Ok((method.trim().to_owned(), human_duration::parse(duration)?))
            })
            .collect::<Result<_, String>>()
            .map(Self)
    }
}

impl From<MethodTimeouts> for String {
    fn from(value: MethodTimeouts) -> String {
        value
            .0
            .iter()
            .map(|(m, d)| format!("{m}={}", humantime::format_duration(*d)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Prefix that isolates one deployment (or one test) on shared servers:
/// lower-case letters, digits and `_`, at most 32 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Namespace(String);

impl Namespace {
    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Namespace {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let ok = !value.is_empty()
            && value.len() <= 32
            && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok { Ok(Self(value)) } else { Err(format!("`{value}` must be 1-32 characters of a-z, 0-9 and _")) }
    }
}

impl From<Namespace> for String {
    fn from(value: Namespace) -> String {
        value.0
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim())
            .map_err(|e| format!("`{text}` is not a duration like 500ms, 30s or 2m: {e}"))
    }
}

mod path_list {
    use std::path::PathBuf;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        let text: Vec<String> = value.iter().map(|p| p.display().to_string()).collect();
        s.serialize_str(&text.join(","))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            List(Vec<String>),
        }
        let items = match Form::deserialize(d)? {
            Form::Text(text) => text.split(',').map(str::to_owned).collect(),
            Form::List(list) => list,
        };
        Ok(items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()).map(PathBuf::from).collect())
    }
}

mod string_list {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &[String], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.join(","))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let paths = super::path_list::deserialize(d)?;
        Ok(paths.into_iter().map(|p| p.to_string_lossy().into_owned()).collect())
    }
}

mod human_duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let text: Vec<String> = value.iter().map(|d| humantime::format_duration(*d).to_string()).collect();
        s.serialize_str(&text.join(","))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            List(Vec<String>),
        }
        let items = match Form::deserialize(d)? {
            Form::Text(text) => text.split(',').map(str::to_owned).collect(),
            Form::List(list) => list,
        };
        items
            .iter()
            .filter(|item| !item.trim().is_empty())
            .map(|item| super::human_duration::parse(item))
            .collect::<Result<_, _>>()
            .map_err(serde::de::Error::custom)
    }
}

/// Renders [`KEYS`] as the environment section of `--help`.
pub fn env_help() -> String {
    let width = KEYS.iter().map(|k| k.env_var().len()).max().unwrap_or(0);
    let mut out = String::from("Configuration (built-in defaults < postmesh.toml < environment < flags):\n");
    out.push_str(&format!(
        "  {:width$}  path of the config file (default: ./postmesh.toml if present)\n",
        "POSTMESH_CONFIG"
    ));
    for key in KEYS {
        out.push_str(&format!("  {:width$}  {} [default: {}]\n", key.env_var(), key.help, key.default));
    }
    out
}

/// [`KEYS`] as the Markdown table of docs/CONFIGURATION.md.
pub fn markdown_table() -> String {
    let mut out = String::from("| variable | file key | default | what it does |\n|---|---|---|---|\n");
    for key in KEYS {
        out.push_str(&format!("| `{}` | `{}` | {} | {} |\n", key.env_var(), key.key, key.default, key.help));
    }
    out
}

/// The keys of a serialized default config; a test keeps [`KEYS`] complete.
pub fn default_keys() -> Vec<String> {
    let value = Figment::from(Serialized::defaults(Config::default()));
    let data: BTreeMap<String, serde_json::Value> = value.extract().unwrap_or_default();
    data.into_keys().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(env: &[(&str, &str)]) -> ConfigSource {
        ConfigSource {
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..ConfigSource::default()
        }
    }

    #[test]
    fn every_field_is_documented() {
        let mut documented: Vec<String> = KEYS.iter().map(|k| k.key.to_owned()).collect();
        documented.sort();
        let mut fields = default_keys();
        fields.sort();
        // Optional keys are absent from the serialized defaults.
        for field in &fields {
            assert!(documented.contains(field), "{field} is missing from KEYS");
        }
        assert!(fields.len() >= 15, "defaults serialized too few keys: {fields:?}");
    }

    #[test]
    fn environment_overrides_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("postmesh.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:1111\"\njobs_max_deliver = 9\n").unwrap();
        let mut src = source(&[("POSTMESH_LISTEN", "127.0.0.1:2222"), ("HOME", "/root")]);
        src.file = Some(file);
        let config = Config::load(&src).unwrap();
        assert_eq!(config.listen.port(), 2222);
        assert_eq!(config.jobs_max_deliver, 9);
        assert_eq!(config.admin_listen.port(), 9090);
    }

    #[test]
    fn flags_override_environment() {
        let mut src = source(&[("POSTMESH_LISTEN", "127.0.0.1:2222")]);
        src.set("listen", "127.0.0.1:3333");
        assert_eq!(Config::load(&src).unwrap().listen.port(), 3333);
    }

    #[test]
    fn bad_url_names_the_variable() {
        let err = Config::load(&source(&[("POSTMESH_DATABASE_URL", "mysql://u:hunter2@db/x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("POSTMESH_DATABASE_URL"), "{err}");
        assert!(err.contains("unsupported scheme `mysql`"), "{err}");
        assert!(!err.contains("hunter2"), "password leaked: {err}");

        let err = Config::load(&source(&[("POSTMESH_REDIS_URL", "not a url")])).unwrap_err();
        assert!(err.to_string().contains("POSTMESH_REDIS_URL"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_variable() {
        let err = Config::load(&source(&[("POSTMESH_JOBS_MAX_DELIVER", "many")])).unwrap_err();
        assert!(err.to_string().contains("POSTMESH_JOBS_MAX_DELIVER"), "{err}");
        let err = Config::load(&source(&[("POSTMESH_JOBS_ACK_WAIT", "30")])).unwrap_err();
        assert!(err.to_string().contains("POSTMESH_JOBS_ACK_WAIT"), "{err}");
        let err = Config::load(&source(&[("POSTMESH_LISTEN", "localhost")])).unwrap_err();
        assert!(err.to_string().contains("POSTMESH_LISTEN"), "{err}");
        let err = Config::load(&source(&[("POSTMESH_LOG_FORMAT", "xml")])).unwrap_err();
        assert!(err.to_string().contains("POSTMESH_LOG_FORMAT"), "{err}");
    }

    #[test]
    fn unknown_file_key_is_refused_but_unknown_env_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("postmesh.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let mut src = source(&[("POSTMESH_GATEWAY_PORT", "tcp://10.0.0.1:8080")]);
        src.file = Some(file.clone());
        let err = Config::load(&src).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");

        std::fs::write(&file, "").unwrap();
        assert!(Config::load(&src).is_ok());
    }

    #[test]
    fn secrets_are_redacted() {
        let config = Config::load(&source(&[
            ("POSTMESH_DATABASE_URL", "postgres://app:hunter2@db:5432/postmesh"),
            ("POSTMESH_REDIS_URL", "redis://:s3cret@cache:6379"),
        ]))
        .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2") && !printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("db:5432"), "{printed}");
        assert_eq!(
            config.database_url.unwrap().expose().password(),
            Some("hunter2"),
            "the real value stays available for connecting"
        );
    }

    #[test]
    fn backoff_list_parses_from_text() {
        let config = Config::load(&source(&[("POSTMESH_JOBS_BACKOFF", "100ms, 2s,1m")])).unwrap();
        assert_eq!(
            config.jobs_backoff,
            vec![Duration::from_millis(100), Duration::from_secs(2), Duration::from_secs(60)]
        );
        let err = Config::load(&source(&[("POSTMESH_JOBS_BACKOFF", "")])).unwrap_err();
        assert!(err.to_string().contains("POSTMESH_JOBS_BACKOFF"), "{err}");
    }

    #[test]
    fn auth_settings_are_checked() {
        let err = Config::load(&source(&[("POSTMESH_AUTH_SERVICE_SECRET", "short")])).unwrap_err();
        assert!(err.to_string().contains("POSTMESH_AUTH_SERVICE_SECRET"), "{err}");
        assert!(!err.to_string().contains("short"), "the secret is not echoed: {err}");
        let err = Config::load(&source(&[("POSTMESH_AUTH_ACCESS_TTL", "5s")])).unwrap_err();
        assert!(err.to_string().contains("POSTMESH_AUTH_ACCESS_TTL"), "{err}");
        let err = Config::load(&source(&[("POSTMESH_ENCRYPTION_KEYS", "k1:tooshort")])).unwrap_err();
        assert!(err.to_string().contains("POSTMESH_ENCRYPTION_KEYS"), "{err}");
        let config = Config::load(&source(&[("POSTMESH_AUTH_KEYS", "/a.pem, /b.pem")])).unwrap();
        assert_eq!(config.auth_keys, vec![PathBuf::from("/a.pem"), PathBuf::from("/b.pem")]);
    }

    #[test]
    fn service_urls_and_method_timeouts_parse() {
        let config = Config::load(&source(&[
            ("POSTMESH_USER_URL", "http://user-0:50051, http://user-1:50051"),
            ("POSTMESH_CLIENT_METHOD_TIMEOUTS", "postmesh.ai.v1.AiService/GenerateContent=60s"),
            ("POSTMESH_CLIENT_BREAKER_FAILURE_RATE", "0.25"),
        ]))
        .unwrap();
        assert_eq!(config.user_url.unwrap().urls().len(), 2);
        assert_eq!(
            config.client_method_timeouts.get("/postmesh.ai.v1.AiService/GenerateContent"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(config.client_breaker_failure_rate, 0.25);
        for (key, value) in [
            ("POSTMESH_USER_URL", "http://ok:1,ftp://bad"),
            ("POSTMESH_CLIENT_METHOD_TIMEOUTS", "NoSlash=1s"),
            ("POSTMESH_CLIENT_BREAKER_FAILURE_RATE", "2"),
            ("POSTMESH_CLIENT_CONCURRENCY", "0"),
        ] {
            let err = Config::load(&source(&[(key, value)])).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn namespace_is_checked() {
        let err = Config::load(&source(&[("POSTMESH_NAMESPACE", "Bad-Name")])).unwrap_err();
        assert!(err.to_string().contains("POSTMESH_NAMESPACE"), "{err}");
    }

    #[test]
    fn help_lists_every_key() {
        let help = env_help();
        for key in KEYS {
            assert!(help.contains(&key.env_var()), "{} missing from help", key.env_var());
        }
    }
}

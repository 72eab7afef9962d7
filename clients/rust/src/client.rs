//! The client: one connection to postmesh through the resilience stack,
//! with the caller's credential on every call, handing out a typed client
//! per service.

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::Endpoint;

use crate::content::{PublishingStatus, WatchPostStatusRequest};
use crate::resilience::{
    self, Breaker, CircuitState, LogObserver, Methods, Settings, StackError, StackService,
};
use crate::{
    AiClient, AnalyticsClient, ContentClient, Error, NotificationClient, Result, SocialClient, UserClient,
    WebhookClient,
};

/// The default deadline of a server stream (`WatchPostStatus`,
/// `StreamNotifications`): long enough to follow a post or a feed, short
/// enough that a forgotten stream ends.
const DEFAULT_STREAM_TIMEOUT: Duration = Duration::from_secs(3600);

/// The methods of the contract, read once per process.
fn methods() -> Arc<Methods> {
    static METHODS: OnceLock<Arc<Methods>> = OnceLock::new();
    METHODS.get_or_init(|| Arc::new(Methods::postmesh())).clone()
}

/// How calls prove who makes them.
#[derive(Clone)]
enum Credential {
    /// `x-api-key: pm_…`, from `UserService/CreateApiKey`.
    ApiKey(HeaderValue),
    /// `authorization: Bearer <access token>`, from Register, Login or
    /// RefreshToken.
    Bearer(HeaderValue),
}

impl Credential {
    fn api_key(key: &str) -> Result<Self> {
        Ok(Self::ApiKey(sensitive(key, "the API key")?))
    }

    fn bearer(token: &str) -> Result<Self> {
        Ok(Self::Bearer(sensitive(&format!("Bearer {token}"), "the access token")?))
    }
}

fn sensitive(value: &str, what: &str) -> Result<HeaderValue> {
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| Error::from(Status::invalid_argument(format!("{what} is not a valid header value"))))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Sets up a [`Client`]: the target, the credential and the stack's
/// settings.
#[must_use]
pub struct ClientBuilder {
    target: String,
    credential: Option<std::result::Result<Credential, Error>>,
    settings: Settings,
    stream_timeout: Duration,
    connect_timeout: Duration,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("target", &self.target)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Calls with an API key (`pm_…`).
    pub fn api_key(mut self, key: impl AsRef<str>) -> Self {
        self.credential = Some(Credential::api_key(key.as_ref()));
        self
    }

    /// Calls with an access token (the `access_token` of a `TokenPair`).
    pub fn token(mut self, token: impl AsRef<str>) -> Self {
        self.credential = Some(Credential::bearer(token.as_ref()));
        self
    }

    /// The deadline of a unary call that sets none (default 10 s). A call
    /// sets its own with `tonic::Request::set_timeout`, up to this.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// The deadline of a server stream that sets none (default 1 hour).
    pub fn stream_timeout(mut self, timeout: Duration) -> Self {
        self.stream_timeout = timeout;
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Every setting of the stack at once: breaker, retries, concurrency.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Connects now: fails with UNAVAILABLE if the target cannot be
    /// reached.
    pub async fn connect(self) -> Result<Client> {
        let endpoint = self.endpoint()?;
        let channel = endpoint.connect().await.map_err(|e| {
            Error::from(Status::unavailable(format!(
                "cannot connect to {}: {}",
                self.target,
                error_chain(&e)
            )))
        })?;
        self.build(channel)
    }

    /// Connects on the first call instead.
    pub fn connect_lazy(self) -> Result<Client> {
        let channel = self.endpoint()?.connect_lazy();
        self.build(channel)
    }

    fn endpoint(&self) -> Result<Endpoint> {
        let invalid = |reason: String| Error::from(Status::invalid_argument(reason));
        let endpoint = Endpoint::from_shared(self.target.clone())
            .map_err(|e| invalid(format!("target {:?} is not a URL: {e}", self.target)))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        if self.target.starts_with("https://") {
            return tls(endpoint).map_err(invalid);
        }
        Ok(endpoint)
    }

    fn build(self, channel: tonic::transport::Channel) -> Result<Client> {
        let credential = self.credential.transpose()?;
        let methods = methods();
        let mut settings = self.settings;
        for path in methods.server_streaming() {
            settings.method_timeouts.entry(path.to_owned()).or_insert(self.stream_timeout);
        }
        let inner = tower::util::MapErr::new(channel, |e: tonic::transport::Error| -> resilience::BoxError {
            e.into()
        });
        let stack = resilience::build(&self.target, inner, &settings, methods, Arc::new(LogObserver))
            .map_err(|e| Error::from(Status::invalid_argument(e.to_string())))?;
        Ok(Client {
            channel: Channel { stack: stack.service, credential },
            breaker: stack.breaker,
            target: Arc::from(self.target),
        })
    }
}

#[cfg(feature = "tls")]
fn tls(endpoint: Endpoint) -> std::result::Result<Endpoint, String> {
    let config = tonic::transport::ClientTlsConfig::new().with_native_roots();
    endpoint.tls_config(config).map_err(|e| format!("TLS settings: {e}"))
}

#[cfg(not(feature = "tls"))]
fn tls(_endpoint: Endpoint) -> std::result::Result<Endpoint, String> {
    Err("https:// targets need the `tls` feature of postmesh-client".into())
}

/// An error and its causes on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut last = message.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        // Wrappers often repeat their cause's text.
        let text = cause.to_string();
        if text != last {
            message.push_str(": ");
            message.push_str(&text);
        }
        last = text;
        source = cause.source();
    }
    message
}

/// A connection to postmesh. Cheap to clone; clones share the connection,
/// the circuit breaker and the concurrency limit.
///
/// ```no_run
/// # async fn run() -> postmesh_client::Result<()> {
/// let client = postmesh_client::Client::builder("http://127.0.0.1:50051").api_key("pm_…").connect().await?;
/// let profile = client.users().get_profile(postmesh_client::user::GetProfileRequest {}).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    breaker: Breaker,
    target: Arc<str>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.target)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `target`, e.g. `http://127.0.0.1:50051` (what
    /// `postmesh dev` listens on).
    pub fn builder(target: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            target: target.into(),
            credential: None,
            settings: Settings::default(),
            stream_timeout: DEFAULT_STREAM_TIMEOUT,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The same connection, calling with `token` (an access token), e.g.
    /// after `Register` or `Login`.
    pub fn with_token(&self, token: &str) -> Result<Self> {
        Ok(self.with_credential(Some(Credential::bearer(token)?)))
    }

    /// The same connection, calling with an API key.
    pub fn with_api_key(&self, key: &str) -> Result<Self> {
        Ok(self.with_credential(Some(Credential::api_key(key)?)))
    }

    fn with_credential(&self, credential: Option<Credential>) -> Self {
        Self { channel: Channel { stack: self.channel.stack.clone(), credential }, ..self.clone() }
    }

    /// Accounts, sign-in, API keys, workspaces.
    pub fn users(&self) -> UserClient {
        UserClient::new(self.channel())
    }

    /// Posts, templates, scheduling and publishing status.
    pub fn content(&self) -> ContentClient {
        ContentClient::new(self.channel())
    }

    /// Connected social accounts and publishing.
    pub fn social(&self) -> SocialClient {
        SocialClient::new(self.channel())
    }

    /// How posts perform.
    pub fn analytics(&self) -> AnalyticsClient {
        AnalyticsClient::new(self.channel())
    }

    /// AI help with writing.
    pub fn ai(&self) -> AiClient {
        AiClient::new(self.channel())
    }

    /// Notifications, also as a live stream.
    pub fn notifications(&self) -> NotificationClient {
        NotificationClient::new(self.channel())
    }

    /// Outgoing webhooks and their deliveries.
    pub fn webhooks(&self) -> WebhookClient {
        WebhookClient::new(self.channel())
    }

    /// The channel itself, for any generated client.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The circuit breaker's state: open means calls fail at once with
    /// UNAVAILABLE until the target has had time to recover.
    pub fn breaker_state(&self) -> CircuitState {
        self.breaker.state()
    }

    /// Follows a post's publishing status (`WatchPostStatus`) until it
    /// settles (Posted, Faulted, SomeFaults or Cancelled) and returns that
    /// status.
    pub async fn wait_until_settled(&self, post_id: &str) -> Result<PublishingStatus> {
        let request = WatchPostStatusRequest { id: post_id.to_owned() };
        let mut updates = self.content().watch_post_status(request).await?.into_inner();
        while let Some(update) = updates.message().await? {
            if let Some(status) = update.status.filter(|s| s.settled) {
                return Ok(status);
            }
        }
        Err(Status::unavailable(format!("the status stream of post {post_id} ended before the post settled"))
            .into())
    }
}

/// The channel every typed client of a [`Client`] calls through: the
/// client's credential, then the resilience stack.
#[derive(Clone)]
pub struct Channel {
    stack: StackService,
    credential: Option<Credential>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").finish_non_exhaustive()
    }
}

impl tower::Service<http::Request<Body>> for Channel {
    type Response = http::Response<Body>;
    type Error = StackError;
    type Future = <StackService as tower::Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), StackError>> {
        self.stack.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // A credential set on the call itself wins.
        let headers = request.headers_mut();
        if !headers.contains_key(http::header::AUTHORIZATION) && !headers.contains_key("x-api-key") {
            match &self.credential {
                Some(Credential::ApiKey(key)) => {
                    headers.insert("x-api-key", key.clone());
                }
                Some(Credential::Bearer(token)) => {
                    headers.insert(http::header::AUTHORIZATION, token.clone());
                }
                None => {}
            }
        }
        self.stack.call(request)
    }
}

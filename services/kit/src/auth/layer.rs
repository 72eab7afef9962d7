//! [`Auth`], the per-process authentication state, and [`AuthLayer`], the
//! tower layer every gRPC server installs. The layer looks up the RPC's
//! rule, authenticates the credential (a JWT verified locally, or an API key
//! resolved through the user service and cached), checks the permission, and
//! hands the handler a [`Caller`] in the request extensions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderMap;
use postmesh_proto::postmesh::user::v1 as pb;
use postmesh_proto::postmesh::user::v1::user_service_client::UserServiceClient;
use tonic::Status;
use tower::{Layer, Service};

use super::keys::{Jwk, KeyRing};
use super::revocation::Revocations;
use super::rules::{MethodRule, MethodRules};
use super::token::{ServiceTokens, TokenSettings, Verifier};
use super::{Caller, CallerKind, Role};
use crate::client::{Clients, MeshChannel};
use crate::config::Config;
use crate::crypto::{CryptoError, sha256_hex};
use crate::kv::Kv;

/// Prefix of every API key.
pub const API_KEY_PREFIX: &str = "pm_";

/// The link to the user service (JWKS, service tokens, API key
/// resolution), through the process's client stack.
#[derive(Clone)]
pub(crate) struct UserLink {
    clients: Clients,
}

impl UserLink {
    fn new(clients: Clients) -> Self {
        Self { clients }
    }

    async fn client(&self) -> Result<UserServiceClient<MeshChannel>, Status> {
        Ok(UserServiceClient::new(self.clients.channel("user").await?))
    }

    pub(crate) async fn jwks(&self) -> Result<Vec<Jwk>, Status> {
        let response = self.client().await?.get_jwks(pb::GetJwksRequest {}).await?.into_inner();
        Ok(response
            .keys
            .into_iter()
            .map(|k| Jwk { kty: k.kty, crv: k.crv, x: k.x, kid: k.kid, use_: k.r#use, alg: k.alg })
            .collect())
    }

    pub(crate) async fn issue_service_token(
        &self,
        name: &str,
        secret: &str,
    ) -> Result<(String, Duration), Status> {
        if secret.is_empty() {
            return Err(Status::unavailable("service tokens need POSTMESH_AUTH_SERVICE_SECRET"));
        }
        let request = pb::IssueServiceTokenRequest {
            service_name: name.to_owned(),
            service_secret: secret.to_owned(),
            scopes: vec![],
        };
        let response = self.client().await?.issue_service_token(request).await?.into_inner();
        let ttl = response
            .expires_at
            .map(|at| Duration::from_secs((at.seconds - chrono::Utc::now().timestamp()).max(1) as u64))
            .unwrap_or(Duration::from_secs(60));
        Ok((response.access_token, ttl))
    }

    async fn authenticate_api_key(&self, key: &str) -> Result<(Caller, Duration), Status> {
        // The client stack presents this process's service token.
        let request = tonic::Request::new(pb::AuthenticateApiKeyRequest { api_key: key.to_owned() });
        let response = self.client().await?.authenticate_api_key(request).await?.into_inner();
        let caller =
            response.caller.ok_or_else(|| Status::internal("user service answered without a caller"))?;
        let ttl = response
            .cache_ttl
            .map(|d| Duration::from_secs(d.seconds.max(0) as u64))
            .unwrap_or(Duration::from_secs(30));
        Ok((caller_from_proto(caller), ttl))
    }
}

/// The kit caller for a `postmesh.user.v1.Caller`.
pub fn caller_from_proto(caller: pb::Caller) -> Caller {
    let kind = match pb::AuthMethod::try_from(caller.auth_method) {
        Ok(pb::AuthMethod::ServiceToken) => CallerKind::Service { name: caller.service_name },
        Ok(pb::AuthMethod::ApiKey) => CallerKind::ApiKey { api_key_id: caller.api_key_id },
        _ => CallerKind::User { session_id: caller.session_id },
    };
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    Caller {
        kind,
        user_id: non_empty(caller.user_id),
        workspace_id: non_empty(caller.workspace_id),
        roles: caller.roles.into_iter().filter_map(Role::from_proto).collect(),
        permissions: caller.scopes.into_iter().collect(),
    }
}

/// Resolves API keys through the user service, caching the caller in the
/// key-value store for the TTL the user service grants. Revoking a key
/// clears the cache entry and records the revocation.
pub struct ApiKeyResolver {
    kv: Kv,
    link: UserLink,
    revocations: Revocations,
}

impl ApiKeyResolver {
    /// Key-value entry holding the resolved caller of the API key whose
    /// SHA-256 is `key_hash`.
    pub fn cache_key(key_hash: &str) -> String {
        format!("auth:apikey:{key_hash}")
    }

    async fn resolve(&self, key: &str) -> Result<Caller, Status> {
        let invalid = || Status::unauthenticated("invalid API key");
        if !key.starts_with(API_KEY_PREFIX) || key.len() > 128 {
            return Err(invalid());
        }
        let cache_key = Self::cache_key(&sha256_hex(key.as_bytes()));
        if let Ok(Some(cached)) = self.kv.get(&cache_key).await
            && let Ok(caller) = serde_json::from_slice::<Caller>(&cached)
        {
            if let CallerKind::ApiKey { api_key_id } = &caller.kind
                && self.revocations.is_api_key_revoked(api_key_id).await?
            {
                return Err(invalid());
            }
            return Ok(caller);
        }
        let (caller, ttl) = self.link.authenticate_api_key(key).await?;
        if let Ok(json) = serde_json::to_vec(&caller) {
            // A cache failure only costs a lookup next time.
            let _ = self.kv.set(&cache_key, &json, Some(ttl)).await;
        }
        Ok(caller)
    }
}

/// Authentication state of one process.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<AuthInner>,
}

struct AuthInner {
    rules: MethodRules,
    settings: TokenSettings,
    ring: Option<Arc<KeyRing>>,
    verifier: Verifier,
    revocations: Revocations,
    api_keys: ApiKeyResolver,
    service_tokens: Arc<ServiceTokens>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("holds_keys", &self.inner.ring.is_some()).finish()
    }
}

impl Auth {
    /// Sets up authentication for a process named `service_name`. With
    /// `holds_keys` (the user service is in this process) it loads the key
    /// ring; otherwise keys come from the user service's JWKS.
    pub fn new(
        config: &Config,
        kv: Kv,
        clients: Clients,
        service_name: &str,
        holds_keys: bool,
    ) -> Result<Self, CryptoError> {
        let settings = TokenSettings::from_config(config);
        let revocations = Revocations::new(kv.clone(), settings.longest_token_ttl());
        let link = UserLink::new(clients.clone());
        let ring = if holds_keys {
            Some(Arc::new(KeyRing::load(&config.auth_keys, &config.data_dir)?))
        } else {
            None
        };
        let verifier = Verifier::new(settings.clone(), ring.as_deref(), link.clone(), revocations.clone());
        let service_tokens = Arc::new(match &ring {
            Some(ring) => ServiceTokens::local(service_name.to_owned(), ring.clone(), settings.clone()),
            None => ServiceTokens::remote(
                service_name.to_owned(),
                link.clone(),
                config.auth_service_secret.as_ref().map(|s| s.expose().clone()).unwrap_or_default(),
            ),
        });
        clients.set_service_tokens(service_tokens.clone());
        let api_keys = ApiKeyResolver { kv, link, revocations: revocations.clone() };
        Ok(Self {
            inner: Arc::new(AuthInner {
                rules: MethodRules::postmesh(),
                settings,
                ring,
                verifier,
                revocations,
                api_keys,
                service_tokens,
            }),
        })
    }

    /// The key ring, when this process signs tokens.
    pub fn key_ring(&self) -> Option<&Arc<KeyRing>> {
        self.inner.ring.as_ref()
    }

    /// Issuer, audience and lifetimes.
    pub fn settings(&self) -> &TokenSettings {
        &self.inner.settings
    }

    /// The revocation list.
    pub fn revocations(&self) -> &Revocations {
        &self.inner.revocations
    }

    /// Tokens this process presents to other services.
    pub fn service_tokens(&self) -> &ServiceTokens {
        &self.inner.service_tokens
    }

    /// The token verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.inner.verifier
    }

    /// The access rules of the contract.
    pub fn rules(&self) -> &MethodRules {
        &self.inner.rules
    }

    /// The layer that enforces all of this on a gRPC server.
    pub fn layer(&self) -> AuthLayer {
        AuthLayer { auth: self.clone() }
    }

    /// The caller presenting `headers`, or `None` when they carry no
    /// credential.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Caller>, Status> {
        match credential(headers)? {
            None => Ok(None),
            Some(Credential::ApiKey(key)) => self.inner.api_keys.resolve(&key).await.map(Some),
            Some(Credential::Bearer(token)) => Ok(Some(self.inner.verifier.verify(&token).await?.caller())),
        }
    }

    /// Applies `rule` to the credential in `headers`.
    pub async fn admit(&self, rule: &MethodRule, headers: &HeaderMap) -> Result<Option<Caller>, Status> {
        if *rule == MethodRule::Public {
            // A public RPC works without a credential; a valid one is still
            // passed on (the gateway's service token, say), a bad one ignored.
            return Ok(self.authenticate(headers).await.ok().flatten());
        }
        let caller = self.authenticate(headers).await?.ok_or_else(|| {
            Status::unauthenticated("sign in first: send `authorization: Bearer <token>` or `x-api-key`")
        })?;
        match rule {
            MethodRule::Internal if !caller.is_service() => {
                Err(Status::permission_denied("only postmesh services may call this RPC"))
            }
            MethodRule::Authenticated { permission: Some(permission) } if !caller.can(permission) => {
                Err(Status::permission_denied(format!("this needs the `{permission}` permission")))
            }
            _ => Ok(Some(caller)),
        }
    }
}

/// The credential a request presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `authorization: Bearer <jwt>`.
    Bearer(String),
    /// `x-api-key: pm_…` or `authorization: Bearer pm_…`.
    ApiKey(String),
}

/// The credential in `headers`, `None` when there is none; UNAUTHENTICATED
/// when the `authorization` header is malformed.
pub fn credential(headers: &HeaderMap) -> Result<Option<Credential>, Status> {
    if let Some(value) = headers.get("x-api-key") {
        let key = value.to_str().map_err(|_| Status::unauthenticated("invalid API key"))?.trim();
        return Ok(Some(Credential::ApiKey(key.to_owned())));
    }
    let Some(value) = headers.get(http::header::AUTHORIZATION) else { return Ok(None) };
    let value = value.to_str().map_err(|_| Status::unauthenticated("malformed authorization header"))?;
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Status::unauthenticated("authorization must be `Bearer <token>`"));
    }
    let token = token.trim();
    if token.starts_with(API_KEY_PREFIX) {
        Ok(Some(Credential::ApiKey(token.to_owned())))
    } else {
        Ok(Some(Credential::Bearer(token.to_owned())))
    }
}

/// Enforces the contract's access rules on a gRPC server.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Auth,
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, auth: self.auth.clone() }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Auth,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The readied service handles this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let rule = auth.rules().rule(request.uri().path());
            match auth.admit(&rule, request.headers()).await {
                Ok(Some(caller)) => {
                    request.extensions_mut().insert(caller);
                }
                Ok(None) => {}
                Err(status) => return Ok(status.into_http()),
            }
            inner.call(request).await
        })
    }
}

//! Who is calling through the gateway. A Bearer JWT is verified here
//! against the user service's keys (signature, claims, revocation), an API
//! key is checked by the user service; either way the user service answers
//! with a short-lived internal token, and only that token travels on to
//! the services. The answer is cached per credential for at most
//! [`CACHE_FOR`]; every cache hit still consults the revocation list, so a
//! revoked session or key stops working at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use postmesh_kit::auth::{Auth, Claims, Credential, TokenKind, credential};
use postmesh_kit::client::{Clients, MeshChannel};
use postmesh_kit::crypto::sha256;
use postmesh_proto::postmesh::user::v1 as pb;
use postmesh_proto::postmesh::user::v1::user_service_client::UserServiceClient;
use tokio::time::Instant;
use tonic::Status;

/// Longest an exchanged internal token is reused (role changes show
/// within this).
pub const CACHE_FOR: Duration = Duration::from_secs(30);
/// Internal tokens are dropped from the cache this long before they expire.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// Credentials remembered at once; beyond it the cache starts over.
const MAX_CACHED: usize = 10_000;

/// An authenticated caller, ready to forward.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `Bearer <internal token>` for the `authorization` metadata.
    pub authorization: HeaderValue,
    /// Whose rate-limit budget the request spends (`key:<id>`, `user:<id>`).
    pub principal: String,
}

struct Cached {
    identity: Identity,
    /// The access token's claims, for the revocation check on a hit.
    claims: Option<Claims>,
    /// The API key's id, for the revocation check on a hit.
    api_key_id: Option<String>,
    valid_until: Instant,
}

/// Authenticates gateway callers.
pub struct Identities {
    auth: Auth,
    clients: Clients,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

impl Identities {
    /// Authenticates with `auth`'s verifier and revocation list, exchanging
    /// credentials at the user service through `clients`.
    pub fn new(auth: Auth, clients: Clients) -> Self {
        Self { auth, clients, cache: Mutex::new(HashMap::new()) }
    }

    /// The caller presenting `headers`; `None` without a credential,
    /// UNAUTHENTICATED for a bad one.
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Option<Identity>, Status> {
        let Some(presented) = credential(headers)? else { return Ok(None) };
        let secret = match &presented {
            Credential::Bearer(token) => token,
            Credential::ApiKey(key) => key,
        };
        let cache_key = sha256(secret.as_bytes());
        if let Some(identity) = self.cached(&cache_key).await? {
            return Ok(Some(identity));
        }
        let fresh = match presented {
            Credential::Bearer(token) => self.exchange_access_token(&token).await?,
            Credential::ApiKey(key) => self.authenticate_api_key(&key).await?,
        };
        let identity = fresh.identity.clone();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, c| c.valid_until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(cache_key, fresh);
        Ok(Some(identity))
    }

    async fn cached(&self, cache_key: &[u8; 32]) -> Result<Option<Identity>, Status> {
        let (identity, claims, api_key_id) = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(cache_key) {
                Some(c) if c.valid_until > Instant::now() => {
                    (c.identity.clone(), c.claims.clone(), c.api_key_id.clone())
                }
                _ => return Ok(None),
            }
        };
        let revocations = self.auth.revocations();
        let revoked = match (&claims, &api_key_id) {
            (Some(claims), _) => revocations.check(claims).await.is_err(),
            (None, Some(id)) => revocations.is_api_key_revoked(id).await?,
            (None, None) => false,
        };
        if revoked {
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(cache_key);
            return Err(Status::unauthenticated(if claims.is_some() {
                "invalid token: revoked"
            } else {
                "invalid API key"
            }));
        }
        Ok(Some(identity))
    }

    async fn user_service(&self) -> Result<UserServiceClient<MeshChannel>, Status> {
        Ok(UserServiceClient::new(self.clients.channel("user").await?))
    }

    async fn exchange_access_token(&self, token: &str) -> Result<Cached, Status> {
        // Bad tokens are refused here, without a call.
        let claims = self.auth.verifier().verify(token).await?;
        if claims.typ != TokenKind::Access {
            return Err(Status::unauthenticated("invalid token: not an access token"));
        }
        let request = pb::ExchangeAccessTokenRequest { access_token: token.to_owned() };
        let response = self.user_service().await?.exchange_access_token(request).await?.into_inner();
        let access_left = Duration::from_secs(claims.exp.saturating_sub(now_secs()));
        let ttl = remaining(response.internal_token_expires_at.as_ref()).min(access_left);
        let principal = format!("user:{}", claims.sub);
        Ok(Cached {
            identity: Identity { authorization: bearer(&response.internal_token)?, principal },
            claims: Some(claims),
            api_key_id: None,
            valid_until: Instant::now() + ttl,
        })
    }

    async fn authenticate_api_key(&self, key: &str) -> Result<Cached, Status> {
        if !key.starts_with(postmesh_kit::auth::API_KEY_PREFIX) || key.len() > 128 {
            return Err(Status::unauthenticated("invalid API key"));
        }
        let request = pb::AuthenticateApiKeyRequest { api_key: key.to_owned() };
        let response = self.user_service().await?.authenticate_api_key(request).await?.into_inner();
        let caller = response.caller.unwrap_or_default();
        let granted =
            response.cache_ttl.map(|d| Duration::from_secs(d.seconds.max(0) as u64)).unwrap_or(CACHE_FOR);
        let ttl = remaining(response.internal_token_expires_at.as_ref()).min(granted);
        Ok(Cached {
            identity: Identity {
                authorization: bearer(&response.internal_token)?,
                principal: format!("key:{}", caller.api_key_id),
            },
            claims: None,
            api_key_id: Some(caller.api_key_id),
            valid_until: Instant::now() + ttl,
        })
    }
}

fn bearer(token: &str) -> Result<HeaderValue, Status> {
    HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| Status::internal("the user service issued a token that is not a header value"))
}

fn now_secs() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

/// How long an internal token may be reused: until shortly before it
/// expires, and never longer than [`CACHE_FOR`].
fn remaining(expires_at: Option<&prost_types::Timestamp>) -> Duration {
    let left = expires_at
        .map(
            |at| Duration::from_secs(at.seconds.saturating_sub(chrono::Utc::now().timestamp()).max(0) as u64),
        )
        .unwrap_or_default();
    left.saturating_sub(EXPIRY_MARGIN).min(CACHE_FOR)
}

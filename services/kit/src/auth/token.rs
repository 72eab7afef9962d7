//! JWTs: what they carry ([`Claims`]), how they are signed (the user
//! service's [`KeyRing`]) and verified ([`Verifier`]: EdDSA only, `kid`
//! required, issuer, audience, expiry and not-before enforced, then the
//! revocation list), and how services get tokens of their own
//! ([`ServiceTokens`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};
use tonic::Status;

use super::keys::{Jwk, KeyRing};
use super::layer::UserLink;
use super::revocation::Revocations;
use super::{Caller, CallerKind, PERMISSIONS, Role, permissions_of};
use crate::config::Config;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;
/// An unknown `kid` triggers at most one JWKS refresh per this interval.
const JWKS_REFRESH_MIN: Duration = Duration::from_secs(10);
/// Tokens whose signature was checked and remembered at once; past it the
/// memory starts over. Callers repeat tokens (a session's access token, a
/// service token, the gateway's internal tokens), and an EdDSA check costs
/// far more than the call it guards.
const VERIFIED_MAX: usize = 10_000;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Issued to a user at login; 15 minutes by default.
    Access,
    /// Short-lived, carrying an API-key caller through the mesh.
    Internal,
    /// Identifies a postmesh service calling another.
    Service,
}

/// Claims of every postmesh token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Subject: a user id, or `service:<name>`.
    pub sub: String,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// Not before (Unix seconds).
    pub nbf: u64,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Issued at in milliseconds, compared with revocation cut-offs.
    pub iat_ms: i64,
    /// Token id.
    pub jti: String,
    /// What the token is for.
    pub typ: TokenKind,
    /// Workspace the token acts in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws: Option<String>,
    /// Roles in that workspace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// Narrowed permissions (API keys, services); empty = the roles' own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Login session, for user tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// API key id, for internal tokens of API-key callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub akid: Option<String>,
}

impl Claims {
    /// Claims for `sub` of `kind`, valid from now for `ttl`.
    pub fn new(settings: &TokenSettings, kind: TokenKind, sub: impl Into<String>, ttl: Duration) -> Self {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let now = (now_ms / 1000) as u64;
        Self {
            iss: settings.issuer.clone(),
            aud: settings.audience.clone(),
            sub: sub.into(),
            exp: now + ttl.as_secs(),
            nbf: now,
            iat: now,
            iat_ms: now_ms,
            jti: uuid::Uuid::now_v7().to_string(),
            typ: kind,
            ws: None,
            roles: Vec::new(),
            scopes: Vec::new(),
            sid: None,
            akid: None,
        }
    }

    /// The caller these claims describe.
    pub fn caller(&self) -> Caller {
        let role_permissions = permissions_of(&self.roles);
        let narrowed = |scopes: &[String]| -> BTreeSet<String> {
            scopes.iter().filter(|s| role_permissions.contains(*s)).cloned().collect()
        };
        let (kind, user_id, permissions) = match self.typ {
            TokenKind::Service => {
                let name = self.sub.strip_prefix("service:").unwrap_or(&self.sub).to_owned();
                (CallerKind::Service { name }, None, self.scopes.iter().cloned().collect())
            }
            TokenKind::Internal if self.akid.is_some() => (
                CallerKind::ApiKey { api_key_id: self.akid.clone().unwrap_or_default() },
                Some(self.sub.clone()),
                narrowed(&self.scopes),
            ),
            TokenKind::Access | TokenKind::Internal => {
                let permissions =
                    if self.scopes.is_empty() { role_permissions } else { narrowed(&self.scopes) };
                (
                    CallerKind::User { session_id: self.sid.clone().unwrap_or_default() },
                    Some(self.sub.clone()),
                    permissions,
                )
            }
        };
        Caller { kind, user_id, workspace_id: self.ws.clone(), roles: self.roles.clone(), permissions }
    }

    /// The instant the token expires.
    pub fn expires_at(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(self.exp as i64, 0).unwrap_or_default()
    }
}

/// Issuer, audience and lifetimes.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `iss` of issued tokens, and the only one accepted.
    pub issuer: String,
    /// `aud` of issued tokens, and the only one accepted.
    pub audience: String,
    /// Access token lifetime.
    pub access_ttl: Duration,
    /// Refresh token lifetime.
    pub refresh_ttl: Duration,
    /// Lifetime of internal tokens for API-key callers.
    pub internal_ttl: Duration,
    /// Lifetime of service tokens.
    pub service_ttl: Duration,
}

impl TokenSettings {
    /// From the process configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            issuer: config.auth_issuer.clone(),
            audience: config.auth_audience.clone(),
            access_ttl: config.auth_access_ttl,
            refresh_ttl: config.auth_refresh_ttl,
            internal_ttl: Duration::from_secs(300),
            service_ttl: Duration::from_secs(600),
        }
    }

    /// The longest any token lives (how long revocations must be kept).
    pub fn longest_token_ttl(&self) -> Duration {
        self.access_ttl.max(self.internal_ttl).max(self.service_ttl) + Duration::from_secs(LEEWAY_SECS)
    }
}

impl KeyRing {
    /// Signs `claims` with the current key.
    pub fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.signing_kid().to_owned());
        jsonwebtoken::encode(&header, claims, self.encoding_key())
            .expect("signing with a loaded Ed25519 key works")
    }
}

/// Verifies tokens: signature with a known key, claims, revocation.
/// Signature and claims of a token are checked once and remembered (by the
/// token's SHA-256) until it expires; expiry and revocation are checked on
/// every call.
pub struct Verifier {
    settings: TokenSettings,
    keys: VerifierKeys,
    revocations: Revocations,
    verified: std::sync::Mutex<HashMap<[u8; 32], Claims>>,
}

enum VerifierKeys {
    /// This process holds the key ring.
    Local(HashMap<String, DecodingKey>),
    /// Keys come from the user service's JWKS, cached by `kid`.
    Remote { link: UserLink, cache: RwLock<HashMap<String, DecodingKey>>, last_fetch: Mutex<Option<Instant>> },
}

impl Verifier {
    /// A verifier over the local key ring, or the user service's JWKS.
    pub(crate) fn new(
        settings: TokenSettings,
        keys: Option<&KeyRing>,
        link: UserLink,
        revocations: Revocations,
    ) -> Self {
        let keys = match keys {
            Some(ring) => VerifierKeys::Local(decoding_keys(ring.jwks())),
            None => VerifierKeys::Remote {
                link,
                cache: RwLock::new(HashMap::new()),
                last_fetch: Mutex::new(None),
            },
        };
        Self { settings, keys, revocations, verified: std::sync::Mutex::new(HashMap::new()) }
    }

    /// The claims of a valid, unrevoked token; UNAUTHENTICATED otherwise,
    /// with a reason that reveals nothing secret.
    pub async fn verify(&self, token: &str) -> Result<Claims, Status> {
        let claims = self.verify_signature_and_claims(token).await?;
        self.revocations.check(&claims).await?;
        Ok(claims)
    }

    /// Signature and claims only (no revocation lookup).
    pub async fn verify_signature_and_claims(&self, token: &str) -> Result<Claims, Status> {
        let digest = crate::crypto::sha256(token.as_bytes());
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        if let Some(claims) = self.verified.lock().unwrap_or_else(|e| e.into_inner()).get(&digest)
            && claims.exp + LEEWAY_SECS > now
        {
            return Ok(claims.clone());
        }
        let claims = self.check_signature_and_claims(token).await?;
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_MAX {
            verified.retain(|_, c| c.exp + LEEWAY_SECS > now);
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
        }
        verified.insert(digest, claims.clone());
        Ok(claims)
    }

    async fn check_signature_and_claims(&self, token: &str) -> Result<Claims, Status> {
        let invalid = |reason: &str| Status::unauthenticated(format!("invalid token: {reason}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(invalid("unsupported algorithm"));
        }
        let kid = header.kid.ok_or_else(|| invalid("no key id"))?;
        let key = self.key(&kid).await?.ok_or_else(|| invalid("unknown key id"))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|err| {
            use jsonwebtoken::errors::ErrorKind;
            match err.kind() {
                ErrorKind::ExpiredSignature => invalid("expired"),
                ErrorKind::ImmatureSignature => invalid("not valid yet"),
                ErrorKind::InvalidAudience => invalid("wrong audience"),
                ErrorKind::InvalidIssuer => invalid("wrong issuer"),
                ErrorKind::InvalidSignature => invalid("bad signature"),
                _ => invalid("malformed"),
            }
        })?;
        Ok(data.claims)
    }

    async fn key(&self, kid: &str) -> Result<Option<DecodingKey>, Status> {
        match &self.keys {
            VerifierKeys::Local(keys) => Ok(keys.get(kid).cloned()),
            VerifierKeys::Remote { link, cache, last_fetch } => {
                if let Some(key) = cache.read().await.get(kid) {
                    return Ok(Some(key.clone()));
                }
                // Unknown kid: maybe a rotation. Refresh, but not more often
                // than JWKS_REFRESH_MIN whatever tokens arrive.
                let mut last = last_fetch.lock().await;
                if last.is_some_and(|at| at.elapsed() < JWKS_REFRESH_MIN) {
                    return Ok(cache.read().await.get(kid).cloned());
                }
                *last = Some(Instant::now());
                let jwks = link.jwks().await?;
                let fresh = decoding_keys(&jwks);
                let found = fresh.get(kid).cloned();
                let mut keys = cache.write().await;
                if keys.keys().any(|known| !fresh.contains_key(known)) {
                    // A key was withdrawn: what it signed must be checked
                    // again (and now fail).
                    self.verified.lock().unwrap_or_else(|e| e.into_inner()).clear();
                }
                *keys = fresh;
                Ok(found)
            }
        }
    }
}

fn decoding_keys(jwks: &[Jwk]) -> HashMap<String, DecodingKey> {
    jwks.iter().filter_map(|jwk| Some((jwk.kid.clone(), jwk.decoding_key()?))).collect()
}

/// Tokens this process presents when it calls other services: minted
/// locally when the process holds the key ring, otherwise issued by the
/// user service in exchange for the shared service secret. Cached and
/// renewed at 80 % of their life.
pub struct ServiceTokens {
    name: String,
    source: ServiceTokenSource,
    cached: Mutex<Option<(String, Instant)>>,
}

enum ServiceTokenSource {
    Local { ring: Arc<KeyRing>, settings: TokenSettings },
    Remote { link: UserLink, secret: String },
}

impl ServiceTokens {
    pub(crate) fn local(name: String, ring: Arc<KeyRing>, settings: TokenSettings) -> Self {
        Self { name, source: ServiceTokenSource::Local { ring, settings }, cached: Mutex::new(None) }
    }

    pub(crate) fn remote(name: String, link: UserLink, secret: String) -> Self {
        Self { name, source: ServiceTokenSource::Remote { link, secret }, cached: Mutex::new(None) }
    }

    /// Mints a service token for `name` (the user service uses this for
    /// `IssueServiceToken`).
    pub fn mint(ring: &KeyRing, settings: &TokenSettings, name: &str, scopes: &[String]) -> (String, Claims) {
        let mut claims =
            Claims::new(settings, TokenKind::Service, format!("service:{name}"), settings.service_ttl);
        claims.scopes = if scopes.is_empty() {
            PERMISSIONS.iter().map(|p| p.name.to_owned()).collect()
        } else {
            scopes.to_vec()
        };
        (ring.sign(&claims), claims)
    }

    /// A valid token for this service.
    pub async fn token(&self) -> Result<String, Status> {
        let mut cached = self.cached.lock().await;
        if let Some((token, renew_at)) = cached.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let (token, ttl) = match &self.source {
            ServiceTokenSource::Local { ring, settings } => {
                let (token, _) = Self::mint(ring, settings, &self.name, &[]);
                (token, settings.service_ttl)
            }
            ServiceTokenSource::Remote { link, secret } => {
                link.issue_service_token(&self.name, secret).await?
            }
        };
        *cached = Some((token.clone(), Instant::now() + ttl.mul_f32(0.8)));
        Ok(token)
    }
}

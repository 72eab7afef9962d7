//! The revocation list, kept in the key-value store so every process sees
//! a revocation at once: a logged-out session, a revoked API key, or a user
//! whose tokens issued before a moment (deletion, role change) must stop
//! working. Entries live as long as the longest token could.

use std::time::Duration;

use tonic::Status;

use super::token::{Claims, TokenKind};
use crate::kv::Kv;

/// Revocations in the key-value store.
#[derive(Clone, Debug)]
pub struct Revocations {
    kv: Kv,
    keep_for: Duration,
}

/// Cut-off meaning "every token, whenever issued".
const FOREVER: i64 = i64::MAX;

impl Revocations {
    /// Revocations kept for `keep_for` (the longest token lifetime).
    pub fn new(kv: Kv, keep_for: Duration) -> Self {
        Self { kv, keep_for }
    }

    fn session_key(session_id: &str) -> String {
        format!("auth:rv:s:{session_id}")
    }

    fn api_key_key(api_key_id: &str) -> String {
        format!("auth:rv:k:{api_key_id}")
    }

    fn user_key(user_id: &str) -> String {
        format!("auth:rv:u:{user_id}")
    }

    async fn store(&self, key: String, cutoff_ms: i64) -> Result<(), Status> {
        self.kv
            .set(&key, cutoff_ms.to_string().as_bytes(), Some(self.keep_for))
            .await
            .map_err(|e| Status::unavailable(format!("cannot record the revocation: {e}")))
    }

    /// Every token of this login session stops working.
    pub async fn revoke_session(&self, session_id: &str) -> Result<(), Status> {
        self.store(Self::session_key(session_id), FOREVER).await
    }

    /// Every token and cached caller of this API key stops working.
    pub async fn revoke_api_key(&self, api_key_id: &str) -> Result<(), Status> {
        self.store(Self::api_key_key(api_key_id), FOREVER).await
    }

    /// Every token of this user issued until now stops working; tokens
    /// issued later (after a role change, say) work.
    pub async fn revoke_user_tokens(&self, user_id: &str) -> Result<(), Status> {
        self.store(Self::user_key(user_id), chrono::Utc::now().timestamp_millis()).await
    }

    /// UNAUTHENTICATED when the token is revoked.
    pub async fn check(&self, claims: &Claims) -> Result<(), Status> {
        let mut keys = Vec::with_capacity(3);
        if claims.typ != TokenKind::Service {
            keys.push(Self::user_key(&claims.sub));
        }
        if let Some(sid) = &claims.sid {
            keys.push(Self::session_key(sid));
        }
        if let Some(akid) = &claims.akid {
            keys.push(Self::api_key_key(akid));
        }
        if keys.is_empty() {
            return Ok(());
        }
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let cutoffs = self
            .kv
            .get_many(&refs)
            .await
            .map_err(|e| Status::unavailable(format!("cannot check revocations: {e}")))?;
        let revoked = cutoffs.iter().flatten().any(|value| {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|cutoff| claims.iat_ms <= cutoff)
        });
        if revoked { Err(Status::unauthenticated("invalid token: revoked")) } else { Ok(()) }
    }

    /// Whether an API key has been revoked (for callers served from cache).
    pub async fn is_api_key_revoked(&self, api_key_id: &str) -> Result<bool, Status> {
        let value = self
            .kv
            .get(&Self::api_key_key(api_key_id))
            .await
            .map_err(|e| Status::unavailable(format!("cannot check revocations: {e}")))?;
        Ok(value.is_some())
    }
}

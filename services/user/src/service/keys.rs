//! API keys, and the credential exchanges other services rely on:
//! resolving an API key, exchanging an access token, issuing service tokens.

use chrono::{DateTime, Utc};
use postmesh_kit::auth::{ApiKeyResolver, Caller, Claims, Role, TokenKind};
use postmesh_kit::crypto::sha256_hex;
use postmesh_kit::error::{ApiError, Violations};
use postmesh_proto::postmesh::user::v1 as pb;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, Set,
};

use super::*;
use crate::domain::{self, NewSecret};
use crate::store::api_keys;

impl Users {
    pub async fn create_api_key(
        &self,
        caller: &Caller,
        name: &str,
        scopes: &[String],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(api_keys::Model, String), ApiError> {
        let (user_id, _) = self.session_user(caller)?;
        let workspace_id = caller.workspace_id()?.to_owned();
        let mut violations = Violations::new();
        let name = violations.check("name", domain::name(name));
        if scopes.is_empty() {
            violations.add("scopes", "name at least one permission, e.g. posts:read");
        }
        for (index, scope) in scopes.iter().enumerate() {
            if !postmesh_kit::auth::is_permission(scope) {
                violations.add(format!("scopes[{index}]"), format!("{scope} is not a permission"));
            }
        }
        let expires_at = expires_at.unwrap_or_else(|| now() + API_KEY_DEFAULT_TTL);
        if expires_at <= now() {
            violations.add("expires_at", "must be in the future");
        } else if expires_at > now() + API_KEY_MAX_TTL {
            violations.add("expires_at", "must be at most 366 days away");
        }
        violations.finish()?;
        if let Some(scope) = scopes.iter().find(|s| !caller.can(s)) {
            return Err(ApiError::PermissionDenied(format!(
                "your role does not grant {scope}, so no key of yours can"
            )));
        }
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        let secret = NewSecret::api_key();
        let key = api_keys::ActiveModel {
            id: Set(new_id()),
            user_id: Set(user_id.to_owned()),
            workspace_id: Set(workspace_id),
            name: Set(name.expect("checked")),
            prefix: Set(domain::api_key_prefix(&secret.secret)),
            key_hash: Set(secret.hash),
            scopes: Set(scopes.join(" ")),
            created_at: Set(now()),
            expires_at: Set(expires_at),
            last_used_at: Set(None),
            revoked_at: Set(None),
        }
        .insert(self.db())
        .await?;
        Ok((key, secret.secret))
    }

    pub async fn list_api_keys(
        &self,
        caller: &Caller,
        state: Option<pb::ApiKeyState>,
        page: &Page,
    ) -> Result<Vec<api_keys::Model>, ApiError> {
        let (user_id, _) = self.session_user(caller)?;
        let mut query = api_keys::Entity::find()
            .filter(api_keys::Column::UserId.eq(user_id))
            .filter(api_keys::Column::WorkspaceId.eq(caller.workspace_id()?))
            .order_by_desc(api_keys::Column::Id);
        if let Some(after) = &page.after {
            query = query.filter(api_keys::Column::Id.lt(after.as_str()));
        }
        let keys = query.all(self.db()).await?;
        let filtered: Vec<api_keys::Model> = keys
            .into_iter()
            .filter(|k| state.is_none_or(|s| api_key_state(k) == s))
            .take(page.size as usize)
            .collect();
        Ok(filtered)
    }

    pub async fn revoke_api_key(&self, caller: &Caller, id: &str) -> Result<api_keys::Model, ApiError> {
        if id.is_empty() {
            return Err(ApiError::invalid("id", "is required"));
        }
        let (user_id, _) = self.session_user(caller)?;
        let key = api_keys::Entity::find_by_id(id.to_owned())
            .one(self.db())
            .await?
            .filter(|k| Some(k.workspace_id.as_str()) == caller.workspace_id.as_deref())
            .ok_or_else(|| ApiError::NotFound(format!("API key {id} not found")))?;
        if key.user_id != user_id && caller.top_role() != Some(Role::Admin) {
            return Err(ApiError::NotFound(format!("API key {id} not found")));
        }
        if key.revoked_at.is_some() {
            return Ok(key);
        }
        let txn = self.begin().await?;
        let mut model: api_keys::ActiveModel = key.clone().into();
        model.revoked_at = Set(Some(now()));
        let key = model.update(&txn).await?;
        self.emit_key_revoked(&txn, &key, pb::ApiKeyRevocationReason::Revoked).await?;
        self.commit(txn).await?;
        self.forget_api_key(&key).await?;
        Ok(key)
    }

    pub(super) async fn emit_key_revoked(
        &self,
        txn: &DatabaseTransaction,
        key: &api_keys::Model,
        reason: pb::ApiKeyRevocationReason,
    ) -> Result<(), ApiError> {
        self.emit(
            txn,
            "api_key_revoked",
            &pb::ApiKeyRevokedEvent {
                event_id: new_id(),
                workspace_id: key.workspace_id.clone(),
                occurred_at: Some(timestamp(now())),
                api_key_id: key.id.clone(),
                prefix: key.prefix.clone(),
                user_id: key.user_id.clone(),
                reason: reason as i32,
            },
        )
        .await
    }

    /// Makes a revoked key stop working everywhere now.
    pub(super) async fn forget_api_key(&self, key: &api_keys::Model) -> Result<(), ApiError> {
        self.deps.auth.revocations().revoke_api_key(&key.id).await?;
        self.deps.kv.delete(&ApiKeyResolver::cache_key(&key.key_hash)).await?;
        Ok(())
    }

    /// Resolves an API key for another service: its caller and a short-lived
    /// internal token.
    pub async fn authenticate_api_key(
        &self,
        secret: &str,
    ) -> Result<(Caller, String, DateTime<Utc>, Duration), ApiError> {
        let invalid = || ApiError::Unauthenticated("invalid API key".into());
        if !secret.starts_with(postmesh_kit::auth::API_KEY_PREFIX) {
            return Err(invalid());
        }
        let key = api_keys::Entity::find()
            .filter(api_keys::Column::KeyHash.eq(sha256_hex(secret.as_bytes())))
            .one(self.db())
            .await?
            .ok_or_else(invalid)?;
        if api_key_state(&key) != pb::ApiKeyState::Active {
            return Err(invalid());
        }
        let user = self.user(self.db(), &key.user_id).await.map_err(|_| invalid())?;
        let membership =
            self.membership(self.db(), &key.workspace_id, &user.id).await?.ok_or_else(invalid)?;
        let role = role_of(&membership)?;
        let settings = self.settings();
        let mut claims = Claims::new(settings, TokenKind::Internal, &user.id, settings.internal_ttl);
        claims.ws = Some(key.workspace_id.clone());
        claims.roles = vec![role];
        claims.scopes = key.scopes.split_whitespace().map(str::to_owned).collect();
        claims.akid = Some(key.id.clone());
        let token = self.ring().sign(&claims);
        if key.last_used_at.is_none_or(|at| now() - at > LAST_USED_GRANULARITY) {
            api_keys::Entity::update_many()
                .col_expr(api_keys::Column::LastUsedAt, Expr::value(Some(now())))
                .filter(api_keys::Column::Id.eq(key.id.as_str()))
                .exec(self.db())
                .await?;
        }
        // Never cache past the key's own expiry.
        let until_expiry = (key.expires_at - now()).to_std().unwrap_or_default();
        Ok((claims.caller(), token, claims.expires_at(), API_KEY_CACHE_TTL.min(until_expiry)))
    }

    /// An internal token for a verified access token (what the gateway
    /// forwards instead of the caller's own credential).
    pub async fn exchange_access_token(
        &self,
        access_token: &str,
    ) -> Result<(Caller, String, DateTime<Utc>), ApiError> {
        let claims = self.deps.auth.verifier().verify(access_token).await?;
        if claims.typ != TokenKind::Access {
            return Err(ApiError::Unauthenticated("not an access token".into()));
        }
        let settings = self.settings();
        let mut internal = Claims::new(settings, TokenKind::Internal, &claims.sub, settings.internal_ttl);
        internal.ws = claims.ws.clone();
        internal.roles = claims.roles.clone();
        internal.sid = claims.sid.clone();
        let token = self.ring().sign(&internal);
        Ok((internal.caller(), token, internal.expires_at()))
    }

    pub fn issue_service_token(
        &self,
        name: &str,
        secret: &str,
        scopes: &[String],
    ) -> Result<(String, Claims), ApiError> {
        let configured = self.deps.config.auth_service_secret.as_ref().ok_or_else(|| {
            ApiError::FailedPrecondition(
                "service tokens are disabled: POSTMESH_AUTH_SERVICE_SECRET is not set".into(),
            )
        })?;
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid_name {
            return Err(ApiError::invalid("service_name", "must be 1-64 letters, digits and -"));
        }
        if !postmesh_kit::crypto::constant_time_eq(configured.expose().as_bytes(), secret.as_bytes()) {
            return Err(ApiError::Unauthenticated("invalid service secret".into()));
        }
        if let Some(scope) = scopes.iter().find(|s| !postmesh_kit::auth::is_permission(s)) {
            return Err(ApiError::invalid("scopes", format!("{scope} is not a permission")));
        }
        Ok(postmesh_kit::auth::ServiceTokens::mint(self.ring(), self.settings(), name, scopes))
    }
}

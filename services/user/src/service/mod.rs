//! The user service's operations, one file per capability. Each takes the authenticated [`Caller`]
//! (where there is one) and plain values, does its checks, and writes its
//! state change and the events it causes in one transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use postmesh_kit::ServiceDeps;
use postmesh_kit::auth::{Caller, CallerKind, Claims, KeyRing, Role, TokenKind, TokenSettings};
use postmesh_kit::error::ApiError;
use postmesh_kit::outbox::OutboxMessage;
use postmesh_proto::postmesh::user::v1 as pb;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, Set,
};

use crate::domain::{Email, NewSecret};

mod accounts;
mod keys;
mod members;
mod two_factor;
use crate::store::{api_keys, invitations, memberships, refresh_tokens, sessions, users, workspaces};

/// 2FA challenges expire after this long.
const CHALLENGE_TTL: Duration = Duration::from_secs(300);
/// Wrong codes allowed per challenge.
const CHALLENGE_ATTEMPTS: i64 = 5;
/// An enrollment not confirmed within this long must start over.
const ENROLL_TTL: Duration = Duration::from_secs(600);
/// Invitations are valid this long.
const INVITATION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// API keys without an expiry get this one; none may live longer than MAX.
const API_KEY_DEFAULT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
const API_KEY_MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);
/// Services may cache a resolved API key this long.
const API_KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// `last_used_at` of an API key is written at most this often.
const LAST_USED_GRANULARITY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Login throttling: failures allowed per window before back-off starts,
/// per account and per client address, and the longest back-off.
const LOGIN_WINDOW: Duration = Duration::from_secs(900);
const FREE_FAILURES_PER_ACCOUNT: i64 = 5;
const FREE_FAILURES_PER_ADDRESS: i64 = 20;
const MAX_BACKOFF: Duration = Duration::from_secs(900);

/// A freshly issued access/refresh token pair.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub access_expires_at: DateTime<Utc>,
    pub refresh_token: String,
    pub refresh_expires_at: DateTime<Utc>,
    pub user_id: String,
    pub workspace_id: Option<String>,
    pub role: Option<Role>,
}

/// What a correct password leads to.
pub enum LoginOutcome {
    Tokens(Tokens),
    Challenge { id: String, expires_at: DateTime<Utc>, attempts_remaining: i32 },
}

/// The second factor of a 2FA login (or of turning 2FA off).
pub enum SecondFactor {
    Totp(String),
    RecoveryCode(String),
}

/// A member with their user.
pub struct MemberView {
    pub membership: memberships::Model,
    pub user: users::Model,
}

/// A workspace with the caller's membership in it.
pub struct WorkspaceView {
    pub workspace: workspaces::Model,
    pub role: Role,
    pub joined_at: DateTime<Utc>,
    pub member_count: i32,
}

/// The service core.
pub struct Users {
    deps: ServiceDeps,
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn role_of(membership: &memberships::Model) -> Result<Role, ApiError> {
    Role::parse(&membership.role)
        .ok_or_else(|| ApiError::internal(format!("stored role {:?}", membership.role)))
}

/// A page of ids after `token` (a previous page's last id).
pub struct Page {
    pub size: u64,
    pub after: Option<String>,
}

impl Page {
    pub fn new(page_size: i32, page_token: &str) -> Result<Self, ApiError> {
        if page_size < 0 {
            return Err(ApiError::invalid("page_size", "must not be negative"));
        }
        let size = if page_size == 0 { 50 } else { page_size.min(200) } as u64;
        let after = if page_token.is_empty() {
            None
        } else {
            let decoded =
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, page_token)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| ApiError::invalid("page_token", "is not a token from a previous page"))?;
            Some(decoded)
        };
        Ok(Self { size, after })
    }

    /// The next page token when `items` filled this page.
    pub fn next_token(&self, last_id: Option<&str>, fetched: usize) -> String {
        match last_id {
            Some(id) if fetched as u64 == self.size => {
                base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, id)
            }
            _ => String::new(),
        }
    }
}

impl Users {
    pub fn new(deps: ServiceDeps) -> Self {
        Self { deps }
    }

    pub(super) fn ring(&self) -> &KeyRing {
        self.deps.auth.key_ring().expect("the user service runs where the key ring is loaded")
    }

    /// The key ring, for the JWKS.
    pub fn key_ring(&self) -> Option<&KeyRing> {
        self.deps.auth.key_ring().map(|r| r.as_ref())
    }

    pub(super) fn settings(&self) -> &TokenSettings {
        self.deps.auth.settings()
    }

    pub(super) fn db(&self) -> &sea_orm::DatabaseConnection {
        self.deps.db.conn()
    }

    pub(super) async fn begin(&self) -> Result<DatabaseTransaction, ApiError> {
        Ok(self.deps.db.begin_write().await?)
    }

    pub(super) async fn emit(
        &self,
        txn: &DatabaseTransaction,
        event: &str,
        payload: &impl prost::Message,
    ) -> Result<(), ApiError> {
        self.deps.outbox.enqueue(txn, OutboxMessage::event("user", event, payload)).await?;
        Ok(())
    }

    pub(super) async fn commit(&self, txn: DatabaseTransaction) -> Result<(), ApiError> {
        Ok(self.deps.outbox.commit(txn).await?)
    }

    // ---- lookups -------------------------------------------------------

    pub(super) async fn user(&self, conn: &impl ConnectionTrait, id: &str) -> Result<users::Model, ApiError> {
        users::Entity::find_by_id(id.to_owned())
            .one(conn)
            .await?
            .filter(|u| u.deleted_at.is_none())
            .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))
    }

    pub(super) async fn user_by_email(&self, email: &Email) -> Result<Option<users::Model>, ApiError> {
        Ok(users::Entity::find()
            .filter(users::Column::Email.eq(email.as_str()))
            .one(self.db())
            .await?
            .filter(|u| u.deleted_at.is_none()))
    }

    pub(super) async fn membership(
        &self,
        conn: &impl ConnectionTrait,
        workspace_id: &str,
        user_id: &str,
    ) -> Result<Option<memberships::Model>, ApiError> {
        Ok(memberships::Entity::find_by_id((workspace_id.to_owned(), user_id.to_owned())).one(conn).await?)
    }

    pub(super) async fn workspace(
        &self,
        conn: &impl ConnectionTrait,
        id: &str,
    ) -> Result<workspaces::Model, ApiError> {
        workspaces::Entity::find_by_id(id.to_owned())
            .one(conn)
            .await?
            .filter(|w| w.deleted_at.is_none())
            .ok_or_else(|| ApiError::NotFound(format!("workspace {id} not found")))
    }

    pub(super) async fn member_count(
        &self,
        conn: &impl ConnectionTrait,
        workspace_id: &str,
    ) -> Result<i32, ApiError> {
        let count = memberships::Entity::find()
            .filter(memberships::Column::WorkspaceId.eq(workspace_id))
            .count(conn)
            .await?;
        Ok(count as i32)
    }

    pub(super) async fn admin_count(
        &self,
        conn: &impl ConnectionTrait,
        workspace_id: &str,
    ) -> Result<u64, ApiError> {
        Ok(memberships::Entity::find()
            .filter(memberships::Column::WorkspaceId.eq(workspace_id))
            .filter(memberships::Column::Role.eq(Role::Admin.as_str()))
            .count(conn)
            .await?)
    }

    /// The user behind a session credential; API keys and services may not
    /// manage accounts.
    pub(super) fn session_user<'c>(&self, caller: &'c Caller) -> Result<(&'c str, &'c str), ApiError> {
        match (&caller.kind, caller.user_id.as_deref()) {
            (CallerKind::User { session_id }, Some(user_id)) => Ok((user_id, session_id)),
            _ => Err(ApiError::PermissionDenied(
                "only a signed-in user may do this; API keys and services may not".into(),
            )),
        }
    }

    // ---- tokens --------------------------------------------------------

    pub(super) fn access_token(
        &self,
        user_id: &str,
        workspace_id: Option<&str>,
        role: Option<Role>,
        session_id: &str,
    ) -> (String, Claims) {
        let settings = self.settings();
        let mut claims = Claims::new(settings, TokenKind::Access, user_id, settings.access_ttl);
        claims.ws = workspace_id.map(str::to_owned);
        claims.roles = role.into_iter().collect();
        claims.sid = Some(session_id.to_owned());
        (self.ring().sign(&claims), claims)
    }

    pub(super) async fn insert_refresh_token(
        &self,
        txn: &DatabaseTransaction,
        session_id: &str,
    ) -> Result<(String, DateTime<Utc>), ApiError> {
        let secret = NewSecret::refresh_token();
        let expires_at = now() + self.settings().refresh_ttl;
        refresh_tokens::ActiveModel {
            id: Set(new_id()),
            session_id: Set(session_id.to_owned()),
            token_hash: Set(secret.hash),
            created_at: Set(now()),
            expires_at: Set(expires_at),
            used_at: Set(None),
        }
        .insert(txn)
        .await?;
        Ok((secret.secret, expires_at))
    }

    /// Opens a login session in `workspace_id` and issues its first tokens.
    pub(super) async fn start_session(
        &self,
        txn: &DatabaseTransaction,
        user_id: &str,
        workspace: Option<(&str, Role)>,
    ) -> Result<Tokens, ApiError> {
        let session_id = new_id();
        sessions::ActiveModel {
            id: Set(session_id.clone()),
            user_id: Set(user_id.to_owned()),
            workspace_id: Set(workspace.map(|(w, _)| w.to_owned()).unwrap_or_default()),
            created_at: Set(now()),
            last_used_at: Set(now()),
            revoked_at: Set(None),
            revoked_reason: Set(None),
        }
        .insert(txn)
        .await?;
        let (refresh_token, refresh_expires_at) = self.insert_refresh_token(txn, &session_id).await?;
        let (access_token, claims) =
            self.access_token(user_id, workspace.map(|(w, _)| w), workspace.map(|(_, r)| r), &session_id);
        if let Some((workspace_id, _)) = workspace {
            users::Entity::update_many()
                .col_expr(users::Column::LastWorkspaceId, Expr::value(workspace_id.to_owned()))
                .filter(users::Column::Id.eq(user_id))
                .exec(txn)
                .await?;
        }
        Ok(Tokens {
            access_token,
            access_expires_at: claims.expires_at(),
            refresh_token,
            refresh_expires_at,
            user_id: user_id.to_owned(),
            workspace_id: workspace.map(|(w, _)| w.to_owned()),
            role: workspace.map(|(_, r)| r),
        })
    }

    /// The workspace a login lands in: the one asked for (if a member), the
    /// last one used, or the first joined.
    pub(super) async fn landing_workspace(
        &self,
        user: &users::Model,
        requested: Option<&str>,
    ) -> Result<Option<(String, Role)>, ApiError> {
        if let Some(requested) = requested {
            let membership = self.membership(self.db(), requested, &user.id).await?.ok_or_else(|| {
                ApiError::PermissionDenied(format!("not a member of workspace {requested}"))
            })?;
            return Ok(Some((membership.workspace_id.clone(), role_of(&membership)?)));
        }
        let all = memberships::Entity::find()
            .filter(memberships::Column::UserId.eq(user.id.as_str()))
            .order_by_asc(memberships::Column::JoinedAt)
            .all(self.db())
            .await?;
        let chosen = all
            .iter()
            .find(|m| Some(&m.workspace_id) == user.last_workspace_id.as_ref())
            .or_else(|| all.first());
        match chosen {
            Some(m) => Ok(Some((m.workspace_id.clone(), role_of(m)?))),
            None => Ok(None),
        }
    }
}

/// An API key's state now.
pub fn api_key_state(key: &api_keys::Model) -> pb::ApiKeyState {
    if key.revoked_at.is_some() {
        pb::ApiKeyState::Revoked
    } else if key.expires_at <= now() {
        pb::ApiKeyState::Expired
    } else {
        pb::ApiKeyState::Active
    }
}

/// An invitation's state now.
pub fn invitation_state(invitation: &invitations::Model) -> pb::InvitationState {
    if invitation.accepted_at.is_some() {
        pb::InvitationState::Accepted
    } else if invitation.revoked_at.is_some() {
        pb::InvitationState::Revoked
    } else if invitation.expires_at <= now() {
        pb::InvitationState::Expired
    } else {
        pb::InvitationState::Pending
    }
}

/// A protobuf timestamp.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}

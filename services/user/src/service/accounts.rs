//! Accounts and sessions: register, login (with throttling and the 2FA
//! challenge), refresh rotation, logout, profile, password, deletion.

use chrono::{DateTime, Utc};
use postmesh_kit::auth::{Caller, Role};
use postmesh_kit::crypto::sha256_hex;
use postmesh_kit::error::{ApiError, Violations};
use postmesh_proto::postmesh::user::v1 as pb;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter, Set,
};

use super::*;
use crate::domain::{self, Email, Password, Totp};
use crate::store::{api_keys, memberships, recovery_codes, refresh_tokens, sessions, users, workspaces};

impl Users {
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        display_name: &str,
        workspace_name: &str,
    ) -> Result<(users::Model, workspaces::Model, Tokens), ApiError> {
        let mut violations = Violations::new();
        let email = violations.check("email", Email::try_from(email));
        let display_name = violations.check("display_name", domain::name(display_name));
        let inputs: Vec<&str> =
            [email.as_ref().map(Email::as_str), display_name.as_deref()].into_iter().flatten().collect();
        let password = violations.check("password", Password::new(password, &inputs));
        let workspace_name = if workspace_name.trim().is_empty() {
            display_name
                .as_ref()
                .map(|n| format!("{n}'s workspace").chars().take(domain::MAX_NAME_LEN).collect())
        } else {
            violations.check("workspace_name", domain::name(workspace_name))
        };
        violations.finish()?;
        let (email, display_name, password, workspace_name) = (
            email.expect("checked"),
            display_name.expect("checked"),
            password.expect("checked"),
            workspace_name.expect("checked"),
        );
        if self.user_by_email(&email).await?.is_some() {
            return Err(ApiError::AlreadyExists("an account with this email already exists".into()));
        }
        let hash = tokio::task::spawn_blocking(move || password.hash()).await.map_err(ApiError::internal)?;

        let txn = self.begin().await?;
        let user = users::ActiveModel {
            id: Set(new_id()),
            email: Set(email.as_str().to_owned()),
            display_name: Set(display_name),
            password_hash: Set(Some(hash)),
            avatar_url: Set(String::new()),
            time_zone: Set(String::new()),
            locale: Set(String::new()),
            totp_secret: Set(None),
            totp_pending: Set(None),
            totp_pending_expires_at: Set(None),
            totp_last_step: Set(None),
            totp_enabled_at: Set(None),
            last_workspace_id: Set(None),
            created_at: Set(now()),
            updated_at: Set(now()),
            last_login_at: Set(Some(now())),
            deleted_at: Set(None),
        }
        .insert(&txn)
        .await
        .map_err(|e| {
            // Two registrations racing for one email: the unique index decides.
            if e.to_string().to_lowercase().contains("unique") {
                ApiError::AlreadyExists("an account with this email already exists".into())
            } else {
                e.into()
            }
        })?;
        let workspace = self.insert_workspace(&txn, &workspace_name, &user.id).await?;
        let tokens = self.start_session(&txn, &user.id, Some((&workspace.id, Role::Admin))).await?;
        self.emit(
            &txn,
            "registered",
            &pb::UserRegisteredEvent {
                event_id: new_id(),
                workspace_id: workspace.id.clone(),
                occurred_at: Some(timestamp(now())),
                user_id: user.id.clone(),
                email: user.email.clone(),
                display_name: user.display_name.clone(),
                locale: String::new(),
            },
        )
        .await?;
        self.commit(txn).await?;
        let user = self.user(self.db(), &user.id).await?;
        Ok((user, workspace, tokens))
    }

    pub(super) async fn insert_workspace(
        &self,
        txn: &DatabaseTransaction,
        name: &str,
        creator: &str,
    ) -> Result<workspaces::Model, ApiError> {
        let workspace = workspaces::ActiveModel {
            id: Set(new_id()),
            name: Set(name.to_owned()),
            creator_user_id: Set(creator.to_owned()),
            created_at: Set(now()),
            updated_at: Set(now()),
            deleted_at: Set(None),
        }
        .insert(txn)
        .await?;
        memberships::ActiveModel {
            workspace_id: Set(workspace.id.clone()),
            user_id: Set(creator.to_owned()),
            role: Set(Role::Admin.as_str().to_owned()),
            inviter_user_id: Set(None),
            joined_at: Set(now()),
        }
        .insert(txn)
        .await?;
        self.emit(
            txn,
            "workspace_created",
            &pb::WorkspaceCreatedEvent {
                event_id: new_id(),
                workspace_id: workspace.id.clone(),
                occurred_at: Some(timestamp(now())),
                name: workspace.name.clone(),
                creator_user_id: creator.to_owned(),
            },
        )
        .await?;
        Ok(workspace)
    }

    /// Refuses a login attempt while the account or address is backing off.
    pub(super) async fn check_login_throttle(&self, account: &str, address: &str) -> Result<(), ApiError> {
        for key in [format!("user:login:acct:{account}:block"), format!("user:login:addr:{address}:block")] {
            if let Some(left) = self.deps.kv.ttl(&key).await? {
                let seconds = left.as_secs().max(1);
                return Err(ApiError::RateLimited {
                    message: format!("too many failed logins; try again in {seconds} s"),
                    retry_after: Duration::from_secs(seconds),
                });
            }
        }
        Ok(())
    }

    /// Counts a failed login; past the free attempts, blocks for a delay that
    /// doubles with each further failure.
    pub(super) async fn record_login_failure(&self, account: &str, address: &str) -> Result<(), ApiError> {
        for (scope, id, free) in
            [("acct", account, FREE_FAILURES_PER_ACCOUNT), ("addr", address, FREE_FAILURES_PER_ADDRESS)]
        {
            let failures = self.deps.kv.incr(&format!("user:login:{scope}:{id}"), 1, LOGIN_WINDOW).await?;
            if failures > free {
                let backoff = Duration::from_secs(1 << (failures - free - 1).min(10) as u32).min(MAX_BACKOFF);
                self.deps.kv.set(&format!("user:login:{scope}:{id}:block"), b"1", Some(backoff)).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn clear_login_failures(&self, account: &str) -> Result<(), ApiError> {
        self.deps.kv.delete(&format!("user:login:acct:{account}")).await?;
        Ok(())
    }

    pub async fn login(
        &self,
        email: &str,
        password: &str,
        workspace_id: &str,
        address: &str,
    ) -> Result<LoginOutcome, ApiError> {
        let mut violations = Violations::new();
        if email.trim().is_empty() {
            violations.add("email", "is required");
        }
        if password.is_empty() {
            violations.add("password", "is required");
        }
        violations.finish()?;
        let account = sha256_hex(email.trim().to_lowercase().as_bytes());
        self.check_login_throttle(&account, address).await?;

        let user = match Email::try_from(email) {
            Ok(email) => self.user_by_email(&email).await?,
            Err(_) => None,
        };
        let hash = user
            .as_ref()
            .and_then(|u| u.password_hash.clone())
            .unwrap_or_else(|| domain::decoy_hash().to_owned());
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || domain::verify_password(&password, &hash))
            .await
            .map_err(ApiError::internal)?;
        let Some(user) = user.filter(|u| matches && u.password_hash.is_some()) else {
            self.record_login_failure(&account, address).await?;
            // The same answer whether the email is unknown or the password wrong.
            return Err(ApiError::Unauthenticated("invalid email or password".into()));
        };
        self.clear_login_failures(&account).await?;

        let requested = (!workspace_id.is_empty()).then_some(workspace_id);
        let landing = self.landing_workspace(&user, requested).await?;
        if user.totp_secret.is_some() {
            let challenge_id = new_id();
            let payload =
                serde_json::json!({ "user_id": user.id, "workspace_id": landing.as_ref().map(|(w, _)| w) });
            self.deps
                .kv
                .set(&format!("user:2fa:{challenge_id}"), payload.to_string().as_bytes(), Some(CHALLENGE_TTL))
                .await?;
            return Ok(LoginOutcome::Challenge {
                id: challenge_id,
                expires_at: now() + CHALLENGE_TTL,
                attempts_remaining: CHALLENGE_ATTEMPTS as i32,
            });
        }
        let txn = self.begin().await?;
        let tokens =
            self.start_session(&txn, &user.id, landing.as_ref().map(|(w, r)| (w.as_str(), *r))).await?;
        self.touch_login(&txn, &user.id).await?;
        self.commit(txn).await?;
        Ok(LoginOutcome::Tokens(tokens))
    }

    pub(super) async fn touch_login(&self, txn: &DatabaseTransaction, user_id: &str) -> Result<(), ApiError> {
        users::Entity::update_many()
            .col_expr(users::Column::LastLoginAt, Expr::value(Some(now())))
            .filter(users::Column::Id.eq(user_id))
            .exec(txn)
            .await?;
        Ok(())
    }

    pub async fn verify_login(
        &self,
        challenge_id: &str,
        factor: Option<SecondFactor>,
    ) -> Result<(Tokens, i32), ApiError> {
        let mut violations = Violations::new();
        if challenge_id.is_empty() {
            violations.add("challenge_id", "is required");
        }
        if factor.is_none() {
            violations.add("code", "send totp_code or recovery_code");
        }
        violations.finish()?;
        let factor = factor.expect("checked");
        let key = format!("user:2fa:{challenge_id}");
        let expired =
            || ApiError::Unauthenticated("the 2FA challenge expired or is unknown; log in again".into());
        let stored = self.deps.kv.get(&key).await?.ok_or_else(expired)?;
        let attempts = self.deps.kv.incr(&format!("{key}:attempts"), 1, CHALLENGE_TTL).await?;
        if attempts > CHALLENGE_ATTEMPTS {
            self.deps.kv.delete(&key).await?;
            return Err(ApiError::Unauthenticated("too many wrong codes; log in again".into()));
        }
        let challenge: serde_json::Value = serde_json::from_slice(&stored).map_err(ApiError::internal)?;
        let user_id = challenge["user_id"].as_str().unwrap_or_default().to_owned();
        let workspace_id = challenge["workspace_id"].as_str().map(str::to_owned);
        let user = self.user(self.db(), &user_id).await.map_err(|_| expired())?;

        let txn = self.begin().await?;
        if !self.check_second_factor(&txn, &user, &factor).await? {
            txn.rollback().await?;
            let left = CHALLENGE_ATTEMPTS - attempts;
            return Err(ApiError::Unauthenticated(format!("invalid code; {left} attempts left")));
        }
        let role = match &workspace_id {
            Some(w) => self.membership(&txn, w, &user.id).await?.map(|m| role_of(&m)).transpose()?,
            None => None,
        };
        let landing = workspace_id.as_deref().zip(role);
        let tokens = self.start_session(&txn, &user.id, landing).await?;
        self.touch_login(&txn, &user.id).await?;
        let remaining = recovery_codes::Entity::find()
            .filter(recovery_codes::Column::UserId.eq(user.id.as_str()))
            .filter(recovery_codes::Column::UsedAt.is_null())
            .count(&txn)
            .await? as i32;
        self.commit(txn).await?;
        self.deps.kv.delete(&key).await?;
        Ok((tokens, remaining))
    }

    /// Checks a TOTP code (once per time step) or consumes a recovery code.
    pub(super) async fn check_second_factor(
        &self,
        txn: &DatabaseTransaction,
        user: &users::Model,
        factor: &SecondFactor,
    ) -> Result<bool, ApiError> {
        match factor {
            SecondFactor::Totp(code) => {
                let Some(sealed) = &user.totp_secret else { return Ok(false) };
                let totp = self.totp(&user.id, &user.email, sealed)?;
                let Some(step) = totp.verify(code, now().timestamp() as u64, user.totp_last_step) else {
                    return Ok(false);
                };
                // Conditional, so two logins racing with one code cannot both win.
                let updated = users::Entity::update_many()
                    .col_expr(users::Column::TotpLastStep, Expr::value(Some(step)))
                    .filter(users::Column::Id.eq(user.id.as_str()))
                    .filter(
                        sea_orm::Condition::any()
                            .add(users::Column::TotpLastStep.is_null())
                            .add(users::Column::TotpLastStep.lt(step)),
                    )
                    .exec(txn)
                    .await?;
                Ok(updated.rows_affected == 1)
            }
            SecondFactor::RecoveryCode(code) => {
                let hash = domain::hash_recovery_code(code);
                let updated = recovery_codes::Entity::update_many()
                    .col_expr(recovery_codes::Column::UsedAt, Expr::value(Some(now())))
                    .filter(recovery_codes::Column::UserId.eq(user.id.as_str()))
                    .filter(recovery_codes::Column::CodeHash.eq(hash))
                    .filter(recovery_codes::Column::UsedAt.is_null())
                    .exec(txn)
                    .await?;
                Ok(updated.rows_affected == 1)
            }
        }
    }

    pub(super) fn totp(&self, user_id: &str, email: &str, sealed: &str) -> Result<Totp, ApiError> {
        let secret =
            self.deps.cipher.decrypt(sealed, &format!("user:{user_id}:totp")).map_err(ApiError::internal)?;
        Ok(Totp::new(secret, email))
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, ApiError> {
        if refresh_token.is_empty() {
            return Err(ApiError::invalid("refresh_token", "is required"));
        }
        let invalid = || ApiError::Unauthenticated("invalid refresh token".into());
        let hash = sha256_hex(refresh_token.as_bytes());
        let txn = self.begin().await?;
        let token = refresh_tokens::Entity::find()
            .filter(refresh_tokens::Column::TokenHash.eq(hash))
            .one(&txn)
            .await?
            .ok_or_else(invalid)?;
        let session =
            sessions::Entity::find_by_id(token.session_id.clone()).one(&txn).await?.ok_or_else(invalid)?;
        if session.revoked_at.is_some() || token.expires_at <= now() {
            return Err(invalid());
        }
        // Rotate: the token is spent now; only one caller can spend it.
        let spent = refresh_tokens::Entity::update_many()
            .col_expr(refresh_tokens::Column::UsedAt, Expr::value(Some(now())))
            .filter(refresh_tokens::Column::Id.eq(token.id.as_str()))
            .filter(refresh_tokens::Column::UsedAt.is_null())
            .exec(&txn)
            .await?;
        if token.used_at.is_some() || spent.rows_affected == 0 {
            // A spent token came back: it leaked. End the whole family.
            txn.rollback().await?;
            self.revoke_sessions(std::slice::from_ref(&session.id), "refresh token reused").await?;
            tracing::warn!(session_id = %session.id, "refresh token reuse detected; session revoked");
            return Err(ApiError::Unauthenticated(
                "refresh token reuse detected; the session was ended".into(),
            ));
        }
        let user = self.user(&txn, &session.user_id).await.map_err(|_| invalid())?;
        let role = if session.workspace_id.is_empty() {
            None
        } else {
            match self.membership(&txn, &session.workspace_id, &user.id).await? {
                Some(m) => Some(role_of(&m)?),
                None => {
                    txn.rollback().await?;
                    self.revoke_sessions(std::slice::from_ref(&session.id), "no longer a member").await?;
                    return Err(ApiError::Unauthenticated(
                        "no longer a member of this workspace; log in again".into(),
                    ));
                }
            }
        };
        let (refresh_token, refresh_expires_at) = self.insert_refresh_token(&txn, &session.id).await?;
        sessions::Entity::update_many()
            .col_expr(sessions::Column::LastUsedAt, Expr::value(now()))
            .filter(sessions::Column::Id.eq(session.id.as_str()))
            .exec(&txn)
            .await?;
        let workspace = (!session.workspace_id.is_empty()).then_some(session.workspace_id.as_str());
        let (access_token, claims) = self.access_token(&user.id, workspace, role, &session.id);
        self.commit(txn).await?;
        Ok(Tokens {
            access_token,
            access_expires_at: claims.expires_at(),
            refresh_token,
            refresh_expires_at,
            user_id: user.id,
            workspace_id: workspace.map(str::to_owned),
            role,
        })
    }

    /// Ends sessions: their refresh tokens stop working and their access
    /// tokens are revoked everywhere at once.
    pub(super) async fn revoke_sessions(&self, ids: &[String], reason: &str) -> Result<(), ApiError> {
        if ids.is_empty() {
            return Ok(());
        }
        sessions::Entity::update_many()
            .col_expr(sessions::Column::RevokedAt, Expr::value(Some(now())))
            .col_expr(sessions::Column::RevokedReason, Expr::value(Some(reason.to_owned())))
            .filter(sessions::Column::Id.is_in(ids.iter().cloned()))
            .filter(sessions::Column::RevokedAt.is_null())
            .exec(self.db())
            .await?;
        for id in ids {
            self.deps.auth.revocations().revoke_session(id).await?;
        }
        Ok(())
    }

    pub(super) async fn live_sessions(&self, user_id: &str) -> Result<Vec<String>, ApiError> {
        Ok(sessions::Entity::find()
            .filter(sessions::Column::UserId.eq(user_id))
            .filter(sessions::Column::RevokedAt.is_null())
            .all(self.db())
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect())
    }

    pub async fn logout(&self, caller: &Caller, all_sessions: bool) -> Result<i32, ApiError> {
        let (user_id, session_id) = self.session_user(caller)?;
        let ids = if all_sessions { self.live_sessions(user_id).await? } else { vec![session_id.to_owned()] };
        self.revoke_sessions(&ids, "logout").await?;
        Ok(ids.len() as i32)
    }

    pub async fn profile(
        &self,
        caller: &Caller,
    ) -> Result<(users::Model, Option<workspaces::Model>, Option<Role>), ApiError> {
        let user = self.user(self.db(), caller.user_id()?).await?;
        let workspace = match caller.workspace_id.as_deref() {
            Some(id) => Some(self.workspace(self.db(), id).await?),
            None => None,
        };
        Ok((user, workspace, caller.top_role()))
    }

    pub async fn update_profile(
        &self,
        caller: &Caller,
        changes: pb::User,
        paths: &[String],
    ) -> Result<users::Model, ApiError> {
        let user = self.user(self.db(), caller.user_id()?).await?;
        if paths.is_empty() {
            return Err(ApiError::invalid("update_mask", "name the fields to change, e.g. display_name"));
        }
        let mut violations = Violations::new();
        let mut model: users::ActiveModel = user.into();
        for path in paths {
            let field = format!("user.{path}");
            match path.as_str() {
                "display_name" => {
                    if let Some(v) = violations.check(&field, domain::name(&changes.display_name)) {
                        model.display_name = Set(v);
                    }
                }
                "avatar_url" => {
                    if let Some(v) = violations.check(&field, domain::avatar_url(&changes.avatar_url)) {
                        model.avatar_url = Set(v);
                    }
                }
                "time_zone" => {
                    if let Some(v) = violations.check(&field, domain::time_zone(&changes.time_zone)) {
                        model.time_zone = Set(v);
                    }
                }
                "locale" => {
                    if let Some(v) = violations.check(&field, domain::locale(&changes.locale)) {
                        model.locale = Set(v);
                    }
                }
                "id" | "email" | "two_factor_enabled" | "created_at" | "updated_at" | "last_login_at" => {
                    violations.add("update_mask", format!("{path} cannot be changed here"));
                }
                other => violations.add("update_mask", format!("unknown field {other}")),
            }
        }
        violations.finish()?;
        model.updated_at = Set(now());
        Ok(model.update(self.db()).await?)
    }

    pub async fn change_password(&self, caller: &Caller, current: &str, new: &str) -> Result<i32, ApiError> {
        let (user_id, session_id) = self.session_user(caller)?;
        let user = self.user(self.db(), user_id).await?;
        let account = sha256_hex(user.email.as_bytes());
        self.check_login_throttle(&account, "password-change").await?;
        let hash = user.password_hash.clone().unwrap_or_default();
        let current_owned = current.to_owned();
        let matches = tokio::task::spawn_blocking(move || domain::verify_password(&current_owned, &hash))
            .await
            .map_err(ApiError::internal)?;
        if !matches {
            self.record_login_failure(&account, "password-change").await?;
            return Err(ApiError::invalid("current_password", "is not your current password"));
        }
        let password = Password::new(new, &[user.email.as_str(), user.display_name.as_str()])
            .map_err(|e| ApiError::invalid("new_password", e))?;
        let hash = tokio::task::spawn_blocking(move || password.hash()).await.map_err(ApiError::internal)?;
        users::Entity::update_many()
            .col_expr(users::Column::PasswordHash, Expr::value(Some(hash)))
            .col_expr(users::Column::UpdatedAt, Expr::value(now()))
            .filter(users::Column::Id.eq(user_id))
            .exec(self.db())
            .await?;
        let others: Vec<String> =
            self.live_sessions(user_id).await?.into_iter().filter(|s| s != session_id).collect();
        self.revoke_sessions(&others, "password changed").await?;
        Ok(others.len() as i32)
    }

    /// A member of the caller's workspace.
    pub async fn get_user(&self, caller: &Caller, id: &str) -> Result<MemberView, ApiError> {
        if id.is_empty() {
            return Err(ApiError::invalid("id", "is required"));
        }
        let workspace_id = caller.workspace_id()?;
        let membership = self
            .membership(self.db(), workspace_id, id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("user {id} not found in this workspace")))?;
        let user = self.user(self.db(), id).await?;
        Ok(MemberView { membership, user })
    }

    pub async fn delete_user(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(DateTime<Utc>, Vec<String>), ApiError> {
        if id.is_empty() {
            return Err(ApiError::invalid("id", "is required"));
        }
        let (acting_user, _) = self.session_user(caller)?;
        let target = self.user(self.db(), id).await?;
        let target_memberships =
            memberships::Entity::find().filter(memberships::Column::UserId.eq(id)).all(self.db()).await?;
        if acting_user != id {
            // An Admin may delete an account that belongs to their workspace
            // and no other; otherwise RemoveMember is the way.
            let workspace_id = caller.workspace_id()?;
            if caller.top_role() != Some(Role::Admin) {
                return Err(ApiError::PermissionDenied("only Admins may delete other accounts".into()));
            }
            if !target_memberships.iter().any(|m| m.workspace_id == workspace_id) {
                return Err(ApiError::NotFound(format!("user {id} not found in this workspace")));
            }
            if target_memberships.len() > 1 {
                return Err(ApiError::FailedPrecondition(
                    "this account belongs to other workspaces too; remove it from yours instead".into(),
                ));
            }
        }

        let deleted_at = now();
        let txn = self.begin().await?;
        let mut deleted_workspaces = Vec::new();
        for membership in &target_memberships {
            let members = self.member_count(&txn, &membership.workspace_id).await?;
            if members <= 1 {
                workspaces::Entity::update_many()
                    .col_expr(workspaces::Column::DeletedAt, Expr::value(Some(deleted_at)))
                    .filter(workspaces::Column::Id.eq(membership.workspace_id.as_str()))
                    .exec(&txn)
                    .await?;
                deleted_workspaces.push(membership.workspace_id.clone());
            } else if membership.role == Role::Admin.as_str()
                && self.admin_count(&txn, &membership.workspace_id).await? <= 1
            {
                return Err(ApiError::FailedPrecondition(format!(
                    "this account is the last Admin of workspace {}; make someone else Admin first",
                    membership.workspace_id
                )));
            }
        }
        memberships::Entity::delete_many().filter(memberships::Column::UserId.eq(id)).exec(&txn).await?;
        // Soft delete: the row stays for references, the personal data goes.
        users::Entity::update_many()
            .col_expr(users::Column::Email, Expr::value(format!("deleted-{id}@deleted.invalid")))
            .col_expr(users::Column::DisplayName, Expr::value("Deleted user"))
            .col_expr(users::Column::PasswordHash, Expr::value(Option::<String>::None))
            .col_expr(users::Column::AvatarUrl, Expr::value(""))
            .col_expr(users::Column::TotpSecret, Expr::value(Option::<String>::None))
            .col_expr(users::Column::TotpPending, Expr::value(Option::<String>::None))
            .col_expr(users::Column::DeletedAt, Expr::value(Some(deleted_at)))
            .filter(users::Column::Id.eq(id))
            .exec(&txn)
            .await?;
        recovery_codes::Entity::delete_many()
            .filter(recovery_codes::Column::UserId.eq(id))
            .exec(&txn)
            .await?;
        let keys = api_keys::Entity::find()
            .filter(api_keys::Column::UserId.eq(id))
            .filter(api_keys::Column::RevokedAt.is_null())
            .all(&txn)
            .await?;
        api_keys::Entity::update_many()
            .col_expr(api_keys::Column::RevokedAt, Expr::value(Some(deleted_at)))
            .filter(api_keys::Column::UserId.eq(id))
            .filter(api_keys::Column::RevokedAt.is_null())
            .exec(&txn)
            .await?;
        for key in &keys {
            self.emit_key_revoked(&txn, key, pb::ApiKeyRevocationReason::AccountDeleted).await?;
        }
        self.emit(
            &txn,
            "deleted",
            &pb::UserDeletedEvent {
                event_id: new_id(),
                workspace_ids: target_memberships.iter().map(|m| m.workspace_id.clone()).collect(),
                occurred_at: Some(timestamp(deleted_at)),
                user_id: id.to_owned(),
                deleted_by_user_id: acting_user.to_owned(),
                deleted_workspace_ids: deleted_workspaces.clone(),
            },
        )
        .await?;
        self.commit(txn).await?;

        let sessions = self.live_sessions(id).await?;
        self.revoke_sessions(&sessions, "account deleted").await?;
        for key in keys {
            self.forget_api_key(&key).await?;
        }
        self.deps.auth.revocations().revoke_user_tokens(id).await?;
        tracing::info!(user_id = %target.id, "account deleted");
        Ok((deleted_at, deleted_workspaces))
    }
}

//! TOTP two-factor authentication: enroll, confirm, turn off.

use chrono::{DateTime, Utc};
use postmesh_kit::auth::Caller;
use postmesh_kit::error::ApiError;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};

use super::*;
use crate::domain::{self, Totp};
use crate::store::{recovery_codes, users};

impl Users {
    pub async fn enroll_totp(&self, caller: &Caller) -> Result<(Totp, DateTime<Utc>), ApiError> {
        let (user_id, _) = self.session_user(caller)?;
        let user = self.user(self.db(), user_id).await?;
        if user.totp_secret.is_some() {
            return Err(ApiError::FailedPrecondition(
                "two-factor authentication is already on; turn it off first".into(),
            ));
        }
        let secret = Totp::generate_secret();
        let sealed = self.deps.cipher.encrypt(&secret, &format!("user:{user_id}:totp"));
        let expires_at = now() + ENROLL_TTL;
        users::Entity::update_many()
            .col_expr(users::Column::TotpPending, Expr::value(Some(sealed)))
            .col_expr(users::Column::TotpPendingExpiresAt, Expr::value(Some(expires_at)))
            .filter(users::Column::Id.eq(user_id))
            .exec(self.db())
            .await?;
        Ok((Totp::new(secret, &user.email), expires_at))
    }

    pub async fn confirm_totp(
        &self,
        caller: &Caller,
        code: &str,
    ) -> Result<(Vec<String>, DateTime<Utc>), ApiError> {
        let (user_id, _) = self.session_user(caller)?;
        if code.trim().is_empty() {
            return Err(ApiError::invalid("totp_code", "is required"));
        }
        let user = self.user(self.db(), user_id).await?;
        if user.totp_secret.is_some() {
            return Err(ApiError::FailedPrecondition("two-factor authentication is already on".into()));
        }
        let (Some(pending), Some(expires_at)) = (&user.totp_pending, user.totp_pending_expires_at) else {
            return Err(ApiError::FailedPrecondition("start with 2fa/enroll".into()));
        };
        if expires_at <= now() {
            return Err(ApiError::FailedPrecondition(
                "the enrollment expired; start again with 2fa/enroll".into(),
            ));
        }
        let totp = self.totp(user_id, &user.email, pending)?;
        let step = totp
            .verify(code, now().timestamp() as u64, None)
            .ok_or_else(|| ApiError::invalid("totp_code", "does not match; check the time on your device"))?;
        let enabled_at = now();
        let codes = domain::recovery_codes();
        let txn = self.begin().await?;
        users::Entity::update_many()
            .col_expr(users::Column::TotpSecret, Expr::value(Some(pending.clone())))
            .col_expr(users::Column::TotpPending, Expr::value(Option::<String>::None))
            .col_expr(users::Column::TotpPendingExpiresAt, Expr::value(Option::<DateTime<Utc>>::None))
            .col_expr(users::Column::TotpLastStep, Expr::value(Some(step)))
            .col_expr(users::Column::TotpEnabledAt, Expr::value(Some(enabled_at)))
            .filter(users::Column::Id.eq(user_id))
            .exec(&txn)
            .await?;
        recovery_codes::Entity::delete_many()
            .filter(recovery_codes::Column::UserId.eq(user_id))
            .exec(&txn)
            .await?;
        for code in &codes {
            recovery_codes::ActiveModel {
                id: Set(new_id()),
                user_id: Set(user_id.to_owned()),
                code_hash: Set(code.hash.clone()),
                created_at: Set(enabled_at),
                used_at: Set(None),
            }
            .insert(&txn)
            .await?;
        }
        self.commit(txn).await?;
        Ok((codes.into_iter().map(|c| c.secret).collect(), enabled_at))
    }

    pub async fn disable_totp(
        &self,
        caller: &Caller,
        password: &str,
        factor: Option<SecondFactor>,
    ) -> Result<DateTime<Utc>, ApiError> {
        let (user_id, _) = self.session_user(caller)?;
        let user = self.user(self.db(), user_id).await?;
        if user.totp_secret.is_none() {
            return Err(ApiError::FailedPrecondition("two-factor authentication is not on".into()));
        }
        let factor = factor.ok_or_else(|| ApiError::invalid("code", "send totp_code or recovery_code"))?;
        let hash = user.password_hash.clone().unwrap_or_default();
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || domain::verify_password(&password, &hash))
            .await
            .map_err(ApiError::internal)?;
        if !matches {
            return Err(ApiError::invalid("password", "is not your password"));
        }
        let txn = self.begin().await?;
        if !self.check_second_factor(&txn, &user, &factor).await? {
            txn.rollback().await?;
            return Err(ApiError::invalid("code", "does not match"));
        }
        users::Entity::update_many()
            .col_expr(users::Column::TotpSecret, Expr::value(Option::<String>::None))
            .col_expr(users::Column::TotpEnabledAt, Expr::value(Option::<DateTime<Utc>>::None))
            .col_expr(users::Column::TotpLastStep, Expr::value(Option::<i64>::None))
            .filter(users::Column::Id.eq(user_id))
            .exec(&txn)
            .await?;
        recovery_codes::Entity::delete_many()
            .filter(recovery_codes::Column::UserId.eq(user_id))
            .exec(&txn)
            .await?;
        self.commit(txn).await?;
        Ok(now())
    }
}

//! Keeps OAuth access tokens fresh. Accounts whose token expires within
//! `social_token_refresh_margin` and that were connected with what a
//! refresh needs (Twitch: a refresh token and the application's client
//! secret) get a `jobs.social.refresh_token` job: at connect, and from a
//! sweep every minute. The job's bus id names the account and the expiry it
//! replaces, so replicas sweeping at once queue it once, and a job whose
//! token was refreshed meanwhile does nothing.
//!
//! A refresh the platform refuses for good marks the account
//! `ACCOUNT_STATUS_NEEDS_REAUTH`; either way a failure emits
//! `events.social.token_refresh_failed`.

use std::time::Duration;

use postmesh_kit::ServiceDeps;
use postmesh_kit::bus::{BusError, ConsumerSpec, Delivery, JobOutcome};
use postmesh_kit::db::{ms_of, now_ms};
use postmesh_kit::outbox::OutboxMessage;
use postmesh_proto::postmesh::social::v1::{self as pb, AccountStatus, RefreshTokenJob};
use postmesh_proto::postmesh::r#type::v1::Platform;
use prost::Message as _;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel,
    QueryFilter,
};

use crate::grpc::{credentials_context, timestamp_ms};
use crate::platforms::{Adapters, RefreshError};
use crate::store::accounts;
use crate::worker::open_credentials;

/// The subject of refresh jobs.
pub const SUBJECT: &str = "jobs.social.refresh_token";
/// How often the sweep looks for tokens about to expire.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Starts the consumer and the sweep.
pub async fn start(deps: &ServiceDeps, adapters: Adapters) -> Result<(), BusError> {
    let spec = ConsumerSpec::new("social-refresh-token", SUBJECT, &deps.config);
    let max_attempts = spec.max_deliver;
    let refresher = Refresher { deps: deps.clone(), adapters, max_attempts };
    deps.consume(spec, move |delivery: Delivery| {
        let refresher = refresher.clone();
        async move { refresher.handle(delivery).await }
    })
    .await?;
    let deps = deps.clone();
    let shutdown = deps.shutdown.clone();
    deps.tasks.clone().spawn(async move {
        loop {
            if let Err(err) = sweep(&deps).await {
                tracing::warn!(error = %err, "looking for expiring tokens failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
            }
        }
    });
    Ok(())
}

/// Tokens expiring before this instant (Unix ms) are due for a refresh.
fn refresh_horizon(deps: &ServiceDeps) -> i64 {
    let margin = i64::try_from(deps.config.social_token_refresh_margin.as_millis()).unwrap_or(i64::MAX);
    now_ms().saturating_add(margin)
}

/// Whether `account`'s token is due for a refresh that postmesh can make.
pub(crate) fn due(deps: &ServiceDeps, account: &accounts::Model) -> bool {
    account.status == AccountStatus::Active as i32
        && account.token_expires_at_ms.is_some_and(|at| at <= refresh_horizon(deps))
        && account.credential_fields.split(',').any(|name| name == "refresh_token")
}

/// Queues the refresh of `account`'s current token, in `txn`.
pub(crate) async fn queue(
    deps: &ServiceDeps,
    txn: &impl ConnectionTrait,
    account: &accounts::Model,
) -> Result<(), sea_orm::DbErr> {
    let expires_at = account.token_expires_at_ms.unwrap_or_default();
    let job = RefreshTokenJob {
        workspace_id: account.workspace_id.clone(),
        account_id: account.id.clone(),
        platform: account.platform,
        token_expires_at: Some(timestamp_ms(expires_at)),
    };
    let message = OutboxMessage::job("social", "refresh_token", &job)
        .with_id(format!("refresh-{}-{expires_at}", account.id));
    deps.outbox.enqueue(txn, message).await.map(drop)
}

async fn sweep(deps: &ServiceDeps) -> Result<(), sea_orm::DbErr> {
    let expiring = accounts::Entity::find()
        .filter(accounts::Column::Status.eq(AccountStatus::Active as i32))
        .filter(accounts::Column::TokenExpiresAtMs.lte(refresh_horizon(deps)))
        .all(deps.db.conn())
        .await?;
    for account in expiring.iter().filter(|account| due(deps, account)) {
        let txn = deps.db.begin_write().await?;
        queue(deps, &txn, account).await?;
        deps.outbox.commit(txn).await?;
    }
    Ok(())
}

#[derive(Clone)]
struct Refresher {
    deps: ServiceDeps,
    adapters: Adapters,
    max_attempts: u32,
}

impl Refresher {
    async fn handle(&self, delivery: Delivery) -> JobOutcome {
        let job = match RefreshTokenJob::decode(delivery.message.payload.as_slice()) {
            Ok(job) => job,
            Err(err) => return JobOutcome::Reject { reason: format!("malformed refresh job: {err}") },
        };
        match self.refresh(&job, delivery.attempt).await {
            Ok(outcome) => outcome,
            Err(err) => JobOutcome::Retry { reason: format!("database: {err}"), after: None },
        }
    }

    async fn refresh(&self, job: &RefreshTokenJob, attempt: u32) -> Result<JobOutcome, sea_orm::DbErr> {
        let account = accounts::Entity::find_by_id(job.account_id.clone())
            .filter(accounts::Column::WorkspaceId.eq(&job.workspace_id))
            .one(self.deps.db.conn())
            .await?;
        let replaces = job.token_expires_at.as_ref().map(ms_of);
        let Some(account) = account.filter(|a| {
            a.status == AccountStatus::Active as i32
                && a.token_expires_at_ms.is_some()
                && a.token_expires_at_ms == replaces
        }) else {
            // Gone, disconnected, waiting for a reconnect, or refreshed since.
            return Ok(JobOutcome::Done);
        };
        let platform = Platform::try_from(account.platform).unwrap_or(Platform::Unspecified);
        let credentials = match open_credentials(&self.deps, &account) {
            Ok(Some(credentials)) => credentials,
            Ok(None) => return Ok(JobOutcome::Done),
            Err(message) => return Ok(JobOutcome::Reject { reason: message }),
        };
        match self.adapters.refresh(platform, &credentials).await {
            Ok(refreshed) => {
                let plain = serde_json::to_vec(&refreshed.credentials.0)
                    .map_err(|e| sea_orm::DbErr::Custom(e.to_string()))?;
                let sealed = self.deps.cipher.encrypt(&plain, &credentials_context(&account.id));
                let mut active = account.into_active_model();
                active.credentials = Set(Some(sealed));
                active.token_expires_at_ms = Set(refreshed.expires_at.map(|t| t.timestamp_millis()));
                active.updated_at_ms = Set(now_ms());
                active.update(self.deps.db.conn()).await?;
                tracing::info!(account = %job.account_id, "access token refreshed");
                Ok(JobOutcome::Done)
            }
            Err(RefreshError::Refused(reason)) => {
                self.failed(account, &reason, true).await?;
                Ok(JobOutcome::Done)
            }
            Err(RefreshError::Unavailable(reason)) if attempt >= self.max_attempts => {
                self.failed(account, &reason, false).await?;
                Ok(JobOutcome::Done)
            }
            Err(RefreshError::Unavailable(reason)) => Ok(JobOutcome::Retry { reason, after: None }),
        }
    }

    /// Records a failed refresh: the event, and for a refusal the account's
    /// new status.
    async fn failed(
        &self,
        account: accounts::Model,
        reason: &str,
        needs_reauth: bool,
    ) -> Result<(), sea_orm::DbErr> {
        tracing::warn!(account = %account.id, needs_reauth, %reason, "token refresh failed");
        let now = now_ms();
        let event = pb::TokenRefreshFailedEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            workspace_id: account.workspace_id.clone(),
            occurred_at: Some(timestamp_ms(now)),
            account_id: account.id.clone(),
            platform: account.platform,
            display_name: account.display_name.clone(),
            reason: reason.to_owned(),
            needs_reauth,
            token_expires_at: account.token_expires_at_ms.map(timestamp_ms),
        };
        let txn = self.deps.db.begin_write().await?;
        if needs_reauth {
            let mut active = account.into_active_model();
            active.status = Set(AccountStatus::NeedsReauth as i32);
            active.status_reason = Set(reason.chars().take(500).collect());
            active.updated_at_ms = Set(now);
            active.update(&txn).await?;
        }
        self.deps
            .outbox
            .enqueue(&txn, OutboxMessage::event("social", "token_refresh_failed", &event))
            .await?;
        self.deps.outbox.commit(txn).await
    }
}

//! The publishing worker: consumes `jobs.social.publish` (one job per post
//! × account) and makes one try per delivery.
//!
//! Before a try it asks the content service whether the target still wants
//! publishing (`BeginTargetPublish`, which marks it Publishing). It never
//! posts twice: the platform's answer is recorded under the job's
//! idempotency key, in the same transaction as the
//! `events.social.post_published` event, before the delivery is acked; a
//! redelivery that finds the record only re-emits the event (same id, so
//! the bus drops the copy). Where the worker dies between the platform's
//! answer and that record, the platforms that de-duplicate (Mastodon) get
//! the same `Idempotency-Key` again.
//!
//! Failures: 429 waits the platform's `Retry-After`; 5xx, timeouts and
//! network errors back off exponentially with jitter; errors that cannot
//! succeed on a retry (bad credentials, refused content) fault the target
//! at once. After the last try the target is Faulted and the job becomes a
//! dead letter of its workspace, from where `ReplayDeadLetters` retries it.

use std::time::{Duration, Instant};

use postmesh_kit::ServiceDeps;
use postmesh_kit::bus::{ConsumerSpec, Delivery, JobOutcome};
use postmesh_kit::db::now_ms;
use postmesh_kit::kv::RateLimit as Pace;
use postmesh_kit::outbox::OutboxMessage;
use postmesh_proto::postmesh::content::v1::BeginTargetPublishRequest;
use postmesh_proto::postmesh::content::v1::content_service_client::ContentServiceClient;
use postmesh_proto::postmesh::social::v1::{
    self as pb, AccountStatus, PublishErrorKind, PublishJob, RateLimitScope,
};
use postmesh_proto::postmesh::r#type::v1::Platform;
use prost::Message as _;
use rand::Rng;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter};

use crate::grpc::{credentials_context, timestamp_ms};
use crate::platforms::{self, Adapters, Credentials, PublishError, Published};
use crate::store::{accounts, attempts, dead_letters, published};

/// The subject of publishing jobs.
pub const SUBJECT: &str = "jobs.social.publish";
/// First back-off after a 5xx, timeout or network error.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A pace wait up to this long is waited out in the handler; longer ones
/// hand the job back.
const PACE_WAIT_MAX: Duration = Duration::from_secs(10);

/// Starts the consumer.
pub async fn start(deps: &ServiceDeps, adapters: Adapters) -> Result<(), postmesh_kit::bus::BusError> {
    let mut spec = ConsumerSpec::new("social-publish", SUBJECT, &deps.config);
    spec.max_deliver = deps.config.social_publish_max_attempts;
    // A try takes at most the platform's timeout plus a pace wait; a
    // delivery unanswered for longer belongs to a worker that died.
    spec.ack_wait = deps.config.social_publish_timeout + PACE_WAIT_MAX + Duration::from_secs(5);
    spec.concurrency = 64;
    let worker = Worker { deps: deps.clone(), adapters, max_attempts: spec.max_deliver };
    deps.consume(spec, move |delivery: Delivery| {
        let worker = worker.clone();
        async move { worker.handle(delivery).await }
    })
    .await
}

#[derive(Clone)]
struct Worker {
    deps: ServiceDeps,
    adapters: Adapters,
    max_attempts: u32,
}

/// Why a try did not publish, before it is turned into an outcome.
enum Stop {
    /// Nothing to do (target final, post gone): ack.
    Skip(String),
    /// The target fails for good with this reason.
    Fault(PublishError),
    /// Hand the job back for later without spending the platform's patience
    /// (the content service or the store is down, the pace is full).
    Later(String, Option<Duration>),
}

impl From<sea_orm::DbErr> for Stop {
    fn from(err: sea_orm::DbErr) -> Self {
        Stop::Later(format!("database: {err}"), None)
    }
}

fn internal(message: impl Into<String>) -> PublishError {
    PublishError {
        kind: PublishErrorKind::Internal,
        message: message.into(),
        http_status: 0,
        retry_after: None,
    }
}

fn unavailable_account(message: &str) -> PublishError {
    PublishError {
        kind: PublishErrorKind::AccountDisconnected,
        message: message.to_owned(),
        http_status: 0,
        retry_after: None,
    }
}

/// How one try ended, for the attempts table.
enum Outcome<'a> {
    Posted,
    Failed(&'a PublishError),
}

/// The account's credentials, unsealed; `None` when it has none (it was
/// disconnected).
pub(crate) fn open_credentials(
    deps: &ServiceDeps,
    account: &accounts::Model,
) -> Result<Option<Credentials>, String> {
    let Some(sealed) = account.credentials.as_deref() else { return Ok(None) };
    let plain = deps
        .cipher
        .decrypt(sealed, &credentials_context(&account.id))
        .map_err(|e| format!("credentials cannot be opened: {e}"))?;
    let map = serde_json::from_slice(&plain).map_err(|e| format!("credentials are unreadable: {e}"))?;
    Ok(Some(Credentials(map)))
}

/// Exponential back-off with ±20% jitter for try `attempt` (from 1).
fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(BACKOFF_MAX);
    let jitter = rand::rng().random_range(0.8..1.2);
    exp.mul_f64(jitter)
}

impl Worker {
    async fn handle(&self, delivery: Delivery) -> JobOutcome {
        let job = match PublishJob::decode(delivery.message.payload.as_slice()) {
            Ok(job) => job,
            Err(err) => return JobOutcome::Reject { reason: format!("malformed publish job: {err}") },
        };
        let attempt = delivery.attempt;
        match self.try_publish(&job, attempt).await {
            Ok(()) => JobOutcome::Done,
            Err(Stop::Skip(reason)) => {
                tracing::debug!(post = %job.post_id, target = %job.target_id, %reason, "publish job dropped");
                JobOutcome::Done
            }
            Err(Stop::Later(reason, after)) => JobOutcome::Retry { reason, after },
            Err(Stop::Fault(error)) => self.failed(&job, attempt, error).await,
        }
    }

    /// One try: check, pace, publish, record.
    async fn try_publish(&self, job: &PublishJob, attempt: u32) -> Result<(), Stop> {
        let db = self.deps.db.conn();
        if let Some(done) = published::Entity::find_by_id(job.idempotency_key.clone()).one(db).await? {
            // Published by an earlier delivery: say so again (same event id).
            let txn = self.deps.db.begin_write().await?;
            self.emit_published(&txn, job, &done).await?;
            self.deps.outbox.commit(txn).await?;
            return Ok(());
        }
        self.begin(job, attempt).await?;

        let platform = Platform::try_from(job.platform).unwrap_or(Platform::Unspecified);
        let account = accounts::Entity::find_by_id(job.account_id.clone())
            .filter(accounts::Column::WorkspaceId.eq(&job.workspace_id))
            .one(db)
            .await?
            .ok_or_else(|| Stop::Fault(unavailable_account("the account no longer exists")))?;
        if account.platform != job.platform || account.status == AccountStatus::Disconnected as i32 {
            return Err(Stop::Fault(unavailable_account("the account was disconnected")));
        }
        if account.status == AccountStatus::NeedsReauth as i32 {
            return Err(Stop::Fault(PublishError {
                kind: PublishErrorKind::Unauthorized,
                message: format!("the account needs to be connected again: {}", account.status_reason),
                http_status: 0,
                retry_after: None,
            }));
        }
        let credentials = self.credentials(&account)?;
        let content = job.content.clone().unwrap_or_default();
        self.pace(platform, &account.id, &credentials).await?;

        let started = Instant::now();
        let answer = self.adapters.publish(platform, &credentials, &content, &job.idempotency_key).await;
        let took = started.elapsed();
        match answer {
            Ok(done) => self.record(job, attempt, &account, done, took).await,
            Err(error) => {
                self.note_attempt(job, attempt, &error, took).await;
                if error.kind == PublishErrorKind::Unauthorized && self.token_replaced(&account).await {
                    // The token was refreshed while this try used the old
                    // one: the account is fine, try again with the new.
                    return Err(Stop::Later("the account's token was refreshed meanwhile".into(), None));
                }
                Err(Stop::Fault(error))
            }
        }
    }

    /// Whether the account's token changed since `account` was read.
    async fn token_replaced(&self, account: &accounts::Model) -> bool {
        let now = accounts::Entity::find_by_id(account.id.clone()).one(self.deps.db.conn()).await;
        matches!(now, Ok(Some(now)) if now.token_expires_at_ms != account.token_expires_at_ms)
    }

    /// Asks the content service whether to go on (and marks the target
    /// Publishing).
    async fn begin(&self, job: &PublishJob, attempt: u32) -> Result<(), Stop> {
        let channel =
            self.deps.clients.channel("content").await.map_err(|s| Stop::Later(s.message().into(), None))?;
        let answer = ContentServiceClient::new(channel)
            .begin_target_publish(BeginTargetPublishRequest {
                workspace_id: job.workspace_id.clone(),
                post_id: job.post_id.clone(),
                target_id: job.target_id.clone(),
                round: job.round,
                attempt: attempt as i32,
            })
            .await;
        match answer {
            Ok(answer) if answer.get_ref().proceed => Ok(()),
            Ok(answer) => Err(Stop::Skip(answer.into_inner().reason)),
            Err(status) if status.code() == tonic::Code::NotFound => Err(Stop::Skip(status.message().into())),
            Err(status) => Err(Stop::Later(format!("content service: {}", status.message()), None)),
        }
    }

    fn credentials(&self, account: &accounts::Model) -> Result<Credentials, Stop> {
        match open_credentials(&self.deps, account) {
            Ok(Some(credentials)) => Ok(credentials),
            Ok(None) => Err(Stop::Fault(unavailable_account("the account has no credentials"))),
            Err(message) => Err(Stop::Fault(internal(message))),
        }
    }

    /// Keeps the paces the registry names for the platform and the account.
    async fn pace(
        &self,
        platform: Platform,
        account_id: &str,
        credentials: &Credentials,
    ) -> Result<(), Stop> {
        let Some(info) = platforms::info(platform) else { return Ok(()) };
        for limit in &info.rate_limits {
            let period = limit.period.map(|p| Duration::new(p.seconds.max(0) as u64, p.nanos.max(0) as u32));
            let (Some(period), Ok(requests)) = (period, u32::try_from(limit.requests)) else { continue };
            if requests == 0 || period.is_zero() {
                continue;
            }
            let key = match RateLimitScope::try_from(limit.scope) {
                Ok(RateLimitScope::Account) => format!("social:pace:{}:{account_id}", platform.as_str_name()),
                Ok(RateLimitScope::Credential) => {
                    let shared = platforms::shared_credential(platform, credentials);
                    format!(
                        "social:pace:{}:credential:{}",
                        platform.as_str_name(),
                        shared.unwrap_or(account_id)
                    )
                }
                _ => format!("social:pace:{}", platform.as_str_name()),
            };
            let pace = Pace { limit: requests, period, burst: requests };
            loop {
                // A store outage must not stop publishing: go on unpaced.
                let Ok(decision) = self.deps.kv.rate_limit(&key, pace).await else { break };
                if decision.allowed {
                    break;
                }
                if decision.retry_after > PACE_WAIT_MAX {
                    return Err(Stop::Later("pace of the platform".into(), Some(decision.retry_after)));
                }
                tokio::time::sleep(decision.retry_after).await;
            }
        }
        Ok(())
    }

    /// The platform accepted: record it with its event, then ack.
    async fn record(
        &self,
        job: &PublishJob,
        attempt: u32,
        account: &accounts::Model,
        done: Published,
        took: Duration,
    ) -> Result<(), Stop> {
        let now = now_ms();
        let enqueued_ms = job.enqueued_at.map_or(now, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
        let row = published::Model {
            idempotency_key: job.idempotency_key.clone(),
            workspace_id: job.workspace_id.clone(),
            post_id: job.post_id.clone(),
            target_id: job.target_id.clone(),
            account_id: job.account_id.clone(),
            platform: job.platform,
            round: job.round,
            attempt: attempt as i32,
            external_id: done.external_id,
            external_url: done.external_url,
            event_id: uuid::Uuid::now_v7().to_string(),
            latency_ms: (now - enqueued_ms).max(0),
            published_at_ms: now,
        };
        let txn = self.deps.db.begin_write().await?;
        let row = match published::Entity::find_by_id(row.idempotency_key.clone()).one(&txn).await? {
            Some(existing) => existing,
            None => published::ActiveModel::from(row).insert(&txn).await?,
        };
        let mut active = account.clone().into_active_model();
        active.last_published_at_ms = Set(Some(now));
        active.update(&txn).await?;
        self.insert_attempt(&txn, job, attempt, Outcome::Posted, took).await?;
        self.emit_published(&txn, job, &row).await?;
        self.deps.outbox.commit(txn).await?;
        Ok(())
    }

    async fn emit_published(
        &self,
        txn: &impl sea_orm::ConnectionTrait,
        job: &PublishJob,
        row: &published::Model,
    ) -> Result<(), sea_orm::DbErr> {
        let event = pb::PostPublishedEvent {
            event_id: row.event_id.clone(),
            workspace_id: row.workspace_id.clone(),
            occurred_at: Some(timestamp_ms(row.published_at_ms)),
            post_id: row.post_id.clone(),
            target_id: row.target_id.clone(),
            account_id: row.account_id.clone(),
            platform: row.platform,
            round: job.round.max(row.round),
            attempt: row.attempt,
            external_id: row.external_id.clone(),
            external_url: row.external_url.clone(),
            latency: Some(prost_types::Duration {
                seconds: row.latency_ms / 1000,
                nanos: ((row.latency_ms % 1000) * 1_000_000) as i32,
            }),
        };
        let message = OutboxMessage::event("social", "post_published", &event).with_id(row.event_id.clone());
        self.deps.outbox.enqueue(txn, message).await.map(|_| ())
    }

    async fn insert_attempt(
        &self,
        txn: &impl sea_orm::ConnectionTrait,
        job: &PublishJob,
        attempt: u32,
        outcome: Outcome<'_>,
        took: Duration,
    ) -> Result<(), sea_orm::DbErr> {
        let (name, error_kind, http_status) = match outcome {
            Outcome::Posted => ("posted", 0, 0),
            Outcome::Failed(error) => {
                let name = if error.retryable() { "retry" } else { "faulted" };
                (name, error.kind as i32, i32::from(error.http_status))
            }
        };
        attempts::ActiveModel {
            id: Set(uuid::Uuid::now_v7().to_string()),
            workspace_id: Set(job.workspace_id.clone()),
            platform: Set(job.platform),
            account_id: Set(job.account_id.clone()),
            post_id: Set(job.post_id.clone()),
            outcome: Set(name.to_owned()),
            attempt: Set(attempt as i32),
            error_kind: Set(error_kind),
            http_status: Set(http_status),
            latency_ms: Set(took.as_millis() as i64),
            at_ms: Set(now_ms()),
        }
        .insert(txn)
        .await
        .map(|_| ())
    }

    /// Notes a failed try for the metrics (best effort).
    async fn note_attempt(&self, job: &PublishJob, attempt: u32, error: &PublishError, took: Duration) {
        let outcome = Outcome::Failed(error);
        if let Err(err) = self.insert_attempt(self.deps.db.conn(), job, attempt, outcome, took).await {
            tracing::warn!(error = %err, "publish attempt not recorded");
        }
    }

    /// A try failed: retry later while tries remain and the error allows,
    /// else fault the target (and dead-letter the job after its last try).
    async fn failed(&self, job: &PublishJob, attempt: u32, error: PublishError) -> JobOutcome {
        let now = now_ms();
        let last = attempt >= self.max_attempts;
        if error.retryable() && !last {
            let after = error.retry_after.unwrap_or_else(|| backoff(attempt));
            let event = pb::PublishRetryScheduledEvent {
                event_id: uuid::Uuid::now_v7().to_string(),
                workspace_id: job.workspace_id.clone(),
                occurred_at: Some(timestamp_ms(now)),
                post_id: job.post_id.clone(),
                target_id: job.target_id.clone(),
                account_id: job.account_id.clone(),
                platform: job.platform,
                round: job.round,
                attempt: attempt as i32,
                failure: Some(error.to_failure()),
                next_attempt_at: Some(timestamp_ms(now + after.as_millis() as i64)),
            };
            if let Err(err) =
                self.emit(OutboxMessage::event("social", "publish_retry_scheduled", &event)).await
            {
                tracing::warn!(error = %err, "retry event not recorded");
            }
            tracing::info!(post = %job.post_id, platform = job.platform, attempt, kind = ?error.kind, after_ms = after.as_millis() as u64, "publish try failed; retrying");
            return JobOutcome::Retry { reason: error.message, after: Some(after) };
        }
        let dead_lettered = error.retryable() && last;
        let event = pb::PostFailedEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            workspace_id: job.workspace_id.clone(),
            occurred_at: Some(timestamp_ms(now)),
            post_id: job.post_id.clone(),
            target_id: job.target_id.clone(),
            account_id: job.account_id.clone(),
            platform: job.platform,
            round: job.round,
            attempts: attempt as i32,
            failure: Some(error.to_failure()),
            dead_lettered,
        };
        if error.kind == PublishErrorKind::Unauthorized {
            self.needs_reauth(job, &error.message).await;
        }
        let letter = dead_lettered.then(|| dead_letters::ActiveModel {
            id: Set(uuid::Uuid::now_v7().to_string()),
            workspace_id: Set(job.workspace_id.clone()),
            subject: Set(SUBJECT.to_owned()),
            post_id: Set(job.post_id.clone()),
            target_id: Set(job.target_id.clone()),
            account_id: Set(job.account_id.clone()),
            platform: Set(job.platform),
            attempts: Set(attempt as i32),
            last_failure: Set(error.to_failure().encode_to_vec()),
            enqueued_at_ms: Set(job
                .enqueued_at
                .map_or(now, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)),
            dead_lettered_at_ms: Set(now),
            replay_count: Set(0),
            last_replayed_at_ms: Set(None),
        });
        if let Err(err) =
            self.fail_target(OutboxMessage::event("social", "post_failed", &event), letter).await
        {
            // Without its event the target would stay Publishing: try again.
            return JobOutcome::Retry { reason: format!("failure not recorded: {err}"), after: None };
        }
        tracing::info!(post = %job.post_id, platform = job.platform, attempt, kind = ?error.kind, "publish failed for good");
        // A dead-lettered job lives on in `social_dead_letters` (per
        // workspace, replayed through the content service with a new
        // round), not in the bus's own dead letters.
        JobOutcome::Done
    }

    /// The failure event and, after the last try, the dead letter, together.
    async fn fail_target(
        &self,
        message: OutboxMessage,
        letter: Option<dead_letters::ActiveModel>,
    ) -> Result<(), sea_orm::DbErr> {
        let txn = self.deps.db.begin_write().await?;
        self.deps.outbox.enqueue(&txn, message).await?;
        if let Some(letter) = letter {
            letter.insert(&txn).await?;
        }
        self.deps.outbox.commit(txn).await
    }

    async fn emit(&self, message: OutboxMessage) -> Result<(), sea_orm::DbErr> {
        let txn = self.deps.db.begin_write().await?;
        self.deps.outbox.enqueue(&txn, message).await?;
        self.deps.outbox.commit(txn).await
    }

    /// The platform refused the stored credentials: the account needs a new
    /// connection before anything else is published to it.
    async fn needs_reauth(&self, job: &PublishJob, reason: &str) {
        let db = self.deps.db.conn();
        let Ok(Some(account)) = accounts::Entity::find_by_id(job.account_id.clone()).one(db).await else {
            return;
        };
        if account.status != AccountStatus::Active as i32 {
            return;
        }
        let mut active = account.into_active_model();
        active.status = Set(AccountStatus::NeedsReauth as i32);
        active.status_reason = Set(reason.chars().take(500).collect());
        active.updated_at_ms = Set(now_ms());
        if let Err(err) = active.update(db).await {
            tracing::warn!(error = %err, "account status not updated");
        }
    }
}

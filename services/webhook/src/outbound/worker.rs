//! The delivery worker: consumes `jobs.webhook.deliver` (one HTTP attempt
//! per job) and `jobs.webhook.replay`.
//!
//! An attempt job waits until its `attempt_at` (handed back to the bus with
//! that delay), then acts only if the delivery is still PENDING with
//! `attempt_count` = `attempt_number` - 1 and the endpoint enabled, so a
//! redelivered or superseded job does nothing. The request is signed with
//! the endpoint's secret(s) at that moment, sent through the guarded client
//! (30 s timeout, no redirects, the SSRF guard inside its resolver), and
//! its outcome recorded in one transaction with the delivery's new state,
//! the next attempt's job (per the retry schedule) or the
//! `events.webhook.delivery_failed` event, and, when the endpoint has been
//! failing for longer than the configured span, its automatic disabling
//! with `events.webhook.endpoint_disabled` and `jobs.notification.notify`.
//! No transaction is open during the HTTP call.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use postmesh_kit::bus::{ConsumerSpec, Delivery, JobOutcome};
use postmesh_kit::db::now_ms;
use postmesh_kit::outbox::OutboxMessage;
use postmesh_proto::postmesh::notification::v1::{NotificationSeverity, NotifyJob, NotifyRequest};
use postmesh_proto::postmesh::webhook::v1::{
    self as pb, DeliveryAttemptJob, DeliveryAttemptStatus, DeliveryAttemptTrigger, DeliveryStatus,
    EndpointStatus, ReplayJob,
};
use prost::Message as _;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
};

use super::emit::{first_attempt, new_delivery};
use super::endpoints::cancel_pending;
use super::store::{attempts, deliveries, endpoints, messages, replays};
use super::{Outbound, guard, ms_of, timestamp_ms};

/// The subject of attempt jobs.
pub const DELIVER: &str = "jobs.webhook.deliver";
/// The subject of replay jobs.
pub const REPLAY: &str = "jobs.webhook.replay";
/// Bytes of the response kept in the log.
const EXCERPT_BYTES: usize = 1024;
/// Bytes of a response read before the rest is dropped.
const READ_AT_MOST: usize = 64 * 1024;
/// Messages a replay queues per transaction.
const REPLAY_BATCH: usize = 100;

/// Starts the two consumers.
pub async fn start(outbound: &Outbound) -> Result<(), postmesh_kit::bus::BusError> {
    let deps = &outbound.deps;
    let mut spec = ConsumerSpec::new("webhook-deliver", DELIVER, &deps.config);
    // Waiting for `attempt_at` hands the job back once per wait, and a
    // delivery's outcome is the HTTP result, not the job's: the job itself
    // is only retried when recording fails.
    spec.max_deliver = 1000;
    spec.ack_wait = deps.config.webhook_delivery_timeout + Duration::from_secs(15);
    spec.concurrency = 64;
    let worker = outbound.clone();
    deps.consume(spec, move |delivery: Delivery| {
        let worker = worker.clone();
        async move { worker.handle_attempt(delivery).await }
    })
    .await?;

    let spec = ConsumerSpec::new("webhook-replay", REPLAY, &deps.config);
    let worker = outbound.clone();
    deps.consume(spec, move |delivery: Delivery| {
        let worker = worker.clone();
        async move { worker.handle_replay(delivery).await }
    })
    .await
}

/// How one HTTP attempt ended.
struct Attempted {
    status_code: i32,
    excerpt: String,
    /// Why it failed without a response; empty otherwise.
    error: String,
    latency_ms: i64,
    attempted_at_ms: i64,
}

impl Attempted {
    fn succeeded(&self) -> bool {
        (200..300).contains(&self.status_code)
    }

    /// The short reason shown when the endpoint is disabled.
    fn reason(&self) -> String {
        if self.error.is_empty() { format!("HTTP {}", self.status_code) } else { self.error.clone() }
    }
}

/// Words for a failed request, with the SSRF guard's refusal recognised
/// anywhere in the error chain.
fn describe(err: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<guard::Refused>() {
            return refused.to_string();
        }
        source = e.source();
    }
    if err.is_timeout() {
        return "timeout".into();
    }
    let mut text = String::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        source = e.source();
    }
    if text.contains("Connection refused") {
        return "connection refused".into();
    }
    text.chars().take(500).collect()
}

/// The request body: the same bytes on every attempt and replay.
fn body_of(message: &messages::Model) -> String {
    let timestamp = chrono::DateTime::from_timestamp_millis(message.created_at_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(
        "{{\"type\":{},\"timestamp\":{},\"data\":{}}}",
        serde_json::Value::String(message.event_type.clone()),
        serde_json::Value::String(timestamp),
        message.payload
    )
}

impl Outbound {
    async fn handle_attempt(&self, delivery: Delivery) -> JobOutcome {
        let job = match DeliveryAttemptJob::decode(delivery.message.payload.as_slice()) {
            Ok(job) => job,
            Err(err) => return JobOutcome::Reject { reason: format!("malformed attempt job: {err}") },
        };
        if let Some(at) = job.attempt_at.as_ref().map(ms_of) {
            let wait = at - now_ms();
            if wait > 0 {
                return JobOutcome::Retry {
                    reason: "not due yet".into(),
                    after: Some(Duration::from_millis(wait as u64)),
                };
            }
        }
        match self.attempt(&job).await {
            Ok(()) => JobOutcome::Done,
            Err(err) => JobOutcome::Retry { reason: format!("attempt not recorded: {err}"), after: None },
        }
    }

    #[tracing::instrument(skip_all, fields(delivery = %job.delivery_id, attempt = job.attempt_number))]
    async fn attempt(&self, job: &DeliveryAttemptJob) -> Result<(), sea_orm::DbErr> {
        let db = self.deps.db.conn();
        let Some(delivery) = deliveries::Entity::find_by_id(job.delivery_id.clone())
            .filter(deliveries::Column::WorkspaceId.eq(&job.workspace_id))
            .one(db)
            .await?
        else {
            return Ok(());
        };
        if delivery.status != DeliveryStatus::Pending as i32
            || delivery.attempt_count != job.attempt_number - 1
        {
            tracing::debug!("attempt superseded");
            return Ok(());
        }
        let endpoint = endpoints::Entity::find_by_id(delivery.endpoint_id.clone()).one(db).await?;
        let Some(endpoint) =
            endpoint.filter(|e| e.deleted_at_ms.is_none() && e.status == EndpointStatus::Enabled as i32)
        else {
            let txn = self.deps.db.begin_write().await?;
            cancel_pending(&txn, &delivery.endpoint_id, now_ms()).await?;
            txn.commit().await?;
            return Ok(());
        };
        let Some(message) = messages::Entity::find_by_id(delivery.message_id.clone()).one(db).await? else {
            tracing::warn!(message = %delivery.message_id, "delivery without its message");
            return Ok(());
        };
        let outcome = self.send(&endpoint, &message).await;
        self.record(job, delivery, endpoint, outcome).await
    }

    /// Signs and POSTs the message to the endpoint.
    async fn send(&self, endpoint: &endpoints::Model, message: &messages::Model) -> Attempted {
        let started_ms = now_ms();
        let failed = |error: String, started: Instant| Attempted {
            status_code: 0,
            excerpt: String::new(),
            error,
            latency_ms: started.elapsed().as_millis() as i64,
            attempted_at_ms: started_ms,
        };
        let started = Instant::now();
        let secrets = match self.signing_secrets(endpoint, started_ms) {
            Ok(secrets) => secrets,
            Err(err) => return failed(err, started),
        };
        // IP literals never reach the resolver: check them here.
        if let Ok(url) = url::Url::parse(&endpoint.url) {
            let literal = match url.host() {
                Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
                _ => None,
            };
            if let Some(ip) = literal
                && let Err(refused) = self.guard.check_addr(ip)
            {
                return failed(refused.to_string(), started);
            }
        }
        let body = body_of(message);
        let timestamp = started_ms / 1000;
        let signature = super::signing::signature_header(
            secrets.iter().map(String::as_str),
            &message.id,
            timestamp,
            body.as_bytes(),
        );
        let context = postmesh_kit::telemetry::RequestContext::current_or_new();
        let request = self
            .http
            .post(&endpoint.url)
            .header("content-type", "application/json")
            .header("webhook-id", &message.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("traceparent", context.traceparent.clone())
            .header("x-request-id", context.request_id.clone())
            .body(body);
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => return failed(describe(&err), started),
        };
        let status_code = i32::from(response.status().as_u16());
        let mut kept = Vec::new();
        let mut stream = response.bytes_stream();
        let mut error = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    kept.extend_from_slice(&chunk[..chunk.len().min(READ_AT_MOST - kept.len())]);
                    if kept.len() >= READ_AT_MOST {
                        break;
                    }
                }
                Err(err) => {
                    error = describe(&err);
                    break;
                }
            }
        }
        kept.truncate(EXCERPT_BYTES);
        Attempted {
            status_code,
            excerpt: String::from_utf8_lossy(&kept).into_owned(),
            // A body cut short by the timeout still counts as answered when
            // the status was a success; otherwise the error is kept.
            error: if (200..300).contains(&status_code) { String::new() } else { error },
            latency_ms: started.elapsed().as_millis() as i64,
            attempted_at_ms: started_ms,
        }
    }

    /// Records the attempt and what follows from it, in one transaction.
    async fn record(
        &self,
        job: &DeliveryAttemptJob,
        delivery: deliveries::Model,
        endpoint: endpoints::Model,
        outcome: Attempted,
    ) -> Result<(), sea_orm::DbErr> {
        let now = now_ms();
        let txn = self.deps.db.begin_write().await?;
        // Re-read under the write lock: another attempt of the same number
        // (a manual one racing the scheduled one) may have been recorded.
        let Some(delivery) = deliveries::Entity::find_by_id(delivery.id.clone()).one(&txn).await? else {
            return Ok(());
        };
        if delivery.status != DeliveryStatus::Pending as i32
            || delivery.attempt_count != job.attempt_number - 1
        {
            return Ok(());
        }
        let trigger =
            DeliveryAttemptTrigger::try_from(job.trigger).unwrap_or(DeliveryAttemptTrigger::Scheduled);
        let succeeded = outcome.succeeded();
        let step = usize::try_from(delivery.schedule_step).unwrap_or(usize::MAX);
        let next_at = (!succeeded && delivery.auto_retry)
            .then(|| self.schedule.get(step))
            .flatten()
            .map(|wait| now + wait.as_millis() as i64);

        attempts::ActiveModel {
            id: Set(uuid::Uuid::now_v7().to_string()),
            workspace_id: Set(delivery.workspace_id.clone()),
            delivery_id: Set(delivery.id.clone()),
            message_id: Set(delivery.message_id.clone()),
            endpoint_id: Set(endpoint.id.clone()),
            url: Set(endpoint.url.clone()),
            event_type: Set(delivery.event_type.clone()),
            attempt_number: Set(job.attempt_number),
            trigger: Set(trigger as i32),
            status: Set(if succeeded {
                DeliveryAttemptStatus::Succeeded as i32
            } else {
                DeliveryAttemptStatus::Failed as i32
            }),
            status_code: Set(outcome.status_code),
            latency_ms: Set(outcome.latency_ms),
            response_excerpt: Set(outcome.excerpt.clone()),
            error: Set(outcome.error.clone()),
            attempted_at_ms: Set(outcome.attempted_at_ms),
            next_attempt_at_ms: Set(next_at),
        }
        .insert(&txn)
        .await?;

        let mut active = delivery.clone().into_active_model();
        active.attempt_count = Set(job.attempt_number);
        active.manual_queued = Set(false);
        active.updated_at_ms = Set(now);
        active.next_attempt_at_ms = Set(next_at);
        if succeeded {
            active.status = Set(DeliveryStatus::Succeeded as i32);
        } else if let Some(next_at) = next_at {
            active.schedule_step = Set(delivery.schedule_step + 1);
            let next = super::emit::attempt_job(
                &delivery,
                job.attempt_number + 1,
                DeliveryAttemptTrigger::Scheduled,
                Some(next_at),
            );
            self.deps.outbox.enqueue(&txn, next).await?;
        } else {
            active.status = Set(DeliveryStatus::Failed as i32);
            if delivery.auto_retry {
                let event = pb::DeliveryFailedEvent {
                    event_id: uuid::Uuid::now_v7().to_string(),
                    workspace_id: delivery.workspace_id.clone(),
                    occurred_at: Some(timestamp_ms(now)),
                    delivery_id: delivery.id.clone(),
                    endpoint_id: endpoint.id.clone(),
                    message_id: delivery.message_id.clone(),
                    event_type: delivery.event_type.clone(),
                    attempt_count: job.attempt_number,
                    last_status_code: outcome.status_code,
                    last_error: outcome.error.clone(),
                };
                let message = OutboxMessage::event("webhook", "delivery_failed", &event)
                    .with_id(event.event_id.clone());
                self.deps.outbox.enqueue(&txn, message).await?;
            }
        }
        active.update(&txn).await?;

        // The endpoint's run of failures.
        let current = endpoints::Entity::find_by_id(endpoint.id.clone()).one(&txn).await?.unwrap_or(endpoint);
        if succeeded {
            if current.failures_started_at_ms.is_some() {
                let mut active = current.into_active_model();
                active.failures_started_at_ms = Set(None);
                active.update(&txn).await?;
            }
        } else {
            let started = current.failures_started_at_ms.unwrap_or(now);
            let span = self.deps.config.webhook_auto_disable_after.as_millis() as i64;
            if now - started >= span && current.status == EndpointStatus::Enabled as i32 {
                self.auto_disable(&txn, current, started, &outcome.reason(), now).await?;
            } else if current.failures_started_at_ms.is_none() {
                let mut active = current.into_active_model();
                active.failures_started_at_ms = Set(Some(now));
                active.update(&txn).await?;
            }
        }
        self.deps.outbox.commit(txn).await?;
        tracing::debug!(succeeded, status = outcome.status_code, "attempt recorded");
        Ok(())
    }

    /// Disables an endpoint that kept failing, cancels its pending
    /// deliveries, and reports it (event and notification).
    async fn auto_disable(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        endpoint: endpoints::Model,
        started: i64,
        reason: &str,
        now: i64,
    ) -> Result<(), sea_orm::DbErr> {
        let reason: String = reason.chars().take(500).collect();
        let mut active = endpoint.clone().into_active_model();
        active.status = Set(EndpointStatus::AutoDisabled as i32);
        active.disabled_reason = Set(reason.clone());
        active.disabled_by = Set(String::new());
        active.disabled_at_ms = Set(Some(now));
        active.failures_started_at_ms = Set(Some(started));
        active.updated_at_ms = Set(now);
        active.update(txn).await?;
        cancel_pending(txn, &endpoint.id, now).await?;
        let event = pb::EndpointDisabledEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            workspace_id: endpoint.workspace_id.clone(),
            occurred_at: Some(timestamp_ms(now)),
            endpoint_id: endpoint.id.clone(),
            url: endpoint.url.clone(),
            status: EndpointStatus::AutoDisabled as i32,
            reason: reason.clone(),
            disabled_by: String::new(),
            created_by: endpoint.created_by.clone(),
            failures_started_at: Some(timestamp_ms(started)),
        };
        let message =
            OutboxMessage::event("webhook", "endpoint_disabled", &event).with_id(event.event_id.clone());
        self.deps.outbox.enqueue(txn, message).await?;
        let key = format!("webhook.endpoint_disabled:{}:{now}", endpoint.id);
        let notify = NotifyJob {
            request: Some(NotifyRequest {
                workspace_id: endpoint.workspace_id.clone(),
                user_ids: if endpoint.created_by.is_empty() {
                    Vec::new()
                } else {
                    vec![endpoint.created_by.clone()]
                },
                topic: "webhooks.endpoint_disabled".into(),
                channels: Vec::new(),
                title: "A webhook endpoint was disabled".into(),
                body: format!(
                    "{} failed every delivery attempt since {} and was disabled. Last failure: {reason}. \
                     Enable it again once it answers; missed events can be replayed.",
                    endpoint.url,
                    chrono::DateTime::from_timestamp_millis(started).unwrap_or_default().to_rfc3339()
                ),
                severity: NotificationSeverity::Error as i32,
                link: String::new(),
                data: None,
                source: "webhook".into(),
                idempotency_key: key.clone(),
            }),
        };
        self.deps
            .outbox
            .enqueue(txn, OutboxMessage::job("notification", "notify", &notify).with_id(key))
            .await?;
        tracing::info!(endpoint = %endpoint.id, %reason, "endpoint disabled after failing");
        Ok(())
    }

    async fn handle_replay(&self, delivery: Delivery) -> JobOutcome {
        let job = match ReplayJob::decode(delivery.message.payload.as_slice()) {
            Ok(job) => job,
            Err(err) => return JobOutcome::Reject { reason: format!("malformed replay job: {err}") },
        };
        match self.replay(&job).await {
            Ok(()) => JobOutcome::Done,
            Err(err) => JobOutcome::Retry { reason: format!("replay: {err}"), after: None },
        }
    }

    /// Creates the replay's deliveries in batches, resuming after the
    /// recorded cursor; stops if the endpoint is disabled or deleted.
    async fn replay(&self, job: &ReplayJob) -> Result<(), sea_orm::DbErr> {
        loop {
            let db = self.deps.db.conn();
            let Some(replay) = replays::Entity::find_by_id(job.replay_id.clone())
                .filter(replays::Column::WorkspaceId.eq(&job.workspace_id))
                .one(db)
                .await?
            else {
                return Ok(());
            };
            if replay.done {
                return Ok(());
            }
            let endpoint = endpoints::Entity::find_by_id(replay.endpoint_id.clone()).one(db).await?;
            let usable = endpoint
                .is_some_and(|e| e.deleted_at_ms.is_none() && e.status == EndpointStatus::Enabled as i32);
            let selected = if usable {
                replay_selection(
                    db,
                    &replay.workspace_id,
                    &replay.endpoint_id,
                    replay.start_ms,
                    replay.end_ms,
                    replay.failed_only,
                )
                .await?
            } else {
                Vec::new()
            };
            let batch: Vec<String> =
                selected.into_iter().filter(|id| *id > replay.cursor).take(REPLAY_BATCH).collect();
            let txn = self.deps.db.begin_write().await?;
            let now = now_ms();
            let found = messages::Entity::find()
                .filter(messages::Column::Id.is_in(batch.clone()))
                .order_by_asc(messages::Column::Id)
                .all(&txn)
                .await?;
            for message in &found {
                let delivery = new_delivery(message, &replay.endpoint_id, &replay.id, now);
                deliveries::ActiveModel::from(delivery.clone()).insert(&txn).await?;
                self.deps
                    .outbox
                    .enqueue(&txn, first_attempt(&delivery, DeliveryAttemptTrigger::Replay))
                    .await?;
            }
            let last = batch.len() < REPLAY_BATCH;
            let mut active = replay.into_active_model();
            if let Some(cursor) = batch.last() {
                active.cursor = Set(cursor.clone());
            }
            active.done = Set(last);
            active.update(&txn).await?;
            self.deps.outbox.commit(txn).await?;
            if last {
                return Ok(());
            }
        }
    }
}

/// The messages a replay re-sends, in id (creation) order: those created
/// in [`start`, `end`) that had a delivery to the endpoint, or with
/// `failed_only` those whose deliveries there ended FAILED or CANCELLED
/// and never SUCCEEDED.
pub(crate) async fn replay_selection(
    conn: &impl sea_orm::ConnectionTrait,
    workspace_id: &str,
    endpoint_id: &str,
    start_ms: i64,
    end_ms: i64,
    failed_only: bool,
) -> Result<Vec<String>, sea_orm::DbErr> {
    let rows = deliveries::Entity::find()
        .filter(deliveries::Column::WorkspaceId.eq(workspace_id))
        .filter(deliveries::Column::EndpointId.eq(endpoint_id))
        .filter(deliveries::Column::MessageCreatedAtMs.gte(start_ms))
        .filter(deliveries::Column::MessageCreatedAtMs.lt(end_ms))
        .all(conn)
        .await?;
    let mut by_message: std::collections::BTreeMap<String, (bool, bool)> = std::collections::BTreeMap::new();
    for row in rows {
        let entry = by_message.entry(row.message_id).or_default();
        entry.0 |=
            row.status == DeliveryStatus::Failed as i32 || row.status == DeliveryStatus::Cancelled as i32;
        entry.1 |= row.status == DeliveryStatus::Succeeded as i32;
    }
    Ok(by_message
        .into_iter()
        .filter(|(_, (failed, succeeded))| !failed_only || (*failed && !*succeeded))
        .map(|(id, _)| id)
        .collect())
}

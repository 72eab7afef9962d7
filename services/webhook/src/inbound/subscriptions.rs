//! EventSub subscriptions: stored here as desired state per workspace,
//! created and deleted at Twitch through Helix, and reconciled (desired
//! against actual) at start-up and on every `webhook_reconcile_interval`
//! through `jobs.webhook.reconcile_eventsub`.
//!
//! Twitch keeps one subscription per type, version and condition per app;
//! workspaces asking for the same one share it there (its "key" here).

use std::collections::{BTreeMap, BTreeSet};

use postmesh_kit::ServiceDeps;
use postmesh_kit::bus::{ConsumerSpec, Delivery, JobOutcome};
use postmesh_kit::db::now_ms;
use postmesh_kit::error::{ApiError, Violations};
use postmesh_kit::outbox::OutboxMessage;
use postmesh_proto::postmesh::webhook::v1::{self as pb, EventSubSubscriptionStatus as Status};
use prost::Message as _;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::Inbound;
use super::common::{page_size, page_token, timestamp_ms};
use super::helix::{Created, HelixError, canonical_condition};
use super::store::subscriptions;

/// The subject of reconciliation jobs.
pub const RECONCILE_SUBJECT: &str = "jobs.webhook.reconcile_eventsub";

/// Twitch's identity of a subscription: type, version, canonical condition.
type Key = (String, String, String);

fn key_of(row: &subscriptions::Model) -> Key {
    (row.r#type.clone(), row.version.clone(), row.condition.clone())
}

pub(super) fn subscription_pb(row: &subscriptions::Model) -> pb::EventSubSubscription {
    pb::EventSubSubscription {
        id: row.id.clone(),
        twitch_subscription_id: row.twitch_subscription_id.clone(),
        r#type: row.r#type.clone(),
        version: row.version.clone(),
        condition: serde_json::from_str::<BTreeMap<String, String>>(&row.condition)
            .unwrap_or_default()
            .into_iter()
            .collect(),
        status: row.status,
        status_reason: row.status_reason.clone(),
        created_at: Some(timestamp_ms(row.created_at_ms)),
        updated_at: Some(timestamp_ms(row.updated_at_ms)),
    }
}

/// Our status for a Helix status string.
fn status_of(helix_status: &str) -> Status {
    match helix_status {
        "enabled" => Status::Enabled,
        "webhook_callback_verification_pending" | "" => Status::Pending,
        _ => Status::Revoked,
    }
}

impl Inbound {
    /// The records of one key that are not deleted.
    async fn rows_of(&self, key: &Key) -> Result<Vec<subscriptions::Model>, sea_orm::DbErr> {
        subscriptions::Entity::find()
            .filter(subscriptions::Column::Type.eq(&key.0))
            .filter(subscriptions::Column::Version.eq(&key.1))
            .filter(subscriptions::Column::Condition.eq(&key.2))
            .filter(subscriptions::Column::DeletedAtMs.is_null())
            .all(self.deps.db.conn())
            .await
    }

    /// Records what Twitch says about a key on every record of it. Single
    /// conditional UPDATEs, so a verification that raced ahead of Helix's
    /// answer (ENABLED) is never turned back into PENDING.
    async fn apply(
        &self,
        key: &Key,
        twitch_id: Option<&str>,
        status: Status,
        reason: &str,
    ) -> Result<(), sea_orm::DbErr> {
        let now = now_ms();
        let of_key = Condition::all()
            .add(subscriptions::Column::Type.eq(&key.0))
            .add(subscriptions::Column::Version.eq(&key.1))
            .add(subscriptions::Column::Condition.eq(&key.2))
            .add(subscriptions::Column::DeletedAtMs.is_null());
        if let Some(id) = twitch_id {
            subscriptions::Entity::update_many()
                .col_expr(subscriptions::Column::TwitchSubscriptionId, Expr::value(id))
                .filter(of_key.clone())
                .filter(subscriptions::Column::TwitchSubscriptionId.ne(id))
                .exec(self.deps.db.conn())
                .await?;
        }
        let mut update = subscriptions::Entity::update_many()
            .col_expr(subscriptions::Column::Status, Expr::value(status as i32))
            .col_expr(subscriptions::Column::StatusReason, Expr::value(reason))
            .col_expr(subscriptions::Column::UpdatedAtMs, Expr::value(now))
            .filter(of_key)
            .filter(
                Condition::any()
                    .add(subscriptions::Column::Status.ne(status as i32))
                    .add(subscriptions::Column::StatusReason.ne(reason)),
            );
        if status == Status::Pending {
            update = update.filter(subscriptions::Column::Status.ne(Status::Enabled as i32));
        }
        update.exec(self.deps.db.conn()).await?;
        Ok(())
    }

    /// The callback and secret Twitch is given, when both are configured.
    fn transport(&self) -> Option<(String, String)> {
        let callback = self.deps.config.webhook_eventsub_callback_url.clone().filter(|c| !c.is_empty())?;
        let secret = self.deps.config.webhook_twitch_eventsub_secret.as_ref()?.expose().clone();
        Some((callback, secret))
    }

    /// Creates the subscription of `key` at Twitch and records the outcome.
    /// Errors worth retrying are returned; the rest end in FAILED.
    async fn push(&self, key: &Key) -> Result<(), HelixError> {
        let Some((callback, secret)) = self.transport() else {
            return Err(HelixError::NotConfigured);
        };
        let condition: BTreeMap<String, String> = serde_json::from_str(&key.2).unwrap_or_default();
        let db = |e: sea_orm::DbErr| HelixError::Unavailable(format!("database: {e}"));
        match self.helix.create_subscription(&key.0, &key.1, &condition, &callback, &secret).await {
            Ok(Created::New { id, status }) => {
                self.apply(key, Some(&id), status_of(&status), "").await.map_err(db)
            }
            Ok(Created::Exists) => {
                let remote = self.helix.list_subscriptions().await?;
                let found = remote
                    .iter()
                    .find(|r| (r.r#type.clone(), r.version.clone(), r.condition.clone()) == *key);
                match found {
                    Some(r) => self.apply(key, Some(&r.id), status_of(&r.status), "").await.map_err(db),
                    None => Err(HelixError::Unavailable(
                        "Helix reported a conflict for a subscription it does not list".into(),
                    )),
                }
            }
            Err(HelixError::Rejected(message)) => {
                self.apply(key, None, Status::Failed, &message).await.map_err(db)
            }
            Err(other) => Err(other),
        }
    }

    pub(super) async fn create_subscription_in(
        &self,
        workspace_id: &str,
        request: pb::CreateEventSubSubscriptionRequest,
    ) -> Result<pb::CreateEventSubSubscriptionResponse, ApiError> {
        let r#type = request.r#type.trim().to_owned();
        let version = if request.version.trim().is_empty() {
            "1".to_owned()
        } else {
            request.version.trim().to_owned()
        };
        let mut violations = Violations::new();
        if r#type.is_empty() || r#type.len() > 100 {
            violations.add("type", "must be 1 to 100 characters");
        }
        if version.len() > 20 {
            violations.add("version", "must be at most 20 characters");
        }
        if request.condition.is_empty() {
            violations.add("condition", "is required");
        } else if request.condition.len() > 20 {
            violations.add("condition", "at most 20 entries");
        }
        for (k, v) in &request.condition {
            if k.is_empty() || v.is_empty() || k.len() > 100 || v.len() > 200 {
                violations.add(format!("condition.{k}"), "keys and values must be 1 to 100/200 characters");
            }
        }
        violations.finish()?;
        let condition = canonical_condition(&request.condition.into_iter().collect());
        let key: Key = (r#type, version, condition);
        let txn = self.deps.db.begin_write().await?;
        let existing = subscriptions::Entity::find()
            .filter(subscriptions::Column::WorkspaceId.eq(workspace_id))
            .filter(subscriptions::Column::Type.eq(&key.0))
            .filter(subscriptions::Column::Version.eq(&key.1))
            .filter(subscriptions::Column::Condition.eq(&key.2))
            .filter(subscriptions::Column::DeletedAtMs.is_null())
            .one(&txn)
            .await?;
        if let Some(existing) = existing {
            return Ok(pb::CreateEventSubSubscriptionResponse {
                subscription: Some(subscription_pb(&existing)),
            });
        }
        // Another workspace may already share it at Twitch.
        let shared = subscriptions::Entity::find()
            .filter(subscriptions::Column::Type.eq(&key.0))
            .filter(subscriptions::Column::Version.eq(&key.1))
            .filter(subscriptions::Column::Condition.eq(&key.2))
            .filter(subscriptions::Column::DeletedAtMs.is_null())
            .filter(subscriptions::Column::TwitchSubscriptionId.ne(""))
            .one(&txn)
            .await?;
        let now = now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let (twitch_id, status) = match &shared {
            Some(s) if s.status == Status::Enabled as i32 => {
                (s.twitch_subscription_id.clone(), Status::Enabled)
            }
            _ => (String::new(), Status::Pending),
        };
        subscriptions::ActiveModel {
            id: Set(id.clone()),
            workspace_id: Set(workspace_id.to_owned()),
            twitch_subscription_id: Set(twitch_id),
            r#type: Set(key.0.clone()),
            version: Set(key.1.clone()),
            condition: Set(key.2.clone()),
            status: Set(status as i32),
            status_reason: Set(String::new()),
            created_at_ms: Set(now),
            updated_at_ms: Set(now),
            deleted_at_ms: Set(None),
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        if status != Status::Enabled {
            match self.push(&key).await {
                Ok(()) => {}
                Err(err) => tracing::warn!(error = %err, "EventSub subscription left for reconciliation"),
            }
        }
        let row = subscriptions::Entity::find_by_id(id)
            .one(self.deps.db.conn())
            .await?
            .ok_or_else(|| ApiError::internal("subscription vanished"))?;
        Ok(pb::CreateEventSubSubscriptionResponse { subscription: Some(subscription_pb(&row)) })
    }

    pub(super) async fn list_subscriptions_in(
        &self,
        workspace_id: &str,
        request: pb::ListEventSubSubscriptionsRequest,
    ) -> Result<pb::ListEventSubSubscriptionsResponse, ApiError> {
        let size = page_size(request.page_size)?;
        let mut query = subscriptions::Entity::find()
            .filter(subscriptions::Column::WorkspaceId.eq(workspace_id))
            .filter(subscriptions::Column::DeletedAtMs.is_null());
        if !request.r#type.is_empty() {
            query = query.filter(subscriptions::Column::Type.eq(&request.r#type));
        }
        if request.status != 0 {
            query = query.filter(subscriptions::Column::Status.eq(request.status));
        }
        if let Some(after) = page_token(&request.page_token)? {
            query = query.filter(subscriptions::Column::Id.lt(after));
        }
        let mut rows =
            query.order_by_desc(subscriptions::Column::Id).limit(size + 1).all(self.deps.db.conn()).await?;
        let next_page_token = if rows.len() as u64 > size {
            rows.truncate(size as usize);
            rows.last().map(|r| r.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListEventSubSubscriptionsResponse {
            subscriptions: rows.iter().map(subscription_pb).collect(),
            next_page_token,
        })
    }

    pub(super) async fn delete_subscription_in(&self, workspace_id: &str, id: &str) -> Result<(), ApiError> {
        let row = subscriptions::Entity::find_by_id(id.to_owned())
            .filter(subscriptions::Column::WorkspaceId.eq(workspace_id))
            .one(self.deps.db.conn())
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("subscription {id} not found")))?;
        if row.deleted_at_ms.is_some() {
            return Ok(());
        }
        let key = key_of(&row);
        let twitch_id = row.twitch_subscription_id.clone();
        let mut active = row.into_active_model();
        active.deleted_at_ms = Set(Some(now_ms()));
        active.updated_at_ms = Set(now_ms());
        active.update(self.deps.db.conn()).await?;
        // Still wanted by another workspace: it stays at Twitch.
        if !twitch_id.is_empty()
            && self.rows_of(&key).await?.is_empty()
            && let Err(err) = self.helix.delete_subscription(&twitch_id).await
        {
            tracing::warn!(error = %err, "EventSub subscription left for reconciliation to delete");
        }
        Ok(())
    }

    /// Desired against actual: creates what is missing at Twitch, deletes
    /// what is no longer wanted, records Twitch's statuses.
    pub(super) async fn reconcile(&self) -> Result<(), HelixError> {
        let Some((callback, _)) = self.transport() else {
            return Err(HelixError::NotConfigured);
        };
        if !self.helix.configured() {
            return Err(HelixError::NotConfigured);
        }
        let db = |e: sea_orm::DbErr| HelixError::Unavailable(format!("database: {e}"));
        let desired_rows = subscriptions::Entity::find()
            .filter(subscriptions::Column::DeletedAtMs.is_null())
            .all(self.deps.db.conn())
            .await
            .map_err(db)?;
        let mut desired: BTreeMap<Key, Vec<subscriptions::Model>> = BTreeMap::new();
        for row in desired_rows {
            desired.entry(key_of(&row)).or_default().push(row);
        }
        let remote = self.helix.list_subscriptions().await?;
        let mut present = BTreeSet::new();
        for r in &remote {
            let key: Key = (r.r#type.clone(), r.version.clone(), r.condition.clone());
            present.insert(key.clone());
            let ours = r.callback == callback;
            match desired.get(&key) {
                None if ours => {
                    self.helix.delete_subscription(&r.id).await?;
                }
                None => {}
                Some(_) => {
                    let status = status_of(&r.status);
                    let reason = if status == Status::Revoked { r.status.as_str() } else { "" };
                    self.apply(&key, Some(&r.id), status, reason).await.map_err(db)?;
                    if status == Status::Revoked && ours {
                        // A dead subscription at Twitch: remove it; the
                        // records say why.
                        self.helix.delete_subscription(&r.id).await?;
                    }
                }
            }
        }
        for (key, rows) in &desired {
            if present.contains(key) {
                continue;
            }
            let wanted =
                rows.iter().any(|r| r.status == Status::Pending as i32 || r.status == Status::Enabled as i32);
            if wanted {
                match self.push(key).await {
                    Ok(()) => {}
                    Err(HelixError::Rejected(_)) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }
}

/// Starts the reconciliation consumer and the timer queueing it.
pub(super) async fn start(deps: &ServiceDeps, inbound: Inbound) -> Result<(), postmesh_kit::bus::BusError> {
    let mut spec = ConsumerSpec::new("webhook-reconcile-eventsub", RECONCILE_SUBJECT, &deps.config);
    spec.concurrency = 1;
    let handler = inbound.clone();
    deps.consume(spec, move |delivery: Delivery| {
        let inbound = handler.clone();
        async move {
            if let Err(err) = pb::ReconcileEventSubJob::decode(delivery.message.payload.as_slice()) {
                return JobOutcome::Reject { reason: format!("malformed reconcile job: {err}") };
            }
            match inbound.reconcile().await {
                Ok(()) => JobOutcome::Done,
                Err(HelixError::NotConfigured) => {
                    tracing::debug!("EventSub reconciliation skipped: Twitch is not configured");
                    JobOutcome::Done
                }
                Err(err) => JobOutcome::Retry { reason: err.to_string(), after: None },
            }
        }
    })
    .await?;

    let interval = deps.config.webhook_reconcile_interval.max(std::time::Duration::from_secs(1));
    let deps_for_timer = deps.clone();
    deps.tasks.spawn(async move {
        let deps = deps_for_timer;
        let startup = format!("reconcile_eventsub:startup:{}", uuid::Uuid::now_v7());
        queue_reconcile(&deps, "startup", startup).await;
        prune_events(&deps).await;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = deps.shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // One id per slot, so replicas queue it once.
            let slot = now_ms() / interval.as_millis().max(1) as i64;
            queue_reconcile(&deps, "hourly", format!("reconcile_eventsub:{slot}")).await;
            prune_events(&deps).await;
        }
    });
    Ok(())
}

async fn queue_reconcile(deps: &ServiceDeps, reason: &str, id: String) {
    let job =
        pb::ReconcileEventSubJob { requested_at: Some(timestamp_ms(now_ms())), reason: reason.to_owned() };
    let queued = async {
        let txn = deps.db.begin_write().await?;
        deps.outbox
            .enqueue(&txn, OutboxMessage::new(RECONCILE_SUBJECT, job.encode_to_vec()).with_id(id))
            .await?;
        deps.outbox.commit(txn).await
    };
    if let Err(err) = queued.await {
        tracing::warn!(error = %err, "could not queue EventSub reconciliation");
    }
}

/// Drops finished inbound events older than the log retention
/// (`webhook_log_retention`).
async fn prune_events(deps: &ServiceDeps) {
    let cutoff = now_ms() - i64::try_from(deps.config.webhook_log_retention.as_millis()).unwrap_or(i64::MAX);
    let pruned = super::store::events::Entity::delete_many()
        .filter(super::store::events::Column::ReceivedAtMs.lt(cutoff))
        .filter(super::store::events::Column::ProcessedAtMs.is_not_null())
        .exec(deps.db.conn())
        .await;
    if let Err(err) = pruned {
        tracing::warn!(error = %err, "could not prune old inbound events");
    }
}

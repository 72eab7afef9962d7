//! The Twitch EventSub callback (`POST /api/webhooks/twitch`): signature
//! and age checks, then by message type: the verification challenge is
//! answered as plain text, a revocation marks the subscriptions, a
//! notification is remembered by message id (2 h, set-if-absent in the
//! key-value store), stored once per workspace subscribed, and queued for
//! the rules (`jobs.webhook.process_inbound`) in the same transaction.

use std::time::Duration;

use postmesh_kit::db::now_ms;
use postmesh_kit::error::ApiError;
use postmesh_kit::outbox::OutboxMessage;
use postmesh_proto::google::api::HttpBody;
use postmesh_proto::postmesh::webhook::v1::{
    self as pb, EventSubSubscriptionStatus, InboundEventStatus, InboundSourceKind,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, EntityTrait, IntoActiveModel, QueryFilter,
};
use serde_json::Value;
use tonic::Request;

use super::Inbound;
use super::common::{MAX_BODY_BYTES, header, struct_pb, timestamp_ms};
use super::helix::{canonical_condition, condition_map};
use super::signature::eventsub_valid;
use super::store::{events, subscriptions};

/// How far a message's timestamp may be from now, either way.
const MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// How long message ids are remembered.
const DEDUP_FOR: Duration = Duration::from_secs(2 * 3600);

fn denied(message: &str) -> ApiError {
    ApiError::PermissionDenied(message.to_owned())
}

/// The local subscriptions a Twitch subscription object stands for: those
/// with its Twitch id, or (before Helix's answer was recorded, or when
/// workspaces share it) the same type, version and condition.
pub(super) fn matching(subscription: &Value) -> Condition {
    let twitch_id = subscription["id"].as_str().unwrap_or_default();
    let condition = canonical_condition(&condition_map(&subscription["condition"]));
    let same = Condition::all()
        .add(subscriptions::Column::Type.eq(subscription["type"].as_str().unwrap_or_default()))
        .add(subscriptions::Column::Version.eq(subscription["version"].as_str().unwrap_or("1")))
        .add(subscriptions::Column::Condition.eq(condition));
    let mut any = Condition::any().add(same);
    if !twitch_id.is_empty() {
        any = any.add(subscriptions::Column::TwitchSubscriptionId.eq(twitch_id));
    }
    Condition::all().add(subscriptions::Column::DeletedAtMs.is_null()).add(any)
}

fn empty() -> pb::ReceiveTwitchEventResponse {
    pb::ReceiveTwitchEventResponse { body: None }
}

impl Inbound {
    pub(super) async fn receive_twitch(
        &self,
        request: Request<pb::ReceiveTwitchEventRequest>,
    ) -> Result<pb::ReceiveTwitchEventResponse, ApiError> {
        let id = header(&request, "twitch-eventsub-message-id");
        let timestamp = header(&request, "twitch-eventsub-message-timestamp");
        let signature = header(&request, "twitch-eventsub-message-signature");
        let message_type = header(&request, "twitch-eventsub-message-type");
        let body = request.into_inner().body.unwrap_or_default().data;
        if body.len() > MAX_BODY_BYTES {
            return Err(ApiError::invalid("body", "at most 1 MiB"));
        }
        if id.is_empty() || timestamp.is_empty() || signature.is_empty() || message_type.is_empty() {
            return Err(denied("missing Twitch-Eventsub-Message-* header"));
        }
        let Some(secret) = self.deps.config.webhook_twitch_eventsub_secret.as_ref() else {
            return Err(denied("EventSub is not configured"));
        };
        if !eventsub_valid(secret.expose().as_bytes(), &id, &timestamp, &body, &signature) {
            return Err(denied("bad signature"));
        }
        let sent_ms = chrono::DateTime::parse_from_rfc3339(&timestamp)
            .map_err(|_| denied("bad Twitch-Eventsub-Message-Timestamp"))?
            .timestamp_millis();
        if (now_ms() - sent_ms).unsigned_abs() > MAX_AGE.as_millis() as u64 {
            return Err(denied("message timestamp more than 10 minutes away"));
        }
        let message: Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::invalid("body", format!("not JSON: {e}")))?;
        match message_type.as_str() {
            "webhook_callback_verification" => self.verified(&message).await,
            "revocation" => self.revoked(&id, &message).await,
            "notification" => self.notified(&id, &message).await,
            other => {
                tracing::debug!(message_type = other, "EventSub message of unknown type ignored");
                Ok(empty())
            }
        }
    }

    async fn verified(&self, message: &Value) -> Result<pb::ReceiveTwitchEventResponse, ApiError> {
        let challenge = message["challenge"].as_str().unwrap_or_default().to_owned();
        let subscription = &message["subscription"];
        let twitch_id = subscription["id"].as_str().unwrap_or_default().to_owned();
        let now = now_ms();
        let txn = self.deps.db.begin_write().await?;
        let rows = subscriptions::Entity::find().filter(matching(subscription)).all(&txn).await?;
        for row in rows {
            let mut active = row.into_active_model();
            active.status = Set(EventSubSubscriptionStatus::Enabled as i32);
            active.status_reason = Set(String::new());
            if !twitch_id.is_empty() {
                active.twitch_subscription_id = Set(twitch_id.clone());
            }
            active.updated_at_ms = Set(now);
            active.update(&txn).await?;
        }
        txn.commit().await?;
        Ok(pb::ReceiveTwitchEventResponse {
            body: Some(HttpBody {
                content_type: "text/plain".into(),
                data: challenge.into_bytes(),
                extensions: vec![],
            }),
        })
    }

    /// Remembers `id`; false when it was already seen.
    async fn first_time(&self, id: &str) -> Result<bool, ApiError> {
        Ok(self.deps.kv.set_if_absent(&format!("webhook:eventsub:msg:{id}"), b"1", DEDUP_FOR).await?)
    }

    async fn forget(&self, id: &str) {
        let _ = self.deps.kv.delete(&format!("webhook:eventsub:msg:{id}")).await;
    }

    async fn revoked(&self, id: &str, message: &Value) -> Result<pb::ReceiveTwitchEventResponse, ApiError> {
        if !self.first_time(id).await? {
            return Ok(empty());
        }
        let result = self.mark_revoked(message).await;
        if result.is_err() {
            self.forget(id).await;
        }
        result.map(|()| empty())
    }

    async fn mark_revoked(&self, message: &Value) -> Result<(), ApiError> {
        let subscription = &message["subscription"];
        let reason = subscription["status"].as_str().unwrap_or("revoked").to_owned();
        let twitch_id = subscription["id"].as_str().unwrap_or_default().to_owned();
        let now = now_ms();
        let txn = self.deps.db.begin_write().await?;
        let rows = subscriptions::Entity::find().filter(matching(subscription)).all(&txn).await?;
        for row in rows {
            let event = pb::EventSubSubscriptionRevokedEvent {
                event_id: uuid::Uuid::now_v7().to_string(),
                workspace_id: row.workspace_id.clone(),
                occurred_at: Some(timestamp_ms(now)),
                subscription_id: row.id.clone(),
                twitch_subscription_id: twitch_id.clone(),
                r#type: row.r#type.clone(),
                reason: reason.clone(),
            };
            let mut active = row.into_active_model();
            active.status = Set(EventSubSubscriptionStatus::Revoked as i32);
            active.status_reason = Set(reason.clone());
            active.updated_at_ms = Set(now);
            active.update(&txn).await?;
            let id = event.event_id.clone();
            self.deps
                .outbox
                .enqueue(
                    &txn,
                    OutboxMessage::event("webhook", "eventsub_subscription_revoked", &event).with_id(id),
                )
                .await?;
        }
        self.deps.outbox.commit(txn).await?;
        Ok(())
    }

    async fn notified(&self, id: &str, message: &Value) -> Result<pb::ReceiveTwitchEventResponse, ApiError> {
        if !self.first_time(id).await? {
            tracing::debug!(message_id = id, "EventSub message already received");
            return Ok(empty());
        }
        let result = self.store_notification(id, message).await;
        if result.is_err() {
            // Let Twitch's redelivery try again.
            self.forget(id).await;
        }
        result.map(|()| empty())
    }

    async fn store_notification(&self, id: &str, message: &Value) -> Result<(), ApiError> {
        let subscription = &message["subscription"];
        let event_type = subscription["type"].as_str().unwrap_or_default().to_owned();
        let now = now_ms();
        let txn = self.deps.db.begin_write().await?;
        let rows = subscriptions::Entity::find().filter(matching(subscription)).all(&txn).await?;
        if rows.is_empty() {
            tracing::info!(message_id = id, %event_type, "EventSub notification for no subscription here");
        }
        for row in rows {
            if row.status == EventSubSubscriptionStatus::Revoked as i32 {
                continue;
            }
            // Already stored (the key-value store forgot it): processed once.
            let event_id = uuid::Uuid::now_v7().to_string();
            let event = Received {
                event_id: &event_id,
                workspace_id: &row.workspace_id,
                kind: InboundSourceKind::Twitch,
                source_id: &row.id,
                event_type: &event_type,
                external_id: id,
                payload: message,
            };
            self.store_received(&txn, event, now).await?;
        }
        self.deps.outbox.commit(txn).await?;
        Ok(())
    }

    /// Stores `event` with its processing job and
    /// `inbound_event_received`, inside the caller's transaction. When its
    /// source already delivered `external_id`, stores nothing and returns
    /// the first event's id.
    pub(super) async fn store_received(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        event: Received<'_>,
        now: i64,
    ) -> Result<Option<String>, ApiError> {
        let Received { event_id, workspace_id, kind, source_id, event_type, external_id, payload } = event;
        let seen = events::Entity::find()
            .filter(events::Column::WorkspaceId.eq(workspace_id))
            .filter(events::Column::SourceKind.eq(kind as i32))
            .filter(events::Column::SourceId.eq(source_id))
            .filter(events::Column::ExternalId.eq(external_id))
            .one(txn)
            .await?;
        if let Some(seen) = seen {
            return Ok(Some(seen.id));
        }
        events::ActiveModel {
            id: Set(event_id.to_owned()),
            workspace_id: Set(workspace_id.to_owned()),
            source_kind: Set(kind as i32),
            source_id: Set(source_id.to_owned()),
            event_type: Set(event_type.to_owned()),
            external_id: Set(external_id.to_owned()),
            payload: Set(serde_json::to_string(payload).map_err(ApiError::internal)?),
            status: Set(InboundEventStatus::Received as i32),
            error: Set(String::new()),
            firings: Set("[]".into()),
            received_at_ms: Set(now),
            processed_at_ms: Set(None),
        }
        .insert(txn)
        .await?;
        let job = pb::ProcessInboundEventJob {
            workspace_id: workspace_id.to_owned(),
            inbound_event_id: event_id.to_owned(),
            source_kind: kind as i32,
        };
        self.deps
            .outbox
            .enqueue(txn, OutboxMessage::job("webhook", "process_inbound", &job).with_id(event_id))
            .await?;
        let event = pb::InboundEventReceivedEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            workspace_id: workspace_id.to_owned(),
            occurred_at: Some(timestamp_ms(now)),
            inbound_event_id: event_id.to_owned(),
            source_kind: kind as i32,
            source_id: source_id.to_owned(),
            event_type: event_type.to_owned(),
            external_id: external_id.to_owned(),
            payload: Some(struct_pb(payload)),
        };
        let id = event.event_id.clone();
        self.deps
            .outbox
            .enqueue(txn, OutboxMessage::event("webhook", "inbound_event_received", &event).with_id(id))
            .await?;
        Ok(None)
    }
}

/// An inbound event as it arrived, for [`Inbound::store_received`].
pub(super) struct Received<'a> {
    pub event_id: &'a str,
    pub workspace_id: &'a str,
    pub kind: InboundSourceKind,
    pub source_id: &'a str,
    pub event_type: &'a str,
    /// The sender's id of the message (EventSub message id, `webhook-id`).
    pub external_id: &'a str,
    pub payload: &'a Value,
}

//! Emitting events: one message, one delivery per subscribed endpoint, and
//! each delivery's first attempt queued in the same transaction.
//! `TriggerEvent`, `EmitEvent` and the fan-out of mesh events all end here.

use postmesh_kit::db::now_ms;
use postmesh_kit::error::ApiError;
use postmesh_kit::outbox::OutboxMessage;
use postmesh_proto::postmesh::webhook::v1::{
    self as pb, DeliveryAttemptJob, DeliveryAttemptTrigger, DeliveryStatus, EndpointStatus,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, ModelTrait, QueryFilter,
    QueryOrder,
};
use serde_json::Value;

use super::endpoints::filters_of;
use super::store::{deliveries, endpoints, keys, messages};
use super::{Outbound, accepts, is_event_type, timestamp_ms};

/// Largest payload once encoded.
const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// How long an idempotency key answers with the first call's result.
const KEY_TTL_MS: i64 = 24 * 3600 * 1000;
/// Most endpoints a trigger may name.
const MAX_ENDPOINT_IDS: usize = 50;

/// A message to emit.
pub(crate) struct NewMessage {
    pub workspace_id: String,
    pub event_type: String,
    /// The `data` object.
    pub payload: Value,
    /// `trigger`, `emit` or the mesh event's subject.
    pub source: String,
    /// A fixed message id (mesh events use their event id, so a
    /// redelivered event emits once); a new UUIDv7 otherwise.
    pub id: Option<String>,
    pub idempotency_key: Option<String>,
    /// Only these endpoints (still subject to status and filters).
    pub endpoint_ids: Vec<String>,
    /// Store the message even when no endpoint receives it.
    pub keep_unsent: bool,
}

/// What an emit did.
pub(crate) struct Emitted {
    pub message_id: String,
    pub delivery_ids: Vec<String>,
    pub duplicate: bool,
}

/// A protobuf `Struct` as a JSON object.
pub(crate) fn struct_json(value: &prost_types::Struct) -> Value {
    Value::Object(value.fields.iter().map(|(k, v)| (k.clone(), value_json(v))).collect())
}

fn value_json(value: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(list)) => Value::Array(list.values.iter().map(value_json).collect()),
    }
}

fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 200 || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(ApiError::invalid("idempotency_key", "1 to 200 printable ASCII characters"));
    }
    Ok(())
}

fn check_payload(field: &str, payload: Option<&prost_types::Struct>) -> Result<Value, ApiError> {
    let payload = payload.ok_or_else(|| ApiError::invalid(field, "required: a JSON object"))?;
    let json = struct_json(payload);
    if serde_json::to_vec(&json).map_err(ApiError::internal)?.len() > MAX_PAYLOAD_BYTES {
        return Err(ApiError::invalid(field, "at most 256 KiB once encoded"));
    }
    Ok(json)
}

/// The first attempt's job of a new delivery.
pub(crate) fn first_attempt(delivery: &deliveries::Model, trigger: DeliveryAttemptTrigger) -> OutboxMessage {
    attempt_job(delivery, 1, trigger, None)
}

/// The job of attempt `number` of `delivery`. Manual attempts get their own
/// bus id, so a scheduled job of the same number still waiting does not
/// swallow them as duplicates.
pub(crate) fn attempt_job(
    delivery: &deliveries::Model,
    number: i32,
    trigger: DeliveryAttemptTrigger,
    at_ms: Option<i64>,
) -> OutboxMessage {
    let job = DeliveryAttemptJob {
        workspace_id: delivery.workspace_id.clone(),
        delivery_id: delivery.id.clone(),
        endpoint_id: delivery.endpoint_id.clone(),
        message_id: delivery.message_id.clone(),
        attempt_number: number,
        trigger: trigger as i32,
        attempt_at: at_ms.map(timestamp_ms),
    };
    let id = match trigger {
        DeliveryAttemptTrigger::ManualRetry => format!("{}:{number}:manual", delivery.id),
        _ => format!("{}:{number}", delivery.id),
    };
    OutboxMessage::job("webhook", "deliver", &job).with_id(id)
}

/// A new PENDING delivery of `message` to `endpoint_id`.
pub(crate) fn new_delivery(
    message: &messages::Model,
    endpoint_id: &str,
    replay_id: &str,
    now: i64,
) -> deliveries::Model {
    deliveries::Model {
        id: uuid::Uuid::now_v7().to_string(),
        workspace_id: message.workspace_id.clone(),
        message_id: message.id.clone(),
        message_created_at_ms: message.created_at_ms,
        endpoint_id: endpoint_id.to_owned(),
        event_type: message.event_type.clone(),
        status: DeliveryStatus::Pending as i32,
        attempt_count: 0,
        schedule_step: 0,
        auto_retry: true,
        manual_queued: false,
        next_attempt_at_ms: Some(now),
        replay_id: replay_id.to_owned(),
        created_at_ms: now,
        updated_at_ms: now,
    }
}

/// The deliveries a message got when it was emitted (not replays).
async fn original_deliveries(
    conn: &impl ConnectionTrait,
    message_id: &str,
) -> Result<Vec<String>, sea_orm::DbErr> {
    let rows = deliveries::Entity::find()
        .filter(deliveries::Column::MessageId.eq(message_id))
        .filter(deliveries::Column::ReplayId.eq(""))
        .order_by_asc(deliveries::Column::Id)
        .all(conn)
        .await?;
    Ok(rows.into_iter().map(|d| d.id).collect())
}

impl Outbound {
    pub async fn trigger_event(
        &self,
        workspace_id: &str,
        request: pb::TriggerEventRequest,
    ) -> Result<pb::TriggerEventResponse, ApiError> {
        if !is_event_type(&request.event_type) {
            return Err(ApiError::invalid(
                "event_type",
                "1 to 100 lowercase letters, digits, `_` and `.`, e.g. `order.created`",
            ));
        }
        let payload = check_payload("payload", request.payload.as_ref())?;
        if request.endpoint_ids.len() > MAX_ENDPOINT_IDS {
            return Err(ApiError::invalid("endpoint_ids", format!("at most {MAX_ENDPOINT_IDS}")));
        }
        if !request.idempotency_key.is_empty() {
            check_key(&request.idempotency_key)?;
        }
        if !request.endpoint_ids.is_empty() {
            let known = endpoints::Entity::find()
                .filter(endpoints::Column::WorkspaceId.eq(workspace_id))
                .filter(endpoints::Column::DeletedAtMs.is_null())
                .filter(endpoints::Column::Id.is_in(request.endpoint_ids.clone()))
                .all(self.deps.db.conn())
                .await?;
            for (i, id) in request.endpoint_ids.iter().enumerate() {
                if !known.iter().any(|e| &e.id == id) {
                    return Err(ApiError::invalid(
                        format!("endpoint_ids[{i}]"),
                        format!("no endpoint {id} in the workspace"),
                    ));
                }
            }
        }
        let emitted = self
            .emit(NewMessage {
                workspace_id: workspace_id.to_owned(),
                event_type: request.event_type,
                payload,
                source: "trigger".into(),
                id: None,
                idempotency_key: Some(request.idempotency_key).filter(|k| !k.is_empty()),
                endpoint_ids: request.endpoint_ids,
                keep_unsent: true,
            })
            .await?;
        Ok(pb::TriggerEventResponse {
            message_id: emitted.message_id,
            delivery_ids: emitted.delivery_ids,
            duplicate: emitted.duplicate,
        })
    }

    pub async fn emit_event(&self, request: pb::EmitEventRequest) -> Result<pb::EmitEventResponse, ApiError> {
        if request.workspace_id.is_empty() {
            return Err(ApiError::invalid("workspace_id", "required"));
        }
        if !is_event_type(&request.event_type) {
            return Err(ApiError::invalid("event_type", "1 to 100 lowercase letters, digits, `_` and `.`"));
        }
        let payload = check_payload("payload", request.payload.as_ref())?;
        check_key(&request.idempotency_key)?;
        let emitted = self
            .emit(NewMessage {
                workspace_id: request.workspace_id,
                event_type: request.event_type,
                payload,
                source: "emit".into(),
                id: None,
                idempotency_key: Some(request.idempotency_key),
                endpoint_ids: Vec::new(),
                keep_unsent: true,
            })
            .await?;
        Ok(pb::EmitEventResponse {
            message_id: emitted.message_id,
            delivery_ids: emitted.delivery_ids,
            duplicate: emitted.duplicate,
        })
    }

    /// Stores the message and its deliveries and queues their first
    /// attempts, in one transaction. A repeated idempotency key (within 24
    /// hours) or message id answers with what was emitted the first time.
    pub(crate) async fn emit(&self, new: NewMessage) -> Result<Emitted, ApiError> {
        let workspace_id = new.workspace_id.clone();
        let key = new.idempotency_key.clone();
        let id = new.id.clone();
        match self.emit_once(new).await {
            Ok(emitted) => Ok(emitted),
            // Two calls with the same key (or event) at once on PostgreSQL:
            // the loser's insert hits the primary key; answer as a repeat.
            Err(ApiError::Internal(cause)) if key.is_some() || id.is_some() => {
                let conn = self.deps.db.conn();
                let first = match (&key, &id) {
                    (Some(key), _) => keys::Entity::find_by_id(format!("{workspace_id}:{key}"))
                        .one(conn)
                        .await?
                        .map(|seen| seen.message_id),
                    (None, Some(id)) => {
                        messages::Entity::find_by_id(id.clone()).one(conn).await?.map(|m| m.id)
                    }
                    (None, None) => None,
                };
                let Some(message_id) = first else { return Err(ApiError::Internal(cause)) };
                let delivery_ids = original_deliveries(conn, &message_id).await?;
                Ok(Emitted { message_id, delivery_ids, duplicate: true })
            }
            Err(err) => Err(err),
        }
    }

    async fn emit_once(&self, new: NewMessage) -> Result<Emitted, ApiError> {
        let now = now_ms();
        let txn = self.deps.db.begin_write().await?;
        let key_id = new.idempotency_key.as_ref().map(|k| format!("{}:{k}", new.workspace_id));
        if let Some(key_id) = &key_id
            && let Some(seen) = keys::Entity::find_by_id(key_id.clone()).one(&txn).await?
        {
            if seen.created_at_ms + KEY_TTL_MS > now {
                let delivery_ids = original_deliveries(&txn, &seen.message_id).await?;
                return Ok(Emitted { message_id: seen.message_id, delivery_ids, duplicate: true });
            }
            seen.delete(&txn).await?;
        }
        if let Some(id) = &new.id
            && messages::Entity::find_by_id(id.clone()).one(&txn).await?.is_some()
        {
            let delivery_ids = original_deliveries(&txn, id).await?;
            return Ok(Emitted { message_id: id.clone(), delivery_ids, duplicate: true });
        }
        let targets: Vec<endpoints::Model> = endpoints::Entity::find()
            .filter(endpoints::Column::WorkspaceId.eq(&new.workspace_id))
            .filter(endpoints::Column::DeletedAtMs.is_null())
            .filter(endpoints::Column::Status.eq(EndpointStatus::Enabled as i32))
            .order_by_asc(endpoints::Column::Id)
            .all(&txn)
            .await?
            .into_iter()
            .filter(|e| new.endpoint_ids.is_empty() || new.endpoint_ids.contains(&e.id))
            .filter(|e| accepts(&filters_of(e), &new.event_type))
            .collect();
        let message_id = new.id.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        if targets.is_empty() && !new.keep_unsent {
            return Ok(Emitted { message_id, delivery_ids: Vec::new(), duplicate: false });
        }
        let message = messages::Model {
            id: message_id.clone(),
            workspace_id: new.workspace_id.clone(),
            event_type: new.event_type.clone(),
            payload: serde_json::to_string(&new.payload).map_err(ApiError::internal)?,
            source: new.source,
            created_at_ms: now,
        };
        messages::ActiveModel::from(message.clone()).insert(&txn).await?;
        let mut delivery_ids = Vec::with_capacity(targets.len());
        for endpoint in &targets {
            let delivery = new_delivery(&message, &endpoint.id, "", now);
            deliveries::ActiveModel::from(delivery.clone()).insert(&txn).await?;
            self.deps
                .outbox
                .enqueue(&txn, first_attempt(&delivery, DeliveryAttemptTrigger::Scheduled))
                .await?;
            delivery_ids.push(delivery.id);
        }
        if let Some(key_id) = key_id {
            keys::ActiveModel {
                key: Set(key_id),
                workspace_id: Set(new.workspace_id.clone()),
                message_id: Set(message_id.clone()),
                created_at_ms: Set(now),
            }
            .insert(&txn)
            .await?;
        }
        self.deps.outbox.commit(txn).await?;
        Ok(Emitted { message_id, delivery_ids, duplicate: false })
    }
}

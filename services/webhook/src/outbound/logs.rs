//! The delivery log and what can be done from it: list attempts, retry a
//! delivery by hand, replay a time range to an endpoint.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use postmesh_kit::db::now_ms;
use postmesh_kit::error::ApiError;
use postmesh_kit::outbox::OutboxMessage;
use postmesh_proto::postmesh::webhook::v1::{
    self as pb, DeliveryAttemptStatus, DeliveryAttemptTrigger, DeliveryStatus, EndpointStatus, ReplayJob,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::emit::attempt_job;
use super::store::{attempts, deliveries, endpoints, replays};
use super::worker::replay_selection;
use super::{Outbound, duration_ms, ms_of, page_size, timestamp_ms};

/// Longest replay range.
const MAX_REPLAY_MS: i64 = 7 * 24 * 3600 * 1000;

fn attempt_pb(model: &attempts::Model) -> pb::DeliveryAttempt {
    pb::DeliveryAttempt {
        id: model.id.clone(),
        delivery_id: model.delivery_id.clone(),
        message_id: model.message_id.clone(),
        endpoint_id: model.endpoint_id.clone(),
        url: model.url.clone(),
        event_type: model.event_type.clone(),
        attempt_number: model.attempt_number,
        trigger: model.trigger,
        status: model.status,
        status_code: model.status_code,
        latency: Some(duration_ms(model.latency_ms)),
        response_excerpt: model.response_excerpt.clone(),
        error: model.error.clone(),
        attempted_at: Some(timestamp_ms(model.attempted_at_ms)),
        next_attempt_at: model.next_attempt_at_ms.map(timestamp_ms),
    }
}

pub(crate) fn delivery_pb(model: &deliveries::Model) -> pb::Delivery {
    pb::Delivery {
        id: model.id.clone(),
        message_id: model.message_id.clone(),
        endpoint_id: model.endpoint_id.clone(),
        event_type: model.event_type.clone(),
        status: model.status,
        attempt_count: model.attempt_count,
        next_attempt_at: model
            .next_attempt_at_ms
            .filter(|_| model.status == DeliveryStatus::Pending as i32)
            .map(timestamp_ms),
        created_at: Some(timestamp_ms(model.created_at_ms)),
        updated_at: Some(timestamp_ms(model.updated_at_ms)),
    }
}

/// A page token bound to the filters it was issued for.
fn page_token(last_id: &str, filters: &str) -> String {
    URL_SAFE_NO_PAD
        .encode(format!("{last_id}|{}", &postmesh_kit::crypto::sha256_hex(filters.as_bytes())[..16]))
}

fn read_token(token: &str, filters: &str) -> Result<String, ApiError> {
    let bad = || ApiError::invalid("page_token", "not a token this call returned with these filters");
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    let (last_id, hash) = text.split_once('|').ok_or_else(bad)?;
    if hash != &postmesh_kit::crypto::sha256_hex(filters.as_bytes())[..16] {
        return Err(bad());
    }
    Ok(last_id.to_owned())
}

impl Outbound {
    pub async fn list_delivery_attempts(
        &self,
        workspace_id: &str,
        request: pb::ListDeliveryAttemptsRequest,
    ) -> Result<pb::ListDeliveryAttemptsResponse, ApiError> {
        let limit = page_size(request.page_size)?;
        let now = now_ms();
        let retention_start = now - self.deps.config.webhook_log_retention.as_millis() as i64;
        let start = request.start_at.as_ref().map_or(retention_start, ms_of).max(retention_start);
        let end = request.end_at.as_ref().map(ms_of);
        if let (Some(start_at), Some(end)) = (request.start_at.as_ref().map(ms_of), end)
            && end < start_at
        {
            return Err(ApiError::invalid("end_at", "must not be before start_at"));
        }
        if request.status != 0 && DeliveryAttemptStatus::try_from(request.status).is_err() {
            return Err(ApiError::invalid("status", "not an attempt status"));
        }
        let filters = format!(
            "{}|{}|{}|{}|{}|{:?}|{:?}",
            request.endpoint_id,
            request.event_type,
            request.status,
            request.message_id,
            request.delivery_id,
            request.start_at.as_ref().map(ms_of),
            end
        );
        let mut query = attempts::Entity::find()
            .filter(attempts::Column::WorkspaceId.eq(workspace_id))
            .filter(attempts::Column::AttemptedAtMs.gte(start));
        if let Some(end) = end {
            query = query.filter(attempts::Column::AttemptedAtMs.lt(end));
        }
        if !request.endpoint_id.is_empty() {
            query = query.filter(attempts::Column::EndpointId.eq(&request.endpoint_id));
        }
        if !request.event_type.is_empty() {
            query = query.filter(attempts::Column::EventType.eq(&request.event_type));
        }
        if request.status != 0 {
            query = query.filter(attempts::Column::Status.eq(request.status));
        }
        if !request.message_id.is_empty() {
            query = query.filter(attempts::Column::MessageId.eq(&request.message_id));
        }
        if !request.delivery_id.is_empty() {
            query = query.filter(attempts::Column::DeliveryId.eq(&request.delivery_id));
        }
        if !request.page_token.is_empty() {
            query = query.filter(attempts::Column::Id.lt(read_token(&request.page_token, &filters)?));
        }
        let mut rows =
            query.order_by_desc(attempts::Column::Id).limit(limit + 1).all(self.deps.db.conn()).await?;
        let next_page_token = if rows.len() as u64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| page_token(&r.id, &filters)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListDeliveryAttemptsResponse {
            attempts: rows.iter().map(attempt_pb).collect(),
            next_page_token,
        })
    }

    pub async fn retry_delivery(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<pb::RetryDeliveryResponse, ApiError> {
        let txn = self.deps.db.begin_write().await?;
        let delivery = deliveries::Entity::find_by_id(id.to_owned())
            .filter(deliveries::Column::WorkspaceId.eq(workspace_id))
            .one(&txn)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("delivery {id} not found")))?;
        let endpoint = endpoints::Entity::find_by_id(delivery.endpoint_id.clone()).one(&txn).await?;
        if !endpoint.is_some_and(|e| e.deleted_at_ms.is_none() && e.status == EndpointStatus::Enabled as i32)
        {
            return Err(ApiError::FailedPrecondition("the endpoint is disabled or deleted".into()));
        }
        if delivery.status == DeliveryStatus::Succeeded as i32 {
            return Err(ApiError::FailedPrecondition("the delivery already succeeded".into()));
        }
        if delivery.status == DeliveryStatus::Pending as i32 && delivery.manual_queued {
            return Ok(pb::RetryDeliveryResponse { delivery: Some(delivery_pb(&delivery)) });
        }
        let now = now_ms();
        let finished = delivery.status != DeliveryStatus::Pending as i32;
        let job =
            attempt_job(&delivery, delivery.attempt_count + 1, DeliveryAttemptTrigger::ManualRetry, None);
        let mut active = delivery.into_active_model();
        active.status = Set(DeliveryStatus::Pending as i32);
        active.manual_queued = Set(true);
        active.next_attempt_at_ms = Set(Some(now));
        active.updated_at_ms = Set(now);
        if finished {
            // A manual attempt of a finished delivery does not restart the
            // automatic schedule.
            active.auto_retry = Set(false);
        }
        let delivery = active.update(&txn).await?;
        self.deps.outbox.enqueue(&txn, job).await?;
        self.deps.outbox.commit(txn).await?;
        Ok(pb::RetryDeliveryResponse { delivery: Some(delivery_pb(&delivery)) })
    }

    pub async fn replay_endpoint(
        &self,
        workspace_id: &str,
        request: pb::ReplayEndpointRequest,
    ) -> Result<pb::ReplayEndpointResponse, ApiError> {
        let start =
            request.start_at.as_ref().map(ms_of).ok_or_else(|| ApiError::invalid("start_at", "required"))?;
        let end =
            request.end_at.as_ref().map(ms_of).ok_or_else(|| ApiError::invalid("end_at", "required"))?;
        if end <= start {
            return Err(ApiError::invalid("end_at", "must be after start_at"));
        }
        if end - start > MAX_REPLAY_MS {
            return Err(ApiError::invalid("end_at", "at most 7 days after start_at"));
        }
        let retention_start = now_ms() - self.deps.config.webhook_log_retention.as_millis() as i64;
        if start < retention_start {
            return Err(ApiError::invalid("start_at", "before the delivery log's retention"));
        }
        let txn = self.deps.db.begin_write().await?;
        let endpoint = endpoints::Entity::find_by_id(request.id.clone())
            .filter(endpoints::Column::WorkspaceId.eq(workspace_id))
            .filter(endpoints::Column::DeletedAtMs.is_null())
            .one(&txn)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("endpoint {} not found", request.id)))?;
        if endpoint.status != EndpointStatus::Enabled as i32 {
            return Err(ApiError::FailedPrecondition("the endpoint is disabled".into()));
        }
        let selected =
            replay_selection(&txn, workspace_id, &endpoint.id, start, end, request.failed_only).await?;
        let replay_id = uuid::Uuid::now_v7().to_string();
        let count = selected.len() as i32;
        replays::ActiveModel {
            id: Set(replay_id.clone()),
            workspace_id: Set(workspace_id.to_owned()),
            endpoint_id: Set(endpoint.id.clone()),
            start_ms: Set(start),
            end_ms: Set(end),
            failed_only: Set(request.failed_only),
            cursor: Set(String::new()),
            message_count: Set(count),
            done: Set(false),
            created_at_ms: Set(now_ms()),
        }
        .insert(&txn)
        .await?;
        let job = ReplayJob {
            workspace_id: workspace_id.to_owned(),
            replay_id: replay_id.clone(),
            endpoint_id: endpoint.id,
            start_at: request.start_at,
            end_at: request.end_at,
            failed_only: request.failed_only,
        };
        self.deps
            .outbox
            .enqueue(&txn, OutboxMessage::job("webhook", "replay", &job).with_id(replay_id.clone()))
            .await?;
        self.deps.outbox.commit(txn).await?;
        Ok(pb::ReplayEndpointResponse { replay_id, message_count: count })
    }
}

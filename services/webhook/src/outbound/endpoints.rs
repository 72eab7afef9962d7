//! Endpoint management: register, list, get, update, disable, enable,
//! delete and secret rotation. Every query is scoped to the caller's
//! workspace.

use postmesh_kit::db::now_ms;
use postmesh_kit::error::ApiError;
use postmesh_kit::outbox::OutboxMessage;
use postmesh_proto::postmesh::webhook::v1::{self as pb, DeliveryStatus, EndpointStatus};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder,
};

use super::store::{deliveries, endpoints};
use super::{Outbound, accepts, is_event_type, page_size, secret_context, signing, timestamp_ms};

/// Longest URL.
const MAX_URL_CHARS: usize = 2048;
/// Longest description or disable reason.
const MAX_TEXT_CHARS: usize = 500;
/// Most event type filters.
const MAX_FILTERS: usize = 50;
/// Default and longest rotation overlap.
const DEFAULT_OVERLAP_MS: i64 = 24 * 3600 * 1000;
const MAX_OVERLAP_MS: i64 = 7 * 24 * 3600 * 1000;

/// The filters stored as JSON.
pub(crate) fn filters_of(model: &endpoints::Model) -> Vec<String> {
    serde_json::from_str(&model.event_types).unwrap_or_default()
}

/// The endpoint as the contract shows it (never its secret).
pub(crate) fn endpoint_pb(model: &endpoints::Model) -> pb::Endpoint {
    let now = now_ms();
    pb::Endpoint {
        id: model.id.clone(),
        url: model.url.clone(),
        event_types: filters_of(model),
        description: model.description.clone(),
        status: model.status,
        disabled_reason: model.disabled_reason.clone(),
        disabled_at: model.disabled_at_ms.map(timestamp_ms),
        failures_started_at: model.failures_started_at_ms.map(timestamp_ms),
        previous_secret_expires_at: model
            .previous_secret_expires_at_ms
            .filter(|at| *at > now && model.previous_secret.is_some())
            .map(timestamp_ms),
        created_by: model.created_by.clone(),
        created_at: Some(timestamp_ms(model.created_at_ms)),
        updated_at: Some(timestamp_ms(model.updated_at_ms)),
    }
}

fn check_filters(field: &str, filters: &[String]) -> Result<(), ApiError> {
    if filters.len() > MAX_FILTERS {
        return Err(ApiError::invalid(field, format!("at most {MAX_FILTERS} entries")));
    }
    for (i, filter) in filters.iter().enumerate() {
        let base = filter.strip_suffix(".*").unwrap_or(filter);
        if !is_event_type(base) || base.ends_with('.') {
            return Err(ApiError::invalid(
                format!("{field}[{i}]"),
                "an event type (lowercase letters, digits, `_` and `.`, at most 100) or a prefix ending in `.*`",
            ));
        }
    }
    Ok(())
}

fn check_text(field: &str, value: &str) -> Result<(), ApiError> {
    if value.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::invalid(field, format!("at most {MAX_TEXT_CHARS} characters")));
    }
    Ok(())
}

/// Marks every pending delivery of the endpoint CANCELLED.
pub(crate) async fn cancel_pending(
    conn: &impl ConnectionTrait,
    endpoint_id: &str,
    now: i64,
) -> Result<(), sea_orm::DbErr> {
    deliveries::Entity::update_many()
        .col_expr(deliveries::Column::Status, Expr::value(DeliveryStatus::Cancelled as i32))
        .col_expr(deliveries::Column::NextAttemptAtMs, Expr::value(Option::<i64>::None))
        .col_expr(deliveries::Column::ManualQueued, Expr::value(false))
        .col_expr(deliveries::Column::UpdatedAtMs, Expr::value(now))
        .filter(deliveries::Column::EndpointId.eq(endpoint_id))
        .filter(deliveries::Column::Status.eq(DeliveryStatus::Pending as i32))
        .exec(conn)
        .await
        .map(|_| ())
}

impl Outbound {
    /// Checks a target URL: http(s), no user info or fragment, at most
    /// 2,048 characters, and a host the SSRF guard lets through.
    pub(crate) async fn check_url(&self, field: &str, value: &str) -> Result<String, ApiError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(ApiError::invalid(field, "required"));
        }
        if value.chars().count() > MAX_URL_CHARS {
            return Err(ApiError::invalid(field, format!("at most {MAX_URL_CHARS} characters")));
        }
        let url = url::Url::parse(value).map_err(|e| ApiError::invalid(field, format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ApiError::invalid(field, "must be an http or https URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ApiError::invalid(field, "must not carry user info"));
        }
        if url.fragment().is_some() {
            return Err(ApiError::invalid(field, "must not have a fragment"));
        }
        let Some(host) = url.host_str() else { return Err(ApiError::invalid(field, "needs a host")) };
        if !self.guard.host_allowed(host) {
            let port = url.port_or_known_default().unwrap_or(443);
            self.guard
                .resolve(host, port)
                .await
                .map_err(|refused| ApiError::invalid(field, refused.to_string()))?;
        }
        Ok(url.to_string())
    }

    async fn endpoint(
        &self,
        conn: &impl ConnectionTrait,
        workspace_id: &str,
        id: &str,
    ) -> Result<endpoints::Model, ApiError> {
        endpoints::Entity::find_by_id(id.to_owned())
            .filter(endpoints::Column::WorkspaceId.eq(workspace_id))
            .filter(endpoints::Column::DeletedAtMs.is_null())
            .one(conn)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("endpoint {id} not found")))
    }

    pub async fn register_endpoint(
        &self,
        workspace_id: &str,
        user_id: &str,
        request: pb::RegisterEndpointRequest,
    ) -> Result<pb::RegisterEndpointResponse, ApiError> {
        check_filters("event_types", &request.event_types)?;
        check_text("description", &request.description)?;
        let url = self.check_url("url", &request.url).await?;
        let id = uuid::Uuid::now_v7().to_string();
        let secret = signing::new_secret();
        let now = now_ms();
        let model = endpoints::ActiveModel {
            id: Set(id.clone()),
            workspace_id: Set(workspace_id.to_owned()),
            url: Set(url),
            event_types: Set(serde_json::to_string(&request.event_types).map_err(ApiError::internal)?),
            description: Set(request.description),
            status: Set(EndpointStatus::Enabled as i32),
            disabled_reason: Set(String::new()),
            disabled_by: Set(String::new()),
            disabled_at_ms: Set(None),
            failures_started_at_ms: Set(None),
            secret: Set(self.deps.cipher.encrypt(secret.as_bytes(), &secret_context(&id))),
            previous_secret: Set(None),
            previous_secret_expires_at_ms: Set(None),
            created_by: Set(user_id.to_owned()),
            created_at_ms: Set(now),
            updated_at_ms: Set(now),
            deleted_at_ms: Set(None),
        }
        .insert(self.deps.db.conn())
        .await?;
        Ok(pb::RegisterEndpointResponse { endpoint: Some(endpoint_pb(&model)), secret })
    }

    pub async fn list_endpoints(
        &self,
        workspace_id: &str,
        request: pb::ListEndpointsRequest,
    ) -> Result<pb::ListEndpointsResponse, ApiError> {
        let limit = page_size(request.page_size)? as usize;
        let mut query = endpoints::Entity::find()
            .filter(endpoints::Column::WorkspaceId.eq(workspace_id))
            .filter(endpoints::Column::DeletedAtMs.is_null());
        if request.status != 0 {
            if EndpointStatus::try_from(request.status).is_err() {
                return Err(ApiError::invalid("status", "not an endpoint status"));
            }
            query = query.filter(endpoints::Column::Status.eq(request.status));
        }
        if !request.page_token.is_empty() {
            if uuid::Uuid::parse_str(&request.page_token).is_err() {
                return Err(ApiError::invalid("page_token", "not a token this call returned"));
            }
            query = query.filter(endpoints::Column::Id.lt(request.page_token.clone()));
        }
        // Filters are matched here, not in SQL; a workspace has few endpoints.
        let rows = query.order_by_desc(endpoints::Column::Id).all(self.deps.db.conn()).await?;
        let mut matching: Vec<&endpoints::Model> = rows
            .iter()
            .filter(|row| request.event_type.is_empty() || accepts(&filters_of(row), &request.event_type))
            .collect();
        let next_page_token = if matching.len() > limit {
            matching.truncate(limit);
            matching.last().map(|row| row.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListEndpointsResponse {
            endpoints: matching.into_iter().map(endpoint_pb).collect(),
            next_page_token,
        })
    }

    pub async fn get_endpoint(&self, workspace_id: &str, id: &str) -> Result<pb::Endpoint, ApiError> {
        Ok(endpoint_pb(&self.endpoint(self.deps.db.conn(), workspace_id, id).await?))
    }

    pub async fn update_endpoint(
        &self,
        workspace_id: &str,
        request: pb::UpdateEndpointRequest,
    ) -> Result<pb::UpdateEndpointResponse, ApiError> {
        let endpoint = request.endpoint.ok_or_else(|| ApiError::invalid("endpoint", "required"))?;
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(ApiError::invalid(
                "update_mask",
                "name at least one of url, event_types, description",
            ));
        }
        for path in &paths {
            if !matches!(path.as_str(), "url" | "event_types" | "description") {
                return Err(ApiError::invalid("update_mask", format!("`{path}` cannot be changed")));
            }
        }
        let has = |name: &str| paths.iter().any(|p| p == name);
        let url = if has("url") { Some(self.check_url("endpoint.url", &endpoint.url).await?) } else { None };
        if has("event_types") {
            check_filters("endpoint.event_types", &endpoint.event_types)?;
        }
        if has("description") {
            check_text("endpoint.description", &endpoint.description)?;
        }
        let txn = self.deps.db.begin_write().await?;
        let model = self.endpoint(&txn, workspace_id, &endpoint.id).await?;
        let mut active = model.into_active_model();
        if let Some(url) = url {
            active.url = Set(url);
        }
        if has("event_types") {
            active.event_types =
                Set(serde_json::to_string(&endpoint.event_types).map_err(ApiError::internal)?);
        }
        if has("description") {
            active.description = Set(endpoint.description);
        }
        active.updated_at_ms = Set(now_ms());
        let model = active.update(&txn).await?;
        txn.commit().await?;
        Ok(pb::UpdateEndpointResponse { endpoint: Some(endpoint_pb(&model)) })
    }

    pub async fn disable_endpoint(
        &self,
        workspace_id: &str,
        user_id: &str,
        request: pb::DisableEndpointRequest,
    ) -> Result<pb::DisableEndpointResponse, ApiError> {
        check_text("reason", &request.reason)?;
        let txn = self.deps.db.begin_write().await?;
        let model = self.endpoint(&txn, workspace_id, &request.id).await?;
        if model.status != EndpointStatus::Enabled as i32 {
            return Ok(pb::DisableEndpointResponse { endpoint: Some(endpoint_pb(&model)) });
        }
        let now = now_ms();
        let reason =
            if request.reason.trim().is_empty() { "disabled by a user".to_owned() } else { request.reason };
        let mut active = model.into_active_model();
        active.status = Set(EndpointStatus::Disabled as i32);
        active.disabled_reason = Set(reason.clone());
        active.disabled_by = Set(user_id.to_owned());
        active.disabled_at_ms = Set(Some(now));
        active.updated_at_ms = Set(now);
        let model = active.update(&txn).await?;
        cancel_pending(&txn, &model.id, now).await?;
        let event = pb::EndpointDisabledEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            workspace_id: workspace_id.to_owned(),
            occurred_at: Some(timestamp_ms(now)),
            endpoint_id: model.id.clone(),
            url: model.url.clone(),
            status: EndpointStatus::Disabled as i32,
            reason,
            disabled_by: user_id.to_owned(),
            created_by: model.created_by.clone(),
            failures_started_at: None,
        };
        let message =
            OutboxMessage::event("webhook", "endpoint_disabled", &event).with_id(event.event_id.clone());
        self.deps.outbox.enqueue(&txn, message).await?;
        self.deps.outbox.commit(txn).await?;
        Ok(pb::DisableEndpointResponse { endpoint: Some(endpoint_pb(&model)) })
    }

    pub async fn enable_endpoint(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<pb::EnableEndpointResponse, ApiError> {
        let txn = self.deps.db.begin_write().await?;
        let model = self.endpoint(&txn, workspace_id, id).await?;
        let model = if model.status == EndpointStatus::Enabled as i32 {
            model
        } else {
            let mut active = model.into_active_model();
            active.status = Set(EndpointStatus::Enabled as i32);
            active.disabled_reason = Set(String::new());
            active.disabled_by = Set(String::new());
            active.disabled_at_ms = Set(None);
            active.failures_started_at_ms = Set(None);
            active.updated_at_ms = Set(now_ms());
            active.update(&txn).await?
        };
        txn.commit().await?;
        Ok(pb::EnableEndpointResponse { endpoint: Some(endpoint_pb(&model)) })
    }

    pub async fn delete_endpoint(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<pb::DeleteEndpointResponse, ApiError> {
        let txn = self.deps.db.begin_write().await?;
        let model = endpoints::Entity::find_by_id(id.to_owned())
            .filter(endpoints::Column::WorkspaceId.eq(workspace_id))
            .one(&txn)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("endpoint {id} not found")))?;
        if model.deleted_at_ms.is_none() {
            let now = now_ms();
            let mut active = model.into_active_model();
            active.deleted_at_ms = Set(Some(now));
            active.secret = Set(String::new());
            active.previous_secret = Set(None);
            active.previous_secret_expires_at_ms = Set(None);
            active.updated_at_ms = Set(now);
            active.update(&txn).await?;
            cancel_pending(&txn, id, now).await?;
        }
        txn.commit().await?;
        Ok(pb::DeleteEndpointResponse {})
    }

    pub async fn rotate_endpoint_secret(
        &self,
        workspace_id: &str,
        request: pb::RotateEndpointSecretRequest,
    ) -> Result<pb::RotateEndpointSecretResponse, ApiError> {
        let overlap_ms = match &request.overlap {
            None => DEFAULT_OVERLAP_MS,
            Some(d) if d.seconds < 0 || d.nanos < 0 => {
                return Err(ApiError::invalid("overlap", "must not be negative"));
            }
            Some(d) => {
                let ms = d.seconds.saturating_mul(1000).saturating_add(i64::from(d.nanos) / 1_000_000);
                if ms > MAX_OVERLAP_MS {
                    return Err(ApiError::invalid("overlap", "at most 7 days"));
                }
                ms
            }
        };
        let txn = self.deps.db.begin_write().await?;
        let model = self.endpoint(&txn, workspace_id, &request.id).await?;
        let secret = signing::new_secret();
        let now = now_ms();
        let context = secret_context(&model.id);
        let sealed = self.deps.cipher.encrypt(secret.as_bytes(), &context);
        let previous = (overlap_ms > 0).then(|| model.secret.clone());
        let mut active = model.into_active_model();
        active.secret = Set(sealed);
        active.previous_secret_expires_at_ms = Set(previous.as_ref().map(|_| now + overlap_ms));
        active.previous_secret = Set(previous);
        active.updated_at_ms = Set(now);
        let model = active.update(&txn).await?;
        txn.commit().await?;
        Ok(pb::RotateEndpointSecretResponse { endpoint: Some(endpoint_pb(&model)), secret })
    }

    /// The secrets deliveries are signed with now: the current one, then
    /// the previous one while its overlap lasts.
    pub(crate) fn signing_secrets(&self, model: &endpoints::Model, now: i64) -> Result<Vec<String>, String> {
        let context = secret_context(&model.id);
        let open = |sealed: &str| {
            self.deps
                .cipher
                .decrypt(sealed, &context)
                .map_err(|e| format!("endpoint secret cannot be opened: {e}"))
                .and_then(|plain| String::from_utf8(plain).map_err(|e| e.to_string()))
        };
        let mut secrets = vec![open(&model.secret)?];
        if let (Some(previous), Some(until)) = (&model.previous_secret, model.previous_secret_expires_at_ms)
            && until > now
        {
            secrets.push(open(previous)?);
        }
        Ok(secrets)
    }
}

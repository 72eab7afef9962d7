//! Generic inbound sources: senders with their own Standard Webhooks secret
//! (sealed at rest, rotatable with an overlap), and their callback
//! (`POST /api/webhooks/inbound/{source}`), which verifies, de-duplicates by
//! `webhook-id` (24 h per source), stores and queues the event for the rules.

use std::time::Duration;

use postmesh_kit::auth::Caller;
use postmesh_kit::db::now_ms;
use postmesh_kit::error::ApiError;
use postmesh_proto::postmesh::webhook::v1::{self as pb, InboundSourceKind};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde_json::Value;
use tonic::Request;

use super::Inbound;
use super::common::{MAX_BODY_BYTES, duration_ms, header, page_size, page_token, timestamp_ms};
use super::signature::{new_secret, secret_key, standard_valid};
use super::store::{rules, sources};
use super::twitch::Received;

/// How far a message's timestamp may be from now, either way.
const MAX_SKEW_SECS: i64 = 5 * 60;
/// How long `webhook-id`s are remembered per source.
const DEDUP_FOR: Duration = Duration::from_secs(24 * 3600);
/// Default and longest overlap of a secret rotation.
const DEFAULT_OVERLAP_MS: i64 = 24 * 3600 * 1000;
const MAX_OVERLAP_MS: i64 = 7 * 24 * 3600 * 1000;

fn secret_context(source_id: &str) -> String {
    format!("webhook-inbound-source:{source_id}")
}

fn source_pb(model: &sources::Model) -> pb::InboundSource {
    pb::InboundSource {
        id: model.id.clone(),
        name: model.name.clone(),
        description: model.description.clone(),
        url_path: format!("/api/webhooks/inbound/{}", model.id),
        previous_secret_expires_at: model
            .previous_secret_expires_at_ms
            .filter(|_| model.previous_secret.is_some())
            .map(timestamp_ms),
        created_at: Some(timestamp_ms(model.created_at_ms)),
    }
}

fn denied(message: &str) -> ApiError {
    ApiError::PermissionDenied(message.to_owned())
}

impl Inbound {
    async fn source(&self, workspace_id: &str, id: &str) -> Result<sources::Model, ApiError> {
        sources::Entity::find_by_id(id.to_owned())
            .filter(sources::Column::WorkspaceId.eq(workspace_id))
            .filter(sources::Column::DeletedAtMs.is_null())
            .one(self.deps.db.conn())
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("inbound source {id} not found")))
    }

    pub(super) async fn create_source(
        &self,
        caller: &Caller,
        request: pb::CreateInboundSourceRequest,
    ) -> Result<pb::CreateInboundSourceResponse, ApiError> {
        let workspace_id = caller.workspace_id()?.to_owned();
        let name = request.name.trim().to_owned();
        let mut violations = postmesh_kit::error::Violations::new();
        if name.is_empty() || name.chars().count() > 100 {
            violations.add("name", "must be 1 to 100 characters");
        }
        if request.description.chars().count() > 500 {
            violations.add("description", "must be at most 500 characters");
        }
        violations.finish()?;
        let txn = self.deps.db.begin_write().await?;
        let taken = sources::Entity::find()
            .filter(sources::Column::WorkspaceId.eq(&workspace_id))
            .filter(sources::Column::Name.eq(&name))
            .filter(sources::Column::DeletedAtMs.is_null())
            .one(&txn)
            .await?;
        if taken.is_some() {
            return Err(ApiError::AlreadyExists(format!("an inbound source named {name} exists")));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let secret = new_secret();
        let model = sources::ActiveModel {
            id: Set(id.clone()),
            workspace_id: Set(workspace_id),
            name: Set(name),
            description: Set(request.description),
            secret: Set(self.deps.cipher.encrypt(secret.as_bytes(), &secret_context(&id))),
            previous_secret: Set(None),
            previous_secret_expires_at_ms: Set(None),
            created_at_ms: Set(now_ms()),
            deleted_at_ms: Set(None),
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(pb::CreateInboundSourceResponse { source: Some(source_pb(&model)), secret })
    }

    pub(super) async fn list_sources(
        &self,
        workspace_id: &str,
        request: pb::ListInboundSourcesRequest,
    ) -> Result<pb::ListInboundSourcesResponse, ApiError> {
        let size = page_size(request.page_size)?;
        let mut query = sources::Entity::find()
            .filter(sources::Column::WorkspaceId.eq(workspace_id))
            .filter(sources::Column::DeletedAtMs.is_null());
        if let Some(after) = page_token(&request.page_token)? {
            query = query.filter(sources::Column::Id.lt(after));
        }
        let mut rows =
            query.order_by_desc(sources::Column::Id).limit(size + 1).all(self.deps.db.conn()).await?;
        let next_page_token = if rows.len() as u64 > size {
            rows.truncate(size as usize);
            rows.last().map(|r| r.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListInboundSourcesResponse { sources: rows.iter().map(source_pb).collect(), next_page_token })
    }

    pub(super) async fn delete_source(&self, workspace_id: &str, id: &str) -> Result<(), ApiError> {
        let txn = self.deps.db.begin_write().await?;
        let model = sources::Entity::find_by_id(id.to_owned())
            .filter(sources::Column::WorkspaceId.eq(workspace_id))
            .one(&txn)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("inbound source {id} not found")))?;
        if model.deleted_at_ms.is_some() {
            return Ok(());
        }
        let now = now_ms();
        let mut active = model.into_active_model();
        active.deleted_at_ms = Set(Some(now));
        active.update(&txn).await?;
        // Rules bound to it stop firing but stay.
        rules::Entity::update_many()
            .col_expr(rules::Column::Enabled, Expr::value(false))
            .col_expr(rules::Column::UpdatedAtMs, Expr::value(now))
            .filter(rules::Column::WorkspaceId.eq(workspace_id))
            .filter(rules::Column::InboundSourceId.eq(id))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    pub(super) async fn rotate_source(
        &self,
        workspace_id: &str,
        request: pb::RotateInboundSourceSecretRequest,
    ) -> Result<pb::RotateInboundSourceSecretResponse, ApiError> {
        let overlap_ms = match &request.overlap {
            None => DEFAULT_OVERLAP_MS,
            Some(d) => duration_ms(d),
        };
        if !(0..=MAX_OVERLAP_MS).contains(&overlap_ms) {
            return Err(ApiError::invalid("overlap", "must be between 0 and 7 days"));
        }
        let source = self.source(workspace_id, &request.id).await?;
        let current = self
            .deps
            .cipher
            .decrypt(&source.secret, &secret_context(&source.id))
            .map_err(ApiError::internal)?;
        let secret = new_secret();
        let now = now_ms();
        let mut active = source.clone().into_active_model();
        active.secret = Set(self.deps.cipher.encrypt(secret.as_bytes(), &secret_context(&source.id)));
        active.previous_secret = Set(Some(self.deps.cipher.encrypt(&current, &secret_context(&source.id))));
        active.previous_secret_expires_at_ms = Set(Some(now + overlap_ms));
        let model = active.update(self.deps.db.conn()).await?;
        Ok(pb::RotateInboundSourceSecretResponse { source: Some(source_pb(&model)), secret })
    }

    /// The keys a source accepts now: the current one, and the previous one
    /// while its overlap lasts.
    fn source_keys(&self, source: &sources::Model) -> Vec<Vec<u8>> {
        let context = secret_context(&source.id);
        let mut sealed = vec![source.secret.clone()];
        if let (Some(previous), Some(until)) = (&source.previous_secret, source.previous_secret_expires_at_ms)
            && until > now_ms()
        {
            sealed.push(previous.clone());
        }
        sealed
            .iter()
            .filter_map(|s| self.deps.cipher.decrypt(s, &context).ok())
            .filter_map(|secret| String::from_utf8(secret).ok())
            .filter_map(|secret| secret_key(&secret))
            .collect()
    }

    pub(super) async fn receive_generic(
        &self,
        request: Request<pb::ReceiveInboundWebhookRequest>,
    ) -> Result<pb::ReceiveInboundWebhookResponse, ApiError> {
        let id = header(&request, "webhook-id");
        let timestamp = header(&request, "webhook-timestamp");
        let signature = header(&request, "webhook-signature");
        let request = request.into_inner();
        let body = request.body.unwrap_or_default().data;
        if body.len() > MAX_BODY_BYTES {
            return Err(ApiError::invalid("body", "at most 1 MiB"));
        }
        if id.is_empty() || timestamp.is_empty() || signature.is_empty() {
            return Err(denied("missing webhook-id, webhook-timestamp or webhook-signature header"));
        }
        let source = match uuid::Uuid::parse_str(&request.source) {
            Ok(_) => sources::Entity::find_by_id(request.source.clone())
                .filter(sources::Column::DeletedAtMs.is_null())
                .one(self.deps.db.conn())
                .await?
                .ok_or_else(|| denied("unknown inbound source"))?,
            Err(_) => return Err(denied("unknown inbound source")),
        };
        if !standard_valid(&self.source_keys(&source), &id, &timestamp, &body, &signature) {
            return Err(denied("no matching signature"));
        }
        let sent = timestamp.parse::<i64>().map_err(|_| denied("bad webhook-timestamp"))?;
        if (now_ms() / 1000 - sent).abs() > MAX_SKEW_SECS {
            return Err(denied("webhook-timestamp more than 5 minutes away"));
        }
        let payload: Value = serde_json::from_slice(&body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| ApiError::invalid("body", "must be a JSON object"))?;
        let event_type = payload["type"].as_str().unwrap_or_default().to_owned();

        let event_id = uuid::Uuid::now_v7().to_string();
        let key = format!("webhook:inbound:msg:{}:{id}", source.id);
        if !self.deps.kv.set_if_absent(&key, event_id.as_bytes(), DEDUP_FOR).await? {
            let first = self.deps.kv.get(&key).await?.and_then(|v| String::from_utf8(v).ok());
            return Ok(pb::ReceiveInboundWebhookResponse {
                event_id: first.unwrap_or_default(),
                duplicate: true,
            });
        }
        let stored = self.store_generic(&source, &event_id, &id, &event_type, &payload).await;
        match stored {
            Ok(Some(existing)) => {
                let _ = self.deps.kv.set(&key, existing.as_bytes(), Some(DEDUP_FOR)).await;
                Ok(pb::ReceiveInboundWebhookResponse { event_id: existing, duplicate: true })
            }
            Ok(None) => Ok(pb::ReceiveInboundWebhookResponse { event_id, duplicate: false }),
            Err(err) => {
                let _ = self.deps.kv.delete(&key).await;
                Err(err)
            }
        }
    }

    /// Stores the event and queues it; `Some(first id)` when the database
    /// already had it.
    async fn store_generic(
        &self,
        source: &sources::Model,
        event_id: &str,
        external_id: &str,
        event_type: &str,
        payload: &Value,
    ) -> Result<Option<String>, ApiError> {
        let now = now_ms();
        let txn = self.deps.db.begin_write().await?;
        let event = Received {
            event_id,
            workspace_id: &source.workspace_id,
            kind: InboundSourceKind::Generic,
            source_id: &source.id,
            event_type,
            external_id,
            payload,
        };
        if let Some(first) = self.store_received(&txn, event, now).await? {
            return Ok(Some(first));
        }
        self.deps.outbox.commit(txn).await?;
        Ok(None)
    }
}

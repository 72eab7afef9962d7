//! Inbound: Twitch EventSub notifications and Standard Webhooks from
//! generic sources arrive with their raw bytes, are verified, de-duplicated,
//! stored, and processed in the background by rules that turn events into
//! posts through the content service.
//!
//! - [`twitch`]: the EventSub callback (signature, age, challenge,
//!   revocation, notification).
//! - [`generic`]: inbound sources (CRUD, secret rotation) and their callback.
//! - [`subscriptions`]: EventSub subscriptions through Helix, reconciled at
//!   start-up and every `webhook_reconcile_interval`
//!   (`jobs.webhook.reconcile_eventsub`).
//! - [`rules`]: rule CRUD; [`worker`]: `jobs.webhook.process_inbound`.
//! - [`helix`]: the Helix client and enrichment cache.
//!
//! Emits `events.webhook.{inbound_event_received, rule_fired,
//! eventsub_subscription_revoked}` through the outbox.

mod common;
#[cfg(feature = "fakes")]
pub mod fakes;
mod generic;
mod helix;
mod rules;
mod signature;
mod store;
mod subscriptions;
mod twitch;
mod worker;

use postmesh_kit::ServiceDeps;
use postmesh_kit::auth::Caller;
use postmesh_kit::error::ApiError;
use postmesh_proto::postmesh::webhook::v1::{self as pb, *};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use sea_orm_migration::MigrationTrait;
use tonic::{Request, Response, Status};

use common::{ms_of, page_size, page_token, struct_pb, timestamp_ms};
use helix::Helix;
use store::events;

type Reply<T> = Result<Response<T>, Status>;

fn reply<T>(result: Result<T, ApiError>) -> Reply<T> {
    result.map(Response::new).map_err(Status::from)
}

/// The inbound half of the webhook service.
#[derive(Clone)]
pub struct Inbound {
    deps: ServiceDeps,
    helix: Helix,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound").finish_non_exhaustive()
    }
}

/// The inbound tables' migrations, oldest first.
pub fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    store::migrations()
}

fn event_pb(model: &events::Model) -> pb::InboundEvent {
    let payload: serde_json::Value = serde_json::from_str(&model.payload).unwrap_or_default();
    let firings: Vec<worker::Firing> = serde_json::from_str(&model.firings).unwrap_or_default();
    pb::InboundEvent {
        id: model.id.clone(),
        source_kind: model.source_kind,
        source_id: model.source_id.clone(),
        event_type: model.event_type.clone(),
        external_id: model.external_id.clone(),
        payload: Some(struct_pb(&payload)),
        status: model.status,
        error: model.error.clone(),
        firings: firings.iter().map(worker::Firing::to_pb).collect(),
        received_at: Some(timestamp_ms(model.received_at_ms)),
        processed_at: model.processed_at_ms.map(timestamp_ms),
    }
}

impl Inbound {
    /// Starts the inbound consumers (processing, reconciliation) and the
    /// reconciliation timer.
    pub async fn start(deps: &ServiceDeps) -> Result<Self, postmesh_kit::bus::BusError> {
        let inbound = Self { deps: deps.clone(), helix: Helix::new(&deps.config, deps.kv.clone()) };
        worker::start(deps, inbound.clone()).await?;
        subscriptions::start(deps, inbound.clone()).await?;
        Ok(inbound)
    }

    async fn list_events(
        &self,
        workspace_id: &str,
        request: pb::ListInboundEventsRequest,
    ) -> Result<pb::ListInboundEventsResponse, ApiError> {
        let size = page_size(request.page_size)?;
        let mut query = events::Entity::find().filter(events::Column::WorkspaceId.eq(workspace_id));
        if request.source_kind != 0 {
            query = query.filter(events::Column::SourceKind.eq(request.source_kind));
        }
        if !request.source_id.is_empty() {
            query = query.filter(events::Column::SourceId.eq(&request.source_id));
        }
        if !request.event_type.is_empty() {
            query = query.filter(events::Column::EventType.eq(&request.event_type));
        }
        if request.status != 0 {
            query = query.filter(events::Column::Status.eq(request.status));
        }
        if let Some(start) = &request.start_at {
            query = query.filter(events::Column::ReceivedAtMs.gte(ms_of(start)));
        }
        if let Some(end) = &request.end_at {
            query = query.filter(events::Column::ReceivedAtMs.lt(ms_of(end)));
        }
        if let Some(after) = page_token(&request.page_token)? {
            query = query.filter(events::Column::Id.lt(after));
        }
        let mut rows =
            query.order_by_desc(events::Column::Id).limit(size + 1).all(self.deps.db.conn()).await?;
        let next_page_token = if rows.len() as u64 > size {
            rows.truncate(size as usize);
            rows.last().map(|r| r.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListInboundEventsResponse { events: rows.iter().map(event_pb).collect(), next_page_token })
    }

    pub async fn receive_twitch_event(
        &self,
        request: Request<ReceiveTwitchEventRequest>,
    ) -> Reply<ReceiveTwitchEventResponse> {
        reply(self.receive_twitch(request).await)
    }

    pub async fn receive_inbound_webhook(
        &self,
        request: Request<ReceiveInboundWebhookRequest>,
    ) -> Reply<ReceiveInboundWebhookResponse> {
        reply(self.receive_generic(request).await)
    }

    pub async fn create_inbound_source(
        &self,
        request: Request<CreateInboundSourceRequest>,
    ) -> Reply<CreateInboundSourceResponse> {
        let caller = Caller::of(&request)?.clone();
        reply(self.create_source(&caller, request.into_inner()).await)
    }

    pub async fn list_inbound_sources(
        &self,
        request: Request<ListInboundSourcesRequest>,
    ) -> Reply<ListInboundSourcesResponse> {
        let workspace_id = Caller::of(&request)?.workspace_id()?.to_owned();
        reply(self.list_sources(&workspace_id, request.into_inner()).await)
    }

    pub async fn delete_inbound_source(
        &self,
        request: Request<DeleteInboundSourceRequest>,
    ) -> Reply<DeleteInboundSourceResponse> {
        let workspace_id = Caller::of(&request)?.workspace_id()?.to_owned();
        reply(
            self.delete_source(&workspace_id, &request.get_ref().id)
                .await
                .map(|()| DeleteInboundSourceResponse {}),
        )
    }

    pub async fn rotate_inbound_source_secret(
        &self,
        request: Request<RotateInboundSourceSecretRequest>,
    ) -> Reply<RotateInboundSourceSecretResponse> {
        let workspace_id = Caller::of(&request)?.workspace_id()?.to_owned();
        reply(self.rotate_source(&workspace_id, request.into_inner()).await)
    }

    pub async fn list_inbound_events(
        &self,
        request: Request<ListInboundEventsRequest>,
    ) -> Reply<ListInboundEventsResponse> {
        let workspace_id = Caller::of(&request)?.workspace_id()?.to_owned();
        reply(self.list_events(&workspace_id, request.into_inner()).await)
    }

    pub async fn create_event_sub_subscription(
        &self,
        request: Request<CreateEventSubSubscriptionRequest>,
    ) -> Reply<CreateEventSubSubscriptionResponse> {
        let workspace_id = Caller::of(&request)?.workspace_id()?.to_owned();
        reply(self.create_subscription_in(&workspace_id, request.into_inner()).await)
    }

    pub async fn list_event_sub_subscriptions(
        &self,
        request: Request<ListEventSubSubscriptionsRequest>,
    ) -> Reply<ListEventSubSubscriptionsResponse> {
        let workspace_id = Caller::of(&request)?.workspace_id()?.to_owned();
        reply(self.list_subscriptions_in(&workspace_id, request.into_inner()).await)
    }

    pub async fn delete_event_sub_subscription(
        &self,
        request: Request<DeleteEventSubSubscriptionRequest>,
    ) -> Reply<DeleteEventSubSubscriptionResponse> {
        let workspace_id = Caller::of(&request)?.workspace_id()?.to_owned();
        let deleted = self.delete_subscription_in(&workspace_id, &request.get_ref().id).await;
        reply(deleted.map(|()| DeleteEventSubSubscriptionResponse {}))
    }

    pub async fn create_rule(&self, request: Request<CreateRuleRequest>) -> Reply<CreateRuleResponse> {
        let workspace_id = Caller::of(&request)?.workspace_id()?.to_owned();
        let rule = self.create_rule_in(&workspace_id, request.into_inner().rule).await;
        reply(rule.map(|rule| CreateRuleResponse { rule: Some(rule) }))
    }

    pub async fn list_rules(&self, request: Request<ListRulesRequest>) -> Reply<ListRulesResponse> {
        let workspace_id = Caller::of(&request)?.workspace_id()?.to_owned();
        reply(self.list_rules_in(&workspace_id, request.into_inner()).await)
    }

    pub async fn get_rule(&self, request: Request<GetRuleRequest>) -> Reply<GetRuleResponse> {
        let workspace_id = Caller::of(&request)?.workspace_id()?.to_owned();
        let rule = self.get_rule_in(&workspace_id, &request.get_ref().id).await;
        reply(rule.map(|rule| GetRuleResponse { rule: Some(rule) }))
    }

    pub async fn update_rule(&self, request: Request<UpdateRuleRequest>) -> Reply<UpdateRuleResponse> {
        let workspace_id = Caller::of(&request)?.workspace_id()?.to_owned();
        let rule = self.update_rule_in(&workspace_id, request.into_inner()).await;
        reply(rule.map(|rule| UpdateRuleResponse { rule: Some(rule) }))
    }

    pub async fn delete_rule(&self, request: Request<DeleteRuleRequest>) -> Reply<DeleteRuleResponse> {
        let workspace_id = Caller::of(&request)?.workspace_id()?.to_owned();
        reply(self.delete_rule_in(&workspace_id, &request.get_ref().id).await.map(|()| DeleteRuleResponse {}))
    }
}

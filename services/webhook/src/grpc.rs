//! The tonic implementation of `WebhookService`: inbound RPCs are handed to
//! [`Inbound`], outbound ones to [`Outbound`]; this file only takes the
//! caller out of the request and maps errors.

use postmesh_kit::auth::Caller;
use postmesh_kit::error::ApiError;
use postmesh_proto::postmesh::webhook::v1::webhook_service_server::WebhookService;
use postmesh_proto::postmesh::webhook::v1::{self as pb};
use tonic::{Request, Response, Status};

use crate::inbound::Inbound;
use crate::outbound::Outbound;

type Reply<T> = Result<Response<T>, Status>;

/// The gRPC face of the webhook service.
#[derive(Clone)]
pub struct WebhookApi {
    outbound: Outbound,
    inbound: Inbound,
}

impl std::fmt::Debug for WebhookApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookApi").finish_non_exhaustive()
    }
}

impl WebhookApi {
    pub(crate) fn new(outbound: Outbound, inbound: Inbound) -> Self {
        Self { outbound, inbound }
    }
}

fn reply<T>(result: Result<T, ApiError>) -> Reply<T> {
    result.map(Response::new).map_err(Status::from)
}

/// The caller and its workspace.
fn scope<T>(request: &Request<T>) -> Result<(Caller, String), Status> {
    let caller = Caller::of(request)?.clone();
    let workspace_id = caller.workspace_id()?.to_owned();
    Ok((caller, workspace_id))
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    async fn receive_twitch_event(
        &self,
        request: Request<pb::ReceiveTwitchEventRequest>,
    ) -> Reply<pb::ReceiveTwitchEventResponse> {
        self.inbound.receive_twitch_event(request).await
    }

    async fn receive_inbound_webhook(
        &self,
        request: Request<pb::ReceiveInboundWebhookRequest>,
    ) -> Reply<pb::ReceiveInboundWebhookResponse> {
        self.inbound.receive_inbound_webhook(request).await
    }

    async fn create_inbound_source(
        &self,
        request: Request<pb::CreateInboundSourceRequest>,
    ) -> Reply<pb::CreateInboundSourceResponse> {
        self.inbound.create_inbound_source(request).await
    }

    async fn list_inbound_sources(
        &self,
        request: Request<pb::ListInboundSourcesRequest>,
    ) -> Reply<pb::ListInboundSourcesResponse> {
        self.inbound.list_inbound_sources(request).await
    }

    async fn delete_inbound_source(
        &self,
        request: Request<pb::DeleteInboundSourceRequest>,
    ) -> Reply<pb::DeleteInboundSourceResponse> {
        self.inbound.delete_inbound_source(request).await
    }

    async fn rotate_inbound_source_secret(
        &self,
        request: Request<pb::RotateInboundSourceSecretRequest>,
    ) -> Reply<pb::RotateInboundSourceSecretResponse> {
        self.inbound.rotate_inbound_source_secret(request).await
    }

    async fn list_inbound_events(
        &self,
        request: Request<pb::ListInboundEventsRequest>,
    ) -> Reply<pb::ListInboundEventsResponse> {
        self.inbound.list_inbound_events(request).await
    }

    async fn create_event_sub_subscription(
        &self,
        request: Request<pb::CreateEventSubSubscriptionRequest>,
    ) -> Reply<pb::CreateEventSubSubscriptionResponse> {
        self.inbound.create_event_sub_subscription(request).await
    }

    async fn list_event_sub_subscriptions(
        &self,
        request: Request<pb::ListEventSubSubscriptionsRequest>,
    ) -> Reply<pb::ListEventSubSubscriptionsResponse> {
        self.inbound.list_event_sub_subscriptions(request).await
    }

    async fn delete_event_sub_subscription(
        &self,
        request: Request<pb::DeleteEventSubSubscriptionRequest>,
    ) -> Reply<pb::DeleteEventSubSubscriptionResponse> {
        self.inbound.delete_event_sub_subscription(request).await
    }

    async fn create_rule(&self, request: Request<pb::CreateRuleRequest>) -> Reply<pb::CreateRuleResponse> {
        self.inbound.create_rule(request).await
    }

    async fn list_rules(&self, request: Request<pb::ListRulesRequest>) -> Reply<pb::ListRulesResponse> {
        self.inbound.list_rules(request).await
    }

    async fn get_rule(&self, request: Request<pb::GetRuleRequest>) -> Reply<pb::GetRuleResponse> {
        self.inbound.get_rule(request).await
    }

    async fn update_rule(&self, request: Request<pb::UpdateRuleRequest>) -> Reply<pb::UpdateRuleResponse> {
        self.inbound.update_rule(request).await
    }

    async fn delete_rule(&self, request: Request<pb::DeleteRuleRequest>) -> Reply<pb::DeleteRuleResponse> {
        self.inbound.delete_rule(request).await
    }

    async fn register_endpoint(
        &self,
        request: Request<pb::RegisterEndpointRequest>,
    ) -> Reply<pb::RegisterEndpointResponse> {
        let (caller, workspace_id) = scope(&request)?;
        let user_id = caller.user_id.clone().unwrap_or_default();
        reply(self.outbound.register_endpoint(&workspace_id, &user_id, request.into_inner()).await)
    }

    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Reply<pb::ListEndpointsResponse> {
        let (_, workspace_id) = scope(&request)?;
        reply(self.outbound.list_endpoints(&workspace_id, request.into_inner()).await)
    }

    async fn get_endpoint(&self, request: Request<pb::GetEndpointRequest>) -> Reply<pb::GetEndpointResponse> {
        let (_, workspace_id) = scope(&request)?;
        let endpoint = self.outbound.get_endpoint(&workspace_id, &request.get_ref().id).await;
        reply(endpoint.map(|endpoint| pb::GetEndpointResponse { endpoint: Some(endpoint) }))
    }

    async fn update_endpoint(
        &self,
        request: Request<pb::UpdateEndpointRequest>,
    ) -> Reply<pb::UpdateEndpointResponse> {
        let (_, workspace_id) = scope(&request)?;
        reply(self.outbound.update_endpoint(&workspace_id, request.into_inner()).await)
    }

    async fn disable_endpoint(
        &self,
        request: Request<pb::DisableEndpointRequest>,
    ) -> Reply<pb::DisableEndpointResponse> {
        let (caller, workspace_id) = scope(&request)?;
        let user_id = caller.user_id.clone().unwrap_or_default();
        reply(self.outbound.disable_endpoint(&workspace_id, &user_id, request.into_inner()).await)
    }

    async fn enable_endpoint(
        &self,
        request: Request<pb::EnableEndpointRequest>,
    ) -> Reply<pb::EnableEndpointResponse> {
        let (_, workspace_id) = scope(&request)?;
        reply(self.outbound.enable_endpoint(&workspace_id, &request.get_ref().id).await)
    }

    async fn delete_endpoint(
        &self,
        request: Request<pb::DeleteEndpointRequest>,
    ) -> Reply<pb::DeleteEndpointResponse> {
        let (_, workspace_id) = scope(&request)?;
        reply(self.outbound.delete_endpoint(&workspace_id, &request.get_ref().id).await)
    }

    async fn rotate_endpoint_secret(
        &self,
        request: Request<pb::RotateEndpointSecretRequest>,
    ) -> Reply<pb::RotateEndpointSecretResponse> {
        let (_, workspace_id) = scope(&request)?;
        reply(self.outbound.rotate_endpoint_secret(&workspace_id, request.into_inner()).await)
    }

    async fn replay_endpoint(
        &self,
        request: Request<pb::ReplayEndpointRequest>,
    ) -> Reply<pb::ReplayEndpointResponse> {
        let (_, workspace_id) = scope(&request)?;
        reply(self.outbound.replay_endpoint(&workspace_id, request.into_inner()).await)
    }

    async fn trigger_event(
        &self,
        request: Request<pb::TriggerEventRequest>,
    ) -> Reply<pb::TriggerEventResponse> {
        let (_, workspace_id) = scope(&request)?;
        reply(self.outbound.trigger_event(&workspace_id, request.into_inner()).await)
    }

    async fn list_delivery_attempts(
        &self,
        request: Request<pb::ListDeliveryAttemptsRequest>,
    ) -> Reply<pb::ListDeliveryAttemptsResponse> {
        let (_, workspace_id) = scope(&request)?;
        reply(self.outbound.list_delivery_attempts(&workspace_id, request.into_inner()).await)
    }

    async fn retry_delivery(
        &self,
        request: Request<pb::RetryDeliveryRequest>,
    ) -> Reply<pb::RetryDeliveryResponse> {
        let (_, workspace_id) = scope(&request)?;
        reply(self.outbound.retry_delivery(&workspace_id, &request.get_ref().id).await)
    }

    async fn list_event_types(
        &self,
        _request: Request<pb::ListEventTypesRequest>,
    ) -> Reply<pb::ListEventTypesResponse> {
        reply(Ok(crate::outbound::event_types()))
    }

    async fn emit_event(&self, request: Request<pb::EmitEventRequest>) -> Reply<pb::EmitEventResponse> {
        reply(self.outbound.emit_event(request.into_inner()).await)
    }
}

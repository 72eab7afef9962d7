//! The webhook service (`postmesh.webhook.v1.WebhookService`): inbound Twitch EventSub and signed webhooks routed to rules that create posts, and outbound endpoints with signed, retried deliveries.
//!
//! Its contract is `proto/postmesh/webhook/v1/`. It owns its own database
//! (schema `webhook`), which holds its outbox. Until the webhook issue lands,
//! every RPC answers UNIMPLEMENTED; health, reflection and the runtime
//! around it are real.
#![forbid(unsafe_code)]

use postmesh_kit::{ServiceDeps, ServiceSpec};
use postmesh_proto::postmesh::webhook::v1::webhook_service_server::{
    SERVICE_NAME, WebhookService, WebhookServiceServer,
};
use sea_orm_migration::MigrationTrait;

/// How the runtime starts this service.
pub const SPEC: ServiceSpec = ServiceSpec { name: "webhook", grpc_name: SERVICE_NAME, migrations };

/// The service's migrations, oldest first.
fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    postmesh_kit::outbox::migrations()
}

/// The gRPC implementation.
#[derive(Debug, Clone, Default)]
pub struct WebhookApi;

impl WebhookService for WebhookApi {}

/// Builds the gRPC server for this service on `deps`.
pub fn router(_deps: &ServiceDeps) -> WebhookServiceServer<WebhookApi> {
    WebhookServiceServer::new(WebhookApi)
}

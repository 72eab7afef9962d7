//! The webhook service (`postmesh.webhook.v1.WebhookService`): inbound Twitch EventSub and signed webhooks routed to rules that create posts, and outbound endpoints with signed, retried deliveries.
//!
//! Its contract is `proto/postmesh/webhook/v1/`. It owns its own database
//! (schema `webhook`): outbound endpoints (secrets sealed), messages,
//! deliveries and their attempts (`endpoints`, `deliveries`, `delivery_*`
//! tables), the inbound tables (`inbound_*`, `eventsub_*`, `rules`), and
//! its outbox.
//!
//! Outbound ([`outbound`]): consumes `jobs.webhook.deliver` (one HTTP
//! attempt each) and `jobs.webhook.replay`, and fans the mesh's events out
//! to subscribed endpoints (`events.social.{post_published, post_failed}`,
//! `events.content.post_created`, `events.webhook.{rule_fired,
//! inbound_event_received, eventsub_subscription_revoked,
//! endpoint_disabled}`). Emits `events.webhook.{endpoint_disabled,
//! delivery_failed}` and queues `jobs.notification.notify` when an endpoint
//! is disabled automatically.
//!
//! Inbound ([`inbound`]): consumes `jobs.webhook.process_inbound` and
//! `jobs.webhook.reconcile_eventsub`, calls the Twitch Helix API and the
//! content service (posts from rules).
#![forbid(unsafe_code)]

mod grpc;
mod inbound;
mod outbound;

use postmesh_kit::{ServiceDeps, ServiceSpec};
use postmesh_proto::postmesh::webhook::v1::webhook_service_server::{SERVICE_NAME, WebhookServiceServer};
use sea_orm_migration::MigrationTrait;

pub use grpc::WebhookApi;
/// Fake third-party servers for tests (feature `fakes`).
#[cfg(feature = "fakes")]
pub use inbound::fakes as twitch_fakes;

/// How the runtime starts this service.
pub const SPEC: ServiceSpec = ServiceSpec { name: "webhook", grpc_name: SERVICE_NAME, migrations };

/// The service's migrations, oldest first.
fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    let mut all = postmesh_kit::outbox::migrations();
    all.extend(outbound::store::migrations());
    all.extend(inbound::migrations());
    all
}

/// Builds the gRPC server for this service on `deps` and starts its
/// consumers (deliveries, replays, fan-out, inbound processing).
pub async fn router(
    deps: &ServiceDeps,
) -> Result<WebhookServiceServer<WebhookApi>, postmesh_kit::bus::BusError> {
    let outbound = outbound::Outbound::start(deps).await?;
    let inbound = inbound::Inbound::start(deps).await?;
    Ok(WebhookServiceServer::new(WebhookApi::new(outbound, inbound)))
}

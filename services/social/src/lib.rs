//! The social service (`postmesh.social.v1.SocialService`): the platform registry, connected accounts (credentials encrypted at rest) and the publishing jobs that talk to each platform's API.
//!
//! Its contract is `proto/postmesh/social/v1/`. It owns its own database
//! (schema `social`): accounts with sealed credentials, the record of
//! published targets, publish tries, and its outbox.
//!
//! Calls the content service (`EnqueuePublish` for publish requests,
//! `BeginTargetPublish` before each try). Consumes `jobs.social.publish`
//! and `jobs.social.refresh_token` (OAuth tokens renewed before they expire).
//! Emits `events.social.{post_published, post_failed,
//! publish_retry_scheduled, account_connected, account_disconnected,
//! token_refresh_failed}`.
#![forbid(unsafe_code)]

#[cfg(feature = "fakes")]
pub mod fakes;
mod grpc;
mod operations;
pub mod platforms;
mod refresh;
mod store;
mod worker;

use postmesh_kit::{ServiceDeps, ServiceSpec};
use postmesh_proto::postmesh::social::v1::social_service_server::{SERVICE_NAME, SocialServiceServer};
use sea_orm_migration::MigrationTrait;

pub use grpc::SocialApi;
use platforms::{Adapters, PlatformUrls};

/// How the runtime starts this service.
pub const SPEC: ServiceSpec = ServiceSpec { name: "social", grpc_name: SERVICE_NAME, migrations };

/// The service's migrations, oldest first.
fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    let mut all = postmesh_kit::outbox::migrations();
    all.extend(store::migrations());
    all
}

/// Builds the gRPC server for this service on `deps` and starts its
/// publishing worker.
pub async fn router(
    deps: &ServiceDeps,
) -> Result<SocialServiceServer<SocialApi>, postmesh_kit::bus::BusError> {
    let adapters = Adapters::new(PlatformUrls::from_config(&deps.config), deps.config.social_publish_timeout);
    worker::start(deps, adapters.clone()).await?;
    refresh::start(deps, adapters.clone()).await?;
    Ok(SocialServiceServer::new(SocialApi::new(deps.clone(), adapters)))
}

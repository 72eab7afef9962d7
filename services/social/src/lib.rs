//! The social service (`postmesh.social.v1.SocialService`): the platform registry, connected accounts (credentials encrypted at rest) and the publishing jobs that talk to each platform's API.
//!
//! Its contract is `proto/postmesh/social/v1/`. It owns its own database
//! (schema `social`), which holds its outbox. Until the content and social issue lands,
//! every RPC answers UNIMPLEMENTED; health, reflection and the runtime
//! around it are real.
#![forbid(unsafe_code)]

use postmesh_kit::{ServiceDeps, ServiceSpec};
use postmesh_proto::postmesh::social::v1::social_service_server::{
    SERVICE_NAME, SocialService, SocialServiceServer,
};
use sea_orm_migration::MigrationTrait;

/// How the runtime starts this service.
pub const SPEC: ServiceSpec = ServiceSpec { name: "social", grpc_name: SERVICE_NAME, migrations };

/// The service's migrations, oldest first.
fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    postmesh_kit::outbox::migrations()
}

/// The gRPC implementation.
#[derive(Debug, Clone, Default)]
pub struct SocialApi;

impl SocialService for SocialApi {}

/// Builds the gRPC server for this service on `deps`.
pub fn router(_deps: &ServiceDeps) -> SocialServiceServer<SocialApi> {
    SocialServiceServer::new(SocialApi)
}

//! The content service (`postmesh.content.v1.ContentService`): posts and their per-platform variants, templates with `{variables}`, scheduling (`publish_at`), idempotent creation and per-platform publishing status.
//!
//! Its contract is `proto/postmesh/content/v1/`. It owns its own database
//! (schema `content`), which holds its outbox. Until the content and social issue lands,
//! every RPC answers UNIMPLEMENTED; health, reflection and the runtime
//! around it are real.
#![forbid(unsafe_code)]

use postmesh_kit::{ServiceDeps, ServiceSpec};
use postmesh_proto::postmesh::content::v1::content_service_server::{
    ContentService, ContentServiceServer, SERVICE_NAME,
};
use sea_orm_migration::MigrationTrait;

/// How the runtime starts this service.
pub const SPEC: ServiceSpec = ServiceSpec { name: "content", grpc_name: SERVICE_NAME, migrations };

/// The service's migrations, oldest first.
fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    postmesh_kit::outbox::migrations()
}

/// The gRPC implementation.
#[derive(Debug, Clone, Default)]
pub struct ContentApi;

impl ContentService for ContentApi {}

/// Builds the gRPC server for this service on `deps`.
pub fn router(_deps: &ServiceDeps) -> ContentServiceServer<ContentApi> {
    ContentServiceServer::new(ContentApi)
}

//! The ai service (`postmesh.ai.v1.AiService`): content generation and rewriting through OpenAI-compatible endpoints, plus local sentiment, hashtag and posting-time methods.
//!
//! Its contract is `proto/postmesh/ai/v1/`. It owns its own database
//! (schema `ai`), which holds its outbox. Until the ai issue lands,
//! every RPC answers UNIMPLEMENTED; health, reflection and the runtime
//! around it are real.
#![forbid(unsafe_code)]

use postmesh_kit::{ServiceDeps, ServiceSpec};
use postmesh_proto::postmesh::ai::v1::ai_service_server::{AiService, AiServiceServer, SERVICE_NAME};
use sea_orm_migration::MigrationTrait;

/// How the runtime starts this service.
pub const SPEC: ServiceSpec = ServiceSpec { name: "ai", grpc_name: SERVICE_NAME, migrations };

/// The service's migrations, oldest first.
fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    postmesh_kit::outbox::migrations()
}

/// The gRPC implementation.
#[derive(Debug, Clone, Default)]
pub struct AiApi;

impl AiService for AiApi {}

/// Builds the gRPC server for this service on `deps`.
pub fn router(_deps: &ServiceDeps) -> AiServiceServer<AiApi> {
    AiServiceServer::new(AiApi)
}

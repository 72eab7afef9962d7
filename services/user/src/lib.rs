//! The user service (`postmesh.user.v1.UserService`): accounts, sessions and tokens (EdDSA JWT access + rotating refresh), TOTP 2FA, API keys, workspaces with roles, and the keys every other service verifies tokens with.
//!
//! Its contract is `proto/postmesh/user/v1/`. It owns its own database
//! (schema `user`), which holds its outbox. Until the user/auth issue lands,
//! every RPC answers UNIMPLEMENTED; health, reflection and the runtime
//! around it are real.
#![forbid(unsafe_code)]

use postmesh_kit::{ServiceDeps, ServiceSpec};
use postmesh_proto::postmesh::user::v1::user_service_server::{SERVICE_NAME, UserService, UserServiceServer};
use sea_orm_migration::MigrationTrait;

/// How the runtime starts this service.
pub const SPEC: ServiceSpec = ServiceSpec { name: "user", grpc_name: SERVICE_NAME, migrations };

/// The service's migrations, oldest first.
fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    postmesh_kit::outbox::migrations()
}

/// The gRPC implementation.
#[derive(Debug, Clone, Default)]
pub struct UserApi;

impl UserService for UserApi {}

/// Builds the gRPC server for this service on `deps`.
pub fn router(_deps: &ServiceDeps) -> UserServiceServer<UserApi> {
    UserServiceServer::new(UserApi)
}

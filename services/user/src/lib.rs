//! The user service (`postmesh.user.v1.UserService`): the security core of
//! the mesh.
//!
//! - accounts: register (with a first workspace), login (argon2id, throttled
//!   per account and per address with back-off), logout, profile, delete;
//! - tokens: EdDSA access tokens signed with the process's key ring, rotating
//!   refresh tokens with reuse detection per login session, the JWKS, internal
//!   tokens for API-key callers, service tokens;
//! - TOTP 2FA: enroll, confirm, challenge at login, recovery codes;
//! - API keys, workspaces, members, roles and invitations.
//!
//! Calls no other service. Emits `events.user.*` (registered, deleted,
//! workspace_created, member_invited, member_added, member_removed,
//! member_role_changed) through its outbox; consumes nothing. Revocations go
//! to the key-value store, where every service's auth layer checks them.
#![forbid(unsafe_code)]

mod domain;
mod grpc;
mod service;
mod store;

use postmesh_kit::{ServiceDeps, ServiceSpec};
use postmesh_proto::postmesh::user::v1::user_service_server::{SERVICE_NAME, UserServiceServer};
use sea_orm_migration::MigrationTrait;

pub use domain::Totp;
pub use grpc::UserApi;

/// How the runtime starts this service.
pub const SPEC: ServiceSpec = ServiceSpec { name: "user", grpc_name: SERVICE_NAME, migrations };

/// The service's migrations, oldest first.
fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    let mut all = postmesh_kit::outbox::migrations();
    all.extend(store::migrations());
    all
}

/// Builds the gRPC server for this service on `deps`.
pub fn router(deps: &ServiceDeps) -> UserServiceServer<UserApi> {
    UserServiceServer::new(UserApi::new(service::Users::new(deps.clone())))
}

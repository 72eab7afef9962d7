//! The notification service (`postmesh.notification.v1.NotificationService`): the in-app inbox, email over SMTP, webhook delivery of notifications, topic subscriptions, preferences and the live stream.
//!
//! Its contract is `proto/postmesh/notification/v1/`. It owns its own database
//! (schema `notification`), which holds its outbox. Until the notification issue lands,
//! every RPC answers UNIMPLEMENTED; health, reflection and the runtime
//! around it are real.
#![forbid(unsafe_code)]

use postmesh_kit::{ServiceDeps, ServiceSpec};
use postmesh_proto::postmesh::notification::v1::notification_service_server::{
    NotificationService, NotificationServiceServer, SERVICE_NAME,
};
use sea_orm_migration::MigrationTrait;

/// How the runtime starts this service.
pub const SPEC: ServiceSpec = ServiceSpec { name: "notification", grpc_name: SERVICE_NAME, migrations };

/// The service's migrations, oldest first.
fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    postmesh_kit::outbox::migrations()
}

/// The gRPC implementation.
#[derive(Debug, Clone, Default)]
pub struct NotificationApi;

impl NotificationService for NotificationApi {}

/// Builds the gRPC server for this service on `deps`.
pub fn router(_deps: &ServiceDeps) -> NotificationServiceServer<NotificationApi> {
    NotificationServiceServer::new(NotificationApi)
}

//! The analytics service (`postmesh.analytics.v1.AnalyticsService`): engagement time series ingested from the bus, hourly/daily roll-ups, dashboards, per-post performance, audience, trends and reports.
//!
//! Its contract is `proto/postmesh/analytics/v1/`. It owns its own database
//! (schema `analytics`), which holds its outbox. Until the analytics issue lands,
//! every RPC answers UNIMPLEMENTED; health, reflection and the runtime
//! around it are real.
#![forbid(unsafe_code)]

use postmesh_kit::{ServiceDeps, ServiceSpec};
use postmesh_proto::postmesh::analytics::v1::analytics_service_server::{
    AnalyticsService, AnalyticsServiceServer, SERVICE_NAME,
};
use sea_orm_migration::MigrationTrait;

/// How the runtime starts this service.
pub const SPEC: ServiceSpec = ServiceSpec { name: "analytics", grpc_name: SERVICE_NAME, migrations };

/// The service's migrations, oldest first.
fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    postmesh_kit::outbox::migrations()
}

/// The gRPC implementation.
#[derive(Debug, Clone, Default)]
pub struct AnalyticsApi;

impl AnalyticsService for AnalyticsApi {}

/// Builds the gRPC server for this service on `deps`.
pub fn router(_deps: &ServiceDeps) -> AnalyticsServiceServer<AnalyticsApi> {
    AnalyticsServiceServer::new(AnalyticsApi)
}

//! The content service (`postmesh.content.v1.ContentService`): posts written
//! once and published to many accounts.
//!
//! - posts: create (text or a template with variables, media references,
//!   target accounts, `publish_at`, draft, idempotency keys), read, list,
//!   update while Draft or Scheduled, cancel, delete; previews;
//! - per-platform variants: each post is formatted for every target's
//!   platform ([`format`]) and checked against its limits before it is
//!   stored;
//! - templates with `{variables}` ([`templates`]), rendered on request;
//! - scheduling: a scheduler in every replica queues `jobs.content.post_due`
//!   when a post comes due; the job's handler publishes each post once;
//! - status per target (Queued → Publishing → Posted / Faulted) and per post,
//!   read, streamed (`WatchPostStatus`) and summarised (`GetContentAnalytics`).
//!
//! Calls the social service (`ResolveTargets`) to look up target accounts
//! and their limits. Produces `jobs.social.publish` (one per target and
//! round), `jobs.content.post_due` and `events.content.*` (post_created,
//! post_updated, post_scheduled, post_status_changed, post_completed,
//! post_cancelled, post_deleted) through its outbox. Consumes
//! `jobs.content.post_due` and `events.social.post_published`,
//! `post_failed` and `publish_retry_scheduled` ([`jobs`]). Status changes
//! reach `WatchPostStatus` streams on every replica through the key-value
//! store's pub/sub.
#![forbid(unsafe_code)]

mod domain;
mod feed;
pub mod format;
mod grpc;
mod jobs;
mod service;
mod store;
pub mod templates;

use postmesh_kit::{ServiceDeps, ServiceSpec};
use postmesh_proto::postmesh::content::v1::content_service_server::{ContentServiceServer, SERVICE_NAME};
use sea_orm_migration::MigrationTrait;

pub use grpc::ContentApi;

/// How the runtime starts this service.
pub const SPEC: ServiceSpec = ServiceSpec { name: "content", grpc_name: SERVICE_NAME, migrations };

/// The service's migrations, oldest first.
fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    let mut all = postmesh_kit::outbox::migrations();
    all.extend(store::migrations());
    all
}

/// Builds the gRPC server for this service on `deps`, and starts its
/// scheduler and job consumers on the runtime's task tracker.
pub fn router(deps: &ServiceDeps) -> ContentServiceServer<ContentApi> {
    let content = service::Content::new(deps.clone());
    jobs::start(&content);
    ContentServiceServer::new(ContentApi::new(content))
}

//! The content service's operations, one file per capability. Each takes
//! the workspace it acts in (from the caller, or from an internal request)
//! and plain values, does its checks, and writes its state change with the
//! events and jobs it causes in one transaction (the outbox).
//!
//! - [`posts_ops`]: create, read, list, update, delete, cancel;
//! - [`publishing`]: queueing targets, the status a post derives from its
//!   targets, what the social service reports, the scheduler's due posts;
//! - [`variants`]: resolving target accounts with the social service and
//!   formatting a post for each platform;
//! - [`template_ops`]: templates and rendering;
//! - [`analytics`]: the workspace's publishing summary;
//! - [`watch`]: status reads and streams.

use std::sync::Arc;

use postmesh_kit::ServiceDeps;
use postmesh_kit::error::ApiError;
use postmesh_kit::outbox::OutboxMessage;
use postmesh_proto::postmesh::content::v1 as pb;
use postmesh_proto::postmesh::social::v1 as social;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use tokio::sync::Notify;

use crate::domain::{self, PostState, StoredFailure, StoredMedia, StoredOverride, TargetState, timestamp};
use crate::feed::StatusFeed;
use crate::store::{post_targets, posts};

pub mod analytics;
pub mod posts_ops;
pub mod publishing;
pub mod template_ops;
pub mod variants;
pub mod watch;

/// The service core, shared by the gRPC handlers, the scheduler and the job
/// consumers.
#[derive(Clone)]
pub struct Content {
    deps: ServiceDeps,
    feed: StatusFeed,
    /// Wakes the scheduler when a post is scheduled, so an early
    /// `publish_at` is not missed by a long sleep.
    schedule_changed: Arc<Notify>,
}

/// A post with its targets, in `target_account_ids` order.
#[derive(Debug, Clone)]
pub struct PostView {
    pub post: posts::Model,
    pub targets: Vec<post_targets::Model>,
}

impl Content {
    pub fn new(deps: ServiceDeps) -> Self {
        let feed = StatusFeed::new(deps.kv.clone());
        Self { deps, feed, schedule_changed: Arc::new(Notify::new()) }
    }

    pub fn deps(&self) -> &ServiceDeps {
        &self.deps
    }

    pub fn feed(&self) -> &StatusFeed {
        &self.feed
    }

    pub fn schedule_changed(&self) -> &Notify {
        &self.schedule_changed
    }

    pub(crate) fn db(&self) -> &DatabaseConnection {
        self.deps.db.conn()
    }

    pub(crate) async fn begin(&self) -> Result<DatabaseTransaction, ApiError> {
        Ok(self.deps.db.begin_write().await?)
    }

    pub(crate) async fn commit(&self, txn: DatabaseTransaction) -> Result<(), ApiError> {
        Ok(self.deps.outbox.commit(txn).await?)
    }

    /// Queues `events.content.<event>` with its `event_id` as the bus id.
    pub(crate) async fn emit(
        &self,
        txn: &DatabaseTransaction,
        event: &str,
        event_id: &str,
        payload: &impl prost::Message,
    ) -> Result<(), ApiError> {
        let message = OutboxMessage::event("content", event, payload).with_id(event_id);
        self.deps.outbox.enqueue(txn, message).await?;
        Ok(())
    }

    // ---- lookups -------------------------------------------------------

    /// A live post of the workspace; NOT_FOUND if unknown, deleted or in
    /// another workspace. `lock` takes the row lock on PostgreSQL, so that
    /// changes to one post (each recomputing its status from all targets)
    /// happen one after the other.
    pub(crate) async fn post(
        &self,
        conn: &impl ConnectionTrait,
        workspace_id: &str,
        id: &str,
        lock: bool,
    ) -> Result<posts::Model, ApiError> {
        self.find_post(conn, workspace_id, id, lock)
            .await?
            .filter(|p| p.deleted_at_ms.is_none())
            .ok_or_else(|| not_found_post(id))
    }

    /// A post of the workspace, deleted or not.
    pub(crate) async fn find_post(
        &self,
        conn: &impl ConnectionTrait,
        workspace_id: &str,
        id: &str,
        lock: bool,
    ) -> Result<Option<posts::Model>, ApiError> {
        let mut query =
            posts::Entity::find_by_id(id.to_owned()).filter(posts::Column::WorkspaceId.eq(workspace_id));
        if lock {
            query = query.lock_exclusive();
        }
        Ok(query.one(conn).await?)
    }

    pub(crate) async fn targets(
        &self,
        conn: &impl ConnectionTrait,
        post_id: &str,
    ) -> Result<Vec<post_targets::Model>, ApiError> {
        Ok(post_targets::Entity::find()
            .filter(post_targets::Column::PostId.eq(post_id))
            .order_by_asc(post_targets::Column::Position)
            .all(conn)
            .await?)
    }

    pub(crate) async fn view(
        &self,
        conn: &impl ConnectionTrait,
        workspace_id: &str,
        id: &str,
    ) -> Result<PostView, ApiError> {
        let post = self.post(conn, workspace_id, id, false).await?;
        let targets = self.targets(conn, &post.id).await?;
        Ok(PostView { post, targets })
    }

    /// Posts with their targets, keeping the order of `posts`.
    pub(crate) async fn views(
        &self,
        conn: &impl ConnectionTrait,
        posts: Vec<posts::Model>,
    ) -> Result<Vec<PostView>, ApiError> {
        let ids: Vec<String> = posts.iter().map(|p| p.id.clone()).collect();
        let mut targets = if ids.is_empty() {
            Vec::new()
        } else {
            post_targets::Entity::find()
                .filter(post_targets::Column::PostId.is_in(ids))
                .order_by_asc(post_targets::Column::Position)
                .all(conn)
                .await?
        };
        Ok(posts
            .into_iter()
            .map(|post| {
                let (mine, rest): (Vec<_>, Vec<_>) = targets.drain(..).partition(|t| t.post_id == post.id);
                targets = rest;
                PostView { post, targets: mine }
            })
            .collect())
    }
}

pub(crate) fn not_found_post(id: &str) -> ApiError {
    ApiError::NotFound(format!("post {id} not found"))
}

pub(crate) fn not_found_template(id: &str) -> ApiError {
    ApiError::NotFound(format!("template {id} not found"))
}

// ---- conversions to the contract -----------------------------------------

pub fn target_pb(target: &post_targets::Model) -> Result<pb::PostTarget, ApiError> {
    let failure = match &target.failure {
        Some(json) => Some(domain::from_json::<StoredFailure>(json, "failure")?.to_proto()),
        None => None,
    };
    Ok(pb::PostTarget {
        id: target.id.clone(),
        account_id: target.account_id.clone(),
        platform: target.platform,
        account_display_name: target.account_display_name.clone(),
        status: TargetState::parse(&target.status)?.to_proto() as i32,
        external_id: target.external_id.clone(),
        external_url: target.external_url.clone(),
        failure,
        attempts: target.attempts,
        round: target.round,
        next_attempt_at: target.next_attempt_at_ms.map(timestamp),
        queued_at: target.queued_at_ms.map(timestamp),
        finished_at: target.finished_at_ms.map(timestamp),
        updated_at: Some(timestamp(target.updated_at_ms)),
    })
}

pub fn post_pb(view: &PostView) -> Result<pb::Post, ApiError> {
    let post = &view.post;
    let media: Vec<StoredMedia> = domain::from_json(&post.media, "media")?;
    let overrides: Vec<StoredOverride> = domain::from_json(&post.overrides, "overrides")?;
    let variables: std::collections::BTreeMap<String, String> =
        domain::from_json(&post.template_variables, "template variables")?;
    Ok(pb::Post {
        id: post.id.clone(),
        workspace_id: post.workspace_id.clone(),
        text: post.text.clone(),
        media: media.iter().map(StoredMedia::to_proto).collect(),
        target_account_ids: view.targets.iter().map(|t| t.account_id.clone()).collect(),
        publish_at: post.publish_at_ms.map(timestamp),
        draft: post.draft,
        template_id: post.template_id.clone(),
        template_variables: variables.into_iter().collect(),
        platform_overrides: overrides
            .into_iter()
            .map(|o| pb::PlatformOverride { platform: o.platform, text: o.text })
            .collect(),
        language: post.language.clone(),
        status: PostState::parse(&post.status)?.to_proto() as i32,
        targets: view.targets.iter().map(target_pb).collect::<Result<_, _>>()?,
        created_by_user_id: post.created_by.clone(),
        origin: post.origin.clone(),
        created_at: Some(timestamp(post.created_at_ms)),
        updated_at: Some(timestamp(post.updated_at_ms)),
        completed_at: post.completed_at_ms.map(timestamp),
    })
}

pub fn status_pb(view: &PostView) -> Result<pb::PublishingStatus, ApiError> {
    let status = PostState::parse(&view.post.status)?;
    let mut counts = pb::TargetCounts { total: view.targets.len() as i32, ..Default::default() };
    for target in &view.targets {
        let slot = match TargetState::parse(&target.status)? {
            TargetState::Pending => &mut counts.pending,
            TargetState::Queued => &mut counts.queued,
            TargetState::Publishing => &mut counts.publishing,
            TargetState::Posted => &mut counts.posted,
            TargetState::Faulted => &mut counts.faulted,
            TargetState::Cancelled => &mut counts.cancelled,
        };
        *slot += 1;
    }
    Ok(pb::PublishingStatus {
        post_id: view.post.id.clone(),
        status: status.to_proto() as i32,
        targets: view.targets.iter().map(target_pb).collect::<Result<_, _>>()?,
        counts: Some(counts),
        publish_at: if status == PostState::Scheduled {
            view.post.publish_at_ms.map(timestamp)
        } else {
            None
        },
        updated_at: Some(timestamp(view.post.updated_at_ms)),
        settled: status.settled(),
    })
}

/// The variants stored with a post (of its last create or update).
pub fn stored_variants(post: &posts::Model) -> Vec<pb::PlatformVariant> {
    <pb::PreviewPostResponse as prost::Message>::decode(post.variants.as_slice())
        .map(|r| r.variants)
        .unwrap_or_default()
}

pub fn encode_variants(variants: &[pb::PlatformVariant]) -> Vec<u8> {
    prost::Message::encode_to_vec(&pb::PreviewPostResponse { variants: variants.to_vec(), valid: true })
}

/// A stored rendered post.
pub fn rendered(target: &post_targets::Model) -> Result<social::RenderedPost, ApiError> {
    <social::RenderedPost as prost::Message>::decode(target.rendered.as_slice())
        .map_err(|e| ApiError::internal(format!("stored rendered post of target {}: {e}", target.id)))
}

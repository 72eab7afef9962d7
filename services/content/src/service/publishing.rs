//! Publishing: queueing targets (one `jobs.social.publish` per target and
//! round, in the transaction that marks it Queued), the post's status as its
//! targets change, what the social service's worker asks and reports, and
//! scheduled posts coming due.
//!
//! Every change to a post's targets goes through [`Content::record_change`]
//! inside the transaction that makes it: the post's status is derived again
//! from all its targets (under the post's row lock on PostgreSQL, so two
//! targets finishing at once both count), and `post_status_changed` /
//! `post_completed` are queued with it. Watchers are told after the commit.

use postmesh_kit::error::{ApiError, Violations};
use postmesh_kit::outbox::OutboxMessage;
use postmesh_proto::postmesh::content::v1 as pb;
use postmesh_proto::postmesh::social::v1 as social;
use sea_orm::sea_query::{Expr, LockBehavior, LockType};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseTransaction, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::{Content, PostView, post_pb, rendered, status_pb, variants};
use crate::domain::{
    self, PostState, StoredFailure, StoredMedia, StoredOverride, TargetState, new_id, now_ms, timestamp,
};
use crate::format;
use crate::store::{post_targets, posts};

/// Scheduled posts claimed per scheduler pass.
const DUE_BATCH: u64 = 100;
/// A due post whose job was queued this long ago and that is still
/// Scheduled gets its job queued again (same bus id, so a job still known to
/// the bus is not delivered twice; the handler checks the revision anyway).
const DUE_REQUEUE_AFTER_MS: i64 = 5 * 60 * 1000;

/// What `BeginTargetPublish` answers.
#[derive(Debug, Clone)]
pub struct BeginOutcome {
    pub proceed: bool,
    pub status: Option<TargetState>,
    pub reason: String,
}

/// What the scheduler learned in one pass.
#[derive(Debug, Clone, Copy)]
pub struct DuePass {
    /// Jobs queued in this pass.
    pub queued: usize,
    /// The earliest `publish_at` (Unix ms) still to come, if any.
    pub next_due_ms: Option<i64>,
}

impl Content {
    /// Saves a target as it is now.
    pub(crate) async fn save_target(
        &self,
        txn: &DatabaseTransaction,
        target: &post_targets::Model,
    ) -> Result<(), ApiError> {
        target.clone().into_active_model().reset_all().update(txn).await?;
        Ok(())
    }

    /// Saves a post as it is now.
    pub(crate) async fn save_post(
        &self,
        txn: &DatabaseTransaction,
        post: &posts::Model,
    ) -> Result<(), ApiError> {
        post.clone().into_active_model().reset_all().update(txn).await?;
        Ok(())
    }

    /// Marks the targets at `indices` Queued in a new round, saves them and
    /// queues one publishing job each.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn queue_targets(
        &self,
        txn: &DatabaseTransaction,
        post: &posts::Model,
        targets: &mut [post_targets::Model],
        indices: &[usize],
        trigger: social::PublishTrigger,
        requested_by: &str,
        now: i64,
    ) -> Result<(), ApiError> {
        for &index in indices {
            let target = &mut targets[index];
            mark_queued(target, now);
            self.save_target(txn, target).await?;
            self.enqueue_publish_job(txn, post, target, trigger, requested_by, now).await?;
        }
        Ok(())
    }

    /// Queues the `jobs.social.publish` of a Queued target's round, with bus
    /// id `<idempotency_key>:<round>` so one round is never queued twice.
    pub(crate) async fn enqueue_publish_job(
        &self,
        txn: &DatabaseTransaction,
        post: &posts::Model,
        target: &post_targets::Model,
        trigger: social::PublishTrigger,
        requested_by: &str,
        now: i64,
    ) -> Result<(), ApiError> {
        let max_attempts = self.deps().config.social_publish_max_attempts.min(i32::MAX as u32) as i32;
        let idempotency_key = format!("pm-{}-{}", post.id, target.account_id);
        let job = social::PublishJob {
            workspace_id: post.workspace_id.clone(),
            post_id: post.id.clone(),
            target_id: target.id.clone(),
            account_id: target.account_id.clone(),
            platform: target.platform,
            content: Some(rendered(target)?),
            idempotency_key: idempotency_key.clone(),
            round: target.round,
            max_attempts,
            trigger: trigger as i32,
            requested_by_user_id: requested_by.to_owned(),
            enqueued_at: Some(timestamp(now)),
        };
        let message = OutboxMessage::job("social", "publish", &job)
            .with_id(format!("{idempotency_key}:{}", target.round));
        self.deps().outbox.enqueue(txn, message).await?;
        Ok(())
    }

    /// Derives the post's status from its targets after a change, saves the
    /// post, and queues `post_status_changed` (and `post_completed` when the
    /// post settles now). Returns the new status.
    pub(crate) async fn record_change(
        &self,
        txn: &DatabaseTransaction,
        post: &mut posts::Model,
        targets: &[post_targets::Model],
        previous: PostState,
        now: i64,
    ) -> Result<PostState, ApiError> {
        let states: Vec<TargetState> =
            targets.iter().map(|t| TargetState::parse(&t.status)).collect::<Result<_, _>>()?;
        let status = domain::aggregate(&states, PostState::parse(&post.status)?);
        let settles = status.settled() && !previous.settled();
        post.status = status.as_str().to_owned();
        post.updated_at_ms = now;
        if settles {
            post.completed_at_ms = Some(now);
        }
        self.save_post(txn, post).await?;

        let view = PostView { post: post.clone(), targets: targets.to_vec() };
        let event_id = new_id();
        let event = pb::PostStatusChangedEvent {
            event_id: event_id.clone(),
            workspace_id: post.workspace_id.clone(),
            occurred_at: Some(timestamp(now)),
            status: Some(status_pb(&view)?),
            previous_status: previous.to_proto() as i32,
        };
        self.emit(txn, "post_status_changed", &event_id, &event).await?;
        if settles {
            let event_id = new_id();
            let event = pb::PostCompletedEvent {
                event_id: event_id.clone(),
                workspace_id: post.workspace_id.clone(),
                occurred_at: Some(timestamp(now)),
                status: status.to_proto() as i32,
                post: Some(post_pb(&view)?),
            };
            self.emit(txn, "post_completed", &event_id, &event).await?;
        }
        Ok(status)
    }

    /// Commits and tells watchers of `post_id`.
    pub(crate) async fn commit_and_notify(
        &self,
        txn: DatabaseTransaction,
        post_id: &str,
    ) -> Result<(), ApiError> {
        self.commit(txn).await?;
        self.feed().notify(post_id).await;
        Ok(())
    }

    // ---- the social service's worker -----------------------------------

    /// Before a try of a publishing job: proceed only if the target is
    /// Queued or Publishing in the job's round.
    #[tracing::instrument(skip(self))]
    pub async fn begin_target_publish(
        &self,
        workspace_id: &str,
        post_id: &str,
        target_id: &str,
        round: i32,
        attempt: i32,
    ) -> Result<BeginOutcome, ApiError> {
        let stop =
            |status: Option<TargetState>, reason: String| BeginOutcome { proceed: false, status, reason };
        let txn = self.begin().await?;
        let Some(mut post) = self.find_post(&txn, workspace_id, post_id, true).await? else {
            return Ok(stop(None, format!("post {post_id} not found")));
        };
        let mut targets = self.targets(&txn, post_id).await?;
        let Some(index) = targets.iter().position(|t| t.id == target_id) else {
            return Ok(stop(None, format!("target {target_id} not found in post {post_id}")));
        };
        let state = TargetState::parse(&targets[index].status)?;
        if post.deleted_at_ms.is_some() && state == TargetState::Cancelled {
            return Ok(stop(Some(state), "the post was deleted".into()));
        }
        if targets[index].round != round {
            return Ok(stop(
                Some(state),
                format!("the job is of round {round}; the target is in round {}", targets[index].round),
            ));
        }
        if !state.in_flight() {
            return Ok(stop(Some(state), format!("the target is {}", state.as_str())));
        }
        let previous = PostState::parse(&post.status)?;
        let now = now_ms();
        let target = &mut targets[index];
        target.status = TargetState::Publishing.as_str().to_owned();
        target.attempts = attempt.max(1);
        target.next_attempt_at_ms = None;
        target.updated_at_ms = now;
        self.save_target(&txn, target).await?;
        self.record_change(&txn, &mut post, &targets, previous, now).await?;
        self.commit_and_notify(txn, post_id).await?;
        Ok(BeginOutcome { proceed: true, status: Some(TargetState::Publishing), reason: String::new() })
    }

    /// Applies `change` to one target of a post (if the post and target
    /// exist and `change` says the event still matters), then records it.
    async fn change_target(
        &self,
        workspace_id: &str,
        post_id: &str,
        target_id: &str,
        change: impl FnOnce(&mut post_targets::Model, TargetState, i64) -> bool,
    ) -> Result<(), ApiError> {
        let txn = self.begin().await?;
        let Some(mut post) = self.find_post(&txn, workspace_id, post_id, true).await? else {
            tracing::info!(post_id, "status report for an unknown post ignored");
            return Ok(());
        };
        let mut targets = self.targets(&txn, post_id).await?;
        let Some(index) = targets.iter().position(|t| t.id == target_id) else {
            tracing::info!(post_id, target_id, "status report for an unknown target ignored");
            return Ok(());
        };
        let state = TargetState::parse(&targets[index].status)?;
        let now = now_ms();
        if !change(&mut targets[index], state, now) {
            return Ok(());
        }
        targets[index].updated_at_ms = now;
        let previous = PostState::parse(&post.status)?;
        self.save_target(&txn, &targets[index]).await?;
        self.record_change(&txn, &mut post, &targets, previous, now).await?;
        self.commit_and_notify(txn, post_id).await
    }

    /// `events.social.post_published`: the target is Posted.
    pub async fn target_published(&self, event: &social::PostPublishedEvent) -> Result<(), ApiError> {
        let (round, attempt) = (event.round, event.attempt);
        let (external_id, external_url) = (event.external_id.clone(), event.external_url.clone());
        self.change_target(&event.workspace_id, &event.post_id, &event.target_id, |target, state, now| {
            if round < target.round || state == TargetState::Posted {
                return false;
            }
            target.status = TargetState::Posted.as_str().to_owned();
            target.round = round;
            target.external_id = external_id;
            target.external_url = external_url;
            target.failure = None;
            target.next_attempt_at_ms = None;
            target.attempts = target.attempts.max(attempt);
            target.finished_at_ms = Some(now);
            true
        })
        .await
    }

    /// `events.social.post_failed`: the target is Faulted.
    pub async fn target_failed(&self, event: &social::PostFailedEvent) -> Result<(), ApiError> {
        let round = event.round;
        let attempts = event.attempts;
        let failure = event.failure.as_ref().map(|f| domain::to_json(&StoredFailure::from_proto(f)));
        self.change_target(&event.workspace_id, &event.post_id, &event.target_id, |target, state, now| {
            let stale = round < target.round
                || matches!(state, TargetState::Posted | TargetState::Cancelled)
                || (state == TargetState::Faulted && round == target.round);
            if stale {
                return false;
            }
            target.status = TargetState::Faulted.as_str().to_owned();
            target.round = round;
            target.failure = failure;
            target.next_attempt_at_ms = None;
            target.attempts = target.attempts.max(attempts);
            target.finished_at_ms = Some(now);
            true
        })
        .await
    }

    /// `events.social.publish_retry_scheduled`: the target stays Publishing,
    /// with the failure and the next try's time.
    pub async fn target_retry_scheduled(
        &self,
        event: &social::PublishRetryScheduledEvent,
    ) -> Result<(), ApiError> {
        let round = event.round;
        let attempt = event.attempt;
        let failure = event.failure.as_ref().map(|f| domain::to_json(&StoredFailure::from_proto(f)));
        let next = event.next_attempt_at.as_ref().and_then(|t| domain::millis(t, "next_attempt_at").ok());
        self.change_target(&event.workspace_id, &event.post_id, &event.target_id, |target, state, _| {
            if round != target.round || !state.in_flight() || attempt < target.attempts {
                return false;
            }
            target.status = TargetState::Publishing.as_str().to_owned();
            target.failure = failure;
            target.next_attempt_at_ms = next;
            target.attempts = target.attempts.max(attempt);
            true
        })
        .await
    }

    // ---- publishing on request -------------------------------------------

    /// `EnqueuePublish`: the rules of `SocialService.PublishPost`.
    #[tracing::instrument(skip(self, account_ids))]
    pub async fn enqueue_publish(
        &self,
        workspace_id: &str,
        post_id: &str,
        account_ids: &[String],
        trigger: social::PublishTrigger,
        requested_by: &str,
    ) -> Result<(Vec<social::PublishTargetResult>, PostState), ApiError> {
        let mut violations = Violations::new();
        domain::check_account_ids(&mut violations, "account_ids", account_ids, true);
        violations.finish()?;
        let view = self.view(self.db(), workspace_id, post_id).await?;
        if trigger == social::PublishTrigger::Replay
            && PostState::parse(&view.post.status)? == PostState::Cancelled
        {
            return Err(ApiError::FailedPrecondition(format!("post {post_id} was cancelled")));
        }

        // Accounts that are not targets yet: checked like at create time.
        let (new_positions, new_ids): (Vec<usize>, Vec<String>) = account_ids
            .iter()
            .enumerate()
            .filter(|(_, id)| !view.targets.iter().any(|t| &t.account_id == *id))
            .map(|(i, id)| (i, id.clone()))
            .unzip();
        let mut planned = Vec::new();
        if !new_ids.is_empty() {
            let media: Vec<StoredMedia> = domain::from_json(&view.post.media, "media")?;
            let media: Vec<_> = media.iter().map(StoredMedia::to_proto).collect();
            let overrides: Vec<StoredOverride> = domain::from_json(&view.post.overrides, "overrides")?;
            let overrides: Vec<_> = overrides
                .into_iter()
                .map(|o| {
                    (
                        postmesh_proto::postmesh::r#type::v1::Platform::try_from(o.platform)
                            .unwrap_or_default(),
                        o.text,
                    )
                })
                .collect();
            let content = format::Content { text: &view.post.text, media: &media, overrides: &overrides };
            let resolved = self.resolve(workspace_id, &new_ids, &[]).await?;
            let plan = variants::plan(&content, &view.post.language, &new_ids, "account_ids", &resolved);
            let mut violations = Violations::new();
            for (field, message) in plan.violations {
                violations.add(renumber(&field, "account_ids", &new_positions), message);
            }
            violations.finish()?;
            planned = plan.targets;
        }

        let txn = self.begin().await?;
        let mut post = self.post(&txn, workspace_id, post_id, true).await?;
        let mut targets = self.targets(&txn, post_id).await?;
        let now = now_ms();
        let mut added = false;
        for planned in planned {
            if targets.iter().any(|t| t.account_id == planned.account_id) {
                continue;
            }
            let target = new_target(&post, &planned, targets.len() as i32, now)?;
            target.clone().into_active_model().reset_all().insert(&txn).await?;
            targets.push(target);
            added = true;
        }
        let chosen: Vec<usize> = if account_ids.is_empty() {
            (0..targets.len())
                .filter(|&i| {
                    TargetState::parse(&targets[i].status)
                        .is_ok_and(|s| !s.in_flight() && s != TargetState::Posted)
                })
                .collect()
        } else {
            account_ids.iter().filter_map(|id| targets.iter().position(|t| &t.account_id == id)).collect()
        };
        let mut results = Vec::new();
        let mut to_queue = Vec::new();
        for &index in &chosen {
            let target = &targets[index];
            let disposition = match TargetState::parse(&target.status)? {
                TargetState::Posted => social::PublishDisposition::AlreadyPosted,
                state if state.in_flight() => social::PublishDisposition::InProgress,
                _ => {
                    to_queue.push(index);
                    social::PublishDisposition::Queued
                }
            };
            results.push(social::PublishTargetResult {
                account_id: target.account_id.clone(),
                target_id: target.id.clone(),
                platform: target.platform,
                disposition: disposition as i32,
            });
        }
        let previous = PostState::parse(&post.status)?;
        if to_queue.is_empty() {
            if added {
                self.commit(txn).await?;
            }
            return Ok((results, previous));
        }
        if previous.editable() {
            // Published early: the draft flag and the schedule no longer
            // apply, and a due job already queued must do nothing.
            post.draft = false;
            post.schedule_revision += 1;
        }
        self.queue_targets(&txn, &post, &mut targets, &to_queue, trigger, requested_by, now).await?;
        let status = self.record_change(&txn, &mut post, &targets, previous, now).await?;
        self.commit_and_notify(txn, post_id).await?;
        Ok((results, status))
    }

    // ---- the scheduler ---------------------------------------------------

    fn due_condition(now: i64) -> Condition {
        Condition::all()
            .add(posts::Column::Status.eq(PostState::Scheduled.as_str()))
            .add(posts::Column::DeletedAtMs.is_null())
            .add(posts::Column::PublishAtMs.lte(now))
            .add(
                Condition::any()
                    .add(sea_orm::sea_query::ExprTrait::ne(
                        Expr::col(posts::Column::DueRevision),
                        Expr::col(posts::Column::ScheduleRevision),
                    ))
                    .add(posts::Column::DueEnqueuedAtMs.lt(now - DUE_REQUEUE_AFTER_MS)),
            )
    }

    /// One scheduler pass: queues a `PostDueJob` (bus id
    /// `<post_id>:<schedule_revision>`) for each scheduled post that came
    /// due, and says when the next one comes due.
    pub async fn enqueue_due_posts(&self) -> Result<DuePass, ApiError> {
        let now = now_ms();
        // A plain read first: most passes find nothing, and on SQLite a
        // write transaction would take the database's write lock.
        let any_due = posts::Entity::find().filter(Self::due_condition(now)).limit(1).one(self.db()).await?;
        let mut queued = 0;
        if any_due.is_some() {
            let txn = self.begin().await?;
            let due = posts::Entity::find()
                .filter(Self::due_condition(now))
                .order_by_asc(posts::Column::PublishAtMs)
                .limit(DUE_BATCH)
                .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                .all(&txn)
                .await?;
            for post in &due {
                let job = pb::PostDueJob {
                    workspace_id: post.workspace_id.clone(),
                    post_id: post.id.clone(),
                    publish_at: post.publish_at_ms.map(timestamp),
                    schedule_revision: post.schedule_revision,
                };
                let message = OutboxMessage::job("content", "post_due", &job)
                    .with_id(format!("{}:{}", post.id, post.schedule_revision));
                self.deps().outbox.enqueue(&txn, message).await?;
                posts::Entity::update_many()
                    .col_expr(posts::Column::DueRevision, Expr::value(post.schedule_revision))
                    .col_expr(posts::Column::DueEnqueuedAtMs, Expr::value(now))
                    .filter(posts::Column::Id.eq(post.id.as_str()))
                    .exec(&txn)
                    .await?;
            }
            queued = due.len();
            self.commit(txn).await?;
        }
        let next = posts::Entity::find()
            .filter(posts::Column::Status.eq(PostState::Scheduled.as_str()))
            .filter(posts::Column::DeletedAtMs.is_null())
            .filter(posts::Column::PublishAtMs.gt(now))
            .order_by_asc(posts::Column::PublishAtMs)
            .one(self.db())
            .await?;
        let next_due_ms =
            if queued as u64 == DUE_BATCH { Some(now) } else { next.and_then(|p| p.publish_at_ms) };
        Ok(DuePass { queued, next_due_ms })
    }

    /// `jobs.content.post_due`: Scheduled → Queued with its publishing jobs,
    /// only if the post is still Scheduled with the job's revision.
    #[tracing::instrument(skip(self, job), fields(post_id = %job.post_id, revision = job.schedule_revision))]
    pub async fn post_due(&self, job: &pb::PostDueJob) -> Result<(), ApiError> {
        let txn = self.begin().await?;
        let Some(mut post) = self.find_post(&txn, &job.workspace_id, &job.post_id, true).await? else {
            return Ok(());
        };
        let previous = PostState::parse(&post.status)?;
        if post.deleted_at_ms.is_some()
            || previous != PostState::Scheduled
            || post.schedule_revision != job.schedule_revision
        {
            tracing::debug!("post no longer due with this revision; nothing to do");
            return Ok(());
        }
        let mut targets = self.targets(&txn, &post.id).await?;
        let pending: Vec<usize> =
            (0..targets.len()).filter(|&i| targets[i].status == TargetState::Pending.as_str()).collect();
        let now = now_ms();
        self.queue_targets(&txn, &post, &mut targets, &pending, social::PublishTrigger::Scheduled, "", now)
            .await?;
        self.record_change(&txn, &mut post, &targets, previous, now).await?;
        self.commit_and_notify(txn, &job.post_id).await
    }

    /// Forgets idempotency keys older than 24 hours.
    pub async fn forget_idempotency_keys(&self) -> Result<u64, ApiError> {
        use crate::store::idempotency_keys;
        let result = idempotency_keys::Entity::delete_many()
            .filter(idempotency_keys::Column::CreatedAtMs.lt(now_ms() - domain::IDEMPOTENCY_TTL_MS))
            .exec(self.db())
            .await?;
        Ok(result.rows_affected)
    }
}

/// A target in a new round, Queued and with a fresh set of tries.
pub(crate) fn mark_queued(target: &mut post_targets::Model, now: i64) {
    target.round += 1;
    target.status = TargetState::Queued.as_str().to_owned();
    target.attempts = 0;
    target.queued_at_ms = Some(now);
    target.next_attempt_at_ms = None;
    target.finished_at_ms = None;
    target.failure = None;
    target.updated_at_ms = now;
}

/// A new Pending target for a planned account.
pub(crate) fn new_target(
    post: &posts::Model,
    planned: &variants::PlannedTarget,
    position: i32,
    now: i64,
) -> Result<post_targets::Model, ApiError> {
    let rendered = planned.rendered.as_ref().ok_or_else(|| {
        ApiError::internal(format!("account {} has no rendered content", planned.account_id))
    })?;
    Ok(post_targets::Model {
        id: new_id(),
        post_id: post.id.clone(),
        workspace_id: post.workspace_id.clone(),
        position,
        account_id: planned.account_id.clone(),
        platform: planned.platform as i32,
        account_display_name: planned.display_name.clone(),
        status: TargetState::Pending.as_str().to_owned(),
        external_id: String::new(),
        external_url: String::new(),
        failure: None,
        attempts: 0,
        round: 0,
        next_attempt_at_ms: None,
        queued_at_ms: None,
        finished_at_ms: None,
        updated_at_ms: now,
        rendered: prost::Message::encode_to_vec(rendered),
    })
}

/// Rewrites `<list>[k]` in `field` to `<list>[positions[k]]`: violations
/// found for a subset of a request's list name the request's index.
fn renumber(field: &str, list: &str, positions: &[usize]) -> String {
    let Some(rest) = field.strip_prefix(list).and_then(|r| r.strip_prefix('[')) else {
        return field.to_owned();
    };
    let Some((index, tail)) = rest.split_once(']') else { return field.to_owned() };
    match index.parse::<usize>().ok().and_then(|k| positions.get(k)) {
        Some(original) => format!("{list}[{original}]{tail}"),
        None => field.to_owned(),
    }
}

//! Posts: create (with idempotency keys), read, list, update, delete,
//! cancel, and previews.
//!
//! A post is checked in full before anything is stored: its own fields
//! first (each problem a field violation), then, through the social service,
//! its target accounts, and then its content formatted for each target's
//! platform against that platform's (or account's) limits.

use std::collections::BTreeMap;

use postmesh_kit::db::statement;
use postmesh_kit::error::{ApiError, Violations};
use postmesh_proto::postmesh::content::v1 as pb;
use postmesh_proto::postmesh::social::v1 as social;
use postmesh_proto::postmesh::r#type::v1::{MediaReference, Platform};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::publishing::{mark_queued, new_target};
use super::variants::{self, Plan};
use super::{Content, PostView, encode_variants, not_found_post, post_pb, stored_variants};
use crate::domain::{
    self, IDEMPOTENCY_TTL_MS, Page, PostState, StoredMedia, StoredOverride, TargetState, new_id, now_ms,
    timestamp,
};
use crate::format;
use crate::store::{idempotency_keys, post_targets, posts, templates};
use crate::templates::ParsedTemplate;

/// The fields `UpdatePost` may change.
const UPDATABLE: [&str; 9] = [
    "text",
    "media",
    "target_account_ids",
    "publish_at",
    "draft",
    "template_id",
    "template_variables",
    "platform_overrides",
    "language",
];

/// A post's content and schedule as a request gives them.
#[derive(Debug, Clone, Default)]
pub struct PostInput {
    pub text: String,
    pub media: Vec<MediaReference>,
    pub target_account_ids: Vec<String>,
    pub publish_at_ms: Option<i64>,
    pub draft: bool,
    pub template_id: String,
    pub template_variables: BTreeMap<String, String>,
    pub overrides: Vec<pb::PlatformOverride>,
    pub language: String,
}

/// How [`Content::prepare`] treats the input.
#[derive(Debug, Clone, Copy)]
struct Checks {
    /// Render the text from `template_id` (create, or an update naming the
    /// template fields); otherwise `text` is taken as it is.
    render_template: bool,
    /// Check `publish_at` against now (create, or an update naming it).
    publish_at: bool,
}

/// A post that passed every check, ready to store.
struct Prepared {
    input: PostInput,
    plan: Plan,
}

/// The result of a create.
pub struct Created {
    pub view: PostView,
    pub variants: Vec<pb::PlatformVariant>,
    pub replay: bool,
}

/// The filters of `ListPosts`.
#[derive(Debug, Default)]
pub struct PostFilter {
    pub statuses: Vec<PostState>,
    pub platforms: Vec<i32>,
    pub account_ids: Vec<String>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub time_field: pb::PostTimeField,
}

impl PostInput {
    /// From a create request (`publish_at` already converted).
    pub fn from_create(request: &pb::CreatePostRequest) -> Result<Self, ApiError> {
        Ok(Self {
            text: request.text.clone(),
            media: request.media.clone(),
            target_account_ids: request.target_account_ids.clone(),
            publish_at_ms: request
                .publish_at
                .as_ref()
                .map(|t| domain::millis(t, "publish_at"))
                .transpose()?,
            draft: request.draft,
            template_id: request.template_id.clone(),
            template_variables: request.template_variables.clone().into_iter().collect(),
            overrides: request.platform_overrides.clone(),
            language: request.language.clone(),
        })
    }

    /// As stored in `view`.
    fn from_stored(view: &PostView) -> Result<Self, ApiError> {
        let post = &view.post;
        let media: Vec<StoredMedia> = domain::from_json(&post.media, "media")?;
        let overrides: Vec<StoredOverride> = domain::from_json(&post.overrides, "overrides")?;
        Ok(Self {
            text: post.text.clone(),
            media: media.iter().map(StoredMedia::to_proto).collect(),
            target_account_ids: view.targets.iter().map(|t| t.account_id.clone()).collect(),
            publish_at_ms: post.publish_at_ms,
            draft: post.draft,
            template_id: post.template_id.clone(),
            template_variables: domain::from_json(&post.template_variables, "template variables")?,
            overrides: overrides
                .into_iter()
                .map(|o| pb::PlatformOverride { platform: o.platform, text: o.text })
                .collect(),
            language: post.language.clone(),
        })
    }

    fn override_pairs(&self) -> Vec<(Platform, String)> {
        self.overrides
            .iter()
            .map(|o| (Platform::try_from(o.platform).unwrap_or_default(), o.text.clone()))
            .collect()
    }

    fn media_json(&self) -> String {
        domain::to_json(&self.media.iter().map(StoredMedia::from_proto).collect::<Vec<_>>())
    }

    fn overrides_json(&self) -> String {
        domain::to_json(
            &self
                .overrides
                .iter()
                .map(|o| StoredOverride { platform: o.platform, text: o.text.clone() })
                .collect::<Vec<_>>(),
        )
    }

    /// Where the post goes next: Draft, Scheduled (publish_at ahead) or
    /// Queued (now).
    fn state(&self, now: i64) -> PostState {
        if self.draft {
            PostState::Draft
        } else if self.publish_at_ms.is_some_and(|at| at > now) {
            PostState::Scheduled
        } else {
            PostState::Queued
        }
    }
}

impl Content {
    /// Renders the workspace's template `template_id` with `values`; a
    /// missing variable or template is a violation.
    async fn render_template(
        &self,
        violations: &mut Violations,
        workspace_id: &str,
        template_id: &str,
        values: &BTreeMap<String, String>,
    ) -> Result<Option<String>, ApiError> {
        let template = templates::Entity::find_by_id(template_id.to_owned())
            .filter(templates::Column::WorkspaceId.eq(workspace_id))
            .filter(templates::Column::DeletedAtMs.is_null())
            .one(self.db())
            .await?;
        let Some(template) = template else {
            violations.add("template_id", format!("no template {template_id} in this workspace"));
            return Ok(None);
        };
        let parsed = ParsedTemplate::parse(&template.body)
            .map_err(|e| ApiError::internal(format!("stored template {template_id} does not parse: {e}")))?;
        let defaults: BTreeMap<String, String> =
            domain::from_json(&template.default_values, "default values")?;
        match parsed.render(values, &defaults) {
            Ok((text, _)) => Ok(Some(text)),
            Err(missing) => {
                for name in missing {
                    violations.add(
                        format!("template_variables.{name}"),
                        format!("the template uses {{{name}}}, which has no value and no default"),
                    );
                }
                Ok(None)
            }
        }
    }

    /// Checks a post in full: its fields, its template, its accounts and its
    /// content on each platform. Violations of the fields are reported
    /// before the accounts are looked up.
    async fn prepare(
        &self,
        workspace_id: &str,
        mut input: PostInput,
        checks: Checks,
        now: i64,
    ) -> Result<Prepared, ApiError> {
        let mut violations = Violations::new();
        let rendering = checks.render_template && !input.template_id.is_empty();
        if rendering && !input.text.is_empty() {
            violations.add(
                "text",
                "must be empty when template_id is set (the text is rendered from the template)",
            );
        }
        domain::check_text(&mut violations, "text", &input.text);
        input.media = domain::check_media(&mut violations, "media", &input.media);
        domain::check_account_ids(&mut violations, "target_account_ids", &input.target_account_ids, false);
        if let (true, Some(at)) = (checks.publish_at, input.publish_at_ms) {
            domain::check_publish_at(&mut violations, "publish_at", at, now);
        }
        domain::check_variables(&mut violations, "template_variables", &input.template_variables);
        domain::check_overrides(&mut violations, "platform_overrides", &input.overrides);
        domain::check_language(&mut violations, "language", &input.language);
        // The template is checked even when `text` is (wrongly) set too, so
        // one answer names every problem; its text is used only when not.
        if rendering
            && let Some(text) = self
                .render_template(&mut violations, workspace_id, &input.template_id, &input.template_variables)
                .await?
        {
            let chars = text.chars().count();
            if chars > domain::MAX_TEXT_CHARS {
                violations.add(
                    "template_id",
                    format!(
                        "the template renders to {chars} characters; a post has at most {}",
                        domain::MAX_TEXT_CHARS
                    ),
                );
            }
            if input.text.is_empty() {
                input.text = text;
            }
        }
        if input.text.trim().is_empty() && input.media.is_empty() && input.template_id.is_empty() {
            violations.add("text", "the post needs text, a template or at least one media item");
        }
        violations.finish()?;

        let resolved = self.resolve(workspace_id, &input.target_account_ids, &[]).await?;
        let overrides = input.override_pairs();
        let content = format::Content { text: &input.text, media: &input.media, overrides: &overrides };
        let plan = variants::plan(
            &content,
            &input.language,
            &input.target_account_ids,
            "target_account_ids",
            &resolved,
        );
        let mut violations = Violations::new();
        for (field, message) in &plan.violations {
            violations.add(field.clone(), message.clone());
        }
        violations.finish()?;
        Ok(Prepared { input, plan })
    }

    /// The post an idempotency key already created, if the key is fresh.
    async fn replay(
        &self,
        conn: &impl ConnectionTrait,
        workspace_id: &str,
        key: &str,
    ) -> Result<Option<Created>, ApiError> {
        let Some(row) =
            idempotency_keys::Entity::find_by_id((workspace_id.to_owned(), key.to_owned())).one(conn).await?
        else {
            return Ok(None);
        };
        if row.created_at_ms < now_ms() - IDEMPOTENCY_TTL_MS {
            return Ok(None);
        }
        let post = self.find_post(conn, workspace_id, &row.post_id, false).await?.ok_or_else(|| {
            ApiError::internal(format!("idempotency key names missing post {}", row.post_id))
        })?;
        if post.deleted_at_ms.is_some() {
            return Err(ApiError::NotFound(format!(
                "post {} created with this idempotency key was deleted",
                post.id
            )));
        }
        let targets = self.targets(conn, &post.id).await?;
        let variants = stored_variants(&post);
        Ok(Some(Created { view: PostView { post, targets }, variants, replay: true }))
    }

    /// Claims `key` for `post_id` in `txn`: true if this call owns it now.
    /// Concurrency-safe through the table's primary key: of two calls racing
    /// with one key, the second's insert waits for the first to commit and
    /// then does nothing.
    async fn claim_key(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        workspace_id: &str,
        key: &str,
        post_id: &str,
        now: i64,
    ) -> Result<bool, ApiError> {
        let backend = txn.get_database_backend();
        let inserted = txn
            .execute_raw(statement(
                backend,
                "INSERT INTO idempotency_keys (workspace_id, idem_key, post_id, created_at_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (workspace_id, idem_key) DO NOTHING",
                vec![workspace_id.into(), key.into(), post_id.into(), now.into()],
            ))
            .await?
            .rows_affected();
        if inserted == 1 {
            return Ok(true);
        }
        // Taken: by an expired use, which this call replaces, or a live one.
        let taken_over = idempotency_keys::Entity::update_many()
            .col_expr(idempotency_keys::Column::PostId, Expr::value(post_id))
            .col_expr(idempotency_keys::Column::CreatedAtMs, Expr::value(now))
            .filter(idempotency_keys::Column::WorkspaceId.eq(workspace_id))
            .filter(idempotency_keys::Column::IdemKey.eq(key))
            .filter(idempotency_keys::Column::CreatedAtMs.lt(now - IDEMPOTENCY_TTL_MS))
            .exec(txn)
            .await?;
        Ok(taken_over.rows_affected == 1)
    }

    /// Creates a post (`CreatePost`, `CreatePostForWorkspace`).
    #[tracing::instrument(skip(self, request), fields(targets = request.target_account_ids.len()))]
    pub async fn create_post(
        &self,
        workspace_id: &str,
        created_by: &str,
        origin: &str,
        request: &pb::CreatePostRequest,
    ) -> Result<Created, ApiError> {
        let key = request.idempotency_key.as_str();
        if !key.is_empty() {
            domain::check_idempotency_key(key)?;
            if let Some(existing) = self.replay(self.db(), workspace_id, key).await? {
                return Ok(existing);
            }
        }
        let now = now_ms();
        let input = PostInput::from_create(request)?;
        let prepared = self
            .prepare(workspace_id, input, Checks { render_template: true, publish_at: true }, now)
            .await?;
        let Prepared { input, plan } = prepared;
        let state = input.state(now);

        let txn = self.begin().await?;
        let post_id = new_id();
        if !key.is_empty() && !self.claim_key(&txn, workspace_id, key, &post_id, now).await? {
            txn.rollback().await?;
            return self
                .replay(self.db(), workspace_id, key)
                .await?
                .ok_or_else(|| ApiError::internal("idempotency key taken but its post is not visible"));
        }
        let post = posts::Model {
            id: post_id.clone(),
            workspace_id: workspace_id.to_owned(),
            text: input.text.clone(),
            media: input.media_json(),
            publish_at_ms: input.publish_at_ms,
            draft: input.draft,
            template_id: input.template_id.clone(),
            template_variables: domain::to_json(&input.template_variables),
            overrides: input.overrides_json(),
            language: input.language.clone(),
            status: state.as_str().to_owned(),
            schedule_revision: 0,
            due_revision: -1,
            due_enqueued_at_ms: 0,
            variants: encode_variants(&plan.variants),
            created_by: created_by.to_owned(),
            origin: origin.to_owned(),
            created_at_ms: now,
            updated_at_ms: now,
            completed_at_ms: None,
            deleted_at_ms: None,
        };
        post.clone().into_active_model().reset_all().insert(&txn).await?;
        let mut targets = Vec::with_capacity(plan.targets.len());
        for (position, planned) in plan.targets.iter().enumerate() {
            let mut target = new_target(&post, planned, position as i32, now)?;
            if state == PostState::Queued {
                mark_queued(&mut target, now);
            }
            target.clone().into_active_model().reset_all().insert(&txn).await?;
            if state == PostState::Queued {
                let trigger = social::PublishTrigger::Immediate;
                self.enqueue_publish_job(&txn, &post, &target, trigger, created_by, now).await?;
            }
            targets.push(target);
        }
        let view = PostView { post, targets };
        let event_id = new_id();
        let created = pb::PostCreatedEvent {
            event_id: event_id.clone(),
            workspace_id: workspace_id.to_owned(),
            occurred_at: Some(timestamp(now)),
            post: Some(post_pb(&view)?),
        };
        self.emit(&txn, "post_created", &event_id, &created).await?;
        if state == PostState::Scheduled {
            self.emit_scheduled(&txn, &view.post, None, now).await?;
        }
        self.commit(txn).await?;
        if state == PostState::Scheduled {
            self.schedule_changed().notify_one();
        }
        Ok(Created { view, variants: plan.variants, replay: false })
    }

    async fn emit_scheduled(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        post: &posts::Model,
        previous_publish_at_ms: Option<i64>,
        now: i64,
    ) -> Result<(), ApiError> {
        let event_id = new_id();
        let event = pb::PostScheduledEvent {
            event_id: event_id.clone(),
            workspace_id: post.workspace_id.clone(),
            occurred_at: Some(timestamp(now)),
            post_id: post.id.clone(),
            publish_at: post.publish_at_ms.map(timestamp),
            previous_publish_at: previous_publish_at_ms.map(timestamp),
        };
        self.emit(txn, "post_scheduled", &event_id, &event).await
    }

    /// A post of the workspace with its targets.
    pub async fn get_post(&self, workspace_id: &str, id: &str) -> Result<PostView, ApiError> {
        if id.is_empty() {
            return Err(ApiError::invalid("id", "is required"));
        }
        self.view(self.db(), workspace_id, id).await
    }

    /// A page of the workspace's posts, newest first.
    pub async fn list_posts(
        &self,
        workspace_id: &str,
        filter: &PostFilter,
        page: &Page<(i64, String)>,
    ) -> Result<(Vec<PostView>, String), ApiError> {
        let mut query = posts::Entity::find()
            .filter(posts::Column::WorkspaceId.eq(workspace_id))
            .filter(posts::Column::DeletedAtMs.is_null());
        if !filter.statuses.is_empty() {
            query = query.filter(posts::Column::Status.is_in(filter.statuses.iter().map(|s| s.as_str())));
        }
        if !filter.platforms.is_empty() || !filter.account_ids.is_empty() {
            let mut targets = Query::select();
            targets.column(post_targets::Column::PostId).from(post_targets::Entity);
            targets.and_where(post_targets::Column::WorkspaceId.eq(workspace_id));
            if !filter.platforms.is_empty() {
                targets.and_where(post_targets::Column::Platform.is_in(filter.platforms.clone()));
            }
            if !filter.account_ids.is_empty() {
                targets.and_where(post_targets::Column::AccountId.is_in(filter.account_ids.clone()));
            }
            query = query.filter(posts::Column::Id.in_subquery(targets.to_owned()));
        }
        let time_column = match filter.time_field {
            pb::PostTimeField::Unspecified | pb::PostTimeField::Created => posts::Column::CreatedAtMs,
            pb::PostTimeField::PublishAt => posts::Column::PublishAtMs,
            pb::PostTimeField::Completed => posts::Column::CompletedAtMs,
        };
        if filter.start_ms.is_some() || filter.end_ms.is_some() {
            query = query.filter(time_column.is_not_null());
        }
        if let Some(start) = filter.start_ms {
            query = query.filter(time_column.gte(start));
        }
        if let Some(end) = filter.end_ms {
            query = query.filter(time_column.lt(end));
        }
        if let Some((created, id)) = &page.after {
            query = query.filter(
                Condition::any().add(posts::Column::CreatedAtMs.lt(*created)).add(
                    Condition::all()
                        .add(posts::Column::CreatedAtMs.eq(*created))
                        .add(posts::Column::Id.lt(id.as_str())),
                ),
            );
        }
        let found = query
            .order_by_desc(posts::Column::CreatedAtMs)
            .order_by_desc(posts::Column::Id)
            .limit(page.size)
            .all(self.db())
            .await?;
        let next = match found.last() {
            Some(last) if found.len() as u64 == page.size => {
                domain::encode_cursor(&last.created_at_ms.to_string(), &last.id)
            }
            _ => String::new(),
        };
        Ok((self.views(self.db(), found).await?, next))
    }

    /// Changes a Draft or Scheduled post (`UpdatePost`).
    #[tracing::instrument(skip(self, changes, mask))]
    pub async fn update_post(
        &self,
        workspace_id: &str,
        user_id: &str,
        id: &str,
        changes: &pb::Post,
        mask: &[String],
    ) -> Result<(PostView, Vec<pb::PlatformVariant>), ApiError> {
        let mut violations = Violations::new();
        if mask.is_empty() {
            violations
                .add("update_mask", format!("name the fields to change: any of {}", UPDATABLE.join(", ")));
        }
        for path in mask {
            if !UPDATABLE.contains(&path.as_str()) {
                violations.add(
                    "update_mask",
                    format!("{path:?} cannot be changed; use any of {}", UPDATABLE.join(", ")),
                );
            }
        }
        let named = |field: &str| mask.iter().any(|p| p == field);
        let rerender = named("template_id") || named("template_variables");
        if rerender && named("text") {
            violations.add(
                "update_mask",
                "text cannot be changed together with template_id or template_variables (the text is rendered from the template)",
            );
        }
        violations.finish()?;

        let view = self.view(self.db(), workspace_id, id).await?;
        let previous = PostState::parse(&view.post.status)?;
        if !previous.editable() {
            return Err(not_editable(id, previous));
        }
        let mut input = PostInput::from_stored(&view)?;
        if named("text") {
            input.text = changes.text.clone();
        }
        if named("media") {
            input.media = changes.media.clone();
        }
        if named("target_account_ids") {
            input.target_account_ids = changes.target_account_ids.clone();
        }
        if named("publish_at") {
            input.publish_at_ms =
                changes.publish_at.as_ref().map(|t| domain::millis(t, "post.publish_at")).transpose()?;
        }
        if named("draft") {
            input.draft = changes.draft;
        }
        if named("template_id") {
            input.template_id = changes.template_id.clone();
        }
        if named("template_variables") {
            input.template_variables = changes.template_variables.clone().into_iter().collect();
        }
        if named("platform_overrides") {
            input.overrides = changes.platform_overrides.clone();
        }
        if named("language") {
            input.language = changes.language.clone();
        }
        if rerender && !input.template_id.is_empty() {
            input.text.clear();
        }
        let now = now_ms();
        let checks = Checks { render_template: rerender, publish_at: named("publish_at") };
        let Prepared { input, plan } = self.prepare(workspace_id, input, checks, now).await?;

        let txn = self.begin().await?;
        let mut post = self.post(&txn, workspace_id, id, true).await?;
        let previous = PostState::parse(&post.status)?;
        if !previous.editable() {
            return Err(not_editable(id, previous));
        }
        let old_targets = self.targets(&txn, id).await?;
        // Targets follow the new account list: kept ones keep their id.
        let mut targets = Vec::with_capacity(plan.targets.len());
        for (position, planned) in plan.targets.iter().enumerate() {
            let rendered = planned.rendered.as_ref().map(prost::Message::encode_to_vec).unwrap_or_default();
            match old_targets.iter().find(|t| t.account_id == planned.account_id) {
                Some(old) => {
                    let mut target = old.clone();
                    target.position = position as i32;
                    target.platform = planned.platform as i32;
                    target.account_display_name = planned.display_name.clone();
                    target.rendered = rendered;
                    target.updated_at_ms = now;
                    self.save_target(&txn, &target).await?;
                    targets.push(target);
                }
                None => {
                    let target = new_target(&post, planned, position as i32, now)?;
                    target.clone().into_active_model().reset_all().insert(&txn).await?;
                    targets.push(target);
                }
            }
        }
        let gone: Vec<String> = old_targets
            .iter()
            .filter(|t| !targets.iter().any(|k| k.id == t.id))
            .map(|t| t.id.clone())
            .collect();
        if !gone.is_empty() {
            post_targets::Entity::delete_many()
                .filter(post_targets::Column::Id.is_in(gone))
                .exec(&txn)
                .await?;
        }

        let previous_publish_at = post.publish_at_ms;
        let schedule_changed = previous_publish_at != input.publish_at_ms || post.draft != input.draft;
        let state = input.state(now);
        if schedule_changed || state != previous {
            post.schedule_revision += 1;
        }
        post.text = input.text.clone();
        post.media = input.media_json();
        post.publish_at_ms = input.publish_at_ms;
        post.draft = input.draft;
        post.template_id = input.template_id.clone();
        post.template_variables = domain::to_json(&input.template_variables);
        post.overrides = input.overrides_json();
        post.language = input.language.clone();
        post.variants = encode_variants(&plan.variants);
        post.updated_at_ms = now;
        match state {
            PostState::Queued => {
                let pending: Vec<usize> = (0..targets.len())
                    .filter(|&i| targets[i].status == TargetState::Pending.as_str())
                    .collect();
                let trigger = social::PublishTrigger::Immediate;
                self.queue_targets(&txn, &post, &mut targets, &pending, trigger, user_id, now).await?;
                self.record_change(&txn, &mut post, &targets, previous, now).await?;
            }
            state if state != previous => {
                post.status = state.as_str().to_owned();
                self.record_change(&txn, &mut post, &targets, previous, now).await?;
            }
            _ => self.save_post(&txn, &post).await?,
        }
        let view = PostView { post, targets };
        let event_id = new_id();
        let updated = pb::PostUpdatedEvent {
            event_id: event_id.clone(),
            workspace_id: workspace_id.to_owned(),
            occurred_at: Some(timestamp(now)),
            post: Some(post_pb(&view)?),
            changed_fields: mask.to_vec(),
            user_id: user_id.to_owned(),
        };
        self.emit(&txn, "post_updated", &event_id, &updated).await?;
        let scheduled = state == PostState::Scheduled;
        if scheduled && (previous != PostState::Scheduled || previous_publish_at != view.post.publish_at_ms) {
            let before = if previous == PostState::Scheduled { previous_publish_at } else { None };
            self.emit_scheduled(&txn, &view.post, before, now).await?;
        }
        self.commit_and_notify(txn, id).await?;
        if scheduled {
            self.schedule_changed().notify_one();
        }
        Ok((view, plan.variants))
    }

    /// Cancels the targets of a post that have not started; with `delete`
    /// the post is deleted as well. Returns the post and how many targets
    /// were cancelled.
    async fn cancel_or_delete(
        &self,
        workspace_id: &str,
        user_id: &str,
        id: &str,
        delete: bool,
    ) -> Result<(PostView, i32), ApiError> {
        if id.is_empty() {
            return Err(ApiError::invalid("id", "is required"));
        }
        let txn = self.begin().await?;
        let mut post =
            self.find_post(&txn, workspace_id, id, true).await?.ok_or_else(|| not_found_post(id))?;
        let mut targets = self.targets(&txn, id).await?;
        if post.deleted_at_ms.is_some() {
            if delete {
                return Ok((PostView { post, targets }, 0));
            }
            return Err(not_found_post(id));
        }
        let now = now_ms();
        let mut cancelled = 0;
        for target in &mut targets {
            if TargetState::parse(&target.status)?.cancellable() {
                target.status = TargetState::Cancelled.as_str().to_owned();
                target.finished_at_ms = Some(now);
                target.next_attempt_at_ms = None;
                target.updated_at_ms = now;
                self.save_target(&txn, target).await?;
                cancelled += 1;
            }
        }
        if cancelled == 0 && !delete {
            return Ok((PostView { post, targets }, 0));
        }
        let previous = PostState::parse(&post.status)?;
        if cancelled > 0 {
            post.schedule_revision += 1;
        }
        if delete {
            post.deleted_at_ms = Some(now);
        }
        if cancelled > 0 {
            self.record_change(&txn, &mut post, &targets, previous, now).await?;
        } else {
            post.updated_at_ms = now;
            self.save_post(&txn, &post).await?;
        }
        let event_id = new_id();
        if delete {
            let event = pb::PostDeletedEvent {
                event_id: event_id.clone(),
                workspace_id: workspace_id.to_owned(),
                occurred_at: Some(timestamp(now)),
                post_id: id.to_owned(),
                cancelled_targets: cancelled,
                user_id: user_id.to_owned(),
            };
            self.emit(&txn, "post_deleted", &event_id, &event).await?;
        } else {
            let event = pb::PostCancelledEvent {
                event_id: event_id.clone(),
                workspace_id: workspace_id.to_owned(),
                occurred_at: Some(timestamp(now)),
                post_id: id.to_owned(),
                cancelled_targets: cancelled,
                user_id: user_id.to_owned(),
            };
            self.emit(&txn, "post_cancelled", &event_id, &event).await?;
        }
        self.commit_and_notify(txn, id).await?;
        Ok((PostView { post, targets }, cancelled))
    }

    /// `DeletePost`.
    pub async fn delete_post(&self, workspace_id: &str, user_id: &str, id: &str) -> Result<i32, ApiError> {
        Ok(self.cancel_or_delete(workspace_id, user_id, id, true).await?.1)
    }

    /// `CancelPost`.
    pub async fn cancel_post(
        &self,
        workspace_id: &str,
        user_id: &str,
        id: &str,
    ) -> Result<(PostView, i32), ApiError> {
        self.cancel_or_delete(workspace_id, user_id, id, false).await
    }

    /// `PreviewPost`: variants per account and per platform, nothing stored.
    pub async fn preview_post(
        &self,
        workspace_id: &str,
        request: &pb::PreviewPostRequest,
    ) -> Result<(Vec<pb::PlatformVariant>, bool), ApiError> {
        let mut violations = Violations::new();
        let rendering = !request.template_id.is_empty();
        if rendering && !request.text.is_empty() {
            violations.add(
                "text",
                "must be empty when template_id is set (the text is rendered from the template)",
            );
        }
        domain::check_text(&mut violations, "text", &request.text);
        let media = domain::check_media(&mut violations, "media", &request.media);
        domain::check_account_ids(&mut violations, "account_ids", &request.account_ids, true);
        let mut platforms = Vec::new();
        for (i, value) in request.platforms.iter().enumerate() {
            match Platform::try_from(*value) {
                Ok(Platform::Unspecified) | Err(_) => {
                    violations.add(format!("platforms[{i}]"), "is not a platform")
                }
                Ok(platform) => platforms.push(platform),
            }
        }
        if request.account_ids.is_empty() && request.platforms.is_empty() {
            violations.add("platforms", "name at least one account or platform to preview for");
        }
        let overrides =
            domain::check_overrides(&mut violations, "platform_overrides", &request.platform_overrides);
        let variables: BTreeMap<String, String> = request.template_variables.clone().into_iter().collect();
        domain::check_variables(&mut violations, "template_variables", &variables);
        let mut text = request.text.clone();
        if rendering
            && let Some(rendered) =
                self.render_template(&mut violations, workspace_id, &request.template_id, &variables).await?
        {
            text = rendered;
        }
        violations.finish()?;

        let resolved = self.resolve(workspace_id, &request.account_ids, &platforms).await?;
        let content = format::Content { text: &text, media: &media, overrides: &overrides };
        let accounts = variants::plan(&content, "", &request.account_ids, "account_ids", &resolved);
        let platform_plan = variants::plan_platforms(&content, &platforms, &resolved);
        let valid = accounts.valid() && platform_plan.valid();
        let mut all = accounts.variants;
        all.extend(platform_plan.variants);
        Ok((all, valid))
    }
}

fn not_editable(id: &str, status: PostState) -> ApiError {
    ApiError::FailedPrecondition(format!(
        "post {id} is {}; only drafts and scheduled posts can be changed",
        status.as_str().replace('_', " ")
    ))
}

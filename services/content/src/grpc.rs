//! The tonic implementation: take the caller and the request apart, call
//! [`Content`], and turn the result into the contract's messages. Public
//! RPCs act in the caller's workspace; internal ones (service callers only,
//! enforced by the auth layer) name the workspace in the request.

use std::collections::BTreeMap;

use postmesh_kit::auth::Caller;
use postmesh_kit::error::{ApiError, Violations};
use postmesh_proto::postmesh::content::v1 as pb;
use postmesh_proto::postmesh::content::v1::content_service_server::ContentService;
use postmesh_proto::postmesh::social::v1 as social;
use postmesh_proto::postmesh::r#type::v1::Platform;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::domain::{self, Page, PostState, millis, now_ms};
use crate::service::analytics::{MAX_WINDOW_MS, Window};
use crate::service::posts_ops::{Created, PostFilter};
use crate::service::template_ops::template_pb;
use crate::service::{Content, PostView, post_pb};

/// The gRPC face of the content service.
pub struct ContentApi {
    content: Content,
}

impl ContentApi {
    pub(crate) fn new(content: Content) -> Self {
        Self { content }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn ok<T>(value: T) -> Reply<T> {
    Ok(Response::new(value))
}

/// The caller's workspace and user (empty for services).
fn acting<T>(request: &Request<T>) -> Result<(String, String), Status> {
    let caller = Caller::of(request)?;
    Ok((caller.workspace_id()?.to_owned(), caller.user_id.clone().unwrap_or_default()))
}

fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, ApiError> {
    if value.is_empty() { Err(ApiError::invalid(field, "is required")) } else { Ok(value) }
}

fn mask(update_mask: Option<prost_types::FieldMask>) -> Vec<String> {
    update_mask.map(|m| m.paths).unwrap_or_default()
}

fn created_pb(created: &Created) -> Result<(pb::Post, Vec<pb::PlatformVariant>, bool), ApiError> {
    Ok((post_pb(&created.view)?, created.variants.clone(), created.replay))
}

fn posts_pb(views: &[PostView]) -> Result<Vec<pb::Post>, ApiError> {
    views.iter().map(post_pb).collect()
}

fn platforms(values: &[i32], field: &str, violations: &mut Violations) -> Vec<i32> {
    for (i, value) in values.iter().enumerate() {
        if !matches!(Platform::try_from(*value), Ok(p) if p != Platform::Unspecified) {
            violations.add(format!("{field}[{i}]"), format!("{value} is not a platform"));
        }
    }
    values.to_vec()
}

#[tonic::async_trait]
impl ContentService for ContentApi {
    async fn create_post(&self, request: Request<pb::CreatePostRequest>) -> Reply<pb::CreatePostResponse> {
        let (workspace_id, user_id) = acting(&request)?;
        // Over HTTP the gateway forwards `Idempotency-Key` as metadata.
        let header_key =
            request.metadata().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut r = request.into_inner();
        if r.idempotency_key.is_empty() {
            r.idempotency_key = header_key.unwrap_or_default();
        }
        let created = self.content.create_post(&workspace_id, &user_id, "api", &r).await?;
        let (post, variants, idempotent_replay) = created_pb(&created)?;
        ok(pb::CreatePostResponse { post: Some(post), variants, idempotent_replay })
    }

    async fn get_post(&self, request: Request<pb::GetPostRequest>) -> Reply<pb::GetPostResponse> {
        let (workspace_id, _) = acting(&request)?;
        let view = self.content.get_post(&workspace_id, &request.get_ref().id).await?;
        ok(pb::GetPostResponse { post: Some(post_pb(&view)?) })
    }

    async fn list_posts(&self, request: Request<pb::ListPostsRequest>) -> Reply<pb::ListPostsResponse> {
        let (workspace_id, _) = acting(&request)?;
        let r = request.into_inner();
        let mut violations = Violations::new();
        let mut filter = PostFilter::default();
        for (i, value) in r.statuses.iter().enumerate() {
            match PostState::from_proto(*value) {
                Ok(Some(status)) => filter.statuses.push(status),
                Ok(None) => {}
                Err(problem) => violations.add(format!("statuses[{i}]"), problem),
            }
        }
        filter.platforms = platforms(&r.platforms, "platforms", &mut violations);
        for (i, id) in r.account_ids.iter().enumerate() {
            if id.is_empty() {
                violations.add(format!("account_ids[{i}]"), "is empty");
            }
        }
        filter.account_ids = r.account_ids.clone();
        filter.start_ms = violations
            .check("start_at", r.start_at.as_ref().map(|t| millis(t, "start_at")).transpose())
            .flatten();
        filter.end_ms =
            violations.check("end_at", r.end_at.as_ref().map(|t| millis(t, "end_at")).transpose()).flatten();
        match pb::PostTimeField::try_from(r.time_field) {
            Ok(field) => filter.time_field = field,
            Err(_) => violations.add("time_field", format!("{} is not a time field", r.time_field)),
        }
        let size = violations.check("page_size", domain::page_size(r.page_size));
        let after = violations.check("page_token", domain::decode_cursor(&r.page_token));
        violations.finish()?;
        let after = match after.flatten() {
            Some((created, id)) => Some((
                created
                    .parse::<i64>()
                    .map_err(|_| ApiError::invalid("page_token", "is not a token from a previous page"))?,
                id,
            )),
            None => None,
        };
        let page = Page { size: size.unwrap_or(50), after };
        let (views, next_page_token) = self.content.list_posts(&workspace_id, &filter, &page).await?;
        ok(pb::ListPostsResponse { posts: posts_pb(&views)?, next_page_token })
    }

    async fn update_post(&self, request: Request<pb::UpdatePostRequest>) -> Reply<pb::UpdatePostResponse> {
        let (workspace_id, user_id) = acting(&request)?;
        let r = request.into_inner();
        let id = required(&r.id, "id")?;
        let changes = r.post.clone().ok_or_else(|| ApiError::invalid("post", "is required"))?;
        let (view, variants) =
            self.content.update_post(&workspace_id, &user_id, id, &changes, &mask(r.update_mask)).await?;
        ok(pb::UpdatePostResponse { post: Some(post_pb(&view)?), variants })
    }

    async fn delete_post(&self, request: Request<pb::DeletePostRequest>) -> Reply<pb::DeletePostResponse> {
        let (workspace_id, user_id) = acting(&request)?;
        let cancelled_targets =
            self.content.delete_post(&workspace_id, &user_id, &request.get_ref().id).await?;
        ok(pb::DeletePostResponse { cancelled_targets })
    }

    async fn cancel_post(&self, request: Request<pb::CancelPostRequest>) -> Reply<pb::CancelPostResponse> {
        let (workspace_id, user_id) = acting(&request)?;
        let (view, cancelled_targets) =
            self.content.cancel_post(&workspace_id, &user_id, &request.get_ref().id).await?;
        ok(pb::CancelPostResponse { post: Some(post_pb(&view)?), cancelled_targets })
    }

    async fn get_post_status(
        &self,
        request: Request<pb::GetPostStatusRequest>,
    ) -> Reply<pb::GetPostStatusResponse> {
        let (workspace_id, _) = acting(&request)?;
        let status = self.content.post_status(&workspace_id, &request.get_ref().id).await?;
        ok(pb::GetPostStatusResponse { status: Some(status) })
    }

    async fn watch_post_status(
        &self,
        request: Request<pb::WatchPostStatusRequest>,
    ) -> Reply<BoxStream<pb::WatchPostStatusResponse>> {
        let (workspace_id, _) = acting(&request)?;
        let stream = self.content.watch_status(&workspace_id, &request.get_ref().id).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn preview_post(&self, request: Request<pb::PreviewPostRequest>) -> Reply<pb::PreviewPostResponse> {
        let (workspace_id, _) = acting(&request)?;
        let (variants, valid) = self.content.preview_post(&workspace_id, request.get_ref()).await?;
        ok(pb::PreviewPostResponse { variants, valid })
    }

    async fn create_template(
        &self,
        request: Request<pb::CreateTemplateRequest>,
    ) -> Reply<pb::CreateTemplateResponse> {
        let (workspace_id, user_id) = acting(&request)?;
        let template = request
            .get_ref()
            .template
            .as_ref()
            .ok_or_else(|| ApiError::invalid("template", "is required"))?;
        let created = self.content.create_template(&workspace_id, &user_id, template).await?;
        ok(pb::CreateTemplateResponse { template: Some(template_pb(&created)?) })
    }

    async fn list_templates(
        &self,
        request: Request<pb::ListTemplatesRequest>,
    ) -> Reply<pb::ListTemplatesResponse> {
        let (workspace_id, _) = acting(&request)?;
        let r = request.get_ref();
        let mut violations = Violations::new();
        let size = violations.check("page_size", domain::page_size(r.page_size));
        let after = violations.check("page_token", domain::decode_cursor(&r.page_token));
        violations.finish()?;
        let page = Page { size: size.unwrap_or(50), after: after.flatten() };
        let (found, next_page_token) =
            self.content.list_templates(&workspace_id, &r.name_contains, &page).await?;
        ok(pb::ListTemplatesResponse {
            templates: found.iter().map(template_pb).collect::<Result<_, _>>()?,
            next_page_token,
        })
    }

    async fn get_template(&self, request: Request<pb::GetTemplateRequest>) -> Reply<pb::GetTemplateResponse> {
        let (workspace_id, _) = acting(&request)?;
        let template = self.content.template(self.content_db(), &workspace_id, &request.get_ref().id).await?;
        ok(pb::GetTemplateResponse { template: Some(template_pb(&template)?) })
    }

    async fn update_template(
        &self,
        request: Request<pb::UpdateTemplateRequest>,
    ) -> Reply<pb::UpdateTemplateResponse> {
        let (workspace_id, _) = acting(&request)?;
        let r = request.into_inner();
        let id = required(&r.id, "id")?;
        let changes = r.template.clone().ok_or_else(|| ApiError::invalid("template", "is required"))?;
        let updated = self.content.update_template(&workspace_id, id, &changes, &mask(r.update_mask)).await?;
        ok(pb::UpdateTemplateResponse { template: Some(template_pb(&updated)?) })
    }

    async fn delete_template(
        &self,
        request: Request<pb::DeleteTemplateRequest>,
    ) -> Reply<pb::DeleteTemplateResponse> {
        let (workspace_id, _) = acting(&request)?;
        self.content.delete_template(&workspace_id, &request.get_ref().id).await?;
        ok(pb::DeleteTemplateResponse {})
    }

    async fn render_template(
        &self,
        request: Request<pb::RenderTemplateRequest>,
    ) -> Reply<pb::RenderTemplateResponse> {
        let (workspace_id, _) = acting(&request)?;
        let r = request.get_ref();
        let values: BTreeMap<String, String> = r.variables.clone().into_iter().collect();
        let (text, defaulted_variables) = self.content.render(&workspace_id, &r.id, &values).await?;
        ok(pb::RenderTemplateResponse { text, defaulted_variables })
    }

    async fn get_content_analytics(
        &self,
        request: Request<pb::GetContentAnalyticsRequest>,
    ) -> Reply<pb::GetContentAnalyticsResponse> {
        let (workspace_id, _) = acting(&request)?;
        let r = request.get_ref();
        let mut violations = Violations::new();
        let end =
            violations.check("end_at", r.end_at.as_ref().map(|t| millis(t, "end_at")).transpose()).flatten();
        let start = violations
            .check("start_at", r.start_at.as_ref().map(|t| millis(t, "start_at")).transpose())
            .flatten();
        let platforms = platforms(&r.platforms, "platforms", &mut violations);
        violations.finish()?;
        let end_ms = end.unwrap_or_else(now_ms);
        let start_ms = start.unwrap_or(end_ms - 30 * 24 * 3600 * 1000);
        if start_ms >= end_ms {
            return Err(ApiError::invalid("start_at", "must be before end_at").into());
        }
        if end_ms - start_ms > MAX_WINDOW_MS {
            return Err(ApiError::invalid("start_at", "the window may span at most 366 days").into());
        }
        let window = Window { start_ms, end_ms, platforms, account_ids: r.account_ids.clone() };
        ok(self.content.content_analytics(&workspace_id, &window).await?)
    }

    async fn create_post_for_workspace(
        &self,
        request: Request<pb::CreatePostForWorkspaceRequest>,
    ) -> Reply<pb::CreatePostForWorkspaceResponse> {
        let r = request.into_inner();
        let mut violations = Violations::new();
        if r.workspace_id.is_empty() {
            violations.add("workspace_id", "is required");
        }
        if r.origin.trim().is_empty() {
            violations.add("origin", "is required");
        } else if r.origin.chars().count() > 200 {
            violations.add("origin", "must be at most 200 characters");
        }
        if r.request.is_none() {
            violations.add("request", "is required");
        }
        violations.finish()?;
        let inner = r.request.unwrap_or_default();
        let created = self.content.create_post(&r.workspace_id, "", &r.origin, &inner).await?;
        let (post, variants, idempotent_replay) = created_pb(&created)?;
        ok(pb::CreatePostForWorkspaceResponse { post: Some(post), variants, idempotent_replay })
    }

    async fn get_post_for_workspace(
        &self,
        request: Request<pb::GetPostForWorkspaceRequest>,
    ) -> Reply<pb::GetPostForWorkspaceResponse> {
        let r = request.get_ref();
        let workspace_id = required(&r.workspace_id, "workspace_id")?;
        let view = self.content.get_post(workspace_id, required(&r.post_id, "post_id")?).await?;
        ok(pb::GetPostForWorkspaceResponse { post: Some(post_pb(&view)?) })
    }

    async fn get_template_for_workspace(
        &self,
        request: Request<pb::GetTemplateForWorkspaceRequest>,
    ) -> Reply<pb::GetTemplateForWorkspaceResponse> {
        let r = request.get_ref();
        let workspace_id = required(&r.workspace_id, "workspace_id")?;
        let template_id = required(&r.template_id, "template_id")?;
        let template = self.content.template(self.content_db(), workspace_id, template_id).await?;
        ok(pb::GetTemplateForWorkspaceResponse { template: Some(template_pb(&template)?) })
    }

    async fn enqueue_publish(
        &self,
        request: Request<pb::EnqueuePublishRequest>,
    ) -> Reply<pb::EnqueuePublishResponse> {
        let r = request.get_ref();
        let workspace_id = required(&r.workspace_id, "workspace_id")?;
        let post_id = required(&r.post_id, "post_id")?;
        let trigger = match social::PublishTrigger::try_from(r.trigger) {
            Ok(social::PublishTrigger::Unspecified) => social::PublishTrigger::Immediate,
            Ok(trigger) => trigger,
            Err(_) => {
                return Err(ApiError::invalid("trigger", format!("{} is not a trigger", r.trigger)).into());
            }
        };
        let (results, status) = self
            .content
            .enqueue_publish(workspace_id, post_id, &r.account_ids, trigger, &r.requested_by_user_id)
            .await?;
        ok(pb::EnqueuePublishResponse { results, status: status.to_proto() as i32 })
    }

    async fn begin_target_publish(
        &self,
        request: Request<pb::BeginTargetPublishRequest>,
    ) -> Reply<pb::BeginTargetPublishResponse> {
        let r = request.get_ref();
        let workspace_id = required(&r.workspace_id, "workspace_id")?;
        let post_id = required(&r.post_id, "post_id")?;
        let target_id = required(&r.target_id, "target_id")?;
        let outcome =
            self.content.begin_target_publish(workspace_id, post_id, target_id, r.round, r.attempt).await?;
        ok(pb::BeginTargetPublishResponse {
            proceed: outcome.proceed,
            status: outcome.status.map(|s| s.to_proto() as i32).unwrap_or_default(),
            reason: outcome.reason,
        })
    }
}

impl ContentApi {
    fn content_db(&self) -> &sea_orm::DatabaseConnection {
        self.content.deps().db.conn()
    }
}

//! The content service end to end against `postmesh dev`: templates, the
//! checks on a post's fields (each problem named by its field), idempotent
//! creation, a post's life from draft to deletion, and workspaces that
//! never see each other's posts or templates.

use std::collections::HashMap;

use postmesh_kit::testing::TestEnv;
use postmesh_proto::postmesh::content::v1 as pb;
use postmesh_proto::postmesh::content::v1::content_service_client::ContentServiceClient;
use postmesh_proto::postmesh::social::v1 as social;
use postmesh_proto::postmesh::social::v1::social_service_client::SocialServiceClient;
use postmesh_proto::postmesh::r#type::v1::{MediaReference, Platform};
use postmesh_social::fakes::FakePlatforms;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::helpers::{Api, Process, bearer, register};

/// `postmesh dev` (pointed at fake platforms when given) and a fresh user.
struct Stage {
    _process: Process,
    api: Api,
    channel: Channel,
    token: String,
    workspace_id: String,
    content: ContentServiceClient<Channel>,
    fakes: Option<FakePlatforms>,
}

async fn stage(env: &TestEnv, with_platforms: bool) -> Stage {
    let fakes = if with_platforms { Some(FakePlatforms::start().await) } else { None };
    let vars = fakes.as_ref().map(FakePlatforms::env).unwrap_or_default();
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let process = Process::start_with(env, &["dev"], &vars);
    let api = Api::new(process.http.expect("dev serves the gateway"));
    let channel = process.channel().await;
    let (token, _, workspace_id) = register(channel.clone(), "writer").await;
    let content = ContentServiceClient::new(channel.clone());
    Stage { _process: process, api, channel, token, workspace_id, content, fakes }
}

impl Stage {
    fn req<T>(&self, message: T) -> tonic::Request<T> {
        bearer(message, &self.token)
    }

    /// Connects a Discord webhook of the fake platforms; returns its id.
    async fn connect_discord(&self) -> String {
        let fakes = self.fakes.as_ref().expect("a stage with platforms");
        let credentials: HashMap<String, String> = fakes.credentials(Platform::Discord).into_iter().collect();
        let mut social = SocialServiceClient::new(self.channel.clone());
        let answer = social
            .connect_account(self.req(social::ConnectAccountRequest {
                platform: Platform::Discord as i32,
                credentials,
                display_name: String::new(),
            }))
            .await
            .expect("the account connects")
            .into_inner();
        answer.account.expect("an account").id
    }

    async fn create(&self, request: pb::CreatePostRequest) -> Result<pb::CreatePostResponse, Status> {
        self.content.clone().create_post(self.req(request)).await.map(|r| r.into_inner())
    }
}

/// The fields named by an INVALID_ARGUMENT answer's `BadRequest`.
fn fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// Unix seconds now.
fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs() as i64
}

/// Sets a `google.protobuf.Timestamp` field to Unix seconds `$seconds`.
macro_rules! set_time {
    ($slot:expr, $seconds:expr) => {{
        let at = $slot.get_or_insert_with(Default::default);
        at.seconds = $seconds;
        at.nanos = 0;
    }};
}

/// Sets a `google.protobuf.FieldMask` field to `$paths`.
macro_rules! set_mask {
    ($slot:expr, $paths:expr) => {{
        $slot.get_or_insert_with(Default::default).paths =
            $paths.iter().map(|p: &&str| p.to_string()).collect();
    }};
}

fn update_template(id: &str, template: pb::Template, paths: &[&str]) -> pb::UpdateTemplateRequest {
    let mut request =
        pb::UpdateTemplateRequest { id: id.into(), template: Some(template), update_mask: None };
    set_mask!(request.update_mask, paths);
    request
}

fn update_post(id: &str, post: pb::Post, paths: &[&str]) -> pb::UpdatePostRequest {
    let mut request = pb::UpdatePostRequest { id: id.into(), post: Some(post), update_mask: None };
    set_mask!(request.update_mask, paths);
    request
}

fn template(name: &str, body: &str, defaults: &[(&str, &str)]) -> pb::Template {
    pb::Template {
        name: name.into(),
        body: body.into(),
        description: "for tests".into(),
        default_values: defaults.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn templates_are_kept_listed_rendered_and_name_missing_variables() {
    let env = TestEnv::new().await;
    let stage = stage(&env, false).await;
    let mut content = stage.content.clone();

    let created = content
        .create_template(stage.req(pb::CreateTemplateRequest {
            template: Some(template(
                "Stream alert",
                "**{streamer.name}** is live: {title} {{not a variable}}",
                &[("title", "come and watch")],
            )),
        }))
        .await
        .expect("created")
        .into_inner()
        .template
        .unwrap();
    assert_eq!(created.variables, ["streamer.name", "title"]);
    assert_eq!(created.workspace_id, stage.workspace_id);

    // One name per workspace; a malformed body says where.
    let status = content
        .create_template(
            stage.req(pb::CreateTemplateRequest { template: Some(template("Stream alert", "x", &[])) }),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let status = content
        .create_template(
            stage.req(pb::CreateTemplateRequest { template: Some(template("Broken", "Hello {name", &[])) }),
        )
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["template.body"]);
    assert!(status.message().contains("at character 7"), "{status:?}");
    let status = content
        .create_template(stage.req(pb::CreateTemplateRequest { template: Some(template("", "", &[])) }))
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["template.name", "template.body"]);

    // Rendering: given values win, defaults fill in, missing ones are named.
    let rendered = content
        .render_template(stage.req(pb::RenderTemplateRequest {
            id: created.id.clone(),
            variables: [("streamer.name".to_owned(), "Ana".to_owned())].into(),
        }))
        .await
        .expect("rendered")
        .into_inner();
    assert_eq!(rendered.text, "**Ana** is live: come and watch {not a variable}");
    assert_eq!(rendered.defaulted_variables, ["title"]);
    let status = content
        .render_template(
            stage.req(pb::RenderTemplateRequest { id: created.id.clone(), variables: HashMap::new() }),
        )
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["variables.streamer.name"]);

    // The same over HTTP: a 400 naming the variable.
    let answer = stage
        .api
        .call(
            Method::POST,
            &format!("/api/content/templates/{}/render", created.id),
            Some(&stage.token),
            Some(json!({ "variables": { "title": "t" } })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert_eq!(answer.violated_field(), "variables.streamer.name", "{}", answer.body);

    // Listing: by name, filtered ignoring case, in pages.
    content
        .create_template(
            stage.req(pb::CreateTemplateRequest { template: Some(template("Weekly digest", "{week}", &[])) }),
        )
        .await
        .expect("second template");
    let page = content
        .list_templates(stage.req(pb::ListTemplatesRequest { page_size: 1, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.templates.len(), 1);
    assert_eq!(page.templates[0].name, "Stream alert");
    let rest = content
        .list_templates(stage.req(pb::ListTemplatesRequest {
            page_size: 1,
            page_token: page.next_page_token.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.templates.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["Weekly digest"]);
    let found = content
        .list_templates(
            stage.req(pb::ListTemplatesRequest { name_contains: "DIGEST".into(), ..Default::default() }),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.templates.len(), 1);
    assert!(found.next_page_token.is_empty());

    // Updating names its fields; the variables follow the body.
    let updated = content
        .update_template(stage.req(update_template(
            &created.id,
            pb::Template { body: "{who} went live".into(), ..Default::default() },
            &["body"],
        )))
        .await
        .expect("updated")
        .into_inner()
        .template
        .unwrap();
    assert_eq!(updated.variables, ["who"]);
    assert_eq!(updated.name, "Stream alert", "fields outside the mask stay");
    let status = content
        .update_template(stage.req(pb::UpdateTemplateRequest {
            id: created.id.clone(),
            template: Some(pb::Template::default()),
            update_mask: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["update_mask"]);

    // Deleting: gone, deleting again succeeds, and the name is free again.
    content
        .delete_template(stage.req(pb::DeleteTemplateRequest { id: created.id.clone() }))
        .await
        .expect("deleted");
    content
        .delete_template(stage.req(pb::DeleteTemplateRequest { id: created.id.clone() }))
        .await
        .expect("again");
    let status =
        content.get_template(stage.req(pb::GetTemplateRequest { id: created.id.clone() })).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    content
        .create_template(
            stage.req(pb::CreateTemplateRequest { template: Some(template("Stream alert", "{x}", &[])) }),
        )
        .await
        .expect("the name of a deleted template can be used again");

    // Another workspace sees none of it.
    let (stranger, _, _) = register(stage.channel.clone(), "stranger").await;
    let status = content
        .get_template(bearer(pb::GetTemplateRequest { id: updated.id.clone() }, &stranger))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let theirs =
        content.list_templates(bearer(pb::ListTemplatesRequest::default(), &stranger)).await.unwrap();
    assert!(theirs.into_inner().templates.is_empty());
    let status = content
        .render_template(bearer(
            pb::RenderTemplateRequest { id: updated.id.clone(), ..Default::default() },
            &stranger,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn a_post_with_bad_fields_is_refused_naming_each_field() {
    let env = TestEnv::new().await;
    let stage = stage(&env, false).await;
    let account = || uuid::Uuid::now_v7().to_string();

    let status =
        stage.create(pb::CreatePostRequest { text: "Hello".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(fields(&status), ["target_account_ids"], "no targets");

    let many: Vec<String> = (0..51).map(|_| account()).collect();
    let status = stage
        .create(pb::CreatePostRequest {
            text: "Hello".into(),
            target_account_ids: many,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["target_account_ids"], "too many targets");

    let (a, b) = (account(), account());
    let status = stage
        .create(pb::CreatePostRequest {
            text: "Hello".into(),
            target_account_ids: vec![a.clone(), b, a],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["target_account_ids[2]"], "a duplicate");
    assert!(status.message().contains("repeats target_account_ids[0]"), "{status:?}");

    // Every problem of one request at once, each under its own field.
    let mut request = pb::CreatePostRequest {
        text: "Rendered from the template instead".into(),
        template_id: uuid::Uuid::now_v7().to_string(),
        target_account_ids: vec![account()],
        media: vec![
            MediaReference { url: "http://example.com/cat.png".into(), ..Default::default() },
            MediaReference { url: "https://example.com/cat".into(), ..Default::default() },
        ],
        platform_overrides: vec![pb::PlatformOverride { platform: 0, text: String::new() }],
        language: "not a language".into(),
        ..Default::default()
    };
    set_time!(request.publish_at, now() + 400 * 86_400);
    let status = stage.create(request).await.unwrap_err();
    let mut named = fields(&status);
    named.sort();
    assert_eq!(
        named,
        [
            "language",
            "media[0].url",
            "media[1].mime_type",
            "platform_overrides[0].platform",
            "platform_overrides[0].text",
            "publish_at",
            "template_id",
            "text",
        ],
        "{status:?}"
    );

    let mut request = pb::CreatePostRequest {
        text: "Too late".into(),
        target_account_ids: vec![account()],
        ..Default::default()
    };
    set_time!(request.publish_at, now() - 3600);
    let status = stage.create(request).await.unwrap_err();
    assert_eq!(fields(&status), ["publish_at"]);
    assert!(status.message().contains("in the past"), "{status:?}");

    let status = stage
        .create(pb::CreatePostRequest {
            text: "Key".into(),
            target_account_ids: vec![account()],
            idempotency_key: "clé".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["idempotency_key"]);

    let status =
        stage.create(pb::CreatePostRequest { target_account_ids: vec![account()], ..Default::default() });
    assert_eq!(fields(&status.await.unwrap_err()), ["text"], "no text, template or media");

    // Over HTTP the same checks answer 400 with the field.
    let answer = stage
        .api
        .call(Method::POST, "/api/content/posts", Some(&stage.token), Some(json!({ "text": "x" })))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert_eq!(answer.violated_field(), "target_account_ids");

    // Unknown posts are not found; nothing was stored; bad tokens are named.
    let mut content = stage.content.clone();
    let unknown = uuid::Uuid::now_v7().to_string();
    let status = content.get_post(stage.req(pb::GetPostRequest { id: unknown.clone() })).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = content
        .get_post_status(stage.req(pb::GetPostStatusRequest { id: unknown.clone() }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status =
        content.cancel_post(stage.req(pb::CancelPostRequest { id: unknown.clone() })).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = content.delete_post(stage.req(pb::DeletePostRequest { id: unknown })).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let listed =
        content.list_posts(stage.req(pb::ListPostsRequest::default())).await.expect("listed").into_inner();
    assert!(listed.posts.is_empty() && listed.next_page_token.is_empty());
    let status = content
        .list_posts(stage.req(pb::ListPostsRequest { page_token: "garbage".into(), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["page_token"]);

    // Internal RPCs are for services only.
    let status = content
        .get_post_for_workspace(stage.req(pb::GetPostForWorkspaceRequest {
            workspace_id: stage.workspace_id.clone(),
            post_id: uuid::Uuid::now_v7().to_string(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

#[tokio::test]
async fn an_idempotency_key_creates_one_post_however_often_it_is_sent() {
    let env = TestEnv::new().await;
    let stage = stage(&env, true).await;
    let discord = stage.connect_discord().await;
    let request = pb::CreatePostRequest {
        text: "Once only".into(),
        target_account_ids: vec![discord.clone()],
        draft: true,
        idempotency_key: "order-4711".into(),
        ..Default::default()
    };
    let first = stage.create(request.clone()).await.expect("created");
    assert!(!first.idempotent_replay);
    let first_post = first.post.unwrap();
    assert_eq!(first_post.status, pb::PostStatus::Draft as i32);
    assert_eq!(first.variants.len(), 1);
    assert_eq!(first.variants[0].platform, Platform::Discord as i32);

    // Whatever the repeat contains, it gets the first post back.
    let again = stage
        .create(pb::CreatePostRequest { text: "Something else".into(), ..request.clone() })
        .await
        .expect("replayed");
    assert!(again.idempotent_replay);
    let again_post = again.post.unwrap();
    assert_eq!(again_post.id, first_post.id);
    assert_eq!(again_post.text, "Once only");
    assert_eq!(again.variants, first.variants);

    // The `Idempotency-Key` header over HTTP, sent by many at once.
    let body = json!({ "text": "Raced", "target_account_ids": [discord], "draft": true });
    let calls = (0..6).map(|_| {
        let api = stage.api.clone();
        let (token, body) = (stage.token.clone(), body.clone());
        async move {
            let request = api
                .request(Method::POST, "/api/content/posts")
                .bearer_auth(token)
                .header("idempotency-key", "race-1")
                .json(&body);
            api.send(request).await
        }
    });
    let answers = futures::future::join_all(calls).await;
    let mut ids: Vec<&str> = answers
        .iter()
        .map(|a| {
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            a.body["post"]["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(answers.iter().filter(|a| a.body["idempotent_replay"] != true).count(), 1, "one call created");
    ids.dedup();
    assert_eq!(ids.len(), 1, "every call got the same post");

    // Keys are per workspace; without a key a repeat is another post.
    let listed = stage
        .content
        .clone()
        .list_posts(stage.req(pb::ListPostsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.posts.len(), 2);
    let plain = pb::CreatePostRequest { idempotency_key: String::new(), ..request };
    stage.create(plain.clone()).await.unwrap();
    stage.create(plain).await.unwrap();
    let listed = stage
        .content
        .clone()
        .list_posts(stage.req(pb::ListPostsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.posts.len(), 4);
}

#[tokio::test]
async fn a_draft_is_scheduled_checked_cancelled_and_deleted() {
    let env = TestEnv::new().await;
    let stage = stage(&env, true).await;
    let discord = stage.connect_discord().await;
    let mut content = stage.content.clone();

    let created = stage
        .create(pb::CreatePostRequest {
            text: "**Launch** day #rust".into(),
            target_account_ids: vec![discord.clone()],
            draft: true,
            language: "en".into(),
            ..Default::default()
        })
        .await
        .expect("created");
    let post = created.post.unwrap();
    assert_eq!(post.status, pb::PostStatus::Draft as i32);
    assert_eq!(post.origin, "api");
    assert_eq!(post.targets.len(), 1);
    assert_eq!(post.targets[0].status, pb::TargetStatus::Pending as i32);
    assert_eq!(post.targets[0].platform, Platform::Discord as i32);
    assert_eq!(created.variants[0].text, "**Launch** day #rust", "Discord keeps the markdown");

    // Too long for Discord: refused naming the platform and its limit.
    let status = content
        .update_post(stage.req(update_post(
            &post.id,
            pb::Post { text: "x".repeat(2001), ..Default::default() },
            &["text"],
        )))
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["text"]);
    assert!(status.message().contains("Discord") && status.message().contains("2000"), "{status:?}");

    // A preview shows the same without storing anything.
    let preview = content
        .preview_post(stage.req(pb::PreviewPostRequest {
            text: "x".repeat(2001),
            account_ids: vec![discord.clone()],
            platforms: vec![Platform::Bluesky as i32],
            ..Default::default()
        }))
        .await
        .expect("previewed")
        .into_inner();
    assert!(!preview.valid);
    assert_eq!(preview.variants.len(), 2);
    assert_eq!(preview.variants[0].max_length, 2000);
    assert_eq!(preview.variants[0].violations[0].kind, pb::LimitKind::TextLength as i32);
    assert_eq!(preview.variants[1].platform, Platform::Bluesky as i32);

    // Scheduled for later: the status says when.
    let publish_at = now() + 2 * 3600;
    let mut schedule = pb::Post { draft: false, ..Default::default() };
    set_time!(schedule.publish_at, publish_at);
    let updated = content
        .update_post(stage.req(update_post(&post.id, schedule, &["draft", "publish_at"])))
        .await
        .expect("scheduled")
        .into_inner()
        .post
        .unwrap();
    assert_eq!(updated.status, pb::PostStatus::Scheduled as i32);
    assert_eq!(updated.text, post.text, "fields outside the mask stay");
    let status = content
        .get_post_status(stage.req(pb::GetPostStatusRequest { id: post.id.clone() }))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.status, pb::PostStatus::Scheduled as i32);
    assert_eq!(status.publish_at.unwrap().seconds, publish_at);
    assert_eq!(status.counts.unwrap().pending, 1);
    assert!(!status.settled);

    // Listing by status and platform.
    let scheduled = content
        .list_posts(stage.req(pb::ListPostsRequest {
            statuses: vec![pb::PostStatus::Scheduled as i32],
            platforms: vec![Platform::Discord as i32],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(scheduled.posts.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [post.id.as_str()]);
    let drafts =
        content
            .list_posts(stage.req(pb::ListPostsRequest {
                statuses: vec![pb::PostStatus::Draft as i32],
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
    assert!(drafts.posts.is_empty());

    // Another workspace cannot see or touch it.
    let (stranger, _, _) = register(stage.channel.clone(), "stranger").await;
    let status =
        content.get_post(bearer(pb::GetPostRequest { id: post.id.clone() }, &stranger)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = content
        .cancel_post(bearer(pb::CancelPostRequest { id: post.id.clone() }, &stranger))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let theirs = content.list_posts(bearer(pb::ListPostsRequest::default(), &stranger)).await.unwrap();
    assert!(theirs.into_inner().posts.is_empty());

    // Cancelled: settled, and no longer editable; cancelling again is a no-op.
    let cancelled = content
        .cancel_post(stage.req(pb::CancelPostRequest { id: post.id.clone() }))
        .await
        .expect("cancelled")
        .into_inner();
    assert_eq!(cancelled.cancelled_targets, 1);
    assert_eq!(cancelled.post.as_ref().unwrap().status, pb::PostStatus::Cancelled as i32);
    assert!(cancelled.post.unwrap().completed_at.is_some());
    let again = content.cancel_post(stage.req(pb::CancelPostRequest { id: post.id.clone() })).await.unwrap();
    assert_eq!(again.into_inner().cancelled_targets, 0);
    let status = content
        .update_post(stage.req(update_post(
            &post.id,
            pb::Post { text: "late edit".into(), ..Default::default() },
            &["text"],
        )))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // Deleted: not found anywhere, deleting again succeeds.
    content.delete_post(stage.req(pb::DeletePostRequest { id: post.id.clone() })).await.expect("deleted");
    content
        .delete_post(stage.req(pb::DeletePostRequest { id: post.id.clone() }))
        .await
        .expect("deleted again");
    let status = content.get_post(stage.req(pb::GetPostRequest { id: post.id.clone() })).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let answer = stage
        .api
        .call(Method::GET, &format!("/api/content/posts/{}/status", post.id), Some(&stage.token), None)
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
}

#[tokio::test]
async fn a_post_made_from_a_template_keeps_its_text_and_unknown_accounts_are_named() {
    let env = TestEnv::new().await;
    let stage = stage(&env, true).await;
    let discord = stage.connect_discord().await;
    let mut content = stage.content.clone();
    let made = content
        .create_template(stage.req(pb::CreateTemplateRequest {
            template: Some(template("Live", "{streamer} is live: {title}", &[("title", "come by")])),
        }))
        .await
        .unwrap()
        .into_inner()
        .template
        .unwrap();

    let status = stage
        .create(pb::CreatePostRequest {
            template_id: made.id.clone(),
            target_account_ids: vec![discord.clone()],
            draft: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["template_variables.streamer"]);

    let post = stage
        .create(pb::CreatePostRequest {
            template_id: made.id.clone(),
            template_variables: [("streamer".to_owned(), "Ana".to_owned())].into(),
            target_account_ids: vec![discord.clone()],
            draft: true,
            ..Default::default()
        })
        .await
        .expect("created from the template")
        .post
        .unwrap();
    assert_eq!(post.text, "Ana is live: come by");
    assert_eq!(post.template_id, made.id);

    // A template change does not touch the post.
    content
        .update_template(stage.req(update_template(
            &made.id,
            pb::Template { body: "changed {streamer}".into(), ..Default::default() },
            &["body"],
        )))
        .await
        .unwrap();
    let kept = content.get_post(stage.req(pb::GetPostRequest { id: post.id.clone() })).await.unwrap();
    assert_eq!(kept.into_inner().post.unwrap().text, "Ana is live: come by");

    // Accounts that are not the workspace's are named by position.
    let status = stage
        .create(pb::CreatePostRequest {
            text: "Hello".into(),
            target_account_ids: vec![discord, uuid::Uuid::now_v7().to_string()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["target_account_ids[1]"]);
}

#[tokio::test]
async fn a_released_draft_publishes_streams_its_status_and_is_counted() {
    let env = TestEnv::new().await;
    let stage = stage(&env, true).await;
    let discord = stage.connect_discord().await;
    let mut content = stage.content.clone();
    let draft = |text: &str| pb::CreatePostRequest {
        text: text.into(),
        target_account_ids: vec![discord.clone()],
        draft: true,
        ..Default::default()
    };
    let mut ids = Vec::new();
    for text in ["first", "second", "third"] {
        ids.push(stage.create(draft(text)).await.expect("draft").post.unwrap().id);
    }

    // Newest first, in pages.
    let page = content
        .list_posts(stage.req(pb::ListPostsRequest { page_size: 2, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.posts.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        [ids[2].as_str(), ids[1].as_str()]
    );
    let rest = content
        .list_posts(stage.req(pb::ListPostsRequest {
            page_size: 2,
            page_token: page.next_page_token,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.posts.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [ids[0].as_str()]);
    assert!(rest.next_page_token.is_empty());

    // Released from draft without a time: published now; the stream
    // follows it until it settles.
    let mut watch = content
        .watch_post_status(stage.req(pb::WatchPostStatusRequest { id: ids[0].clone() }))
        .await
        .expect("watching")
        .into_inner();
    let first = watch.message().await.unwrap().unwrap().status.unwrap();
    assert_eq!(first.status, pb::PostStatus::Draft as i32);
    let released = content
        .update_post(stage.req(update_post(
            &ids[0],
            pb::Post { draft: false, ..Default::default() },
            &["draft"],
        )))
        .await
        .expect("released")
        .into_inner()
        .post
        .unwrap();
    assert!(
        [pb::PostStatus::Queued as i32, pb::PostStatus::Publishing as i32, pb::PostStatus::Posted as i32]
            .contains(&released.status),
        "{released:?}"
    );
    let mut last = first;
    let follow = async {
        while let Some(message) = watch.message().await.expect("the stream stays up") {
            last = message.status.unwrap();
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), follow).await.expect("the post settles");
    assert!(last.settled, "the stream ends once the post settles: {last:?}");
    assert_eq!(last.status, pb::PostStatus::Posted as i32, "{last:?}");
    let target = &last.targets[0];
    assert_eq!(target.status, pb::TargetStatus::Posted as i32);
    assert_eq!(target.round, 1);
    assert!(!target.external_id.is_empty() && target.finished_at.is_some(), "{target:?}");
    assert_eq!(stage.fakes.as_ref().unwrap().posts(Platform::Discord).len(), 1);

    // Publishing it again is a no-op for a posted target.
    let answer = stage
        .api
        .call(Method::POST, "/api/social/publish", Some(&stage.token), Some(json!({ "post_id": ids[0] })))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let again = stage
        .api
        .call(
            Method::POST,
            "/api/social/publish",
            Some(&stage.token),
            Some(json!({ "post_id": ids[0], "account_ids": [discord] })),
        )
        .await;
    assert_eq!(
        again.body["results"][0]["disposition"], "PUBLISH_DISPOSITION_ALREADY_POSTED",
        "{}",
        again.body
    );

    // Counted: created, by status, per platform, per day.
    let analytics = content
        .get_content_analytics(stage.req(pb::GetContentAnalyticsRequest::default()))
        .await
        .expect("analytics")
        .into_inner();
    assert_eq!(analytics.posts_created, 3);
    let count = |status: pb::PostStatus| {
        analytics.status_counts.iter().find(|c| c.status == status as i32).map(|c| c.count).unwrap_or(0)
    };
    assert_eq!((count(pb::PostStatus::Posted), count(pb::PostStatus::Draft)), (1, 2));
    assert_eq!(analytics.platforms.len(), 1);
    assert_eq!(analytics.platforms[0].platform, Platform::Discord as i32);
    assert_eq!((analytics.platforms[0].targets_posted, analytics.platforms[0].success_rate), (1, 1.0));
    assert_eq!(analytics.daily.len(), 31, "one entry per UTC day of the default 30-day window");
    assert_eq!(analytics.daily.iter().map(|d| d.targets_posted).sum::<i64>(), 1);

    // Completed posts, by completion time.
    let mut completed =
        pb::ListPostsRequest { time_field: pb::PostTimeField::Completed as i32, ..Default::default() };
    set_time!(completed.start_at, now() - 3600);
    let completed = content.list_posts(stage.req(completed)).await.unwrap().into_inner();
    assert_eq!(completed.posts.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [ids[0].as_str()]);
}

#[tokio::test]
async fn two_replicas_publish_each_scheduled_post_once_and_stream_from_either() {
    // A process without the user service gets service tokens with this.
    let env =
        TestEnv::with(&[("POSTMESH_AUTH_SERVICE_SECRET", "e2e-service-secret-of-at-least-32-chars")]).await;
    if !env.has_postgres() || env.nats_url().is_none() || env.redis_url().is_none() {
        // Replicas share a database, a bus and a store only on real servers.
        return;
    }
    let stage = stage(&env, true).await;
    let discord = stage.connect_discord().await;
    let url = stage._process.grpc_url();
    let replica = Process::start_with(
        &env,
        &["serve", "content"],
        &[("POSTMESH_USER_URL", url.as_str()), ("POSTMESH_SOCIAL_URL", url.as_str())],
    );
    let clients = [stage.content.clone(), ContentServiceClient::new(replica.channel().await)];

    // Both replicas run a scheduler and consume the due jobs and events.
    let publish_at = now() + 2;
    let mut ids = Vec::new();
    for i in 0..6 {
        let mut request = pb::CreatePostRequest {
            text: format!("scheduled {i}"),
            target_account_ids: vec![discord.clone()],
            ..Default::default()
        };
        set_time!(request.publish_at, publish_at);
        let created = clients[i % 2].clone().create_post(stage.req(request)).await.expect("scheduled");
        ids.push(created.into_inner().post.unwrap().id);
    }
    // Each stream is served by the other replica than the one that created
    // the post; changes reach it whichever replica records them.
    for (i, id) in ids.iter().enumerate() {
        let mut watch = clients[(i + 1) % 2]
            .clone()
            .watch_post_status(stage.req(pb::WatchPostStatusRequest { id: id.clone() }))
            .await
            .expect("watching")
            .into_inner();
        let mut last = None;
        let follow = async {
            while let Some(message) = watch.message().await.expect("the stream stays up") {
                last = message.status;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), follow).await.expect("the post settles");
        let last = last.expect("a status");
        assert_eq!(last.status, pb::PostStatus::Posted as i32, "{last:?}");
        assert!(now() >= publish_at, "not before publish_at");
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let posted = stage.fakes.as_ref().unwrap().posts(Platform::Discord);
    assert_eq!(
        posted.len(),
        ids.len(),
        "each post published once: {:?}",
        posted.iter().map(|p| &p.text).collect::<Vec<_>>()
    );
}

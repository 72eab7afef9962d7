//! Publishing end to end: `postmesh dev` publishes posts to fake platform
//! servers (real HTTP servers speaking each platform's wire format) and
//! reports each target's outcome, through the gateway and over gRPC.

use std::time::Duration;

use futures::StreamExt;
use postmesh_kit::testing::TestEnv;
use postmesh_proto::postmesh::content::v1 as content;
use postmesh_proto::postmesh::content::v1::content_service_client::ContentServiceClient;
use postmesh_proto::postmesh::r#type::v1::Platform;
use postmesh_social::fakes::{Answer as Fake, FakePlatforms};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Account, Api, Process, bearer, dev, sign_up};

/// How long a post may take to settle before the test gives up.
const SETTLE_WITHIN: Duration = Duration::from_secs(60);

/// `postmesh dev` pointed at the fakes, and a signed-up user.
struct Stage {
    process: Process,
    api: Api,
    user: Account,
    fakes: FakePlatforms,
}

async fn stage(env: &TestEnv, extra: &[(&str, &str)]) -> Stage {
    let fakes = FakePlatforms::start().await;
    let mut vars = fakes.env();
    vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (process, api) = dev(env, &vars);
    let user = sign_up(&api, "publisher").await;
    Stage { process, api, user, fakes }
}

impl Stage {
    /// Connects an account on `platform` to the fakes; returns its id.
    async fn connect(&self, platform: Platform) -> String {
        let body =
            json!({ "platform": platform.as_str_name(), "credentials": self.fakes.credentials(platform) });
        let answer =
            self.api.call(Method::POST, "/api/social/connect", Some(&self.user.token), Some(body)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body["account"]["id"].as_str().expect("account id").to_owned()
    }

    async fn create(&self, body: Value) -> Value {
        let answer =
            self.api.call(Method::POST, "/api/content/posts", Some(&self.user.token), Some(body)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body["post"].clone()
    }

    /// Follows the post's status stream (NDJSON) until it settles.
    async fn settled(&self, post_id: &str) -> Value {
        settled(&self.api, &self.user.token, post_id).await
    }
}

async fn settled(api: &Api, token: &str, post_id: &str) -> Value {
    let response = api
        .request(Method::GET, &format!("/api/content/posts/{post_id}/status/stream"))
        .bearer_auth(token)
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(response.status(), StatusCode::OK);
    let mut bytes = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut last = Value::Null;
    let read = async {
        while let Some(chunk) = bytes.next().await {
            buffer.extend_from_slice(&chunk.expect("stream chunk"));
            while let Some(at) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=at).collect();
                let Ok(message) = serde_json::from_slice::<Value>(&line) else { continue };
                last = message["status"].clone();
                if last["settled"] == true {
                    return;
                }
            }
        }
    };
    if tokio::time::timeout(SETTLE_WITHIN, read).await.is_err() {
        panic!("post {post_id} did not settle; last status: {last}");
    }
    last
}

fn target<'a>(status: &'a Value, account_id: &str) -> &'a Value {
    status["targets"]
        .as_array()
        .and_then(|targets| targets.iter().find(|t| t["account_id"] == account_id))
        .unwrap_or_else(|| panic!("no target for {account_id} in {status}"))
}

#[tokio::test]
async fn a_post_to_four_platforms_ends_posted_on_all() {
    let env = TestEnv::new().await;
    let stage = stage(&env, &[]).await;
    let platforms = [Platform::Discord, Platform::Mastodon, Platform::Bluesky, Platform::Telegram];
    let mut accounts = Vec::new();
    for platform in platforms {
        accounts.push(stage.connect(platform).await);
    }
    let post = stage
        .create(json!({
            "text": "Launch day: **postmesh** is live #launch https://example.com/news",
            "target_account_ids": accounts,
        }))
        .await;
    let status = stage.settled(post["id"].as_str().unwrap()).await;
    assert_eq!(status["status"], "POST_STATUS_POSTED", "{status}");
    assert_eq!(status["counts"]["posted"], 4, "{status}");
    for account in &accounts {
        let target = target(&status, account);
        assert_eq!(target["status"], "TARGET_STATUS_POSTED", "{target}");
        assert!(target["external_id"].as_str().is_some_and(|id| !id.is_empty()), "{target}");
    }
    for platform in platforms {
        assert_eq!(stage.fakes.posts(platform).len(), 1, "{platform:?} got one post");
    }
    let telegram = &stage.fakes.posts(Platform::Telegram)[0];
    assert_eq!(telegram.body["parse_mode"], "HTML");
    assert!(telegram.text.contains("<b>postmesh</b>"), "{}", telegram.text);
    let discord = &stage.fakes.posts(Platform::Discord)[0];
    assert!(discord.text.contains("**postmesh**"), "{}", discord.text);
    let bluesky = &stage.fakes.posts(Platform::Bluesky)[0];
    let facets = bluesky.body["record"]["facets"].as_array().expect("facets");
    assert!(facets.len() >= 2, "a link and a tag: {facets:?}");
    assert!(!bluesky.text.contains("**"), "no markdown on Bluesky: {}", bluesky.text);
    let mastodon = &stage.fakes.posts(Platform::Mastodon)[0];
    assert!(mastodon.idempotency_key.as_deref().is_some_and(|k| k.starts_with("pm-")), "{mastodon:?}");
}

#[tokio::test]
async fn a_failing_platform_ends_some_faults_with_its_reason_and_no_retry() {
    let env = TestEnv::new().await;
    let stage = stage(&env, &[]).await;
    let discord = stage.connect(Platform::Discord).await;
    let slack = stage.connect(Platform::Slack).await;
    stage.fakes.script(Platform::Slack, [Fake::Unauthorized]);
    let post =
        stage.create(json!({ "text": "Half of this works", "target_account_ids": [discord, slack] })).await;
    let status = stage.settled(post["id"].as_str().unwrap()).await;
    assert_eq!(status["status"], "POST_STATUS_SOME_FAULTS", "{status}");
    assert_eq!(target(&status, &discord)["status"], "TARGET_STATUS_POSTED");
    let failed = target(&status, &slack);
    assert_eq!(failed["status"], "TARGET_STATUS_FAULTED", "{failed}");
    assert_eq!(failed["failure"]["kind"], "PUBLISH_ERROR_KIND_UNAUTHORIZED", "{failed}");
    // Slack answers a revoked webhook token with 403 `invalid_token`.
    assert_eq!(failed["failure"]["http_status"], 403, "{failed}");
    assert!(failed["failure"]["message"].as_str().is_some_and(|m| m.contains("invalid_token")), "{failed}");
    assert!(failed["failure"]["retryable"] != true, "bad credentials are not retryable: {failed}");
    assert_eq!(stage.fakes.attempts(Platform::Slack), 1, "a 401 is not retried");
    // The account now needs a new connection.
    let account = stage
        .api
        .call(Method::GET, &format!("/api/social/accounts/{slack}"), Some(&stage.user.token), None)
        .await;
    assert_eq!(account.status, StatusCode::OK, "{}", account.body);
    assert_eq!(account.body["account"]["status"], "ACCOUNT_STATUS_NEEDS_REAUTH", "{}", account.body);
}

#[tokio::test]
async fn rate_limits_and_outages_are_retried_until_posted_over_grpc() {
    let env = TestEnv::new().await;
    let stage = stage(&env, &[]).await;
    let discord = stage.connect(Platform::Discord).await;
    stage.fakes.script(
        Platform::Discord,
        [Fake::RateLimited { retry_after: Duration::from_secs(1) }, Fake::ServerError],
    );
    let mut client = ContentServiceClient::new(stage.process.channel().await);
    let created = client
        .create_post(bearer(
            content::CreatePostRequest {
                text: "Third time lucky".into(),
                target_account_ids: vec![discord.clone()],
                ..Default::default()
            },
            &stage.user.token,
        ))
        .await
        .expect("created over gRPC")
        .into_inner();
    let post_id = created.post.expect("post").id;
    let mut watch = client
        .watch_post_status(bearer(content::WatchPostStatusRequest { id: post_id.clone() }, &stage.user.token))
        .await
        .expect("the watch opens")
        .into_inner();
    let mut last = None;
    let follow = async {
        while let Some(message) = watch.next().await {
            let status = message.expect("a status").status.expect("status");
            let settled = status.settled;
            last = Some(status);
            if settled {
                break;
            }
        }
    };
    tokio::time::timeout(SETTLE_WITHIN, follow).await.expect("the post settles");
    let status = last.expect("at least one status");
    assert_eq!(status.status(), content::PostStatus::Posted, "{status:?}");
    assert_eq!(status.targets[0].attempts, 3, "a 429, a 500, then the post: {status:?}");
    assert_eq!(stage.fakes.attempts(Platform::Discord), 3);
    assert_eq!(stage.fakes.posts(Platform::Discord).len(), 1);
}

#[tokio::test]
async fn a_scheduled_post_publishes_when_due_and_not_before() {
    let env = TestEnv::new().await;
    let stage = stage(&env, &[]).await;
    let telegram = stage.connect(Platform::Telegram).await;
    let publish_at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let post = stage
        .create(json!({
            "text": "Scheduled",
            "target_account_ids": [telegram],
            "publish_at": publish_at.to_rfc3339(),
        }))
        .await;
    assert_eq!(post["status"], "POST_STATUS_SCHEDULED", "{post}");
    assert!(stage.fakes.posts(Platform::Telegram).is_empty(), "nothing before publish_at");
    let status = stage.settled(post["id"].as_str().unwrap()).await;
    assert!(chrono::Utc::now() >= publish_at, "settled only after publish_at");
    assert_eq!(status["status"], "POST_STATUS_POSTED", "{status}");
    assert_eq!(stage.fakes.posts(Platform::Telegram).len(), 1);
}

#[tokio::test]
async fn a_worker_killed_mid_publish_leads_to_exactly_one_external_post() {
    let env = TestEnv::new().await;
    let settings = [("POSTMESH_SOCIAL_PUBLISH_TIMEOUT", "3s")];
    let mut stage = stage(&env, &settings).await;
    let mastodon = stage.connect(Platform::Mastodon).await;
    // The platform takes the post, and the worker dies before it hears so.
    stage.fakes.script(Platform::Mastodon, [Fake::AcceptAndHang]);
    let post = stage.create(json!({ "text": "Exactly once", "target_account_ids": [mastodon] })).await;
    stage.fakes.wait_for_posts(Platform::Mastodon, 1, SETTLE_WITHIN).await;
    let _ = stage.process.child.kill();
    let _ = stage.process.child.wait();

    let mut vars = stage.fakes.env();
    vars.extend(settings.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (_restarted, api) = dev(&env, &vars);
    let status = settled(&api, &stage.user.token, post["id"].as_str().unwrap()).await;
    assert_eq!(status["status"], "POST_STATUS_POSTED", "{status}");
    assert!(stage.fakes.attempts(Platform::Mastodon) >= 2, "the job was delivered again");
    assert_eq!(stage.fakes.posts(Platform::Mastodon).len(), 1, "the platform holds one post");
    let external = target(&status, &mastodon)["external_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(external, stage.fakes.posts(Platform::Mastodon)[0].external_id);
}

#[tokio::test]
async fn another_workspace_sees_and_touches_nothing() {
    let env = TestEnv::new().await;
    let stage = stage(&env, &[]).await;
    let discord = stage.connect(Platform::Discord).await;
    let post = stage.create(json!({ "text": "Ours", "target_account_ids": [discord], "draft": true })).await;
    let post_id = post["id"].as_str().unwrap();
    let stranger = sign_up(&stage.api, "stranger").await;
    let token = Some(stranger.token.as_str());
    let api = &stage.api;
    for (method, path, body) in [
        (Method::GET, format!("/api/content/posts/{post_id}"), None),
        (Method::GET, format!("/api/content/posts/{post_id}/status"), None),
        (Method::DELETE, format!("/api/content/posts/{post_id}"), None),
        (Method::POST, "/api/social/publish".to_owned(), Some(json!({ "post_id": post_id }))),
    ] {
        let answer = api.call(method.clone(), &path, token, body).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method} {path}: {}", answer.body);
    }
    let theirs = api.call(Method::GET, "/api/social/accounts", token, None).await;
    assert_eq!(theirs.status, StatusCode::OK);
    assert!(theirs.body["accounts"].as_array().is_none_or(|a| a.is_empty()), "{}", theirs.body);
    let borrowed = api
        .call(
            Method::POST,
            "/api/content/posts",
            token,
            Some(json!({ "text": "Theirs", "target_account_ids": [discord] })),
        )
        .await;
    assert_eq!(borrowed.status, StatusCode::BAD_REQUEST, "{}", borrowed.body);
    assert_eq!(borrowed.violated_field(), "target_account_ids[0]", "{}", borrowed.body);
    // Still a draft, untouched.
    let mine =
        api.call(Method::GET, &format!("/api/content/posts/{post_id}"), Some(&stage.user.token), None).await;
    assert_eq!(mine.body["post"]["status"], "POST_STATUS_DRAFT", "{}", mine.body);
    assert!(stage.fakes.posts(Platform::Discord).is_empty());
}

/// Waits until `account_id` has `status`; the account as it then reads.
async fn account_reaches(stage: &Stage, account_id: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + SETTLE_WITHIN;
    loop {
        let path = format!("/api/social/accounts/{account_id}");
        let answer = stage.api.call(Method::GET, &path, Some(&stage.user.token), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        if answer.body["account"]["status"] == status {
            return answer.body["account"].clone();
        }
        // The account says nothing when its token changes: look again.
        assert!(tokio::time::Instant::now() < deadline, "account never {status}: {}", answer.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn twitch_tokens_are_refreshed_before_they_expire() {
    let env = TestEnv::new().await;
    let stage = stage(&env, &[]).await;
    // Tokens that last five minutes are inside the ten-minute margin: the
    // connect itself queues the refresh.
    stage.fakes.set_twitch_token_lifetime(Duration::from_secs(300));
    let account = stage.connect(Platform::Twitch).await;
    stage.fakes.wait_for_twitch_refreshes(1, SETTLE_WITHIN).await;

    // Twitch no longer takes the token postmesh was given; the post goes
    // out with the refreshed one.
    let post = stage.create(json!({ "text": "Live now", "target_account_ids": [account] })).await;
    let status = stage.settled(post["id"].as_str().unwrap()).await;
    assert_eq!(status["status"], "POST_STATUS_POSTED", "{status}");
    assert_eq!(stage.fakes.posts(Platform::Twitch).len(), 1);
    let account = account_reaches(&stage, &account, "ACCOUNT_STATUS_ACTIVE").await;
    assert!(account["token_expires_at"].as_str().is_some(), "{account}");
}

#[tokio::test]
async fn a_refused_refresh_asks_for_a_reconnect() {
    let env = TestEnv::new().await;
    let stage = stage(&env, &[]).await;
    stage.fakes.set_twitch_token_lifetime(Duration::from_secs(300));
    let credentials = stage.fakes.credentials(Platform::Twitch);
    stage.fakes.revoke_twitch_refresh_tokens();
    let body = json!({ "platform": "PLATFORM_TWITCH", "credentials": credentials });
    let answer =
        stage.api.call(Method::POST, "/api/social/connect", Some(&stage.user.token), Some(body)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let id = answer.body["account"]["id"].as_str().unwrap().to_owned();

    let account = account_reaches(&stage, &id, "ACCOUNT_STATUS_NEEDS_REAUTH").await;
    let reason = account["status_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("Invalid refresh token"), "{account}");
    assert!(!reason.contains(&credentials["refresh_token"]), "no secrets in reasons: {reason}");
}

#[tokio::test]
async fn a_refresh_token_needs_the_client_secret() {
    let env = TestEnv::new().await;
    let stage = stage(&env, &[]).await;
    let mut credentials = stage.fakes.credentials(Platform::Twitch);
    credentials.remove("client_secret");
    let body = json!({ "platform": "PLATFORM_TWITCH", "credentials": credentials });
    let answer =
        stage.api.call(Method::POST, "/api/social/connect", Some(&stage.user.token), Some(body)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert!(answer.body.to_string().contains("credentials.client_secret"), "{}", answer.body);
}

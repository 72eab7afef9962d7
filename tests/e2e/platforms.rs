//! The platform adapters against fake platform servers speaking each wire
//! format: what each platform receives, what a publish says about the post,
//! how every kind of refusal is classified, and how connecting checks
//! credentials. No postmesh process is involved: the adapters are the
//! library the social service's worker calls.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use postmesh_proto::postmesh::social::v1::facet::Feature;
use postmesh_proto::postmesh::social::v1::{Facet, PublishErrorKind, RenderedPost};
use postmesh_proto::postmesh::r#type::v1::{MediaReference, Platform, TextFormat};
use postmesh_social::fakes::{Answer, FakePlatforms};
use postmesh_social::platforms::{
    self, Adapters, ConnectError, Credentials, PlatformUrls, PublishError, Published, parse_retry_after,
    webhook_signature,
};

const ALL: [Platform; 7] = [
    Platform::Discord,
    Platform::Mastodon,
    Platform::Bluesky,
    Platform::Telegram,
    Platform::Slack,
    Platform::Twitch,
    Platform::Webhook,
];

/// Long enough for any fake answer on a loaded machine; the timeout tests
/// use their own, short one.
const TIMEOUT: Duration = Duration::from_secs(10);

async fn start() -> (FakePlatforms, Adapters) {
    let fakes = FakePlatforms::start().await;
    let adapters = Adapters::new(fakes.urls(), TIMEOUT);
    (fakes, adapters)
}

/// Connects a new fake account and returns what the service would store.
async fn connect(fakes: &FakePlatforms, adapters: &Adapters, platform: Platform) -> Credentials {
    let given = Credentials(fakes.credentials(platform));
    let connected = adapters.connect(platform, given).await.unwrap_or_else(|e| panic!("{platform:?}: {e}"));
    connected.credentials
}

fn post(platform: Platform, text: &str) -> RenderedPost {
    let format = platforms::info(platform).unwrap().capabilities.as_ref().unwrap().text_format;
    RenderedPost { text: text.into(), format, language: "en".into(), ..RenderedPost::default() }
}

async fn publish(
    adapters: &Adapters,
    platform: Platform,
    credentials: &Credentials,
) -> Result<Published, PublishError> {
    adapters
        .publish(platform, credentials, &post(platform, "Hello from postmesh"), &format!("pm-{platform:?}"))
        .await
}

/// Publishes once with `answer` scripted and returns the failure.
async fn refused(platform: Platform, answer: Answer) -> PublishError {
    let (fakes, adapters) = start().await;
    let credentials = connect(&fakes, &adapters, platform).await;
    fakes.script(platform, [answer.clone()]);
    let error = publish(&adapters, platform, &credentials).await.expect_err("the scripted refusal");
    assert_eq!(fakes.attempts(platform), 1, "{platform:?}: one call for {answer:?}");
    assert!(fakes.posts(platform).is_empty(), "{platform:?}: nothing accepted on {answer:?}");
    assert!(!error.message.is_empty() && error.message.chars().count() <= 1000, "{error:?}");
    error
}

#[test]
fn the_registry_lists_seven_platforms_in_order_with_their_secrets_marked() {
    let registry = platforms::registry();
    let order: Vec<i32> = registry.iter().map(|info| info.platform).collect();
    assert_eq!(order, ALL.map(|p| p as i32).to_vec());
    let secrets: BTreeMap<&str, Vec<(&str, bool)>> = registry
        .iter()
        .map(|info| {
            let fields = info.credential_fields.iter().map(|f| (f.name.as_str(), f.secret)).collect();
            (info.display_name.as_str(), fields)
        })
        .collect();
    let expected: BTreeMap<&str, Vec<(&str, bool)>> = [
        ("Discord", vec![("webhook_url", true)]),
        ("Mastodon", vec![("instance_url", false), ("access_token", true)]),
        ("Bluesky", vec![("handle", false), ("app_password", true), ("service_url", false)]),
        ("Telegram", vec![("bot_token", true), ("chat_id", false)]),
        ("Slack", vec![("webhook_url", true)]),
        (
            "Twitch",
            vec![
                ("client_id", false),
                ("access_token", true),
                ("refresh_token", true),
                ("client_secret", true),
                ("broadcaster_id", false),
                ("moderator_id", false),
            ],
        ),
        ("Webhook", vec![("url", false), ("secret", true)]),
    ]
    .into();
    assert_eq!(secrets, expected);
    for info in registry {
        for field in &info.credential_fields {
            assert_eq!(
                field.secret,
                field.example.is_empty(),
                "{}: examples for public fields only",
                field.name
            );
        }
        let capabilities = info.capabilities.as_ref().unwrap();
        let mastodon = info.platform == Platform::Mastodon as i32;
        assert_eq!(capabilities.platform_idempotency, mastodon, "{}", info.display_name);
        assert!(info.limits.as_ref().unwrap().length_unit != 0, "{}", info.display_name);
    }
    let formats: Vec<i32> = registry.iter().map(|i| i.capabilities.as_ref().unwrap().text_format).collect();
    let expected = [
        TextFormat::Markdown,
        TextFormat::Plain,
        TextFormat::Faceted,
        TextFormat::Html,
        TextFormat::SlackMrkdwn,
        TextFormat::Plain,
        TextFormat::Plain,
    ];
    assert_eq!(formats, expected.map(|f| f as i32).to_vec());
    assert!(platforms::info(Platform::Unspecified).is_none());
    assert_eq!(platforms::info(Platform::Bluesky).unwrap().limits.as_ref().unwrap().max_text_length, 300);
}

#[tokio::test]
async fn every_platform_publishes_and_names_the_post_its_way() {
    let (fakes, adapters) = start().await;
    for platform in ALL {
        let credentials = connect(&fakes, &adapters, platform).await;
        let published = publish(&adapters, platform, &credentials).await.unwrap_or_else(|e| panic!("{e:?}"));
        let received = fakes.posts(platform);
        assert_eq!(received.len(), 1, "{platform:?}");
        assert_eq!(received[0].text, "Hello from postmesh", "{platform:?}");
        assert_eq!(published.external_id, received[0].external_id, "{platform:?}");
        let (id, url) = (&published.external_id, &published.external_url);
        match platform {
            Platform::Discord => {
                let guild = credentials.get("guild_id").expect("connect stored the guild");
                assert!(url.starts_with(&format!("https://discord.com/channels/{guild}/")), "{url}");
                assert!(url.ends_with(&format!("/{id}")), "{url}");
                assert_eq!(received[0].body["content"], "Hello from postmesh");
            }
            Platform::Mastodon => {
                let profile = format!("{}/mastodon/@user", fakes.base_url());
                assert!(url.starts_with(&profile) && url.ends_with(&format!("/{id}")), "{url}");
            }
            Platform::Bluesky => {
                let rkey = id.rsplit('/').next().unwrap();
                assert!(id.starts_with("at://did:plc:") && id.contains("/app.bsky.feed.post/"), "{id}");
                let handle = credentials.get("handle").unwrap();
                assert_eq!(url, &format!("https://bsky.app/profile/{handle}/post/{rkey}"));
            }
            Platform::Telegram => {
                assert_eq!(id, "1", "the chat's first message");
                assert!(url.starts_with("https://t.me/fake_channel_") && url.ends_with("/1"), "{url}");
            }
            Platform::Slack | Platform::Twitch => {
                assert!(id.is_empty() && url.is_empty(), "{platform:?} names no post: {published:?}");
            }
            Platform::Webhook => {
                assert!(id.starts_with("wh-") && url.ends_with(&format!("/messages/{id}")), "{published:?}");
            }
            Platform::Unspecified => unreachable!(),
        }
    }
}

#[tokio::test]
async fn telegram_gets_html_with_its_parse_mode_and_refuses_broken_markup() {
    let (fakes, adapters) = start().await;
    let credentials = connect(&fakes, &adapters, Platform::Telegram).await;
    let text = "<b>Launch</b> &amp; <a href=\"https://example.com\">news</a>";
    adapters.publish(Platform::Telegram, &credentials, &post(Platform::Telegram, text), "k").await.unwrap();
    let sent = &fakes.posts(Platform::Telegram)[0];
    assert_eq!(sent.body["parse_mode"], "HTML");
    assert_eq!(sent.body["chat_id"], credentials.get("chat_id").unwrap());
    assert_eq!(sent.text, text);

    let broken = post(Platform::Telegram, "<h1>Launch</h1>");
    let error = adapters.publish(Platform::Telegram, &credentials, &broken, "k2").await.unwrap_err();
    assert_eq!(error.kind, PublishErrorKind::InvalidContent, "{error:?}");
    assert!(error.message.contains("Unsupported start tag \"h1\""), "{}", error.message);
    assert!(!error.retryable());
}

#[tokio::test]
async fn bluesky_gets_facets_by_byte_range_with_mentions_resolved_to_dids() {
    let (fakes, adapters) = start().await;
    let credentials = connect(&fakes, &adapters, Platform::Bluesky).await;
    let friend =
        adapters.connect(Platform::Bluesky, Credentials(fakes.credentials(Platform::Bluesky))).await.unwrap();
    let text = format!("Déjà vu @{} and @nobody.bsky.test #launch https://example.com/ü", friend.handle);
    let range = |needle: &str| {
        let start = text.find(needle).unwrap();
        (i32::try_from(start).unwrap(), i32::try_from(start + needle.len()).unwrap())
    };
    let facet = |needle: &str, feature: Feature| {
        let (byte_start, byte_end) = range(needle);
        Facet { byte_start, byte_end, feature: Some(feature) }
    };
    let mut rendered = post(Platform::Bluesky, &text);
    rendered.facets = vec![
        facet(&format!("@{}", friend.handle), Feature::MentionHandle(friend.handle.clone())),
        facet("@nobody.bsky.test", Feature::MentionHandle("nobody.bsky.test".into())),
        facet("#launch", Feature::Tag("launch".into())),
        facet("https://example.com/ü", Feature::LinkUri("https://example.com/ü".into())),
        // Outside the text: dropped rather than sent.
        Facet { byte_start: 0, byte_end: 10_000, feature: Some(Feature::Tag("oops".into())) },
    ];
    adapters.publish(Platform::Bluesky, &credentials, &rendered, "k").await.unwrap();
    let sent = &fakes.posts(Platform::Bluesky)[0];
    let record = &sent.body["record"];
    assert_eq!(record["$type"], "app.bsky.feed.post");
    assert_eq!(record["text"], text.as_str());
    assert_eq!(record["langs"], serde_json::json!(["en"]));
    assert!(record["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{record}");
    assert_eq!(sent.body["collection"], "app.bsky.feed.post");
    let facets = record["facets"].as_array().expect("facets");
    let index = |needle: &str| {
        let (start, end) = range(needle);
        serde_json::json!({ "byteStart": start, "byteEnd": end })
    };
    let expected = serde_json::json!([
        { "index": index(&format!("@{}", friend.handle)),
          "features": [{ "$type": "app.bsky.richtext.facet#mention", "did": friend.external_id }] },
        { "index": index("#launch"),
          "features": [{ "$type": "app.bsky.richtext.facet#tag", "tag": "launch" }] },
        { "index": index("https://example.com/ü"),
          "features": [{ "$type": "app.bsky.richtext.facet#link", "uri": "https://example.com/ü" }] },
    ]);
    assert_eq!(serde_json::Value::Array(facets.clone()), expected, "the unresolved mention is dropped");
}

#[tokio::test]
async fn mastodon_gets_the_idempotency_key_and_answers_a_repeat_with_the_same_status() {
    let (fakes, adapters) = start().await;
    let credentials = connect(&fakes, &adapters, Platform::Mastodon).await;
    let rendered = post(Platform::Mastodon, "Once only");
    let first =
        adapters.publish(Platform::Mastodon, &credentials, &rendered, "pm-post-account").await.unwrap();
    let again =
        adapters.publish(Platform::Mastodon, &credentials, &rendered, "pm-post-account").await.unwrap();
    assert_eq!(first, again, "the same key gives the same status");
    assert_eq!(fakes.attempts(Platform::Mastodon), 2);
    let posts = fakes.posts(Platform::Mastodon);
    assert_eq!(posts.len(), 1, "one status for one key");
    assert_eq!(posts[0].idempotency_key.as_deref(), Some("pm-post-account"));
    assert_eq!(posts[0].body["language"], "en");
    let token = credentials.get("access_token").unwrap();
    let authorization =
        posts[0].headers.iter().find(|(name, _)| name == "authorization").map(|(_, v)| v.as_str());
    assert_eq!(authorization, Some(format!("Bearer {token}").as_str()));

    let other = adapters.publish(Platform::Mastodon, &credentials, &rendered, "pm-other").await.unwrap();
    assert_ne!(other.external_id, first.external_id);
    assert_eq!(fakes.posts(Platform::Mastodon).len(), 2, "another key is another status");
}

#[tokio::test]
async fn a_429_is_rate_limited_with_the_platforms_wait() {
    for platform in ALL {
        let error = refused(platform, Answer::RateLimited { retry_after: Duration::from_secs(30) }).await;
        assert_eq!(error.kind, PublishErrorKind::RateLimited, "{platform:?}: {error:?}");
        assert_eq!(error.http_status, 429, "{platform:?}");
        assert!(error.retryable());
        // Mastodon, Bluesky and Twitch announce a reset time rather than a wait.
        let wait = error.retry_after.unwrap_or_else(|| panic!("{platform:?} said how long: {error:?}"));
        assert!((28..=31).contains(&wait.as_secs()), "{platform:?}: {wait:?}");
    }
    // Discord says it to the millisecond, in its JSON.
    let error =
        refused(Platform::Discord, Answer::RateLimited { retry_after: Duration::from_millis(2500) }).await;
    assert_eq!(error.retry_after, Some(Duration::from_millis(2500)));
}

#[tokio::test]
async fn a_500_is_a_retryable_platform_error() {
    for platform in ALL {
        let error = refused(platform, Answer::ServerError).await;
        assert_eq!(error.kind, PublishErrorKind::PlatformError, "{platform:?}: {error:?}");
        assert_eq!(error.http_status, 500, "{platform:?}");
        assert!(error.retryable(), "{platform:?}");
        let failure = error.to_failure();
        assert!(
            failure.retryable
                && failure.kind == PublishErrorKind::PlatformError as i32
                && failure.http_status == 500
        );
    }
}

#[tokio::test]
async fn a_refused_token_is_unauthorized_and_not_retried() {
    for platform in ALL {
        let error = refused(platform, Answer::Unauthorized).await;
        assert_eq!(error.kind, PublishErrorKind::Unauthorized, "{platform:?}: {error:?}");
        // Slack answers a bad webhook token with 403 `invalid_token`.
        let status = if platform == Platform::Slack { 403 } else { 401 };
        assert_eq!(error.http_status, status, "{platform:?}");
        assert!(!error.retryable() && !error.to_failure().retryable, "{platform:?}");
    }
}

#[tokio::test]
async fn forbidden_and_refused_content_are_final() {
    for platform in ALL {
        let error = refused(platform, Answer::Forbidden).await;
        assert_eq!(
            (error.kind, error.http_status),
            (PublishErrorKind::Forbidden, 403),
            "{platform:?}: {error:?}"
        );
        assert!(!error.retryable());
        let error = refused(platform, Answer::BadRequest).await;
        assert_eq!(error.kind, PublishErrorKind::InvalidContent, "{platform:?}: {error:?}");
        let status = if platform == Platform::Mastodon { 422 } else { 400 };
        assert_eq!(error.http_status, status, "{platform:?}");
        assert!(!error.retryable());
    }
}

#[tokio::test]
async fn a_platform_slower_than_the_timeout_is_a_retryable_timeout() {
    let fakes = FakePlatforms::start().await;
    let patient = Adapters::new(fakes.urls(), TIMEOUT);
    let hasty = Adapters::new(fakes.urls(), Duration::from_millis(300));
    for platform in ALL {
        let credentials = connect(&fakes, &patient, platform).await;
        fakes.script(platform, [Answer::Slow(Duration::from_secs(30))]);
        let error = publish(&hasty, platform, &credentials).await.expect_err("too slow");
        assert_eq!(error.kind, PublishErrorKind::Timeout, "{platform:?}: {error:?}");
        assert_eq!(error.http_status, 0);
        assert!(error.retryable());
    }
}

#[tokio::test]
async fn a_post_accepted_without_an_answer_times_out_yet_is_on_the_platform() {
    let fakes = FakePlatforms::start().await;
    let patient = Adapters::new(fakes.urls(), TIMEOUT);
    let hasty = Adapters::new(fakes.urls(), Duration::from_millis(300));
    let credentials = connect(&fakes, &patient, Platform::Mastodon).await;
    fakes.script(Platform::Mastodon, [Answer::AcceptAndHang]);
    let rendered = post(Platform::Mastodon, "Did it go out?");
    let error = hasty.publish(Platform::Mastodon, &credentials, &rendered, "pm-hang").await.unwrap_err();
    assert_eq!(error.kind, PublishErrorKind::Timeout, "{error:?}");
    let posts = fakes.wait_for_posts(Platform::Mastodon, 1, TIMEOUT).await;
    // The retry with the same key finds the status instead of posting twice.
    let retried = patient.publish(Platform::Mastodon, &credentials, &rendered, "pm-hang").await.unwrap();
    assert_eq!(retried.external_id, posts[0].external_id);
    assert_eq!(fakes.posts(Platform::Mastodon).len(), 1);
}

#[tokio::test]
async fn connect_names_missing_unknown_and_malformed_fields() {
    let (fakes, adapters) = start().await;
    let invalid = |result: Result<_, ConnectError>| match result {
        Err(ConnectError::InvalidField { field, reason }) => (field, reason),
        other => {
            panic!("expected an invalid field, got {:?}", other.map(|c: platforms::Connected| c.external_id))
        }
    };
    let (field, reason) = invalid(adapters.connect(Platform::Discord, Credentials::default()).await);
    assert_eq!((field.as_str(), reason.as_str()), ("webhook_url", "is required"));

    let mut extra = fakes.credentials(Platform::Mastodon);
    extra.insert("password".into(), "hunter2".into());
    let (field, reason) = invalid(adapters.connect(Platform::Mastodon, Credentials(extra)).await);
    assert_eq!(field, "password");
    assert!(reason.contains("instance_url, access_token"), "{reason}");

    let mut missing = fakes.credentials(Platform::Telegram);
    missing.insert("bot_token".into(), "   ".into());
    let (field, reason) = invalid(adapters.connect(Platform::Telegram, Credentials(missing)).await);
    assert_eq!((field.as_str(), reason.as_str()), ("bot_token", "is required"));

    let mut long = fakes.credentials(Platform::Mastodon);
    long.insert("access_token".into(), "x".repeat(4097));
    let (field, reason) = invalid(adapters.connect(Platform::Mastodon, Credentials(long)).await);
    assert_eq!(field, "access_token");
    assert!(reason.contains("4096"), "{reason}");

    let not_a_url = Credentials::from_iter([("webhook_url", "discord.com/api/webhooks/1/abc")]);
    let (field, _) = invalid(adapters.connect(Platform::Discord, not_a_url).await);
    assert_eq!(field, "webhook_url");

    let mut bad_chat = fakes.credentials(Platform::Telegram);
    bad_chat.insert("chat_id".into(), "my channel".into());
    let (field, _) = invalid(adapters.connect(Platform::Telegram, Credentials(bad_chat)).await);
    assert_eq!(field, "chat_id");

    let weak = Credentials::from_iter([("url", "https://example.com/hook"), ("secret", "short")]);
    let (field, _) = invalid(adapters.connect(Platform::Webhook, weak).await);
    assert_eq!(field, "secret");
}

#[tokio::test]
async fn connect_refuses_wrong_credentials_naming_the_field_and_never_echoing_them() {
    let (fakes, adapters) = start().await;
    let tamper = |platform: Platform, field: &str, value: &dyn Fn(&str) -> String| {
        let mut credentials = fakes.credentials(platform);
        let new = value(credentials.get(field).map_or("", String::as_str));
        credentials.insert(field.into(), new);
        Credentials(credentials)
    };
    let wrong_token = |url: &str| format!("{}wrongtoken", &url[..url.rfind('/').unwrap() + 1]);
    let cases = [
        (Platform::Discord, "webhook_url", tamper(Platform::Discord, "webhook_url", &wrong_token)),
        (
            Platform::Mastodon,
            "access_token",
            tamper(Platform::Mastodon, "access_token", &|_| "nope-nope".into()),
        ),
        (
            Platform::Bluesky,
            "app_password",
            tamper(Platform::Bluesky, "app_password", &|_| "aaaa-bbbb-cccc".into()),
        ),
        (
            Platform::Telegram,
            "bot_token",
            tamper(Platform::Telegram, "bot_token", &|_| "42:wrongwrongwrong".into()),
        ),
        (Platform::Telegram, "chat_id", tamper(Platform::Telegram, "chat_id", &|_| "-100999".into())),
        (
            Platform::Twitch,
            "access_token",
            tamper(Platform::Twitch, "access_token", &|_| "wrongwrong".into()),
        ),
        (Platform::Twitch, "broadcaster_id", tamper(Platform::Twitch, "broadcaster_id", &|_| "999".into())),
        (Platform::Twitch, "moderator_id", tamper(Platform::Twitch, "moderator_id", &|_| "998".into())),
    ];
    for (platform, expected, credentials) in cases {
        let secret = credentials.get(expected).unwrap().to_owned();
        match adapters.connect(platform, credentials).await {
            Err(ConnectError::Rejected { field, message }) => {
                assert_eq!(field, expected, "{platform:?}: {message}");
                assert!(!message.is_empty());
                assert!(
                    secret.len() < 6 || !message.contains(&secret),
                    "{platform:?} echoed {field}: {message}"
                );
            }
            other => panic!("{platform:?} {expected}: {:?}", other.map(|c| c.external_id)),
        }
    }
}

#[tokio::test]
async fn connect_reports_the_account_and_what_publishing_needs() {
    let (fakes, adapters) = start().await;
    fakes.set_mastodon_max_characters(1000);
    let mastodon =
        adapters.connect(Platform::Mastodon, Credentials(fakes.credentials(Platform::Mastodon))).await;
    let mastodon = mastodon.unwrap();
    assert_eq!(mastodon.limits.as_ref().unwrap().max_text_length, 1000, "the instance's own limit");
    assert!(mastodon.handle.starts_with("@user") && mastodon.handle.ends_with("@mastodon.example"));
    assert!(!mastodon.external_id.is_empty());

    let discord =
        adapters.connect(Platform::Discord, Credentials(fakes.credentials(Platform::Discord))).await;
    let discord = discord.unwrap();
    assert!(discord.display_name.starts_with("Discord webhook \"Fake webhook"), "{}", discord.display_name);
    assert!(discord.credentials.get("guild_id").is_some(), "kept for post links");

    let twitch = adapters.connect(Platform::Twitch, Credentials(fakes.credentials(Platform::Twitch))).await;
    let twitch = twitch.unwrap();
    assert_eq!(twitch.credentials.get("broadcaster_id"), Some(twitch.external_id.as_str()));
    assert_eq!(twitch.credentials.get("moderator_id"), Some(twitch.external_id.as_str()));
    assert_eq!(twitch.profile_url, format!("https://www.twitch.tv/{}", twitch.handle));

    let telegram =
        adapters.connect(Platform::Telegram, Credentials(fakes.credentials(Platform::Telegram))).await;
    let telegram = telegram.unwrap();
    assert!(telegram.external_id.starts_with('-'), "a channel id: {}", telegram.external_id);
    assert_eq!(telegram.profile_url, format!("https://t.me/{}", telegram.handle));

    let bluesky =
        adapters.connect(Platform::Bluesky, Credentials(fakes.credentials(Platform::Bluesky))).await;
    assert!(bluesky.unwrap().external_id.starts_with("did:plc:"));

    // Slack and webhooks have no check call: identity from the URL, minus
    // the token.
    let slack_credentials = fakes.credentials(Platform::Slack);
    let slack = adapters.connect(Platform::Slack, Credentials(slack_credentials.clone())).await.unwrap();
    let token = slack_credentials["webhook_url"].rsplit('/').next().unwrap();
    assert!(slack.external_id.contains("/slack/services/T") && !slack.external_id.contains(token));
}

#[tokio::test]
async fn an_unreachable_platform_is_a_network_failure_that_never_shows_the_token() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let nowhere = format!("http://{closed}");
    let urls = PlatformUrls {
        telegram: nowhere.clone(),
        twitch: nowhere.clone(),
        twitch_auth: nowhere.clone(),
        bluesky: nowhere,
    };
    let adapters = Adapters::new(urls, TIMEOUT);
    let token = "123456:SECRETsecretSECRETsecret";
    let credentials = Credentials::from_iter([("bot_token", token), ("chat_id", "@fake_channel")]);
    let error = adapters.publish(Platform::Telegram, &credentials, &post(Platform::Telegram, "x"), "k").await;
    let error = error.unwrap_err();
    assert_eq!(error.kind, PublishErrorKind::Network, "{error:?}");
    assert!(error.retryable());
    assert!(!error.message.contains("SECRET"), "{}", error.message);
    match adapters.connect(Platform::Telegram, credentials).await {
        Err(ConnectError::Unavailable(message)) => assert!(!message.contains("SECRET"), "{message}"),
        other => panic!("{:?}", other.map(|c| c.external_id)),
    }
}

#[tokio::test]
async fn media_are_uploaded_or_embedded_and_a_missing_file_is_a_media_failure() {
    let (fakes, adapters) = start().await;
    let media = |name: &str| MediaReference {
        url: format!("{}/media/{name}", fakes.base_url()),
        mime_type: "image/png".into(),
        alt_text: "A cat".into(),
    };
    for platform in [Platform::Mastodon, Platform::Bluesky, Platform::Discord] {
        let credentials = connect(&fakes, &adapters, platform).await;
        let mut rendered = post(platform, "With a picture");
        rendered.media = vec![media("cat.png")];
        adapters.publish(platform, &credentials, &rendered, "k").await.unwrap_or_else(|e| panic!("{e:?}"));
        let body = &fakes.posts(platform)[0].body;
        match platform {
            Platform::Mastodon => assert_eq!(body["media_ids"].as_array().map(Vec::len), Some(1), "{body}"),
            Platform::Bluesky => {
                let image = &body["record"]["embed"]["images"][0];
                assert_eq!(body["record"]["embed"]["$type"], "app.bsky.embed.images");
                assert_eq!(image["alt"], "A cat");
                assert_eq!(image["image"]["mimeType"], "image/png", "{image}");
            }
            _ => assert_eq!(body["embeds"][0]["image"]["url"], media("cat.png").url.as_str()),
        }
        if platform != Platform::Discord {
            rendered.media = vec![media("missing.png")];
            let error = adapters.publish(platform, &credentials, &rendered, "k2").await.unwrap_err();
            assert_eq!((error.kind, error.http_status), (PublishErrorKind::Media, 404), "{error:?}");
            assert!(!error.retryable());
        }
    }
}

#[tokio::test]
async fn bluesky_reuses_its_session_and_replaces_an_expired_one() {
    let (fakes, adapters) = start().await;
    let credentials = connect(&fakes, &adapters, Platform::Bluesky).await;
    publish(&adapters, Platform::Bluesky, &credentials).await.unwrap();
    publish(&adapters, Platform::Bluesky, &credentials).await.unwrap();
    assert_eq!(fakes.bluesky_sessions_opened(), 1, "connect's session serves the publishes");
    fakes.expire_bluesky_sessions();
    publish(&adapters, Platform::Bluesky, &credentials).await.unwrap();
    assert_eq!(fakes.bluesky_sessions_opened(), 2);
    assert_eq!(fakes.posts(Platform::Bluesky).len(), 3);
}

#[tokio::test]
async fn webhooks_are_signed_the_standard_webhooks_way() {
    // The test vector of the Standard Webhooks specification.
    let signature = webhook_signature(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1_614_265_330,
        br#"{"test": 2432232314}"#,
    );
    assert_eq!(signature.as_deref(), Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));

    let (fakes, adapters) = start().await;
    let credentials = connect(&fakes, &adapters, Platform::Webhook).await;
    let mut rendered = post(Platform::Webhook, "Signed");
    rendered.media =
        vec![MediaReference { url: "https://example.com/a.png".into(), ..MediaReference::default() }];
    adapters.publish(Platform::Webhook, &credentials, &rendered, "pm-post-acct").await.unwrap();
    let received = &fakes.posts(Platform::Webhook)[0];
    assert_eq!(received.idempotency_key.as_deref(), Some("pm-post-acct"), "the message id is the key");
    assert_eq!(received.body["id"], "pm-post-acct");
    assert_eq!(received.body["idempotency_key"], "pm-post-acct");
    assert_eq!(received.body["language"], "en");
    assert_eq!(received.body["media"][0]["url"], "https://example.com/a.png");

    // Signed with another key: the receiver refuses it.
    let mut wrong = credentials.clone();
    wrong.0.insert("secret".into(), "another-secret-of-some-length".into());
    let error = adapters.publish(Platform::Webhook, &wrong, &rendered, "pm-x").await.unwrap_err();
    assert_eq!((error.kind, error.http_status), (PublishErrorKind::Unauthorized, 401), "{error:?}");
}

#[tokio::test]
async fn slack_and_twitch_get_their_own_shapes() {
    let (fakes, adapters) = start().await;
    let slack = connect(&fakes, &adapters, Platform::Slack).await;
    let text = "*Launch* <https://example.com|news>";
    adapters.publish(Platform::Slack, &slack, &post(Platform::Slack, text), "k").await.unwrap();
    assert_eq!(fakes.posts(Platform::Slack)[0].body, serde_json::json!({ "text": text }));

    let twitch = connect(&fakes, &adapters, Platform::Twitch).await;
    adapters.publish(Platform::Twitch, &twitch, &post(Platform::Twitch, "Live now"), "k").await.unwrap();
    let received = &fakes.posts(Platform::Twitch)[0];
    assert_eq!(received.body, serde_json::json!({ "message": "Live now" }));
    let client_id = received.headers.iter().find(|(name, _)| name == "client-id").map(|(_, v)| v.as_str());
    assert_eq!(client_id, twitch.get("client_id"));
}

#[test]
fn retry_after_is_read_as_seconds_or_as_a_date() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_400); // 2015-10-21 07:26:40 UTC
    assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
    assert_eq!(parse_retry_after("1.5", now), Some(Duration::from_millis(1500)));
    assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(80)));
    assert_eq!(parse_retry_after("2015-10-21T07:27:00.500000Z", now), Some(Duration::from_millis(20_500)));
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
        Some(Duration::ZERO),
        "past: no wait"
    );
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-3", now), None);
}

#[test]
fn credentials_debug_shows_names_only() {
    let credentials = Credentials::from_iter([("access_token", "very-secret-value")]);
    let printed = format!("{credentials:?}");
    assert!(printed.contains("access_token") && !printed.contains("very-secret-value"), "{printed}");
}

//! The HTTP/JSON gateway, end to end. `postmesh dev` serves the real
//! services; where a test must see exactly what reaches a service, or an
//! answer no built service gives yet, `postmesh serve gateway` stands in
//! front of the [`StandIn`] (user calls still go to a real `dev`).

use std::time::Duration;

use futures::StreamExt;
use postmesh_kit::auth::{Claims, TokenKind};
use postmesh_kit::testing::{TestEnv, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Api, PASSWORD, Process, dev, sign_up};
use crate::openapi::PUBLIC_ROUTES;
use crate::standin::StandIn;

const SECRET: &str = "gateway-tests-service-secret-at-least-32-chars";

/// `postmesh serve gateway` in front of the stand-in, with the real user
/// service of a `dev` process.
struct Fronted {
    _dev: Process,
    _gateway: Process,
    api: Api,
    dev_api: Api,
    standin: StandIn,
}

async fn fronted(env: &TestEnv, vars: &[(&str, &str)]) -> Fronted {
    let dev = Process::start(env, &["dev"]);
    let standin = StandIn::default();
    let standin_url = format!("http://{}", standin.start().await);
    let mut all = vec![
        ("POSTMESH_USER_URL", dev.grpc_url()),
        ("POSTMESH_CONTENT_URL", standin_url.clone()),
        ("POSTMESH_AI_URL", standin_url.clone()),
        ("POSTMESH_NOTIFICATION_URL", standin_url.clone()),
        ("POSTMESH_WEBHOOK_URL", standin_url),
    ];
    all.extend(vars.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gateway = Process::start_with(env, &["serve", "gateway"], &all);
    let api = Api::new(gateway.http.expect("serves HTTP"));
    let dev_api = Api::new(dev.http.expect("dev serves HTTP"));
    Fronted { _dev: dev, _gateway: gateway, api, dev_api, standin }
}

async fn secret_env() -> TestEnv {
    TestEnv::with(&[("POSTMESH_AUTH_SERVICE_SECRET", SECRET)]).await
}

#[tokio::test]
async fn unknown_routes_methods_parameters_and_bodies_are_refused_clearly() {
    let env = TestEnv::new().await;
    let (_dev, api) = dev(&env, &[]);
    let account = sign_up(&api, "strict").await;
    let token = Some(account.token.as_str());

    let answer = api.call(Method::GET, "/api/nothing/here", token, None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.body["code"], "NOT_FOUND");
    assert!(answer.body["message"].as_str().unwrap().contains("/api/nothing/here"));

    let answer = api.call(Method::PATCH, "/api/users/profile", token, Some(json!({}))).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    let mut allowed: Vec<&str> = answer.header("allow").split(", ").collect();
    allowed.sort();
    assert_eq!(allowed, ["DELETE", "GET", "PUT"], "GET/PUT profile and GET/DELETE users/{{id}}");

    let answer = api.call(Method::GET, "/api/users/profile?verbose=true", token, None).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.violated_field(), "verbose");

    let answer = api
        .send(api.request(Method::GET, "/api/users/api-keys?page_size=ten").bearer_auth(&account.token))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.violated_field(), "page_size", "{}", answer.body);

    let malformed = api
        .request(Method::POST, "/api/users/login")
        .header("content-type", "application/json")
        .body(r#"{"email": "a@example.com", "password": "#);
    let answer = api.send(malformed).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.violated_field(), "body");
    assert!(answer.body["message"].as_str().unwrap().contains("malformed JSON"));

    let answer =
        api.call(Method::POST, "/api/users/login", None, Some(json!({ "email": 42, "password": "x" }))).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.violated_field(), "email");

    let answer = api
        .call(Method::PUT, "/api/users/profile", token, Some(json!({ "display_name": "x", "shoe_size": 44 })))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.violated_field(), "shoe_size", "{}", answer.body);

    let form = api
        .request(Method::POST, "/api/users/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("email=a%40example.com");
    let answer = api.send(form).await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(answer.violated_field(), "Content-Type");

    let answer = api
        .send(api.request(Method::GET, "/api/users/profile").bearer_auth(&account.token).body("surprise"))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "a GET route takes no body");

    // 10 MiB is the limit: one byte more is refused, whether announced
    // or streamed without a length.
    let oversized = vec![b' '; 10 * 1024 * 1024 + 1];
    let answer = api
        .send(
            api.request(Method::POST, "/api/users/login")
                .header("content-type", "application/json")
                .body(oversized.clone()),
        )
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    let chunks = futures::stream::iter(
        oversized.chunks(1 << 20).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>(),
    );
    let answer = api
        .send(
            api.request(Method::POST, "/api/users/login")
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(chunks)),
        )
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Nothing of the refused requests reached a service: the account is
    // as it was.
    let answer = api.call(Method::GET, "/api/users/profile", token, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["user"]["display_name"], "strict");
}

#[tokio::test]
async fn requests_are_built_from_path_query_and_body() {
    let env = secret_env().await;
    let setup = fronted(&env, &[]).await;
    let account = sign_up(&setup.dev_api, "transcode").await;
    let api = &setup.api;

    // Repeated keys, enum names and numbers, a timestamp, an int: all
    // typed correctly in the request the service gets.
    let path = "/api/content/posts?statuses=POST_STATUS_DRAFT&statuses=2&platforms=PLATFORM_MASTODON\
                &start_at=2026-01-02T03:04:05Z&page_size=5&page_token=abc";
    let answer = api.call(Method::GET, path, Some(&account.token), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let request = setup.standin.last("ListPosts").list_posts.unwrap();
    use postmesh_proto::postmesh::content::v1::PostStatus;
    assert_eq!(request.statuses, [PostStatus::Draft as i32, PostStatus::Scheduled as i32]);
    assert_eq!(request.platforms.len(), 1);
    assert_eq!(request.start_at.unwrap().seconds, 1_767_323_045);
    assert_eq!((request.page_size, request.page_token.as_str()), (5, "abc"));
    // The answer uses proto field names, enum names and omits defaults.
    assert_eq!(answer.body["posts"][0]["status"], "POST_STATUS_SCHEDULED");
    assert_eq!(answer.body["next_page_token"], "next");
    assert!(answer.body["posts"][0].get("workspace_id").is_none());

    // PUT with `body: "post"`: the id comes from the path, the fields from
    // the body, and the update mask from the fields present.
    let body = json!({ "text": "new text", "publishAt": "2026-05-01T10:00:00Z" });
    let answer = api.call(Method::PUT, "/api/content/posts/p%2042", Some(&account.token), Some(body)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let request = setup.standin.last("UpdatePost").update_post.unwrap();
    assert_eq!(request.id, "p 42");
    assert_eq!(request.post.as_ref().unwrap().text, "new text");
    let mut mask = request.update_mask.unwrap().paths;
    mask.sort();
    assert_eq!(mask, ["publish_at", "text"]);

    // An explicit mask in the query wins over the body's fields.
    let body = json!({ "text": "only the text", "draft": true });
    let answer = api
        .call(Method::PUT, "/api/content/posts/p1?update_mask=text", Some(&account.token), Some(body))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(setup.standin.last("UpdatePost").update_post.unwrap().update_mask.unwrap().paths, ["text"]);

    // A query parameter may not set what the path sets.
    let answer =
        api.call(Method::PUT, "/api/content/posts/p1?id=p2", Some(&account.token), Some(json!({}))).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.violated_field(), "id");
}

#[tokio::test]
async fn real_service_errors_map_to_http_statuses_with_details() {
    let env = TestEnv::new().await;
    let (_dev, api) = dev(&env, &[]);
    let account = sign_up(&api, "errors").await;

    let bad = json!({ "email": "not-an-email", "password": "short", "display_name": "x" });
    let answer = api.call(Method::POST, "/api/users/register", None, Some(bad)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["code"], "INVALID_ARGUMENT");
    let fields: Vec<&str> = answer.body["details"][0]["field_violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"email") && fields.contains(&"password"), "{fields:?}");
    assert_eq!(answer.body["details"][0]["@type"], "type.googleapis.com/google.rpc.BadRequest");

    let profile = api.call(Method::GET, "/api/users/profile", Some(&account.token), None).await;
    let email = profile.body["user"]["email"].as_str().unwrap().to_owned();
    let again = json!({ "email": email, "password": PASSWORD, "display_name": "again" });
    let answer = api.call(Method::POST, "/api/users/register", None, Some(again)).await;
    assert_eq!((answer.status, answer.body["code"].as_str()), (StatusCode::CONFLICT, Some("ALREADY_EXISTS")));

    let path = format!("/api/users/{}", uuid::Uuid::now_v7());
    let answer = api.call(Method::GET, &path, Some(&account.token), None).await;
    assert_eq!((answer.status, answer.body["code"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND")));

    // A service whose issue has not landed yet.
    let answer = api.call(Method::GET, "/api/analytics/dashboard", Some(&account.token), None).await;
    assert_eq!(
        (answer.status, answer.body["code"].as_str()),
        (StatusCode::NOT_IMPLEMENTED, Some("UNIMPLEMENTED"))
    );

    // A deadline the caller gives that has already run out.
    let answer = api
        .send(
            api.request(Method::GET, "/api/users/profile")
                .bearer_auth(&account.token)
                .header("grpc-timeout", "1n"),
        )
        .await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{}", answer.body);

    // Failed logins from one address are throttled by the user service;
    // its retry info becomes Retry-After.
    let wrong = json!({ "email": email, "password": "wrong-password-123" });
    let throttled = eventually(Duration::from_secs(10), || async {
        let answer = api.call(Method::POST, "/api/users/login", None, Some(wrong.clone())).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(answer.header("retry-after").parse::<u64>().unwrap() >= 1);
            assert_eq!(answer.body["code"], "RESOURCE_EXHAUSTED");
            return true;
        }
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
        false
    })
    .await;
    assert!(throttled, "repeated failed logins are throttled");
}

#[tokio::test]
async fn every_grpc_code_maps_by_the_standard_table() {
    let env = secret_env().await;
    let setup = fronted(&env, &[]).await;
    let account = sign_up(&setup.dev_api, "table").await;
    let api = &setup.api;
    let expected = [
        (1, 499),
        (2, 500),
        (3, 400),
        (4, 504),
        (5, 404),
        (6, 409),
        (7, 403),
        (8, 429),
        (9, 400),
        (10, 409),
        (11, 400),
        (12, 501),
        (13, 500),
        (14, 503),
        (15, 500),
        (16, 401),
    ];
    for (code, http) in expected {
        let body = json!({ "text": format!("code:{code}") });
        let answer =
            api.call(Method::POST, "/api/ai/analyze/sentiment", Some(&account.token), Some(body)).await;
        assert_eq!(answer.status.as_u16(), http, "gRPC code {code}: {}", answer.body);
        assert!(answer.body["code"].is_string() && answer.body["details"].is_array());
        if matches!(code, 2 | 13 | 15) {
            assert_eq!(answer.body["message"], "internal error", "internal errors are opaque");
        } else {
            assert_eq!(answer.body["message"], format!("stand-in answers {code}"));
        }
        if code == 16 {
            assert!(answer.header("www-authenticate").starts_with("Bearer"));
        }
    }

    let answer = api
        .call(
            Method::POST,
            "/api/ai/analyze/sentiment",
            Some(&account.token),
            Some(json!({ "text": "secret" })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!answer.body.to_string().contains("hunter2"), "no secret leaks: {}", answer.body);

    let answer = api
        .call(
            Method::POST,
            "/api/ai/analyze/sentiment",
            Some(&account.token),
            Some(json!({ "text": "bad-field" })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.violated_field(), "text");
    assert_eq!(answer.body["details"][0]["field_violations"][0]["description"], "too short");

    let answer = api
        .call(
            Method::POST,
            "/api/ai/analyze/sentiment",
            Some(&account.token),
            Some(json!({ "text": "slow-down" })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.header("retry-after"), "3", "2.5 s rounded up");
    assert_eq!(answer.body["details"][0]["@type"], "type.googleapis.com/google.rpc.RetryInfo");
    assert_eq!(answer.body["details"][0]["retry_delay"], "2.500s");
}

#[tokio::test]
async fn callers_authenticate_with_tokens_or_api_keys_and_revocation_is_immediate() {
    let env = TestEnv::new().await;
    let (_dev, api) = dev(&env, &[]);
    let account = sign_up(&api, "auth").await;

    let answer = api.call(Method::GET, "/api/users/profile", None, None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.header("www-authenticate"), "Bearer realm=\"postmesh\"");

    let answer = api.call(Method::GET, "/api/users/profile", Some("not.a.jwt"), None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.header("www-authenticate").contains("error=\"invalid_token\""));

    // A token signed with the right key but expired.
    let auth = postmesh_kit::testing::auth(&env).await;
    let mut claims =
        Claims::new(auth.settings(), TokenKind::Access, &account.user_id, Duration::from_secs(60));
    claims.exp -= 3600;
    claims.nbf -= 3600;
    claims.iat -= 3600;
    let expired = auth.key_ring().unwrap().sign(&claims);
    let answer = api.call(Method::GET, "/api/users/profile", Some(&expired), None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.body["message"].as_str().unwrap().contains("expired"), "{}", answer.body);

    let answer = api
        .call(
            Method::POST,
            "/api/users/api-keys",
            Some(&account.token),
            Some(json!({ "name": "ci", "scopes": ["members:read"] })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let key = answer.body["secret"].as_str().unwrap().to_owned();
    let key_id = answer.body["api_key"]["id"].as_str().unwrap().to_owned();
    let own = format!("/api/users/{}", account.user_id);

    // Both ways of presenting a key work, as long as its scope allows.
    let by_bearer = api.call(Method::GET, &own, Some(&key), None).await;
    assert_eq!(by_bearer.status, StatusCode::OK, "{}", by_bearer.body);
    let by_header = api.send(api.request(Method::GET, &own).header("x-api-key", &key)).await;
    assert_eq!(by_header.status, StatusCode::OK);
    let answer = api.send(api.request(Method::GET, "/api/users/api-keys").header("x-api-key", &key)).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "the key may only read members");

    // Revoked: refused on the next request, cache or not.
    let answer =
        api.call(Method::DELETE, &format!("/api/users/api-keys/{key_id}"), Some(&account.token), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let answer = api.send(api.request(Method::GET, &own).header("x-api-key", &key)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    // Logging out revokes the session's access token at once too.
    let answer = api.call(Method::GET, "/api/users/profile", Some(&account.token), None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = api.call(Method::POST, "/api/users/logout", Some(&account.token), Some(json!({}))).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let answer = api.call(Method::GET, "/api/users/profile", Some(&account.token), None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn services_get_an_internal_token_and_allowed_headers_never_raw_credentials() {
    let env = secret_env().await;
    let setup = fronted(&env, &[]).await;
    let account = sign_up(&setup.dev_api, "forward").await;
    let api = &setup.api;

    let request = api
        .request(Method::GET, "/api/content/posts")
        .bearer_auth(&account.token)
        .header("x-request-id", "req-forward-1")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .header("accept-language", "de-CH")
        .header("idempotency-key", "idem-1")
        .header("cookie", "session=secret")
        .header("x-internal-debug", "1");
    let answer = api.send(request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-request-id"), "req-forward-1", "echoed");
    let metadata = setup.standin.last("ListPosts").metadata;
    let get = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert_eq!(get("x-request-id"), "req-forward-1");
    assert!(get("traceparent").starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "same trace");
    assert_eq!(get("accept-language"), "de-CH");
    assert_eq!(get("idempotency-key"), "idem-1");
    assert!(metadata.get("cookie").is_none() && metadata.get("x-internal-debug").is_none());
    let authorization = get("authorization");
    assert!(!authorization.contains(&account.token), "the caller's token is not forwarded");
    let payload = authorization.strip_prefix("Bearer ").unwrap().split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap())
            .unwrap();
    assert_eq!(claims["typ"], "internal");
    assert_eq!(claims["sub"], account.user_id.as_str());

    // Without an id the gateway makes one, and sends it both ways.
    let answer = api.call(Method::GET, "/api/content/posts", Some(&account.token), None).await;
    let generated = answer.header("x-request-id").to_owned();
    assert!(!generated.is_empty());
    let forwarded =
        setup.standin.last("ListPosts").metadata.get("x-request-id").unwrap().to_str().unwrap().to_owned();
    assert_eq!(forwarded, generated);
}

#[tokio::test]
async fn inbound_webhooks_reach_the_service_byte_for_byte() {
    let env = secret_env().await;
    let setup = fronted(&env, &[]).await;
    let api = &setup.api;

    // Odd spacing, key order and escapes: a signature over these bytes
    // only verifies if they arrive untouched.
    let raw = b"{ \"type\":\"stream.online\" ,\n  \"n\": 1.50, \"s\":\"\\u00e9\" }".to_vec();
    let request = api
        .request(Method::POST, "/api/webhooks/inbound/src-1")
        .header("content-type", "application/json; charset=utf-8")
        .header("webhook-id", "msg_1")
        .header("webhook-timestamp", "1767323045")
        .header("webhook-signature", "v1,c2lnbmF0dXJl")
        .body(raw.clone());
    let answer = api.send(request).await;
    assert_eq!(answer.status, StatusCode::OK, "public, no credential needed: {}", answer.body);
    assert_eq!(answer.body["event_id"], "evt-1");
    let seen = setup.standin.last("ReceiveInboundWebhook");
    let inbound = seen.inbound.unwrap();
    assert_eq!(inbound.source, "src-1");
    let body = inbound.body.unwrap();
    assert_eq!(body.data, raw);
    assert_eq!(body.content_type, "application/json; charset=utf-8");
    for (name, value) in [
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", "1767323045"),
        ("webhook-signature", "v1,c2lnbmF0dXJl"),
    ] {
        assert_eq!(seen.metadata.get(name).unwrap().to_str().unwrap(), value);
    }
    // The gateway vouches for the client address with its own token.
    assert!(seen.metadata.get("authorization").is_some());
    assert!(seen.metadata.get("x-forwarded-for").is_some());

    // Twitch's verification challenge is answered raw, as text/plain.
    let challenge = r#"{"challenge":"pogchamp-kappa-360noscope-vohiyo","subscription":{}}"#;
    let request = api
        .request(Method::POST, "/api/webhooks/twitch")
        .header("content-type", "application/json")
        .header("twitch-eventsub-message-type", "webhook_callback_verification")
        .body(challenge);
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.text().await.unwrap(), "pogchamp-kappa-360noscope-vohiyo");
    let seen = setup.standin.last("ReceiveTwitchEvent");
    assert_eq!(seen.metadata.get("twitch-eventsub-message-type").unwrap(), "webhook_callback_verification");
}

/// Reads SSE events (`id`, `event`, `data`) from a response body.
struct Events {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl Events {
    fn new(response: reqwest::Response) -> Self {
        Self { stream: response.bytes_stream().boxed(), buffer: String::new() }
    }

    /// The next event that has data (comments are skipped).
    async fn next(&mut self) -> Option<(Option<String>, Option<String>, String)> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, None, Vec::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.trim_start().to_owned());
                    }
                }
                if !data.is_empty() {
                    return Some((id, event, data.join("\n")));
                }
            }
            let chunk =
                tokio::time::timeout(Duration::from_secs(20), self.stream.next()).await.ok()??.ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn server_streams_arrive_as_server_sent_events_or_ndjson() {
    let env = secret_env().await;
    let setup = fronted(&env, &[]).await;
    let account = sign_up(&setup.dev_api, "stream").await;
    let api = &setup.api;

    let response = api
        .request(Method::GET, "/api/notifications/stream")
        .bearer_auth(&account.token)
        .header("accept", "text/event-stream")
        .header("last-event-id", "41")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut events = Events::new(response);
    let (id, _, data) = events.next().await.expect("first event");
    assert_eq!(id.as_deref(), Some("1"));
    assert_eq!(serde_json::from_str::<Value>(&data).unwrap()["notification"]["title"], "first");
    assert_eq!(events.next().await.unwrap().0.as_deref(), Some("2"));
    let (id, _, data) = events.next().await.expect("heartbeat");
    assert_eq!(id, None, "heartbeats carry no id");
    assert!(serde_json::from_str::<Value>(&data).unwrap().get("heartbeat").is_some());
    // Live: the third event only exists once released, and still arrives.
    setup.standin.release.notify_one();
    let (id, _, data) = events.next().await.expect("live event");
    assert_eq!(id.as_deref(), Some("3"));
    assert_eq!(serde_json::from_str::<Value>(&data).unwrap()["notification"]["title"], "third");
    let seen = setup.standin.last("StreamNotifications");
    assert_eq!(seen.metadata.get("last-event-id").unwrap(), "41", "Last-Event-ID is forwarded");

    // Without `Accept: text/event-stream`: one JSON object per line, and a
    // failure mid-stream as a last `error` line.
    let response = api
        .request(Method::GET, "/api/notifications/stream?topics=fail")
        .bearer_auth(&account.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    setup.standin.release.notify_one();
    let text = tokio::time::timeout(Duration::from_secs(20), response.text()).await.unwrap().unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0]["event_id"], "1");
    assert_eq!(lines[3]["error"]["code"], "UNAVAILABLE");
    assert_eq!(setup.standin.last("StreamNotifications").stream.unwrap().topics, ["fail"]);
}

#[tokio::test]
async fn rate_limits_are_reached_and_recovered_per_caller() {
    let env = TestEnv::new().await;
    let (_dev, api) = dev(&env, &[("POSTMESH_GATEWAY_RATE_LIMITS", "*=3/3s,POST /api/users/register=off")]);
    let first = sign_up(&api, "limited").await;
    let second = sign_up(&api, "unlimited").await;

    let mut remaining = Vec::new();
    for _ in 0..3 {
        let answer = api.call(Method::GET, "/api/users/profile", Some(&first.token), None).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("ratelimit-limit"), "3");
        assert_eq!(answer.header("ratelimit-policy"), "3;w=3");
        remaining.push(answer.header("ratelimit-remaining").to_owned());
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let refused = api.call(Method::GET, "/api/users/profile", Some(&first.token), None).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.body["code"], "RESOURCE_EXHAUSTED");
    let retry_after: u64 = refused.header("retry-after").parse().unwrap();
    assert!((1..=3).contains(&retry_after), "{retry_after}");

    // Another caller has a budget of its own.
    let answer = api.call(Method::GET, "/api/users/profile", Some(&second.token), None).await;
    assert_eq!(answer.status, StatusCode::OK);

    // After Retry-After the first caller is served again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let answer = api.call(Method::GET, "/api/users/profile", Some(&first.token), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
}

#[tokio::test]
async fn browsers_compression_and_operations_endpoints_work() {
    let env = TestEnv::new().await;
    let (_dev, api) = dev(&env, &[("POSTMESH_GATEWAY_CORS_ORIGINS", "https://app.example.com")]);

    let preflight = api
        .request(Method::OPTIONS, "/api/users/profile")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "authorization,content-type");
    let answer = api.send(preflight).await;
    assert!(answer.status.is_success(), "{}", answer.status);
    assert_eq!(answer.header("access-control-allow-origin"), "https://app.example.com");
    assert!(answer.header("access-control-allow-methods").contains("PUT"));
    let stranger = api
        .request(Method::OPTIONS, "/api/users/profile")
        .header("origin", "https://evil.example.com")
        .header("access-control-request-method", "PUT");
    assert!(api.send(stranger).await.headers.get("access-control-allow-origin").is_none());

    for encoding in ["gzip", "br"] {
        let request = api.request(Method::GET, "/.well-known/jwks.json").header("accept-encoding", encoding);
        let response = request.send().await.unwrap();
        assert_eq!(response.headers()["content-encoding"], encoding);
    }

    let jwks = api.call(Method::GET, "/.well-known/jwks.json", None, None).await;
    assert_eq!(jwks.status, StatusCode::OK);
    let key = &jwks.body["keys"][0];
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str(), key["alg"].as_str()),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );

    let account = sign_up(&api, "metrics").await;
    api.call(Method::GET, "/api/users/profile", Some(&account.token), None).await;
    let metrics = api.http.get(format!("{}/metrics", api.base)).send().await.unwrap().text().await.unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("postmesh_gateway_requests_total")
                && l.contains("route=\"GET /api/users/profile\"")
                && l.contains("status=\"2xx\"")
        })
        .unwrap_or_else(|| panic!("per-route counter in:\n{metrics}"));
    assert_eq!(line.rsplit(' ').next(), Some("1"), "{line}");
    assert!(metrics.contains("postmesh_gateway_request_duration_seconds_bucket"), "latency histogram");
}

#[tokio::test]
async fn readiness_needs_every_backend_serving() {
    let env = secret_env().await;
    let dev = Process::start(&env, &["dev"]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // Every backend runs in `dev`, except content, which is nowhere.
    let mut vars: Vec<(String, String)> = ["user", "social", "analytics", "ai", "notification", "webhook"]
        .iter()
        .map(|name| (format!("POSTMESH_{}_URL", name.to_uppercase()), dev.grpc_url()))
        .collect();
    vars.push(("POSTMESH_CONTENT_URL".into(), format!("http://{closed}")));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gateway = Process::start_with(&env, &["serve", "gateway"], &vars);
    let admin = gateway.admin.expect("admin port");
    let http = gateway.http.unwrap();

    let (status, report) = crate::helpers::get_json(admin, "/health/detailed").await;
    assert_eq!(status, 503, "{report}");
    assert_eq!(report["dependencies"]["backend:content"]["ok"], false);
    for name in ["user", "social", "analytics", "ai", "notification", "webhook"] {
        assert_eq!(report["dependencies"][format!("backend:{name}")]["ok"], true, "{name}: {report}");
    }
    assert_eq!(crate::helpers::get_json(http, "/health/ready").await.0, 503);
    assert_eq!(crate::helpers::get_json(http, "/health/live").await.0, 200);

    // A call to the missing backend fails fast with 503 and retry advice.
    let api = Api::new(http);
    let account = sign_up(&api, "ready").await;
    let answer = api.call(Method::GET, "/api/content/posts", Some(&account.token), None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.body);
    assert!(answer.headers.contains_key("retry-after"));

    assert_eq!(
        crate::helpers::get_json(dev.http.unwrap(), "/health/ready").await.0,
        200,
        "dev runs every backend"
    );
}

#[tokio::test]
async fn every_public_route_answers_through_the_gateway() {
    let env = TestEnv::new().await;
    let (_dev, api) = dev(&env, &[]);
    let account = sign_up(&api, "routes").await;
    let id = uuid::Uuid::now_v7().to_string();
    // Every route of ROUTES.md; logout last, as it ends the session the
    // other calls use.
    let logout = ("POST", "/api/users/logout");
    let routes = PUBLIC_ROUTES.iter().copied().filter(|route| *route != logout).chain([logout]);
    for (method, path) in routes {
        let path = path.replace("{id}", &id).replace("{source}", "routes");
        let method: Method = method.parse().unwrap();
        let mut request = api.request(method.clone(), &path).bearer_auth(&account.token);
        if method == Method::POST || method == Method::PUT {
            request = request.json(&json!({}));
        }
        let answer = api.send(request).await;
        // The route exists and reached its service (or the gateway's own
        // handler) with the caller's identity: whatever the service says,
        // it is not "no such route" nor "sign in first".
        let message = answer.body["message"].as_str().unwrap_or("");
        assert!(
            answer.status != StatusCode::METHOD_NOT_ALLOWED
                && !message.starts_with("no route")
                && !message.starts_with("sign in first"),
            "{method} {path}: {} {}",
            answer.status,
            answer.body
        );
    }
}

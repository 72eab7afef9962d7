//! The OpenAPI document the gateway serves: valid OpenAPI 3.1, complete
//! (every route of the contract and of `shared/ROUTES.md`), and saying what
//! the gateway does (access, streams, raw bodies, proto comments).

use std::collections::{BTreeSet, HashSet};

use postmesh_kit::auth::{MethodRule, MethodRules};
use postmesh_kit::testing::TestEnv;
use postmesh_transcoder::routes::RouteTable;
use prost_reflect::DescriptorPool;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::helpers::{Process, get_json};

/// Every route of `shared/ROUTES.md` (method and path, as written there).
pub const PUBLIC_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/users/register"),
    ("POST", "/api/users/login"),
    ("POST", "/api/users/login/verify"),
    ("POST", "/api/users/token/refresh"),
    ("POST", "/api/users/logout"),
    ("GET", "/api/users/profile"),
    ("PUT", "/api/users/profile"),
    ("GET", "/api/users/{id}"),
    ("DELETE", "/api/users/{id}"),
    ("POST", "/api/users/2fa/enroll"),
    ("POST", "/api/users/2fa/confirm"),
    ("POST", "/api/users/api-keys"),
    ("GET", "/api/users/api-keys"),
    ("DELETE", "/api/users/api-keys/{id}"),
    ("POST", "/api/content/posts"),
    ("GET", "/api/content/posts"),
    ("GET", "/api/content/posts/{id}"),
    ("PUT", "/api/content/posts/{id}"),
    ("DELETE", "/api/content/posts/{id}"),
    ("GET", "/api/content/posts/{id}/status"),
    ("POST", "/api/content/templates"),
    ("GET", "/api/content/templates"),
    ("GET", "/api/content/analytics"),
    ("GET", "/api/social/platforms"),
    ("POST", "/api/social/connect"),
    ("GET", "/api/social/accounts"),
    ("POST", "/api/social/publish"),
    ("GET", "/api/social/metrics"),
    ("GET", "/api/analytics/dashboard"),
    ("GET", "/api/analytics/posts/{id}/performance"),
    ("GET", "/api/analytics/audience"),
    ("GET", "/api/analytics/trends"),
    ("POST", "/api/analytics/reports"),
    ("POST", "/api/ai/generate/content"),
    ("POST", "/api/ai/analyze/sentiment"),
    ("POST", "/api/ai/optimize/hashtags"),
    ("POST", "/api/ai/schedule/optimal"),
    ("GET", "/api/ai/models/status"),
    ("POST", "/api/notifications/send"),
    ("GET", "/api/notifications/user/{id}"),
    ("PUT", "/api/notifications/{id}/read"),
    ("POST", "/api/notifications/subscribe"),
    ("GET", "/api/notifications/stream"),
    ("POST", "/api/webhooks/register"),
    ("POST", "/api/webhooks/trigger"),
    ("GET", "/api/webhooks/logs"),
    ("PUT", "/api/webhooks/{id}/retry"),
    ("POST", "/api/webhooks/twitch"),
    ("POST", "/api/webhooks/inbound/{source}"),
    ("GET", "/health"),
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/health/detailed"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/.well-known/jwks.json"),
];

/// The document `postmesh dev` serves. It depends on nothing but the
/// binary, so the tests share one fetch.
async fn served_document() -> &'static Value {
    static DOCUMENT: OnceCell<Value> = OnceCell::const_new();
    DOCUMENT
        .get_or_init(|| async {
            let env = TestEnv::new().await;
            let process = Process::start(&env, &["dev"]);
            let (status, document) =
                get_json(process.http.expect("dev serves the gateway"), "/openapi.json").await;
            assert_eq!(status, 200, "{document}");
            document
        })
        .await
}

fn operation<'a>(document: &'a Value, method: &str, path: &str) -> &'a Value {
    let operation = &document["paths"][path][method.to_ascii_lowercase()];
    assert!(operation.is_object(), "{method} {path} is not in the document");
    operation
}

/// Every `$ref` in `value`, with where it was found.
fn references<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(object) => {
            for (key, item) in object {
                match (key.as_str(), item) {
                    ("$ref", Value::String(target)) => out.push((at.clone(), target.as_str())),
                    _ => references(item, format!("{at}/{key}"), out),
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                references(item, format!("{at}/{index}"), out);
            }
        }
        _ => {}
    }
}

/// A path with every `{variable}` as `{}`.
fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut in_variable = false;
    for c in path.chars() {
        match c {
            '{' => in_variable = true,
            '}' => {
                in_variable = false;
                out.push_str("{}");
            }
            c if !in_variable => out.push(c),
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn openapi_document_is_valid_openapi_3_1_and_every_ref_resolves() {
    let document = served_document().await;
    let text = serde_json::to_string(document).unwrap();
    let spec = oas3::from_json(&text).expect("the document parses as OpenAPI 3.1");
    let version = spec.validate_version().expect("an OpenAPI 3.1 version");
    assert_eq!((version.major, version.minor), (3, 1));

    // oas3 drops what it cannot resolve, so compare with the raw counts.
    let mut operations = 0;
    for (path, method, op) in spec.operations() {
        operations += 1;
        let raw = operation(document, method.as_str(), &path);
        let parameters = op.parameters(&spec).expect("parameters resolve");
        assert_eq!(parameters.len(), raw["parameters"].as_array().map_or(0, Vec::len), "{method} {path}");
        let responses = op.responses(&spec);
        assert_eq!(responses.len(), raw["responses"].as_object().map_or(0, |r| r.len()), "{method} {path}");
        op.request_body(&spec).unwrap_or_else(|e| panic!("{method} {path}: request body: {e}"));

        // Every `{name}` in the path is a path parameter, and only those.
        let in_template: BTreeSet<String> = path
            .split('{')
            .skip(1)
            .filter_map(|part| part.split_once('}'))
            .map(|(name, _)| name.to_owned())
            .collect();
        let declared: BTreeSet<String> = parameters
            .iter()
            .filter(|p| matches!(p.location, oas3::spec::ParameterIn::Path))
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(in_template, declared, "{method} {path}");
    }
    assert!(operations > 100, "only {operations} operations");

    let mut found = Vec::new();
    references(document, "#".into(), &mut found);
    assert!(found.len() > 500, "only {} references", found.len());
    for (at, target) in found {
        let pointer = target.strip_prefix('#').unwrap_or_else(|| panic!("{at}: `{target}` is not local"));
        assert!(pointer.starts_with("/components/"), "{at}: `{target}` is not a component");
        assert!(document.pointer(pointer).is_some(), "{at}: `{target}` does not resolve");
    }

    let ids: Vec<&str> = spec.operations().filter_map(|(_, _, op)| op.operation_id.as_deref()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), operations, "every operation has an id");
    assert_eq!(unique.len(), ids.len(), "operation ids are unique");

    // OpenAPI treats paths differing only in variable names as one path.
    let paths: Vec<&String> = document["paths"].as_object().unwrap().keys().collect();
    let shapes: HashSet<String> = paths.iter().map(|p| shape(p)).collect();
    assert_eq!(shapes.len(), paths.len(), "two paths differ only in variable names");
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let document = served_document().await;
    for (method, path) in PUBLIC_ROUTES {
        operation(document, method, path);
    }

    let pool = DescriptorPool::decode(postmesh_proto::FILE_DESCRIPTOR_SET).unwrap();
    let rules = MethodRules::postmesh();
    let table = RouteTable::from_pool(&pool, |rpc| {
        rules.rule(&format!("/{}/{}", rpc.parent_service().full_name(), rpc.name())) != MethodRule::Internal
    })
    .unwrap();
    let documented: HashSet<(String, String)> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(|method| (method.clone(), shape(path))))
        .collect();
    assert!(table.routes().len() > 90, "only {} routes in the contract", table.routes().len());
    for route in table.routes() {
        let key = (route.method.as_str().to_ascii_lowercase(), shape(route.template.as_str()));
        assert!(documented.contains(&key), "{} {} is not documented", route.method, route.template.as_str());
    }

    let internal = "/api/users/internal";
    assert!(
        !document["paths"].as_object().unwrap().keys().any(|p| p.starts_with(internal)),
        "internal RPCs stay out of the document"
    );
}

#[tokio::test]
async fn openapi_document_describes_access_streams_raw_bodies_and_comments() {
    let document = served_document().await;

    let register = operation(document, "POST", "/api/users/register");
    assert_eq!(register["security"], serde_json::json!([]), "registering needs no credential");
    assert!(register["responses"].get("401").is_none());
    let body = &document["components"]["schemas"]["postmesh.user.v1.RegisterRequest"];
    assert!(body["required"].as_array().unwrap().iter().any(|f| f == "email"), "{body}");

    let profile = operation(document, "GET", "/api/users/profile");
    let schemes: Vec<&str> = profile["security"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_object().unwrap().keys())
        .map(String::as_str)
        .collect();
    assert_eq!(schemes, ["bearerAuth", "apiKeyHeader"]);
    assert_eq!(profile["responses"]["401"]["$ref"], "#/components/responses/Unauthorized");
    assert_eq!(document["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
    assert_eq!(document["components"]["securitySchemes"]["apiKeyHeader"]["name"], "X-API-Key");

    let stream = operation(document, "GET", "/api/notifications/stream");
    let content = &stream["responses"]["200"]["content"];
    assert!(content["text/event-stream"].is_object(), "{content}");
    assert!(content["application/x-ndjson"].is_object(), "{content}");

    let twitch = operation(document, "POST", "/api/webhooks/twitch");
    assert_eq!(twitch["security"], serde_json::json!([]));
    assert_eq!(twitch["requestBody"]["content"]["*/*"]["schema"]["format"], "binary", "{twitch}");

    // Descriptions are the proto comments, with the permission added.
    let create = operation(document, "POST", "/api/content/posts");
    assert_eq!(create["operationId"], "ContentService_CreatePost");
    assert_eq!(create["summary"], "Creates a post.");
    let description = create["description"].as_str().unwrap();
    assert!(description.contains("the `Idempotency-Key` header"), "{description}");
    assert!(description.contains("Requires the `posts:write` permission."), "{description}");
    assert_eq!(create["x-postmesh-permission"], "posts:write");
    let post = &document["components"]["schemas"]["postmesh.content.v1.Post"];
    assert!(
        post["description"]
            .as_str()
            .unwrap()
            .starts_with("A post: content written once and published to several accounts."),
        "{post}"
    );
    assert_eq!(post["properties"]["id"]["readOnly"], true, "output-only fields are read-only");
    let tags = document["tags"].as_array().unwrap();
    let content_tag = tags.iter().find(|t| t["name"] == "content").expect("a content tag");
    assert!(content_tag["description"].as_str().unwrap().starts_with("Writes posts once"), "{content_tag}");

    // Updates: the gateway fills the mask, so callers need not send it.
    let update = operation(document, "PUT", "/api/content/posts/{id}");
    let mask =
        update["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "update_mask").expect("mask");
    assert_ne!(mask["required"], true, "{mask}");
    assert!(update["description"].as_str().unwrap().contains("the gateway fills it"), "{update}");

    // Repeated query fields repeat the parameter; 64-bit integers are strings.
    let list = operation(document, "GET", "/api/content/posts");
    let statuses =
        list["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "statuses").expect("statuses");
    assert_eq!((&statuses["schema"]["type"], &statuses["explode"]), (&"array".into(), &true.into()));
    let count = &document["components"]["schemas"]["postmesh.notification.v1.GetUnreadCountResponse"];
    assert_eq!(count["properties"]["unread_count"]["type"], "string", "{count}");

    let limited = &document["components"]["responses"]["TooManyRequests"];
    assert!(limited["headers"]["Retry-After"].is_object(), "{limited}");
    assert_eq!(limited["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error");
}

//! The generic webhook: the post as JSON `{id, text, media, language,
//! idempotency_key}` POSTed to any URL and signed the Standard Webhooks way
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature:
//! v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`). The message id
//! is the idempotency key, stable across retries, so a receiver can
//! de-duplicate. Any 2xx accepts; a JSON answer's `id` and `url` strings
//! name the post.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use postmesh_proto::postmesh::social::v1::{PublishErrorKind, RenderedPost};
use serde_json::json;

use super::http::{failure, send};
use super::{ConnectError, Connected, Credentials, PublishError, Published, cut, parse_url_field};

const NAME: &str = "the webhook";

/// The shortest signing key accepted, in bytes.
const MIN_KEY_BYTES: usize = 16;

pub(super) fn connect(credentials: Credentials) -> Result<Connected, ConnectError> {
    let url = parse_url_field(&credentials, "url")?;
    if signing_key(credentials.get("secret").unwrap_or_default()).is_none() {
        return Err(ConnectError::InvalidField {
            field: "secret".into(),
            reason: format!("must be whsec_ and base64, or at least {MIN_KEY_BYTES} characters"),
        });
    }
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let external_id = format!("{host}{}", url.path());
    Ok(Connected {
        display_name: cut(&format!("Webhook {external_id}"), 100),
        external_id,
        handle: String::new(),
        profile_url: String::new(),
        avatar_url: String::new(),
        limits: None,
        token_expires_at: None,
        credentials,
    })
}

pub(super) async fn publish(
    client: &reqwest::Client,
    credentials: &Credentials,
    post: &RenderedPost,
    idempotency_key: &str,
) -> Result<Published, PublishError> {
    let url = credentials.require_url("url")?;
    let secret = credentials.require("secret")?;
    let id = if idempotency_key.is_empty() {
        format!("msg_{}", uuid::Uuid::now_v7().simple())
    } else {
        idempotency_key.to_owned()
    };
    let media: Vec<_> = post
        .media
        .iter()
        .map(|m| json!({ "url": m.url, "mime_type": m.mime_type, "alt_text": m.alt_text }))
        .collect();
    let body = json!({
        "id": id,
        "text": post.text,
        "media": media,
        "language": post.language,
        "idempotency_key": idempotency_key,
    });
    let body = serde_json::to_vec(&body).expect("JSON values serialise");
    let timestamp = chrono::Utc::now().timestamp();
    let signature = webhook_signature(secret, &id, timestamp, &body).ok_or_else(|| {
        PublishError::new(
            PublishErrorKind::Unauthorized,
            "the stored signing secret is malformed; connect again",
        )
    })?;
    let request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body);
    let reply = send(NAME, request).await?;
    if !reply.is_success() {
        return Err(failure(NAME, &reply));
    }
    let answer = reply.json().unwrap_or_default();
    let named = |field: &str| answer.get(field).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(Published { external_id: named("id").unwrap_or(id), external_url: named("url").unwrap_or_default() })
}

/// The `webhook-signature` value of a Standard Webhooks message:
/// `v1,` and the base64 HMAC-SHA256 of `<id>.<timestamp>.<body>` under the
/// key `secret` stands for (`whsec_` + base64, or the string's bytes).
/// `None` if the secret is not a usable key.
pub fn webhook_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &signing_key(secret)?);
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    Some(format!("v1,{}", STANDARD.encode(hmac::sign(&key, &signed).as_ref())))
}

/// The key bytes a secret stands for.
fn signing_key(secret: &str) -> Option<Vec<u8>> {
    let key = match secret.strip_prefix("whsec_") {
        Some(encoded) => STANDARD.decode(encoded).ok()?,
        None => secret.as_bytes().to_vec(),
    };
    (key.len() >= MIN_KEY_BYTES).then_some(key)
}

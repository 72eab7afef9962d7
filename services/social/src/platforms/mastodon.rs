//! Mastodon (any instance): `verify_credentials` checks the token, the
//! instance's configuration gives the account's limits, and
//! `POST /api/v1/statuses` publishes with an `Idempotency-Key`, which
//! Mastodon honours for an hour (the same key returns the same status).
//! Media are fetched from their URL and uploaded with `POST /api/v2/media`
//! first; files still processing are waited for.

use std::time::Duration;

use postmesh_proto::postmesh::social::v1::{PlatformLimits, PublishErrorKind, RenderedPost};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::http::{Media, connect_failure, failure, fetch_media, multipart, send, unavailable};
use super::registry::mastodon_default_limits;
use super::{ConnectError, Connected, Credentials, PublishError, Published, cut, parse_url_field};

const NAME: &str = "Mastodon";

/// How often, and how far apart, an upload still processing is looked at.
const MEDIA_POLLS: u32 = 20;
const MEDIA_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The account `verify_credentials` returns.
#[derive(Deserialize)]
struct Account {
    id: String,
    username: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    avatar: String,
}

pub(super) async fn connect(
    client: &reqwest::Client,
    mut credentials: Credentials,
) -> Result<Connected, ConnectError> {
    let instance = parse_url_field(&credentials, "instance_url")?;
    let base = instance.as_str().trim_end_matches('/').to_owned();
    credentials.insert("instance_url", base.clone());
    let token = credentials.get("access_token").unwrap_or_default();
    let request = client.get(format!("{base}/api/v1/accounts/verify_credentials")).bearer_auth(token);
    let reply = send(NAME, request).await.map_err(unavailable)?;
    if !reply.is_success() {
        let field = if reply.status == StatusCode::NOT_FOUND { "instance_url" } else { "access_token" };
        return Err(connect_failure(NAME, field, &reply));
    }
    let account: Account = reply.parse(NAME).map_err(unavailable)?;
    let (domain, limits) = match instance_configuration(client, &base).await {
        Some((domain, limits)) => (domain, limits),
        None => (instance.host_str().unwrap_or_default().to_owned(), mastodon_default_limits()),
    };
    let handle = format!("@{}@{domain}", account.username);
    Ok(Connected {
        external_id: account.id,
        display_name: cut(&handle, 100),
        handle,
        profile_url: account.url,
        avatar_url: account.avatar,
        limits: Some(limits),
        token_expires_at: None,
        credentials,
    })
}

/// The instance's domain and limits, from `/api/v2/instance` (or
/// `/api/v1/instance` before Mastodon 4); `None` if neither answers.
async fn instance_configuration(client: &reqwest::Client, base: &str) -> Option<(String, PlatformLimits)> {
    let mut instance = None;
    for path in ["/api/v2/instance", "/api/v1/instance"] {
        match send(NAME, client.get(format!("{base}{path}"))).await {
            Ok(reply) if reply.is_success() => {
                instance = reply.json();
                break;
            }
            Ok(reply) if reply.status == StatusCode::NOT_FOUND => {}
            _ => break,
        }
    }
    let instance = instance?;
    let domain = instance["domain"].as_str().or_else(|| instance["uri"].as_str())?.to_owned();
    let config = &instance["configuration"];
    let number =
        |pointer: &str| config.pointer(pointer).and_then(serde_json::Value::as_i64).filter(|n| *n > 0);
    let defaults = mastodon_default_limits();
    let media_types: Vec<String> = config
        .pointer("/media_attachments/supported_mime_types")
        .and_then(serde_json::Value::as_array)
        .map(|types| {
            let types = types.iter().filter_map(serde_json::Value::as_str);
            types.filter(|t| t.starts_with("image/") || t.starts_with("video/")).map(str::to_owned).collect()
        })
        .unwrap_or_default();
    let limits = PlatformLimits {
        max_text_length: number("/statuses/max_characters")
            .and_then(|n| i32::try_from(n).ok())
            .unwrap_or(defaults.max_text_length),
        max_media: number("/statuses/max_media_attachments")
            .and_then(|n| i32::try_from(n).ok())
            .unwrap_or(defaults.max_media),
        media_types: if media_types.is_empty() { defaults.media_types.clone() } else { media_types },
        max_media_bytes: number("/media_attachments/image_size_limit").unwrap_or(defaults.max_media_bytes),
        max_alt_text_length: number("/media_attachments/description_limit")
            .and_then(|n| i32::try_from(n).ok())
            .unwrap_or(defaults.max_alt_text_length),
        ..defaults
    };
    Some((domain, limits))
}

/// The status Mastodon returns.
#[derive(Deserialize)]
struct Status {
    id: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    uri: Option<String>,
}

pub(super) async fn publish(
    client: &reqwest::Client,
    credentials: &Credentials,
    post: &RenderedPost,
    idempotency_key: &str,
) -> Result<Published, PublishError> {
    let base = credentials.require("instance_url")?.trim_end_matches('/');
    let token = credentials.require("access_token")?;
    let mut media_ids = Vec::with_capacity(post.media.len());
    for media in &post.media {
        let media = fetch_media(client, media, 0).await?;
        media_ids.push(upload_media(client, base, token, &media).await?);
    }
    let mut body = json!({ "status": post.text, "visibility": "public" });
    if !post.language.is_empty() {
        body["language"] = post.language.clone().into();
    }
    if !media_ids.is_empty() {
        body["media_ids"] = media_ids.into();
    }
    let mut request = client.post(format!("{base}/api/v1/statuses")).bearer_auth(token).json(&body);
    if !idempotency_key.is_empty() {
        request = request.header("Idempotency-Key", idempotency_key);
    }
    let reply = send(NAME, request).await?;
    if !reply.is_success() {
        return Err(failure(NAME, &reply));
    }
    let Some(status) = reply.json().and_then(|body| serde_json::from_value::<Status>(body).ok()) else {
        tracing::warn!(status = %reply.status, "Mastodon accepted the status without saying its id");
        return Ok(Published { external_id: String::new(), external_url: String::new() });
    };
    let external_url = status.url.or(status.uri).unwrap_or_default();
    Ok(Published { external_id: status.id, external_url })
}

/// Uploads one file and returns its media id once Mastodon has processed it.
async fn upload_media(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    media: &Media,
) -> Result<String, PublishError> {
    #[derive(Deserialize)]
    struct Attachment {
        id: String,
    }
    let fields: Vec<(&str, &str)> =
        if media.alt_text.is_empty() { Vec::new() } else { vec![("description", media.alt_text.as_str())] };
    let (content_type, body) = multipart(&fields, media);
    let request = client
        .post(format!("{base}/api/v2/media"))
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body);
    let reply = send(NAME, request).await?;
    if !reply.is_success() {
        let mut error = failure(NAME, &reply);
        if matches!(error.kind, PublishErrorKind::InvalidContent) {
            error.kind = PublishErrorKind::Media;
        }
        return Err(error);
    }
    let attachment: Attachment = reply.parse(NAME)?;
    if reply.status != StatusCode::ACCEPTED {
        return Ok(attachment.id);
    }
    // 202: the file is being processed; statuses refuse it until it is done
    // (GET answers 206 meanwhile, 200 when done).
    for _ in 0..MEDIA_POLLS {
        tokio::time::sleep(MEDIA_POLL_INTERVAL).await;
        let request = client.get(format!("{base}/api/v1/media/{}", attachment.id)).bearer_auth(token);
        let reply = send(NAME, request).await?;
        match reply.status {
            StatusCode::OK => return Ok(attachment.id),
            StatusCode::PARTIAL_CONTENT => {}
            _ => return Err(failure(NAME, &reply)),
        }
    }
    Err(PublishError::new(
        PublishErrorKind::PlatformError,
        format!(
            "Mastodon was still processing a media file after {} s",
            (MEDIA_POLL_INTERVAL * MEDIA_POLLS).as_secs()
        ),
    ))
}

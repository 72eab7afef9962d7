//! What every adapter shares: sending a request and reading the answer, the
//! one classification of failed answers into [`PublishError`]s (and
//! [`ConnectError`]s), `Retry-After` in the platforms' several spellings,
//! and fetching and packing media.

use std::time::Duration;

use chrono::{DateTime, Utc};
use postmesh_proto::postmesh::social::v1::PublishErrorKind;
use postmesh_proto::postmesh::r#type::v1::MediaReference;
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{ConnectError, PublishError, cut};

/// The most of an answer's body postmesh reads; error pages can be large and
/// only their start is shown.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The most of a platform's own error text kept in a message.
const MAX_PLATFORM_TEXT_CHARS: usize = 800;

/// The largest media file fetched when the platform states no limit.
const MAX_MEDIA_BYTES: u64 = 100 * 1024 * 1024;

/// A platform's answer, read whole (up to [`MAX_BODY_BYTES`]).
#[derive(Debug)]
pub(super) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as `T`, or a retryable failure: for answers that are steps
    /// before the post exists, where trying again is safe.
    pub fn parse<T: DeserializeOwned>(&self, platform: &str) -> Result<T, PublishError> {
        serde_json::from_slice(&self.body).map_err(|error| {
            let message =
                format!("{platform} answered HTTP {} with an unexpected body: {error}", self.status);
            PublishError {
                http_status: self.status.as_u16(),
                ..PublishError::new(PublishErrorKind::PlatformError, message)
            }
        })
    }

    /// The platform's own explanation of a failed answer.
    pub fn error_text(&self) -> String {
        error_text(&self.body)
            .unwrap_or_else(|| self.status.canonical_reason().unwrap_or("no reason").to_owned())
    }
}

/// Sends `request` and reads the answer. Transport failures become
/// `Timeout` or `Network` failures naming `platform`, never the URL (it may
/// hold a token).
pub(super) async fn send(platform: &str, request: RequestBuilder) -> Result<Reply, PublishError> {
    let mut response = request.send().await.map_err(|error| transport_failure(platform, error))?;
    let status = response.status();
    let headers = std::mem::take(response.headers_mut());
    let mut body = Vec::new();
    while body.len() < MAX_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(error) => return Err(transport_failure(platform, error)),
        }
    }
    Ok(Reply { status, headers, body })
}

fn transport_failure(platform: &str, error: reqwest::Error) -> PublishError {
    let error = error.without_url();
    let kind = if error.is_timeout() {
        PublishErrorKind::Timeout
    } else if error.is_builder() {
        PublishErrorKind::Internal
    } else {
        PublishErrorKind::Network
    };
    let message = if kind == PublishErrorKind::Timeout {
        format!("{platform} did not answer in time")
    } else {
        format!("could not reach {platform}: {}", error_chain(&error))
    };
    PublishError::new(kind, message)
}

/// `error` and its sources, joined: reqwest's own message alone is only
/// "error sending request".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The one classification of a platform's failed answer: 401 Unauthorized,
/// 403 Forbidden, 400/409/413/415/422 (and other 4xx) InvalidContent,
/// 404/410 NotFound, 408 Timeout, 429 RateLimited, 5xx PlatformError, and a
/// redirect (never followed) NotFound. The message holds the platform's own
/// text; the wait comes from the body or headers (see [`retry_after`]).
pub(super) fn failure(platform: &str, reply: &Reply) -> PublishError {
    let code = reply.status.as_u16();
    let kind = match code {
        401 => PublishErrorKind::Unauthorized,
        403 => PublishErrorKind::Forbidden,
        404 | 410 | 300..=399 => PublishErrorKind::NotFound,
        408 => PublishErrorKind::Timeout,
        429 => PublishErrorKind::RateLimited,
        500..=599 => PublishErrorKind::PlatformError,
        _ => PublishErrorKind::InvalidContent,
    };
    let text = if reply.status.is_redirection() {
        "a redirect, which postmesh does not follow".to_owned()
    } else {
        reply.error_text()
    };
    PublishError {
        kind,
        message: cut(&format!("{platform} answered HTTP {code}: {text}"), super::MAX_MESSAGE_CHARS),
        http_status: code,
        retry_after: retry_after(reply, Utc::now()),
    }
}

/// A failed answer to a credential check: the platform refused `field`
/// (401/403/404 and other 4xx), or is unavailable (429, 5xx).
pub(super) fn connect_failure(platform: &str, field: &str, reply: &Reply) -> ConnectError {
    let error = failure(platform, reply);
    match error.kind {
        PublishErrorKind::RateLimited | PublishErrorKind::PlatformError | PublishErrorKind::Timeout => {
            ConnectError::Unavailable(error.message)
        }
        _ => ConnectError::Rejected { field: field.into(), message: error.message },
    }
}

/// A check call that could not be made (timeout, network).
pub(super) fn unavailable(error: PublishError) -> ConnectError {
    ConnectError::Unavailable(error.message)
}

/// How long the platform asked to wait, from (in this order) the body
/// (Discord's `retry_after` seconds, Telegram's `parameters.retry_after`),
/// `Retry-After`, Mastodon's `X-RateLimit-Reset` (a time), and the
/// `RateLimit-Reset` of Bluesky and Twitch (epoch seconds, or seconds).
fn retry_after(reply: &Reply, now: DateTime<Utc>) -> Option<Duration> {
    let header = |name: &str| reply.headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let from_body = reply.json().and_then(|body| {
        let seconds = body.get("retry_after").or_else(|| body.pointer("/parameters/retry_after"))?;
        seconds.as_f64().filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64)
    });
    from_body
        .or_else(|| header("retry-after").and_then(|v| wait_until(v, now)))
        .or_else(|| header("x-ratelimit-reset").and_then(|v| wait_until(v, now)))
        .or_else(|| {
            let value: u64 = header("ratelimit-reset")?.parse().ok()?;
            // Values this large are Unix times, smaller ones a number of seconds.
            if value > 1_000_000_000 {
                let reset = DateTime::from_timestamp(i64::try_from(value).ok()?, 0)?;
                Some((reset - now).to_std().unwrap_or_default())
            } else {
                Some(Duration::from_secs(value))
            }
        })
}

/// A `Retry-After` value: seconds (`120`, `1.5`), an HTTP date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`) or an RFC 3339 time, as a wait from
/// `now`; a time in the past means no wait. `None` if it is none of these.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    wait_until(value, DateTime::<Utc>::from(now))
}

fn wait_until(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).or_else(|_| DateTime::parse_from_rfc3339(value)).ok()?;
    Some((at.with_timezone(&Utc) - now).to_std().unwrap_or_default())
}

/// The platform's explanation in an error body: the JSON fields platforms
/// use (`error`, `message`, `description`, `error_description`), or the text
/// itself, cut to [`MAX_PLATFORM_TEXT_CHARS`]. `None` for an empty body.
fn error_text(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(text) {
        let field = |name: &str| fields.get(name).and_then(Value::as_str).filter(|s| !s.is_empty());
        let detail = field("message").or_else(|| field("description")).or_else(|| field("error_description"));
        let explained = match (field("error"), detail) {
            (Some(error), Some(detail)) if error != detail => Some(format!("{error}: {detail}")),
            (error, detail) => detail.or(error).map(str::to_owned),
        };
        if let Some(explained) = explained {
            return Some(cut(&explained, MAX_PLATFORM_TEXT_CHARS));
        }
    }
    if text.starts_with('<') {
        return Some("an HTML page".into());
    }
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(cut(&collapsed, MAX_PLATFORM_TEXT_CHARS))
}

/// A media file fetched from its URL.
pub(super) struct Media {
    pub bytes: Vec<u8>,
    pub mime_type: String,
    pub alt_text: String,
}

/// Fetches `media` (at most `max_bytes`, 0 meaning a generous default).
/// Every failure is a `Media` failure: the file is the problem, not the
/// platform.
pub(super) async fn fetch_media(
    client: &reqwest::Client,
    media: &MediaReference,
    max_bytes: u64,
) -> Result<Media, PublishError> {
    let max_bytes =
        usize::try_from(if max_bytes == 0 { MAX_MEDIA_BYTES } else { max_bytes }).unwrap_or(usize::MAX);
    // The query of a media URL may be a signature: name the file without it.
    let name = url::Url::parse(&media.url)
        .map(|url| format!("{}{}", url.host_str().unwrap_or_default(), url.path()))
        .unwrap_or_else(|_| "(not a URL)".into());
    let failed =
        |reason: String| PublishError::new(PublishErrorKind::Media, format!("media {name}: {reason}"));
    let mut response =
        client.get(&media.url).send().await.map_err(|e| failed(error_chain(&e.without_url())))?;
    if !response.status().is_success() {
        return Err(PublishError {
            http_status: response.status().as_u16(),
            ..failed(format!("fetching it answered HTTP {}", response.status()))
        });
    }
    let mime_type = if media.mime_type.is_empty() {
        let header = response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        header.unwrap_or("application/octet-stream").split(';').next().unwrap_or_default().trim().to_owned()
    } else {
        media.mime_type.clone()
    };
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(error_chain(&e.without_url())))? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > max_bytes {
            return Err(failed(format!("larger than the platform's limit of {max_bytes} bytes")));
        }
    }
    Ok(Media { bytes, mime_type, alt_text: media.alt_text.clone() })
}

/// A `multipart/form-data` body of text `fields` and one file part named
/// `file`: its content type and bytes. (reqwest's own multipart support is
/// a crate feature this build does without.)
pub(super) fn multipart(fields: &[(&str, &str)], media: &Media) -> (String, Vec<u8>) {
    let boundary = format!("postmesh-{}", uuid::Uuid::now_v7().simple());
    let mut body = Vec::with_capacity(media.bytes.len() + 512);
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    // Both go into headers of the part: keep them to safe characters.
    let mime_type: String =
        media.mime_type.chars().filter(|c| c.is_ascii_graphic() && !matches!(c, '"' | ';')).collect();
    let extension: String = mime_type
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let disposition = format!("form-data; name=\"file\"; filename=\"media.{extension}\"");
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {mime_type}\r\n\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(&media.bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

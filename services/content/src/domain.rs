//! The content service's rules without I/O: post and target statuses and how
//! a post's status follows from its targets, the checks on a post's fields,
//! page tokens, and the conversions between stored values and the contract.

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use postmesh_kit::error::{ApiError, Violations};
use postmesh_proto::postmesh::content::v1 as pb;
use postmesh_proto::postmesh::social::v1 as social;
use postmesh_proto::postmesh::r#type::v1::{MediaReference, Platform};
use serde::{Deserialize, Serialize};

/// Longest post text, template body or override text, in characters.
pub const MAX_TEXT_CHARS: usize = 40_000;
/// Most media items per post.
pub const MAX_MEDIA: usize = 10;
/// Most target accounts per post.
pub const MAX_TARGETS: usize = 50;
/// Longest media URL.
pub const MAX_MEDIA_URL: usize = 2_048;
/// Longest alt text.
pub const MAX_ALT_TEXT: usize = 1_500;
/// Longest template variable value.
pub const MAX_VARIABLE_VALUE: usize = 10_000;
/// How far ahead a post may be scheduled.
pub const MAX_SCHEDULE_AHEAD_MS: i64 = 365 * 24 * 3600 * 1000;
/// How far in the past `publish_at` may be (meaning: now).
pub const PAST_GRACE_MS: i64 = 5 * 60 * 1000;
/// How long an idempotency key returns the same post.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    postmesh_kit::db::now_ms()
}

/// A new UUIDv7 id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub use postmesh_kit::db::timestamp_ms as timestamp;

/// Unix milliseconds from a protobuf timestamp, or a violation of `field`.
pub fn millis(ts: &prost_types::Timestamp, field: &str) -> Result<i64, ApiError> {
    if !(0..1_000_000_000).contains(&ts.nanos) || ts.seconds.unsigned_abs() > 253_402_300_799 {
        return Err(ApiError::invalid(field, "is not a valid time"));
    }
    Ok(ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000)
}

/// A protobuf duration from milliseconds.
pub fn duration(ms: i64) -> prost_types::Duration {
    prost_types::Duration { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

// ---- statuses ------------------------------------------------------------

/// A post's status as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PostState {
    Draft,
    Scheduled,
    Queued,
    Publishing,
    Posted,
    Faulted,
    SomeFaults,
    Cancelled,
}

impl PostState {
    pub const ALL: [PostState; 8] = [
        PostState::Draft,
        PostState::Scheduled,
        PostState::Queued,
        PostState::Publishing,
        PostState::Posted,
        PostState::Faulted,
        PostState::SomeFaults,
        PostState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PostState::Draft => "draft",
            PostState::Scheduled => "scheduled",
            PostState::Queued => "queued",
            PostState::Publishing => "publishing",
            PostState::Posted => "posted",
            PostState::Faulted => "faulted",
            PostState::SomeFaults => "some_faults",
            PostState::Cancelled => "cancelled",
        }
    }

    pub fn parse(stored: &str) -> Result<Self, ApiError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == stored)
            .ok_or_else(|| ApiError::internal(format!("stored post status {stored:?}")))
    }

    pub fn to_proto(self) -> pb::PostStatus {
        match self {
            PostState::Draft => pb::PostStatus::Draft,
            PostState::Scheduled => pb::PostStatus::Scheduled,
            PostState::Queued => pb::PostStatus::Queued,
            PostState::Publishing => pb::PostStatus::Publishing,
            PostState::Posted => pb::PostStatus::Posted,
            PostState::Faulted => pb::PostStatus::Faulted,
            PostState::SomeFaults => pb::PostStatus::SomeFaults,
            PostState::Cancelled => pb::PostStatus::Cancelled,
        }
    }

    /// From a request's `PostStatus`; `None` for unspecified.
    pub fn from_proto(value: i32) -> Result<Option<Self>, String> {
        match pb::PostStatus::try_from(value) {
            Ok(pb::PostStatus::Unspecified) => Ok(None),
            Ok(status) => Ok(Self::ALL.into_iter().find(|s| s.to_proto() == status)),
            Err(_) => Err(format!("{value} is not a post status")),
        }
    }

    /// Posted, Faulted, SomeFaults or Cancelled: nothing more will change
    /// unless someone retries.
    pub fn settled(self) -> bool {
        matches!(self, PostState::Posted | PostState::Faulted | PostState::SomeFaults | PostState::Cancelled)
    }

    /// Draft or Scheduled: not publishing yet, so it may still be changed.
    pub fn editable(self) -> bool {
        matches!(self, PostState::Draft | PostState::Scheduled)
    }
}

/// A target's status as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetState {
    Pending,
    Queued,
    Publishing,
    Posted,
    Faulted,
    Cancelled,
}

impl TargetState {
    pub const ALL: [TargetState; 6] = [
        TargetState::Pending,
        TargetState::Queued,
        TargetState::Publishing,
        TargetState::Posted,
        TargetState::Faulted,
        TargetState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Pending => "pending",
            TargetState::Queued => "queued",
            TargetState::Publishing => "publishing",
            TargetState::Posted => "posted",
            TargetState::Faulted => "faulted",
            TargetState::Cancelled => "cancelled",
        }
    }

    pub fn parse(stored: &str) -> Result<Self, ApiError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == stored)
            .ok_or_else(|| ApiError::internal(format!("stored target status {stored:?}")))
    }

    pub fn to_proto(self) -> pb::TargetStatus {
        match self {
            TargetState::Pending => pb::TargetStatus::Pending,
            TargetState::Queued => pb::TargetStatus::Queued,
            TargetState::Publishing => pb::TargetStatus::Publishing,
            TargetState::Posted => pb::TargetStatus::Posted,
            TargetState::Faulted => pb::TargetStatus::Faulted,
            TargetState::Cancelled => pb::TargetStatus::Cancelled,
        }
    }

    /// Queued or Publishing: a job is (or will be) working on it.
    pub fn in_flight(self) -> bool {
        matches!(self, TargetState::Queued | TargetState::Publishing)
    }

    /// Not started: cancelling or deleting the post cancels it.
    pub fn cancellable(self) -> bool {
        matches!(self, TargetState::Pending | TargetState::Queued)
    }
}

/// The status of a post as a whole, from its targets' statuses. Cancelled
/// targets are ignored, and so are Pending ones (targets left out when part
/// of a draft or scheduled post was published early). A post with nothing
/// but Pending targets keeps `current` (Draft or Scheduled); one with
/// nothing but Cancelled targets is Cancelled.
pub fn aggregate(targets: &[TargetState], current: PostState) -> PostState {
    let count = |state: TargetState| targets.iter().filter(|t| **t == state).count();
    let (queued, publishing, posted, faulted) = (
        count(TargetState::Queued),
        count(TargetState::Publishing),
        count(TargetState::Posted),
        count(TargetState::Faulted),
    );
    if queued + publishing + posted + faulted == 0 {
        return if count(TargetState::Pending) > 0 && current.editable() {
            current
        } else {
            PostState::Cancelled
        };
    }
    if publishing > 0 || (queued > 0 && posted + faulted > 0) {
        PostState::Publishing
    } else if queued > 0 {
        PostState::Queued
    } else if faulted == 0 {
        PostState::Posted
    } else if posted == 0 {
        PostState::Faulted
    } else {
        PostState::SomeFaults
    }
}

// ---- stored JSON ---------------------------------------------------------

/// A media reference as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMedia {
    pub url: String,
    pub mime_type: String,
    #[serde(default)]
    pub alt_text: String,
}

impl StoredMedia {
    pub fn from_proto(media: &MediaReference) -> Self {
        Self { url: media.url.clone(), mime_type: media.mime_type.clone(), alt_text: media.alt_text.clone() }
    }

    pub fn to_proto(&self) -> MediaReference {
        MediaReference {
            url: self.url.clone(),
            mime_type: self.mime_type.clone(),
            alt_text: self.alt_text.clone(),
        }
    }
}

/// A platform override as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOverride {
    pub platform: i32,
    pub text: String,
}

/// A publishing failure as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFailure {
    pub kind: i32,
    pub message: String,
    pub retryable: bool,
    pub http_status: i32,
}

impl StoredFailure {
    pub fn from_proto(failure: &social::PublishFailure) -> Self {
        Self {
            kind: failure.kind,
            message: failure.message.clone(),
            retryable: failure.retryable,
            http_status: failure.http_status,
        }
    }

    pub fn to_proto(&self) -> social::PublishFailure {
        social::PublishFailure {
            kind: self.kind,
            message: self.message.clone(),
            retryable: self.retryable,
            http_status: self.http_status,
        }
    }
}

/// JSON of a stored value.
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("stored values serialize")
}

/// A stored JSON value; corrupt data is an internal error.
pub fn from_json<T: for<'de> Deserialize<'de>>(json: &str, what: &str) -> Result<T, ApiError> {
    serde_json::from_str(json).map_err(|e| ApiError::internal(format!("stored {what}: {e}")))
}

// ---- field checks --------------------------------------------------------

/// Checks a text's length in characters.
pub fn check_text(violations: &mut Violations, field: &str, text: &str) {
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        violations.add(field, format!("must be at most {MAX_TEXT_CHARS} characters; it has {chars}"));
    }
}

/// Checks media references and resolves their MIME types; returns them
/// with `mime_type` set where it could be.
pub fn check_media(
    violations: &mut Violations,
    field: &str,
    media: &[MediaReference],
) -> Vec<MediaReference> {
    if media.len() > MAX_MEDIA {
        violations
            .add(field, format!("at most {MAX_MEDIA} media items are allowed; there are {}", media.len()));
    }
    media
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let mut item = item.clone();
            let at = format!("{field}[{i}]");
            match check_media_url(&item.url) {
                Ok(()) => {}
                Err(problem) => violations.add(format!("{at}.url"), problem),
            }
            let alt = item.alt_text.chars().count();
            if alt > MAX_ALT_TEXT {
                violations.add(format!("{at}.alt_text"), format!("must be at most {MAX_ALT_TEXT} characters; it has {alt}"));
            }
            if item.mime_type.trim().is_empty() {
                match crate::format::media_type(&item) {
                    Some(mime) => item.mime_type = mime,
                    None if check_media_url(&item.url).is_ok() => violations.add(
                        format!("{at}.mime_type"),
                        "cannot be inferred from the URL's extension; give the media type (such as image/png)",
                    ),
                    None => {}
                }
            } else if !is_mime_type(&item.mime_type) {
                violations.add(format!("{at}.mime_type"), format!("{:?} is not a MIME type", item.mime_type));
            } else {
                item.mime_type = item.mime_type.trim().to_ascii_lowercase();
            }
            item
        })
        .collect()
}

fn check_media_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("is required".into());
    }
    if url.len() > MAX_MEDIA_URL {
        return Err(format!("must be at most {MAX_MEDIA_URL} characters"));
    }
    match url::Url::parse(url) {
        Ok(parsed) if parsed.scheme() == "https" && parsed.host_str().is_some_and(|h| !h.is_empty()) => {
            Ok(())
        }
        Ok(_) => Err("must be an absolute https URL".into()),
        Err(e) => Err(format!("is not a URL ({e}); it must be an absolute https URL")),
    }
}

fn is_mime_type(value: &str) -> bool {
    let token =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b));
    match value.trim().split_once('/') {
        Some((kind, sub)) => token(kind) && token(sub.split(';').next().unwrap_or("").trim()),
        None => false,
    }
}

/// Checks a list of account ids: 1 to 50 (or 0 to 50 with `allow_empty`),
/// none empty, no duplicates.
pub fn check_account_ids(violations: &mut Violations, field: &str, ids: &[String], allow_empty: bool) {
    if ids.is_empty() && !allow_empty {
        violations.add(field, "at least one target account is required");
    }
    if ids.len() > MAX_TARGETS {
        violations.add(field, format!("at most {MAX_TARGETS} accounts are allowed; there are {}", ids.len()));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        if id.trim().is_empty() {
            violations.add(format!("{field}[{i}]"), "is empty");
        } else if let Some(first) = seen.get(id.as_str()) {
            violations.add(format!("{field}[{i}]"), format!("repeats {field}[{first}] ({id})"));
        } else {
            seen.insert(id, i);
        }
    }
}

/// Checks `publish_at` against now: at most 365 days ahead, at most 5
/// minutes in the past.
pub fn check_publish_at(violations: &mut Violations, field: &str, publish_at_ms: i64, now: i64) {
    if publish_at_ms < now - PAST_GRACE_MS {
        violations.add(field, "is more than 5 minutes in the past; leave it unset to publish now");
    } else if publish_at_ms > now + MAX_SCHEDULE_AHEAD_MS {
        violations.add(field, "is more than 365 days ahead");
    }
}

/// Checks template variable values.
pub fn check_variables(violations: &mut Violations, field: &str, variables: &BTreeMap<String, String>) {
    for (name, value) in variables {
        let chars = value.chars().count();
        if chars > MAX_VARIABLE_VALUE {
            violations.add(
                format!("{field}.{name}"),
                format!("must be at most {MAX_VARIABLE_VALUE} characters; it has {chars}"),
            );
        }
    }
}

/// Checks platform overrides: a platform each, at most one per platform,
/// text required and at most 40,000 characters.
pub fn check_overrides(
    violations: &mut Violations,
    field: &str,
    overrides: &[pb::PlatformOverride],
) -> Vec<(Platform, String)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, o) in overrides.iter().enumerate() {
        let at = format!("{field}[{i}]");
        match Platform::try_from(o.platform) {
            Ok(Platform::Unspecified) => violations.add(format!("{at}.platform"), "is required"),
            Err(_) => violations.add(format!("{at}.platform"), format!("{} is not a platform", o.platform)),
            Ok(platform) => {
                if !seen.insert(platform) {
                    violations.add(
                        format!("{at}.platform"),
                        format!("{} has more than one override", platform_name(platform)),
                    );
                }
                out.push((platform, o.text.clone()));
            }
        }
        if o.text.is_empty() {
            violations.add(format!("{at}.text"), "is required");
        }
        check_text(violations, &format!("{at}.text"), &o.text);
    }
    out
}

/// Checks a BCP 47 language tag (shape only): letters for the language,
/// then `-`-separated subtags of letters and digits, at most 35 characters.
pub fn check_language(violations: &mut Violations, field: &str, tag: &str) {
    if tag.is_empty() {
        return;
    }
    let mut parts = tag.split('-');
    let primary = parts.next().unwrap_or("");
    let valid = tag.len() <= 35
        && (2..=8).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !valid {
        violations.add(field, format!("{tag:?} is not a BCP 47 language tag (such as en or pt-BR)"));
    }
}

/// Checks an idempotency key: 1 to 255 printable ASCII characters.
pub fn check_idempotency_key(key: &str) -> Result<(), ApiError> {
    if key.len() > 255 || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(ApiError::invalid("idempotency_key", "must be 1 to 255 printable ASCII characters"));
    }
    Ok(())
}

/// The platform's display name for messages.
pub fn platform_name(platform: Platform) -> &'static str {
    match platform {
        Platform::Unspecified => "unspecified platform",
        Platform::Discord => "Discord",
        Platform::Mastodon => "Mastodon",
        Platform::Bluesky => "Bluesky",
        Platform::Telegram => "Telegram",
        Platform::Slack => "Slack",
        Platform::Twitch => "Twitch",
        Platform::Webhook => "Webhook",
    }
}

// ---- pages ---------------------------------------------------------------

/// A page request: its size and the position after which it starts.
#[derive(Debug, Clone)]
pub struct Page<C> {
    pub size: u64,
    pub after: Option<C>,
}

/// Page size from a request: default 50, at most 200.
pub fn page_size(page_size: i32) -> Result<u64, ApiError> {
    if page_size < 0 {
        return Err(ApiError::invalid("page_size", "must not be negative"));
    }
    Ok(if page_size == 0 { 50 } else { page_size.min(200) } as u64)
}

/// Encodes a cursor of (a sort key, an id) as an opaque token.
pub fn encode_cursor(key: &str, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(to_json(&(key, id)))
}

/// Decodes a token made by [`encode_cursor`].
pub fn decode_cursor(token: &str) -> Result<Option<(String, String)>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<(String, String)>(&bytes).ok())
        .map(Some)
        .ok_or_else(|| ApiError::invalid("page_token", "is not a token from a previous page"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use TargetState::*;

    #[test]
    fn a_post_follows_its_targets() {
        assert_eq!(aggregate(&[Queued, Queued], PostState::Queued), PostState::Queued);
        assert_eq!(aggregate(&[Queued, Publishing], PostState::Queued), PostState::Publishing);
        assert_eq!(aggregate(&[Queued, Posted], PostState::Queued), PostState::Publishing);
        assert_eq!(aggregate(&[Posted, Posted, Cancelled], PostState::Publishing), PostState::Posted);
        assert_eq!(aggregate(&[Faulted, Faulted], PostState::Publishing), PostState::Faulted);
        assert_eq!(aggregate(&[Posted, Faulted], PostState::Publishing), PostState::SomeFaults);
        assert_eq!(aggregate(&[Cancelled, Cancelled], PostState::Scheduled), PostState::Cancelled);
        assert_eq!(aggregate(&[Pending, Pending], PostState::Draft), PostState::Draft);
        assert_eq!(aggregate(&[Pending, Queued], PostState::Draft), PostState::Queued);
        assert_eq!(aggregate(&[Pending, Posted], PostState::Publishing), PostState::Posted);
    }

    #[test]
    fn fields_are_checked_with_their_names() {
        let mut v = Violations::new();
        check_account_ids(
            &mut v,
            "target_account_ids",
            &["a".into(), "b".into(), "a".into(), "".into()],
            false,
        );
        check_publish_at(&mut v, "publish_at", 0, now_ms());
        check_language(&mut v, "language", "not a tag");
        let status: tonic::Status = v.finish().unwrap_err().into();
        let message = status.message().to_owned();
        assert!(message.contains("target_account_ids[2]: repeats target_account_ids[0]"), "{message}");
        assert!(message.contains("target_account_ids[3]: is empty"), "{message}");
        assert!(message.contains("publish_at: is more than 5 minutes in the past"), "{message}");
        assert!(message.contains("language:"), "{message}");
        let mut v = Violations::new();
        check_language(&mut v, "language", "pt-BR");
        check_publish_at(&mut v, "publish_at", now_ms() + 60_000, now_ms());
        assert!(v.finish().is_ok());
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let token = encode_cursor("1700000000000", "0190-id");
        assert_eq!(decode_cursor(&token).unwrap(), Some(("1700000000000".into(), "0190-id".into())));
        assert!(decode_cursor("%%%").is_err());
        assert_eq!(decode_cursor("").unwrap(), None);
    }

    #[test]
    fn timestamps_convert_both_ways() {
        let ts = timestamp(1_700_000_000_123);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_000_000));
        assert_eq!(millis(&ts, "t").unwrap(), 1_700_000_000_123);
        assert!(millis(&prost_types::Timestamp { seconds: 0, nanos: -1 }, "t").is_err());
    }
}

//! Bluesky (AT Protocol): `com.atproto.server.createSession` with an app
//! password, then `com.atproto.repo.createRecord` of an `app.bsky.feed.post`
//! with its facets (mentions resolved to DIDs with
//! `com.atproto.identity.resolveHandle`) and images uploaded with
//! `com.atproto.repo.uploadBlob`.
//!
//! Sessions are kept in memory and reused: a PDS allows only 30 new sessions
//! per 5 minutes per account, fewer than the posts postmesh may send. An
//! expired session is replaced once per publish.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use postmesh_proto::postmesh::social::v1::facet::Feature;
use postmesh_proto::postmesh::social::v1::{Facet, PublishErrorKind, RenderedPost};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{Reply, connect_failure, failure, fetch_media, send, unavailable};
use super::{
    ConnectError, Connected, Credentials, PlatformUrls, PublishError, Published, cut, parse_url_field,
};

const NAME: &str = "Bluesky";

/// The largest image blob `app.bsky.embed.images` takes.
const MAX_IMAGE_BYTES: u64 = 1_000_000;

/// A session `createSession` opened.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Session {
    access_jwt: String,
    did: String,
    handle: String,
}

/// An account as the session cache knows it: service and identifier.
type SessionKey = (String, String);

/// Open sessions by account, each with a digest of the password that opened
/// it, so a changed password opens a new one.
#[derive(Clone, Default)]
pub(super) struct Sessions(Arc<Mutex<HashMap<SessionKey, Cached>>>);

struct Cached {
    session: Session,
    password_digest: [u8; 32],
}

impl Sessions {
    fn cached(&self, key: &SessionKey, password: &str) -> Option<Session> {
        let sessions = self.0.lock().expect("the session cache is never poisoned");
        let cached = sessions.get(key)?;
        let same_password = cached.password_digest == postmesh_kit::crypto::sha256(password.as_bytes());
        same_password.then(|| cached.session.clone())
    }

    fn keep(&self, key: SessionKey, password: &str, session: Session) {
        let cached = Cached { session, password_digest: postmesh_kit::crypto::sha256(password.as_bytes()) };
        self.0.lock().expect("the session cache is never poisoned").insert(key, cached);
    }

    fn forget(&self, key: &SessionKey) {
        self.0.lock().expect("the session cache is never poisoned").remove(key);
    }
}

/// The account's service and identifier, as given.
struct Login<'a> {
    service: String,
    identifier: String,
    password: &'a str,
}

impl<'a> Login<'a> {
    fn new(urls: &PlatformUrls, credentials: &'a Credentials) -> Result<Self, PublishError> {
        let service =
            credentials.get("service_url").unwrap_or(&urls.bluesky).trim_end_matches('/').to_owned();
        let identifier = credentials.require("handle")?.trim_start_matches('@').to_owned();
        Ok(Self { service, identifier, password: credentials.require("app_password")? })
    }

    fn key(&self) -> SessionKey {
        (self.service.clone(), self.identifier.to_lowercase())
    }

    /// A new session, or the failed answer.
    async fn open(&self, client: &reqwest::Client) -> Result<Result<Session, Reply>, PublishError> {
        let body = json!({ "identifier": self.identifier, "password": self.password });
        let url = format!("{}/xrpc/com.atproto.server.createSession", self.service);
        let reply = send(NAME, client.post(url).json(&body)).await?;
        if !reply.is_success() {
            return Ok(Err(reply));
        }
        Ok(Ok(reply.parse(NAME)?))
    }
}

pub(super) async fn connect(
    client: &reqwest::Client,
    urls: &PlatformUrls,
    sessions: &Sessions,
    mut credentials: Credentials,
) -> Result<Connected, ConnectError> {
    if credentials.get("service_url").is_some() {
        let service = parse_url_field(&credentials, "service_url")?;
        credentials.insert("service_url", service.as_str().trim_end_matches('/'));
    }
    let login = Login::new(urls, &credentials).map_err(unavailable)?;
    let session = match login.open(client).await.map_err(unavailable)? {
        Ok(session) => session,
        Err(reply) => {
            let field = match reply.status {
                StatusCode::BAD_REQUEST => "handle",
                StatusCode::NOT_FOUND => "service_url",
                _ => "app_password",
            };
            return Err(connect_failure(NAME, field, &reply));
        }
    };
    sessions.keep(login.key(), login.password, session.clone());
    Ok(Connected {
        external_id: session.did,
        display_name: cut(&format!("@{}", session.handle), 100),
        profile_url: format!("https://bsky.app/profile/{}", session.handle),
        handle: session.handle,
        avatar_url: String::new(),
        limits: None,
        token_expires_at: None,
        credentials,
    })
}

/// Why one round of publishing with a session failed.
enum Failure {
    /// The session expired or was revoked: open a new one and go again.
    SessionExpired,
    Failed(PublishError),
}

impl From<PublishError> for Failure {
    fn from(error: PublishError) -> Self {
        Self::Failed(error)
    }
}

pub(super) async fn publish(
    client: &reqwest::Client,
    urls: &PlatformUrls,
    sessions: &Sessions,
    credentials: &Credentials,
    post: &RenderedPost,
) -> Result<Published, PublishError> {
    let login = Login::new(urls, credentials)?;
    let key = login.key();
    if let Some(session) = sessions.cached(&key, login.password) {
        match create_post(client, &login.service, &session, post).await {
            Err(Failure::SessionExpired) => sessions.forget(&key),
            Err(Failure::Failed(error)) => return Err(error),
            Ok(published) => return Ok(published),
        }
    }
    let session = login.open(client).await?.map_err(|reply| failure(NAME, &reply))?;
    sessions.keep(key, login.password, session.clone());
    match create_post(client, &login.service, &session, post).await {
        Ok(published) => Ok(published),
        Err(Failure::Failed(error)) => Err(error),
        Err(Failure::SessionExpired) => Err(PublishError::new(
            PublishErrorKind::Unauthorized,
            "Bluesky refused a session it had just opened",
        )),
    }
}

/// Uploads the images, resolves the facets and creates the post record.
async fn create_post(
    client: &reqwest::Client,
    service: &str,
    session: &Session,
    post: &RenderedPost,
) -> Result<Published, Failure> {
    let mut images = Vec::with_capacity(post.media.len());
    for media in &post.media {
        let media = fetch_media(client, media, MAX_IMAGE_BYTES).await?;
        let request = client
            .post(format!("{service}/xrpc/com.atproto.repo.uploadBlob"))
            .bearer_auth(&session.access_jwt)
            .header(reqwest::header::CONTENT_TYPE, &media.mime_type)
            .body(media.bytes);
        let reply = checked(send(NAME, request).await?)?;
        let blob: Value = reply.parse::<Value>(NAME)?["blob"].take();
        images.push(json!({ "alt": media.alt_text, "image": blob }));
    }
    let mut record = json!({
        "$type": "app.bsky.feed.post",
        "text": post.text,
        "createdAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    let facets = facets(client, service, &post.text, &post.facets).await;
    if !facets.is_empty() {
        record["facets"] = facets.into();
    }
    if !post.language.is_empty() {
        record["langs"] = json!([post.language]);
    }
    if !images.is_empty() {
        record["embed"] = json!({ "$type": "app.bsky.embed.images", "images": images });
    }
    let body = json!({ "repo": session.did, "collection": "app.bsky.feed.post", "record": record });
    let request = client
        .post(format!("{service}/xrpc/com.atproto.repo.createRecord"))
        .bearer_auth(&session.access_jwt)
        .json(&body);
    let reply = checked(send(NAME, request).await?)?;
    let Some(uri) = reply.json().and_then(|body| body["uri"].as_str().map(str::to_owned)) else {
        tracing::warn!(status = %reply.status, "Bluesky created the record without saying its URI");
        return Ok(Published { external_id: String::new(), external_url: String::new() });
    };
    let rkey = uri.rsplit('/').next().unwrap_or_default();
    let external_url = format!("https://bsky.app/profile/{}/post/{rkey}", session.handle);
    Ok(Published { external_id: uri, external_url })
}

/// A successful answer, or why not: an expired session is told apart from
/// other failures.
fn checked(reply: Reply) -> Result<Reply, Failure> {
    if reply.is_success() {
        return Ok(reply);
    }
    let error = reply.json().and_then(|body| body["error"].as_str().map(str::to_owned));
    let auth_status = matches!(reply.status, StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED);
    if auth_status && matches!(error.as_deref(), Some("ExpiredToken" | "InvalidToken")) {
        return Err(Failure::SessionExpired);
    }
    Err(Failure::Failed(failure(NAME, &reply)))
}

/// The post's facets as `app.bsky.richtext.facet`s. Facets outside the text
/// or off character boundaries, and mentions whose handle does not resolve,
/// are dropped: the text is posted without that markup.
async fn facets(client: &reqwest::Client, service: &str, text: &str, facets: &[Facet]) -> Vec<Value> {
    let mut resolved: HashMap<String, Option<String>> = HashMap::new();
    let mut out = Vec::with_capacity(facets.len());
    for facet in facets {
        let (Ok(start), Ok(end)) = (usize::try_from(facet.byte_start), usize::try_from(facet.byte_end))
        else {
            continue;
        };
        if start >= end || end > text.len() || !text.is_char_boundary(start) || !text.is_char_boundary(end) {
            tracing::warn!(start, end, "dropped a facet outside the text");
            continue;
        }
        let feature = match &facet.feature {
            Some(Feature::LinkUri(uri)) => json!({ "$type": "app.bsky.richtext.facet#link", "uri": uri }),
            Some(Feature::Tag(tag)) => json!({ "$type": "app.bsky.richtext.facet#tag", "tag": tag }),
            Some(Feature::MentionHandle(handle)) => {
                if !resolved.contains_key(handle) {
                    let did = resolve_handle(client, service, handle).await;
                    resolved.insert(handle.clone(), did);
                }
                let Some(did) = &resolved[handle] else { continue };
                json!({ "$type": "app.bsky.richtext.facet#mention", "did": did })
            }
            None => continue,
        };
        out.push(json!({ "index": { "byteStart": start, "byteEnd": end }, "features": [feature] }));
    }
    out
}

/// The DID of `handle`, or `None` if it does not resolve (for any reason).
async fn resolve_handle(client: &reqwest::Client, service: &str, handle: &str) -> Option<String> {
    let mut url = url::Url::parse(&format!("{service}/xrpc/com.atproto.identity.resolveHandle")).ok()?;
    url.query_pairs_mut().append_pair("handle", handle.trim_start_matches('@'));
    let reply = send(NAME, client.get(url)).await.ok()?;
    let did = reply.is_success().then(|| reply.json()).flatten()?["did"].as_str()?.to_owned();
    (!did.is_empty()).then_some(did)
}

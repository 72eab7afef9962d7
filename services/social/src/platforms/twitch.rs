//! Twitch, as a chat announcement: `GET /helix/users` checks the token and
//! names its user, `POST /helix/chat/announcements` publishes (204, no id).
//! Every call carries the token and the application's `Client-Id`.
//!
//! User access tokens expire (about four hours). At connect,
//! `GET /oauth2/validate` on Twitch's OAuth server says when; given the
//! account's refresh token and the application's client secret, postmesh
//! trades them for a new token before then (`POST /oauth2/token`,
//! `grant_type=refresh_token`; Twitch may rotate the refresh token too).
//! Without them an expired token ends in `Unauthorized`.

use postmesh_proto::postmesh::social::v1::{PublishErrorKind, RenderedPost};
use serde::Deserialize;
use serde_json::json;

use super::http::{connect_failure, failure, send, unavailable};
use super::{
    ConnectError, Connected, Credentials, PlatformUrls, PublishError, Published, RefreshError, Refreshed, cut,
};

const NAME: &str = "Twitch";

/// A user `GET /helix/users` returns.
#[derive(Clone, Deserialize)]
struct User {
    id: String,
    login: String,
    display_name: String,
    #[serde(default)]
    profile_image_url: String,
}

#[derive(Deserialize)]
struct Users {
    data: Vec<User>,
}

/// What `GET /oauth2/validate` says of a token.
#[derive(Deserialize)]
struct Validation {
    client_id: String,
    /// Seconds until the token expires; 0 for tokens that do not.
    #[serde(default)]
    expires_in: i64,
}

/// A token `POST /oauth2/token` grants.
#[derive(Deserialize)]
struct Grant {
    access_token: String,
    #[serde(default)]
    refresh_token: String,
    #[serde(default)]
    expires_in: i64,
}

fn api_url(urls: &PlatformUrls, path: &str) -> String {
    format!("{}/helix/{path}", urls.twitch.trim_end_matches('/'))
}

fn auth_url(urls: &PlatformUrls, path: &str) -> String {
    format!("{}/oauth2/{path}", urls.twitch_auth.trim_end_matches('/'))
}

/// When a token valid for `seconds` more expires, if it does.
fn expiry(seconds: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    (seconds > 0).then(|| chrono::Utc::now() + chrono::Duration::seconds(seconds))
}

pub(super) async fn connect(
    client: &reqwest::Client,
    urls: &PlatformUrls,
    mut credentials: Credentials,
) -> Result<Connected, ConnectError> {
    if credentials.get("refresh_token").is_some() != credentials.get("client_secret").is_some() {
        let field =
            if credentials.get("refresh_token").is_some() { "client_secret" } else { "refresh_token" };
        return Err(ConnectError::InvalidField {
            field: field.into(),
            reason: "is required with the other (refresh_token and client_secret go together)".into(),
        });
    }
    let validation = validate(client, urls, &credentials).await?;
    if Some(validation.client_id.as_str()) != credentials.get("client_id") {
        return Err(ConnectError::Rejected {
            field: "client_id".into(),
            message: "the access token was issued to another application".into(),
        });
    }
    let token_user =
        users(client, urls, &credentials, None).await?.ok_or_else(|| ConnectError::Rejected {
            field: "access_token".into(),
            message: "the token belongs to no user (an app access token?); a user access token is needed"
                .into(),
        })?;
    let broadcaster = match credentials.get("broadcaster_id") {
        Some(id) if id != token_user.id => {
            users(client, urls, &credentials, Some(id)).await?.ok_or_else(|| ConnectError::Rejected {
                field: "broadcaster_id".into(),
                message: format!("Twitch has no user with id {id}"),
            })?
        }
        _ => token_user.clone(),
    };
    // Twitch takes announcements only from the token's own user.
    match credentials.get("moderator_id") {
        None => credentials.insert("moderator_id", token_user.id.clone()),
        Some(moderator) if moderator != token_user.id => {
            return Err(ConnectError::Rejected {
                field: "moderator_id".into(),
                message: format!("must be the user the access token belongs to ({})", token_user.id),
            });
        }
        Some(_) => {}
    }
    credentials.insert("broadcaster_id", broadcaster.id.clone());
    Ok(Connected {
        external_id: broadcaster.id,
        display_name: cut(&broadcaster.display_name, 100),
        profile_url: format!("https://www.twitch.tv/{}", broadcaster.login),
        handle: broadcaster.login,
        avatar_url: broadcaster.profile_image_url,
        limits: None,
        token_expires_at: expiry(validation.expires_in),
        credentials,
    })
}

/// `GET /oauth2/validate`: whose token it is and how long it lasts.
async fn validate(
    client: &reqwest::Client,
    urls: &PlatformUrls,
    credentials: &Credentials,
) -> Result<Validation, ConnectError> {
    let url =
        url::Url::parse(&auth_url(urls, "validate")).map_err(|e| ConnectError::Unavailable(e.to_string()))?;
    let token = credentials.get("access_token").unwrap_or_default();
    let request = client.get(url).header("Authorization", format!("OAuth {token}"));
    let reply = send(NAME, request).await.map_err(unavailable)?;
    if !reply.is_success() {
        return Err(connect_failure(NAME, "access_token", &reply));
    }
    reply.parse(NAME).map_err(unavailable)
}

/// `POST /oauth2/token` with the refresh token.
pub(super) async fn refresh(
    client: &reqwest::Client,
    urls: &PlatformUrls,
    credentials: &Credentials,
) -> Result<Refreshed, RefreshError> {
    let (Some(refresh_token), Some(client_id), Some(client_secret)) =
        (credentials.get("refresh_token"), credentials.get("client_id"), credentials.get("client_secret"))
    else {
        return Err(RefreshError::Refused("no refresh token and client secret were given".into()));
    };
    let url =
        url::Url::parse(&auth_url(urls, "token")).map_err(|e| RefreshError::Unavailable(e.to_string()))?;
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "refresh_token")
        .append_pair("refresh_token", refresh_token)
        .append_pair("client_id", client_id)
        .append_pair("client_secret", client_secret)
        .finish();
    let reply =
        send(NAME, client.post(url).header("Content-Type", "application/x-www-form-urlencoded").body(form))
            .await
            .map_err(|e| RefreshError::Unavailable(e.message))?;
    let status = reply.status.as_u16();
    if !reply.is_success() {
        let message = format!("Twitch refused the token refresh (HTTP {status}): {}", reply.error_text());
        // 400 (invalid refresh token) and 401/403 (wrong client) do not get
        // better by waiting; 429 and 5xx do.
        return Err(match status {
            400..=403 => RefreshError::Refused(message),
            _ => RefreshError::Unavailable(message),
        });
    }
    let grant: Grant = reply.parse(NAME).map_err(|e| RefreshError::Unavailable(e.message))?;
    let mut credentials = credentials.clone();
    credentials.insert("access_token", grant.access_token);
    if !grant.refresh_token.is_empty() {
        credentials.insert("refresh_token", grant.refresh_token);
    }
    Ok(Refreshed { credentials, expires_at: expiry(grant.expires_in) })
}

/// The user `id`, or the token's own user without one.
async fn users(
    client: &reqwest::Client,
    urls: &PlatformUrls,
    credentials: &Credentials,
    id: Option<&str>,
) -> Result<Option<User>, ConnectError> {
    let mut url =
        url::Url::parse(&api_url(urls, "users")).map_err(|e| ConnectError::Unavailable(e.to_string()))?;
    if let Some(id) = id {
        url.query_pairs_mut().append_pair("id", id);
    }
    let request = client
        .get(url)
        .bearer_auth(credentials.get("access_token").unwrap_or_default())
        .header("Client-Id", credentials.get("client_id").unwrap_or_default());
    let reply = send(NAME, request).await.map_err(unavailable)?;
    if !reply.is_success() {
        let field =
            if id.is_some() && reply.status.as_u16() == 400 { "broadcaster_id" } else { "access_token" };
        return Err(connect_failure(NAME, field, &reply));
    }
    let users: Users = reply.parse(NAME).map_err(unavailable)?;
    Ok(users.data.into_iter().next())
}

pub(super) async fn publish(
    client: &reqwest::Client,
    urls: &PlatformUrls,
    credentials: &Credentials,
    post: &RenderedPost,
) -> Result<Published, PublishError> {
    let broadcaster = credentials.require("broadcaster_id")?;
    let moderator = credentials.get("moderator_id").unwrap_or(broadcaster);
    let mut url = parse_api_url(&api_url(urls, "chat/announcements"))?;
    url.query_pairs_mut().append_pair("broadcaster_id", broadcaster).append_pair("moderator_id", moderator);
    let request = client
        .post(url)
        .bearer_auth(credentials.require("access_token")?)
        .header("Client-Id", credentials.require("client_id")?)
        .json(&json!({ "message": post.text }));
    let reply = send(NAME, request).await?;
    if !reply.is_success() {
        return Err(failure(NAME, &reply));
    }
    // 204 No Content: announcements get no id and no link.
    Ok(Published { external_id: String::new(), external_url: String::new() })
}

fn parse_api_url(url: &str) -> Result<url::Url, PublishError> {
    url::Url::parse(url).map_err(|e| {
        PublishError::new(
            PublishErrorKind::Internal,
            format!("the configured Twitch API URL is invalid: {e}"),
        )
    })
}

//! Twitch, as a chat announcement: `GET /helix/users` checks the token and
//! names its user, `POST /helix/chat/announcements` publishes (204, no id).
//! Every call carries the token and the application's `Client-Id`.
//!
//! User access tokens expire (about four hours for implicit-grant tokens);
//! refreshing needs the application's secret and a refresh token, which
//! postmesh does not take yet, so an expired token ends in `Unauthorized`.

use postmesh_proto::postmesh::social::v1::{PublishErrorKind, RenderedPost};
use serde::Deserialize;
use serde_json::json;

use super::http::{connect_failure, failure, send, unavailable};
use super::{ConnectError, Connected, Credentials, PlatformUrls, PublishError, Published, cut};

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

fn api_url(urls: &PlatformUrls, path: &str) -> String {
    format!("{}/helix/{path}", urls.twitch.trim_end_matches('/'))
}

pub(super) async fn connect(
    client: &reqwest::Client,
    urls: &PlatformUrls,
    mut credentials: Credentials,
) -> Result<Connected, ConnectError> {
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
        token_expires_at: None,
        credentials,
    })
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

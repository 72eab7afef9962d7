//! Discord, through a channel webhook: `GET` on the webhook URL checks it,
//! `POST {webhook_url}?wait=true` executes it and answers with the message.
//! Images go as embeds pointing at their URL (Discord fetches them).

use postmesh_proto::postmesh::social::v1::RenderedPost;
use serde::Deserialize;
use serde_json::json;

use super::http::{connect_failure, failure, send, unavailable};
use super::{ConnectError, Connected, Credentials, PublishError, Published, cut, parse_url_field};

const NAME: &str = "Discord";

/// The webhook object Discord returns.
#[derive(Deserialize)]
struct Webhook {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    avatar: Option<String>,
    #[serde(default)]
    channel_id: Option<String>,
    #[serde(default)]
    guild_id: Option<String>,
}

pub(super) async fn connect(
    client: &reqwest::Client,
    mut credentials: Credentials,
) -> Result<Connected, ConnectError> {
    let url = parse_url_field(&credentials, "webhook_url")?;
    let reply = send(NAME, client.get(url)).await.map_err(unavailable)?;
    if !reply.is_success() {
        return Err(connect_failure(NAME, "webhook_url", &reply));
    }
    let webhook: Webhook = reply.parse(NAME).map_err(unavailable)?;
    let name = webhook.name.unwrap_or_default();
    let channel_url = match (&webhook.guild_id, &webhook.channel_id) {
        (Some(guild), Some(channel)) => format!("https://discord.com/channels/{guild}/{channel}"),
        _ => String::new(),
    };
    let avatar_url = webhook
        .avatar
        .map(|hash| format!("https://cdn.discordapp.com/avatars/{}/{hash}.png", webhook.id))
        .unwrap_or_default();
    if let Some(guild) = webhook.guild_id {
        credentials.insert("guild_id", guild);
    }
    Ok(Connected {
        external_id: webhook.id,
        display_name: cut(&format!("Discord webhook \"{name}\""), 100),
        handle: name,
        profile_url: channel_url,
        avatar_url,
        limits: None,
        token_expires_at: None,
        credentials,
    })
}

/// The message Discord returns with `wait=true`.
#[derive(Deserialize)]
struct Message {
    id: String,
    #[serde(default)]
    channel_id: Option<String>,
    #[serde(default)]
    guild_id: Option<String>,
}

pub(super) async fn publish(
    client: &reqwest::Client,
    credentials: &Credentials,
    post: &RenderedPost,
) -> Result<Published, PublishError> {
    let mut url = credentials.require_url("webhook_url")?;
    url.query_pairs_mut().append_pair("wait", "true");
    let embeds: Vec<_> = post.media.iter().map(|media| json!({ "image": { "url": media.url } })).collect();
    let mut body = json!({ "content": post.text });
    if !embeds.is_empty() {
        body["embeds"] = embeds.into();
    }
    let reply = send(NAME, client.post(url).json(&body)).await?;
    if !reply.is_success() {
        return Err(failure(NAME, &reply));
    }
    let Some(message) = reply.json().and_then(|body| serde_json::from_value::<Message>(body).ok()) else {
        tracing::warn!(status = %reply.status, "Discord accepted the message without saying its id");
        return Ok(Published { external_id: String::new(), external_url: String::new() });
    };
    let guild = message.guild_id.as_deref().or_else(|| credentials.get("guild_id"));
    let external_url = match (guild, &message.channel_id) {
        (Some(guild), Some(channel)) => {
            format!("https://discord.com/channels/{guild}/{channel}/{}", message.id)
        }
        _ => String::new(),
    };
    Ok(Published { external_id: message.id, external_url })
}

//! Telegram, through the Bot API: `getMe` checks the token, `getChat` the
//! chat, and `sendMessage` with `parse_mode: HTML` publishes. Every answer
//! is `{ok, result}` or `{ok: false, error_code, description, parameters}`.

use postmesh_proto::postmesh::social::v1::RenderedPost;
use postmesh_proto::postmesh::r#type::v1::TextFormat;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::http::{connect_failure, failure, send, unavailable};
use super::{ConnectError, Connected, Credentials, PlatformUrls, PublishError, Published, cut};

const NAME: &str = "Telegram";

/// A chat as `getChat` and messages describe it.
#[derive(Deserialize)]
struct Chat {
    id: i64,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
}

/// The `{ok: true, result}` envelope.
#[derive(Deserialize)]
struct Envelope<T> {
    result: T,
}

fn method_url(urls: &PlatformUrls, token: &str, method: &str) -> String {
    format!("{}/bot{token}/{method}", urls.telegram.trim_end_matches('/'))
}

pub(super) async fn connect(
    client: &reqwest::Client,
    urls: &PlatformUrls,
    credentials: Credentials,
) -> Result<Connected, ConnectError> {
    let token = credentials.get("bot_token").unwrap_or_default();
    let invalid =
        |field: &str, reason: &str| ConnectError::InvalidField { field: field.into(), reason: reason.into() };
    if !is_bot_token(token) {
        return Err(invalid("bot_token", "is not a bot token (digits, a colon, then letters and digits)"));
    }
    let chat_id = credentials.get("chat_id").unwrap_or_default();
    if !is_chat_id(chat_id) {
        return Err(invalid("chat_id", "must be a numeric chat id or a @username"));
    }
    call::<Value>(client, urls, token, "getMe", json!({}), "bot_token").await?;
    let chat: Chat = call(client, urls, token, "getChat", json!({ "chat_id": chat_id }), "chat_id").await?;
    let display_name = match (&chat.title, &chat.username, &chat.first_name) {
        (Some(title), _, _) => title.clone(),
        (None, Some(username), _) => format!("@{username}"),
        (None, None, Some(name)) => name.clone(),
        (None, None, None) => chat.id.to_string(),
    };
    Ok(Connected {
        external_id: chat.id.to_string(),
        display_name: cut(&display_name, 100),
        profile_url: chat.username.as_ref().map(|u| format!("https://t.me/{u}")).unwrap_or_default(),
        handle: chat.username.unwrap_or_default(),
        avatar_url: String::new(),
        limits: None,
        token_expires_at: None,
        credentials,
    })
}

/// Calls a check method; a refusal names `field`, except an invalid token
/// (401, or 404 for a token Telegram cannot parse), which names the token.
async fn call<T: DeserializeOwned>(
    client: &reqwest::Client,
    urls: &PlatformUrls,
    token: &str,
    method: &str,
    body: Value,
    field: &str,
) -> Result<T, ConnectError> {
    let reply =
        send(NAME, client.post(method_url(urls, token, method)).json(&body)).await.map_err(unavailable)?;
    if !reply.is_success() {
        let field = if matches!(reply.status.as_u16(), 401 | 404) { "bot_token" } else { field };
        return Err(connect_failure(NAME, field, &reply));
    }
    let envelope: Envelope<T> = reply.parse(NAME).map_err(unavailable)?;
    Ok(envelope.result)
}

/// A message `sendMessage` returns.
#[derive(Deserialize)]
struct Message {
    message_id: i64,
    chat: Chat,
}

pub(super) async fn publish(
    client: &reqwest::Client,
    urls: &PlatformUrls,
    credentials: &Credentials,
    post: &RenderedPost,
) -> Result<Published, PublishError> {
    let token = credentials.require("bot_token")?;
    let mut body = json!({ "chat_id": credentials.require("chat_id")?, "text": post.text });
    if post.format == TextFormat::Html as i32 {
        body["parse_mode"] = "HTML".into();
    }
    let reply = send(NAME, client.post(method_url(urls, token, "sendMessage")).json(&body)).await?;
    if !reply.is_success() {
        return Err(failure(NAME, &reply));
    }
    let Some(Envelope { result: message }) =
        reply.json().and_then(|body| serde_json::from_value::<Envelope<Message>>(body).ok())
    else {
        tracing::warn!(status = %reply.status, "Telegram sent the message without saying its id");
        return Ok(Published { external_id: String::new(), external_url: String::new() });
    };
    let external_url = message
        .chat
        .username
        .map(|username| format!("https://t.me/{username}/{}", message.message_id))
        .unwrap_or_default();
    Ok(Published { external_id: message.message_id.to_string(), external_url })
}

/// `123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11`: the shape @BotFather gives.
fn is_bot_token(token: &str) -> bool {
    let Some((id, secret)) = token.split_once(':') else { return false };
    !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && !secret.is_empty()
        && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A numeric chat id (negative for groups and channels) or `@username`.
fn is_chat_id(chat_id: &str) -> bool {
    if let Some(username) = chat_id.strip_prefix('@') {
        return username.len() >= 4 && username.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    }
    chat_id.strip_prefix('-').unwrap_or(chat_id).parse::<u64>().is_ok()
}

//! Slack, through an incoming webhook: `POST` of `{text}` in `mrkdwn`,
//! answered with the body `ok`. Slack offers no way to check a webhook
//! without posting, so connecting only checks the URL's shape. Failures are
//! plain-text codes (`invalid_token`, `channel_not_found`, `no_service`…),
//! which say more than the status and refine its classification.

use postmesh_proto::postmesh::social::v1::{PublishErrorKind, RenderedPost};
use serde_json::json;

use super::http::{failure, send};
use super::{ConnectError, Connected, Credentials, PublishError, Published, parse_url_field};

const NAME: &str = "Slack";

pub(super) fn connect(credentials: Credentials) -> Result<Connected, ConnectError> {
    let url = parse_url_field(&credentials, "webhook_url")?;
    // The last path segment is the token; the rest names the webhook.
    let mut segments: Vec<&str> =
        url.path_segments().into_iter().flatten().filter(|s| !s.is_empty()).collect();
    if segments.len() < 2 {
        return Err(ConnectError::InvalidField {
            field: "webhook_url".into(),
            reason: "is not an incoming webhook URL (…/services/T…/B…/token)".into(),
        });
    }
    segments.pop();
    let name = segments.last().copied().unwrap_or_default().to_owned();
    Ok(Connected {
        external_id: format!("{}/{}", url.host_str().unwrap_or_default(), segments.join("/")),
        display_name: format!("Slack webhook {name}"),
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
) -> Result<Published, PublishError> {
    let url = credentials.require_url("webhook_url")?;
    let reply = send(NAME, client.post(url).json(&json!({ "text": post.text }))).await?;
    if !reply.is_success() {
        let mut error = failure(NAME, &reply);
        if let Some(kind) = error_kind(String::from_utf8_lossy(&reply.body).trim()) {
            error.kind = kind;
        }
        return Err(error);
    }
    // Incoming webhooks answer `ok` and nothing that names the message.
    Ok(Published { external_id: String::new(), external_url: String::new() })
}

/// What Slack's error codes mean, where the status alone would mislead
/// (Slack answers 403 for a revoked token, 404 or 410 for a gone channel).
fn error_kind(code: &str) -> Option<PublishErrorKind> {
    Some(match code {
        "invalid_token" | "token_revoked" | "token_expired" | "invalid_auth" => {
            PublishErrorKind::Unauthorized
        }
        "action_prohibited" | "posting_to_general_channel_denied" => PublishErrorKind::Forbidden,
        "no_service"
        | "no_service_id"
        | "no_team"
        | "team_disabled"
        | "channel_not_found"
        | "channel_is_archived" => PublishErrorKind::NotFound,
        "invalid_payload" | "no_text" | "too_many_attachments" | "user_not_found" => {
            PublishErrorKind::InvalidContent
        }
        _ => return None,
    })
}

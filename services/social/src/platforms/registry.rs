//! The platform registry: what each platform takes to connect, what one post
//! may hold there, what it can do, and the paces postmesh keeps (below each
//! platform's published limits; a 429 is honoured on top).

use std::sync::OnceLock;
use std::time::Duration;

use postmesh_proto::postmesh::social::v1::{
    CredentialField, PlatformCapabilities, PlatformInfo, PlatformLimits, RateLimit, RateLimitScope,
};
use postmesh_proto::postmesh::r#type::v1::{LengthUnit, Platform, TextFormat};

/// Every supported platform's registry entry, in enum order (Discord …
/// Webhook).
pub fn registry() -> &'static [PlatformInfo] {
    static REGISTRY: OnceLock<Vec<PlatformInfo>> = OnceLock::new();
    REGISTRY.get_or_init(|| vec![discord(), mastodon(), bluesky(), telegram(), slack(), twitch(), webhook()])
}

/// The registry entry of `platform`; `None` for `Unspecified`.
pub fn info(platform: Platform) -> Option<&'static PlatformInfo> {
    registry().iter().find(|info| info.platform == platform as i32)
}

const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

fn discord() -> PlatformInfo {
    PlatformInfo {
        platform: Platform::Discord as i32,
        display_name: "Discord".into(),
        description: "Posts to a channel through a channel webhook (Server Settings → Integrations → \
                      Webhooks); images are attached as embeds by URL."
            .into(),
        credential_fields: vec![secret(
            "webhook_url",
            "Webhook URL",
            "The channel webhook's URL, https://discord.com/api/webhooks/<id>/<token>; it contains the \
             token.",
        )],
        limits: Some(PlatformLimits {
            max_text_length: 2000,
            length_unit: LengthUnit::CodePoints as i32,
            text_required: false,
            max_media: 10,
            media_types: strings(&IMAGE_TYPES),
            max_media_bytes: 0,
            max_alt_text_length: 0,
        }),
        capabilities: Some(PlatformCapabilities {
            text_format: TextFormat::Markdown as i32,
            platform_idempotency: false,
            credential_check: true,
            token_refresh: false,
            post_url: true,
            language: false,
        }),
        // Webhooks allow 5 requests per 2 s and 30 messages a minute per channel.
        rate_limits: vec![per_account(5, 2), per_account(30, 60)],
    }
}

fn mastodon() -> PlatformInfo {
    PlatformInfo {
        platform: Platform::Mastodon as i32,
        display_name: "Mastodon".into(),
        description: "Posts a public status with the account's access token; media are uploaded first. \
                      An instance's own length and media limits apply to its accounts."
            .into(),
        credential_fields: vec![
            public(
                "instance_url",
                "Instance URL",
                "The address of the account's Mastodon server.",
                "https://mastodon.social",
            ),
            secret(
                "access_token",
                "Access token",
                "A token of an application with the write:statuses and write:media scopes \
                 (Preferences → Development → New application).",
            ),
        ],
        limits: Some(mastodon_default_limits()),
        capabilities: Some(PlatformCapabilities {
            text_format: TextFormat::Plain as i32,
            platform_idempotency: true,
            credential_check: true,
            token_refresh: false,
            post_url: true,
            language: true,
        }),
        // Mastodon allows 300 API calls per 5 minutes and 300 statuses per 3
        // hours per account.
        rate_limits: vec![per_account(300, 5 * 60), per_account(300, 3 * 3600)],
    }
}

/// Mastodon's limits when the instance does not say otherwise.
pub(super) fn mastodon_default_limits() -> PlatformLimits {
    PlatformLimits {
        max_text_length: 500,
        length_unit: LengthUnit::MastodonWeighted as i32,
        text_required: false,
        max_media: 4,
        media_types: strings(&["image/jpeg", "image/png", "image/gif", "image/webp", "video/mp4"]),
        max_media_bytes: 16 * 1024 * 1024,
        max_alt_text_length: 1500,
    }
}

fn bluesky() -> PlatformInfo {
    PlatformInfo {
        platform: Platform::Bluesky as i32,
        display_name: "Bluesky".into(),
        description: "Creates a post record in the account's repository with an app password; links, \
                      mentions and hashtags become facets, images are uploaded as blobs."
            .into(),
        credential_fields: vec![
            public(
                "handle",
                "Handle",
                "The account's handle (or its email address or DID).",
                "alice.bsky.social",
            ),
            secret(
                "app_password",
                "App password",
                "An app password (Settings → Privacy and security → App passwords), not the account \
                 password.",
            ),
            CredentialField {
                required: false,
                ..public(
                    "service_url",
                    "Service URL",
                    "The account's PDS, for accounts not hosted by Bluesky. Defaults to https://bsky.social.",
                    "https://bsky.social",
                )
            },
        ],
        limits: Some(PlatformLimits {
            max_text_length: 300,
            length_unit: LengthUnit::Graphemes as i32,
            text_required: false,
            max_media: 4,
            media_types: strings(&["image/jpeg", "image/png", "image/webp"]),
            max_media_bytes: 1_000_000,
            max_alt_text_length: 2000,
        }),
        capabilities: Some(PlatformCapabilities {
            text_format: TextFormat::Faceted as i32,
            platform_idempotency: false,
            credential_check: true,
            token_refresh: false,
            post_url: true,
            language: true,
        }),
        // A PDS allows 5,000 write points an hour and 35,000 a day per
        // account; creating a record costs 3.
        rate_limits: vec![per_account(1666, 3600), per_account(11_666, 86_400)],
    }
}

fn telegram() -> PlatformInfo {
    PlatformInfo {
        platform: Platform::Telegram as i32,
        display_name: "Telegram".into(),
        description: "Sends a message to a chat or channel through a bot (@BotFather) that is a member \
                      (an administrator of channels). Media are sent as links. Posts to public chats get \
                      a t.me link."
            .into(),
        credential_fields: vec![
            secret("bot_token", "Bot token", "The token @BotFather gave the bot, such as 123456:ABC-DEF…."),
            public(
                "chat_id",
                "Chat",
                "The chat's numeric id or a public channel's @username.",
                "@my_channel",
            ),
        ],
        limits: Some(PlatformLimits {
            max_text_length: 4096,
            length_unit: LengthUnit::Utf16CodeUnits as i32,
            text_required: true,
            max_media: 0,
            media_types: Vec::new(),
            max_media_bytes: 0,
            max_alt_text_length: 0,
        }),
        capabilities: Some(PlatformCapabilities {
            text_format: TextFormat::Html as i32,
            platform_idempotency: false,
            credential_check: true,
            token_refresh: false,
            post_url: false,
            language: false,
        }),
        // A bot may send 20 messages a minute to one group and 30 a second
        // overall, whichever chats (accounts) it serves.
        rate_limits: vec![per_account(20, 60), per_credential(30, 1)],
    }
}

fn slack() -> PlatformInfo {
    PlatformInfo {
        platform: Platform::Slack as i32,
        display_name: "Slack".into(),
        description: "Posts to the channel of an incoming webhook. Slack does not let a webhook be checked \
                      without posting, so the URL is first tried at the first publish. Media are sent as \
                      links."
            .into(),
        credential_fields: vec![secret(
            "webhook_url",
            "Webhook URL",
            "The incoming webhook's URL, https://hooks.slack.com/services/T…/B…/…; it contains the token.",
        )],
        limits: Some(PlatformLimits {
            max_text_length: 40_000,
            length_unit: LengthUnit::CodePoints as i32,
            text_required: true,
            max_media: 0,
            media_types: Vec::new(),
            max_media_bytes: 0,
            max_alt_text_length: 0,
        }),
        capabilities: Some(PlatformCapabilities {
            text_format: TextFormat::SlackMrkdwn as i32,
            platform_idempotency: false,
            credential_check: false,
            token_refresh: false,
            post_url: false,
            language: false,
        }),
        // Incoming webhooks take about one message a second.
        rate_limits: vec![per_account(1, 1)],
    }
}

fn twitch() -> PlatformInfo {
    PlatformInfo {
        platform: Platform::Twitch as i32,
        display_name: "Twitch".into(),
        description: "Sends a chat announcement in a channel with a user access token of the broadcaster or \
                      one of its moderators. Tokens expire after a few hours: with the refresh token and the \
                      application's client secret postmesh renews them before they do; without, connect \
                      again with a new token."
            .into(),
        credential_fields: vec![
            public(
                "client_id",
                "Client ID",
                "The Client ID of the Twitch application the token belongs to.",
                "hof5gwx0su6owfnys0yan9c87zr6t",
            ),
            secret(
                "access_token",
                "Access token",
                "A user access token with the moderator:manage:announcements scope.",
            ),
            CredentialField {
                required: false,
                ..secret(
                    "refresh_token",
                    "Refresh token",
                    "The refresh token issued with the access token; lets postmesh renew it.",
                )
            },
            CredentialField {
                required: false,
                ..secret(
                    "client_secret",
                    "Client secret",
                    "The Twitch application's client secret, needed with the refresh token.",
                )
            },
            CredentialField {
                required: false,
                ..public(
                    "broadcaster_id",
                    "Broadcaster ID",
                    "The user id of the channel to announce in. Defaults to the token's user.",
                    "141981764",
                )
            },
            CredentialField {
                required: false,
                ..public(
                    "moderator_id",
                    "Moderator ID",
                    "The user id sending the announcement; must be the token's user. Defaults to it.",
                    "141981764",
                )
            },
        ],
        limits: Some(PlatformLimits {
            max_text_length: 500,
            length_unit: LengthUnit::CodePoints as i32,
            text_required: true,
            max_media: 0,
            media_types: Vec::new(),
            max_media_bytes: 0,
            max_alt_text_length: 0,
        }),
        capabilities: Some(PlatformCapabilities {
            text_format: TextFormat::Plain as i32,
            platform_idempotency: false,
            credential_check: true,
            token_refresh: true,
            post_url: false,
            language: false,
        }),
        // Announcements are limited to one per 2 seconds per channel.
        rate_limits: vec![per_account(1, 2)],
    }
}

fn webhook() -> PlatformInfo {
    PlatformInfo {
        platform: Platform::Webhook as i32,
        display_name: "Webhook".into(),
        description: "POSTs the post as JSON ({id, text, media, language, idempotency_key}) to any URL, \
                      signed the Standard Webhooks way (webhook-id, webhook-timestamp, webhook-signature). \
                      Any 2xx answer accepts it; a JSON answer with `id` and `url` names the post."
            .into(),
        credential_fields: vec![
            public(
                "url",
                "URL",
                "The endpoint that receives the posts.",
                "https://example.com/hooks/postmesh",
            ),
            secret(
                "secret",
                "Signing secret",
                "The key for the HMAC-SHA256 signature: whsec_ followed by base64, or any string of at least \
                 16 characters.",
            ),
        ],
        limits: Some(PlatformLimits {
            max_text_length: 0,
            length_unit: LengthUnit::CodePoints as i32,
            text_required: false,
            max_media: 10,
            media_types: strings(&["image/jpeg", "image/png", "image/gif", "image/webp", "video/mp4"]),
            max_media_bytes: 0,
            max_alt_text_length: 1500,
        }),
        capabilities: Some(PlatformCapabilities {
            text_format: TextFormat::Plain as i32,
            platform_idempotency: false,
            credential_check: false,
            token_refresh: false,
            post_url: false,
            language: true,
        }),
        rate_limits: Vec::new(),
    }
}

fn secret(name: &str, label: &str, description: &str) -> CredentialField {
    CredentialField {
        name: name.into(),
        label: label.into(),
        description: description.into(),
        secret: true,
        required: true,
        example: String::new(),
    }
}

fn public(name: &str, label: &str, description: &str, example: &str) -> CredentialField {
    CredentialField {
        name: name.into(),
        label: label.into(),
        description: description.into(),
        secret: false,
        required: true,
        example: example.into(),
    }
}

fn per_account(requests: i32, seconds: u64) -> RateLimit {
    rate_limit(RateLimitScope::Account, requests, seconds)
}

fn per_credential(requests: i32, seconds: u64) -> RateLimit {
    rate_limit(RateLimitScope::Credential, requests, seconds)
}

fn rate_limit(scope: RateLimitScope, requests: i32, seconds: u64) -> RateLimit {
    let period = prost_types::Duration::try_from(Duration::from_secs(seconds)).expect("a small duration");
    RateLimit { scope: scope as i32, requests, period: Some(period) }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

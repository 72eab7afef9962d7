//! `postmesh-client`: the postmesh SDK for Rust.
//!
//! The generated tonic clients and messages of every service (one module
//! per service: [`user`], [`content`], [`social`], [`analytics`], [`ai`],
//! [`notification`], [`webhook`], shared types in [`types`]), and a
//! [`Client`] whose calls go through the same resilience stack the
//! services use between themselves ([`resilience`]): the caller's
//! credential, a default deadline, a circuit breaker, retries of
//! idempotent calls within a budget, and a concurrency limit.
//!
//! ```no_run
//! # async fn run() -> postmesh_client::Result<()> {
//! use postmesh_client::{Client, content::CreatePostRequest};
//!
//! let client = Client::builder("http://127.0.0.1:50051").api_key("pm_…").connect().await?;
//! let request = CreatePostRequest { text: "Hello".into(), target_account_ids: vec!["…".into()], ..Default::default() };
//! let post = client.content().create_post(request).await?.into_inner().post.unwrap_or_default();
//! let status = client.wait_until_settled(&post.id).await?;
//! # Ok(()) }
//! ```
//!
//! Failed calls return `tonic::Status`; `?` turns it into [`Error`], which
//! reads the details postmesh attaches ([`Error::field_violations`],
//! [`Error::retry_after`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod error;
pub mod resilience;

pub use client::{Channel, Client, ClientBuilder};
pub use error::{Error, Result, code_name};
pub use resilience::{CallTimeout, CircuitState};
pub use tonic_types::FieldViolation;
/// The versions of tonic and prost-types the generated code uses, so
/// callers need not match them (`tonic::Request`, `prost_types::Timestamp`).
pub use {prost_types, tonic};

/// Accounts, sign-in, two-factor, API keys, workspaces and members
/// (`postmesh.user.v1`).
pub mod user {
    pub use postmesh_proto::postmesh::user::v1::*;
}

/// Posts, templates, scheduling and publishing status (`postmesh.content.v1`).
pub mod content {
    pub use postmesh_proto::postmesh::content::v1::*;
}

/// Connected social accounts and publishing (`postmesh.social.v1`).
pub mod social {
    pub use postmesh_proto::postmesh::social::v1::*;
}

/// How posts perform (`postmesh.analytics.v1`).
pub mod analytics {
    pub use postmesh_proto::postmesh::analytics::v1::*;
}

/// AI help with writing (`postmesh.ai.v1`).
pub mod ai {
    pub use postmesh_proto::postmesh::ai::v1::*;
}

/// Notifications and the live feed (`postmesh.notification.v1`).
pub mod notification {
    pub use postmesh_proto::postmesh::notification::v1::*;
}

/// Outgoing webhooks and deliveries (`postmesh.webhook.v1`).
pub mod webhook {
    pub use postmesh_proto::postmesh::webhook::v1::*;
}

/// Types every service shares: platforms, media, roles
/// (`postmesh.type.v1`).
pub mod types {
    pub use postmesh_proto::postmesh::r#type::v1::*;
}

/// The user service's client.
pub type UserClient = user::user_service_client::UserServiceClient<Channel>;
/// The content service's client.
pub type ContentClient = content::content_service_client::ContentServiceClient<Channel>;
/// The social service's client.
pub type SocialClient = social::social_service_client::SocialServiceClient<Channel>;
/// The analytics service's client.
pub type AnalyticsClient = analytics::analytics_service_client::AnalyticsServiceClient<Channel>;
/// The AI service's client.
pub type AiClient = ai::ai_service_client::AiServiceClient<Channel>;
/// The notification service's client.
pub type NotificationClient = notification::notification_service_client::NotificationServiceClient<Channel>;
/// The webhook service's client.
pub type WebhookClient = webhook::webhook_service_client::WebhookServiceClient<Channel>;

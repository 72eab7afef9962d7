//! The components a process can run: the seven services and the gateway.

use postmesh_kit::{Runtime, ServiceSpec, StartError};

/// Something `postmesh serve` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Component {
    /// Accounts, tokens, 2FA, API keys, workspaces and roles.
    User,
    /// Posts, templates, scheduling and publishing status.
    Content,
    /// Platforms, connected accounts and publishing.
    Social,
    /// Engagement metrics, dashboards and reports.
    Analytics,
    /// Content generation and analysis.
    Ai,
    /// Inbox, email, live stream and preferences.
    Notification,
    /// Inbound and outbound webhooks and rules.
    Webhook,
    /// The HTTP/JSON gateway.
    Gateway,
}

impl Component {
    /// The services, in start order.
    pub const SERVICES: [Component; 7] = [
        Component::User,
        Component::Content,
        Component::Social,
        Component::Analytics,
        Component::Ai,
        Component::Notification,
        Component::Webhook,
    ];

    /// The service's spec; `None` for the gateway, which has no database.
    pub fn spec(self) -> Option<ServiceSpec> {
        Some(match self {
            Component::User => postmesh_user::SPEC,
            Component::Content => postmesh_content::SPEC,
            Component::Social => postmesh_social::SPEC,
            Component::Analytics => postmesh_analytics::SPEC,
            Component::Ai => postmesh_ai::SPEC,
            Component::Notification => postmesh_notification::SPEC,
            Component::Webhook => postmesh_webhook::SPEC,
            Component::Gateway => return None,
        })
    }

    /// Starts the service on `runtime` and adds its gRPC server.
    pub async fn mount(self, runtime: &mut Runtime) -> Result<(), StartError> {
        let Some(spec) = self.spec() else { return Ok(()) };
        let deps = runtime.service(spec).await?;
        match self {
            Component::User => runtime.add_grpc_service(postmesh_user::router(&deps)),
            Component::Content => runtime.add_grpc_service(postmesh_content::router(&deps)),
            Component::Social => runtime.add_grpc_service(postmesh_social::router(&deps).await?),
            Component::Analytics => runtime.add_grpc_service(postmesh_analytics::router(&deps)),
            Component::Ai => runtime.add_grpc_service(postmesh_ai::router(&deps)),
            Component::Notification => runtime.add_grpc_service(postmesh_notification::router(&deps)),
            Component::Webhook => runtime.add_grpc_service(postmesh_webhook::router(&deps).await?),
            Component::Gateway => {}
        }
        Ok(())
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = clap::ValueEnum::to_possible_value(self).map(|v| v.get_name().to_owned());
        f.write_str(name.as_deref().unwrap_or("?"))
    }
}

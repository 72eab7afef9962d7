//! A running user service and typed helpers for its calls.

use postmesh_kit::testing::{TestEnv, TestServer};
use postmesh_proto::postmesh::user::v1 as pb;
use postmesh_proto::postmesh::user::v1::user_service_client::UserServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// A password that passes the policy.
pub const PASSWORD: &str = "violet-ocean-lantern-42";

pub struct App {
    pub server: TestServer,
    pub env: TestEnv,
    pub channel: Channel,
}

/// A registered user with a fresh session.
#[derive(Debug, Clone)]
pub struct Account {
    pub email: String,
    pub user_id: String,
    pub workspace_id: String,
    pub access: String,
    pub refresh: String,
}

pub async fn spawn_app() -> App {
    let env = TestEnv::new().await;
    let mut builder = TestServer::builder(&env, "user", true).await;
    let deps = builder.runtime.service(postmesh_user::SPEC).await.expect("user service starts");
    builder.runtime.add_grpc_service(postmesh_user::router(&deps));
    let server = builder.serve().await;
    let channel = server.channel().await;
    App { server, env, channel }
}

pub fn unique_email(name: &str) -> String {
    format!("{name}.{}@example.com", uuid::Uuid::now_v7().simple())
}

/// `message` carrying `token` as a bearer credential.
pub fn signed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// `message` carrying an API key in `x-api-key`.
pub fn with_api_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("x-api-key", key.parse().unwrap());
    request
}

/// The fields named by a status's `BadRequest` details.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Err(status) if status.code() == code => status,
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

/// The next message on an event subscription, decoded.
pub async fn next_event<E: prost::Message + Default>(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<postmesh_kit::bus::Delivery>,
) -> E {
    let delivery = tokio::time::timeout(std::time::Duration::from_secs(15), events.recv())
        .await
        .expect("the event is published")
        .expect("subscription open");
    E::decode(delivery.message.payload.as_slice()).expect("event decodes")
}

impl App {
    /// Subscribes to events matching `filter` (cancel the token to stop).
    pub async fn listen(
        &self,
        filter: &str,
    ) -> (
        tokio::sync::mpsc::UnboundedReceiver<postmesh_kit::bus::Delivery>,
        tokio_util::sync::CancellationToken,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let handler = move |delivery| {
            let _ = tx.send(delivery);
            futures::future::ready(postmesh_kit::bus::JobOutcome::Done)
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let name = format!("test-{}", uuid::Uuid::now_v7().simple());
        let spec = postmesh_kit::bus::ConsumerSpec::new(name, filter, &self.env.config);
        self.server.bus.consume(spec, handler, shutdown.clone()).await.expect("consumer starts");
        (rx, shutdown)
    }

    pub fn client(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel.clone())
    }

    pub async fn register(&self, name: &str) -> Account {
        let email = unique_email(name);
        let response = self
            .client()
            .register(pb::RegisterRequest {
                email: email.clone(),
                password: PASSWORD.into(),
                display_name: format!("{name} Tester"),
                workspace_name: String::new(),
            })
            .await
            .expect("registration works")
            .into_inner();
        let tokens = response.tokens.unwrap();
        Account {
            email,
            user_id: response.user.unwrap().id,
            workspace_id: response.workspace.unwrap().id,
            access: tokens.access_token,
            refresh: tokens.refresh_token,
        }
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<pb::login_response::Result, Status> {
        let response = self
            .client()
            .login(pb::LoginRequest {
                email: email.into(),
                password: password.into(),
                workspace_id: String::new(),
            })
            .await?
            .into_inner();
        Ok(response.result.expect("login answers tokens or a challenge"))
    }

    pub async fn login_tokens(&self, email: &str) -> pb::TokenPair {
        match self.login(email, PASSWORD).await.expect("login works") {
            pb::login_response::Result::Tokens(tokens) => tokens,
            other => panic!("expected tokens, got {other:?}"),
        }
    }

    /// Adds `account` to `owner`'s workspace with `role` through an invitation.
    pub async fn join(&self, owner: &Account, account: &Account, role: postmesh_kit::auth::Role) {
        let invitation = self
            .client()
            .invite_member(signed(
                pb::InviteMemberRequest {
                    workspace_id: owner.workspace_id.clone(),
                    email: account.email.clone(),
                    role: role.to_proto(),
                },
                &owner.access,
            ))
            .await
            .expect("invite")
            .into_inner();
        self.client()
            .accept_invitation(signed(
                pb::AcceptInvitationRequest { token: invitation.token },
                &account.access,
            ))
            .await
            .expect("accept");
    }

    /// A token pair for `account` in `workspace_id`.
    pub async fn switch(&self, account: &Account, workspace_id: &str) -> pb::TokenPair {
        self.client()
            .switch_workspace(signed(
                pb::SwitchWorkspaceRequest { workspace_id: workspace_id.into() },
                &account.access,
            ))
            .await
            .expect("switch")
            .into_inner()
            .tokens
            .unwrap()
    }
}

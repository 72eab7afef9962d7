//! The tonic implementation: take the caller and the request apart, call
//! [`Users`], and turn the result into the contract's messages.

use std::net::IpAddr;

use postmesh_kit::auth::{Caller, CallerKind, Role};
use postmesh_kit::error::ApiError;
use postmesh_proto::postmesh::user::v1 as pb;
use postmesh_proto::postmesh::user::v1::user_service_server::UserService;
use tonic::{Request, Response, Status};

use crate::service::{
    self, LoginOutcome, MemberView, Page, SecondFactor, Tokens, Users, WorkspaceView, timestamp,
};
use crate::store::{api_keys, invitations, users, workspaces};

/// The gRPC face of the user service.
pub struct UserApi {
    users: Users,
}

impl UserApi {
    pub(crate) fn new(users: Users) -> Self {
        Self { users }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn ok<T>(value: T) -> Reply<T> {
    Ok(Response::new(value))
}

fn role_field(value: i32, field: &str) -> Result<Option<Role>, ApiError> {
    match value {
        0 => Ok(None),
        v => Role::from_proto(v)
            .map(Some)
            .ok_or_else(|| ApiError::invalid(field, format!("{v} is not a role"))),
    }
}

fn roles_field(values: &[i32], field: &str) -> Result<Vec<Role>, ApiError> {
    values
        .iter()
        .map(|v| role_field(*v, field)?.ok_or_else(|| ApiError::invalid(field, "unspecified role")))
        .collect()
}

fn second_factor_login(code: Option<pb::verify_login_request::Code>) -> Option<SecondFactor> {
    match code? {
        pb::verify_login_request::Code::TotpCode(c) => Some(SecondFactor::Totp(c)),
        pb::verify_login_request::Code::RecoveryCode(c) => Some(SecondFactor::RecoveryCode(c)),
    }
}

fn second_factor_disable(code: Option<pb::disable_two_factor_request::Code>) -> Option<SecondFactor> {
    match code? {
        pb::disable_two_factor_request::Code::TotpCode(c) => Some(SecondFactor::Totp(c)),
        pb::disable_two_factor_request::Code::RecoveryCode(c) => Some(SecondFactor::RecoveryCode(c)),
    }
}

/// The client's address for login throttling: the address the gateway
/// forwards (trusted only from a service caller), else the TCP peer.
fn client_address<T>(request: &Request<T>) -> String {
    let forwarded = request
        .extensions()
        .get::<Caller>()
        .filter(|c| c.is_service())
        .and_then(|_| request.metadata().get("x-forwarded-for"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse::<IpAddr>().ok());
    forwarded
        .or_else(|| request.remote_addr().map(|a| a.ip()))
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn user_pb(user: &users::Model) -> pb::User {
    pb::User {
        id: user.id.clone(),
        email: user.email.clone(),
        display_name: user.display_name.clone(),
        avatar_url: user.avatar_url.clone(),
        time_zone: user.time_zone.clone(),
        locale: user.locale.clone(),
        two_factor_enabled: user.totp_secret.is_some(),
        created_at: Some(timestamp(user.created_at)),
        updated_at: Some(timestamp(user.updated_at)),
        last_login_at: user.last_login_at.map(timestamp),
    }
}

fn workspace_pb(workspace: &workspaces::Model, member_count: i32) -> pb::Workspace {
    pb::Workspace {
        id: workspace.id.clone(),
        name: workspace.name.clone(),
        creator_user_id: workspace.creator_user_id.clone(),
        member_count,
        created_at: Some(timestamp(workspace.created_at)),
        updated_at: Some(timestamp(workspace.updated_at)),
    }
}

fn membership_pb(view: WorkspaceView, current: Option<&str>) -> pb::WorkspaceMembership {
    pb::WorkspaceMembership {
        current: current == Some(view.workspace.id.as_str()),
        workspace: Some(workspace_pb(&view.workspace, view.member_count)),
        role: view.role.to_proto(),
        joined_at: Some(timestamp(view.joined_at)),
    }
}

fn member_pb(view: &MemberView) -> pb::Member {
    pb::Member {
        workspace_id: view.membership.workspace_id.clone(),
        user: Some(user_pb(&view.user)),
        role: Role::parse(&view.membership.role).map(Role::to_proto).unwrap_or_default(),
        joined_at: Some(timestamp(view.membership.joined_at)),
        inviter_user_id: view.membership.inviter_user_id.clone().unwrap_or_default(),
    }
}

fn tokens_pb(tokens: Tokens) -> pb::TokenPair {
    pb::TokenPair {
        token_type: "Bearer".into(),
        access_token: tokens.access_token,
        access_token_expires_at: Some(timestamp(tokens.access_expires_at)),
        refresh_token: tokens.refresh_token,
        refresh_token_expires_at: Some(timestamp(tokens.refresh_expires_at)),
        user_id: tokens.user_id,
        workspace_id: tokens.workspace_id.unwrap_or_default(),
        role: tokens.role.map(Role::to_proto).unwrap_or_default(),
    }
}

fn api_key_pb(key: &api_keys::Model) -> pb::ApiKey {
    pb::ApiKey {
        id: key.id.clone(),
        name: key.name.clone(),
        prefix: key.prefix.clone(),
        scopes: key.scopes.split_whitespace().map(str::to_owned).collect(),
        user_id: key.user_id.clone(),
        workspace_id: key.workspace_id.clone(),
        state: service::api_key_state(key) as i32,
        created_at: Some(timestamp(key.created_at)),
        expires_at: Some(timestamp(key.expires_at)),
        last_used_at: key.last_used_at.map(timestamp),
        revoked_at: key.revoked_at.map(timestamp),
    }
}

fn invitation_pb(invitation: &invitations::Model) -> pb::Invitation {
    pb::Invitation {
        id: invitation.id.clone(),
        workspace_id: invitation.workspace_id.clone(),
        email: invitation.email.clone(),
        role: Role::parse(&invitation.role).map(Role::to_proto).unwrap_or_default(),
        state: service::invitation_state(invitation) as i32,
        inviter_user_id: invitation.inviter_user_id.clone(),
        created_at: Some(timestamp(invitation.created_at)),
        expires_at: Some(timestamp(invitation.expires_at)),
        accepted_at: invitation.accepted_at.map(timestamp),
        accepted_user_id: invitation.accepted_user_id.clone().unwrap_or_default(),
    }
}

fn caller_pb(caller: &Caller) -> pb::Caller {
    let (method, session_id, api_key_id, service_name) = match &caller.kind {
        CallerKind::User { session_id } => {
            (pb::AuthMethod::AccessToken, session_id.clone(), String::new(), String::new())
        }
        CallerKind::ApiKey { api_key_id } => {
            (pb::AuthMethod::ApiKey, String::new(), api_key_id.clone(), String::new())
        }
        CallerKind::Service { name } => {
            (pb::AuthMethod::ServiceToken, String::new(), String::new(), name.clone())
        }
    };
    pb::Caller {
        auth_method: method as i32,
        user_id: caller.user_id.clone().unwrap_or_default(),
        workspace_id: caller.workspace_id.clone().unwrap_or_default(),
        roles: caller.roles.iter().map(|r| r.to_proto()).collect(),
        scopes: caller.permissions.iter().cloned().collect(),
        session_id,
        api_key_id,
        service_name,
    }
}

fn datetime(
    ts: Option<prost_types::Timestamp>,
    field: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    ts.map(|t| {
        chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
            .ok_or_else(|| ApiError::invalid(field, "is not a valid time"))
    })
    .transpose()
}

fn mask(update_mask: Option<prost_types::FieldMask>) -> Vec<String> {
    update_mask.map(|m| m.paths).unwrap_or_default()
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Reply<pb::RegisterResponse> {
        let r = request.into_inner();
        let (user, workspace, tokens) =
            self.users.register(&r.email, &r.password, &r.display_name, &r.workspace_name).await?;
        ok(pb::RegisterResponse {
            user: Some(user_pb(&user)),
            workspace: Some(workspace_pb(&workspace, 1)),
            tokens: Some(tokens_pb(tokens)),
        })
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Reply<pb::LoginResponse> {
        let address = client_address(&request);
        let r = request.into_inner();
        let result = match self.users.login(&r.email, &r.password, &r.workspace_id, &address).await? {
            LoginOutcome::Tokens(tokens) => pb::login_response::Result::Tokens(tokens_pb(tokens)),
            LoginOutcome::Challenge { id, expires_at, attempts_remaining } => {
                pb::login_response::Result::TwoFactorChallenge(pb::TwoFactorChallenge {
                    challenge_id: id,
                    expires_at: Some(timestamp(expires_at)),
                    attempts_remaining,
                })
            }
        };
        ok(pb::LoginResponse { result: Some(result) })
    }

    async fn verify_login(&self, request: Request<pb::VerifyLoginRequest>) -> Reply<pb::VerifyLoginResponse> {
        let r = request.into_inner();
        let (tokens, remaining) =
            self.users.verify_login(&r.challenge_id, second_factor_login(r.code)).await?;
        ok(pb::VerifyLoginResponse { tokens: Some(tokens_pb(tokens)), recovery_codes_remaining: remaining })
    }

    async fn refresh_token(
        &self,
        request: Request<pb::RefreshTokenRequest>,
    ) -> Reply<pb::RefreshTokenResponse> {
        let tokens = self.users.refresh(&request.into_inner().refresh_token).await?;
        ok(pb::RefreshTokenResponse { tokens: Some(tokens_pb(tokens)) })
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Reply<pb::LogoutResponse> {
        let caller = Caller::of(&request)?;
        let count = self.users.logout(caller, request.get_ref().all_sessions).await?;
        ok(pb::LogoutResponse { revoked_session_count: count })
    }

    async fn get_profile(&self, request: Request<pb::GetProfileRequest>) -> Reply<pb::GetProfileResponse> {
        let (user, workspace, role) = self.users.profile(Caller::of(&request)?).await?;
        ok(pb::GetProfileResponse {
            user: Some(user_pb(&user)),
            workspace: workspace.map(|w| workspace_pb(&w, 0)),
            role: role.map(Role::to_proto).unwrap_or_default(),
        })
    }

    async fn update_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Reply<pb::UpdateProfileResponse> {
        let caller = Caller::of(&request)?.clone();
        let r = request.into_inner();
        let changes = r.user.ok_or_else(|| ApiError::invalid("user", "is required"))?;
        let user = self.users.update_profile(&caller, changes, &mask(r.update_mask)).await?;
        ok(pb::UpdateProfileResponse { user: Some(user_pb(&user)) })
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Reply<pb::ChangePasswordResponse> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let count = self.users.change_password(caller, &r.current_password, &r.new_password).await?;
        ok(pb::ChangePasswordResponse { revoked_session_count: count })
    }

    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Reply<pb::GetUserResponse> {
        let view = self.users.get_user(Caller::of(&request)?, &request.get_ref().id).await?;
        ok(pb::GetUserResponse {
            user: Some(user_pb(&view.user)),
            role: Role::parse(&view.membership.role).map(Role::to_proto).unwrap_or_default(),
            joined_at: Some(timestamp(view.membership.joined_at)),
        })
    }

    async fn delete_user(&self, request: Request<pb::DeleteUserRequest>) -> Reply<pb::DeleteUserResponse> {
        let (deleted_at, workspaces) =
            self.users.delete_user(Caller::of(&request)?, &request.get_ref().id).await?;
        ok(pb::DeleteUserResponse {
            deleted_at: Some(timestamp(deleted_at)),
            deleted_workspace_ids: workspaces,
        })
    }

    async fn enroll_two_factor(
        &self,
        request: Request<pb::EnrollTwoFactorRequest>,
    ) -> Reply<pb::EnrollTwoFactorResponse> {
        let (totp, expires_at) = self.users.enroll_totp(Caller::of(&request)?).await?;
        ok(pb::EnrollTwoFactorResponse {
            secret: totp.secret_base32(),
            otpauth_uri: totp.uri(),
            expires_at: Some(timestamp(expires_at)),
        })
    }

    async fn confirm_two_factor(
        &self,
        request: Request<pb::ConfirmTwoFactorRequest>,
    ) -> Reply<pb::ConfirmTwoFactorResponse> {
        let (codes, enabled_at) =
            self.users.confirm_totp(Caller::of(&request)?, &request.get_ref().totp_code).await?;
        ok(pb::ConfirmTwoFactorResponse { recovery_codes: codes, enabled_at: Some(timestamp(enabled_at)) })
    }

    async fn disable_two_factor(
        &self,
        request: Request<pb::DisableTwoFactorRequest>,
    ) -> Reply<pb::DisableTwoFactorResponse> {
        let caller = Caller::of(&request)?.clone();
        let r = request.into_inner();
        let at = self.users.disable_totp(&caller, &r.password, second_factor_disable(r.code)).await?;
        ok(pb::DisableTwoFactorResponse { disabled_at: Some(timestamp(at)) })
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Reply<pb::CreateApiKeyResponse> {
        let caller = Caller::of(&request)?.clone();
        let r = request.into_inner();
        let expires_at = datetime(r.expires_at, "expires_at")?;
        let (key, secret) = self.users.create_api_key(&caller, &r.name, &r.scopes, expires_at).await?;
        ok(pb::CreateApiKeyResponse { api_key: Some(api_key_pb(&key)), secret })
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Reply<pb::ListApiKeysResponse> {
        let r = request.get_ref();
        let page = Page::new(r.page_size, &r.page_token)?;
        let state = match pb::ApiKeyState::try_from(r.state) {
            Ok(pb::ApiKeyState::Unspecified) => None,
            Ok(state) => Some(state),
            Err(_) => return Err(ApiError::invalid("state", "is not an API key state").into()),
        };
        let keys = self.users.list_api_keys(Caller::of(&request)?, state, &page).await?;
        let next_page_token = page.next_token(keys.last().map(|k| k.id.as_str()), keys.len());
        ok(pb::ListApiKeysResponse { api_keys: keys.iter().map(api_key_pb).collect(), next_page_token })
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Reply<pb::RevokeApiKeyResponse> {
        let key = self.users.revoke_api_key(Caller::of(&request)?, &request.get_ref().id).await?;
        ok(pb::RevokeApiKeyResponse { api_key: Some(api_key_pb(&key)) })
    }

    async fn list_workspaces(
        &self,
        request: Request<pb::ListWorkspacesRequest>,
    ) -> Reply<pb::ListWorkspacesResponse> {
        let caller = Caller::of(&request)?;
        let page = Page::new(request.get_ref().page_size, &request.get_ref().page_token)?;
        let views = self.users.list_workspaces(caller, &page).await?;
        let next_page_token = page.next_token(views.last().map(|v| v.workspace.id.as_str()), views.len());
        let current = caller.workspace_id.as_deref();
        ok(pb::ListWorkspacesResponse {
            workspaces: views.into_iter().map(|v| membership_pb(v, current)).collect(),
            next_page_token,
        })
    }

    async fn create_workspace(
        &self,
        request: Request<pb::CreateWorkspaceRequest>,
    ) -> Reply<pb::CreateWorkspaceResponse> {
        let workspace = self.users.create_workspace(Caller::of(&request)?, &request.get_ref().name).await?;
        ok(pb::CreateWorkspaceResponse { workspace: Some(workspace_pb(&workspace, 1)) })
    }

    async fn get_workspace(
        &self,
        request: Request<pb::GetWorkspaceRequest>,
    ) -> Reply<pb::GetWorkspaceResponse> {
        let caller = Caller::of(&request)?;
        let view = self.users.get_workspace(caller, &request.get_ref().workspace_id).await?;
        ok(pb::GetWorkspaceResponse { workspace: Some(membership_pb(view, caller.workspace_id.as_deref())) })
    }

    async fn update_workspace(
        &self,
        request: Request<pb::UpdateWorkspaceRequest>,
    ) -> Reply<pb::UpdateWorkspaceResponse> {
        let caller = Caller::of(&request)?.clone();
        let r = request.into_inner();
        let changes = r.workspace.ok_or_else(|| ApiError::invalid("workspace", "is required"))?;
        let workspace = self.users.update_workspace(&caller, changes, &mask(r.update_mask)).await?;
        ok(pb::UpdateWorkspaceResponse { workspace: Some(workspace_pb(&workspace, 0)) })
    }

    async fn switch_workspace(
        &self,
        request: Request<pb::SwitchWorkspaceRequest>,
    ) -> Reply<pb::SwitchWorkspaceResponse> {
        let tokens =
            self.users.switch_workspace(Caller::of(&request)?, &request.get_ref().workspace_id).await?;
        ok(pb::SwitchWorkspaceResponse { tokens: Some(tokens_pb(tokens)) })
    }

    async fn list_members(&self, request: Request<pb::ListMembersRequest>) -> Reply<pb::ListMembersResponse> {
        let r = request.get_ref();
        let page = Page::new(r.page_size, &r.page_token)?;
        let roles = roles_field(&r.roles, "roles")?;
        let members =
            self.users.list_members(Caller::of(&request)?, &r.workspace_id, &roles, &[], &page).await?;
        let next_page_token = page.next_token(members.last().map(|m| m.user.id.as_str()), members.len());
        ok(pb::ListMembersResponse { members: members.iter().map(member_pb).collect(), next_page_token })
    }

    async fn change_member_role(
        &self,
        request: Request<pb::ChangeMemberRoleRequest>,
    ) -> Reply<pb::ChangeMemberRoleResponse> {
        let r = request.get_ref();
        let role = role_field(r.role, "role")?;
        let view =
            self.users.change_member_role(Caller::of(&request)?, &r.workspace_id, &r.user_id, role).await?;
        ok(pb::ChangeMemberRoleResponse { member: Some(member_pb(&view)) })
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Reply<pb::RemoveMemberResponse> {
        let r = request.get_ref();
        let revoked = self.users.remove_member(Caller::of(&request)?, &r.workspace_id, &r.user_id).await?;
        ok(pb::RemoveMemberResponse { revoked_api_key_count: revoked })
    }

    async fn invite_member(
        &self,
        request: Request<pb::InviteMemberRequest>,
    ) -> Reply<pb::InviteMemberResponse> {
        let r = request.get_ref();
        let role = role_field(r.role, "role")?;
        let (invitation, token) =
            self.users.invite_member(Caller::of(&request)?, &r.workspace_id, &r.email, role).await?;
        ok(pb::InviteMemberResponse { invitation: Some(invitation_pb(&invitation)), token })
    }

    async fn list_invitations(
        &self,
        request: Request<pb::ListInvitationsRequest>,
    ) -> Reply<pb::ListInvitationsResponse> {
        let r = request.get_ref();
        let page = Page::new(r.page_size, &r.page_token)?;
        let state = match pb::InvitationState::try_from(r.state) {
            Ok(pb::InvitationState::Unspecified) => None,
            Ok(state) => Some(state),
            Err(_) => return Err(ApiError::invalid("state", "is not an invitation state").into()),
        };
        let list = self.users.list_invitations(Caller::of(&request)?, &r.workspace_id, state, &page).await?;
        let next_page_token = page.next_token(list.last().map(|i| i.id.as_str()), list.len());
        ok(pb::ListInvitationsResponse {
            invitations: list.iter().map(invitation_pb).collect(),
            next_page_token,
        })
    }

    async fn revoke_invitation(
        &self,
        request: Request<pb::RevokeInvitationRequest>,
    ) -> Reply<pb::RevokeInvitationResponse> {
        let r = request.get_ref();
        let invitation =
            self.users.revoke_invitation(Caller::of(&request)?, &r.workspace_id, &r.invitation_id).await?;
        ok(pb::RevokeInvitationResponse { invitation: Some(invitation_pb(&invitation)) })
    }

    async fn accept_invitation(
        &self,
        request: Request<pb::AcceptInvitationRequest>,
    ) -> Reply<pb::AcceptInvitationResponse> {
        let (view, workspace) =
            self.users.accept_invitation(Caller::of(&request)?, &request.get_ref().token).await?;
        ok(pb::AcceptInvitationResponse {
            member: Some(member_pb(&view)),
            workspace: Some(workspace_pb(&workspace, 0)),
        })
    }

    async fn get_jwks(&self, _request: Request<pb::GetJwksRequest>) -> Reply<pb::GetJwksResponse> {
        let ring = self.users_ring()?;
        let keys = ring
            .jwks()
            .iter()
            .map(|k| pb::Jwk {
                kty: k.kty.clone(),
                crv: k.crv.clone(),
                x: k.x.clone(),
                kid: k.kid.clone(),
                r#use: k.use_.clone(),
                alg: k.alg.clone(),
            })
            .collect();
        ok(pb::GetJwksResponse { keys })
    }

    async fn authenticate_api_key(
        &self,
        request: Request<pb::AuthenticateApiKeyRequest>,
    ) -> Reply<pb::AuthenticateApiKeyResponse> {
        let (caller, token, expires_at, ttl) =
            self.users.authenticate_api_key(&request.get_ref().api_key).await?;
        ok(pb::AuthenticateApiKeyResponse {
            caller: Some(caller_pb(&caller)),
            internal_token: token,
            internal_token_expires_at: Some(timestamp(expires_at)),
            cache_ttl: Some(prost_types::Duration { seconds: ttl.as_secs() as i64, nanos: 0 }),
        })
    }

    async fn exchange_access_token(
        &self,
        request: Request<pb::ExchangeAccessTokenRequest>,
    ) -> Reply<pb::ExchangeAccessTokenResponse> {
        let (caller, token, expires_at) =
            self.users.exchange_access_token(&request.get_ref().access_token).await?;
        ok(pb::ExchangeAccessTokenResponse {
            caller: Some(caller_pb(&caller)),
            internal_token: token,
            internal_token_expires_at: Some(timestamp(expires_at)),
        })
    }

    async fn issue_service_token(
        &self,
        request: Request<pb::IssueServiceTokenRequest>,
    ) -> Reply<pb::IssueServiceTokenResponse> {
        let r = request.get_ref();
        let (token, claims) =
            self.users.issue_service_token(&r.service_name, &r.service_secret, &r.scopes)?;
        ok(pb::IssueServiceTokenResponse {
            token_type: "Bearer".into(),
            access_token: token,
            expires_at: Some(timestamp(claims.expires_at())),
            scopes: claims.scopes,
        })
    }

    async fn get_member(&self, request: Request<pb::GetMemberRequest>) -> Reply<pb::GetMemberResponse> {
        let r = request.get_ref();
        let view = self.users.get_member(&r.workspace_id, &r.user_id).await?;
        ok(pb::GetMemberResponse { member: Some(member_pb(&view)) })
    }

    async fn list_workspace_members(
        &self,
        request: Request<pb::ListWorkspaceMembersRequest>,
    ) -> Reply<pb::ListWorkspaceMembersResponse> {
        let r = request.get_ref();
        let page = Page::new(r.page_size, &r.page_token)?;
        let roles = roles_field(&r.roles, "roles")?;
        let members = self
            .users
            .list_members(Caller::of(&request)?, &r.workspace_id, &roles, &r.user_ids, &page)
            .await?;
        let next_page_token = page.next_token(members.last().map(|m| m.user.id.as_str()), members.len());
        ok(pb::ListWorkspaceMembersResponse {
            members: members.iter().map(member_pb).collect(),
            next_page_token,
        })
    }
}

impl UserApi {
    fn users_ring(&self) -> Result<&postmesh_kit::auth::KeyRing, Status> {
        self.users.key_ring().ok_or_else(|| Status::internal("the user service has no key ring"))
    }
}

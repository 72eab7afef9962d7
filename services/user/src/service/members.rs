//! Workspaces, members, roles and invitations.

use postmesh_kit::auth::{Caller, Role};
use postmesh_kit::crypto::sha256_hex;
use postmesh_kit::error::{ApiError, Violations};
use postmesh_proto::postmesh::user::v1 as pb;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};

use super::*;
use crate::domain::{self, Email, NewSecret};
use crate::store::{api_keys, invitations, memberships, sessions, workspaces};

impl Users {
    pub async fn list_workspaces(
        &self,
        caller: &Caller,
        page: &Page,
    ) -> Result<Vec<WorkspaceView>, ApiError> {
        let user_id = caller.user_id()?;
        let mut query = memberships::Entity::find()
            .filter(memberships::Column::UserId.eq(user_id))
            .order_by_asc(memberships::Column::WorkspaceId)
            .limit(page.size);
        if let Some(after) = &page.after {
            query = query.filter(memberships::Column::WorkspaceId.gt(after.as_str()));
        }
        let mut views = Vec::new();
        for membership in query.all(self.db()).await? {
            let workspace = self.workspace(self.db(), &membership.workspace_id).await?;
            views.push(WorkspaceView {
                member_count: self.member_count(self.db(), &workspace.id).await?,
                role: role_of(&membership)?,
                joined_at: membership.joined_at,
                workspace,
            });
        }
        Ok(views)
    }

    pub async fn create_workspace(&self, caller: &Caller, name: &str) -> Result<workspaces::Model, ApiError> {
        let (user_id, _) = self.session_user(caller)?;
        let name = domain::name(name).map_err(|e| ApiError::invalid("name", e))?;
        let txn = self.begin().await?;
        let workspace = self.insert_workspace(&txn, &name, user_id).await?;
        self.commit(txn).await?;
        Ok(workspace)
    }

    pub async fn get_workspace(
        &self,
        caller: &Caller,
        workspace_id: &str,
    ) -> Result<WorkspaceView, ApiError> {
        if workspace_id.is_empty() {
            return Err(ApiError::invalid("workspace_id", "is required"));
        }
        caller.require_workspace(workspace_id)?;
        let user_id = caller.user_id()?;
        let membership = self
            .membership(self.db(), workspace_id, user_id)
            .await?
            .ok_or_else(|| ApiError::PermissionDenied(format!("not a member of workspace {workspace_id}")))?;
        let workspace = self.workspace(self.db(), workspace_id).await?;
        Ok(WorkspaceView {
            member_count: self.member_count(self.db(), workspace_id).await?,
            role: role_of(&membership)?,
            joined_at: membership.joined_at,
            workspace,
        })
    }

    pub async fn update_workspace(
        &self,
        caller: &Caller,
        changes: pb::Workspace,
        paths: &[String],
    ) -> Result<workspaces::Model, ApiError> {
        if changes.id.is_empty() {
            return Err(ApiError::invalid("workspace.id", "is required"));
        }
        caller.require_workspace(&changes.id)?;
        if paths.is_empty() {
            return Err(ApiError::invalid("update_mask", "name the fields to change, e.g. name"));
        }
        let workspace = self.workspace(self.db(), &changes.id).await?;
        let mut model: workspaces::ActiveModel = workspace.into();
        for path in paths {
            match path.as_str() {
                "name" => {
                    model.name =
                        Set(domain::name(&changes.name)
                            .map_err(|e| ApiError::invalid("workspace.name", e))?)
                }
                other => return Err(ApiError::invalid("update_mask", format!("{other} cannot be changed"))),
            }
        }
        model.updated_at = Set(now());
        Ok(model.update(self.db()).await?)
    }

    pub async fn switch_workspace(&self, caller: &Caller, workspace_id: &str) -> Result<Tokens, ApiError> {
        let (user_id, _) = self.session_user(caller)?;
        if workspace_id.is_empty() {
            return Err(ApiError::invalid("workspace_id", "is required"));
        }
        let membership = self
            .membership(self.db(), workspace_id, user_id)
            .await?
            .ok_or_else(|| ApiError::PermissionDenied(format!("not a member of workspace {workspace_id}")))?;
        let txn = self.begin().await?;
        let tokens = self.start_session(&txn, user_id, Some((workspace_id, role_of(&membership)?))).await?;
        self.commit(txn).await?;
        Ok(tokens)
    }

    pub async fn list_members(
        &self,
        caller: &Caller,
        workspace_id: &str,
        roles: &[Role],
        user_ids: &[String],
        page: &Page,
    ) -> Result<Vec<MemberView>, ApiError> {
        if workspace_id.is_empty() {
            return Err(ApiError::invalid("workspace_id", "is required"));
        }
        caller.require_workspace(workspace_id)?;
        let mut query = memberships::Entity::find()
            .filter(memberships::Column::WorkspaceId.eq(workspace_id))
            .order_by_asc(memberships::Column::UserId)
            .limit(page.size);
        if !roles.is_empty() {
            query = query.filter(memberships::Column::Role.is_in(roles.iter().map(|r| r.as_str())));
        }
        if !user_ids.is_empty() {
            query = query.filter(memberships::Column::UserId.is_in(user_ids.iter().cloned()));
        }
        if let Some(after) = &page.after {
            query = query.filter(memberships::Column::UserId.gt(after.as_str()));
        }
        let mut members = Vec::new();
        for membership in query.all(self.db()).await? {
            let user = self.user(self.db(), &membership.user_id).await?;
            members.push(MemberView { membership, user });
        }
        Ok(members)
    }

    /// What a non-Admin member manager may touch: Editors, Viewers, Developers.
    pub(super) fn check_manageable(caller: &Caller, roles: &[Role]) -> Result<(), ApiError> {
        let admin = caller.top_role() == Some(Role::Admin) || caller.is_service();
        if !admin && roles.iter().any(|r| matches!(r, Role::Admin | Role::Manager)) {
            return Err(ApiError::PermissionDenied(
                "only Admins may grant, change or remove Admin and Manager roles".into(),
            ));
        }
        Ok(())
    }

    pub async fn change_member_role(
        &self,
        caller: &Caller,
        workspace_id: &str,
        user_id: &str,
        role: Option<Role>,
    ) -> Result<MemberView, ApiError> {
        let mut violations = Violations::new();
        if workspace_id.is_empty() {
            violations.add("workspace_id", "is required");
        }
        if user_id.is_empty() {
            violations.add("user_id", "is required");
        }
        if role.is_none() {
            violations.add("role", "is required");
        }
        violations.finish()?;
        let role = role.expect("checked");
        caller.require_workspace(workspace_id)?;
        if caller.user_id.as_deref() == Some(user_id) {
            return Err(ApiError::PermissionDenied("you cannot change your own role".into()));
        }
        let txn = self.begin().await?;
        let membership = self
            .membership(&txn, workspace_id, user_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("user {user_id} is not a member of this workspace")))?;
        let previous = role_of(&membership)?;
        Self::check_manageable(caller, &[previous, role])?;
        if previous == Role::Admin && role != Role::Admin && self.admin_count(&txn, workspace_id).await? <= 1
        {
            return Err(ApiError::FailedPrecondition("a workspace needs at least one Admin".into()));
        }
        let mut model: memberships::ActiveModel = membership.into();
        model.role = Set(role.as_str().to_owned());
        let membership = model.update(&txn).await?;
        self.emit(
            &txn,
            "member_role_changed",
            &pb::MemberRoleChangedEvent {
                event_id: new_id(),
                workspace_id: workspace_id.to_owned(),
                occurred_at: Some(timestamp(now())),
                user_id: user_id.to_owned(),
                previous_role: previous.to_proto(),
                role: role.to_proto(),
                changed_by_user_id: caller.user_id.clone().unwrap_or_default(),
            },
        )
        .await?;
        self.commit(txn).await?;
        // Tokens carry the role: old ones stop now, refreshing reads the new one.
        self.deps.auth.revocations().revoke_user_tokens(user_id).await?;
        let user = self.user(self.db(), user_id).await?;
        Ok(MemberView { membership, user })
    }

    pub async fn remove_member(
        &self,
        caller: &Caller,
        workspace_id: &str,
        user_id: &str,
    ) -> Result<i32, ApiError> {
        let mut violations = Violations::new();
        if workspace_id.is_empty() {
            violations.add("workspace_id", "is required");
        }
        if user_id.is_empty() {
            violations.add("user_id", "is required");
        }
        violations.finish()?;
        caller.require_workspace(workspace_id)?;
        let txn = self.begin().await?;
        let membership = self
            .membership(&txn, workspace_id, user_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("user {user_id} is not a member of this workspace")))?;
        let role = role_of(&membership)?;
        Self::check_manageable(caller, &[role])?;
        if role == Role::Admin && self.admin_count(&txn, workspace_id).await? <= 1 {
            return Err(ApiError::FailedPrecondition("a workspace needs at least one Admin".into()));
        }
        memberships::Entity::delete_by_id((workspace_id.to_owned(), user_id.to_owned())).exec(&txn).await?;
        let keys = api_keys::Entity::find()
            .filter(api_keys::Column::UserId.eq(user_id))
            .filter(api_keys::Column::WorkspaceId.eq(workspace_id))
            .filter(api_keys::Column::RevokedAt.is_null())
            .all(&txn)
            .await?;
        api_keys::Entity::update_many()
            .col_expr(api_keys::Column::RevokedAt, Expr::value(Some(now())))
            .filter(api_keys::Column::Id.is_in(keys.iter().map(|k| k.id.clone())))
            .exec(&txn)
            .await?;
        for key in &keys {
            self.emit_key_revoked(&txn, key, pb::ApiKeyRevocationReason::MemberRemoved).await?;
        }
        let reason = if caller.user_id.as_deref() == Some(user_id) {
            pb::MemberRemovalReason::Left
        } else {
            pb::MemberRemovalReason::Removed
        };
        self.emit(
            &txn,
            "member_removed",
            &pb::MemberRemovedEvent {
                event_id: new_id(),
                workspace_id: workspace_id.to_owned(),
                occurred_at: Some(timestamp(now())),
                user_id: user_id.to_owned(),
                role: role.to_proto(),
                reason: reason as i32,
                removed_by_user_id: caller.user_id.clone().unwrap_or_default(),
            },
        )
        .await?;
        self.commit(txn).await?;
        let sessions: Vec<String> = sessions::Entity::find()
            .filter(sessions::Column::UserId.eq(user_id))
            .filter(sessions::Column::WorkspaceId.eq(workspace_id))
            .filter(sessions::Column::RevokedAt.is_null())
            .all(self.db())
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect();
        self.revoke_sessions(&sessions, "removed from workspace").await?;
        for key in &keys {
            self.forget_api_key(key).await?;
        }
        Ok(keys.len() as i32)
    }

    pub async fn invite_member(
        &self,
        caller: &Caller,
        workspace_id: &str,
        email: &str,
        role: Option<Role>,
    ) -> Result<(invitations::Model, String), ApiError> {
        let mut violations = Violations::new();
        if workspace_id.is_empty() {
            violations.add("workspace_id", "is required");
        }
        let email = violations.check("email", Email::try_from(email));
        if role.is_none() {
            violations.add("role", "is required");
        }
        violations.finish()?;
        let (email, role) = (email.expect("checked"), role.expect("checked"));
        caller.require_workspace(workspace_id)?;
        Self::check_manageable(caller, &[role])?;
        if let Some(user) = self.user_by_email(&email).await?
            && self.membership(self.db(), workspace_id, &user.id).await?.is_some()
        {
            return Err(ApiError::AlreadyExists(format!("{} is already a member", email.as_str())));
        }
        let secret = NewSecret::invitation();
        let txn = self.begin().await?;
        // A new invitation to the same address replaces the pending one.
        invitations::Entity::update_many()
            .col_expr(invitations::Column::RevokedAt, Expr::value(Some(now())))
            .filter(invitations::Column::WorkspaceId.eq(workspace_id))
            .filter(invitations::Column::Email.eq(email.as_str()))
            .filter(invitations::Column::AcceptedAt.is_null())
            .filter(invitations::Column::RevokedAt.is_null())
            .exec(&txn)
            .await?;
        let invitation = invitations::ActiveModel {
            id: Set(new_id()),
            workspace_id: Set(workspace_id.to_owned()),
            email: Set(email.as_str().to_owned()),
            role: Set(role.as_str().to_owned()),
            token_hash: Set(secret.hash),
            inviter_user_id: Set(caller.user_id.clone().unwrap_or_default()),
            created_at: Set(now()),
            expires_at: Set(now() + INVITATION_TTL),
            accepted_at: Set(None),
            accepted_user_id: Set(None),
            revoked_at: Set(None),
        }
        .insert(&txn)
        .await?;
        self.emit(
            &txn,
            "member_invited",
            &pb::MemberInvitedEvent {
                event_id: new_id(),
                workspace_id: workspace_id.to_owned(),
                occurred_at: Some(timestamp(now())),
                invitation_id: invitation.id.clone(),
                email: invitation.email.clone(),
                role: role.to_proto(),
                inviter_user_id: invitation.inviter_user_id.clone(),
                expires_at: Some(timestamp(invitation.expires_at)),
            },
        )
        .await?;
        self.commit(txn).await?;
        Ok((invitation, secret.secret))
    }

    pub async fn list_invitations(
        &self,
        caller: &Caller,
        workspace_id: &str,
        state: Option<pb::InvitationState>,
        page: &Page,
    ) -> Result<Vec<invitations::Model>, ApiError> {
        if workspace_id.is_empty() {
            return Err(ApiError::invalid("workspace_id", "is required"));
        }
        caller.require_workspace(workspace_id)?;
        let mut query = invitations::Entity::find()
            .filter(invitations::Column::WorkspaceId.eq(workspace_id))
            .order_by_desc(invitations::Column::Id);
        if let Some(after) = &page.after {
            query = query.filter(invitations::Column::Id.lt(after.as_str()));
        }
        Ok(query
            .all(self.db())
            .await?
            .into_iter()
            .filter(|i| state.is_none_or(|s| invitation_state(i) == s))
            .take(page.size as usize)
            .collect())
    }

    pub async fn revoke_invitation(
        &self,
        caller: &Caller,
        workspace_id: &str,
        invitation_id: &str,
    ) -> Result<invitations::Model, ApiError> {
        caller.require_workspace(workspace_id)?;
        let invitation = invitations::Entity::find_by_id(invitation_id.to_owned())
            .one(self.db())
            .await?
            .filter(|i| i.workspace_id == workspace_id)
            .ok_or_else(|| ApiError::NotFound(format!("invitation {invitation_id} not found")))?;
        if invitation_state(&invitation) != pb::InvitationState::Pending {
            return Ok(invitation);
        }
        let mut model: invitations::ActiveModel = invitation.into();
        model.revoked_at = Set(Some(now()));
        Ok(model.update(self.db()).await?)
    }

    pub async fn accept_invitation(
        &self,
        caller: &Caller,
        token: &str,
    ) -> Result<(MemberView, workspaces::Model), ApiError> {
        let (user_id, _) = self.session_user(caller)?;
        if token.is_empty() {
            return Err(ApiError::invalid("token", "is required"));
        }
        let invitation = invitations::Entity::find()
            .filter(invitations::Column::TokenHash.eq(sha256_hex(token.as_bytes())))
            .one(self.db())
            .await?
            .ok_or_else(|| ApiError::NotFound("invitation not found".into()))?;
        let user = self.user(self.db(), user_id).await?;
        if invitation.email != user.email {
            return Err(ApiError::PermissionDenied("this invitation is for another email address".into()));
        }
        match invitation_state(&invitation) {
            pb::InvitationState::Accepted if invitation.accepted_user_id.as_deref() == Some(user_id) => {
                let membership =
                    self.membership(self.db(), &invitation.workspace_id, user_id).await?.ok_or_else(
                        || ApiError::FailedPrecondition("you have left this workspace since".into()),
                    )?;
                let workspace = self.workspace(self.db(), &invitation.workspace_id).await?;
                return Ok((MemberView { membership, user }, workspace));
            }
            pb::InvitationState::Pending => {}
            pb::InvitationState::Expired => {
                return Err(ApiError::FailedPrecondition("the invitation expired".into()));
            }
            _ => return Err(ApiError::FailedPrecondition("the invitation is no longer valid".into())),
        }
        let role =
            Role::parse(&invitation.role).ok_or_else(|| ApiError::internal("stored invitation role"))?;
        let workspace = self.workspace(self.db(), &invitation.workspace_id).await?;
        let txn = self.begin().await?;
        if self.membership(&txn, &workspace.id, user_id).await?.is_some() {
            return Err(ApiError::AlreadyExists("you are already a member of this workspace".into()));
        }
        let membership = memberships::ActiveModel {
            workspace_id: Set(workspace.id.clone()),
            user_id: Set(user_id.to_owned()),
            role: Set(role.as_str().to_owned()),
            inviter_user_id: Set(Some(invitation.inviter_user_id.clone())),
            joined_at: Set(now()),
        }
        .insert(&txn)
        .await?;
        let mut model: invitations::ActiveModel = invitation.clone().into();
        model.accepted_at = Set(Some(now()));
        model.accepted_user_id = Set(Some(user_id.to_owned()));
        model.update(&txn).await?;
        self.emit(
            &txn,
            "member_added",
            &pb::MemberAddedEvent {
                event_id: new_id(),
                workspace_id: workspace.id.clone(),
                occurred_at: Some(timestamp(now())),
                user_id: user_id.to_owned(),
                role: role.to_proto(),
                invitation_id: invitation.id.clone(),
                inviter_user_id: invitation.inviter_user_id.clone(),
            },
        )
        .await?;
        self.commit(txn).await?;
        Ok((MemberView { membership, user }, workspace))
    }

    pub async fn get_member(&self, workspace_id: &str, user_id: &str) -> Result<MemberView, ApiError> {
        let membership = self.membership(self.db(), workspace_id, user_id).await?.ok_or_else(|| {
            ApiError::NotFound(format!("user {user_id} is not a member of workspace {workspace_id}"))
        })?;
        let user = self.user(self.db(), user_id).await?;
        Ok(MemberView { membership, user })
    }
}

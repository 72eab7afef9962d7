//! Workspaces, members and roles: isolation between workspaces, no role
//! escalation, invitations, the last Admin.

use postmesh_kit::auth::Role;
use postmesh_proto::postmesh::user::v1 as pb;
use tonic::Code;

use crate::helpers::{PASSWORD, assert_code, signed, spawn_app, violated_fields};

#[tokio::test]
async fn one_workspace_never_sees_another() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let list = |workspace: &str, token: &str| {
        let mut client = app.client();
        let request =
            signed(pb::ListMembersRequest { workspace_id: workspace.into(), ..Default::default() }, token);
        async move { client.list_members(request).await }
    };
    assert!(list(&alice.workspace_id, &alice.access).await.is_ok());
    assert_code(list(&alice.workspace_id, &bob.access).await, Code::PermissionDenied);
    assert_code(
        app.client().get_user(signed(pb::GetUserRequest { id: alice.user_id.clone() }, &bob.access)).await,
        Code::NotFound,
    );
    assert_code(
        app.client()
            .invite_member(signed(
                pb::InviteMemberRequest {
                    workspace_id: alice.workspace_id.clone(),
                    email: "x@example.com".into(),
                    role: Role::Viewer.to_proto(),
                },
                &bob.access,
            ))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        app.client()
            .switch_workspace(signed(
                pb::SwitchWorkspaceRequest { workspace_id: alice.workspace_id.clone() },
                &bob.access,
            ))
            .await,
        Code::PermissionDenied,
    );
    let status = assert_code(
        app.client()
            .login(pb::LoginRequest {
                email: bob.email.clone(),
                password: PASSWORD.into(),
                workspace_id: alice.workspace_id.clone(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert!(status.message().contains("not a member"));
    // Deleting someone outside one's workspace: they are not even visible.
    assert_code(
        app.client()
            .delete_user(signed(pb::DeleteUserRequest { id: alice.user_id.clone() }, &bob.access))
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn invitations_bring_members_in_with_their_role() {
    let app = spawn_app().await;
    let owner = app.register("owner").await;
    let guest = app.register("guest").await;
    let invited = app
        .client()
        .invite_member(signed(
            pb::InviteMemberRequest {
                workspace_id: owner.workspace_id.clone(),
                email: guest.email.to_uppercase(),
                role: Role::Editor.to_proto(),
            },
            &owner.access,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(invited.token.starts_with("pmi_"));
    let stranger = app.register("stranger").await;
    assert_code(
        app.client()
            .accept_invitation(signed(
                pb::AcceptInvitationRequest { token: invited.token.clone() },
                &stranger.access,
            ))
            .await,
        Code::PermissionDenied,
    );

    let accepted = app
        .client()
        .accept_invitation(signed(
            pb::AcceptInvitationRequest { token: invited.token.clone() },
            &guest.access,
        ))
        .await
        .unwrap();
    assert_eq!(accepted.get_ref().member.as_ref().unwrap().role, Role::Editor.to_proto());
    let tokens = app.switch(&guest, &owner.workspace_id).await;
    assert_eq!(tokens.role, Role::Editor.to_proto());
    let members = app
        .client()
        .list_members(signed(
            pb::ListMembersRequest { workspace_id: owner.workspace_id.clone(), ..Default::default() },
            &tokens.access_token,
        ))
        .await
        .unwrap();
    assert_eq!(members.get_ref().members.len(), 2);
    let found = app
        .client()
        .get_user(signed(pb::GetUserRequest { id: owner.user_id.clone() }, &tokens.access_token))
        .await
        .unwrap();
    assert_eq!(found.get_ref().role, Role::Admin.to_proto());

    let status = assert_code(
        app.client()
            .invite_member(signed(
                pb::InviteMemberRequest {
                    workspace_id: owner.workspace_id.clone(),
                    email: "bad".into(),
                    role: 0,
                },
                &owner.access,
            ))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(violated_fields(&status), vec!["email", "role"]);
}

#[tokio::test]
async fn roles_cannot_be_escalated() {
    let app = spawn_app().await;
    let admin = app.register("admin").await;
    let editor = app.register("editor").await;
    let manager = app.register("manager").await;
    let viewer = app.register("viewer").await;
    app.join(&admin, &editor, Role::Editor).await;
    app.join(&admin, &manager, Role::Manager).await;
    app.join(&admin, &viewer, Role::Viewer).await;
    let editor_token = app.switch(&editor, &admin.workspace_id).await.access_token;
    let manager_token = app.switch(&manager, &admin.workspace_id).await.access_token;
    let viewer_token = app.switch(&viewer, &admin.workspace_id).await.access_token;
    let change = |user: &str, role: Role, token: &str| {
        signed(
            pb::ChangeMemberRoleRequest {
                workspace_id: admin.workspace_id.clone(),
                user_id: user.into(),
                role: role.to_proto(),
            },
            token,
        )
    };

    // An Editor making themselves Admin: no members:write at all.
    assert_code(
        app.client().change_member_role(change(&editor.user_id, Role::Admin, &editor_token)).await,
        Code::PermissionDenied,
    );
    // A Manager may not hand out Admin, nor touch their own role.
    let status = assert_code(
        app.client().change_member_role(change(&editor.user_id, Role::Admin, &manager_token)).await,
        Code::PermissionDenied,
    );
    assert!(status.message().contains("only Admins"));
    assert_code(
        app.client().change_member_role(change(&manager.user_id, Role::Admin, &manager_token)).await,
        Code::PermissionDenied,
    );
    // ...but may move an Editor to Viewer.
    assert!(
        app.client().change_member_role(change(&editor.user_id, Role::Viewer, &manager_token)).await.is_ok()
    );
    // The Editor's old token carried the old role: it stops at once.
    assert_code(
        app.client()
            .list_members(signed(
                pb::ListMembersRequest { workspace_id: admin.workspace_id.clone(), ..Default::default() },
                &editor_token,
            ))
            .await,
        Code::Unauthenticated,
    );
    // A Viewer calling a write RPC.
    assert_code(
        app.client()
            .invite_member(signed(
                pb::InviteMemberRequest {
                    workspace_id: admin.workspace_id.clone(),
                    email: "x@example.com".into(),
                    role: Role::Viewer.to_proto(),
                },
                &viewer_token,
            ))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        app.client()
            .update_workspace(signed(
                pb::UpdateWorkspaceRequest {
                    workspace: Some(pb::Workspace {
                        id: admin.workspace_id.clone(),
                        name: "Mine now".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
                },
                &manager_token,
            ))
            .await,
        Code::PermissionDenied,
    );
    let unspecified = signed(
        pb::ChangeMemberRoleRequest {
            workspace_id: admin.workspace_id.clone(),
            user_id: editor.user_id.clone(),
            role: 0,
        },
        &admin.access,
    );
    let status = assert_code(app.client().change_member_role(unspecified).await, Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["role"]);
}

#[tokio::test]
async fn the_last_admin_stays() {
    let app = spawn_app().await;
    let admin = app.register("lastadmin").await;
    let other = app.register("other").await;
    app.join(&admin, &other, Role::Viewer).await;
    let status = assert_code(
        app.client()
            .remove_member(signed(
                pb::RemoveMemberRequest {
                    workspace_id: admin.workspace_id.clone(),
                    user_id: admin.user_id.clone(),
                },
                &admin.access,
            ))
            .await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("at least one Admin"));
    let removed = app
        .client()
        .remove_member(signed(
            pb::RemoveMemberRequest {
                workspace_id: admin.workspace_id.clone(),
                user_id: other.user_id.clone(),
            },
            &admin.access,
        ))
        .await
        .unwrap();
    assert_eq!(removed.get_ref().revoked_api_key_count, 0);
    assert_code(
        app.client()
            .remove_member(signed(
                pb::RemoveMemberRequest {
                    workspace_id: admin.workspace_id.clone(),
                    user_id: other.user_id.clone(),
                },
                &admin.access,
            ))
            .await,
        Code::NotFound,
    );
}

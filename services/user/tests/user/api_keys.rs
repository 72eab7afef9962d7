//! API keys: create (shown once), list, use with their scopes, revoke, expire.

use std::time::Duration;

use postmesh_kit::auth::Role;
use postmesh_kit::testing::eventually;
use postmesh_proto::postmesh::user::v1 as pb;
use tonic::Code;

use crate::helpers::{assert_code, next_event, signed, spawn_app, violated_fields, with_api_key};

fn create(
    name: &str,
    scopes: &[&str],
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> pb::CreateApiKeyRequest {
    pb::CreateApiKeyRequest {
        name: name.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_at: expires_at.map(|at| prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 }),
    }
}

#[tokio::test]
async fn keys_are_shown_once_listed_by_prefix_and_act_with_their_scopes() {
    let app = spawn_app().await;
    let owner = app.register("keys").await;
    let created = app
        .client()
        .create_api_key(signed(create("ci", &["members:read"], None), &owner.access))
        .await
        .unwrap()
        .into_inner();
    let secret = created.secret;
    let key = created.api_key.unwrap();
    assert!(secret.starts_with("pm_") && secret.len() == 43, "pm_ + 40 characters");
    assert_eq!(key.prefix, &secret[..11]);
    assert_eq!(key.state, pb::ApiKeyState::Active as i32);
    let expires = key.expires_at.unwrap().seconds - chrono::Utc::now().timestamp();
    assert!((89 * 86_400..=90 * 86_400).contains(&expires), "defaults to 90 days: {expires}");

    let listed = app
        .client()
        .list_api_keys(signed(pb::ListApiKeysRequest::default(), &owner.access))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.api_keys.len(), 1);
    assert_eq!(listed.api_keys[0].prefix, key.prefix);
    assert!(!format!("{listed:?}").contains(&secret), "the secret is never listed");

    // Within its scope the key works for its user in its workspace...
    let members = app
        .client()
        .list_members(with_api_key(
            pb::ListMembersRequest { workspace_id: owner.workspace_id.clone(), ..Default::default() },
            &secret,
        ))
        .await
        .unwrap();
    assert_eq!(members.get_ref().members.len(), 1);
    let bearer = app
        .client()
        .list_members(signed(
            pb::ListMembersRequest { workspace_id: owner.workspace_id.clone(), ..Default::default() },
            &secret,
        ))
        .await;
    assert!(bearer.is_ok(), "`Bearer pm_…` works as well as x-api-key");
    // ...beyond it, not, even though its owner is an Admin.
    let status = assert_code(
        app.client()
            .invite_member(with_api_key(
                pb::InviteMemberRequest {
                    workspace_id: owner.workspace_id.clone(),
                    email: "x@example.com".into(),
                    role: Role::Viewer.to_proto(),
                },
                &secret,
            ))
            .await,
        Code::PermissionDenied,
    );
    assert!(status.message().contains("members:write"));
    // Keys cannot manage accounts or mint more keys.
    assert_code(
        app.client().create_api_key(with_api_key(create("more", &["members:read"], None), &secret)).await,
        Code::PermissionDenied,
    );
    let used =
        app.client().list_api_keys(signed(pb::ListApiKeysRequest::default(), &owner.access)).await.unwrap();
    assert!(used.get_ref().api_keys[0].last_used_at.is_some(), "last use is recorded");
}

#[tokio::test]
async fn a_revoked_key_stops_at_once() {
    let app = spawn_app().await;
    let owner = app.register("revoke").await;
    let created = app
        .client()
        .create_api_key(signed(create("temp", &["members:read"], None), &owner.access))
        .await
        .unwrap()
        .into_inner();
    let list = |key: &str| {
        let mut client = app.client();
        let request = with_api_key(
            pb::ListMembersRequest { workspace_id: owner.workspace_id.clone(), ..Default::default() },
            key,
        );
        async move { client.list_members(request).await }
    };
    assert!(list(&created.secret).await.is_ok(), "works (and is now cached)");
    let key_id = created.api_key.unwrap().id;
    let (mut events, listening) = app.listen("events.user.api_key_revoked").await;
    let revoked = app
        .client()
        .revoke_api_key(signed(pb::RevokeApiKeyRequest { id: key_id.clone() }, &owner.access))
        .await
        .unwrap();
    assert_eq!(revoked.get_ref().api_key.as_ref().unwrap().state, pb::ApiKeyState::Revoked as i32);
    assert_code(list(&created.secret).await, Code::Unauthenticated);
    let event: pb::ApiKeyRevokedEvent = next_event(&mut events).await;
    assert_eq!(
        (event.api_key_id.as_str(), event.reason),
        (key_id.as_str(), pb::ApiKeyRevocationReason::Revoked as i32)
    );
    listening.cancel();
    assert!(
        app.client()
            .revoke_api_key(signed(pb::RevokeApiKeyRequest { id: key_id }, &owner.access))
            .await
            .is_ok(),
        "idempotent"
    );
    assert_code(list("pm_0000000000000000000000000000000000000000").await, Code::Unauthenticated);
}

#[tokio::test]
async fn an_expired_key_stops_working() {
    let app = spawn_app().await;
    let owner = app.register("expiry").await;
    let soon = chrono::Utc::now() + chrono::TimeDelta::seconds(2);
    let created = app
        .client()
        .create_api_key(signed(create("short", &["members:read"], Some(soon)), &owner.access))
        .await
        .unwrap()
        .into_inner();
    let request =
        || pb::ListMembersRequest { workspace_id: owner.workspace_id.clone(), ..Default::default() };
    assert!(app.client().list_members(with_api_key(request(), &created.secret)).await.is_ok());
    let stopped = eventually(Duration::from_secs(10), || async {
        app.client().list_members(with_api_key(request(), &created.secret)).await.is_err()
    })
    .await;
    assert!(stopped, "the key stops at its expiry");
}

#[tokio::test]
async fn bad_key_requests_are_refused_by_field() {
    let app = spawn_app().await;
    let owner = app.register("badkeys").await;
    let status = assert_code(
        app.client()
            .create_api_key(signed(
                create(
                    "",
                    &["posts:read", "root:all"],
                    Some(chrono::Utc::now() - chrono::TimeDelta::hours(1)),
                ),
                &owner.access,
            ))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(violated_fields(&status), vec!["name", "scopes[1]", "expires_at"]);
    let far = chrono::Utc::now() + chrono::TimeDelta::days(400);
    let status = assert_code(
        app.client().create_api_key(signed(create("far", &["posts:read"], Some(far)), &owner.access)).await,
        Code::InvalidArgument,
    );
    assert_eq!(violated_fields(&status), vec!["expires_at"]);

    // A Viewer cannot create keys at all, and nobody a key beyond their role.
    let viewer = app.register("viewer").await;
    app.join(&owner, &viewer, Role::Developer).await;
    let developer = app.switch(&viewer, &owner.workspace_id).await;
    let status = assert_code(
        app.client()
            .create_api_key(signed(create("escalate", &["members:write"], None), &developer.access_token))
            .await,
        Code::PermissionDenied,
    );
    assert!(status.message().contains("members:write"));
}

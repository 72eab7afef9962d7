//! Registration, login, profile, password and account deletion.

use postmesh_proto::postmesh::user::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{PASSWORD, assert_code, next_event, signed, spawn_app, unique_email, violated_fields};

#[tokio::test]
async fn registration_creates_an_admin_of_a_first_workspace() {
    let app = spawn_app().await;
    let email = unique_email("ada");
    let response = app
        .client()
        .register(pb::RegisterRequest {
            email: email.to_uppercase(),
            password: PASSWORD.into(),
            display_name: "  Ada Lovelace ".into(),
            workspace_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let user = response.user.unwrap();
    assert_eq!(user.email, email, "emails are stored lower-case");
    assert_eq!(user.display_name, "Ada Lovelace");
    assert_eq!(response.workspace.unwrap().name, "Ada Lovelace's workspace");
    let tokens = response.tokens.unwrap();
    assert_eq!(tokens.role, postmesh_kit::auth::Role::Admin.to_proto());
    assert_eq!(tokens.token_type, "Bearer");

    let profile =
        app.client().get_profile(signed(pb::GetProfileRequest {}, &tokens.access_token)).await.unwrap();
    assert_eq!(profile.get_ref().user.as_ref().unwrap().id, user.id);

    let again = app
        .client()
        .register(pb::RegisterRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            display_name: "Copy".into(),
            workspace_name: String::new(),
        })
        .await;
    assert_code(again, Code::AlreadyExists);
}

#[tokio::test]
async fn bad_registrations_name_every_bad_field_and_store_nothing() {
    let app = spawn_app().await;
    let status = assert_code(
        app.client()
            .register(pb::RegisterRequest {
                email: "not-an-email".into(),
                password: "short".into(),
                display_name: "x".repeat(101),
                workspace_name: String::new(),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(violated_fields(&status), vec!["email", "display_name", "password"]);

    let email = unique_email("common");
    let status = assert_code(
        app.client()
            .register(pb::RegisterRequest {
                email: email.clone(),
                password: "password1234".into(),
                display_name: "Common".into(),
                workspace_name: String::new(),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(violated_fields(&status), vec!["password"]);
    assert!(status.message().contains("too common"), "{}", status.message());
    // Nothing was stored: the same email registers fine with a good password.
    assert!(
        app.client()
            .register(pb::RegisterRequest {
                email,
                password: PASSWORD.into(),
                display_name: "Common".into(),
                workspace_name: String::new(),
            })
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn unknown_email_and_wrong_password_look_the_same() {
    let app = spawn_app().await;
    let account = app.register("login").await;
    let wrong =
        assert_code(app.login(&account.email, "wrong-password-but-long").await, Code::Unauthenticated);
    let unknown = assert_code(app.login(&unique_email("nobody"), PASSWORD).await, Code::Unauthenticated);
    assert_eq!(wrong.message(), unknown.message());
    assert_eq!(wrong.message(), "invalid email or password");
}

#[tokio::test]
async fn repeated_failures_back_off_per_account() {
    let app = spawn_app().await;
    let account = app.register("throttled").await;
    for _ in 0..5 {
        assert_code(app.login(&account.email, "wrong-password-but-long").await, Code::Unauthenticated);
    }
    // The sixth failure starts the back-off; now even the right password waits.
    assert_code(app.login(&account.email, "wrong-password-but-long").await, Code::Unauthenticated);
    let status = assert_code(app.login(&account.email, PASSWORD).await, Code::ResourceExhausted);
    let retry =
        status.get_error_details().retry_info().and_then(|r| r.retry_delay).expect("says when to retry");
    assert!(retry.as_secs() >= 1, "{retry:?}");
    // Other accounts are not affected.
    let other = app.register("unaffected").await;
    assert!(app.login(&other.email, PASSWORD).await.is_ok());
}

#[tokio::test]
async fn one_address_guessing_many_accounts_is_slowed_down() {
    let app = spawn_app().await;
    let victim = app.register("victim").await;
    // Twenty failures from one address, each on a different account, stay
    // under every account's own limit but reach the address's.
    for _ in 0..21 {
        assert_code(
            app.login(&unique_email("guess"), "wrong-password-but-long").await,
            Code::Unauthenticated,
        );
    }
    let status = assert_code(app.login(&victim.email, PASSWORD).await, Code::ResourceExhausted);
    assert!(status.message().contains("too many failed logins"), "{}", status.message());
}

#[tokio::test]
async fn profiles_update_through_a_field_mask() {
    let app = spawn_app().await;
    let account = app.register("profile").await;
    let update = |paths: &[&str], user: pb::User| {
        signed(
            pb::UpdateProfileRequest {
                user: Some(user),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
            },
            &account.access,
        )
    };
    let changes = pb::User {
        display_name: "Grace Hopper".into(),
        time_zone: "America/New_York".into(),
        locale: "en-US".into(),
        avatar_url: "https://example.com/grace.png".into(),
        email: "ignored@example.com".into(),
        ..Default::default()
    };
    let updated = app
        .client()
        .update_profile(update(&["display_name", "time_zone", "locale"], changes.clone()))
        .await
        .unwrap();
    let user = updated.into_inner().user.unwrap();
    assert_eq!(
        (user.display_name.as_str(), user.time_zone.as_str(), user.locale.as_str()),
        ("Grace Hopper", "America/New_York", "en-US")
    );
    assert_eq!(user.avatar_url, "", "fields outside the mask are untouched");
    assert_eq!(user.email, account.email);

    let status = assert_code(
        app.client().update_profile(update(&["email"], changes.clone())).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("email cannot be changed"), "{}", status.message());
    let bad = pb::User { time_zone: "Not A Zone!".into(), ..Default::default() };
    let status =
        assert_code(app.client().update_profile(update(&["time_zone"], bad)).await, Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["user.time_zone"]);
    assert_code(app.client().update_profile(update(&[], changes)).await, Code::InvalidArgument);
}

#[tokio::test]
async fn changing_the_password_ends_other_sessions() {
    let app = spawn_app().await;
    let account = app.register("rotate").await;
    let other_session = app.login_tokens(&account.email).await;
    let new_password = "amber-harbor-signal-77";
    let change = |current: &str| {
        signed(
            pb::ChangePasswordRequest { current_password: current.into(), new_password: new_password.into() },
            &account.access,
        )
    };
    let status =
        assert_code(app.client().change_password(change("not-the-password")).await, Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["current_password"]);
    let response = app.client().change_password(change(PASSWORD)).await.unwrap().into_inner();
    assert_eq!(response.revoked_session_count, 1);

    assert_code(
        app.client().get_profile(signed(pb::GetProfileRequest {}, &other_session.access_token)).await,
        Code::Unauthenticated,
    );
    assert!(
        app.client().get_profile(signed(pb::GetProfileRequest {}, &account.access)).await.is_ok(),
        "this session stays"
    );
    assert_code(app.login(&account.email, PASSWORD).await, Code::Unauthenticated);
    assert!(app.login(&account.email, new_password).await.is_ok());
}

#[tokio::test]
async fn deleting_an_account_revokes_everything_at_once() {
    let app = spawn_app().await;
    let account = app.register("leaving").await;
    let key = app
        .client()
        .create_api_key(signed(
            pb::CreateApiKeyRequest {
                name: "ci".into(),
                scopes: vec!["members:read".into()],
                expires_at: None,
            },
            &account.access,
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;

    let (mut deleted, shutdown) = app.listen("events.user.deleted").await;

    let response = app
        .client()
        .delete_user(signed(pb::DeleteUserRequest { id: account.user_id.clone() }, &account.access))
        .await
        .unwrap();
    let event: pb::UserDeletedEvent = next_event(&mut deleted).await;
    assert_eq!(event.user_id, account.user_id);
    assert_eq!(event.deleted_by_user_id, account.user_id);
    assert_eq!(event.workspace_ids, vec![account.workspace_id.clone()]);
    shutdown.cancel();
    assert_eq!(
        response.get_ref().deleted_workspace_ids,
        vec![account.workspace_id.clone()],
        "a workspace with no one left goes too"
    );

    assert_code(
        app.client().get_profile(signed(pb::GetProfileRequest {}, &account.access)).await,
        Code::Unauthenticated,
    );
    assert_code(
        app.client().refresh_token(pb::RefreshTokenRequest { refresh_token: account.refresh.clone() }).await,
        Code::Unauthenticated,
    );
    assert_code(
        app.client()
            .list_members(crate::helpers::with_api_key(
                pb::ListMembersRequest { workspace_id: account.workspace_id.clone(), ..Default::default() },
                &key,
            ))
            .await,
        Code::Unauthenticated,
    );
    assert_code(app.login(&account.email, PASSWORD).await, Code::Unauthenticated);
    // The address is free again.
    assert!(
        app.client()
            .register(pb::RegisterRequest {
                email: account.email.clone(),
                password: PASSWORD.into(),
                display_name: "Back".into(),
                workspace_name: String::new()
            })
            .await
            .is_ok()
    );
}

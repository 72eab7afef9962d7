//! Refresh rotation with reuse detection, logout, JWKS.

use postmesh_proto::postmesh::user::v1 as pb;
use tonic::Code;

use crate::helpers::{assert_code, signed, spawn_app};

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_ends_the_family() {
    let app = spawn_app().await;
    let account = app.register("refresh").await;
    let refresh = |token: &str| {
        let mut client = app.client();
        let request = pb::RefreshTokenRequest { refresh_token: token.into() };
        async move { client.refresh_token(request).await }
    };

    let second = refresh(&account.refresh).await.unwrap().into_inner().tokens.unwrap();
    assert_ne!(second.refresh_token, account.refresh, "each refresh gives a new token");
    assert_eq!(second.workspace_id, account.workspace_id);
    let third = refresh(&second.refresh_token).await.unwrap().into_inner().tokens.unwrap();
    assert!(app.client().get_profile(signed(pb::GetProfileRequest {}, &third.access_token)).await.is_ok());

    // The first token comes back: it was stolen. The whole family ends.
    let status = assert_code(refresh(&account.refresh).await, Code::Unauthenticated);
    assert!(status.message().contains("reuse"), "{}", status.message());
    assert_code(refresh(&third.refresh_token).await, Code::Unauthenticated);
    assert_code(
        app.client().get_profile(signed(pb::GetProfileRequest {}, &third.access_token)).await,
        Code::Unauthenticated,
    );
    // Other sessions live on.
    let other = app.login_tokens(&account.email).await;
    assert!(refresh(&other.refresh_token).await.is_ok());
    assert_code(refresh("pmr_not-a-real-token").await, Code::Unauthenticated);
    assert_code(refresh("").await, Code::InvalidArgument);
}

#[tokio::test]
async fn logout_stops_the_session_at_once() {
    let app = spawn_app().await;
    let account = app.register("logout").await;
    let other = app.login_tokens(&account.email).await;
    let response = app
        .client()
        .logout(signed(pb::LogoutRequest { all_sessions: false }, &account.access))
        .await
        .unwrap();
    assert_eq!(response.get_ref().revoked_session_count, 1);
    assert_code(
        app.client().get_profile(signed(pb::GetProfileRequest {}, &account.access)).await,
        Code::Unauthenticated,
    );
    assert_code(
        app.client().refresh_token(pb::RefreshTokenRequest { refresh_token: account.refresh.clone() }).await,
        Code::Unauthenticated,
    );
    assert!(
        app.client().get_profile(signed(pb::GetProfileRequest {}, &other.access_token)).await.is_ok(),
        "other sessions stay"
    );

    let response = app
        .client()
        .logout(signed(pb::LogoutRequest { all_sessions: true }, &other.access_token))
        .await
        .unwrap();
    assert!(response.get_ref().revoked_session_count >= 1);
    assert_code(
        app.client().get_profile(signed(pb::GetProfileRequest {}, &other.access_token)).await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn the_jwks_verifies_issued_tokens() {
    let app = spawn_app().await;
    let account = app.register("jwks").await;
    let jwks = app.client().get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner();
    let key = &jwks.keys[0];
    assert_eq!(
        (key.kty.as_str(), key.crv.as_str(), key.alg.as_str(), key.r#use.as_str()),
        ("OKP", "Ed25519", "EdDSA", "sig")
    );
    let header = jsonwebtoken::decode_header(&account.access).unwrap();
    assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
    let decoding = jsonwebtoken::DecodingKey::from_ed_components(&key.x).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["postmesh"]);
    let claims =
        jsonwebtoken::decode::<serde_json::Value>(&account.access, &decoding, &validation).unwrap().claims;
    assert_eq!(claims["sub"], account.user_id);
    assert_eq!(claims["ws"], account.workspace_id);
    assert_eq!(claims["roles"], serde_json::json!(["admin"]));
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 15 * 60, "access tokens live 15 minutes");
}

#[tokio::test]
async fn service_tokens_need_the_shared_secret() {
    let app = spawn_app().await;
    // This test server has no service secret configured: the RPC says so.
    let status = assert_code(
        app.client()
            .issue_service_token(pb::IssueServiceTokenRequest {
                service_name: "content".into(),
                service_secret: "x".repeat(40),
                scopes: vec![],
            })
            .await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("POSTMESH_AUTH_SERVICE_SECRET"));
    // And internal RPCs refuse user tokens.
    let account = app.register("internal").await;
    assert_code(
        app.client()
            .get_member(signed(
                pb::GetMemberRequest {
                    workspace_id: account.workspace_id.clone(),
                    user_id: account.user_id.clone(),
                },
                &account.access,
            ))
            .await,
        Code::PermissionDenied,
    );
}

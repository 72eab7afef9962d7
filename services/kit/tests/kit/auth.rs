//! Token verification and the auth layer: every forged, stale or misdirected
//! token is refused, through the verifier and through a real gRPC server.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use postmesh_kit::auth::{Auth, Claims, MethodRule, Role, TokenKind};
use postmesh_kit::testing::{TestEnv, TestServer, access_token, auth};
use postmesh_proto::postmesh::ai::v1::GetModelsStatusRequest;
use postmesh_proto::postmesh::ai::v1::ai_service_client::AiServiceClient;
use postmesh_proto::postmesh::ai::v1::ai_service_server::AiServiceServer;

/// Claims that would be valid but for what each attack changes.
fn claims(auth: &Auth) -> Claims {
    let settings = auth.settings();
    let mut claims = Claims::new(settings, TokenKind::Access, "user-1", settings.access_ttl);
    claims.ws = Some("workspace-1".into());
    claims.roles = vec![Role::Viewer];
    claims.sid = Some("session-1".into());
    claims
}

fn signed(auth: &Auth, claims: &Claims) -> String {
    auth.key_ring().unwrap().sign(claims)
}

fn b64(json: serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(json.to_string())
}

async fn refused(auth: &Auth, token: &str) -> String {
    let status = auth.verifier().verify(token).await.expect_err("the token must be refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    status.message().to_owned()
}

#[tokio::test]
async fn a_genuine_token_verifies_and_describes_its_caller() {
    let env = TestEnv::new().await;
    let auth = auth(&env).await;
    let verified = auth.verifier().verify(&signed(&auth, &claims(&auth))).await.unwrap();
    let caller = verified.caller();
    assert_eq!(caller.user_id.as_deref(), Some("user-1"));
    assert_eq!(caller.workspace_id.as_deref(), Some("workspace-1"));
    assert!(caller.can("posts:read") && !caller.can("posts:write"), "Viewer permissions");
}

#[tokio::test]
async fn forged_and_misdirected_tokens_are_refused() {
    let env = TestEnv::new().await;
    let auth = auth(&env).await;
    let kid = auth.key_ring().unwrap().signing_kid().to_owned();
    let genuine = signed(&auth, &claims(&auth));
    let payload = genuine.split('.').nth(1).unwrap().to_owned();

    // alg: none, no signature.
    let none = format!("{}.{payload}.", b64(serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid})));
    refused(&auth, &none).await;

    // HS256 "signed" with the public key, the classic confusion attack.
    let public_x = &auth.key_ring().unwrap().jwks()[0].x;
    for secret in [public_x.as_bytes().to_vec(), URL_SAFE_NO_PAD.decode(public_x).unwrap()] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        let token =
            jsonwebtoken::encode(&header, &claims(&auth), &EncodingKey::from_secret(&secret)).unwrap();
        assert!(refused(&auth, &token).await.contains("algorithm"));
    }

    // Expired, and not yet valid (beyond the 30 s leeway).
    let mut expired = claims(&auth);
    expired.exp = expired.iat - 3600;
    assert!(refused(&auth, &signed(&auth, &expired)).await.contains("expired"));
    let mut early = claims(&auth);
    early.nbf = early.iat + 3600;
    early.exp = early.iat + 7200;
    assert!(refused(&auth, &signed(&auth, &early)).await.contains("not valid yet"));

    // Wrong audience and issuer.
    let mut audience = claims(&auth);
    audience.aud = "someone-else".into();
    assert!(refused(&auth, &signed(&auth, &audience)).await.contains("audience"));
    let mut issuer = claims(&auth);
    issuer.iss = "evil".into();
    assert!(refused(&auth, &signed(&auth, &issuer)).await.contains("issuer"));

    // A key we do not know, and a foreign key claiming our key id.
    let foreign = TestEnv::new().await;
    let foreign_auth = postmesh_kit::testing::auth(&foreign).await;
    assert!(refused(&auth, &signed(&foreign_auth, &claims(&auth))).await.contains("unknown key"));
    let foreign_token = signed(&foreign_auth, &claims(&auth));
    let mut parts: Vec<String> = foreign_token.split('.').map(str::to_owned).collect();
    parts[0] = b64(serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}));
    assert!(refused(&auth, &parts.join(".")).await.contains("signature"));

    // A tampered payload: Viewer made Admin without re-signing.
    let mut escalated = claims(&auth);
    escalated.roles = vec![Role::Admin];
    let tampered_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&escalated).unwrap());
    let mut parts: Vec<&str> = genuine.split('.').collect();
    parts[1] = &tampered_payload;
    assert!(refused(&auth, &parts.join(".")).await.contains("signature"));

    // No key id, and garbage.
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = None;
    let mut without_kid: Vec<String> = genuine.split('.').map(str::to_owned).collect();
    without_kid[0] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
    refused(&auth, &without_kid.join(".")).await;
    refused(&auth, "not-a-token").await;
}

#[tokio::test]
async fn revoked_sessions_users_and_keys_stop_at_once() {
    let env = TestEnv::new().await;
    let auth = auth(&env).await;
    let token = signed(&auth, &claims(&auth));
    auth.verifier().verify(&token).await.expect("valid before revocation");
    auth.revocations().revoke_session("session-1").await.unwrap();
    assert!(refused(&auth, &token).await.contains("revoked"));

    let mut other = claims(&auth);
    other.sid = Some("session-2".into());
    other.iat_ms -= 10;
    let before = signed(&auth, &other);
    auth.revocations().revoke_user_tokens("user-1").await.unwrap();
    refused(&auth, &before).await;
    let mut after = claims(&auth);
    after.sid = Some("session-3".into());
    after.iat_ms = chrono::Utc::now().timestamp_millis() + 5;
    auth.verifier().verify(&signed(&auth, &after)).await.expect("tokens issued after the cut-off work");
}

#[tokio::test]
async fn the_layer_enforces_the_contracts_rules_over_grpc() {
    let env = TestEnv::new().await;
    let mut builder = TestServer::builder(&env, "test", true).await;
    builder.runtime.add_grpc_service(AiServiceServer::new(postmesh_kit_test_ai::Models));
    let server = builder.serve().await;
    let mut client = AiServiceClient::new(server.channel().await);
    let call = |token: Option<String>| {
        let mut request = tonic::Request::new(GetModelsStatusRequest::default());
        if let Some(token) = token {
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    };

    let status = client.get_models_status(call(None)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "no credential");
    let status = client.get_models_status(call(Some("garbage".into()))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "bad credential");

    let viewer = access_token(&server.auth, "user-1", "workspace-1", &[Role::Viewer]);
    let status = client.get_models_status(call(Some(viewer))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "Viewers lack ai:use");
    assert!(status.message().contains("ai:use"), "{}", status.message());

    let editor = access_token(&server.auth, "user-1", "workspace-1", &[Role::Editor]);
    let response = client.get_models_status(call(Some(editor))).await;
    assert!(response.is_ok(), "Editors hold ai:use: {response:?}");

    let mut bad_scheme = tonic::Request::new(GetModelsStatusRequest::default());
    bad_scheme.metadata_mut().insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    assert_eq!(client.get_models_status(bad_scheme).await.unwrap_err().code(), tonic::Code::Unauthenticated);
}

#[test]
fn internal_rpcs_are_marked_in_the_contract() {
    let rules = postmesh_kit::auth::MethodRules::postmesh();
    assert_eq!(rules.rule("/postmesh.user.v1.UserService/ListWorkspaceMembers"), MethodRule::Internal);
}

/// A stand-in AI service whose one call answers at once.
mod postmesh_kit_test_ai {
    use postmesh_proto::postmesh::ai::v1::ai_service_server::AiService;
    use postmesh_proto::postmesh::ai::v1::{GetModelsStatusRequest, GetModelsStatusResponse};

    pub struct Models;

    #[tonic::async_trait]
    impl AiService for Models {
        async fn get_models_status(
            &self,
            _request: tonic::Request<GetModelsStatusRequest>,
        ) -> Result<tonic::Response<GetModelsStatusResponse>, tonic::Status> {
            Ok(tonic::Response::new(GetModelsStatusResponse::default()))
        }
    }
}

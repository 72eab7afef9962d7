//! Authentication across the mesh: a token or API key issued by the user
//! service works on every other service, with the same rules, in one
//! process (`dev`) and across processes (`serve`).

use postmesh_kit::testing::TestEnv;
use postmesh_proto::postmesh::content::v1::content_service_client::ContentServiceClient;
use postmesh_proto::postmesh::content::v1::{CreatePostRequest, ListPostsRequest};
use postmesh_proto::postmesh::user::v1 as pb;
use postmesh_proto::postmesh::user::v1::user_service_client::UserServiceClient;
use tonic::Code;

use crate::helpers::{Process, bearer, register};

fn with_api_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-api-key", key.parse().unwrap());
    request
}

async fn create_key(
    user: &mut UserServiceClient<tonic::transport::Channel>,
    access: &str,
    scopes: &[&str],
) -> (String, String) {
    let created = user
        .create_api_key(bearer(
            pb::CreateApiKeyRequest {
                name: "e2e".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                expires_at: None,
            },
            access,
        ))
        .await
        .expect("key created")
        .into_inner();
    (created.api_key.unwrap().id, created.secret)
}

/// Checks one content-service endpoint against the credentials issued by
/// `user_channel`'s user service.
/// `shared_store`: the two services share a key-value store, so
/// revocations reach both (always in one process; across processes only
/// with Redis).
async fn credentials_work_on_the_content_service(
    user_channel: tonic::transport::Channel,
    content_channel: tonic::transport::Channel,
    shared_store: bool,
) {
    let (access, _, _) = register(user_channel.clone(), "mesh").await;
    let mut user = UserServiceClient::new(user_channel);
    let mut content = ContentServiceClient::new(content_channel);

    let status = content.list_posts(ListPostsRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "no credential");
    // Authenticated and allowed: the call reaches the handler.
    let posts = content.list_posts(bearer(ListPostsRequest::default(), &access)).await.expect("allowed");
    assert!(posts.get_ref().posts.is_empty(), "a new workspace has no posts");

    let (key_id, key) = create_key(&mut user, &access, &["posts:read"]).await;
    let listed = content.list_posts(with_api_key(ListPostsRequest::default(), &key)).await;
    assert!(listed.is_ok(), "an API key within its scope passes: {listed:?}");
    let status = content.create_post(with_api_key(CreatePostRequest::default(), &key)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "posts:write is outside the key's scopes");
    assert!(status.message().contains("posts:write"));

    user.revoke_api_key(bearer(pb::RevokeApiKeyRequest { id: key_id }, &access)).await.expect("revoked");
    if !shared_store {
        return;
    }
    let status = content.list_posts(with_api_key(ListPostsRequest::default(), &key)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "a revoked key stops on every service at once");

    user.logout(bearer(pb::LogoutRequest { all_sessions: false }, &access)).await.expect("logout");
    let status = content.list_posts(bearer(ListPostsRequest::default(), &access)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "a logged-out token stops on every service at once");
}

#[tokio::test]
async fn credentials_work_across_the_mesh_in_dev() {
    let env = TestEnv::new().await;
    let process = Process::start(&env, &["dev"]);
    let channel = process.channel().await;
    credentials_work_on_the_content_service(channel.clone(), channel, true).await;
}

#[tokio::test]
async fn credentials_work_across_processes() {
    // Two processes: the user service, and the content service that learns
    // the user service's keys from its JWKS and exchanges the shared secret
    // for a service token to resolve API keys.
    let env =
        TestEnv::with(&[("POSTMESH_AUTH_SERVICE_SECRET", "e2e-service-secret-of-at-least-32-chars")]).await;
    let shared_store = env.redis_url().is_some();
    let user = Process::start(&env, &["serve", "user"]);
    let user_url = user.grpc_url();
    let content =
        Process::start_with(&env, &["serve", "content"], &[("POSTMESH_USER_URL", user_url.as_str())]);
    credentials_work_on_the_content_service(user.channel().await, content.channel().await, shared_store)
        .await;
}

//! Calls between real processes: the content service resolves API keys at
//! the user service through the client stack. The user process is killed
//! (SIGKILL) and restarted on its port, or runs as two replicas.

use std::time::{Duration, Instant};

use postmesh_kit::testing::{TestEnv, eventually};
use postmesh_proto::postmesh::content::v1::ListPostsRequest;
use postmesh_proto::postmesh::content::v1::content_service_client::ContentServiceClient;
use tonic::Code;

use crate::helpers::{Process, get_json};

const SECRET: &str = "resilience-service-secret-at-least-32-chars";

/// The content service's answer to a call with a never-seen API key: each
/// one makes content ask the user service.
async fn call_with_fresh_key(
    content: &mut ContentServiceClient<tonic::transport::Channel>,
) -> (Code, String, Duration) {
    let mut request = tonic::Request::new(ListPostsRequest::default());
    let key = format!("pm_{}", uuid::Uuid::now_v7().simple());
    request.metadata_mut().insert("x-api-key", key.parse().unwrap());
    let started = Instant::now();
    let status = content.list_posts(request).await.expect_err("not a valid key");
    (status.code(), status.message().to_owned(), started.elapsed())
}

fn content_env(user_urls: &str) -> Vec<(&'static str, String)> {
    vec![
        ("POSTMESH_USER_URL", user_urls.to_owned()),
        ("POSTMESH_CLIENT_BREAKER_WINDOW", "10".into()),
        ("POSTMESH_CLIENT_BREAKER_MINIMUM_CALLS", "4".into()),
        ("POSTMESH_CLIENT_BREAKER_OPEN_FOR", "1s".into()),
    ]
}

fn start_content(env: &TestEnv, user_urls: &str) -> Process {
    let vars = content_env(user_urls);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Process::start_with(env, &["serve", "content"], &vars)
}

async fn breaker(content: &Process) -> String {
    let (_, body) = get_json(content.admin.expect("admin port"), "/health/detailed").await;
    body["clients"]["user"]["breaker"].as_str().unwrap_or("none").to_owned()
}

#[tokio::test]
async fn a_killed_callee_is_failed_fast_and_its_return_is_noticed() {
    let env = TestEnv::with(&[("POSTMESH_AUTH_SERVICE_SECRET", SECRET)]).await;
    let mut user = Process::start(&env, &["serve", "user"]);
    let user_addr = user.grpc.unwrap();
    let content = start_content(&env, &user.grpc_url());
    let mut client = ContentServiceClient::new(content.channel().await);

    // The user service answers "invalid key" forever: an answer about the
    // request, never a reason to open the breaker.
    for _ in 0..20 {
        let (code, message, _) = call_with_fresh_key(&mut client).await;
        assert_eq!(code, Code::Unauthenticated, "{message}");
    }
    assert_eq!(breaker(&content).await, "closed");

    user.child.kill().expect("SIGKILL");
    user.child.wait().unwrap();
    let opened = eventually(Duration::from_secs(15), || {
        let mut client = client.clone();
        async move { call_with_fresh_key(&mut client).await.0 == Code::Unavailable }
    })
    .await;
    assert!(opened);
    let open = eventually(Duration::from_secs(15), || async {
        let mut client = client.clone();
        call_with_fresh_key(&mut client).await;
        breaker(&content).await == "open"
    })
    .await;
    assert!(open, "the breaker opens");
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let (code, message, elapsed) = call_with_fresh_key(&mut client).await;
        assert_eq!(code, Code::Unavailable);
        assert!(message.contains("user"), "names the target: {message}");
        latencies.push(elapsed);
    }
    latencies.sort();
    assert!(latencies[5] < Duration::from_millis(5), "fails fast: {latencies:?}");

    // The user service comes back on its port.
    let listen = user_addr.to_string();
    let _user = Process::start(&env, &["serve", "user", "--listen", &listen]);
    let recovered = eventually(Duration::from_secs(20), || {
        let mut client = client.clone();
        async move { call_with_fresh_key(&mut client).await.0 == Code::Unauthenticated }
    })
    .await;
    assert!(recovered, "calls reach the user service again");
    // Three successful probes (the default) close the breaker.
    let closed = eventually(Duration::from_secs(10), || async {
        let mut client = client.clone();
        call_with_fresh_key(&mut client).await;
        breaker(&content).await == "closed"
    })
    .await;
    assert!(closed, "the breaker closes");
}

#[tokio::test]
async fn traffic_moves_to_the_replica_that_is_left() {
    let env = TestEnv::with(&[("POSTMESH_AUTH_SERVICE_SECRET", SECRET)]).await;
    let mut first = Process::start(&env, &["serve", "user"]);
    let second = Process::start(&env, &["serve", "user"]);
    let urls = format!("{},{}", first.grpc_url(), second.grpc_url());
    let content = start_content(&env, &urls);
    let mut client = ContentServiceClient::new(content.channel().await);
    for _ in 0..20 {
        assert_eq!(call_with_fresh_key(&mut client).await.0, Code::Unauthenticated);
    }
    let (_, body) = get_json(content.admin.unwrap(), "/health/detailed").await;
    assert_eq!(body["clients"]["user"]["endpoints"].as_object().unwrap().len(), 2, "{body}");

    first.child.kill().expect("SIGKILL");
    first.child.wait().unwrap();
    let mut other = 0;
    for _ in 0..40 {
        if call_with_fresh_key(&mut client).await.0 != Code::Unauthenticated {
            other += 1;
        }
    }
    assert!(other <= 1, "at most a call in flight at the kill fails: {other}");
    assert_eq!(breaker(&content).await, "closed");
}

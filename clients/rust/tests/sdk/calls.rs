//! Calls against `postmesh dev`: the quick start, typed errors, a stream
//! and a deadline.

use std::time::{Duration, Instant};

use postmesh_client::content::{CreatePostRequest, PostStatus, WatchPostStatusRequest};
use postmesh_client::prost_types::Timestamp;
use postmesh_client::tonic::{Code, Request};
use postmesh_client::user::{GetProfileRequest, RegisterRequest};
use postmesh_client::{CircuitState, Client, Error};

use crate::helpers::{PASSWORD, Server, signed_in, webhook_account};
use crate::quickstart;

#[tokio::test]
async fn the_quick_start_posts_to_both_webhooks() {
    let server = Server::start();
    let mut receiver = quickstart::Receiver::start().await.expect("the receiver starts");

    let status = match quickstart::run(&server.url, None, &receiver).await {
        Ok(status) => status,
        Err(error) => panic!("the quick start failed: {error}\n{}", server.stderr()),
    };

    assert!(status.settled);
    assert_eq!(status.status(), PostStatus::Posted, "{status:?}");
    assert_eq!(status.targets.len(), 2);
    assert!(quickstart::all_posted(&status), "{status:?}");
    // Each webhook is reported before it is acknowledged, so both are in.
    let mut paths = vec![
        receiver.deliveries.try_recv().expect("a delivery"),
        receiver.deliveries.try_recv().expect("a second delivery"),
    ];
    paths.sort();
    assert_eq!(paths, ["/first", "/second"]);
}

#[tokio::test]
async fn a_wrong_credential_is_a_typed_unauthenticated_error() {
    let server = Server::start();
    for client in [
        Client::builder(&server.url).token("not-a-token").connect().await.expect("connects"),
        Client::builder(&server.url)
            .api_key("pm_0000000000000000000000000000000000000000")
            .connect()
            .await
            .expect("connects"),
    ] {
        let error: Error =
            client.users().get_profile(GetProfileRequest {}).await.expect_err("refused").into();
        assert_eq!(error.code(), Code::Unauthenticated, "{error}");
        assert!(error.to_string().starts_with("UNAUTHENTICATED: "), "{error}");
        // A refusal says the server works: it does not count against it.
        assert_eq!(client.breaker_state(), CircuitState::Closed);
    }
}

#[tokio::test]
async fn an_invalid_argument_names_its_field() {
    let server = Server::start();
    let client = Client::builder(&server.url).connect().await.expect("connects");
    let request = RegisterRequest {
        email: "not an address".into(),
        password: PASSWORD.into(),
        display_name: "Ada".into(),
        workspace_name: String::new(),
    };
    let error: Error = client.users().register(request).await.expect_err("refused").into();
    assert_eq!(error.code(), Code::InvalidArgument, "{error}");
    let violation = error
        .field_violation("email")
        .unwrap_or_else(|| panic!("no email violation in {:?}", error.field_violations()));
    assert!(!violation.description.is_empty());
    assert!(error.field_violation("password").is_none(), "the password was fine");
}

#[tokio::test]
async fn a_stream_is_read_and_its_deadline_honoured() {
    let server = Server::start();
    let client = signed_in(&server).await;
    let account = webhook_account(&client, "http://127.0.0.1:9/never-called").await;
    let in_thirty_days = std::time::SystemTime::now() + Duration::from_secs(30 * 24 * 3600);
    let seconds = in_thirty_days.duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs();
    let request = CreatePostRequest {
        text: "Much later".into(),
        target_account_ids: vec![account],
        publish_at: Some(Timestamp { seconds: seconds as i64, nanos: 0 }),
        ..Default::default()
    };
    let post = client.content().create_post(request).await.expect("creates").into_inner().post.expect("post");

    let mut request = Request::new(WatchPostStatusRequest { id: post.id.clone() });
    request.set_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let mut updates =
        client.content().watch_post_status(request).await.expect("the stream opens").into_inner();
    let first = updates.message().await.expect("a first status").expect("not ended").status.expect("status");
    assert_eq!(first.post_id, post.id);
    assert_eq!(first.status(), PostStatus::Scheduled);
    assert!(!first.settled);

    let ended = updates.message().await.expect_err("the deadline ends the stream");
    let elapsed = started.elapsed();
    assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
    assert!(elapsed >= Duration::from_millis(500), "ended after {elapsed:?}, before the deadline");
    assert!(elapsed < Duration::from_secs(5), "ended after {elapsed:?}, long after the deadline");
    // The caller's own deadline is not the server's fault.
    assert_eq!(client.breaker_state(), CircuitState::Closed);
}

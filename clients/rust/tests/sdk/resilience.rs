//! The circuit breaker when postmesh goes away.

use std::time::{Duration, Instant};

use postmesh_client::tonic::Code;
use postmesh_client::user::GetProfileRequest;
use postmesh_client::{CircuitState, Error};

use crate::helpers::{Server, signed_in};

#[tokio::test]
async fn the_breaker_opens_when_the_target_is_gone_and_calls_fail_fast() {
    let mut server = Server::start();
    let client = signed_in(&server).await;
    client.users().get_profile(GetProfileRequest {}).await.expect("answers while up");

    server.kill();
    let mut failures = 0;
    while client.breaker_state() != CircuitState::Open {
        let error: Error =
            client.users().get_profile(GetProfileRequest {}).await.expect_err("the server is gone").into();
        assert_eq!(error.code(), Code::Unavailable, "{error}");
        failures += 1;
        assert!(failures <= 20, "the breaker did not open after {failures} failed calls");
    }

    let started = Instant::now();
    let error: Error = client.users().get_profile(GetProfileRequest {}).await.expect_err("refused").into();
    let took = started.elapsed();
    assert_eq!(error.code(), Code::Unavailable);
    assert!(error.message().contains("circuit breaker open"), "{error}");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(5)), "the RetryInfo says when to try again");
    assert!(took < Duration::from_millis(50), "an open breaker answers at once, took {took:?}");
}

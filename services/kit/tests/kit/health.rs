//! Health over gRPC follows the dependencies: readiness and each service
//! go NOT_SERVING when a connection they need fails and come back with it;
//! liveness stays SERVING until the process ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use postmesh_kit::Runtime;
use postmesh_kit::health::{Check, Health, LIVENESS, READINESS};
use postmesh_kit::server::{Bound, ServeOptions, serve_grpc};

fn options(grace: Duration) -> ServeOptions {
    ServeOptions { concurrency_per_connection: 64, grace }
}
use postmesh_kit::testing::{ChaosProxy, TestEnv, eventually, socket_addr};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const SERVICE: &str = "postmesh.test.v1.TestService";

async fn status(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> ServingStatus {
    let response =
        client.check(HealthCheckRequest { service: service.into() }).await.expect("health answers");
    response.into_inner().status()
}

#[tokio::test]
async fn statuses_follow_dependency_checks_over_grpc() {
    let (reporter, service) = tonic_health::server::health_reporter();
    let health = Health::new(reporter).await;
    let db_up = Arc::new(AtomicBool::new(true));
    let flag = db_up.clone();
    health.add_check(Check::new("database:test", move || {
        let up = flag.load(Ordering::SeqCst);
        async move { if up { Ok(()) } else { Err("connection refused".to_owned()) } }
    }));
    health.add_service(SERVICE, vec!["database:test".into()]).await;

    let bound = Bound::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = bound.addr();
    let shutdown = CancellationToken::new();
    let env = TestEnv::new().await;
    let auth = postmesh_kit::testing::auth(&env).await;
    tokio::spawn(serve_grpc(
        bound,
        Routes::new(service),
        auth,
        shutdown.clone(),
        options(Duration::from_secs(1)),
    ));
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = HealthClient::new(channel);

    assert_eq!(status(&mut client, READINESS).await, ServingStatus::NotServing, "not ready before checking");
    assert_eq!(status(&mut client, LIVENESS).await, ServingStatus::Serving);

    health.check_now().await;
    for name in ["", READINESS, SERVICE, LIVENESS] {
        assert_eq!(status(&mut client, name).await, ServingStatus::Serving, "{name:?}");
    }

    let mut watch =
        client.watch(HealthCheckRequest { service: READINESS.into() }).await.unwrap().into_inner();
    let first: HealthCheckResponse = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    db_up.store(false, Ordering::SeqCst);
    health.check_now().await;
    let change = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(change.status(), ServingStatus::NotServing, "watchers hear about the outage");
    assert_eq!(status(&mut client, SERVICE).await, ServingStatus::NotServing);
    assert_eq!(status(&mut client, "").await, ServingStatus::NotServing);
    assert_eq!(
        status(&mut client, LIVENESS).await,
        ServingStatus::Serving,
        "an outage is not a reason to restart"
    );
    let report = health.report();
    assert_eq!(report.status, "degraded");
    assert_eq!(report.dependencies["database:test"].error.as_deref(), Some("connection refused"));

    db_up.store(true, Ordering::SeqCst);
    health.check_now().await;
    assert_eq!(status(&mut client, SERVICE).await, ServingStatus::Serving, "recovers with its dependency");

    health.begin_shutdown().await;
    assert_eq!(
        status(&mut client, READINESS).await,
        ServingStatus::NotServing,
        "draining takes it out of rotation"
    );
    assert_eq!(status(&mut client, LIVENESS).await, ServingStatus::Serving);
    shutdown.cancel();
}

/// Readiness over real connections: each real backend of this run is put
/// behind a proxy, cut, and restored. (The embedded backends live in the
/// process and cannot be cut off; the test above covers the mechanism.)
#[tokio::test]
async fn readiness_follows_real_connections() {
    let env = TestEnv::new().await;
    let mut targets: Vec<(&str, String, &str)> = Vec::new();
    if let Some(url) = env.redis_url() {
        targets.push(("POSTMESH_REDIS_URL", url.to_owned(), "kv:redis"));
    }
    if let Some(url) = env.nats_url() {
        targets.push(("POSTMESH_NATS_URL", url.to_owned(), "bus:nats"));
    }
    for (variable, url, check) in targets {
        let proxy = ChaosProxy::start(socket_addr(&url)).await;
        let mut proxied = url::Url::parse(&url).unwrap();
        proxied.set_ip_host(proxy.addr().ip()).unwrap();
        proxied.set_port(Some(proxy.addr().port())).unwrap();
        let config = env.config_with(variable, proxied.as_str());
        let shutdown = CancellationToken::new();
        let mut runtime = Runtime::start(config, "test", false, shutdown.clone()).await.unwrap();
        runtime.bus().await.unwrap();
        runtime.start_health_checks().await;
        // NATS connects in the background, so allow the first checks to pass.
        let ready = eventually(Duration::from_secs(15), || async { runtime.health.is_ready() }).await;
        assert!(ready, "{check} ready through the proxy");

        proxy.cut();
        let down = eventually(Duration::from_secs(15), || async { !runtime.health.is_ready() }).await;
        assert!(down, "{check}: readiness did not notice the outage");
        assert!(!runtime.health.report().dependencies[check].ok);

        proxy.restore();
        let up = eventually(Duration::from_secs(30), || async { runtime.health.is_ready() }).await;
        assert!(up, "{check}: readiness did not recover");
        shutdown.cancel();
    }
}

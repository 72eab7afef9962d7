//! `postmesh dev`: every service in one process, healthy and discoverable.

use postmesh_kit::testing::TestEnv;
use postmesh_proto::postmesh::analytics::v1::GetDashboardRequest;
use postmesh_proto::postmesh::analytics::v1::analytics_service_client::AnalyticsServiceClient;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{
    Process, SERVICES, bearer, check, get_json, reflected_services, register, wait_serving,
};

#[tokio::test]
async fn dev_serves_every_service_with_health_and_reflection() {
    let env = TestEnv::new().await;
    let process = Process::start(&env, &["dev"]);
    let channel = process.channel().await;

    assert_eq!(wait_serving(channel.clone(), "").await, ServingStatus::Serving, "overall");
    for name in SERVICES.iter().copied().chain(["readiness", "liveness"]) {
        assert_eq!(check(channel.clone(), name).await.unwrap(), ServingStatus::Serving, "{name}");
    }
    let unknown = check(channel.clone(), "postmesh.nope.v1.NopeService").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "unknown names are not reported healthy");

    let (v1, v1alpha) = reflected_services(channel.clone()).await;
    for list in [&v1, &v1alpha] {
        for service in SERVICES {
            assert!(list.iter().any(|s| s == service), "{service} missing from reflection: {list:?}");
        }
        assert!(list.iter().any(|s| s == "grpc.health.v1.Health"));
    }
}

#[tokio::test]
async fn dev_answers_rpcs_of_later_issues_with_unimplemented_and_echoes_request_ids() {
    let env = TestEnv::new().await;
    let process = Process::start(&env, &["dev"]);
    let (access, _, _) = register(process.channel().await, "unimplemented").await;
    let mut analytics = AnalyticsServiceClient::new(process.channel().await);
    let mut request = bearer(GetDashboardRequest::default(), &access);
    request.metadata_mut().insert("x-request-id", "e2e-request-1".parse().unwrap());
    let status = analytics.get_dashboard(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert_eq!(status.metadata().get("x-request-id").unwrap(), "e2e-request-1");
}

#[tokio::test]
async fn dev_gateway_serves_health_metrics_and_json_404s() {
    let env = TestEnv::new().await;
    let process = Process::start(&env, &["dev"]);
    let http = process.http.expect("dev serves the gateway");
    assert!(process.admin.is_none(), "in dev the gateway serves the admin routes");

    let (status, body) = get_json(http, "/health/ready").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, _) = get_json(http, "/health/live").await;
    assert_eq!(status, 200);
    let (status, body) = get_json(http, "/health/detailed").await;
    assert_eq!(status, 200);
    for service in SERVICES {
        assert_eq!(body["services"][service], "SERVING", "{body}");
    }
    assert_eq!(body["dependencies"]["database:user"]["ok"], true, "{body}");

    let metrics = reqwest::get(format!("http://{http}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("postmesh_dependency_up"), "{metrics}");

    let (status, body) = get_json(http, "/api/nowhere").await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "NOT_FOUND");
    assert!(body["message"].as_str().unwrap().contains("/api/nowhere"));
}

#[tokio::test]
async fn sigterm_stops_dev_cleanly() {
    let env = TestEnv::with(&[("POSTMESH_LOG", "info")]).await;
    let mut process = Process::start(&env, &["dev"]);
    let channel = process.channel().await;
    assert_eq!(wait_serving(channel.clone(), "").await, ServingStatus::Serving);
    let started = std::time::Instant::now();
    let status = process.terminate().await;
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "drained within the 5 s grace");
    assert!(status.success(), "exit status {status:?}; stderr:\n{}", process.stderr());
    let log = process.stderr();
    assert!(log.contains("shutdown requested"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn dev_keeps_its_data_in_the_data_dir() {
    let env = TestEnv::new().await;
    let dir = env.data_dir().join("elsewhere");
    let dir_arg = dir.display().to_string();
    let _process = Process::start(&env, &["dev", "--data-dir", &dir_arg]);
    if !env.has_postgres() {
        for service in ["user", "content", "social", "analytics", "ai", "notification", "webhook"] {
            assert!(dir.join(format!("{service}.db")).exists(), "{service}.db in --data-dir");
        }
        if env.nats_url().is_none() {
            assert!(dir.join("bus.db").exists(), "the local bus lives there too");
        }
    }
}

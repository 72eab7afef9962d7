//! `postmesh serve <component>`: one service per process, as Kubernetes runs it.

use postmesh_kit::testing::TestEnv;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{Process, check, get_json, reflected_services, wait_serving};

#[tokio::test]
async fn serve_runs_one_service_and_advertises_only_it() {
    let env = TestEnv::new().await;
    let process = Process::start(&env, &["serve", "social"]);
    assert!(process.http.is_none(), "services do not serve the gateway");
    let channel = process.channel().await;
    let name = "postmesh.social.v1.SocialService";
    assert_eq!(wait_serving(channel.clone(), name).await, ServingStatus::Serving);
    assert_eq!(check(channel.clone(), "readiness").await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        check(channel.clone(), "postmesh.user.v1.UserService").await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    let (v1, v1alpha) = reflected_services(channel).await;
    for list in [v1, v1alpha] {
        assert!(list.contains(&name.to_owned()), "{list:?}");
        assert!(!list.iter().any(|s| s.starts_with("postmesh.") && s != name), "only social: {list:?}");
    }

    let admin = process.admin.expect("serve has an admin port");
    let (status, body) = get_json(admin, "/health/detailed").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["services"][name], "SERVING");
    assert!(body["services"].get("postmesh.user.v1.UserService").is_none());
}

#[tokio::test]
async fn serve_gateway_has_no_grpc_services_but_serves_http() {
    let env = TestEnv::new().await;
    let process = Process::start(&env, &["serve", "gateway"]);
    assert!(process.grpc.is_none(), "the gateway serves HTTP only");
    let (status, _) = get_json(process.http.expect("gateway HTTP"), "/health/live").await;
    assert_eq!(status, 200);
    let admin = process.admin.expect("admin port");
    // Ready means every backend answers; alone, the gateway is live but not ready.
    let (status, body) = get_json(admin, "/health/detailed").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["dependencies"]["backend:user"]["ok"], false, "{body}");
    let dependencies = body["dependencies"].as_object().unwrap();
    assert!(
        dependencies.keys().all(|d| d.starts_with("kv:") || d.starts_with("backend:")),
        "the gateway needs no database or bus: {body}"
    );
}

//! The client stack against a bare channel, and failing fast after a death.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postmesh_kit::auth::Auth;
use postmesh_kit::client::Clients;
use postmesh_kit::server::{Bound, ServeOptions, serve_grpc};
use postmesh_kit::testing::{ChaosProxy, TestEnv};
use postmesh_proto::postmesh::ai::v1::ai_service_client::AiServiceClient;
use postmesh_proto::postmesh::ai::v1::ai_service_server::{AiService, AiServiceServer};
use postmesh_proto::postmesh::ai::v1::{GetModelsStatusRequest, GetModelsStatusResponse};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

struct Cheap;

#[tonic::async_trait]
impl AiService for Cheap {
    async fn get_models_status(
        &self,
        _request: tonic::Request<GetModelsStatusRequest>,
    ) -> Result<tonic::Response<GetModelsStatusResponse>, tonic::Status> {
        Ok(tonic::Response::new(GetModelsStatusResponse::default()))
    }
}

async fn serve(auth: Auth) -> anyhow::Result<std::net::SocketAddr> {
    let bound = Bound::bind("127.0.0.1:0".parse()?).await?;
    let addr = bound.addr();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("postmesh.ai.v1.AiService", tonic_health::ServingStatus::Serving).await;
    let routes = Routes::new(health).add_service(AiServiceServer::new(Cheap));
    let options = ServeOptions { concurrency_per_connection: 1024, grace: Duration::from_millis(10) };
    tokio::spawn(serve_grpc(bound, routes, auth, CancellationToken::new(), options));
    Ok(addr)
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

async fn measure<T>(
    calls: usize,
    mut client: AiServiceClient<T>,
    token: &str,
) -> anyhow::Result<Vec<Duration>>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let mut request = tonic::Request::new(GetModelsStatusRequest::default());
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
        let started = Instant::now();
        client.get_models_status(request).await?;
        samples.push(started.elapsed());
    }
    samples.sort();
    Ok(samples)
}

async fn time_one<T>(client: &mut AiServiceClient<T>, token: &str) -> anyhow::Result<Duration>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut request = tonic::Request::new(GetModelsStatusRequest::default());
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let started = Instant::now();
    client.get_models_status(request).await?;
    Ok(started.elapsed())
}

pub async fn run(calls: usize) -> anyhow::Result<()> {
    let direct_env = TestEnv::new().await;
    let auth = postmesh_kit::testing::auth(&direct_env).await;
    let token =
        postmesh_kit::testing::access_token(&auth, "bench", "bench", &[postmesh_kit::auth::Role::Editor]);
    let addr = serve(auth.clone()).await?;

    let env =
        TestEnv::with(&[("POSTMESH_AI_URL", &format!("http://{addr}")), ("POSTMESH_LOG", "error")]).await;
    let clients = Clients::new(Arc::new(env.config.clone()), CancellationToken::new());
    let mesh = AiServiceClient::new(clients.channel("ai").await?);
    let bare = AiServiceClient::new(
        tonic::transport::Channel::from_shared(format!("http://{addr}"))?.connect().await?,
    );

    // Warm both up, then alternate call by call, so both see the same
    // machine (two cores shared by client and server are noisy).
    measure(2_000, bare.clone(), &token).await?;
    measure(2_000, mesh.clone(), &token).await?;
    let (mut bare_all, mut mesh_all) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    let (mut bare_client, mut mesh_client) = (bare.clone(), mesh.clone());
    for _ in 0..calls {
        bare_all.push(time_one(&mut bare_client, &token).await?);
        mesh_all.push(time_one(&mut mesh_client, &token).await?);
    }
    bare_all.sort();
    mesh_all.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("GetModelsStatus on loopback, {calls} sequential calls each, alternating (release build)");
    for (name, samples) in [("bare tonic channel", &bare_all), ("client stack", &mesh_all)] {
        println!(
            "  {name:<20} p50 {:>6.1} µs   p90 {:>6.1} µs   p99 {:>6.1} µs",
            us(percentile(samples, 0.5)),
            us(percentile(samples, 0.9)),
            us(percentile(samples, 0.99))
        );
    }
    let overhead = us(percentile(&mesh_all, 0.5)) / us(percentile(&bare_all, 0.5)) - 1.0;
    println!("  overhead at p50: {:+.1}%", overhead * 100.0);

    // A callee dies (its connections cut, as with SIGKILL): how long until
    // calls fail fast, and how fast they then fail.
    let proxy = ChaosProxy::start(addr).await;
    let env =
        TestEnv::with(&[("POSTMESH_AI_URL", &format!("http://{}", proxy.addr())), ("POSTMESH_LOG", "error")])
            .await;
    let clients = Clients::new(Arc::new(env.config.clone()), CancellationToken::new());
    let mut mesh = AiServiceClient::new(clients.channel("ai").await?);
    measure(100, mesh.clone(), &token).await?;
    proxy.cut();
    let died = Instant::now();
    let mut first_failure = None;
    let open_at = loop {
        let started = Instant::now();
        let mut request = tonic::Request::new(GetModelsStatusRequest::default());
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
        let failed = mesh.get_models_status(request).await.is_err();
        if failed {
            first_failure.get_or_insert(died.elapsed());
        }
        if clients.breaker_state("ai") == Some("open") {
            break died.elapsed();
        }
        if started.elapsed() > Duration::from_secs(5) || died.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("the breaker did not open");
        }
    };
    let mut fast = Vec::new();
    for _ in 0..1000 {
        let started = Instant::now();
        let mut request = tonic::Request::new(GetModelsStatusRequest::default());
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
        let _ = mesh.get_models_status(request).await;
        fast.push(started.elapsed());
    }
    fast.sort();
    println!("callee killed (default breaker settings, calls back to back):");
    println!("  first failed call after  {:>8.2} ms", first_failure.unwrap_or_default().as_secs_f64() * 1e3);
    println!("  breaker open after       {:>8.2} ms", open_at.as_secs_f64() * 1e3);
    println!(
        "  then calls fail in p50 {:.1} µs, p99 {:.1} µs",
        us(percentile(&fast, 0.5)),
        us(percentile(&fast, 0.99))
    );
    Ok(())
}

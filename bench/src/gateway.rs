//! The gateway's cost: one `postmesh dev`, the same cheap authenticated
//! call (`UserService/GetProfile`: token check, one indexed read) made as
//! HTTP/JSON through the gateway and as gRPC straight to the service.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use postmesh_proto::postmesh::user::v1::GetProfileRequest;
use postmesh_proto::postmesh::user::v1::user_service_client::UserServiceClient;
use tonic::transport::Channel;

use crate::client::percentile;

/// Calls in flight during the throughput runs.
const IN_FLIGHT: usize = 32;
/// Length of each throughput run.
const RUN_FOR: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Callers {
    grpc: UserServiceClient<Channel>,
    /// HTTP/1.1 with a pool of keep-alive connections, as most clients.
    http1: reqwest::Client,
    /// HTTP/2 over one connection (prior knowledge), as gRPC itself.
    http2: reqwest::Client,
    url: String,
    token: String,
}

/// How a call is made.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    Grpc,
    Http1,
    Http2,
}

impl Callers {
    async fn once(&mut self, via: Via) -> anyhow::Result<()> {
        match via {
            Via::Grpc => self.grpc_once().await,
            Via::Http1 => self.http_once(&self.http1.clone()).await,
            Via::Http2 => self.http_once(&self.http2.clone()).await,
        }
    }

    async fn grpc_once(&mut self) -> anyhow::Result<()> {
        let mut request = tonic::Request::new(GetProfileRequest {});
        request.metadata_mut().insert("authorization", format!("Bearer {}", self.token).parse()?);
        self.grpc.get_profile(request).await?;
        Ok(())
    }

    async fn http_once(&self, client: &reqwest::Client) -> anyhow::Result<()> {
        let response = client.get(&self.url).bearer_auth(&self.token).send().await?;
        if !response.status().is_success() {
            bail!("gateway answered {}", response.status());
        }
        response.bytes().await?;
        Ok(())
    }
}

/// Calls done by `IN_FLIGHT` workers in `RUN_FOR`.
async fn throughput(callers: &Callers, via: Via) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (mut callers, done, stop) = (callers.clone(), done.clone(), stop.clone());
        workers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                callers.once(via).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let started = Instant::now();
    tokio::time::sleep(RUN_FOR).await;
    stop.store(true, Ordering::Relaxed);
    let calls = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    while let Some(result) = workers.join_next().await {
        result??;
    }
    Ok(calls as f64 / elapsed.as_secs_f64())
}

pub async fn run(binary: &Path, calls: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The limiter stays on (its cost is part of the gateway), with a budget
    // the benchmark cannot exhaust.
    let dev = crate::start(binary, dir.path(), &[("POSTMESH_GATEWAY_RATE_LIMITS", "*=50000000/1m")]).await?;
    let base = format!("http://{}", dev.http);
    let http1 = reqwest::Client::builder().pool_max_idle_per_host(IN_FLIGHT).http1_only().build()?;
    let http2 = reqwest::Client::builder().http2_prior_knowledge().build()?;
    let token = crate::Api::sign_up(http1.clone(), base.clone()).await?.token;
    let channel = Channel::from_shared(format!("http://{}", dev.grpc))?.connect().await?;
    let mut callers = Callers {
        grpc: UserServiceClient::new(channel),
        http1,
        http2,
        url: format!("{base}/api/users/profile"),
        token,
    };
    let ways = [(Via::Grpc, "gRPC direct"), (Via::Http1, "JSON, HTTP/1.1"), (Via::Http2, "JSON, HTTP/2")];

    for _ in 0..1_000 {
        for (via, _) in ways {
            callers.once(via).await?;
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(calls); ways.len()];
    for _ in 0..calls {
        for (i, (via, _)) in ways.iter().enumerate() {
            let started = Instant::now();
            callers.once(*via).await?;
            samples[i].push(started.elapsed());
        }
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("GetProfile against postmesh dev, {calls} sequential calls each, interleaved (release build)");
    let mut p50 = Vec::new();
    for ((_, name), samples) in ways.iter().zip(samples.iter_mut()) {
        samples.sort();
        p50.push(us(percentile(samples, 0.5)));
        println!(
            "  {name:<16} p50 {:>6.1} µs   p90 {:>6.1} µs   p99 {:>6.1} µs   ({:.2}x direct at p50)",
            us(percentile(samples, 0.5)),
            us(percentile(samples, 0.9)),
            us(percentile(samples, 0.99)),
            us(percentile(samples, 0.5)) / p50[0],
        );
    }

    println!("Throughput with {IN_FLIGHT} calls in flight, {} s each", RUN_FOR.as_secs());
    let mut rates = Vec::new();
    for (via, name) in ways {
        let rate = throughput(&callers, via).await?;
        rates.push(rate);
        println!("  {name:<16} {rate:>8.0} calls/s   ({:.2}x direct)", rate / rates[0]);
    }
    drop(dev);
    Ok(())
}

//! postmesh benchmark harness. Measures the release binary from outside,
//! the way an operator sees it; results go to docs/BENCHMARKS.md.
//!
//! ```text
//! cargo build --release
//! cargo run --release -p postmesh-bench -- startup [runs]
//! ```
//!
//! `startup`: `postmesh dev` from spawn to the gRPC health check answering
//! SERVING, cold (empty data directory: every migration runs) and warm
//! (existing data), then resident memory after 5 s idle.
//!
//! `client [calls]`: the client stack's cost on a cheap call against a bare
//! tonic channel to the same in-process server (latency percentiles of
//! sequential calls), then how long after a callee dies calls fail fast.
//!
//! `gateway [calls]`: the same cheap call (`GetProfile`) as JSON through
//! the gateway and as gRPC straight to the service, against one `postmesh
//! dev`: sequential latency, alternating call by call, then throughput
//! with 32 calls in flight.
//!
//! `publish [posts]`: a post to five accounts on local fake platforms
//! (Discord, Mastodon, Bluesky, Telegram, Slack), from the create request
//! to every target Posted: latency one post after another, then sustained
//! posts per second with several in flight.
//!
//! `webhooks [events]`: outbound webhooks to a local receiver: from
//! `POST /api/webhooks/trigger` to the signed delivery, one event after
//! another, then deliveries per second with many triggers in flight.
//!
//! `verify [count]`: access-token verifications per second on one core, as
//! every service's auth layer does them: signature and claims alone, then
//! with the revocation lookup (in memory, or Redis when
//! `POSTMESH_REDIS_URL` is set).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod client;
mod gateway;
mod publish;
mod webhooks;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("startup") => {
            let runs = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(10);
            startup(&binary()?, runs).await
        }
        Some("client") => {
            let calls = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(20_000);
            client::run(calls).await
        }
        Some("gateway") => {
            let calls = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(20_000);
            gateway::run(&binary()?, calls).await
        }
        Some("publish") => {
            let posts = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(200);
            publish::run(&binary()?, posts).await
        }
        Some("webhooks") => {
            let events = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(1000);
            webhooks::run(&binary()?, events).await
        }
        Some("verify") => {
            let count = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(20_000);
            // Its own thread and single-threaded runtime: one core's worth.
            std::thread::spawn(move || verify(count))
                .join()
                .map_err(|_| anyhow::anyhow!("benchmark panicked"))?
        }
        _ => {
            bail!(
                "usage: postmesh-bench startup [runs] | client [calls] | gateway [calls] | publish [posts] | webhooks [events] | verify [count]"
            )
        }
    }
}

/// The benchmark's user, signed up through the gateway of a running
/// `postmesh dev`, and its JSON calls.
struct Api {
    http: reqwest::Client,
    /// `http://host:port` of the gateway.
    base: String,
    token: String,
}

impl Api {
    async fn sign_up(http: reqwest::Client, base: String) -> anyhow::Result<Self> {
        let body = serde_json::json!({
            "email": "bench@example.com",
            "password": "violet-ocean-lantern-42",
            "display_name": "Bench",
        });
        let answer: serde_json::Value =
            http.post(format!("{base}/api/users/register")).json(&body).send().await?.json().await?;
        let token =
            answer["tokens"]["access_token"].as_str().context("registration returns a token")?.to_owned();
        Ok(Self { http, base, token })
    }

    /// POSTs `body` to `path` as the user: the answer, or an error naming
    /// the status when it is not 2xx.
    async fn post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        if !status.is_success() {
            bail!("{path} answered {status}: {body}");
        }
        Ok(body)
    }
}

/// The release binary next to this one (`target/release/postmesh`).
fn binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("postmesh");
    if !path.exists() {
        bail!("{} not found: run `cargo build --release` first", path.display());
    }
    Ok(path)
}

struct Started {
    child: Child,
    to_serving: Duration,
    grpc: String,
    http: String,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `postmesh dev` on free ports and waits until gRPC health says
/// SERVING for the whole process.
async fn start(binary: &Path, data_dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<Started> {
    let began = Instant::now();
    let mut child = Command::new(binary)
        .args(["dev", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("POSTMESH_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning postmesh")?;
    let stdout = child.stdout.take().context("stdout")?;
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().map_while(Result::ok).find(|l| l.starts_with("postmesh ready"))
    })
    .await?
    .context("postmesh exited before it was ready")?;
    let address = |name: &str| {
        line.split_whitespace()
            .find_map(|p| p.strip_prefix(name))
            .map(str::to_owned)
            .with_context(|| format!("ready line names the {name} address"))
    };
    let (grpc, http) = (address("grpc=")?, address("http=")?);
    let mut client = loop {
        match tonic::transport::Channel::from_shared(format!("http://{grpc}"))?.connect().await {
            Ok(channel) => break HealthClient::new(channel),
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    };
    loop {
        let status = client.check(HealthCheckRequest { service: String::new() }).await?.into_inner().status();
        if status == ServingStatus::Serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(Started { child, to_serving: began.elapsed(), grpc, http })
}

/// Verifications on a single-threaded runtime: one core's worth.
fn verify(count: usize) -> anyhow::Result<()> {
    use postmesh_kit::auth::{Auth, Claims, Role, TokenKind};
    use postmesh_kit::config::{Config, ConfigSource};

    let dir = tempfile::tempdir()?;
    let mut env = vec![("POSTMESH_DATA_DIR".to_owned(), dir.path().display().to_string())];
    if let Ok(url) = std::env::var("POSTMESH_REDIS_URL") {
        env.push(("POSTMESH_REDIS_URL".to_owned(), url));
    }
    let config = Config::load(&ConfigSource { env, ..ConfigSource::default() })?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let kv = postmesh_kit::kv::Kv::connect(&config).await?;
        let backend = kv.backend_name();
        let clients =
            postmesh_kit::client::Clients::new(std::sync::Arc::new(config.clone()), Default::default());
        let auth = Auth::new(&config, kv, clients, "bench", true)?;
        let settings = auth.settings();
        let mut claims = Claims::new(settings, TokenKind::Access, "user-1", settings.access_ttl);
        claims.ws = Some("workspace-1".into());
        claims.roles = vec![Role::Editor];
        claims.sid = Some("session-1".into());
        let token = auth.key_ring().expect("keys").sign(&claims);

        let started = Instant::now();
        for _ in 0..count {
            auth.verifier().verify_signature_and_claims(&token).await?;
        }
        let signature_only = count as f64 / started.elapsed().as_secs_f64();

        let started = Instant::now();
        for _ in 0..count {
            auth.verifier().verify(&token).await?.caller();
        }
        let full = count as f64 / started.elapsed().as_secs_f64();
        println!("access token verification on one core, {count} tokens");
        println!("  signature and claims:                        {signature_only:>9.0} /s");
        println!("  plus revocation lookup ({backend:>6}) and caller: {full:>9.0} /s");
        Ok::<(), anyhow::Error>(())
    })
}

fn resident_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p50 = samples[samples.len() / 2];
    let max = samples[samples.len() - 1];
    format!("p50 {:.1} ms, min {:.1} ms, max {:.1} ms", ms(p50), ms(samples[0]), ms(max))
}

async fn startup(binary: &Path, runs: usize) -> anyhow::Result<()> {
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir()?;
        let first = start(binary, dir.path(), &[]).await?;
        cold.push(first.to_serving);
        drop(first);
        warm.push(start(binary, dir.path(), &[]).await?.to_serving);
    }
    println!("postmesh dev, spawn to gRPC health SERVING, {runs} runs each");
    println!("  cold (empty data dir): {}", summary(&mut cold));
    println!("  warm (existing data):  {}", summary(&mut warm));

    let dir = tempfile::tempdir()?;
    let idle = start(binary, dir.path(), &[]).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss, peak) = resident_kib(idle.child.id())?;
    println!(
        "  resident memory after 5 s idle: {:.1} MiB (peak {:.1} MiB)",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    Ok(())
}

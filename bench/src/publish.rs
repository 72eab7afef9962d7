//! Publishing end to end: one `postmesh dev` pointed at local fake platform
//! servers; a post to five accounts (Discord, Mastodon, Bluesky, Telegram,
//! Slack) from the create request until its status stream says every
//! target is Posted.
//!
//! Every post goes to five freshly connected accounts: the per-account
//! paces (Slack one message a second, Telegram twenty a minute per chat)
//! would otherwise decide the numbers, and they are the platforms' rules,
//! not postmesh's cost.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use postmesh_proto::postmesh::r#type::v1::Platform;
use postmesh_social::fakes::FakePlatforms;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::Api;
use crate::client::percentile;

const PLATFORMS: [Platform; 5] =
    [Platform::Discord, Platform::Mastodon, Platform::Bluesky, Platform::Telegram, Platform::Slack];
/// Posts in flight during the sustained run.
const IN_FLIGHT: usize = 16;

struct Stage {
    api: Api,
    fakes: FakePlatforms,
}

impl Stage {
    /// Five fresh accounts, one per platform; their ids.
    async fn accounts(&self) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::with_capacity(PLATFORMS.len());
        for platform in PLATFORMS {
            let body = json!({
                "platform": platform.as_str_name(),
                "credentials": self.fakes.credentials(platform),
            });
            let answer = self.api.post("/api/social/connect", body).await?;
            ids.push(answer["account"]["id"].as_str().context("account id")?.to_owned());
        }
        Ok(ids)
    }

    /// Creates a post to `accounts` and follows its status stream until
    /// it settles; the time from sending the create to the last status.
    async fn publish(&self, accounts: &[String]) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let body = json!({ "text": "Benchmark: **postmesh** #bench https://example.com", "target_account_ids": accounts });
        let post = self.api.post("/api/content/posts", body).await?;
        let id = post["post"]["id"].as_str().context("post id")?;
        let mut response = self
            .api
            .http
            .get(format!("{}/api/content/posts/{id}/status/stream", self.api.base))
            .bearer_auth(&self.api.token)
            .send()
            .await?;
        let mut buffer = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            buffer.extend_from_slice(&chunk);
            while let Some(at) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=at).collect();
                let message: Value = serde_json::from_slice(&line)?;
                let status = &message["status"];
                if status["settled"] == true {
                    if status["status"] != "POST_STATUS_POSTED" {
                        bail!("post {id} settled as {status}");
                    }
                    return Ok(started.elapsed());
                }
            }
        }
        bail!("the status stream of post {id} ended before it settled")
    }
}

pub async fn run(binary: &Path, posts: usize) -> anyhow::Result<()> {
    let fakes = FakePlatforms::start().await;
    let dir = tempfile::tempdir()?;
    let mut env = fakes.env();
    env.push(("POSTMESH_GATEWAY_RATE_LIMITS".into(), "*=50000000/1m".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let dev = crate::start(binary, dir.path(), &env).await?;
    let base = format!("http://{}", dev.http);
    let http = reqwest::Client::builder().pool_max_idle_per_host(2 * IN_FLIGHT).http1_only().build()?;
    let api = Api::sign_up(http, base).await?;
    let stage = Arc::new(Stage { api, fakes });

    // Accounts are connected before any clock starts.
    let warmup = 20;
    let mut sets = Vec::with_capacity(warmup + 2 * posts);
    for _ in 0..warmup + 2 * posts {
        sets.push(stage.accounts().await?);
    }
    let mut sets = sets.into_iter();

    for accounts in sets.by_ref().take(warmup) {
        stage.publish(&accounts).await?;
    }
    let mut samples = Vec::with_capacity(posts);
    for accounts in sets.by_ref().take(posts) {
        samples.push(stage.publish(&accounts).await?);
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "create → all five targets Posted, {posts} posts one after another (release build, postmesh dev)"
    );
    println!(
        "  p50 {:>6.1} ms   p90 {:>6.1} ms   p99 {:>6.1} ms   max {:>6.1} ms",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.9)),
        ms(percentile(&samples, 0.99)),
        ms(samples[samples.len() - 1]),
    );

    let queue = Arc::new(Mutex::new(sets));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (stage, queue) = (stage.clone(), queue.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some(accounts) = queue.lock().await.next() else { break };
                latencies.push(stage.publish(&accounts).await?);
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(posts);
    while let Some(result) = workers.join_next().await {
        latencies.extend(result??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!("sustained: {posts} posts with {IN_FLIGHT} in flight");
    println!(
        "  {:>6.1} posts/s ({:.0} platform posts/s)   p50 {:.1} ms   p99 {:.1} ms",
        posts as f64 / elapsed.as_secs_f64(),
        (posts * PLATFORMS.len()) as f64 / elapsed.as_secs_f64(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
    );
    let delivered: usize = PLATFORMS.iter().map(|p| stage.fakes.posts(*p).len()).sum();
    let expected = (warmup + 2 * posts) * PLATFORMS.len();
    if delivered != expected {
        bail!("the fake platforms received {delivered} posts, expected {expected}");
    }
    drop(dev);
    Ok(())
}

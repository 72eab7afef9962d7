//! Outbound webhooks: one `postmesh dev`, one endpoint registered to a
//! local receiver (a real HTTP server in this process, answering 204), and
//! events sent with `POST /api/webhooks/trigger`. Latency runs from sending
//! the trigger until the receiver has the signed delivery; throughput is
//! deliveries received per second with several triggers in flight.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

use crate::Api;
use crate::client::percentile;

/// Triggers in flight during the throughput run.
const IN_FLIGHT: usize = 32;

/// Arrival times by the `n` each event carries.
#[derive(Default)]
struct Arrivals {
    at: Mutex<HashMap<u64, Instant>>,
    arrived: Notify,
}

impl Arrivals {
    /// Waits until event `n` has arrived; when it did.
    async fn wait(&self, n: u64) -> Instant {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(at) = self.at.lock().expect("not poisoned").get(&n) {
                return *at;
            }
            arrived.await;
        }
    }

    fn count(&self) -> usize {
        self.at.lock().expect("not poisoned").len()
    }
}

/// The receiver: records each delivery's `data.n` and answers 204.
async fn receiver(arrivals: Arc<Arrivals>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let arrivals = arrivals.clone();
            async move {
                let at = Instant::now();
                let body: Value = serde_json::from_slice(&body).unwrap_or_default();
                // `google.protobuf.Struct` numbers are doubles: `1.0`.
                if let Some(n) = body["data"]["n"].as_f64().map(|n| n as u64) {
                    arrivals.at.lock().expect("not poisoned").insert(n, at);
                    arrivals.arrived.notify_waiters();
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

impl Api {
    async fn trigger(&self, n: u64) -> anyhow::Result<()> {
        self.post("/api/webhooks/trigger", json!({ "event_type": "bench.event", "payload": { "n": n } }))
            .await?;
        Ok(())
    }
}

pub async fn run(binary: &Path, deliveries: usize) -> anyhow::Result<()> {
    let arrivals = Arc::new(Arrivals::default());
    let url = receiver(arrivals.clone()).await?;
    let dir = tempfile::tempdir()?;
    let env =
        [("POSTMESH_GATEWAY_RATE_LIMITS", "*=50000000/1m"), ("POSTMESH_WEBHOOK_SSRF_ALLOWLIST", "127.0.0.1")];
    let dev = crate::start(binary, dir.path(), &env).await?;
    let base = format!("http://{}", dev.http);
    let http = reqwest::Client::builder().pool_max_idle_per_host(IN_FLIGHT).http1_only().build()?;
    let caller = Arc::new(Api::sign_up(http, base).await?);
    caller.post("/api/webhooks/register", json!({ "url": url, "event_types": ["bench.event"] })).await?;

    let mut n = 0u64;
    for _ in 0..50 {
        n += 1;
        caller.trigger(n).await?;
        arrivals.wait(n).await;
    }
    let mut samples = Vec::with_capacity(deliveries);
    for _ in 0..deliveries {
        n += 1;
        let started = Instant::now();
        caller.trigger(n).await?;
        samples.push(arrivals.wait(n).await.duration_since(started));
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "trigger → signed delivery at a local receiver, {deliveries} events one after another (release build, postmesh dev)"
    );
    println!(
        "  p50 {:>6.2} ms   p90 {:>6.2} ms   p99 {:>6.2} ms   max {:>6.2} ms",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.9)),
        ms(percentile(&samples, 0.99)),
        ms(samples[samples.len() - 1]),
    );

    let before = arrivals.count();
    let first = n + 1;
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let mut triggers = tokio::task::JoinSet::new();
    for _ in 0..deliveries {
        n += 1;
        let (caller, permit) = (caller.clone(), slots.clone().acquire_owned().await?);
        triggers.spawn(async move {
            let sent = caller.trigger(n).await;
            drop(permit);
            sent
        });
    }
    while let Some(result) = triggers.join_next().await {
        result??;
    }
    let accepted = started.elapsed();
    let mut last = started;
    for event in first..=n {
        last = last.max(arrivals.wait(event).await);
    }
    let elapsed = last.duration_since(started);
    println!("throughput: {deliveries} events triggered with {IN_FLIGHT} in flight");
    println!(
        "  {:>7.0} deliveries/s (all received in {:.2} s; triggers accepted at {:.0}/s)",
        deliveries as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        deliveries as f64 / accepted.as_secs_f64(),
    );
    let received = arrivals.count() - before;
    if received != deliveries {
        bail!("the receiver got {received} deliveries, expected {deliveries}");
    }
    drop(dev);
    Ok(())
}

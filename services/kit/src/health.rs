//! Health as Kubernetes and load balancers see it. `grpc.health.v1` serves
//! `""` (overall), each service's full name, `readiness` and `liveness`.
//! Readiness and the service statuses follow periodic checks of the
//! connections each service depends on (its database, the key-value store,
//! the job bus); liveness stays SERVING until shutdown begins. The same
//! picture is served as JSON on the admin port.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Health service name for Kubernetes readiness probes.
pub const READINESS: &str = "readiness";
/// Health service name for Kubernetes liveness probes.
pub const LIVENESS: &str = "liveness";

/// How long one dependency check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A named check of one connection.
pub struct Check {
    /// e.g. `database:user`, `kv:redis`, `bus:nats`.
    pub name: String,
    run: Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
    /// Runs after the other checks of a round have published their
    /// statuses (it asks services for theirs, possibly in this process).
    downstream: bool,
}

impl Check {
    /// A check running `run`.
    pub fn new<F, Fut>(name: impl Into<String>, run: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        Self { name: name.into(), run: Arc::new(move || Box::pin(run())), downstream: false }
    }

    /// A check of other services' health: within a round it runs after
    /// this process has published its own services' statuses, so a process
    /// that serves both sees them current.
    pub fn downstream<F, Fut>(name: impl Into<String>, run: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        Self { downstream: true, ..Self::new(name, run) }
    }
}

/// Result of the latest check of one dependency.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DependencyHealth {
    /// Whether it answered.
    pub ok: bool,
    /// How long the check took, in milliseconds.
    pub latency_ms: u64,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The detailed health document (`/health/detailed`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct HealthReport {
    /// `ok` when every dependency answers, otherwise `degraded`.
    pub status: &'static str,
    /// Serving status per gRPC service name.
    pub services: BTreeMap<String, &'static str>,
    /// Latest check per dependency.
    pub dependencies: BTreeMap<String, DependencyHealth>,
    /// Extra sections other components add (e.g. circuit breakers).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The health state of one process.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    state: Arc<RwLock<State>>,
}

/// Produces one extra section of the detailed report.
type Section = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

#[derive(Default)]
struct State {
    sections: BTreeMap<String, Section>,
    checks: Vec<Arc<Check>>,
    /// gRPC service name → names of the checks it depends on.
    services: BTreeMap<String, Vec<String>>,
    results: BTreeMap<String, DependencyHealth>,
    ready: bool,
    checked_once: bool,
    shutting_down: bool,
}

impl Health {
    /// A health state with every status NOT_SERVING until the first checks
    /// pass (liveness is SERVING from the start).
    pub async fn new(reporter: HealthReporter) -> Self {
        reporter.set_service_status("", ServingStatus::NotServing).await;
        reporter.set_service_status(READINESS, ServingStatus::NotServing).await;
        reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;
        Self { reporter, state: Arc::new(RwLock::new(State::default())) }
    }

    /// The reporter behind the gRPC health service.
    pub fn reporter(&self) -> &HealthReporter {
        &self.reporter
    }

    /// Adds a dependency check (a check of the same name is replaced).
    pub fn add_check(&self, check: Check) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.checks.retain(|c| c.name != check.name);
        state.checks.push(Arc::new(check));
    }

    /// Adds a section to the detailed report (e.g. circuit breakers).
    pub fn add_section(&self, name: &str, section: impl Fn() -> serde_json::Value + Send + Sync + 'static) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.sections.insert(name.to_owned(), Arc::new(section));
    }

    /// Declares a gRPC service and the checks it needs to be SERVING.
    pub async fn add_service(&self, grpc_name: &str, depends_on: Vec<String>) {
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            state.services.insert(grpc_name.to_owned(), depends_on);
        }
        self.reporter.set_service_status(grpc_name, ServingStatus::NotServing).await;
    }

    /// Runs every check once and publishes the statuses.
    pub async fn check_now(&self) {
        let (downstream, local): (Vec<Arc<Check>>, Vec<Arc<Check>>) = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            state.checks.iter().cloned().partition(|c| c.downstream)
        };
        self.run_checks(&local).await;
        if !downstream.is_empty() {
            self.run_checks(&downstream).await;
        }
    }

    async fn run_checks(&self, checks: &[Arc<Check>]) {
        let results = futures::future::join_all(checks.iter().map(|check| async move {
            let started = Instant::now();
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, (check.run)()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
            };
            let health = DependencyHealth {
                ok: outcome.is_ok(),
                latency_ms: started.elapsed().as_millis() as u64,
                error: outcome.err(),
            };
            (check.name.clone(), health)
        }))
        .await;

        let updates =
            {
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                for (name, health) in results {
                    let was_ok = state.results.get(&name).map(|h| h.ok);
                    if was_ok != Some(health.ok) {
                        match &health.error {
                            None => tracing::info!(dependency = %name, "dependency is up"),
                            Some(error) => {
                                tracing::warn!(dependency = %name, error = %error, "dependency is down")
                            }
                        }
                    }
                    metrics::gauge!("postmesh_dependency_up", "dependency" => name.clone())
                        .set(if health.ok { 1.0 } else { 0.0 });
                    state.results.insert(name, health);
                }
                state.checked_once = true;
                state.ready = state.results.values().all(|h| h.ok);
                compute_statuses(&state)
            };
        for (name, status) in updates {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Re-checks every `interval` until `shutdown`, then marks everything
    /// but liveness NOT_SERVING so traffic drains away.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        loop {
            self.check_now().await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        self.begin_shutdown().await;
    }

    /// Reports NOT_SERVING everywhere except liveness.
    pub async fn begin_shutdown(&self) {
        let updates = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            state.shutting_down = true;
            compute_statuses(&state)
        };
        for (name, status) in updates {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Whether every dependency answered at the last check.
    pub fn is_ready(&self) -> bool {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.ready && state.checked_once && !state.shutting_down
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.state.read().unwrap_or_else(|e| e.into_inner()).shutting_down
    }

    /// The detailed report.
    pub fn report(&self) -> HealthReport {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let services = compute_statuses(&state)
            .into_iter()
            .filter(|(name, _)| !name.is_empty() && name != READINESS && name != LIVENESS)
            .map(|(name, status)| (name, status_name(status)))
            .collect();
        HealthReport {
            status: if state.ready && state.checked_once && !state.shutting_down { "ok" } else { "degraded" },
            services,
            dependencies: state.results.clone(),
            extra: state.sections.iter().map(|(name, section)| (name.clone(), section())).collect(),
        }
    }
}

fn compute_statuses(state: &State) -> Vec<(String, ServingStatus)> {
    let serving = |ok: bool| {
        if ok && !state.shutting_down { ServingStatus::Serving } else { ServingStatus::NotServing }
    };
    let ready = state.ready && state.checked_once;
    let mut out = vec![
        (String::new(), serving(ready)),
        (READINESS.to_owned(), serving(ready)),
        (LIVENESS.to_owned(), ServingStatus::Serving),
    ];
    for (service, deps) in &state.services {
        let ok = state.checked_once && deps.iter().all(|d| state.results.get(d).is_some_and(|h| h.ok));
        out.push((service.clone(), serving(ok)));
    }
    out
}

fn status_name(status: ServingStatus) -> &'static str {
    match status {
        ServingStatus::Serving => "SERVING",
        ServingStatus::NotServing => "NOT_SERVING",
        ServingStatus::Unknown => "UNKNOWN",
    }
}

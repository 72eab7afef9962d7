//! One postmesh process: the runtime, the services it mounts, and the
//! gRPC, gateway and admin listeners. [`App::build`] binds every listener
//! (port 0 allowed) and starts serving; [`App::run`] waits for shutdown and
//! drains in-flight calls, relays and consumers.

use std::net::SocketAddr;

use postmesh_kit::server::{Bound, serve_grpc, serve_http};
use postmesh_kit::{Config, Runtime, StartError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::component::Component;

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every service and the gateway in one process.
    Dev,
    /// One component.
    Serve(Component),
}

/// A running process.
pub struct App {
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    runtime: Runtime,
    servers: JoinSet<Result<(), String>>,
}

impl App {
    /// Connects, migrates, binds and starts serving. Returns once health
    /// has been checked for the first time.
    pub async fn build(config: Config, mode: Mode, shutdown: CancellationToken) -> Result<Self, StartError> {
        let mut runtime = Runtime::start(config, shutdown.clone()).await?;
        let config = runtime.config.clone();
        let components: Vec<Component> = match mode {
            Mode::Dev => Component::SERVICES.to_vec(),
            Mode::Serve(component) => vec![component],
        };
        for component in &components {
            component.mount(&mut runtime).await?;
        }

        let mut servers = JoinSet::new();
        let grace = config.shutdown_grace;

        let grpc_addr = if runtime.services().is_empty() {
            None
        } else {
            let bound = bind(config.listen).await?;
            let addr = bound.addr();
            let routes = runtime.grpc_routes()?;
            let shutdown = shutdown.clone();
            servers.spawn(async move {
                serve_grpc(bound, routes, shutdown, grace).await.map_err(|e| e.to_string())
            });
            Some(addr)
        };

        let serves_gateway = mode == Mode::Dev || mode == Mode::Serve(Component::Gateway);
        let http_addr = if serves_gateway {
            let bound = bind(config.http_listen).await?;
            let addr = bound.addr();
            let router = postmesh_gateway::router(runtime.health.clone());
            let shutdown = shutdown.clone();
            servers.spawn(async move {
                serve_http(bound, router, shutdown, grace).await.map_err(|e| e.to_string())
            });
            Some(addr)
        } else {
            None
        };

        // In `dev` the gateway serves health and metrics; elsewhere the
        // admin port does.
        let admin_addr = if mode == Mode::Dev {
            None
        } else {
            let bound = bind(config.admin_listen).await?;
            let addr = bound.addr();
            let router = postmesh_kit::admin::router(runtime.health.clone());
            let shutdown = shutdown.clone();
            servers.spawn(async move {
                serve_http(bound, router, shutdown, grace).await.map_err(|e| e.to_string())
            });
            Some(addr)
        };

        runtime.start_health_checks().await;
        Ok(Self { grpc_addr, http_addr, admin_addr, runtime, servers })
    }

    /// The gRPC address, when this process serves services.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The gateway address, when this process serves the gateway.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The admin address (metrics, health), outside `dev`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Whether every dependency answered at the last check.
    pub fn is_ready(&self) -> bool {
        self.runtime.health.is_ready()
    }

    /// Serves until shutdown, then waits for in-flight calls and background
    /// work (bounded by the grace period).
    pub async fn run(mut self) -> Result<(), String> {
        let mut first_error = None;
        while let Some(result) = self.servers.join_next().await {
            tracing::debug!("a server stopped serving");
            let outcome = result.map_err(|e| e.to_string()).and_then(|r| r);
            if let Err(err) = outcome {
                tracing::error!(error = %err, "a server stopped");
                // One listener failing takes the process down, so an
                // orchestrator restarts it instead of leaving it half up.
                self.runtime.shutdown.cancel();
                first_error.get_or_insert(err);
            }
        }
        self.runtime.drain().await;
        tracing::debug!("background tasks stopped");
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<Bound, StartError> {
    Bound::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

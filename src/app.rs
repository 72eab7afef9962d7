//! One postmesh process: the runtime, the services it mounts, and the
//! gRPC, gateway and admin listeners. [`App::build`] binds every listener
//! (port 0 allowed) and starts serving; [`App::run`] waits for shutdown and
//! drains in-flight calls, relays and consumers.

use std::net::SocketAddr;

use postmesh_kit::config::ServiceUrls;
use postmesh_kit::server::{Bound, ServeOptions, serve_grpc, serve_http};
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
    pub async fn build(
        mut config: Config,
        mode: Mode,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let components: Vec<Component> = match mode {
            Mode::Dev => Component::SERVICES.to_vec(),
            Mode::Serve(component) => vec![component],
        };
        let serves_grpc = components.iter().any(|c| c.spec().is_some());
        // Bind first, so the process knows its own address: services it
        // runs itself are reached there (the user service for API keys).
        let grpc_bound = if serves_grpc { Some(bind(config.listen).await?) } else { None };
        if let Some(bound) = &grpc_bound {
            let own: ServiceUrls = format!("http://{}", loopback(bound.addr()))
                .try_into()
                .expect("a socket address makes a valid URL");
            for component in &components {
                if let Some(spec) = component.spec() {
                    config.set_service_url(spec.name, own.clone());
                }
            }
        }
        let name = match mode {
            Mode::Dev => "postmesh".to_owned(),
            Mode::Serve(component) => component.to_string(),
        };
        let signs_tokens = components.contains(&Component::User);
        let mut runtime = Runtime::start(config, &name, signs_tokens, shutdown.clone()).await?;
        let config = runtime.config.clone();
        for component in &components {
            component.mount(&mut runtime).await?;
        }

        let mut servers = JoinSet::new();
        let grace = config.shutdown_grace;

        let grpc_addr = match grpc_bound {
            None => None,
            Some(bound) => {
                let addr = bound.addr();
                let routes = runtime.grpc_routes()?;
                let auth = runtime.auth.clone();
                // Calls to services of this process (the gateway's, and
                // between services in `dev`) skip the socket.
                let served: Vec<&str> =
                    components.iter().filter_map(|c| c.spec()).map(|spec| spec.name).collect();
                let local = postmesh_kit::server::local_service(routes.clone(), &auth);
                runtime.clients.serve_locally(&served, local).await;
                let shutdown = shutdown.clone();
                let options = ServeOptions::from_config(&config);
                servers.spawn(async move {
                    serve_grpc(bound, routes, auth, shutdown, options).await.map_err(|e| e.to_string())
                });
                Some(addr)
            }
        };

        let serves_gateway = mode == Mode::Dev || mode == Mode::Serve(Component::Gateway);
        let http_addr = if serves_gateway {
            let bound = bind(config.http_listen).await?;
            let addr = bound.addr();
            let router =
                postmesh_gateway::router(&runtime).map_err(|e| StartError::Gateway(e.to_string()))?;
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

/// The address to reach a listener bound to `addr` from this machine.
fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

async fn bind(addr: SocketAddr) -> Result<Bound, StartError> {
    Bound::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

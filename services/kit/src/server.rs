//! Server bootstrap. Listeners are bound first (port 0 allowed) so callers
//! learn the real address before serving; serving stops accepting on
//! shutdown and drains in-flight calls for at most the grace period.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

use crate::auth::Auth;
use crate::telemetry::RequestContextLayer;

/// A bound listener and its address.
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Bound {
    /// Binds `addr`; port 0 picks a free port. The address may be reused
    /// at once, so a restarted process gets its port back.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let socket =
            if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Adds the reflection services (v1 and v1alpha) advertising `services`.
pub fn add_reflection(routes: Routes, services: &[&str]) -> Result<Routes, tonic_reflection::server::Error> {
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(postmesh_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        for service in services {
            builder = builder.with_service_name(*service);
        }
        builder
    };
    Ok(routes.add_service(builder().build_v1()?).add_service(builder().build_v1alpha()?))
}

/// This process's gRPC server stack over `routes` as a tower service: the
/// same layers as [`serve_grpc`] (request context, then auth) without the
/// socket and its per-connection limits. [`crate::client::Clients::serve_locally`]
/// sends calls to services of this process through it.
pub fn local_service(routes: Routes, auth: &Auth) -> crate::client::LocalService {
    let stack = tower::ServiceBuilder::new()
        .layer(RequestContextLayer)
        .layer(auth.layer())
        .map_err(|never: std::convert::Infallible| -> crate::client::BoxError { match never {} })
        .service(routes);
    tower::util::BoxCloneSyncService::new(stack)
}

/// How a gRPC server limits itself.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Calls served at once per connection; more are refused at once with
    /// RESOURCE_EXHAUSTED instead of queueing without bound.
    pub concurrency_per_connection: usize,
    /// How long in-flight calls may take to finish after shutdown begins.
    pub grace: Duration,
}

impl ServeOptions {
    /// From the process configuration.
    pub fn from_config(config: &crate::Config) -> Self {
        Self {
            concurrency_per_connection: config.server_concurrency_per_connection,
            grace: config.shutdown_grace,
        }
    }
}

/// Serves gRPC `routes` on `bound` until `shutdown`, then stops accepting
/// and waits up to the grace period for in-flight calls. Every call passes
/// `auth`.
pub async fn serve_grpc(
    bound: Bound,
    routes: Routes,
    auth: Auth,
    shutdown: CancellationToken,
    options: ServeOptions,
) -> Result<(), tonic::transport::Error> {
    let grace = options.grace;
    let incoming = TcpIncoming::from(bound.listener).with_nodelay(Some(true));
    let server = tonic::transport::Server::builder()
        // A bounded number of calls per connection, the rest shed at once.
        .concurrency_limit_per_connection(options.concurrency_per_connection)
        .load_shed(true)
        // Outermost: request id, trace context, span and metrics for every
        // call, rejected ones included.
        .layer(RequestContextLayer)
        // Then the contract's access rules: the handler only runs for an
        // admitted caller, which it finds in the request extensions.
        .layer(auth.layer())
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    drain_within(server, shutdown, grace, "grpc").await
}

/// Serves an HTTP `router` on `bound` with the same shutdown rules.
pub async fn serve_http(
    bound: Bound,
    router: axum::Router,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    // The peer address feeds per-client rate limits and access logs.
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(bound.listener, service)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    drain_within(server, shutdown, grace, "http").await
}

/// Runs `server`; once `shutdown` fires, gives it `grace` to finish.
async fn drain_within<E>(
    server: impl std::future::Future<Output = Result<(), E>>,
    shutdown: CancellationToken,
    grace: Duration,
    what: &'static str,
) -> Result<(), E> {
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(server = what, grace_s = grace.as_secs_f64(), "in-flight requests did not finish in time; closing");
            Ok(())
        }
    }
}

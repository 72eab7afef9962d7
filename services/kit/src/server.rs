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
    /// Binds `addr`; port 0 picks a free port.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
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

/// Serves gRPC `routes` on `bound` until `shutdown`, then stops accepting
/// and waits up to `grace` for in-flight calls. Every call passes `auth`.
pub async fn serve_grpc(
    bound: Bound,
    routes: Routes,
    auth: Auth,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpIncoming::from(bound.listener).with_nodelay(Some(true));
    let server = tonic::transport::Server::builder()
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
    let server = axum::serve(bound.listener, router)
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

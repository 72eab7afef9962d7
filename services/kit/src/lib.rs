//! `postmesh-kit`: the runtime every postmesh service shares.
//!
//! - [`config`]: layered configuration (defaults < `postmesh.toml` < `POSTMESH_*`).
//! - [`telemetry`]: tracing, metrics and the request context (`x-request-id`, `traceparent`).
//! - [`client`]: the one stack every call to another service goes through.
//! - [`server`], [`admin`], [`health`], [`shutdown`]: serving gRPC and HTTP, health and graceful drain.
//! - [`auth`] and [`crypto`]: tokens, callers, the permission matrix, secrets at rest.
//! - [`db`]: a database per service (SQLite or PostgreSQL) and migrations.
//! - [`kv`]: the key-value store (Redis or in memory).
//! - [`bus`] and [`outbox`]: jobs and events (NATS JetStream or local), written transactionally.
//! - [`runtime`]: the shared parts of one process, wired together.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod bus;
pub mod client;
pub mod config;
pub mod crypto;
pub mod db;
pub mod error;
pub mod health;
pub mod kv;
pub mod outbox;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::Config;
pub use runtime::{Runtime, ServiceDeps, ServiceSpec, StartError};

//! Contract tests for the seams of `postmesh-kit`, run against whichever
//! backends the environment names (see `postmesh_kit::testing`): CI runs
//! them once embedded and once on PostgreSQL, Redis and NATS.

mod auth;
mod bus;
mod client;
mod health;
mod kv;
mod migrations;
mod outbox;
mod server;

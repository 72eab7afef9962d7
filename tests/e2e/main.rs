//! End-to-end tests: they run the real `postmesh` binary on free ports and
//! talk to it over gRPC and HTTP, on whichever backends the environment
//! names (see `postmesh_kit::testing`).

mod auth;
mod cli;
mod dev;
mod helpers;
mod migrate;
mod resilience;
mod serve;

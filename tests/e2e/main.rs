//! End-to-end tests: they run the real `postmesh` binary on free ports and
//! talk to it over gRPC and HTTP, on whichever backends the environment
//! names (see `postmesh_kit::testing`).

mod auth;
mod cli;
mod content;
mod dev;
mod gateway;
mod helpers;
mod migrate;
mod openapi;
mod platforms;
mod publishing;
mod resilience;
mod serve;
mod standin;
mod templates;
mod text;
mod webhooks_in;
mod webhooks_out;

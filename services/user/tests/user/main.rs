//! The user service over gRPC, on whichever backends the environment names.

mod accounts;
mod api_keys;
mod helpers;
mod tokens;
mod two_factor;
mod workspaces;

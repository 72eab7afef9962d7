//! The SDK against a real `postmesh dev`: the quick start, typed errors,
//! streams, deadlines and the circuit breaker; and a check that no
//! server-side dependency reaches a caller's build.

mod calls;
mod dependencies;
mod helpers;
mod resilience;

/// The quick start example, run as written.
#[allow(dead_code)]
#[path = "../../examples/quickstart.rs"]
mod quickstart;

//! The `postmesh` binary as a library: which components exist and how one
//! process runs some of them. `src/main.rs` only parses the command line
//! and calls into here; tests build the same [`App`] on free ports.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod component;

pub use app::{App, Mode};
pub use component::Component;

//! The postmesh contract as Rust: prost messages, tonic clients and servers
//! for every service in `proto/postmesh/`, and the encoded file descriptor
//! set (with comments and custom options) for reflection and the gateway.
#![forbid(unsafe_code)]
#![allow(clippy::all, clippy::pedantic, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/postmesh_include.rs"));

/// The encoded `FileDescriptorSet` of the whole contract, imports included.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/postmesh_descriptor.bin"));

//! `postmesh-transcoder`: the gateway's translation between HTTP/JSON and
//! protobuf, read from the `google.api.http` annotations of a descriptor
//! pool. [`routes`] finds the RPC for a method and path; [`transcode`] builds
//! its request message from path, query and body and renders its response.
//! No I/O here: the gateway crate does the calling.
#![forbid(unsafe_code)]

pub mod routes;
pub mod transcode;

pub use routes::{BodyRule, Lookup, PathTemplate, Route, RouteError, RouteTable, TemplateError};
pub use transcode::{Payload, RequestParts, TranscodeError, request_message, response_payload};

//! Feeds arbitrary HTTP requests through the gateway's request side: route
//! lookup, then `request_message` for a route of the real contract. Errors
//! are expected for most inputs; a panic is a bug.
//!
//! An input reads like a tiny HTTP request, so seeds stay legible:
//!
//! ```text
//! METHOD /path?query      (first line)
//! content type            (second line; empty for none)
//! body…                   (everything after)
//! ```
//!
//! When `lookup` finds no route for the method and path, the input's first
//! byte picks one of the contract's routes anyway and the path's segments
//! become its variables' values, so every route sees arbitrary variables,
//! query strings and bodies, matched or not.
#![no_main]

use std::sync::LazyLock;

use bytes::Bytes;
use http::Method;
use libfuzzer_sys::fuzz_target;
use postmesh_transcoder::{Lookup, RequestParts, RouteTable, request_message};
use prost_reflect::DescriptorPool;

static ROUTES: LazyLock<RouteTable> = LazyLock::new(|| {
    let pool = DescriptorPool::decode(postmesh_proto::FILE_DESCRIPTOR_SET).expect("the contract decodes");
    let table = RouteTable::from_pool(&pool, |_| true).expect("the contract's routes parse");
    assert!(!table.routes().is_empty(), "the contract declares HTTP routes");
    table
});

fuzz_target!(|data: &[u8]| {
    let routes = &*ROUTES;
    let (head, rest) = split_line(data);
    let (content_type, body) = split_line(rest);
    let Ok(head) = std::str::from_utf8(head) else { return };
    let (method, target) = head.split_once(' ').unwrap_or((head, ""));
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let content_type = std::str::from_utf8(content_type).ok().filter(|ct| !ct.is_empty());
    let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);

    let (route, variables) = match routes.lookup(&method, path) {
        Lookup::Found(route, variables) => (route, variables),
        Lookup::MethodNotAllowed(_) | Lookup::NotFound => {
            let all = routes.routes();
            let route = &all[usize::from(data.first().copied().unwrap_or(0)) % all.len()];
            let variables = match route.template.matches(path) {
                Some(variables) => variables,
                None => route
                    .template
                    .variable_fields()
                    .map(<[String]>::to_vec)
                    .zip(path.split('/').filter(|s| !s.is_empty()).map(str::to_owned))
                    .collect(),
            };
            (route, variables)
        }
    };
    let parts = RequestParts { variables, query, content_type, body: Bytes::copy_from_slice(body) };
    if let Ok(message) = request_message(route, parts) {
        // What the gateway does next: encode the message for the call.
        let _ = prost_reflect::prost::Message::encode_to_vec(&message);
    }
});

/// The bytes before the first `\n` and those after it.
fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

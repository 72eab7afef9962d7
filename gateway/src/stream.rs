//! Server-streaming RPCs over HTTP: Server-Sent Events when the client
//! accepts `text/event-stream` (each message one event whose `data` is its
//! JSON and whose `id` is its `event_id`, when it has one), newline-delimited
//! JSON otherwise. A failure after the stream started cannot change the
//! status any more; it is sent as a last `error` event (SSE) or a last
//! `{"error": …}` line (NDJSON) in the error body's shape.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderMap, header};
use prost_reflect::{DescriptorPool, DynamicMessage};
use tonic::codec::Streaming;

use crate::errors::GatewayError;
use postmesh_transcoder::routes::Route;
use postmesh_transcoder::transcode::{Payload, response_payload};

/// Comment lines keeping idle SSE connections open through proxies.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Whether the client asked for Server-Sent Events.
pub fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| item.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("text/event-stream"))
}

/// One streamed item: a message's JSON, its event id, or the failure that
/// ended the stream.
enum Item {
    Message { json: String, id: Option<String> },
    Failed(String),
}

fn items(route: Route, pool: DescriptorPool, stream: Streaming<DynamicMessage>) -> impl Stream<Item = Item> {
    futures::stream::unfold((stream, false), move |(mut stream, done)| {
        let route = route.clone();
        let pool = pool.clone();
        async move {
            if done {
                return None;
            }
            match stream.message().await {
                Ok(Some(message)) => {
                    let id = message
                        .get_field_by_name("event_id")
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .filter(|id| !id.is_empty());
                    let item = match response_payload(&route, &message) {
                        Ok(Payload::Json(json)) => {
                            Item::Message { json: String::from_utf8_lossy(&json).into_owned(), id }
                        }
                        Ok(Payload::Raw { data, .. }) => {
                            Item::Message { json: String::from_utf8_lossy(&data).into_owned(), id }
                        }
                        Err(err) => Item::Failed(
                            GatewayError::from_status(&tonic::Status::internal(err.to_string()), &pool)
                                .body(),
                        ),
                    };
                    let failed = matches!(item, Item::Failed(_));
                    Some((item, (stream, failed)))
                }
                Ok(None) => None,
                Err(status) => {
                    Some((Item::Failed(GatewayError::from_status(&status, &pool).body()), (stream, true)))
                }
            }
        }
    })
}

/// The HTTP response streaming `stream`.
pub fn response(
    route: &Route,
    pool: &DescriptorPool,
    stream: Streaming<DynamicMessage>,
    sse: bool,
) -> Response {
    let items = items(route.clone(), pool.clone(), stream);
    if sse {
        let events = items.map(|item| {
            Ok::<_, Infallible>(match item {
                Item::Message { json, id: Some(id) } => Event::default().id(id).data(json),
                Item::Message { json, id: None } => Event::default().data(json),
                Item::Failed(error) => Event::default().event("error").data(error),
            })
        });
        let mut response = Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response();
        // Proxies such as nginx buffer responses unless told otherwise.
        response.headers_mut().insert("x-accel-buffering", http::HeaderValue::from_static("no"));
        response
    } else {
        let lines = items.map(|item| {
            let line = match item {
                Item::Message { json, .. } => json,
                Item::Failed(error) => format!("{{\"error\":{error}}}"),
            };
            Ok::<_, Infallible>(Bytes::from(line + "\n"))
        });
        let mut response = Response::new(Body::from_stream(lines));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
        response
    }
}

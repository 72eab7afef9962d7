//! Small conversions shared by the inbound modules.

use postmesh_kit::error::ApiError;
use prost_types::value::Kind;
use serde_json::Value;

/// Largest inbound body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub use postmesh_kit::db::{ms_of, timestamp_ms};

/// `Duration` as milliseconds; negative stays negative.
pub fn duration_ms(d: &prost_types::Duration) -> i64 {
    d.seconds.saturating_mul(1000) + i64::from(d.nanos) / 1_000_000
}

pub fn duration_pb(ms: i64) -> prost_types::Duration {
    prost_types::Duration { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// The page size of a list request: default 50, at most 200.
pub fn page_size(value: i32) -> Result<u64, ApiError> {
    match value {
        0 => Ok(50),
        n if n < 0 => Err(ApiError::invalid("page_size", "must not be negative")),
        n => Ok(u64::try_from(n.min(200)).unwrap_or(200)),
    }
}

/// A page token is the last id of the previous page (ids are UUIDv7, so
/// newest first is descending id order).
pub fn page_token(token: &str) -> Result<Option<String>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    uuid::Uuid::parse_str(token)
        .map(|_| Some(token.to_owned()))
        .map_err(|_| ApiError::invalid("page_token", "not a token this call returned"))
}

/// JSON to `google.protobuf.Value`.
pub fn value_pb(value: &Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.iter().map(value_pb).collect() })
        }
        Value::Object(map) => Kind::StructValue(struct_pb_of(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn struct_pb_of(map: &serde_json::Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct { fields: map.iter().map(|(k, v)| (k.clone(), value_pb(v))).collect() }
}

/// A JSON object as `google.protobuf.Struct`; other JSON gives an empty one.
pub fn struct_pb(value: &Value) -> prost_types::Struct {
    match value {
        Value::Object(map) => struct_pb_of(map),
        _ => prost_types::Struct::default(),
    }
}

/// A metadata value as text, empty when absent or not text.
pub fn header<T>(request: &tonic::Request<T>, name: &str) -> String {
    request.metadata().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().trim().to_owned()
}

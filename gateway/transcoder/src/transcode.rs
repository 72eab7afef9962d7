//! HTTP/JSON ⇄ protobuf for one route, driven by the RPC's descriptors.
//!
//! A request message is assembled as one JSON tree and then read with the
//! proto3 JSON mapping (prost-reflect, unknown fields refused): the body
//! (`body: "*"` or `body: "field"`), then the URL's path variables, then
//! the query string (dotted names for nested fields, a repeated key for
//! each element of a repeated field). One tree means one place that names
//! the offending field when something does not fit. `google.api.HttpBody`
//! fields take the raw bytes instead, and PUT/PATCH fill an unset
//! `update_mask` from the body's fields.
//!
//! Responses use the proto3 JSON mapping with the proto field names
//! (`display_name`), the names services use in their error details too.

use std::collections::HashSet;

use bytes::Bytes;
use http::Method;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value,
};
use serde_json::{Map, Value as Json};

use crate::routes::{BodyRule, Route};

/// `google.api.HttpBody`: raw bytes and their content type.
pub const HTTP_BODY: &str = "google.api.HttpBody";
const FIELD_MASK: &str = "google.protobuf.FieldMask";
const UPDATE_MASK: &str = "update_mask";

/// How responses (and error details) are written as JSON.
pub fn serialize_options() -> SerializeOptions {
    SerializeOptions::new().use_proto_field_name(true)
}

/// Why a request does not make a request message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranscodeError {
    /// The body is in a format this route does not take.
    #[error("unsupported media type {0}: send a JSON body with `Content-Type: application/json`")]
    UnsupportedMediaType(String),
    /// A body field, path variable or query parameter is wrong.
    #[error("{field}: {description}")]
    Invalid {
        /// The field, as the caller named it (`user.display_name`,
        /// `page_size`, `body`).
        field: String,
        /// What is wrong with it.
        description: String,
    },
}

fn invalid(field: impl Into<String>, description: impl Into<String>) -> TranscodeError {
    TranscodeError::Invalid { field: field.into(), description: description.into() }
}

/// The parts of an HTTP request a route reads.
#[derive(Debug, Clone, Default)]
pub struct RequestParts<'a> {
    /// Path variables from the template match.
    pub variables: Vec<(Vec<String>, String)>,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The `Content-Type` header.
    pub content_type: Option<&'a str>,
    /// The body.
    pub body: Bytes,
}

/// Where a value in the tree came from (duplicates are only an error
/// within the query string; the path overrides the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Path,
    Query,
}

/// Builds the request message of `route` from an HTTP request.
pub fn request_message(route: &Route, parts: RequestParts<'_>) -> Result<DynamicMessage, TranscodeError> {
    let input = route.rpc.input();
    let raw_body_field = match &route.body {
        BodyRule::Field(name) => input.get_field_by_name(name).filter(|f| is_message(f, HTTP_BODY)),
        _ => None,
    };

    let mut tree = Map::new();
    match &route.body {
        BodyRule::None => {
            if !parts.body.is_empty() {
                return Err(invalid("body", "this route takes no request body"));
            }
        }
        _ if raw_body_field.is_some() => {}
        BodyRule::Whole => match parse_body(&parts)? {
            None => {}
            Some(Json::Object(map)) => tree = map,
            Some(_) => return Err(invalid("body", "must be a JSON object")),
        },
        BodyRule::Field(name) => {
            if let Some(json) = parse_body(&parts)? {
                tree.insert(name.clone(), json);
            }
        }
    }
    // Only updates need the body as sent (for the field mask).
    let updates = route.method == Method::PUT || route.method == Method::PATCH;
    let body_json = match &route.body {
        _ if !updates => None,
        BodyRule::Whole => Some(Json::Object(tree.clone())),
        BodyRule::Field(name) => tree.get(name).cloned(),
        BodyRule::None => None,
    };

    let mut bound: HashSet<String> = HashSet::new();
    for (path, value) in &parts.variables {
        let chain = resolve(&input, path).map_err(|e| invalid(path.join("."), e))?;
        bound.insert(canonical(&chain));
        insert(&mut tree, &chain, value, Source::Path).map_err(|e| invalid(path.join("."), e))?;
    }

    let mut mask_given = false;
    if let Some(query) = parts.query.filter(|q| !q.is_empty()) {
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if matches!(route.body, BodyRule::Whole) {
                return Err(invalid(
                    name.as_ref(),
                    "unknown query parameter: this route takes its fields from the JSON body",
                ));
            }
            let path: Vec<String> = name.split('.').map(str::to_owned).collect();
            let chain =
                resolve(&input, &path).map_err(|_| invalid(name.as_ref(), "unknown query parameter"))?;
            let key = canonical(&chain);
            if bound.iter().any(|b| key == *b || key.starts_with(&format!("{b}."))) {
                return Err(invalid(name.as_ref(), "is set by the URL path, not the query string"));
            }
            if let BodyRule::Field(body) = &route.body
                && (key == *body || key.starts_with(&format!("{body}.")))
            {
                return Err(invalid(name.as_ref(), "is set by the request body, not the query string"));
            }
            mask_given |= key == UPDATE_MASK;
            insert(&mut tree, &chain, &value, Source::Query).map_err(|e| invalid(name.as_ref(), e))?;
        }
    }
    mask_given |= tree.contains_key(UPDATE_MASK) || tree.contains_key("updateMask");

    let mut message = deserialize(&input, tree, &route.body)?;

    if let Some(field) = raw_body_field {
        let mut raw =
            DynamicMessage::new(field.kind().as_message().cloned().expect("checked to be HttpBody"));
        let content_type = parts.content_type.unwrap_or("application/octet-stream").to_owned();
        raw.set_field_by_name("content_type", Value::String(content_type));
        raw.set_field_by_name("data", Value::Bytes(parts.body.clone()));
        message.set_field(&field, Value::Message(raw));
    }

    if updates
        && !mask_given
        && let Some(mask_field) = input.get_field_by_name(UPDATE_MASK).filter(|f| is_message(f, FIELD_MASK))
        && let Some(Json::Object(body)) = &body_json
    {
        let target = match &route.body {
            BodyRule::Field(name) => {
                input.get_field_by_name(name).and_then(|f| f.kind().as_message().cloned())
            }
            _ => Some(input.clone()),
        };
        if let Some(target) = target {
            let mut paths = Vec::new();
            mask_paths(&target, body, "", &mut paths);
            if matches!(route.body, BodyRule::Whole) {
                paths.retain(|p| p != UPDATE_MASK && !bound.contains(p));
            }
            let mut mask = DynamicMessage::new(
                mask_field.kind().as_message().cloned().expect("checked to be FieldMask"),
            );
            mask.set_field_by_name("paths", Value::List(paths.into_iter().map(Value::String).collect()));
            message.set_field(&mask_field, Value::Message(mask));
        }
    }
    Ok(message)
}

/// The body as JSON; `None` when empty.
fn parse_body(parts: &RequestParts<'_>) -> Result<Option<Json>, TranscodeError> {
    if parts.body.is_empty() {
        return Ok(None);
    }
    match parts.content_type {
        Some(ct) if is_json(ct) => {}
        Some(ct) => return Err(TranscodeError::UnsupportedMediaType(format!("`{ct}`"))),
        None => return Err(TranscodeError::UnsupportedMediaType("(no Content-Type)".into())),
    }
    serde_json::from_slice(&parts.body).map(Some).map_err(|e| invalid("body", format!("malformed JSON: {e}")))
}

/// `application/json`, with parameters, or a `+json` type.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn is_message(field: &FieldDescriptor, full_name: &str) -> bool {
    !field.is_list() && field.kind().as_message().is_some_and(|m| m.full_name() == full_name)
}

/// Message types whose JSON form is a single scalar (settable from a URL).
fn is_scalar_message(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.BoolValue"
            | "google.protobuf.Int32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.FloatValue"
            | "google.protobuf.DoubleValue"
    )
}

fn find_field(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message.get_field_by_name(name).or_else(|| message.get_field_by_json_name(name))
}

/// The fields along a dotted path; every step but the last is a singular
/// message, the last a scalar (or a scalar-like well-known type).
fn resolve(message: &MessageDescriptor, path: &[String]) -> Result<Vec<FieldDescriptor>, String> {
    let mut chain = Vec::with_capacity(path.len());
    let mut current = message.clone();
    for (i, segment) in path.iter().enumerate() {
        let field = find_field(&current, segment).ok_or_else(|| format!("no field `{segment}`"))?;
        let last = i + 1 == path.len();
        match field.kind() {
            Kind::Message(sub) if !last => {
                if field.is_list() || field.is_map() || is_scalar_message(&sub) {
                    return Err(format!("`{segment}` has no fields to set from a URL"));
                }
                current = sub;
            }
            Kind::Message(sub) if field.is_map() || !is_scalar_message(&sub) => {
                return Err("is a message: set its fields as `name.field`".into());
            }
            _ if !last => return Err(format!("`{segment}` has no fields")),
            _ => {}
        }
        chain.push(field);
    }
    Ok(chain)
}

fn canonical(chain: &[FieldDescriptor]) -> String {
    chain.iter().map(|f| f.name()).collect::<Vec<_>>().join(".")
}

/// Puts a URL value into the tree at `chain`, under the proto names.
fn insert(
    tree: &mut Map<String, Json>,
    chain: &[FieldDescriptor],
    raw: &str,
    source: Source,
) -> Result<(), String> {
    let (leaf, parents) = chain.split_last().expect("a resolved path has a field");
    let mut object = tree;
    for field in parents {
        let slot = take_key(object, field).unwrap_or_else(|| Json::Object(Map::new()));
        if !slot.is_object() {
            return Err(format!("`{}` must be a JSON object", field.name()));
        }
        object.insert(field.name().to_owned(), slot);
        object = object.get_mut(field.name()).and_then(Json::as_object_mut).expect("just inserted an object");
    }
    let value = scalar_json(leaf, raw)?;
    let existing = take_key(object, leaf);
    let stored = match (existing, leaf.is_list(), source) {
        (Some(Json::Array(mut items)), true, Source::Query) => {
            items.push(value);
            Json::Array(items)
        }
        (_, true, _) => Json::Array(vec![value]),
        (Some(_), false, Source::Query) => return Err("given more than once".into()),
        (_, false, _) => value,
    };
    object.insert(leaf.name().to_owned(), stored);
    Ok(())
}

/// Removes the entry for `field` whether the caller keyed it by its proto
/// or its JSON name.
fn take_key(object: &mut Map<String, Json>, field: &FieldDescriptor) -> Option<Json> {
    let by_name = object.remove(field.name());
    let by_json = object.remove(field.json_name());
    by_name.or(by_json)
}

/// The JSON form of a URL value for a field of this kind.
fn scalar_json(field: &FieldDescriptor, raw: &str) -> Result<Json, String> {
    Ok(match field.kind() {
        Kind::Bool => match raw {
            "true" | "1" => Json::Bool(true),
            "false" | "0" => Json::Bool(false),
            _ => return Err("must be true or false".into()),
        },
        Kind::Enum(_) => match raw.parse::<i32>() {
            Ok(number) => Json::from(number),
            Err(_) => Json::String(raw.to_owned()),
        },
        Kind::Message(message) if message.full_name() == "google.protobuf.BoolValue" => match raw {
            "true" | "1" => Json::Bool(true),
            "false" | "0" => Json::Bool(false),
            _ => return Err("must be true or false".into()),
        },
        // Numbers, strings, bytes (base64) and the other scalar-like
        // messages all accept their value as a JSON string.
        _ => Json::String(raw.to_owned()),
    })
}

/// Reads the tree with the proto3 JSON mapping, naming the field that fails.
fn deserialize(
    input: &MessageDescriptor,
    tree: Map<String, Json>,
    body: &BodyRule,
) -> Result<DynamicMessage, TranscodeError> {
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(Json::Object(tree), &mut track);
    DynamicMessage::deserialize_with_options(input.clone(), deserializer, &options).map_err(|err| {
        let mut path = track.path().to_string();
        if path == "." {
            path.clear();
        }
        let message = err.to_string();
        // An unknown key fails while the key itself is read, before the
        // path tracker has descended into it.
        let unknown =
            message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()).or_else(|| {
                message.strip_prefix("unrecognized field name '").and_then(|rest| rest.split('\'').next())
            });
        if let Some(name) = unknown {
            path = if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") };
        }
        let field = match body {
            BodyRule::Field(name) if path == *name => "body".to_owned(),
            BodyRule::Field(name) => {
                path.strip_prefix(&format!("{name}.")).map(str::to_owned).unwrap_or(path)
            }
            _ if path.is_empty() => "body".to_owned(),
            _ => path,
        };
        invalid(field, message)
    })
}

/// The field paths a JSON object sets (nested plain messages expanded to
/// their leaves, as an update mask names them).
fn mask_paths(message: &MessageDescriptor, object: &Map<String, Json>, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in object {
        let Some(field) = find_field(message, key) else { continue };
        let path = format!("{prefix}{}", field.name());
        match (field.kind(), value) {
            (Kind::Message(sub), Json::Object(inner))
                if !field.is_list()
                    && !field.is_map()
                    && !is_scalar_message(&sub)
                    && !sub.full_name().starts_with("google.protobuf.") =>
            {
                if inner.is_empty() {
                    out.push(path);
                } else {
                    mask_paths(&sub, inner, &format!("{path}."), out);
                }
            }
            _ => out.push(path),
        }
    }
}

/// A response body.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// JSON bytes.
    Json(Vec<u8>),
    /// A `google.api.HttpBody` answer, byte for byte.
    Raw {
        /// Its content type.
        content_type: String,
        /// Its bytes.
        data: Bytes,
    },
}

/// The HTTP body for a response message of `route` (`response_body`
/// honoured, `HttpBody` passed through).
pub fn response_payload(route: &Route, message: &DynamicMessage) -> Result<Payload, serde_json::Error> {
    if message.descriptor().full_name() == HTTP_BODY {
        return Ok(raw_payload(message));
    }
    let Some(name) = &route.response_body else { return to_json(message).map(Payload::Json) };
    let Some(field) = message.descriptor().get_field_by_name(name) else {
        return to_json(message).map(Payload::Json);
    };
    if is_message(&field, HTTP_BODY) {
        let value = message.get_field(&field);
        return Ok(match value.as_message() {
            Some(body) => raw_payload(body),
            None => Payload::Raw { content_type: String::new(), data: Bytes::new() },
        });
    }
    let whole = serde_json::to_value(SerializeWith(message))?;
    let picked = whole.get(field.name()).cloned().unwrap_or_else(|| {
        if field.is_list() {
            Json::Array(Vec::new())
        } else if field.is_map() || field.kind().as_message().is_some() {
            Json::Object(Map::new())
        } else {
            Json::Null
        }
    });
    serde_json::to_vec(&picked).map(Payload::Json)
}

fn raw_payload(body: &DynamicMessage) -> Payload {
    let content_type = body
        .get_field_by_name("content_type")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let data = body.get_field_by_name("data").and_then(|v| v.as_bytes().cloned()).unwrap_or_default();
    Payload::Raw { content_type, data }
}

/// A message as JSON bytes.
pub fn to_json(message: &DynamicMessage) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::new(&mut out);
    message.serialize_with_options(&mut serializer, &serialize_options())?;
    Ok(out)
}

/// Serializes a message with the gateway's options wherever serde wants a
/// `Serialize` value.
pub struct SerializeWith<'a>(pub &'a DynamicMessage);

impl serde::Serialize for SerializeWith<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_with_options(serializer, &serialize_options())
    }
}

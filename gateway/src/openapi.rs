//! The OpenAPI 3.1 document served at `/openapi.json`.
//!
//! It is derived from what the gateway serves rather than written beside
//! it, so the two cannot drift: one operation per route of the
//! [`RouteTable`], with path, query and body parameters laid out the way the
//! transcoder reads them; one schema per message in the proto3 JSON mapping
//! the gateway speaks (proto field names, 64-bit integers as strings, enums
//! by name, well-known types in their JSON forms); descriptions from the
//! proto comments; security from the `postmesh.options.v1.auth` option; and
//! the gateway's own conventions (error body, rate-limit headers, streams,
//! raw bodies) as shared components. The gateway's health, metrics and
//! document routes have no RPC behind them and are described by hand.

use std::collections::{BTreeMap, HashMap};

use prost_reflect::{
    DescriptorPool, DynamicMessage, EnumDescriptor, ExtensionDescriptor, FieldDescriptor, FileDescriptor,
    Kind, MessageDescriptor, MethodDescriptor,
};
use serde_json::{Map, Value, json};

use postmesh_transcoder::routes::{BodyRule, Route, RouteTable};
use postmesh_transcoder::transcode::HTTP_BODY;

const SCHEMA_REFS: &str = "#/components/schemas/";
const FIELD_MASK: &str = "google.protobuf.FieldMask";
const UPDATE_MASK: &str = "update_mask";
const REQUIRED: &str = "REQUIRED";
const OUTPUT_ONLY: &str = "OUTPUT_ONLY";
/// The tag of the routes the gateway serves itself.
const GATEWAY_TAG: &str = "gateway";

/// Message types the transcoder accepts as one URL value (it reads them from
/// their JSON string form), so they are query parameters of their own
/// rather than prefixes of nested ones.
const URL_SCALARS: &[&str] = &[
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
    "google.protobuf.BoolValue",
    "google.protobuf.Int32Value",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.FloatValue",
    "google.protobuf.DoubleValue",
];

/// The OpenAPI document for `routes`, whose messages and comments come from `pool`.
pub fn document(routes: &RouteTable, pool: &DescriptorPool) -> Value {
    let mut builder = Builder::new(pool);
    let names = parameter_names(routes.routes());
    let mut operation_ids: HashMap<String, usize> = HashMap::new();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for route in routes.routes() {
        // OpenAPI has no place for other methods (custom verbs like `LINK`).
        let Some(method) = openapi_method(route) else { continue };
        let template = Template::parse(route.template.as_str());
        let fields = names.get(&template.shape()).cloned().unwrap_or_else(|| template.fields());
        let variables = template.variables(&fields);
        let id = operation_id(&route.rpc, &mut operation_ids);
        let operation = builder.operation(route, &variables, id);
        paths.entry(template.render(&variables)).or_default().insert(method, operation);
    }
    for (path, item) in gateway_paths() {
        paths.insert(path.to_owned(), item);
    }
    builder.finish(paths)
}

// ---------------------------------------------------------------------------
// Paths

/// A path template as text and variables, parsed again here because the
/// transcoder's `PathTemplate` keeps its variables' patterns to itself.
struct Template {
    pieces: Vec<Piece>,
}

enum Piece {
    Text(String),
    /// `{field}` or `{field=pattern}`; a pattern of `*` is the same as none.
    Variable {
        field: String,
        pattern: Option<String>,
    },
}

/// A path variable as OpenAPI names it.
struct PathVariable {
    /// The name in the OpenAPI path (`{name}`).
    name: String,
    /// The request field it sets (`id`, `rule.id`).
    field: String,
    /// Its segments when it spans more than one `*` (`posts/*`).
    pattern: Option<String>,
}

impl Template {
    /// Splits a template the route table already accepted.
    fn parse(source: &str) -> Self {
        let mut pieces = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}').map(|at| open + at) else { break };
            pieces.push(Piece::Text(rest[..open].to_owned()));
            let inner = &rest[open + 1..close];
            let (field, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
            let pattern = Some(pattern.to_owned()).filter(|p| p != "*");
            pieces.push(Piece::Variable { field: field.to_owned(), pattern });
            rest = &rest[close + 1..];
        }
        pieces.push(Piece::Text(rest.to_owned()));
        Self { pieces }
    }

    /// The path with every variable as `{}`: OpenAPI treats templates equal
    /// but for their variables' names as one path.
    fn shape(&self) -> String {
        self.pieces
            .iter()
            .map(|piece| match piece {
                Piece::Text(text) => text.as_str(),
                Piece::Variable { .. } => "{}",
            })
            .collect()
    }

    fn fields(&self) -> Vec<String> {
        self.pieces
            .iter()
            .filter_map(|piece| match piece {
                Piece::Variable { field, .. } => Some(field.clone()),
                Piece::Text(_) => None,
            })
            .collect()
    }

    /// The variables, named `names` in order.
    fn variables(&self, names: &[String]) -> Vec<PathVariable> {
        let variables = self.pieces.iter().filter_map(|piece| match piece {
            Piece::Variable { field, pattern } => Some((field, pattern)),
            Piece::Text(_) => None,
        });
        variables
            .zip(names)
            .map(|((field, pattern), name)| PathVariable {
                name: name.clone(),
                field: field.clone(),
                pattern: pattern.clone(),
            })
            .collect()
    }

    /// The OpenAPI path: `/v1/{name=posts/*}:publish` becomes `/v1/{name}:publish`.
    fn render(&self, variables: &[PathVariable]) -> String {
        let mut names = variables.iter().map(|v| v.name.as_str());
        self.pieces
            .iter()
            .map(|piece| match piece {
                Piece::Text(text) => text.clone(),
                Piece::Variable { field, .. } => format!("{{{}}}", names.next().unwrap_or(field)),
            })
            .collect()
    }
}

/// The variable names of each path shape: those of the first route with
/// that shape, so that `GET /rules/{id}` and `PATCH /rules/{rule.id}` share
/// one OpenAPI path (which must not exist twice under different names).
fn parameter_names(routes: &[Route]) -> HashMap<String, Vec<String>> {
    let mut names = HashMap::new();
    for route in routes {
        let template = Template::parse(route.template.as_str());
        names.entry(template.shape()).or_insert_with(|| template.fields());
    }
    names
}

/// The path item key of the route's method, if OpenAPI has one.
fn openapi_method(route: &Route) -> Option<String> {
    let method = route.method.as_str().to_ascii_lowercase();
    let known = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
    known.contains(&method.as_str()).then_some(method)
}

/// `<Service>_<Method>`, numbered from the second binding of one RPC on.
fn operation_id(rpc: &MethodDescriptor, seen: &mut HashMap<String, usize>) -> String {
    let base = format!("{}_{}", rpc.parent_service().name(), rpc.name());
    let count = seen.entry(base.clone()).or_insert(0);
    *count += 1;
    if *count == 1 { base } else { format!("{base}_{count}") }
}

// ---------------------------------------------------------------------------
// Comments

/// Every comment in the pool's source info, by file and descriptor path.
struct Comments {
    by_location: HashMap<(String, Vec<i32>), String>,
}

impl Comments {
    fn index(pool: &DescriptorPool) -> Self {
        let mut by_location = HashMap::new();
        for file in pool.files() {
            let Some(info) = &file.file_descriptor_proto().source_code_info else { continue };
            for location in &info.location {
                // A trailing comment (`int32 x = 1; // …`) is the fallback.
                let text = location.leading_comments.as_deref().or(location.trailing_comments.as_deref());
                if let Some(text) = text.map(clean_comment).filter(|t| !t.is_empty()) {
                    by_location.insert((file.name().to_owned(), location.path.clone()), text);
                }
            }
        }
        Self { by_location }
    }

    fn of(&self, file: &FileDescriptor, path: &[i32]) -> Option<String> {
        self.by_location.get(&(file.name().to_owned(), path.to_vec())).cloned()
    }
}

/// A comment without the space after each `//`.
fn clean_comment(raw: &str) -> String {
    let lines: Vec<&str> =
        raw.lines().map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end()).collect();
    lines.join("\n").trim().to_owned()
}

/// The first sentence of a comment's first paragraph.
fn summary(comment: &str) -> Option<String> {
    let paragraph = comment.split("\n\n").next()?.split_whitespace().collect::<Vec<_>>().join(" ");
    // A sentence ends at a period followed by a capital, which `e.g. `x``
    // and `1.5 s` are not.
    let end = paragraph
        .match_indices(". ")
        .find(|(at, _)| paragraph[at + 2..].starts_with(|c: char| c.is_ascii_uppercase()))
        .map_or(paragraph.len(), |(at, _)| at + 1);
    Some(paragraph[..end].to_owned()).filter(|s| !s.is_empty())
}

/// Sets or extends a schema's or parameter's description.
fn describe(target: &mut Value, parts: &[String]) {
    let Some(object) = target.as_object_mut() else { return };
    let mut text: Vec<&str> = parts.iter().map(String::as_str).filter(|p| !p.is_empty()).collect();
    let existing = object.get("description").and_then(Value::as_str).map(str::to_owned);
    if let Some(existing) = &existing {
        text.push(existing);
    }
    if !text.is_empty() {
        object.insert("description".into(), Value::String(text.join("\n\n")));
    }
}

// ---------------------------------------------------------------------------
// Access rules

/// Who may call an operation, from `postmesh.options.v1.auth`.
enum Access {
    Public,
    SignedIn { permission: Option<String> },
}

impl Access {
    fn security(&self) -> Value {
        match self {
            Access::Public => json!([]),
            Access::SignedIn { .. } => json!([{ "bearerAuth": [] }, { "apiKeyHeader": [] }]),
        }
    }

    fn sentence(&self) -> String {
        match self {
            Access::Public => "Public: no credential needed.".to_owned(),
            Access::SignedIn { permission: None } => {
                "Requires a signed-in caller; no particular permission.".to_owned()
            }
            Access::SignedIn { permission: Some(permission) } => {
                format!("Requires the `{permission}` permission.")
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The builder

/// Collects the operations and the schemas they use.
struct Builder {
    comments: Comments,
    field_behavior: Option<ExtensionDescriptor>,
    auth: Option<ExtensionDescriptor>,
    schemas: BTreeMap<String, Value>,
    /// Tag name to the description of its service.
    tags: BTreeMap<String, String>,
}

impl Builder {
    fn new(pool: &DescriptorPool) -> Self {
        Self {
            comments: Comments::index(pool),
            field_behavior: pool.get_extension_by_name("google.api.field_behavior"),
            auth: pool.get_extension_by_name("postmesh.options.v1.auth"),
            schemas: BTreeMap::new(),
            tags: BTreeMap::new(),
        }
    }

    fn finish(mut self, paths: BTreeMap<String, Map<String, Value>>) -> Value {
        self.schemas.extend(gateway_schemas());
        let mut tags: Vec<Value> = self
            .tags
            .iter()
            .map(|(name, description)| json!({ "name": name, "description": description }))
            .collect();
        tags.push(json!({ "name": GATEWAY_TAG, "description": "The gateway's own health, metrics and API description." }));
        json!({
            "openapi": "3.1.0",
            "info": {
                "title": "postmesh API",
                "version": env!("CARGO_PKG_VERSION"),
                "description": API_DESCRIPTION,
                "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
            },
            "servers": [{ "url": "/" }],
            "tags": tags,
            "paths": paths,
            "components": {
                "schemas": self.schemas,
                "responses": error_responses(),
                "parameters": shared_parameters(),
                "headers": shared_headers(),
                "securitySchemes": security_schemes(),
            },
        })
    }

    // -- operations ---------------------------------------------------------

    fn operation(&mut self, route: &Route, variables: &[PathVariable], id: String) -> Value {
        let rpc = &route.rpc;
        let comment = self.comments.of(&rpc.parent_file(), rpc.path()).unwrap_or_default();
        let access = self.access(rpc);
        self.add_tag(route);
        let bound = bound_fields(&rpc.input(), variables);

        let mut parameters = self.path_parameters(route, variables);
        parameters.extend(self.query_parameters(route, &bound));
        parameters.extend(header_parameters(route));

        let mut operation = Map::new();
        operation.insert("operationId".into(), Value::String(id));
        operation.insert("tags".into(), json!([route.target()]));
        operation.insert(
            "summary".into(),
            Value::String(summary(&comment).unwrap_or_else(|| rpc.name().to_owned())),
        );
        operation
            .insert("description".into(), Value::String(operation_description(route, &comment, &access)));
        if !parameters.is_empty() {
            operation.insert("parameters".into(), Value::Array(parameters));
        }
        if let Some(body) = self.request_body(route, &bound) {
            operation.insert("requestBody".into(), body);
        }
        operation.insert("responses".into(), self.responses(route, &access));
        operation.insert("security".into(), access.security());
        if let Access::SignedIn { permission: Some(permission) } = &access {
            operation.insert("x-postmesh-permission".into(), Value::String(permission.clone()));
        }
        if is_deprecated(&rpc.options()) {
            operation.insert("deprecated".into(), Value::Bool(true));
        }
        Value::Object(operation)
    }

    fn add_tag(&mut self, route: &Route) {
        let service = route.rpc.parent_service();
        if !self.tags.contains_key(route.target()) {
            let description = self.comments.of(&service.parent_file(), service.path()).unwrap_or_default();
            self.tags.insert(route.target().to_owned(), description);
        }
    }

    fn access(&self, rpc: &MethodDescriptor) -> Access {
        let options = rpc.options();
        let Some(extension) = self.auth.as_ref().filter(|ext| options.has_extension(ext)) else {
            // Without the option an RPC needs a caller and no permission.
            return Access::SignedIn { permission: None };
        };
        let value = options.get_extension(extension);
        let Some(rule) = value.as_message() else { return Access::SignedIn { permission: None } };
        if rule.get_field_by_name("public").and_then(|v| v.as_bool()).unwrap_or(false) {
            return Access::Public;
        }
        let permission = rule
            .get_field_by_name("permission")
            .and_then(|v| v.as_str().map(str::to_owned))
            .filter(|p| !p.is_empty());
        Access::SignedIn { permission }
    }

    // -- parameters ---------------------------------------------------------

    fn path_parameters(&mut self, route: &Route, variables: &[PathVariable]) -> Vec<Value> {
        let input = route.rpc.input();
        variables
            .iter()
            .map(|variable| {
                let leaf = resolve(&input, &variable.field).and_then(|chain| chain.last().cloned());
                let mut notes: Vec<String> = leaf.iter().filter_map(|f| self.field_comment(f)).collect();
                if variable.name != variable.field {
                    notes.push(format!("Sets the request field `{}`.", variable.field));
                }
                let schema = match (&variable.pattern, &leaf) {
                    (Some(pattern), _) => {
                        notes.push(format!(
                            "The value has the form `{pattern}`, its literal segments included; send its `/` unescaped."
                        ));
                        json!({ "type": "string", "pattern": pattern_regex(pattern) })
                    }
                    (None, Some(field)) => self.kind_schema(&field.kind()),
                    (None, None) => json!({ "type": "string" }),
                };
                let mut parameter = json!({ "name": variable.name, "in": "path", "required": true, "schema": schema });
                describe(&mut parameter, &notes);
                parameter
            })
            .collect()
    }

    /// Query parameters: every field the path and body leave, nested plain
    /// messages expanded to dotted names (`filter.status`).
    fn query_parameters(&mut self, route: &Route, bound: &[String]) -> Vec<Value> {
        let body = match &route.body {
            // The transcoder refuses a query string on `body: "*"` routes.
            BodyRule::Whole => return Vec::new(),
            BodyRule::Field(name) => Some(name.as_str()),
            BodyRule::None => None,
        };
        let input = route.rpc.input();
        let scope = QueryScope { bound, body, filled_mask: fills_update_mask(route) };
        let mut out = Vec::new();
        let mut visiting = vec![input.full_name().to_owned()];
        self.collect_query(&input, "", true, &scope, &mut visiting, &mut out);
        out
    }

    fn collect_query(
        &mut self,
        message: &MessageDescriptor,
        prefix: &str,
        parents_required: bool,
        scope: &QueryScope<'_>,
        visiting: &mut Vec<String>,
        out: &mut Vec<Value>,
    ) {
        for field in message.fields() {
            let name = format!("{prefix}{}", field.name());
            if scope.excludes(&name) || field.is_map() || self.has_behavior(&field, OUTPUT_ONLY) {
                continue;
            }
            let filled = scope.filled_mask && name == UPDATE_MASK;
            let required = parents_required && self.has_behavior(&field, REQUIRED) && !filled;
            match field.kind() {
                Kind::Message(sub) if !URL_SCALARS.contains(&sub.full_name()) => {
                    // Lists of messages, other well-known types and cycles
                    // cannot be set from a URL.
                    if field.is_list()
                        || sub.full_name().starts_with("google.protobuf.")
                        || visiting.iter().any(|seen| seen == sub.full_name())
                    {
                        continue;
                    }
                    visiting.push(sub.full_name().to_owned());
                    self.collect_query(&sub, &format!("{name}."), required, scope, visiting, out);
                    visiting.pop();
                }
                _ => out.push(self.query_parameter(&field, name, required)),
            }
        }
    }

    fn query_parameter(&mut self, field: &FieldDescriptor, name: String, required: bool) -> Value {
        let mut parameter = json!({ "name": name, "in": "query", "schema": self.value_schema(field) });
        if required {
            parameter["required"] = Value::Bool(true);
        }
        if field.is_list() {
            // One `name=value` pair per element.
            parameter["style"] = json!("form");
            parameter["explode"] = Value::Bool(true);
        }
        let comment: Vec<String> = self.field_comment(field).into_iter().collect();
        describe(&mut parameter, &comment);
        parameter
    }

    // -- request bodies -----------------------------------------------------

    fn request_body(&mut self, route: &Route, bound: &[String]) -> Option<Value> {
        let input = route.rpc.input();
        match &route.body {
            BodyRule::None => None,
            BodyRule::Whole => {
                let schema = self.whole_body(route, bound);
                let required = self.is_required_schema(&schema);
                Some(json!({ "required": required, "content": { "application/json": { "schema": schema } } }))
            }
            BodyRule::Field(name) => {
                let field = input.get_field_by_name(name)?;
                let content = if is_http_body(&field) {
                    json!({ "*/*": { "schema": binary_schema() } })
                } else {
                    json!({ "application/json": { "schema": self.field_body(route, &field) } })
                };
                let mut body = json!({ "required": self.has_behavior(&field, REQUIRED), "content": content });
                let comment: Vec<String> = self.field_comment(&field).into_iter().collect();
                describe(&mut body, &comment);
                Some(body)
            }
        }
    }

    /// The `body: "*"` schema: the request message, or a `…Body` variant of
    /// it without the fields the path sets (and without `update_mask` among
    /// the required fields when the gateway fills it).
    fn whole_body(&mut self, route: &Route, bound: &[String]) -> Value {
        let input = route.rpc.input();
        // A nested path field (`{a.b}`) leaves `a` in the body; the path value wins.
        let path_fields: Vec<String> = bound.iter().filter(|b| !b.contains('.')).cloned().collect();
        let fills_mask = fills_update_mask(route);
        if path_fields.is_empty() && !fills_mask {
            return self.message_ref(&input);
        }
        let mut note = format!("The HTTP body of `{}`", input.name());
        if !path_fields.is_empty() {
            let listed = path_fields.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ");
            note.push_str(&format!(": its fields but {listed}, which the URL path sets"));
        }
        note.push('.');
        self.schema_variant(&input, "Body", &note, |schema| {
            if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
                properties.retain(|name, _| !path_fields.contains(name));
            }
            let mut optional = path_fields.clone();
            if fills_mask {
                optional.push(UPDATE_MASK.to_owned());
            }
            remove_required(schema, |name| optional.iter().any(|o| o == name));
        })
    }

    /// The schema of a `body: "field"` body: the field's, or for an update
    /// the gateway masks from the body, an `…Update` variant of its message
    /// without required fields (only the fields sent change).
    fn field_body(&mut self, route: &Route, field: &FieldDescriptor) -> Value {
        let schema = self.value_schema(field);
        let partial = fills_update_mask(route) && !field.is_list() && !field.is_map();
        match field.kind() {
            Kind::Message(message)
                if partial && schema.get("$ref").is_some() && self.is_required_schema(&schema) =>
            {
                let note = format!("`{}` for an update: send the fields to change.", message.name());
                self.schema_variant(&message, "Update", &note, |schema| remove_required(schema, |_| true))
            }
            _ => schema,
        }
    }

    /// A copy of a message's schema named `<full name><suffix>`, changed by
    /// `edit`; the message's own schema if a message already has that name.
    fn schema_variant(
        &mut self,
        message: &MessageDescriptor,
        suffix: &str,
        note: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Value {
        let reference = self.message_ref(message);
        let name = format!("{}{suffix}", message.full_name());
        if message.parent_pool().get_message_by_name(&name).is_some() {
            return reference;
        }
        let mut schema = self.schemas.get(message.full_name()).cloned().unwrap_or_else(|| json!({}));
        edit(&mut schema);
        describe(&mut schema, &[note.to_owned()]);
        self.schemas.insert(name.clone(), schema);
        json!({ "$ref": format!("{SCHEMA_REFS}{name}") })
    }

    /// Whether a schema (or the component it refers to) lists required fields.
    fn is_required_schema(&self, schema: &Value) -> bool {
        let target = match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => reference.strip_prefix(SCHEMA_REFS).and_then(|name| self.schemas.get(name)),
            None => Some(schema),
        };
        target.and_then(|s| s.get("required")).and_then(Value::as_array).is_some_and(|r| !r.is_empty())
    }

    // -- responses ----------------------------------------------------------

    fn responses(&mut self, route: &Route, access: &Access) -> Value {
        let mut responses = Map::new();
        responses.insert("200".into(), self.success(route));
        for (status, name, _) in ERRORS {
            if error_applies(status, route, access) {
                responses
                    .insert((*status).into(), json!({ "$ref": format!("#/components/responses/{name}") }));
            }
        }
        Value::Object(responses)
    }

    fn success(&mut self, route: &Route) -> Value {
        let headers = json!({
            "X-Request-Id": { "$ref": "#/components/headers/X-Request-Id" },
            "RateLimit-Limit": { "$ref": "#/components/headers/RateLimit-Limit" },
            "RateLimit-Remaining": { "$ref": "#/components/headers/RateLimit-Remaining" },
            "RateLimit-Reset": { "$ref": "#/components/headers/RateLimit-Reset" },
            "RateLimit-Policy": { "$ref": "#/components/headers/RateLimit-Policy" },
        });
        let item = self.response_item(route);
        let output = route.rpc.output();
        if route.rpc.is_server_streaming() {
            let sse = format!(
                "Server-Sent Events: each event's `data` is one `{}` as JSON (see the `application/x-ndjson` \
                 schema) and its `id` the message's `event_id`, when it has one. A failure after the stream \
                 started arrives as a last event named `error` whose data is an `Error`.",
                output.name()
            );
            let ndjson = "Newline-delimited JSON: one message per line; a failure after the stream started \
                          arrives as a last line `{\"error\": <Error>}`.";
            let mut lines = item.unwrap_or_else(binary_schema);
            describe(&mut lines, &[ndjson.to_owned()]);
            return json!({
                "description": "A stream of messages, for as long as the RPC sends them (at most 24 hours).",
                "headers": headers,
                "content": {
                    "text/event-stream": { "schema": { "type": "string", "description": sse } },
                    "application/x-ndjson": { "schema": lines },
                },
            });
        }
        let content = match item {
            Some(schema) => json!({ "application/json": { "schema": schema } }),
            None => json!({ "*/*": { "schema": binary_schema() } }),
        };
        json!({ "description": "Success.", "headers": headers, "content": content })
    }

    /// The JSON schema of one response message as the gateway sends it
    /// (`response_body` honoured); `None` for raw `HttpBody` bytes.
    fn response_item(&mut self, route: &Route) -> Option<Value> {
        let output = route.rpc.output();
        if output.full_name() == HTTP_BODY {
            return None;
        }
        let field = route.response_body.as_deref().and_then(|name| output.get_field_by_name(name));
        match field {
            Some(field) if is_http_body(&field) => None,
            Some(field) => Some(self.value_schema(&field)),
            None => Some(self.message_ref(&output)),
        }
    }

    // -- schemas ------------------------------------------------------------

    /// A `$ref` to the message's schema, added (with every schema it uses)
    /// on first use.
    fn message_ref(&mut self, message: &MessageDescriptor) -> Value {
        let name = message.full_name();
        if !self.schemas.contains_key(name) {
            // Claimed before it is built, so a recursive field finds it and stops.
            self.schemas.insert(name.to_owned(), Value::Null);
            let schema = self.message_schema(message);
            self.schemas.insert(name.to_owned(), schema);
        }
        json!({ "$ref": format!("{SCHEMA_REFS}{name}") })
    }

    fn message_schema(&mut self, message: &MessageDescriptor) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in message.fields() {
            if self.has_behavior(&field, REQUIRED) && !self.has_behavior(&field, OUTPUT_ONLY) {
                required.push(field.name().to_owned());
            }
            properties.insert(field.name().to_owned(), self.property_schema(&field));
        }
        let mut schema = json!({ "type": "object", "properties": properties });
        if !required.is_empty() {
            schema["required"] = json!(required);
        }
        let mut notes: Vec<String> =
            self.comments.of(&message.parent_file(), message.path()).into_iter().collect();
        for oneof in message.oneofs().filter(|o| !o.is_synthetic()) {
            let members = oneof.fields().map(|f| format!("`{}`", f.name())).collect::<Vec<_>>().join(", ");
            notes.push(format!("At most one of {members} is set (`{}`).", oneof.name()));
        }
        describe(&mut schema, &notes);
        schema
    }

    /// A message field as a property: its value's schema, comment and behaviour.
    fn property_schema(&mut self, field: &FieldDescriptor) -> Value {
        let mut schema = self.value_schema(field);
        let mut notes: Vec<String> = self.field_comment(field).into_iter().collect();
        if let Some(oneof) = field.containing_oneof().filter(|o| !o.is_synthetic()) {
            let members = oneof.fields().map(|f| format!("`{}`", f.name())).collect::<Vec<_>>().join(", ");
            notes.push(format!("Set at most one of {members}."));
        }
        describe(&mut schema, &notes);
        if self.has_behavior(field, OUTPUT_ONLY) {
            // Set by the server; ignored or refused in requests.
            schema["readOnly"] = Value::Bool(true);
        }
        if is_deprecated(&field.options()) {
            schema["deprecated"] = Value::Bool(true);
        }
        schema
    }

    /// The schema of a field's value: its kind, as a list or map if it is one.
    fn value_schema(&mut self, field: &FieldDescriptor) -> Value {
        if let Kind::Message(entry) = field.kind()
            && field.is_map()
        {
            // JSON object keys are strings whatever the key type.
            let value = self.kind_schema(&entry.map_entry_value_field().kind());
            return json!({ "type": "object", "additionalProperties": value });
        }
        let item = self.kind_schema(&field.kind());
        if field.is_list() { json!({ "type": "array", "items": item }) } else { item }
    }

    fn kind_schema(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => json!({ "type": "number", "format": "double" }),
            Kind::Float => json!({ "type": "number", "format": "float" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({ "type": "integer", "format": "int32" }),
            Kind::Uint32 | Kind::Fixed32 => json!({ "type": "integer", "format": "uint32", "minimum": 0 }),
            // Beyond what a JSON number holds exactly in most readers.
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({ "type": "string", "format": "int64", "pattern": "^-?[0-9]+$" })
            }
            Kind::Uint64 | Kind::Fixed64 => {
                json!({ "type": "string", "format": "uint64", "pattern": "^[0-9]+$" })
            }
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
            Kind::Enum(descriptor) => self.enum_ref(descriptor),
            Kind::Message(message) => {
                well_known_schema(message.full_name()).unwrap_or_else(|| self.message_ref(message))
            }
        }
    }

    fn enum_ref(&mut self, descriptor: &EnumDescriptor) -> Value {
        let name = descriptor.full_name();
        if name == "google.protobuf.NullValue" {
            return json!({ "type": "null" });
        }
        if !self.schemas.contains_key(name) {
            let schema = self.enum_schema(descriptor);
            self.schemas.insert(name.to_owned(), schema);
        }
        json!({ "$ref": format!("{SCHEMA_REFS}{name}") })
    }

    /// An enum by its value names, each explained in the description.
    fn enum_schema(&self, descriptor: &EnumDescriptor) -> Value {
        let names: Vec<String> = descriptor.values().map(|v| v.name().to_owned()).collect();
        let listing = descriptor
            .values()
            .map(|value| match self.comments.of(&value.parent_file(), value.path()) {
                Some(comment) => format!(
                    "- `{}`: {}",
                    value.name(),
                    comment.split_whitespace().collect::<Vec<_>>().join(" ")
                ),
                None => format!("- `{}`", value.name()),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let mut schema = json!({ "type": "string", "enum": names });
        let mut notes: Vec<String> =
            self.comments.of(&descriptor.parent_file(), descriptor.path()).into_iter().collect();
        notes.push(listing);
        describe(&mut schema, &notes);
        schema
    }

    fn field_comment(&self, field: &FieldDescriptor) -> Option<String> {
        self.comments.of(&field.parent_file(), field.path())
    }

    /// Whether `google.api.field_behavior` lists `behavior` (`REQUIRED`, …) for the field.
    fn has_behavior(&self, field: &FieldDescriptor, behavior: &str) -> bool {
        let options = field.options();
        let Some(extension) = self.field_behavior.as_ref().filter(|ext| options.has_extension(ext)) else {
            return false;
        };
        let Some(values) = extension.kind().as_enum().cloned() else { return false };
        let listed = options.get_extension(extension);
        listed.as_list().is_some_and(|items| {
            items
                .iter()
                .filter_map(|item| item.as_enum_number())
                .filter_map(|number| values.get_value(number))
                .any(|value| value.name() == behavior)
        })
    }
}

/// What a `body: "field"` or no-body route reads from the query string.
struct QueryScope<'a> {
    /// Fields set by the path (canonical dotted proto names).
    bound: &'a [String],
    /// The field the body sets.
    body: Option<&'a str>,
    /// Whether the gateway fills `update_mask` when it is left out.
    filled_mask: bool,
}

impl QueryScope<'_> {
    /// Whether `name` (or the message it is in) is set elsewhere.
    fn excludes(&self, name: &str) -> bool {
        let under = |prefix: &str| name == prefix || name.starts_with(&format!("{prefix}."));
        self.bound.iter().any(|b| under(b)) || self.body.is_some_and(under)
    }
}

/// The fields along a dotted path, by proto or JSON name (as the transcoder
/// finds them); `None` if a step does not exist.
fn resolve(message: &MessageDescriptor, path: &str) -> Option<Vec<FieldDescriptor>> {
    let mut chain = Vec::new();
    let mut current = message.clone();
    for segment in path.split('.') {
        let field = current.get_field_by_name(segment).or_else(|| current.get_field_by_json_name(segment))?;
        if let Kind::Message(sub) = field.kind() {
            current = sub;
        }
        chain.push(field);
    }
    Some(chain)
}

/// The path variables' fields as canonical dotted proto names.
fn bound_fields(input: &MessageDescriptor, variables: &[PathVariable]) -> Vec<String> {
    variables
        .iter()
        .map(|variable| match resolve(input, &variable.field) {
            Some(chain) => chain.iter().map(|f| f.name()).collect::<Vec<_>>().join("."),
            None => variable.field.clone(),
        })
        .collect()
}

/// A regular expression for a variable's segments (`posts/*` → `^posts/[^/]+$`).
fn pattern_regex(pattern: &str) -> String {
    let segments: Vec<String> = pattern
        .split('/')
        .map(|segment| match segment {
            "*" => "[^/]+".to_owned(),
            "**" => ".+".to_owned(),
            literal => literal
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_string() } else { format!("\\{c}") })
                .collect(),
        })
        .collect();
    format!("^{}$", segments.join("/"))
}

fn is_http_body(field: &FieldDescriptor) -> bool {
    !field.is_list() && field.kind().as_message().is_some_and(|m| m.full_name() == HTTP_BODY)
}

fn is_deprecated(options: &DynamicMessage) -> bool {
    options.get_field_by_name("deprecated").and_then(|v| v.as_bool()).unwrap_or(false)
}

/// Drops the `required` entries `optional` accepts (and the list, if emptied).
fn remove_required(schema: &mut Value, optional: impl Fn(&str) -> bool) {
    let Some(object) = schema.as_object_mut() else { return };
    if let Some(required) = object.get_mut("required").and_then(Value::as_array_mut) {
        required.retain(|name| !name.as_str().is_some_and(&optional));
        if !required.is_empty() {
            return;
        }
    }
    object.remove("required");
}

/// Whether the gateway fills the request's `update_mask` from the body when
/// the caller leaves it out (PUT and PATCH with a JSON body).
fn fills_update_mask(route: &Route) -> bool {
    let input = route.rpc.input();
    let json_body = match &route.body {
        BodyRule::None => false,
        BodyRule::Whole => true,
        BodyRule::Field(name) => input.get_field_by_name(name).is_some_and(|f| !is_http_body(&f)),
    };
    matches!(route.method.as_str(), "PUT" | "PATCH")
        && json_body
        && input.get_field_by_name(UPDATE_MASK).is_some_and(|f| {
            !f.is_list() && f.kind().as_message().is_some_and(|m| m.full_name() == FIELD_MASK)
        })
}

fn binary_schema() -> Value {
    json!({ "type": "string", "format": "binary" })
}

/// The proto3 JSON forms of the well-known types (not objects of their fields).
fn well_known_schema(full_name: &str) -> Option<Value> {
    let nullable = |kind: &str| json!({ "type": [kind, "null"] });
    Some(match full_name {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => json!({
            "type": "string",
            "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
            "examples": ["1.5s"],
            "description": "A duration in seconds with up to nine fractional digits and an `s` suffix.",
        }),
        FIELD_MASK => json!({
            "type": "string",
            "examples": ["displayName,avatarUrl"],
            "description": "Comma-separated field paths in lowerCamelCase (`displayName,settings.timeZone`).",
        }),
        "google.protobuf.Struct" => json!({ "type": "object", "additionalProperties": true }),
        "google.protobuf.Value" => json!({ "description": "Any JSON value." }),
        "google.protobuf.ListValue" => json!({ "type": "array", "items": {} }),
        "google.protobuf.Empty" => json!({ "type": "object" }),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": { "@type": { "type": "string", "description": "The type URL of the message." } },
            "required": ["@type"],
            "additionalProperties": true,
        }),
        "google.protobuf.BoolValue" => nullable("boolean"),
        "google.protobuf.StringValue" => nullable("string"),
        "google.protobuf.BytesValue" => json!({ "type": ["string", "null"], "contentEncoding": "base64" }),
        "google.protobuf.Int32Value" => json!({ "type": ["integer", "null"], "format": "int32" }),
        "google.protobuf.UInt32Value" => {
            json!({ "type": ["integer", "null"], "format": "uint32", "minimum": 0 })
        }
        "google.protobuf.Int64Value" => json!({ "type": ["string", "null"], "format": "int64" }),
        "google.protobuf.UInt64Value" => json!({ "type": ["string", "null"], "format": "uint64" }),
        "google.protobuf.FloatValue" => json!({ "type": ["number", "null"], "format": "float" }),
        "google.protobuf.DoubleValue" => json!({ "type": ["number", "null"], "format": "double" }),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Descriptions the gateway adds

/// The RPC's comment, then what the gateway adds to it.
fn operation_description(route: &Route, comment: &str, access: &Access) -> String {
    let mut parts = vec![comment.to_owned(), access.sentence()];
    let input = route.rpc.input();
    if fills_update_mask(route) {
        parts.push(
            "When `update_mask` is not given, the gateway fills it from the fields present in the body \
             (nested message fields expanded to their leaves), so exactly the fields sent change."
                .to_owned(),
        );
    }
    if matches!(&route.body, BodyRule::Field(name) if input.get_field_by_name(name).is_some_and(|f| is_http_body(&f)))
    {
        parts.push("The request body is passed on byte for byte, with its `Content-Type`.".to_owned());
    }
    if route.rpc.is_server_streaming() {
        parts.push(
            "The response is a stream: Server-Sent Events when the request accepts `text/event-stream`, \
             newline-delimited JSON otherwise."
                .to_owned(),
        );
    }
    parts.retain(|p| !p.is_empty());
    parts.join("\n\n")
}

/// Headers the gateway reads for some routes.
fn header_parameters(route: &Route) -> Vec<Value> {
    let mut parameters = Vec::new();
    if route.method == http::Method::POST {
        parameters.push(json!({ "$ref": "#/components/parameters/Idempotency-Key" }));
    }
    if route.rpc.is_server_streaming() {
        parameters.push(json!({ "$ref": "#/components/parameters/Last-Event-ID" }));
    }
    parameters
}

const API_DESCRIPTION: &str = "\
The HTTP/JSON interface of postmesh, a social-media management backend. Every operation is a gRPC \
method of one of the services behind the gateway, called with the request built from the path, \
query string and body.

**JSON.** Bodies use the proto3 JSON mapping. Responses use the proto field names (`display_name`); \
requests accept those or the lowerCamelCase names (`displayName`) and refuse unknown fields. 64-bit \
integers are strings, enums their value names, bytes base64, timestamps RFC 3339 strings, durations \
strings such as `\"1.5s\"`. Fields at their default value (empty, zero, false, the `…_UNSPECIFIED` \
enum value) are left out of responses.

**Requests.** Path variables and query parameters set request fields; nested fields are named with \
dots (`filter.status`) and repeated fields take one `name=value` pair per element.

**Authentication.** Send an access token (`Authorization: Bearer <jwt>`) or an API key \
(`X-API-Key: pm_…` or `Authorization: Bearer pm_…`). Each operation says which permission it needs.

**Errors.** Every error is `{code, message, details}`, with the gRPC code name, a message for people and \
`google.rpc` details (such as `BadRequest` field violations) with their `@type`. A path that exists for \
other methods answers 405 with an `Allow` header.

**Rate limits.** Limited answers carry `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` and \
`RateLimit-Policy`; a refused request is 429 with `Retry-After`.

**Request ids.** Every answer carries `X-Request-Id` (the caller's, when it sends a valid one).";

// ---------------------------------------------------------------------------
// Shared components

/// The error answers: status, component name, description.
const ERRORS: &[(&str, &str, &str)] = &[
    (
        "400",
        "BadRequest",
        "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE: a field is missing or wrong (a `google.rpc.BadRequest` \
         detail names it), or the resource is not in a state that allows the call.",
    ),
    ("401", "Unauthorized", "UNAUTHENTICATED: no credential, or an expired, revoked or malformed one."),
    (
        "403",
        "Forbidden",
        "PERMISSION_DENIED: the caller lacks the permission the operation needs, or (for signed inbound \
         webhooks) the signature does not verify.",
    ),
    ("404", "NotFound", "NOT_FOUND: the resource does not exist or belongs to another workspace."),
    (
        "409",
        "Conflict",
        "ALREADY_EXISTS or ABORTED: the resource exists already, or a concurrent change won.",
    ),
    ("413", "PayloadTooLarge", "The body is larger than the gateway accepts."),
    ("415", "UnsupportedMediaType", "The body is not JSON: send it with `Content-Type: application/json`."),
    (
        "429",
        "TooManyRequests",
        "RESOURCE_EXHAUSTED: a rate limit or quota is reached. Retry after `Retry-After` seconds.",
    ),
    (
        "500",
        "InternalError",
        "INTERNAL, UNKNOWN or DATA_LOSS: a failure on postmesh's side. The message is opaque; quote the \
         `X-Request-Id` when reporting it.",
    ),
    ("501", "NotImplemented", "UNIMPLEMENTED: this deployment does not offer the operation (yet)."),
    (
        "503",
        "Unavailable",
        "UNAVAILABLE: a service is down or overloaded. Retry with backoff (after `Retry-After` seconds when given).",
    ),
    ("504", "GatewayTimeout", "DEADLINE_EXCEEDED: the call did not finish in time."),
];

/// Whether an operation can answer `status` through the gateway.
fn error_applies(status: &str, route: &Route, access: &Access) -> bool {
    let json_body = match &route.body {
        BodyRule::None => false,
        BodyRule::Whole => true,
        BodyRule::Field(name) => !route.rpc.input().get_field_by_name(name).is_some_and(|f| is_http_body(&f)),
    };
    match status {
        "401" => matches!(access, Access::SignedIn { .. }),
        "413" => route.body != BodyRule::None,
        "415" => json_body,
        _ => true,
    }
}

fn error_responses() -> Map<String, Value> {
    ERRORS
        .iter()
        .map(|(status, name, description)| {
            let mut headers = json!({ "X-Request-Id": { "$ref": "#/components/headers/X-Request-Id" } });
            let extra: &[&str] = match *status {
                "401" => &["WWW-Authenticate"],
                "429" => &[
                    "Retry-After",
                    "RateLimit-Limit",
                    "RateLimit-Remaining",
                    "RateLimit-Reset",
                    "RateLimit-Policy",
                ],
                "503" => &["Retry-After"],
                _ => &[],
            };
            for header in extra {
                headers[*header] = json!({ "$ref": format!("#/components/headers/{header}") });
            }
            let response = json!({
                "description": description,
                "headers": headers,
                "content": { "application/json": { "schema": { "$ref": format!("{SCHEMA_REFS}Error") } } },
            });
            ((*name).to_owned(), response)
        })
        .collect()
}

fn shared_headers() -> Value {
    let integer = |description: &str| json!({ "description": description, "schema": { "type": "integer", "minimum": 0 } });
    let string = |description: &str| json!({ "description": description, "schema": { "type": "string" } });
    json!({
        "X-Request-Id": string("The request's id: the caller's `X-Request-Id` when it sent a valid one, otherwise a new one. Quote it when reporting a problem."),
        "RateLimit-Limit": integer("Requests allowed per window of the limit that applies."),
        "RateLimit-Remaining": integer("Requests left in the current window."),
        "RateLimit-Reset": integer("Seconds until the budget is whole again."),
        "RateLimit-Policy": string("The limit as `<requests>;w=<window seconds>`, e.g. `100;w=60`."),
        "Retry-After": integer("Seconds to wait before retrying."),
        "WWW-Authenticate": string("The `Bearer` challenge, with the reason a credential was refused."),
    })
}

fn shared_parameters() -> Value {
    json!({
        "Idempotency-Key": {
            "name": "Idempotency-Key",
            "in": "header",
            "required": false,
            "description": "Makes a retry safe where the operation supports it (its description says so): a repeated request with the same key answers like the first one instead of acting again.",
            "schema": { "type": "string", "maxLength": 255 },
        },
        "Last-Event-ID": {
            "name": "Last-Event-ID",
            "in": "header",
            "required": false,
            "description": "The `id` of the last Server-Sent Event received, sent by `EventSource` when it reconnects; streams that support it resume after that event.",
            "schema": { "type": "string" },
        },
    })
}

fn security_schemes() -> Value {
    json!({
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An access token from login, register or token refresh. API keys work here too: `Authorization: Bearer pm_…`.",
        },
        "apiKeyHeader": {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "An API key (`pm_…`), limited to the permissions it was created with.",
        },
    })
}

/// `Error` and the shapes of the gateway's own routes.
fn gateway_schemas() -> Vec<(String, Value)> {
    let codes = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    let schemas = [
        (
            "Error",
            json!({
                "type": "object",
                "description": "Every error answer of the gateway.",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": { "type": "string", "enum": codes, "description": "The gRPC status code's name." },
                    "message": { "type": "string", "description": "What went wrong, for people." },
                    "details": {
                        "type": "array",
                        "description": "`google.rpc` error details (`BadRequest`, `RetryInfo`, `ErrorInfo`, …), each in its JSON form with its `@type`.",
                        "items": {
                            "type": "object",
                            "required": ["@type"],
                            "properties": { "@type": { "type": "string", "examples": ["type.googleapis.com/google.rpc.BadRequest"] } },
                            "additionalProperties": true,
                        },
                    },
                },
            }),
        ),
        (
            "HealthStatus",
            json!({
                "type": "object",
                "required": ["status"],
                "properties": {
                    "status": { "type": "string", "enum": ["ok", "degraded", "shutting_down"] },
                },
            }),
        ),
        (
            "HealthReport",
            json!({
                "type": "object",
                "description": "Every service's serving status and every dependency's latest check; components may add sections of their own.",
                "required": ["status", "services", "dependencies"],
                "properties": {
                    "status": { "type": "string", "enum": ["ok", "degraded"] },
                    "services": {
                        "type": "object",
                        "description": "Serving status by gRPC service name.",
                        "additionalProperties": { "type": "string", "examples": ["SERVING"] },
                    },
                    "dependencies": {
                        "type": "object",
                        "description": "Latest check by dependency name (`database:user`, `backend:content`, …).",
                        "additionalProperties": { "$ref": format!("{SCHEMA_REFS}DependencyHealth") },
                    },
                },
                "additionalProperties": true,
            }),
        ),
        (
            "DependencyHealth",
            json!({
                "type": "object",
                "required": ["ok", "latency_ms"],
                "properties": {
                    "ok": { "type": "boolean", "description": "Whether it answered." },
                    "latency_ms": { "type": "integer", "minimum": 0, "description": "How long the check took, in milliseconds." },
                    "error": { "type": "string", "description": "Why it failed, when it did." },
                },
            }),
        ),
    ];
    schemas.into_iter().map(|(name, schema)| (name.to_owned(), schema)).collect()
}

/// The routes the gateway serves itself.
fn gateway_paths() -> Vec<(&'static str, Map<String, Value>)> {
    let health = |id: &str, summary: &str, schema: &str, can_fail: bool| {
        let json_of = |name: &str| json!({ "application/json": { "schema": { "$ref": format!("{SCHEMA_REFS}{name}") } } });
        let mut responses = json!({ "200": { "description": "Healthy.", "content": json_of(schema) } });
        if can_fail {
            responses["503"] =
                json!({ "description": "Not ready, or shutting down.", "content": json_of(schema) });
        }
        gateway_operation(id, summary, responses)
    };
    vec![
        ("/health", health("Gateway_Health", "Readiness (same as `/health/ready`).", "HealthStatus", true)),
        ("/health/live", health("Gateway_Live", "Liveness: the process is running.", "HealthStatus", false)),
        (
            "/health/ready",
            health("Gateway_Ready", "Readiness: every dependency and backend answers.", "HealthStatus", true),
        ),
        (
            "/health/detailed",
            health("Gateway_HealthDetailed", "Health of every service and dependency.", "HealthReport", true),
        ),
        (
            "/metrics",
            gateway_operation(
                "Gateway_Metrics",
                "Prometheus metrics in the text exposition format.",
                json!({ "200": { "description": "The metrics.", "content": { "text/plain": { "schema": { "type": "string" } } } } }),
            ),
        ),
        (
            "/openapi.json",
            gateway_operation(
                "Gateway_OpenApi",
                "This document.",
                json!({ "200": { "description": "The OpenAPI 3.1 document.", "content": { "application/json": { "schema": { "type": "object" } } } } }),
            ),
        ),
    ]
}

fn gateway_operation(id: &str, summary: &str, mut responses: Value) -> Map<String, Value> {
    // The request id is added to every answer, these included.
    for response in responses.as_object_mut().into_iter().flat_map(|r| r.values_mut()) {
        response["headers"] = json!({ "X-Request-Id": { "$ref": "#/components/headers/X-Request-Id" } });
    }
    let operation = json!({
        "operationId": id,
        "tags": [GATEWAY_TAG],
        "summary": summary,
        "description": format!("{summary}\n\nPublic: no credential needed."),
        "responses": responses,
        "security": [],
    });
    let mut item = Map::new();
    item.insert("get".into(), operation);
    item
}

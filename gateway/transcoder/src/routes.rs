//! The route table, read from the `google.api.http` options of every RPC in
//! the descriptor set (additional bindings included), and the path
//! templates it matches requests against:
//!
//! ```text
//! Template = "/" Segments [ ":" Verb ]
//! Segment  = "*" | "**" | LITERAL | "{" FieldPath [ "=" Segments ] "}"
//! ```
//!
//! Where several templates match a path, the most specific wins, segment by
//! segment: a literal before `*`, `*` before `**` (so `/api/users/profile`
//! beats `/api/users/{id}`).

use std::collections::BTreeSet;

use http::Method;
use percent_encoding::percent_decode_str;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};

/// One segment of a compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    Single,
    /// `**`: the rest of the path (one or more segments).
    Rest,
}

/// A variable: which segments it captures, and which field they fill.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Variable {
    field_path: Vec<String>,
    start: usize,
    end: usize,
}

/// A parsed `google.api.http` path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad path template `{template}`: {reason}")]
pub struct TemplateError {
    template: String,
    reason: String,
}

impl PathTemplate {
    /// Parses a template.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let fail = |reason: &str| TemplateError { template: template.to_owned(), reason: reason.to_owned() };
        let rest = template.strip_prefix('/').ok_or_else(|| fail("must start with /"))?;
        // The verb follows the last segment; a ':' inside braces is not one.
        let (body, verb) = match rest.rfind(':') {
            Some(at) if !rest[at..].contains('}') && !rest[at..].contains('/') => {
                (&rest[..at], Some(rest[at + 1..].to_owned()))
            }
            _ => (rest, None),
        };
        if verb.as_deref() == Some("") {
            return Err(fail("empty verb"));
        }
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        let mut chars = body.char_indices().peekable();
        let mut current = String::new();
        let push_plain = |text: &str, segments: &mut Vec<Segment>| -> Result<(), TemplateError> {
            let segment = match text {
                "" => return Err(fail("empty segment")),
                "*" => Segment::Single,
                "**" => Segment::Rest,
                literal if literal.contains(['{', '}', '*']) => return Err(fail("malformed segment")),
                literal => Segment::Literal(literal.to_owned()),
            };
            segments.push(segment);
            Ok(())
        };
        while let Some((_, c)) = chars.next() {
            match c {
                '{' => {
                    if !current.is_empty() {
                        return Err(fail("a variable must be a whole segment"));
                    }
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, '{')) | None => return Err(fail("unclosed variable")),
                            Some((_, c)) => inner.push(c),
                        }
                    }
                    let (field, pattern) = inner.split_once('=').unwrap_or((&inner, "*"));
                    let field_path: Vec<String> = field.split('.').map(str::to_owned).collect();
                    if field_path
                        .iter()
                        .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                    {
                        return Err(fail("bad field path in variable"));
                    }
                    let start = segments.len();
                    for part in pattern.split('/') {
                        push_plain(part, &mut segments)?;
                    }
                    variables.push(Variable { field_path, start, end: segments.len() });
                    match chars.peek() {
                        None | Some((_, '/')) => {
                            chars.next();
                        }
                        Some(_) => return Err(fail("a variable must be a whole segment")),
                    }
                }
                '/' => {
                    push_plain(&current, &mut segments)?;
                    current.clear();
                }
                c => current.push(c),
            }
        }
        if !current.is_empty() {
            push_plain(&current, &mut segments)?;
        } else if body.ends_with('/') {
            return Err(fail("trailing slash"));
        }
        if let Some(at) = segments.iter().position(|s| *s == Segment::Rest)
            && at != segments.len() - 1
        {
            return Err(fail("** must be last"));
        }
        Ok(Self { source: template.to_owned(), segments, variables, verb })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The variables' field paths, in order (`["user", "id"]` for `{user.id}`).
    pub fn variable_fields(&self) -> impl Iterator<Item = &[String]> {
        self.variables.iter().map(|v| v.field_path.as_slice())
    }

    /// Matches a request path; returns each variable's field path and its
    /// percent-decoded value (multi-segment values joined with `/`).
    pub fn matches(&self, path: &str) -> Option<Vec<(Vec<String>, String)>> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let parts: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('/').collect() };
        let mut spans: Vec<(usize, usize)> = Vec::with_capacity(self.segments.len());
        let mut at = 0;
        for segment in &self.segments {
            match segment {
                Segment::Literal(literal) => {
                    if parts.get(at).map(|p| decode(p)) != Some(literal.clone()) {
                        return None;
                    }
                    spans.push((at, at + 1));
                    at += 1;
                }
                Segment::Single => {
                    if parts.get(at).is_none_or(|p| p.is_empty()) {
                        return None;
                    }
                    spans.push((at, at + 1));
                    at += 1;
                }
                Segment::Rest => {
                    if at >= parts.len() || parts[at..].iter().any(|p| p.is_empty()) {
                        return None;
                    }
                    spans.push((at, parts.len()));
                    at = parts.len();
                }
            }
        }
        if at != parts.len() {
            return None;
        }
        Some(
            self.variables
                .iter()
                .map(|v| {
                    let (from, to) = (spans[v.start].0, spans[v.end - 1].1);
                    let value = parts[from..to].iter().map(|p| decode(p)).collect::<Vec<_>>().join("/");
                    (v.field_path.clone(), value)
                })
                .collect(),
        )
    }

    /// Sorting key: more specific templates first (literals, then `*`, then
    /// `**`, segment by segment; a verb adds precision).
    fn specificity(&self) -> Vec<u8> {
        let mut key: Vec<u8> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 0,
                Segment::Single => 1,
                Segment::Rest => 2,
            })
            .collect();
        key.push(if self.verb.is_some() { 0 } else { 1 });
        key
    }
}

fn decode(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

/// Where the request body goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRule {
    /// No body; every unbound field comes from the query string.
    None,
    /// `body: "*"`: every field not bound by the path.
    Whole,
    /// `body: "field"`: that field; the rest from path and query.
    Field(String),
}

/// One HTTP binding of an RPC.
#[derive(Debug, Clone)]
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// The path template.
    pub template: PathTemplate,
    /// The RPC.
    pub rpc: MethodDescriptor,
    /// Where the body goes.
    pub body: BodyRule,
    /// The response field sent as the body (`response_body`), if any.
    pub response_body: Option<String>,
    /// Position in [`RouteTable::routes`], for per-route state kept
    /// alongside the table.
    pub index: usize,
    grpc_path: String,
}

impl Route {
    /// `/package.Service/Method`.
    pub fn grpc_path(&self) -> &str {
        &self.grpc_path
    }

    /// The target service's short name (`user` for `postmesh.user.v1.UserService`).
    pub fn target(&self) -> &str {
        self.rpc.parent_service().package_name().split('.').nth(1).unwrap_or("")
    }
}

/// The outcome of looking a request up.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// A route and its path variables.
    Found(&'a Route, Vec<(Vec<String>, String)>),
    /// The path exists for other methods.
    MethodNotAllowed(Vec<Method>),
    /// Nothing serves this path.
    NotFound,
}

/// Every HTTP binding in the contract.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
}

/// A route the contract declares in a way the gateway cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The descriptor set does not decode.
    #[error("descriptor set: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    /// A template does not parse.
    #[error("{rpc}: {source}")]
    Template {
        /// The RPC.
        rpc: String,
        /// What is wrong.
        source: TemplateError,
    },
}

impl RouteTable {
    /// Reads every binding of the RPCs in `pool` that `serve` accepts.
    pub fn from_pool(
        pool: &DescriptorPool,
        serve: impl Fn(&MethodDescriptor) -> bool,
    ) -> Result<Self, RouteError> {
        let Some(extension) = pool.get_extension_by_name("google.api.http") else {
            return Ok(Self { routes: Vec::new() });
        };
        let mut routes = Vec::new();
        for service in pool.services() {
            for rpc in service.methods() {
                let options = rpc.options();
                if !serve(&rpc) || !options.has_extension(&extension) {
                    continue;
                }
                let value = options.get_extension(&extension);
                let Some(rule) = value.as_message() else { continue };
                let mut bindings = vec![rule.clone()];
                if let Some(Value::List(more)) =
                    rule.get_field_by_name("additional_bindings").map(|v| v.into_owned())
                {
                    bindings.extend(more.iter().filter_map(|v| v.as_message().cloned()));
                }
                for binding in bindings {
                    if let Some(route) = route_of(&binding, &rpc)? {
                        routes.push(route);
                    }
                }
            }
        }
        // Stable: equally specific templates keep the contract's order.
        routes.sort_by_key(|route| route.template.specificity());
        for (index, route) in routes.iter_mut().enumerate() {
            route.index = index;
        }
        Ok(Self { routes })
    }

    /// Finds the route for `method` and `path`.
    pub fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        let mut allowed = BTreeSet::new();
        for route in &self.routes {
            if let Some(variables) = route.template.matches(path) {
                if route.method == *method {
                    return Lookup::Found(route, variables);
                }
                allowed.insert(route.method.as_str().to_owned());
            }
        }
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::MethodNotAllowed(allowed.iter().filter_map(|m| m.parse().ok()).collect())
        }
    }

    /// Every route, most specific first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

fn route_of(binding: &DynamicMessage, rpc: &MethodDescriptor) -> Result<Option<Route>, RouteError> {
    let text = |name: &str| -> String {
        binding.get_field_by_name(name).and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    };
    let (method, template) = if !text("get").is_empty() {
        (Method::GET, text("get"))
    } else if !text("put").is_empty() {
        (Method::PUT, text("put"))
    } else if !text("post").is_empty() {
        (Method::POST, text("post"))
    } else if !text("delete").is_empty() {
        (Method::DELETE, text("delete"))
    } else if !text("patch").is_empty() {
        (Method::PATCH, text("patch"))
    } else if let Some(custom) = binding.get_field_by_name("custom").and_then(|v| v.as_message().cloned()) {
        let kind =
            custom.get_field_by_name("kind").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let path =
            custom.get_field_by_name("path").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        match kind.parse::<Method>() {
            Ok(method) if !path.is_empty() => (method, path),
            _ => return Ok(None),
        }
    } else {
        return Ok(None);
    };
    let template = PathTemplate::parse(&template)
        .map_err(|source| RouteError::Template { rpc: rpc.full_name().to_owned(), source })?;
    let body = match text("body").as_str() {
        "" => BodyRule::None,
        "*" => BodyRule::Whole,
        field => BodyRule::Field(field.to_owned()),
    };
    let response_body = Some(text("response_body")).filter(|s| !s.is_empty());
    let grpc_path = format!("/{}/{}", rpc.parent_service().full_name(), rpc.name());
    Ok(Some(Route { method, template, rpc: rpc.clone(), body, response_body, index: 0, grpc_path }))
}

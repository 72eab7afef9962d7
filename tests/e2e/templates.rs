//! Properties of the gateway's path templates: a path rendered from a
//! template matches it and gives back every variable's value; a path that
//! differs from it in shape does not match; nothing panics; and in the
//! contract's own route table every route is reached by its own paths.

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use postmesh_transcoder::{Lookup, PathTemplate, RouteTable};
use proptest::prelude::*;
use prost_reflect::DescriptorPool;
use reqwest::Method;

/// One piece of a generated template.
#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    /// `{field}`
    Variable(String),
    /// `{field=prefix/*}`
    Prefixed(String, String),
}

/// A generated template and a path rendered from it, with the values its
/// variables must yield.
#[derive(Debug, Clone)]
struct Case {
    template: String,
    path: String,
    values: Vec<(Vec<String>, String)>,
    /// Index in the path of a literal segment, when there is one.
    literal_at: Option<usize>,
    rest: bool,
    verb: Option<String>,
}

fn literal() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_-]{0,7}"
}

fn field_path() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z][a-z0-9_]{0,5}", 1..3).prop_map(|parts| parts.join("."))
}

/// A variable's value: anything non-empty, slashes and percent signs included.
fn value() -> impl Strategy<Value = String> {
    "\\PC{1,12}"
}

fn encode(value: &str) -> String {
    utf8_percent_encode(value, NON_ALPHANUMERIC).to_string()
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![
        2 => literal().prop_map(Part::Literal),
        1 => field_path().prop_map(Part::Variable),
        1 => (field_path(), literal()).prop_map(|(f, p)| Part::Prefixed(f, p)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((part(), value()), 1..6),
        prop::option::of((field_path(), prop::collection::vec(value(), 1..4))),
        prop::option::of("[a-z]{1,6}"),
    )
        .prop_map(|(parts, rest, verb)| {
            let (mut template, mut path, mut values, mut literal_at) =
                (String::new(), String::new(), Vec::new(), None);
            let mut segment = 0;
            for (part, value) in parts {
                match part {
                    Part::Literal(literal) => {
                        template += &format!("/{literal}");
                        path += &format!("/{literal}");
                        literal_at.get_or_insert(segment);
                        segment += 1;
                    }
                    Part::Variable(field) => {
                        template += &format!("/{{{field}}}");
                        path += &format!("/{}", encode(&value));
                        values.push((field.split('.').map(str::to_owned).collect(), value));
                        segment += 1;
                    }
                    Part::Prefixed(field, prefix) => {
                        template += &format!("/{{{field}={prefix}/*}}");
                        path += &format!("/{prefix}/{}", encode(&value));
                        values.push((
                            field.split('.').map(str::to_owned).collect(),
                            format!("{prefix}/{value}"),
                        ));
                        literal_at.get_or_insert(segment);
                        segment += 2;
                    }
                }
            }
            let has_rest = rest.is_some();
            if let Some((field, segments)) = rest {
                template += &format!("/{{{field}=**}}");
                for s in &segments {
                    path += &format!("/{}", encode(s));
                }
                values.push((field.split('.').map(str::to_owned).collect(), segments.join("/")));
            }
            if let Some(verb) = &verb {
                template += &format!(":{verb}");
                path += &format!(":{verb}");
            }
            Case { template, path, values, literal_at, rest: has_rest, verb }
        })
}

/// Inserts `text` into the path's segment `at` (counting from the first).
fn edit_segment(path: &str, at: usize, edit: impl Fn(&str) -> String) -> String {
    let segments: Vec<String> =
        path[1..].split('/').enumerate().map(|(i, s)| if i == at { edit(s) } else { s.to_owned() }).collect();
    format!("/{}", segments.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_rendered_path_matches_and_gives_back_its_values(case in case()) {
        let template = PathTemplate::parse(&case.template).unwrap();
        prop_assert_eq!(template.as_str(), case.template.as_str());
        prop_assert_eq!(template.matches(&case.path), Some(case.values.clone()));
        let fields: Vec<Vec<String>> = template.variable_fields().map(<[String]>::to_vec).collect();
        let expected: Vec<Vec<String>> = case.values.iter().map(|(f, _)| f.clone()).collect();
        prop_assert_eq!(fields, expected);
    }

    #[test]
    fn a_path_of_another_shape_does_not_match(case in case()) {
        let template = PathTemplate::parse(&case.template).unwrap();
        if let Some(at) = case.literal_at {
            let changed = edit_segment(&case.path, at, |s| format!("{s}x"));
            prop_assert_eq!(template.matches(&changed), None, "changed literal: {}", changed);
        }
        let (stem, verb) = match &case.verb {
            Some(verb) => (case.path.strip_suffix(&format!(":{verb}")).unwrap().to_owned(), format!(":{verb}")),
            None => (case.path.clone(), String::new()),
        };
        if !case.rest {
            let longer = format!("{stem}/extra{verb}");
            prop_assert_eq!(template.matches(&longer), None, "extra segment: {}", longer);
        }
        let shorter = match stem.rfind('/') {
            Some(0) | None => "/".to_owned(),
            Some(at) => stem[..at].to_owned() + &verb,
        };
        if !case.rest || case.values.last().is_some_and(|(_, v)| !v.contains('/')) {
            prop_assert_eq!(template.matches(&shorter), None, "missing segment: {}", shorter);
        }
        if case.verb.is_some() {
            prop_assert_eq!(template.matches(&stem), None, "missing verb: {}", stem);
        }
    }

    #[test]
    fn parsing_and_matching_never_panic(template in "[/a-z{}=*.:]{0,24}", path in "\\PC{0,32}") {
        if let Ok(template) = PathTemplate::parse(&template) {
            let _ = template.matches(&path);
        }
    }

    #[test]
    fn every_contract_route_is_reached_by_its_own_paths(values in prop::collection::vec("[A-Za-z0-9 /%:._-]{1,10}", 4)) {
        let table = contract();
        for route in table.routes() {
            let (path, expected) = render(route.template.as_str(), &values);
            match table.lookup(&route.method, &path) {
                Lookup::Found(found, variables) => {
                    prop_assert_eq!(found.template.as_str(), route.template.as_str(), "{} {}", route.method, path);
                    prop_assert_eq!(variables, expected);
                }
                _ => prop_assert!(false, "{} {} did not find {}", route.method, path, route.template.as_str()),
            }
        }
    }
}

/// The contract's route table, every RPC included.
fn contract() -> &'static RouteTable {
    static TABLE: std::sync::OnceLock<RouteTable> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let pool = DescriptorPool::decode(postmesh_proto::FILE_DESCRIPTOR_SET).unwrap();
        RouteTable::from_pool(&pool, |_| true).unwrap()
    })
}

/// Fills a contract template's variables with `~`-prefixed values (no
/// literal of the contract starts with `~`, so no other route can claim
/// the path) and returns the path and what each variable must yield.
fn render(template: &str, values: &[String]) -> (String, Vec<(Vec<String>, String)>) {
    let (mut path, mut expected, mut rest) = (String::new(), Vec::new(), template);
    let mut next = values.iter().cycle();
    while let Some(open) = rest.find('{') {
        let close = open + rest[open..].find('}').unwrap();
        path += &rest[..open];
        let inner = &rest[open + 1..close];
        let (field, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
        let (mut rendered, mut value) = (Vec::new(), Vec::new());
        for segment in pattern.split('/') {
            match segment {
                "*" | "**" => {
                    let v = format!("~{}", next.next().unwrap());
                    rendered.push(encode(&v));
                    value.push(v);
                }
                literal => {
                    rendered.push(literal.to_owned());
                    value.push(literal.to_owned());
                }
            }
        }
        path += &rendered.join("/");
        expected.push((field.split('.').map(str::to_owned).collect(), value.join("/")));
        rest = &rest[close + 1..];
    }
    path += rest;
    (path, expected)
}

#[test]
fn the_contract_prefers_literals_to_variables() {
    let table = contract();
    let Lookup::Found(route, variables) = table.lookup(&Method::GET, "/api/users/profile") else {
        panic!("GET /api/users/profile is a route");
    };
    assert_eq!(route.template.as_str(), "/api/users/profile");
    assert!(variables.is_empty());
    let Lookup::Found(route, variables) = table.lookup(&Method::GET, "/api/users/0190a1b2") else {
        panic!("GET /api/users/{{id}} is a route");
    };
    assert_eq!(route.template.as_str(), "/api/users/{id}");
    assert_eq!(variables, vec![(vec!["id".to_owned()], "0190a1b2".to_owned())]);
}

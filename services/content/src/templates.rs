//! Templates with `{variables}` (`postmesh.content.v1.Template.body`):
//! parsing, the variables a body uses, and rendering with values and
//! defaults. Pure functions, no I/O.
//!
//! Syntax: `{name}` is replaced by the variable `name` (letters, digits, `_`
//! and `.`, starting with a letter or `_`; letters may be any Unicode
//! letters); `{{` and `}}` stand for literal braces. Anything else with a
//! brace is refused: an unclosed `{`, an empty or malformed placeholder, and
//! a single `}`. Values are inserted as they are (they are post markup too).

use std::collections::BTreeMap;

/// A template body that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at character {position}")]
pub struct TemplateSyntaxError {
    /// Where the faulty placeholder starts: the 1-based position, in
    /// characters (code points), of its `{`, or of a single `}`.
    pub position: usize,
    /// What is wrong, lowercase, without a trailing period.
    pub message: String,
}

/// A parsed template body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Variable(String),
}

impl ParsedTemplate {
    /// Parses a template body; see the module documentation for the syntax.
    pub fn parse(body: &str) -> Result<Self, TemplateSyntaxError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = body.chars().enumerate().peekable();
        while let Some((index, c)) = chars.next() {
            let position = index + 1;
            match c {
                '{' if chars.next_if(|&(_, n)| n == '{').is_some() => literal.push('{'),
                '}' if chars.next_if(|&(_, n)| n == '}').is_some() => literal.push('}'),
                '}' => {
                    return Err(TemplateSyntaxError {
                        position,
                        message: "single `}`: write `}}` for a literal brace".to_owned(),
                    });
                }
                '{' => {
                    let mut name = String::new();
                    let closed = loop {
                        match chars.next() {
                            None => break false,
                            Some((_, '}')) => break true,
                            Some((_, n)) if is_name_char(n, name.is_empty()) => name.push(n),
                            Some((_, n)) => {
                                let message = if name.is_empty() && is_name_char(n, false) {
                                    format!(
                                        "malformed placeholder: a variable name starts with a letter or `_`, not `{n}`"
                                    )
                                } else {
                                    format!(
                                        "malformed placeholder `{{{name}`: `{n}` is not allowed in a variable name \
                                         (letters, digits, `_` and `.`); write `{{{{` for a literal brace"
                                    )
                                };
                                return Err(TemplateSyntaxError { position, message });
                            }
                        }
                    };
                    if !closed {
                        let message = format!(
                            "unclosed placeholder `{{{name}`: close it with `}}` or write `{{{{` for a literal brace"
                        );
                        return Err(TemplateSyntaxError { position, message });
                    }
                    if name.is_empty() {
                        let message = "empty placeholder `{}`: write `{{}}` for literal braces".to_owned();
                        return Err(TemplateSyntaxError { position, message });
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Variable(name));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { parts })
    }

    /// Variables in order of first use, each once.
    pub fn variables(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for part in &self.parts {
            if let Part::Variable(name) = part
                && !seen.contains(name)
            {
                seen.push(name.clone());
            }
        }
        seen
    }

    /// Renders with `values` taking precedence over `defaults`; Err lists
    /// every missing variable (in order of first use). Ok gives the text and
    /// the variables that took their default (in order of first use). Values
    /// for variables the template does not use are ignored.
    pub fn render(
        &self,
        values: &BTreeMap<String, String>,
        defaults: &BTreeMap<String, String>,
    ) -> Result<(String, Vec<String>), Vec<String>> {
        let mut text = String::new();
        let mut defaulted: Vec<String> = Vec::new();
        let mut missing: Vec<String> = Vec::new();
        for part in &self.parts {
            match part {
                Part::Literal(literal) => text.push_str(literal),
                Part::Variable(name) => {
                    if let Some(value) = values.get(name) {
                        text.push_str(value);
                    } else if let Some(value) = defaults.get(name) {
                        text.push_str(value);
                        if !defaulted.contains(name) {
                            defaulted.push(name.clone());
                        }
                    } else if !missing.contains(name) {
                        missing.push(name.clone());
                    }
                }
            }
        }
        if missing.is_empty() { Ok((text, defaulted)) } else { Err(missing) }
    }
}

/// `text` as a template body that renders to exactly `text`: braces doubled.
pub fn escape(text: &str) -> String {
    text.replace('{', "{{").replace('}', "}}")
}

/// Whether `c` may appear in a variable name, at its start if `first`.
fn is_name_char(c: char, first: bool) -> bool {
    c.is_alphabetic() || c == '_' || (!first && (c.is_alphanumeric() || c == '.'))
}

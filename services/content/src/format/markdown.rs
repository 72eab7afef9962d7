//! `TEXT_FORMAT_MARKDOWN`: Discord-flavoured Markdown.
//!
//! Literal text is escaped with `\` wherever Discord would otherwise read it
//! as markup the post did not ask for: `\ * _ ~ ` |` anywhere, and `#` or `>`
//! at the start of a line (headings, quotes). A `-` list at the start of a
//! line is left alone: Discord shows it as the list the author typed. URLs are
//! written bare (Discord links them and reads no markup inside them).

use super::markup::Inline;

pub(super) fn render(nodes: &[Inline], out: &mut String) {
    for node in nodes {
        match node {
            Inline::Text(text) => escape(text, out),
            Inline::Bold(children) => {
                out.push_str("**");
                render(children, out);
                out.push_str("**");
            }
            Inline::Italic(children) => {
                out.push('_');
                render(children, out);
                out.push('_');
            }
            // Code spans show their content verbatim; it holds no backtick.
            Inline::Code(code) => {
                out.push('`');
                out.push_str(code);
                out.push('`');
            }
            Inline::Link { label, url } => {
                out.push('[');
                escape(label, out);
                out.push_str("](");
                out.push_str(url);
                out.push(')');
            }
            Inline::Url(url) => out.push_str(url),
            Inline::Mention(handle) => {
                out.push('@');
                escape(handle, out);
            }
            Inline::Hashtag(tag) => {
                out.push('#');
                escape(tag, out);
            }
        }
    }
}

fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        let line_start = out.is_empty() || out.ends_with('\n');
        if matches!(c, '\\' | '*' | '_' | '~' | '`' | '|') || (line_start && matches!(c, '#' | '>')) {
            out.push('\\');
        }
        out.push(c);
    }
}

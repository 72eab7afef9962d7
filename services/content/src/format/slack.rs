//! `TEXT_FORMAT_SLACK_MRKDWN`: Slack `mrkdwn` (`*bold*`, `_italic_`,
//! `` `code` ``, `<url|label>`), with `&`, `<` and `>` escaped as Slack asks.
//!
//! Slack has no escape for a literal `*`, `_` or `~`; they are left as
//! written, and Slack only reads them as markup at word boundaries around a
//! closing partner. Bare URLs become `<url>`; mentions and hashtags stay text
//! (real Slack mentions need user ids).

use super::markup::Inline;

pub(super) fn render(nodes: &[Inline], out: &mut String) {
    for node in nodes {
        match node {
            Inline::Text(text) => escape(text, out),
            Inline::Bold(children) => {
                out.push('*');
                render(children, out);
                out.push('*');
            }
            Inline::Italic(children) => {
                out.push('_');
                render(children, out);
                out.push('_');
            }
            Inline::Code(code) => {
                out.push('`');
                escape(code, out);
                out.push('`');
            }
            Inline::Link { label, url } => {
                out.push('<');
                escape_url(url, out);
                out.push('|');
                escape(label, out);
                out.push('>');
            }
            Inline::Url(url) => {
                out.push('<');
                escape_url(url, out);
                out.push('>');
            }
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
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
}

/// A URL inside `<…>`: escaped, and `|` (which would end the URL) percent-encoded.
fn escape_url(url: &str, out: &mut String) {
    for c in url.chars() {
        match c {
            '|' => out.push_str("%7C"),
            c => escape(c.encode_utf8(&mut [0; 4]), out),
        }
    }
}

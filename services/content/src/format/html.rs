//! `TEXT_FORMAT_HTML`: the HTML subset of Telegram's `parse_mode=HTML`
//! (`<b>`, `<i>`, `<code>`, `<a href>`), with `&`, `<` and `>` escaped
//! everywhere else. Bare URLs, mentions and hashtags are left as text:
//! Telegram links them itself.

use super::markup::Inline;

pub(super) fn render(nodes: &[Inline], out: &mut String) {
    for node in nodes {
        match node {
            Inline::Text(text) | Inline::Url(text) => escape(text, out),
            Inline::Bold(children) => {
                out.push_str("<b>");
                render(children, out);
                out.push_str("</b>");
            }
            Inline::Italic(children) => {
                out.push_str("<i>");
                render(children, out);
                out.push_str("</i>");
            }
            Inline::Code(code) => {
                out.push_str("<code>");
                escape(code, out);
                out.push_str("</code>");
            }
            Inline::Link { label, url } => {
                out.push_str("<a href=\"");
                escape(url, out);
                out.push_str("\">");
                escape(label, out);
                out.push_str("</a>");
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

/// Escapes text and attribute values alike (`"` too, harmless in text).
fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

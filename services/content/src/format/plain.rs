//! `TEXT_FORMAT_PLAIN`: the text without markup. Emphasis and code keep their
//! content, `[label](url)` becomes `label (url)` (just `url` when the label is
//! the URL), URLs, mentions and hashtags stay as written for the platform to
//! link (Mastodon does; Twitch and webhooks show them as they are).

use super::markup::Inline;

pub(super) fn render(nodes: &[Inline], out: &mut String) {
    for node in nodes {
        match node {
            Inline::Text(text) | Inline::Code(text) | Inline::Url(text) => out.push_str(text),
            Inline::Bold(children) | Inline::Italic(children) => render(children, out),
            Inline::Link { label, url } if label_is_url(label, url) => out.push_str(url),
            Inline::Link { label, url } => {
                out.push_str(label);
                out.push_str(" (");
                out.push_str(url);
                out.push(')');
            }
            Inline::Mention(handle) => {
                out.push('@');
                out.push_str(handle);
            }
            Inline::Hashtag(tag) => {
                out.push('#');
                out.push_str(tag);
            }
        }
    }
}

/// True if a link's label only repeats its URL (with or without the scheme
/// or a trailing `/`), so writing both would say the same thing twice.
pub(super) fn label_is_url(label: &str, url: &str) -> bool {
    fn bare(s: &str) -> &str {
        let s = s.trim();
        let s = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).unwrap_or(s);
        s.strip_suffix('/').unwrap_or(s)
    }
    bare(label).eq_ignore_ascii_case(bare(url))
}

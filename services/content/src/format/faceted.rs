//! `TEXT_FORMAT_FACETED` (Bluesky): plain text plus facets marking links,
//! mentions and hashtags by UTF-8 byte range of the output text.
//!
//! Unlike plain text, `[label](url)` keeps only its label, which gets a link
//! facet to the URL (Bluesky shows the label as the link). Bare URLs get a
//! link facet over themselves. Mentions get a facet only when the handle is a
//! domain (`@alice.bsky.social`), as Bluesky handles always are; `@alice` or
//! `@user@mastodon.social` stay plain text. Hashtags longer than Bluesky
//! accepts in a tag facet (64 graphemes, 640 bytes) stay plain text.

use postmesh_proto::postmesh::social::v1::{Facet, facet::Feature};
use unicode_segmentation::UnicodeSegmentation;

use super::markup::Inline;

const MAX_TAG_GRAPHEMES: usize = 64;
const MAX_TAG_BYTES: usize = 640;

pub(super) fn render(nodes: &[Inline], out: &mut String, facets: &mut Vec<Facet>) {
    for node in nodes {
        match node {
            Inline::Text(text) | Inline::Code(text) => out.push_str(text),
            Inline::Bold(children) | Inline::Italic(children) => render(children, out, facets),
            Inline::Link { label, url } => push_marked(out, facets, &[label], Feature::LinkUri(url.clone())),
            Inline::Url(url) => push_marked(out, facets, &[url], Feature::LinkUri(url.clone())),
            Inline::Mention(handle) if is_domain_handle(handle) => {
                push_marked(out, facets, &["@", handle], Feature::MentionHandle(handle.clone()));
            }
            Inline::Hashtag(tag)
                if tag.len() <= MAX_TAG_BYTES && tag.graphemes(true).count() <= MAX_TAG_GRAPHEMES =>
            {
                push_marked(out, facets, &["#", tag], Feature::Tag(tag.clone()));
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

/// Appends `parts` and a facet covering exactly them.
fn push_marked(out: &mut String, facets: &mut Vec<Facet>, parts: &[&str], feature: Feature) {
    let start = out.len();
    for part in parts {
        out.push_str(part);
    }
    facets.push(Facet { byte_start: offset(start), byte_end: offset(out.len()), feature: Some(feature) });
}

/// A byte offset as the proto's `int32`; texts are at most a few hundred
/// kilobytes, far below the limit.
fn offset(bytes: usize) -> i32 {
    i32::try_from(bytes).unwrap_or(i32::MAX)
}

/// True for a handle that is a domain name: dot-separated labels of letters,
/// digits and `-`, none starting or ending with `-`, the last starting with a
/// letter.
fn is_domain_handle(handle: &str) -> bool {
    let labels: Vec<&str> = handle.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && labels.last().is_some_and(|tld| tld.starts_with(|c: char| c.is_ascii_alphabetic()))
}

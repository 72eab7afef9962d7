//! Text length counted the platform's way (`postmesh.type.v1.LengthUnit`).

use postmesh_proto::postmesh::r#type::v1::LengthUnit;
use unicode_segmentation::UnicodeSegmentation;

use super::markup;

/// What every URL counts as under `LENGTH_UNIT_MASTODON_WEIGHTED`.
pub const MASTODON_URL_LENGTH: usize = 23;

/// Length of `text` in `unit`. `LENGTH_UNIT_UNSPECIFIED` counts code points.
pub fn count(text: &str, unit: LengthUnit) -> usize {
    match unit {
        LengthUnit::Graphemes => text.graphemes(true).count(),
        LengthUnit::Unspecified | LengthUnit::CodePoints => text.chars().count(),
        LengthUnit::Utf16CodeUnits => text.encode_utf16().count(),
        LengthUnit::Utf8Bytes => text.len(),
        LengthUnit::MastodonWeighted => count_mastodon_weighted(text),
    }
}

/// The unit's name for messages, singular or plural after `n`.
pub fn unit_name(unit: LengthUnit, n: i64) -> &'static str {
    let one = n == 1;
    match unit {
        LengthUnit::Graphemes if one => "grapheme",
        LengthUnit::Graphemes => "graphemes",
        LengthUnit::Utf16CodeUnits if one => "UTF-16 code unit",
        LengthUnit::Utf16CodeUnits => "UTF-16 code units",
        LengthUnit::Utf8Bytes if one => "byte",
        LengthUnit::Utf8Bytes => "bytes",
        LengthUnit::Unspecified | LengthUnit::CodePoints | LengthUnit::MastodonWeighted if one => "character",
        LengthUnit::Unspecified | LengthUnit::CodePoints | LengthUnit::MastodonWeighted => "characters",
    }
}

/// Mastodon's count: code points, except that every `http(s)` URL counts as
/// [`MASTODON_URL_LENGTH`] and a mention `@user@domain` counts as `@user`.
/// URLs and mentions are recognised as in post markup.
fn count_mastodon_weighted(text: &str) -> usize {
    let mut total = 0;
    let mut prev = None;
    // As in the markup parser: after a failed URL scan no URL starts before
    // the point it reached, which keeps hostile text linear.
    let mut url_blocked_until = 0;
    let mut i = 0;
    while let Some(c) = text[i..].chars().next() {
        let rest = &text[i..];
        let entity = match c {
            'h' | 'H' if i >= url_blocked_until && markup::url_may_start_after(prev) => {
                match markup::scan_url(rest) {
                    Ok(len) => Some((len, MASTODON_URL_LENGTH)),
                    Err(reached) => {
                        url_blocked_until = i + reached;
                        None
                    }
                }
            }
            '@' if markup::mention_may_start_after(prev) => markup::mention_at(rest)
                .map(|len| (len, 1 + markup::mention_local_part(&rest[1..len]).chars().count())),
            _ => None,
        };
        let (len, weight) = entity.unwrap_or((c.len_utf8(), 1));
        total += weight;
        prev = rest[..len].chars().next_back();
        i += len;
    }
    total
}

/// The text a reader sees in HTML: tags removed, character references
/// (`&amp;`, `&lt;`, `&gt;`, `&quot;`, `&apos;`, `&#NN;`, `&#xHH;`) decoded;
/// anything else, an unknown entity included, is kept as written.
pub fn html_visible_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    // Once no `>` is left, no later `<` opens a tag: not searching again
    // keeps a text full of `<` linear.
    let mut tags_possible = true;
    while let Some(c) = rest.chars().next() {
        if c == '<' && tags_possible {
            match rest.find('>') {
                Some(end) => {
                    rest = &rest[end + 1..];
                    continue;
                }
                None => tags_possible = false,
            }
        }
        if c == '&'
            && let Some((decoded, len)) = html_entity(rest)
        {
            out.push(decoded);
            rest = &rest[len..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A character reference at the start of `rest`: the character and the length consumed.
fn html_entity(rest: &str) -> Option<(char, usize)> {
    let end = rest.char_indices().take(12).find(|&(_, c)| c == ';').map(|(j, _)| j)?;
    let name = &rest[1..end];
    let decoded = match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        _ => {
            let number = name.strip_prefix('#')?;
            let code = match number.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => number.parse().ok()?,
            };
            char::from_u32(code)?
        }
    };
    Some((decoded, end + 1))
}

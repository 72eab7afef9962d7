//! Media references resolved for a platform: MIME type inferred from the URL
//! when not given, alt text cut at a word boundary to the platform's limit.

use postmesh_proto::postmesh::r#type::v1::MediaReference;
use unicode_segmentation::UnicodeSegmentation;

/// URL extensions whose MIME type is inferred, with that type.
pub const KNOWN_EXTENSIONS: &[(&str, &str)] = &[
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("png", "image/png"),
    ("gif", "image/gif"),
    ("webp", "image/webp"),
    ("mp4", "video/mp4"),
    ("mov", "video/quicktime"),
    ("webm", "video/webm"),
];

/// MIME type of a media reference: its own `mime_type` (trimmed, lowercased),
/// or inferred from the extension of the URL's path (query and fragment
/// ignored, case-insensitive); None if neither.
pub fn media_type(media: &MediaReference) -> Option<String> {
    let own = media.mime_type.trim();
    if !own.is_empty() {
        return Some(own.to_ascii_lowercase());
    }
    let path = match url::Url::parse(&media.url) {
        Ok(url) => url.path().to_owned(),
        Err(_) => media.url.split(['?', '#']).next().unwrap_or_default().to_owned(),
    };
    let file = path.rsplit('/').next().unwrap_or_default();
    let (_, extension) = file.rsplit_once('.')?;
    KNOWN_EXTENSIONS
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(extension))
        .map(|(_, mime)| (*mime).to_owned())
}

/// True if `mime` is one of `accepted` (compared without parameters such as
/// `; codecs=…`, ignoring case). An empty list accepts every type.
pub fn accepts(accepted: &[String], mime: &str) -> bool {
    let essence = |t: &str| t.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let mime = essence(mime);
    accepted.is_empty() || accepted.iter().any(|a| essence(a) == mime)
}

/// `alt` cut to at most `max` code points: at the last whitespace that keeps
/// it within the limit (trailing whitespace dropped), or, for a single word
/// longer than the limit, after as many whole graphemes as fit. Unchanged if
/// it fits.
pub fn cut_alt_text(alt: &str, max: usize) -> String {
    let Some((cut, _)) = alt.char_indices().nth(max) else {
        return alt.to_owned();
    };
    let head = &alt[..cut];
    // A cut right before whitespace already falls on a word boundary.
    let at_boundary = alt[cut..].starts_with(char::is_whitespace);
    let kept = if at_boundary {
        head
    } else {
        match head.rfind(char::is_whitespace) {
            Some(space) if !head[..space].trim().is_empty() => &head[..space],
            _ => &alt[..grapheme_floor(alt, cut)],
        }
    };
    kept.trim_end().to_owned()
}

/// The last grapheme boundary of `text` at or before byte `at`, so a cut
/// never splits an emoji or a letter from its accent.
fn grapheme_floor(text: &str, at: usize) -> usize {
    text.grapheme_indices(true).map(|(start, _)| start).take_while(|&start| start <= at).last().unwrap_or(0)
}

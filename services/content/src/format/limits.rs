//! A post's content checked against one target's limits
//! (`postmesh.content.v1.PlatformVariant`, `LimitViolation`).

use std::borrow::Cow;

use postmesh_proto::postmesh::content::v1::{LimitKind, LimitViolation, PlatformVariant};
use postmesh_proto::postmesh::social::v1::RenderedPost;
use postmesh_proto::postmesh::r#type::v1::{LengthUnit, MediaReference};

use super::media::{KNOWN_EXTENSIONS, accepts, cut_alt_text, media_type};
use super::{Content, Target, format_text, length};

pub(super) fn variant(content: &Content<'_>, target: &Target<'_>) -> (PlatformVariant, Option<RenderedPost>) {
    let limits = target.limits;
    let name = target.platform_name;
    let unit = match limits.length_unit() {
        LengthUnit::Unspecified => LengthUnit::CodePoints,
        unit => unit,
    };
    let max_length = limits.max_text_length.max(0);
    let max_media = limits.max_media.max(0);

    // The first override for the platform replaces the text (the request
    // allows one per platform; any later duplicate is ignored).
    let (text, text_field) = match content.overrides.iter().position(|(p, _)| *p == target.platform) {
        Some(i) => (content.overrides[i].1.as_str(), format!("platform_overrides[{i}].text")),
        None => (content.text, "text".to_owned()),
    };
    // A platform that takes no media gets the media as links at the end of
    // the text, in every format (they are recognised as URLs like any other,
    // so each platform links them its own way). They count towards the
    // length, and no MEDIA_COUNT or MEDIA_TYPE check applies.
    let takes_media = max_media > 0;
    let text = if !takes_media && !content.media.is_empty() {
        Cow::Owned(with_media_links(text, content.media))
    } else {
        Cow::Borrowed(text)
    };
    let formatted = format_text(&text, target.format, unit);

    let mut violations = Vec::new();
    let mut violation = |kind: LimitKind, limit: i64, actual: i64, field: String, message: String| {
        violations.push(LimitViolation {
            platform: target.platform as i32,
            account_id: String::new(),
            kind: kind as i32,
            limit,
            actual,
            field,
            message,
        });
    };
    if limits.text_required && formatted.text.trim().is_empty() {
        violation(
            LimitKind::TextRequired,
            0,
            0,
            text_field.clone(),
            format!("{name} needs text; the post has none."),
        );
    }
    let length = saturate(formatted.length);
    if max_length > 0 && length > i64::from(max_length) {
        let message = format!(
            "{name} allows {max_length} {}; the text has {length}.",
            length::unit_name(unit, i64::from(max_length))
        );
        violation(LimitKind::TextLength, i64::from(max_length), length, text_field, message);
    }
    if takes_media {
        let count = saturate(content.media.len());
        if count > i64::from(max_media) {
            let items = if max_media == 1 { "media item" } else { "media items" };
            let message = format!("{name} allows {max_media} {items}; the post has {count}.");
            violation(LimitKind::MediaCount, i64::from(max_media), count, "media".to_owned(), message);
        }
        for (i, media) in content.media.iter().enumerate() {
            let field = format!("media[{i}]");
            let message = match media_type(media) {
                None => {
                    let extensions: Vec<String> =
                        KNOWN_EXTENSIONS.iter().map(|(e, _)| format!(".{e}")).collect();
                    format!(
                        "{name} needs the type of {field}: set its mime_type or use a URL ending in {}.",
                        extensions.join(", ")
                    )
                }
                Some(mime) if !accepts(&limits.media_types, &mime) => {
                    format!("{name} accepts {}; {field} is {mime}.", limits.media_types.join(", "))
                }
                Some(_) => continue,
            };
            violation(LimitKind::MediaType, 0, 0, field, message);
        }
    }

    let media: Vec<MediaReference> = if takes_media {
        let max_alt = usize::try_from(limits.max_alt_text_length).unwrap_or(0);
        content
            .media
            .iter()
            .filter_map(|m| {
                Some(MediaReference {
                    url: m.url.clone(),
                    mime_type: media_type(m)?,
                    alt_text: cut_alt_text(&m.alt_text, max_alt),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let rendered = violations.is_empty().then(|| RenderedPost {
        text: formatted.text.clone(),
        format: formatted.format as i32,
        facets: formatted.facets.clone(),
        media: media.clone(),
        language: String::new(),
    });
    let variant = PlatformVariant {
        platform: target.platform as i32,
        account_ids: target.account_ids.clone(),
        text: formatted.text,
        format: formatted.format as i32,
        length: i32::try_from(length).unwrap_or(i32::MAX),
        length_unit: unit as i32,
        max_length,
        media_count: if takes_media { i32::try_from(content.media.len()).unwrap_or(i32::MAX) } else { 0 },
        max_media,
        violations,
    };
    (variant, rendered)
}

/// `text` followed by a blank line and one media URL per line.
fn with_media_links(text: &str, media: &[MediaReference]) -> String {
    let mut out = text.trim_end().to_owned();
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    let urls: Vec<&str> = media.iter().map(|m| m.url.trim()).collect();
    out.push_str(&urls.join("\n"));
    out
}

fn saturate(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

//! Formatting posts for each platform: the post text markup (see [`markup`])
//! rendered into a platform's [`TextFormat`], its length counted the
//! platform's way ([`length`]), and the content checked against a target's
//! limits ([`variant`]). Pure functions, no I/O.
//!
//! Decisions the contract leaves open:
//! - `[label](url)` becomes `label (url)` in plain text, and only `label`
//!   with a link facet in faceted (Bluesky) text.
//! - Bold, italic and code keep only their content where the format has no
//!   markup (plain, faceted).
//! - A platform that takes no media (`max_media` 0) gets the media URLs
//!   appended to the text as links, in every format; see [`variant`].

pub mod length;
pub mod markup;
pub mod media;

mod faceted;
mod html;
mod limits;
mod markdown;
mod plain;
mod slack;

use postmesh_proto::postmesh::content::v1::PlatformVariant;
use postmesh_proto::postmesh::social::v1::{Facet, PlatformLimits, RenderedPost};
use postmesh_proto::postmesh::r#type::v1::{LengthUnit, MediaReference, Platform, TextFormat};

/// The post's text formatted for one platform.
#[derive(Debug, Clone, PartialEq)]
pub struct Formatted {
    /// The text in `format`.
    pub text: String,
    /// The markup of `text` (`TEXT_FORMAT_UNSPECIFIED` is formatted as plain).
    pub format: TextFormat,
    /// For `TEXT_FORMAT_FACETED`: links, mentions and hashtags by UTF-8 byte
    /// range of `text`. Empty for other formats.
    pub facets: Vec<Facet>,
    /// The length of `text` counted in `unit` (see [`measure`]).
    pub length: usize,
    /// How `length` is counted.
    pub unit: LengthUnit,
}

/// Formats `text` (Post.text markup) into `format` and measures it in `unit`.
pub fn format_text(text: &str, format: TextFormat, unit: LengthUnit) -> Formatted {
    let nodes = markup::parse(text);
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let mut facets = Vec::new();
    let format = match format {
        TextFormat::Unspecified => TextFormat::Plain,
        format => format,
    };
    match format {
        TextFormat::Unspecified | TextFormat::Plain => plain::render(&nodes, &mut out),
        TextFormat::Markdown => markdown::render(&nodes, &mut out),
        TextFormat::Html => html::render(&nodes, &mut out),
        TextFormat::SlackMrkdwn => slack::render(&nodes, &mut out),
        TextFormat::Faceted => faceted::render(&nodes, &mut out, &mut facets),
    }
    let length = measure(&out, format, unit);
    Formatted { text: out, format, facets, length, unit }
}

/// Length of an already formatted text, counted the platform's way: for HTML
/// after the markup is removed (entities count as their character), for
/// every other format the text as sent, markup included (Discord and Slack
/// count it; plain and faceted text has none).
pub fn measure(text: &str, format: TextFormat, unit: LengthUnit) -> usize {
    match format {
        TextFormat::Html => length::count(&length::html_visible_text(text), unit),
        _ => length::count(text, unit),
    }
}

/// Everything a variant check needs about one target.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The target's platform.
    pub platform: Platform,
    /// The platform's name for messages, such as "Bluesky".
    pub platform_name: &'a str,
    /// The target accounts this variant is for; empty when previewing a
    /// platform without an account.
    pub account_ids: Vec<String>,
    /// The platform's (or account's) limits.
    pub limits: &'a PlatformLimits,
    /// The markup the platform takes (`PlatformCapabilities.text_format`).
    pub format: TextFormat,
}

/// Content fields of a post (create/update/preview requests share them).
#[derive(Debug, Clone, Copy)]
pub struct Content<'a> {
    /// `text`, in Post.text markup.
    pub text: &'a str,
    /// `media`, in request order.
    pub media: &'a [MediaReference],
    /// `platform_overrides` as (platform, text), in request order, so that
    /// violations can name `platform_overrides[i].text`.
    pub overrides: &'a [(Platform, String)],
}

/// Formats and checks the content for one target: the variant shown to users
/// (violations included) and, when there are no violations, the
/// [`RenderedPost`] a publishing job carries (media with MIME resolved and
/// alt text cut; `language` left empty for the caller to fill).
///
/// - The text is the platform's override if there is one (the first, if the
///   request has several), else the post's text; text violations name
///   `platform_overrides[i].text` or `text` accordingly (TEXT_REQUIRED too).
/// - TEXT_LENGTH when `max_text_length` > 0 and the formatted text is longer,
///   counted in `length_unit` (unspecified counts code points); TEXT_REQUIRED
///   when the platform needs text and the formatted text is blank.
/// - `max_media` 0 (takes no media): the media URLs are appended to the text,
///   after a blank line, one per line, and formatted like any URL (linked
///   where the format links). They count towards the length; no media check
///   applies and the rendered post carries no media.
/// - Otherwise MEDIA_COUNT (field `media`) when there are more than
///   `max_media` items, and MEDIA_TYPE (field `media[i]`) for an item whose
///   type is unknown (no `mime_type` and no known URL extension) or not in
///   `media_types` (an empty list accepts any known type).
/// - Violations carry no `account_id`: the caller sets it when the limits are
///   an account's own or the account is the problem.
pub fn variant(content: &Content<'_>, target: &Target<'_>) -> (PlatformVariant, Option<RenderedPost>) {
    limits::variant(content, target)
}

/// MIME type of a media reference: its own, or inferred from the URL extension
/// (jpg/jpeg/png/gif/webp/mp4/mov/webm); None if neither.
pub fn media_type(media: &MediaReference) -> Option<String> {
    media::media_type(media)
}

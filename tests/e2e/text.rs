//! Formatting, length counting and template rendering of post texts: the
//! pure functions of `postmesh_content::format` and
//! `postmesh_content::templates`, as examples and as properties.

use std::collections::BTreeMap;

use postmesh_content::format::markup::{self, Inline};
use postmesh_content::format::{
    Content, Target, format_text, length, measure, media, media_type, variant as variant_for,
};
use postmesh_content::templates::{self, ParsedTemplate, TemplateSyntaxError};
use postmesh_proto::postmesh::content::v1::{LimitKind, LimitViolation};
use postmesh_proto::postmesh::social::v1::{Facet, PlatformLimits, facet::Feature};
use postmesh_proto::postmesh::r#type::v1::{LengthUnit, MediaReference, Platform, TextFormat};
use proptest::prelude::*;

const FORMATS: [TextFormat; 5] =
    [TextFormat::Plain, TextFormat::Markdown, TextFormat::Html, TextFormat::SlackMrkdwn, TextFormat::Faceted];
const UNITS: [LengthUnit; 5] = [
    LengthUnit::Graphemes,
    LengthUnit::CodePoints,
    LengthUnit::Utf16CodeUnits,
    LengthUnit::Utf8Bytes,
    LengthUnit::MastodonWeighted,
];

/// A sentence using every construct of the markup subset.
const RICH: &str =
    "**Big** news: _see_ `code` at [our site](https://example.com/a_b) by @alice.bsky.social #launch_day 2*3";

fn formatted(text: &str, format: TextFormat) -> String {
    format_text(text, format, LengthUnit::CodePoints).text
}

fn text(s: &str) -> Inline {
    Inline::Text(s.to_owned())
}

// ---- the markup parser ----

#[test]
fn the_parser_recognises_every_construct() {
    assert_eq!(
        markup::parse(RICH),
        vec![
            Inline::Bold(vec![text("Big")]),
            text(" news: "),
            Inline::Italic(vec![text("see")]),
            text(" "),
            Inline::Code("code".to_owned()),
            text(" at "),
            Inline::Link { label: "our site".to_owned(), url: "https://example.com/a_b".to_owned() },
            text(" by "),
            Inline::Mention("alice.bsky.social".to_owned()),
            text(" "),
            Inline::Hashtag("launch_day".to_owned()),
            text(" 2*3"),
        ]
    );
}

#[test]
fn unmatched_delimiters_stay_literal() {
    for literal in
        ["**not bold and _not italic and `not code", "a ** b ** c", "a _ b _ c", "``", "****", "__"]
    {
        assert_eq!(markup::parse(literal), vec![text(literal)], "{literal:?}");
    }
}

#[test]
fn underscores_inside_words_and_urls_are_not_italics() {
    let nodes = markup::parse("use snake_case_words and https://example.com/some_path_here ok");
    assert_eq!(
        nodes,
        vec![
            text("use snake_case_words and "),
            Inline::Url("https://example.com/some_path_here".to_owned()),
            text(" ok"),
        ]
    );
    assert_eq!(
        formatted("snake_case_words https://example.com/a_b_c", TextFormat::Markdown),
        "snake\\_case\\_words https://example.com/a_b_c"
    );
}

#[test]
fn emphasis_nests_and_same_kind_nesting_is_flattened() {
    assert_eq!(
        markup::parse("**bold _both_ bold**"),
        vec![Inline::Bold(vec![text("bold "), Inline::Italic(vec![text("both")]), text(" bold")])]
    );
    // `_a **b_ c**`: the pairs would cross, so the bold one stays literal.
    assert_eq!(markup::parse("_a **b_ c**"), vec![Inline::Italic(vec![text("a **b")]), text(" c**")]);
    assert_eq!(formatted("__x__", TextFormat::Markdown), "_x_");
}

#[test]
fn markdown_links_need_an_http_url() {
    for literal in ["[label](ftp://example.com)", "[label](javascript:alert(1))", "[](https://example.com)"] {
        assert!(
            !markup::parse(literal).iter().any(|n| matches!(n, Inline::Link { .. })),
            "{literal:?} is not a link"
        );
    }
    assert_eq!(
        markup::parse("[Rust](https://en.wikipedia.org/wiki/Rust_(language))!"),
        vec![
            Inline::Link {
                label: "Rust".to_owned(),
                url: "https://en.wikipedia.org/wiki/Rust_(language)".to_owned()
            },
            text("!")
        ]
    );
}

#[test]
fn trailing_punctuation_is_not_part_of_a_url() {
    let urls = |s: &str| -> Vec<String> {
        markup::parse(s)
            .into_iter()
            .filter_map(|n| match n {
                Inline::Url(url) => Some(url),
                _ => None,
            })
            .collect()
    };
    assert_eq!(urls("Visit https://example.com/path, now."), ["https://example.com/path"]);
    assert_eq!(urls("(see https://example.com/?q=1!)"), ["https://example.com/?q=1"]);
    assert_eq!(
        urls("(https://en.wikipedia.org/wiki/Rust_(programming_language))."),
        ["https://en.wikipedia.org/wiki/Rust_(programming_language)"]
    );
    assert_eq!(urls("'https://example.com/a.'"), ["https://example.com/a"]);
    assert!(urls("https:// and xhttps://example.com and https://").is_empty());
}

#[test]
fn mentions_and_hashtags_are_recognised_where_they_stand_alone() {
    assert_eq!(
        markup::parse("mail bob@example.com, ping @alice@mastodon.social and @carol."),
        vec![
            text("mail bob@example.com, ping "),
            Inline::Mention("alice@mastodon.social".to_owned()),
            text(" and "),
            Inline::Mention("carol".to_owned()),
            text("."),
        ]
    );
    let tags: Vec<Inline> = markup::parse("#123 #rust2024 #cafe\u{301} a#b #_x #1st #")
        .into_iter()
        .filter(|n| matches!(n, Inline::Hashtag(_)))
        .collect();
    assert_eq!(
        tags,
        [
            Inline::Hashtag("rust2024".to_owned()),
            Inline::Hashtag("cafe\u{301}".to_owned()),
            Inline::Hashtag("_x".to_owned()),
            Inline::Hashtag("1st".to_owned()),
        ]
    );
}

#[test]
fn deeply_nested_emphasis_does_not_overflow_the_stack() {
    let n = 20_000;
    let input = format!("{}{}", "_x **x ".repeat(n), "x** x_ ".repeat(n));
    assert_eq!(formatted(&input, TextFormat::Plain), "x x ".repeat(2 * n));
    let html = formatted(&input, TextFormat::Html);
    assert_eq!(html.matches("<b>").count(), html.matches("</b>").count());
    assert!(html.starts_with("<i>x <b>x x"), "{}", &html[..40]);
}

#[test]
fn hostile_text_formats_in_linear_time() {
    // Each of these took seconds when every `[`, `https://` or `<` rescanned
    // the rest of the text; a 40,000-character post must stay fast.
    let inputs = [
        "[".repeat(40_000),
        "[a](https://x".repeat(3_000),
        "https://[".repeat(4_000),
        format!("https://x.com/{}", ")".repeat(39_000)),
        format!("{}{}", "**a ".repeat(5_000), " a_".repeat(5_000)),
        "<".repeat(40_000),
    ];
    for input in &inputs {
        let started = std::time::Instant::now();
        for format in FORMATS {
            let out = format_text(input, format, LengthUnit::MastodonWeighted);
            assert!(out.length > 0);
            measure(input, TextFormat::Html, LengthUnit::Utf16CodeUnits);
        }
        let elapsed = started.elapsed();
        assert!(elapsed < std::time::Duration::from_secs(2), "{elapsed:?} for {}…", &input[..20]);
    }
}

// ---- one renderer per format ----

#[test]
fn plain_text_drops_the_markup_and_spells_out_links() {
    assert_eq!(
        formatted(RICH, TextFormat::Plain),
        "Big news: see code at our site (https://example.com/a_b) by @alice.bsky.social #launch_day 2*3"
    );
    assert_eq!(
        formatted("[https://example.com](https://example.com/)", TextFormat::Plain),
        "https://example.com/"
    );
}

#[test]
fn discord_markdown_keeps_the_subset_and_escapes_the_rest() {
    assert_eq!(
        formatted(RICH, TextFormat::Markdown),
        "**Big** news: _see_ `code` at [our site](https://example.com/a_b) by @alice.bsky.social #launch\\_day 2\\*3"
    );
    assert_eq!(
        formatted("# not a heading\n> not a quote\n~~no strike~~ ||no spoiler|| \\", TextFormat::Markdown),
        "\\# not a heading\n\\> not a quote\n\\~\\~no strike\\~\\~ \\|\\|no spoiler\\|\\| \\\\"
    );
    assert_eq!(formatted("`a_b*c`", TextFormat::Markdown), "`a_b*c`", "code is verbatim");
}

#[test]
fn telegram_html_uses_its_tags_and_escapes_everything_else() {
    assert_eq!(
        formatted(RICH, TextFormat::Html),
        "<b>Big</b> news: <i>see</i> <code>code</code> at <a href=\"https://example.com/a_b\">our site</a> \
         by @alice.bsky.social #launch_day 2*3"
    );
    assert_eq!(
        formatted("a < b && c > d <script>", TextFormat::Html),
        "a &lt; b &amp;&amp; c &gt; d &lt;script&gt;"
    );
    assert_eq!(
        formatted("`<br>` [a<\"b\"](https://x.com/?a=1&b=2)", TextFormat::Html),
        "<code>&lt;br&gt;</code> <a href=\"https://x.com/?a=1&amp;b=2\">a&lt;&quot;b&quot;</a>"
    );
}

#[test]
fn slack_mrkdwn_uses_its_syntax_and_escapes_control_characters() {
    assert_eq!(
        formatted(RICH, TextFormat::SlackMrkdwn),
        "*Big* news: _see_ `code` at <https://example.com/a_b|our site> by @alice.bsky.social #launch_day 2*3"
    );
    assert_eq!(
        formatted("Q&A <soon> https://example.com/?a=1&b=2|3", TextFormat::SlackMrkdwn),
        "Q&amp;A &lt;soon&gt; <https://example.com/?a=1&amp;b=2%7C3>"
    );
}

/// The facet's slice of `text` and its feature.
fn facet_parts<'a>(text: &'a str, facet: &Facet) -> (&'a str, Feature) {
    let (start, end) = (facet.byte_start as usize, facet.byte_end as usize);
    (&text[start..end], facet.feature.clone().expect("a feature"))
}

#[test]
fn bluesky_gets_plain_text_with_facets_by_byte_range() {
    let input = "🎉 **Launch** by @alice.bsky.social at https://example.com/x_y and [docs](https://docs.example.com) \
                 #rust_lang, not @bob or @carol@mastodon.social";
    let out = format_text(input, TextFormat::Faceted, LengthUnit::Graphemes);
    assert_eq!(
        out.text,
        "🎉 Launch by @alice.bsky.social at https://example.com/x_y and docs #rust_lang, not @bob or \
         @carol@mastodon.social"
    );
    let parts: Vec<(&str, Feature)> = out.facets.iter().map(|f| facet_parts(&out.text, f)).collect();
    assert_eq!(
        parts,
        [
            ("@alice.bsky.social", Feature::MentionHandle("alice.bsky.social".to_owned())),
            ("https://example.com/x_y", Feature::LinkUri("https://example.com/x_y".to_owned())),
            ("docs", Feature::LinkUri("https://docs.example.com".to_owned())),
            ("#rust_lang", Feature::Tag("rust_lang".to_owned())),
        ]
    );
    // The emoji takes 4 bytes: ranges are bytes, not characters.
    assert_eq!(out.facets[0].byte_start as usize, out.text.find('@').unwrap());
    assert_eq!(out.facets[0].byte_start, 4 + 1 + 6 + 1 + 2 + 1);
}

#[test]
fn emoji_pass_through_every_format() {
    let input = "👨‍👩‍👧 **🎉** _é_ #día";
    let expected = [
        (TextFormat::Plain, "👨‍👩‍👧 🎉 é #día"),
        (TextFormat::Markdown, "👨‍👩‍👧 **🎉** _é_ #día"),
        (TextFormat::Html, "👨‍👩‍👧 <b>🎉</b> <i>é</i> #día"),
        (TextFormat::SlackMrkdwn, "👨‍👩‍👧 *🎉* _é_ #día"),
        (TextFormat::Faceted, "👨‍👩‍👧 🎉 é #día"),
    ];
    for (format, want) in expected {
        assert_eq!(formatted(input, format), want, "{format:?}");
    }
}

// ---- length units ----

#[test]
fn each_unit_counts_its_own_way() {
    let family = "👨‍👩‍👧";
    let counts: Vec<usize> = UNITS[..4].iter().map(|&u| length::count(family, u)).collect();
    assert_eq!(counts, [1, 5, 8, 18]);
    let accented = "e\u{301}";
    let counts: Vec<usize> = UNITS[..4].iter().map(|&u| length::count(accented, u)).collect();
    assert_eq!(counts, [1, 2, 2, 3]);
}

#[test]
fn mastodon_counts_every_url_as_23_and_remote_mentions_as_local() {
    let url = format!("https://example.com/{}", "a".repeat(40));
    assert_eq!(url.chars().count(), 60);
    let text = format!("Read {url} now");
    assert_eq!(length::count(&text, LengthUnit::CodePoints), 69);
    assert_eq!(length::count(&text, LengthUnit::MastodonWeighted), 5 + 23 + 4);
    assert_eq!(length::count("@alice@mastodon.social hi", LengthUnit::MastodonWeighted), 9);
    assert_eq!(length::count("@alice hi", LengthUnit::MastodonWeighted), 9);
    let link = format_text(&format!("[docs]({url})"), TextFormat::Plain, LengthUnit::MastodonWeighted);
    assert_eq!(link.text, format!("docs ({url})"));
    assert_eq!(link.length, 4 + 2 + 23 + 1);
}

#[test]
fn telegram_counts_utf16_after_removing_markup() {
    let html = "<b>a</b> &amp; <a href=\"https://x.com\">x</a> 😀 &#x1F600;";
    assert_eq!(measure(html, TextFormat::Html, LengthUnit::Utf16CodeUnits), 11);
    assert_eq!(length::html_visible_text(html), "a & x 😀 😀");
    assert_eq!(length::html_visible_text("a &bogus; < b"), "a &bogus; < b");
    let out = format_text("**hi** <3", TextFormat::Html, LengthUnit::Utf16CodeUnits);
    assert_eq!((out.text.as_str(), out.length), ("<b>hi</b> &lt;3", 5));
}

// ---- limits ----

fn bluesky_limits() -> PlatformLimits {
    PlatformLimits {
        max_text_length: 300,
        length_unit: LengthUnit::Graphemes as i32,
        text_required: false,
        max_media: 4,
        media_types: ["image/jpeg", "image/png", "image/gif", "image/webp"].map(String::from).to_vec(),
        max_media_bytes: 1_000_000,
        max_alt_text_length: 20,
    }
}

fn bluesky(limits: &PlatformLimits) -> Target<'_> {
    Target {
        platform: Platform::Bluesky,
        platform_name: "Bluesky",
        account_ids: vec!["acct-1".to_owned()],
        limits,
        format: TextFormat::Faceted,
    }
}

fn image(url: &str) -> MediaReference {
    MediaReference { url: url.to_owned(), ..MediaReference::default() }
}

fn kinds(violations: &[LimitViolation]) -> Vec<(LimitKind, &str, i64, i64)> {
    violations.iter().map(|v| (v.kind(), v.field.as_str(), v.limit, v.actual)).collect()
}

#[test]
fn a_bluesky_post_over_300_graphemes_is_refused_with_the_limit_named() {
    let limits = bluesky_limits();
    let long = "👍🏽".repeat(312);
    let content = Content { text: &long, media: &[], overrides: &[] };
    let (variant, rendered) = variant_for(&content, &bluesky(&limits));
    assert!(rendered.is_none());
    assert_eq!(kinds(&variant.violations), [(LimitKind::TextLength, "text", 300, 312)]);
    assert_eq!(variant.violations[0].message, "Bluesky allows 300 graphemes; the text has 312.");
    assert_eq!(variant.violations[0].platform(), Platform::Bluesky);
    assert_eq!(
        (variant.length, variant.max_length, variant.length_unit()),
        (312, 300, LengthUnit::Graphemes)
    );
    assert_eq!(variant.account_ids, ["acct-1"]);

    // 300 of the same emoji are 600 code points but within the limit.
    let fits = "👍🏽".repeat(300);
    let content = Content { text: &fits, ..content };
    let (variant, rendered) = variant_for(&content, &bluesky(&limits));
    assert!(variant.violations.is_empty(), "{:?}", variant.violations);
    assert_eq!(rendered.expect("publishable").text, fits);
}

#[test]
fn media_count_and_type_violations_name_the_item() {
    let limits = bluesky_limits();
    let media = [
        image("https://cdn.example.com/a.png"),
        MediaReference { mime_type: "video/mp4".to_owned(), ..image("https://cdn.example.com/clip") },
        image("https://cdn.example.com/file"),
        image("https://cdn.example.com/b.jpg"),
        image("https://cdn.example.com/c.gif"),
    ];
    let content = Content { text: "pics", media: &media, overrides: &[] };
    let (variant, rendered) = variant_for(&content, &bluesky(&limits));
    assert!(rendered.is_none());
    assert_eq!(
        kinds(&variant.violations),
        [
            (LimitKind::MediaCount, "media", 4, 5),
            (LimitKind::MediaType, "media[1]", 0, 0),
            (LimitKind::MediaType, "media[2]", 0, 0),
        ]
    );
    assert_eq!(variant.violations[0].message, "Bluesky allows 4 media items; the post has 5.");
    assert!(
        variant.violations[1].message.starts_with("Bluesky accepts image/jpeg"),
        "{}",
        variant.violations[1].message
    );
    assert!(variant.violations[1].message.contains("video/mp4"));
    assert!(variant.violations[2].message.contains("mime_type"), "{}", variant.violations[2].message);
    assert_eq!((variant.media_count, variant.max_media), (5, 4));
}

#[test]
fn overrides_are_used_for_their_platform_and_named_by_index() {
    let limits = bluesky_limits();
    let long = "x".repeat(301);
    let overrides = [(Platform::Mastodon, "for mastodon".to_owned()), (Platform::Bluesky, long.clone())];
    let content = Content { text: "short", media: &[], overrides: &overrides };
    let (variant, _) = variant_for(&content, &bluesky(&limits));
    assert_eq!(variant.text, long);
    assert_eq!(kinds(&variant.violations), [(LimitKind::TextLength, "platform_overrides[1].text", 300, 301)]);

    let mastodon_limits = PlatformLimits {
        max_text_length: 500,
        length_unit: LengthUnit::MastodonWeighted as i32,
        max_media: 4,
        ..PlatformLimits::default()
    };
    let mastodon = Target {
        platform: Platform::Mastodon,
        platform_name: "Mastodon",
        account_ids: vec![],
        limits: &mastodon_limits,
        format: TextFormat::Plain,
    };
    let (variant, rendered) = variant_for(&content, &mastodon);
    assert_eq!(variant.text, "for mastodon");
    assert_eq!(rendered.expect("publishable").text, "for mastodon");
}

#[test]
fn a_platform_needing_text_refuses_a_post_without() {
    let limits = PlatformLimits {
        max_text_length: 500,
        length_unit: LengthUnit::CodePoints as i32,
        text_required: true,
        max_media: 4,
        media_types: vec!["image/png".to_owned()],
        ..PlatformLimits::default()
    };
    let target = Target { platform_name: "Twitch", platform: Platform::Twitch, ..bluesky(&limits) };
    let media = [image("https://cdn.example.com/a.png")];
    let (variant, rendered) = variant_for(&Content { text: "  \n", media: &media, overrides: &[] }, &target);
    assert!(rendered.is_none());
    assert_eq!(kinds(&variant.violations), [(LimitKind::TextRequired, "text", 0, 0)]);
    assert_eq!(variant.violations[0].message, "Twitch needs text; the post has none.");
}

#[test]
fn a_platform_taking_no_media_gets_them_as_links() {
    let limits = PlatformLimits {
        max_text_length: 4096,
        length_unit: LengthUnit::Utf16CodeUnits as i32,
        max_media: 0,
        ..PlatformLimits::default()
    };
    let target = Target {
        platform: Platform::Telegram,
        platform_name: "Telegram",
        account_ids: vec![],
        limits: &limits,
        format: TextFormat::Html,
    };
    let media = [image("https://cdn.example.com/a.png?x=1&y=2"), image("https://cdn.example.com/b.mp4")];
    let (variant, rendered) =
        variant_for(&Content { text: "**New** video ", media: &media, overrides: &[] }, &target);
    assert!(variant.violations.is_empty(), "{:?}", variant.violations);
    let expected =
        "<b>New</b> video\n\nhttps://cdn.example.com/a.png?x=1&amp;y=2\nhttps://cdn.example.com/b.mp4";
    assert_eq!(variant.text, expected);
    assert_eq!(variant.length, 9 + 2 + 37 + 1 + 29);
    assert_eq!(variant.media_count, 0);
    let rendered = rendered.expect("publishable");
    assert!(rendered.media.is_empty());
    assert_eq!(rendered.text, expected);
    assert_eq!(rendered.format(), TextFormat::Html);
}

#[test]
fn a_rendered_post_carries_resolved_media_and_facets() {
    let limits = bluesky_limits();
    let media = [
        MediaReference {
            url: "https://cdn.example.com/pic.JPG?size=large".to_owned(),
            mime_type: String::new(),
            alt_text: "A cat sitting on a warm windowsill".to_owned(),
        },
        MediaReference {
            url: "https://cdn.example.com/p".to_owned(),
            mime_type: "IMAGE/PNG".to_owned(),
            alt_text: "short".to_owned(),
        },
    ];
    let content = Content { text: "Hi #cats", media: &media, overrides: &[] };
    let (variant, rendered) = variant_for(&content, &bluesky(&limits));
    assert!(variant.violations.is_empty(), "{:?}", variant.violations);
    let rendered = rendered.expect("publishable");
    let resolved: Vec<(&str, &str)> =
        rendered.media.iter().map(|m| (m.mime_type.as_str(), m.alt_text.as_str())).collect();
    assert_eq!(resolved, [("image/jpeg", "A cat sitting on a"), ("image/png", "short")]);
    assert_eq!(facet_parts(&rendered.text, &rendered.facets[0]), ("#cats", Feature::Tag("cats".to_owned())));
    assert_eq!(rendered.language, "");
}

#[test]
fn media_types_come_from_the_reference_or_the_url_extension() {
    let with = |url: &str, mime: &str| MediaReference { mime_type: mime.to_owned(), ..image(url) };
    assert_eq!(media_type(&with("https://x.com/file", " Image/PNG ")).as_deref(), Some("image/png"));
    assert_eq!(media_type(&image("https://x.com/v.MOV")).as_deref(), Some("video/quicktime"));
    assert_eq!(media_type(&image("https://x.com/a.webp#frag")).as_deref(), Some("image/webp"));
    assert_eq!(media_type(&image("https://x.com/a.jpeg?w=1.png")).as_deref(), Some("image/jpeg"));
    assert_eq!(media_type(&image("https://x.com/clip.webm")).as_deref(), Some("video/webm"));
    assert_eq!(media_type(&image("https://x.com/file")), None);
    assert_eq!(media_type(&image("https://x.com/dir.png/file")), None);
    assert_eq!(media_type(&image("https://x.com/doc.pdf")), None);
}

#[test]
fn alt_text_is_cut_at_a_word_boundary() {
    assert_eq!(media::cut_alt_text("A cat sitting on a warm windowsill", 20), "A cat sitting on a");
    assert_eq!(media::cut_alt_text("A cat sat", 5), "A cat");
    assert_eq!(media::cut_alt_text("fits", 4), "fits");
    assert_eq!(media::cut_alt_text("Supercalifragilistic", 5), "Super");
    assert_eq!(media::cut_alt_text("👍🏽👍🏽", 3), "👍🏽", "never half an emoji");
    assert_eq!(media::cut_alt_text("anything", 0), "");
}

// ---- templates ----

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn a_template_renders_with_values_over_defaults() {
    let template =
        ParsedTemplate::parse("Hi {name}, {streamer.name} is live! {name} {{literal}} }}").unwrap();
    assert_eq!(template.variables(), ["name", "streamer.name"]);
    let rendered =
        template.render(&map(&[("name", "Ann"), ("unused", "x")]), &map(&[("streamer.name", "Bob")]));
    assert_eq!(
        rendered,
        Ok(("Hi Ann, Bob is live! Ann {literal} }".to_owned(), vec!["streamer.name".to_owned()]))
    );
    let rendered =
        template.render(&map(&[("name", "Ann"), ("streamer.name", "Cy")]), &map(&[("name", "Zed")]));
    assert_eq!(rendered, Ok(("Hi Ann, Cy is live! Ann {literal} }".to_owned(), vec![])));
}

#[test]
fn rendering_lists_every_missing_variable_in_order_of_first_use() {
    let template = ParsedTemplate::parse("{b} {a} {b} {c} {_d.e}").unwrap();
    assert_eq!(template.variables(), ["b", "a", "c", "_d.e"]);
    assert_eq!(
        template.render(&map(&[("c", "3")]), &BTreeMap::new()),
        Err(vec!["b".to_owned(), "a".to_owned(), "_d.e".to_owned()])
    );
}

#[test]
fn malformed_placeholders_are_refused_with_their_position() {
    let cases: [(&str, usize, &str); 8] = [
        ("Hello {name", 7, "unclosed placeholder"),
        ("Hi {}", 4, "empty placeholder"),
        ("{1st}", 1, "starts with a letter or `_`"),
        ("ab {a b}", 4, "` ` is not allowed"),
        ("x } y", 3, "single `}`"),
        ("é {a-b}", 3, "`-` is not allowed"),
        ("{a}}", 4, "single `}`"),
        ("{{a}", 4, "single `}`"),
    ];
    for (body, position, message) in cases {
        let error = ParsedTemplate::parse(body).expect_err(body);
        assert_eq!(error.position, position, "{body:?}: {error}");
        assert!(error.message.contains(message), "{body:?}: {error}");
        assert!(error.to_string().ends_with(&format!(" at character {position}")), "{error}");
    }
    let error: TemplateSyntaxError = ParsedTemplate::parse("{ok} {bad").unwrap_err();
    assert_eq!(
        error.to_string(),
        "unclosed placeholder `{bad`: close it with `}` or write `{{` for a literal brace at character 6"
    );
}

// ---- properties ----

/// Strings dense in markup, entities, URLs, mentions, hashtags and emoji.
fn markup_soup() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        prop::sample::select(vec![
            "**",
            "_",
            "`",
            "[",
            "]",
            "(",
            ")",
            "](",
            "*",
            "\\",
            "|",
            "~",
            "#",
            "@",
            ".",
            " ",
            "\n",
            "<b>",
            "&amp;",
            "&#",
            "https://ex.com/a_b",
            "http://",
            "https://",
            "@al.bsky.social",
            "@u@m.social",
            "#tag",
            "#12",
            "é",
            "e\u{301}",
            "👨‍👩‍👧",
            "👍🏽",
            "\u{200d}",
        ])
        .prop_map(str::to_owned),
        "[a-z0-9]{1,4}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(atom, 0..40).prop_map(|atoms| atoms.concat())
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![markup_soup(), any::<String>()]
}

/// One generated piece of a post, with the text and facet it must produce on Bluesky.
#[derive(Debug, Clone)]
struct Piece {
    markup: String,
    shown: String,
    facet: Option<(String, Feature)>,
}

fn url() -> impl Strategy<Value = String> {
    ("[a-z]{1,8}", "[a-z0-9_]{0,6}[a-z0-9]").prop_map(|(host, path)| format!("https://{host}.com/{path}"))
}

fn piece() -> impl Strategy<Value = Piece> {
    let plain = |s: String| Piece { markup: s.clone(), shown: s, facet: None };
    prop_oneof![
        "[a-zA-Z0-9]{1,6}".prop_map(plain),
        prop::sample::select(vec!["🎉", "👨‍👩‍👧", "é", "e\u{301}", "日本"])
            .prop_map(move |s| plain(s.to_owned())),
        "[a-z]{1,6}".prop_map(|w| Piece { markup: format!("**{w}**"), shown: w, facet: None }),
        "[a-z]{1,6}".prop_map(|w| Piece { markup: format!("_{w}_"), shown: w, facet: None }),
        url().prop_map(|u| Piece {
            markup: u.clone(),
            shown: u.clone(),
            facet: Some((u.clone(), Feature::LinkUri(u)))
        }),
        ("[a-z]{1,6}( [a-z]{1,6})?", url()).prop_map(|(label, u)| Piece {
            markup: format!("[{label}]({u})"),
            shown: label.clone(),
            facet: Some((label, Feature::LinkUri(u))),
        }),
        "[a-z][a-z0-9]{0,6}\\.bsky\\.social".prop_map(|h| Piece {
            markup: format!("@{h}"),
            shown: format!("@{h}"),
            facet: Some((format!("@{h}"), Feature::MentionHandle(h))),
        }),
        "[a-z_][a-z0-9_]{0,8}".prop_map(|t| Piece {
            markup: format!("#{t}"),
            shown: format!("#{t}"),
            facet: Some((format!("#{t}"), Feature::Tag(t))),
        }),
    ]
}

/// Template body pieces: literal text or a variable name.
fn template_parts(literal: BoxedStrategy<String>) -> impl Strategy<Value = Vec<Result<String, String>>> {
    let part = prop_oneof![literal.prop_map(Ok), "[a-zA-Z_][a-zA-Z0-9_.]{0,8}".prop_map(Err)];
    prop::collection::vec(part, 0..12)
}

/// The body for `parts`, the values for its variables and the expected rendering.
fn body_and_expected(
    parts: &[Result<String, String>],
    value_of: impl Fn(&str) -> String,
) -> (String, BTreeMap<String, String>, String) {
    let (mut body, mut values, mut expected) = (String::new(), BTreeMap::new(), String::new());
    for part in parts {
        match part {
            Ok(literal) => {
                body.push_str(&templates::escape(literal));
                expected.push_str(literal);
            }
            Err(name) => {
                body.push_str(&format!("{{{name}}}"));
                let value = values.entry(name.clone()).or_insert_with(|| value_of(name)).clone();
                expected.push_str(&value);
            }
        }
    }
    (body, values, expected)
}

proptest! {
    #[test]
    fn formatting_never_panics_and_measures_its_own_output(input in any_text()) {
        for format in FORMATS {
            for unit in UNITS {
                let out = format_text(&input, format, unit);
                prop_assert_eq!(out.length, measure(&out.text, format, unit));
                prop_assert_eq!(out.format, format);
                prop_assert!(format == TextFormat::Faceted || out.facets.is_empty());
            }
        }
    }

    #[test]
    fn facet_ranges_lie_on_char_boundaries_and_slice_to_their_feature(input in any_text()) {
        let out = format_text(&input, TextFormat::Faceted, LengthUnit::Graphemes);
        let mut previous_end = 0;
        for facet in &out.facets {
            let (start, end) = (facet.byte_start as usize, facet.byte_end as usize);
            prop_assert!(previous_end <= start && start < end && end <= out.text.len(), "{:?}", facet);
            prop_assert!(out.text.is_char_boundary(start) && out.text.is_char_boundary(end));
            let slice = &out.text[start..end];
            match facet.feature.as_ref().expect("a feature") {
                Feature::MentionHandle(handle) => prop_assert_eq!(slice, format!("@{handle}")),
                Feature::Tag(tag) => prop_assert_eq!(slice, format!("#{tag}")),
                Feature::LinkUri(uri) => prop_assert!(uri.starts_with("http") && !slice.trim().is_empty()),
            }
            previous_end = end;
        }
    }

    #[test]
    fn generated_posts_get_exactly_their_facets(pieces in prop::collection::vec(piece(), 0..12)) {
        let input: Vec<&str> = pieces.iter().map(|p| p.markup.as_str()).collect();
        let out = format_text(&input.join(" "), TextFormat::Faceted, LengthUnit::Graphemes);
        let shown: Vec<&str> = pieces.iter().map(|p| p.shown.as_str()).collect();
        prop_assert_eq!(&out.text, &shown.join(" "));
        let expected: Vec<(String, Feature)> = pieces.iter().filter_map(|p| p.facet.clone()).collect();
        let actual: Vec<(String, Feature)> = out
            .facets
            .iter()
            .map(|f| {
                let (slice, feature) = facet_parts(&out.text, f);
                (slice.to_owned(), feature)
            })
            .collect();
        prop_assert_eq!(actual, expected);
    }

    #[test]
    fn telegram_shows_the_same_text_as_bluesky(input in any_text()) {
        let html = format_text(&input, TextFormat::Html, LengthUnit::CodePoints);
        let faceted = format_text(&input, TextFormat::Faceted, LengthUnit::CodePoints);
        prop_assert_eq!(length::html_visible_text(&html.text), faceted.text);
        prop_assert_eq!(html.length, faceted.length);
    }

    #[test]
    fn graphemes_never_outnumber_code_points_nor_code_points_utf16_units(input in any_text()) {
        let [graphemes, code_points, utf16, bytes] =
            [LengthUnit::Graphemes, LengthUnit::CodePoints, LengthUnit::Utf16CodeUnits, LengthUnit::Utf8Bytes]
                .map(|unit| length::count(&input, unit));
        prop_assert!(graphemes <= code_points, "{} > {}", graphemes, code_points);
        prop_assert!(code_points <= utf16, "{} > {}", code_points, utf16);
        prop_assert!(utf16 <= bytes, "{} > {}", utf16, bytes);
        prop_assert_eq!(graphemes == 0, input.is_empty());
    }

    #[test]
    fn a_template_with_every_variable_given_leaves_no_placeholder(
        parts in template_parts("[^{}]{0,12}".boxed())
    ) {
        let (body, values, expected) = body_and_expected(&parts, |name| format!("<{}>", name.len()));
        let template = ParsedTemplate::parse(&body).expect("generated bodies parse");
        let (text, defaulted) = template.render(&values, &BTreeMap::new()).expect("every variable given");
        prop_assert!(defaulted.is_empty());
        for name in values.keys() {
            let placeholder = format!("{{{name}}}");
            prop_assert!(!text.contains(&placeholder), "{} left in {:?}", placeholder, text);
        }
        prop_assert_eq!(text, expected);
    }

    #[test]
    fn literal_braces_round_trip_through_escaping(
        parts in template_parts(any::<String>().boxed()),
        literal in any::<String>(),
    ) {
        let template = ParsedTemplate::parse(&templates::escape(&literal)).expect("escaped text parses");
        prop_assert!(template.variables().is_empty());
        prop_assert_eq!(template.render(&BTreeMap::new(), &BTreeMap::new()), Ok((literal, vec![])));

        let (body, values, expected) = body_and_expected(&parts, |name| format!("{{{name}}}"));
        let template = ParsedTemplate::parse(&body).expect("generated bodies parse");
        let mut first_use: Vec<String> = Vec::new();
        for name in parts.iter().filter_map(|p| p.as_ref().err()) {
            if !first_use.contains(name) {
                first_use.push(name.clone());
            }
        }
        prop_assert_eq!(template.variables(), first_use);
        prop_assert_eq!(template.render(&values, &BTreeMap::new()), Ok((expected, vec![])));
    }

    #[test]
    fn template_parsing_never_panics_and_points_inside_the_body(body in any_text()) {
        if let Err(error) = ParsedTemplate::parse(&body) {
            prop_assert!(error.position >= 1 && error.position <= body.chars().count(), "{}", error);
        }
    }
}

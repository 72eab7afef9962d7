//! The markup of `Post.text`: plain text with a small Markdown subset
//! (`**bold**`, `_italic_`, `` `code` ``, `[label](https://…)`), in which bare
//! URLs, `@mentions` and `#hashtags` are recognised. [`parse`] turns it into a
//! tree of [`Inline`] nodes that every renderer walks.
//!
//! The parser never fails: anything that does not form a complete construct
//! stays literal text. In particular an unmatched `**`, `_` or backtick stays
//! as written, `_` inside a word (`snake_case_words`) is never emphasis, a URL
//! is taken whole before emphasis is looked for (so underscores in URLs are
//! safe), and there is no backslash escape syntax.

use unicode_segmentation::UnicodeSegmentation;

/// One piece of parsed post text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inline {
    /// Literal text.
    Text(String),
    /// `**…**`. Never contains another `Bold`, however deep (nested bold is flattened).
    Bold(Vec<Inline>),
    /// `_…_`. Never contains another `Italic`, however deep.
    Italic(Vec<Inline>),
    /// `` `…` ``: the text between the backticks, never empty, never containing a backtick.
    Code(String),
    /// `[label](url)`: the label is literal text (no markup inside), the URL is
    /// an absolute `http`/`https` URL.
    Link { label: String, url: String },
    /// A bare `http://` or `https://` URL, without trailing punctuation.
    Url(String),
    /// A mention, without the leading `@`: `alice`, `alice.bsky.social` or
    /// `user@mastodon.social`.
    Mention(String),
    /// A hashtag, without the leading `#`.
    Hashtag(String),
}

/// Parses post text. Never fails; see the module documentation.
pub fn parse(text: &str) -> Vec<Inline> {
    let tokens = tokenize(text);
    let partners = pair_delimiters(&tokens);
    build_tree(tokens, &partners)
}

/// Kinds of emphasis delimiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delim {
    Bold,
    Italic,
}

impl Delim {
    fn literal(self) -> &'static str {
        match self {
            Delim::Bold => "**",
            Delim::Italic => "_",
        }
    }
}

#[derive(Debug)]
enum Token {
    Inline(Inline),
    Delim { kind: Delim, open: bool, close: bool },
}

fn tokenize(s: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut prev: Option<char> = None;
    // After a failed URL or link scan, no other may start before the point
    // that scan reached: it would fail the same way, and rescanning from
    // every `[` or `https://` would make hostile text quadratic.
    let (mut url_blocked_until, mut link_blocked_until) = (0, 0);
    let mut i = 0;
    while let Some(c) = s[i..].chars().next() {
        let rest = &s[i..];
        let next_after = |n: usize| rest[n..].chars().next();
        let found: Option<(Token, usize)> = match c {
            '`' => code_at(rest).map(|(code, len)| (Token::Inline(Inline::Code(code.to_owned())), len)),
            '[' if i >= link_blocked_until => match markdown_link_at(rest) {
                Ok((label, url, len)) => {
                    Some((Token::Inline(Inline::Link { label: label.to_owned(), url: url.to_owned() }), len))
                }
                Err(reached) => {
                    link_blocked_until = i + reached;
                    None
                }
            },
            '*' if rest.starts_with("**") => {
                let open = next_after(2).is_some_and(|n| !n.is_whitespace());
                let close = prev.is_some_and(|p| !p.is_whitespace());
                Some((Token::Delim { kind: Delim::Bold, open, close }, 2))
            }
            '_' => {
                // Flanking rules keep `snake_case_words` literal: an opening `_`
                // may not follow a letter or digit, a closing one may not precede one.
                let next = next_after(1);
                let open =
                    !prev.is_some_and(char::is_alphanumeric) && next.is_some_and(|n| !n.is_whitespace());
                let close =
                    prev.is_some_and(|p| !p.is_whitespace()) && !next.is_some_and(char::is_alphanumeric);
                (open || close).then_some((Token::Delim { kind: Delim::Italic, open, close }, 1))
            }
            'h' | 'H' if i >= url_blocked_until && url_may_start_after(prev) => match scan_url(rest) {
                Ok(len) => Some((Token::Inline(Inline::Url(rest[..len].to_owned())), len)),
                Err(reached) => {
                    url_blocked_until = i + reached;
                    None
                }
            },
            '@' if mention_may_start_after(prev) => {
                mention_at(rest).map(|len| (Token::Inline(Inline::Mention(rest[1..len].to_owned())), len))
            }
            '#' if hashtag_may_start_after(prev) => {
                hashtag_at(rest).map(|len| (Token::Inline(Inline::Hashtag(rest[1..len].to_owned())), len))
            }
            _ => None,
        };
        match found {
            Some((token, len)) => {
                if !text.is_empty() {
                    tokens.push(Token::Inline(Inline::Text(std::mem::take(&mut text))));
                }
                tokens.push(token);
                prev = rest[..len].chars().next_back();
                i += len;
            }
            None => {
                text.push(c);
                prev = Some(c);
                i += c.len_utf8();
            }
        }
    }
    if !text.is_empty() {
        tokens.push(Token::Inline(Inline::Text(text)));
    }
    tokens
}

/// For each token, the index of the delimiter it is paired with. Pairs nest
/// properly: closing a pair drops the unpaired openers inside it, which stay
/// literal. A pair with nothing between its delimiters is not formed.
fn pair_delimiters(tokens: &[Token]) -> Vec<Option<usize>> {
    let mut partners = vec![None; tokens.len()];
    let mut openers: Vec<(usize, Delim)> = Vec::new();
    // Openers of each kind on the stack, so a closer without one does not
    // search the whole stack (which would be quadratic on hostile input).
    let mut counts = [0usize; 2];
    for (i, token) in tokens.iter().enumerate() {
        let Token::Delim { kind, open, close } = *token else { continue };
        let mut paired = false;
        if close
            && counts[kind as usize] > 0
            && let Some(at) = openers.iter().rposition(|&(_, k)| k == kind)
        {
            let opener = openers[at].0;
            if opener + 1 < i {
                partners[opener] = Some(i);
                partners[i] = Some(opener);
                for (_, dropped) in openers.drain(at..) {
                    counts[dropped as usize] -= 1;
                }
                paired = true;
            }
        }
        if !paired && open {
            openers.push((i, kind));
            counts[kind as usize] += 1;
        }
    }
    partners
}

/// Builds the tree without recursion (a hostile text may nest thousands of
/// pairs), flattening emphasis nested in emphasis of the same kind.
fn build_tree(tokens: Vec<Token>, partners: &[Option<usize>]) -> Vec<Inline> {
    let mut frames: Vec<(Option<Delim>, Vec<Inline>)> = vec![(None, Vec::new())];
    let (mut bold_depth, mut italic_depth) = (0usize, 0usize);
    for (i, token) in tokens.into_iter().enumerate() {
        let inline = match token {
            Token::Inline(inline) => inline,
            Token::Delim { kind, .. } => match partners[i] {
                Some(partner) if partner > i => {
                    match kind {
                        Delim::Bold => bold_depth += 1,
                        Delim::Italic => italic_depth += 1,
                    }
                    frames.push((Some(kind), Vec::new()));
                    continue;
                }
                Some(_) => {
                    let (_, children) = frames.pop().expect("an opened frame");
                    let parent = &mut frames.last_mut().expect("the root frame").1;
                    let depth = match kind {
                        Delim::Bold => &mut bold_depth,
                        Delim::Italic => &mut italic_depth,
                    };
                    *depth -= 1;
                    if *depth > 0 {
                        for child in children {
                            push_inline(parent, child);
                        }
                    } else {
                        parent.push(match kind {
                            Delim::Bold => Inline::Bold(children),
                            Delim::Italic => Inline::Italic(children),
                        });
                    }
                    continue;
                }
                None => Inline::Text(kind.literal().to_owned()),
            },
        };
        push_inline(&mut frames.last_mut().expect("the root frame").1, inline);
    }
    debug_assert_eq!(frames.len(), 1, "pairs nest properly");
    frames.pop().map(|(_, nodes)| nodes).unwrap_or_default()
}

/// Appends a node, merging adjacent text.
fn push_inline(nodes: &mut Vec<Inline>, inline: Inline) {
    if let Inline::Text(new) = &inline
        && let Some(Inline::Text(last)) = nodes.last_mut()
    {
        last.push_str(new);
        return;
    }
    nodes.push(inline);
}

/// `` `code` `` at the start of `rest`: the code and the length consumed.
fn code_at(rest: &str) -> Option<(&str, usize)> {
    let end = rest[1..].find('`')?;
    (end > 0).then(|| (&rest[1..1 + end], end + 2))
}

/// `[label](url)` at the start of `rest`: label, URL and the length
/// consumed; or, if there is none, how far the scan went.
fn markdown_link_at(rest: &str) -> Result<(&str, &str, usize), usize> {
    // The label ends at the first `]` and may not hold `[` or a line break;
    // stopping there keeps the scan from each `[` short.
    let label_end = 1 + rest[1..].find(['[', ']', '\n', '\r']).ok_or(rest.len())?;
    let label = &rest[1..label_end];
    if !rest[label_end..].starts_with("](") || label.trim().is_empty() {
        return Err(1);
    }
    let url_start = label_end + 2;
    // Parentheses inside the URL must balance (`…/Rust_(language))`).
    let mut depth = 0usize;
    let mut url_end = None;
    for (j, c) in rest[url_start..].char_indices() {
        match c {
            _ if j > MAX_URL_BYTES || c.is_whitespace() => return Err(url_start + j),
            '(' => depth += 1,
            ')' if depth == 0 => {
                url_end = Some(url_start + j);
                break;
            }
            ')' => depth -= 1,
            _ => {}
        }
    }
    let url_end = url_end.ok_or(rest.len())?;
    let url = &rest[url_start..url_end];
    let forbidden = |c: char| c.is_control() || matches!(c, '<' | '>' | '"' | '`');
    if scheme_len(url).is_some() && !url.contains(forbidden) && has_host(url) {
        Ok((label, url, url_end + 1))
    } else {
        Err(url_end)
    }
}

/// Whether a URL may begin after `prev` (not inside a word).
pub(crate) fn url_may_start_after(prev: Option<char>) -> bool {
    !prev.is_some_and(char::is_alphanumeric)
}

/// Whether a mention may begin after `prev`: not inside a word, an e-mail
/// address or a path.
pub(crate) fn mention_may_start_after(prev: Option<char>) -> bool {
    !prev.is_some_and(|p| p.is_alphanumeric() || "@._-/:+=".contains(p))
}

/// Whether a hashtag may begin after `prev`: not inside a word, an HTML
/// entity (`&#38;`), a path or a URL fragment.
fn hashtag_may_start_after(prev: Option<char>) -> bool {
    !prev.is_some_and(|p| p.is_alphanumeric() || "&#/@_".contains(p))
}

/// The longest URL recognised, in bytes. Media URLs are at most 2,048
/// characters; the bound keeps hostile text (thousands of `https://[`) from
/// making the parser quadratic.
const MAX_URL_BYTES: usize = 8192;

fn scheme_len(rest: &str) -> Option<usize> {
    ["https://", "http://"]
        .into_iter()
        .find(|scheme| rest.get(..scheme.len()).is_some_and(|s| s.eq_ignore_ascii_case(scheme)))
        .map(str::len)
}

/// A bare URL at the start of `rest`: its length, without trailing
/// punctuation (`.,:;!?'*_`, and closing brackets that do not balance an
/// opening one inside the URL). None unless it is an absolute `http(s)` URL
/// with a host. On failure, Err says how far the scan went (0 without a
/// scheme): no URL can start before that point either.
pub(crate) fn scan_url(rest: &str) -> Result<usize, usize> {
    let scheme = scheme_len(rest).ok_or(0usize)?;
    let mut end = scheme;
    // Brackets in the URL, kept up to date while trailing ones are stripped.
    let mut brackets = [0usize; 6];
    const BRACKETS: [char; 6] = ['(', ')', '[', ']', '{', '}'];
    for (j, c) in rest[scheme..].char_indices() {
        if j > MAX_URL_BYTES {
            return Err(scheme + j);
        }
        if c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | '`') {
            break;
        }
        if let Some(b) = BRACKETS.iter().position(|&b| b == c) {
            brackets[b] += 1;
        }
        end = scheme + j + c.len_utf8();
    }
    let reached = end;
    while let Some(last) = rest[..end].chars().next_back() {
        let strip = match last {
            '.' | ',' | ':' | ';' | '!' | '?' | '\'' | '*' | '_' => true,
            ')' => brackets[1] > brackets[0],
            ']' => brackets[3] > brackets[2],
            '}' => brackets[5] > brackets[4],
            _ => false,
        };
        if !strip {
            break;
        }
        if let Some(b) = BRACKETS.iter().position(|&b| b == last) {
            brackets[b] -= 1;
        }
        end -= last.len_utf8();
    }
    if end <= scheme {
        return Err(reached);
    }
    if has_host(&rest[..end]) { Ok(end) } else { Err(reached) }
}

/// Whether `url` parses as an absolute URL with a host.
fn has_host(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|url| url.host_str().is_some_and(|h| !h.is_empty()))
}

fn is_handle_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

/// Length of a run of `pred` chars at the start of `s` (ASCII only, so bytes = chars).
fn run(s: &str, pred: fn(char) -> bool) -> usize {
    s.find(|c: char| !pred(c)).unwrap_or(s.len())
}

/// Length of `.label` repeated at the start of `s`; each `.` is taken only if
/// a label follows it.
fn dotted_labels(s: &str) -> (usize, usize) {
    let (mut len, mut dots) = (0, 0);
    while let Some(after) = s[len..].strip_prefix('.') {
        let label = run(after, is_label_char);
        if label == 0 {
            break;
        }
        len += 1 + label;
        dots += 1;
    }
    (len, dots)
}

/// A mention at the start of `rest` (which starts with `@`): its length.
/// `@name`, `@name.domain.tld` (Bluesky handles) or `@user@domain.tld`
/// (Mastodon); a trailing `.` or `-` is never part of it.
pub(crate) fn mention_at(rest: &str) -> Option<usize> {
    let body = &rest[1..];
    if !body.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let mut len = run(body, is_handle_char);
    len += dotted_labels(&body[len..]).0;
    if let Some(domain) = body[len..].strip_prefix('@') {
        let first = run(domain, is_label_char);
        let (more, dots) = dotted_labels(&domain[first..]);
        if first > 0 && dots > 0 {
            len += 1 + first + more;
        }
    }
    let handle = body[..len].trim_end_matches('-');
    Some(1 + handle.len())
}

/// The `@user` part of a mention of `@user@domain`, or the whole mention.
pub(crate) fn mention_local_part(handle: &str) -> &str {
    handle.split('@').next().unwrap_or(handle)
}

/// A hashtag at the start of `rest` (which starts with `#`): its length. The
/// tag is made of letters, digits and `_` (with their combining marks, taken
/// by grapheme) and is not only digits.
fn hashtag_at(rest: &str) -> Option<usize> {
    let body = &rest[1..];
    let mut len = 0;
    for grapheme in body.graphemes(true) {
        let first = grapheme.chars().next()?;
        if !(first.is_alphanumeric() || first == '_') {
            break;
        }
        len += grapheme.len();
    }
    let tag = &body[..len];
    (!tag.is_empty() && !tag.chars().all(char::is_numeric)).then_some(1 + len)
}

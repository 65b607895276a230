//! JSON rewriting that never re-serialises: one scan finds the byte positions of user
//! objects and listing items, then the output is the input with a few splices. Keys, key
//! order, numbers and whitespace outside the spliced spots stay byte for byte as the wiki
//! sent them.

use std::borrow::Cow;
use std::collections::HashSet;

use crate::routes::extract::SpaceExtractor;

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 256;

/// Why a body could not be scanned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("malformed JSON at byte {0}")]
    Malformed(usize),
    #[error("JSON nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("no listing array to filter")]
    NotAListing,
}

/// Username → `Some(is_guest)` for directory users, `None` for others (left untagged).
pub type UserLookup<'a> = &'a dyn Fn(&str) -> Option<bool>;

/// What to do to one JSON body.
pub struct JsonPlan<'a> {
    pub tag_users: Option<UserLookup<'a>>,
    /// Keep only listing items whose space is in `visible` (upper-cased keys).
    pub filter: Option<(&'a [SpaceExtractor], &'a HashSet<String>)>,
    /// Besides Confluence's user objects (`type` known/user with `username`), objects with
    /// a string under one of these keys name a user (MediaWiki's `"user": "Gary"`).
    pub user_keys: &'a [String],
    /// Where the listings are: each a path of object keys from the root. Empty: the
    /// top-level `results` array (Confluence).
    pub listings: &'a [Vec<String>],
}

#[derive(Debug)]
enum Seg<'s> {
    /// A key as raw bytes (decoded only when it had escapes).
    Key(Cow<'s, [u8]>),
    Index(usize),
}

#[derive(Debug)]
struct Item {
    start: usize,
    end: usize,
    space: Option<String>,
}

#[derive(Debug, Default)]
struct Listing {
    items: Vec<Item>,
}

/// A key on the way from the root to the current value; `None` for an array element.
type OuterSeg<'s> = Option<Cow<'s, [u8]>>;

struct Scanner<'s, 'p> {
    src: &'s [u8],
    pos: usize,
    tag_users: bool,
    user_keys: &'p [String],
    extractors: Option<&'p [SpaceExtractor]>,
    listing_paths: &'p [Vec<String>],
    /// Keys from the root to the current value while outside listing items, kept only when
    /// filtering (to find the listing arrays).
    outer: Vec<OuterSeg<'s>>,
    /// Position of each user object's closing brace, with its username.
    user_ends: Vec<(usize, Cow<'s, str>)>,
    listings: Vec<Listing>,
    size: Option<(usize, usize)>,
    total_size: Option<(usize, usize)>,
    /// Counts over everything the query matched, which the wiki could not narrow to the
    /// guest's spaces (MediaWiki's `searchinfo.totalhits`, a root `total`): replaced by
    /// what the guest keeps, however few items the page itself held.
    untrusted_counts: Vec<(usize, usize)>,
    /// Path below the current listing item, kept only while inside one.
    path: Vec<Seg<'s>>,
    in_item: bool,
    /// Best space found for the current item so far: (extractor index, key).
    item_space: Option<(usize, String)>,
    /// What the last [`Scanner::value`] was. Kept here rather than returned: as a return
    /// value it made `Result<Val, _>` too large for registers, and copying it back through
    /// the stack stalled on store forwarding (a quarter of `value`'s samples, perf annotate).
    last: Val,
}

impl Scanner<'_, '_> {
    /// Whether the value under `key` in the current object is one of the profile's listing
    /// arrays: the keys from the root to here, then `key`, are one of `listing_paths`.
    fn is_listing(&self, key: &[u8]) -> bool {
        if self.extractors.is_none() || self.in_item {
            return false;
        }
        self.listing_paths.iter().any(|p| {
            p.len() == self.outer.len() + 1
                && self
                    .outer
                    .iter()
                    .map(|seg| seg.as_deref())
                    .chain(std::iter::once(Some(key)))
                    .zip(p)
                    .all(|(seg, want)| seg == Some(want.as_bytes()))
        })
    }

    /// Whether `outer` must be kept: only when filtering by explicit paths (the default
    /// `results` listing is found from the root alone, as before).
    fn tracks_outer(&self) -> bool {
        self.extractors.is_some() && !self.in_item
    }
}

#[derive(Clone, Copy)]
struct Span {
    open: usize,
    close: usize,
    escaped: bool,
}

#[derive(Clone, Copy)]
enum Val {
    Str(Span),
    Number(usize, usize),
    Other,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Type,
    Username,
    NamedUser,
    Other,
}

impl<'s> Scanner<'s, '_> {
    fn err(&self) -> JsonError {
        JsonError::Malformed(self.pos)
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.src.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn expect(&mut self, b: u8) -> Result<(), JsonError> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err())
        }
    }

    /// Skips a string, returning its span (quotes included) and whether it has escapes.
    /// Nothing is decoded here: most strings are only ever skipped. Inlined into its two
    /// callers: returned through the stack, the span's flag was copied back with loads
    /// wider than its store, which stalled on store forwarding (perf).
    #[inline(always)]
    fn string_span(&mut self) -> Result<Span, JsonError> {
        let open = self.pos;
        self.expect(b'"')?;
        let mut escaped = false;
        loop {
            let rest = &self.src[self.pos..];
            let Some(i) = string_stop(rest) else {
                return Err(JsonError::Malformed(self.src.len()));
            };
            self.pos += i;
            if rest[i] == b'"' {
                break;
            }
            // Raw control characters are malformed JSON.
            if rest[i] != b'\\' {
                return Err(self.err());
            }
            escaped = true;
            self.pos += 2;
            if self.pos > self.src.len() {
                return Err(self.err());
            }
        }
        self.pos += 1;
        Ok(Span {
            open,
            close: self.pos,
            escaped,
        })
    }

    /// The raw bytes between the quotes; equal to the decoded text when not escaped.
    fn raw(&self, span: Span) -> &'s [u8] {
        &self.src[span.open + 1..span.close - 1]
    }

    fn decode(&self, span: Span) -> Result<Cow<'s, str>, JsonError> {
        if span.escaped {
            serde_json::from_slice::<String>(&self.src[span.open..span.close])
                .map(Cow::Owned)
                .map_err(|_| JsonError::Malformed(span.open))
        } else {
            std::str::from_utf8(self.raw(span))
                .map(Cow::Borrowed)
                .map_err(|_| JsonError::Malformed(span.open))
        }
    }

    fn literal(&mut self) -> Result<(), JsonError> {
        let start = self.pos;
        for word in [&b"true"[..], b"false", b"null"] {
            if self.src[start..].starts_with(word) {
                self.pos += word.len();
                self.last = Val::Other;
                return Ok(());
            }
        }
        let mut end = start;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.src.get(end) {
            end += 1;
        }
        if end == start {
            return Err(self.err());
        }
        self.pos = end;
        self.last = Val::Number(start, end);
        Ok(())
    }

    /// Skips one value; what it was is left in `self.last`.
    fn value(&mut self, depth: usize, root: bool) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        match self.peek() {
            Some(b'{') => {
                self.object(depth, root)?;
                self.last = Val::Other;
                Ok(())
            }
            Some(b'[') => {
                self.array(depth, false)?;
                self.last = Val::Other;
                Ok(())
            }
            Some(b'"') => {
                let span = self.string_span()?;
                if self.in_item
                    && let Some(index) = self.space_pointer_here()
                {
                    let s = self.decode(span)?;
                    self.consider_space(index, &s);
                }
                self.last = Val::Str(span);
                Ok(())
            }
            Some(_) => self.literal(),
            None => Err(self.err()),
        }
    }

    /// The first extractor, better than the item's current best, whose pointer is the
    /// current path. Checked before a string is decoded, so most strings never are.
    fn space_pointer_here(&self) -> Option<usize> {
        let extractors = self.extractors?;
        let best = self.item_space.as_ref().map_or(usize::MAX, |(i, _)| *i);
        extractors.iter().take(best).position(|ex| {
            ex.pointer.len() == self.path.len()
                && ex.pointer.iter().zip(&self.path).all(|(p, seg)| match seg {
                    Seg::Key(k) => p.as_bytes() == &**k,
                    Seg::Index(n) => p.parse::<usize>().ok() == Some(*n),
                })
        })
    }

    /// Records `s` as the item's space when extractor `index` accepts it.
    fn consider_space(&mut self, index: usize, s: &str) {
        if let Some(extractors) = self.extractors
            && let Some(space) = extractors[index].name.key_in(s)
        {
            self.item_space = Some((index, space));
        }
    }

    fn object(&mut self, depth: usize, root: bool) -> Result<(), JsonError> {
        self.expect(b'{')?;
        let mut user_type = false;
        let mut username: Option<Cow<'s, str>> = None;
        let mut named_user: Option<Cow<'s, str>> = None;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        let close = loop {
            self.ws();
            let key_span = self.string_span()?;
            // Keys that matter are plain ASCII; an escaped key is decoded to compare fairly.
            let decoded_key;
            let key: &[u8] = if key_span.escaped {
                decoded_key = self.decode(key_span)?;
                decoded_key.as_bytes()
            } else {
                self.raw(key_span)
            };
            self.ws();
            self.expect(b':')?;
            self.ws();
            let kind = match key {
                b"type" if self.tag_users => KeyKind::Type,
                b"username" if self.tag_users => KeyKind::Username,
                k if self.tag_users && self.user_keys.iter().any(|u| u.as_bytes() == k) => {
                    KeyKind::NamedUser
                }
                _ => KeyKind::Other,
            };
            let listing = self.peek() == Some(b'[')
                && if self.listing_paths.is_empty() {
                    root && key == b"results" && self.extractors.is_some()
                } else {
                    self.is_listing(key)
                };
            let value = if listing {
                self.array(depth + 1, true)?;
                Val::Other
            } else {
                let outer = !self.listing_paths.is_empty() && self.tracks_outer();
                if self.in_item || outer {
                    let seg = match key_span.escaped {
                        false => Cow::Borrowed(self.raw(key_span)),
                        true => Cow::Owned(key.to_vec()),
                    };
                    if self.in_item {
                        self.path.push(Seg::Key(seg));
                    } else {
                        self.outer.push(Some(seg));
                    }
                }
                self.value(depth + 1, false)?;
                if self.in_item {
                    self.path.pop();
                } else if outer {
                    self.outer.pop();
                }
                self.last
            };
            match (kind, value) {
                (KeyKind::Type, Val::Str(t)) => {
                    user_type = matches!(self.raw(t), b"known" | b"user");
                }
                (KeyKind::Username, Val::Str(u)) => username = Some(self.decode(u)?),
                (KeyKind::NamedUser, Val::Str(u)) => named_user = Some(self.decode(u)?),
                (_, Val::Number(s, e)) if root && key == b"size" => self.size = Some((s, e)),
                (_, Val::Number(s, e)) if root && key == b"totalSize" => {
                    self.total_size = Some((s, e))
                }
                (_, Val::Number(s, e))
                    if !self.in_item && (key == b"totalhits" || (root && key == b"total")) =>
                {
                    self.untrusted_counts.push((s, e))
                }
                _ => {}
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    let close = self.pos;
                    self.pos += 1;
                    break close;
                }
                _ => return Err(self.err()),
            }
        };
        if user_type && let Some(name) = username {
            self.user_ends.push((close, name));
        } else if let Some(name) = named_user {
            self.user_ends.push((close, name));
        }
        Ok(())
    }

    fn array(&mut self, depth: usize, listing: bool) -> Result<(), JsonError> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
        } else {
            let mut index = 0;
            loop {
                self.ws();
                let start = self.pos;
                let outer = !listing && !self.listing_paths.is_empty() && self.tracks_outer();
                if listing {
                    self.in_item = true;
                    self.path.clear();
                    self.item_space = None;
                } else if self.in_item {
                    self.path.push(Seg::Index(index));
                } else if outer {
                    self.outer.push(None);
                }
                self.value(depth + 1, false)?;
                if listing {
                    self.in_item = false;
                    items.push(Item {
                        start,
                        end: self.pos,
                        space: self.item_space.take().map(|(_, s)| s),
                    });
                } else if self.in_item {
                    self.path.pop();
                } else if outer {
                    self.outer.pop();
                }
                index += 1;
                self.ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b']') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.err()),
                }
            }
        }
        if listing {
            self.listings.push(Listing { items });
        }
        Ok(())
    }
}

/// Where a string's text stops: the first `"`, `\\` or control byte (malformed there).
/// Most strings of an API answer are keys and short values: their first 32 bytes are
/// searched eight at a time in a register, which costs less than setting up a vector search;
/// past that, `memchr2` finds the quote or backslash and the text before it is checked for
/// control bytes (the scan's hottest loop when it went byte by byte).
fn string_stop(bytes: &[u8]) -> Option<usize> {
    const SHORT: usize = 32;
    let head = &bytes[..bytes.len().min(SHORT)];
    let mut words = head.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            break;
        };
        let stops = stop_bytes(u64::from_le_bytes(word));
        if stops != 0 {
            return Some(at + (stops.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    if let Some(i) = words
        .remainder()
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
    {
        return Some(at + i);
    }
    if head.len() < SHORT {
        return None;
    }
    let rest = &bytes[SHORT..];
    let end = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
    if has_control_byte(&rest[..end]) {
        return rest[..end]
            .iter()
            .position(|&b| b < 0x20)
            .map(|i| SHORT + i);
    }
    (end < rest.len()).then_some(SHORT + end)
}

/// The high bit of each byte of `x` that is `"`, `\\` or below 0x20. Each test is the
/// "haszero"/"hasless" one of Sean Eron Anderson's Bit Twiddling Hacks: a borrow can set
/// bits above a byte that matches, never below one, so the lowest bit set is the first
/// byte that stops the string.
fn stop_bytes(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let quote = x ^ (ONES * u64::from(b'"'));
    let backslash = x ^ (ONES * u64::from(b'\\'));
    ((quote.wrapping_sub(ONES) & !quote)
        | (backslash.wrapping_sub(ONES) & !backslash)
        | (x.wrapping_sub(ONES * 0x20) & !x))
        & HIGHS
}

/// Whether `bytes` holds a byte below 0x20, eight at a time: a word has a byte below `n`
/// (n ≤ 128) exactly when `(x - n·0x01…) & !x & 0x80…` is not zero (the "hasless" test of
/// Sean Eron Anderson's Bit Twiddling Hacks).
fn has_control_byte(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            return true;
        };
        let x = u64::from_le_bytes(word);
        if x.wrapping_sub(ONES * 0x20) & !x & HIGHS != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|&b| b < 0x20)
}

/// Rewrites one JSON document. `Ok(None)` means nothing needed to change.
pub fn rewrite(src: &[u8], plan: &JsonPlan<'_>) -> Result<Option<Vec<u8>>, JsonError> {
    let mut scanner = Scanner {
        src,
        pos: 0,
        tag_users: plan.tag_users.is_some(),
        user_keys: plan.user_keys,
        extractors: plan.filter.map(|(e, _)| e),
        listing_paths: plan.listings,
        outer: Vec::new(),
        user_ends: Vec::new(),
        listings: Vec::new(),
        size: None,
        total_size: None,
        untrusted_counts: Vec::new(),
        path: Vec::new(),
        in_item: false,
        item_space: None,
        last: Val::Other,
    };
    // A UTF-8 byte-order mark is not JSON, but some servers send one.
    if src.starts_with(b"\xEF\xBB\xBF") {
        scanner.pos = 3;
    }
    scanner.ws();
    let root_is_object = scanner.peek() == Some(b'{');
    scanner.value(0, root_is_object)?;
    scanner.ws();
    if scanner.pos != src.len() {
        return Err(scanner.err());
    }

    // (start, end, replacement): splices in ascending order, never overlapping.
    let mut edits: Vec<(usize, usize, Cow<'static, str>)> = Vec::new();
    let mut deleted: Vec<(usize, usize)> = Vec::new();
    if let Some((_, visible)) = plan.filter {
        if scanner.listings.is_empty() {
            return Err(JsonError::NotAListing);
        }
        let (mut removed, mut kept) = (0, 0);
        for listing in &scanner.listings {
            let keep: Vec<bool> = listing
                .items
                .iter()
                .map(|i| i.space.as_ref().is_some_and(|s| visible.contains(s)))
                .collect();
            let gone = keep.iter().filter(|k| !**k).count();
            removed += gone;
            kept += keep.len() - gone;
            if gone > 0 {
                deleted.extend(deletion_ranges(&listing.items, &keep));
            }
        }
        if removed > 0 {
            if let Some((s, e)) = scanner.size {
                edits.push((s, e, Cow::Owned(kept.to_string())));
            }
            if let Some((s, e)) = scanner.total_size {
                let total: usize = std::str::from_utf8(&src[s..e])
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(kept + removed);
                edits.push((
                    s,
                    e,
                    Cow::Owned(total.saturating_sub(removed).max(kept).to_string()),
                ));
            }
            edits.extend(deleted.iter().map(|&(s, e)| (s, e, Cow::Borrowed(""))));
        }
        // Even when this page held nothing to remove (`limit=0`), such a count answers
        // for other spaces.
        for &(s, e) in &scanner.untrusted_counts {
            edits.push((s, e, Cow::Owned(kept.to_string())));
        }
    }
    if let Some(lookup) = plan.tag_users {
        for (close, name) in &scanner.user_ends {
            if deleted.iter().any(|&(s, e)| s <= *close && *close < e) {
                continue;
            }
            if let Some(guest) = lookup(name) {
                let text = if guest {
                    ",\"isExternalCollaborator\":true"
                } else {
                    ",\"isExternalCollaborator\":false"
                };
                edits.push((*close, *close, Cow::Borrowed(text)));
            }
        }
    }
    if edits.is_empty() {
        return Ok(None);
    }
    edits.sort_by_key(|&(s, e, _)| (s, e));
    let extra: usize = edits.iter().map(|(_, _, t)| t.len()).sum();
    let mut out = Vec::with_capacity(src.len() + extra);
    let mut at = 0;
    for (s, e, text) in &edits {
        out.extend_from_slice(&src[at..*s]);
        out.extend_from_slice(text.as_bytes());
        at = *e;
    }
    out.extend_from_slice(&src[at..]);
    Ok(Some(out))
}

/// The byte ranges to delete so that only kept items remain, each kept item with the
/// separator that preceded it (the first kept item with none), so whitespace and commas
/// stay as the wiki laid them out.
fn deletion_ranges(items: &[Item], keep: &[bool]) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let (Some(first), Some(last)) = (items.first(), items.last()) else {
        return ranges;
    };
    // Cursor: where the output has caught up to in the source.
    let mut cursor = first.start;
    let mut any_kept = false;
    for (i, item) in items.iter().enumerate() {
        if !keep[i] {
            continue;
        }
        // A kept item keeps its preceding separator unless it becomes the first item.
        let piece_start = if any_kept {
            items[i - 1].end
        } else {
            item.start
        };
        if piece_start > cursor {
            ranges.push((cursor, piece_start));
        }
        cursor = item.end;
        any_kept = true;
    }
    if cursor < last.end {
        ranges.push((cursor, last.end));
    }
    ranges
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_string_stops_at_its_first_quote_backslash_or_control_byte() {
        let naive = |b: &[u8]| b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
        // Every length across the word and the short-string boundaries, every stop at every
        // place, with bytes around it that look alike to a careless bit test.
        let fillers: [u8; 6] = [b'a', 0x20, 0x21, 0x5b, 0x5d, 0xa2];
        for len in 0..80 {
            for &fill in &fillers {
                let plain = vec![fill; len];
                assert_eq!(string_stop(&plain), naive(&plain), "{fill:#x} × {len}");
                for at in 0..len {
                    for stop in [b'"', b'\\', 0x00, 0x1f, 0x0a] {
                        let mut bytes = plain.clone();
                        bytes[at] = stop;
                        if at + 1 < len {
                            // A second stop after the first must not be the one found.
                            bytes[len - 1] = b'"';
                        }
                        assert_eq!(
                            string_stop(&bytes),
                            naive(&bytes),
                            "{stop:#x} at {at} of {len}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn control_bytes_are_found_wherever_they_stand() {
        let clean: Vec<u8> = (0x20..=0xff).collect();
        assert!(!has_control_byte(&clean));
        for len in 0..40 {
            for at in 0..len {
                for bad in [0x00u8, 0x01, 0x0a, 0x1f] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = bad;
                    assert!(has_control_byte(&bytes), "{bad:#x} at {at} of {len}");
                }
            }
            assert!(!has_control_byte(&vec![0x20u8; len]));
            assert!(!has_control_byte(&vec![0x80u8; len]));
        }
    }

    use super::*;
    use regex::Regex;

    fn lookup(name: &str) -> Option<bool> {
        match name {
            "gary" => Some(true),
            "alice" => Some(false),
            _ => None,
        }
    }

    fn tag(src: &str) -> String {
        let f: &dyn Fn(&str) -> Option<bool> = &lookup;
        let plan = JsonPlan {
            tag_users: Some(f),
            filter: None,
            user_keys: &[],
            listings: &[],
        };
        match rewrite(src.as_bytes(), &plan).expect("valid") {
            Some(out) => String::from_utf8(out).expect("utf8"),
            None => src.to_string(),
        }
    }

    fn filter(src: &str, visible: &[&str]) -> Result<String, JsonError> {
        let extractors = vec![
            SpaceExtractor::new("/space/key", None).expect("pointer"),
            SpaceExtractor::new(
                "/resultGlobalContainer/displayUrl",
                Regex::new("^/display/(?P<space>[^/]+)").ok(),
            )
            .expect("pointer"),
        ];
        let visible: HashSet<String> = visible.iter().map(|s| s.to_string()).collect();
        let plan = JsonPlan {
            tag_users: None,
            filter: Some((&extractors, &visible)),
            user_keys: &[],
            listings: &[],
        };
        Ok(match rewrite(src.as_bytes(), &plan)? {
            Some(out) => String::from_utf8(out).expect("utf8"),
            None => src.to_string(),
        })
    }

    #[test]
    fn tags_user_objects_at_any_depth_and_keeps_the_rest_byte_for_byte() {
        let src = r#"{"id":"1","version":{"by":{"type":"known","username":"gary","userKey":"k1","displayName":"G\u00e4ry"},"number":1.50},
  "history":{"createdBy":{"type":"known","username":"alice"},"n":1e3},
  "other":{"type":"known","username":"stranger"},"type":"user"}"#;
        let out = tag(src);
        assert_eq!(
            out,
            r#"{"id":"1","version":{"by":{"type":"known","username":"gary","userKey":"k1","displayName":"G\u00e4ry","isExternalCollaborator":true},"number":1.50},
  "history":{"createdBy":{"type":"known","username":"alice","isExternalCollaborator":false},"n":1e3},
  "other":{"type":"known","username":"stranger"},"type":"user"}"#
        );
    }

    #[test]
    fn non_user_objects_and_strings_are_left_alone() {
        for src in [
            r#"{"type":"page","username":"gary"}"#,
            r#"{"body":"{\"type\":\"known\",\"username\":\"gary\"}"}"#,
            r#"[1, 2.0, true, null, "x"]"#,
        ] {
            assert_eq!(tag(src), src);
        }
    }

    #[test]
    fn filters_listing_items_and_fixes_counts() {
        let src = "{\n  \"results\": [\n    {\"space\": {\"key\": \"ENG\"}, \"n\": 1},\n    {\"space\": {\"key\": \"HR\"}},\n    {\"resultGlobalContainer\": {\"displayUrl\": \"/display/eng\"}},\n    {\"entityType\": \"user\"}\n  ],\n  \"start\": 0,\n  \"size\": 4,\n  \"totalSize\": 40\n}";
        let out = filter(src, &["ENG"]).expect("listing");
        assert_eq!(
            out,
            "{\n  \"results\": [\n    {\"space\": {\"key\": \"ENG\"}, \"n\": 1},\n    {\"resultGlobalContainer\": {\"displayUrl\": \"/display/eng\"}}\n  ],\n  \"start\": 0,\n  \"size\": 2,\n  \"totalSize\": 38\n}"
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
        assert_eq!(v["results"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn counts_over_other_spaces_never_pass() {
        let plan_lists = [vec!["query".to_string(), "search".to_string()]];
        let extractors = [SpaceExtractor::new(
            "/title",
            regex::Regex::new(r"^(?P<space>[A-Za-z0-9]+):").ok(),
        )
        .expect("pointer")];
        let visible: HashSet<String> = ["ENG".to_string()].into_iter().collect();
        let plan = JsonPlan {
            tag_users: None,
            filter: Some((&extractors, &visible)),
            user_keys: &[],
            listings: &plan_lists,
        };
        // srlimit=0: nothing on the page, and still the count of HR's hits.
        let src = r#"{"query":{"searchinfo":{"totalhits":17},"search":[]}}"#;
        let out = rewrite(src.as_bytes(), &plan)
            .expect("listing")
            .expect("changed");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            r#"{"query":{"searchinfo":{"totalhits":0},"search":[]}}"#
        );
    }

    #[test]
    fn filtering_everything_or_the_first_items_stays_valid() {
        let src = r#"{"results":[{"space":{"key":"HR"}},{"space":{"key":"ENG"}},{"space":{"key":"OPS"}}],"size":3}"#;
        assert_eq!(filter(src, &[]).expect("ok"), r#"{"results":[],"size":0}"#);
        assert_eq!(
            filter(src, &["ENG"]).expect("ok"),
            r#"{"results":[{"space":{"key":"ENG"}}],"size":1}"#
        );
        assert_eq!(
            filter(src, &["HR", "OPS"]).expect("ok"),
            r#"{"results":[{"space":{"key":"HR"}},{"space":{"key":"OPS"}}],"size":2}"#
        );
        assert_eq!(filter(src, &["HR", "ENG", "OPS"]).expect("ok"), src);
    }

    fn mediawiki_plan<'a>(
        extractors: &'a [SpaceExtractor],
        visible: &'a HashSet<String>,
        listings: &'a [Vec<String>],
        user_keys: &'a [String],
        f: UserLookup<'a>,
    ) -> JsonPlan<'a> {
        JsonPlan {
            tag_users: Some(f),
            filter: Some((extractors, visible)),
            user_keys,
            listings,
        }
    }

    #[test]
    fn filters_listings_named_by_pointer_and_tags_user_keys() {
        let extractors = vec![
            SpaceExtractor::new(
                "/title",
                Regex::new(r"^(?P<space>[A-Za-z0-9]+)(?:_talk)?:").ok(),
            )
            .expect("pointer"),
        ];
        let visible: HashSet<String> = ["ENG".to_string()].into_iter().collect();
        let listings = vec![
            vec!["query".to_string(), "search".to_string()],
            vec!["query".to_string(), "recentchanges".to_string()],
        ];
        let user_keys = vec!["user".to_string()];
        let f: &dyn Fn(&str) -> Option<bool> = &lookup;
        let plan = mediawiki_plan(&extractors, &visible, &listings, &user_keys, f);
        let src = r#"{"batchcomplete":"","results":[{"title":"HR:Kept"}],"query":{"searchinfo":{"totalhits":3},"search":[{"ns":3000,"title":"ENG:Home"},{"ns":3002,"title":"HR:Salaries"},{"ns":0,"title":"Main Page"},{"ns":3001,"title":"ENG_talk:Home","user":"gary"}],"recentchanges":[{"title":"OPS:Runbook","user":"alice"}],"other":[{"search":[{"title":"HR:X"}]}]}}"#;
        let out = String::from_utf8(
            rewrite(src.as_bytes(), &plan)
                .expect("ok")
                .expect("changed"),
        )
        .expect("utf8");
        assert_eq!(
            out,
            // totalhits counted HR's hits too: it becomes what the guest keeps.
            r#"{"batchcomplete":"","results":[{"title":"HR:Kept"}],"query":{"searchinfo":{"totalhits":2},"search":[{"ns":3000,"title":"ENG:Home"},{"ns":3001,"title":"ENG_talk:Home","user":"gary","isExternalCollaborator":true}],"recentchanges":[],"other":[{"search":[{"title":"HR:X"}]}]}}"#
        );
        // No listing where the profile says: refused, not passed through.
        assert_eq!(
            rewrite(br#"{"query":{"pages":{"1":{"title":"HR:X"}}}}"#, &plan),
            Err(JsonError::NotAListing)
        );
        // Without a filter, user keys tag objects anywhere.
        let tag_only = JsonPlan {
            tag_users: Some(f),
            filter: None,
            user_keys: &user_keys,
            listings: &listings,
        };
        let out = rewrite(
            br#"{"revisions":[{"revid":4,"user":"alice"},{"user":"nobody"}]}"#,
            &tag_only,
        )
        .expect("ok")
        .expect("changed");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            r#"{"revisions":[{"revid":4,"user":"alice","isExternalCollaborator":false},{"user":"nobody"}]}"#
        );
    }

    #[test]
    fn unfilterable_bodies_are_errors() {
        assert_eq!(
            filter(r#"{"items":[]}"#, &["ENG"]),
            Err(JsonError::NotAListing)
        );
        assert!(matches!(
            filter(r#"{"results":[{"space":}]}"#, &["ENG"]),
            Err(JsonError::Malformed(_))
        ));
        assert!(matches!(
            filter(r#"{"results":[]} trailing"#, &["ENG"]),
            Err(JsonError::Malformed(_))
        ));
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        let f: &dyn Fn(&str) -> Option<bool> = &lookup;
        let plan = JsonPlan {
            tag_users: Some(f),
            filter: None,
            user_keys: &[],
            listings: &[],
        };
        assert_eq!(rewrite(deep.as_bytes(), &plan), Err(JsonError::TooDeep));
    }
}

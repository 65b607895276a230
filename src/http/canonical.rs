//! The one canonical form of a request path (docs/CONFIGURATION.md, "Request targets").
//!
//! The gateway judges a request by its path, and the wiki (Tomcat, for Confluence) acts on
//! its own reading of that path. If the two readings can differ, a guest can walk around a
//! rule (`/admin;x/`, `/display/OTHER/..;/ENG`, `%2e%2e`). So the path is brought into one
//! form here, the route is matched on that form, and exactly that form goes upstream.
//! Anything that cannot be brought into one form without guessing is refused.

/// Longest path (in bytes, as received) the gateway accepts.
pub const MAX_PATH_BYTES: usize = 8192;

/// Why a path was refused; each is a `reason` in the 400 answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path_not_absolute")]
    NotAbsolute,
    #[error("path_too_long")]
    TooLong,
    #[error("encoded_slash")]
    EncodedSlash,
    #[error("backslash")]
    Backslash,
    #[error("control_character")]
    ControlCharacter,
    #[error("whitespace")]
    Whitespace,
    #[error("invalid_percent_encoding")]
    InvalidPercentEncoding,
    #[error("invalid_utf8")]
    InvalidUtf8,
    #[error("non_ascii")]
    NonAscii,
    #[error("path_above_root")]
    AboveRoot,
}

impl PathError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotAbsolute => "path_not_absolute",
            Self::TooLong => "path_too_long",
            Self::EncodedSlash => "encoded_slash",
            Self::Backslash => "backslash",
            Self::ControlCharacter => "control_character",
            Self::Whitespace => "whitespace",
            Self::InvalidPercentEncoding => "invalid_percent_encoding",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::NonAscii => "non_ascii",
            Self::AboveRoot => "path_above_root",
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Brings one segment (its `;params` already cut off) into canonical form, appending it to
/// `out`: unreserved characters decoded, every other escape kept in upper-case hex.
/// `decoded` is scratch space for the UTF-8 check of the fully decoded segment.
fn canonical_segment(raw: &[u8], out: &mut String, decoded: &mut Vec<u8>) -> Result<(), PathError> {
    decoded.clear();
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    raw.get(i + 1).copied().and_then(hex_value),
                    raw.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::InvalidPercentEncoding);
                };
                let v = hi << 4 | lo;
                match v {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                    v if is_unreserved(v) => out.push(v as char),
                    v => {
                        out.push('%');
                        out.push(HEX_UPPER[(v >> 4) as usize] as char);
                        out.push(HEX_UPPER[(v & 0xf) as usize] as char);
                    }
                }
                decoded.push(v);
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            0x80.. => return Err(PathError::NonAscii),
            b => {
                out.push(b as char);
                decoded.push(b);
                i += 1;
            }
        }
    }
    if std::str::from_utf8(decoded).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    Ok(())
}

/// Returns the canonical form of an origin-form path (no query): `;params` removed from
/// every segment, unreserved escapes decoded, `//` collapsed, `.` and `..` resolved. A
/// trailing slash is kept, since servers tell `/x/` from `/x`.
pub fn canonicalize(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if bytes.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    // Raw bytes are checked across the whole path first, `;params` included: those are cut
    // off below, and a control byte or a space must not be dropped silently with them (no
    // valid request target holds one; hyper refuses them, other callers may not).
    for &b in bytes {
        match b {
            b' ' => return Err(PathError::Whitespace),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            0x80.. => return Err(PathError::NonAscii),
            _ => {}
        }
    }
    // Each kept segment is recorded as a range of `out` so `..` can drop it again.
    let mut out = String::with_capacity(path.len());
    let mut ends: Vec<usize> = Vec::with_capacity(16);
    let mut decoded = Vec::new();
    let mut trailing_slash = false;
    for raw in bytes[1..].split(|&b| b == b'/') {
        // Tomcat cuts path parameters before it decodes, so an encoded `;` stays data.
        let raw = match raw.iter().position(|&b| b == b';') {
            Some(cut) => &raw[..cut],
            None => raw,
        };
        let start = out.len();
        out.push('/');
        canonical_segment(raw, &mut out, &mut decoded)?;
        let segment = &out[start + 1..];
        match segment {
            "" | "." => {
                out.truncate(start);
                trailing_slash = true;
            }
            ".." => {
                out.truncate(start);
                let Some(_) = ends.pop() else {
                    return Err(PathError::AboveRoot);
                };
                let keep = ends.last().copied().unwrap_or(0);
                out.truncate(keep);
                trailing_slash = true;
            }
            _ => {
                ends.push(out.len());
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> String {
        canonicalize(input).unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/display/ENG/Home"), "/display/ENG/Home");
        assert_eq!(ok("/display//ENG///Home"), "/display/ENG/Home");
        assert_eq!(ok("/display/ENG/"), "/display/ENG/");
        assert_eq!(
            ok("/admin;jsessionid=1/users.action"),
            "/admin/users.action"
        );
        assert_eq!(ok("/display/OTHER/..;/ENG/x"), "/display/ENG/x");
        assert_eq!(ok("/display/%45NG/x"), "/display/ENG/x");
        assert_eq!(ok("/a/%2e%2E/b"), "/b");
        assert_eq!(ok("/a/./b/."), "/a/b/");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/b%20c"), "/a/b%20c");
        assert_eq!(ok("/a/b%c3%a9"), "/a/b%C3%A9");
        assert_eq!(ok("/a/%3b"), "/a/%3B");
        assert_eq!(ok("/;x"), "/");
    }

    #[test]
    fn refusals() {
        assert_eq!(canonicalize("/.."), Err(PathError::AboveRoot));
        assert_eq!(canonicalize("/a/../.."), Err(PathError::AboveRoot));
        assert_eq!(canonicalize("/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(canonicalize("/a%5Cb"), Err(PathError::Backslash));
        assert_eq!(canonicalize("/a\\b"), Err(PathError::Backslash));
        assert_eq!(canonicalize("/a%00"), Err(PathError::ControlCharacter));
        assert_eq!(canonicalize("/a%0a"), Err(PathError::ControlCharacter));
        // Found by the `canonical` fuzz target: a space kept, a NUL dropped with `;params`.
        assert_eq!(canonicalize("/b ;+a\0"), Err(PathError::Whitespace));
        assert_eq!(canonicalize("/b;x\0y/c"), Err(PathError::ControlCharacter));
        assert_eq!(canonicalize("/b;\u{e9}/c"), Err(PathError::NonAscii));
        assert_eq!(canonicalize("/a\tb"), Err(PathError::ControlCharacter));
        assert_eq!(
            canonicalize("/a%zz"),
            Err(PathError::InvalidPercentEncoding)
        );
        assert_eq!(canonicalize("/a%4"), Err(PathError::InvalidPercentEncoding));
        assert_eq!(canonicalize("/a%ff"), Err(PathError::InvalidUtf8));
        assert_eq!(canonicalize("*"), Err(PathError::NotAbsolute));
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(canonicalize(&long), Err(PathError::TooLong));
    }
}

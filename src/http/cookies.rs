//! The gateway's own cookies: reading them, setting them, and keeping them from the wiki.

use cookie::Cookie;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

/// The browser session (sealed).
pub const SESSION: &str = "guestgate_session";
/// Prefix of one sign-in in progress (sealed state, nonce, PKCE verifier, return path);
/// the rest of the name is derived from the `state` value, so parallel sign-ins in several
/// tabs do not overwrite each other.
pub const STATE_PREFIX: &str = "guestgate_state_";

/// Cookies the gateway sets for itself. They never reach the wiki: the wiki has no use
/// for them, and a wiki page's script or log must not see a session it could replay.
pub fn is_gateway_cookie(name: &str) -> bool {
    name == SESSION || name.starts_with(STATE_PREFIX)
}

/// Every `name=value` pair of the request's `Cookie` headers, in order. This is the one
/// cookie parser of the gateway: the token source, the session and the stripping of the
/// gateway's own cookies all read pairs through it, so they can never disagree on which
/// cookie a header holds. RFC 6265 §5.2's rules: white space around the name and the value
/// is dropped, and a value in double quotes is read without them; a pair without `=` or
/// with an empty name is skipped.
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .filter_map(|c| Some((c.name_raw()?, c.value_raw()?)))
        .map(|(name, value)| (name, unquoted(value)))
}

fn unquoted(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// The value of the first non-empty cookie called `name`.
pub fn get<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    pairs(headers).find_map(|(k, v)| (k == name && !v.is_empty()).then_some(v))
}

/// Removes the gateway's cookies from `Cookie` headers (dropping a header left empty).
/// Other cookies pass unchanged and in order. A header that is not text cannot be read
/// into pairs: it is dropped whole rather than passed on unexamined.
pub fn strip_gateway_cookies(headers: &mut HeaderMap) {
    let touched = headers.get_all(COOKIE).iter().any(|v| {
        v.to_str().map_or(true, |s| {
            Cookie::split_parse(s)
                .filter_map(Result::ok)
                .any(|c| c.name_raw().is_some_and(is_gateway_cookie))
        })
    });
    if !touched {
        return;
    }
    let values: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    headers.remove(COOKIE);
    for value in values {
        let Ok(text) = value.to_str() else { continue };
        let kept: Vec<&str> = text
            .split(';')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
            .filter(|pair| {
                // Judged by the same parser as `pairs`; a piece it cannot read is kept as
                // the wiki would see it (it names no gateway cookie `pairs` could find).
                Cookie::parse(*pair).map_or(true, |c| !is_gateway_cookie(c.name()))
            })
            .collect();
        if kept.is_empty() {
            continue;
        }
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.append(COOKIE, v);
        }
    }
}

/// A `Set-Cookie` value for one of the gateway's cookies: `HttpOnly` (no script reads it),
/// `SameSite=Lax` (sent on the top-level navigation back from the identity provider, not on
/// cross-site subrequests), `Secure` whenever the browser reaches the gateway over TLS.
/// `max_age` 0 deletes the cookie.
pub fn set(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> HeaderValue {
    let mut s = format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax");
    if secure {
        s.push_str("; Secure");
    }
    HeaderValue::from_str(&s)
        .unwrap_or_else(|_| HeaderValue::from_static("guestgate_invalid=; Max-Age=0"))
}

/// Deletes a cookie set with `path`.
pub fn clear(name: &str, path: &str, secure: bool) -> HeaderValue {
    set(name, "", path, 0, secure)
}

/// Appends `Set-Cookie` values to a response.
pub fn append_all(headers: &mut HeaderMap, cookies: impl IntoIterator<Item = HeaderValue>) {
    for c in cookies {
        headers.append(SET_COOKIE, c);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn gateway_cookies_are_stripped_and_others_kept() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a=1; guestgate_session=xyz; b=2"),
        );
        h.append(COOKIE, HeaderValue::from_static("guestgate_state_abc=s"));
        h.append(COOKIE, HeaderValue::from_static("guestgate_token=t"));
        strip_gateway_cookies(&mut h);
        let left: Vec<_> = h
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, ["a=1; b=2", "guestgate_token=t"]);
    }

    #[test]
    fn untouched_headers_stay_byte_for_byte() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1;b=2"));
        strip_gateway_cookies(&mut h);
        assert_eq!(h.get(COOKIE).unwrap(), "a=1;b=2");
    }

    #[test]
    fn set_cookie_attributes() {
        let v = set(SESSION, "v", "/", 60, true);
        assert_eq!(
            v.to_str().unwrap(),
            "guestgate_session=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
        );
        let v = clear(SESSION, "/", false);
        assert_eq!(
            v.to_str().unwrap(),
            "guestgate_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn get_finds_the_named_cookie() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("x=1; guestgate_session=abc"),
        );
        assert_eq!(get(&h, SESSION), Some("abc"));
        assert_eq!(get(&h, "guestgate_sess"), None);
    }

    #[test]
    fn reading_and_stripping_agree_on_white_space_and_quotes() {
        // The same pair, however it is spaced or quoted, is read as the gateway's cookie
        // and therefore also kept from the wiki.
        for header in [
            "guestgate_session=abc",
            "guestgate_session =abc",
            " guestgate_session= abc ",
            "x=1;guestgate_session=\"abc\"",
        ] {
            let mut h = HeaderMap::new();
            h.append(COOKIE, HeaderValue::from_str(header).unwrap());
            assert_eq!(get(&h, SESSION), Some("abc"), "{header}");
            strip_gateway_cookies(&mut h);
            assert_eq!(get(&h, SESSION), None, "{header}");
        }
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a = 1; novalue; =x; b=\"2\""),
        );
        let all: Vec<_> = pairs(&h).collect();
        assert_eq!(all, [("a", "1"), ("b", "2")]);
    }
}

//! The gateway's own cookies: reading them, setting them, and keeping them from the wiki.

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

/// The value of the first cookie called `name`.
pub fn get<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
        .filter(|v| !v.is_empty())
}

/// Removes the gateway's cookies from `Cookie` headers (dropping a header left empty).
/// Other cookies pass unchanged and in order.
pub fn strip_gateway_cookies(headers: &mut HeaderMap) {
    let values: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    if values.is_empty() {
        return;
    }
    let touched = values.iter().any(|v| {
        // A header that is not text cannot be parsed into pairs: it is dropped whole below
        // rather than passed on unexamined.
        v.to_str().map_or(true, |s| {
            s.split(';')
                .any(|p| is_gateway_cookie(p.trim().split('=').next().unwrap_or("").trim()))
        })
    });
    if !touched {
        return;
    }
    headers.remove(COOKIE);
    for value in values {
        let Ok(text) = value.to_str() else { continue };
        let kept: Vec<&str> = text
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .filter(|p| !is_gateway_cookie(p.split('=').next().unwrap_or("").trim()))
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
}

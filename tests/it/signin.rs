//! Browser sign-in against a real OpenID Provider (`oidc-provider`, tests/oidc): the code
//! flow with PKCE over HTTP, sessions, refresh, logout, key rotation, and the refusals —
//! tampered state, replayed code and state, wrong nonce, expired or forged sessions.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use crate::support::*;
use http::StatusCode;

/// A browser stand-in: one cookie jar for 127.0.0.1 (browsers do not split cookies by
/// port), `Accept: text/html`, redirects followed by hand so each step can be checked.
#[derive(Default)]
struct Browser {
    jar: BTreeMap<String, String>,
}

impl Browser {
    fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn store(&mut self, a: &Answer) {
        for v in a.headers.get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (name, value) = pair.split_once('=').unwrap();
            let attrs = attrs.to_ascii_lowercase();
            let deleted = attrs.contains("max-age=0") || attrs.contains("expires=thu, 01 jan 1970");
            if deleted || value.is_empty() {
                self.jar.remove(name.trim());
            } else {
                self.jar.insert(name.trim().to_string(), value.to_string());
            }
        }
    }

    async fn send(&mut self, method: &str, url: &str, body: &str) -> Answer {
        let cookies = self.cookie_header();
        let mut headers = vec![("accept", "text/html,application/xhtml+xml,*/*;q=0.8")];
        if !cookies.is_empty() {
            headers.push(("cookie", &cookies));
        }
        if method == "POST" {
            headers.push(("content-type", "application/x-www-form-urlencoded"));
        }
        let a = request(method, url, &headers, body).await;
        self.store(&a);
        a
    }

    async fn get(&mut self, url: &str) -> Answer {
        self.send("GET", url, "").await
    }

    /// Logs out as the signed-out page's form does: a same-origin `POST`.
    async fn logout(&mut self, gw: &TestGateway) -> Answer {
        let cookies = self.cookie_header();
        let headers = [
            ("accept", "text/html"),
            ("cookie", cookies.as_str()),
            ("sec-fetch-site", "same-origin"),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        let a = request("POST", &gw.url("/_guestgate/logout"), &headers, "").await;
        self.store(&a);
        a
    }

    /// Follows redirects from `a` (answered at `url`) while they stay at `origin`; returns
    /// the last answer and its URL. A redirect elsewhere is returned unfollowed.
    async fn follow_within(
        &mut self,
        mut url: String,
        mut a: Answer,
        origin: &str,
    ) -> (String, Answer) {
        for _ in 0..20 {
            if !a.status.is_redirection() {
                break;
            }
            let next = absolute(&url, a.header("location").unwrap());
            if !next.starts_with(origin) {
                break;
            }
            url = next;
            a = self.get(&url).await;
        }
        (url, a)
    }
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let origin_end = base[8..].find('/').map_or(base.len(), |i| i + 8);
    format!("{}{location}", &base[..origin_end])
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn with_param(url: &str, name: &str, value: &str) -> String {
    let (base, q) = url.split_once('?').unwrap();
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        s.append_pair(&k, if k == name { value } else { &v });
    }
    format!("{base}?{}", s.finish())
}

/// At the IdP: from the authorization URL through the login form as `user`, up to the
/// redirect back to the gateway, whose URL (the callback) is returned unfollowed.
async fn idp_login(b: &mut Browser, idp: &Idp, auth_url: &str, user: &str) -> String {
    assert!(auth_url.starts_with(&idp.issuer), "{auth_url}");
    let first = b.get(auth_url).await;
    let (url, a) = b
        .follow_within(auth_url.to_string(), first, &idp.issuer)
        .await;
    if a.status.is_redirection() {
        // Already signed in at the IdP: straight back.
        return absolute(&url, a.header("location").unwrap());
    }
    assert_eq!(
        a.status,
        StatusCode::OK,
        "login form at {url}: {}",
        a.text()
    );
    assert!(a.text().contains("name=\"login\""), "{}", a.text());
    let posted = b.send("POST", &url, &format!("login={user}")).await;
    assert!(posted.status.is_redirection(), "{}", posted.text());
    let (url, a) = b.follow_within(url, posted, &idp.issuer).await;
    assert!(
        a.status.is_redirection(),
        "IdP ended at {url}: {} {}",
        a.status,
        a.text()
    );
    absolute(&url, a.header("location").unwrap())
}

/// Asks for `path` as a browser: the gateway answers 302 to the IdP. Returns that URL.
async fn start(b: &mut Browser, gw: &TestGateway, path: &str) -> String {
    let a = b.get(&gw.url(path)).await;
    assert_eq!(a.status, StatusCode::FOUND, "{}", a.text());
    a.header("location").unwrap().to_string()
}

/// The whole sign-in: ask for `path`, sign in as `user`, come back. Returns the callback's
/// answer (302 to `path`).
async fn sign_in(b: &mut Browser, gw: &TestGateway, idp: &Idp, user: &str, path: &str) -> Answer {
    let auth = start(b, gw, path).await;
    let callback = idp_login(b, idp, &auth, user).await;
    let a = b.get(&callback).await;
    assert_eq!(a.status, StatusCode::FOUND, "callback: {}", a.text());
    a
}

fn set_cookie<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
    a.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
}

async fn setup(idp_env: &[(&str, &str)], oidc_extra: &str) -> (Idp, Upstream, TestGateway) {
    let idp = start_idp(idp_env);
    let up = start_upstream().await;
    let gw = start_oidc_gateway(TestConfig::new(&up.url()), &idp.issuer, oidc_extra).await;
    (idp, up, gw)
}

#[tokio::test]
async fn a_guest_signs_in_and_is_held_to_the_guest_policy() {
    need_node_modules!();
    let (idp, up, gw) = setup(&[], "").await;
    let mut b = Browser::default();

    // An API client without a token still gets 401, never a redirect.
    let a = get(
        &gw.url("/display/ENG/Home"),
        &[("accept", "application/json")],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["reason"], "missing_token");

    // A browser is sent to the IdP with state, nonce and a PKCE challenge.
    let asked = b.get(&gw.url("/display/ENG/Home?focus=1")).await;
    assert_eq!(asked.status, StatusCode::FOUND);
    let auth = asked.header("location").unwrap().to_string();
    assert!(auth.starts_with(&format!("{}/auth?", idp.issuer)), "{auth}");
    assert_eq!(query_param(&auth, "response_type").as_deref(), Some("code"));
    assert_eq!(
        query_param(&auth, "client_id").as_deref(),
        Some("guestgate")
    );
    assert_eq!(
        query_param(&auth, "redirect_uri"),
        Some(gw.url("/_guestgate/callback"))
    );
    assert_eq!(
        query_param(&auth, "code_challenge_method").as_deref(),
        Some("S256")
    );
    for p in ["state", "nonce", "code_challenge"] {
        assert!(query_param(&auth, p).is_some_and(|v| v.len() >= 43), "{p}");
    }
    let state_cookie = asked
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with("guestgate_state_"))
        .unwrap();
    assert!(
        state_cookie.contains("Path=/_guestgate/callback")
            && state_cookie.contains("HttpOnly")
            && state_cookie.contains("SameSite=Lax")
            && !state_cookie.contains("Secure"),
        "plain http: no Secure; {state_cookie}"
    );
    // Nothing of the return path travels through the IdP.
    assert!(!auth.contains("focus"), "{auth}");

    let callback = idp_login(&mut b, &idp, &auth, "gary").await;
    assert!(
        callback.starts_with(&gw.url("/_guestgate/callback?")),
        "{callback}"
    );
    let back = b.get(&callback).await;
    assert_eq!(back.status, StatusCode::FOUND, "{}", back.text());
    assert_eq!(back.header("location"), Some("/display/ENG/Home?focus=1"));
    assert_eq!(back.header("cache-control"), Some("private, no-store"));
    let session = set_cookie(&back, "guestgate_session").unwrap();
    assert!(
        session.contains("Path=/")
            && session.contains("HttpOnly")
            && session.contains("SameSite=Lax"),
        "{session}"
    );
    let session_len = session.split(';').next().unwrap().len();
    assert!(session_len < 4000, "cookie of {session_len} bytes");
    assert!(
        set_cookie(&back, state_cookie.split('=').next().unwrap())
            .is_some_and(|c| c.contains("Max-Age=0")),
        "the state cookie is cleared"
    );

    // Signed in: the guest reaches the granted space, and only as what the gateway says.
    let spoof = b.cookie_header();
    let a = request(
        "GET",
        &gw.url("/display/ENG/Home"),
        &[
            ("cookie", &spoof),
            ("x-guestgate-user", "alice"),
            ("accept", "text/html"),
        ],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let seen = up.forwarded().pop().unwrap();
    assert_eq!(seen.header("x-guestgate-user"), Some("gary"));
    assert_eq!(seen.header("x-guestgate-guest"), Some("true"));
    let forwarded_cookies = seen.header("cookie").unwrap_or("");
    assert!(
        !forwarded_cookies.contains("guestgate_session"),
        "the session never reaches the wiki: {forwarded_cookies}"
    );
    assert!(
        forwarded_cookies.contains("_session="),
        "other cookies pass: {forwarded_cookies}"
    );

    // Groups from the ID token (acme-guests) make gary a guest: HR is not his.
    let a = b.get(&gw.url("/display/HR/Home")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.text().contains("space_not_granted"), "{}", a.text());
    let a = b.get(&gw.url("/browsepeople.action")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(up.forwarded().iter().all(|s| !s.uri.contains("/HR/")));

    // A regular user, in another browser.
    let mut other = Browser::default();
    sign_in(&mut other, &gw, &idp, "alice", "/display/HR/Home").await;
    let a = other.get(&gw.url("/display/HR/Home")).await;
    assert_eq!(a.status, StatusCode::OK);
    // A page for one session only: shared caches must not keep it for others.
    assert!(set_cookie(&a, "guestgate_session").is_none());
    assert_eq!(a.header("cache-control"), Some("private"));
    assert!(
        a.header("vary").is_some_and(|v| v.contains("Cookie")),
        "{:?}",
        a.headers
    );
    let seen = up.forwarded().pop().unwrap();
    assert_eq!(seen.header("x-guestgate-user"), Some("alice"));
    assert_eq!(seen.header("x-guestgate-guest"), Some("false"));
}

#[tokio::test]
async fn tampered_missing_or_foreign_state_is_refused_with_a_page() {
    need_node_modules!();
    let (idp, up, gw) = setup(&[], "").await;
    let mut b = Browser::default();
    let auth = start(&mut b, &gw, "/display/ENG/Home").await;
    let callback = idp_login(&mut b, &idp, &auth, "gary").await;

    let tampered = with_param(
        &callback,
        "state",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    let a = b.get(&tampered).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let page = a.text();
    assert!(page.contains("state_mismatch"), "{page}");
    assert!(
        page.contains("Sign-in failed") && page.contains("/_guestgate/login"),
        "{page}"
    );
    assert!(set_cookie(&a, "guestgate_session").is_none());

    let no_state = callback.split('?').next().unwrap().to_string() + "?code=x";
    let a = b.get(&no_state).await;
    assert_eq!(
        (a.status, a.text().contains("state_missing")),
        (StatusCode::BAD_REQUEST, true)
    );

    // The right callback in another browser (no state cookie): a login CSRF attempt.
    let mut attacker_victim = Browser::default();
    let a = attacker_victim.get(&callback).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.text().contains("state_mismatch"));

    // The genuine browser still completes its sign-in.
    let a = b.get(&callback).await;
    assert_eq!(a.status, StatusCode::FOUND, "{}", a.text());
    assert!(set_cookie(&a, "guestgate_session").is_some());
    assert!(up.forwarded().is_empty(), "no callback reached the wiki");
}

#[tokio::test]
async fn replayed_state_and_replayed_code_are_refused() {
    need_node_modules!();
    let (idp, _up, gw) = setup(&[], "").await;
    let mut b = Browser::default();
    let auth = start(&mut b, &gw, "/display/ENG/Home").await;
    let state_jar = b.jar.clone();
    let callback = idp_login(&mut b, &idp, &auth, "gary").await;
    let ok = b.get(&callback).await;
    assert_eq!(ok.status, StatusCode::FOUND);

    // The same callback again, state cookie put back: the state is single use.
    let mut replay = Browser { jar: state_jar };
    let a = replay.get(&callback).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.text().contains("state_reused"), "{}", a.text());

    // The used code under a fresh, valid state: the IdP refuses it.
    let mut fresh = Browser::default();
    let auth2 = start(&mut fresh, &gw, "/display/ENG/Home").await;
    let state2 = query_param(&auth2, "state").unwrap();
    let code1 = query_param(&callback, "code").unwrap();
    let forged = format!(
        "{}?code={code1}&state={state2}",
        gw.url("/_guestgate/callback")
    );
    let a = fresh.get(&forged).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    assert!(a.text().contains("code_rejected"), "{}", a.text());
    assert!(set_cookie(&a, "guestgate_session").is_none());
}

#[tokio::test]
async fn an_id_token_with_another_nonce_is_refused() {
    need_node_modules!();
    let (idp, _up, gw) = setup(&[], "").await;
    let mut b = Browser::default();
    let auth = start(&mut b, &gw, "/display/ENG/Home").await;
    // The IdP is asked with a nonce this browser's sign-in did not send.
    let swapped = with_param(
        &auth,
        "nonce",
        "a-nonce-from-somewhere-else-0123456789abcdef",
    );
    let callback = idp_login(&mut b, &idp, &swapped, "gary").await;
    let a = b.get(&callback).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text());
    assert!(a.text().contains("nonce_mismatch"), "{}", a.text());
    assert!(set_cookie(&a, "guestgate_session").is_none());
    // The failed sign-in's state cookie is cleared at once.
    let state = query_param(&auth, "state").unwrap();
    let cleared = a
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("guestgate_state_"))
        .unwrap_or_else(|| panic!("no state cookie cleared: {:?}", a.headers));
    assert!(
        cleared.contains("Max-Age=0") && cleared.contains("Path=/_guestgate/callback"),
        "{cleared}"
    );
    assert!(
        !b.jar.keys().any(|k| k.starts_with("guestgate_state_")),
        "{:?} ({state})",
        b.jar
    );
}

fn seal_session(keys_b64: &str, session: serde_json::Value) -> String {
    guestgate::identity::oidc::seal::Sealer::from_text(keys_b64)
        .unwrap()
        .seal("guestgate_session", session.to_string().as_bytes())
        .unwrap()
}

#[tokio::test]
async fn expired_forged_and_foreign_sessions_are_not_accepted() {
    need_node_modules!();
    let (_idp, up, gw) = setup(&[], "").await;
    let session = |exp: u64, max: u64| serde_json::json!({"id": "test-session", "sub": "gary", "u": "gary", "g": ["acme-guests"], "exp": exp, "max": max});
    let live = seal_session(SESSION_KEY_B64, session(now() + 300, now() + 3600));
    let expired = seal_session(SESSION_KEY_B64, session(now() - 5, now() + 3600));
    let past_max = seal_session(SESSION_KEY_B64, session(now() + 300, now() - 1));
    let other_key = seal_session(
        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        session(now() + 300, now() + 3600),
    );
    // Due for refresh (within refresh_before_secs), and the provider refuses the token.
    let mut revoked = session(now() + 30, now() + 3600);
    revoked["rt"] = serde_json::json!("a-refresh-token-the-provider-never-issued");
    revoked["id"] = serde_json::json!("refused-at-refresh");
    let revoked = seal_session(SESSION_KEY_B64, revoked);
    // Sealed right but without a session id: it could not be revoked, so it is not taken.
    let mut no_id = session(now() + 300, now() + 3600);
    no_id.as_object_mut().unwrap().remove("id");
    let no_id = seal_session(SESSION_KEY_B64, no_id);
    let mut tampered = live.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();

    let with = |v: &str, accept: &'static str| {
        let cookie = format!("guestgate_session={v}");
        let url = gw.url("/display/ENG/Home");
        async move { get(&url, &[("cookie", &cookie), ("accept", accept)]).await }
    };
    // The format the gateway seals is accepted while it lasts...
    let a = with(&live, "application/json").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(
        up.forwarded().pop().unwrap().header("x-guestgate-user"),
        Some("gary")
    );
    // ...and not once it has ended, nor past its absolute end, nor when forged.
    for (cookie, reason) in [
        (&expired, "session_expired"),
        (&past_max, "session_expired"),
        (&revoked, "session_expired"),
        (&other_key, "invalid_session"),
        (&no_id, "invalid_session"),
        (&tampered, "invalid_session"),
    ] {
        let a = with(cookie, "application/json").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{reason}");
        assert_eq!(a.json()["reason"], reason);
        // A browser is sent to sign in again.
        let a = with(cookie, "text/html").await;
        assert_eq!(a.status, StatusCode::FOUND, "{reason}");
        assert!(a.header("location").unwrap().contains("/auth?"));
    }
    assert_eq!(up.forwarded().len(), 1);
}

#[tokio::test]
async fn sessions_are_refreshed_with_the_refresh_token() {
    need_node_modules!();
    // Access tokens live 3 s; the gateway refreshes 2 s before the end.
    let (idp, up, gw) = setup(&[("ACCESS_TTL_SECS", "3")], "refresh_before_secs = 2").await;
    let mut b = Browser::default();
    sign_in(&mut b, &gw, &idp, "gary", "/display/ENG/Home").await;
    let first = b.jar["guestgate_session"].clone();
    assert_eq!(idp.stats().await["refresh"], 0);

    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let a = b.get(&gw.url("/display/ENG/Home")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let renewed = set_cookie(&a, "guestgate_session").expect("a refreshed session cookie");
    assert!(renewed.contains("HttpOnly"));
    // An answer that sets a session is never stored by a cache.
    assert_eq!(a.header("cache-control"), Some("private, no-store"));
    assert_ne!(b.jar["guestgate_session"], first);
    assert_eq!(idp.stats().await["refresh"], 1);
    assert_eq!(
        up.forwarded().pop().unwrap().header("x-guestgate-user"),
        Some("gary")
    );

    // Long after the first access token ended, the refreshed session still works...
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    let a = b.get(&gw.url("/display/ENG/Home")).await;
    assert_eq!(a.status, StatusCode::OK);

    // ...and the old cookie shares the refresh already done instead of a second one.
    let a = get(
        &gw.url("/display/ENG/Home"),
        &[("cookie", &format!("guestgate_session={first}"))],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(idp.stats().await["refresh"].as_u64().unwrap() <= 2);

    let metrics = get(&gw.admin_url("/metrics"), &[]).await.text();
    let count = |line: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line} in {metrics}"))
    };
    assert!(count("guestgate_session_refreshes_total{result=\"ok\"}") >= 1);
    assert!(count("guestgate_sign_ins_total{result=\"ok\"}") >= 1);
}

#[tokio::test]
async fn logout_clears_the_session_and_ends_the_idp_session() {
    need_node_modules!();
    let (idp, _up, gw) = setup(&[], "").await;
    let mut b = Browser::default();
    sign_in(&mut b, &gw, &idp, "gary", "/display/ENG/Home").await;
    let old = b.jar["guestgate_session"].clone();

    let a = b.logout(&gw).await;
    assert_eq!(a.status, StatusCode::FOUND);
    assert!(
        set_cookie(&a, "guestgate_session").is_some_and(|c| c.contains("Max-Age=0")),
        "cookie cleared"
    );
    assert!(!b.jar.contains_key("guestgate_session"));
    let end = a.header("location").unwrap().to_string();
    assert!(
        end.starts_with(&format!("{}/session/end?", idp.issuer)),
        "{end}"
    );
    assert!(query_param(&end, "id_token_hint").is_some());
    assert_eq!(query_param(&end, "client_id").as_deref(), Some("guestgate"));
    assert_eq!(
        query_param(&end, "post_logout_redirect_uri"),
        Some(gw.url("/_guestgate/signed-out"))
    );

    // The old cookie, replayed, no longer opens a session here.
    let a = get(
        &gw.url("/display/ENG/Home"),
        &[("cookie", &format!("guestgate_session={old}"))],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["reason"], "session_expired");

    // The refresh token (read from the sealed cookie) was revoked by the gateway's logout,
    // before the IdP's own logout runs.
    let plain = guestgate::identity::oidc::seal::Sealer::from_text(SESSION_KEY_B64)
        .unwrap()
        .open("guestgate_session", &old)
        .unwrap();
    let rt = serde_json::from_slice::<serde_json::Value>(&plain).unwrap()["rt"]
        .as_str()
        .unwrap()
        .to_string();
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("guestgate:{OIDC_CLIENT_SECRET}"))
    };
    let a = request(
        "POST",
        &idp.url("/token"),
        &[
            ("authorization", &format!("Basic {basic}")),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        &format!("grant_type=refresh_token&refresh_token={rt}"),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    assert_eq!(a.json()["error"], "invalid_grant");

    // RP-initiated logout at the IdP: confirm, and come back to the signed-out page.
    let confirm = b.get(&end).await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text());
    let html = confirm.text();
    let xsrf = html
        .split("name=\"xsrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    let a = b
        .send(
            "POST",
            &idp.url("/session/end/confirm"),
            &format!("xsrf={xsrf}&logout=yes"),
        )
        .await;
    assert!(a.status.is_redirection(), "{}", a.text());
    assert_eq!(
        a.header("location"),
        Some(gw.url("/_guestgate/signed-out").as_str())
    );
    let page = b.get(&gw.url("/_guestgate/signed-out")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("signed out"));

    // Signed out at the IdP too: the next visit meets the login form again.
    let auth = start(&mut b, &gw, "/display/ENG/Home").await;
    let first = b.get(&auth).await;
    let (_, a) = b.follow_within(auth.clone(), first, &idp.issuer).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text().contains("name=\"login\""));
}

#[tokio::test]
async fn a_rotated_signing_key_is_fetched_from_the_idp() {
    need_node_modules!();
    let (idp, _up, gw) = setup(&[], "").await;
    let mut b = Browser::default();
    sign_in(&mut b, &gw, &idp, "alice", "/display/ENG/Home").await;
    let fetched = idp.stats().await["jwks"].as_u64().unwrap();
    assert!(fetched >= 1);

    let old_kid = idp.stats().await["kid"].as_str().unwrap().to_string();
    let new_kid = idp.rotate_key().await;
    assert_ne!(old_kid, new_kid);
    // A sign-in after the rotation: its ID token names a key the gateway has not seen.
    let mut b2 = Browser::default();
    sign_in(&mut b2, &gw, &idp, "gary", "/display/ENG/Home").await;
    let a = b2.get(&gw.url("/display/ENG/Home")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        idp.stats().await["jwks"].as_u64().unwrap() > fetched,
        "the JWKS was fetched again"
    );
}

#[tokio::test]
async fn groups_come_from_userinfo_when_the_id_token_has_none() {
    need_node_modules!();
    let (idp, up, gw) = setup(&[("CLAIMS_IN_ID_TOKEN", "0")], "").await;
    let mut b = Browser::default();
    sign_in(&mut b, &gw, &idp, "gary", "/display/ENG/Home").await;
    assert!(idp.stats().await["userinfo"].as_u64().unwrap() >= 1);
    assert_eq!(
        b.get(&gw.url("/display/ENG/Home")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        up.forwarded().pop().unwrap().header("x-guestgate-guest"),
        Some("true")
    );
    assert_eq!(
        b.get(&gw.url("/display/HR/Home")).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn return_paths_stay_on_the_gateway_and_the_namespace_is_never_forwarded() {
    need_node_modules!();
    let (idp, up, gw) = setup(&[], "").await;
    for rd in [
        "//evil.example/x",
        "/\\evil.example",
        "https://evil.example/",
    ] {
        let mut b = Browser::default();
        let login = format!(
            "/_guestgate/login?rd={}",
            form_urlencoded::byte_serialize(rd.as_bytes()).collect::<String>()
        );
        let back = sign_in(&mut b, &gw, &idp, "gary", &login).await;
        assert_eq!(back.header("location"), Some("/"), "{rd}");
    }
    let mut b = Browser::default();
    let back = sign_in(
        &mut b,
        &gw,
        &idp,
        "gary",
        "/_guestgate/login?rd=%2Fdisplay%2FENG%2FHome",
    )
    .await;
    assert_eq!(back.header("location"), Some("/display/ENG/Home"));

    for path in [
        "/_guestgate/nothing",
        "/_guestgate",
        "/_guestgate/callback/../x/../../_guestgate/y",
    ] {
        let a = b.get(&gw.url(path)).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
    }
    assert!(
        up.requests().is_empty(),
        "nothing under /_guestgate/ reached the wiki"
    );
}

#[tokio::test]
async fn without_sign_in_configured_the_namespace_is_404_and_browsers_get_401() {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let a = get(&gw.url("/_guestgate/login"), &[]).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = get(&gw.url("/display/ENG/Home"), &[("accept", "text/html")]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn behind_tls_cookies_are_secure_and_the_redirect_uri_is_the_public_one() {
    need_node_modules!();
    let (_idp, _up, gw) = setup(&[], "external_url = \"https://wiki.example.com\"").await;
    let mut b = Browser::default();
    let a = b.get(&gw.url("/display/ENG/Home")).await;
    assert_eq!(a.status, StatusCode::FOUND);
    let auth = a.header("location").unwrap();
    assert_eq!(
        query_param(auth, "redirect_uri").as_deref(),
        Some("https://wiki.example.com/_guestgate/callback")
    );
    let state = a
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with("guestgate_state_"))
        .unwrap();
    assert!(state.ends_with("; Secure"), "{state}");
    let a = b.logout(&gw).await;
    let cleared = set_cookie(&a, "guestgate_session").unwrap();
    assert!(cleared.contains("Secure"), "{cleared}");
}

#[tokio::test]
async fn a_sign_in_that_takes_too_long_is_refused() {
    need_node_modules!();
    let (idp, _up, gw) = setup(&[], "state_ttl_secs = 1").await;
    let mut b = Browser::default();
    let auth = start(&mut b, &gw, "/display/ENG/Home").await;
    let callback = idp_login(&mut b, &idp, &auth, "gary").await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    // The browser would have dropped the cookie by now; one that still sends it is refused.
    let a = b.get(&callback).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.text().contains("state_expired"), "{}", a.text());
    assert!(set_cookie(&a, "guestgate_session").is_none());
}

#[tokio::test]
async fn a_provider_outage_keeps_sessions_until_they_expire() {
    need_node_modules!();
    let (idp, up, gw) = setup(&[], "").await;
    drop(idp); // the provider is gone before the gateway ever talked to it
    let mut due = serde_json::json!({"id": "outage", "sub": "gary", "u": "gary", "g": ["acme-guests"],
        "exp": now() + 30, "max": now() + 3600, "rt": "some-refresh-token"});
    let cookie = format!(
        "guestgate_session={}",
        seal_session(SESSION_KEY_B64, due.clone())
    );
    let a = get(&gw.url("/display/ENG/Home"), &[("cookie", &cookie)]).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "kept while still valid: {}",
        a.text()
    );
    assert!(a.header("set-cookie").is_none());
    assert_eq!(up.forwarded().len(), 1);
    due["exp"] = serde_json::json!(now() - 1);
    let cookie = format!("guestgate_session={}", seal_session(SESSION_KEY_B64, due));
    let a = get(&gw.url("/display/ENG/Home"), &[("cookie", &cookie)]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["reason"], "session_expired");
    // A browser is sent to sign in, but the provider cannot be reached: a 502 page.
    let a = get(
        &gw.url("/display/ENG/Home"),
        &[("cookie", &cookie), ("accept", "text/html")],
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert!(a.text().contains("idp_unavailable"), "{}", a.text());
}

#[tokio::test]
async fn a_sign_in_without_a_groups_claim_is_refused_unless_allowed() {
    need_node_modules!();
    let (idp, up, gw) = setup(&[], "").await;
    // nina's ID token and userinfo both lack `groups`: she must not pass as a regular user.
    let mut b = Browser::default();
    let auth = start(&mut b, &gw, "/display/HR/Home").await;
    let callback = idp_login(&mut b, &idp, &auth, "nina").await;
    let a = b.get(&callback).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text());
    assert!(a.text().contains("groups_unavailable"), "{}", a.text());
    assert!(set_cookie(&a, "guestgate_session").is_none());
    assert!(
        idp.stats().await["userinfo"].as_u64().unwrap() >= 1,
        "userinfo was asked too"
    );
    let a = b.get(&gw.url("/display/HR/Home")).await;
    assert_eq!(a.status, StatusCode::FOUND, "still not signed in");
    assert!(up.forwarded().is_empty());

    // An empty groups claim is a claim: erin signs in — and, placed by no declared group,
    // is refused rather than taken for a regular user.
    let mut b = Browser::default();
    sign_in(&mut b, &gw, &idp, "erin", "/display/ENG/Home").await;
    let a = b.get(&gw.url("/display/ENG/Home")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.text().contains("user_unclassified"), "{}", a.text());

    // With the explicit opt-out, the directory alone decides: nina signs in, and the
    // directory's regular group makes her regular.
    let mut config = TestConfig::new(&up.url());
    config.data = TEST_DATA.replace(
        r#""alice": {"#,
        r#""nina": {"groups": ["confluence-users"]}, "alice": {"#,
    );
    let gw = start_oidc_gateway(config, &idp.issuer, "allow_missing_groups = true").await;
    let mut b = Browser::default();
    sign_in(&mut b, &gw, &idp, "nina", "/display/ENG/Home").await;
    assert_eq!(
        b.get(&gw.url("/display/ENG/Home")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        up.forwarded().pop().unwrap().header("x-guestgate-user"),
        Some("nina")
    );
}

#[tokio::test]
async fn only_invalid_grant_ends_a_session_on_refresh() {
    need_node_modules!();
    // Access tokens live 3 s; the gateway refreshes 2 s before the end.
    let (idp, _up, gw) = setup(&[("ACCESS_TTL_SECS", "3")], "refresh_before_secs = 2").await;
    let mut limited = Browser::default();
    sign_in(&mut limited, &gw, &idp, "gary", "/display/ENG/Home").await;
    let mut misconfigured = Browser::default();
    sign_in(&mut misconfigured, &gw, &idp, "gary", "/display/ENG/Home").await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    // Rate limited, or the client itself refused: nothing is said about the refresh token,
    // so the session is kept until it expires, as in an outage.
    for (b, status, error) in [
        (&mut limited, 429, "slow_down"),
        (&mut misconfigured, 401, "invalid_client"),
    ] {
        let a = request(
            "POST",
            &idp.url(&format!("/__test/token-fail?status={status}&error={error}")),
            &[],
            "",
        )
        .await;
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        let before = idp.stats().await["token_failed"].as_u64().unwrap_or(0);
        for _ in 0..2 {
            let a = b.get(&gw.url("/display/ENG/Home")).await;
            assert_eq!(a.status, StatusCode::OK, "{status}: {}", a.text());
            assert!(set_cookie(&a, "guestgate_session").is_none());
        }
        assert!(
            idp.stats().await["token_failed"].as_u64().unwrap() > before,
            "the refresh was tried and answered {status}"
        );
    }

    // invalid_grant (the refresh token is dead) still ends a session at once.
    let mut revoked = Browser::default();
    request("POST", &idp.url("/__test/token-fail?status=0"), &[], "").await;
    sign_in(&mut revoked, &gw, &idp, "gary", "/display/ENG/Home").await;
    request(
        "POST",
        &idp.url("/__test/token-fail?status=400&error=invalid_grant"),
        &[],
        "",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let cookie = format!("guestgate_session={}", revoked.jar["guestgate_session"]);
    let a = get(&gw.url("/display/ENG/Home"), &[("cookie", &cookie)]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["reason"], "session_expired");
}

#[tokio::test]
async fn logout_ends_every_copy_of_the_session_refreshed_or_not() {
    need_node_modules!();
    // Access tokens live 3 s; the gateway refreshes 2 s before the end.
    let (idp, _up, gw) = setup(&[("ACCESS_TTL_SECS", "3")], "refresh_before_secs = 2").await;
    let mut b = Browser::default();
    sign_in(&mut b, &gw, &idp, "gary", "/display/ENG/Home").await;
    let copy = b.jar["guestgate_session"].clone();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let a = b.get(&gw.url("/display/ENG/Home")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(set_cookie(&a, "guestgate_session").is_some(), "refreshed");
    assert_ne!(b.jar["guestgate_session"], copy);
    // The pre-refresh copy still works before logout (it shares the refresh)...
    let with_copy = [("cookie", format!("guestgate_session={copy}"))];
    let headers: Vec<(&str, &str)> = with_copy.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        get(&gw.url("/display/ENG/Home"), &headers).await.status,
        StatusCode::OK
    );
    // ...and not after logging out with the refreshed cookie.
    let a = b.logout(&gw).await;
    assert_eq!(a.status, StatusCode::FOUND);
    let a = get(&gw.url("/display/ENG/Home"), &headers).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["reason"], "session_expired");
}

#[tokio::test]
async fn error_pages_name_no_provider_urls_or_low_level_causes() {
    need_node_modules!();
    let (idp, _up, gw) = setup(&[], "").await;
    let issuer = idp.issuer.clone();
    drop(idp); // discovery will fail with the provider's URL and a connect error
    let a = get(&gw.url("/display/ENG/Home"), &[("accept", "text/html")]).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    let page = a.text();
    assert!(page.contains("idp_unavailable"), "{page}");
    assert!(
        page.contains("the identity provider cannot be reached"),
        "{page}"
    );
    for leak in [issuer.as_str(), "127.0.0.1", ".well-known", "error"] {
        assert!(!page.contains(leak), "{leak:?} in {page}");
    }
}

#[tokio::test]
async fn logout_without_a_host_still_clears_the_cookie() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    need_node_modules!();
    let (idp, _up, gw) = setup(&[], "").await;
    let mut b = Browser::default();
    sign_in(&mut b, &gw, &idp, "gary", "/display/ENG/Home").await;
    let session = b.jar["guestgate_session"].clone();
    // HTTP/1.0 may omit `Host`: the gateway cannot name its origin to the provider, but the
    // logout happens all the same.
    let addr = gw.url("").trim_start_matches("http://").to_string();
    let addr = addr.trim_end_matches('/');
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!("POST /_guestgate/logout HTTP/1.0\r\nCookie: guestgate_session={session}\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(
        raw.starts_with("http/1.0 302") || raw.starts_with("http/1.1 302"),
        "{raw}"
    );
    assert!(
        raw.contains("set-cookie: guestgate_session=; path=/; max-age=0"),
        "{raw}"
    );
    assert!(!raw.contains("post_logout_redirect_uri"), "{raw}");
    let a = get(
        &gw.url("/display/ENG/Home"),
        &[("cookie", &format!("guestgate_session={session}"))],
    )
    .await;
    assert_eq!(a.json()["reason"], "session_expired");
}

#[tokio::test]
async fn logout_is_a_same_origin_post_and_a_get_only_asks() {
    need_node_modules!();
    let (idp, _up, gw) = setup(&[], "").await;
    let mut b = Browser::default();
    sign_in(&mut b, &gw, &idp, "gary", "/display/ENG/Home").await;
    let session = b.jar["guestgate_session"].clone();
    let still_signed_in = |what: &'static str| {
        let cookie = format!("guestgate_session={session}");
        let url = gw.url("/display/ENG/Home");
        async move {
            let a = get(&url, &[("cookie", &cookie)]).await;
            assert_eq!(a.status, StatusCode::OK, "{what}: {}", a.text());
        }
    };

    // A link or an <img> elsewhere: a page with a form, nothing ended.
    let a = b.get(&gw.url("/_guestgate/logout")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.text()
            .contains("<form method=\"post\" action=\"/_guestgate/logout\">"),
        "{}",
        a.text()
    );
    assert!(set_cookie(&a, "guestgate_session").is_none());
    still_signed_in("after GET").await;

    // A form on another site posting here: refused.
    let cookie = format!("guestgate_session={session}");
    let origin = gw.url("").trim_end_matches('/').to_string();
    for cross in [
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![("origin", "https://evil.example")],
        vec![("origin", "null")],
        // Sec-Fetch-Site wins over a forged-looking Origin.
        vec![
            ("sec-fetch-site", "cross-site"),
            ("origin", origin.as_str()),
        ],
    ] {
        let mut headers = vec![("cookie", cookie.as_str()), ("accept", "text/html")];
        headers.extend(cross.iter().copied());
        let a = request("POST", &gw.url("/_guestgate/logout"), &headers, "").await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{cross:?}");
        assert!(a.text().contains("cross_site_request"), "{}", a.text());
        assert!(set_cookie(&a, "guestgate_session").is_none());
        still_signed_in("after a cross-site POST").await;
    }

    // This origin's own form: signed out.
    let a = request(
        "POST",
        &gw.url("/_guestgate/logout"),
        &[("cookie", cookie.as_str()), ("origin", origin.as_str())],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::FOUND, "{}", a.text());
    assert!(set_cookie(&a, "guestgate_session").is_some_and(|c| c.contains("Max-Age=0")));
    let a = get(&gw.url("/display/ENG/Home"), &[("cookie", &cookie)]).await;
    assert_eq!(a.json()["reason"], "session_expired");
}

#[tokio::test]
async fn the_user_name_never_falls_back_to_sub() {
    need_node_modules!();
    // The ID token carries only `sub` (here spelling a user name) and userinfo is not asked:
    // nothing names the user by `preferred_username`.
    let (idp, up, gw) = setup(
        &[("CLAIMS_IN_ID_TOKEN", "0")],
        "userinfo_groups = false\nallow_missing_groups = true",
    )
    .await;
    let mut b = Browser::default();
    let auth = start(&mut b, &gw, "/display/ENG/Home").await;
    let callback = idp_login(&mut b, &idp, &auth, "gary").await;
    let a = b.get(&callback).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text());
    assert!(a.text().contains("user_unavailable"), "{}", a.text());
    assert!(set_cookie(&a, "guestgate_session").is_none());
    assert!(up.forwarded().is_empty());
}

/// Two replicas on one PostgreSQL: a sign-out through one ends the session on the other
/// within a second, and a sign-in state completed on one is refused by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgres_share_sign_outs_and_used_states() {
    need_node_modules!();
    let Some(pg) = start_postgres("replicas_on_postgres_share_sign_outs") else {
        return;
    };
    let idp = start_idp(&[]);
    let up = start_upstream().await;
    let replica = || {
        let mut c = TestConfig::new(&up.url());
        c.extra_sections = format!(
            "[store]\nurl = \"{}\"\npoll_interval_secs = 1\ntimeout_secs = 2\n",
            pg.url()
        );
        start_oidc_gateway(c, &idp.issuer, "")
    };
    let a = replica().await;
    let b = replica().await;
    for gw in [&a, &b] {
        for _ in 0..500 {
            if get(&gw.admin_url("/readyz"), &[]).await.status == StatusCode::OK {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    // Sign in through a; the state is used up for b as well.
    let mut browser = Browser::default();
    let auth = start(&mut browser, &a, "/display/ENG/Home").await;
    let state_jar = browser.jar.clone();
    let callback = idp_login(&mut browser, &idp, &auth, "gary").await;
    assert_eq!(browser.get(&callback).await.status, StatusCode::FOUND);
    let mut replay = Browser { jar: state_jar };
    let on_b = callback.replace(&a.addr.to_string(), &b.addr.to_string());
    let r = replay.get(&on_b).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("state_reused"), "{}", r.text());

    // The session cookie works on b, until a signs it out.
    let cookie = format!("guestgate_session={}", browser.jar["guestgate_session"]);
    let page_b = b.url("/display/ENG/Home");
    let cookie_header = [("cookie", cookie.as_str())];
    let on_b = || get(&page_b, &cookie_header);
    assert_eq!(on_b().await.status, StatusCode::OK);
    assert_eq!(browser.logout(&a).await.status, StatusCode::FOUND);
    let start = std::time::Instant::now();
    loop {
        let r = on_b().await;
        if r.status == StatusCode::UNAUTHORIZED {
            assert_eq!(r.json()["reason"], "session_expired");
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "b still accepts the signed-out session: {}",
            r.status
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // A replica that starts later learns of the sign-out from the store.
    let c = replica().await;
    let mut late = None;
    for _ in 0..100 {
        let r = get(&c.url("/display/ENG/Home"), &[("cookie", cookie.as_str())]).await;
        if r.status == StatusCode::UNAUTHORIZED {
            late = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        late.is_some(),
        "a late replica accepts a signed-out session"
    );
}

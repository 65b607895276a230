//! A corpus of hostile requests, each sent as raw bytes over its own socket: path tricks
//! against blocked families and other spaces, header tricks, request smuggling, token
//! tricks. Each case names the status it must get and what, if anything, the wiki may see.
#![allow(clippy::unwrap_used)]

use crate::support::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

/// What the wiki may receive for one case.
#[derive(Debug, Clone, Copy)]
enum Wiki {
    /// Nothing at all.
    Nothing,
    /// Exactly one forwarded request, with this URI.
    Sees(&'static str),
}

struct Case {
    name: &'static str,
    raw: Vec<u8>,
    status: u16,
    wiki: Wiki,
}

/// The status line's code and the whole answer of one raw exchange.
async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> (u16, String) {
    let answer = crate::support::raw(addr, raw).await;
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// A request as gary (a guest granted `view` and `comment` in ENG) would send it.
fn as_user(token: &str, method: &str, target: &str, extra: &str) -> Vec<u8> {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: wiki.example\r\nAuthorization: Bearer {token}\r\n\
         {extra}Connection: close\r\n\r\n"
    )
    .into_bytes()
}

fn unsigned_token(header: serde_json::Value, claims: &serde_json::Value, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

fn hs_token(header: serde_json::Value, claims: &serde_json::Value, secret: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", B64.encode(tag.as_ref()))
}

fn corpus() -> Vec<Case> {
    let gary = token("gary", &[]);
    let alice = token("alice", &[]);
    let g = |target: &str| as_user(&gary, "GET", target, "");
    let mut cases = Vec::new();
    let mut case = |name, raw: Vec<u8>, status, wiki| {
        cases.push(Case {
            name,
            raw,
            status,
            wiki,
        })
    };

    // ------------------------------------------------ path tricks (as the guest gary)
    case(
        "baseline granted page",
        g("/display/ENG/Home"),
        200,
        Wiki::Sees("/display/ENG/Home"),
    );
    case(
        "baseline admin",
        g("/admin/users.action"),
        403,
        Wiki::Nothing,
    );
    case(
        "path parameter on admin",
        g("/admin;x/"),
        403,
        Wiki::Nothing,
    );
    case(
        "jsessionid on admin",
        g("/admin;jsessionid=ABC/users.action"),
        403,
        Wiki::Nothing,
    );
    case(
        "dot-dot with params into granted space",
        g("/display/HR/..;/ENG/Home"),
        200,
        Wiki::Sees("/display/ENG/Home"),
    );
    case(
        "dot-dot with params out of granted space",
        g("/display/ENG/..;/HR/Salaries"),
        403,
        Wiki::Nothing,
    );
    case(
        "encoded dot-dot to admin",
        g("/display/ENG/%2e%2e/%2e%2e/admin/"),
        403,
        Wiki::Nothing,
    );
    case(
        "upper-case encoded dot-dot to other space",
        g("/display/ENG/%2E%2E/HR"),
        403,
        Wiki::Nothing,
    );
    case(
        "mixed encoded dots",
        g("/display/ENG/.%2e/HR/x"),
        403,
        Wiki::Nothing,
    );
    case(
        "encoded slash",
        g("/display/ENG%2f..%2fHR"),
        400,
        Wiki::Nothing,
    );
    case(
        "encoded slash upper case",
        g("/display/ENG/..%2Fadmin"),
        400,
        Wiki::Nothing,
    );
    case(
        "encoded backslash",
        g("/display/ENG/..%5cHR"),
        400,
        Wiki::Nothing,
    );
    case(
        "raw backslash",
        g("/display/ENG/..\\HR"),
        400,
        Wiki::Nothing,
    );
    case(
        "double-encoded dots stay data",
        g("/display/ENG/%252e%252e/HR"),
        200,
        Wiki::Sees("/display/ENG/%252e%252e/HR"),
    );
    case(
        "double-encoded slash stays data",
        g("/display/ENG/a%252fb"),
        200,
        Wiki::Sees("/display/ENG/a%252fb"),
    );
    case(
        "lower-case space key",
        g("/display/hr/Home"),
        403,
        Wiki::Nothing,
    );
    case(
        "mixed-case space key granted",
        g("/display/eNg/Home"),
        200,
        Wiki::Sees("/display/eNg/Home"),
    );
    case(
        "upper-case family prefix",
        g("/DISPLAY/ENG/Home"),
        403,
        Wiki::Nothing,
    );
    case("upper-case admin", g("/ADMIN/"), 403, Wiki::Nothing);
    case(
        "encoded letters of admin",
        g("/%61dmin/"),
        403,
        Wiki::Nothing,
    );
    case(
        "encoded letters of space",
        g("/display/%48%52/Home"),
        403,
        Wiki::Nothing,
    );
    case(
        "encoded letters of granted space",
        g("/display/%45%4e%47/Home"),
        200,
        Wiki::Sees("/display/ENG/Home"),
    );
    case(
        "double slash before admin",
        g("//admin/"),
        403,
        Wiki::Nothing,
    );
    case(
        "dot segments around admin",
        g("/./admin/./"),
        403,
        Wiki::Nothing,
    );
    case(
        "climb to admin",
        g("/display/ENG/../../admin"),
        403,
        Wiki::Nothing,
    );
    case("above the root", g("/.."), 400, Wiki::Nothing);
    case(
        "far above the root",
        g("/display/../../etc/passwd"),
        400,
        Wiki::Nothing,
    );
    case(
        "encoded dots above the root",
        g("/%2e%2e/admin"),
        400,
        Wiki::Nothing,
    );
    case("encoded NUL", g("/display/ENG/%00"), 400, Wiki::Nothing);
    case(
        "encoded CRLF",
        g("/display/ENG/%0d%0aX-Injected:%20yes"),
        400,
        Wiki::Nothing,
    );
    case(
        "invalid UTF-8 after decoding",
        g("/display/ENG/%c3%28"),
        400,
        Wiki::Nothing,
    );
    case(
        "overlong UTF-8 slash",
        g("/display/ENG/%c0%af"),
        400,
        Wiki::Nothing,
    );
    case("broken escape", g("/display/ENG/%zz"), 400, Wiki::Nothing);
    case(
        "people directory with params",
        g("/browsepeople.action;jsessionid=x"),
        403,
        Wiki::Nothing,
    );
    case(
        "user search via dot-dot",
        g("/rest/api/user/../search/user"),
        403,
        Wiki::Nothing,
    );
    case(
        "user search with empty params",
        g("/rest/api/search;/user"),
        403,
        Wiki::Nothing,
    );
    case(
        "semicolon hides UPM",
        g("/plugins/servlet/upm;/x"),
        403,
        Wiki::Nothing,
    );
    let long = format!("/display/ENG/{}", "a".repeat(9000));
    case("over-long path", g(&long), 400, Wiki::Nothing);
    let huge = format!("/display/ENG/{}", "a".repeat(40_000));
    case(
        "path larger than the head limit",
        g(&huge),
        431,
        Wiki::Nothing,
    );
    case(
        "absolute-form to admin",
        g("http://wiki.example/admin/"),
        403,
        Wiki::Nothing,
    );
    case(
        "absolute-form to granted page",
        g("http://wiki.example/display/ENG/Home"),
        200,
        Wiki::Sees("/display/ENG/Home"),
    );
    case(
        "absolute-form with dot-dot",
        g("http://other.example/display/ENG/..;/HR/"),
        403,
        Wiki::Nothing,
    );
    case(
        "absolute-form with encoded slash",
        g("https://evil.example/display/HR/..%2f"),
        400,
        Wiki::Nothing,
    );
    case("asterisk with GET", g("*"), 400, Wiki::Nothing);
    case(
        "authority-form with GET",
        g("wiki.example:80"),
        400,
        Wiki::Nothing,
    );
    case(
        "CONNECT",
        as_user(&gary, "CONNECT", "wiki.example:443", ""),
        405,
        Wiki::Nothing,
    );
    case(
        "OPTIONS asterisk is answered by the gateway",
        b"OPTIONS * HTTP/1.1\r\nHost: wiki.example\r\nConnection: close\r\n\r\n".to_vec(),
        200,
        Wiki::Nothing,
    );
    case(
        "unknown method on granted space",
        as_user(&gary, "PROPFIND", "/display/ENG/Home", ""),
        403,
        Wiki::Nothing,
    );
    case(
        "edit without the grant",
        as_user(&gary, "POST", "/display/ENG/Home", "Content-Length: 0\r\n"),
        403,
        Wiki::Nothing,
    );

    // ------------------------------------------------ query tricks
    case(
        "duplicate captured parameter",
        g("/pages/viewpage.action?pageId=100&pageId=200"),
        400,
        Wiki::Nothing,
    );
    case(
        "content of another space",
        g("/pages/viewpage.action?pageId=200"),
        403,
        Wiki::Nothing,
    );
    case(
        "encoded digits of a granted id",
        g("/pages/viewpage.action?pageId=%31%30%30"),
        200,
        Wiki::Sees("/pages/viewpage.action?pageId=%31%30%30"),
    );
    case(
        "encoded parameter name",
        g("/pages/viewpage.action?page%49d=200"),
        403,
        Wiki::Nothing,
    );
    case(
        "id beats space key",
        g("/pages/viewpage.action?spaceKey=ENG&pageId=200"),
        403,
        Wiki::Nothing,
    );
    case(
        "duplicate space key",
        g("/pages/viewpage.action?spaceKey=ENG&spaceKey=HR&title=x"),
        400,
        Wiki::Nothing,
    );
    case(
        "NUL in captured parameter",
        g("/pages/viewpage.action?pageId=100%00"),
        400,
        Wiki::Nothing,
    );
    case(
        "invalid UTF-8 in query",
        g("/pages/viewpage.action?pageId=%ff"),
        400,
        Wiki::Nothing,
    );
    case(
        "parameter name of another case",
        g("/pages/viewpage.action?pageid=100"),
        403,
        Wiki::Nothing,
    );

    // ------------------------------------------------ header tricks
    case(
        "spoofed identity headers",
        as_user(
            &gary,
            "GET",
            "/display/ENG/Spoof",
            "X-Guestgate-User: admin\r\nX-GUESTGATE-GUEST: false\r\nX-Guestgate-Groups: confluence-administrators\r\n",
        ),
        200,
        Wiki::Sees("/display/ENG/Spoof"),
    );
    case(
        "spoofed forwarded host",
        as_user(
            &gary,
            "GET",
            "/display/ENG/Fwd",
            "X-Forwarded-Host: intranet.example\r\nX-Forwarded-Proto: https\r\n",
        ),
        200,
        Wiki::Sees("/display/ENG/Fwd"),
    );
    case(
        "connection header naming the identity header",
        as_user(
            &gary,
            "GET",
            "/display/ENG/Hop",
            "Connection: x-guestgate-guest\r\n",
        ),
        200,
        Wiki::Sees("/display/ENG/Hop"),
    );
    case(
        "h2c upgrade is not tunnelled",
        as_user(
            &gary,
            "GET",
            "/display/ENG/H2c",
            "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n",
        ),
        200,
        Wiki::Sees("/display/ENG/H2c"),
    );
    case("duplicate Host", format!("GET /display/ENG/Home HTTP/1.1\r\nHost: wiki.example\r\nHost: evil.example\r\nAuthorization: Bearer {gary}\r\nConnection: close\r\n\r\n").into_bytes(), 400, Wiki::Nothing);
    case("missing Host", format!("GET /display/ENG/Home HTTP/1.1\r\nAuthorization: Bearer {gary}\r\nConnection: close\r\n\r\n").into_bytes(), 400, Wiki::Nothing);
    case("Host with user info", format!("GET /display/ENG/Home HTTP/1.1\r\nHost: admin@wiki.example\r\nAuthorization: Bearer {gary}\r\nConnection: close\r\n\r\n").into_bytes(), 400, Wiki::Nothing);
    case("Host with a path", format!("GET /display/ENG/Home HTTP/1.1\r\nHost: wiki.example/admin\r\nAuthorization: Bearer {gary}\r\nConnection: close\r\n\r\n").into_bytes(), 400, Wiki::Nothing);
    let big = "x".repeat(20_000);
    case(
        "huge header",
        as_user(
            &gary,
            "GET",
            "/display/ENG/Home",
            &format!("X-Big: {big}\r\n"),
        ),
        431,
        Wiki::Nothing,
    );
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    case(
        "too many headers",
        as_user(&gary, "GET", "/display/ENG/Home", &many),
        431,
        Wiki::Nothing,
    );
    case(
        "obs-fold",
        as_user(&gary, "GET", "/display/ENG/Home", "X-Folded: a\r\n b\r\n"),
        400,
        Wiki::Nothing,
    );
    case(
        "bare CR in a header value",
        as_user(&gary, "GET", "/display/ENG/Home", "X-Cr: a\rb\r\n"),
        400,
        Wiki::Nothing,
    );
    case(
        "NUL in a header value",
        as_user(&gary, "GET", "/display/ENG/Home", "X-Nul: a\0b\r\n"),
        400,
        Wiki::Nothing,
    );
    case(
        "space before the colon",
        as_user(&gary, "GET", "/display/ENG/Home", "X-Space : a\r\n"),
        400,
        Wiki::Nothing,
    );
    case(
        "invalid header name",
        as_user(&gary, "GET", "/display/ENG/Home", "X(Bad): a\r\n"),
        400,
        Wiki::Nothing,
    );
    case("two Authorization headers", format!("GET /display/ENG/Home HTTP/1.1\r\nHost: wiki.example\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\nAuthorization: Bearer {gary}\r\nConnection: close\r\n\r\n").into_bytes(), 400, Wiki::Nothing);

    // ------------------------------------------------ smuggling (the hidden request goes to /admin)
    let smuggled = "GET /admin/ HTTP/1.1\r\nHost: wiki.example\r\n\r\n";
    let post = |framing: &str, body: &str| {
        format!("POST /display/ENG/Home HTTP/1.1\r\nHost: wiki.example\r\nAuthorization: Bearer {alice}\r\n{framing}\r\n{body}").into_bytes()
    };
    // Both framings: hyper reads the body by Transfer-Encoding alone, drops Content-Length
    // and closes the connection after answering (RFC 9112 §6.1), so what follows the body is
    // never read as a request. The wiki gets the front request, re-framed, and nothing else.
    case(
        "CL.TE",
        post(
            "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
            &format!("0\r\n\r\n{smuggled}"),
        ),
        200,
        Wiki::Sees("/display/ENG/Home"),
    );
    let te_cl = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n{smuggled}", smuggled.len());
    case(
        "TE.CL",
        post(
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            &te_cl,
        ),
        200,
        Wiki::Sees("/display/ENG/Home"),
    );
    case(
        "duplicate Content-Length",
        post("Content-Length: 0\r\nContent-Length: 44\r\n", smuggled),
        400,
        Wiki::Nothing,
    );
    case(
        "Content-Length list",
        post("Content-Length: 0, 44\r\n", smuggled),
        400,
        Wiki::Nothing,
    );
    case(
        "signed Content-Length",
        post("Content-Length: +44\r\n", smuggled),
        400,
        Wiki::Nothing,
    );
    case(
        "negative Content-Length",
        post("Content-Length: -1\r\n", smuggled),
        400,
        Wiki::Nothing,
    );
    case(
        "Transfer-Encoding not ending in chunked",
        post("Transfer-Encoding: chunked, identity\r\n", smuggled),
        400,
        Wiki::Nothing,
    );
    case(
        "obfuscated Transfer-Encoding",
        post("Transfer-Encoding: xchunked\r\n", smuggled),
        400,
        Wiki::Nothing,
    );
    case(
        "space before the colon of Transfer-Encoding",
        post(
            "Transfer-Encoding : chunked\r\n",
            &format!("0\r\n\r\n{smuggled}"),
        ),
        400,
        Wiki::Nothing,
    );
    case(
        "folded Transfer-Encoding",
        post(
            "Transfer-Encoding:\r\n chunked\r\n",
            &format!("0\r\n\r\n{smuggled}"),
        ),
        400,
        Wiki::Nothing,
    );
    case(
        "chunk size overflow",
        post(
            "Transfer-Encoding: chunked\r\n",
            &format!("fffffffffffffffff1\r\n{smuggled}"),
        ),
        400,
        Wiki::Nothing,
    );
    case("bare CR as line end", format!("GET /display/ENG/Home HTTP/1.1\rHost: wiki.example\r\nAuthorization: Bearer {alice}\r\nConnection: close\r\n\r\n").into_bytes(), 400, Wiki::Nothing);

    // ------------------------------------------------ token tricks
    let claims = claims("gary", &[]);
    let none = unsigned_token(
        serde_json::json!({"alg": "none", "typ": "JWT"}),
        &claims,
        "",
    );
    case("alg none", g_token(&none), 401, Wiki::Nothing);
    let none_caps = unsigned_token(serde_json::json!({"alg": "NONE"}), &claims, "");
    case("alg NONE", g_token(&none_caps), 401, Wiki::Nothing);
    let wrong_key = hs_token(
        serde_json::json!({"alg": "HS256"}),
        &claims,
        b"another-secret-0123456789abcdefghij",
    );
    case(
        "signed with another secret",
        g_token(&wrong_key),
        401,
        Wiki::Nothing,
    );
    let hs512 = unsigned_token(serde_json::json!({"alg": "HS512"}), &claims, "AAAA");
    case("algorithm not allowed", g_token(&hs512), 401, Wiki::Nothing);
    let rs_as_hs = unsigned_token(serde_json::json!({"alg": "RS256"}), &claims, "AAAA");
    case(
        "RS256 with no such key",
        g_token(&rs_as_hs),
        401,
        Wiki::Nothing,
    );
    let crit = hs_token(
        serde_json::json!({"alg": "HS256", "crit": ["exp"]}),
        &claims,
        SECRET.as_bytes(),
    );
    case("crit header", g_token(&crit), 401, Wiki::Nothing);
    let typ = hs_token(
        serde_json::json!({"alg": "HS256", "typ": "secevent+jwt"}),
        &claims,
        SECRET.as_bytes(),
    );
    case(
        "typ of another kind of token",
        g_token(&typ),
        401,
        Wiki::Nothing,
    );
    let kid = hs_token(
        serde_json::json!({"alg": "HS256", "kid": "../../dev/null"}),
        &claims,
        b"guessed-secret-0123456789abcdefghij",
    );
    case(
        "kid naming no key does not skip the signature",
        g_token(&kid),
        401,
        Wiki::Nothing,
    );
    let kid_rs = unsigned_token(
        serde_json::json!({"alg": "RS256", "kid": "nope"}),
        &claims,
        "AAAA",
    );
    case(
        "kid of no key for a public-key algorithm",
        g_token(&kid_rs),
        401,
        Wiki::Nothing,
    );
    let mut expired = claims.clone();
    expired["exp"] = serde_json::json!(now() - 60);
    case(
        "expired",
        g_token(&sign_hs256(&expired)),
        401,
        Wiki::Nothing,
    );
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    case("no exp", g_token(&sign_hs256(&no_exp)), 401, Wiki::Nothing);
    let mut other_aud = claims.clone();
    other_aud["aud"] = serde_json::json!("another-app");
    case(
        "audience of another app",
        g_token(&sign_hs256(&other_aud)),
        401,
        Wiki::Nothing,
    );
    let oversized = format!("{}.{}.{}", "a".repeat(5000), "b".repeat(5000), "c");
    case("oversized token", g_token(&oversized), 401, Wiki::Nothing);
    let mut tampered = gary.clone();
    tampered.push('A');
    case("tampered signature", g_token(&tampered), 401, Wiki::Nothing);
    let parts: Vec<&str> = gary.split('.').collect();
    let mut regular = claims.clone();
    regular["groups"] = serde_json::json!(["confluence-users"]);
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(regular.to_string()),
        parts[2]
    );
    case(
        "claims swapped under a valid signature",
        g_token(&swapped),
        401,
        Wiki::Nothing,
    );
    case(
        "token in a query parameter is no token",
        g_plain("/display/ENG/Home?access_token=x"),
        401,
        Wiki::Nothing,
    );
    case("stale cookie on a protected page", format!("GET /display/ENG/Home HTTP/1.1\r\nHost: wiki.example\r\nCookie: guestgate_token={expired_cookie}\r\nConnection: close\r\n\r\n", expired_cookie = sign_hs256(&expired)).into_bytes(), 401, Wiki::Nothing);
    cases
}

fn g_token(token: &str) -> Vec<u8> {
    as_user(token, "GET", "/display/ENG/Home", "")
}

fn g_plain(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: wiki.example\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn hostile_requests_are_refused_and_never_reach_the_wiki() {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let cases = corpus();
    assert!(cases.len() >= 60, "corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let before = up.forwarded().len();
        let (status, answer) = exchange(gw.addr, &case.raw).await;
        let seen = up.forwarded();
        let new: Vec<&Seen> = seen[before..].iter().collect();
        let wiki_ok = match case.wiki {
            Wiki::Nothing => new.is_empty(),
            Wiki::Sees(uri) => new.len() == 1 && new[0].uri == uri,
        };
        if status != case.status || !wiki_ok {
            let head = answer.lines().next().unwrap_or("").to_string();
            let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            let uris: Vec<&str> = new.iter().map(|s| s.uri.as_str()).collect();
            failures.push(format!(
                "{}: got {status} ({head} {body}), wanted {}; wiki saw {uris:?}, wanted {:?}",
                case.name, case.status, case.wiki
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Across the whole corpus the wiki never saw a request for what the guest may not reach,
    // not even one smuggled inside another request's body.
    for s in up.requests() {
        let uri = s.uri.to_ascii_lowercase();
        for forbidden in [
            "/admin",
            "/display/hr",
            "/rest/api/search",
            "/browsepeople",
            "/plugins/servlet/upm",
        ] {
            assert!(!uri.starts_with(forbidden), "the wiki saw {}", s.uri);
        }
    }
    // What the wiki saw of the header tricks: the gateway's identity, not the client's.
    let seen = up.forwarded();
    let by_uri = |uri: &str| seen.iter().find(|s| s.uri == uri).unwrap().clone();
    let spoof = by_uri("/display/ENG/Spoof");
    assert_eq!(spoof.header("x-guestgate-user"), Some("gary"));
    assert_eq!(spoof.header("x-guestgate-guest"), Some("true"));
    assert!(spoof.header("x-guestgate-groups").is_none());
    let fwd = by_uri("/display/ENG/Fwd");
    assert_eq!(fwd.header("x-forwarded-host"), Some("wiki.example"));
    assert_eq!(fwd.header("x-forwarded-proto"), Some("http"));
    let hop = by_uri("/display/ENG/Hop");
    assert_eq!(hop.header("x-guestgate-guest"), Some("true"));
    let h2c = by_uri("/display/ENG/H2c");
    assert!(
        h2c.header("upgrade").is_none(),
        "h2c upgrade must not reach the wiki"
    );
    assert!(h2c.header("http2-settings").is_none());
}

#[tokio::test]
async fn options_asterisk_names_the_methods_and_is_never_forwarded() {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let (status, answer) = exchange(
        gw.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: wiki.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nallow: get, head, post, put, patch, delete, options\r\n"),
        "{answer}"
    );
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn pipelined_requests_are_each_judged() {
    // Two requests in one write: the first allowed, the second not. Each is parsed, judged
    // and framed anew by the gateway; the second never reaches the wiki.
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let gary = token("gary", &[]);
    let raw = format!(
        "GET /display/ENG/First HTTP/1.1\r\nHost: wiki.example\r\nAuthorization: Bearer {gary}\r\n\r\n\
         GET /admin/ HTTP/1.1\r\nHost: wiki.example\r\nAuthorization: Bearer {gary}\r\nConnection: close\r\n\r\n"
    );
    let (status, answer) = exchange(gw.addr, raw.as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
    assert!(answer.contains("HTTP/1.1 403 "), "{answer}");
    let uris: Vec<String> = up.forwarded().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, vec!["/display/ENG/First".to_string()]);
}

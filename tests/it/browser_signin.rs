//! A real browser — headless Chromium driven by Playwright (tests/oidc/browser.js) — signs
//! in through the gateway at the test OpenID Provider as a guest, gets the wiki page with
//! the guest banner, and gets the 403 page for a space that is not shared with it.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use crate::support::*;
use http::{Response, StatusCode};

const PAGE: &str = include_str!("../fixtures/page.html");

/// A wiki whose pages are HTML (so the banner rewrite applies).
fn html_wiki() -> Handler {
    Arc::new(|_req| {
        Box::pin(async move {
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/html; charset=UTF-8")
                .body(full(PAGE))
                .unwrap()
        })
    })
}

#[tokio::test]
async fn a_guest_signs_in_with_chromium_and_sees_the_banner_and_the_403_page() {
    need_node_modules!();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        crate::support::skip(
            "GUESTGATE_REQUIRE_BROWSER",
            "browser sign-in",
            &format!("{chromium} is missing (apt-get install --no-install-recommends chromium)"),
        );
        return;
    }
    let idp = start_idp(&[]);
    let up = start_upstream_with(html_wiki()).await;
    let gw = start_oidc_gateway(TestConfig::new(&up.url()), &idp.issuer, "").await;
    let gateway = gw.url("");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .args(["browser.js", &gateway, "gary"])
            .current_dir(oidc_dir())
            .env("CHROMIUM", &chromium)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    let r: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "browser.js printed no result ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(r.get("error").is_none(), "browser: {}", r["error"]);
    assert!(
        r["login_url"].as_str().unwrap().starts_with(&idp.issuer),
        "sent to the IdP: {r}"
    );
    assert_eq!(r["signed_in_url"], gw.url("/display/ENG/Home"), "{r}");
    assert_eq!(r["banner"], "This space is shared with guests.", "{r}");
    assert_eq!(r["title"], "Release plan - Engineering - Confluence");
    assert_eq!(
        r["session_cookie"],
        serde_json::json!({"httpOnly": true, "sameSite": "Lax"})
    );
    assert_eq!(r["script_sees_session"], false, "HttpOnly");
    assert_eq!(r["blocked_status"], 403, "{r}");
    let blocked = r["blocked_text"].as_str().unwrap();
    // The guest home: what is refused, and the way to what is shared.
    assert!(
        blocked.contains("signed in as gary, a guest")
            && blocked.contains("space_not_granted")
            && blocked.contains("ENG — view, comment — no end date"),
        "{blocked}"
    );
    let seen = up.forwarded();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|s| s.header("x-guestgate-user") == Some("gary"))
    );
    assert!(seen.iter().all(|s| !s.uri.contains("/HR/")));
}

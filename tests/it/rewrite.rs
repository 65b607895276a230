//! Response rewriting through the proxy: users tagged in JSON and HTML, guests' listings
//! filtered, banners on shared spaces, encodings, limits — against bodies shaped like
//! Confluence's REST examples and page HTML (tests/fixtures).
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;

const CONTENT: &str = include_str!("../fixtures/content.json");
const SEARCH: &str = include_str!("../fixtures/search.json");
const PAGE: &str = include_str!("../fixtures/page.html");
const LABEL: &str = "<span class=\"guestgate-guest-label\">GUEST</span>";
const BANNER: &str =
    "<div class=\"guestgate-guest-banner\" role=\"note\">This space is shared with guests.</div>";

fn reply(content_type: &str, body: impl Into<Bytes>) -> Response<UpBody> {
    Response::builder()
        .header("content-type", content_type)
        .header("etag", "\"v7\"")
        .body(full(body.into()))
        .unwrap()
}

/// The stand-in wiki for rewriting: fixtures by path, variants by query.
fn wiki() -> Handler {
    let lookups = default_handler();
    Arc::new(move |req| {
        let lookups = lookups.clone();
        Box::pin(async move {
            let query = req.uri().query().unwrap_or("").to_string();
            let path = req.uri().path().to_string();
            if query == "expand=space" {
                return lookups(req).await;
            }
            let json = "application/json;charset=UTF-8";
            if query.contains("malformed") {
                return reply(json, "{\"results\": [{\"space\": ");
            }
            if query.contains("status=404") {
                return Response::builder()
                    .status(404)
                    .header("content-type", json)
                    .body(full(r#"{"statusCode":404,"message":"by {\"type\":\"known\",\"username\":\"gary\"}"}"#))
                    .unwrap();
            }
            if query.contains("html") {
                return reply("text/html", "<html><body>results</body></html>");
            }
            if query.contains("spelled") {
                return reply(
                    json,
                    CONTENT.replace("\"username\": \"gary\"", "\"username\": \"GaRy\""),
                );
            }
            let (ct, body) = if path.starts_with("/rest/api/search") {
                (json, SEARCH)
            } else if path.starts_with("/rest/api/content") {
                (json, CONTENT)
            } else {
                ("text/html; charset=UTF-8", PAGE)
            };
            if query.contains("gzip") {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(body.as_bytes()).unwrap();
                return Response::builder()
                    .header("content-type", ct)
                    .header("content-encoding", "gzip")
                    .body(full(enc.finish().unwrap()))
                    .unwrap();
            }
            if query.contains("deflate") {
                let mut enc =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(body.as_bytes()).unwrap();
                return Response::builder()
                    .header("content-type", ct)
                    .header("content-encoding", "deflate")
                    .body(full(enc.finish().unwrap()))
                    .unwrap();
            }
            if query.contains("chunked") {
                let (mut tx, rx) =
                    http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(4);
                let bytes = body.as_bytes().to_vec();
                tokio::spawn(async move {
                    for chunk in bytes.chunks(13) {
                        if tx.send_data(Bytes::copy_from_slice(chunk)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                });
                return Response::builder()
                    .header("content-type", ct)
                    .body(rx.boxed())
                    .unwrap();
            }
            reply(ct, body)
        })
    })
}

async fn setup(rewrite_extra: &str) -> (Upstream, TestGateway) {
    let up = start_upstream_with(wiki()).await;
    let mut c = TestConfig::new(&up.url());
    c.rewrite_extra = rewrite_extra.to_string();
    let gw = start_gateway(c).await;
    (up, gw)
}

fn alice() -> String {
    bearer(&token("alice", &[]))
}

fn gary() -> String {
    bearer(&token("gary", &[]))
}

/// The fixture with exactly the expected insertions, and nothing else changed.
fn tagged_content() -> String {
    CONTENT
        .replace(
            "\"displayName\": \"Gary Guest\"}",
            "\"displayName\": \"Gary Guest\",\"isExternalCollaborator\":true}",
        )
        .replace(
            "user?key=ff8080817b0a3d5a017b0a3e6b2a0000\"}}",
            "user?key=ff8080817b0a3d5a017b0a3e6b2a0000\"},\"isExternalCollaborator\":false}",
        )
        .replace(
            "\"displayName\": \"Gina Partner\"}",
            "\"displayName\": \"Gina Partner\",\"isExternalCollaborator\":true}",
        )
}

/// The content fixture answered with exactly the expected tags, its length corrected.
fn assert_tagged_content(a: &Answer) {
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.text(), tagged_content());
    assert_eq!(
        a.header("content-length"),
        Some(a.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn json_users_are_tagged_and_everything_else_is_byte_for_byte() {
    let (up, gw) = setup("").await;
    let a = get(
        &gw.url("/rest/api/content/101?expand=history,version,children.comment"),
        &[("authorization", &alice())],
    )
    .await;
    assert_tagged_content(&a);
    assert_eq!(
        a.header("etag"),
        Some("W/\"v7\""),
        "a modified body's validator is weak"
    );
    let v = a.json();
    assert_eq!(v["version"]["by"]["isExternalCollaborator"], true);
    assert_eq!(v["history"]["createdBy"]["isExternalCollaborator"], false);
    assert!(
        v["history"]["contributors"]["publishers"]["users"][1]
            .get("isExternalCollaborator")
            .is_none(),
        "carol is not in the directory"
    );
    assert_eq!(
        up.forwarded()[0].header("accept-encoding"),
        Some("identity")
    );
    // Guests get the same tags on content they may see.
    let a = get(
        &gw.url("/rest/api/content/101"),
        &[("authorization", &gary())],
    )
    .await;
    assert_eq!(a.text(), tagged_content());
}

/// An answer that arrives in many frames (here 13-byte chunks, as a slow wiki streams) is
/// gathered whole and tagged exactly as one that arrives in one; the search listing is
/// filtered for a guest the same way.
#[tokio::test]
async fn json_in_many_frames_is_rewritten_as_one_frame_is() {
    let (_up, gw) = setup("").await;
    let a = get(
        &gw.url("/rest/api/content/101?chunked=1"),
        &[("authorization", &alice())],
    )
    .await;
    assert_tagged_content(&a);
    let whole = get(
        &gw.url("/rest/api/search?cql=type=page"),
        &[("authorization", &gary())],
    )
    .await;
    let framed = get(
        &gw.url("/rest/api/search?cql=type=page&chunked=1"),
        &[("authorization", &gary())],
    )
    .await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(framed.status, StatusCode::OK);
    assert_eq!(framed.text(), whole.text());
    assert_ne!(whole.text(), SEARCH, "the guest's listing was filtered");
}

#[tokio::test]
async fn users_are_tagged_however_the_wiki_spells_their_names() {
    // Confluence looks a user up by the lower-cased name (Confluence 8.7.2
    // HibernateConfluenceUserDao.findByUsername through IdentifierUtils.toLowerCase; the
    // profile's `user_names`), so `GaRy` in an answer is gary, a guest, and is tagged as one.
    let (_up, gw) = setup("").await;
    let a = get(
        &gw.url("/rest/api/content/101?spelled"),
        &[("authorization", &alice())],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["version"]["by"]["username"], "GaRy");
    assert_eq!(v["version"]["by"]["isExternalCollaborator"], true);
    assert_eq!(
        v["history"]["contributors"]["publishers"]["users"][0]["isExternalCollaborator"],
        true
    );
    assert_eq!(v["history"]["createdBy"]["isExternalCollaborator"], false);
}

#[tokio::test]
async fn guest_search_is_filtered_to_granted_spaces() {
    let (_up, gw) = setup("").await;
    let a = get(
        &gw.url("/rest/api/search?cql=siteSearch~plan"),
        &[("authorization", &gary())],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let v = a.json();
    let titles: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, vec!["Release plan", "Planning week"]);
    assert_eq!(v["size"], 2);
    assert_eq!(v["totalSize"], 39);
    assert!(!a.text().contains("Salar"), "nothing of HR leaks");
    assert!(
        !a.text().contains("alice"),
        "user results are not a guest's to see"
    );
    assert_eq!(
        v["results"][1]["content"]["history"]["createdBy"]["isExternalCollaborator"],
        true
    );
    assert_eq!(
        v["_links"]["next"],
        serde_json::json!(
            "/rest/api/search?next=true&cursor=raNDoMsTRiNg&limit=25&start=25&cql=siteSearch+~+%22plan%22"
        )
    );
    // The same listing is whole for a regular user, with users tagged.
    let a = get(
        &gw.url("/rest/api/search?cql=siteSearch~plan"),
        &[("authorization", &alice())],
    )
    .await;
    let v = a.json();
    assert_eq!(v["results"].as_array().unwrap().len(), 5);
    assert_eq!(v["totalSize"], 42);
    assert_eq!(v["results"][3]["user"]["isExternalCollaborator"], false);
}

#[tokio::test]
async fn guest_with_no_viewable_space_gets_an_empty_listing() {
    let (_up, gw) = setup("").await;
    // A guest group without grants: a guest who sees no space at all.
    let nobody = bearer(&token("nora", &["partner-guests", "acme-guests"]));
    let a = get(
        &gw.url("/rest/api/search?cql=x"),
        &[("authorization", &nobody)],
    )
    .await;
    assert_eq!(a.json()["size"], 2, "acme-guests sees ENG");
    let lonely = bearer(&token("nora", &["partner-guests"]));
    let a = get(
        &gw.url("/rest/api/search?cql=x"),
        &[("authorization", &lonely)],
    )
    .await;
    let v = a.json();
    assert_eq!(v["results"], serde_json::json!([]));
    assert_eq!(v["size"], 0);
}

#[tokio::test]
async fn html_pages_get_labels_and_the_banner() {
    let (_up, gw) = setup("").await;
    for auth in [alice(), gary()] {
        let a = get(
            &gw.url("/display/ENG/Release+plan"),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        let html = a.text();
        assert!(
            html.contains(&format!("aui-theme-default\">{BANNER}")),
            "banner right after <body>: {html}"
        );
        assert_eq!(
            html.matches(LABEL).count(),
            4,
            "two links to gary, two to gina"
        );
        assert!(html.contains(&format!(
            "data-user-hover-bound=\"true\">Gary Guest</a>{LABEL}"
        )));
        assert!(html.contains(&format!(">@gary</a>{LABEL}")));
        assert!(!html.contains(&format!("Alice Adams</a>{LABEL}")));
        assert!(a.header("content-length").is_none());
        assert_eq!(a.header("etag"), Some("W/\"v7\""));
        assert_eq!(html.matches("id=\"guestgate-style\"").count(), 1);
    }
    // A space without guests: labels, but no banner.
    let a = get(
        &gw.url("/display/HR/Salaries"),
        &[("authorization", &alice())],
    )
    .await;
    assert!(!a.text().contains(BANNER));
    assert_eq!(a.text().matches(LABEL).count(), 4);
    // A page by id: the space comes from the lookup, for regular users too.
    let a = get(
        &gw.url("/pages/viewpage.action?pageId=101"),
        &[("authorization", &alice())],
    )
    .await;
    assert!(a.text().contains(BANNER));
    let a = get(
        &gw.url("/pages/viewpage.action?pageId=250"),
        &[("authorization", &alice())],
    )
    .await;
    assert!(!a.text().contains(BANNER), "page 250 lives in HR");
}

#[tokio::test]
async fn chunked_html_is_rewritten_as_it_streams() {
    let (_up, gw) = setup("").await;
    let a = get(
        &gw.url("/display/ENG/Release+plan?chunked=1"),
        &[("authorization", &alice())],
    )
    .await;
    let html = a.text();
    assert!(html.contains(BANNER));
    assert_eq!(html.matches(LABEL).count(), 4);
    assert_eq!(
        html.len(),
        PAGE.len() + BANNER.len() + 4 * LABEL.len() + html::STYLE_LEN
    );
}

mod html {
    pub const STYLE: &str = guestgate::pipeline::rewrite::html::STYLE_HTML;
    pub const STYLE_LEN: usize = STYLE.len();
}

#[tokio::test]
async fn compressed_bodies_are_decoded_never_mangled() {
    let (_up, gw) = setup("").await;
    for variant in ["gzip", "deflate"] {
        let a = get(
            &gw.url(&format!("/rest/api/content/101?{variant}=1")),
            &[("authorization", &alice())],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(a.header("content-encoding").is_none(), "{variant}");
        assert_eq!(a.text(), tagged_content(), "{variant}");
        let a = get(
            &gw.url(&format!("/rest/api/search?{variant}=1")),
            &[("authorization", &gary())],
        )
        .await;
        assert_eq!(a.json()["size"], 2, "{variant}");
    }
    // HTML that arrives compressed anyway is passed through untouched (cosmetic rewrite).
    let a = get(
        &gw.url("/display/ENG/Release+plan?gzip=1"),
        &[("authorization", &alice())],
    )
    .await;
    assert_eq!(a.header("content-encoding"), Some("gzip"));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&a.body[..]), &mut out)
        .unwrap();
    assert_eq!(out, PAGE);
}

#[tokio::test]
async fn oversized_bodies_fail_closed_for_filters_and_open_for_tags() {
    let (_up, gw) = setup("max_body_bytes = 1024").await;
    let a = get(
        &gw.url("/rest/api/search?cql=x"),
        &[("authorization", &gary())],
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        a.json(),
        serde_json::json!({"error": "bad_gateway", "reason": "body_too_large_to_filter"})
    );
    let a = get(
        &gw.url("/rest/api/content/101"),
        &[("authorization", &alice())],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.text(), CONTENT, "passed unchanged");
    assert_eq!(a.header("etag"), Some("\"v7\""));
}

#[tokio::test]
async fn unfilterable_listings_are_refused_to_guests() {
    let (_up, gw) = setup("").await;
    for (path, reason) in [
        ("/rest/api/search?html=1", "listing_not_json"),
        ("/rest/api/search?malformed=1", "unfilterable_listing"),
        ("/rest/api/content/search?cql=x", "unfilterable_listing"),
    ] {
        let a = get(&gw.url(path), &[("authorization", &gary())]).await;
        assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{path}");
        assert_eq!(a.json()["reason"], reason, "{path}");
    }
    // Malformed JSON on a tag-only route passes unchanged; so do error bodies.
    let a = get(
        &gw.url("/rest/api/content/101?malformed=1"),
        &[("authorization", &alice())],
    )
    .await;
    assert_eq!(a.text(), "{\"results\": [{\"space\": ");
    let a = get(
        &gw.url("/rest/api/content/101?status=404"),
        &[("authorization", &alice())],
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(!a.text().contains("isExternalCollaborator"));
}

#[tokio::test]
async fn rewriting_can_be_switched_off() {
    let (_up, gw) = setup("json = false\nhtml = false").await;
    let a = get(
        &gw.url("/rest/api/content/101"),
        &[("authorization", &alice())],
    )
    .await;
    assert_eq!(a.text(), CONTENT);
    let a = get(
        &gw.url("/display/ENG/Release+plan"),
        &[("authorization", &alice())],
    )
    .await;
    assert_eq!(a.text(), PAGE);
    // Without JSON rewriting no listing can be filtered, so guests may not search at all.
    let a = get(
        &gw.url("/rest/api/search?cql=x"),
        &[("authorization", &gary())],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["reason"], "guest_unfiltered_listing");
}

/// A stand-in wiki whose JSON answers are padded to ~450 KB and held back 500 ms before
/// their last bytes, so that answers being rewritten overlap.
fn slow_big_wiki() -> Handler {
    let lookups = default_handler();
    Arc::new(move |req| {
        let lookups = lookups.clone();
        Box::pin(async move {
            if req.uri().query() == Some("expand=space") {
                return lookups(req).await;
            }
            let fixture = if req.uri().path().starts_with("/rest/api/search") {
                SEARCH
            } else {
                CONTENT
            };
            let pad = format!("{{\"pad\": \"{}\",", "x".repeat(450 * 1024));
            let body = fixture.replacen('{', &pad, 1).into_bytes();
            let (mut tx, rx) =
                http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(2);
            tokio::spawn(async move {
                let (head, tail) = body.split_at(body.len() - 10);
                let _ = tx.send_data(Bytes::copy_from_slice(head)).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = tx.send_data(Bytes::copy_from_slice(tail)).await;
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(rx.boxed())
                .unwrap()
        })
    })
}

/// One byte budget for every body held in memory: past it, a guest's listing answers 503
/// with Retry-After (never unfiltered), a cosmetic rewrite is skipped (the body passes
/// untagged), and the budget is whole again once the answers are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffer_budget_refuses_listings_and_skips_tags_when_spent() {
    let up = start_upstream_with(slow_big_wiki()).await;
    let mut c = TestConfig::new(&up.url());
    c.server_extra = "buffer_budget_bytes = 1048576\n".into();
    c.rewrite_extra = "max_body_bytes = 1048576".into();
    let gw = start_gateway(c).await;
    let search = gw.url("/rest/api/search?cql=x");
    let content = gw.url("/rest/api/content/101");
    let (gary, alice) = (gary(), alice());

    // Alone, both are rewritten.
    let a = get(&search, &[("authorization", &gary)]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let a = get(&content, &[("authorization", &alice)]).await;
    assert!(a.text().contains("isExternalCollaborator"));

    // Four guests' listings at once: ~900 KB each against 1 MiB.
    let as_gary = [("authorization", gary.as_str())];
    let answers = futures_util::future::join_all((0..4).map(|_| get(&search, &as_gary))).await;
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let refused: Vec<_> = answers
        .iter()
        .filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(ok >= 1, "one fits");
    assert_eq!(ok + refused.len(), 4, "nothing else: no unfiltered body");
    assert!(!refused.is_empty(), "the others do not fit");
    for r in &refused {
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.json()["reason"], "overloaded");
    }

    // While a listing holds most of the budget, a regular user's answer passes untagged.
    let holder = tokio::spawn({
        let (search, gary) = (search.clone(), gary.clone());
        async move { get(&search, &[("authorization", &gary)]).await.status }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a = get(&content, &[("authorization", &alice)]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text().contains("\"pad\""), "the whole body");
    assert!(!a.text().contains("isExternalCollaborator"), "untagged");
    assert_eq!(holder.await.unwrap(), StatusCode::OK);

    // All given back.
    let a = get(&content, &[("authorization", &alice)]).await;
    assert!(a.text().contains("isExternalCollaborator"));
    let metrics = get(&gw.admin_url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("guestgate_buffer_budget_exceeded_total{result=\"listing_refused\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("guestgate_buffer_budget_exceeded_total{result=\"rewrite_skipped\"} 0"),
        "{metrics}"
    );
}

//! The guest model through the proxy: grants, blocked families, content-id lookups, and a
//! decision cache whose key covers everything a decision depends on.
#![allow(clippy::unwrap_used)]

use crate::support::*;
use http::StatusCode;

async fn setup() -> (Upstream, TestGateway) {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    (up, gw)
}

#[tokio::test]
async fn guest_reaches_granted_space_only() {
    let (up, gw) = setup().await;
    let auth = bearer(&token("gary", &[]));
    let a = get(&gw.url("/display/ENG/Home"), &[("authorization", &auth)]).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = get(&gw.url("/display/eng/Home"), &[("authorization", &auth)]).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "space keys compare case-insensitively"
    );
    let a = get(&gw.url("/display/HR/Home"), &[("authorization", &auth)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(
        a.json(),
        serde_json::json!({"error": "forbidden", "reason": "space_not_granted"})
    );
    let a = get(&gw.url("/rest/api/space/HR"), &[("authorization", &auth)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = get(
        &gw.url("/pages/viewpage.action?spaceKey=HR&title=Salaries"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = get(&gw.url("/spaces/ENG/overview"), &[("authorization", &auth)]).await;
    assert_eq!(a.status, StatusCode::OK);
    let forwarded: Vec<String> = up.forwarded().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(
        forwarded,
        vec![
            "/display/ENG/Home",
            "/display/eng/Home",
            "/spaces/ENG/overview"
        ]
    );
}

#[tokio::test]
async fn guest_permissions_follow_the_action() {
    let (up, gw) = setup().await;
    let gary = bearer(&token("gary", &[])); // acme-guests: view, comment on ENG
    let gina = bearer(&token("gina", &[])); // user grant: view, edit on ENG
    let a = request(
        "POST",
        &gw.url("/rest/api/content/100/child/comment"),
        &[
            ("authorization", &gary),
            ("content-type", "application/json"),
        ],
        "{}",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let a = request(
        "PUT",
        &gw.url("/rest/api/content/100"),
        &[
            ("authorization", &gary),
            ("content-type", "application/json"),
        ],
        "{}",
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["reason"], "missing_permission_edit");
    let a = request(
        "PUT",
        &gw.url("/rest/api/content/100"),
        &[
            ("authorization", &gina),
            ("content-type", "application/json"),
        ],
        "{}",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = request(
        "POST",
        &gw.url("/rest/api/content/100/child/attachment"),
        &[("authorization", &gina)],
        "x",
    )
    .await;
    assert_eq!(a.json()["reason"], "missing_permission_attach");
    let a = request(
        "DELETE",
        &gw.url("/rest/api/content/100"),
        &[("authorization", &gina)],
        "",
    )
    .await;
    assert_eq!(a.json()["reason"], "missing_permission_delete");
    let a = request(
        "PUT",
        &gw.url("/rest/api/content/100/restriction"),
        &[("authorization", &gina)],
        "",
    )
    .await;
    assert_eq!(a.json()["reason"], "missing_permission_admin");
    assert_eq!(up.forwarded().len(), 2);
}

#[tokio::test]
async fn guests_are_blocked_from_site_wide_user_information_and_system_apps() {
    let (up, gw) = setup().await;
    let gary = bearer(&token("gary", &[]));
    let alice = bearer(&token("alice", &[]));
    let blocked = [
        "/browsepeople.action",
        "/dopeopledirectorysearch.action?queryString=a",
        "/rest/api/search/user?cql=user.fullname~a",
        "/rest/api/user?key=abc",
        "/rest/api/user?username=alice",
        "/rest/api/group/confluence-users/member",
        "/rest/prototype/1/search/user.json?query=a",
        "/rest/mentions/1/suggest?query=a",
        "/plugins/confanalytics/analytics.action",
        "/rest/confanalytics/1.0/space/ENG/views",
        "/calendar/mycalendar.action",
        "/rest/calendar-services/1.0/calendar/events.json",
        "/questions/",
        "/rest/questions/1.0/question",
        "/plugins/servlet/upm",
        "/rest/plugins/1.0/",
        "/admin/viewgeneralconfig.action",
        "/spaces/spacepermissions.action?key=ENG",
        "/spaces/exportspacewelcome.action?key=ENG",
        "/createrssfeed.action?types=page",
        "/dashboard.action",
        "/dosearchsite.action?queryString=salary",
        "/something/undescribed",
        // Path tricks: the canonical form is what is judged.
        "/admin;x=y/users.action",
        "/display/ENG/../../admin/users.action",
        "/s/../admin/users.action",
        "/%61dmin/users.action",
        "//admin//users.action",
    ];
    for path in blocked {
        let a = get(&gw.url(path), &[("authorization", &gary)]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: {}", a.text());
    }
    assert!(
        up.forwarded().is_empty(),
        "nothing blocked reached the wiki: {:?}",
        up.forwarded()
    );
    // Regular users pass through to the same URLs.
    let a = get(
        &gw.url("/browsepeople.action"),
        &[("authorization", &alice)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = get(
        &gw.url("/admin;x=y/users.action"),
        &[("authorization", &alice)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        up.forwarded()[1].uri,
        "/admin/users.action",
        "the wiki gets the judged form"
    );
}

#[tokio::test]
async fn guests_keep_what_the_ui_needs() {
    let (_up, gw) = setup().await;
    let gary = bearer(&token("gary", &[]));
    for path in [
        "/s/en_GB/9012/abc/_/download/batch/app.js",
        "/rest/api/user/current",
        "/users/viewmyprofile.action",
        "/users/viewuserprofile.action?username=gary",
        "/logout.action",
        "/rest/confanalytics/1.0/content/100/views",
    ] {
        let a = get(&gw.url(path), &[("authorization", &gary)]).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.text());
    }
    let a = get(
        &gw.url("/users/viewuserprofile.action?username=alice"),
        &[("authorization", &gary)],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = get(
        &gw.url("/rest/confanalytics/1.0/content/200/views"),
        &[("authorization", &gary)],
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::FORBIDDEN,
        "page analytics only in granted spaces"
    );
}

#[tokio::test]
async fn content_ids_resolve_their_space_through_the_wiki_once() {
    let (up, gw) = setup().await;
    let gary = bearer(&token("gary", &[]));
    let a = get(
        &gw.url("/pages/viewpage.action?pageId=101"),
        &[("authorization", &gary)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.lookup_count(), 1);
    let lookup = up
        .requests()
        .into_iter()
        .find(|s| !s.headers.contains_key("x-guestgate-guest"))
        .unwrap();
    assert_eq!(lookup.uri, "/rest/api/content/101?expand=space");
    let a = get(
        &gw.url("/rest/api/content/101/child/comment"),
        &[("authorization", &gary)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.lookup_count(), 1, "cached");
    // The key in a Confluence 8 URL does not decide: the id's own space does.
    let a = get(
        &gw.url("/spaces/ENG/pages/201/Salaries"),
        &[("authorization", &gary)],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["reason"], "space_not_granted");
    let a = get(
        &gw.url("/download/attachments/202/payroll.xlsx"),
        &[("authorization", &gary)],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // Unknown ids and failing lookups deny guests.
    for id in ["999", "998"] {
        let a = get(
            &gw.url(&format!("/rest/api/content/{id}")),
            &[("authorization", &gary)],
        )
        .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert_eq!(a.json()["reason"], "space_unresolved");
    }
    // Regular users never cause lookups.
    let before = up.lookup_count();
    let alice = bearer(&token("alice", &[]));
    let a = get(
        &gw.url("/rest/api/content/150"),
        &[("authorization", &alice)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.lookup_count(), before);
}

#[tokio::test]
async fn concurrent_lookups_of_one_id_are_coalesced() {
    let (up, gw) = setup().await;
    let gary = bearer(&token("gary", &[]));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = gw.url("/rest/api/content/123");
        let gary = gary.clone();
        tasks.push(tokio::spawn(async move {
            get(&url, &[("authorization", &gary)]).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(up.lookup_count(), 1);
}

#[tokio::test]
async fn an_upstream_down_during_lookup_refuses_the_guest_as_unavailable() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = start_gateway(TestConfig::new(&format!("http://{closed}"))).await;
    let gary = bearer(&token("gary", &[]));
    let a = get(
        &gw.url("/rest/api/content/101"),
        &[("authorization", &gary)],
    )
    .await;
    // Refused (nothing forwarded), and said as it is: the wiki cannot be reached — the
    // same answer a regular user gets, not one that reads as a denial.
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.json()["reason"], "upstream_unavailable");
}

/// Each request below differs from a cached one in exactly one field the decision depends
/// on; a cache keyed too coarsely would hand out the earlier answer.
#[tokio::test]
async fn decision_cache_key_covers_every_input_the_decision_depends_on() {
    let (_up, gw) = setup().await;
    let get_status = |path: &'static str, auth: String, method: &'static str| {
        let url = gw.url(path);
        async move {
            request(method, &url, &[("authorization", &auth)], "")
                .await
                .status
        }
    };
    let gary = bearer(&token("gary", &[]));
    assert_eq!(
        get_status("/display/ENG/A", gary.clone(), "GET").await,
        StatusCode::OK
    );
    // same user, another space
    assert_eq!(
        get_status("/display/HR/A", gary.clone(), "GET").await,
        StatusCode::FORBIDDEN
    );
    // same user and space, another action
    assert_eq!(
        get_status("/display/ENG/A", gary.clone(), "POST").await,
        StatusCode::FORBIDDEN
    );
    // same user name, another group set (the token adds a regular group)
    let gary_staff = bearer(&token("gary", &["confluence-users"]));
    assert_eq!(
        get_status("/display/HR/A", gary_staff, "GET").await,
        StatusCode::OK
    );
    // same groups, another user (gina's user grant allows edit on ENG)
    let gina_acme = bearer(&token("gina", &["acme-guests"]));
    assert_eq!(
        get_status("/display/ENG/A", gina_acme.clone(), "POST").await,
        StatusCode::OK
    );
    // same everything, another family (people directory)
    assert_eq!(
        get_status("/browsepeople.action", gary.clone(), "GET").await,
        StatusCode::FORBIDDEN
    );
    // unauthenticated vs authenticated on a public route stay distinct
    assert_eq!(
        get(
            "/login.action"
                .replace("/login", &gw.url("/login"))
                .as_str(),
            &[]
        )
        .await
        .status,
        StatusCode::OK
    );
    // and the same request again is answered from the cache
    let snapshot = gw.gateway.snapshot();
    snapshot.decisions.run_pending_tasks();
    let before = snapshot.decisions.entry_count();
    assert_eq!(
        get_status("/display/HR/A", gary.clone(), "GET").await,
        StatusCode::FORBIDDEN
    );
    snapshot.decisions.run_pending_tasks();
    assert_eq!(snapshot.decisions.entry_count(), before);
}

/// A policy that reads the request path must not be served a decision cached for another
/// path: the key then covers the whole input.
#[tokio::test]
async fn policies_reading_the_path_get_path_keyed_decisions() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        r#"package guestgate
import rego.v1
default decision := {"allow": false, "reason": "path_rule"}
decision := {"allow": true, "reason": "ok"} if not contains(input.request.path, "secret")
"#,
    )
    .unwrap();
    let mut c = TestConfig::new(&up.url());
    c.policy_dir = dir.path().to_path_buf();
    let gw = start_gateway(c).await;
    assert!(gw.gateway.snapshot().policy.reads_whole_input);
    let gary = bearer(&token("gary", &[]));
    let a = get(&gw.url("/display/ENG/public"), &[("authorization", &gary)]).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = get(&gw.url("/display/ENG/secret"), &[("authorization", &gary)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["reason"], "path_rule");
}

#[tokio::test]
async fn policy_errors_and_odd_results_deny() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        r#"package guestgate
import rego.v1
# Conflicting values for one complete rule are an evaluation error in Rego.
decision := {"allow": true} if input.route.family == "space"
decision := {"allow": false} if input.route.space == "ENG"
decision := {"allow": "yes"} if input.route.family == "static"
decision := 42 if input.route.family == "auth"
"#,
    )
    .unwrap();
    let mut c = TestConfig::new(&up.url());
    c.policy_dir = dir.path().to_path_buf();
    let gw = start_gateway(c).await;
    let alice = bearer(&token("alice", &[]));
    let a = get(&gw.url("/display/ENG/Home"), &[("authorization", &alice)]).await;
    assert_eq!(
        (a.status, a.json()["reason"].as_str()),
        (StatusCode::FORBIDDEN, Some("policy_error"))
    );
    let a = get(&gw.url("/display/HR/Home"), &[("authorization", &alice)]).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = get(
        &gw.url("/browsepeople.action"),
        &[("authorization", &alice)],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "undefined denies");
    let a = get(&gw.url("/s/app.js"), &[("authorization", &alice)]).await;
    assert_eq!(
        a.status,
        StatusCode::FORBIDDEN,
        "only the boolean true allows"
    );
    let a = get(&gw.url("/login.action"), &[("authorization", &alice)]).await;
    assert_eq!(
        a.status,
        StatusCode::FORBIDDEN,
        "a non-object result denies"
    );
    assert_eq!(up.forwarded().len(), 1);
}

/// Tiny links (`/x/<key>`, the Share button's links) are judged as viewing the page their
/// key encodes: a guest reaches those of granted spaces only; a key that decodes to no
/// page is a bad request for everyone; regular users pass the others.
#[tokio::test]
async fn tiny_links_are_judged_by_the_page_they_encode() {
    let (up, gw) = setup().await;
    let gary = bearer(&token("gary", &[]));
    // Keys as Confluence makes them: page 101 (ENG) is `ZQ`, page 201 (HR) is `yQ`.
    let a = get(&gw.url("/x/ZQ"), &[("authorization", &gary)]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let a = get(&gw.url("/x/yQ"), &[("authorization", &gary)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let alice = bearer(&token("alice", &[]));
    // Zero, past 2^32, not base64: no page. 400 with the reason, before the wiki.
    for bad in ["/x/AAAA", "/x/AAAAAAB", "/x/!!", "/x/%C3%A9t%C3%A9"] {
        for who in [&gary, &alice] {
            let a = get(&gw.url(bad), &[("authorization", who)]).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(
                a.text().contains("malformed_tiny_link"),
                "{bad}: {}",
                a.text()
            );
        }
    }
    // Not a tiny link at all (a second segment): no rule, refused to guests.
    let a = get(&gw.url("/x/ZQ/extra"), &[("authorization", &gary)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = get(&gw.url("/x/yQ"), &[("authorization", &alice)]).await;
    assert_eq!(a.status, StatusCode::OK);
    let forwarded: Vec<String> = up.forwarded().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(forwarded, vec!["/x/ZQ", "/x/yQ"]);
}

/// A wiki installed under a context path (`upstream.url = "http://wiki:8090/confluence"`,
/// common for Data Center): the stand-in serves only under `/confluence`, as Tomcat would.
/// Browser requests carry the prefix (the wiki's links do); the gateway classifies the
/// path inside it and forwards it once, never doubled.
#[tokio::test]
async fn a_wiki_under_a_context_path_works_for_guests_and_regular_users() {
    let inner = default_handler();
    let under_context: Handler = std::sync::Arc::new(move |req| {
        let inner = inner.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let Some(rest) = path
                .strip_prefix("/confluence")
                .filter(|r| r.starts_with('/'))
            else {
                return json_response(StatusCode::NOT_FOUND, serde_json::json!({"outside": path}));
            };
            let (mut parts, body) = req.into_parts();
            let query = parts
                .uri
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            parts.uri = format!("{rest}{query}").parse().unwrap();
            inner(http::Request::from_parts(parts, body)).await
        })
    });
    let up = start_upstream_with(under_context).await;
    let gw = start_gateway(TestConfig::new(&format!("{}/confluence", up.url()))).await;
    let gary = bearer(&token("gary", &[]));
    let alice = bearer(&token("alice", &[]));

    let a = get(
        &gw.url("/confluence/display/ENG/Home"),
        &[("authorization", &gary)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(
        a.json()["path"],
        "/display/ENG/Home",
        "served inside the context"
    );
    let a = get(
        &gw.url("/confluence/display/HR/Home"),
        &[("authorization", &gary)],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // Content by id: the lookup of its space goes under the context path too.
    let a = get(
        &gw.url("/confluence/pages/viewpage.action?pageId=101"),
        &[("authorization", &gary)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let a = get(
        &gw.url("/confluence/pages/viewpage.action?pageId=201"),
        &[("authorization", &gary)],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // Regular users pass, with the prefix once.
    let a = get(
        &gw.url("/confluence/display/HR/Home"),
        &[("authorization", &alice)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["path"], "/display/HR/Home");
    // `/confluencex` is not inside `/confluence`: classified as it is (no rule: refused to
    // guests), forwarded under the context.
    let a = get(
        &gw.url("/confluencex/display/ENG/Home"),
        &[("authorization", &gary)],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let forwarded: Vec<String> = up
        .forwarded()
        .iter()
        .map(|s| s.uri.clone())
        .filter(|u| !u.contains("expand=space"))
        .collect();
    assert_eq!(
        forwarded,
        vec![
            "/confluence/display/ENG/Home",
            "/confluence/pages/viewpage.action?pageId=101",
            "/confluence/display/HR/Home",
        ]
    );
}

/// A guest whose browser lands on `/`, the dashboard or a page not shared with them gets
/// their home: the spaces granted to them, linked, with permissions and end dates; still
/// a 403, and API clients still get the JSON refusal.
#[tokio::test]
async fn a_guest_landing_on_a_refused_page_sees_the_spaces_shared_with_them() {
    let (_up, gw) = setup().await;
    let html = ("accept", "text/html,application/xhtml+xml");
    let gina = bearer(&token("gina", &["partner-guests"]));
    for path in ["/", "/dashboard.action", "/display/HR/Home"] {
        let a = get(&gw.url(path), &[("authorization", &gina), html]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(a.header("content-type"), Some("text/html; charset=utf-8"));
        let page = a.text();
        assert!(
            page.contains("signed in as <strong>gina</strong>, a guest"),
            "{page}"
        );
        assert!(
            page.contains("<a href=\"/display/DOCS\">DOCS</a> — view — no end date"),
            "{page}"
        );
        assert!(
            page.contains("<a href=\"/display/ENG\">ENG</a> — view, edit — no end date"),
            "{page}"
        );
        assert!(!page.contains("HR</a>"), "{page}");
    }
    let a = get(&gw.url("/display/HR/Home"), &[("authorization", &gina)]).await;
    assert_eq!(a.json()["reason"], "space_not_granted");
    // A regular user refused something (none here) or an anonymous browser never sees it.
    let a = get(&gw.url("/"), &[html]).await;
    assert!(!a.text().contains("shared with you"));
}

/// Inline comments: created with the page and the comment replied to in the JSON body
/// (`containerId`, `parentCommentId`), each judged as commenting.
#[tokio::test]
async fn inline_comments_are_judged_by_the_page_in_their_body() {
    let (up, gw) = setup().await;
    let gary = bearer(&token("gary", &[])); // acme-guests: ENG view, comment
    let gina = bearer(&token("gina", &["partner-guests"])); // ENG view, edit (no comment)
    let post = |auth: String, body: serde_json::Value| {
        let url = gw.url("/rest/inlinecomments/1.0/comments");
        async move {
            request(
                "POST",
                &url,
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                &body.to_string(),
            )
            .await
        }
    };
    let body = |page: &str| {
        serde_json::json!({"originalSelection": "plan", "body": "<p>why?</p>", "matchIndex": 0,
            "numMatches": 1, "containerId": page, "parentCommentId": "0"})
    };
    assert_eq!(post(gary.clone(), body("101")).await.status, StatusCode::OK);
    assert_eq!(
        post(gary.clone(), body("201")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(gina.clone(), body("101")).await.status,
        StatusCode::FORBIDDEN,
        "edit is not comment"
    );
    let mut reply_elsewhere = body("101");
    reply_elsewhere["parentCommentId"] = serde_json::json!("202");
    assert_eq!(
        post(gary.clone(), reply_elsewhere).await.status,
        StatusCode::FORBIDDEN
    );
    // A body naming no page (or only Confluence's "none", 0) cannot be judged: refused to
    // guests (the rule's `requires_identifier`), passed for regular users.
    let mut nowhere = body("0");
    for unnamed in [serde_json::json!({"body": "<p>?</p>"}), nowhere.take()] {
        let a = post(gary.clone(), unnamed.clone()).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{unnamed}");
        assert!(a.text().contains("no_identifier_named"), "{}", a.text());
        let alice = bearer(&token("alice", &[]));
        assert_eq!(post(alice, unnamed).await.status, StatusCode::OK);
    }
    // The editor's heartbeat with its ids in a form body: the same.
    let heartbeat = |auth: String, form: &'static str| {
        let url = gw.url("/json/startheartbeatactivity.action");
        async move {
            request(
                "POST",
                &url,
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                form,
            )
            .await
        }
    };
    let gina_edits = heartbeat(gina.clone(), "contentId=101&spaceKey=ENG").await;
    assert_eq!(gina_edits.status, StatusCode::OK);
    let a = heartbeat(gina, "draftType=page").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.text().contains("no_identifier_named"), "{}", a.text());
    assert_eq!(up.forwarded().len(), 4);
}

/// The guest home in headless Chromium (Debian's `chromium`, driven by playwright-core
/// from tests/browser): a guest's browser refused HR lands on the spaces shared with them.
/// `GUESTGATE_GUEST_HOME_SCREENSHOT=PATH` saves the screenshot there (docs/guest-home.png
/// is made so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_home_renders_in_chromium() {
    let browser_dir = repo_path("tests/browser");
    let have_browser = std::path::Path::new("/usr/bin/chromium").exists()
        && browser_dir.join("node_modules/playwright-core").exists()
        && std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok();
    if !have_browser {
        crate::support::skip(
            "GUESTGATE_REQUIRE_BROWSER",
            "the_guest_home_renders_in_chromium",
            "needs /usr/bin/chromium, node and `npm ci` in tests/browser",
        );
        return;
    }
    let (_up, gw) = setup().await;
    let out = tempfile::tempdir().unwrap();
    let dom = out.path().join("dom.html");
    let shot = std::env::var("GUESTGATE_GUEST_HOME_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| out.path().join("home.png"));
    let args = [
        browser_dir.join("check.mjs").into_os_string(),
        gw.url("/display/HR/Home").into(),
        token("gina", &["partner-guests"]).into(),
        dom.clone().into_os_string(),
        shot.clone().into_os_string(),
    ];
    let result = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        result.status.success(),
        "browser: {}\n{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(result.stdout.trim_ascii()).unwrap();
    assert_eq!(seen["status"], 403);
    let dom = std::fs::read_to_string(&dom).unwrap();
    assert!(
        dom.contains("a guest. This page is not shared with you"),
        "{dom}"
    );
    assert!(dom.contains("<a href=\"/display/ENG\">ENG</a>"), "{dom}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);
}

/// A page export answers with a redirect to a file made for the exporting user under
/// `/download/temp/`: that user may fetch it, no one else — another guest, a regular user,
/// or anyone at a path no export was sent to.
#[tokio::test]
async fn an_export_file_is_reachable_by_its_exporter_only() {
    // Where Confluence 8.7.2 puts a page's PDF (ExportPageAsPdfAction.prepareDownloadPath).
    const FILE: &str =
        "/download/export/pdfexport-20261206-121500-1234-5/ENG-Home-121500-1234-6.pdf";
    let inner = default_handler();
    let wiki: Handler = std::sync::Arc::new(move |req| {
        let inner = inner.clone();
        Box::pin(async move {
            if req.uri().path() == "/spaces/flyingpdf/pdfpageexport.action" {
                return http::Response::builder()
                    .status(StatusCode::FOUND)
                    .header(
                        "location",
                        format!("http://wiki.example{FILE}?contentType=application/pdf"),
                    )
                    .body(full(""))
                    .unwrap();
            }
            inner(req).await
        })
    });
    let up = start_upstream_with(wiki).await;
    let mut c = TestConfig::new(&up.url());
    c.data = TEST_DATA.replace(
        r#""acme-guests": ["view", "comment"]"#,
        r#""acme-guests": ["view", "comment", "export"]"#,
    );
    let gw = start_gateway(c).await;
    let gary = bearer(&token("gary", &[]));
    let gina = bearer(&token("gina", &["partner-guests"]));
    let alice = bearer(&token("alice", &[]));

    // Nobody has exported yet: the file is no one's.
    let a = get(&gw.url(FILE), &[("authorization", &gary)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["reason"], "download_not_yours");

    let a = get(
        &gw.url("/spaces/flyingpdf/pdfpageexport.action?pageId=101"),
        &[("authorization", &gary)],
    )
    .await;
    assert_eq!(a.status, StatusCode::FOUND, "{}", a.text());
    let a = get(
        &gw.url(&format!("{FILE}?contentType=application/pdf")),
        &[("authorization", &gary)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let a = get(&gw.url(FILE), &[("authorization", &gina)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["reason"], "download_not_yours");
    // A regular user passes to the wiki, which admits only the exporting user itself.
    let a = get(&gw.url(FILE), &[("authorization", &alice)]).await;
    assert_eq!(a.status, StatusCode::OK);
    // gina cannot export ENG's page (no export permission): nothing is hers to fetch.
    let a = get(
        &gw.url("/spaces/flyingpdf/pdfpageexport.action?pageId=101"),
        &[("authorization", &gina)],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

/// With two replicas on one `[store]`, the export's redirect may be followed through the
/// other replica: the owner is shared, and still no one else gets the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_file_is_its_exporters_on_every_replica_of_a_store() {
    const FILE: &str = "/download/temp/pdfexport-20261206-131500-77-5/ENG-Home-131500-77-6.pdf";
    let Some(pg) = start_postgres("an_export_file_on_every_replica") else {
        return;
    };
    let inner = default_handler();
    let wiki: Handler = std::sync::Arc::new(move |req| {
        let inner = inner.clone();
        Box::pin(async move {
            if req.uri().path() == "/spaces/flyingpdf/pdfpageexport.action" {
                return http::Response::builder()
                    .status(StatusCode::FOUND)
                    .header("location", FILE)
                    .body(full(""))
                    .unwrap();
            }
            inner(req).await
        })
    });
    let up = start_upstream_with(wiki).await;
    let replica = || {
        let mut c = TestConfig::new(&up.url());
        c.data = TEST_DATA.replace(
            r#""acme-guests": ["view", "comment"]"#,
            r#""acme-guests": ["view", "comment", "export"]"#,
        );
        c.extra_sections = format!(
            "[store]\nurl = \"{}\"\npoll_interval_secs = 1\ntimeout_secs = 2\n",
            pg.url()
        );
        start_gateway(c)
    };
    let a = replica().await;
    let b = replica().await;
    for gw in [&a, &b] {
        // Ready once the stored document is read.
        let start = std::time::Instant::now();
        while get(&gw.admin_url("/readyz"), &[]).await.status != StatusCode::OK {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "not ready"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let gary = bearer(&token("gary", &[]));
    let export = get(
        &a.url("/spaces/flyingpdf/pdfpageexport.action?pageId=101"),
        &[("authorization", &gary)],
    )
    .await;
    assert_eq!(export.status, StatusCode::FOUND, "{}", export.text());
    let fetched = get(&b.url(FILE), &[("authorization", &gary)]).await;
    assert_eq!(fetched.status, StatusCode::OK, "{}", fetched.text());
    let gina = bearer(&token("gina", &["partner-guests"]));
    let other = get(&b.url(FILE), &[("authorization", &gina)]).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert_eq!(other.json()["reason"], "download_not_yours");

    // The store gone: b cannot know the owner of a file it did not see, and says so.
    const SECOND: &str = "/download/temp/pdfexport-x/second.pdf";
    drop(pg);
    let unknown = get(&b.url(SECOND), &[("authorization", &gary)]).await;
    assert_eq!(
        unknown.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        unknown.text()
    );
    assert_eq!(unknown.json()["reason"], "download_owner_unavailable");
}

/// Calls the real Confluence 8.7.2 UI makes that the toolkit's journeys do not record (the
/// sources are cited on each rule): an inline comment resolved or replied to, a label
/// removed, the page's watch link. Each is judged by the page or comment it names.
#[tokio::test]
async fn page_calls_beyond_the_journeys_follow_the_grants() {
    let (_up, gw) = setup().await;
    let gary = bearer(&token("gary", &[])); // ENG view, comment
    let gina = bearer(&token("gina", &["partner-guests"])); // ENG view, edit
    let cases: [(&str, &str, &String, StatusCode); 12] = [
        (
            "PUT",
            "/rest/inlinecomments/1.0/comments/101/resolve/true/dangling/false",
            &gary,
            StatusCode::OK,
        ),
        (
            "PUT",
            "/rest/inlinecomments/1.0/comments/201/resolve/true/dangling/false",
            &gary,
            StatusCode::FORBIDDEN,
        ),
        (
            "PUT",
            "/rest/inlinecomments/1.0/comments/101/resolve/true/dangling/false",
            &gina,
            StatusCode::FORBIDDEN,
        ),
        (
            "POST",
            "/rest/inlinecomments/1.0/comments/101/replies",
            &gary,
            StatusCode::OK,
        ),
        (
            "GET",
            "/rest/inlinecomments/1.0/comments/101/replies",
            &gina,
            StatusCode::OK,
        ),
        (
            "GET",
            "/rest/inlinecomments/1.0/comments/201/replies",
            &gina,
            StatusCode::FORBIDDEN,
        ),
        (
            "DELETE",
            "/rest/ui/1.0/content/101/label/77",
            &gina,
            StatusCode::OK,
        ),
        (
            "DELETE",
            "/rest/ui/1.0/content/101/label/77",
            &gary,
            StatusCode::FORBIDDEN,
        ),
        (
            "POST",
            "/users/addpagenotification.action?pageId=101",
            &gary,
            StatusCode::OK,
        ),
        (
            "POST",
            "/users/removepagenotification.action?pageId=101",
            &gina,
            StatusCode::OK,
        ),
        (
            "POST",
            "/users/addpagenotification.action?pageId=201",
            &gary,
            StatusCode::FORBIDDEN,
        ),
        (
            "GET",
            "/users/viewuserprofile.action?username=alice",
            &gary,
            StatusCode::FORBIDDEN,
        ),
    ];
    // The reply's parent and the changed comment are named in the body too, and judged.
    let body_cases = [
        (
            "POST",
            "/rest/inlinecomments/1.0/comments/101/replies",
            r#"{"commentId": 101, "body": "yes"}"#,
            StatusCode::OK,
        ),
        (
            "POST",
            "/rest/inlinecomments/1.0/comments/101/replies",
            r#"{"commentId": 201, "body": "yes"}"#,
            StatusCode::FORBIDDEN,
        ),
        (
            "PUT",
            "/rest/inlinecomments/1.0/comments/101",
            r#"{"id": 101, "body": "edited"}"#,
            StatusCode::OK,
        ),
        (
            "PUT",
            "/rest/inlinecomments/1.0/comments/101",
            r#"{"id": 201, "body": "edited"}"#,
            StatusCode::FORBIDDEN,
        ),
    ];
    for (method, path, body, want) in body_cases {
        let headers = [
            ("authorization", gary.as_str()),
            ("content-type", "application/json"),
        ];
        let a = request(method, &gw.url(path), &headers, body).await;
        assert_eq!(a.status, want, "{method} {path} {body}: {}", a.text());
    }
    // A body of another type on a rule that reads ids from JSON would go unread: refused.
    let headers = [
        ("authorization", gary.as_str()),
        ("content-type", "text/json"),
    ];
    let a = request(
        "POST",
        &gw.url("/rest/inlinecomments/1.0/comments"),
        &headers,
        r#"{"containerId": "201"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.text().contains("unjudged_request_body"), "{}", a.text());
    for (method, path, who, want) in cases {
        // Struts actions take forms (the XSRF token), REST resources JSON.
        let (content_type, body) = match (method, path.contains(".action")) {
            ("GET", _) => ("application/json", ""),
            (_, true) => ("application/x-www-form-urlencoded", "atl_token=abc"),
            (_, false) => ("application/json", "{}"),
        };
        let headers = [
            ("authorization", who.as_str()),
            ("content-type", content_type),
        ];
        let a = request(method, &gw.url(path), &headers, body).await;
        assert_eq!(a.status, want, "{method} {path}: {}", a.text());
    }
}

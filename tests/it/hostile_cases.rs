//! The hostile corpus kept as data (tests/cases/hostile-confluence.json): requests the
//! gateway could judge as one thing while Confluence acts on another. Each is sent through
//! the real gateway, on the shipped Confluence profile and policy, to a recording wiki
//! stand-in, and must get its status without the wiki seeing what it must not.
#![allow(clippy::unwrap_used)]

use crate::support::*;

#[derive(serde::Deserialize)]
struct Corpus {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    class: u8,
    name: String,
    #[serde(default)]
    token: Option<TokenSpec>,
    method: String,
    target: String,
    #[serde(default)]
    repeat: Option<Repeat>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    body: String,
    #[serde(default)]
    body_repeat: Option<Repeat>,
    status: u16,
    #[serde(default)]
    wiki_sees: bool,
    #[serde(default)]
    wiki_must_not_see: Vec<String>,
    #[serde(default)]
    wiki_header_is: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    wiki_uri_is: Option<String>,
}

#[derive(serde::Deserialize)]
struct TokenSpec {
    name: String,
    /// Absent: no groups claim at all.
    #[serde(default = "no_groups")]
    groups: Option<Vec<String>>,
}

fn no_groups() -> Option<Vec<String>> {
    Some(Vec::new())
}

#[derive(serde::Deserialize)]
struct Repeat {
    text: String,
    times: usize,
}

fn mint(spec: &TokenSpec) -> String {
    let groups: Vec<&str> = spec.groups.iter().flatten().map(String::as_str).collect();
    let mut claims = claims(&spec.name, &groups);
    if spec.groups.is_none() {
        claims.as_object_mut().unwrap().remove("groups");
    }
    sign_hs256(&claims)
}

#[tokio::test]
async fn the_hostile_corpus_is_judged_as_the_wiki_would_act() {
    let corpus: Corpus =
        serde_json::from_str(include_str!("../cases/hostile-confluence.json")).unwrap();
    // The wiki answers searches with an empty listing, as Confluence does with no hits.
    let default = default_handler();
    let up = start_upstream_with(std::sync::Arc::new(
        move |req: http::Request<hyper::body::Incoming>| {
            if req.uri().path().contains("/search") {
                return Box::pin(async {
                    json_response(
                        http::StatusCode::OK,
                        serde_json::json!({"results": [], "size": 0, "totalSize": 0}),
                    )
                })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>;
            }
            default(req)
        },
    ))
    .await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let mut failures = Vec::new();
    let mut classes = std::collections::BTreeSet::new();
    for case in &corpus.cases {
        classes.insert(case.class);
        let mut target = case.target.clone();
        if let Some(r) = &case.repeat {
            target.push_str(&r.text.repeat(r.times));
        }
        let mut body = case.body.clone();
        if let Some(r) = &case.body_repeat {
            body.push_str(&r.text.repeat(r.times));
        }
        let auth = case.token.as_ref().map(|t| bearer(&mint(t)));
        let mut headers: Vec<(&str, &str)> = case
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if let Some(auth) = &auth {
            headers.push(("authorization", auth));
        }
        let before = up.forwarded().len();
        let answer = request(&case.method, &gw.url(&target), &headers, &body).await;
        let seen: Vec<_> = up.forwarded().into_iter().skip(before).collect();
        let what = format!("class {} — {}", case.class, case.name);
        if answer.status.as_u16() != case.status {
            failures.push(format!(
                "{what}: status {} (want {}): {}",
                answer.status,
                case.status,
                String::from_utf8_lossy(&answer.body)
            ));
            continue;
        }
        match (case.wiki_sees, seen.len()) {
            (false, 0) | (true, 1) => {}
            (want, n) => {
                failures.push(format!(
                    "{what}: the wiki saw {n} requests (want it to see: {want})"
                ));
                continue;
            }
        }
        if let Some(request) = seen.first() {
            for name in &case.wiki_must_not_see {
                if request.headers.contains_key(name.as_str()) {
                    failures.push(format!("{what}: the wiki saw header {name}"));
                }
            }
            if let Some(uri) = &case.wiki_uri_is
                && request.uri != *uri
            {
                failures.push(format!("{what}: the wiki saw {}, want {uri}", request.uri));
            }
            for (name, value) in &case.wiki_header_is {
                let got = request
                    .headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok());
                if got != Some(value.as_str()) {
                    failures.push(format!("{what}: {name} was {got:?}, want {value}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        corpus.cases.len() >= 50 && classes.len() == 8,
        "the corpus covers every class"
    );
}

/// A multipart body streams to the wiki; a form field naming another page breaks it off
/// mid-stream, so the wiki never receives a complete request (class 1, form bodies).
#[tokio::test]
async fn a_multipart_field_naming_another_page_never_reaches_the_wiki_whole() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let complete = std::sync::Arc::new(AtomicUsize::new(0));
    let seen_complete = complete.clone();
    let default = default_handler();
    let up = start_upstream_with(std::sync::Arc::new(
        move |req: http::Request<hyper::body::Incoming>| {
            if req.uri().query() == Some("expand=space") {
                return default(req);
            }
            let complete = seen_complete.clone();
            Box::pin(async move {
                use http_body_util::BodyExt as _;
                if req.into_body().collect().await.is_ok() {
                    complete.fetch_add(1, Ordering::SeqCst);
                }
                json_response(http::StatusCode::OK, serde_json::json!({"ok": true}))
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
        },
    ))
    .await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let gary = bearer(&token("gary", &[]));
    let form = |field: &str, value: &str| {
        format!(
            "--B0undary\r\nContent-Disposition: form-data; name=\"comment\"\r\n\r\nhello\r\n\
             --B0undary\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n\
             --B0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
             Content-Type: text/plain\r\n\r\n{}\r\n--B0undary--\r\n",
            "x".repeat(200_000)
        )
    };
    let post = |body: String| {
        let url = gw.url("/pages/doaddcomment.action?pageId=101");
        let auth = gary.clone();
        async move {
            request(
                "POST",
                &url,
                &[
                    ("authorization", &auth),
                    ("content-type", "multipart/form-data; boundary=B0undary"),
                ],
                &body,
            )
            .await
        }
    };
    let a = post(form("PageId", "101")).await;
    assert_eq!(a.status, http::StatusCode::OK, "{}", a.text());
    assert_eq!(
        complete.load(Ordering::SeqCst),
        1,
        "the judged page's form reached the wiki"
    );

    for (field, value) in [
        ("pageId", "201"),
        ("PAGEID", "201"),
        ("draftId", "201"),
        ("pageId", "+101"),
    ] {
        let a = post(form(field, value)).await;
        assert_eq!(
            a.status,
            http::StatusCode::BAD_REQUEST,
            "{field}={value}: {}",
            a.text()
        );
        assert!(
            a.text().contains("unjudged_multipart_field"),
            "{}",
            a.text()
        );
    }
    assert_eq!(
        complete.load(Ordering::SeqCst),
        1,
        "no form naming another page reached the wiki whole"
    );
}

//! Response rewriting throughput (issue: ≥ 300 MB/s per core for JSON and HTML).
//!
//! Inputs: a Confluence-shaped search listing (every item with a space, an author and a
//! last modifier — two user objects per item, half of them guests) and a page of comments
//! with user links, each at ~100 KB and ~1 MB. Reported as bytes/s by criterion; the bench
//! runs on one thread, so the figure is per core.

use std::collections::HashSet;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guestgate::pipeline::rewrite::html::{self, GuestTest, HtmlPlan};
use guestgate::pipeline::rewrite::json::{self, JsonPlan};
use guestgate::routes::extract::SpaceExtractor;

fn listing(target: usize) -> Vec<u8> {
    let mut items = Vec::new();
    let mut size = 0;
    let mut i = 0;
    while size < target {
        let space = ["ENG", "HR", "OPS", "DOCS"][i % 4];
        let user = if i % 2 == 0 { "gary" } else { "alice" };
        let item = format!(
            r#"{{"content":{{"id":"{i}","type":"page","status":"current","title":"Page {i}","space":{{"key":"{space}","name":"Space {space}"}},"history":{{"createdBy":{{"type":"known","username":"{user}","userKey":"k{i}","displayName":"User {i}"}},"createdDate":"2026-10-01T09:30:00.000+02:00"}},"version":{{"by":{{"type":"known","username":"carol","userKey":"c{i}","displayName":"Carol"}},"number":{i},"minorEdit":false}}}},"title":"Page {i}","excerpt":"some matching @@@hl@@@text@@@endhl@@@ in page {i}","url":"/display/{space}/Page+{i}","resultGlobalContainer":{{"title":"Space {space}","displayUrl":"/display/{space}"}},"entityType":"content","lastModified":"2026-11-20T17:04:11.000+01:00"}}"#
        );
        size += item.len() + 1;
        items.push(item);
        i += 1;
    }
    format!(
        r#"{{"results":[{}],"start":0,"limit":{n},"size":{n},"totalSize":{n},"cqlQuery":"text ~ x","_links":{{"base":"http://wiki"}}}}"#,
        items.join(","),
        n = items.len()
    )
    .into_bytes()
}

fn page(target: usize) -> Vec<u8> {
    let mut body = String::from(
        "<!DOCTYPE html><html><head><title>Page</title><meta charset=\"UTF-8\"></head><body class=\"theme-default\"><div id=\"main\">",
    );
    let mut i = 0;
    while body.len() < target {
        let user = if i % 3 == 0 { "gary" } else { "alice" };
        body.push_str(&format!(
            "<div class=\"comment\" id=\"comment-{i}\"><h4 class=\"author\"><a href=\"/display/~{user}\" class=\"url fn confluence-userlink userlink-{i}\" data-username=\"{user}\" title=\"\">User {i}</a></h4><div class=\"comment-content wiki-content\"><p>Comment number {i} with <strong>some</strong> text, a <a href=\"/display/ENG/Other\">link</a> and more words to read.</p></div></div>\n"
        ));
        i += 1;
    }
    body.push_str("</div></body></html>");
    body.into_bytes()
}

fn lookup(name: &str) -> Option<bool> {
    match name {
        "gary" => Some(true),
        "alice" => Some(false),
        _ => None,
    }
}

fn bench_json(c: &mut Criterion) {
    let extractors = vec![
        SpaceExtractor::new("/space/key", None).expect("pointer"),
        SpaceExtractor::new("/content/space/key", None).expect("pointer"),
    ];
    let visible: HashSet<String> = ["ENG".to_string()].into_iter().collect();
    let f: &dyn Fn(&str) -> Option<bool> = &lookup;
    let mut group = c.benchmark_group("json");
    // The load benchmark's case: one content object of ~2 KB with a handful of users.
    let content = include_bytes!("../tests/fixtures/content.json");
    group.throughput(Throughput::Bytes(content.len() as u64));
    group.bench_function("tag_users/content_2KB", |b| {
        let plan = JsonPlan {
            tag_users: Some(f),
            filter: None,
            user_keys: &[],
            listings: &[],
        };
        b.iter(|| json::rewrite(content, &plan).expect("valid"))
    });
    group.bench_function("serde_json_roundtrip_baseline/content_2KB", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(content).expect("valid");
            serde_json::to_vec(&v).expect("serialise")
        })
    });
    for (label, size) in [("100KB", 100 * 1024), ("1MB", 1024 * 1024)] {
        let body = listing(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("tag_users/{label}"), |b| {
            let plan = JsonPlan {
                tag_users: Some(f),
                filter: None,
                user_keys: &[],
                listings: &[],
            };
            b.iter(|| json::rewrite(&body, &plan).expect("valid"))
        });
        group.bench_function(format!("tag_and_filter/{label}"), |b| {
            let plan = JsonPlan {
                tag_users: Some(f),
                filter: Some((&extractors, &visible)),
                user_keys: &[],
                listings: &[],
            };
            b.iter(|| json::rewrite(&body, &plan).expect("valid"))
        });
        group.bench_function(format!("serde_json_roundtrip_baseline/{label}"), |b| {
            b.iter(|| {
                let v: serde_json::Value = serde_json::from_slice(&body).expect("valid");
                serde_json::to_vec(&v).expect("serialise")
            })
        });
    }
    group.finish();
}

fn bench_html(c: &mut Criterion) {
    let mut group = c.benchmark_group("html");
    for (label, size) in [("100KB", 100 * 1024), ("1MB", 1024 * 1024)] {
        let body = page(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("labels_and_banner/{label}"), |b| {
            b.iter(|| {
                let is_guest: GuestTest = Arc::new(|n: &str| lookup(n) == Some(true));
                let plan = HtmlPlan {
                    tag_users: Some((
                        "a.confluence-userlink, a[data-username]"
                            .parse()
                            .expect("selector"),
                        is_guest,
                    )),
                    user_names: Arc::from(Vec::new()),
                    banner: Some(html::banner_html("This space is shared with guests.")),
                    encoding: encoding_rs::UTF_8,
                };
                html::rewrite_buffer(plan, &body).expect("rewrite")
            })
        });
        group.bench_function(format!("lol_html_no_handlers_baseline/{label}"), |b| {
            b.iter(|| {
                let mut out = Vec::with_capacity(body.len());
                let mut rewriter =
                    lol_html::HtmlRewriter::new(lol_html::Settings::new(), |c: &[u8]| {
                        out.extend_from_slice(c)
                    });
                for chunk in body.chunks(16 * 1024) {
                    rewriter.write(chunk).expect("write");
                }
                rewriter.end().expect("end");
                out
            })
        });
        group.bench_function(format!("lol_html_anchor_selector_only/{label}"), |b| {
            b.iter(|| {
                let mut out = Vec::with_capacity(body.len());
                let mut rewriter = lol_html::HtmlRewriter::new(
                    lol_html::Settings::new().append_element_content_handler(lol_html::element!(
                        "a[data-username]",
                        |_el| Ok(())
                    )),
                    |c: &[u8]| out.extend_from_slice(c),
                );
                for chunk in body.chunks(16 * 1024) {
                    rewriter.write(chunk).expect("write");
                }
                rewriter.end().expect("end");
                out
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_json, bench_html);
criterion_main!(benches);

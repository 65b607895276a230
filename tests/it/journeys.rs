//! The real Confluence UI's traffic as the reference (issue "Guests can work"): the
//! requests Atlassian's DC App Performance Toolkit records for each browser journey
//! (`tests/cases/journeys/confluence.json`, with the toolkit's file and line), replayed
//! through the real gateway in front of a recording stand-in, as
//! - a guest granted what the journey needs in ENG: every request reaches the wiki, except
//!   those the guest model refuses by design (`by_design` in the data);
//! - the same guest with the journey moved to HR (not granted): every request that names
//!   the space is refused;
//! - a regular user: every request reaches the wiki.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use crate::support::*;
use http::StatusCode;

const JOURNEYS: &str = include_str!("../cases/journeys/confluence.json");

/// A guest holding every permission a journey needs in ENG, a guest with no grant, a
/// regular user.
const DATA: &str = r#"{
  "groups": {
    "confluence-users": {"guest": false},
    "journey-guests": {"guest": true},
    "idle-guests": {"guest": true}
  },
  "users": {
    "alice": {"groups": ["confluence-users"]},
    "jo": {"groups": ["journey-guests"]},
    "nog": {"groups": ["idle-guests"]}
  },
  "spaces": {
    "ENG": {"guests": {"groups": {"journey-guests": ["view", "edit", "comment", "attach"]}}}
  }
}"#;

fn values(space: &str) -> BTreeMap<&'static str, String> {
    let base: u64 = if space == "ENG" { 100 } else { 200 };
    BTreeMap::from([
        ("page_id", (base + 1).to_string()),
        ("parent_page_id", (base + 1).to_string()),
        ("blog_id", (base + 2).to_string()),
        ("content_id", (base + 3).to_string()),
        ("draft_page_id", (base + 3).to_string()),
        ("draft_id", (base + 4).to_string()),
        ("space_key", space.to_string()),
        ("page_title", "Home".to_string()),
        ("blog_webui", format!("/display/{space}/2026/12/01/Post")),
        ("user_key", "8a7f80a2".to_string()),
        ("username", "jo".to_string()),
        ("atl_token", "t0k3n".to_string()),
        ("build_number", "9012".to_string()),
        ("keyboard_hash", "c0ffee".to_string()),
        ("contributors_hash", "h4sh".to_string()),
        ("comment_html", "%3Cp%3Ehi%3C%2Fp%3E".to_string()),
        ("uuid", "5b1e2c3d".to_string()),
    ])
}

fn fill(template: &str, values: &BTreeMap<&'static str, String>) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// A JSON body holding each `pointer → value` (numbers where the value is one).
fn json_body(
    pointers: &serde_json::Map<String, serde_json::Value>,
    values: &BTreeMap<&'static str, String>,
) -> String {
    let mut root = serde_json::Value::Null;
    for (pointer, value) in pointers {
        let value = fill(value.as_str().unwrap_or(""), values);
        let leaf = value
            .parse::<u64>()
            .map(serde_json::Value::from)
            .unwrap_or(serde_json::Value::from(value));
        let mut at = &mut root;
        for segment in pointer.trim_start_matches('/').split('/') {
            match segment.parse::<usize>() {
                Ok(i) => {
                    if !at.is_array() {
                        *at = serde_json::json!([]);
                    }
                    let list = at.as_array_mut().unwrap();
                    while list.len() <= i {
                        list.push(serde_json::Value::Null);
                    }
                    at = &mut list[i];
                }
                Err(_) => {
                    if !at.is_object() {
                        *at = serde_json::json!({});
                    }
                    at = at
                        .as_object_mut()
                        .unwrap()
                        .entry(segment.to_string())
                        .or_insert(serde_json::Value::Null);
                }
            }
        }
        *at = leaf;
    }
    root.to_string()
}

struct Outcome {
    /// Refused on purpose (`refused` in the data, with why).
    expected_refusal: bool,
    /// Names a page or space the wiki acts on (not only in `inert` client events).
    names_space: bool,
    journey: String,
    line: String,
    request: String,
    status: StatusCode,
    reason: String,
}

/// Sends every request of every journey for `user` with the values of `space`.
async fn replay(gw: &TestGateway, user: &str, groups: &[&str], space: &str) -> Vec<Outcome> {
    let cases: serde_json::Value = serde_json::from_str(JOURNEYS).unwrap();
    let values = values(space);
    let auth = bearer(&token(user, groups));
    let mut outcomes = Vec::new();
    for (journey, spec) in cases["journeys"].as_object().unwrap() {
        for r in spec["requests"].as_array().unwrap() {
            let method = r["method"].as_str().unwrap();
            let target = fill(r["target"].as_str().unwrap(), &values);
            let mut headers = vec![("authorization", auth.as_str())];
            let body = if let Some(form) = r["form"].as_object() {
                headers.push(("content-type", "application/x-www-form-urlencoded"));
                form.iter()
                    .map(|(k, v)| format!("{k}={}", fill(v.as_str().unwrap_or(""), &values)))
                    .collect::<Vec<_>>()
                    .join("&")
            } else if let Some(pointers) = r["json"].as_object() {
                headers.push(("content-type", "application/json"));
                json_body(pointers, &values)
            } else {
                String::new()
            };
            let a = request(method, &gw.url(&target), &headers, &body).await;
            let reason = if a.status.is_success() {
                String::new()
            } else {
                serde_json::from_slice::<serde_json::Value>(&a.body)
                    .ok()
                    .and_then(|v| v["reason"].as_str().map(str::to_string))
                    .unwrap_or_default()
            };
            let template = r.to_string();
            let names_space = r["inert"].is_null()
                && [
                    "{page_id}",
                    "{parent_page_id}",
                    "{blog_id}",
                    "{content_id}",
                    "{draft_page_id}",
                    "{draft_id}",
                    "{space_key}",
                    "{blog_webui}",
                ]
                .iter()
                .any(|p| template.contains(p));
            outcomes.push(Outcome {
                expected_refusal: !r["refused"].is_null(),
                names_space,
                journey: journey.clone(),
                line: r["line"].to_string(),
                request: format!("{method} {target}"),
                status: a.status,
                reason,
            });
        }
    }
    outcomes
}

fn report(outcomes: &[&Outcome]) -> String {
    outcomes
        .iter()
        .map(|o| {
            format!(
                "  {} (line {}): {} -> {} {}",
                o.journey, o.line, o.request, o.status, o.reason
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn refused(o: &&Outcome) -> bool {
    matches!(
        o.status,
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_uis_journeys_work_for_a_granted_guest_and_regular_users() {
    let up = start_upstream().await;
    let mut c = TestConfig::new(&up.url());
    c.data = DATA.to_string();
    let gw = start_gateway(c).await;

    // Regular users: everything reaches the wiki, whichever space.
    let regular = replay(&gw, "alice", &[], "HR").await;
    let failed: Vec<&Outcome> = regular.iter().filter(refused).collect();
    assert!(
        failed.is_empty(),
        "regular user refused:\n{}",
        report(&failed)
    );

    // The guest in the granted space: everything but the refusals by design.
    let guest = replay(&gw, "jo", &[], "ENG").await;
    let failed: Vec<&Outcome> = guest
        .iter()
        .filter(|o| refused(o) != o.expected_refusal)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests not answered as the data says for a guest granted what the \
         journey needs (refused when they should pass, or passed when refused by design):\n{}",
        failed.len(),
        guest.len(),
        report(&failed)
    );
    let by_design = guest.iter().filter(|o| o.expected_refusal).count();
    assert!(by_design < 15, "{by_design} refusals by design");

    // The same journeys in a space not granted, and for a guest with no grant at all:
    // every request that names the space is refused.
    for (user, space) in [("jo", "HR"), ("nog", "ENG")] {
        let outcomes = replay(&gw, user, &[], space).await;
        let naming = outcomes.iter().filter(|o| o.names_space).count();
        assert!(naming >= 75, "{naming} requests name the space");
        let passed: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.names_space && !refused(o))
            .collect();
        assert!(
            passed.is_empty(),
            "{user} in {space}: requests naming the space reached the wiki:\n{}",
            report(&passed)
        );
    }
}

/// Every rule of the Confluence profile says, in a comment right above it, which journey
/// of the toolkit or which Confluence source (or which part of the guest model) needs it:
/// a rule nobody can trace is one nobody can review.
#[test]
fn every_confluence_rule_cites_what_needs_it() {
    let text = std::fs::read_to_string(repo_path("config/routes/confluence.toml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let uncited: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(i, l)| l.trim() == "[[route]]" && (*i == 0 || !lines[i - 1].starts_with('#')))
        .map(|(i, _)| format!("line {}: {}", i + 1, lines.get(i + 1).unwrap_or(&"")))
        .collect();
    assert!(
        uncited.is_empty(),
        "rules without a citation:\n{}",
        uncited.join("\n")
    );
    let sourced = [
        "Needed by:",
        "Source:",
        "Guest model",
        "http_actions.py",
        "8.7.2",
        "KB ",
    ];
    let unsourced: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim() == "[[route]]")
        .filter(|(i, _)| {
            let mut j = *i;
            let mut block = String::new();
            while j > 0 && lines[j - 1].starts_with('#') {
                j -= 1;
                block.push_str(lines[j]);
            }
            !sourced.iter().any(|s| block.contains(s))
        })
        .map(|(i, _)| format!("line {}: {}", i + 1, lines.get(i + 1).unwrap_or(&"")))
        .collect();
    assert!(
        unsourced.is_empty(),
        "rules whose comment names no source:\n{}",
        unsourced.join("\n")
    );
}

//! Runs tests/cases/*.json — request → expected decision, written by security teams
//! without Rust — through the real gateway in front of the stand-in wiki.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;

#[tokio::test]
async fn confluence_policy_cases() {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let file: serde_json::Value =
        serde_json::from_str(include_str!("cases/confluence.json")).unwrap();
    let cases = file["cases"].as_array().unwrap();
    assert!(cases.len() >= 80, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let method = case["method"].as_str().unwrap();
        let url = case["url"].as_str().unwrap();
        let auth = case["user"].as_str().map(|u| bearer(&token(u, &[])));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let before = up.forwarded().len();
        let answer = request(method, &gw.url(url), &headers, "").await;
        let forwarded = up.forwarded().len() > before;
        let want = case["status"].as_u64().unwrap() as u16;
        let mut problems = Vec::new();
        if answer.status.as_u16() != want {
            problems.push(format!(
                "status {} (want {want}): {}",
                answer.status,
                answer.text()
            ));
        }
        if forwarded != (want == 200) {
            problems.push(format!("forwarded to the wiki: {forwarded}"));
        }
        if let Some(reason) = case["reason"].as_str()
            && answer.status.as_u16() != 200
            && answer.json()["reason"] != reason
        {
            problems.push(format!(
                "reason {} (want {reason})",
                answer.json()["reason"]
            ));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{method} {url} as {}: {}",
                case["user"],
                problems.join("; ")
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
}

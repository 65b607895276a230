//! The admin listener: health, readiness, metrics, reload, guests.
#![allow(clippy::unwrap_used)]

use crate::support::*;
use http::StatusCode;

#[tokio::test]
async fn health_readiness_and_metrics() {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    assert_eq!(get(&gw.admin_url("/healthz"), &[]).await.text(), "ok\n");
    let ready = get(&gw.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(ready.text().contains(&*gw.gateway.snapshot().revision));
    let gary = bearer(&token("gary", &[]));
    get(&gw.url("/display/ENG/Home"), &[("authorization", &gary)]).await;
    get(&gw.url("/display/ENG/Home"), &[("authorization", &gary)]).await;
    get(&gw.url("/browsepeople.action"), &[("authorization", &gary)]).await;
    let m = get(&gw.admin_url("/metrics"), &[]).await.text();
    assert!(
        m.contains("guestgate_requests_total{status=\"2xx\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("guestgate_requests_total{status=\"4xx\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("guestgate_decisions_total{family=\"space\",decision=\"allow\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("guestgate_decisions_total{family=\"people_directory\",decision=\"deny\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("guestgate_decision_cache_total{result=\"hit\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("guestgate_request_duration_seconds_count 3"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "guestgate_policy_revision{{revision=\"{}\"}} 1",
            gw.gateway.snapshot().revision
        )),
        "{m}"
    );
    assert_eq!(
        get(&gw.admin_url("/nope"), &[]).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        request("POST", &gw.admin_url("/healthz"), &[], "")
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn reload_swaps_valid_changes_and_refuses_invalid_ones() {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let gary = bearer(&token("gary", &[]));
    let first = gw.gateway.snapshot().revision.clone();
    assert_eq!(
        get(&gw.url("/display/HR/Home"), &[("authorization", &gary)])
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    // Grant HR to acme-guests.
    let mut data: serde_json::Value = serde_json::from_str(TEST_DATA).unwrap();
    data["spaces"]["HR"] = serde_json::json!({"guests": {"groups": {"acme-guests": ["view"]}}});
    std::fs::write(gw.path("data.json"), data.to_string()).unwrap();
    let r = request("POST", &gw.admin_url("/reload"), &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    let second = r.json()["revision"].as_str().unwrap().to_string();
    assert_ne!(second, &*first);
    assert_eq!(
        get(&gw.url("/display/HR/Home"), &[("authorization", &gary)])
            .await
            .status,
        StatusCode::OK,
        "the cached denial of the old revision is not served"
    );

    // An admin grant to a guest is refused; the last good revision keeps serving.
    data["spaces"]["HR"] = serde_json::json!({"guests": {"groups": {"acme-guests": ["admin"]}}});
    std::fs::write(gw.path("data.json"), data.to_string()).unwrap();
    let r = request("POST", &gw.admin_url("/reload"), &[], "").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = r.json();
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("`admin` can never be granted"),
        "{body}"
    );
    assert_eq!(body["revision"], second.as_str());
    assert_eq!(&*gw.gateway.snapshot().revision, second.as_str());
    assert_eq!(
        get(&gw.url("/display/HR/Home"), &[("authorization", &gary)])
            .await
            .status,
        StatusCode::OK
    );
    let m = get(&gw.admin_url("/metrics"), &[]).await.text();
    assert!(
        m.contains("guestgate_reloads_total{result=\"success\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("guestgate_reloads_total{result=\"failure\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn guests_lists_guests_groups_and_shared_spaces() {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let v = get(&gw.admin_url("/guests"), &[]).await.json();
    assert_eq!(
        v["guest_groups"]["acme-guests"]["spaces"][0]["space"],
        "ENG"
    );
    assert_eq!(
        v["guest_groups"]["acme-guests"]["spaces"][0]["permissions"],
        serde_json::json!(["view", "comment"])
    );
    assert_eq!(
        v["guests"]["gina"]["spaces"][0]["permissions"],
        serde_json::json!(["view", "edit"])
    );
    assert_eq!(
        v["guests"]["gary"]["groups"],
        serde_json::json!(["acme-guests"])
    );
    // Own grants, by their name, and where the guest can go through their groups too.
    assert_eq!(
        v["guests"]["gina"]["own_grants"],
        v["guests"]["gina"]["spaces"]
    );
    assert_eq!(v["guests"]["gary"]["own_grants"], serde_json::json!([]));
    assert_eq!(
        v["guests"]["gary"]["effective_spaces"],
        serde_json::json!([{"space": "ENG", "permissions": ["view", "comment"], "expires": null}])
    );
    assert_eq!(
        v["guests"]["gina"]["effective_spaces"],
        serde_json::json!([
            {"space": "DOCS", "permissions": ["view"], "expires": null},
            {"space": "ENG", "permissions": ["view", "edit"], "expires": null}
        ])
    );
    assert!(v["guests"].get("alice").is_none());
    assert_eq!(
        v["spaces"]["DOCS"]["groups"]["partner-guests"]["permissions"],
        serde_json::json!(["view"])
    );
}

#[tokio::test]
async fn decision_log_lines_follow_the_contract_and_never_hold_the_token() {
    let up = start_upstream().await;
    let mut c = TestConfig::new(&up.url());
    c.log_decisions = "decisions.log".into();
    let gw = start_gateway(c).await;
    let tok = token("gary", &[]);
    get(
        &gw.url("/display/HR/Home"),
        &[("authorization", &bearer(&tok))],
    )
    .await;
    get(
        &gw.url("/display/HR/Home"),
        &[("authorization", &bearer(&tok))],
    )
    .await;
    let path = gw.path("decisions.log");
    let mut text = String::new();
    for _ in 0..250 {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!text.contains(&tok), "token must never be logged");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let first = &lines[0];
    for key in [
        "decision_id",
        "timestamp",
        "revision",
        "input",
        "result",
        "duration_us",
        "cached",
    ] {
        assert!(first.get(key).is_some(), "{key} in {first}");
    }
    assert_eq!(first["input"]["route"]["space"], "HR");
    assert_eq!(
        first["input"]["user"]["claims"]["preferred_username"],
        "gary"
    );
    assert_eq!(first["result"]["reason"], "space_not_granted");
    assert_eq!(first["cached"], false);
    assert_eq!(lines[1]["cached"], true);
    assert_ne!(first["decision_id"], lines[1]["decision_id"]);
    assert!(
        time::OffsetDateTime::parse(
            first["timestamp"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok()
    );
}

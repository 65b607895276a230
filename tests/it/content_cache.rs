//! The content id → space cache never outlives what it caches: a page moved through the
//! gateway is judged in its new space at once, not after the cache's lifetime.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use http::StatusCode;

use crate::support::*;

#[tokio::test]
async fn a_moved_page_is_judged_in_its_new_space_at_once() {
    // Page 150 lives in ENG until a move the wiki answers takes it to HR.
    let space = Arc::new(Mutex::new("ENG"));
    let handler_space = space.clone();
    let lookups = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handler_lookups = lookups.clone();
    let default = default_handler();
    let up = start_upstream_with(Arc::new(
        move |req: http::Request<hyper::body::Incoming>| {
            let space = handler_space.clone();
            let lookups = handler_lookups.clone();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            if path == "/rest/api/content/150" && query == "expand=space" {
                let key = *space.lock().unwrap();
                lookups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return Box::pin(async move {
                    json_response(
                        StatusCode::OK,
                        serde_json::json!({"id": "150", "type": "page", "space": {"key": key}}),
                    )
                })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>;
            }
            if path == "/pages/movepage.action" {
                *space.lock().unwrap() = "HR";
            }
            default(req)
        },
    ))
    .await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let gary = bearer(&token("gary", &[]));
    let alice = bearer(&token("alice", &[]));
    let view = |auth: String| {
        let url = gw.url("/pages/viewpage.action?pageId=150");
        async move { get(&url, &[("authorization", &auth)]).await.status }
    };
    assert_eq!(view(gary.clone()).await, StatusCode::OK);
    let count = || lookups.load(std::sync::atomic::Ordering::SeqCst);
    let before = count();
    assert_eq!(view(gary.clone()).await, StatusCode::OK);
    assert_eq!(count(), before, "the space is cached");

    let a = request(
        "POST",
        &gw.url("/pages/movepage.action?pageId=150&spaceKey=HR&position=topLevel"),
        &[("authorization", &alice)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        view(gary.clone()).await,
        StatusCode::FORBIDDEN,
        "after the move the page is HR's"
    );
}

//! The admin listener (contract §7): health, readiness, metrics, reload, guest report.
//! It binds to loopback by default; see docs/OPERATIONS.md for exposing it safely.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::error::{ProxyBody, full_body};
use crate::gateway::Gateway;

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(full_body(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    reply(status, "application/json", value.to_string())
}

pub async fn handle(gw: &Arc<Gateway>, req: Request<Incoming>) -> Response<ProxyBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") if !gw.is_ready() => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "waiting for the first bundle\n".into(),
        ),
        (&Method::GET, "/readyz") => {
            let revision = gw.snapshot().revision.clone();
            reply(StatusCode::OK, "text/plain", format!("ready {revision}\n"))
        }
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            gw.metrics.render(gw.decision_log.dropped()),
        ),
        (&Method::POST, "/reload") => match gw.reload().await {
            Ok(revision) => json(StatusCode::OK, serde_json::json!({"revision": &*revision})),
            Err(errors) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({
                    "errors": errors,
                    "revision": &*gw.snapshot().revision,
                }),
            ),
        },
        (&Method::GET, "/guests") => {
            let snapshot = gw.snapshot();
            let mut report = snapshot.directory.guest_report();
            report["revision"] = serde_json::Value::from(&*snapshot.revision);
            json(StatusCode::OK, report)
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/reload" | "/guests") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method_not_allowed"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found"}),
        ),
    }
}

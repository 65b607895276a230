//! The admin listener: health, readiness, metrics, reload, the guest report
//! (JSON, or the "Guest access" page for browsers) and, when enabled, the write API.
//! It binds to loopback by default; see docs/OPERATIONS.md for exposing it safely.

mod data_file;
mod page;
mod report;
mod write;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::gateway::Gateway;
use crate::http::body::{ProxyBody, full_body};

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

pub async fn handle(gw: &Gateway, req: Request<Incoming>) -> Response<ProxyBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") if !gw.store.is_ready() => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            if gw.store.shared().is_some() {
                "waiting for the first data document from the store\n".into()
            } else {
                "waiting for the first bundle\n".into()
            },
        ),
        (&Method::GET, "/readyz") if gw.pipeline.is_draining() => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining: shutting down\n".into(),
        ),
        (&Method::GET, "/readyz") => {
            let revision = gw.snapshot().revision.clone();
            // Still ready — the last good revision keeps serving — but say when the bundle
            // server has not answered for three intervals (docs/OPERATIONS.md has the alert).
            let stale = gw.config.bundle.as_ref().and_then(|b| {
                let age = gw.metrics.bundle_poll_age()?;
                (age > 3 * b.poll_interval.as_secs().max(1)).then_some(age)
            });
            // Likewise while the store is unreachable: this replica enforces the last
            // document it read, and says since when.
            let store_down = gw.store.shared().and_then(|s| s.down_for());
            let text = match (stale, store_down) {
                (Some(age), _) => {
                    format!("ready {revision} (bundle server last answered {age} s ago)\n")
                }
                (None, Some(secs)) => format!(
                    "ready {revision} (store unreachable for {secs} s; serving the last data document read)\n"
                ),
                (None, None) => format!("ready {revision}\n"),
            };
            reply(StatusCode::OK, "text/plain", text)
        }
        (&Method::GET, "/metrics") => {
            let mut text = gw.metrics.render(gw.pipeline.decision_log_dropped());
            gw.notifier.render_metrics(&mut text);
            if let Some(shared) = gw.store.shared() {
                shared.render_metrics(&mut text);
            }
            gw.last_audit.render_metric(&mut text);
            reply(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        (&Method::POST, "/reload") => match gw.store.reload().await {
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
            let mut report = report::guests(&snapshot.directory);
            report["revision"] = serde_json::Value::from(&*snapshot.revision);
            if gw.config.audit.interval.is_some() {
                report["wiki_permissions"] = gw.last_audit.to_json();
            }
            if crate::pipeline::accept::prefers_html(req.headers()) {
                reply(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    page::render(&report, time::OffsetDateTime::now_utc()),
                )
            } else {
                let mut r = json(StatusCode::OK, report);
                // The revision a write may name in `If-Match`.
                if let Ok(v) = http::HeaderValue::from_str(&format!("\"{}\"", snapshot.revision)) {
                    r.headers_mut().insert(header::ETAG, v);
                }
                r
            }
        }
        (&Method::POST, path) if write::Operation::from_path(path).is_some() => {
            write::handle(gw, req).await
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/reload" | "/guests")
        | (_, "/guests/invite" | "/guests/assign" | "/guests/revoke" | "/guests/remove") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method_not_allowed"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found"}),
        ),
    }
}

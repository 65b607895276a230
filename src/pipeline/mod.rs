//! The request pipeline: accept → identify → classify → decide → forward → respond.
//!
//! [`handle`] is the one place a request's path can be read top to bottom. Each stage is a
//! plain function in its own module; an error from any stage becomes a response in
//! `GatewayError::into_response` and nowhere else. Requests under `/_guestgate/` (browser
//! sign-in, [`signin`]) leave the line right after accept: the gateway answers them itself.

pub mod accept;
pub mod canonical;
pub mod classify;
pub mod decide;
pub mod forward;
pub mod identify;
pub mod jwks;
pub mod limits;
pub mod rewrite;
pub mod signin;

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::error::{GatewayError, ProxyBody};
use crate::gateway::Gateway;
use crate::snapshot::Snapshot;
use forward::{ConnInfo, ForwardIdentity};
use identify::Caller;

/// Where a browser sent to sign in comes back to: the canonical path and the query it
/// asked for (same origin by construction).
fn return_path(accepted: &accept::Accepted) -> String {
    match &accepted.query {
        Some(q) => format!("{}?{q}", accepted.path),
        None => accepted.path.clone(),
    }
}

/// How a browser session took part in a request, for the caching headers of its answer.
#[derive(Default)]
struct SessionUse {
    /// The caller was identified by the session cookie.
    authenticated: bool,
    /// The `Set-Cookie` of a session refreshed on the way in.
    refreshed: Option<http::HeaderValue>,
}

/// `Cache-Control` for an answer personalised by a session cookie: `private` added (and
/// `public`/`s-maxage` dropped) so no shared cache stores one person's page for another.
/// `None` when the wiki already said `private` or `no-store`.
fn private_cache_control(response: &http::HeaderMap) -> Option<http::HeaderValue> {
    let mut kept = vec!["private".to_string()];
    for value in response.get_all(http::header::CACHE_CONTROL) {
        let Ok(text) = value.to_str() else {
            // Unreadable: nothing of it can be trusted to keep the page private.
            return Some(http::HeaderValue::from_static("private, no-store"));
        };
        for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let name = directive.split('=').next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("private") {
                return None;
            }
            if !name.eq_ignore_ascii_case("public") && !name.eq_ignore_ascii_case("s-maxage") {
                kept.push(directive.to_string());
            }
        }
    }
    http::HeaderValue::from_str(&kept.join(", "))
        .ok()
        .or(Some(http::HeaderValue::from_static("private, no-store")))
}

/// Adds `Cookie` to `Vary` unless it is there already (or `Vary: *`).
fn vary_on_cookie(response: &mut http::HeaderMap) {
    let present = response
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| f.trim() == "*" || f.trim().eq_ignore_ascii_case("cookie"));
    if !present {
        response.append(http::header::VARY, http::HeaderValue::from_static("Cookie"));
    }
}

/// Handles one request end to end. Never fails: refusals are responses.
pub async fn handle(gw: &Gateway, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
    let snapshot = gw.snapshot();
    let wants_html = accept::prefers_html(req.headers());
    let started = std::time::Instant::now();
    let mut session = SessionUse::default();
    let result = handle_inner(gw, &snapshot, req, conn, &mut session).await;
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            if matches!(
                error,
                GatewayError::Policy(_)
                    | GatewayError::ContentUnresolved { .. }
                    | GatewayError::UpstreamUnavailable(_)
            ) {
                tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "request refused");
            }
            // The page only says what failed in general; the details are kept here.
            if let GatewayError::SignIn(e) = &error
                && e.offers_sign_in()
            {
                tracing::warn!(error = %e, source = ?std::error::Error::source(e), reason = e.reason(), "sign-in failed");
            }
            error.into_response(wants_html)
        }
    };
    let headers = response.headers_mut();
    // A session refreshed on the way in is handed back whatever the answer, so the
    // browser does not refresh it again on its next request. An answer that sets a session
    // must never be stored by any cache: another client would be handed the session.
    if let Some(cookie) = session.refreshed {
        headers.append(http::header::SET_COOKIE, cookie);
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("private, no-store"),
        );
        vary_on_cookie(headers);
    } else if session.authenticated {
        if let Some(value) = private_cache_control(headers) {
            headers.insert(http::header::CACHE_CONTROL, value);
        }
        vary_on_cookie(headers);
    }
    gw.metrics
        .observe_request(response.status(), started.elapsed());
    response
}

// The rarer stages (sign-in, content lookups) are boxed where they are awaited: a future
// is as large as its largest await, and this one is created and moved for every request.
async fn handle_inner(
    gw: &Gateway,
    snapshot: &Arc<Snapshot>,
    req: Request<Incoming>,
    conn: ConnInfo,
    session: &mut SessionUse,
) -> Result<Response<ProxyBody>, GatewayError> {
    if let Some(answer) = accept::asterisk_options(&req) {
        return Ok(answer);
    }
    if !gw.is_ready() {
        return Err(GatewayError::NotReady("policy_not_loaded"));
    }
    let accepted = accept::accept(&req, &gw.config.server, &snapshot.routes)?;
    // `/_guestgate/` is the gateway's own namespace (sign-in): answered here, never
    // classified by the route profile, never forwarded.
    if signin::is_gateway_path(&accepted.path) {
        return Box::pin(signin::endpoint(
            gw.signin.as_deref(),
            req.headers(),
            req.uri(),
            conn.tls,
            &accepted,
        ))
        .await;
    }
    let mut caller = snapshot.verifier.identify(req.headers()).await;
    // A token, when one is sent, decides who the caller is; a browser's session cookie
    // only speaks when there is none.
    if let (Caller::Anonymous, Some(signin)) = (&caller, &gw.signin) {
        (caller, session.refreshed) =
            Box::pin(signin.session_caller(req.headers(), conn.tls)).await;
        session.authenticated = matches!(caller, Caller::Authenticated(_));
    }
    let mut route = classify::classify(&snapshot.routes, &accepted, gw.config.rewrite.json);
    let body_limit = limits::body_limit(&req, &route, &gw.config.server)?;
    let principal = match decide::principal(snapshot, &route, &caller, gw.config.identity.anonymous)
    {
        Err(GatewayError::Unauthorized(e)) => {
            return match &gw.signin {
                Some(s) if signin::should_redirect(&accepted.method, accepted.wants_html, &e) => {
                    Box::pin(s.start(req.headers(), req.uri(), conn.tls, &return_path(&accepted)))
                        .await
                }
                _ => Err(GatewayError::Unauthorized(e)),
            };
        }
        other => other?,
    };
    // A content id's space is needed where the wiki itself will not stop the user — for
    // guests, and a failed lookup denies them — and for the banner every viewer sees, where
    // a failed lookup only means no banner. Regular users otherwise pass straight through.
    let guest = snapshot.directory.is_guest(&principal.groups);
    let wants_banner = route.rewrites.banner && gw.config.rewrite.html;
    if (guest || wants_banner) && classify::needs_lookup(&route) {
        let lookup = snapshot.routes.lookup_for(&route);
        let resolved = Box::pin(classify::resolve_space(
            &mut route,
            lookup,
            &gw.content_cache,
            &gw.upstream,
        ))
        .await;
        match resolved {
            Err(e) if guest => return Err(e),
            Err(e) => tracing::debug!(error = %e, "no banner: content space unresolved"),
            Ok(()) => {}
        }
    }
    let decided = decide::decide(
        snapshot,
        &accepted,
        &route,
        principal,
        gw.decision_log.enabled(),
    )?;
    gw.decision_log
        .record(&snapshot.revision, &decided, gw.config.policy.dry_run);
    gw.metrics.observe_decision(&route, &decided);
    if !decided.decision.allow {
        // `anonymous = "policy"`: a policy that wants a signed-in user answers 401; a
        // browser is sent to sign in instead.
        if decided.decision.status == http::StatusCode::UNAUTHORIZED
            && decided.user.is_none()
            && !gw.config.policy.dry_run
            && let Some(s) = &gw.signin
            && signin::should_redirect(
                &accepted.method,
                accepted.wants_html,
                &identify::IdentityError::Missing,
            )
        {
            return Box::pin(s.start(req.headers(), req.uri(), conn.tls, &return_path(&accepted)))
                .await;
        }
        if gw.config.policy.dry_run {
            // Dry run (OPA-Envoy's `dry-run`): the denial is logged and counted, never enforced.
            tracing::info!(
                reason = %decided.decision.reason,
                family = route.family.as_str(),
                user = decided.user.as_deref().unwrap_or("-"),
                "dry run: request would have been denied"
            );
        } else {
            return Err(GatewayError::Denied {
                reason: decided.decision.reason.clone(),
                status: decided.decision.status,
            });
        }
    }
    let _upstream_slot = gw.upstream_slots.try_acquire()?;
    let filter = (route.rewrites.filter_spaces && decided.decision.guest)
        .then(|| decide::viewable_spaces(snapshot, &accepted, &route, &decided));
    let plan = rewrite::RewritePlan::new(
        snapshot,
        &gw.config.rewrite,
        &accepted.method,
        &route,
        filter,
    );
    let response = forward::forward(
        &gw.upstream,
        limits::limit_body(req, body_limit),
        &accepted,
        ForwardIdentity {
            user: decided.user.as_deref(),
            guest: decided.decision.guest,
            identity_encoding: plan.is_some(),
        },
        conn,
    )
    .await?;
    match plan {
        Some(plan) => rewrite::apply(response, plan).await,
        None => Ok(response.map(|b| {
            http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(
                b,
                |e| -> crate::error::BoxError { Box::new(e) },
            ))
        })),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cache_control(values: &[&str]) -> Option<String> {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        private_cache_control(&h).map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn session_answers_are_private_to_caches() {
        assert_eq!(cache_control(&[]).as_deref(), Some("private"));
        assert_eq!(
            cache_control(&["public, max-age=600, s-maxage=3600"]).as_deref(),
            Some("private, max-age=600")
        );
        assert_eq!(
            cache_control(&["max-age=60", "must-revalidate"]).as_deref(),
            Some("private, max-age=60, must-revalidate")
        );
        assert_eq!(cache_control(&["no-store"]), None);
        assert_eq!(cache_control(&["Private, max-age=60"]), None);
        assert_eq!(cache_control(&["private=\"set-cookie\""]), None);
    }

    #[test]
    fn vary_names_cookie_once() {
        let mut h = http::HeaderMap::new();
        vary_on_cookie(&mut h);
        vary_on_cookie(&mut h);
        assert_eq!(h.get_all(http::header::VARY).iter().count(), 1);
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::VARY,
            http::HeaderValue::from_static("Accept-Encoding"),
        );
        vary_on_cookie(&mut h);
        let all: Vec<_> = h.get_all(http::header::VARY).iter().collect();
        assert_eq!(all, ["Accept-Encoding", "Cookie"]);
    }
}

//! The I/O-free part of the pipeline: accept → classify → principal → decide. `handle`
//! runs [`admit`] and `decide` with the content lookup (I/O) between them; `guestgate
//! eval` and the benches run [`judge`], which takes the content's space as given.

use http::HeaderMap;
use http::request::Parts;

use super::accept::{self, Accepted};
use super::classify;
use super::decide::{self, Decided, Principal};
use super::error::GatewayError;
use super::limits;
use crate::config::Config;
use crate::identity::Caller;
use crate::routes::Route;
use crate::snapshot::Snapshot;

/// A request the gateway has placed: its route, its body limit and who it acts as.
pub struct Admitted {
    pub route: Route,
    pub body_limit: usize,
    pub principal: Principal,
}

/// Classify, the route's body limit (checked against `Content-Length` now), and the 401
/// rules.
pub fn admit(
    snapshot: &Snapshot,
    config: &Config,
    accepted: &Accepted,
    headers: &HeaderMap,
    caller: &Caller,
) -> Result<Admitted, GatewayError> {
    let route = classify::classify(&snapshot.routes, accepted, config.rewrite.json);
    if let Some(reason) = route.malformed {
        return Err(GatewayError::BadRequest(reason));
    }
    let body_limit = limits::body_limit(headers, &route, &config.server)?;
    let principal = decide::principal(snapshot, &route, caller, config.identity.anonymous)?;
    Ok(Admitted {
        route,
        body_limit,
        principal,
    })
}

/// What the gateway decides about one request.
pub struct Judged {
    pub accepted: Accepted,
    pub route: Route,
    pub decided: Decided,
}

/// Where a step of [`judge`] stopped, with what it had found by then.
pub struct Unjudged {
    pub error: GatewayError,
    /// The route, when classification was reached.
    pub route: Option<Box<Route>>,
}

/// Accept → classify → principal → decide, without I/O. `content_space` stands in for the
/// content lookup `handle` makes at the wiki: the space of the route's content id, if
/// known. The decision input is always built (`decided.input`).
pub fn judge(
    snapshot: &Snapshot,
    config: &Config,
    head: &Parts,
    caller: &Caller,
    content_space: Option<&str>,
) -> Result<Judged, Unjudged> {
    let unjudged = |error| Unjudged { error, route: None };
    let accepted = accept::accept(
        head,
        &config.server,
        &config.upstream.base_path,
        &snapshot.routes,
    )
    .map_err(unjudged)?;
    let route = classify::classify(&snapshot.routes, &accepted, config.rewrite.json);
    let admitted =
        admit(snapshot, config, &accepted, &head.headers, caller).map_err(|error| Unjudged {
            error,
            route: Some(Box::new(route.clone())),
        })?;
    let Admitted {
        mut route,
        principal,
        ..
    } = admitted;
    if classify::needs_lookup(&route) {
        route.space = content_space.map(|s| s.to_uppercase().into_boxed_str());
    }
    let decided =
        decide::decide(snapshot, &accepted, &route, principal, true).map_err(|error| Unjudged {
            error,
            route: Some(Box::new(route.clone())),
        })?;
    Ok(Judged {
        accepted,
        route,
        decided,
    })
}

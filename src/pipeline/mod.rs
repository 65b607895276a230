//! The request pipeline: accept → identify → classify → decide → forward → rewrite →
//! respond.
//!
//! [`Pipeline::handle`] is the one place a request's path can be read top to bottom: one
//! straight line of stages over a per-request context, each a plain function in its own
//! module, and one rescue (`rescue.rs`) that alone turns an error into a response — the
//! browser's 401 → sign-in redirect included. Requests under `/_guestgate/` (browser
//! sign-in) leave the line right after accept: the gateway answers them itself.
//!
//! The I/O-free part of the line, accept → classify → principal → decide, is [`judge`],
//! which `guestgate eval` and the benches run as it is.

pub mod accept;
pub mod classify;
pub mod decide;
pub mod error;
pub mod forward;
pub mod identifiers;
pub mod judge;
pub mod limits;
pub mod multipart;
pub mod rescue;
pub mod rewrite;
pub mod scope;

use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::config::Config;
use crate::http::body::{ProxyBody, limited, streamed};
use crate::http::gateway_paths;
use crate::identity::Caller;
use crate::identity::oidc::{EndpointRequest, SignIn};
use crate::routes::identifiers::Kind;
use crate::snapshot::Snapshot;
use crate::snapshot::store::SnapshotStore;
use crate::telemetry::{DecisionLog, Metrics};
use accept::Accepted;
use classify::ContentCache;
use decide::Decided;
use error::GatewayError;
use forward::{ConnInfo, ForwardIdentity, Upstream, UpstreamBody, UpstreamError};
use http_body_util::Either;
use judge::Admitted;
use limits::{BufferBudget, BufferCharge, UpstreamSlots};

pub use judge::judge;

/// How long an export file stays its exporter's to fetch (Confluence deletes its temporary
/// exports sooner).
const DOWNLOAD_KEEP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Everything a request needs, owned by the pipeline: the snapshot store it reads, the
/// upstream and its limits, the caches that outlive snapshots, telemetry, sign-in.
pub struct Pipeline {
    pub config: Arc<Config>,
    store: SnapshotStore,
    upstream: Upstream,
    /// Bounds the requests in flight to the wiki (`server.max_upstream_in_flight`).
    upstream_slots: UpstreamSlots,
    buffer_budget: Arc<BufferBudget>,
    /// Export files (`owned_download` paths) and the user each was made for; kept as long
    /// as Confluence keeps its temporary files by default (an hour).
    owned_downloads: moka::sync::Cache<String, Arc<str>>,
    content_cache: ContentCache,
    decision_log: DecisionLog,
    metrics: Arc<Metrics>,
    /// Browser sign-in (`[identity.oidc]`); like remote keys, it outlives snapshots.
    signin: Option<Arc<SignIn>>,
    /// Set on SIGTERM: answers still come, each closing its HTTP/1.1 connection.
    draining: std::sync::atomic::AtomicBool,
}

/// Why a pipeline could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("decision log")]
    DecisionLog(#[source] std::io::Error),
    #[error("sign-in: {0}")]
    SignIn(String),
}

/// One request's state from accept to response.
struct RequestContext {
    snapshot: Arc<Snapshot>,
    /// The request head, until it is forwarded.
    head: Option<Parts>,
    conn: ConnInfo,
    wants_html: bool,
    /// Set by accept; the rescue reads the path a browser returns to after signing in.
    accepted: Option<Accepted>,
    session: SessionUse,
    /// A guest caller's name and effective groups: a refused page view shows their home.
    guest: Option<(Arc<str>, Vec<Arc<str>>)>,
}

/// How a browser session took part in a request, for the caching headers of its answer.
#[derive(Default)]
struct SessionUse {
    /// The caller was identified by the session cookie.
    authenticated: bool,
    /// The `Set-Cookie` of a session refreshed on the way in.
    refreshed: Option<http::HeaderValue>,
}

impl Pipeline {
    pub fn new(
        config: Arc<Config>,
        store: SnapshotStore,
        metrics: Arc<Metrics>,
    ) -> Result<Pipeline, PipelineError> {
        let signin = SignIn::new(&config.identity, store.shared().cloned())
            .map_err(PipelineError::SignIn)?;
        let upstream = Upstream::new(&config.upstream, &config.server)?;
        let ttl = store
            .current()
            .routes
            .content_lookup
            .as_ref()
            .map(|l| l.cache_ttl)
            .unwrap_or(std::time::Duration::from_secs(300));
        let decision_log =
            DecisionLog::start(&config.log.decisions).map_err(PipelineError::DecisionLog)?;
        let upstream_slots = UpstreamSlots::new(
            config.server.max_upstream_in_flight,
            config.server.retry_after,
        );
        let buffer_budget = Arc::new(BufferBudget::new(
            config.server.buffer_budget_bytes,
            config.server.retry_after,
        ));
        Ok(Pipeline {
            owned_downloads: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(DOWNLOAD_KEEP)
                .build(),
            buffer_budget,
            config,
            store,
            upstream,
            upstream_slots,
            content_cache: ContentCache::new(ttl),
            decision_log,
            metrics,
            signin,
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The drain window has begun (SIGTERM): requests are still served, and each answer
    /// on an HTTP/1.1 connection closes it, so clients reconnect to another replica.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Decision-log lines dropped because the writer fell behind.
    pub fn decision_log_dropped(&self) -> u64 {
        self.decision_log.dropped()
    }

    /// Requests to the wiki that could still start now.
    pub fn upstream_slots_available(&self) -> usize {
        self.upstream_slots.available()
    }

    /// Handles one request end to end. Never fails: refusals are responses.
    /// Owns its pipeline (an `Arc`), so that its future is the request's whole future, with
    /// no async layer around it to copy it. `started` is when the request was taken from
    /// the connection, the start of the latency recorded for it (read by the caller, which
    /// needs the same instant should this future panic).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
        started: Instant,
    ) -> Response<ProxyBody> {
        let (head, body) = req.into_parts();
        let http1 = head.version < http::Version::HTTP_2;
        let mut ctx = RequestContext {
            snapshot: self.store.current(),
            wants_html: accept::prefers_html(&head.headers),
            head: Some(head),
            conn,
            accepted: None,
            session: SessionUse::default(),
            guest: None,
        };
        let response = match self.serve(&mut ctx, body).await {
            Ok(response) => response,
            // Boxed: rare, and a future is as large as its largest await.
            Err(error) => Box::pin(self.rescue(&ctx, error)).await,
        };
        let mut response = with_session_headers(response, ctx.session);
        if http1 && self.is_draining() {
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        self.metrics
            .observe_request(response.status(), started.elapsed());
        response
    }

    /// The straight line. The rarer stages (sign-in, content lookups) are boxed where
    /// they are awaited: this future is created and moved for every request.
    async fn serve(
        &self,
        ctx: &mut RequestContext,
        body: Incoming,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let RequestContext {
            snapshot,
            head: head_slot,
            conn,
            accepted: accepted_slot,
            session,
            guest: guest_slot,
            ..
        } = ctx;
        let head = head_slot
            .as_ref()
            .ok_or(GatewayError::Internal("request_head_taken"))?;
        if let Some(answer) = accept::asterisk_options(head) {
            return Ok(answer);
        }
        if !self.store.is_ready() {
            return Err(GatewayError::NotReady("policy_not_loaded"));
        }
        let accepted: &Accepted = accepted_slot.insert(accept::accept(
            head,
            &self.config.server,
            &self.config.upstream.base_path,
            &snapshot.routes,
        )?);
        if gateway_paths::contains(&accepted.path) {
            return Box::pin(self.gateway_endpoint(head, accepted, conn.tls)).await;
        }
        let caller = self.identify(snapshot, head, conn.tls, session).await;
        let Admitted {
            mut route,
            body_limit,
            principal,
        } = judge::admit(snapshot, &self.config, accepted, &head.headers, &caller)?;
        self.resolve_content_space(snapshot, &mut route, &principal.groups)
            .await?;
        let guest = snapshot.directory.is_guest(&principal.groups);
        if guest && accepted.wants_html {
            *guest_slot = principal
                .user
                .clone()
                .map(|user| (user, principal.groups.clone()));
        }
        // Only a guest's further identifiers are judged: the wiki enforces its own
        // permissions for everyone else. A malformed one is refused before anything is
        // decided, whichever rule its request would otherwise have matched.
        let guest_principal = guest.then(|| principal.clone());
        if guest {
            let query = accepted
                .params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()));
            identifiers::in_params(&snapshot.routes.identifiers, query)?;
        }
        let decided = decide::decide(
            snapshot,
            accepted,
            &route,
            principal,
            self.decision_log.enabled(),
        )?;
        self.observe(snapshot, &route, &decided);
        decided.enforce(&route, self.config.policy.dry_run)?;
        // A guest may fetch only the export files made for them. Regular users pass: the
        // wiki admits only the exporting user itself (Confluence's GateKeeper key, checked
        // by ExportDownloadResourceManager), and the same paths serve their own space
        // exports and profile-picture previews, which no export redirect announced here.
        if guest && is_owned_download(snapshot, &route) {
            let owner = Box::pin(self.download_owner(&accepted.path)).await?;
            if owner.is_none() || owner.as_deref() != decided.user.as_deref() {
                return Err(GatewayError::Denied {
                    reason: "download_not_yours".into(),
                    status: http::StatusCode::FORBIDDEN,
                    anonymous: decided.user.is_none(),
                });
            }
        }
        // Held until the request is answered: a guest's body read whole stays in memory
        // until forwarded.
        let mut body_charge = self.buffer_budget.charge();
        let body = match guest_principal {
            Some(principal) => {
                let streamed = Self::guest_body_streamed(
                    snapshot,
                    accepted,
                    &route,
                    &head.headers,
                    body,
                    body_limit,
                )?;
                let (body, targets) = match streamed {
                    GuestBody::Streamed(body, targets) => (body, targets),
                    GuestBody::ReadWhole(body, kind) => {
                        Box::pin(self.guest_body_read_whole(
                            &mut body_charge,
                            snapshot,
                            accepted,
                            &route,
                            kind,
                            body,
                            body_limit,
                        ))
                        .await?
                    }
                };
                if names_nothing(snapshot, &route, &targets) {
                    return Err(GatewayError::Denied {
                        reason: "no_identifier_named".into(),
                        status: http::StatusCode::FORBIDDEN,
                        anonymous: false,
                    });
                }
                if !targets.is_empty() {
                    Box::pin(self.judge_targets(snapshot, accepted, &route, &principal, targets))
                        .await?;
                }
                body
            }
            None => Either::Left(limited(body, body_limit)),
        };
        let _upstream_slot = self.upstream_slots.try_acquire()?;
        let filter = (route.rewrites.filter_spaces && decided.decision.guest)
            .then(|| decide::viewable_spaces(snapshot, accepted, &route, &decided));
        // A guest's HEAD of a listing would answer the unfiltered body's length.
        if filter.is_some() && accepted.method == http::Method::HEAD {
            return Err(GatewayError::MethodNotAllowed("head_of_a_filtered_listing"));
        }
        let scoped_query = match (&filter, guest_scope(snapshot, &route)) {
            (Some(spaces), Some(param)) => Some(scoped_query(accepted, param, spaces)?),
            _ => None,
        };
        let plan = rewrite::RewritePlan::new(
            snapshot,
            &self.config.rewrite,
            &accepted.method,
            &route,
            filter,
            &self.buffer_budget,
        );
        let head = head_slot
            .take()
            .ok_or(GatewayError::Internal("request_head_taken"))?;
        let response = forward::forward(
            &self.upstream,
            Request::from_parts(head, body),
            accepted,
            ForwardIdentity {
                user: decided.user.as_deref(),
                guest: decided.decision.guest,
                identity_encoding: plan.is_some(),
            },
            scoped_query.as_deref(),
            *conn,
        )?
        .await?;
        self.forget_moved_content(snapshot, &route, &accepted.method, response.status());
        if route.action == crate::routes::Action::Export && response.status().is_redirection() {
            Box::pin(self.remember_download(snapshot, decided.user.as_ref(), response.headers()))
                .await;
        }
        drop(body_charge);
        match plan {
            Some(plan) => rewrite::apply(response, plan).await,
            None => Ok(response.map(streamed)),
        }
    }

    /// An export the wiki answered with a redirect to a file made for this user
    /// (`/download/temp/…`, an `owned_download` route): the file is theirs to fetch.
    async fn remember_download(
        &self,
        snapshot: &Snapshot,
        user: Option<&Arc<str>>,
        headers: &http::HeaderMap,
    ) {
        let (Some(user), Some(location)) = (
            user,
            headers
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<http::Uri>().ok()),
        ) else {
            return;
        };
        let Ok(path) = crate::http::canonical::canonicalize(location.path()) else {
            return;
        };
        let path = accept::inside_context(path, &self.config.upstream.base_path);
        let target = snapshot.routes.classify(&http::Method::GET, &path, &[]);
        if !is_owned_download(snapshot, &target) {
            return;
        }
        // With a `[store]`, every replica learns the owner: the browser's download may
        // reach another one. A failed write leaves the file to this replica only (the
        // others refuse it), which is said in the log.
        if let Some(shared) = self.store.shared() {
            let expires_at = crate::identity::unix_now() as i64 + DOWNLOAD_KEEP.as_secs() as i64;
            if let Err(e) = shared.own_download(&path, user, expires_at).await {
                tracing::error!(
                    "The export file {path} stays reachable through this replica only: the shared store did not take its owner ({e})."
                );
            }
        }
        self.owned_downloads.insert(path, user.clone());
    }

    /// Who may fetch the export file at `path`: this replica's memory, then the shared
    /// store. A store that cannot answer refuses the download (503), never guesses.
    async fn download_owner(&self, path: &str) -> Result<Option<Arc<str>>, GatewayError> {
        if let Some(owner) = self.owned_downloads.get(path) {
            return Ok(Some(owner));
        }
        let Some(shared) = self.store.shared() else {
            return Ok(None);
        };
        match shared.download_owner(path).await {
            Ok(owner) => Ok(owner.map(Arc::from)),
            Err(e) => {
                tracing::warn!(
                    "An export file's owner could not be read from the shared store: {e}."
                );
                Err(GatewayError::Denied {
                    reason: "download_owner_unavailable".into(),
                    status: http::StatusCode::SERVICE_UNAVAILABLE,
                    anonymous: false,
                })
            }
        }
    }

    /// The content cache must not outlive what it caches: a content id the wiki answers
    /// as gone is forgotten, and every id once a write succeeds — a move or a rename may
    /// take any page elsewhere, and MediaWiki moves by title, so the ids it moves are not
    /// in the request.
    fn forget_moved_content(
        &self,
        snapshot: &Snapshot,
        route: &crate::routes::Route,
        method: &http::Method,
        status: http::StatusCode,
    ) {
        use crate::routes::Family;
        if matches!(status, http::StatusCode::NOT_FOUND | http::StatusCode::GONE)
            && let (Some(content), Some(lookup)) =
                (&route.content, snapshot.routes.lookup_for(route))
        {
            self.content_cache.invalidate(&lookup.cache_key(content));
        }
        let write = !matches!(
            *method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        );
        // Moves and renames are reached through many routes (MediaWiki's Special:MovePage
        // and api.php, Confluence's move actions): any successful write outside the
        // families that cannot move content counts.
        if write
            && (status.is_success() || status.is_redirection())
            && !matches!(route.family, Family::Static | Family::Auth | Family::Collab)
        {
            self.content_cache.invalidate_all();
        }
    }

    /// Logs and counts a decision.
    fn observe(&self, snapshot: &Snapshot, route: &crate::routes::Route, decided: &Decided) {
        let record = decided.record();
        self.decision_log
            .record(&snapshot.revision, &record, self.config.policy.dry_run);
        self.metrics.observe_decision(route, &record);
    }

    /// A guest's request body and every identifier the request names beyond its route's
    /// own capture, when the body is streamed (it cannot name identifiers, or is read as it
    /// passes): decided without waiting. A form, or JSON on a write, must be read whole
    /// first ([`Self::guest_body_read_whole`]); it is handed back.
    fn guest_body_streamed(
        snapshot: &Snapshot,
        accepted: &Accepted,
        route: &crate::routes::Route,
        headers: &http::HeaderMap,
        body: Incoming,
        body_limit: usize,
    ) -> Result<GuestBody, GatewayError> {
        let profile = &snapshot.routes;
        let query = accepted
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()));
        let kind = body_kind(&accepted.method, headers);
        let read_whole = match kind {
            BodyKind::Form => !profile.identifiers.is_empty(),
            BodyKind::Json => true,
            BodyKind::Multipart | BodyKind::Other => false,
        };
        if read_whole {
            return Ok(GuestBody::ReadWhole(body, kind));
        }
        // A rule that says where its body names what it acts on, sent a body of another
        // type (`text/json`, none): it would go to the wiki unread, so it does not go.
        let rule = route.rule.and_then(|i| profile.rules.get(i));
        let names_in_body = rule.is_some_and(|r| {
            r.json_identifiers.as_ref().is_some_and(|p| !p.is_empty()) || r.requires_identifier
        });
        if matches!(kind, BodyKind::Other)
            && names_in_body
            && !matches!(
                accepted.method,
                http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
            )
            && has_body(headers)
        {
            return Err(GatewayError::Denied {
                reason: "unjudged_request_body".into(),
                status: http::StatusCode::FORBIDDEN,
                anonymous: false,
            });
        }
        let targets = identifiers::in_params(&profile.identifiers, query)?;
        let body = limited(body, body_limit);
        if matches!(kind, BodyKind::Multipart) && !profile.identifiers.is_empty() {
            // Streamed, not held: a form field naming an identifier must repeat one
            // judged already (the route's own, or the query's).
            let mut judged: Vec<(Kind, String)> =
                targets.iter().map(|t| (t.kind, t.value.clone())).collect();
            judged.extend(
                route
                    .content
                    .as_deref()
                    .map(|c| (Kind::Content, c.to_string())),
            );
            judged.extend(route.space.as_deref().map(|s| (Kind::Space, s.to_string())));
            let content_type = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let scanner =
                multipart::PartScanner::new(content_type, profile.identifiers.clone(), judged)
                    .ok_or(GatewayError::BadRequest("multipart_without_boundary"))?;
            let guarded = multipart::GuardedMultipart::new(body, scanner);
            return Ok(GuestBody::Streamed(
                Either::Right(Either::Right(guarded)),
                targets,
            ));
        }
        Ok(GuestBody::Streamed(Either::Left(body), targets))
    }

    /// A guest's form, or JSON on a write, read whole, and every identifier the request
    /// names beyond its route's own capture, in the query or the body.
    #[allow(clippy::too_many_arguments)]
    async fn guest_body_read_whole(
        &self,
        charge: &mut BufferCharge,
        snapshot: &Snapshot,
        accepted: &Accepted,
        route: &crate::routes::Route,
        kind: BodyKind,
        body: Incoming,
        body_limit: usize,
    ) -> Result<(UpstreamBody, Vec<identifiers::Target>), GatewayError> {
        let profile = &snapshot.routes;
        let query = accepted
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()));
        let bytes = read_body(body, body_limit, &self.buffer_budget, charge).await?;
        let targets = match kind {
            BodyKind::Form => {
                let form = identifiers::form_params(&bytes)?;
                if accepted.params.len() + form.len() > profile.max_parameters {
                    return Err(GatewayError::BadRequest("too_many_parameters"));
                }
                let form = form.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                identifiers::in_params(&profile.identifiers, query.chain(form))?
            }
            _ => {
                let mut targets = identifiers::in_params(&profile.identifiers, query)?;
                if !bytes.is_empty() {
                    let rule = route.rule.and_then(|i| profile.rules.get(i));
                    let Some(pointers) = rule.and_then(|r| r.json_identifiers.as_deref()) else {
                        // The profile does not say where this body names what it acts
                        // on: it cannot be judged, so it does not reach the wiki.
                        return Err(GatewayError::Denied {
                            reason: "unjudged_request_body".into(),
                            status: http::StatusCode::FORBIDDEN,
                            anonymous: false,
                        });
                    };
                    let json: serde_json::Value = serde_json::from_slice(&bytes)
                        .map_err(|_| GatewayError::BadRequest("invalid_json_body"))?;
                    targets.extend(identifiers::in_json(&profile.identifiers, pointers, &json)?);
                }
                targets
            }
        };
        Ok((forward::whole_body(bytes), targets))
    }

    /// Judges each identifier a guest's request names beyond its route's own capture: the
    /// same decision as the route's, for the identifier's space and the permission it
    /// needs. Any refusal refuses the request.
    async fn judge_targets(
        &self,
        snapshot: &Snapshot,
        accepted: &Accepted,
        route: &crate::routes::Route,
        principal: &decide::Principal,
        targets: Vec<identifiers::Target>,
    ) -> Result<(), GatewayError> {
        let mut judged: Vec<crate::routes::Route> = Vec::new();
        for target in targets {
            let Some(mut target_route) = target.route(route) else {
                continue;
            };
            if classify::needs_lookup(&target_route) {
                let lookup = snapshot.routes.lookup_for(&target_route);
                if !classify::space_from_cache(&mut target_route, lookup, &self.content_cache) {
                    classify::resolve_space(
                        &mut target_route,
                        lookup,
                        &self.content_cache,
                        &self.upstream,
                    )
                    .await?;
                }
            }
            let same_as_route = target_route.space == route.space
                && target_route.user == route.user
                && target_route.action == route.action
                && route.family != crate::routes::Family::UserProfile;
            if same_as_route || judged.contains(&target_route) {
                continue;
            }
            let decided = decide::decide(
                snapshot,
                accepted,
                &target_route,
                principal.clone(),
                self.decision_log.enabled(),
            )?;
            self.observe(snapshot, &target_route, &decided);
            decided.enforce(&target_route, self.config.policy.dry_run)?;
            judged.push(target_route);
        }
        Ok(())
    }

    /// Identify: a token, when one is sent, decides who the caller is; a browser's
    /// session cookie only speaks when there is none.
    async fn identify(
        &self,
        snapshot: &Snapshot,
        head: &Parts,
        tls: bool,
        session: &mut SessionUse,
    ) -> Caller {
        let caller = snapshot.verifier.identify(&head.headers).await;
        match (&caller, &self.signin) {
            (Caller::Anonymous, Some(signin)) => {
                let (caller, refreshed) = Box::pin(signin.session_caller(&head.headers, tls)).await;
                session.authenticated = matches!(caller, Caller::Authenticated(_));
                session.refreshed = refreshed;
                caller
            }
            _ => caller,
        }
    }

    /// A content id's space is needed where the wiki itself will not stop the user — for
    /// guests, and a failed lookup denies them — and for the banner every viewer sees,
    /// where a failed lookup only means no banner. Regular users otherwise pass straight
    /// through.
    async fn resolve_content_space(
        &self,
        snapshot: &Snapshot,
        route: &mut crate::routes::Route,
        groups: &[Arc<str>],
    ) -> Result<(), GatewayError> {
        let guest = snapshot.directory.is_guest(groups);
        let wants_banner = route.rewrites.banner && self.config.rewrite.html;
        if !(guest || wants_banner) || !classify::needs_lookup(route) {
            return Ok(());
        }
        let lookup = snapshot.routes.lookup_for(route);
        if classify::space_from_cache(route, lookup, &self.content_cache) {
            return Ok(());
        }
        let resolved = Box::pin(classify::resolve_space(
            route,
            lookup,
            &self.content_cache,
            &self.upstream,
        ))
        .await;
        match resolved {
            Err(e) if guest => Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "no banner: content space unresolved");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// The gateway's own namespace (browser sign-in): answered here, never classified by
    /// the route profile, never forwarded.
    async fn gateway_endpoint(
        &self,
        head: &Parts,
        accepted: &Accepted,
        tls: bool,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let request = EndpointRequest {
            method: &accepted.method,
            path: &accepted.path,
            params: &accepted.params,
            headers: &head.headers,
            uri: &head.uri,
            tls,
        };
        Box::pin(crate::identity::oidc::endpoint(
            self.signin.as_deref(),
            &request,
        ))
        .await
        .map_err(|e| GatewayError::SignIn {
            error: e.error,
            clear_cookie: e.clear_cookie,
        })
    }

    /// The one rescue: a browser without credentials is sent to sign in; everything else
    /// is answered with its refusal.
    async fn rescue(&self, ctx: &RequestContext, error: GatewayError) -> Response<ProxyBody> {
        let mut error = error;
        if let (Some(signin), Some(head), Some(accepted)) = (&self.signin, &ctx.head, &ctx.accepted)
            && rescue::wants_sign_in(&error, &accepted.method, ctx.wants_html)
        {
            let return_to = match &accepted.query {
                Some(q) => format!("{}?{q}", accepted.path),
                None => accepted.path.clone(),
            };
            match signin
                .start(&head.headers, &head.uri, ctx.conn.tls, &return_to)
                .await
            {
                Ok(redirect) => return redirect,
                Err(e) => error = e.into(),
            }
        }
        rescue::log(&error);
        if let (Some((user, groups)), Some(accepted)) = (&ctx.guest, &ctx.accepted)
            && ctx.wants_html
            && (accepted.method == http::Method::GET || accepted.method == http::Method::HEAD)
            && matches!(&error, GatewayError::Denied { status, .. } if *status == http::StatusCode::FORBIDDEN)
        {
            let reach = ctx
                .snapshot
                .directory
                .reach(user, groups, time::OffsetDateTime::now_utc());
            return rescue::guest_home(
                &error,
                user,
                &reach,
                ctx.snapshot.routes.space_home.as_deref(),
                &self.config.upstream.base_path,
            );
        }
        rescue::refusal(&error, ctx.wants_html)
    }
}

/// A rule whose body names what the request acts on (`requires_identifier`), on a request
/// that names nothing the gateway could judge — no capture, and no identifier other than
/// Confluence's "none" (`0`) in query or body.
fn names_nothing(
    snapshot: &Snapshot,
    route: &crate::routes::Route,
    targets: &[identifiers::Target],
) -> bool {
    let requires = route
        .rule
        .and_then(|i| snapshot.routes.rules.get(i))
        .is_some_and(|r| r.requires_identifier);
    requires
        && route.space.is_none()
        && route.content.is_none()
        && route.user.is_none()
        && targets.iter().all(|t| t.route(route).is_none())
}

/// Whether `route` serves a file made for one user (`owned_download`).
fn is_owned_download(snapshot: &Snapshot, route: &crate::routes::Route) -> bool {
    route
        .rule
        .and_then(|i| snapshot.routes.rules.get(i))
        .is_some_and(|r| r.owned_download)
}

/// The query parameter of this route that holds a search to narrow for guests.
fn guest_scope<'s>(snapshot: &'s Snapshot, route: &crate::routes::Route) -> Option<&'s str> {
    route
        .rule
        .and_then(|i| snapshot.routes.rules.get(i))
        .and_then(|r| r.guest_scope.as_deref())
}

/// The query with the search in `param` narrowed to `spaces` (a guest's viewable ones).
fn scoped_query(
    accepted: &Accepted,
    param: &str,
    spaces: &crate::snapshot::SpaceSet,
) -> Result<String, GatewayError> {
    let Some(cql) = accepted
        .params
        .iter()
        .find(|(k, _)| k == param)
        .map(|(_, v)| v)
    else {
        // No search at all: the wiki answers its own error, which names no space.
        return Ok(accepted.query.clone().unwrap_or_default());
    };
    let mut keys: Vec<&str> = spaces.iter().map(String::as_str).collect();
    keys.sort_unstable();
    let narrowed = scope::scoped_cql(cql, keys.into_iter())?;
    scope::with_param(&accepted.params, param, &narrowed)
}

/// A guest's request body, as [`Pipeline::guest_body_streamed`] found it.
enum GuestBody {
    /// On its way as it is, with the identifiers the request names.
    Streamed(UpstreamBody, Vec<identifiers::Target>),
    /// To be read whole before anything is decided.
    ReadWhole(Incoming, BodyKind),
}

/// What a request body is, as far as naming identifiers goes.
#[derive(Clone, Copy)]
enum BodyKind {
    /// `application/x-www-form-urlencoded`: parameters, read as the query's are.
    Form,
    /// JSON on a write.
    Json,
    /// `multipart/form-data`: form fields among the files.
    Multipart,
    Other,
}

/// Whether the request announces a body: a non-zero `Content-Length`, or a transfer coding.
fn has_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

fn body_kind(method: &http::Method, headers: &http::HeaderMap) -> BodyKind {
    if matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) {
        return BodyKind::Other;
    }
    let media = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if media == "application/x-www-form-urlencoded" {
        BodyKind::Form
    } else if media == "application/json" || media.ends_with("+json") {
        BodyKind::Json
    } else if media == "multipart/form-data" {
        BodyKind::Multipart
    } else {
        BodyKind::Other
    }
}

/// A client's body, whole, within its route's limit and the buffer budget (counted twice:
/// the bytes, and what parsing them takes).
async fn read_body(
    mut body: Incoming,
    limit: usize,
    budget: &BufferBudget,
    charge: &mut BufferCharge,
) -> Result<bytes::Bytes, GatewayError> {
    use http_body_util::BodyExt as _;
    let mut whole = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| GatewayError::BadRequest("invalid_request_body"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if whole.len() + data.len() > limit {
            return Err(GatewayError::PayloadTooLarge);
        }
        if !budget.add(charge, 2 * data.len()) {
            crate::telemetry::count(&crate::telemetry::BUFFER_BUDGET_EXCEEDED, 2);
            tracing::warn!("buffer budget exhausted; a guest's request body is refused");
            return Err(budget.exhausted());
        }
        whole.extend_from_slice(&data);
    }
    Ok(whole.freeze())
}

/// The caching headers an answer needs when a browser session took part in it.
fn with_session_headers(
    mut response: Response<ProxyBody>,
    session: SessionUse,
) -> Response<ProxyBody> {
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
    response
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

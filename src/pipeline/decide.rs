//! Stage 4, decide: who (identity + directory groups) may do what (route) — asked of the Rego
//! policy, through a decision cache whose key covers everything the decision depends on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use regorus::Value;
use time::OffsetDateTime;

use super::accept::Accepted;
use crate::config::AnonymousMode;
use crate::identity::{Caller, IdentityError};
use crate::pipeline::error::GatewayError;
use crate::policy::Decision;
use crate::policy::input::{self, UserInput};
use crate::routes::Route;
use crate::snapshot::{Snapshot, SpaceSet, Timed};
use crate::telemetry::DecisionRecord;

/// The outcome of the decide stage, allowed or not (the caller logs it, then enforces it).
#[derive(Debug)]
pub struct Decided {
    pub decision: Arc<Decision>,
    pub cached: bool,
    /// The user's effective groups (directory ∪ token).
    pub groups: Vec<Arc<str>>,
    pub user: Option<Arc<str>>,
    pub identity: Option<Arc<crate::identity::Identity>>,
    /// The policy input, when it was built (always on a cache miss, or when asked for).
    pub input: Option<Value>,
    pub duration: Duration,
}

impl Decided {
    /// The decision as telemetry records it.
    pub fn record(&self) -> DecisionRecord<'_> {
        DecisionRecord {
            decision: &self.decision,
            input: self.input.as_ref(),
            cached: self.cached,
            duration: self.duration,
        }
    }

    /// `Ok` when the request may go on: allowed, or denied under `policy.dry_run`
    /// (OPA-Envoy's `dry-run`: the denial is logged and counted, never enforced).
    pub fn enforce(&self, route: &Route, dry_run: bool) -> Result<(), GatewayError> {
        if self.decision.allow {
            return Ok(());
        }
        if dry_run {
            tracing::info!(
                reason = %self.decision.reason,
                family = route.family.as_str(),
                user = self.user.as_deref().unwrap_or("-"),
                "dry run: request would have been denied"
            );
            return Ok(());
        }
        Err(GatewayError::Denied {
            reason: self.decision.reason.clone(),
            status: self.decision.status,
            anonymous: self.user.is_none(),
        })
    }
}

/// The user a request acts as, once the 401 rules have been applied.
#[derive(Clone)]
pub struct Principal {
    pub user: Option<Arc<str>>,
    pub identity: Option<Arc<crate::identity::Identity>>,
    pub groups: Vec<Arc<str>>,
}

/// Applies the 401 rules: a rejected or missing token ends the request unless the route is
/// public (or, for a missing token, `identity.anonymous = "policy"` hands it to the policy).
pub fn principal(
    snapshot: &Snapshot,
    route: &Route,
    caller: &Caller,
    anonymous: AnonymousMode,
) -> Result<Principal, GatewayError> {
    match caller {
        Caller::Authenticated(identity) => {
            // The wiki's own spelling of the name: `Gary` is `gary` to Confluence.
            let user: Arc<str> = match snapshot.directory.user_names.canonical(&identity.name) {
                std::borrow::Cow::Borrowed(_) => identity.name.clone(),
                std::borrow::Cow::Owned(name) => Arc::from(name),
            };
            Ok(Principal {
                groups: snapshot
                    .directory
                    .effective_groups(&user, &identity.token_groups),
                user: Some(user),
                identity: Some(identity.clone()),
            })
        }
        // No key to check any token with (the identity provider was never reachable): the
        // gateway cannot tell anyone apart, so it is unavailable rather than "unauthorized".
        Caller::Rejected(IdentityError::NoKeys) if !route.public => {
            Err(GatewayError::NotReady("no_verification_keys"))
        }
        Caller::Rejected(e) if !route.public => Err(GatewayError::Unauthorized(*e)),
        Caller::Anonymous if !route.public && anonymous == AnonymousMode::Deny => {
            Err(GatewayError::Unauthorized(IdentityError::Missing))
        }
        Caller::Rejected(_) | Caller::Anonymous => Ok(Principal {
            user: None,
            identity: None,
            groups: Vec::new(),
        }),
    }
}

static EMPTY_CLAIMS: std::sync::LazyLock<Value> = std::sync::LazyLock::new(Value::new_object);

pub fn decide(
    snapshot: &Snapshot,
    accepted: &Accepted,
    route: &Route,
    principal: Principal,
    want_input: bool,
) -> Result<Decided, GatewayError> {
    let started = Instant::now();
    let Principal {
        user,
        identity,
        groups,
    } = principal;
    // The facts are taken at `now`; a miss uses the same instant for the cache lifetime, so
    // no expiry can fall between them. (Read only when needed: a cache hit reads no clock.)
    let build_input = |now: OffsetDateTime| {
        let subject = Subject {
            user: user.as_deref(),
            groups: &groups,
            identity: identity.as_deref(),
        };
        policy_input(
            snapshot,
            accepted,
            route,
            &subject,
            route.space.as_deref(),
            now,
        )
    };
    let key = cache_key(
        snapshot,
        accepted,
        route,
        &user,
        identity.as_deref(),
        &groups,
    );
    if let Some(hit) = snapshot.decisions.get(&key) {
        return Ok(Decided {
            decision: hit.value,
            cached: true,
            input: want_input.then(|| build_input(OffsetDateTime::now_utc())),
            groups,
            user,
            identity,
            duration: started.elapsed(),
        });
    }
    let now = OffsetDateTime::now_utc();
    let input = build_input(now);
    let decision = Arc::new(
        snapshot
            .policy
            .evaluate(input.clone())
            .map_err(GatewayError::Policy)?,
    );
    let ttl = cache_ttl(snapshot, now);
    if !ttl.is_zero() {
        snapshot.decisions.insert(
            key,
            Timed {
                value: decision.clone(),
                ttl,
            },
        );
    }
    Ok(Decided {
        decision,
        cached: false,
        input: Some(input),
        groups,
        user,
        identity,
        duration: started.elapsed(),
    })
}

/// The spaces whose listing items this guest keeps, from the policy's listing rule
/// (`policy.listing_query`), cached like decisions. Any error or odd result gives the empty
/// set: a listing filtered to nothing is the fail-closed answer.
pub fn viewable_spaces(
    snapshot: &Snapshot,
    accepted: &Accepted,
    route: &Route,
    decided: &Decided,
) -> SpaceSet {
    let mut key = Vec::with_capacity(64);
    push_opt(&mut key, decided.user.as_deref());
    for g in &decided.groups {
        push_field(&mut key, g.as_bytes());
    }
    if snapshot.policy.reads_whole_input {
        match &decided.identity {
            Some(i) => push_field(&mut key, &i.token_hash),
            None => key.push(0),
        }
    }
    let key = key.into_boxed_slice();
    if let Some(hit) = snapshot.viewable.get(&key) {
        return hit.value;
    }
    // No space: the listing cache keys on the user and groups alone, so the listing rule's
    // input must not vary with the route (the permissions would, with its space).
    let now = OffsetDateTime::now_utc();
    let subject = Subject {
        user: decided.user.as_deref(),
        groups: &decided.groups,
        identity: decided.identity.as_deref(),
    };
    let input = policy_input(snapshot, accepted, route, &subject, None, now);
    let set: std::collections::HashSet<String> = match snapshot
        .policy
        .evaluate_rule(snapshot.listing_query.clone(), input)
    {
        Ok(Value::Set(s)) => s
            .iter()
            .filter_map(|v| v.as_string().ok())
            .map(|s| s.to_uppercase())
            .collect(),
        Ok(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_string().ok())
            .map(|s| s.to_uppercase())
            .collect(),
        Ok(Value::Undefined) => Default::default(),
        Ok(other) => {
            tracing::warn!(result = ?other, "listing rule gave neither a set nor an array; filtering everything");
            Default::default()
        }
        Err(e) => {
            tracing::warn!(error = %e, "listing rule failed; filtering everything");
            Default::default()
        }
    };
    let set = Arc::new(set);
    let ttl = cache_ttl(snapshot, now);
    if !ttl.is_zero() {
        snapshot.viewable.insert(
            key,
            Timed {
                value: set.clone(),
                ttl,
            },
        );
    }
    set
}

/// Whom a policy input is about, borrowed from a principal or a decision.
struct Subject<'a> {
    user: Option<&'a str>,
    groups: &'a [Arc<str>],
    identity: Option<&'a crate::identity::Identity>,
}

/// The policy input for `subject` at `now`, with the directory's facts for `space`.
fn policy_input(
    snapshot: &Snapshot,
    accepted: &Accepted,
    route: &Route,
    subject: &Subject<'_>,
    space: Option<&str>,
    now: OffsetDateTime,
) -> Value {
    let facts = snapshot
        .directory
        .facts(subject.user, subject.groups, space, now);
    input::build(
        accepted.method.as_str(),
        &accepted.path,
        &accepted.params,
        route,
        &UserInput {
            name: subject.user,
            groups: subject.groups,
            authenticated: subject.identity.is_some(),
            claims: subject.identity.map_or(&*EMPTY_CLAIMS, |i| &i.claims),
            facts: &facts,
        },
    )
}

/// The configured TTL, cut short so that an answer computed from the facts at `facts_at`
/// is gone by the first expiry after that instant; counted from now, when the entry is
/// stored, so the time the evaluation took is not added on top. Zero (not cached) when that
/// expiry has already come.
fn cache_ttl(snapshot: &Snapshot, facts_at: OffsetDateTime) -> Duration {
    match snapshot.directory.next_expiry_after(facts_at) {
        Some(next) => {
            let left = (next - OffsetDateTime::now_utc())
                .try_into()
                .unwrap_or(Duration::ZERO);
            snapshot.decision_ttl.min(left)
        }
        None => snapshot.decision_ttl,
    }
}

fn push_field(key: &mut Vec<u8>, bytes: &[u8]) {
    key.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    key.extend_from_slice(bytes);
}

fn push_opt(key: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) => {
            key.push(1);
            push_field(key, v.as_bytes());
        }
        None => key.push(0),
    }
}

/// Every input field the decision can depend on, length-prefixed so no two inputs share a
/// key. When the policies read beyond route and user (`input.request`, claims), the path,
/// query and token hash are part of the key too. The revision needs no place in the key:
/// each snapshot has its own cache.
fn cache_key(
    snapshot: &Snapshot,
    accepted: &Accepted,
    route: &Route,
    user: &Option<Arc<str>>,
    identity: Option<&crate::identity::Identity>,
    groups: &[Arc<str>],
) -> Box<[u8]> {
    let mut key = Vec::with_capacity(128);
    key.push(u8::from(identity.is_some()));
    push_opt(&mut key, user.as_deref());
    key.extend_from_slice(&(groups.len() as u32).to_le_bytes());
    for g in groups {
        push_field(&mut key, g.as_bytes());
    }
    push_field(&mut key, accepted.method.as_str().as_bytes());
    push_field(&mut key, route.name.as_bytes());
    push_field(&mut key, route.family.as_str().as_bytes());
    push_opt(&mut key, route.space.as_deref());
    push_opt(&mut key, route.content.as_deref());
    push_opt(&mut key, route.user.as_deref());
    push_field(&mut key, route.action.as_str().as_bytes());
    key.push(u8::from(route.public));
    key.push(u8::from(route.filtered));
    if snapshot.policy.reads_whole_input {
        push_field(&mut key, accepted.path.as_bytes());
        push_opt(&mut key, accepted.query.as_deref());
        match identity {
            Some(i) => push_field(&mut key, &i.token_hash),
            None => key.push(0),
        }
    }
    key.into_boxed_slice()
}

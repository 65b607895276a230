//! The policy input document (docs/POLICIES.md), built directly as a regorus `Value` (building it
//! through JSON text costs several times more).

use std::collections::BTreeMap;
use std::sync::Arc;

use regorus::Value;

use crate::directory::CallerFacts;
use crate::routes::Route;

/// The user part of the input.
#[derive(Debug, Clone)]
pub struct UserInput<'a> {
    pub name: Option<&'a str>,
    pub groups: &'a [Arc<str>],
    pub authenticated: bool,
    pub claims: &'a Value,
    /// What the directory says of this user now (guest, expired, permissions in the route's
    /// space).
    pub facts: &'a CallerFacts,
}

fn obj(entries: Vec<(&str, Value)>) -> Value {
    let map: BTreeMap<Value, Value> = entries
        .into_iter()
        .map(|(k, v)| (Value::from(k), v))
        .collect();
    Value::from(map)
}

fn opt(s: Option<&str>) -> Value {
    s.map(Value::from).unwrap_or(Value::Null)
}

pub fn route_value(route: &Route) -> Value {
    obj(vec![
        ("name", Value::from(&*route.name)),
        ("family", Value::from(route.family.as_str())),
        ("space", opt(route.space.as_deref())),
        ("content", opt(route.content.as_deref())),
        ("user", opt(route.user.as_deref())),
        ("action", Value::from(route.action.as_str())),
        ("public", Value::from(route.public)),
        ("filtered", Value::from(route.filtered)),
    ])
}

pub fn user_value(user: &UserInput<'_>) -> Value {
    obj(vec![
        ("name", opt(user.name)),
        (
            "groups",
            Value::from(
                user.groups
                    .iter()
                    .map(|g| Value::from(&**g))
                    .collect::<Vec<_>>(),
            ),
        ),
        ("authenticated", Value::from(user.authenticated)),
        ("claims", user.claims.clone()),
        ("regular", Value::from(user.facts.regular)),
        ("guest", Value::from(user.facts.guest)),
        ("expired", Value::from(user.facts.expired)),
        (
            "permissions",
            Value::from(
                user.facts
                    .permissions
                    .iter()
                    .map(|p| Value::from(p.as_str()))
                    .collect::<Vec<_>>(),
            ),
        ),
    ])
}

/// The whole input document.
pub fn build(
    method: &str,
    path: &str,
    query: &[(String, String)],
    route: &Route,
    user: &UserInput<'_>,
) -> Value {
    let mut q = BTreeMap::new();
    for (k, v) in query {
        // The first occurrence wins, as with Tomcat's getParameter.
        q.entry(Value::from(k.as_str()))
            .or_insert_with(|| Value::from(v.as_str()));
    }
    obj(vec![
        (
            "request",
            obj(vec![
                ("method", Value::from(method)),
                ("path", Value::from(path)),
                ("query", Value::from(q)),
            ]),
        ),
        ("route", route_value(route)),
        ("user", user_value(user)),
    ])
}

/// An input used to prepare a freshly compiled engine: an anonymous request to `/`.
pub fn sample() -> Value {
    let route = Route {
        name: Arc::from("unmatched"),
        family: crate::routes::Family::Other,
        space: None,
        content: None,
        user: None,
        action: crate::routes::Action::View,
        public: false,
        rewrites: Default::default(),
        max_body_bytes: None,
        filtered: false,
        lookup: None,
        rule: None,
        malformed: None,
    };
    let claims = Value::new_object();
    build(
        "GET",
        "/",
        &[],
        &route,
        &UserInput {
            name: None,
            groups: &[],
            authenticated: false,
            claims: &claims,
            facts: &CallerFacts::default(),
        },
    )
}

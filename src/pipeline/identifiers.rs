//! Judge what the wiki will act on: every identifier a guest's request carries — in the
//! query, in a form body, at the JSON pointers its rule names — is checked to be in
//! canonical form (else 400), resolved to its space, and allowed there for what the request
//! does with it (a source read needs `view`, a destination `edit`; by default, the route's
//! own action). The route's own capture is judged by the decide stage as before; this stage
//! adds every other name the wiki could act on, so that no second id, alias or parameter
//! the wiki prefers over the rule's capture reaches it unjudged.

use std::borrow::Cow;

use crate::pipeline::error::GatewayError;
use crate::routes::identifiers::{Identifiers, JsonIdentifier, Kind, Needs};
use crate::routes::{Action, Family, Route};

/// One identifier of a request, to be judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    pub value: String,
    pub needs: Needs,
    /// Which lookup resolves a content id; `None`: `[content_lookup]`.
    pub lookup: Option<usize>,
}

impl Target {
    /// The route this target is judged as: the request's own route, naming only this
    /// target, with the permission it needs. `None` for the content id 0, which names
    /// nothing (Confluence's "no target").
    pub fn route(&self, request_route: &Route) -> Option<Route> {
        let mut route = request_route.clone();
        route.space = None;
        route.content = None;
        route.user = None;
        route.filtered = false;
        route.rewrites = Default::default();
        route.public = false;
        route.action = match self.needs {
            Needs::Route => request_route.action,
            Needs::Action(a) => a,
        };
        match self.kind {
            Kind::Content if self.value == "0" => return None,
            Kind::Content => {
                route.family = Family::Content;
                route.content = Some(self.value.as_str().into());
                route.lookup = self.lookup;
            }
            Kind::Space => {
                route.family = Family::Space;
                route.space = Some(self.value.to_uppercase().into_boxed_str());
            }
            Kind::User => {
                route.family = Family::UserProfile;
                route.user = Some(self.value.as_str().into());
                route.action = Action::View;
            }
        }
        Some(route)
    }
}

/// Every declared identifier among `params` (the query's, then the form body's), each
/// checked to be canonical and present once — a second occurrence, in any spelling the
/// wiki folds to the same name, could be the one the wiki reads.
pub fn in_params<'p>(
    identifiers: &Identifiers,
    params: impl Iterator<Item = (&'p str, &'p str)>,
) -> Result<Vec<Target>, GatewayError> {
    let mut found: Vec<(&str, Target)> = Vec::new();
    for (name, value) in params {
        let Some(identifier) = identifiers.find(name) else {
            continue;
        };
        if found.iter().any(|(n, _)| *n == identifier.name) {
            return Err(GatewayError::BadRequest("duplicate_identifier"));
        }
        if !identifiers.is_canonical(identifier.kind, value) {
            return Err(GatewayError::BadRequest("malformed_identifier"));
        }
        found.push((
            identifier.name.as_str(),
            Target {
                kind: identifier.kind,
                value: value.to_string(),
                needs: identifier.needs,
                lookup: identifier.lookup,
            },
        ));
    }
    Ok(found.into_iter().map(|(_, t)| t).collect())
}

/// Every identifier at `pointers` in a JSON request body. A value that is not a string or
/// an integer in canonical form is refused.
pub fn in_json(
    identifiers: &Identifiers,
    pointers: &[JsonIdentifier],
    body: &serde_json::Value,
) -> Result<Vec<Target>, GatewayError> {
    let mut found = Vec::new();
    for pointer in pointers {
        for value in pointer.values(body) {
            let text: Cow<'_, str> = match value {
                serde_json::Value::String(s) => Cow::Borrowed(s),
                serde_json::Value::Number(n) if n.is_u64() => Cow::Owned(n.to_string()),
                _ => return Err(GatewayError::BadRequest("malformed_identifier")),
            };
            if !identifiers.is_canonical(pointer.kind, &text) {
                return Err(GatewayError::BadRequest("malformed_identifier"));
            }
            found.push(Target {
                kind: pointer.kind,
                value: text.into_owned(),
                needs: pointer.needs,
                lookup: pointer.lookup,
            });
        }
    }
    Ok(found)
}

/// The form parameters of an `application/x-www-form-urlencoded` body, decoded as the
/// query's are; undecodable bytes are refused rather than guessed at.
pub fn form_params(body: &[u8]) -> Result<Vec<(String, String)>, GatewayError> {
    let mut params = Vec::new();
    for (k, v) in form_urlencoded::parse(body) {
        if k.contains('\u{FFFD}') || v.contains('\u{FFFD}') {
            return Err(GatewayError::BadRequest("invalid_form_encoding"));
        }
        params.push((k.into_owned(), v.into_owned()));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::identifiers::{Identifier, default_space_key};

    fn ids() -> Identifiers {
        let id = |name: &str, kind, needs| Identifier {
            name: name.into(),
            kind,
            needs,
            lookup: None,
        };
        Identifiers::new(
            vec![
                id("pageId", Kind::Content, Needs::Route),
                id("originalId", Kind::Content, Needs::Action(Action::View)),
                id("spaceKey", Kind::Space, Needs::Route),
                id("key", Kind::Space, Needs::Route),
            ],
            true,
            default_space_key(),
        )
    }

    fn params(pairs: &[(&'static str, &'static str)]) -> Result<Vec<Target>, GatewayError> {
        in_params(&ids(), pairs.iter().copied())
    }

    #[test]
    fn every_identifier_present_is_a_target() {
        let t =
            params(&[("pageId", "1001"), ("originalId", "2001"), ("x", "y")]).unwrap_or_default();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].value, "2001");
        assert_eq!(t[1].needs, Needs::Action(Action::View));
        let aliases = params(&[("key", "ENG"), ("spaceKey", "HR")]).unwrap_or_default();
        assert_eq!(aliases.len(), 2, "both aliases are judged");
    }

    #[test]
    fn malformed_or_repeated_identifiers_are_refused() {
        for bad in [
            &[("pageId", "+2001")][..],
            &[("pageId", "02001")],
            &[("pageId", "２００１")],
            &[("pageId", "1001"), ("PAGEID", "2001")],
            &[("pageId", "1001"), ("pageId", "1001")],
            &[("spaceKey", "EN G")],
        ] {
            assert!(params(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_bodies_name_their_targets() {
        let pointers = [JsonIdentifier {
            pointer: vec!["ancestors".into(), "*".into(), "id".into()],
            kind: Kind::Content,
            needs: Needs::Action(Action::Edit),
            lookup: None,
        }];
        let body = serde_json::json!({"ancestors": [{"id": 5}, {"id": "6"}]});
        assert_eq!(
            in_json(&ids(), &pointers, &body).map(|t| t.len()).ok(),
            Some(2)
        );
        let bad = serde_json::json!({"ancestors": [{"id": "+6"}]});
        assert!(in_json(&ids(), &pointers, &bad).is_err());
        let bad = serde_json::json!({"ancestors": [{"id": {"x": 1}}]});
        assert!(in_json(&ids(), &pointers, &bad).is_err());
    }
}

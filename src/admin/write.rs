//! The admin write API: invite a guest, assign a guest or guest group to up to five spaces,
//! revoke, remove a guest. Off unless `admin.write = true`; then every call needs
//! `Authorization: Bearer <token>` from `admin.write_token_env`. Each change edits the data
//! document and goes through `data_file::change_data`: validated like a reload, written
//! atomically, activated as a new revision. docs/GUEST-LIFECYCLE.md ("The admin write API") has the reference.

use std::collections::BTreeSet;

use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::data_file::{DataChangeError, change_data};
use super::json as json_reply;
use crate::changes::access::{Change, diff, table};
use crate::directory::{Directory, MembershipFile};
use crate::gateway::Gateway;
use crate::http::body::ProxyBody;

/// The seeds' product lets one dialog assign at most five spaces; so does one call.
const MAX_SPACES_PER_CALL: usize = 5;
/// Admin request bodies are small JSON objects.
const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Invite,
    Assign,
    Revoke,
    Remove,
}

impl Operation {
    pub fn from_path(path: &str) -> Option<Operation> {
        Some(match path {
            "/guests/invite" => Operation::Invite,
            "/guests/assign" => Operation::Assign,
            "/guests/revoke" => Operation::Revoke,
            "/guests/remove" => Operation::Remove,
            _ => return None,
        })
    }
}

/// Why a write was refused before it reached the data document.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("the admin write API is off (set admin.write = true)")]
    Disabled,
    #[error("a valid `Authorization: Bearer` token is required")]
    Unauthorized,
    #[error("{0}")]
    Change(#[from] DataChangeError),
}

impl WriteError {
    fn response(&self) -> Response<ProxyBody> {
        let (status, error, reason) = match self {
            WriteError::Disabled => (StatusCode::FORBIDDEN, "forbidden", "admin_write_disabled"),
            WriteError::Unauthorized => {
                (StatusCode::UNAUTHORIZED, "unauthorized", "bad_admin_token")
            }
            WriteError::Change(DataChangeError::BadRequest(_)) => {
                (StatusCode::BAD_REQUEST, "bad_request", "invalid_request")
            }
            WriteError::Change(DataChangeError::NotFound(_)) => {
                (StatusCode::NOT_FOUND, "not_found", "no_such_guest_access")
            }
            WriteError::Change(DataChangeError::Conflict(_)) => {
                (StatusCode::CONFLICT, "conflict", "conflict")
            }
            WriteError::Change(DataChangeError::Invalid(_)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                "invalid_data",
            ),
            WriteError::Change(DataChangeError::Storage(_)) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "data_not_written",
            ),
            WriteError::Change(DataChangeError::Unavailable(_)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "store_unavailable",
            ),
            WriteError::Change(DataChangeError::Stale { .. }) => (
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "stale_revision",
            ),
        };
        let mut body = json!({"error": error, "reason": reason, "message": self.to_string()});
        if let WriteError::Change(DataChangeError::Invalid(errors)) = self {
            body["errors"] = json!(errors);
        }
        if let WriteError::Change(DataChangeError::Stale { current, .. }) = self {
            body["revision"] = json!(current);
        }
        let mut r = json_reply(status, body);
        if matches!(self, WriteError::Change(DataChangeError::Unavailable(_))) {
            r.headers_mut()
                .insert(header::RETRY_AFTER, http::HeaderValue::from_static("5"));
        }
        if matches!(self, WriteError::Unauthorized) {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"guestgate-admin\""),
            );
        }
        r
    }
}

pub async fn handle(gw: &Gateway, req: Request<Incoming>) -> Response<ProxyBody> {
    match run(gw, req).await {
        Ok((status, body)) => {
            let etag = body["revision"].as_str().map(|r| format!("\"{r}\""));
            let mut r = json_reply(status, body);
            if let Some(v) = etag.and_then(|e| http::HeaderValue::from_str(&e).ok()) {
                r.headers_mut().insert(header::ETAG, v);
            }
            r
        }
        Err(e) => {
            if !matches!(e, WriteError::Disabled | WriteError::Unauthorized) {
                tracing::warn!(error = %e, "admin write refused");
            }
            e.response()
        }
    }
}

fn authorize(gw: &Gateway, headers: &http::HeaderMap) -> Result<(), WriteError> {
    let Some(expected) = &gw.config.admin.write_token else {
        return Err(WriteError::Disabled);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(WriteError::Unauthorized)?;
    // Comparing digests keeps the comparison's timing independent of the token's bytes.
    use crate::identity::sha256;
    if sha256(given.trim().as_bytes()) == sha256(expected.as_bytes()) {
        Ok(())
    } else {
        Err(WriteError::Unauthorized)
    }
}

fn bad(message: impl Into<String>) -> WriteError {
    WriteError::Change(DataChangeError::BadRequest(message.into()))
}

async fn run(gw: &Gateway, req: Request<Incoming>) -> Result<(StatusCode, Value), WriteError> {
    let operation =
        Operation::from_path(req.uri().path()).ok_or_else(|| bad("unknown operation"))?;
    authorize(gw, req.headers())?;
    // The revision the caller read (`GET /guests` gives it, quoted, as its ETag).
    let if_match = req
        .headers()
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_string()
        })
        .filter(|v| v != "*");
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !is_json {
        return Err(bad("send the request as Content-Type: application/json"));
    }
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| bad(format!("cannot read the request body: {e}")))?
        .to_bytes();
    let now = OffsetDateTime::now_utc();
    let request: WriteRequest = parse(operation, &body)?;
    let narrowing = matches!(request, WriteRequest::Revoke(_) | WriteRequest::Remove(_));
    // Its own task: a client that hangs up mid-change does not cancel a write half done.
    let store = gw.store.clone();
    let (created, before, after) = tokio::spawn(async move {
        change_data(&store, if_match.as_deref(), narrowing, |doc, directory| {
            request.apply(doc, directory, now)
        })
        .await
    })
    .await
    .map_err(|e| DataChangeError::Storage(format!("write task failed: {e}")))??;
    let now = OffsetDateTime::now_utc();
    let changes = diff(
        &table(&before.directory, now),
        &table(&after.directory, now),
        &after.directory,
        Change {
            revision: &after.revision,
            previous_revision: &before.revision,
            now,
        },
    );
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        json!({
            "revision": &*after.revision,
            "previous_revision": &*before.revision,
            "changes": changes,
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Invite {
    user: String,
    groups: Vec<MembershipFile>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    expires: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Assign {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    group: Option<String>,
    spaces: Vec<String>,
    permissions: Vec<String>,
    #[serde(default)]
    expires: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    group: Option<String>,
    spaces: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Remove {
    user: String,
}

/// A parsed write request.
enum WriteRequest {
    Invite(Invite),
    Assign(Assign),
    Revoke(Revoke),
    Remove(Remove),
}

fn parse(operation: Operation, body: &[u8]) -> Result<WriteRequest, WriteError> {
    fn de<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, WriteError> {
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid request body: {e}")))
    }
    Ok(match operation {
        Operation::Invite => WriteRequest::Invite(de(body)?),
        Operation::Assign => WriteRequest::Assign(de(body)?),
        Operation::Revoke => WriteRequest::Revoke(de(body)?),
        Operation::Remove => WriteRequest::Remove(de(body)?),
    })
}

fn check_name(what: &str, name: &str) -> Result<(), DataChangeError> {
    if name.trim().is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(DataChangeError::BadRequest(format!(
            "`{what}` must be a non-empty name of at most 255 characters without control characters"
        )));
    }
    Ok(())
}

fn check_future(
    what: &str,
    expires: &Option<String>,
    now: OffsetDateTime,
) -> Result<(), DataChangeError> {
    if let Some(e) = expires {
        let t = OffsetDateTime::parse(e, &Rfc3339).map_err(|err| {
            DataChangeError::BadRequest(format!("`{what}`: `{e}` is not an RFC 3339 time ({err})"))
        })?;
        if t <= now {
            return Err(DataChangeError::BadRequest(format!(
                "`{what}`: {e} is already past; access would end before it starts"
            )));
        }
    }
    Ok(())
}

/// `(kind, name)` of the principal of an assign or revoke.
fn principal<'a>(
    user: &'a Option<String>,
    group: &'a Option<String>,
) -> Result<(&'static str, &'a str), DataChangeError> {
    match (user, group) {
        (Some(u), None) => check_name("user", u).map(|_| ("users", u.as_str())),
        (None, Some(g)) => check_name("group", g).map(|_| ("groups", g.as_str())),
        _ => Err(DataChangeError::BadRequest(
            "name exactly one of `user` or `group`".into(),
        )),
    }
}

fn check_spaces(spaces: &[String]) -> Result<(), DataChangeError> {
    if spaces.is_empty() || spaces.len() > MAX_SPACES_PER_CALL {
        return Err(DataChangeError::BadRequest(format!(
            "`spaces` must name 1 to {MAX_SPACES_PER_CALL} spaces per call"
        )));
    }
    let distinct: BTreeSet<String> = spaces.iter().map(|s| s.to_uppercase()).collect();
    if distinct.len() != spaces.len() {
        return Err(DataChangeError::BadRequest(
            "`spaces` names a space twice".into(),
        ));
    }
    spaces.iter().try_for_each(|s| check_name("spaces", s))
}

fn object<'a>(
    parent: &'a mut Value,
    key: &str,
) -> Result<&'a mut Map<String, Value>, DataChangeError> {
    let map = parent
        .as_object_mut()
        .ok_or_else(|| DataChangeError::Conflict("the data document is not an object".into()))?;
    map.entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| {
            DataChangeError::Conflict(format!("`{key}` in the data document is not an object"))
        })
}

/// The key under `spaces` for a space, matching the document's spelling case-insensitively.
fn space_key(spaces: &Map<String, Value>, wanted: &str) -> String {
    let wanted = wanted.to_uppercase();
    spaces
        .keys()
        .find(|k| k.to_uppercase() == wanted)
        .cloned()
        .unwrap_or(wanted)
}

impl WriteRequest {
    /// Edits the data document; true when a guest was created (201).
    fn apply(
        &self,
        doc: &mut Value,
        directory: &Directory,
        now: OffsetDateTime,
    ) -> Result<bool, DataChangeError> {
        match self {
            WriteRequest::Invite(i) => invite(i, doc, directory, now),
            WriteRequest::Assign(a) => assign(a, doc, now).map(|_| false),
            WriteRequest::Revoke(r) => revoke(r, doc).map(|_| false),
            WriteRequest::Remove(r) => remove(r, doc, directory).map(|_| false),
        }
    }
}

fn invite(
    i: &Invite,
    doc: &mut Value,
    directory: &Directory,
    now: OffsetDateTime,
) -> Result<bool, DataChangeError> {
    check_name("user", &i.user)?;
    check_future("expires", &i.expires, now)?;
    if i.groups.is_empty() {
        return Err(DataChangeError::BadRequest(
            "`groups` must name at least one guest group".into(),
        ));
    }
    for m in &i.groups {
        if !directory.groups.get(m.group()).is_some_and(|g| g.guest) {
            return Err(DataChangeError::BadRequest(format!(
                "`{}` is not a guest group of the data document; the write API only makes guests",
                m.group()
            )));
        }
        if let MembershipFile::Expiring { group, expires } = m {
            check_future(&format!("groups.{group}.expires"), expires, now)?;
        }
    }
    if let Some(existing) = directory.users.get(&i.user)
        && !directory.is_guest(&existing.groups)
    {
        return Err(DataChangeError::Conflict(format!(
            "`{}` is a regular user; guestgate does not turn regular users into guests",
            i.user
        )));
    }
    let users = object(doc, "users")?;
    let created = !users.contains_key(&i.user);
    let entry = users
        .entry(i.user.clone())
        .or_insert_with(|| json!({"groups": []}));
    let entry = entry
        .as_object_mut()
        .ok_or_else(|| DataChangeError::Conflict(format!("users.{} is not an object", i.user)))?;
    let groups = entry
        .entry("groups")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or_else(|| {
            DataChangeError::Conflict(format!("users.{}.groups is not a list", i.user))
        })?;
    for m in &i.groups {
        // One entry per group: an invitation with an expiry replaces a plain membership.
        groups.retain(|g| {
            let name = g
                .as_str()
                .or_else(|| g.get("group").and_then(Value::as_str));
            name != Some(m.group())
        });
        groups.push(m.to_json());
    }
    for (key, value) in [
        ("display_name", &i.display_name),
        ("email", &i.email),
        ("expires", &i.expires),
    ] {
        if let Some(v) = value {
            entry.insert(key.into(), Value::from(v.as_str()));
        }
    }
    Ok(created)
}

fn assign(a: &Assign, doc: &mut Value, now: OffsetDateTime) -> Result<(), DataChangeError> {
    let (side, name) = principal(&a.user, &a.group)?;
    check_spaces(&a.spaces)?;
    check_future("expires", &a.expires, now)?;
    if a.permissions.is_empty() {
        return Err(DataChangeError::BadRequest(
            "`permissions` must name at least one permission (view for view-only)".into(),
        ));
    }
    let grant = match &a.expires {
        Some(e) => json!({"permissions": a.permissions, "expires": e}),
        None => json!(a.permissions),
    };
    let spaces = object(doc, "spaces")?;
    for wanted in &a.spaces {
        let key = space_key(spaces, wanted);
        let space = spaces.entry(key).or_insert_with(|| json!({}));
        let guests = object(space, "guests")?;
        let side = guests
            .entry(side.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| {
                DataChangeError::Conflict(format!("spaces.{wanted}.guests.{side} is not an object"))
            })?;
        side.insert(name.to_string(), grant.clone());
    }
    Ok(())
}

fn revoke(r: &Revoke, doc: &mut Value) -> Result<(), DataChangeError> {
    let (side, name) = principal(&r.user, &r.group)?;
    check_spaces(&r.spaces)?;
    let spaces = object(doc, "spaces")?;
    let mut removed = 0;
    for wanted in &r.spaces {
        let key = space_key(spaces, wanted);
        if let Some(grants) = spaces
            .get_mut(&key)
            .and_then(|s| s.get_mut("guests"))
            .and_then(|g| g.get_mut(side))
            .and_then(Value::as_object_mut)
            && grants.remove(name).is_some()
        {
            removed += 1;
        }
    }
    if removed == 0 {
        return Err(DataChangeError::NotFound(format!(
            "`{name}` holds no grant in {}",
            r.spaces.join(", ")
        )));
    }
    Ok(())
}

fn remove(r: &Remove, doc: &mut Value, directory: &Directory) -> Result<(), DataChangeError> {
    check_name("user", &r.user)?;
    if let Some(u) = directory.users.get(&r.user)
        && !directory.is_guest(&u.groups)
    {
        return Err(DataChangeError::Conflict(format!(
            "`{}` is a regular user; the write API only removes guests",
            r.user
        )));
    }
    let mut removed = object(doc, "users")?.remove(&r.user).is_some();
    for space in object(doc, "spaces")?.values_mut() {
        if let Some(users) = space
            .get_mut("guests")
            .and_then(|g| g.get_mut("users"))
            .and_then(Value::as_object_mut)
        {
            removed |= users.remove(&r.user).is_some();
        }
    }
    if !removed {
        return Err(DataChangeError::NotFound(format!("no guest `{}`", r.user)));
    }
    Ok(())
}

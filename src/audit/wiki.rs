//! The audit's requests to the wiki, with the gateway's own service identity: the
//! `Authorization` of `upstream.service_authorization_env` (what content lookups send) and,
//! for a wiki that signs users in by `upstream.user_header`, `audit.service_user` in it.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::Full;

use super::AuditError;
use crate::config::Config;
use crate::http::client::{self, Fetched, HttpsClient};

/// Largest answer read: a permission listing of a big space is tens of KB.
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// One request ends within this (the whole audit has `audit.timeout_secs`).
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

pub struct WikiClient {
    client: HttpsClient<Full<Bytes>>,
    /// `scheme://authority` and the context path.
    base: String,
    authorization: Option<HeaderValue>,
    user: Option<(HeaderName, HeaderValue)>,
    /// The wiki's session cookie, once it sets one: MediaWiki ties its CSRF tokens to it.
    cookie: Mutex<Option<HeaderValue>>,
}

impl WikiClient {
    pub fn new(config: &Config) -> Result<WikiClient, AuditError> {
        let up = &config.upstream;
        let client = client::build(up.ca_file.as_deref(), up.connect_timeout)
            .map_err(|e| AuditError::Setup(format!("cannot build the HTTP client: {e}")))?;
        let authorization = match &up.service_authorization_env {
            None => None,
            Some(var) => {
                let value = std::env::var(var).map_err(|_| {
                    AuditError::Setup(format!(
                        "upstream.service_authorization_env: environment variable ${var} is not set"
                    ))
                })?;
                Some(HeaderValue::from_str(&value).map_err(|_| {
                    AuditError::Setup(format!(
                        "upstream.service_authorization_env: ${var} is not a valid header value"
                    ))
                })?)
            }
        };
        let user = match (&up.user_header, &config.audit.service_user) {
            (Some(header), Some(name)) => Some((
                header.clone(),
                HeaderValue::from_str(name).map_err(|_| {
                    AuditError::Setup("audit.service_user is not a valid header value".into())
                })?,
            )),
            _ => None,
        };
        Ok(WikiClient {
            client,
            base: format!("{}://{}{}", up.scheme, up.authority, up.base_path),
            authorization,
            user,
            cookie: Mutex::new(None),
        })
    }

    /// Sends one request; `path` is inside the wiki's context path.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: Bytes,
    ) -> Result<Fetched, AuditError> {
        let uri = format!("{}{}", self.base, path);
        let mut req = Request::builder()
            .method(method)
            .uri(&uri)
            .header(http::header::ACCEPT, "application/json");
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        if let Some(auth) = &self.authorization {
            req = req.header(http::header::AUTHORIZATION, auth);
        }
        if let Some((name, value)) = &self.user {
            req = req.header(name, value);
        }
        if let Some(cookie) = self.cookie.lock().ok().and_then(|c| c.clone()) {
            req = req.header(http::header::COOKIE, cookie);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| AuditError::Setup(format!("{uri}: cannot build the request: {e}")))?;
        let fetched = client::fetch(&self.client, req, REQUEST_DEADLINE, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| AuditError::Unreachable(client::sentence(&e)))?;
        self.keep_session(&fetched);
        if matches!(fetched.status.as_u16(), 401 | 403)
            && fetched.headers.contains_key(http::header::WWW_AUTHENTICATE)
        {
            return Err(AuditError::Credentials(format!(
                "{uri} answered {} (set upstream.service_authorization_env to a service account's credentials)",
                fetched.status
            )));
        }
        Ok(fetched)
    }

    pub async fn get(&self, path: &str) -> Result<Fetched, AuditError> {
        self.send(Method::GET, path, None, Bytes::new()).await
    }

    /// The JSON of a `200 OK` answer to `GET path`.
    pub async fn get_json(&self, what: &str, path: &str) -> Result<serde_json::Value, AuditError> {
        let fetched = self.get(path).await?;
        json_of(what, fetched)
    }

    fn keep_session(&self, fetched: &Fetched) {
        let pairs: Vec<&str> = fetched
            .headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .filter(|kv| kv.contains('='))
            .collect();
        if pairs.is_empty() {
            return;
        }
        let Ok(mut slot) = self.cookie.lock() else {
            return;
        };
        // Merged by name: an answer that sets one cookie keeps the others.
        let mut jar: Vec<String> = slot
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split("; ").map(str::to_string).collect())
            .unwrap_or_default();
        for pair in pairs {
            let name = pair.split('=').next().unwrap_or("");
            jar.retain(|kv| kv.split('=').next() != Some(name));
            jar.push(pair.to_string());
        }
        if let Ok(value) = HeaderValue::from_str(&jar.join("; ")) {
            *slot = Some(value);
        }
    }
}

/// The JSON of a `200 OK` answer, or why not.
pub fn json_of(what: &str, fetched: Fetched) -> Result<serde_json::Value, AuditError> {
    match fetched.status.as_u16() {
        200 => fetched.json().map_err(|e| AuditError::Unexpected {
            what: what.to_string(),
            why: e.to_string(),
        }),
        404 => Err(AuditError::NotFound(what.to_string())),
        401 | 403 => Err(AuditError::Credentials(format!(
            "{what}: {} answered {}",
            fetched.uri, fetched.status
        ))),
        _ => Err(AuditError::Refused {
            what: what.to_string(),
            why: format!(
                "{} answered {}: {}",
                fetched.uri,
                fetched.status,
                String::from_utf8_lossy(&fetched.body[..fetched.body.len().min(300)])
            ),
        }),
    }
}

/// `s` as it goes in a URL path segment or a query value.
pub fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

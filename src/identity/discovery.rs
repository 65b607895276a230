//! OpenID Provider discovery (OpenID Connect Discovery 1.0 §4): the one place the gateway
//! reads `{issuer}/.well-known/openid-configuration`, for the token keys and for browser
//! sign-in alike, with the checks the specification asks of a relying party.

use std::time::Duration;

use http::Uri;

use crate::http::client::{FetchError, HttpsClient, RequestBody, fetch, get_json_request};

const MAX_DOCUMENT_BYTES: usize = 1 << 20;
const DEADLINE: Duration = Duration::from_secs(10);

/// The parts of a discovery document the gateway uses.
#[derive(Debug, Clone)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<Uri>,
    pub userinfo_endpoint: Option<Uri>,
    pub end_session_endpoint: Option<String>,
    pub revocation_endpoint: Option<Uri>,
    pub jwks_uri: Option<Uri>,
    /// `code_challenge_methods_supported`, when the provider states it.
    pub code_challenge_methods: Option<Vec<String>>,
}

/// Why a discovery document was not usable.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{url}: `issuer` is not `{expected}`")]
    IssuerMismatch { url: String, expected: String },
    #[error("{url}: `{field}` is not https")]
    NotHttps { url: String, field: &'static str },
    #[error("{url}: `{field}` is not a URI")]
    NotAUri {
        url: String,
        field: &'static str,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("{url}: no `{field}`")]
    Missing { url: String, field: &'static str },
}

/// Fetches and checks the discovery document of `issuer` (as configured: the document must
/// name exactly it, §4.3, or a compromised document could point the gateway at another
/// provider). Below an https issuer, every endpoint must be https too.
pub async fn discover<B: RequestBody + Default>(
    client: &HttpsClient<B>,
    issuer: &str,
) -> Result<ProviderMetadata, DiscoveryError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let doc = fetch(
        client,
        get_json_request(&url, B::default())?,
        DEADLINE,
        MAX_DOCUMENT_BYTES,
    )
    .await?
    .ok()?
    .json()?;
    if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
        return Err(DiscoveryError::IssuerMismatch {
            url,
            expected: issuer.to_string(),
        });
    }
    let https_issuer = issuer.starts_with("https://");
    let endpoint = |field: &'static str| -> Result<Option<String>, DiscoveryError> {
        match doc.get(field).and_then(|v| v.as_str()) {
            None => Ok(None),
            Some(e) if https_issuer && !e.starts_with("https://") => {
                Err(DiscoveryError::NotHttps {
                    url: url.clone(),
                    field,
                })
            }
            Some(e) => Ok(Some(e.to_string())),
        }
    };
    let uri = |field: &'static str| -> Result<Option<Uri>, DiscoveryError> {
        endpoint(field)?
            .map(|e| {
                e.parse::<Uri>().map_err(|source| DiscoveryError::NotAUri {
                    url: url.clone(),
                    field,
                    source,
                })
            })
            .transpose()
    };
    Ok(ProviderMetadata {
        issuer: issuer.to_string(),
        authorization_endpoint: endpoint("authorization_endpoint")?,
        token_endpoint: uri("token_endpoint")?,
        userinfo_endpoint: uri("userinfo_endpoint")?,
        end_session_endpoint: endpoint("end_session_endpoint")?,
        revocation_endpoint: uri("revocation_endpoint")?,
        jwks_uri: uri("jwks_uri")?,
        code_challenge_methods: doc
            .get("code_challenge_methods_supported")
            .and_then(|v| v.as_array())
            .map(|methods| {
                methods
                    .iter()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect()
            }),
    })
}

impl ProviderMetadata {
    /// A field sign-in cannot do without.
    pub fn required<T: Clone>(
        &self,
        value: &Option<T>,
        field: &'static str,
    ) -> Result<T, DiscoveryError> {
        value.clone().ok_or_else(|| DiscoveryError::Missing {
            url: format!(
                "{}/.well-known/openid-configuration",
                self.issuer.trim_end_matches('/')
            ),
            field,
        })
    }
}

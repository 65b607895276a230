//! Serde mirror of the TOML config file (docs/CONFIGURATION.md). Only shape and defaults live here;
//! meaning and cross-field rules are checked in `validate.rs`.

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub server: ServerFile,
    pub upstream: UpstreamFile,
    pub identity: IdentityFile,
    pub policy: PolicyFile,
    pub routes: RoutesFile,
    pub rewrite: RewriteFile,
    pub admin: AdminFile,
    pub log: LogFile,
    pub bundle: Option<BundleFile>,
    pub notify: NotifyFile,
    pub store: Option<StoreFile>,
    pub audit: AuditFile,
}

/// `[audit]`: how `guestgate audit` (and the gateway's periodic audit) reads the wiki's own
/// permissions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditFile {
    /// `confluence` or `mediawiki`; unset: from the route profile's file name.
    pub wiki: Option<String>,
    /// Audit every this many seconds while serving; unset: never.
    pub interval_secs: Option<u64>,
    /// The wiki account the audit acts as where the wiki signs users in by
    /// `upstream.user_header` (MediaWiki's header login).
    pub service_user: Option<String>,
    pub timeout_secs: u64,
}

impl Default for AuditFile {
    fn default() -> Self {
        Self {
            wiki: None,
            interval_secs: None,
            service_user: None,
            timeout_secs: 30,
        }
    }
}

/// `[store]`: the data document and sign-in state in PostgreSQL, shared by replicas.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    pub url: String,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<String>,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default = "default_store_poll")]
    pub poll_interval_secs: u64,
    #[serde(default = "default_store_timeout")]
    pub timeout_secs: u64,
}

fn default_store_poll() -> u64 {
    5
}

fn default_store_timeout() -> u64 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyFile {
    pub webhook_url: Option<String>,
    pub authorization_env: Option<String>,
    pub timeout_secs: u64,
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_secs: u64,
    pub queue: usize,
}

impl Default for NotifyFile {
    fn default() -> Self {
        Self {
            webhook_url: None,
            authorization_env: None,
            timeout_secs: 5,
            max_attempts: 8,
            initial_backoff_ms: 500,
            max_backoff_secs: 60,
            queue: 1000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    pub url: String,
    #[serde(default = "default_poll_interval")]
    pub poll_interval_secs: u64,
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    #[serde(default)]
    pub authorization_env: Option<String>,
    #[serde(default = "default_poll_timeout")]
    pub timeout_secs: u64,
}

fn default_poll_timeout() -> u64 {
    30
}

fn default_poll_interval() -> u64 {
    60
}

fn default_jitter() -> f64 {
    0.2
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerFile {
    pub listen: String,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout_secs: u64,
    pub request_timeout_secs: u64,
    pub shutdown_grace_secs: u64,
    pub drain_secs: u64,
    pub send_timeout_secs: u64,
    pub max_body_bytes: u64,
    pub idle_timeout_secs: u64,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub listen_backlog: u32,
    pub buffer_budget_bytes: u64,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_reset_streams: usize,
    pub max_upstream_in_flight: usize,
    pub retry_after_secs: u64,
    pub workers: usize,
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerFile {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            tls_cert: None,
            tls_key: None,
            max_header_bytes: 16384,
            max_headers: 100,
            header_read_timeout_secs: 10,
            request_timeout_secs: 60,
            shutdown_grace_secs: 10,
            drain_secs: 5,
            send_timeout_secs: 60,
            max_body_bytes: 100 * 1024 * 1024,
            idle_timeout_secs: 60,
            max_connections: 4096,
            max_connections_per_client: 0,
            listen_backlog: 1024,
            buffer_budget_bytes: 64 * 1024 * 1024,
            h2_max_concurrent_streams: 100,
            h2_max_pending_reset_streams: 20,
            max_upstream_in_flight: 256,
            retry_after_secs: 1,
            workers: 0,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamFile {
    pub url: Option<String>,
    pub connect_timeout_secs: u64,
    pub ca_file: Option<String>,
    pub user_header: Option<String>,
    pub service_authorization_env: Option<String>,
    pub pass_authorization: bool,
}

impl Default for UpstreamFile {
    fn default() -> Self {
        Self {
            url: None,
            connect_timeout_secs: 5,
            ca_file: None,
            user_header: None,
            service_authorization_env: None,
            pass_authorization: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityFile {
    pub token_sources: Vec<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub hs256_secret_env: Option<String>,
    pub hs256_secret_file: Option<String>,
    pub jwks_file: Option<String>,
    pub jwks_url: Option<String>,
    pub jwks_refresh_secs: u64,
    pub discovery: bool,
    pub jwks_min_refetch_secs: u64,
    pub leeway_secs: u64,
    pub user_claim: String,
    pub groups_claim: String,
    pub anonymous: String,
    pub unknown_users: String,
    pub token_cache_max_entries: u64,
    /// Browser sign-in (`[identity.oidc]`).
    pub oidc: Option<OidcFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcFile {
    pub issuer: String,
    pub client_id: String,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<String>,
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    #[serde(default = "default_redirect_path")]
    pub redirect_path: String,
    pub external_url: Option<String>,
    pub session_keys_env: Option<String>,
    pub session_keys_file: Option<String>,
    #[serde(default = "default_session_lifetime")]
    pub session_lifetime_secs: u64,
    #[serde(default = "default_refresh_before")]
    pub refresh_before_secs: u64,
    #[serde(default = "default_state_ttl")]
    pub state_ttl_secs: u64,
    #[serde(default = "default_true")]
    pub userinfo_groups: bool,
    #[serde(default)]
    pub allow_missing_groups: bool,
    #[serde(default = "default_client_auth")]
    pub client_auth: String,
    #[serde(default)]
    pub allow_http_issuer: bool,
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "email".into()]
}

fn default_redirect_path() -> String {
    "/_guestgate/callback".into()
}

fn default_session_lifetime() -> u64 {
    8 * 3600
}

fn default_refresh_before() -> u64 {
    60
}

fn default_state_ttl() -> u64 {
    600
}

fn default_true() -> bool {
    true
}

fn default_client_auth() -> String {
    "client_secret_basic".into()
}

impl Default for IdentityFile {
    fn default() -> Self {
        Self {
            token_sources: vec!["authorization".into(), "cookie:guestgate_token".into()],
            issuer: None,
            audience: None,
            hs256_secret_env: None,
            hs256_secret_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
            discovery: false,
            jwks_min_refetch_secs: 10,
            leeway_secs: 30,
            user_claim: "preferred_username".into(),
            groups_claim: "groups".into(),
            anonymous: "deny".into(),
            unknown_users: "deny".into(),
            token_cache_max_entries: 100_000,
            oidc: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyFile {
    pub dir: String,
    pub data: String,
    pub query: String,
    pub decision_cache_ttl_secs: u64,
    pub decision_cache_max_entries: u64,
    pub eval_timeout_ms: u64,
    pub listing_query: String,
    pub dry_run: bool,
    pub watch: bool,
}

impl Default for PolicyFile {
    fn default() -> Self {
        Self {
            dir: "../policies".into(),
            data: "../policies/data.json".into(),
            query: "data.guestgate.decision".into(),
            decision_cache_ttl_secs: 30,
            decision_cache_max_entries: 100_000,
            eval_timeout_ms: 1000,
            listing_query: "data.guestgate.viewable_spaces".into(),
            dry_run: false,
            watch: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutesFile {
    pub profile: String,
}

impl Default for RoutesFile {
    fn default() -> Self {
        Self {
            profile: "routes/confluence.toml".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewriteFile {
    pub json: bool,
    pub html: bool,
    pub max_body_bytes: usize,
    pub banner_text: String,
}

impl Default for RewriteFile {
    fn default() -> Self {
        Self {
            json: true,
            html: true,
            max_body_bytes: 8 * 1024 * 1024,
            banner_text: "This space is shared with guests.".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminFile {
    pub listen: String,
    pub write: bool,
    pub write_token_env: String,
    pub write_token_file: Option<String>,
}

impl Default for AdminFile {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9901".into(),
            write: false,
            write_token_env: "GUESTGATE_ADMIN_TOKEN".into(),
            write_token_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogFile {
    pub format: String,
    pub decisions: String,
}

impl Default for LogFile {
    fn default() -> Self {
        Self {
            format: "text".into(),
            decisions: "stderr".into(),
        }
    }
}

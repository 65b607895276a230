//! Configuration: the TOML file is parsed into a serde mirror (`file`), then validated once
//! into the typed [`Config`] (`validate`). Runtime code only ever sees [`Config`].

mod file;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

pub use validate::{ConfigError, ConfigErrors};

/// The validated configuration of one gateway process.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file itself; relative paths inside it are resolved against its folder.
    pub path: PathBuf,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub identity: IdentityConfig,
    pub policy: PolicyConfig,
    pub routes: RoutesConfig,
    pub rewrite: RewriteConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// Policies and data from an OPA bundle server instead of `policy.dir` / `policy.data`.
    pub bundle: Option<BundleConfig>,
    pub notify: NotifyConfig,
    /// The data document and sign-in state in PostgreSQL instead of the file and the
    /// process (`[store]`); `None`: the file is the source of truth.
    pub store: Option<StoreConfig>,
    pub audit: AuditConfig,
}

/// `[store]`: where replicas share the data document, ended sessions, used sign-in states
/// and which replica sends each access-change event.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Parsed from `store.url` (libpq URL or key=value form); its `Debug` hides the password.
    pub connection: tokio_postgres::Config,
    /// The URL without its password, for logs and `/readyz`.
    pub display: String,
    /// Extra CA certificates (PEM) for a server whose certificate no public CA signed.
    pub ca_file: Option<PathBuf>,
    /// How often the generation is re-read besides `LISTEN`, to catch a lost notification.
    pub poll_interval: Duration,
    /// Connecting, and every statement, end within this.
    pub timeout: Duration,
}

/// Where guest-access change events go besides the log.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub webhook: Option<WebhookConfig>,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    /// The `Authorization` value sent with each POST, read from the named variable.
    pub authorization: Option<String>,
    pub timeout: Duration,
    /// Tries per event, the first included; then the event is dropped and logged.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Events waiting for delivery at most; beyond it new events are dropped (and counted),
    /// never the request path blocked.
    pub queue: usize,
}

#[derive(Debug, Clone)]
pub struct BundleConfig {
    pub url: String,
    pub poll_interval: Duration,
    /// Each wait is the interval ± this fraction, so replicas spread their polls.
    pub jitter: f64,
    /// The `Authorization` value for the bundle server, read from the named variable.
    pub authorization: Option<String>,
    /// One poll, head and body, ends within this (`bundle.timeout_secs`).
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long requests are still served while `/readyz` answers 503, so a
    /// load balancer takes the replica out before it stops accepting (`server.drain_secs`).
    pub drain: Duration,
    /// How long a response frame may wait for the client to read it before the connection
    /// is dropped (`server.send_timeout_secs`).
    pub send_timeout: Duration,
    /// Largest request body a route accepts unless its rule says otherwise (→ 413).
    pub max_body_bytes: usize,
    /// A connection with no request for this long is closed (gracefully).
    pub idle_timeout: Duration,
    /// Open client connections at most; further ones are answered 503 and closed.
    pub max_connections: usize,
    /// Open connections from one client address at most; 0: no such cap
    /// (`server.max_connections_per_client`). Behind a proxy every client is the proxy.
    pub max_connections_per_client: usize,
    /// Connections the kernel queues for the proxy listener until they are accepted
    /// (`listen(2)`'s backlog; Linux caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Bytes of bodies held in memory at once, all requests together
    /// (`server.buffer_budget_bytes`; see `pipeline::limits::BufferBudget`).
    pub buffer_budget_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    /// Streams a client may open and reset before the server accepts them (HTTP/2 rapid
    /// reset, CVE-2023-44487); beyond it the connection is closed.
    pub h2_max_pending_reset_streams: usize,
    /// Requests being forwarded to the wiki at once; beyond it, 503 with `Retry-After`.
    pub max_upstream_in_flight: usize,
    /// The `Retry-After` of a load-shedding 503.
    pub retry_after: Duration,
    /// Peers whose `X-Forwarded-For` is kept (and extended); from anyone else it is replaced
    /// by the peer's own address (`server.trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Threads that serve client connections, each with its own runtime and its own pool of
    /// upstream connections (`server.workers`; 0 in the file means one per CPU).
    pub workers: usize,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Context path of the wiki (e.g. `/confluence`), without a trailing slash; often empty.
    pub base_path: String,
    pub connect_timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub user_header: Option<HeaderName>,
    /// Name of the environment variable holding the `Authorization` value used for
    /// gateway-initiated lookups (content id → space).
    pub service_authorization_env: Option<String>,
    /// Forward the client's `Authorization` header to the wiki (`upstream.pass_authorization`,
    /// off by default: the wiki could read it as another identity than the gateway's).
    pub pass_authorization: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Authorization,
    /// A cookie of this name.
    Cookie(String),
    /// A request header of this name carrying the bare token.
    Header(HeaderName),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnonymousMode {
    /// Requests without a token get 401 unless their route is public.
    Deny,
    /// Requests without a token go to the policy as an unauthenticated user.
    Policy,
}

/// What becomes of a signed-in user the directory cannot place: no declared group at all
/// (unknown names, undeclared groups, an empty group list). Never regular.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnknownUsers {
    /// Refused (403 `user_unclassified`).
    #[default]
    Deny,
    /// Judged as a guest with nothing granted beyond their own user grants.
    Guest,
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub token_sources: Vec<TokenSource>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub hs256_secret_env: Option<String>,
    /// A file holding the HS256 secret (a mounted secret), as an alternative to the variable.
    pub hs256_secret_file: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    /// The identity provider's JWKS, fetched and refreshed.
    pub jwks_url: Option<String>,
    /// Find the JWKS through `{issuer}/.well-known/openid-configuration`.
    pub discovery: bool,
    pub jwks_refresh: Duration,
    /// Unknown-key refetches happen at most this often.
    pub jwks_min_refetch: Duration,
    pub leeway_secs: u64,
    pub user_claim: String,
    pub groups_claim: String,
    pub anonymous: AnonymousMode,
    /// Users with no declared group (`identity.unknown_users`).
    pub unknown_users: UnknownUsers,
    pub token_cache_max_entries: u64,
    /// Browser sign-in with OpenID Connect; `None` when not configured.
    pub oidc: Option<OidcConfig>,
}

/// Where a secret comes from: an environment variable or a (mounted) file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl SecretSource {
    /// Reads the secret now; the message names the config key and where it looked.
    pub fn read(&self, key: &str) -> Result<String, String> {
        match self {
            Self::Env(var) => std::env::var(var)
                .map_err(|_| format!("{key}: environment variable ${var} is not set")),
            Self::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("{key}: {}: {e}", path.display())),
        }
    }
}

/// How the gateway authenticates itself at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with the form-encoded id and secret (RFC 6749 §2.3.1).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// `[identity.oidc]`: the authorization code flow with PKCE for browsers.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Exactly as the provider's ID tokens carry it in `iss`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretSource,
    /// Always includes `openid`.
    pub scopes: Vec<String>,
    /// Under `/_guestgate/`; the callback's path.
    pub redirect_path: String,
    /// The public origin (`https://wiki.example.com`); without it, the request's `Host`.
    pub external_url: Option<String>,
    /// One or more base64 keys of 32 bytes: the first seals, every one opens.
    pub session_keys: SecretSource,
    /// A session ends this long after sign-in, refreshed or not.
    pub session_lifetime: Duration,
    /// A session with a refresh token is refreshed this long before it expires.
    pub refresh_before: Duration,
    /// How long a started sign-in may take to come back.
    pub state_ttl: Duration,
    /// Ask the userinfo endpoint for the groups when the ID token has no groups claim.
    pub userinfo_groups: bool,
    /// Sign in even when neither the ID token nor userinfo carries the groups claim; the
    /// groups then come from the directory alone. Off: such a sign-in is refused, since a
    /// person without groups would pass as a regular user.
    pub allow_missing_groups: bool,
    pub client_auth: ClientAuth,
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub dir: PathBuf,
    pub data: PathBuf,
    /// A rule path such as `data.guestgate.decision`.
    pub query: String,
    pub decision_cache_ttl: Duration,
    pub decision_cache_max_entries: u64,
    pub eval_timeout: Duration,
    /// The rule giving the spaces a guest's listings keep (`filter_spaces`).
    pub listing_query: String,
    /// Decide and log, but never enforce policy denials (rolling out a new policy).
    pub dry_run: bool,
    /// Reload when the policy dir, data, profile or key files change.
    pub watch: bool,
}

#[derive(Debug, Clone)]
pub struct RoutesConfig {
    pub profile: PathBuf,
}

/// Which wiki's permission scheme `guestgate audit` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WikiKind {
    Confluence,
    MediaWiki,
}

/// `[audit]`: reading the wiki's own permissions for guest accounts.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// `None`: neither set nor told by the profile's name; `audit` says so.
    pub wiki: Option<WikiKind>,
    /// While serving, audit this often (`/guests` and `guestgate_wiki_permission_drift`
    /// show the last result); `None`: only on the command line.
    pub interval: Option<Duration>,
    pub service_user: Option<String>,
    /// One whole audit (every request it makes) ends within this.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RewriteConfig {
    pub json: bool,
    pub html: bool,
    pub max_body_bytes: usize,
    pub banner_text: String,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The bearer token of the write API; `None` keeps the write API off.
    pub write_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionLogTarget {
    Off,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub decisions: DecisionLogTarget,
}

impl Config {
    /// Reads, parses and validates the config file. Every problem found is reported at once.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        validate::load(path)
    }

    /// Parses and validates config text as if it had been read from `path`.
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        validate::from_toml(path, text)
    }
}

//! Turns the serde mirror into the typed [`Config`], collecting every error with the key it
//! belongs to, so an operator fixes a broken file in one round.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

use super::file::FileConfig;
use super::*;
use crate::http::gateway_paths;

/// One problem with the config file.
pub type ConfigError = crate::files::FileError;

/// Every problem found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

pub(super) fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            message: format!("cannot read config file: {e}"),
        }])
    })?;
    from_toml(path, &text)
}

pub(super) fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        }])
    })?;
    let mut v = Validator {
        file: path.to_path_buf(),
        base: path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        errors: Vec::new(),
    };
    let config = v.config(file);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(v.errors))
    }
}

struct Validator {
    file: PathBuf,
    base: PathBuf,
    errors: Vec<ConfigError>,
}

impl Validator {
    fn error(&mut self, key: &str, message: impl fmt::Display) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            message: format!("{key}: {message}"),
        });
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn socket_addr(&mut self, key: &str, value: &str) -> SocketAddr {
        value.parse().unwrap_or_else(|e| {
            self.error(key, format_args!("`{value}` is not an address:port ({e})"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn secs(&mut self, key: &str, value: u64) -> Duration {
        if value == 0 {
            self.error(key, "must be greater than 0");
        }
        Duration::from_secs(value)
    }

    fn header_name(&mut self, key: &str, value: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(value.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.error(key, format_args!("`{value}` is not a valid header name"));
                None
            }
        }
    }

    fn config(&mut self, f: FileConfig) -> Config {
        let server = self.server(f.server);
        let upstream = self.upstream(f.upstream);
        let identity = self.identity(f.identity);
        let policy = self.policy(f.policy);
        let routes = RoutesConfig {
            profile: self.resolve(&f.routes.profile),
        };
        if f.rewrite.max_body_bytes == 0 {
            self.error("rewrite.max_body_bytes", "must be greater than 0");
        }
        let rewrite = RewriteConfig {
            json: f.rewrite.json,
            html: f.rewrite.html,
            max_body_bytes: f.rewrite.max_body_bytes,
            banner_text: f.rewrite.banner_text,
        };
        let write_token = if f.admin.write {
            let (source, token) = match &f.admin.write_token_file {
                Some(file) => {
                    let path = self.resolve(file);
                    (
                        format!("admin.write_token_file ({})", path.display()),
                        std::fs::read_to_string(&path)
                            .map(|t| t.trim().to_string())
                            .map_err(|e| format!("cannot read {}: {e}", path.display())),
                    )
                }
                None => (
                    format!("${} (admin.write_token_env)", f.admin.write_token_env),
                    std::env::var(&f.admin.write_token_env).map_err(|_| {
                        format!(
                            "the write API needs a bearer token in ${} (admin.write_token_env) or admin.write_token_file",
                            f.admin.write_token_env
                        )
                    }),
                ),
            };
            match token {
                Ok(t) if t.len() >= 16 => Some(t),
                Ok(_) => {
                    self.error(
                        "admin.write",
                        format_args!(
                            "{source} must hold at least 16 characters (it guards the write API)"
                        ),
                    );
                    None
                }
                Err(e) => {
                    self.error("admin.write", e);
                    None
                }
            }
        } else {
            None
        };
        let admin = AdminConfig {
            listen: self.socket_addr("admin.listen", &f.admin.listen),
            write_token,
        };
        let notify = self.notify(f.notify);
        let log = self.log(f.log);
        let bundle = f.bundle.map(|b| {
            if !(b.url.starts_with("http://") || b.url.starts_with("https://")) {
                self.error(
                    "bundle.url",
                    format_args!("`{}` must be http:// or https://", b.url),
                );
            }
            if !(0.0..=0.9).contains(&b.jitter) {
                self.error("bundle.jitter", "must be between 0 and 0.9");
            }
            let authorization =
                b.authorization_env
                    .as_ref()
                    .and_then(|var| match std::env::var(var) {
                        Ok(v) => Some(v),
                        Err(_) => {
                            self.error(
                                "bundle.authorization_env",
                                format_args!("environment variable ${var} is not set"),
                            );
                            None
                        }
                    });
            BundleConfig {
                poll_interval: self.secs("bundle.poll_interval_secs", b.poll_interval_secs),
                timeout: self.secs("bundle.timeout_secs", b.timeout_secs),
                url: b.url,
                jitter: b.jitter,
                authorization,
            }
        });
        let store = f.store.map(|s| self.store(s));
        if store.is_some() && bundle.is_some() {
            self.error(
                "store.url",
                "a bundle server supplies the data document already; use [store] or [bundle], not both",
            );
        }
        let audit = self.audit(f.audit, &routes.profile);
        Config {
            audit,
            store,
            path: self.file.clone(),
            server,
            upstream,
            identity,
            policy,
            routes,
            rewrite,
            admin,
            log,
            bundle,
            notify,
        }
    }

    fn audit(&mut self, a: super::file::AuditFile, profile: &std::path::Path) -> AuditConfig {
        let wiki = match a.wiki.as_deref() {
            Some("confluence") => Some(WikiKind::Confluence),
            Some("mediawiki") => Some(WikiKind::MediaWiki),
            Some(other) => {
                self.error(
                    "audit.wiki",
                    format_args!("`{other}` is not `confluence` or `mediawiki`"),
                );
                None
            }
            None => {
                let stem = profile
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("")
                    .to_ascii_lowercase();
                if stem.contains("confluence") {
                    Some(WikiKind::Confluence)
                } else if stem.contains("mediawiki") {
                    Some(WikiKind::MediaWiki)
                } else {
                    None
                }
            }
        };
        if a.interval_secs.is_some() && wiki.is_none() {
            self.error(
                "audit.interval_secs",
                "needs audit.wiki (`confluence` or `mediawiki`): the route profile's name does not say",
            );
        }
        if a.service_user.as_deref().is_some_and(str::is_empty) {
            self.error("audit.service_user", "must not be empty");
        }
        AuditConfig {
            wiki,
            interval: a.interval_secs.map(|s| self.secs("audit.interval_secs", s)),
            service_user: a.service_user,
            timeout: self.secs("audit.timeout_secs", a.timeout_secs),
        }
    }

    fn store(&mut self, s: super::file::StoreFile) -> StoreConfig {
        let mut connection = match s.url.parse::<tokio_postgres::Config>() {
            Ok(c) => c,
            Err(e) => {
                self.error(
                    "store.url",
                    format_args!("not a PostgreSQL connection string ({e}); write postgres://user@host:5432/database"),
                );
                tokio_postgres::Config::new()
            }
        };
        if !(s.url.starts_with("postgres://") || s.url.starts_with("postgresql://")) {
            self.error(
                "store.url",
                "must be a postgres:// URL (the only store besides the data file)",
            );
        }
        let password = match (&s.password_env, &s.password_file) {
            (Some(_), Some(_)) => {
                self.error(
                    "store.password_env",
                    "set password_env or password_file, not both",
                );
                None
            }
            (Some(var), None) => Some(SecretSource::Env(var.clone())),
            (None, Some(file)) => Some(SecretSource::File(self.resolve(file))),
            (None, None) => None,
        };
        if let Some(source) = password {
            match source.read("store.password") {
                Ok(p) => {
                    connection.password(p);
                }
                Err(e) => self.error("store.password", e),
            }
        }
        if s.poll_interval_secs == 0 {
            self.error("store.poll_interval_secs", "must be at least 1");
        }
        let display = match s.url.find('@') {
            Some(at) => {
                let scheme_end = s.url.find("://").map_or(0, |i| i + 3);
                let user = &s.url[scheme_end..at];
                let user = user.split(':').next().unwrap_or("");
                format!("{}{user}{}", &s.url[..scheme_end], &s.url[at..])
            }
            None => s.url.clone(),
        };
        connection.connect_timeout(self.secs("store.timeout_secs", s.timeout_secs));
        StoreConfig {
            connection,
            display,
            ca_file: s.ca_file.as_deref().map(|f| self.resolve(f)),
            poll_interval: self.secs("store.poll_interval_secs", s.poll_interval_secs),
            timeout: self.secs("store.timeout_secs", s.timeout_secs),
        }
    }

    fn notify(&mut self, n: super::file::NotifyFile) -> NotifyConfig {
        let Some(url) = n.webhook_url else {
            return NotifyConfig { webhook: None };
        };
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.parse::<http::Uri>().is_err()
        {
            self.error(
                "notify.webhook_url",
                format_args!("`{url}` must be an http:// or https:// URL"),
            );
        }
        let authorization = n
            .authorization_env
            .as_ref()
            .and_then(|var| match std::env::var(var) {
                Ok(v) => Some(v),
                Err(_) => {
                    self.error(
                        "notify.authorization_env",
                        format_args!("environment variable ${var} is not set"),
                    );
                    None
                }
            });
        if n.max_attempts == 0 {
            self.error("notify.max_attempts", "must be at least 1");
        }
        if n.queue == 0 {
            self.error("notify.queue", "must be at least 1");
        }
        if n.initial_backoff_ms == 0 {
            self.error("notify.initial_backoff_ms", "must be greater than 0");
        }
        NotifyConfig {
            webhook: Some(WebhookConfig {
                url,
                authorization,
                timeout: self.secs("notify.timeout_secs", n.timeout_secs),
                max_attempts: n.max_attempts,
                initial_backoff: Duration::from_millis(n.initial_backoff_ms),
                max_backoff: self.secs("notify.max_backoff_secs", n.max_backoff_secs),
                queue: n.queue,
            }),
        }
    }

    fn server(&mut self, s: super::file::ServerFile) -> ServerConfig {
        let tls = match (s.tls_cert, s.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: self.resolve(&cert),
                key: self.resolve(&key),
            }),
            (None, None) => None,
            _ => {
                self.error(
                    "server.tls_cert",
                    "tls_cert and tls_key must be set together",
                );
                None
            }
        };
        if s.max_header_bytes < 1024 {
            self.error("server.max_header_bytes", "must be at least 1024");
        }
        if s.max_headers == 0 {
            self.error("server.max_headers", "must be greater than 0");
        }
        for (key, value) in [
            ("server.max_connections", s.max_connections),
            ("server.max_upstream_in_flight", s.max_upstream_in_flight),
            (
                "server.h2_max_pending_reset_streams",
                s.h2_max_pending_reset_streams,
            ),
        ] {
            if value == 0 {
                self.error(key, "must be greater than 0");
            }
        }
        // Semaphores count permits in u32; a larger value is a typo, not a plan.
        if s.max_connections > 1 << 20 {
            self.error("server.max_connections", "must be at most 1048576");
        }
        if !(1..=65535).contains(&s.listen_backlog) {
            self.error("server.listen_backlog", "must be between 1 and 65535");
        }
        if s.max_upstream_in_flight > 1 << 20 {
            self.error("server.max_upstream_in_flight", "must be at most 1048576");
        }
        if s.buffer_budget_bytes < 1024 * 1024 {
            self.error(
                "server.buffer_budget_bytes",
                "must be at least 1048576 (1 MiB)",
            );
        }
        if s.workers > 1024 {
            self.error("server.workers", "must be at most 1024 (0: one per CPU)");
        }
        let workers = match s.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        if s.h2_max_concurrent_streams == 0 {
            self.error("server.h2_max_concurrent_streams", "must be greater than 0");
        }
        let max_body_bytes = usize::try_from(s.max_body_bytes).unwrap_or_else(|_| {
            self.error(
                "server.max_body_bytes",
                "is larger than this platform can count",
            );
            usize::MAX
        });
        ServerConfig {
            listen: self.socket_addr("server.listen", &s.listen),
            tls,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            header_read_timeout: self.secs(
                "server.header_read_timeout_secs",
                s.header_read_timeout_secs,
            ),
            request_timeout: self.secs("server.request_timeout_secs", s.request_timeout_secs),
            shutdown_grace: Duration::from_secs(s.shutdown_grace_secs),
            drain: Duration::from_secs(s.drain_secs),
            send_timeout: self.secs("server.send_timeout_secs", s.send_timeout_secs),
            max_body_bytes,
            idle_timeout: self.secs("server.idle_timeout_secs", s.idle_timeout_secs),
            max_connections: s.max_connections,
            max_connections_per_client: s.max_connections_per_client,
            listen_backlog: s.listen_backlog,
            buffer_budget_bytes: usize::try_from(s.buffer_budget_bytes).unwrap_or(usize::MAX),
            h2_max_concurrent_streams: s.h2_max_concurrent_streams,
            h2_max_pending_reset_streams: s.h2_max_pending_reset_streams,
            max_upstream_in_flight: s.max_upstream_in_flight,
            retry_after: self.secs("server.retry_after_secs", s.retry_after_secs),
            trusted_proxies: s
                .trusted_proxies
                .iter()
                .filter_map(|p| {
                    p.parse::<ipnet::IpNet>()
                        .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            self.error(
                                "server.trusted_proxies",
                                format_args!("`{p}` is neither an IP address nor a CIDR block"),
                            )
                        })
                        .ok()
                })
                .collect(),
            workers,
        }
    }

    fn upstream(&mut self, u: super::file::UpstreamFile) -> UpstreamConfig {
        let mut scheme = http::uri::Scheme::HTTP;
        let mut authority = http::uri::Authority::from_static("127.0.0.1:8090");
        let mut base_path = String::new();
        match u.url.as_deref() {
            None => self.error("upstream.url", "is required"),
            Some(url) => match url.parse::<http::Uri>() {
                Ok(uri) => {
                    match uri.scheme_str() {
                        Some("http") | Some("https") => {
                            scheme = uri.scheme().cloned().unwrap_or(scheme)
                        }
                        _ => self.error(
                            "upstream.url",
                            format_args!("`{url}` must be http:// or https://"),
                        ),
                    }
                    match uri.authority() {
                        Some(a) if !a.as_str().contains('@') => authority = a.clone(),
                        _ => self.error(
                            "upstream.url",
                            format_args!("`{url}` needs a host and no user info"),
                        ),
                    }
                    if uri.query().is_some() {
                        self.error("upstream.url", "must not carry a query");
                    }
                    base_path = uri.path().trim_end_matches('/').to_string();
                }
                Err(e) => self.error("upstream.url", format_args!("`{url}` is not a URL ({e})")),
            },
        }
        let user_header = u
            .user_header
            .as_deref()
            .and_then(|h| self.header_name("upstream.user_header", h));
        if let Some(h) = &user_header
            && is_reserved_header(h)
        {
            self.error(
                "upstream.user_header",
                format_args!("`{h}` is a header the gateway manages itself"),
            );
        }
        UpstreamConfig {
            scheme,
            authority,
            base_path,
            connect_timeout: self.secs("upstream.connect_timeout_secs", u.connect_timeout_secs),
            ca_file: u.ca_file.as_deref().map(|p| self.resolve(p)),
            user_header,
            service_authorization_env: u.service_authorization_env,
            pass_authorization: u.pass_authorization,
        }
    }

    fn identity(&mut self, i: super::file::IdentityFile) -> IdentityConfig {
        let mut token_sources = Vec::new();
        for source in &i.token_sources {
            let parsed = if source == "authorization" {
                Some(TokenSource::Authorization)
            } else if let Some(name) = source.strip_prefix("cookie:") {
                if name.is_empty() || name.contains([';', '=', ' ']) {
                    None
                } else {
                    Some(TokenSource::Cookie(name.to_string()))
                }
            } else if let Some(name) = source.strip_prefix("header:") {
                HeaderName::from_bytes(name.as_bytes())
                    .ok()
                    .map(TokenSource::Header)
            } else {
                None
            };
            match parsed {
                Some(s) => token_sources.push(s),
                None => self.error(
                    "identity.token_sources",
                    format_args!(
                        "`{source}` is not one of `authorization`, `cookie:NAME`, `header:NAME`"
                    ),
                ),
            }
        }
        if token_sources.is_empty() {
            self.error("identity.token_sources", "needs at least one source");
        }
        if i.jwks_url.is_some() && i.discovery {
            self.error(
                "identity.discovery",
                "set either jwks_url or discovery, not both",
            );
        }
        if i.discovery && i.issuer.is_none() {
            self.error(
                "identity.discovery",
                "needs identity.issuer (the discovery base URL)",
            );
        }
        let anonymous = match i.anonymous.as_str() {
            "deny" => AnonymousMode::Deny,
            "policy" => AnonymousMode::Policy,
            other => {
                self.error(
                    "identity.anonymous",
                    format_args!("`{other}` is not `deny` or `policy`"),
                );
                AnonymousMode::Deny
            }
        };
        let unknown_users = match i.unknown_users.as_str() {
            "deny" => UnknownUsers::Deny,
            "guest" => UnknownUsers::Guest,
            other => {
                self.error(
                    "identity.unknown_users",
                    format_args!("`{other}` is not `deny` or `guest`"),
                );
                UnknownUsers::Deny
            }
        };
        if i.user_claim.is_empty() {
            self.error("identity.user_claim", "must not be empty");
        }
        if i.groups_claim.is_empty() {
            self.error("identity.groups_claim", "must not be empty");
        }
        if i.hs256_secret_env.is_some() && i.hs256_secret_file.is_some() {
            self.error(
                "identity.hs256_secret_file",
                "set either hs256_secret_env or hs256_secret_file, not both",
            );
        }
        let oidc = i.oidc.map(|o| self.oidc(o));
        // The browser client's ID tokens carry its client id as audience and end up in URLs
        // (logout's `id_token_hint`): they must never pass as bearer tokens too.
        if let (Some(audience), Some(o)) = (&i.audience, &oidc)
            && *audience == o.client_id
        {
            self.error(
                "identity.audience",
                format_args!(
                    "`{audience}` is also identity.oidc.client_id: the sign-in client's ID tokens would be accepted as bearer tokens; use the API's own audience"
                ),
            );
        }
        IdentityConfig {
            oidc,
            token_sources,
            issuer: i.issuer,
            audience: i.audience,
            hs256_secret_env: i.hs256_secret_env,
            hs256_secret_file: i.hs256_secret_file.as_deref().map(|p| self.resolve(p)),
            jwks_file: i.jwks_file.as_deref().map(|p| self.resolve(p)),
            jwks_url: i.jwks_url,
            discovery: i.discovery,
            jwks_refresh: self.secs("identity.jwks_refresh_secs", i.jwks_refresh_secs),
            jwks_min_refetch: Duration::from_secs(i.jwks_min_refetch_secs),
            leeway_secs: i.leeway_secs,
            user_claim: i.user_claim,
            groups_claim: i.groups_claim,
            anonymous,
            unknown_users,
            token_cache_max_entries: i.token_cache_max_entries,
        }
    }

    fn secret_source(
        &mut self,
        key: &str,
        env: Option<String>,
        file: Option<String>,
    ) -> SecretSource {
        match (env, file) {
            (Some(var), None) => SecretSource::Env(var),
            (None, Some(path)) => SecretSource::File(self.resolve(&path)),
            (Some(var), Some(_)) => {
                self.error(key, "set either the _env or the _file key, not both");
                SecretSource::Env(var)
            }
            (None, None) => {
                self.error(key, "is required (as an _env or a _file key)");
                SecretSource::Env(String::new())
            }
        }
    }

    fn oidc(&mut self, o: super::file::OidcFile) -> OidcConfig {
        match o.issuer.parse::<http::Uri>() {
            Ok(uri) => {
                let loopback = uri.host().is_some_and(is_loopback_host);
                match uri.scheme_str() {
                    Some("https") => {}
                    // Codes, tokens and the client secret would cross the network in clear:
                    // only a provider on this machine, or an explicit opt-in, may use http.
                    Some("http") if loopback || o.allow_http_issuer => {}
                    Some("http") => self.error(
                        "identity.oidc.issuer",
                        format_args!(
                            "`{}` is http: use https, or set allow_http_issuer = true",
                            o.issuer
                        ),
                    ),
                    _ => self.error(
                        "identity.oidc.issuer",
                        format_args!("`{}` must be an https:// URL", o.issuer),
                    ),
                }
                if uri.host().is_none() || uri.query().is_some() {
                    self.error(
                        "identity.oidc.issuer",
                        format_args!("`{}` needs a host and no query", o.issuer),
                    );
                }
            }
            Err(e) => self.error(
                "identity.oidc.issuer",
                format_args!("`{}` is not a URL ({e})", o.issuer),
            ),
        }
        if o.client_id.is_empty() {
            self.error("identity.oidc.client_id", "must not be empty");
        }
        let client_secret = self.secret_source(
            "identity.oidc.client_secret",
            o.client_secret_env,
            o.client_secret_file,
        );
        let session_keys = self.secret_source(
            "identity.oidc.session_keys",
            o.session_keys_env,
            o.session_keys_file,
        );
        if !o.scopes.iter().any(|s| s == "openid") {
            self.error("identity.oidc.scopes", "must include `openid`");
        }
        if let Some(bad) = o
            .scopes
            .iter()
            .find(|s| s.is_empty() || s.chars().any(|c| c == ' ' || c.is_control()))
        {
            self.error(
                "identity.oidc.scopes",
                format_args!("`{bad}` is not a scope token"),
            );
        }
        let reserved = [
            gateway_paths::LOGIN,
            gateway_paths::LOGOUT,
            gateway_paths::SIGNED_OUT,
        ];
        let path_ok = o.redirect_path.starts_with(gateway_paths::PREFIX)
            && o.redirect_path.len() > gateway_paths::PREFIX.len()
            && crate::http::canonical::canonicalize(&o.redirect_path)
                .ok()
                .as_deref()
                == Some(o.redirect_path.as_str())
            && !reserved.contains(&o.redirect_path.as_str());
        if !path_ok {
            self.error(
                "identity.oidc.redirect_path",
                format_args!(
                    "`{}` must be a canonical path under /_guestgate/ other than login, logout and signed-out",
                    o.redirect_path
                ),
            );
        }
        let external_url = o.external_url.map(|url| {
            let ok = url
                .parse::<http::Uri>()
                .ok()
                .filter(|u| matches!(u.scheme_str(), Some("http" | "https")))
                .filter(|u| u.authority().is_some_and(|a| !a.as_str().contains('@')))
                .filter(|u| matches!(u.path(), "" | "/") && u.query().is_none());
            if ok.is_none() {
                self.error(
                    "identity.oidc.external_url",
                    format_args!("`{url}` must be an origin such as https://wiki.example.com"),
                );
            }
            url.trim_end_matches('/').to_string()
        });
        let client_auth = match o.client_auth.as_str() {
            "client_secret_basic" => ClientAuth::Basic,
            "client_secret_post" => ClientAuth::Post,
            other => {
                self.error(
                    "identity.oidc.client_auth",
                    format_args!("`{other}` is not `client_secret_basic` or `client_secret_post`"),
                );
                ClientAuth::Basic
            }
        };
        let session_lifetime = self.secs(
            "identity.oidc.session_lifetime_secs",
            o.session_lifetime_secs,
        );
        let state_ttl = self.secs("identity.oidc.state_ttl_secs", o.state_ttl_secs);
        OidcConfig {
            issuer: o.issuer,
            client_id: o.client_id,
            client_secret,
            scopes: o.scopes,
            redirect_path: o.redirect_path,
            external_url,
            session_keys,
            session_lifetime,
            refresh_before: Duration::from_secs(o.refresh_before_secs),
            state_ttl,
            userinfo_groups: o.userinfo_groups,
            allow_missing_groups: o.allow_missing_groups,
            client_auth,
        }
    }

    fn policy(&mut self, p: super::file::PolicyFile) -> PolicyConfig {
        for (key, query) in [
            ("policy.query", &p.query),
            ("policy.listing_query", &p.listing_query),
        ] {
            if !is_rule_path(query) {
                self.error(
                    key,
                    format_args!("`{query}` is not a rule path like `data.guestgate.decision`"),
                );
            }
        }
        if p.eval_timeout_ms == 0 {
            self.error("policy.eval_timeout_ms", "must be greater than 0");
        }
        PolicyConfig {
            dir: self.resolve(&p.dir),
            data: self.resolve(&p.data),
            query: p.query,
            decision_cache_ttl: Duration::from_secs(p.decision_cache_ttl_secs),
            decision_cache_max_entries: p.decision_cache_max_entries,
            eval_timeout: Duration::from_millis(p.eval_timeout_ms),
            listing_query: p.listing_query,
            dry_run: p.dry_run,
            watch: p.watch,
        }
    }

    fn log(&mut self, l: super::file::LogFile) -> LogConfig {
        let format = match l.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                self.error(
                    "log.format",
                    format_args!("`{other}` is not `text` or `json`"),
                );
                LogFormat::Text
            }
        };
        let decisions = match l.decisions.as_str() {
            "off" => DecisionLogTarget::Off,
            "stderr" => DecisionLogTarget::Stderr,
            "" => {
                self.error("log.decisions", "must be `off`, `stderr` or a file path");
                DecisionLogTarget::Off
            }
            path => DecisionLogTarget::File(self.resolve(path)),
        };
        LogConfig { format, decisions }
    }
}

fn is_rule_path(query: &str) -> bool {
    query.strip_prefix("data.").is_some_and(|rest| {
        !rest.is_empty()
            && rest.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
    })
}

/// `localhost`, 127.0.0.0/8 or ::1.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Headers the gateway sets itself towards the upstream; a client (or an operator's
/// `user_header`) must never be able to choose their value.
pub(crate) fn is_reserved_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    n.starts_with("x-guestgate-")
        || matches!(
            n,
            "host"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "authorization"
                | "cookie"
        )
}

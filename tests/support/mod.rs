//! Test support: a recording upstream on loopback, a real gateway on port 0 in front of it,
//! and token minting. Everything binds to 127.0.0.1 port 0.
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use guestgate::config::Config;
use guestgate::gateway::Gateway;
use guestgate::server::{self, Running};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "wiki";

pub type UpBody = BoxBody<Bytes, Infallible>;
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<UpBody>> + Send>>
        + Send
        + Sync,
>;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A wiki stand-in on loopback that records every request it receives.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub lookups: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests that came from clients through the gateway (not the gateway's own lookups).
    pub fn forwarded(&self) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.headers.contains_key("x-guestgate-guest"))
            .collect()
    }

    pub fn lookup_count(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

pub fn full(body: impl Into<Bytes>) -> UpBody {
    Full::new(body.into()).boxed()
}

pub fn json_response(status: StatusCode, body: serde_json::Value) -> Response<UpBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

/// Space of a content id in the stand-in wiki: 1xx ENG, 2xx HR, 3xx DOCS; 404 otherwise,
/// and 998 fails with 500.
pub fn space_of(id: u64) -> Option<&'static str> {
    match id {
        100..=199 => Some("ENG"),
        200..=299 => Some("HR"),
        300..=399 => Some("DOCS"),
        _ => None,
    }
}

/// The default wiki: content lookups answer like Confluence's REST API (slowly enough that
/// concurrent lookups overlap), `/slow` sleeps, everything else echoes what it saw.
pub fn default_handler() -> Handler {
    Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let path = req.uri().path().to_string();
            if path == "/slow" {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            if let Some(id) = path.strip_prefix("/rest/api/content/")
                && req.uri().query() == Some("expand=space")
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let id: u64 = id.parse().unwrap_or(0);
                if id == 998 {
                    return json_response(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({}));
                }
                return match space_of(id) {
                    Some(space) => json_response(
                        StatusCode::OK,
                        serde_json::json!({"id": id.to_string(), "type": "page",
                            "space": {"key": space, "name": space, "type": "global"}}),
                    ),
                    None => json_response(
                        StatusCode::NOT_FOUND,
                        serde_json::json!({"statusCode": 404, "message": "No content found"}),
                    ),
                };
            }
            let user = req
                .headers()
                .get("x-guestgate-user")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            json_response(
                StatusCode::OK,
                serde_json::json!({"ok": true, "path": path, "user": user, "body_bytes": body}),
            )
        })
    })
}

pub async fn start_upstream() -> Upstream {
    start_upstream_with(default_handler()).await
}

pub async fn start_upstream_with(handler: Handler) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let lookups = Arc::new(AtomicUsize::new(0));
    let (seen2, lookups2) = (seen.clone(), lookups.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (seen, lookups, handler) = (seen2.clone(), lookups2.clone(), handler.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (seen, lookups, handler) = (seen.clone(), lookups.clone(), handler.clone());
                    async move {
                        if !req.headers().contains_key("x-guestgate-guest") {
                            lookups.fetch_add(1, Ordering::SeqCst);
                        }
                        seen.lock().unwrap().push(Seen {
                            method: req.method().to_string(),
                            uri: req.uri().to_string(),
                            headers: req.headers().clone(),
                        });
                        Ok::<_, Infallible>(handler(req).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream {
        addr,
        seen,
        lookups,
    }
}

/// The data document the tests run with.
pub const TEST_DATA: &str = r#"{
  "groups": {
    "confluence-users": {"guest": false},
    "acme-guests": {"guest": true},
    "partner-guests": {"guest": true}
  },
  "users": {
    "alice": {"groups": ["confluence-users"], "display_name": "Alice Adams"},
    "gary": {"groups": ["acme-guests"], "display_name": "Gary Guest"},
    "gina": {"groups": ["partner-guests"], "display_name": "Gina Partner"}
  },
  "spaces": {
    "ENG": {"guests": {"groups": {"acme-guests": ["view", "comment"]},
                       "users": {"gina": ["view", "edit"]}}},
    "DOCS": {"guests": {"groups": {"partner-guests": ["view"]}}}
  }
}"#;

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// What a test gateway is configured with.
pub struct TestConfig {
    pub upstream_url: String,
    pub data: String,
    pub server_extra: String,
    pub upstream_extra: String,
    pub identity_extra: String,
    pub policy_extra: String,
    pub rewrite_extra: String,
    pub log_decisions: String,
    /// Extra top-level TOML (for example a `[bundle]` section).
    pub extra_sections: String,
    pub policy_dir: PathBuf,
    pub tls: bool,
}

impl TestConfig {
    pub fn new(upstream_url: &str) -> TestConfig {
        TestConfig {
            upstream_url: upstream_url.to_string(),
            data: TEST_DATA.to_string(),
            server_extra: String::new(),
            upstream_extra: String::new(),
            identity_extra: String::new(),
            policy_extra: String::new(),
            rewrite_extra: String::new(),
            log_decisions: "off".into(),
            extra_sections: String::new(),
            policy_dir: repo_path("policies"),
            tls: false,
        }
    }
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub running: Running,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub fn write_config(dir: &Path, c: &TestConfig) -> PathBuf {
    std::fs::write(dir.join("data.json"), &c.data).unwrap();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let tls = if c.tls {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n"
    } else {
        ""
    };
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
request_timeout_secs = 1
shutdown_grace_secs = 1
{tls}{server_extra}

[upstream]
url = "{upstream}"
connect_timeout_secs = 1
{upstream_extra}

[identity]
hs256_secret_file = "secret"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
leeway_secs = 0
{identity_extra}

[policy]
dir = "{policy_dir}"
data = "data.json"
{policy_extra}

[routes]
profile = "{profile}"

[rewrite]
{rewrite_extra}

[admin]
listen = "127.0.0.1:0"

[log]
decisions = "{decisions}"

{extra_sections}
"#,
        upstream = c.upstream_url,
        server_extra = c.server_extra,
        upstream_extra = c.upstream_extra,
        identity_extra = c.identity_extra,
        policy_extra = c.policy_extra,
        rewrite_extra = c.rewrite_extra,
        policy_dir = c.policy_dir.display(),
        profile = repo_path("config/routes/confluence.toml").display(),
        decisions = c.log_decisions,
        extra_sections = c.extra_sections,
    );
    let path = dir.join("guestgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub async fn start_gateway(c: TestConfig) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &c);
    start_gateway_in(dir, &path).await
}

/// Starts a gateway on a config already written into `dir` (for tests that prepare more
/// files, such as a JWKS, or edit the generated config first).
pub async fn start_gateway_in(dir: tempfile::TempDir, config_path: &Path) -> TestGateway {
    let config = Config::load(config_path).unwrap_or_else(|e| panic!("config: {e}"));
    let gateway = Arc::new(Gateway::new(config).unwrap_or_else(|e| panic!("gateway: {e}")));
    let running = server::start(gateway.clone()).await.unwrap();
    TestGateway {
        addr: running.proxy_addr,
        admin: running.admin_addr,
        gateway,
        running,
        dir,
    }
}

/// An asymmetric signing key with its public JWK.
pub struct TestKey {
    pub enc: jsonwebtoken::EncodingKey,
    pub jwk: serde_json::Value,
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh P-256 key for ES256, named `kid`.
pub fn ec_key(kid: &str) -> TestKey {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = key.public_key_raw();
    assert_eq!(raw.len(), 65);
    let pem = key.serialize_pem();
    TestKey {
        enc: jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        jwk: serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65]),
        }),
    }
}

/// A fresh Ed25519 key for EdDSA, named `kid`.
pub fn ed_key(kid: &str) -> TestKey {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let pem = key.serialize_pem();
    TestKey {
        enc: jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
        jwk: serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
            "x": b64url(key.public_key_raw()),
        }),
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a valid token for `user` with `groups`.
pub fn claims(user: &str, groups: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "sub": format!("id-{user}"),
        "preferred_username": user,
        "groups": groups,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 600,
    })
}

pub fn sign_hs256(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn token(user: &str, groups: &[&str]) -> String {
    sign_hs256(&claims(user, groups))
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn send(req: Request<Full<Bytes>>) -> Answer {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
        version,
    }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    request("GET", url, headers, "").await
}

pub async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut builder = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    send(
        builder
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap(),
    )
    .await
}

/// Sends raw bytes over a fresh connection and returns what came back (until close or 2 s).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// ---- a real OpenID Provider (tests/oidc/provider.js, npm `oidc-provider`) -------------

/// The test IdP's client secret (provider.js's default).
pub const OIDC_CLIENT_SECRET: &str = "test-client-secret";
/// The session key the OIDC test gateways seal with (base64 of 32 bytes of 7).
pub const SESSION_KEY_B64: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// The folder of the test IdP's node project.
pub fn oidc_dir() -> PathBuf {
    repo_path("tests/oidc")
}

static NODE_MODULES: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();

/// Makes sure `tests/oidc/node_modules` is installed (`npm ci`, once per test binary).
/// `Err` says why it cannot be; the callers skip with that message. CI installs them
/// first (`.ci/run`), so there this never skips.
pub fn node_modules() -> Result<(), String> {
    NODE_MODULES
        .get_or_init(|| {
            let dir = oidc_dir();
            let ready = || {
                dir.join("node_modules/oidc-provider/package.json").exists()
                    && dir
                        .join("node_modules/playwright-core/package.json")
                        .exists()
            };
            if ready() {
                return Ok(());
            }
            let out = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .output()
                .map_err(|e| format!("cannot run npm: {e}"))?;
            if !out.status.success() || !ready() {
                return Err(format!(
                    "`npm ci` in tests/oidc failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                ));
            }
            Ok(())
        })
        .clone()
}

/// Skips the calling test (returns from it) when the IdP's node modules cannot be installed.
#[macro_export]
macro_rules! need_node_modules {
    () => {
        if let Err(why) = support::node_modules() {
            // CI installs it and sets GUESTGATE_REQUIRE_OIDC=1: there a skip is a failure.
            assert!(
                std::env::var_os("GUESTGATE_REQUIRE_OIDC").is_none(),
                "the test OpenID Provider cannot be installed: {why}"
            );
            eprintln!("SKIPPED: the test OpenID Provider cannot be installed: {why}");
            return;
        }
    };
}

/// A running test IdP; the process ends when this is dropped (or when the tests end: it
/// exits when its stdin closes).
pub struct Idp {
    pub issuer: String,
    child: std::process::Child,
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Idp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// Counters kept by provider.js: jwks, token, refresh, userinfo; and the current kid.
    pub async fn stats(&self) -> serde_json::Value {
        get(&self.url("/__test/stats"), &[]).await.json()
    }

    /// Replaces the provider's signing key; returns the new kid.
    pub async fn rotate_key(&self) -> String {
        let a = request("POST", &self.url("/__test/rotate"), &[], "").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        a.json()["kid"].as_str().unwrap().to_string()
    }
}

/// Starts `node provider.js` on an ephemeral loopback port with extra environment.
///
/// node has been seen to hang for good while it starts (main thread in a futex wait, no
/// CPU; once in many runs): a provider that has not said where it listens within
/// `IDP_START_TIMEOUT` is killed and started again, up to three tries.
pub fn start_idp(env: &[(&str, &str)]) -> Idp {
    const IDP_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
    for attempt in 1..=3 {
        match try_start_idp(env, IDP_START_TIMEOUT) {
            Ok(idp) => return idp,
            Err(why) => eprintln!("provider.js attempt {attempt}: {why}"),
        }
    }
    panic!("provider.js did not start in three attempts");
}

fn try_start_idp(env: &[(&str, &str)], timeout: std::time::Duration) -> Result<Idp, String> {
    use std::io::BufRead as _;
    let mut cmd = std::process::Command::new("node");
    cmd.arg("provider.js")
        .current_dir(oidc_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(if std::env::var_os("GUESTGATE_IDP_LOG").is_some() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        });
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .expect("node must be installed to run the OIDC tests");
    let stdout = child.stdout.take().unwrap();
    let (first_line, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = first_line.send(line);
        // The provider prints notices on stdout later on; a closed pipe would kill it.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let line = match ready.recv_timeout(timeout) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no address within {timeout:?}"));
        }
    };
    let issuer = serde_json::from_str::<serde_json::Value>(&line)
        .ok()
        .and_then(|v| v["issuer"].as_str().map(str::to_string));
    match issuer {
        Some(issuer) => Ok(Idp { issuer, child }),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("unexpected first line {line:?}"))
        }
    }
}

/// The `[identity.oidc]` section for a gateway in front of `issuer`, plus `extra` keys.
pub fn oidc_section(issuer: &str, extra: &str) -> String {
    format!(
        r#"
[identity.oidc]
issuer = "{issuer}"
client_id = "guestgate"
client_secret_file = "client_secret"
session_keys_file = "session_keys"
scopes = ["openid", "profile", "email", "groups", "offline_access"]
{extra}
"#
    )
}

/// A gateway whose browsers sign in at `issuer` (keys refetched at once on an unknown kid).
pub async fn start_oidc_gateway(c: TestConfig, issuer: &str, oidc_extra: &str) -> TestGateway {
    let mut c = c;
    c.identity_extra.push_str("\njwks_min_refetch_secs = 0\n");
    c.extra_sections.push_str(&oidc_section(issuer, oidc_extra));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client_secret"), OIDC_CLIENT_SECRET).unwrap();
    std::fs::write(dir.path().join("session_keys"), SESSION_KEY_B64).unwrap();
    let path = write_config(dir.path(), &c);
    start_gateway_in(dir, &path).await
}

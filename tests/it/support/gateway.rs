//! The real gateway on port 0: its config written to a temporary folder, started in-process.

use super::*;

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

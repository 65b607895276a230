//! A real OpenID Provider (tests/oidc/provider.js, npm `oidc-provider`) for the sign-in tests.

use super::*;

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

/// Makes sure `tests/oidc/node_modules` is installed (with `GUESTGATE_TEST_INSTALL=1`:
/// `npm ci`, once per test binary).
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
            // Tests install nothing unless asked: `.ci/run` runs `npm ci` first.
            if std::env::var_os("GUESTGATE_TEST_INSTALL").is_none() {
                return Err(
                    "tests/oidc/node_modules is missing: run `npm ci` in tests/oidc, or set GUESTGATE_TEST_INSTALL=1"
                        .to_string(),
                );
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
        if let Err(why) = $crate::support::node_modules() {
            $crate::support::skip(
                "GUESTGATE_REQUIRE_OIDC",
                module_path!(),
                &format!("the test OpenID Provider cannot be installed: {why}"),
            );
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

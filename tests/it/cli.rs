//! The command line, run as the real binary.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use crate::support::*;

fn guestgate(args: &[&str]) -> (i32, String, String) {
    run_guestgate(args, &[("GUESTGATE_HS256_SECRET", Some(SECRET))])
}

fn shipped() -> String {
    repo_path("config/guestgate.toml").display().to_string()
}

#[test]
fn check_passes_on_the_shipped_config() {
    let (code, out, err) = guestgate(&["check", "--config", &shipped()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("tests:"), "{out}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
}

#[test]
fn test_prints_the_tally() {
    let (code, out, _) = guestgate(&["test", "--config", &shipped()]);
    assert_eq!(code, 0);
    let last = out.lines().last().unwrap();
    let passed: usize = last.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 20, "{last}");
    assert!(last.ends_with(" passed, 0 failed"), "{last}");
}

#[test]
fn failing_policy_tests_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestConfig::new("http://127.0.0.1:9");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::copy(
        repo_path("policies/guestgate/authz.rego"),
        policies.join("authz.rego"),
    )
    .unwrap();
    std::fs::write(
        policies.join("extra_test.rego"),
        "package extra_test\nimport rego.v1\ntest_ok if true\ntest_fails if false\ntest_undefined if data.nothing.here\n",
    )
    .unwrap();
    let c = TestConfig {
        policy_dir: policies,
        ..c
    };
    let path = write_config(dir.path(), &c);
    let (code, out, _) = guestgate(&["test", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL data.extra_test.test_fails"), "{out}");
    assert!(out.contains("FAIL data.extra_test.test_undefined"), "{out}");
    assert!(out.trim_end().ends_with("1 passed, 2 failed"), "{out}");
}

#[test]
fn invalid_config_exits_2_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[upstream]\nurl = \"http://127.0.0.1:8090\"\n\n[server]\nlisten = \"127.0.0.1:8080\"\nlisen = 1\n").unwrap();
    let (code, _, err) = guestgate(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("line 6"), "{err}");
    assert!(err.contains("lisen"), "{err}");

    std::fs::write(&path, "[server]\nlisten = \"nowhere\"\n").unwrap();
    let (code, _, err) = guestgate(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("upstream.url: is required"), "{err}");
    assert!(
        err.contains("server.listen: `nowhere` is not an address:port"),
        "{err}"
    );

    std::fs::write(
        &path,
        "[upstream]\nurl = \"http://127.0.0.1:8090\"\n[server]\nworkers = 5000\nlisten_backlog = 0\n",
    )
    .unwrap();
    let (code, _, err) = guestgate(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("server.workers: must be at most 1024"),
        "{err}"
    );
    assert!(
        err.contains("server.listen_backlog: must be between 1 and 65535"),
        "{err}"
    );

    let (code, _, err) = guestgate(&["check", "--config", "/nonexistent/guestgate.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/guestgate.toml"), "{err}");
}

#[test]
fn invalid_policy_and_data_are_reported_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("broken.rego"),
        "package guestgate\nimport rego.v1\n\ndecision := {\"allow\": true if {\n",
    )
    .unwrap();
    let c = TestConfig {
        policy_dir: policies,
        ..TestConfig::new("http://127.0.0.1:9")
    };
    let path = write_config(dir.path(), &c);
    let (code, _, err) = guestgate(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("broken.rego:4:"), "{err}");

    let c = TestConfig {
        data: r#"{"groups": {"g": {"guest": true}}, "spaces": {"ENG": {"guests": {"groups": {"g": ["view", "admin"]}}}}}"#.into(),
        ..TestConfig::new("http://127.0.0.1:9")
    };
    let path = write_config(dir.path(), &c);
    let (code, _, err) = guestgate(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("spaces.ENG.guests.groups.g: `admin` can never be granted to guests"),
        "{err}"
    );
}

#[test]
fn eval_prints_route_user_decision_and_revision() {
    let (code, out, err) = guestgate(&[
        "eval",
        "--config",
        &shipped(),
        "--url",
        "/display/ENG/Home",
        "--user",
        "gary",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["route"]["family"], "space");
    assert_eq!(v["route"]["space"], "ENG");
    assert_eq!(v["user"]["name"], "gary");
    assert_eq!(v["user"]["groups"], serde_json::json!(["acme-guests"]));
    assert_eq!(v["decision"]["allow"], true);
    assert_eq!(v["decision"]["guest"], true);
    assert!(v["revision"].as_str().unwrap().len() >= 8);

    let (_, out, _) = guestgate(&[
        "eval",
        "--config",
        &shipped(),
        "--method",
        "POST",
        "--url",
        "http://wiki/display/ENG/Home",
        "--user",
        "gary",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"]["reason"], "missing_permission_edit");

    let (_, out, _) = guestgate(&["eval", "--config", &shipped(), "--url", "/display/ENG/Home"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"]["status"], 401);

    let (_, out, _) = guestgate(&[
        "eval",
        "--config",
        &shipped(),
        "--url",
        "/a%2fb",
        "--user",
        "gary",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"]["reason"], "encoded_slash");
}

#[test]
fn token_mints_a_token_the_gateway_accepts() {
    let (code, out, _) = guestgate(&[
        "token",
        "--config",
        &shipped(),
        "--sub",
        "gary",
        "--groups",
        "acme-guests",
        "--ttl",
        "60",
    ]);
    assert_eq!(code, 0);
    let token = out.trim();
    let (_, out, _) = guestgate(&[
        "eval",
        "--config",
        &shipped(),
        "--url",
        "/display/ENG/Home",
        "--token",
        token,
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["user"]["name"], "gary");
    assert_eq!(v["decision"]["allow"], true);
}

#[test]
fn bad_usage_exits_2() {
    let (code, _, _) = guestgate(&["frobnicate"]);
    assert_eq!(code, 2);
    let (code, _, _) = guestgate(&["eval", "--config", &shipped()]);
    assert_eq!(code, 2, "--url is required");
}

#[test]
fn serve_drains_then_stops_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestConfig::new("http://127.0.0.1:9");
    c.server_extra = "drain_secs = 2\n".into();
    let path = write_config(dir.path(), &c);
    let mut child = Command::new(env!("CARGO_BIN_EXE_guestgate"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Whatever happens below, the server must not outlive the test.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let pid = child.id();
    let mut child = KillOnDrop(child);
    let mut lines = BufReader::new(stderr).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("guestgate listening"))
        .expect("serve logs its addresses");
    let addr = |name: &str| {
        listening
            .split(&format!("{name}="))
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let (proxy, admin) = (addr("proxy"), addr("admin"));
    // It serves without transparent huge pages (src/main.rs): the kernel reports the
    // process's opt-out in /proc (Linux 5.0 and later).
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(
            status
                .lines()
                .any(|line| line.split_whitespace().eq(["THP_enabled:", "0"])),
            "no `THP_enabled: 0` (a kernel before 5.0 does not report it):\n{status}"
        );
    }
    // One HTTP/1.1 exchange on a fresh connection: the status line and the headers.
    let head = |at: &str, target: &str| -> String {
        let mut s = std::net::TcpStream::connect(at).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).to_lowercase()
    };
    assert!(head(&admin, "/readyz").starts_with("http/1.1 200"));
    assert!(!head(&proxy, "/display/ENG/Home").contains("connection: close"));
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Draining: not ready, still answering, each answer closing its connection.
    let ready = head(&admin, "/readyz");
    assert!(
        ready.starts_with("http/1.1 503") && ready.contains("draining"),
        "{ready}"
    );
    let answer = head(&proxy, "/display/ENG/Home");
    assert!(answer.starts_with("http/1.1 401"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Reads one HTTP/1.1 response (`Content-Length` framed); `None` when the connection ended
/// before a whole one arrived. Returns whether it closes the connection.
fn read_response(s: &mut std::net::TcpStream) -> Option<bool> {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return Some(head.contains("connection: close"));
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// SIGTERM under keep-alive load: every request a client sent is answered — during the
/// drain window each answer says `Connection: close`, so clients stop reusing connections
/// before the listener closes — and the process exits 0. The clients act as a load
/// balancer's connections would: they open new connections until one second into the
/// two-second drain (the balancer has seen `/readyz` 503 by then), not after — a
/// connection opened as the listener closes is reset by the kernel, with any server.
#[test]
fn sigterm_under_keep_alive_load_leaves_no_request_unanswered() {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let up = runtime.block_on(start_upstream());
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestConfig::new(&up.url());
    c.server_extra = "drain_secs = 2\n".into();
    let path = write_config(dir.path(), &c);
    let child = Command::new(env!("CARGO_BIN_EXE_guestgate"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
        }
    }
    let mut child = KillOnDrop(child);
    let stderr = child.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("guestgate listening"))
        .expect("serve logs its addresses");
    // Keep reading the log, so the server never writes to a closed pipe.
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let proxy = listening
        .split("proxy=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let token = token("alice", &[]);
    let request = format!(
        "GET /display/ENG/Home HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let answered = std::sync::Arc::new(AtomicUsize::new(0));
    let unanswered = std::sync::Arc::new(AtomicUsize::new(0));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let taken_out = std::sync::Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (proxy, request) = (proxy.clone(), request.clone());
            let (answered, unanswered) = (answered.clone(), unanswered.clone());
            let (stop, taken_out) = (stop.clone(), taken_out.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && !taken_out.load(Ordering::Relaxed) {
                    // Refused: the listener is closed, nothing was sent.
                    let Ok(mut s) = std::net::TcpStream::connect(&proxy) else {
                        return;
                    };
                    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                        .unwrap();
                    loop {
                        if s.write_all(request.as_bytes()).is_err() {
                            unanswered.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        match read_response(&mut s) {
                            Some(closes) => {
                                answered.fetch_add(1, Ordering::Relaxed);
                                if closes {
                                    break;
                                }
                            }
                            None => {
                                unanswered.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = answered.load(Ordering::Relaxed);
    assert!(before > 0, "the clients are being served");
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let at_removal = answered.load(Ordering::Relaxed);
    taken_out.store(true, Ordering::Relaxed);
    let status = child.0.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let log = log.join().unwrap();
    assert_eq!(status.code(), Some(0), "{log:#?}");
    assert!(at_removal > before, "served while draining");
    assert_eq!(
        unanswered.load(Ordering::Relaxed),
        0,
        "{} requests answered, some sent and never answered",
        answered.load(Ordering::Relaxed)
    );
    drop(up);
}

#[test]
fn check_validates_browser_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestConfig::new("http://127.0.0.1:9");
    c.extra_sections = r#"
[identity.oidc]
issuer = "http://idp.example.com"
client_id = ""
client_secret_env = "GUESTGATE_TEST_NOT_SET"
client_secret_file = "client_secret"
scopes = ["profile"]
redirect_path = "/callback"
external_url = "https://wiki.example.com/sub"
"#
    .into();
    let path = write_config(dir.path(), &c);
    let (code, _, err) = guestgate(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    for expected in [
        "identity.oidc.issuer: `http://idp.example.com` is http: use https, or set allow_http_issuer = true",
        "identity.oidc.client_id: must not be empty",
        "identity.oidc.client_secret: set either the _env or the _file key, not both",
        "identity.oidc.session_keys: is required",
        "identity.oidc.scopes: must include `openid`",
        "identity.oidc.redirect_path: `/callback` must be a canonical path under /_guestgate/",
        "identity.oidc.external_url: `https://wiki.example.com/sub` must be an origin",
    ] {
        assert!(err.contains(expected), "{expected}\n{err}");
    }

    let good = |keys: &str| {
        std::fs::write(dir.path().join("client_secret"), "s3cret").unwrap();
        std::fs::write(dir.path().join("session_keys"), keys).unwrap();
        let mut c = TestConfig::new("http://127.0.0.1:9");
        c.extra_sections = r#"
[identity.oidc]
issuer = "http://127.0.0.1:5556/realms/wiki"
client_id = "guestgate"
client_secret_file = "client_secret"
session_keys_file = "session_keys"
"#
        .into();
        write_config(dir.path(), &c)
    };
    let path = good(&format!("{SESSION_KEY_B64}\n{SESSION_KEY_B64}\n"));
    let (code, out, err) = guestgate(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("sign-in:  OpenID Connect at http://127.0.0.1:5556/realms/wiki as client guestgate (2 session keys)"),
        "{out}"
    );
    let path = good("dG9vIHNob3J0");
    let (code, _, err) = guestgate(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("identity.oidc.session_keys: session key #1 is 9 bytes"),
        "{err}"
    );
    assert!(
        !err.contains("dG9vIHNob3J0"),
        "keys are never echoed: {err}"
    );
}

#[test]
fn check_refuses_an_audience_equal_to_the_sign_in_client_id() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client_secret"), "s3cret").unwrap();
    std::fs::write(dir.path().join("session_keys"), SESSION_KEY_B64).unwrap();
    let mut c = TestConfig::new("http://127.0.0.1:9");
    // TestConfig's bearer audience is AUDIENCE; the browser client gets the same id.
    c.extra_sections = format!(
        r#"
[identity.oidc]
issuer = "http://127.0.0.1:5556/realms/wiki"
client_id = "{AUDIENCE}"
client_secret_file = "client_secret"
session_keys_file = "session_keys"
"#
    );
    let path = write_config(dir.path(), &c);
    let (code, _, err) = guestgate(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "identity.audience: `{AUDIENCE}` is also identity.oidc.client_id"
        )),
        "{err}"
    );
    assert!(
        err.contains(path.to_str().unwrap()),
        "names the file: {err}"
    );
}

#[test]
fn check_warns_about_expiries_rego_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestConfig {
        data: TEST_DATA.replace(
            r#""DOCS": {"guests": {"groups": {"partner-guests": ["view"]}}}"#,
            r#""DOCS": {"guests": {"groups": {"partner-guests": {"permissions": ["view"], "expires": "2999-01-01T00:00:00Z"}}}}"#,
        ),
        ..TestConfig::new("http://127.0.0.1:9")
    };
    assert!(c.data.contains("2999"), "the fixture changed");
    let path = write_config(dir.path(), &c);
    let (code, out, err) = guestgate(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("spaces.DOCS.guests.groups.partner-guests")
            && out.contains("outside 1678–2262"),
        "{out}"
    );
}

#[test]
fn eval_batch_prints_inputs_and_decides_given_ones() {
    let dir = tempfile::tempdir().unwrap();
    let batch = dir.path().join("batch.json");
    std::fs::write(
        &batch,
        r#"{"requests": [{"url": "/display/ENG/Home", "user": "gary"}],
            "inputs": [{"route": {"public": true}}]}"#,
    )
    .unwrap();
    let (code, out, err) = guestgate(&[
        "eval",
        "--config",
        &shipped(),
        "--batch",
        batch.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["requests"][0]["decision"]["allow"], true);
    assert_eq!(v["requests"][0]["input"]["user"]["guest"], true);
    assert_eq!(v["inputs"][0]["decision"]["reason"], "public_route");
    assert!(v["data"]["spaces"]["ENG"].is_object());
}

#[tokio::test]
async fn wait_returns_once_the_gateway_is_ready_and_fails_after_its_timeout() {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    // `wait` reads the admin address from the config: point a copy at the running gateway.
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &TestConfig::new(&up.url()));
    let text = std::fs::read_to_string(&path).unwrap();
    let ready = text.replacen(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"{}\"", gw.admin),
        1,
    );
    assert_ne!(ready, text);
    std::fs::write(&path, &ready).unwrap();
    let config = path.to_str().unwrap().to_string();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || guestgate(&["wait", "--config", &config]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("ready"), "{out}");

    // Nothing listens on the discard port: a clear reason after the timeout, exit 1.
    let gone = ready.replace(&gw.admin.to_string(), "127.0.0.1:9");
    std::fs::write(&path, gone).unwrap();
    let config = path.to_str().unwrap().to_string();
    let started = std::time::Instant::now();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        guestgate(&["wait", "--config", &config, "--timeout", "1"])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not ready after 1s") && err.contains("127.0.0.1:9/readyz is not answering"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

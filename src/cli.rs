//! The command line (README.md, `guestgate --help`): parse arguments, load config, call into the library.
//! Exit codes: 0 success, 1 a failed check or test, 2 bad usage or an invalid config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::gateway::Gateway;
use crate::snapshot::Snapshot;

#[derive(Debug, Parser)]
#[command(
    name = "guestgate",
    version,
    about = "Guest access for self-hosted wikis: a policy-enforcing reverse proxy"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The config file.
    #[arg(long, default_value = "config/guestgate.toml")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy and admin listeners until SIGTERM/SIGINT; SIGHUP reloads.
    Serve(ConfigArg),
    /// Validate config, route profile, policies, data and keys; run the policy tests.
    Check(ConfigArg),
    /// Print the decision the gateway would make for one request, as JSON.
    Eval {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Path and query (`/display/ENG/Home`) or a full URL.
        #[arg(long, required_unless_present = "batch")]
        url: Option<String>,
        /// Act as this user (no token needed).
        #[arg(long)]
        user: Option<String>,
        /// Token groups of --user, comma separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// A token to verify and act as.
        #[arg(long)]
        token: Option<String>,
        /// Judge a batch instead: a JSON file `{"requests": [{"method", "url", "user",
        /// "groups"}], "inputs": [<policy input>]}`; prints the data the policy sees, each
        /// request's decision and whole input, and each input's decision.
        #[arg(long, conflicts_with_all = ["url", "user", "token"])]
        batch: Option<PathBuf>,
    },
    /// Run the Rego unit tests (`test_*` rules) of policy.dir.
    Test(ConfigArg),
    /// Print an HS256 token signed with the configured secret, for trying things out.
    Token {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        sub: String,
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Compare the wiki's own permissions for guest accounts with the data document
    /// (docs/WIKI-PERMISSIONS.md). Exit 0 when they agree, 1 when not, 2 when the wiki
    /// cannot be audited.
    Audit {
        #[command(flatten)]
        config: ConfigArg,
        /// Also print the changes that would make the wiki agree (nothing is changed).
        #[arg(long)]
        plan: bool,
        /// Make those changes, in order, stopping at the first the wiki refuses; then audit
        /// again.
        #[arg(long, conflicts_with = "plan")]
        apply: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until the gateway of this config is ready (its admin `/readyz` answers 200):
    /// for scripts that start `serve` in the background. Exit 0 when ready, 1 on timeout.
    Wait {
        #[command(flatten)]
        config: ConfigArg,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Serve(c) => serve(&c.config),
        Command::Check(c) => check(&c.config),
        Command::Eval {
            config,
            method,
            url,
            user,
            groups,
            token,
            batch,
        } => eval(
            &config.config,
            &method,
            url.as_deref(),
            user,
            groups,
            token,
            batch.as_deref(),
        ),
        Command::Test(c) => test(&c.config),
        Command::Token {
            config,
            sub,
            groups,
            ttl,
        } => token(&config.config, &sub, &groups, ttl),
        Command::Audit {
            config,
            plan,
            apply,
            json,
        } => audit(&config.config, plan, apply, json),
        Command::Wait { config, timeout } => wait(&config.config, Duration::from_secs(timeout)),
    }
}

fn audit(path: &Path, plan: bool, apply: bool, json: bool) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let snapshot = match load_snapshot(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let runtime = match small_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let directory = match stored_directory(&config, &snapshot).await {
            Ok(Some(d)) => d,
            Ok(None) => snapshot.directory,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        let report = match crate::audit::audit(&config, &directory).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("guestgate audit: {e}");
                return ExitCode::from(2);
            }
        };
        print_report(&report, json);
        let changes = report.plan();
        if plan {
            print_plan(&changes);
        }
        if !apply || changes.is_empty() {
            return if report.agrees() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
        }
        // With --json, standard output holds only the reports: progress goes to stderr.
        let say = |line: String| {
            if json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        };
        say(format!("Applying {} change(s):", changes.len()));
        match crate::audit::apply(&config, &changes).await {
            Ok(done) => say(format!("{done} change(s) made.")),
            Err((done, e)) => {
                for change in &changes[..done] {
                    say(format!("  done: {change}"));
                }
                eprintln!(
                    "guestgate audit --apply: stopped after {done} of {} change(s): {e}",
                    changes.len()
                );
                return ExitCode::from(1);
            }
        }
        match crate::audit::audit(&config, &directory).await {
            Ok(after) => {
                say("After the changes:".to_string());
                print_report(&after, json);
                if after.agrees() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!(
                    "guestgate audit: the changes were made, but the audit after them failed: {e}"
                );
                ExitCode::from(2)
            }
        }
    })
}

fn print_report(report: &crate::audit::Report, json: bool) {
    if json {
        println!("{:#}", report.to_json());
    } else {
        print!("{}", report.render());
    }
}

fn print_plan(changes: &[crate::audit::Change]) {
    if changes.is_empty() {
        println!("Plan: nothing guestgate can change (the fixes above, if any, are by hand).");
        return;
    }
    println!("Plan: {} change(s), made only with --apply:", changes.len());
    for change in changes {
        println!("  {change}");
    }
}

/// With a `[store]`, the data document is the stored one, not the file (which only seeded
/// the store).
async fn stored_directory(
    config: &Config,
    snapshot: &Snapshot,
) -> Result<Option<crate::directory::Directory>, String> {
    let Some(store_config) = &config.store else {
        return Ok(None);
    };
    let store = crate::shared::SharedStore::new(store_config).map_err(|e| e.to_string())?;
    let (_, text) = store
        .load_data()
        .await
        .map_err(|e| format!("cannot read the data document from the store: {e}"))?;
    crate::directory::Directory::parse_with(
        Path::new("(store)"),
        &text,
        snapshot.directory.user_names,
        snapshot.directory.unknown_users,
    )
    .map(Some)
    .map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })
}

fn wait(path: &Path, timeout: Duration) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let url = format!("http://{}/readyz", config.admin.listen);
    let runtime = match small_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        use crate::http::client::{self, FetchError};
        let http = match client::build::<http_body_util::Empty<bytes::Bytes>>(
            None,
            Duration::from_secs(2),
        ) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot build the HTTP client: {e}");
                return ExitCode::from(2);
            }
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let answer = match client::get_json_request(&url, http_body_util::Empty::new()) {
                Ok(req) => client::fetch(&http, req, Duration::from_secs(2), 4096).await,
                Err(e) => {
                    eprintln!("cannot build the readiness request: {e}");
                    return ExitCode::from(2);
                }
            };
            let last = match answer {
                Ok(a) if a.status == http::StatusCode::OK => {
                    println!("ready: {url}");
                    return ExitCode::SUCCESS;
                }
                Ok(a) => format!("{url} answered {}", a.status),
                Err(FetchError::Timeout { .. }) => format!("{url} did not answer within 2 s"),
                // The cause, not the client's own "{url}: unreachable".
                Err(e) => format!(
                    "{url} is not answering ({})",
                    std::error::Error::source(&e).map_or_else(|| e.to_string(), client::sentence)
                ),
            };
            if tokio::time::Instant::now() >= deadline {
                eprintln!("not ready after {}s: {last}", timeout.as_secs());
                return ExitCode::from(1);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// The runtime of a one-shot command (`audit`, `wait`): one thread is plenty.
fn small_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cannot start the runtime: {e}");
            ExitCode::from(1)
        })
}

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

fn load_snapshot(config: &Config) -> Result<Snapshot, ExitCode> {
    Snapshot::build(config).map_err(|errors| {
        for e in errors {
            eprintln!("{e}");
        }
        ExitCode::from(2)
    })
}

fn serve(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::telemetry::init_logging(config.log.format);
    // The proxy's connections are served on `server.workers` threads of their own
    // (crate::workers); this runtime accepts them and runs the admin listener, reloads and
    // the background tasks, which need little.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("guestgate-control")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cannot install signal handlers: {e}");
                return ExitCode::from(1);
            }
        };
        let gw = match Gateway::new(config) {
            Ok(gw) => Arc::new(gw),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        gw.start_audits();
        let running = match crate::server::start(gw.clone()).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        };
        let _watch = if gw.config.policy.watch {
            match crate::snapshot::watch::watch(gw.store.clone()) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the policy files; reload with SIGHUP or POST /reload");
                    None
                }
            }
        } else {
            None
        };
        if let Some(bundle) = gw.config.bundle.clone() {
            match crate::snapshot::bundle::BundlePoller::new(bundle) {
                Ok(poller) => poller.start(gw.store.clone()),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            }
        }
        if gw.config.policy.dry_run {
            tracing::warn!("policy.dry_run is on: denials are logged, not enforced");
        }
        tracing::info!(
            proxy = %running.proxy_addr,
            admin = %running.admin_addr,
            revision = %gw.snapshot().revision,
            "guestgate listening"
        );
        signals.wait(&gw).await;
        // The drain window: still serving, /readyz 503, keep-alive answers close their
        // connection; then the listeners stop and in-flight requests get shutdown_grace.
        let drain = gw.config.server.drain;
        if !drain.is_zero() {
            tracing::info!(seconds = drain.as_secs(), "draining");
            gw.pipeline.start_draining();
            tokio::time::sleep(drain).await;
        }
        tracing::info!("shutting down");
        running.shutdown();
        running.wait().await;
        ExitCode::SUCCESS
    })
}

/// The signals `serve` acts on, registered before the listeners start so a SIGTERM that
/// arrives at once is handled (and not fatal, as the default disposition would be).
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Returns on SIGTERM or SIGINT; reloads on SIGHUP.
    async fn wait(mut self, gw: &Arc<Gateway>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => { let _ = gw.store.reload().await; }
            }
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals)
    }

    async fn wait(self, _gw: &Arc<Gateway>) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn run_policy_tests(config: &Config, snapshot: &Snapshot) -> Result<(usize, usize), ExitCode> {
    let mut files = snapshot.policy.sources.clone();
    files.extend(snapshot.policy.test_sources.iter().cloned());
    let outcomes = crate::policy::testing::run_tests(
        &files,
        &snapshot.directory.rego_data,
        config.policy.eval_timeout,
    )
    .map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })?;
    let mut failed = 0;
    for o in &outcomes {
        if !o.passed {
            failed += 1;
            println!(
                "FAIL {} ({}): {}",
                o.name,
                o.file.display(),
                o.detail.as_deref().unwrap_or("")
            );
        }
    }
    Ok((outcomes.len() - failed, failed))
}

fn check(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let snapshot = match load_snapshot(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Err(e) = crate::pipeline::forward::Upstream::new(&config.upstream, &config.server) {
        eprintln!("{}: {e}", config.path.display());
        return ExitCode::from(2);
    }
    let (passed, failed) = match run_policy_tests(&config, &snapshot) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let now = time::OffsetDateTime::now_utc();
    let expired: Vec<_> = snapshot.directory.expired_at(now).collect();
    println!("config:   {}", config.path.display());
    println!(
        "routes:   {} rules ({})",
        snapshot.routes.rules.len(),
        snapshot.routes.source.display()
    );
    println!(
        "policies: {} files, query {}",
        snapshot.policy.sources.len(),
        config.policy.query
    );
    println!(
        "data:     {} users, {} groups, {} spaces shared with guests",
        snapshot.directory.users.len(),
        snapshot.directory.groups.len(),
        snapshot.directory.shared_spaces().count()
    );
    println!("keys:     {}", snapshot.verifier.key_count());
    if let Some(oidc) = &config.identity.oidc {
        match crate::identity::oidc::SignIn::check_secrets(oidc) {
            Ok(n) => println!(
                "sign-in:  OpenID Connect at {} as client {} ({n} session keys)",
                oidc.issuer, oidc.client_id
            ),
            Err(e) => {
                eprintln!("{}: {e}", config.path.display());
                return ExitCode::from(2);
            }
        }
    }
    if snapshot.verifier.key_count() == 0 && config.identity.oidc.is_none() {
        println!("warning:  no verification keys configured: every token will be refused");
    }
    for (at, item) in &expired {
        let at = at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        println!("warning:  {item} expired at {at} and no longer counts; remove it or extend it");
    }
    for (at, item) in snapshot.directory.expiries_out_of_nanosecond_range() {
        let at = at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        println!(
            "warning:  {item} expires at {at}, outside 1678–2262: OPA (and the listing rule under regorus) cannot read it (time.parse_rfc3339_ns); write an instant within that range"
        );
    }
    println!("revision: {}", snapshot.revision);
    println!("tests:    {passed} passed, {failed} failed");
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn test(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let snapshot = match load_snapshot(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match run_policy_tests(&config, &snapshot) {
        Ok((passed, failed)) => {
            println!("{passed} passed, {failed} failed");
            if failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(code) => code,
    }
}

fn eval(
    path: &Path,
    method: &str,
    url: Option<&str>,
    user: Option<String>,
    groups: Vec<String>,
    token: Option<String>,
    batch: Option<&Path>,
) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let snapshot = match load_snapshot(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some(batch) = batch {
        return eval_batch(&config, &snapshot, batch);
    }
    let Some(url) = url else {
        eprintln!("--url is required (or --batch)");
        return ExitCode::from(2);
    };
    let request = EvalRequest {
        method: method.to_string(),
        url: url.to_string(),
        user,
        groups,
        token,
    };
    match eval_request(&config, &snapshot, &request, false) {
        Ok(out) => {
            println!("{out:#}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}

/// One request for `eval`, as the flags (or a batch file) give it.
#[derive(Debug, serde::Deserialize)]
struct EvalRequest {
    #[serde(default = "default_method")]
    method: String,
    url: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    token: Option<String>,
}

fn default_method() -> String {
    "GET".into()
}

/// A batch for `eval --batch`: requests judged as by `--url`, and policy input documents
/// evaluated as they are (what a policy author would hand `opa eval`).
#[derive(Debug, serde::Deserialize)]
struct EvalBatch {
    #[serde(default)]
    requests: Vec<EvalRequest>,
    #[serde(default)]
    inputs: Vec<serde_json::Value>,
}

/// Judges a batch and prints one JSON document: the data the policy sees, each request's
/// route, user, decision and whole input, and each given input's decision. The OPA
/// differential check (`tests/opa/`) runs the same inputs under OPA and compares.
fn eval_batch(config: &Config, snapshot: &Snapshot, path: &Path) -> ExitCode {
    let batch: EvalBatch = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let mut requests = Vec::with_capacity(batch.requests.len());
    for request in &batch.requests {
        match eval_request(config, snapshot, request, true) {
            Ok(out) => requests.push(out),
            Err(message) => {
                eprintln!("{}: {}: {message}", path.display(), request.url);
                return ExitCode::from(2);
            }
        }
    }
    let inputs: Vec<serde_json::Value> = batch
        .inputs
        .into_iter()
        .map(|input| {
            let decision = serde_json::from_value::<regorus::Value>(input)
                .map_err(|e| e.to_string())
                .and_then(|value| snapshot.policy.evaluate(value).map_err(|e| e.to_string()));
            match decision {
                Ok(d) => serde_json::json!({"decision": decision_json(&d)}),
                Err(e) => serde_json::json!({"error": e}),
            }
        })
        .collect();
    let out = serde_json::json!({
        "revision": &*snapshot.revision,
        "data": serde_json::to_value(&snapshot.directory.rego_data).unwrap_or_default(),
        "requests": requests,
        "inputs": inputs,
    });
    println!("{out}");
    ExitCode::SUCCESS
}

fn decision_json(d: &crate::policy::Decision) -> serde_json::Value {
    let mut result = serde_json::to_value(&d.result).unwrap_or_default();
    if let Some(obj) = result.as_object_mut() {
        obj.entry("status").or_insert(d.status.as_u16().into());
    }
    result
}

/// What `eval` prints for one request; with `with_input`, the whole policy input too.
fn eval_request(
    config: &Config,
    snapshot: &Snapshot,
    request: &EvalRequest,
    with_input: bool,
) -> Result<serde_json::Value, String> {
    use crate::identity::Caller;
    let method = &request.method;
    let Ok(method) = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        return Err(format!("--method: `{method}` is not an HTTP method"));
    };
    let url = &request.url;
    let Ok(uri) = url.parse::<http::Uri>() else {
        return Err(format!("--url: `{url}` is not a URL or path"));
    };
    let host = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| "localhost".to_string());
    let mut head = http::Request::new(()).into_parts().0;
    head.method = method;
    head.uri = uri;
    if let Ok(host) = http::HeaderValue::from_str(&host) {
        head.headers.insert(http::header::HOST, host);
    }
    let caller = match (&request.token, &request.user) {
        (Some(t), _) => match snapshot.verifier.verify(t) {
            Ok(identity) => Caller::Authenticated(identity),
            Err(e) => Caller::Rejected(e),
        },
        (None, Some(name)) => Caller::Authenticated(Arc::new(crate::identity::Identity {
            name: Arc::from(name.as_str()),
            token_groups: request
                .groups
                .iter()
                .map(|g| Arc::from(g.as_str()))
                .collect(),
            claims: regorus::Value::new_object(),
            token_hash: [0; 32],
            expires_at: u64::MAX,
        })),
        (None, None) => Caller::Anonymous,
    };
    let route_json = |route: &crate::routes::Route| {
        serde_json::to_value(crate::policy::input::route_value(route)).unwrap_or_default()
    };
    let denied = |e: &crate::pipeline::error::GatewayError| serde_json::json!({"allow": false, "reason": e.reason(), "status": e.status().as_u16()});
    let mut input_json = serde_json::Value::Null;
    let (route_json, user_json, decision_json, note) = match crate::pipeline::judge(
        snapshot, config, &head, &caller, None,
    ) {
        Ok(judged) => {
            let d = &judged.decided;
            let input = d
                .input
                .as_ref()
                .and_then(|i| serde_json::to_value(i).ok())
                .unwrap_or_default();
            let user_json = input["user"].clone();
            if with_input {
                input_json = input;
            }
            let guest_needs_space = snapshot.directory.is_guest(&d.groups)
                && judged.route.content.is_some()
                && judged.route.space.is_none();
            let note = guest_needs_space.then_some(
                    "the content id's space is looked up at the wiki when serving; eval does not, so the space is null here",
                );
            (
                route_json(&judged.route),
                user_json,
                decision_json(&d.decision),
                note,
            )
        }
        Err(unjudged) => (
            unjudged
                .route
                .as_ref()
                .map_or(serde_json::Value::Null, |r| route_json(r)),
            serde_json::Value::Null,
            denied(&unjudged.error),
            None,
        ),
    };
    let mut out = serde_json::json!({
        "route": route_json,
        "user": user_json,
        "decision": decision_json,
        "revision": &*snapshot.revision,
    });
    if let Some(note) = note {
        out["note"] = note.into();
    }
    if with_input {
        out["input"] = input_json;
    }
    Ok(out)
}

fn token(path: &Path, sub: &str, groups: &[String], ttl: u64) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let secret = match (
        &config.identity.hs256_secret_env,
        &config.identity.hs256_secret_file,
    ) {
        (Some(var), _) => std::env::var(var).map_err(|_| {
            format!("environment variable ${var} (identity.hs256_secret_env) is not set")
        }),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| format!("{}: {e}", path.display())),
        (None, None) => Err(format!(
            "{}: no HS256 secret is configured (identity.hs256_secret_env or hs256_secret_file); `token` signs HS256 tokens only",
            config.path.display()
        )),
    };
    let secret = match secret {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let now = crate::identity::unix_now();
    let mut claims = serde_json::json!({
        "sub": sub,
        config.identity.user_claim.clone(): sub,
        config.identity.groups_claim.clone(): groups,
        "iat": now,
        "exp": now + ttl,
    });
    if let Some(iss) = &config.identity.issuer {
        claims["iss"] = iss.clone().into();
    }
    if let Some(aud) = &config.identity.audience {
        claims["aud"] = aud.clone().into();
    }
    match jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    ) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot sign: {e}");
            ExitCode::from(1)
        }
    }
}

//! Logs, decision logs and metrics: every name and label set lives here.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use http::StatusCode;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{DecisionLogTarget, LogFormat};
use crate::policy::Decision;
use crate::routes::{Family, Route};

/// Sets up `tracing` to stderr, as text or JSON lines. `RUST_LOG` overrides the level.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// How many decision-log lines may wait for the writer before new ones are dropped: the
/// request path never blocks on logging.
const DECISION_QUEUE: usize = 8192;

/// Decision log (docs/OPERATIONS.md, "Decision log"): one JSON line per decision, written by its own thread.
pub struct DecisionLog {
    sender: Option<SyncSender<String>>,
    dropped: AtomicU64,
    next_id: AtomicU64,
    id_prefix: u64,
}

impl DecisionLog {
    pub fn start(target: &DecisionLogTarget) -> std::io::Result<DecisionLog> {
        let mut prefix = [0u8; 8];
        let _ = aws_lc_rs::rand::fill(&mut prefix);
        let id_prefix = u64::from_le_bytes(prefix);
        let mut writer: Box<dyn Write + Send> = match target {
            DecisionLogTarget::Off => {
                return Ok(DecisionLog {
                    sender: None,
                    dropped: AtomicU64::new(0),
                    next_id: AtomicU64::new(0),
                    id_prefix,
                });
            }
            DecisionLogTarget::Stderr => Box::new(std::io::stderr()),
            DecisionLogTarget::File(path) => Box::new(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
        };
        let (sender, receiver) = sync_channel::<String>(DECISION_QUEUE);
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || {
                while let Ok(line) = receiver.recv() {
                    let _ = writer.write_all(line.as_bytes());
                    // Write whatever else is queued, then flush once the queue is drained, so
                    // lines are visible promptly without a flush per line under load.
                    while let Ok(next) = receiver.try_recv() {
                        let _ = writer.write_all(next.as_bytes());
                    }
                    let _ = writer.flush();
                }
                let _ = writer.flush();
            })?;
        Ok(DecisionLog {
            sender: Some(sender),
            dropped: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            id_prefix,
        })
    }

    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues one decision line; drops (and counts) it when the writer falls behind.
    pub fn record(&self, revision: &str, decided: &DecisionRecord<'_>, dry_run: bool) {
        let Some(sender) = &self.sender else { return };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let input = decided
            .input
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or(serde_json::Value::Null);
        let result =
            serde_json::to_value(&decided.decision.result).unwrap_or(serde_json::Value::Null);
        let line = serde_json::json!({
            "decision_id": format!("{:016x}{id:016x}", self.id_prefix),
            "timestamp": OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default(),
            "revision": revision,
            "input": input,
            "result": result,
            "duration_us": decided.duration.as_micros() as u64,
            "cached": decided.cached,
            "dry_run": dry_run,
        });
        let mut text = line.to_string();
        text.push('\n');
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = sender.try_send(text) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One decision as the decision log and the metrics see it.
pub struct DecisionRecord<'a> {
    pub decision: &'a Decision,
    /// The policy input, when it was built.
    pub input: Option<&'a regorus::Value>,
    pub cached: bool,
    pub duration: Duration,
}

/// Process-wide counters of the caches and the upstream, which outlive snapshots.
/// Index 0 counts misses (or `unavailable`), index 1 hits (or `timeout`).
pub static TOKEN_CACHE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
pub static CONTENT_LOOKUPS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
pub static UPSTREAM_ERRORS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// Browser sign-ins completed (0) and refused at the callback (1).
pub static SIGN_INS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// Session refreshes: done (0), refused by the provider so the session ended (1), provider
/// not reachable so the session was kept (2).
pub static SESSION_REFRESHES: [AtomicU64; 3] =
    [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Bodies that did not fit in the buffer budget: a guarded listing refused (0), a
/// cosmetic rewrite skipped (1), a guest's request body refused (2).
pub static BUFFER_BUDGET_EXCEEDED: [AtomicU64; 3] =
    [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// A gauge up or down by one.
fn step(gauge: &AtomicU64, up: bool) {
    if up {
        gauge.fetch_add(1, Ordering::Relaxed);
    } else {
        gauge.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn count<const N: usize>(counter: &[AtomicU64; N], index: usize) {
    counter[index].fetch_add(1, Ordering::Relaxed);
}

const LATENCY_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 500_000, 2_000_000,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let us = d.as_micros() as u64;
        for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
            if us <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn render(&self, name: &str, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {}",
                *bound as f64 / 1e6,
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Process metrics, rendered as Prometheus text. Labels are bounded: status class, family,
/// decision.
#[derive(Default)]
pub struct Metrics {
    requests_by_class: [AtomicU64; 6],
    decisions: [[AtomicU64; 2]; Family::ALL.len()],
    decision_cache: [AtomicU64; 2],
    request_latency: Histogram,
    decision_latency: Histogram,
    reloads: [AtomicU64; 2],
    revision: Mutex<String>,
    /// When a bundle poll last succeeded (a new bundle or 304), Unix seconds; 0: never.
    bundle_last_success: AtomicU64,
    /// Client connections open now, and how many of those are parked.
    client_connections: AtomicU64,
    parked_connections: AtomicU64,
}

impl Metrics {
    pub fn observe_request(&self, status: StatusCode, elapsed: Duration) {
        let class = (status.as_u16() / 100).min(5) as usize;
        self.requests_by_class[class].fetch_add(1, Ordering::Relaxed);
        self.request_latency.observe(elapsed);
    }

    pub fn observe_decision(&self, route: &Route, decided: &DecisionRecord<'_>) {
        let family = Family::ALL
            .iter()
            .position(|f| *f == route.family)
            .unwrap_or(Family::ALL.len() - 1);
        self.decisions[family][usize::from(decided.decision.allow)].fetch_add(1, Ordering::Relaxed);
        self.decision_cache[usize::from(decided.cached)].fetch_add(1, Ordering::Relaxed);
        self.decision_latency.observe(decided.duration);
    }

    /// A client connection opened (`true`) or closed.
    pub fn client_connection(&self, opened: bool) {
        step(&self.client_connections, opened);
    }

    /// A client connection was parked (`true`: only its socket is held while it waits for
    /// the client) or taken out of the parking.
    pub fn parked_connection(&self, parked: bool) {
        step(&self.parked_connections, parked);
    }

    pub fn set_revision(&self, revision: &str) {
        if let Ok(mut r) = self.revision.lock() {
            *r = revision.to_string();
        }
    }

    pub fn reload_succeeded(&self, revision: &str) {
        self.reloads[0].fetch_add(1, Ordering::Relaxed);
        self.set_revision(revision);
    }

    /// A bundle poll got an answer it could use (a bundle, valid or not, or 304).
    pub fn bundle_polled(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.bundle_last_success.store(now, Ordering::Relaxed);
    }

    /// Seconds since the last successful bundle poll; `None` before the first.
    pub fn bundle_poll_age(&self) -> Option<u64> {
        let last = self.bundle_last_success.load(Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (last > 0).then(|| now.saturating_sub(last))
    }

    pub fn reload_failed(&self) {
        self.reloads[1].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, decision_log_dropped: u64) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(4096);
        let _ = writeln!(out, "# TYPE guestgate_requests_total counter");
        for (class, n) in self.requests_by_class.iter().enumerate().skip(1) {
            let _ = writeln!(
                out,
                "guestgate_requests_total{{status=\"{class}xx\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE guestgate_decisions_total counter");
        for (i, family) in Family::ALL.iter().enumerate() {
            for (allow, word) in [(0, "deny"), (1, "allow")] {
                let n = self.decisions[i][allow].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "guestgate_decisions_total{{family=\"{}\",decision=\"{word}\"}} {n}",
                        family.as_str()
                    );
                }
            }
        }
        let _ = writeln!(out, "# TYPE guestgate_decision_cache_total counter");
        for (i, word) in ["miss", "hit"].iter().enumerate() {
            let _ = writeln!(
                out,
                "guestgate_decision_cache_total{{result=\"{word}\"}} {}",
                self.decision_cache[i].load(Ordering::Relaxed)
            );
        }
        for (name, counter, labels) in [
            (
                "guestgate_token_cache_total",
                &TOKEN_CACHE,
                ["result=\"miss\"", "result=\"hit\""],
            ),
            (
                "guestgate_content_lookup_cache_total",
                &CONTENT_LOOKUPS,
                ["result=\"miss\"", "result=\"hit\""],
            ),
            (
                "guestgate_upstream_errors_total",
                &UPSTREAM_ERRORS,
                ["kind=\"unavailable\"", "kind=\"timeout\""],
            ),
            (
                "guestgate_sign_ins_total",
                &SIGN_INS,
                ["result=\"ok\"", "result=\"refused\""],
            ),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter");
            for (i, label) in labels.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{{label}}} {}",
                    counter[i].load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(out, "# TYPE guestgate_session_refreshes_total counter");
        for (i, word) in ["ok", "refused", "failed"].iter().enumerate() {
            let _ = writeln!(
                out,
                "guestgate_session_refreshes_total{{result=\"{word}\"}} {}",
                SESSION_REFRESHES[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE guestgate_buffer_budget_exceeded_total counter");
        for (i, word) in ["listing_refused", "rewrite_skipped", "request_refused"]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                out,
                "guestgate_buffer_budget_exceeded_total{{result=\"{word}\"}} {}",
                BUFFER_BUDGET_EXCEEDED[i].load(Ordering::Relaxed)
            );
        }
        self.request_latency
            .render("guestgate_request_duration_seconds", &mut out);
        self.decision_latency
            .render("guestgate_decision_duration_seconds", &mut out);
        let _ = writeln!(out, "# TYPE guestgate_reloads_total counter");
        for (i, word) in ["success", "failure"].iter().enumerate() {
            let _ = writeln!(
                out,
                "guestgate_reloads_total{{result=\"{word}\"}} {}",
                self.reloads[i].load(Ordering::Relaxed)
            );
        }
        let last = self.bundle_last_success.load(Ordering::Relaxed);
        if last > 0 {
            let _ = writeln!(
                out,
                "# TYPE guestgate_bundle_last_success_timestamp_seconds gauge"
            );
            let _ = writeln!(
                out,
                "guestgate_bundle_last_success_timestamp_seconds {last}"
            );
        }
        let open = self.client_connections.load(Ordering::Relaxed);
        let parked = self.parked_connections.load(Ordering::Relaxed);
        let _ = writeln!(out, "# TYPE guestgate_client_connections gauge");
        let _ = writeln!(
            out,
            "guestgate_client_connections{{state=\"active\"}} {}",
            open.saturating_sub(parked)
        );
        let _ = writeln!(
            out,
            "guestgate_client_connections{{state=\"parked\"}} {parked}"
        );
        let revision = self.revision.lock().map(|r| r.clone()).unwrap_or_default();
        let _ = writeln!(out, "# TYPE guestgate_policy_revision gauge");
        let _ = writeln!(
            out,
            "guestgate_policy_revision{{revision=\"{revision}\"}} 1"
        );
        let _ = writeln!(out, "# TYPE guestgate_decision_log_dropped_total counter");
        let _ = writeln!(
            out,
            "guestgate_decision_log_dropped_total {decision_log_dropped}"
        );
        out
    }
}

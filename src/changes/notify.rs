//! Change notifications: every guest-access change — from a new revision (reload, bundle,
//! write API) or from an expiry passing — becomes a structured log event and, when
//! `[notify] webhook_url` is set, a JSON POST retried with back-off by a worker of its own.
//! Nothing here ever blocks a request: events go through a bounded queue and are dropped
//! (and counted) when it is full.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::changes::access::{Change, diff, table};
use crate::config::{NotifyConfig, WebhookConfig};
use crate::snapshot::store::{SnapshotStore, WeakSnapshotStore};

/// Counters for `/metrics`.
#[derive(Default)]
pub struct NotifyStats {
    pub events: AtomicU64,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    /// Events another replica claimed and sent (`[store]`).
    pub claimed_elsewhere: AtomicU64,
}

pub struct Notifier {
    queue: Option<mpsc::Sender<Arc<Value>>>,
    receiver: Mutex<Option<mpsc::Receiver<Arc<Value>>>>,
    webhook: Option<WebhookConfig>,
    pub stats: Arc<NotifyStats>,
}

impl Notifier {
    pub fn new(config: &NotifyConfig) -> Notifier {
        let (queue, receiver) = match &config.webhook {
            Some(w) => {
                let (tx, rx) = mpsc::channel(w.queue);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        Notifier {
            queue,
            receiver: Mutex::new(receiver),
            webhook: config.webhook.clone(),
            stats: Arc::default(),
        }
    }

    /// Logs each event and queues it for the webhook.
    pub fn emit(&self, events: &[Value]) {
        for event in events {
            self.stats.events.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                target: "guestgate::access",
                kind = event["event"].as_str().unwrap_or(""),
                event = %event,
                "{}",
                event["text"].as_str().unwrap_or("guest access changed")
            );
            if let Some(queue) = &self.queue
                && queue.try_send(Arc::new(event.clone())).is_err()
            {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(event = %event, "notification queue full; event not sent to the webhook");
            }
        }
    }

    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let s = &self.stats;
        let _ = writeln!(out, "# TYPE guestgate_access_events_total counter");
        let _ = writeln!(
            out,
            "guestgate_access_events_total {}",
            s.events.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE guestgate_notifications_total counter");
        for (word, n) in [
            ("delivered", &s.delivered),
            ("failed", &s.failed),
            ("dropped", &s.dropped),
            ("sent_by_another_replica", &s.claimed_elsewhere),
        ] {
            let _ = writeln!(
                out,
                "guestgate_notifications_total{{result=\"{word}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// Starts the watcher (revisions and expiries) and, with a webhook, its delivery worker.
/// The watcher follows `store`'s change feed and ends when the store is gone.
pub fn start(notifier: &Arc<Notifier>, store: &SnapshotStore) {
    let receiver = notifier.receiver.lock().ok().and_then(|mut r| r.take());
    if let (Some(receiver), Some(webhook)) = (receiver, notifier.webhook.clone()) {
        tokio::spawn(deliver(
            receiver,
            webhook,
            notifier.stats.clone(),
            store.shared().cloned(),
        ));
    }
    tokio::spawn(watch(store.downgrade(), store.changes(), notifier.clone()));
}

/// The longest the watcher sleeps without looking: wall-clock jumps are caught within it.
const MAX_NAP: Duration = Duration::from_secs(3600);

async fn watch(
    store: WeakSnapshotStore,
    mut revisions: tokio::sync::watch::Receiver<Arc<str>>,
    notifier: Arc<Notifier>,
) {
    let Some(first) = store.upgrade().map(|s| s.current()) else {
        return;
    };
    revisions.mark_unchanged();
    // The first revision is the baseline: a restart announces nothing. Expiries that passed
    // while the process was down are not announced either (see docs/OPERATIONS.md).
    let mut last_table = table(&first.directory, OffsetDateTime::now_utc());
    let mut last_revision = first.revision.clone();
    drop(first);
    loop {
        let nap = {
            let Some(store) = store.upgrade() else { return };
            let snapshot = store.current();
            let now = OffsetDateTime::now_utc();
            snapshot
                .directory
                .next_expiry_after(now)
                .map(|t| Duration::try_from(t - now).unwrap_or(Duration::ZERO))
                .unwrap_or(MAX_NAP)
                .min(MAX_NAP)
        };
        let woken = tokio::select! {
            changed = revisions.changed() => {
                if changed.is_err() {
                    return;
                }
                true
            }
            _ = tokio::time::sleep(nap) => false,
        };
        let Some(store) = store.upgrade() else { return };
        let snapshot = store.current();
        let now = OffsetDateTime::now_utc();
        let current = table(&snapshot.directory, now);
        if woken || current != last_table {
            let events = diff(
                &last_table,
                &current,
                &snapshot.directory,
                Change {
                    revision: &snapshot.revision,
                    previous_revision: &last_revision,
                    now,
                },
            );
            notifier.emit(&events);
        }
        last_table = current;
        last_revision = snapshot.revision.clone();
    }
}

enum Failure {
    /// Worth another try: connection errors, timeouts, 408, 429, 5xx.
    Transient(String),
    /// The receiver refused the event itself (other 4xx): retrying would not help.
    Permanent(String),
}

/// Sends queued events to the webhook. With a shared store, every replica sees each change
/// and makes the same event (same id); only the replica that claims the id in the store
/// sends it. When the store cannot be asked the event is sent anyway: a duplicate, which
/// receivers drop by id, is better than a lost revocation notice.
async fn deliver(
    mut queue: mpsc::Receiver<Arc<Value>>,
    webhook: WebhookConfig,
    stats: Arc<NotifyStats>,
    shared: Option<Arc<crate::shared::SharedStore>>,
) {
    let client = match crate::http::client::build::<Full<Bytes>>(None, webhook.timeout) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; notifications are only logged");
            return;
        }
    };
    while let Some(event) = queue.recv().await {
        if let (Some(shared), Some(id)) = (&shared, event["id"].as_str()) {
            match shared.claim_event(id).await {
                Ok(true) => {}
                Ok(false) => {
                    stats.claimed_elsewhere.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, id, "cannot claim the event in the store; sending it (receivers drop duplicates by id)");
                }
            }
        }
        let body = Bytes::from(event.to_string());
        let mut backoff = webhook.initial_backoff;
        let mut attempt = 1;
        loop {
            match post(&client, &webhook, body.clone()).await {
                Ok(()) => {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(Failure::Transient(why)) if attempt < webhook.max_attempts => {
                    tracing::warn!(attempt, error = %why, "webhook delivery failed; retrying");
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(webhook.max_backoff);
                    attempt += 1;
                }
                Err(Failure::Transient(why) | Failure::Permanent(why)) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(attempt, error = %why, event = %event, "webhook delivery gave up");
                    break;
                }
            }
        }
    }
}

/// Back-off of 75–100 % of `d`, so replicas retrying the same receiver spread out.
fn jittered(d: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut byte);
    d.mul_f64(0.75 + f64::from(byte[0]) / 1020.0)
}

async fn post(
    client: &crate::http::client::HttpsClient<Full<Bytes>>,
    webhook: &WebhookConfig,
    body: Bytes,
) -> Result<(), Failure> {
    let mut req = http::Request::post(&webhook.url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("guestgate/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(auth) = &webhook.authorization {
        req = req.header(http::header::AUTHORIZATION, auth);
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| Failure::Permanent(e.to_string()))?;
    let resp = tokio::time::timeout(webhook.timeout, client.request(req))
        .await
        .map_err(|_| Failure::Transient("timed out".into()))?
        .map_err(|e| Failure::Transient(e.to_string()))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else if status.is_server_error()
        || status == http::StatusCode::REQUEST_TIMEOUT
        || status == http::StatusCode::TOO_MANY_REQUESTS
    {
        Err(Failure::Transient(format!("webhook answered {status}")))
    } else {
        Err(Failure::Permanent(format!("webhook answered {status}")))
    }
}

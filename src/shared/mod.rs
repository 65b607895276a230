//! State that replicas share through PostgreSQL (`[store]`): the data document (the source
//! of truth for grants), the sessions ended by a sign-out or a refused refresh, the sign-in
//! states already used, and which replica sends each access-change event. Changes fan out
//! with `LISTEN`/`NOTIFY`, which PostgreSQL delivers once per committed transaction to every
//! listening connection; a periodic re-read of the data generation catches a notification
//! lost with a connection. docs/OPERATIONS.md ("Replicas") has the guarantees.
//!
//! Two connections per replica: one that listens (and only listens), and one for
//! statements, shared by everything else and taken for the length of one data change.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::{Mutex, OwnedMutexGuard, broadcast};
use tokio_postgres::{AsyncMessage, Client};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::StoreConfig;

/// The channel a committed data change is announced on; the payload is its generation.
const DATA_CHANNEL: &str = "guestgate_data";
/// The channel an ended session is announced on; the payload is the session id.
const SESSION_CHANNEL: &str = "guestgate_sessions";
/// Taken (for one transaction) while the tables are created, so that replicas starting
/// together do not race on `CREATE TABLE IF NOT EXISTS`.
const SCHEMA_LOCK: i64 = 0x6775_6573_7467_6174; // "guestgat"
/// Expired rows (ended sessions, used states, sent events) are deleted this often.
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// Sent-event claims are kept this long: longer than any webhook retry schedule.
const CLAIM_KEEP_SECS: i64 = 7 * 86_400;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS guestgate_data (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    generation bigint NOT NULL,
    document text NOT NULL,
    -- What the last change replaced, as `<data>.bak` keeps it beside a data file.
    previous_document text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS guestgate_ended_sessions (
    id text PRIMARY KEY,
    expires_at bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS guestgate_used_states (
    hash bytea PRIMARY KEY,
    expires_at bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS guestgate_sent_events (
    id text PRIMARY KEY,
    expires_at bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS guestgate_downloads (
    path text PRIMARY KEY,
    owner text NOT NULL,
    expires_at bigint NOT NULL
);
";

/// What the listening connection reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// (Re)connected and listening: whatever was announced while disconnected is lost, so
    /// followers re-read everything.
    Connected,
    /// The data document's generation, announced or re-read.
    Data(i64),
    /// A session ended on some replica.
    SessionEnded(String),
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("PostgreSQL ({at}) is unavailable: {message}")]
    Unavailable { at: String, message: String },
    #[error("PostgreSQL ({at}) holds no data document")]
    Empty { at: String },
    #[error("TLS for PostgreSQL: {0}")]
    Tls(String),
}

pub struct SharedStore {
    config: StoreConfig,
    tls: MakeRustlsConnect,
    /// The statement connection; `None` until first needed and after it failed.
    client: Arc<Mutex<Option<Client>>>,
    signals: broadcast::Sender<Signal>,
    listening: AtomicBool,
    /// Unix seconds since which the listening connection has been down; 0 while up.
    down_since: AtomicU64,
    failures: AtomicU64,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("at", &self.config.display)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SharedStore {
    /// Prepares the store; nothing connects until [`SharedStore::start`] or a first call.
    pub fn new(config: &StoreConfig) -> Result<Arc<SharedStore>, StoreError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = &config.ca_file {
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| StoreError::Tls(format!("{}: {e}", ca.display())))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| StoreError::Tls(format!("{}: {e}", ca.display())))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut config = config.clone();
        // A database that vanishes without a word is noticed by the kernel too.
        config
            .connection
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .application_name("guestgate");
        let (signals, _) = broadcast::channel(1024);
        Ok(Arc::new(SharedStore {
            tls: MakeRustlsConnect::new(tls),
            config,
            client: Arc::new(Mutex::new(None)),
            signals,
            listening: AtomicBool::new(false),
            down_since: AtomicU64::new(unix_now()),
            failures: AtomicU64::new(0),
        }))
    }

    /// Where the store is, without the password.
    pub fn display(&self) -> &str {
        &self.config.display
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> StoreError {
        self.failures.fetch_add(1, Ordering::Relaxed);
        StoreError::Unavailable {
            at: self.config.display.clone(),
            message: e.to_string(),
        }
    }

    /// Bounds one round trip: a statement that does not answer in `store.timeout_secs`
    /// counts as the database being unavailable.
    async fn timed<T, E: std::fmt::Display>(
        &self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.config.timeout, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.unavailable(e)),
            Err(_) => Err(self.unavailable(format!(
                "no answer within {} s",
                self.config.timeout.as_secs()
            ))),
        }
    }

    /// A new connection, its driver spawned; notifications it receives go to `messages`.
    async fn connect(
        &self,
        messages: Option<tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>>,
    ) -> Result<Client, StoreError> {
        let (client, mut connection) = self
            .timed(self.config.connection.connect(self.tls.clone()))
            .await?;
        tokio::spawn(async move {
            let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = stream.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if let Some(to) = &messages
                            && to.send(n).is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "PostgreSQL connection ended");
                        return;
                    }
                }
            }
        });
        let timeout_ms = self.config.timeout.as_millis().min(i32::MAX as u128);
        // A writer that dies holding the row lock must not block every replica's writes
        // until its TCP connection times out (hours): the server ends such a transaction.
        let idle_ms = timeout_ms.saturating_mul(3);
        self.timed(client.batch_execute(&format!(
            "SET statement_timeout = {timeout_ms}; SET lock_timeout = {timeout_ms}; \
             SET idle_in_transaction_session_timeout = {idle_ms}"
        )))
        .await?;
        Ok(client)
    }

    /// The statement connection, connected (and the tables created) when needed.
    async fn statements(&self) -> Result<OwnedMutexGuard<Option<Client>>, StoreError> {
        let mut slot = self.client.clone().lock_owned().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = None;
            let client = self.connect(None).await?;
            self.create_tables(&client).await?;
            *slot = Some(client);
        }
        Ok(slot)
    }

    async fn create_tables(&self, client: &Client) -> Result<(), StoreError> {
        self.timed(client.batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA} COMMIT;"
        )))
        .await
    }

    /// Runs `work` on the statement connection; a failure drops the connection, so the
    /// next call starts on a fresh one.
    async fn with_client<T>(
        &self,
        work: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut slot = self.statements().await?;
        let Some(client) = slot.as_ref() else {
            return Err(self.unavailable("not connected"));
        };
        let result = self.timed(work(client)).await;
        if result.is_err() {
            *slot = None;
        }
        result
    }

    /// The data document and its generation.
    pub async fn load_data(&self) -> Result<(i64, String), StoreError> {
        let row = self
            .with_client(async |c| {
                c.query_opt(
                    "SELECT generation, document FROM guestgate_data WHERE id",
                    &[],
                )
                .await
            })
            .await?;
        match row {
            Some(row) => Ok((row.get(0), row.get(1))),
            None => Err(StoreError::Empty {
                at: self.config.display.clone(),
            }),
        }
    }

    /// Stores `document` as generation 1 unless the store already holds one (the data
    /// file seeds an empty store; afterwards the store is the source of truth).
    pub async fn seed_data(&self, document: &str) -> Result<bool, StoreError> {
        let inserted = self
            .with_client(async |c| {
                c.execute(
                    "INSERT INTO guestgate_data (id, generation, document) VALUES (true, 1, $1)
                     ON CONFLICT (id) DO NOTHING",
                    &[&document],
                )
                .await
            })
            .await?;
        Ok(inserted == 1)
    }

    /// Starts a change of the data document: a transaction holding the row lock until
    /// [`DataTransaction::commit`] — another replica's change waits for it. Dropping the
    /// transaction uncommitted drops its connection, which makes the server roll it back.
    pub async fn begin_data_change(self: &Arc<Self>) -> Result<DataTransaction, StoreError> {
        let slot = self.statements().await?;
        let mut tx = DataTransaction {
            store: self.clone(),
            slot,
            finished: false,
            generation: 0,
            document: String::new(),
        };
        let client = tx.client()?;
        let row = self
            .timed(async {
                client.batch_execute("BEGIN").await?;
                client
                    .query_opt(
                        "SELECT generation, document FROM guestgate_data WHERE id FOR UPDATE",
                        &[],
                    )
                    .await
            })
            .await?;
        let Some(row) = row else {
            return Err(StoreError::Empty {
                at: self.config.display.clone(),
            });
        };
        tx.generation = row.get(0);
        tx.document = row.get(1);
        Ok(tx)
    }

    /// Records that session `id` ended and tells every replica; kept until `expires_at`
    /// (Unix seconds), when the session's cookie could not be used anyway.
    pub async fn end_session(&self, id: &str, expires_at: i64) -> Result<(), StoreError> {
        self.with_client(async |c| {
            c.execute(
                "WITH ended AS (
                    INSERT INTO guestgate_ended_sessions (id, expires_at) VALUES ($1, $2)
                    ON CONFLICT (id) DO UPDATE SET expires_at = GREATEST(
                        guestgate_ended_sessions.expires_at, EXCLUDED.expires_at)
                 )
                 SELECT pg_notify($3, $1)",
                &[&id, &expires_at, &SESSION_CHANNEL],
            )
            .await
        })
        .await
        .map(drop)
    }

    /// The sessions ended and not yet expired.
    pub async fn ended_sessions(&self) -> Result<Vec<String>, StoreError> {
        let now = unix_now() as i64;
        let rows = self
            .with_client(async |c| {
                c.query(
                    "SELECT id FROM guestgate_ended_sessions WHERE expires_at > $1",
                    &[&now],
                )
                .await
            })
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Marks a sign-in state used; `true` the first time, on any replica.
    pub async fn use_state(&self, hash: &[u8], expires_at: i64) -> Result<bool, StoreError> {
        let inserted = self
            .with_client(async |c| {
                c.execute(
                    "INSERT INTO guestgate_used_states (hash, expires_at) VALUES ($1, $2)
                     ON CONFLICT (hash) DO NOTHING",
                    &[&hash, &expires_at],
                )
                .await
            })
            .await?;
        Ok(inserted == 1)
    }

    /// Claims the sending of access-change event `id`; `true` for exactly one replica.
    pub async fn claim_event(&self, id: &str) -> Result<bool, StoreError> {
        let expires_at = unix_now() as i64 + CLAIM_KEEP_SECS;
        let inserted = self
            .with_client(async |c| {
                c.execute(
                    "INSERT INTO guestgate_sent_events (id, expires_at) VALUES ($1, $2)
                     ON CONFLICT (id) DO NOTHING",
                    &[&id, &expires_at],
                )
                .await
            })
            .await?;
        Ok(inserted == 1)
    }

    /// Records that the export file at `path` was made for `owner`, for every replica,
    /// until `expires_at` (Unix seconds). A later export at the same path (the wiki reuses
    /// none, but a restore could) takes it over.
    pub async fn own_download(
        &self,
        path: &str,
        owner: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.with_client(async |c| {
            c.execute(
                "INSERT INTO guestgate_downloads (path, owner, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (path) DO UPDATE SET owner = EXCLUDED.owner,
                     expires_at = EXCLUDED.expires_at",
                &[&path, &owner, &expires_at],
            )
            .await
        })
        .await
        .map(drop)
    }

    /// Whom the export file at `path` was made for, while that is still kept.
    pub async fn download_owner(&self, path: &str) -> Result<Option<String>, StoreError> {
        let now = unix_now() as i64;
        let row = self
            .with_client(async |c| {
                c.query_opt(
                    "SELECT owner FROM guestgate_downloads WHERE path = $1 AND expires_at > $2",
                    &[&path, &now],
                )
                .await
            })
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn purge_expired(&self) -> Result<(), StoreError> {
        let now = unix_now() as i64;
        self.with_client(async |c| {
            for table in [
                "guestgate_ended_sessions",
                "guestgate_used_states",
                "guestgate_sent_events",
                "guestgate_downloads",
            ] {
                c.execute(
                    &format!("DELETE FROM {table} WHERE expires_at <= $1"),
                    &[&now],
                )
                .await?;
            }
            Ok(())
        })
        .await
    }

    /// What the listening connection reports from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }

    /// Seconds the listening connection has been down; `None` while it is up.
    pub fn down_for(&self) -> Option<u64> {
        if self.listening.load(Ordering::Acquire) {
            return None;
        }
        Some(unix_now().saturating_sub(self.down_since.load(Ordering::Relaxed)))
    }

    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "# TYPE guestgate_store_connected gauge");
        let _ = writeln!(
            out,
            "guestgate_store_connected {}",
            u8::from(self.listening.load(Ordering::Acquire))
        );
        let _ = writeln!(out, "# TYPE guestgate_store_failures_total counter");
        let _ = writeln!(
            out,
            "guestgate_store_failures_total {}",
            self.failures.load(Ordering::Relaxed)
        );
    }

    /// Starts the listening connection: it reconnects with back-off for as long as the
    /// store lives, and re-reads the generation every `store.poll_interval_secs`.
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(listen(Arc::downgrade(self)));
    }
}

async fn listen(store: std::sync::Weak<SharedStore>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let Some(shared) = store.upgrade() else {
            return;
        };
        let (sender, mut notifications) = tokio::sync::mpsc::unbounded_channel();
        let client = match shared.connect(Some(sender)).await {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot listen to the store; the last revision read keeps serving");
                drop(shared);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        let listened = shared
            .timed(
                client.batch_execute(&format!("LISTEN {DATA_CHANNEL}; LISTEN {SESSION_CHANNEL}")),
            )
            .await;
        if let Err(e) = listened {
            tracing::error!(error = %e, "cannot listen to the store");
            drop(shared);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
            continue;
        }
        backoff = Duration::from_millis(250);
        let was_down = shared.down_for();
        shared.listening.store(true, Ordering::Release);
        shared.down_since.store(0, Ordering::Relaxed);
        if let Some(secs) = was_down {
            tracing::info!(store = %shared.config.display, down_secs = secs, "listening to the store");
        }
        let _ = shared.signals.send(Signal::Connected);
        let poll = shared.config.poll_interval;
        let mut next_poll = tokio::time::Instant::now() + poll;
        let mut next_purge = tokio::time::Instant::now() + PURGE_EVERY / 10;
        drop(shared);
        let why = loop {
            tokio::select! {
                n = notifications.recv() => {
                    let Some(n) = n else { break "the connection ended".to_string() };
                    let Some(shared) = store.upgrade() else { return };
                    let signal = match n.channel() {
                        DATA_CHANNEL => n.payload().parse().ok().map(Signal::Data),
                        SESSION_CHANNEL => Some(Signal::SessionEnded(n.payload().to_string())),
                        _ => None,
                    };
                    if let Some(signal) = signal {
                        let _ = shared.signals.send(signal);
                    }
                }
                _ = tokio::time::sleep_until(next_poll) => {
                    let Some(shared) = store.upgrade() else { return };
                    next_poll = tokio::time::Instant::now() + poll;
                    // Also the heartbeat of the listening connection: a dead one ends here.
                    match shared
                        .timed(client.query_opt("SELECT generation FROM guestgate_data WHERE id", &[]))
                        .await
                    {
                        Ok(Some(row)) => {
                            let _ = shared.signals.send(Signal::Data(row.get(0)));
                        }
                        Ok(None) => {}
                        Err(e) => break e.to_string(),
                    }
                    if tokio::time::Instant::now() >= next_purge {
                        next_purge = tokio::time::Instant::now() + PURGE_EVERY;
                        if let Err(e) = shared.purge_expired().await {
                            tracing::warn!(error = %e, "cannot delete expired rows from the store");
                        }
                    }
                }
            }
        };
        let Some(shared) = store.upgrade() else {
            return;
        };
        shared.listening.store(false, Ordering::Release);
        shared.down_since.store(unix_now(), Ordering::Relaxed);
        shared.failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(store = %shared.config.display, error = %why, "lost the store; the last revision read keeps serving until it is back");
    }
}

/// A change of the data document in progress (see [`SharedStore::begin_data_change`]).
pub struct DataTransaction {
    store: Arc<SharedStore>,
    slot: OwnedMutexGuard<Option<Client>>,
    finished: bool,
    generation: i64,
    document: String,
}

impl DataTransaction {
    fn client(&mut self) -> Result<&Client, StoreError> {
        match self.slot.as_ref() {
            Some(c) => Ok(c),
            None => Err(self.store.unavailable("not connected")),
        }
    }

    /// The document as the store holds it now, and its generation.
    pub fn document(&self) -> (i64, &str) {
        (self.generation, &self.document)
    }

    /// Ends the transaction without a change, keeping the connection.
    pub async fn rollback(mut self) {
        let store = self.store.clone();
        if let Ok(client) = self.client()
            && store.timed(client.batch_execute("ROLLBACK")).await.is_ok()
        {
            self.finished = true;
        }
    }

    /// Replaces the document and announces the new generation to every replica, both only
    /// if the transaction commits. Returns the new generation.
    pub async fn commit(mut self, document: &str) -> Result<i64, StoreError> {
        let generation = self.generation + 1;
        let store = self.store.clone();
        let client = self.client()?;
        let payload = generation.to_string();
        let result = store
            .timed(async {
                client
                    .execute(
                        "UPDATE guestgate_data SET generation = $1, document = $2,
                             previous_document = document, updated_at = now()
                         WHERE id",
                        &[&generation, &document],
                    )
                    .await?;
                client
                    .execute("SELECT pg_notify($1, $2)", &[&DATA_CHANNEL, &payload])
                    .await?;
                client.batch_execute("COMMIT").await
            })
            .await;
        // Committed or not, the transaction is over; an unknown outcome (a timeout during
        // COMMIT) is settled by the listener reading the generation.
        self.finished = result.is_ok();
        result.map(|()| generation)
    }
}

impl Drop for DataTransaction {
    fn drop(&mut self) {
        if !self.finished {
            // Closing the connection is the one rollback that needs no round trip.
            *self.slot = None;
        }
    }
}

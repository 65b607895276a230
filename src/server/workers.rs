//! Worker threads. Each runs its own single-threaded tokio runtime and serves the client
//! connections handed to it, with its own pool of upstream connections
//! (the pipeline's upstream keeps one per worker).
//!
//! Why not one work-stealing runtime for everything: a proxied request wakes three tasks in
//! turn — the client connection, the upstream connection, the body channel between them. On
//! a shared multi-threaded runtime those wake-ups often land on another thread, and each
//! such hop costs a futex and a scheduler pass; under load that was about a sixth of all CPU
//! time (docs/BENCHMARKS.md). Here a request stays on one thread from accept to response,
//! the way nginx's worker processes serve theirs. Connections are handed to the worker with
//! the fewest open, so long-lived keep-alive connections spread evenly.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;

struct Worker {
    handle: tokio::runtime::Handle,
    /// Connections this worker serves now.
    open: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A set of running worker threads. Dropping it stops them: the connections they still
/// serve are closed.
pub struct Workers {
    workers: Vec<Worker>,
}

/// Counts a connection as open on its worker until dropped. The connection holds it until
/// it closes, in a task or parked in its worker's table.
pub struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let mut workers = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("guestgate-worker-{index}"))
                .spawn(move || {
                    crate::http::client::enter_worker(index);
                    // Tasks spawned onto the handle run while this blocks; when it returns,
                    // dropping the runtime cancels what is left.
                    let _ = runtime.block_on(stopped);
                })?;
            workers.push(Worker {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Workers { workers })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Runs a connection's future on the worker serving the fewest connections; the future
    /// is given the connection's place in that worker's count, to hold until the connection
    /// closes. Nothing in an async block runs before its first poll, which happens on that
    /// worker: a socket the block registers (`TcpStream::from_std`) belongs to that worker's
    /// reactor.
    pub fn spawn<F>(&self, connection: impl FnOnce(OpenConnection) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            return;
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        // Given to the connection, not dropped when this task ends: a parked connection
        // outlives its task. And no `async move` block around `connection`: such a block
        // keeps the captured future and the awaited one side by side (twice the task).
        let open = OpenConnection(worker.open.clone());
        worker.handle.spawn(connection(open));
    }

    /// Stops every worker and waits for its thread to end.
    pub fn stop_and_join(mut self) {
        self.signal_stop();
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn signal_stop(&mut self) {
        for worker in &mut self.workers {
            if let Some(stop) = worker.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

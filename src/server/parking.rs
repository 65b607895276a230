//! Parked connections: plain HTTP/1.1 keep-alive connections with nothing in progress,
//! held by their worker in one table instead of each in a task of its own.
//!
//! An idle keep-alive connection is most of what a busy site's proxy holds (browsers and
//! pooling clients leave them open), so what one costs is what the proxy's memory is made
//! of. A task per connection is sized for the busiest state the connection can be in
//! (896 bytes, -Zprint-type-sizes) and carries its own timer; an entry here is the socket,
//! what the connection needs to resume, and one small waker. The table wakes an entry when
//! its socket turns readable and hands it back to a task of its own, which serves the next
//! request; it closes entries idle past their limit, and all of them when the gateway shuts
//! down. This is the way nginx keeps an idle connection: an entry in its worker's
//! connection array, with no stack or coroutine behind it.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::FutureExt as _;
use slab::Slab;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::connection::{Http1Connection, serve_http1, sleep_until_some};

thread_local! {
    /// This worker's table. A worker is one thread with its own runtime, and a connection
    /// is served by the worker that accepted it to its end: its socket is registered with
    /// that worker's reactor.
    static TABLE: RefCell<Option<mpsc::UnboundedSender<Http1Connection>>> =
        const { RefCell::new(None) };
}

/// Serves a plain HTTP/1.1 connection (`serving`, server/connection.rs) and parks it when
/// it comes back idle.
pub(super) fn then_park(
    serving: impl Future<Output = Option<Http1Connection>> + Send,
) -> impl Future<Output = ()> + Send {
    serving.map(|idle| {
        if let Some(idle) = idle {
            park(idle);
        }
    })
}

/// Hands an idle connection to its worker's table, which serves it again in a task of its
/// own when the client sends (or closes it). Must be called from a task on the worker.
fn park(connection: Http1Connection) {
    TABLE.with(|table| {
        let mut table = table.borrow_mut();
        let connection = match table.as_ref() {
            Some(sender) => match sender.send(connection) {
                Ok(()) => return,
                // The table's task is gone with the runtime it ran on (a runtime ended on
                // this thread and another began): a new table for the new runtime.
                Err(mpsc::error::SendError(connection)) => connection,
            },
            None => connection,
        };
        let (sender, parked) = mpsc::unbounded_channel();
        tokio::spawn(hold(parked));
        // Cannot fail: the receiver was just made, and its task cannot have ended.
        let _ = sender.send(connection);
        *table = Some(sender);
    });
}

/// The table's task: takes in parked connections, resumes those whose client sent
/// something, closes those idle too long or all at shutdown.
async fn hold(mut incoming: mpsc::UnboundedReceiver<Http1Connection>) {
    let mut table = Table::new();
    // The gateway's shutdown signal, from the first connection parked (every connection a
    // worker serves belongs to the same server).
    let mut shutdown: Option<watch::Receiver<bool>> = None;
    let mut shut = false;
    loop {
        let next_deadline = table.next_deadline();
        tokio::select! {
            biased;
            () = table.ready.notify.notified() => table.resume_ready(),
            connection = incoming.recv() => {
                let Some(connection) = connection else { return };
                if shut {
                    // Dropped: closed, as every idle connection is at shutdown.
                    continue;
                }
                if shutdown.is_none() {
                    shutdown = Some(connection.shutdown_signal());
                }
                table.insert(connection);
            }
            () = shutdown_signalled(&mut shutdown), if !shut => {
                table.close_all();
                shut = true;
            }
            () = sleep_until_some(next_deadline) => table.close_expired(),
        }
    }
}

/// Resolves when the gateway shuts down, or has already begun to, or its signal's sender
/// is gone (the server with it); never while there is no signal yet.
async fn shutdown_signalled(shutdown: &mut Option<watch::Receiver<bool>>) {
    let Some(signal) = shutdown else {
        return std::future::pending().await;
    };
    let _ = signal.wait_for(|shutting_down| *shutting_down).await;
}

struct Entry {
    connection: Http1Connection,
    /// Tells the table this entry's socket is ready; registered with the socket.
    waker: Waker,
    /// Which use of the slot this is: a deadline queued for an earlier occupant of the same
    /// slot must not close this one.
    generation: u64,
}

impl Entry {
    /// Its place in the table's deadlines, as the entry in slot `index`.
    fn deadline(&self, index: usize) -> Reverse<(Instant, usize, u64)> {
        Reverse((self.connection.idle_deadline(), index, self.generation))
    }
}

struct Table {
    entries: Slab<Entry>,
    /// When each entry will have been idle past its limit, earliest first. Entries resumed
    /// leave theirs behind, skipped when they come up; the heap is rebuilt when such stale
    /// deadlines outnumber the live ones.
    deadlines: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    generations: u64,
    ready: Arc<Ready>,
    /// The slots to look at, swapped with `Ready::slots` so that neither reallocates.
    woken: Vec<usize>,
}

/// Slots whose sockets reported readiness, and the table's wake-up.
#[derive(Default)]
struct Ready {
    slots: Mutex<Vec<usize>>,
    notify: Notify,
}

/// The waker registered with a parked socket: it queues its slot. A slot woken after its
/// entry left (or queued twice) is only polled again, which is harmless.
struct SlotWaker {
    slot: usize,
    ready: Arc<Ready>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.slot);
        self.ready.notify.notify_one();
    }
}

impl Table {
    fn new() -> Table {
        Table {
            entries: Slab::new(),
            deadlines: BinaryHeap::new(),
            generations: 0,
            ready: Arc::default(),
            woken: Vec::new(),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _, _))| *at)
    }

    fn insert(&mut self, mut connection: Http1Connection) {
        if connection.shutting_down() {
            // Closed: shutdown closes idle connections that have served a request, and a
            // parked one has.
            return;
        }
        let slot = self.entries.vacant_entry();
        let waker = Waker::from(Arc::new(SlotWaker {
            slot: slot.key(),
            ready: self.ready.clone(),
        }));
        match connection.poll_readable(&mut Context::from_waker(&waker)) {
            Poll::Ready(true) => return resume(connection),
            Poll::Ready(false) => return,
            Poll::Pending => {}
        }
        connection.set_parked(true);
        self.generations += 1;
        let index = slot.key();
        let entry = slot.insert(Entry {
            connection,
            waker,
            generation: self.generations,
        });
        self.deadlines.push(entry.deadline(index));
        if self.deadlines.len() > 2 * self.entries.len() + 64 {
            self.deadlines = self
                .entries
                .iter()
                .map(|(index, entry)| entry.deadline(index))
                .collect();
        }
    }

    fn resume_ready(&mut self) {
        std::mem::swap(
            &mut *self
                .ready
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            &mut self.woken,
        );
        for index in self.woken.drain(..) {
            let Some(entry) = self.entries.get_mut(index) else {
                continue;
            };
            let readable = entry
                .connection
                .poll_readable(&mut Context::from_waker(&entry.waker));
            let Poll::Ready(readable) = readable else {
                continue;
            };
            let mut connection = self.entries.remove(index).connection;
            connection.set_parked(false);
            if readable {
                resume(connection);
            }
        }
    }

    fn close_expired(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, index, generation))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(entry) = self.entries.get(index) else {
                continue;
            };
            if entry.generation != generation {
                continue;
            }
            if entry.connection.idle_too_long() {
                self.entries.remove(index);
            } else {
                self.deadlines.push(entry.deadline(index));
            }
        }
    }

    fn close_all(&mut self) {
        self.entries.clear();
        self.deadlines.clear();
    }
}

fn resume(connection: Http1Connection) {
    tokio::spawn(then_park(serve_http1(connection)));
}

//! TailLogs: the live stream of stored log entries and its followers.
//!
//! IngestLogs publishes every entry it stores on a bounded broadcast
//! channel. A follower subscribes first, then sends the stored entries from
//! its `start_time` page by page, then forwards the live entries that pass
//! its filters and that no page already sent.
//!
//! Telling which live entries a page already sent needs to know which
//! writes a page's snapshot contains. Every write holds a shared permit of
//! `LiveLog::gate` from before its transaction begins until its entries
//! are published, and a follower takes the gate exclusively while a page's
//! snapshot is taken. Each published entry carries a sequence number, so an
//! entry numbered below the sequence read under the exclusive gate was
//! committed before the snapshot, and any later entry was committed after
//! it. Followers keep no list of sent ids, however many entries the stored
//! part holds.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedRwLockReadGuard, RwLock, broadcast, mpsc, watch};
use tonic::Status;

use crate::api::{convert, to_status};
use crate::pb;
use crate::pb::tail_logs_response::{Event, FellBehind};
use crate::storage::logs::{self, LogFilter};
use crate::storage::models::LogEntryRow;
use crate::storage::paging::Cursor;
use crate::storage::{Storage, now_micros};

/// Responses queued for one follower's client. A follower whose client
/// reads slowly waits here, and its broadcast receiver falls behind instead
/// of this queue growing.
const FOLLOWER_QUEUE: usize = 32;

/// Stored entries read per snapshot while a follower catches up from its
/// `start_time`.
const STORED_PAGE_SIZE: i64 = 500;

/// Response stream of one follower.
pub type TailSender = mpsc::Sender<Result<pb::TailLogsResponse, Status>>;

/// A stored entry on the live stream, with its position in publication order.
#[derive(Debug)]
pub struct LiveEntry {
    sequence: u64,
    row: LogEntryRow,
}

/// The live stream of stored entries that followers subscribe to.
pub struct LiveLog {
    sender: broadcast::Sender<Arc<LiveEntry>>,
    /// Sequence number of the next published entry. Entries are numbered and
    /// sent under this lock, so sequence order is channel order.
    next_sequence: Mutex<u64>,
    /// Lock held shared by each write from before its transaction begins
    /// until its entries are published, and exclusively by a follower while
    /// it subscribes or takes a snapshot.
    gate: Arc<RwLock<()>>,
    /// Becomes `true` when the server shuts down, which ends every follower.
    stopping: watch::Sender<bool>,
}

impl LiveLog {
    /// Creates the stream with room for `capacity` entries (at least 1) that
    /// the slowest follower has not read yet.
    pub fn new(capacity: usize) -> LiveLog {
        let (sender, _) = broadcast::channel(capacity.max(1));
        LiveLog {
            sender,
            next_sequence: Mutex::new(0),
            gate: Arc::new(RwLock::new(())),
            stopping: watch::Sender::new(false),
        }
    }

    /// Waits for a write permit, to hold from before a write's transaction
    /// begins until `publish` has returned.
    pub async fn write_permit(&self) -> OwnedRwLockReadGuard<()> {
        self.gate.clone().read_owned().await
    }

    /// Returns whether any follower is subscribed, so that a write holding a
    /// permit can skip reading its rows back when none is.
    pub fn has_followers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Numbers `rows` and sends them to the subscribed followers.
    pub fn publish(&self, rows: Vec<LogEntryRow>) {
        if rows.is_empty() {
            return;
        }
        let mut next = self
            .next_sequence
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for row in rows {
            let entry = Arc::new(LiveEntry {
                sequence: *next,
                row,
            });
            *next += 1;
            // Sending fails only when no follower is subscribed.
            let _ = self.sender.send(entry);
        }
    }

    fn next_sequence(&self) -> u64 {
        *self
            .next_sequence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribes a follower. While this call has the gate exclusively, no
    /// write is between its commit and its publication, so every write that
    /// commits after this call publishes to the new receiver.
    pub async fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEntry>> {
        let _gate = self.gate.write().await;
        self.sender.subscribe()
    }

    /// Ends every follower's stream with UNAVAILABLE; used at shutdown.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }
}

/// A page of stored entries already sent: the cursor of its last entry
/// (`None` for the final page, which reaches to the end) and the sequence
/// number of the live stream when its snapshot was taken.
struct SentPage {
    last: Option<Cursor>,
    sequence: u64,
}

/// The pages sent from the stored entries, in order.
#[derive(Default)]
struct SentPages {
    pages: Vec<SentPage>,
}

impl SentPages {
    /// Returns whether a page already sent `entry`, which passes the filter.
    /// The page whose range covers the entry's position contains it exactly
    /// when the entry was published before that page's snapshot was taken.
    fn contains(&self, entry: &LiveEntry) -> bool {
        let position = (entry.row.timestamp, entry.row.id);
        let index = self
            .pages
            .partition_point(|page| page.last.is_some_and(|last| (last.key, last.id) < position));
        self.pages
            .get(index)
            .is_some_and(|page| entry.sequence < page.sequence)
    }

    /// Forgets the pages once `sequence` is past every page's snapshot: no
    /// later entry can be in a page, since sequence order is channel order.
    fn forget_before(&mut self, sequence: u64) {
        if self
            .pages
            .last()
            .is_some_and(|page| sequence >= page.sequence)
        {
            self.pages.clear();
        }
    }
}

/// Outcome of a follower's stream.
enum End {
    /// The client went away or the stream ended as requested.
    Done,
    /// The stream ends with this error.
    Failed(Status),
}

/// Counts of one follower, for its closing log line.
#[derive(Default)]
struct Totals {
    stored_sent: u64,
    live_sent: u64,
    missed: u64,
}

/// One TailLogs call: its filter, its receiver and its response queue.
pub struct Follower {
    storage: Storage,
    live: Arc<LiveLog>,
    filter: LogFilter,
    receiver: broadcast::Receiver<Arc<LiveEntry>>,
    sender: TailSender,
    totals: Totals,
}

/// Creates the bounded response queue of one follower's stream.
pub fn follower_queue() -> (
    TailSender,
    mpsc::Receiver<Result<pb::TailLogsResponse, Status>>,
) {
    mpsc::channel(FOLLOWER_QUEUE)
}

impl Follower {
    /// Creates a follower whose receiver is already subscribed.
    pub fn new(
        storage: Storage,
        live: Arc<LiveLog>,
        filter: LogFilter,
        receiver: broadcast::Receiver<Arc<LiveEntry>>,
        sender: TailSender,
    ) -> Follower {
        Follower {
            storage,
            live,
            filter,
            receiver,
            sender,
            totals: Totals::default(),
        }
    }

    /// Sends the stored entries from `start_time`, then the live ones, until
    /// the client goes away, `end_time` passes, or the server shuts down.
    pub async fn run(mut self) {
        let mut stopping = self.live.stopping.subscribe();
        let end = tokio::select! {
            end = self.follow() => end,
            _ = stopping.wait_for(|stopping| *stopping) => End::Failed(Status::unavailable(
                "the server is shutting down; call TailLogs again with start_time to resume",
            )),
        };
        if let End::Failed(status) = end {
            let _ = self.sender.send(Err(status)).await;
        }
        tracing::info!(
            stored_sent = self.totals.stored_sent,
            live_sent = self.totals.live_sent,
            missed_entries = self.totals.missed,
            "log follower ended"
        );
    }

    async fn follow(&mut self) -> End {
        let mut sent = SentPages::default();
        if self.filter.start_time.is_some() {
            match self.send_stored().await {
                Ok(Some(pages)) => sent = pages,
                Ok(None) => return End::Done,
                Err(status) => return End::Failed(status),
            }
        }
        self.send_live(sent).await
    }

    /// Sends the stored entries that pass the filter, oldest first, and
    /// returns the pages sent, or `None` once the client has gone.
    async fn send_stored(&mut self) -> Result<Option<SentPages>, Status> {
        let mut sent = SentPages::default();
        let mut after: Option<Cursor> = None;
        loop {
            let (rows, sequence) = self.read_page(after).await?;
            let full = rows.len() as i64 == STORED_PAGE_SIZE;
            let last = rows.last().map(|row| Cursor {
                key: row.timestamp,
                id: row.id,
            });
            for row in rows {
                if !self.send_entry(row).await {
                    return Ok(None);
                }
                self.totals.stored_sent += 1;
            }
            if !full {
                sent.pages.push(SentPage {
                    last: None,
                    sequence,
                });
                return Ok(Some(sent));
            }
            sent.pages.push(SentPage { last, sequence });
            after = last;
        }
    }

    /// Reads one page of stored entries after `after` in a snapshot taken
    /// under the exclusive gate, and returns it with the sequence number of
    /// the first entry published after the snapshot.
    async fn read_page(&self, after: Option<Cursor>) -> Result<(Vec<LogEntryRow>, u64), Status> {
        // The gate is held only until the snapshot exists, so writes pause
        // for a connection checkout and one short statement, not the query.
        // NOTE: with no free connection in the pool, writes wait as long as
        // the checkout does, up to the pool timeout.
        let gate = self.live.gate.clone().write_owned().await;
        let live = Arc::clone(&self.live);
        let filter = self.filter.clone();
        self.storage
            .run(move |conn| {
                logs::read_snapshot(
                    conn,
                    move || {
                        let sequence = live.next_sequence();
                        drop(gate);
                        sequence
                    },
                    |conn, sequence| {
                        logs::list_oldest_first(conn, &filter, after, STORED_PAGE_SIZE)
                            .map(|rows| (rows, sequence))
                    },
                )
            })
            .await
            .map_err(to_status)
    }

    /// Forwards live entries until the client goes away or `end_time`
    /// passes.
    async fn send_live(&mut self, mut sent: SentPages) -> End {
        let deadline = self.filter.end_time.and_then(|end| {
            let wait_micros = end.saturating_sub(now_micros()).max(0) as u64;
            tokio::time::Instant::now().checked_add(Duration::from_micros(wait_micros))
        });
        let until_deadline = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(until_deadline);

        loop {
            let received = tokio::select! {
                biased;
                _ = &mut until_deadline => return End::Done,
                _ = self.sender.closed() => return End::Done,
                received = self.receiver.recv() => received,
            };
            match received {
                Ok(entry) => {
                    let duplicate = sent.contains(&entry);
                    sent.forget_before(entry.sequence);
                    if duplicate || !self.filter.matches(&entry.row) {
                        continue;
                    }
                    if !self.send_entry(entry.row.clone()).await {
                        return End::Done;
                    }
                    self.totals.live_sent += 1;
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed_entries = missed, "log follower fell behind");
                    self.totals.missed += missed;
                    let event = Event::FellBehind(FellBehind {
                        missed_entries: missed as i64,
                    });
                    if !self.send(event).await {
                        return End::Done;
                    }
                }
                Err(RecvError::Closed) => return End::Done,
            }
        }
    }

    /// Sends one entry and returns `false` once the client has gone.
    async fn send_entry(&self, row: LogEntryRow) -> bool {
        self.send(Event::Entry(convert::log_entry(row))).await
    }

    async fn send(&self, event: Event) -> bool {
        let response = pb::TailLogsResponse { event: Some(event) };
        self.sender.send(Ok(response)).await.is_ok()
    }
}

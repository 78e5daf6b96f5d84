//! LogService: streaming, idempotent log ingest, log queries and the live
//! tail of stored entries.
//!
//! `IngestLogs` validates entries on the async side and hands batches to one
//! writer task through a channel of two batches. When the database falls
//! behind, the channel fills, the handler stops reading the stream, and
//! HTTP/2 flow control slows the client, so memory stays bounded however
//! long the stream is. Stored entries go to the followers of `TailLogs`
//! (see `tail`).

mod tail;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use self::tail::{Follower, LiveLog};
use super::convert::{self, timestamp_to_micros};
use super::paging::list_page;
use super::validate::{self, MAX_METADATA_BYTES, MAX_NAME_BYTES, MAX_TEXT_BYTES};
use super::{invalid_argument, to_status};
use crate::levels;
use crate::metrics::METRICS;
use crate::pb;
use crate::pb::log_service_server::LogService;
use crate::storage::logs::{self, LogFilter};
use crate::storage::models::NewLogEntryRow;
use crate::storage::{Storage, StorageError, now_micros};

/// Entries per write transaction.
const BATCH_ROWS: usize = 1_000;
/// Batches of one stream written at once. On PostgreSQL they run on
/// separate connections, so the database inserts on several cores; on
/// SQLite the writer thread commits them together. Entry ids stay
/// exactly-once whatever the order, because the unique index decides.
const BATCHES_IN_FLIGHT: usize = 2;
/// Maximum time a partial batch waits for more entries before it is written.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Rejections listed in the response; `rejected_count` counts them all.
const MAX_LISTED_REJECTIONS: usize = 1_000;
/// Default page size of QueryLogs.
const LOG_PAGE_SIZE: i32 = 100;

/// Handlers of LogService.
pub struct LogApi {
    storage: Storage,
    live: Arc<LiveLog>,
}

/// Ends the TailLogs streams of a server when it shuts down.
#[derive(Clone)]
pub struct TailShutdown(Arc<LiveLog>);

impl TailShutdown {
    /// Ends every TailLogs stream with UNAVAILABLE, so that a graceful
    /// shutdown does not wait for followers that never finish.
    pub fn stop(&self) {
        self.0.stop();
    }
}

impl LogApi {
    /// Creates the handlers. The live stream of TailLogs keeps up to
    /// `tail_buffer` entries that the slowest follower has not read yet.
    pub fn new(storage: Storage, tail_buffer: usize) -> Self {
        LogApi {
            storage,
            live: Arc::new(LiveLog::new(tail_buffer)),
        }
    }

    /// Returns the handle that ends the TailLogs streams at shutdown.
    pub fn tail_shutdown(&self) -> TailShutdown {
        TailShutdown(Arc::clone(&self.live))
    }
}

/// Entries waiting to be written, with their positions in the stream.
#[derive(Default)]
struct Batch {
    rows: Vec<NewLogEntryRow>,
    positions: Vec<i64>,
}

/// Running totals of one stream.
#[derive(Default)]
struct Tally {
    accepted: i64,
    duplicates: i64,
    rejected: i64,
    rejections: Vec<pb::RejectedEntry>,
}

impl Tally {
    fn reject(&mut self, position: i64, entry_id: &str, field: &str, reason: String) {
        self.rejected += 1;
        METRICS.log_entries_rejected.fetch_add(1, Ordering::Relaxed);
        if self.rejections.len() < MAX_LISTED_REJECTIONS {
            self.rejections.push(pb::RejectedEntry {
                position,
                entry_id: entry_id.to_string(),
                field: field.to_string(),
                reason,
            });
        }
    }
}

/// Why an entry is invalid: the field and the reason.
type EntryError = (&'static str, String);

fn limit_error(len: usize, max: usize) -> String {
    format!("is {len} bytes, more than the limit of {max}")
}

/// Validates one entry and builds its row.
fn entry_row(entry: pb::NewLogEntry, received_at: i64) -> Result<NewLogEntryRow, EntryError> {
    if entry.entry_id.len() > MAX_NAME_BYTES {
        return Err((
            "entry_id",
            limit_error(entry.entry_id.len(), MAX_NAME_BYTES),
        ));
    }
    let Some(severity_number) = levels::severity_number(&entry.level) else {
        let reason = if entry.level.trim().is_empty() {
            "is required".to_string()
        } else {
            format!(
                "{:?} is not a level name of Python logging, log4j, syslog or OpenTelemetry",
                entry.level
            )
        };
        return Err(("level", reason));
    };
    if entry.message.is_empty() {
        return Err(("message", "is required".to_string()));
    }
    if entry.message.len() > MAX_TEXT_BYTES {
        return Err(("message", limit_error(entry.message.len(), MAX_TEXT_BYTES)));
    }
    if entry.crew_name.len() > MAX_NAME_BYTES {
        return Err((
            "crew_name",
            limit_error(entry.crew_name.len(), MAX_NAME_BYTES),
        ));
    }
    if entry.crew_output_id < 0 {
        return Err((
            "crew_output_id",
            format!("must not be negative, got {}", entry.crew_output_id),
        ));
    }
    let timestamp = match &entry.timestamp {
        Some(timestamp) => timestamp_to_micros(timestamp)
            .ok_or(("timestamp", "is not a valid timestamp".to_string()))?,
        None => received_at,
    };
    let metadata = match &entry.metadata {
        None => "{}".to_string(),
        Some(metadata) => {
            let json = convert::struct_to_json(metadata)
                .map_err(|error| ("metadata", error.to_string()))?;
            let text = json.to_string();
            if text.len() > MAX_METADATA_BYTES {
                return Err((
                    "metadata",
                    format!("{} as JSON", limit_error(text.len(), MAX_METADATA_BYTES)),
                ));
            }
            text
        }
    };
    Ok(NewLogEntryRow {
        entry_id: (!entry.entry_id.is_empty()).then_some(entry.entry_id),
        crew_output_id: (entry.crew_output_id != 0).then_some(entry.crew_output_id),
        timestamp,
        level: entry.level,
        severity_number,
        message: entry.message,
        crew_name: entry.crew_name,
        metadata,
        created_at: received_at,
        updated_at: received_at,
    })
}

/// Writes batches in order until the channel closes or a write fails, and
/// publishes the stored entries to the TailLogs followers.
async fn write_batches(
    storage: Storage,
    live: Arc<LiveLog>,
    batches: mpsc::Receiver<Batch>,
) -> Result<Tally, StorageError> {
    let mut writes = ReceiverStream::new(batches)
        .map(|Batch { rows, positions }| {
            let storage = storage.clone();
            let live = Arc::clone(&live);
            async move {
                // Held until the stored entries are published (see `tail`).
                let _permit = live.write_permit().await;
                let keep_stored = live.has_followers();
                let (rows, outcome, stored) = storage
                    .run_write(move |conn| {
                        let (outcome, stored) = if keep_stored {
                            logs::insert_batch_returning(conn, &rows)?
                        } else {
                            (logs::insert_batch(conn, &rows)?, Vec::new())
                        };
                        Ok((rows, outcome, stored))
                    })
                    .await?;
                live.publish(stored);
                Ok::<_, StorageError>((rows, positions, outcome))
            }
        })
        .buffer_unordered(BATCHES_IN_FLIGHT);

    let mut tally = Tally::default();
    while let Some(written) = writes.next().await {
        let (rows, positions, outcome) = written?;
        tally.accepted += outcome.inserted as i64;
        tally.duplicates += outcome.duplicates as i64;
        METRICS
            .log_entries_accepted
            .fetch_add(outcome.inserted, Ordering::Relaxed);
        METRICS
            .log_entries_duplicate
            .fetch_add(outcome.duplicates, Ordering::Relaxed);
        for index in outcome.missing_crew_output {
            let row = &rows[index];
            tally.reject(
                positions[index],
                row.entry_id.as_deref().unwrap_or_default(),
                "crew_output_id",
                format!(
                    "crew output {} not found",
                    row.crew_output_id.unwrap_or_default()
                ),
            );
        }
    }
    Ok(tally)
}

/// Receives one IngestLogs stream, writes its entries in batches, and
/// returns the response.
async fn ingest(
    storage: Storage,
    live: Arc<LiveLog>,
    mut stream: Streaming<pb::IngestLogsRequest>,
) -> Result<pb::IngestLogsResponse, Status> {
    let (sender, receiver) = mpsc::channel::<Batch>(2);
    let writer = tokio::spawn(write_batches(storage, live, receiver));

    let mut invalid = Tally::default();
    let mut batch = Batch::default();
    let mut position: i64 = 0;
    let mut stream_error: Option<Status> = None;
    loop {
        // A partial batch is written when the client pauses, so entries
        // of a slow stream are stored within FLUSH_INTERVAL.
        let next = if batch.rows.is_empty() {
            stream.next().await
        } else {
            match tokio::time::timeout(FLUSH_INTERVAL, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    if sender.send(std::mem::take(&mut batch)).await.is_err() {
                        break;
                    }
                    continue;
                }
            }
        };
        let message = match next {
            None => break,
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                stream_error = Some(error);
                break;
            }
        };
        if message.entries.len() > validate::MAX_BATCH_ITEMS {
            stream_error = Some(invalid_argument(
                "entries",
                format!(
                    "a message has {} entries, more than the limit of {}",
                    message.entries.len(),
                    validate::MAX_BATCH_ITEMS
                ),
            ));
            break;
        }

        let received_at = now_micros();
        for entry in message.entries {
            let entry_id = entry.entry_id.clone();
            match entry_row(entry, received_at) {
                Ok(row) => {
                    batch.rows.push(row);
                    batch.positions.push(position);
                }
                Err((field, reason)) => invalid.reject(position, &entry_id, field, reason),
            }
            position += 1;
        }
        if batch.rows.len() >= BATCH_ROWS && sender.send(std::mem::take(&mut batch)).await.is_err()
        {
            break;
        }
    }
    if !batch.rows.is_empty() {
        // The writer may have stopped on an error; it reports that below.
        let _ = sender.send(batch).await;
    }
    drop(sender);

    let written = writer
        .await
        .map_err(|error| {
            tracing::error!(error = %error, "log writer task failed");
            Status::internal("internal error")
        })?
        .map_err(to_status)?;
    if let Some(error) = stream_error {
        tracing::info!(
            stored = written.accepted,
            received = position,
            error = %error,
            "log stream ended early; stored entries stay stored"
        );
        return Err(error);
    }

    let mut rejections = invalid.rejections;
    rejections.extend(written.rejections);
    rejections.sort_by_key(|rejection| rejection.position);
    rejections.truncate(MAX_LISTED_REJECTIONS);
    let response = pb::IngestLogsResponse {
        accepted_count: written.accepted,
        duplicate_count: written.duplicates,
        rejected_count: invalid.rejected + written.rejected,
        rejections,
    };
    tracing::info!(
        accepted = response.accepted_count,
        duplicates = response.duplicate_count,
        rejected = response.rejected_count,
        "ingested log stream"
    );
    Ok(response)
}

#[tonic::async_trait]
impl LogService for LogApi {
    async fn ingest_logs(
        &self,
        request: Request<Streaming<pb::IngestLogsRequest>>,
    ) -> Result<Response<pb::IngestLogsResponse>, Status> {
        let work = ingest(
            self.storage.clone(),
            Arc::clone(&self.live),
            request.into_inner(),
        );
        let response = crate::background::run(work.in_current_span())
            .await
            .map_err(|error| {
                tracing::error!(error = %error, "log stream task failed");
                Status::internal("internal error")
            })??;
        Ok(Response::new(response))
    }

    async fn query_logs(
        &self,
        request: Request<pb::QueryLogsRequest>,
    ) -> Result<Response<pb::QueryLogsResponse>, Status> {
        let request = request.into_inner();
        let filter = log_filter(FilterFields {
            start_time: request.start_time.as_ref(),
            end_time: request.end_time.as_ref(),
            min_level: &request.min_level,
            crew_name: &request.crew_name,
            crew_output_id: request.crew_output_id,
            message_contains: &request.message_contains,
        })?;
        let listed = list_page(
            &self.storage,
            filter,
            request.page_size,
            &request.page_token,
            LOG_PAGE_SIZE,
            logs::query,
        )
        .await?;

        Ok(Response::new(pb::QueryLogsResponse {
            next_page_token: listed.next_page_token,
            total_size: listed.total_size,
            entries: listed.items.into_iter().map(convert::log_entry).collect(),
        }))
    }

    type TailLogsStream = ReceiverStream<Result<pb::TailLogsResponse, Status>>;

    async fn tail_logs(
        &self,
        request: Request<pb::TailLogsRequest>,
    ) -> Result<Response<Self::TailLogsStream>, Status> {
        let request = request.into_inner();
        let filter = log_filter(FilterFields {
            start_time: request.start_time.as_ref(),
            end_time: request.end_time.as_ref(),
            min_level: &request.min_level,
            crew_name: &request.crew_name,
            crew_output_id: request.crew_output_id,
            message_contains: &request.message_contains,
        })?;
        if let (Some(start), Some(end)) = (request.start_time, request.end_time)
            && filter.end_time <= filter.start_time
        {
            return Err(invalid_argument(
                "end_time",
                format!("{end} is not after start_time {start}"),
            ));
        }

        // Subscribed before the response headers go out, so a client that
        // has them receives every entry stored from then on.
        let receiver = self.live.subscribe().await;
        let (sender, responses) = tail::follower_queue();
        let follower = Follower::new(
            self.storage.clone(),
            Arc::clone(&self.live),
            filter,
            receiver,
            sender,
        );
        tokio::spawn(follower.run().in_current_span());
        Ok(Response::new(ReceiverStream::new(responses)))
    }
}

/// The filter fields that QueryLogs and TailLogs share.
struct FilterFields<'a> {
    start_time: Option<&'a prost_types::Timestamp>,
    end_time: Option<&'a prost_types::Timestamp>,
    min_level: &'a str,
    crew_name: &'a str,
    crew_output_id: i64,
    message_contains: &'a str,
}

/// Validates the filter fields of a log request.
fn log_filter(fields: FilterFields<'_>) -> Result<LogFilter, Status> {
    let min_severity = if fields.min_level.is_empty() {
        None
    } else {
        Some(levels::severity_number(fields.min_level).ok_or_else(|| {
            invalid_argument(
                "min_level",
                format!("{:?} is not a known level name", fields.min_level),
            )
        })?)
    };
    Ok(LogFilter {
        start_time: validate::timestamp("start_time", fields.start_time)?,
        end_time: validate::timestamp("end_time", fields.end_time)?,
        min_severity,
        crew_name: validate::filter_text("crew_name", fields.crew_name, MAX_NAME_BYTES)?,
        crew_output_id: validate::optional_id("crew_output_id", fields.crew_output_id)?,
        message_contains: validate::filter_text(
            "message_contains",
            fields.message_contains,
            MAX_NAME_BYTES,
        )?,
    })
}

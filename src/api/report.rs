//! ReportService: ExportSarif streams a run as a SARIF log, and
//! DraftPullRequest builds and stores a pull-request draft of a run.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::validate::{self, MAX_DOCUMENT_BYTES, MAX_PATH_BYTES};
use super::{convert, to_status};
use crate::pb::report_service_server::ReportService;
use crate::pb::{self, FixStatus};
use crate::sarif::export::{self, LOG_END, SarifExport};
use crate::sarif::pull_request::{self, DraftInput};
use crate::storage::models::NewFixRow;
use crate::storage::reports::{self, ExportStart};
use crate::storage::{Storage, fixes, now_micros};

/// Largest `data` of one ExportSarifChunk, in bytes.
const CHUNK_BYTES: usize = 1024 * 1024;

/// Findings read and serialized per database round trip of an export.
const EXPORT_PAGE_SIZE: i64 = 1_000;

pub struct ReportApi {
    storage: Storage,
}

impl ReportApi {
    pub fn new(storage: Storage) -> Self {
        ReportApi { storage }
    }
}

/// Collects log bytes and sends them in chunks of `CHUNK_BYTES`.
struct ChunkSender {
    sender: mpsc::Sender<Result<pb::ExportSarifChunk, Status>>,
    pending: Vec<u8>,
    sent_bytes: usize,
}

impl ChunkSender {
    /// Appends bytes and sends every full chunk; `false` once the client
    /// has gone.
    async fn push(&mut self, bytes: &[u8]) -> bool {
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= CHUNK_BYTES {
            let rest = self.pending.split_off(CHUNK_BYTES);
            let data = std::mem::replace(&mut self.pending, rest);
            if !self.send(data).await {
                return false;
            }
        }
        true
    }

    /// Sends the last, partial chunk.
    async fn finish(&mut self) -> bool {
        let data = std::mem::take(&mut self.pending);
        data.is_empty() || self.send(data).await
    }

    async fn send(&mut self, data: Vec<u8>) -> bool {
        self.sent_bytes += data.len();
        self.sender
            .send(Ok(pb::ExportSarifChunk { data }))
            .await
            .is_ok()
    }
}

/// Reads the findings page by page after `start`, serializes them on the
/// blocking threads and streams the log.
async fn stream_log(
    storage: Storage,
    start: ExportStart,
    sender: mpsc::Sender<Result<pb::ExportSarifChunk, Status>>,
) {
    let crew_output_id = start.crew_output.id;
    let (exporter, head) = SarifExport::start(&start);
    let exporter = Arc::new(exporter);
    let mut chunks = ChunkSender {
        sender,
        pending: head,
        sent_bytes: 0,
    };

    let mut after = 0;
    let mut result_count = 0;
    while let Some(last) = start.last_finding_id {
        let page_exporter = Arc::clone(&exporter);
        let first_of_log = result_count == 0;
        let page = storage
            .run(move |conn| {
                let page =
                    reports::export_page(conn, crew_output_id, after, last, EXPORT_PAGE_SIZE)?;
                let bytes = page_exporter.write_page(&page, first_of_log);
                Ok((
                    page.findings.last().map(|row| row.id),
                    page.findings.len(),
                    bytes,
                ))
            })
            .await;
        let (page_last, count, bytes) = match page {
            Ok(page) => page,
            Err(error) => {
                let _ = chunks.sender.send(Err(to_status(error))).await;
                return;
            }
        };
        if !chunks.push(&bytes).await {
            tracing::info!(
                crew_output.id = crew_output_id,
                "SARIF export cancelled by the client"
            );
            return;
        }
        result_count += count;
        match page_last {
            Some(id) if id < last => after = id,
            _ => break,
        }
    }

    if chunks.push(LOG_END).await && chunks.finish().await {
        tracing::info!(
            crew_output.id = crew_output_id,
            results = result_count,
            sent_bytes = chunks.sent_bytes,
            "exported SARIF log"
        );
    }
}

#[tonic::async_trait]
impl ReportService for ReportApi {
    type ExportSarifStream = ReceiverStream<Result<pb::ExportSarifChunk, Status>>;

    async fn export_sarif(
        &self,
        request: Request<pb::ExportSarifRequest>,
    ) -> Result<Response<Self::ExportSarifStream>, Status> {
        let crew_output_id = validate::id("crew_output_id", request.into_inner().crew_output_id)?;

        let start = self
            .storage
            .run(move |conn| reports::export_start(conn, crew_output_id))
            .await
            .map_err(to_status)?;

        let (sender, receiver) = mpsc::channel(2);
        tokio::spawn(stream_log(self.storage.clone(), start, sender));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn draft_pull_request(
        &self,
        request: Request<pb::DraftPullRequestRequest>,
    ) -> Result<Response<pb::DraftPullRequestResponse>, Status> {
        let request = request.into_inner();
        let crew_output_id = validate::id("crew_output_id", request.crew_output_id)?;
        let prefix = validate::filter_text(
            "file_path_prefix",
            &request.file_path_prefix,
            MAX_PATH_BYTES,
        )?;

        let query_prefix = prefix.clone();
        let sources = self
            .storage
            .run(move |conn| reports::draft_sources(conn, crew_output_id, query_prefix.as_deref()))
            .await
            .map_err(to_status)?;
        if sources.findings.is_empty() {
            let scope = prefix
                .as_deref()
                .map(|prefix| format!(" under {prefix:?}"))
                .unwrap_or_default();
            return Err(Status::failed_precondition(format!(
                "crew output {crew_output_id} has no OPEN, CONFIRMED or REOPENED findings{scope}"
            )));
        }

        let results: serde_json::Value =
            serde_json::from_str(&sources.crew_output.results).unwrap_or_default();
        let source_root = export::source_root(&results);
        let draft = pull_request::build(DraftInput {
            crew_name: &sources.crew_output.crew_name,
            crew_output_id,
            file_path_prefix: prefix.as_deref(),
            source_root: source_root.as_deref(),
            findings: &sources.findings,
            fixes: &sources.fixes,
        });
        let changes = serde_json::json!({ "title": draft.title, "body": draft.body }).to_string();
        if changes.len() > MAX_DOCUMENT_BYTES {
            tracing::error!(
                crew_output.id = crew_output_id,
                changes_bytes = changes.len(),
                "pull-request draft is larger than a JSON document may be"
            );
            return Err(Status::internal("the draft is too large to store"));
        }
        let now = now_micros();
        let row = NewFixRow {
            crew_output_id,
            file_path: draft.file_path.clone(),
            description: draft.title.clone(),
            changes,
            status: FixStatus::PrDraft as i32,
            created_at: now,
            updated_at: now,
        };
        let linked = draft.finding_ids.clone();

        let stored = self
            .storage
            .run_write(move |conn| fixes::insert(conn, row, linked))
            .await
            .map_err(to_status)?;

        tracing::info!(
            crew_output.id = crew_output_id,
            fix.id = stored.fix.id,
            findings = sources.findings.len(),
            fixes = sources.fixes.len(),
            "stored pull-request draft"
        );
        Ok(Response::new(pb::DraftPullRequestResponse {
            title: draft.title,
            body: draft.body,
            draft: Some(convert::fix(stored)),
        }))
    }
}

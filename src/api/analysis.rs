//! AnalysisService: findings (record, get, list, update), the history of a
//! file, and SARIF import.

use std::collections::BTreeSet;

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::fix::MAX_LINKED_FINDINGS;
use super::paging::{self, DEFAULT_PAGE_SIZE, encode_token, list_page, page_request};
use super::validate::{self, MAX_DOCUMENT_BYTES, MAX_NAME_BYTES, MAX_PATH_BYTES, MAX_TEXT_BYTES};
use super::{convert, invalid_argument, to_status};
use crate::fingerprint;
use crate::pb::analysis_service_server::AnalysisService;
use crate::pb::import_sarif_request::Payload;
use crate::pb::{
    self, CrewOutputStatus, DismissReason, FindingChange, FindingStatus, FixStatus, Priority,
};
use crate::sarif::{self, ImportOptions, ParsedRun};
use crate::state::json_diff;
use crate::state::matching::Matching;
use crate::storage::findings::{self, FindingFilter};
use crate::storage::imports::{self, RunImport};
use crate::storage::models::{NewFindingRow, NewFixRow};
use crate::storage::paging::Cursor;
use crate::storage::state::{self, CompareFilter};
use crate::storage::{Storage, crew_outputs, history, now_micros};

/// Default page size of GetFileHistory, which reads two tables a page.
const HISTORY_PAGE_SIZE: i32 = 100;

pub struct AnalysisApi {
    storage: Storage,
    /// Largest SARIF log accepted, compressed or not, in bytes.
    max_sarif_bytes: usize,
}

impl AnalysisApi {
    pub fn new(storage: Storage, max_sarif_bytes: usize) -> Self {
        AnalysisApi {
            storage,
            max_sarif_bytes,
        }
    }
}

/// Validates one finding of a RecordFindings or CompleteTask request and
/// builds its row; `field_prefix` names the finding in error messages.
pub(crate) fn new_finding_row(
    field_prefix: &str,
    crew_output_id: i64,
    finding: &pb::NewFinding,
    now: i64,
) -> Result<NewFindingRow, Status> {
    let field = |name: &str| format!("{field_prefix}.{name}");
    let file_path = validate::path(&field("file_path"), &finding.file_path)?;
    validate::limited(&field("rule_id"), &finding.rule_id, MAX_NAME_BYTES)?;
    validate::limited(&field("message"), &finding.message, MAX_TEXT_BYTES)?;
    validate::limited(&field("fingerprint"), &finding.fingerprint, MAX_NAME_BYTES)?;
    let priority = validate::enum_value::<Priority>(&field("priority"), finding.priority)?
        .unwrap_or(Priority::Medium);
    let analysis = validate::document(
        &field("analysis"),
        finding.analysis.as_ref(),
        MAX_DOCUMENT_BYTES,
    )?;
    let range = finding.range.unwrap_or_default();
    for (name, value) in [
        ("range.start_line", range.start_line),
        ("range.end_line", range.end_line),
        ("range.start_column", range.start_column),
        ("range.end_column", range.end_column),
    ] {
        if value < 0 {
            return Err(invalid_argument(
                &field(name),
                format!("must not be negative, got {value}"),
            ));
        }
    }
    if range.end_line != 0 && range.end_line < range.start_line {
        return Err(invalid_argument(
            &field("range.end_line"),
            format!(
                "{} is before start_line {}",
                range.end_line, range.start_line
            ),
        ));
    }

    let (fingerprint, fingerprint_version) = if finding.fingerprint.is_empty() {
        (
            fingerprint::derive(&finding.rule_id, &file_path, &finding.message),
            fingerprint::DERIVED_VERSION,
        )
    } else {
        (finding.fingerprint.clone(), fingerprint::EXTERNAL_VERSION)
    };
    Ok(NewFindingRow {
        crew_output_id,
        file_path,
        rule_id: finding.rule_id.clone(),
        message: finding.message.clone(),
        priority: priority as i32,
        status: FindingStatus::Open as i32,
        status_reason: String::new(),
        dismiss_reason: 0,
        start_line: range.start_line,
        end_line: range.end_line.max(range.start_line),
        start_column: range.start_column,
        end_column: range.end_column,
        fingerprint,
        fingerprint_version,
        analysis,
        created_at: now,
        updated_at: now,
    })
}

/// Turns parsed SARIF runs into rows; every run is a finished crew output.
fn run_imports(runs: Vec<ParsedRun>, options: &pb::ImportSarifOptions) -> Vec<RunImport> {
    let now = now_micros();
    runs.into_iter()
        .map(|run| {
            let crew_name = if options.crew_name.is_empty() {
                run.tool_name.clone()
            } else {
                options.crew_name.clone()
            };
            let output_type = if options.output_type.is_empty() {
                "sarif".to_string()
            } else {
                options.output_type.clone()
            };
            let crew_output = crew_outputs::new_row(
                crew_name,
                output_type,
                CrewOutputStatus::Succeeded,
                run.summary,
                String::new(),
            );
            let result_count = run.findings.len();
            let mut findings = Vec::with_capacity(result_count);
            let mut fixes = Vec::new();
            for (index, finding) in run.findings.into_iter().enumerate() {
                for fix in finding.fixes {
                    // The fix's own result and the others it lists, as many as
                    // RecordFix accepts.
                    let mut others: Vec<usize> = fix
                        .other_results
                        .iter()
                        .copied()
                        .filter(|&other| other < result_count && other != index)
                        .collect();
                    others.sort_unstable();
                    others.dedup();
                    others.truncate(MAX_LINKED_FINDINGS - 1);
                    let mut addressed = vec![index];
                    addressed.extend(others);
                    addressed.sort_unstable();
                    fixes.push((
                        addressed,
                        NewFixRow {
                            crew_output_id: 0,
                            file_path: fix.file_path,
                            description: fix.description,
                            changes: fix.changes,
                            status: FixStatus::Proposed as i32,
                            created_at: now,
                            updated_at: now,
                        },
                    ));
                }
                findings.push(NewFindingRow {
                    crew_output_id: 0,
                    file_path: finding.file_path,
                    rule_id: finding.rule_id,
                    message: finding.message,
                    priority: finding.priority as i32,
                    status: FindingStatus::Open as i32,
                    status_reason: String::new(),
                    dismiss_reason: 0,
                    start_line: finding.start_line,
                    end_line: finding.end_line,
                    start_column: finding.start_column,
                    end_column: finding.end_column,
                    fingerprint: finding.fingerprint,
                    fingerprint_version: finding.fingerprint_version,
                    analysis: finding.analysis,
                    created_at: now,
                    updated_at: now,
                });
            }
            RunImport {
                crew_output,
                findings,
                fixes,
            }
        })
        .collect()
}

/// One entry of a comparison in page order: the change, the finding id and,
/// for PERSISTING, the base finding id.
type ComparedEntry = (FindingChange, i64, i64);

/// Lists the entries of a comparison in page order (NEW, PERSISTING,
/// RESOLVED, each by finding id), keeping only `change` when it is set.
fn compared_entries(matching: &Matching, change: Option<FindingChange>) -> Vec<ComparedEntry> {
    let wanted = |kind: FindingChange| change.is_none_or(|change| change == kind);
    let mut entries = Vec::new();
    if wanted(FindingChange::New) {
        entries.extend(matching.new.iter().map(|id| (FindingChange::New, *id, 0)));
    }
    if wanted(FindingChange::Persisting) {
        entries.extend(
            matching
                .persisting
                .iter()
                .map(|(head, base)| (FindingChange::Persisting, *head, *base)),
        );
    }
    if wanted(FindingChange::Resolved) {
        entries.extend(
            matching
                .resolved
                .iter()
                .map(|id| (FindingChange::Resolved, *id, 0)),
        );
    }
    entries
}

fn results_diff(base: &str, head: &str) -> pb::JsonDiff {
    let parse = |text: &str| serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
    let diff = json_diff::diff(&parse(base), &parse(head));
    pb::JsonDiff {
        added: diff.added,
        removed: diff.removed,
        changed: diff.changed,
    }
}

impl AnalysisApi {
    /// Reads the options message and then the log bytes, up to the limit.
    async fn receive_sarif(
        &self,
        mut stream: Streaming<pb::ImportSarifRequest>,
    ) -> Result<(pb::ImportSarifOptions, Vec<u8>), Status> {
        let options = match stream.next().await {
            Some(Ok(pb::ImportSarifRequest {
                payload: Some(Payload::Options(options)),
            })) => options,
            Some(Ok(_)) => {
                return Err(invalid_argument(
                    "options",
                    "the first message must carry the options",
                ));
            }
            Some(Err(error)) => return Err(error),
            None => return Err(invalid_argument("options", "the stream is empty")),
        };
        validate::limited("options.crew_name", &options.crew_name, MAX_NAME_BYTES)?;
        validate::limited("options.output_type", &options.output_type, MAX_NAME_BYTES)?;
        validate::limited("options.source_root", &options.source_root, MAX_PATH_BYTES)?;

        let mut bytes = Vec::new();
        while let Some(message) = stream.next().await {
            match message?.payload {
                Some(Payload::Chunk(chunk)) => {
                    if bytes.len() + chunk.len() > self.max_sarif_bytes {
                        return Err(invalid_argument(
                            "chunk",
                            format!(
                                "the log is larger than the limit of {} bytes (--max-sarif-bytes)",
                                self.max_sarif_bytes
                            ),
                        ));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Some(Payload::Options(_)) => {
                    return Err(invalid_argument(
                        "options",
                        "only the first message may carry options",
                    ));
                }
                None => {}
            }
        }
        if bytes.is_empty() {
            return Err(invalid_argument("chunk", "the stream carried no log bytes"));
        }
        Ok((options, bytes))
    }
}

#[tonic::async_trait]
impl AnalysisService for AnalysisApi {
    async fn record_findings(
        &self,
        request: Request<pb::RecordFindingsRequest>,
    ) -> Result<Response<pb::RecordFindingsResponse>, Status> {
        let request = request.into_inner();
        let crew_output_id = validate::id("crew_output_id", request.crew_output_id)?;
        validate::batch_len("findings", request.findings.len())?;
        let now = now_micros();
        let rows = request
            .findings
            .iter()
            .enumerate()
            .map(|(index, finding)| {
                new_finding_row(&format!("findings[{index}]"), crew_output_id, finding, now)
            })
            .collect::<Result<Vec<_>, _>>()?;

        let stored = self
            .storage
            .run_write(move |conn| findings::insert_batch(conn, crew_output_id, rows))
            .await
            .map_err(to_status)?;

        tracing::info!(
            crew_output.id = crew_output_id,
            count = stored.len(),
            "recorded findings"
        );
        Ok(Response::new(pb::RecordFindingsResponse {
            findings: stored.into_iter().map(convert::finding).collect(),
        }))
    }

    async fn get_finding(
        &self,
        request: Request<pb::GetFindingRequest>,
    ) -> Result<Response<pb::Finding>, Status> {
        let id = validate::id("id", request.into_inner().id)?;
        let stored = self
            .storage
            .run(move |conn| findings::get(conn, id))
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::finding(stored)))
    }

    async fn list_findings(
        &self,
        request: Request<pb::ListFindingsRequest>,
    ) -> Result<Response<pb::ListFindingsResponse>, Status> {
        let request = request.into_inner();
        let filter = FindingFilter {
            crew_output_id: validate::optional_id("crew_output_id", request.crew_output_id)?,
            file_path: validate::filter_path("file_path", &request.file_path)?,
            file_path_prefix: validate::filter_text(
                "file_path_prefix",
                &request.file_path_prefix,
                MAX_PATH_BYTES,
            )?,
            min_priority: validate::enum_value::<Priority>("min_priority", request.min_priority)?
                .map(|priority| priority as i32),
            status: validate::enum_value::<FindingStatus>("status", request.status)?
                .map(|status| status as i32),
            rule_id: validate::filter_text("rule_id", &request.rule_id, MAX_NAME_BYTES)?,
        };
        if filter.file_path.is_none() && filter.file_path_prefix.is_none() {
            let listed = list_page(
                &self.storage,
                filter,
                request.page_size,
                &request.page_token,
                DEFAULT_PAGE_SIZE,
                findings::list,
            )
            .await?;
            return Ok(Response::new(pb::ListFindingsResponse {
                next_page_token: listed.next_page_token,
                total_size: listed.total_size,
                findings: listed.items.into_iter().map(convert::finding).collect(),
            }));
        }

        let size = paging::page_size(request.page_size, DEFAULT_PAGE_SIZE)?;
        let (after, counted) = paging::decode_path_token(&filter, &request.page_token)?
            .map_or((None, None), |(cursor, total)| (Some(cursor), total));
        let query_filter = filter.clone();
        let (rows, next, total_size) = self
            .storage
            .run(move |conn| {
                findings::list_by_path(conn, &query_filter, size, after.as_ref(), counted)
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListFindingsResponse {
            next_page_token: paging::encode_path_token(&filter, next.as_ref(), total_size),
            total_size,
            findings: rows.into_iter().map(convert::finding).collect(),
        }))
    }

    async fn update_finding(
        &self,
        request: Request<pb::UpdateFindingRequest>,
    ) -> Result<Response<pb::Finding>, Status> {
        let request = request.into_inner();
        let id = validate::id("id", request.id)?;
        let Some(new_status) = validate::enum_value::<FindingStatus>("status", request.status)?
        else {
            return Err(invalid_argument("status", "is required"));
        };
        validate::limited("reason", &request.reason, MAX_TEXT_BYTES)?;
        if new_status == FindingStatus::Dismissed && request.reason.trim().is_empty() {
            return Err(invalid_argument(
                "reason",
                "is required when status is DISMISSED",
            ));
        }

        let dismiss_reason =
            validate::enum_value::<DismissReason>("dismiss_reason", request.dismiss_reason)?;
        let dismissed = new_status == FindingStatus::Dismissed;
        if dismissed && dismiss_reason.is_none() {
            return Err(invalid_argument(
                "dismiss_reason",
                "is required when status is DISMISSED: FALSE_POSITIVE, WONT_FIX or USED_IN_TESTS",
            ));
        }
        if !dismissed && dismiss_reason.is_some() {
            return Err(invalid_argument(
                "dismiss_reason",
                "is only valid with status DISMISSED",
            ));
        }

        let reason = request.reason;
        let dismiss_reason = dismiss_reason.map_or(0, |category| category as i32);
        let stored = self
            .storage
            .run_write(move |conn| {
                findings::update_status(conn, id, new_status as i32, &reason, dismiss_reason)
            })
            .await
            .map_err(to_status)?;

        tracing::info!(
            finding.id = id,
            status = new_status.as_str_name(),
            "updated finding"
        );
        Ok(Response::new(convert::finding(stored)))
    }

    async fn get_file_history(
        &self,
        request: Request<pb::GetFileHistoryRequest>,
    ) -> Result<Response<pb::GetFileHistoryResponse>, Status> {
        let request = request.into_inner();
        let file_path = validate::path("file_path", &request.file_path)?;
        let page = page_request(
            &file_path,
            request.page_size,
            &request.page_token,
            HISTORY_PAGE_SIZE,
        )?;

        let path = file_path.clone();
        let found = self
            .storage
            .run(move |conn| history::file_history(conn, &path, page))
            .await
            .map_err(to_status)?;

        Ok(Response::new(pb::GetFileHistoryResponse {
            // The finding and fix counts are counted on every page.
            next_page_token: encode_token(&file_path, found.page.next, None),
            total_size: found.page.total,
            finding_count: found.finding_count,
            fix_count: found.fix_count,
            events: found
                .page
                .items
                .into_iter()
                .map(convert::history_event)
                .collect(),
        }))
    }

    async fn compare_runs(
        &self,
        request: Request<pb::CompareRunsRequest>,
    ) -> Result<Response<pb::CompareRunsResponse>, Status> {
        let request = request.into_inner();
        let base_id = validate::id("base_crew_output_id", request.base_crew_output_id)?;
        let head_id = validate::id("head_crew_output_id", request.head_crew_output_id)?;
        let filter = CompareFilter {
            file_path_prefix: validate::filter_text(
                "file_path_prefix",
                &request.file_path_prefix,
                MAX_PATH_BYTES,
            )?,
            rule_id: validate::filter_text("rule_id", &request.rule_id, MAX_NAME_BYTES)?,
            min_priority: validate::enum_value::<Priority>("min_priority", request.min_priority)?
                .map(|priority| priority as i32),
        };
        let change = validate::enum_value::<FindingChange>("change", request.change)?;
        let token_filter = (
            base_id,
            head_id,
            filter.clone(),
            change.map(|change| change as i32),
        );
        let page = page_request(
            &token_filter,
            request.page_size,
            &request.page_token,
            DEFAULT_PAGE_SIZE,
        )?;

        let (comparison, entries, rows) = self
            .storage
            .run(move |conn| {
                let comparison = state::compare(conn, base_id, head_id, &filter)?;
                let entries: Vec<ComparedEntry> = compared_entries(&comparison.matching, change)
                    .into_iter()
                    .filter(|(kind, id, _)| {
                        page.after
                            .is_none_or(|after| (*kind as i64, *id) > (after.key, after.id))
                    })
                    .take(page.size as usize + 1)
                    .collect();
                let ids: Vec<i64> = entries.iter().map(|(_, id, _)| *id).collect();
                let rows = state::findings_by_ids(conn, &ids)?;
                Ok((comparison, entries, rows))
            })
            .await
            .map_err(to_status)?;

        let matching = &comparison.matching;
        let total_size = compared_entries(matching, change).len() as i64;
        let mut entries = entries;
        let next_page_token = if entries.len() > page.size as usize {
            entries.truncate(page.size as usize);
            let (kind, id, _) = entries[entries.len() - 1];
            // The comparison is computed for every page, and its total with it.
            encode_token(
                &token_filter,
                Some(Cursor {
                    key: kind as i64,
                    id,
                }),
                None,
            )
        } else {
            String::new()
        };
        let mut rows: std::collections::HashMap<i64, _> =
            rows.into_iter().map(|row| (row.id, row)).collect();
        let findings = entries
            .iter()
            .filter_map(|(kind, id, base_id)| {
                // A finding deleted since the comparison is left out.
                let row = rows.remove(id)?;
                Some(pb::ComparedFinding {
                    change: *kind as i32,
                    finding: Some(convert::finding(row)),
                    base_finding_id: *base_id,
                })
            })
            .collect();

        Ok(Response::new(pb::CompareRunsResponse {
            new_count: matching.new.len() as i64,
            persisting_count: matching.persisting.len() as i64,
            resolved_count: matching.resolved.len() as i64,
            findings,
            next_page_token,
            total_size,
            results_diff: Some(results_diff(
                &comparison.base.results,
                &comparison.head.results,
            )),
        }))
    }

    async fn import_sarif(
        &self,
        request: Request<Streaming<pb::ImportSarifRequest>>,
    ) -> Result<Response<pb::ImportSarifResponse>, Status> {
        let (options, bytes) = self.receive_sarif(request.into_inner()).await?;
        let received_bytes = bytes.len();

        let max_bytes = self.max_sarif_bytes;
        let parse_options = ImportOptions {
            source_root: (!options.source_root.is_empty()).then(|| options.source_root.clone()),
        };
        let runs = tokio::task::spawn_blocking(move || {
            let plain = sarif::decompress(bytes, max_bytes)?;
            sarif::parse(&plain, &parse_options)
        })
        .await
        .map_err(|error| {
            tracing::error!(error = %error, "SARIF parsing task failed");
            Status::internal("internal error")
        })?
        .map_err(|error| invalid_argument("chunk", error.to_string()))?;

        let tool_names: Vec<String> = runs.iter().map(|run| run.tool_name.clone()).collect();
        let imports = run_imports(runs, &options);
        let imported = self
            .storage
            .run_write(move |conn| imports::import_runs(conn, imports))
            .await
            .map_err(to_status)?;

        let files: BTreeSet<&String> = imported.iter().flat_map(|run| &run.file_paths).collect();
        let response = pb::ImportSarifResponse {
            finding_count: imported.iter().map(|run| run.finding_count as i64).sum(),
            fix_count: imported.iter().map(|run| run.fix_count as i64).sum(),
            file_count: files.len() as i64,
            runs: imported
                .iter()
                .zip(tool_names)
                .map(|(run, tool_name)| pb::ImportedRun {
                    crew_output_id: run.crew_output_id,
                    tool_name,
                    finding_count: run.finding_count as i64,
                    fix_count: run.fix_count as i64,
                })
                .collect(),
        };
        tracing::info!(
            runs = response.runs.len(),
            findings = response.finding_count,
            fixes = response.fix_count,
            received_bytes,
            "imported SARIF log"
        );
        Ok(Response::new(response))
    }
}

//! FixService: record, get, list and update fixes, and their links to the
//! findings they address.

use tonic::{Request, Response, Status};

use super::paging::{DEFAULT_PAGE_SIZE, list_page};
use super::validate::{self, MAX_DOCUMENT_BYTES, MAX_TEXT_BYTES};
use super::{convert, to_status};
use crate::pb::fix_service_server::FixService;
use crate::pb::{self, FixStatus};
use crate::storage::fixes::{self, FixChanges, FixFilter};
use crate::storage::models::NewFixRow;
use crate::storage::{Storage, now_micros};

/// Most findings one fix may link to.
pub(crate) const MAX_LINKED_FINDINGS: usize = 10_000;

pub struct FixApi {
    storage: Storage,
}

impl FixApi {
    pub fn new(storage: Storage) -> Self {
        FixApi { storage }
    }
}

/// Validates the fields of a fix to record and builds its row;
/// `field_prefix` names the fix in error messages ("" for a top-level fix).
pub(crate) fn new_fix_row(
    field_prefix: &str,
    crew_output_id: i64,
    file_path: &str,
    description: String,
    changes: Option<&prost_types::Struct>,
    status: i32,
    now: i64,
) -> Result<NewFixRow, Status> {
    let field = |name: &str| format!("{field_prefix}{name}");
    let file_path = validate::path(&field("file_path"), file_path)?;
    validate::limited(&field("description"), &description, MAX_TEXT_BYTES)?;
    let changes = validate::document(&field("changes"), changes, MAX_DOCUMENT_BYTES)?;
    let status = settable_status(&field("status"), status)?.unwrap_or(FixStatus::Proposed);
    Ok(NewFixRow {
        crew_output_id,
        file_path,
        description,
        changes,
        status: status as i32,
        created_at: now,
        updated_at: now,
    })
}

/// Reads a fix status that a client may set. VERIFIED and REGRESSED are
/// the server's verdict on later runs, and PR_DRAFT marks the drafts that
/// DraftPullRequest stores, so a client cannot set them.
fn settable_status(field: &str, status: i32) -> Result<Option<FixStatus>, Status> {
    let status = validate::enum_value::<FixStatus>(field, status)?;
    match status {
        Some(verdict @ (FixStatus::Verified | FixStatus::Regressed)) => {
            Err(super::invalid_argument(
                field,
                format!(
                    "{} is set by the server when a later run of the crew no longer reports the \
                 fix's findings, or reports one again",
                    verdict.as_str_name()
                ),
            ))
        }
        Some(FixStatus::PrDraft) => Err(super::invalid_argument(
            field,
            "FIX_STATUS_PR_DRAFT is set by DraftPullRequest",
        )),
        _ => Ok(status),
    }
}

fn finding_ids(field: &str, ids: &[i64]) -> Result<Vec<i64>, Status> {
    if ids.len() > MAX_LINKED_FINDINGS {
        return Err(super::invalid_argument(
            field,
            format!(
                "has {} ids, more than the limit of {MAX_LINKED_FINDINGS}",
                ids.len()
            ),
        ));
    }
    ids.iter()
        .enumerate()
        .map(|(index, &id)| validate::id(&format!("{field}[{index}]"), id))
        .collect()
}

#[tonic::async_trait]
impl FixService for FixApi {
    async fn record_fix(
        &self,
        request: Request<pb::RecordFixRequest>,
    ) -> Result<Response<pb::Fix>, Status> {
        let request = request.into_inner();
        let crew_output_id = validate::id("crew_output_id", request.crew_output_id)?;
        let row = new_fix_row(
            "",
            crew_output_id,
            &request.file_path,
            request.description,
            request.changes.as_ref(),
            request.status,
            now_micros(),
        )?;
        let linked = finding_ids("finding_ids", &request.finding_ids)?;

        let stored = self
            .storage
            .run_write(move |conn| fixes::insert(conn, row, linked))
            .await
            .map_err(to_status)?;

        tracing::info!(
            fix.id = stored.fix.id,
            crew_output.id = crew_output_id,
            "recorded fix"
        );
        Ok(Response::new(convert::fix(stored)))
    }

    async fn get_fix(
        &self,
        request: Request<pb::GetFixRequest>,
    ) -> Result<Response<pb::Fix>, Status> {
        let id = validate::id("id", request.into_inner().id)?;
        let stored = self
            .storage
            .run(move |conn| fixes::get(conn, id))
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::fix(stored)))
    }

    async fn list_fixes(
        &self,
        request: Request<pb::ListFixesRequest>,
    ) -> Result<Response<pb::ListFixesResponse>, Status> {
        let request = request.into_inner();
        let filter = FixFilter {
            crew_output_id: validate::optional_id("crew_output_id", request.crew_output_id)?,
            file_path: validate::filter_path("file_path", &request.file_path)?,
            status: validate::enum_value::<FixStatus>("status", request.status)?
                .map(|status| status as i32),
        };
        let listed = list_page(
            &self.storage,
            filter,
            request.page_size,
            &request.page_token,
            DEFAULT_PAGE_SIZE,
            fixes::list,
        )
        .await?;

        Ok(Response::new(pb::ListFixesResponse {
            next_page_token: listed.next_page_token,
            total_size: listed.total_size,
            fixes: listed.items.into_iter().map(convert::fix).collect(),
        }))
    }

    async fn update_fix(
        &self,
        request: Request<pb::UpdateFixRequest>,
    ) -> Result<Response<pb::Fix>, Status> {
        let request = request.into_inner();
        let id = validate::id("id", request.id)?;
        validate::limited("description", &request.description, MAX_TEXT_BYTES)?;
        let changes = FixChanges {
            status: settable_status("status", request.status)?.map(|status| status as i32),
            description: (!request.description.is_empty()).then_some(request.description),
            finding_ids: if request.replace_finding_ids {
                Some(finding_ids("finding_ids", &request.finding_ids)?)
            } else {
                None
            },
        };

        let stored = self
            .storage
            .run_write(move |conn| fixes::update(conn, id, changes))
            .await
            .map_err(to_status)?;

        tracing::info!(fix.id = id, status = stored.fix.status, "updated fix");
        Ok(Response::new(convert::fix(stored)))
    }
}

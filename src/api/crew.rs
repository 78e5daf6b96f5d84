//! CrewService: create, get, list, update and delete crew outputs (one per
//! crew run), and the state and metrics of crews.

use tonic::{Request, Response, Status};

use super::paging::{
    DEFAULT_PAGE_SIZE, decode_name_token, encode_name_token, list_page, page_size,
};
use super::validate::{self, MAX_DOCUMENT_BYTES, MAX_NAME_BYTES, MAX_TEXT_BYTES};
use super::{convert, invalid_argument, to_status};

use crate::pb::crew_service_server::CrewService;
use crate::pb::{self, CrewOutputStatus};
use crate::storage::crew_outputs::{self, CrewOutputChanges, CrewOutputFilter};
use crate::storage::crews::{self, CrewRuns};
use crate::storage::{Storage, now_micros};

/// Window of crew metrics without one, and its bounds, in milliseconds.
const DEFAULT_WINDOW_MS: i64 = 7 * 24 * 3_600_000;
const MIN_WINDOW_MS: i64 = 60_000;
const MAX_WINDOW_MS: i64 = 366 * 24 * 3_600_000;

pub struct CrewApi {
    storage: Storage,
}

impl CrewApi {
    pub fn new(storage: Storage) -> Self {
        CrewApi { storage }
    }
}

const UPDATABLE_PATHS: [&str; 5] = ["status", "results", "output_type", "error_message", "keep"];

/// Reads the changes of an update from the message and its field mask.
fn changes(request: &pb::UpdateCrewOutputRequest) -> Result<CrewOutputChanges, Status> {
    let Some(output) = &request.crew_output else {
        return Err(invalid_argument("crew_output", "is required"));
    };
    let paths: Vec<&str> = match &request.update_mask {
        Some(mask) if !mask.paths.is_empty() => mask.paths.iter().map(String::as_str).collect(),
        _ => UPDATABLE_PATHS.to_vec(),
    };
    let explicit = request
        .update_mask
        .as_ref()
        .is_some_and(|mask| !mask.paths.is_empty());

    let mut changes = CrewOutputChanges::default();
    for path in paths {
        match path {
            "status" => {
                changes.status = validate::enum_value("crew_output.status", output.status)?;
                if explicit && changes.status.is_none() {
                    return Err(invalid_argument(
                        "crew_output.status",
                        "is required by update_mask",
                    ));
                }
            }
            "results" => {
                if output.results.is_some() || explicit {
                    changes.results = Some(validate::document(
                        "crew_output.results",
                        output.results.as_ref(),
                        MAX_DOCUMENT_BYTES,
                    )?);
                }
            }
            "output_type" => {
                if explicit {
                    validate::required(
                        "crew_output.output_type",
                        &output.output_type,
                        MAX_NAME_BYTES,
                    )?;
                }
                if !output.output_type.is_empty() {
                    validate::limited(
                        "crew_output.output_type",
                        &output.output_type,
                        MAX_NAME_BYTES,
                    )?;
                    changes.output_type = Some(output.output_type.clone());
                }
            }
            "error_message" => {
                validate::limited(
                    "crew_output.error_message",
                    &output.error_message,
                    MAX_TEXT_BYTES,
                )?;
                if explicit || !output.error_message.is_empty() {
                    changes.error_message = Some(output.error_message.clone());
                }
            }
            "keep" => {
                // A bool has no unset state: without a mask only true counts.
                if explicit || output.keep {
                    changes.keep = Some(output.keep);
                }
            }
            other => {
                return Err(invalid_argument(
                    "update_mask",
                    format!(
                        "path {other:?} is not one of {}",
                        UPDATABLE_PATHS.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(changes)
}

/// Returns the value at percentile `p` (0 to 100) of sorted values, by the
/// nearest-rank method; 0 for no values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Computes the state and metrics of one crew from its runs.
fn crew_metrics(runs: CrewRuns, window_ms: i64) -> pb::Crew {
    let mut runs_by_status = std::collections::HashMap::new();
    let mut durations_ms = Vec::new();
    let (mut succeeded, mut finished) = (0u64, 0u64);
    for (status, started_at, finished_at) in &runs.window_runs {
        let status = CrewOutputStatus::try_from(*status).unwrap_or(CrewOutputStatus::Unspecified);
        *runs_by_status
            .entry(status.as_str_name().to_string())
            .or_insert(0) += 1;
        if crew_outputs::is_final(status) {
            finished += 1;
            if status == CrewOutputStatus::Succeeded {
                succeeded += 1;
            }
            if let (Some(start), Some(end)) = (started_at, finished_at) {
                durations_ms.push((end - start) as f64 / 1_000.0);
            }
        }
    }
    durations_ms.sort_by(f64::total_cmp);
    let run_count = runs.window_runs.len();
    pb::Crew {
        crew_name: runs.crew_name,
        last_run: Some(convert::crew_output(runs.last_run)),
        runs_in_progress: runs.runs_in_progress,
        runs_by_status,
        success_rate: if finished == 0 {
            0.0
        } else {
            succeeded as f64 / finished as f64
        },
        duration_p50_ms: percentile(&durations_ms, 50.0),
        duration_p95_ms: percentile(&durations_ms, 95.0),
        findings_per_run: if run_count == 0 {
            0.0
        } else {
            runs.window_findings as f64 / run_count as f64
        },
        window: Some(convert::millis_to_duration(window_ms)),
    }
}

fn window_ms(value: Option<&prost_types::Duration>) -> Result<i64, Status> {
    validate::duration_ms(
        "window",
        value,
        DEFAULT_WINDOW_MS,
        MIN_WINDOW_MS,
        MAX_WINDOW_MS,
    )
}

#[tonic::async_trait]
impl CrewService for CrewApi {
    async fn create_crew_output(
        &self,
        request: Request<pb::CreateCrewOutputRequest>,
    ) -> Result<Response<pb::CrewOutput>, Status> {
        let request = request.into_inner();
        validate::required("crew_name", &request.crew_name, MAX_NAME_BYTES)?;
        validate::required("output_type", &request.output_type, MAX_NAME_BYTES)?;
        validate::limited("error_message", &request.error_message, MAX_TEXT_BYTES)?;
        let status =
            validate::enum_value("status", request.status)?.unwrap_or(CrewOutputStatus::Pending);
        let results = validate::document("results", request.results.as_ref(), MAX_DOCUMENT_BYTES)?;

        let mut row = crew_outputs::new_row(
            request.crew_name,
            request.output_type,
            status,
            results,
            request.error_message,
        );
        row.keep = i32::from(request.keep);
        let stored = self
            .storage
            .run_write(move |conn| crew_outputs::create(conn, &row))
            .await
            .map_err(to_status)?;

        tracing::info!(crew_output.id = stored.id, crew_name = %stored.crew_name, "created crew output");
        Ok(Response::new(convert::crew_output(stored)))
    }

    async fn get_crew_output(
        &self,
        request: Request<pb::GetCrewOutputRequest>,
    ) -> Result<Response<pb::CrewOutput>, Status> {
        let id = validate::id("id", request.into_inner().id)?;
        let stored = self
            .storage
            .run(move |conn| crew_outputs::get(conn, id))
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::crew_output(stored)))
    }

    async fn list_crew_outputs(
        &self,
        request: Request<pb::ListCrewOutputsRequest>,
    ) -> Result<Response<pb::ListCrewOutputsResponse>, Status> {
        let request = request.into_inner();
        let filter = CrewOutputFilter {
            crew_name: validate::filter_text("crew_name", &request.crew_name, MAX_NAME_BYTES)?,
            output_type: validate::filter_text(
                "output_type",
                &request.output_type,
                MAX_NAME_BYTES,
            )?,
            status: validate::enum_value::<CrewOutputStatus>("status", request.status)?
                .map(|status| status as i32),
            created_after: validate::timestamp("created_after", request.created_after.as_ref())?,
            created_before: validate::timestamp("created_before", request.created_before.as_ref())?,
        };
        let listed = list_page(
            &self.storage,
            filter,
            request.page_size,
            &request.page_token,
            DEFAULT_PAGE_SIZE,
            crew_outputs::list,
        )
        .await?;

        Ok(Response::new(pb::ListCrewOutputsResponse {
            next_page_token: listed.next_page_token,
            total_size: listed.total_size,
            crew_outputs: listed.items.into_iter().map(convert::crew_output).collect(),
        }))
    }

    async fn list_crews(
        &self,
        request: Request<pb::ListCrewsRequest>,
    ) -> Result<Response<pb::ListCrewsResponse>, Status> {
        let request = request.into_inner();
        let window_ms = window_ms(request.window.as_ref())?;
        let size = page_size(request.page_size, DEFAULT_PAGE_SIZE)?;
        let after = decode_name_token(&window_ms, &request.page_token)?;
        let window_start = now_micros() - window_ms * 1_000;

        let (crews, total, more) = self
            .storage
            .run(move |conn| {
                let (mut names, total) = crews::names(conn, after.as_deref(), size + 1)?;
                let more = names.len() as i64 > size;
                names.truncate(size as usize);
                let mut crews = Vec::with_capacity(names.len());
                for name in names {
                    crews.extend(crews::runs(conn, &name, window_start)?);
                }
                Ok((crews, total, more))
            })
            .await
            .map_err(to_status)?;

        let last_name = more
            .then(|| crews.last().map(|crew| crew.crew_name.clone()))
            .flatten();
        Ok(Response::new(pb::ListCrewsResponse {
            next_page_token: encode_name_token(&window_ms, last_name.as_deref()),
            total_size: total,
            crews: crews
                .into_iter()
                .map(|crew| crew_metrics(crew, window_ms))
                .collect(),
        }))
    }

    async fn get_crew(
        &self,
        request: Request<pb::GetCrewRequest>,
    ) -> Result<Response<pb::Crew>, Status> {
        let request = request.into_inner();
        validate::required("crew_name", &request.crew_name, MAX_NAME_BYTES)?;
        let window_ms = window_ms(request.window.as_ref())?;
        let window_start = now_micros() - window_ms * 1_000;

        let name = request.crew_name.clone();
        let runs = self
            .storage
            .run(move |conn| crews::runs(conn, &name, window_start))
            .await
            .map_err(to_status)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "crew {:?} not found: it has no runs",
                    request.crew_name
                ))
            })?;
        Ok(Response::new(crew_metrics(runs, window_ms)))
    }

    async fn update_crew_output(
        &self,
        request: Request<pb::UpdateCrewOutputRequest>,
    ) -> Result<Response<pb::CrewOutput>, Status> {
        let request = request.into_inner();
        let id = validate::id("id", request.id)?;
        let changes = changes(&request)?;

        let stored = self
            .storage
            .run_write(move |conn| crew_outputs::update(conn, id, changes))
            .await
            .map_err(to_status)?;

        tracing::info!(
            crew_output.id = id,
            status = stored.status,
            "updated crew output"
        );
        Ok(Response::new(convert::crew_output(stored)))
    }

    async fn delete_crew_output(
        &self,
        request: Request<pb::DeleteCrewOutputRequest>,
    ) -> Result<Response<pb::DeleteCrewOutputResponse>, Status> {
        let request = request.into_inner();
        let id = validate::id("id", request.id)?;
        let force = request.force;

        let deleted = self
            .storage
            .run_write(move |conn| crew_outputs::delete(conn, id, force))
            .await
            .map_err(to_status)?;

        tracing::info!(
            crew_output.id = id,
            crew_name = %deleted.crew_output.crew_name,
            forced = force && deleted.crew_output.keep != 0,
            findings = deleted.findings,
            fixes = deleted.fixes,
            log_entries = deleted.log_entries,
            "deleted crew output {id}"
        );
        Ok(Response::new(convert::deleted_crew_output(deleted)))
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentile_uses_nearest_rank() {
        let values = [10.0, 20.0, 30.0, 40.0];
        assert_eq!(percentile(&values, 50.0), 20.0);
        assert_eq!(percentile(&values, 95.0), 40.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}

//! CrewService: create, get, list and update crew outputs (one per crew run).

use tonic::{Request, Response, Status};

use super::paging::{DEFAULT_PAGE_SIZE, encode_token, page_request};
use super::validate::{self, MAX_DOCUMENT_BYTES, MAX_NAME_BYTES, MAX_TEXT_BYTES};
use super::{convert, invalid_argument, to_status};
use crate::pb::crew_service_server::CrewService;
use crate::pb::{self, CrewOutputStatus};
use crate::storage::Storage;
use crate::storage::crew_outputs::{self, CrewOutputChanges, CrewOutputFilter};

pub struct CrewApi {
    storage: Storage,
}

impl CrewApi {
    pub fn new(storage: Storage) -> Self {
        CrewApi { storage }
    }
}

const UPDATABLE_PATHS: [&str; 4] = ["status", "results", "output_type", "error_message"];

/// Reads the changes of an update from the message and its field mask.
fn changes(request: &pb::UpdateCrewOutputRequest) -> Result<CrewOutputChanges, Status> {
    let Some(output) = &request.crew_output else {
        return Err(invalid_argument("crew_output", "is required"));
    };
    let paths: Vec<&str> = match &request.update_mask {
        Some(mask) if !mask.paths.is_empty() => mask.paths.iter().map(String::as_str).collect(),
        _ => UPDATABLE_PATHS.to_vec(),
    };
    let explicit = request.update_mask.as_ref().is_some_and(|mask| !mask.paths.is_empty());

    let mut changes = CrewOutputChanges::default();
    for path in paths {
        match path {
            "status" => {
                changes.status = validate::enum_value("crew_output.status", output.status)?;
                if explicit && changes.status.is_none() {
                    return Err(invalid_argument("crew_output.status", "is required by update_mask"));
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
                    validate::required("crew_output.output_type", &output.output_type, MAX_NAME_BYTES)?;
                }
                if !output.output_type.is_empty() {
                    validate::limited("crew_output.output_type", &output.output_type, MAX_NAME_BYTES)?;
                    changes.output_type = Some(output.output_type.clone());
                }
            }
            "error_message" => {
                validate::limited("crew_output.error_message", &output.error_message, MAX_TEXT_BYTES)?;
                if explicit || !output.error_message.is_empty() {
                    changes.error_message = Some(output.error_message.clone());
                }
            }
            other => {
                return Err(invalid_argument(
                    "update_mask",
                    format!("path {other:?} is not one of {}", UPDATABLE_PATHS.join(", ")),
                ));
            }
        }
    }
    Ok(changes)
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
        let status = validate::enum_value("status", request.status)?.unwrap_or(CrewOutputStatus::Pending);
        let results = validate::document("results", request.results.as_ref(), MAX_DOCUMENT_BYTES)?;

        let row = crew_outputs::new_row(
            request.crew_name,
            request.output_type,
            status,
            results,
            request.error_message,
        );
        let stored = self
            .storage
            .run(move |conn| crew_outputs::insert(conn, &row))
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
            output_type: validate::filter_text("output_type", &request.output_type, MAX_NAME_BYTES)?,
            status: validate::enum_value::<CrewOutputStatus>("status", request.status)?
                .map(|status| status as i32),
            created_after: validate::timestamp("created_after", request.created_after.as_ref())?,
            created_before: validate::timestamp("created_before", request.created_before.as_ref())?,
        };
        let page = page_request(&filter, request.page_size, &request.page_token, DEFAULT_PAGE_SIZE)?;

        let query_filter = filter.clone();
        let found = self
            .storage
            .run(move |conn| crew_outputs::list(conn, &query_filter, page))
            .await
            .map_err(to_status)?;

        Ok(Response::new(pb::ListCrewOutputsResponse {
            next_page_token: encode_token(&filter, found.next),
            total_size: found.total,
            crew_outputs: found.items.into_iter().map(convert::crew_output).collect(),
        }))
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
            .run(move |conn| crew_outputs::update(conn, id, changes))
            .await
            .map_err(to_status)?;

        tracing::info!(crew_output.id = id, status = stored.status, "updated crew output");
        Ok(Response::new(convert::crew_output(stored)))
    }
}

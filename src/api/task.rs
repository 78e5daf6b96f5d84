//! TaskService: the crews' work queue. Handlers validate, resolve leases to
//! times, and call `storage::tasks`, which matches lease tokens atomically.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::{Request, Response, Status};

use super::analysis::new_finding_row;
use super::fix::new_fix_row;
use super::paging::{DEFAULT_PAGE_SIZE, list_page};
use super::validate::{self, MAX_BATCH_ITEMS, MAX_DOCUMENT_BYTES, MAX_NAME_BYTES, MAX_TEXT_BYTES};
use super::{convert, invalid_argument, to_status};
use crate::pb::task_service_server::TaskService;
use crate::pb::{self, CrewOutputStatus, TaskState};
use crate::storage::imports::RunImport;
use crate::storage::models::NewTaskRow;
use crate::storage::tasks::{self, Claim, TaskFilter};
use crate::storage::{Storage, crew_outputs, now_micros};

/// Lease of a claim or heartbeat without one, and its bounds, in milliseconds.
const DEFAULT_LEASE_MS: i64 = 30_000;
const MIN_LEASE_MS: i64 = 100;
const MAX_LEASE_MS: i64 = 3_600_000;
/// Base delay between attempts without one, and its bounds, in milliseconds.
const DEFAULT_BACKOFF_MS: i64 = 1_000;
const MAX_ATTEMPTS_LIMIT: i32 = 100;
const DEFAULT_MAX_ATTEMPTS: i32 = 3;
const MAX_CLAIM: i32 = 100;

pub struct TaskApi {
    storage: Storage,
}

impl TaskApi {
    pub fn new(storage: Storage) -> Self {
        TaskApi { storage }
    }
}

/// A new lease token: 128 bits from the process's random hasher keys, a
/// counter and the clock, unique across claims and replicas.
fn lease_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut halves = [0u64; 2];
    for half in &mut halves {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_i64(now_micros());
        *half = hasher.finish();
    }
    format!("{:016x}{:016x}", halves[0], halves[1])
}

fn lease_token_field(token: &str) -> Result<(), Status> {
    validate::required("lease_token", token, MAX_NAME_BYTES)
}

/// Validates the result of a CompleteTask call and builds the rows to store.
fn task_result(result: &pb::TaskResult, now: i64) -> Result<RunImport, Status> {
    validate::required("result.crew_name", &result.crew_name, MAX_NAME_BYTES)?;
    validate::required("result.output_type", &result.output_type, MAX_NAME_BYTES)?;
    let status = match validate::enum_value::<CrewOutputStatus>("result.status", result.status)? {
        None => CrewOutputStatus::Succeeded,
        Some(status) if crew_outputs::is_final(status) => status,
        Some(status) => {
            return Err(invalid_argument(
                "result.status",
                format!("{} is not a final status", status.as_str_name()),
            ));
        }
    };
    let results = validate::document(
        "result.results",
        result.results.as_ref(),
        MAX_DOCUMENT_BYTES,
    )?;
    if result.findings.len() > MAX_BATCH_ITEMS || result.fixes.len() > MAX_BATCH_ITEMS {
        return Err(invalid_argument(
            "result",
            format!("has more than {MAX_BATCH_ITEMS} findings or fixes"),
        ));
    }

    let findings = result
        .findings
        .iter()
        .enumerate()
        .map(|(index, finding)| {
            new_finding_row(&format!("result.findings[{index}]"), 0, finding, now)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut fixes = Vec::with_capacity(result.fixes.len());
    for (index, fix) in result.fixes.iter().enumerate() {
        let prefix = format!("result.fixes[{index}].");
        let row = new_fix_row(
            &prefix,
            0,
            &fix.file_path,
            fix.description.clone(),
            fix.changes.as_ref(),
            fix.status,
            now,
        )?;
        let mut indexes = Vec::with_capacity(fix.finding_indexes.len());
        for &position in &fix.finding_indexes {
            if position < 0 || position as usize >= findings.len() {
                return Err(invalid_argument(
                    &format!("{prefix}finding_indexes"),
                    format!("{position} is not a position in result.findings"),
                ));
            }
            indexes.push(position as usize);
        }
        indexes.sort_unstable();
        indexes.dedup();
        fixes.push((indexes, row));
    }

    let crew_output = crew_outputs::new_row(
        result.crew_name.clone(),
        result.output_type.clone(),
        status,
        results,
        String::new(),
    );
    Ok(RunImport {
        crew_output,
        findings,
        fixes,
    })
}

#[tonic::async_trait]
impl TaskService for TaskApi {
    async fn enqueue_task(
        &self,
        request: Request<pb::EnqueueTaskRequest>,
    ) -> Result<Response<pb::EnqueueTaskResponse>, Status> {
        let request = request.into_inner();
        validate::required("queue", &request.queue, MAX_NAME_BYTES)?;
        validate::limited("dedupe_key", &request.dedupe_key, MAX_NAME_BYTES)?;
        let payload = validate::document("payload", request.payload.as_ref(), MAX_DOCUMENT_BYTES)?;
        let max_attempts = match request.max_attempts {
            0 => DEFAULT_MAX_ATTEMPTS,
            attempts if (1..=MAX_ATTEMPTS_LIMIT).contains(&attempts) => attempts,
            attempts => {
                return Err(invalid_argument(
                    "max_attempts",
                    format!("{attempts} is outside the range 1 to {MAX_ATTEMPTS_LIMIT}"),
                ));
            }
        };
        let retry_backoff_ms = validate::duration_ms(
            "retry_backoff",
            request.retry_backoff.as_ref(),
            DEFAULT_BACKOFF_MS,
            1,
            tasks::MAX_BACKOFF_MS,
        )?;
        let now = now_micros();
        let run_at = validate::timestamp("run_at", request.run_at.as_ref())?.unwrap_or(now);

        let row = NewTaskRow {
            queue: request.queue,
            payload,
            priority: request.priority,
            state: TaskState::Queued as i32,
            dedupe_key: (!request.dedupe_key.is_empty()).then_some(request.dedupe_key),
            max_attempts,
            retry_backoff_ms,
            run_at,
            created_at: now,
            updated_at: now,
        };
        let (task, deduplicated) = self
            .storage
            .run_write(move |conn| tasks::enqueue(conn, &row))
            .await
            .map_err(to_status)?;

        tracing::info!(task.id = task.id, queue = %task.queue, deduplicated, "enqueued task");
        Ok(Response::new(pb::EnqueueTaskResponse {
            task: Some(convert::task(task, false)),
            deduplicated,
        }))
    }

    async fn claim_tasks(
        &self,
        request: Request<pb::ClaimTasksRequest>,
    ) -> Result<Response<pb::ClaimTasksResponse>, Status> {
        let request = request.into_inner();
        validate::required("queue", &request.queue, MAX_NAME_BYTES)?;
        validate::required("worker", &request.worker, MAX_NAME_BYTES)?;
        let max_tasks = match request.max_tasks {
            0 => 1,
            count if (1..=MAX_CLAIM).contains(&count) => count,
            count => {
                return Err(invalid_argument(
                    "max_tasks",
                    format!("{count} is outside the range 1 to {MAX_CLAIM}"),
                ));
            }
        };
        let lease_ms = validate::duration_ms(
            "lease",
            request.lease.as_ref(),
            DEFAULT_LEASE_MS,
            MIN_LEASE_MS,
            MAX_LEASE_MS,
        )?;
        let now = now_micros();
        let claim = Claim {
            queue: request.queue,
            worker: request.worker,
            max_tasks: i64::from(max_tasks),
            lease_token: lease_token(),
            now,
            lease_expires_at: now + lease_ms * 1_000,
        };

        let claimed = self
            .storage
            .run_write(move |conn| tasks::claim(conn, &claim))
            .await
            .map_err(to_status)?;

        if !claimed.is_empty() {
            tracing::debug!(count = claimed.len(), worker = %claimed[0].worker, "claimed tasks");
        }
        Ok(Response::new(pb::ClaimTasksResponse {
            tasks: claimed
                .into_iter()
                .map(|task| convert::task(task, true))
                .collect(),
        }))
    }

    async fn heartbeat_task(
        &self,
        request: Request<pb::HeartbeatTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let request = request.into_inner();
        let id = validate::id("task_id", request.task_id)?;
        lease_token_field(&request.lease_token)?;
        let lease_ms = validate::duration_ms(
            "lease",
            request.lease.as_ref(),
            DEFAULT_LEASE_MS,
            MIN_LEASE_MS,
            MAX_LEASE_MS,
        )?;
        let now = now_micros();

        let token = request.lease_token;
        let task = self
            .storage
            .run_write(move |conn| tasks::heartbeat(conn, id, &token, now, now + lease_ms * 1_000))
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::task(task, true)))
    }

    async fn complete_task(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        let request = request.into_inner();
        let id = validate::id("task_id", request.task_id)?;
        lease_token_field(&request.lease_token)?;
        let now = now_micros();
        let result = request
            .result
            .as_ref()
            .map(|result| task_result(result, now))
            .transpose()?;

        let token = request.lease_token;
        let (task, crew_output) = self
            .storage
            .run_write(move |conn| {
                let (task, crew_output_id) = tasks::complete(conn, id, &token, result, now)?;
                let crew_output = crew_output_id
                    .map(|run| crew_outputs::get(conn, run))
                    .transpose()?;
                Ok((task, crew_output))
            })
            .await
            .map_err(to_status)?;

        tracing::info!(
            task.id = id,
            crew_output.id = task.crew_output_id,
            "completed task"
        );
        Ok(Response::new(pb::CompleteTaskResponse {
            task: Some(convert::task(task, false)),
            crew_output: crew_output.map(convert::crew_output),
        }))
    }

    async fn fail_task(
        &self,
        request: Request<pb::FailTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let request = request.into_inner();
        let id = validate::id("task_id", request.task_id)?;
        lease_token_field(&request.lease_token)?;
        validate::limited("error", &request.error, MAX_TEXT_BYTES)?;
        let now = now_micros();

        let (token, error, permanent) = (request.lease_token, request.error, request.permanent);
        let task = self
            .storage
            .run_write(move |conn| tasks::fail(conn, id, &token, &error, permanent, now))
            .await
            .map_err(to_status)?;

        tracing::info!(
            task.id = id,
            state = task.state,
            attempts = task.attempts,
            "task attempt failed"
        );
        Ok(Response::new(convert::task(task, false)))
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let id = validate::id("id", request.into_inner().id)?;
        let task = self
            .storage
            .run(move |conn| tasks::get(conn, id))
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::task(task, false)))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let request = request.into_inner();
        let filter = TaskFilter {
            queue: validate::filter_text("queue", &request.queue, MAX_NAME_BYTES)?,
            state: validate::enum_value::<TaskState>("state", request.state)?
                .map(|state| state as i32),
            worker: validate::filter_text("worker", &request.worker, MAX_NAME_BYTES)?,
        };
        let listed = list_page(
            &self.storage,
            filter,
            request.page_size,
            &request.page_token,
            DEFAULT_PAGE_SIZE,
            tasks::list,
        )
        .await?;

        Ok(Response::new(pb::ListTasksResponse {
            next_page_token: listed.next_page_token,
            total_size: listed.total_size,
            tasks: listed
                .items
                .into_iter()
                .map(|task| convert::task(task, false))
                .collect(),
        }))
    }

    async fn retry_task(
        &self,
        request: Request<pb::RetryTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let id = validate::id("id", request.into_inner().id)?;
        let now = now_micros();
        let task = self
            .storage
            .run_write(move |conn| tasks::retry(conn, id, now))
            .await
            .map_err(to_status)?;
        tracing::info!(task.id = id, "task queued again by an operator");
        Ok(Response::new(convert::task(task, false)))
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let id = validate::id("id", request.into_inner().id)?;
        let now = now_micros();
        let task = self
            .storage
            .run_write(move |conn| tasks::cancel(conn, id, now))
            .await
            .map_err(to_status)?;
        tracing::info!(task.id = id, "task cancelled by an operator");
        Ok(Response::new(convert::task(task, false)))
    }
}

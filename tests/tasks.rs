//! TaskService against a real server on both backends: enqueue with
//! dedupe keys, claims under leases, heartbeats, completion with results,
//! failures with backoff, operator retry and cancel, and many workers on
//! one queue.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use code_analyzer::pb::task_service_client::TaskServiceClient;
use code_analyzer::pb::{self, TaskState};
use common::process::ServeProcess;
use common::{Backend, TestDatabase, TestServer, assert_status, expect_error};
use tonic::Code;
use tonic::transport::Channel;

fn millis(value: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: (value / 1_000) as i64,
        nanos: ((value % 1_000) * 1_000_000) as i32,
    })
}

fn enqueue_request(queue: &str) -> pb::EnqueueTaskRequest {
    pb::EnqueueTaskRequest {
        queue: queue.to_string(),
        payload: Some(common::to_struct(
            serde_json::json!({ "repository": "crewAI", "files": 3 }),
        )),
        ..Default::default()
    }
}

async fn enqueue(
    tasks: &mut TaskServiceClient<Channel>,
    request: pb::EnqueueTaskRequest,
) -> pb::Task {
    tasks
        .enqueue_task(request)
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
}

async fn claim(
    tasks: &mut TaskServiceClient<Channel>,
    queue: &str,
    worker: &str,
    max: i32,
    lease_ms: u64,
) -> Vec<pb::Task> {
    tasks
        .claim_tasks(pb::ClaimTasksRequest {
            queue: queue.to_string(),
            worker: worker.to_string(),
            max_tasks: max,
            lease: millis(lease_ms),
        })
        .await
        .unwrap()
        .into_inner()
        .tasks
}

fn timestamp_micros(timestamp: &Option<prost_types::Timestamp>) -> i64 {
    let timestamp = timestamp.expect("timestamp is set");
    timestamp.seconds * 1_000_000 + i64::from(timestamp.nanos / 1_000)
}

/// A small deterministic generator (xorshift64*), so a failing run repeats.
struct Random(u64);

impl Random {
    fn next_below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

/// Runs 8 workers over `channels` (one server, or several replicas) on a
/// queue of `task_count` tasks, with random failures and crashes (leases
/// left to expire), and checks that every task ends SUCCEEDED, completed
/// exactly once, or DEAD after its last attempt, with one attempt per claim
/// and never two holders at once.
async fn drive_queue(channels: Vec<Channel>, task_count: usize) {
    const WORKERS: usize = 8;
    const MAX_ATTEMPTS: i32 = 4;
    const LEASE_MS: u64 = 300;

    let mut tasks = TaskServiceClient::new(channels[0].clone());
    for index in 0..task_count {
        let mut request = enqueue_request("load");
        request.max_attempts = MAX_ATTEMPTS;
        request.retry_backoff = millis(1);
        request.priority = (index % 3) as i32;
        enqueue(&mut tasks, request).await;
    }

    // Every claim and every release the server acknowledged, with its
    // server-side time, per task.
    #[derive(Debug, Clone)]
    struct Hold {
        worker: usize,
        lease_token: String,
        claimed_at: i64,
        lease_expires_at: i64,
        released_at: Option<i64>,
    }
    let holds: Arc<Mutex<HashMap<i64, Vec<Hold>>>> = Arc::default();
    let completions: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();

    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let mut tasks = TaskServiceClient::new(channels[worker % channels.len()].clone());
        let holds = holds.clone();
        let completions = completions.clone();
        workers.push(tokio::spawn(async move {
            let mut random = Random(0x9e37_79b9_7f4a_7c15 ^ (worker as u64 + 1));
            let mut idle_rounds = 0;
            while idle_rounds < 20 {
                let claimed =
                    claim(&mut tasks, "load", &format!("worker-{worker}"), 8, LEASE_MS).await;
                if claimed.is_empty() {
                    idle_rounds += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                idle_rounds = 0;
                for task in claimed {
                    holds
                        .lock()
                        .unwrap()
                        .entry(task.id)
                        .or_default()
                        .push(Hold {
                            worker,
                            lease_token: task.lease_token.clone(),
                            claimed_at: timestamp_micros(&task.updated_at),
                            lease_expires_at: timestamp_micros(&task.lease_expires_at),
                            released_at: None,
                        });
                    let released = match random.next_below(100) {
                        // A crash: the lease is left to expire.
                        0..=4 => None,
                        5..=14 => tasks
                            .fail_task(pb::FailTaskRequest {
                                task_id: task.id,
                                lease_token: task.lease_token.clone(),
                                error: "random failure".to_string(),
                                permanent: false,
                            })
                            .await
                            .ok()
                            .map(|response| response.into_inner().updated_at),
                        _ => tasks
                            .complete_task(pb::CompleteTaskRequest {
                                task_id: task.id,
                                lease_token: task.lease_token.clone(),
                                result: None,
                            })
                            .await
                            .ok()
                            .map(|response| {
                                *completions.lock().unwrap().entry(task.id).or_default() += 1;
                                response.into_inner().task.unwrap().updated_at
                            }),
                    };
                    if let Some(released_at) = released {
                        // Another worker may already hold the task again
                        // (after a failure's short backoff), so find this
                        // claim by its token.
                        let mut holds = holds.lock().unwrap();
                        let hold = holds
                            .get_mut(&task.id)
                            .unwrap()
                            .iter_mut()
                            .find(|hold| hold.lease_token == task.lease_token)
                            .unwrap();
                        hold.released_at = Some(timestamp_micros(&released_at));
                    }
                }
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }

    // Every worker has finished, so the maps are taken out of their locks.
    let holds = std::mem::take(&mut *holds.lock().unwrap());
    let completions = std::mem::take(&mut *completions.lock().unwrap());
    let mut page_token = String::new();
    let mut finished = 0;
    loop {
        let page = tasks
            .list_tasks(pb::ListTasksRequest {
                page_size: 1_000,
                page_token,
                queue: "load".to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for task in &page.tasks {
            // Workers record their claims in whatever order they run;
            // the server's claim times give the real order.
            let mut task_holds = holds[&task.id].clone();
            task_holds.sort_by_key(|hold| hold.claimed_at);
            assert_eq!(
                task.attempts as usize,
                task_holds.len(),
                "task {}: one attempt per claim",
                task.id
            );
            match task.state() {
                TaskState::Succeeded => {
                    assert_eq!(completions.get(&task.id), Some(&1), "task {}", task.id)
                }
                TaskState::Dead => {
                    assert_eq!(task.attempts, MAX_ATTEMPTS, "task {}", task.id);
                    assert_eq!(completions.get(&task.id), None, "task {}", task.id);
                }
                other => panic!("task {} ended {other:?}", task.id),
            }
            // No claim began before the previous holder released the
            // task or its lease expired.
            for pair in task_holds.windows(2) {
                let end = pair[0].released_at.unwrap_or(pair[0].lease_expires_at);
                assert!(
                    pair[1].claimed_at >= end,
                    "task {} held by workers {} and {} at once",
                    task.id,
                    pair[0].worker,
                    pair[1].worker
                );
            }
            finished += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(finished, task_count);
}

async fn enqueue_sets_defaults(server: TestServer) {
    let mut tasks = TaskServiceClient::new(server.channel.clone());
    let task = enqueue(&mut tasks, enqueue_request("analysis")).await;
    assert_eq!(task.state(), TaskState::Queued);
    assert_eq!(task.max_attempts, 3);
    assert_eq!(task.attempts, 0);
    assert_eq!(task.retry_backoff, millis(1_000));
    assert_eq!(task.lease_token, "");
    let payload = common::from_struct(task.payload.as_ref().unwrap());
    assert_eq!(payload["files"], 3.0);
}

async fn enqueue_rejects_bad_fields(server: TestServer) {
    let mut tasks = TaskServiceClient::new(server.channel.clone());
    let status = expect_error(tasks.enqueue_task(enqueue_request("")).await);
    assert_status(&status, Code::InvalidArgument, "queue: is required");

    let mut request = enqueue_request("analysis");
    request.max_attempts = 101;
    let status = expect_error(tasks.enqueue_task(request).await);
    assert_status(
        &status,
        Code::InvalidArgument,
        "max_attempts: 101 is outside the range 1 to 100",
    );

    let mut request = enqueue_request("analysis");
    request.retry_backoff = millis(2 * 3_600_000);
    let status = expect_error(tasks.enqueue_task(request).await);
    assert_status(
        &status,
        Code::InvalidArgument,
        "retry_backoff: is 7200000 ms",
    );
}

async fn dedupe_key_returns_first_task(server: TestServer) {
    let mut tasks = TaskServiceClient::new(server.channel.clone());
    let mut request = enqueue_request("analysis");
    request.dedupe_key = "repo:crewAI@abc123".to_string();
    let first = tasks
        .enqueue_task(request.clone())
        .await
        .unwrap()
        .into_inner();
    let second = tasks
        .enqueue_task(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!first.deduplicated);
    assert!(second.deduplicated);
    assert_eq!(
        second.task.as_ref().unwrap().id,
        first.task.as_ref().unwrap().id
    );

    // Once the first is finished, the key is free again.
    let claimed = claim(&mut tasks, "analysis", "w1", 1, 30_000).await;
    tasks
        .complete_task(pb::CompleteTaskRequest {
            task_id: claimed[0].id,
            lease_token: claimed[0].lease_token.clone(),
            result: None,
        })
        .await
        .unwrap();
    let third = tasks
        .enqueue_task(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!third.deduplicated);
    let third = third.task.unwrap();
    assert_ne!(third.id, first.task.unwrap().id);

    // A leased task keeps its key, and a cancelled one frees it.
    claim(&mut tasks, "analysis", "w1", 1, 30_000).await;
    let again = tasks
        .enqueue_task(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(again.deduplicated);
    assert_eq!(again.task.unwrap().id, third.id);
    tasks
        .cancel_task(pb::CancelTaskRequest { id: third.id })
        .await
        .unwrap();
    let fourth = tasks.enqueue_task(request).await.unwrap().into_inner();
    assert!(!fourth.deduplicated);
    assert_ne!(fourth.task.unwrap().id, third.id);
}

async fn concurrent_enqueues_share_one_dedupe_key(server: TestServer) {
    let mut request = enqueue_request("analysis");
    request.dedupe_key = "repo:crewAI@def456".to_string();
    let calls = (0..8).map(|_| {
        let mut tasks = TaskServiceClient::new(server.channel.clone());
        let request = request.clone();
        tokio::spawn(async move { tasks.enqueue_task(request).await.unwrap().into_inner() })
    });
    let mut responses = Vec::new();
    for call in calls {
        responses.push(call.await.unwrap());
    }
    let created = responses
        .iter()
        .filter(|response| !response.deduplicated)
        .count();
    assert_eq!(
        created, 1,
        "one enqueue creates the task, the others get it"
    );
    let ids: std::collections::BTreeSet<i64> = responses
        .iter()
        .map(|response| response.task.as_ref().unwrap().id)
        .collect();
    assert_eq!(ids.len(), 1);
}

async fn claim_orders_by_priority_then_age(server: TestServer) {
    let mut tasks = TaskServiceClient::new(server.channel.clone());
    let low = enqueue(&mut tasks, enqueue_request("q")).await;
    let mut request = enqueue_request("q");
    request.priority = 10;
    let high = enqueue(&mut tasks, request).await;
    let low_later = enqueue(&mut tasks, enqueue_request("q")).await;
    let mut request = enqueue_request("q");
    request.priority = 100;
    request.run_at = Some(common::time(10 * 365 * 24 * 3_600));
    let future = enqueue(&mut tasks, request).await;
    enqueue(&mut tasks, enqueue_request("other-queue")).await;

    let claimed = claim(&mut tasks, "q", "w1", 10, 30_000).await;
    let ids: Vec<i64> = claimed.iter().map(|task| task.id).collect();
    assert_eq!(ids, [high.id, low.id, low_later.id]);
    assert!(!ids.contains(&future.id));
    for task in &claimed {
        assert_eq!(task.state(), TaskState::Leased);
        assert_eq!(task.worker, "w1");
        assert_eq!(task.attempts, 1);
        assert_eq!(task.lease_token.len(), 32);
    }
    assert!(claim(&mut tasks, "q", "w2", 10, 30_000).await.is_empty());
}

async fn stale_lease_token_is_rejected(server: TestServer) {
    let mut tasks = TaskServiceClient::new(server.channel.clone());
    let task = enqueue(&mut tasks, enqueue_request("q")).await;
    let first = claim(&mut tasks, "q", "slow-worker", 1, 100)
        .await
        .remove(0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = claim(&mut tasks, "q", "fast-worker", 1, 30_000)
        .await
        .remove(0);
    assert_eq!(second.id, task.id);
    assert_eq!(second.attempts, 2);
    assert_ne!(second.lease_token, first.lease_token);

    let status = expect_error(
        tasks
            .complete_task(pb::CompleteTaskRequest {
                task_id: task.id,
                lease_token: first.lease_token.clone(),
                result: None,
            })
            .await,
    );
    assert_status(
        &status,
        Code::FailedPrecondition,
        &format!("the lease token of task {} is not the current one", task.id),
    );
    let stale = format!(
        "the lease token of task {} is not the current one: the task is TASK_STATE_LEASED \
         (worker \"fast-worker\", attempt 2); claim it again",
        task.id
    );
    let status = expect_error(
        tasks
            .heartbeat_task(pb::HeartbeatTaskRequest {
                task_id: task.id,
                lease_token: first.lease_token.clone(),
                lease: None,
            })
            .await,
    );
    assert_status(&status, Code::FailedPrecondition, &stale);
    let status = expect_error(
        tasks
            .fail_task(pb::FailTaskRequest {
                task_id: task.id,
                lease_token: first.lease_token,
                error: "too late".to_string(),
                permanent: false,
            })
            .await,
    );
    assert_status(&status, Code::FailedPrecondition, &stale);

    let status = expect_error(
        tasks
            .complete_task(pb::CompleteTaskRequest {
                task_id: 999_999,
                lease_token: second.lease_token,
                result: None,
            })
            .await,
    );
    assert_status(&status, Code::NotFound, "task 999999 not found");
}

async fn heartbeat_extends_lease(server: TestServer) {
    let mut tasks = TaskServiceClient::new(server.channel.clone());
    enqueue(&mut tasks, enqueue_request("q")).await;
    let claimed = claim(&mut tasks, "q", "w1", 1, 300).await.remove(0);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let extended = tasks
            .heartbeat_task(pb::HeartbeatTaskRequest {
                task_id: claimed.id,
                lease_token: claimed.lease_token.clone(),
                lease: millis(300),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            timestamp_micros(&extended.lease_expires_at)
                > timestamp_micros(&claimed.lease_expires_at)
        );
    }
    // 400 ms after a 300 ms lease, the heartbeats kept it.
    assert!(claim(&mut tasks, "q", "w2", 1, 300).await.is_empty());
}

async fn failures_back_off_then_die(server: TestServer) {
    let mut tasks = TaskServiceClient::new(server.channel.clone());
    let mut request = enqueue_request("q");
    request.max_attempts = 2;
    request.retry_backoff = millis(50);
    let task = enqueue(&mut tasks, request).await;

    let first = claim(&mut tasks, "q", "w1", 1, 30_000).await.remove(0);
    let failed = tasks
        .fail_task(pb::FailTaskRequest {
            task_id: task.id,
            lease_token: first.lease_token,
            error: "ruff crashed".to_string(),
            permanent: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.state(), TaskState::Queued);
    assert_eq!(failed.last_error, "ruff crashed");
    assert!(timestamp_micros(&failed.run_at) >= timestamp_micros(&failed.updated_at) + 50_000);
    assert!(
        claim(&mut tasks, "q", "w1", 1, 30_000).await.is_empty(),
        "claimed before the backoff"
    );

    tokio::time::sleep(Duration::from_millis(80)).await;
    let second = claim(&mut tasks, "q", "w1", 1, 30_000).await.remove(0);
    assert_eq!(second.attempts, 2);
    let dead = tasks
        .fail_task(pb::FailTaskRequest {
            task_id: task.id,
            lease_token: second.lease_token,
            error: "ruff crashed again".to_string(),
            permanent: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dead.state(), TaskState::Dead);
    assert!(dead.finished_at.is_some());

    let retried = tasks
        .retry_task(pb::RetryTaskRequest { id: task.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.state(), TaskState::Queued);
    assert_eq!(retried.attempts, 0);
    let status = expect_error(tasks.retry_task(pb::RetryTaskRequest { id: task.id }).await);
    assert_status(
        &status,
        Code::FailedPrecondition,
        &format!(
            "task {} is TASK_STATE_QUEUED and cannot move to TASK_STATE_QUEUED",
            task.id
        ),
    );
}

async fn permanent_failure_skips_retries(server: TestServer) {
    let mut tasks = TaskServiceClient::new(server.channel.clone());
    enqueue(&mut tasks, enqueue_request("q")).await;
    let claimed = claim(&mut tasks, "q", "w1", 1, 30_000).await.remove(0);
    let dead = tasks
        .fail_task(pb::FailTaskRequest {
            task_id: claimed.id,
            lease_token: claimed.lease_token,
            error: "repository does not exist".to_string(),
            permanent: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dead.state(), TaskState::Dead);
    assert_eq!(dead.attempts, 1);
}

async fn cancel_stops_the_worker(server: TestServer) {
    let mut tasks = TaskServiceClient::new(server.channel.clone());
    enqueue(&mut tasks, enqueue_request("q")).await;
    let claimed = claim(&mut tasks, "q", "w1", 1, 30_000).await.remove(0);
    let cancelled = tasks
        .cancel_task(pb::CancelTaskRequest { id: claimed.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state(), TaskState::Cancelled);
    let status = expect_error(
        tasks
            .complete_task(pb::CompleteTaskRequest {
                task_id: claimed.id,
                lease_token: claimed.lease_token,
                result: None,
            })
            .await,
    );
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("TASK_STATE_CANCELLED"),
        "{}",
        status.message()
    );
    let status = expect_error(
        tasks
            .cancel_task(pb::CancelTaskRequest { id: claimed.id })
            .await,
    );
    assert_eq!(status.code(), Code::FailedPrecondition);
}

async fn completion_stores_results(mut server: TestServer) {
    let mut tasks = TaskServiceClient::new(server.channel.clone());
    enqueue(&mut tasks, enqueue_request("q")).await;
    let claimed = claim(&mut tasks, "q", "w1", 1, 30_000).await.remove(0);
    let result = pb::TaskResult {
        crew_name: "review-crew".to_string(),
        output_type: "code_review".to_string(),
        status: 0,
        results: Some(common::to_struct(
            serde_json::json!({ "summary": "2 problems" }),
        )),
        findings: vec![
            common::new_finding("src/app.py", "S105", "hardcoded password"),
            common::new_finding("src/db.py", "S608", "SQL built from strings"),
        ],
        fixes: vec![pb::TaskFix {
            file_path: "src/app.py".to_string(),
            description: "read the password from the environment".to_string(),
            finding_indexes: vec![0],
            ..Default::default()
        }],
    };

    let mut bad = result.clone();
    bad.fixes[0].finding_indexes = vec![2];
    let status = expect_error(
        tasks
            .complete_task(pb::CompleteTaskRequest {
                task_id: claimed.id,
                lease_token: claimed.lease_token.clone(),
                result: Some(bad),
            })
            .await,
    );
    assert_status(
        &status,
        Code::InvalidArgument,
        "result.fixes[0].finding_indexes: 2 is not a position",
    );

    let completed = tasks
        .complete_task(pb::CompleteTaskRequest {
            task_id: claimed.id,
            lease_token: claimed.lease_token,
            result: Some(result),
        })
        .await
        .unwrap()
        .into_inner();
    let task = completed.task.unwrap();
    let run = completed.crew_output.unwrap();
    assert_eq!(task.state(), TaskState::Succeeded);
    assert_eq!(task.crew_output_id, run.id);
    assert_eq!(run.status(), pb::CrewOutputStatus::Succeeded);

    let findings = server
        .analysis
        .list_findings(pb::ListFindingsRequest {
            crew_output_id: run.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(findings.total_size, 2);
    let fixes = server
        .fixes
        .list_fixes(pb::ListFixesRequest {
            crew_output_id: run.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fixes.fixes.len(), 1);
    assert_eq!(fixes.fixes[0].finding_ids, [findings.findings[0].id]);
}

async fn list_filters_by_state_and_worker(server: TestServer) {
    let mut tasks = TaskServiceClient::new(server.channel.clone());
    for _ in 0..5 {
        enqueue(&mut tasks, enqueue_request("q")).await;
    }
    claim(&mut tasks, "q", "w1", 2, 30_000).await;
    let leased = tasks
        .list_tasks(pb::ListTasksRequest {
            queue: "q".to_string(),
            state: TaskState::Leased as i32,
            worker: "w1".to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(leased.total_size, 2);
    assert!(
        leased.tasks.iter().all(|task| task.lease_token.is_empty()),
        "tokens stay with the worker"
    );

    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = tasks
            .list_tasks(pb::ListTasksRequest {
                page_size: 2,
                page_token,
                queue: "q".to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total_size, 5);
        seen.extend(page.tasks.iter().map(|task| task.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), 5);
    assert!(seen.windows(2).all(|pair| pair[0] < pair[1]));
}

async fn workers_finish_every_task_once(server: TestServer) {
    drive_queue(vec![server.channel.clone()], 5_000).await;
}

backend_tests! {
    enqueue_sets_defaults,
    enqueue_rejects_bad_fields,
    dedupe_key_returns_first_task,
    concurrent_enqueues_share_one_dedupe_key,
    claim_orders_by_priority_then_age,
    stale_lease_token_is_rejected,
    heartbeat_extends_lease,
    failures_back_off_then_die,
    permanent_failure_skips_retries,
    cancel_stops_the_worker,
    completion_stores_results,
    list_filters_by_state_and_worker,
    workers_finish_every_task_once,
}

/// Eight workers spread over two replicas of one PostgreSQL database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_queue() {
    let Some(database) = TestDatabase::create(Backend::Postgres) else {
        return;
    };
    let first = ServeProcess::start(database.url(), &[]);
    let second = ServeProcess::start(database.url(), &[]);
    drive_queue(vec![first.channel().await, second.channel().await], 5_000).await;
}

/// A result large enough that the server is often killed while storing it.
fn large_result(findings: usize) -> pb::TaskResult {
    pb::TaskResult {
        crew_name: "crash-crew".to_string(),
        output_type: "review".to_string(),
        findings: (0..findings)
            .map(|index| {
                common::new_finding(&format!("src/module_{index}.py"), "E501", "line too long")
            })
            .collect(),
        fixes: vec![pb::TaskFix {
            file_path: "src/module_0.py".to_string(),
            description: "wrap the line".to_string(),
            finding_indexes: vec![0],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Returns whether a write transaction of the server is open. On
/// PostgreSQL, a session of the database then holds a transaction-scoped
/// advisory lock, because every audited transaction takes one first. On
/// SQLite, another connection then cannot take the write lock.
fn write_transaction_open(database: &TestDatabase) -> bool {
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, SqliteConnection};
    match database {
        TestDatabase::Sqlite { path, .. } => {
            // A fresh connection has no busy timeout, so a held lock fails
            // at once.
            let mut probe = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
            match probe.batch_execute("BEGIN IMMEDIATE; ROLLBACK;") {
                Ok(()) => false,
                Err(error) if error.to_string().contains("database is locked") => true,
                Err(error) => panic!("cannot probe the write lock: {error}"),
            }
        }
        TestDatabase::Postgres { .. } => {
            database.query_text(
                "SELECT CAST(count(*) AS TEXT) AS value FROM pg_locks l \
                 JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted \
                 AND a.datname = current_database()",
            ) != "0"
        }
    }
}

/// When a round of `completion_is_atomic` kills the server.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// This long after the request was sent.
    After(u64),
    /// As soon as the completion's transaction is seen open.
    InsideTransaction,
    /// Not at all: the round waits for the response.
    Never,
}

/// Kills the server between claim and completion, and during completion,
/// and checks that a task is never done without its results, nor results
/// stored without their task.
async fn completion_is_atomic(backend: Backend) {
    const FINDINGS: usize = 5_000;
    let Some(database) = TestDatabase::create(backend) else {
        return;
    };
    let count = |sql: &str| database.query_text(sql).parse::<i64>().unwrap();

    let mut server = ServeProcess::start(database.url(), &[]);
    let mut tasks = TaskServiceClient::new(server.channel().await);
    let mut request = enqueue_request("crash");
    request.max_attempts = 100;
    let task = enqueue(&mut tasks, request).await;
    claim(&mut tasks, "crash", "doomed-worker", 1, 200).await;
    server.kill();

    // Killed between claim and complete: the task is still leased, nothing
    // of its result exists, and the lease runs out.
    assert_eq!(
        database.query_text(&format!(
            "SELECT CAST(state AS TEXT) AS value FROM tasks WHERE id = {}",
            task.id
        )),
        "2"
    );
    assert_eq!(
        count("SELECT CAST(count(*) AS TEXT) AS value FROM crew_outputs"),
        0
    );
    tokio::time::sleep(Duration::from_millis(250)).await;

    // Killed while completing: once inside the open transaction, then
    // after delays that land before, during and after it. The last round
    // is not killed before the response, so the task ends completed.
    let rounds = [
        Kill::InsideTransaction,
        Kill::After(0),
        Kill::After(20),
        Kill::After(60),
        Kill::After(150),
        Kill::After(400),
        Kill::Never,
    ];
    for round in rounds {
        let server = ServeProcess::start(database.url(), &[]);
        let mut tasks = TaskServiceClient::new(server.channel().await);
        let claimed = claim(&mut tasks, "crash", "worker", 1, 5_000).await;
        let Some(claimed) = claimed.into_iter().next() else {
            break; // Completed in an earlier round.
        };
        let request = pb::CompleteTaskRequest {
            task_id: claimed.id,
            lease_token: claimed.lease_token,
            result: Some(large_result(FINDINGS)),
        };
        let completing = tokio::spawn(async move { tasks.complete_task(request).await });
        let mut server = server;
        match round {
            Kill::Never => {
                completing.await.unwrap().expect("completion failed");
            }
            Kill::After(delay_ms) => {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                server.kill();
                let _ = completing.await;
            }
            Kill::InsideTransaction => {
                // Unlike common::wait_until, this polls every millisecond
                // and stops once the completion has ended without being seen.
                let deadline = std::time::Instant::now() + common::WAIT_TIMEOUT;
                while !write_transaction_open(&database) {
                    assert!(
                        !completing.is_finished(),
                        "the completion ended before its transaction was seen open"
                    );
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the completion's transaction was not seen open within {:?}",
                        common::WAIT_TIMEOUT
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                server.kill();
                let _ = completing.await;
            }
        }

        let state = database.query_text(&format!(
            "SELECT CAST(state AS TEXT) AS value FROM tasks WHERE id = {}",
            task.id
        ));
        let runs = count("SELECT CAST(count(*) AS TEXT) AS value FROM crew_outputs");
        let findings = count("SELECT CAST(count(*) AS TEXT) AS value FROM code_analysis_results");
        let fixes = count("SELECT CAST(count(*) AS TEXT) AS value FROM error_handling_results");
        eprintln!("round {round:?}: task state {state}, {findings} findings stored");
        if let Kill::InsideTransaction = round {
            // Storing 5,000 findings keeps the transaction open far longer
            // than the probe's millisecond, so the kill lands inside it.
            assert_eq!(state, "2", "killed inside the transaction");
        }
        if state == "3" {
            assert_eq!(
                (runs, findings, fixes),
                (1, FINDINGS as i64, 1),
                "round {round:?}"
            );
            let linked = database.query_text(&format!(
                "SELECT CAST(crew_output_id AS TEXT) AS value FROM tasks WHERE id = {}",
                task.id
            ));
            let run = database.query_text("SELECT CAST(id AS TEXT) AS value FROM crew_outputs");
            assert_eq!(linked, run);
            return;
        } else {
            assert_eq!(state, "2", "round {round:?}");
            assert_eq!((runs, findings, fixes), (0, 0, 0), "round {round:?}");
            // Release the lease of the killed round for the next claim.
            database.query_text(&format!(
                "UPDATE tasks SET lease_expires_at = 0 WHERE id = {} RETURNING CAST(id AS TEXT) AS value",
                task.id
            ));
        }
    }
    panic!("task {} never completed", task.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_is_atomic_sqlite() {
    completion_is_atomic(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_is_atomic_postgres() {
    completion_is_atomic(Backend::Postgres).await;
}

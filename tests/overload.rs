//! A busy database never makes calls hang: when no pooled connection or no
//! write lock becomes free within the pool timeout, calls fail with
//! UNAVAILABLE and a retry delay, and a statement past the statement
//! timeout fails with DEADLINE_EXCEEDED. On PostgreSQL, the pool's sessions
//! carry the server's `application_name` and keep the minimum of idle
//! connections open.

mod common;

use std::time::{Duration, Instant};

use code_analyzer::pb;
use code_analyzer::pb::crew_service_client::CrewServiceClient;
use common::process::ServeProcess;
use common::{Backend, TestDatabase, assert_status, hold_write_lock, wait_until};
use tonic::Code;
use tonic_types::StatusExt;

fn create_request() -> pb::CreateCrewOutputRequest {
    pb::CreateCrewOutputRequest {
        crew_name: "busy-crew".to_string(),
        output_type: "review".to_string(),
        ..Default::default()
    }
}

async fn busy_database_is_unavailable(backend: Backend) {
    let Some(database) = TestDatabase::create(backend) else {
        return;
    };
    let server = ServeProcess::start(
        database.url(),
        &[
            "--pool-size",
            "1",
            "--pool-timeout",
            "1",
            "--statement-timeout",
            "3",
        ],
    );
    let channel = server.channel().await;
    let release = hold_write_lock(&database, "crew_outputs");

    // The first call waits on the database lock while it holds the only
    // connection (and, on SQLite, the server's write lock); the second
    // waits for those.
    let mut first_client = CrewServiceClient::new(channel.clone());
    let first = tokio::spawn(async move {
        let started = Instant::now();
        (
            first_client.create_crew_output(create_request()).await,
            started.elapsed(),
        )
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let second = CrewServiceClient::new(channel.clone())
        .create_crew_output(create_request())
        .await;
    let waited = started.elapsed();

    let status = second.expect_err("a call without a free connection must fail");
    assert_status(&status, Code::Unavailable, "the database is busy");
    assert!(
        status.message().contains("retry after 1 s"),
        "{}",
        status.message()
    );
    let retry = status.get_details_retry_info().expect("a RetryInfo detail");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));
    assert!(
        waited < Duration::from_secs(5),
        "waited {waited:?} for a connection"
    );

    let (first, first_waited) = first.await.unwrap();
    let status = first.expect_err("a write behind a held lock must fail");
    match backend {
        // SQLite gives up on the lock after the busy timeout.
        Backend::Sqlite => assert_status(&status, Code::Unavailable, "the database is busy"),
        // PostgreSQL cancels the statement after the statement timeout.
        Backend::Postgres => assert_status(
            &status,
            Code::DeadlineExceeded,
            "the database did not finish within the statement timeout",
        ),
    }
    assert!(
        first_waited < Duration::from_secs(10),
        "waited {first_waited:?} on the lock"
    );

    // Once the lock is gone, the same server serves again.
    drop(release);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let created = CrewServiceClient::new(channel)
        .create_crew_output(create_request())
        .await
        .expect("the server recovers when the database is free")
        .into_inner();
    assert_eq!(created.crew_name, "busy-crew");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_database_is_unavailable_sqlite() {
    busy_database_is_unavailable(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_database_is_unavailable_postgres() {
    busy_database_is_unavailable(Backend::Postgres).await;
}

/// The `application_name` of the server's PostgreSQL sessions.
const APPLICATION_NAME: &str = "code-analyzer";

/// Counts the server's sessions on the test database whose
/// `pg_stat_activity` row matches `condition`.
fn server_sessions(database: &TestDatabase, condition: &str) -> i64 {
    let sql = format!(
        "SELECT count(*)::text AS value FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = '{APPLICATION_NAME}' \
         AND {condition}"
    );
    database
        .query_text(&sql)
        .parse()
        .expect("count(*) is a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_is_unavailable_postgres() {
    let Some(database) = TestDatabase::create(Backend::Postgres) else {
        return;
    };
    let server = ServeProcess::start(database.url(), &["--pool-size", "1", "--pool-timeout", "1"]);
    let channel = server.channel().await;
    let run = CrewServiceClient::new(channel.clone())
        .create_crew_output(create_request())
        .await
        .expect("CreateCrewOutput failed")
        .into_inner();
    let release = hold_write_lock(&database, "crew_outputs");

    // The first read takes the pool's only connection and waits on the lock.
    let mut first_client = CrewServiceClient::new(channel.clone());
    let first = tokio::spawn(async move {
        first_client
            .get_crew_output(pb::GetCrewOutputRequest { id: run.id })
            .await
    });
    wait_until("the server's session to wait on the table lock", || {
        server_sessions(&database, "wait_event_type = 'Lock'") == 1
    })
    .await;

    // A second read finds no free connection within the pool timeout.
    let status = CrewServiceClient::new(channel.clone())
        .list_crew_outputs(pb::ListCrewOutputsRequest::default())
        .await
        .expect_err("a read without a free connection must fail");
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert_eq!(
        status.message(),
        "the database is busy: no connection became free in time; retry after 1 s"
    );
    let retry = status.get_details_retry_info().expect("a RetryInfo detail");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));

    // Once the lock is gone, the waiting read finishes and reads serve again.
    drop(release);
    let stored = first
        .await
        .unwrap()
        .expect("the read behind the lock finishes once it is released")
        .into_inner();
    assert_eq!(stored.id, run.id);
    let listed = CrewServiceClient::new(channel)
        .list_crew_outputs(pb::ListCrewOutputsRequest::default())
        .await
        .expect("the pool serves again")
        .into_inner();
    assert_eq!(listed.total_size, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_sessions_named_and_idle_postgres() {
    let Some(database) = TestDatabase::create(Backend::Postgres) else {
        return;
    };
    let _server = ServeProcess::start(
        database.url(),
        &["--pool-size", "4", "--pool-min-idle", "3"],
    );

    // The pool opens its idle connections in the background after start-up.
    wait_until("three idle sessions of the server", || {
        server_sessions(&database, "state = 'idle'") >= 3
    })
    .await;
    let open = server_sessions(&database, "true");
    assert!((3..=4).contains(&open), "{open} sessions for a pool of 4");
}

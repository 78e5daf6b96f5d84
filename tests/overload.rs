//! A busy database never makes calls hang: when no pooled connection or no
//! write lock becomes free within the pool timeout, calls fail with
//! UNAVAILABLE and a retry delay, and a statement past the statement
//! timeout fails with DEADLINE_EXCEEDED.

mod common;

use std::time::{Duration, Instant};

use code_analyzer::pb;
use code_analyzer::pb::crew_service_client::CrewServiceClient;
use common::process::ServeProcess;
use common::{Backend, TestDatabase, assert_status, hold_write_lock};
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

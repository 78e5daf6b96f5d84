//! Claim-and-complete throughput of the task queue: 8 workers on one queue,
//! each claiming a batch of tasks and completing them one by one, against
//! the release server binary on SQLite and on PostgreSQL.
//!
//! Run: `cargo build --release && cargo bench --bench tasks -- [--tasks N]
//! [--workers N] [--batch N] [--backend sqlite|postgres|all]`.
//! PostgreSQL: admin URL in `CODE_ANALYZER_BENCH_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); the benchmark creates and
//! drops a database of its own.

#[path = "../tests/common/process.rs"]
mod process;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use code_analyzer::pb;
use code_analyzer::pb::task_service_client::TaskServiceClient;
use diesel::{Connection, RunQueryDsl};
use process::ServeProcess;
use tonic::transport::Channel;

struct Options {
    tasks: usize,
    workers: usize,
    batch: i32,
    backends: Vec<&'static str>,
}

fn parse_options() -> Options {
    let mut options = Options {
        tasks: 20_000,
        workers: 8,
        batch: 10,
        backends: vec!["sqlite", "postgres"],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--tasks" => options.tasks = value().parse().expect("--tasks takes a number"),
            "--workers" => options.workers = value().parse().expect("--workers takes a number"),
            "--batch" => options.batch = value().parse().expect("--batch takes a number"),
            "--backend" => {
                options.backends = match value().as_str() {
                    "sqlite" => vec!["sqlite"],
                    "postgres" => vec!["postgres"],
                    "all" => vec!["sqlite", "postgres"],
                    other => panic!("unknown backend {other:?}; use sqlite, postgres or all"),
                }
            }
            // `cargo bench` passes --bench to every benchmark program.
            "--bench" => {}
            other => panic!("unknown option {other:?}"),
        }
    }
    options
}

fn server_binary() -> PathBuf {
    let binary = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/code-analyzer");
    assert!(
        binary.is_file(),
        "{} not found; run `cargo build --release` first",
        binary.display()
    );
    binary
}

/// Enqueues `count` tasks from several clients at once; not timed.
async fn fill_queue(channel: Channel, count: usize, clients: usize) {
    let mut fillers = Vec::new();
    for client in 0..clients {
        let mut tasks = TaskServiceClient::new(channel.clone());
        fillers.push(tokio::spawn(async move {
            for index in (client..count).step_by(clients) {
                tasks
                    .enqueue_task(pb::EnqueueTaskRequest {
                        queue: "bench".to_string(),
                        priority: (index % 4) as i32,
                        ..Default::default()
                    })
                    .await
                    .expect("enqueue failed");
            }
        }));
    }
    for filler in fillers {
        filler.await.unwrap();
    }
}

/// What draining the queue took.
struct Drained {
    completed: usize,
    elapsed: Duration,
    claim_time: Duration,
    claims: usize,
    complete_time: Duration,
}

/// Drains the queue with `workers` workers.
async fn drain_queue(channel: Channel, workers: usize, batch: i32) -> Drained {
    let started = Instant::now();
    let mut handles = Vec::new();
    for worker in 0..workers {
        let mut tasks = TaskServiceClient::new(channel.clone());
        handles.push(tokio::spawn(async move {
            let mut completed = 0;
            let (mut claims, mut claim_time, mut complete_time) =
                (0, Duration::ZERO, Duration::ZERO);
            loop {
                let claim_started = Instant::now();
                let claimed = tasks
                    .claim_tasks(pb::ClaimTasksRequest {
                        queue: "bench".to_string(),
                        worker: format!("worker-{worker}"),
                        max_tasks: batch,
                        lease: Some(prost_types::Duration {
                            seconds: 60,
                            nanos: 0,
                        }),
                    })
                    .await
                    .expect("claim failed")
                    .into_inner()
                    .tasks;
                claim_time += claim_started.elapsed();
                claims += 1;
                if claimed.is_empty() {
                    return (completed, claims, claim_time, complete_time);
                }
                for task in claimed {
                    let complete_started = Instant::now();
                    tasks
                        .complete_task(pb::CompleteTaskRequest {
                            task_id: task.id,
                            lease_token: task.lease_token,
                            result: None,
                        })
                        .await
                        .expect("complete failed");
                    complete_time += complete_started.elapsed();
                    completed += 1;
                }
            }
        }));
    }
    let mut drained = Drained {
        completed: 0,
        elapsed: Duration::ZERO,
        claim_time: Duration::ZERO,
        claims: 0,
        complete_time: Duration::ZERO,
    };
    for handle in handles {
        let (completed, claims, claim_time, complete_time) = handle.await.unwrap();
        drained.completed += completed;
        drained.claims += claims;
        drained.claim_time += claim_time;
        drained.complete_time += complete_time;
    }
    drained.elapsed = started.elapsed();
    drained
}

/// A PostgreSQL database for one run, dropped afterwards.
struct PostgresDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PostgresDatabase {
    fn create() -> Result<PostgresDatabase, String> {
        let admin_url = std::env::var("CODE_ANALYZER_BENCH_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        let mut admin =
            diesel::PgConnection::establish(&admin_url).map_err(|error| error.to_string())?;
        let name = format!("ca_bench_tasks_{}", std::process::id());
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut admin)
            .map_err(|e| e.to_string())?;
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .map_err(|e| e.to_string())?;
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin_url);
        Ok(PostgresDatabase {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        })
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = diesel::PgConnection::establish(&self.admin_url) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin);
        }
    }
}

async fn run_backend(backend: &str, options: &Options) -> Option<Drained> {
    let folder = tempfile::TempDir::new().unwrap();
    let mut postgres = None;
    let url = match backend {
        "sqlite" => format!("sqlite://{}", folder.path().join("tasks.db").display()),
        _ => match PostgresDatabase::create() {
            Ok(database) => {
                let url = database.url.clone();
                postgres = Some(database);
                url
            }
            Err(error) => {
                println!("postgres: skipped, PostgreSQL is not reachable ({error})");
                return None;
            }
        },
    };
    let server = ServeProcess::start_binary(&server_binary(), &url, &["--pool-size", "8"]);
    let channel = server.channel().await;
    fill_queue(channel.clone(), options.tasks, 8).await;
    let result = drain_queue(channel, options.workers, options.batch).await;
    drop(server);
    drop(postgres);
    Some(result)
}

#[tokio::main]
async fn main() {
    let options = parse_options();
    println!(
        "claim-and-complete: {} tasks, {} workers, claims of {} tasks",
        options.tasks, options.workers, options.batch
    );
    println!(
        "{:<10} {:>8} {:>9} {:>10} {:>14} {:>17}",
        "backend", "tasks", "seconds", "tasks/s", "mean claim ms", "mean complete ms"
    );
    for backend in options.backends.clone() {
        if let Some(drained) = run_backend(backend, &options).await {
            assert_eq!(
                drained.completed, options.tasks,
                "{backend}: every task completes once"
            );
            println!(
                "{:<10} {:>8} {:>9.2} {:>10.0} {:>14.2} {:>17.2}",
                backend,
                drained.completed,
                drained.elapsed.as_secs_f64(),
                drained.completed as f64 / drained.elapsed.as_secs_f64(),
                drained.claim_time.as_secs_f64() * 1e3 / drained.claims as f64,
                drained.complete_time.as_secs_f64() * 1e3 / drained.completed as f64,
            );
        }
    }
}

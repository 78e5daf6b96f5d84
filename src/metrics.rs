//! Prometheus metrics: process-wide counters and histograms, rendered in
//! the text exposition format, and a small HTTP endpoint that serves them
//! on `--metrics-listen`.
//!
//! RPC metrics follow the names of the go-grpc-prometheus conventions
//! (`grpc_server_handled_total`, `grpc_server_handling_seconds`); the
//! server's own metrics start with `code_analyzer_`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

use crate::storage::Storage;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Maximum size of a request head that the metrics endpoint reads.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// How long the metrics endpoint waits for a request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A latency histogram with the fixed `BUCKETS`.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let separator = if labels.is_empty() { "" } else { "," };
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count();
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {count}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |labels: &str| {
            if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// Every metric of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Latency of finished calls by service, method and status code number.
    rpcs: Mutex<BTreeMap<(String, String, i32), Arc<Histogram>>>,
    started: Mutex<BTreeMap<(String, String), u64>>,
    pub requests_shed: AtomicU64,
    pub unauthenticated: AtomicU64,
    pub permission_denied: AtomicU64,
    pub log_entries_accepted: AtomicU64,
    pub log_entries_duplicate: AtomicU64,
    pub log_entries_rejected: AtomicU64,
    pub pool_wait: Histogram,
    pub pool_timeouts: AtomicU64,
    database_errors: Mutex<BTreeMap<&'static str, u64>>,
    pub retention_passes: AtomicU64,
    pub retention_failed_passes: AtomicU64,
    pub retention_log_entries_deleted: AtomicU64,
    pub retention_crew_outputs_deleted: AtomicU64,
    pub retention_findings_deleted: AtomicU64,
    pub retention_fixes_deleted: AtomicU64,
}

/// The metrics of this process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// Splits `/package.Service/Method` into service and method.
fn split_path(path: &str) -> (String, String) {
    let trimmed = path.trim_start_matches('/');
    match trimmed.split_once('/') {
        Some((service, method)) => (service.to_string(), method.to_string()),
        None => ("unknown".to_string(), trimmed.to_string()),
    }
}

impl Metrics {
    /// Counts a call that the server began to handle.
    pub fn rpc_started(&self, path: &str) {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        *started.entry(split_path(path)).or_default() += 1;
    }

    /// Counts a finished call with its status code and latency.
    pub fn rpc_handled(&self, path: &str, code: Code, elapsed: Duration) {
        let (service, method) = split_path(path);
        let latency = {
            let mut rpcs = self.rpcs.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(rpcs.entry((service, method, code as i32)).or_default())
        };
        latency.observe(elapsed);
    }

    /// Counts a database error by kind, such as `unique_violation`.
    pub fn database_error(&self, kind: &'static str) {
        let mut errors = self
            .database_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *errors.entry(kind).or_default() += 1;
    }

    /// Renders every metric in the Prometheus text format, with the pool
    /// state of `storage`.
    pub fn render(&self, storage: &Storage) -> String {
        let mut out = String::with_capacity(16 * 1024);
        header(
            &mut out,
            "code_analyzer_build_info",
            "gauge",
            "Version and database backend of the running server; always 1.",
        );
        let _ = writeln!(
            out,
            "code_analyzer_build_info{{version=\"{}\",backend=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            storage.backend().name()
        );

        header(
            &mut out,
            "grpc_server_started_total",
            "counter",
            "RPCs the server began to handle.",
        );
        for ((service, method), count) in self
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "grpc_server_started_total{{grpc_service=\"{service}\",grpc_method=\"{method}\"}} {count}"
            );
        }

        let rpcs: Vec<_> = self
            .rpcs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(key, latency)| (key.clone(), Arc::clone(latency)))
            .collect();
        header(
            &mut out,
            "grpc_server_handled_total",
            "counter",
            "RPCs completed, by method and status code.",
        );
        for ((service, method, code), latency) in &rpcs {
            let _ = writeln!(
                out,
                "grpc_server_handled_total{{grpc_service=\"{service}\",grpc_method=\"{method}\",grpc_code=\"{}\"}} {}",
                code_name(Code::from_i32(*code)),
                latency.count()
            );
        }
        header(
            &mut out,
            "grpc_server_handling_seconds",
            "histogram",
            "Time from the request to the end of the response, by method and status code.",
        );
        for ((service, method, code), latency) in &rpcs {
            let labels = format!(
                "grpc_service=\"{service}\",grpc_method=\"{method}\",grpc_code=\"{}\"",
                code_name(Code::from_i32(*code))
            );
            latency.render(&mut out, "grpc_server_handling_seconds", &labels);
        }

        counter(
            &mut out,
            "code_analyzer_requests_shed_total",
            "Calls rejected because the server was at its concurrent call limit.",
            &self.requests_shed,
        );
        labelled(
            &mut out,
            "code_analyzer_auth_failures_total",
            "counter",
            "Calls rejected by authentication or authorization.",
            "reason",
            &[
                ("unauthenticated", load(&self.unauthenticated)),
                ("permission_denied", load(&self.permission_denied)),
            ],
        );
        labelled(
            &mut out,
            "code_analyzer_log_entries_ingested_total",
            "counter",
            "Log entries received by IngestLogs, by outcome.",
            "result",
            &[
                ("accepted", load(&self.log_entries_accepted)),
                ("duplicate", load(&self.log_entries_duplicate)),
                ("rejected", load(&self.log_entries_rejected)),
            ],
        );

        let pool = storage.pool_state();
        labelled(
            &mut out,
            "code_analyzer_db_pool_connections",
            "gauge",
            "Open database connections, by state.",
            "state",
            &[
                ("idle", u64::from(pool.idle)),
                ("in_use", u64::from(pool.open.saturating_sub(pool.idle))),
            ],
        );
        header(
            &mut out,
            "code_analyzer_db_pool_max_connections",
            "gauge",
            "Maximum number of connections the pool opens.",
        );
        let _ = writeln!(out, "code_analyzer_db_pool_max_connections {}", pool.max);
        header(
            &mut out,
            "code_analyzer_db_pool_wait_seconds",
            "histogram",
            "Time a call waited for a database connection.",
        );
        self.pool_wait
            .render(&mut out, "code_analyzer_db_pool_wait_seconds", "");
        counter(
            &mut out,
            "code_analyzer_db_pool_timeouts_total",
            "Calls that found no free database connection within the pool timeout.",
            &self.pool_timeouts,
        );
        header(
            &mut out,
            "code_analyzer_db_errors_total",
            "counter",
            "Database errors, by kind.",
        );
        for (kind, count) in self
            .database_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "code_analyzer_db_errors_total{{kind=\"{kind}\"}} {count}"
            );
        }

        counter(
            &mut out,
            "code_analyzer_retention_passes_total",
            "Retention passes completed, failed ones included.",
            &self.retention_passes,
        );
        counter(
            &mut out,
            "code_analyzer_retention_failed_passes_total",
            "Retention passes that stopped on an error.",
            &self.retention_failed_passes,
        );
        labelled(
            &mut out,
            "code_analyzer_retention_deleted_total",
            "counter",
            "Records deleted by retention, by record type.",
            "record",
            &[
                ("log_entries", load(&self.retention_log_entries_deleted)),
                ("crew_outputs", load(&self.retention_crew_outputs_deleted)),
                ("findings", load(&self.retention_findings_deleted)),
                ("fixes", load(&self.retention_fixes_deleted)),
            ],
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {}", load(value));
}

/// Writes a metric of `kind` with one sample for each value of its
/// single label `label`.
fn labelled(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    samples: &[(&str, u64)],
) {
    header(out, name, kind, help);
    for (value, sample) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {sample}");
    }
}

fn load(value: &AtomicU64) -> u64 {
    value.load(Ordering::Relaxed)
}

/// Returns the name that grpc-go gives a status code, such as `NotFound`;
/// go-grpc-prometheus uses it as the `grpc_code` label.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped. Any other
/// path gets 404 and any other method 405.
pub async fn serve(listener: TcpListener, storage: Storage) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(error = %error, "metrics endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let storage = storage.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &storage).await {
                tracing::debug!(%peer, error = %error, "metrics request failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, storage: &Storage) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let complete = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !head.windows(4).any(|window| window == b"\r\n\r\n") {
            let read = stream.read(&mut chunk).await?;
            if read == 0 || head.len() + read > MAX_REQUEST_BYTES {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&chunk[..read]);
        }
        Ok(true)
    })
    .await
    .unwrap_or(Ok(false))?;
    if !complete {
        return Ok(());
    }

    let request_line = String::from_utf8_lossy(&head);
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            METRICS.render(storage),
        ),
        (_, "/metrics") => (
            "405 Method Not Allowed",
            "text/plain",
            "use GET\n".to_string(),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "metrics are served at /metrics\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

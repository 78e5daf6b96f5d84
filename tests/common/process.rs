//! A `code-analyzer serve` child process, for tests and benchmarks that need
//! the real binary: several replicas, a killed server, peak memory.
//!
//! The process logs JSON lines; the start-up line carries the address it
//! listens on and the migrations it applied. Dropping the value kills the
//! process.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct ServeProcess {
    child: Child,
    /// `host:port` the server listens on.
    pub address: String,
    /// The `migrations_applied` field of the start-up line, such as `[]`.
    pub migrations_applied: String,
    /// `host:port` of the metrics endpoint; empty when it is off.
    pub metrics_address: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl ServeProcess {
    /// Starts `binary serve` on `database_url` with `extra_args` and waits
    /// for its start-up line; panics with its output if it exits first.
    pub fn start_binary(binary: &Path, database_url: &str, extra_args: &[&str]) -> ServeProcess {
        Self::start_binary_with_log_level(binary, database_url, extra_args, "info")
    }

    /// Like `start`, with `RUST_LOG` set to `log_level`.
    pub fn start_with_log_level(
        database_url: &str,
        extra_args: &[&str],
        log_level: &str,
    ) -> ServeProcess {
        Self::start_binary_with_log_level(
            Path::new(env!("CARGO_BIN_EXE_code-analyzer")),
            database_url,
            extra_args,
            log_level,
        )
    }

    fn start_binary_with_log_level(
        binary: &Path,
        database_url: &str,
        extra_args: &[&str],
        log_level: &str,
    ) -> ServeProcess {
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--database-url", database_url])
            .args(extra_args)
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));

        // Keep reading stderr after the start-up line, so the server never
        // blocks on a full pipe.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (started, start_line) = mpsc::channel();
        let reader = BufReader::new(child.stderr.take().expect("stderr is piped"));
        let lines = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                // Store the line before announcing the start, so the test
                // that waits for the start also finds the line.
                let start = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|event| {
                        let fields = &event["fields"];
                        let address = fields["address"].as_str()?.to_string();
                        let applied = fields["migrations_applied"].as_str().unwrap_or_default();
                        let metrics = fields["metrics_address"].as_str().unwrap_or_default();
                        Some((address, applied.to_string(), metrics.to_string()))
                    });
                lines.lock().unwrap().push(line);
                if let Some(start) = start {
                    let _ = started.send(start);
                }
            }
        });

        match start_line.recv_timeout(STARTUP_TIMEOUT) {
            Ok((address, migrations_applied, metrics_address)) => ServeProcess {
                child,
                address,
                migrations_applied,
                metrics_address,
                stderr,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "serve printed no start-up line; stderr:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
        }
    }

    /// Starts the binary that Cargo built for the integration tests.
    pub fn start(database_url: &str, extra_args: &[&str]) -> ServeProcess {
        Self::start_binary(
            Path::new(env!("CARGO_BIN_EXE_code-analyzer")),
            database_url,
            extra_args,
        )
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(self.url())
            .expect("valid server URL")
            .connect()
            .await
            .unwrap_or_else(|error| panic!("cannot connect to {}: {error}", self.url()))
    }

    /// The log lines printed so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Returns the exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .expect("cannot poll the serve process")
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        self.signal("TERM");
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.try_wait() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve did not stop within {limit:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread may still be taking the last lines.
        std::thread::sleep(Duration::from_millis(100));
        status
    }

    /// Sends a signal, such as `TERM`, to the process.
    pub fn signal(&self, name: &str) {
        let pid = self.pid().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("cannot run kill");
        assert!(sent.success(), "kill -{name} {pid} failed");
    }

    /// Kills the process at once (SIGKILL), as a crash or power loss would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

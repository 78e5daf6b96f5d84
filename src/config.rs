//! Command-line options of `serve` and `migrate`, each with an environment
//! variable as fallback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::storage::PoolOptions;
use crate::storage::retention::{RetentionOptions, RetentionPolicy};

/// Format of the server's own log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database to use: sqlite://PATH (or a bare path) or postgres://USER@HOST/DB.
    #[arg(
        long,
        env = "CODE_ANALYZER_DATABASE_URL",
        default_value = "sqlite://analyzer.db"
    )]
    pub database_url: String,

    /// Most database connections the pool opens. On SQLite, the writer
    /// thread and its checkpointer have one more connection each.
    #[arg(long, env = "CODE_ANALYZER_POOL_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pool_size: u32,

    /// Connections the pool keeps open while idle.
    #[arg(long, env = "CODE_ANALYZER_POOL_MIN_IDLE", default_value_t = 1)]
    pub pool_min_idle: u32,

    /// Seconds a call waits for a free database connection (and, on SQLite,
    /// for the write lock) before it fails with UNAVAILABLE.
    #[arg(long = "pool-timeout", env = "CODE_ANALYZER_POOL_TIMEOUT", value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub pool_timeout_secs: u64,

    /// PostgreSQL only: seconds a statement may run before the database
    /// cancels it; 0 means no limit.
    #[arg(
        long = "statement-timeout",
        env = "CODE_ANALYZER_STATEMENT_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 30
    )]
    pub statement_timeout_secs: u64,
}

impl DatabaseArgs {
    pub fn pool_options(&self) -> PoolOptions {
        PoolOptions {
            max_size: self.pool_size,
            min_idle: self.pool_min_idle,
            connection_timeout: Duration::from_secs(self.pool_timeout_secs),
            statement_timeout: Duration::from_secs(self.statement_timeout_secs),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, env = "CODE_ANALYZER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Largest gRPC message the server accepts or sends, in bytes.
    #[arg(long, env = "CODE_ANALYZER_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Largest SARIF log ImportSarif accepts, compressed or decompressed, in bytes.
    #[arg(long, env = "CODE_ANALYZER_MAX_SARIF_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_sarif_bytes: usize,

    /// Seconds that calls in flight may take to finish after SIGTERM or SIGINT.
    #[arg(
        long = "shutdown-grace",
        env = "CODE_ANALYZER_SHUTDOWN_GRACE",
        value_name = "SECONDS",
        default_value_t = 10
    )]
    pub shutdown_grace_secs: u64,

    #[command(flatten)]
    pub security: SecurityArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    /// Address and port of the Prometheus metrics endpoint (GET /metrics);
    /// off unless given.
    #[arg(long, env = "CODE_ANALYZER_METRICS_LISTEN", value_name = "ADDRESS")]
    pub metrics_listen: Option<SocketAddr>,

    /// Format of the server's log lines; the level comes from RUST_LOG (default "info").
    #[arg(long, env = "CODE_ANALYZER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// Options of the background task that deletes old records.
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Days to keep log entries, by their timestamp; 0 keeps them forever.
    #[arg(long = "retain-logs", env = "CODE_ANALYZER_RETAIN_LOGS", value_name = "DAYS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=36_500))]
    pub retain_logs_days: u64,

    /// Days to keep crew outputs with their findings, fixes and logs, by
    /// creation time; 0 keeps them forever. Older runs stay while they are
    /// marked keep or hold an open finding that their crew's triage refers to.
    #[arg(long = "retain-runs", env = "CODE_ANALYZER_RETAIN_RUNS", value_name = "DAYS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=36_500))]
    pub retain_runs_days: u64,

    /// Seconds from the end of one retention pass to the start of the next.
    #[arg(long = "retention-interval", env = "CODE_ANALYZER_RETENTION_INTERVAL", value_name = "SECONDS", default_value_t = 3_600, value_parser = clap::value_parser!(u64).range(1..=31_622_400))]
    pub retention_interval_secs: u64,
}

impl RetentionArgs {
    /// Builds the options of the retention task; ages of 0 days become `None`.
    pub fn retention_options(&self) -> RetentionOptions {
        let days = |days: u64| (days > 0).then(|| Duration::from_secs(days * 86_400));
        RetentionOptions {
            policy: RetentionPolicy {
                log_max_age: days(self.retain_logs_days),
                run_max_age: days(self.retain_runs_days),
                ..RetentionPolicy::default()
            },
            interval: Duration::from_secs(self.retention_interval_secs),
            ..RetentionOptions::default()
        }
    }
}

/// Authentication and TLS of `serve`.
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// File of accepted tokens (see `code-analyzer token create`). Without
    /// it the server serves without authentication, and only on a loopback
    /// address unless --insecure-no-auth is given.
    #[arg(long, env = "CODE_ANALYZER_TOKENS_FILE", value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Serve without authentication on a non-loopback address.
    #[arg(long, env = "CODE_ANALYZER_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// PEM certificate chain of the server; turns on TLS with --tls-key.
    #[arg(
        long,
        env = "CODE_ANALYZER_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of the server certificate.
    #[arg(
        long,
        env = "CODE_ANALYZER_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM certificates of the authorities that sign client certificates;
    /// when given, every client must present a certificate they signed.
    #[arg(
        long,
        env = "CODE_ANALYZER_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
}

impl SecurityArgs {
    /// Rejects serving without authentication on an address that other
    /// machines can reach, unless --insecure-no-auth is given.
    pub fn check_exposure(&self, listen: SocketAddr) -> Result<(), String> {
        if self.tokens_file.is_none() && !listen.ip().is_loopback() && !self.insecure_no_auth {
            return Err(format!(
                "refusing to serve without authentication on {listen}, which is not a loopback \
                 address: give --tokens-file, or --insecure-no-auth to serve anyway"
            ));
        }
        Ok(())
    }

    /// Reads the certificate files into tonic's TLS settings.
    pub fn tls_config(&self) -> Result<Option<ServerTlsConfig>, String> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let identity = Identity::from_pem(read_pem(cert)?, read_pem(key)?);
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(client_ca) = &self.tls_client_ca {
            config = config.client_ca_root(Certificate::from_pem(read_pem(client_ca)?));
        }
        Ok(Some(config))
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
}

/// Call limits and HTTP/2 keepalive of `serve`.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Maximum number of calls in progress at once, streams included; further calls get
    /// RESOURCE_EXHAUSTED with a retry delay.
    #[arg(long, env = "CODE_ANALYZER_MAX_CONCURRENT_CALLS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_calls: u32,

    /// Seconds a unary call may run when its client sets no deadline;
    /// 0 means no limit. Client deadlines always apply.
    #[arg(
        long = "unary-timeout",
        env = "CODE_ANALYZER_UNARY_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 60
    )]
    pub unary_timeout_secs: u64,

    /// Seconds between HTTP/2 pings on each connection, which keep NAT
    /// entries alive and find dead peers.
    #[arg(
        long = "keepalive-interval",
        env = "CODE_ANALYZER_KEEPALIVE_INTERVAL",
        value_name = "SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub keepalive_interval_secs: u64,

    /// Seconds to wait for the reply to a ping before closing the connection.
    #[arg(
        long = "keepalive-timeout",
        env = "CODE_ANALYZER_KEEPALIVE_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 20,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub keepalive_timeout_secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(tokens_file: Option<&str>, insecure_no_auth: bool) -> SecurityArgs {
        SecurityArgs {
            tokens_file: tokens_file.map(PathBuf::from),
            insecure_no_auth,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }

    #[test]
    fn open_server_only_on_loopback() {
        let public: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let loopback_v4: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let loopback_v6: SocketAddr = "[::1]:50051".parse().unwrap();

        assert!(security(None, false).check_exposure(loopback_v4).is_ok());
        assert!(security(None, false).check_exposure(loopback_v6).is_ok());
        let error = security(None, false).check_exposure(public).unwrap_err();
        assert!(error.starts_with("refusing to serve without authentication on 0.0.0.0:50051"));
        assert!(security(None, true).check_exposure(public).is_ok());
        assert!(
            security(Some("tokens"), false)
                .check_exposure(public)
                .is_ok()
        );
    }
}

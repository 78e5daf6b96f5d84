//! Command-line options of `serve` and `migrate`, each with an environment
//! variable as fallback.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::storage::PoolOptions;

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

    /// Most database connections the pool opens.
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

    /// Format of the server's log lines; the level comes from RUST_LOG (default "info").
    #[arg(long, env = "CODE_ANALYZER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

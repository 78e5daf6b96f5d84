//! Client subcommands that talk to a running server: `import-sarif`,
//! `push-logs`, `history`, `compare`, `export-sarif`, `draft-pr` and
//! `tail`. Each prints a short summary, or JSON with `--json`; `tail`
//! prints a line, or a JSON object, per log entry.

pub mod compare;
pub mod draft_pr;
pub mod export_sarif;
pub mod history;
pub mod import_sarif;
pub mod push_logs;
pub mod tail;

use clap::Args;
use tonic::transport::{Channel, Endpoint};

/// Options every client subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Address of the code-analyzer server.
    #[arg(
        long,
        env = "CODE_ANALYZER_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,

    /// Print machine-readable JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

pub type ClientError = Box<dyn std::error::Error + Send + Sync>;

/// Connects to the server, failing with the address in the message.
pub async fn connect(args: &ClientArgs) -> Result<Channel, ClientError> {
    let endpoint = Endpoint::from_shared(args.server.clone())
        .map_err(|error| format!("invalid server address {:?}: {error}", args.server))?;
    endpoint
        .connect()
        .await
        .map_err(|error| format!("cannot connect to {}: {error}", args.server).into())
}

/// Formats a failed call as "CODE: message" for the terminal.
pub fn describe_status(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

//! `code-analyzer export-sarif RUN`: writes the SARIF log of one run, as
//! ExportSarif streams it, to a file or to stdout.

use std::path::{Path, PathBuf};

use clap::Args;
use std::io::Write;

use super::{ClientArgs, ClientError, connect, describe_status};
use crate::pb::ExportSarifRequest;
use crate::pb::report_service_client::ReportServiceClient;

#[derive(Debug, Clone, Args)]
pub struct ExportSarifArgs {
    /// Crew output id of the run to export.
    pub run: i64,

    /// File to write the log to; without it the log goes to stdout. The log
    /// is written to FILE.partial first and renamed once complete.
    #[arg(short, long)]
    pub output: Option<PathBuf>,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// Streams the log into `writer` and returns the number of bytes written.
async fn copy_log(args: &ExportSarifArgs, writer: &mut impl Write) -> Result<usize, ClientError> {
    let mut client = ReportServiceClient::new(connect(&args.client).await?);
    let failed = |status: tonic::Status| {
        format!(
            "export of crew output {} failed: {}",
            args.run,
            describe_status(&status)
        )
    };
    let mut stream = client
        .export_sarif(ExportSarifRequest {
            crew_output_id: args.run,
        })
        .await
        .map_err(failed)?
        .into_inner();
    let mut written = 0;
    while let Some(chunk) = stream.message().await.map_err(failed)? {
        writer.write_all(&chunk.data)?;
        written += chunk.data.len();
    }
    writer.flush()?;
    Ok(written)
}

/// Writes the log to `path` through a temporary file, so a failed export
/// leaves no truncated log behind.
async fn export_to_file(args: &ExportSarifArgs, path: &Path) -> Result<usize, ClientError> {
    let mut partial_name = path.as_os_str().to_owned();
    partial_name.push(".partial");
    let partial = PathBuf::from(partial_name);
    let mut file = std::fs::File::create(&partial)
        .map_err(|error| format!("cannot create {}: {error}", partial.display()))?;

    let written = match copy_log(args, &mut file).await {
        Ok(written) => written,
        Err(error) => {
            drop(file);
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(error);
        }
    };
    file.sync_all()?;
    tokio::fs::rename(&partial, path).await.map_err(|error| {
        format!(
            "cannot rename {} to {}: {error}",
            partial.display(),
            path.display()
        )
    })?;
    Ok(written)
}

pub async fn run(args: ExportSarifArgs) -> Result<(), ClientError> {
    let Some(path) = args.output.clone() else {
        copy_log(&args, &mut std::io::stdout().lock()).await?;
        return Ok(());
    };

    let written = export_to_file(&args, &path).await?;
    if args.client.json {
        let summary = serde_json::json!({
            "crew_output_id": args.run,
            "output": path.display().to_string(),
            "bytes": written,
        });
        println!("{summary}");
    } else {
        println!(
            "Wrote the SARIF log of crew output {} to {} ({written} bytes).",
            args.run,
            path.display()
        );
    }
    Ok(())
}

//! `code-analyzer import-sarif FILE`: streams a SARIF log, plain or gzip,
//! to ImportSarif in chunks, so logs larger than one gRPC message import.

use std::path::PathBuf;

use clap::Args;
use tokio::io::AsyncReadExt;

use super::{ClientArgs, ClientError, connect, describe_status};
use crate::pb::analysis_service_client::AnalysisServiceClient;
use crate::pb::import_sarif_request::Payload;
use crate::pb::{ImportSarifOptions, ImportSarifRequest};

/// Bytes of the log per message.
const CHUNK_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Args)]
pub struct ImportSarifArgs {
    /// SARIF 2.1.0 log to import; may be gzip-compressed.
    pub file: PathBuf,

    /// Crew name of the imported runs; defaults to the SARIF tool name.
    #[arg(long)]
    pub crew: Option<String>,

    /// Root that absolute file URIs are made relative to, such as the
    /// checkout the analyzer ran on.
    #[arg(long)]
    pub source_root: Option<String>,

    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: ImportSarifArgs) -> Result<(), ClientError> {
    let mut file = tokio::fs::File::open(&args.file)
        .await
        .map_err(|error| format!("cannot open {}: {error}", args.file.display()))?;
    let channel = connect(&args.client).await?;

    let options = ImportSarifOptions {
        crew_name: args.crew.clone().unwrap_or_default(),
        source_root: args.source_root.clone().unwrap_or_default(),
        output_type: String::new(),
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender
        .send(ImportSarifRequest {
            payload: Some(Payload::Options(options)),
        })
        .await?;
    let path = args.file.clone();
    let reader = tokio::spawn(async move {
        loop {
            let mut chunk = Vec::with_capacity(CHUNK_BYTES);
            let read = (&mut file)
                .take(CHUNK_BYTES as u64)
                .read_to_end(&mut chunk)
                .await?;
            if read == 0 {
                return Ok::<(), std::io::Error>(());
            }
            let message = ImportSarifRequest {
                payload: Some(Payload::Chunk(chunk)),
            };
            if sender.send(message).await.is_err() {
                // The call ended early, and its status gives the reason.
                return Ok(());
            }
        }
    });

    let mut client = AnalysisServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let result = client
        .import_sarif(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await;
    reader
        .await?
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let response = result
        .map_err(|status| {
            format!(
                "import of {} failed: {}",
                path.display(),
                describe_status(&status)
            )
        })?
        .into_inner();

    if args.client.json {
        let runs: Vec<_> = response
            .runs
            .iter()
            .map(|run| {
                serde_json::json!({
                    "crew_output_id": run.crew_output_id,
                    "tool_name": run.tool_name,
                    "finding_count": run.finding_count,
                    "fix_count": run.fix_count,
                })
            })
            .collect();
        let summary = serde_json::json!({
            "runs": runs,
            "finding_count": response.finding_count,
            "fix_count": response.fix_count,
            "file_count": response.file_count,
        });
        println!("{summary}");
    } else {
        println!(
            "Imported {} findings and {} fixes over {} files from {}.",
            response.finding_count,
            response.fix_count,
            response.file_count,
            path.display()
        );
        for run in &response.runs {
            println!(
                "  crew output {}: {} ({} findings, {} fixes)",
                run.crew_output_id, run.tool_name, run.finding_count, run.fix_count
            );
        }
    }
    Ok(())
}

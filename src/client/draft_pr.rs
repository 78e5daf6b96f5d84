//! `code-analyzer draft-pr RUN`: builds a pull-request draft from the open
//! findings of one run and its fixes, stores it, and prints its Markdown.

use clap::Args;

use super::{ClientArgs, ClientError, connect, describe_status};
use crate::pb::DraftPullRequestRequest;
use crate::pb::report_service_client::ReportServiceClient;

#[derive(Debug, Clone, Args)]
pub struct DraftPrArgs {
    /// Crew output id of the run.
    pub run: i64,

    /// Draft only from findings whose path starts with this prefix.
    #[arg(long)]
    pub path_prefix: Option<String>,

    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: DraftPrArgs) -> Result<(), ClientError> {
    let mut client = ReportServiceClient::new(connect(&args.client).await?);
    let response = client
        .draft_pull_request(DraftPullRequestRequest {
            crew_output_id: args.run,
            file_path_prefix: args.path_prefix.clone().unwrap_or_default(),
        })
        .await
        .map_err(|status| {
            format!(
                "pull-request draft of crew output {} failed: {}",
                args.run,
                describe_status(&status)
            )
        })?
        .into_inner();
    let draft = response.draft.unwrap_or_default();

    if args.client.json {
        let summary = serde_json::json!({
            "title": response.title,
            "body": response.body,
            "fix_id": draft.id,
            "file_path": draft.file_path,
            "finding_ids": draft.finding_ids,
        });
        println!("{summary}");
    } else {
        println!("# {}\n\n{}", response.title, response.body);
        eprintln!(
            "Stored the draft as fix {} (FIX_STATUS_PR_DRAFT).",
            draft.id
        );
    }
    Ok(())
}

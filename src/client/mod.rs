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

use std::path::{Path, PathBuf};

use clap::Args;
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Options every client subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Address of the code-analyzer server; use https:// for a server with TLS.
    #[arg(
        long,
        env = "CODE_ANALYZER_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,

    /// Bearer token sent with every call, for a server with --tokens-file.
    #[arg(long, env = "CODE_ANALYZER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// PEM certificate of the authority that signed the server's
    /// certificate; without it the system's roots are not used, so give it
    /// for any https:// server.
    #[arg(long, env = "CODE_ANALYZER_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// PEM client certificate, for a server that requires one.
    #[arg(
        long,
        env = "CODE_ANALYZER_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of the client certificate.
    #[arg(
        long,
        env = "CODE_ANALYZER_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,

    /// Print machine-readable JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

pub type ClientError = Box<dyn std::error::Error + Send + Sync>;

/// A connection that sends the bearer token, if any, with every call.
pub type ClientChannel = InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer TOKEN` to each request.
#[derive(Debug, Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()).into())
}

/// Connects to the server, failing with the address in the message.
pub async fn connect(args: &ClientArgs) -> Result<ClientChannel, ClientError> {
    let mut endpoint = Endpoint::from_shared(args.server.clone())
        .map_err(|error| format!("invalid server address {:?}: {error}", args.server))?;
    if args.server.starts_with("https://") || args.ca_cert.is_some() {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca_cert) = &args.ca_cert {
            tls = tls.ca_certificate(Certificate::from_pem(read_file(ca_cert)?));
        }
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            tls = tls.identity(Identity::from_pem(read_file(cert)?, read_file(key)?));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|error| format!("invalid TLS settings: {error}"))?;
    }
    let token = match &args.token {
        Some(token) => Some(
            format!("Bearer {}", token.trim())
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| "the token holds characters that cannot be sent as metadata")?,
        ),
        None => None,
    };
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| format!("cannot connect to {}: {error}", args.server))?;
    Ok(InterceptedService::new(channel, BearerToken(token)))
}

/// Formats a failed call as "CODE: message" for the terminal.
pub fn describe_status(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

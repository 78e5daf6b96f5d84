//! The `code-analyzer` command: `serve`, `migrate`, and the client
//! subcommands `import-sarif`, `push-logs`, `history`, `compare`,
//! `export-sarif`, `draft-pr` and `tail`, and `token` to manage bearer tokens.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use code_analyzer::auth::{self, Role, Tokens};
use code_analyzer::client::{
    self, history::HistoryArgs, import_sarif::ImportSarifArgs, push_logs::PushLogsArgs,
};
use code_analyzer::client::{
    compare::CompareArgs, draft_pr::DraftPrArgs, export_sarif::ExportSarifArgs, tail::TailArgs,
};
use code_analyzer::config::{DatabaseArgs, LogFormat, ServeArgs};
use code_analyzer::metrics;
use code_analyzer::server::{self, ServerOptions};
use code_analyzer::storage::Storage;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "code-analyzer",
    version,
    about = "gRPC record server for code-analysis crews"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending migrations, then serve gRPC until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Apply pending migrations and exit.
    Migrate(DatabaseArgs),
    /// Import a SARIF 2.1.0 log (plain or gzip) into a running server.
    ImportSarif(ImportSarifArgs),
    /// Send a JSON Lines log file to a running server.
    PushLogs(PushLogsArgs),
    /// Print the findings and fixes of one file across all runs.
    History(HistoryArgs),
    /// Compare the findings and results of two runs.
    Compare(CompareArgs),
    /// Write the SARIF 2.1.0 log of one run to a file or stdout.
    ExportSarif(ExportSarifArgs),
    /// Build and store a pull-request draft from a run's open findings and fixes.
    DraftPr(DraftPrArgs),
    /// Print log entries as the server stores them, until Ctrl-C.
    Tail(TailArgs),
    /// Manage the bearer tokens the server accepts.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token, add its hash to the tokens file and print it once.
    Create(CreateTokenArgs),
}

#[derive(Debug, clap::Args)]
struct CreateTokenArgs {
    /// Name of the token's holder, the actor of its audit events.
    name: String,

    /// Role of the token: reader, writer or admin.
    #[arg(long)]
    role: Role,

    /// The tokens file that `serve --tokens-file` reads; created if missing.
    #[arg(long, env = "CODE_ANALYZER_TOKENS_FILE", value_name = "FILE")]
    tokens_file: PathBuf,
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Opens the database and applies pending migrations on a blocking thread.
async fn open_and_migrate(database: &DatabaseArgs) -> Result<(Storage, Vec<String>), String> {
    let storage = Storage::open(&database.database_url, &database.pool_options())?;
    let migrating = storage.clone();
    let applied = tokio::task::spawn_blocking(move || migrating.migrate())
        .await
        .map_err(|error| format!("migration task failed: {error}"))??;
    Ok((storage, applied))
}

/// Installs the SIGTERM and SIGINT handlers at once, so a signal that
/// arrives while the server is still starting stops it gracefully, and
/// returns a future that completes on the first of them.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|error| format!("cannot handle SIGTERM: {error}"))?;
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|error| format!("cannot handle SIGINT: {error}"))?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("received SIGINT"),
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, String> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("received Ctrl-C");
    })
}

/// Caps glibc's malloc at two arenas. By default it opens up to eight per
/// core as threads allocate, and each arena keeps memory that it freed.
/// The blocking threads that run database calls then grew the server's
/// resident memory to about twice its working set (BENCHMARKS.md).
/// The environment variable `MALLOC_ARENA_MAX`, when set, still applies.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it is called
        // before the server starts its blocking threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    limit_malloc_arenas();
    init_tracing(args.log_format);
    let shutdown = shutdown_signal()?;
    args.security.check_exposure(args.listen)?;
    let tokens = match &args.security.tokens_file {
        Some(path) => {
            let tokens = Tokens::load(path)?;
            if tokens.is_empty() {
                return Err(format!(
                    "tokens file {} lists no tokens; create one with `code-analyzer token create`",
                    path.display()
                ));
            }
            let tokens = Arc::new(tokens);
            reload_tokens_on_hangup(Arc::clone(&tokens), path.clone())?;
            Some(tokens)
        }
        None => None,
    };
    let tls = args.security.tls_config()?;
    let (storage, applied) = open_and_migrate(&args.database).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    let metrics_address = match args.metrics_listen {
        Some(metrics_listen) => {
            let metrics_listener = tokio::net::TcpListener::bind(metrics_listen)
                .await
                .map_err(|error| format!("cannot listen on {metrics_listen}: {error}"))?;
            let bound = metrics_listener
                .local_addr()
                .map_err(|error| error.to_string())?;
            tokio::spawn(metrics::serve(metrics_listener, storage.clone()));
            Some(bound)
        }
        None => None,
    };

    let tls_mode = match (&tls, &args.security.tls_client_ca) {
        (None, _) => "off",
        (Some(_), None) => "tls",
        (Some(_), Some(_)) => "mutual tls",
    };
    let auth_mode = match &tokens {
        Some(tokens) => format!("bearer tokens ({})", tokens.len()),
        None => "none".to_string(),
    };
    if tokens.is_none() && !address.ip().is_loopback() {
        tracing::warn!(%address, "serving without authentication on a non-loopback address");
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %address,
        metrics_address = metrics_address.map(|bound| bound.to_string()).unwrap_or_default(),
        backend = storage.backend().name(),
        migrations_applied = ?applied,
        tls = tls_mode,
        auth = auth_mode,
        "code-analyzer listening on {address}"
    );

    let limits = &args.limits;
    let options = ServerOptions {
        max_message_bytes: args.max_message_bytes,
        max_sarif_bytes: args.max_sarif_bytes,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        tokens,
        tls,
        max_concurrent_calls: limits.max_concurrent_calls as usize,
        unary_timeout: (limits.unary_timeout_secs > 0)
            .then(|| Duration::from_secs(limits.unary_timeout_secs)),
        keepalive_interval: Duration::from_secs(limits.keepalive_interval_secs),
        keepalive_timeout: Duration::from_secs(limits.keepalive_timeout_secs),
        retention: args.retention.retention_options(),
        ..ServerOptions::default()
    };
    server::serve(storage, options, listener, shutdown)
        .await
        .map_err(|error| format!("server failed: {error}"))
}

/// Reloads the tokens file on SIGHUP, so that tokens are added and revoked
/// without a restart. A file that fails to load leaves the tokens as they were.
#[cfg(unix)]
fn reload_tokens_on_hangup(tokens: Arc<Tokens>, path: PathBuf) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup =
        signal(SignalKind::hangup()).map_err(|error| format!("cannot handle SIGHUP: {error}"))?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match Tokens::load(&path) {
                Ok(loaded) if loaded.is_empty() => tracing::warn!(
                    path = %path.display(),
                    "tokens file lists no tokens; keeping the previous tokens"
                ),
                Ok(loaded) => {
                    let count = loaded.len();
                    tokens.replace(loaded);
                    tracing::info!(path = %path.display(), count, "reloaded the tokens file");
                }
                Err(error) => tracing::warn!(
                    error = %error,
                    "cannot reload the tokens file; keeping the previous tokens"
                ),
            }
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn reload_tokens_on_hangup(_tokens: Arc<Tokens>, _path: PathBuf) -> Result<(), String> {
    Ok(())
}

fn token(command: TokenCommand) -> Result<(), String> {
    match command {
        TokenCommand::Create(args) => {
            let token = auth::create_token(&args.tokens_file, &args.name, args.role)?;
            eprintln!(
                "Added {} ({}) to {}. The token is shown once; store it now:",
                args.name,
                args.role,
                args.tokens_file.display()
            );
            println!("{token}");
            Ok(())
        }
    }
}

async fn migrate(args: DatabaseArgs) -> Result<(), String> {
    init_tracing(LogFormat::Text);
    let (storage, applied) = open_and_migrate(&args).await?;
    if applied.is_empty() {
        println!("The {} database is up to date.", storage.backend().name());
    } else {
        println!(
            "Applied {} migrations: {}",
            applied.len(),
            applied.join(", ")
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::ImportSarif(args) => client::import_sarif::run(args)
            .await
            .map_err(|error| error.to_string()),
        Command::PushLogs(args) => client::push_logs::run(args)
            .await
            .map_err(|error| error.to_string()),
        Command::History(args) => client::history::run(args)
            .await
            .map_err(|error| error.to_string()),
        Command::Compare(args) => client::compare::run(args)
            .await
            .map_err(|error| error.to_string()),
        Command::ExportSarif(args) => client::export_sarif::run(args)
            .await
            .map_err(|error| error.to_string()),
        Command::DraftPr(args) => client::draft_pr::run(args)
            .await
            .map_err(|error| error.to_string()),
        Command::Token(command) => token(command),
        Command::Tail(args) => client::tail::run(args)
            .await
            .map_err(|error| error.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

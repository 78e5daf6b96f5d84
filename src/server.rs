//! The tonic server: the record services, health and reflection, with
//! message limits and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};

use crate::api::analysis::AnalysisApi;
use crate::api::audit::AuditApi;
use crate::api::crew::CrewApi;
use crate::api::fix::FixApi;
use crate::api::log::LogApi;
use crate::api::report::ReportApi;
use crate::api::stats::StatsApi;
use crate::api::task::TaskApi;
use crate::auth::Tokens;
use crate::middleware::{CallLayer, CallPolicy};
use crate::pb;
use crate::pb::analysis_service_server::AnalysisServiceServer;
use crate::pb::audit_service_server::AuditServiceServer;
use crate::pb::crew_service_server::CrewServiceServer;
use crate::pb::fix_service_server::FixServiceServer;
use crate::pb::log_service_server::LogServiceServer;
use crate::pb::report_service_server::ReportServiceServer;
use crate::pb::stats_service_server::StatsServiceServer;
use crate::pb::task_service_server::TaskServiceServer;
use crate::storage::Storage;
use crate::storage::retention::{RetentionOptions, RetentionTask};

/// HTTP/2 flow-control window of each stream and each connection: the most
/// request bytes a client may send ahead of what the server has read.
const FLOW_CONTROL_WINDOW: u32 = 1024 * 1024;

/// Settings of a running server that do not concern the database.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub max_message_bytes: usize,
    pub max_sarif_bytes: usize,
    /// How long calls in flight may take to finish once shutdown starts.
    pub shutdown_grace: Duration,
    /// Accepted bearer tokens; `None` serves without authentication.
    pub tokens: Option<Arc<Tokens>>,
    /// TLS, and client certificate checks when it names client authorities.
    pub tls: Option<ServerTlsConfig>,
    /// Maximum number of calls in progress at once; further calls are
    /// rejected.
    pub max_concurrent_calls: usize,
    /// Deadline of unary calls whose client sets none.
    pub unary_timeout: Option<Duration>,
    /// Time between HTTP/2 pings, and how long the reply to one may take.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Deletion of old records; off by default. Its `stats` are the
    /// counters of the running task.
    pub retention: RetentionOptions,
    /// Stored log entries kept for TailLogs followers that have not read
    /// them yet. A follower that falls further behind skips entries.
    pub tail_buffer: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_message_bytes: 16 * 1024 * 1024,
            max_sarif_bytes: 256 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            tokens: None,
            tls: None,
            max_concurrent_calls: 512,
            unary_timeout: Some(Duration::from_secs(60)),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            retention: RetentionOptions::default(),
            tail_buffer: 4_096,
        }
    }
}

/// Reflection over every served service, plus `google.rpc` error details so
/// that tools such as grpcurl can decode the `BadRequest` and `RetryInfo`
/// details of failed calls.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Serves on `listener` until `shutdown` completes, then stops accepting
/// calls, marks health NOT_SERVING, and gives calls in flight the grace
/// period to finish. The database must already be migrated.
pub async fn serve(
    storage: Storage,
    options: ServerOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CrewServiceServer<CrewApi>>()
        .await;
    health_reporter
        .set_serving::<AnalysisServiceServer<AnalysisApi>>()
        .await;
    health_reporter
        .set_serving::<FixServiceServer<FixApi>>()
        .await;
    health_reporter
        .set_serving::<LogServiceServer<LogApi>>()
        .await;
    health_reporter
        .set_serving::<TaskServiceServer<TaskApi>>()
        .await;
    health_reporter
        .set_serving::<StatsServiceServer<StatsApi>>()
        .await;
    health_reporter
        .set_serving::<AuditServiceServer<AuditApi>>()
        .await;
    health_reporter
        .set_serving::<ReportServiceServer<ReportApi>>()
        .await;

    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let limit = options.max_message_bytes;
    let crew = CrewServiceServer::new(CrewApi::new(storage.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let analysis =
        AnalysisServiceServer::new(AnalysisApi::new(storage.clone(), options.max_sarif_bytes))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
    let fix = FixServiceServer::new(FixApi::new(storage.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let log_api = LogApi::new(storage.clone(), options.tail_buffer);
    let tail_shutdown = log_api.tail_shutdown();
    let log = LogServiceServer::new(log_api)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let task = TaskServiceServer::new(TaskApi::new(storage.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let report = ReportServiceServer::new(ReportApi::new(storage.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let stats = StatsServiceServer::new(StatsApi::new(storage.clone()));
    let audit = AuditServiceServer::new(AuditApi::new(storage.clone()));
    // Dropping the task on an early return stops it as well.
    let retention = RetentionTask::start(storage, options.retention);

    let grace = options.shutdown_grace;
    let (drain_sender, drain_receiver) = tokio::sync::oneshot::channel::<()>();
    let reporter = health_reporter.clone();
    let stop_accepting = async move {
        shutdown.await;
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: refusing new calls"
        );
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        tail_shutdown.stop();
        reporter
            .set_not_serving::<CrewServiceServer<CrewApi>>()
            .await;
        reporter
            .set_not_serving::<AnalysisServiceServer<AnalysisApi>>()
            .await;
        reporter.set_not_serving::<FixServiceServer<FixApi>>().await;
        reporter.set_not_serving::<LogServiceServer<LogApi>>().await;
        reporter
            .set_not_serving::<TaskServiceServer<TaskApi>>()
            .await;
        reporter
            .set_not_serving::<StatsServiceServer<StatsApi>>()
            .await;
        reporter
            .set_not_serving::<AuditServiceServer<AuditApi>>()
            .await;
        reporter
            .set_not_serving::<ReportServiceServer<ReportApi>>()
            .await;
        let _ = drain_sender.send(());
    };

    // Options of the builder such as `tcp_nodelay` apply only to listeners
    // that tonic binds itself, so the accepted sockets are set up here.
    // Without TCP_NODELAY, Nagle's algorithm holds back the last frames of a
    // response until the client acknowledges the first ones, which costs
    // tens of milliseconds per call.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let mut builder = Server::builder();
    if let Some(tls) = options.tls.clone() {
        builder = builder.tls_config(tls)?;
    }
    let policy = CallPolicy {
        tokens: options.tokens.clone(),
        max_concurrent_calls: options.max_concurrent_calls,
        unary_timeout: options.unary_timeout,
    };
    let server = builder
        .initial_stream_window_size(FLOW_CONTROL_WINDOW)
        .initial_connection_window_size(FLOW_CONTROL_WINDOW)
        .http2_keepalive_interval(Some(options.keepalive_interval))
        .http2_keepalive_timeout(Some(options.keepalive_timeout))
        .layer(CallLayer::new(policy))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(crew)
        .add_service(analysis)
        .add_service(fix)
        .add_service(log)
        .add_service(task)
        .add_service(stats)
        .add_service(audit)
        .add_service(report)
        .serve_with_incoming_shutdown(incoming, stop_accepting);

    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        _ = async {
            let _ = drain_receiver.await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_secs = grace.as_secs(), "calls still running after the grace period were cut off");
        }
    }
    retention.stop().await;
    tracing::info!("server stopped");
    Ok(())
}

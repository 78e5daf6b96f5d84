//! The tower layer in front of every service: authentication and roles,
//! the concurrent call limit, the default deadline of unary calls, and one
//! log line and one metrics sample per call.
//!
//! Health checks and reflection pass without a token and are never shed,
//! so load balancers and grpcurl keep working when the server is full.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower_layer::Layer;
use tower_service::Service;

use crate::auth::{self, Caller, Tokens};
use crate::metrics::{METRICS, code_name};
use crate::storage::audit;

/// How long a shed client should wait before it retries.
const SHED_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Rules that the layer enforces.
#[derive(Debug, Clone)]
pub struct CallPolicy {
    /// Accepted tokens; `None` serves without authentication.
    pub tokens: Option<Arc<Tokens>>,
    /// Maximum number of calls in progress at once; calls beyond it are
    /// rejected.
    pub max_concurrent_calls: usize,
    /// Deadline of unary calls whose client sets none.
    pub unary_timeout: Option<Duration>,
}

/// Wraps the services of a server in `CallService`.
#[derive(Debug, Clone)]
pub struct CallLayer {
    policy: Arc<CallPolicy>,
    slots: Arc<Semaphore>,
}

impl CallLayer {
    pub fn new(policy: CallPolicy) -> CallLayer {
        let slots = Arc::new(Semaphore::new(policy.max_concurrent_calls));
        CallLayer {
            policy: Arc::new(policy),
            slots,
        }
    }
}

impl<S> Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> CallService<S> {
        CallService {
            inner,
            policy: Arc::clone(&self.policy),
            slots: Arc::clone(&self.slots),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct CallService<S> {
    inner: S,
    policy: Arc<CallPolicy>,
    slots: Arc<Semaphore>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for CallService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone that was driven to readiness serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let policy = Arc::clone(&self.policy);
        let slots = Arc::clone(&self.slots);

        Box::pin(async move {
            let started = Instant::now();
            let path = request.uri().path().to_string();
            let mut record = CallRecord {
                path,
                peer: peer_address(&request),
                caller: None,
                started,
                code: None,
                _slot: None,
            };
            METRICS.rpc_started(&record.path);

            if auth::is_open(&record.path) {
                let response = inner.call(request).await?;
                return Ok(observe(response, record));
            }

            let rule = auth::method_rule(&record.path);
            if let Some(tokens) = &policy.tokens {
                match authorize(tokens, &request, &record.path, rule.role) {
                    Ok(caller) => {
                        record.caller = Some(caller.name.clone());
                        request.extensions_mut().insert(caller);
                    }
                    Err(status) => return Ok(observe(status.into_http(), record)),
                }
            }

            match Arc::clone(&slots).try_acquire_owned() {
                Ok(slot) => record._slot = Some(slot),
                Err(_) => {
                    METRICS
                        .requests_shed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let status = Status::with_error_details(
                        Code::ResourceExhausted,
                        format!(
                            "the server is at its limit of {} concurrent calls; retry after {} s",
                            policy.max_concurrent_calls,
                            SHED_RETRY_DELAY.as_secs()
                        ),
                        ErrorDetails::with_retry_info(Some(SHED_RETRY_DELAY)),
                    );
                    return Ok(observe(status.into_http(), record));
                }
            }

            let timeout = match policy.unary_timeout {
                Some(limit)
                    if !rule.streaming && !request.headers().contains_key("grpc-timeout") =>
                {
                    Some(limit)
                }
                _ => None,
            };
            let call = inner.call(request);
            let call = async move {
                match timeout {
                    Some(limit) => match tokio::time::timeout(limit, call).await {
                        Ok(result) => result,
                        Err(_) => Ok(Status::deadline_exceeded(format!(
                            "the call did not finish within the server's limit of {} ms",
                            limit.as_millis()
                        ))
                        .into_http()),
                    },
                    None => call.await,
                }
            };
            let response = match &record.caller {
                Some(name) => audit::acting_as(Arc::from(name.as_str()), call).await?,
                None => call.await?,
            };
            Ok(observe(response, record))
        })
    }
}

/// Checks the bearer token and the role. Both refusals use one message
/// each that does not tell whether a token exists.
fn authorize(
    tokens: &Tokens,
    request: &http::Request<Body>,
    path: &str,
    needed: auth::Role,
) -> Result<Caller, Status> {
    let token = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(caller) = token.and_then(|token| tokens.verify(token)) else {
        METRICS
            .unauthenticated
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(Status::unauthenticated(
            "a valid bearer token is required in the authorization metadata",
        ));
    };
    if caller.role < needed {
        METRICS
            .permission_denied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(Status::permission_denied(format!(
            "{} needs the {needed} role; the token has the {} role",
            path.trim_start_matches('/'),
            caller.role
        )));
    }
    Ok(caller)
}

fn peer_address(request: &http::Request<Body>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

/// Record of one call until its response ends. Dropping it logs the call
/// and records its metrics.
struct CallRecord {
    path: String,
    peer: Option<SocketAddr>,
    caller: Option<String>,
    started: Instant,
    /// Status code, once the response headers or trailers carried one.
    code: Option<Code>,
    /// The call's place under the concurrent call limit, held until the
    /// response ends.
    _slot: Option<OwnedSemaphorePermit>,
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        // A response dropped before its trailers was cancelled by the client
        // or cut off at shutdown.
        let code = self.code.unwrap_or(Code::Cancelled);
        let elapsed = self.started.elapsed();
        METRICS.rpc_handled(&self.path, code, elapsed);
        let method = self.path.trim_start_matches('/');
        let latency_ms = elapsed.as_secs_f64() * 1e3;
        let code = code_name(code);
        let caller = self.caller.as_deref().unwrap_or(audit::ANONYMOUS);
        let peer = self.peer.map(|peer| peer.to_string()).unwrap_or_default();
        match level_of(self.code.unwrap_or(Code::Cancelled)) {
            CallLevel::Debug => {
                tracing::debug!(method, code, latency_ms, caller, peer, "call finished")
            }
            CallLevel::Info => {
                tracing::info!(
                    method,
                    code,
                    latency_ms,
                    caller,
                    peer,
                    "call refused or failed"
                )
            }
            CallLevel::Error => {
                tracing::error!(
                    method,
                    code,
                    latency_ms,
                    caller,
                    peer,
                    "call failed on the server"
                )
            }
        }
    }
}

enum CallLevel {
    Debug,
    Info,
    Error,
}

/// Successes log at debug, the client's errors at info and the server's
/// faults at error.
fn level_of(code: Code) -> CallLevel {
    match code {
        Code::Ok => CallLevel::Debug,
        Code::Unknown | Code::Internal | Code::DataLoss | Code::Unavailable => CallLevel::Error,
        _ => CallLevel::Info,
    }
}

fn status_code(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

/// Wraps the response body so that the call is recorded when it ends.
fn observe(response: http::Response<Body>, mut record: CallRecord) -> http::Response<Body> {
    // An error without a body carries its status in the headers.
    record.code = status_code(response.headers());
    response.map(|inner| {
        Body::new(ObservedBody {
            inner,
            record: Some(record),
        })
    })
}

struct ObservedBody {
    inner: Body,
    record: Option<CallRecord>,
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(context);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(record) = &mut this.record
                {
                    record.code = status_code(trailers).or(record.code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(record) = &mut this.record {
                    record.code = Some(Code::Internal);
                }
                this.record = None;
            }
            Poll::Ready(None) => {
                if let Some(record) = &mut this.record {
                    record.code = record.code.or(Some(Code::Unknown));
                }
                this.record = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_who_is_at_fault() {
        assert!(matches!(level_of(Code::Ok), CallLevel::Debug));
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
        ] {
            assert!(matches!(level_of(code), CallLevel::Info), "{code:?}");
        }
        for code in [Code::Internal, Code::Unavailable, Code::Unknown] {
            assert!(matches!(level_of(code), CallLevel::Error), "{code:?}");
        }
    }
}

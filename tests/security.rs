//! Bearer tokens and roles, the refusal to serve an open server on a
//! public address, `token create`, and TLS with and without client
//! certificates.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use code_analyzer::auth::{Tokens, token_hash};
use code_analyzer::pb;
use code_analyzer::pb::audit_service_client::AuditServiceClient;
use code_analyzer::pb::crew_service_client::CrewServiceClient;
use code_analyzer::server::{self, ServerOptions};
use code_analyzer::storage::{PoolOptions, Storage};
use common::process::ServeProcess;
use common::{TestServer, assert_status, expect_error, test_options};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::net::TcpListener;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const READER: &str = "cat_reader_token";
const WRITER: &str = "cat_writer_token";
const ADMIN: &str = "cat_admin_token";

const UNAUTHENTICATED: &str = "a valid bearer token is required in the authorization metadata";

fn tokens() -> Arc<Tokens> {
    let text = format!(
        "viewer reader sha256:{}\ncrew-bot writer sha256:{}\nops admin sha256:{}\n",
        token_hash(READER),
        token_hash(WRITER),
        token_hash(ADMIN)
    );
    Arc::new(Tokens::parse(&text).unwrap())
}

fn secured() -> ServerOptions {
    ServerOptions {
        tokens: Some(tokens()),
        ..test_options()
    }
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn create_request() -> pb::CreateCrewOutputRequest {
    pb::CreateCrewOutputRequest {
        crew_name: "secured-crew".to_string(),
        output_type: "review".to_string(),
        ..Default::default()
    }
}

async fn missing_or_unknown_token_is_unauthenticated(mut server: TestServer) {
    let status = expect_error(
        server
            .crew
            .list_crew_outputs(pb::ListCrewOutputsRequest::default())
            .await,
    );
    assert_status(&status, Code::Unauthenticated, UNAUTHENTICATED);

    for token in ["cat_not_a_token", ""] {
        let status = expect_error(
            server
                .crew
                .list_crew_outputs(with_token(pb::ListCrewOutputsRequest::default(), token))
                .await,
        );
        assert_status(&status, Code::Unauthenticated, UNAUTHENTICATED);
    }

    // A known token in the wrong scheme is not accepted either.
    let mut request = Request::new(pb::ListCrewOutputsRequest::default());
    request
        .metadata_mut()
        .insert("authorization", format!("Basic {READER}").parse().unwrap());
    let status = expect_error(server.crew.list_crew_outputs(request).await);
    assert_status(&status, Code::Unauthenticated, UNAUTHENTICATED);
}

async fn roles_limit_what_a_token_may_call(mut server: TestServer) {
    server
        .crew
        .list_crew_outputs(with_token(pb::ListCrewOutputsRequest::default(), READER))
        .await
        .expect("a reader may list");

    let status = expect_error(
        server
            .crew
            .create_crew_output(with_token(create_request(), READER))
            .await,
    );
    assert_status(
        &status,
        Code::PermissionDenied,
        "code_analyzer.v1.CrewService/CreateCrewOutput needs the writer role; \
         the token has the reader role",
    );

    let created = server
        .crew
        .create_crew_output(with_token(create_request(), WRITER))
        .await
        .expect("a writer may create")
        .into_inner();
    server
        .crew
        .get_crew_output(with_token(
            pb::GetCrewOutputRequest { id: created.id },
            READER,
        ))
        .await
        .expect("a reader may get");
    server
        .crew
        .create_crew_output(with_token(create_request(), ADMIN))
        .await
        .expect("an admin may do what a writer may");
}

async fn deletes_need_the_admin_role(mut server: TestServer) {
    let created = server
        .crew
        .create_crew_output(with_token(create_request(), WRITER))
        .await
        .unwrap()
        .into_inner();
    let delete = || pb::DeleteCrewOutputRequest {
        id: created.id,
        ..Default::default()
    };

    let status = expect_error(
        server
            .crew
            .delete_crew_output(with_token(delete(), WRITER))
            .await,
    );
    assert_status(
        &status,
        Code::PermissionDenied,
        "code_analyzer.v1.CrewService/DeleteCrewOutput needs the admin role; \
         the token has the writer role",
    );

    server
        .crew
        .delete_crew_output(with_token(delete(), ADMIN))
        .await
        .expect("an admin may delete");
}

async fn health_and_reflection_need_no_token(server: TestServer) {
    let health = HealthClient::new(server.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers without a token")
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(server.channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers without a token")
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response: {response:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|service| service.name == "code_analyzer.v1.CrewService"),
        "{list:?}"
    );
}

async fn audit_events_name_the_token(mut server: TestServer) {
    let created = server
        .crew
        .create_crew_output(with_token(create_request(), WRITER))
        .await
        .unwrap()
        .into_inner();

    let events = AuditServiceClient::new(server.channel.clone())
        .list_audit_events(with_token(
            pb::ListAuditEventsRequest {
                record_type: "crew_output".to_string(),
                record_id: created.id,
                ..Default::default()
            },
            READER,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(!events.is_empty());
    assert!(
        events.iter().all(|event| event.actor == "crew-bot"),
        "{events:?}"
    );
}

backend_tests! {
    #[options(secured())]
    missing_or_unknown_token_is_unauthenticated,
    #[options(secured())]
    roles_limit_what_a_token_may_call,
    #[options(secured())]
    deletes_need_the_admin_role,
    #[options(secured())]
    health_and_reflection_need_no_token,
    #[options(secured())]
    audit_events_name_the_token,
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_code-analyzer")
}

#[test]
fn serve_refuses_a_public_address_without_tokens() {
    let folder = tempfile::TempDir::new().unwrap();
    let url = format!("sqlite://{}", folder.path().join("open.db").display());
    let output = Command::new(binary())
        .args(["serve", "--listen", "0.0.0.0:0", "--database-url", &url])
        .env_remove("CODE_ANALYZER_TOKENS_FILE")
        .env_remove("CODE_ANALYZER_INSECURE_NO_AUTH")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(
            "error: refusing to serve without authentication on 0.0.0.0:0, which is not a \
             loopback address: give --tokens-file, or --insecure-no-auth to serve anyway"
        ),
        "{stderr}"
    );
    assert!(
        !folder.path().join("open.db").exists(),
        "the check runs before the database is opened"
    );
}

fn create_token(tokens_file: &Path, name: &str, role: &str) -> String {
    let output = Command::new(binary())
        .args(["token", "create", name, "--role", role, "--tokens-file"])
        .arg(tokens_file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_tokens_authenticate_client_commands() {
    let folder = tempfile::TempDir::new().unwrap();
    let tokens_file = folder.path().join("tokens");
    let token = create_token(&tokens_file, "ci-bot", "writer");
    assert!(token.starts_with("cat_"), "{token}");
    let stored = std::fs::read_to_string(&tokens_file).unwrap();
    assert!(stored.starts_with("ci-bot writer sha256:"), "{stored}");
    assert!(!stored.contains(&token));

    let duplicate = Command::new(binary())
        .args([
            "token",
            "create",
            "ci-bot",
            "--role",
            "admin",
            "--tokens-file",
        ])
        .arg(&tokens_file)
        .output()
        .unwrap();
    assert!(!duplicate.status.success());
    assert!(
        String::from_utf8_lossy(&duplicate.stderr).contains("already has a token named \"ci-bot\""),
        "{}",
        String::from_utf8_lossy(&duplicate.stderr)
    );

    let url = format!("sqlite://{}", folder.path().join("tokens.db").display());
    let tokens_arg = tokens_file.to_str().unwrap();
    let server = ServeProcess::start(&url, &["--tokens-file", tokens_arg]);
    let start_line = server
        .stderr_lines()
        .into_iter()
        .find(|line| line.contains("listening on"))
        .unwrap();
    assert!(start_line.contains("bearer tokens (1)"), "{start_line}");

    let history = |token: Option<&str>| {
        let mut command = Command::new(binary());
        command.args(["history", "lib/app.py", "--json", "--server", &server.url()]);
        command.env_remove("CODE_ANALYZER_TOKEN");
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        command.output().unwrap()
    };
    let allowed = history(Some(&token));
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let refused = history(None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(UNAUTHENTICATED),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tokens_file() {
    let folder = tempfile::TempDir::new().unwrap();
    let tokens_file = folder.path().join("tokens");
    let old = create_token(&tokens_file, "old-crew", "writer");
    let url = format!("sqlite://{}", folder.path().join("reload.db").display());
    let server = ServeProcess::start(&url, &["--tokens-file", tokens_file.to_str().unwrap()]);
    let mut crew = CrewServiceClient::new(server.channel().await);
    crew.create_crew_output(with_token(create_request(), &old))
        .await
        .expect("the first token works");

    // Add a token and revoke the first one, then reload.
    let new = create_token(&tokens_file, "new-crew", "writer");
    let text = std::fs::read_to_string(&tokens_file).unwrap();
    let kept: String = text
        .lines()
        .filter(|line| !line.starts_with("old-crew "))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&tokens_file, kept).unwrap();
    server.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server
        .stderr_lines()
        .iter()
        .any(|line| line.contains("reloaded the tokens file"))
    {
        assert!(std::time::Instant::now() < deadline, "no reload logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    crew.create_crew_output(with_token(create_request(), &new))
        .await
        .expect("the added token works");
    let status = expect_error(
        crew.create_crew_output(with_token(create_request(), &old))
            .await,
    );
    assert_status(&status, Code::Unauthenticated, UNAUTHENTICATED);
}

#[test]
fn serve_rejects_a_malformed_tokens_file() {
    let folder = tempfile::TempDir::new().unwrap();
    let tokens_file = folder.path().join("tokens");
    std::fs::write(&tokens_file, "ci-bot writer not-a-hash\n").unwrap();
    let url = format!("sqlite://{}", folder.path().join("bad.db").display());
    let output = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
        .arg("--tokens-file")
        .arg(&tokens_file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("line 1: the hash must be sha256: and 64 hex digits"),
        "{stderr}"
    );
}

/// A certificate authority and the certificates it signs, in PEM.
struct Authority {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.clone().self_signed(&key).unwrap().pem();
        Authority { params, key, pem }
    }

    /// Signs a certificate for `name`; returns the certificate and key PEM.
    fn sign(&self, name: &str) -> (String, String) {
        let issuer = self.params.clone().self_signed(&self.key).unwrap();
        let params = CertificateParams::new(vec![name.to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A server with `tls` on a fresh SQLite database; returns its port and
/// the sender that stops it.
async fn start_tls_server(
    tls: ServerTlsConfig,
) -> (u16, tokio::sync::oneshot::Sender<()>, tempfile::TempDir) {
    let folder = tempfile::TempDir::new().unwrap();
    let url = format!("sqlite://{}", folder.path().join("tls.db").display());
    let storage = Storage::open(&url, &PoolOptions::default()).unwrap();
    let migrating = storage.clone();
    tokio::task::spawn_blocking(move || migrating.migrate())
        .await
        .unwrap()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ServerOptions {
        tls: Some(tls),
        ..test_options()
    };
    tokio::spawn(async move {
        let stop = async move {
            let _ = stopped.await;
        };
        server::serve(storage, options, listener, stop)
            .await
            .unwrap();
    });
    (port, stop, folder)
}

/// Connects over TLS to `port`, trusting `ca_pem`, with an optional client
/// identity, and makes one call.
async fn call_over_tls(
    port: u16,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel: Channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|error| error.to_string())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|error| format!("connect: {error:?}"))?;
    CrewServiceClient::new(channel)
        .create_crew_output(create_request())
        .await
        .map(|_| ())
        .map_err(|status| format!("call: {status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_its_authority() {
    let authority = Authority::new("code-analyzer test CA");
    let (cert, key) = authority.sign("localhost");
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    let (port, _stop, _folder) = start_tls_server(tls).await;

    call_over_tls(port, &authority.pem, None)
        .await
        .expect("a client that trusts the authority is served");

    let stranger = Authority::new("another CA");
    let refused = call_over_tls(port, &stranger.pem, None).await;
    assert!(
        refused.is_err(),
        "a client that trusts another CA connected"
    );

    // A client that speaks plain HTTP/2 to a TLS port gets no response.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_secs(5));
    if let Ok(channel) = plain.connect().await {
        let status = expect_error(
            CrewServiceClient::new(channel)
                .create_crew_output(create_request())
                .await,
        );
        assert_ne!(status.code(), Code::Ok);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_signed_client_certificate() {
    let server_authority = Authority::new("server CA");
    let client_authority = Authority::new("client CA");
    let (cert, key) = server_authority.sign("localhost");
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(&client_authority.pem));
    let (port, _stop, _folder) = start_tls_server(tls).await;

    let crew = client_authority.sign("crew-a");
    call_over_tls(port, &server_authority.pem, Some(&crew))
        .await
        .expect("a client with a certificate of the client CA is served");

    let refused = call_over_tls(port, &server_authority.pem, None).await;
    assert!(
        refused.is_err(),
        "a client without a certificate was served"
    );

    let impostor = server_authority.sign("crew-b");
    let refused = call_over_tls(port, &server_authority.pem, Some(&impostor)).await;
    assert!(
        refused.is_err(),
        "a client certificate of another authority was accepted"
    );
}

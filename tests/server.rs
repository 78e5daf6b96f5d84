//! The server around the services: health reporting, reflection, the
//! message size limit, and the settings of the server's SQLite connections.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use code_analyzer::pb;
use code_analyzer::server::ServerOptions;
use code_analyzer::storage::{Conn, PoolOptions, Storage};
use common::{
    Backend, TestDatabase, TestServer, assert_status, expect_error, new_finding, test_options,
};
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::SqliteConnection;
use diesel::{QueryableByName, RunQueryDsl};
use prost::Message;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
use tonic_types::StatusExt;

async fn health_reports_serving(server: TestServer) {
    let mut health = HealthClient::new(server.channel.clone());
    for service in [
        "",
        "code_analyzer.v1.CrewService",
        "code_analyzer.v1.AnalysisService",
        "code_analyzer.v1.FixService",
        "code_analyzer.v1.LogService",
    ] {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap_or_else(|status| panic!("health check of {service:?} failed: {status}"))
            .into_inner();
        assert_eq!(
            response.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
}

async fn health_unknown_service_not_found(server: TestServer) {
    let mut health = HealthClient::new(server.channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "code_analyzer.v1.Nothing".to_string(),
        })
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::NotFound);
}

async fn invalid_argument_carries_bad_request(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let findings = vec![new_finding("lib/a.py", "R", "m"), new_finding("", "R", "m")];
    let status = expect_error(
        server
            .analysis
            .record_findings(pb::RecordFindingsRequest {
                crew_output_id: run.id,
                findings,
            })
            .await,
    );
    let details = status
        .get_details_bad_request()
        .expect("no BadRequest detail");

    assert_eq!(details.field_violations.len(), 1);
    assert_eq!(details.field_violations[0].field, "findings[1].file_path");
    assert_eq!(details.field_violations[0].description, "is required");
}

async fn message_over_limit_out_of_range(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let findings = vec![
        new_finding("lib/a.py", "R", &"m".repeat(60 * 1024)),
        new_finding("lib/b.py", "R", &"m".repeat(10 * 1024)),
    ];
    let status = expect_error(
        server
            .analysis
            .record_findings(pb::RecordFindingsRequest {
                crew_output_id: run.id,
                findings,
            })
            .await,
    );

    assert_status(
        &status,
        Code::OutOfRange,
        "Error, decoded message length too large",
    );
    assert!(
        status.message().contains("the limit is: 65536 bytes"),
        "{}",
        status.message()
    );

    let stored = server
        .record_findings(
            run.id,
            vec![new_finding("lib/a.py", "R", &"m".repeat(60 * 1024))],
        )
        .await;
    assert_eq!(stored.len(), 1, "a message under the limit passes");
}

/// Returns the full names of the services in an encoded descriptor set.
fn service_names(encoded: &[u8]) -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(encoded).expect("invalid descriptor set");
    set.file
        .iter()
        .flat_map(|file| {
            file.service
                .iter()
                .map(move |service| format!("{}.{}", file.package(), service.name()))
        })
        .collect()
}

/// Sends `requests` on one reflection v1 stream, without a token, and
/// returns one response per request.
async fn reflect_v1(
    server: &TestServer,
    requests: Vec<MessageRequest>,
) -> Vec<ServerReflectionResponse> {
    let count = requests.len();
    let requests: Vec<ServerReflectionRequest> = requests
        .into_iter()
        .map(|request| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        })
        .collect();
    let mut stream = ServerReflectionClient::new(server.channel.clone())
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection v1 failed")
        .into_inner();
    let mut responses = Vec::with_capacity(count);
    while let Some(response) = stream.message().await.expect("reflection v1 stream failed") {
        responses.push(response);
    }
    assert_eq!(responses.len(), count, "one response per request");
    responses
}

async fn reflection_v1_lists_every_service(server: TestServer) {
    let mut expected = service_names(pb::FILE_DESCRIPTOR_SET);
    expected.insert("grpc.health.v1.Health".to_string());
    expected.insert("grpc.reflection.v1.ServerReflection".to_string());
    for service in [
        "code_analyzer.v1.CrewService",
        "code_analyzer.v1.AnalysisService",
        "code_analyzer.v1.FixService",
        "code_analyzer.v1.LogService",
    ] {
        assert!(
            expected.contains(service),
            "{service} missing from the protos"
        );
    }

    let responses = reflect_v1(&server, vec![MessageRequest::ListServices(String::new())]).await;
    let Some(MessageResponse::ListServicesResponse(list)) = &responses[0].message_response else {
        panic!("unexpected reflection response: {:?}", responses[0]);
    };
    let listed: BTreeSet<String> = list
        .service
        .iter()
        .map(|service| service.name.clone())
        .collect();
    assert_eq!(listed, expected);

    // Each listed service also resolves to the file that declares it.
    let names: Vec<String> = expected.into_iter().collect();
    let requests = names
        .iter()
        .map(|name| MessageRequest::FileContainingSymbol(name.clone()))
        .collect();
    let responses = reflect_v1(&server, requests).await;
    for (name, response) in names.iter().zip(responses) {
        let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
            panic!("no file for {name}: {response:?}");
        };
        let declared = files.file_descriptor_proto.iter().any(|encoded| {
            let file =
                prost_types::FileDescriptorProto::decode(encoded.as_slice()).expect("invalid file");
            file.service
                .iter()
                .any(|service| format!("{}.{}", file.package(), service.name()) == *name)
        });
        assert!(declared, "the files returned for {name} do not declare it");
    }
}

#[derive(QueryableByName)]
struct IntegerSetting {
    #[diesel(sql_type = BigInt)]
    value: i64,
}

#[derive(QueryableByName)]
struct TextSetting {
    #[diesel(sql_type = Text)]
    value: String,
}

/// Reads an integer pragma through its table-valued function, whose
/// column is `column`.
fn integer_pragma(conn: &mut SqliteConnection, pragma: &str, column: &str) -> i64 {
    diesel::sql_query(format!("SELECT {column} AS value FROM pragma_{pragma}()"))
        .get_result::<IntegerSetting>(conn)
        .unwrap_or_else(|error| panic!("cannot read PRAGMA {pragma}: {error}"))
        .value
}

fn journal_mode(conn: &mut SqliteConnection) -> String {
    diesel::sql_query("SELECT journal_mode AS value FROM pragma_journal_mode()")
        .get_result::<TextSetting>(conn)
        .expect("cannot read PRAGMA journal_mode")
        .value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_connections_are_durable() {
    let database = TestDatabase::create(Backend::Sqlite).expect("SQLite is always available");
    let TestDatabase::Sqlite { path, .. } = &database else {
        unreachable!("a SQLite database was created");
    };
    let path = path
        .to_str()
        .expect("temporary path is not UTF-8")
        .to_string();
    let pool = PoolOptions {
        max_size: 2,
        connection_timeout: Duration::from_secs(7),
        ..PoolOptions::default()
    };
    let storage = Storage::open(database.url(), &pool).expect("cannot open storage");
    let migrating = storage.clone();
    tokio::task::spawn_blocking(move || migrating.migrate())
        .await
        .unwrap()
        .expect("migrations failed");
    let mut server = TestServer::serve_storage(database, storage.clone(), test_options()).await;
    let created = server.create_crew_output("durable-crew").await;
    assert_eq!(created.crew_name, "durable-crew");

    // WAL is stored in the file, so a connection that sets no pragma reads it.
    let mut plain = common::open_sqlite(&path);
    assert_eq!(journal_mode(&mut plain), "wal");

    // A connection of the server's own pool, with the pragmas it sets.
    let mut conn = tokio::task::spawn_blocking(move || storage.get())
        .await
        .unwrap()
        .expect("no connection from the server's pool");
    let Conn::Sqlite(conn) = &mut conn else {
        panic!("the storage of a SQLite URL has a SQLite pool");
    };
    // The bundled SQLite already defaults to synchronous=FULL (2) and
    // foreign_keys=ON, so these two checks only pin the values. The unit
    // test `sqlite_pragmas_make_writes_durable` starts from the opposite
    // values to show that the server sets them. The busy timeout, 0 by default,
    // shows that the pool's pragmas ran on this connection.
    let conn: &mut SqliteConnection = conn;
    assert_eq!(integer_pragma(conn, "synchronous", "synchronous"), 2);
    assert_eq!(integer_pragma(conn, "foreign_keys", "foreign_keys"), 1);
    assert_eq!(integer_pragma(conn, "busy_timeout", "timeout"), 7_000);
    assert_eq!(journal_mode(conn), "wal");
}

backend_tests! {
    health_reports_serving,
    health_unknown_service_not_found,
    reflection_v1_lists_every_service,
    invalid_argument_carries_bad_request,
    #[options(ServerOptions { max_message_bytes: 64 * 1024, ..test_options() })]
    message_over_limit_out_of_range,
}

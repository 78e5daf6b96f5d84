//! The server around the services: health reporting and the message size
//! limit.

mod common;

use code_analyzer::pb;
use code_analyzer::server::ServerOptions;
use common::{TestServer, assert_status, expect_error, new_finding, test_options};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
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

backend_tests! {
    health_reports_serving,
    health_unknown_service_not_found,
    invalid_argument_carries_bad_request,
    #[options(ServerOptions { max_message_bytes: 64 * 1024, ..test_options() })]
    message_over_limit_out_of_range,
}

"""The `Client` wrapper end to end against a real server."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from code_analyzer_client import Client, new_finding, new_fix, struct_to_dict, task_result
from code_analyzer_client.v1 import analysis_pb2, common_pb2, crew_pb2, log_pb2, task_pb2


def test_record_run_stores_findings_and_fixes(client: Client) -> None:
    findings = [
        new_finding("src/app.py", "S105", "Possible hardcoded password", priority="PRIORITY_HIGH", start_line=12),
        new_finding("src/app.py", "B007", "Unused loop variable", start_line=30, end_line=31),
        new_finding("src/db.py", "S608", "SQL built from strings", priority=common_pb2.PRIORITY_CRITICAL),
    ]
    fixes = [
        new_fix("src/app.py", "Read the password from the environment", finding_indexes=[0], changes={"lines": [12]}),
        new_fix("src/db.py", "Use a bound parameter", finding_indexes=[2], status="FIX_STATUS_APPLIED"),
    ]

    run = client.record_run(
        "review-crew",
        "code_review",
        findings=findings,
        fixes=fixes,
        results={"files_reviewed": 2, "summary": "three problems"},
    )

    assert run.crew_output.status == crew_pb2.CREW_OUTPUT_STATUS_SUCCEEDED
    assert run.crew_output.HasField("started_at")
    assert run.crew_output.HasField("finished_at")
    assert struct_to_dict(run.crew_output.results) == {"files_reviewed": 2.0, "summary": "three problems"}
    assert [finding.rule_id for finding in run.findings] == ["S105", "B007", "S608"]
    assert run.findings[0].priority == common_pb2.PRIORITY_HIGH
    assert run.findings[0].range.end_line == 12
    assert run.findings[1].priority == common_pb2.PRIORITY_MEDIUM
    assert list(run.fixes[0].finding_ids) == [run.findings[0].id]
    assert list(run.fixes[1].finding_ids) == [run.findings[2].id]
    assert run.fixes[1].status == common_pb2.FIX_STATUS_APPLIED
    assert struct_to_dict(run.fixes[0].changes) == {"lines": [12.0]}
    stored = client.get_crew_output(run.crew_output.id)
    assert stored == run.crew_output


def test_record_run_rejects_bad_fix_index(client: Client) -> None:
    with pytest.raises(IndexError, match=r"fixes\[0\].finding_indexes has 1"):
        client.record_run("crew", "review", findings=[new_finding("a.py", "R1", "m")], fixes=[new_fix("a.py", "d", finding_indexes=[1])])

    assert client.get_stats().crew_outputs == 0


def test_record_run_marks_run_failed_on_error(client: Client) -> None:
    invalid = new_finding("", "R1", "a finding without a file path")

    with pytest.raises(grpc.RpcError) as raised:
        client.record_run("crew", "review", findings=[invalid])

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "file_path" in raised.value.details()
    runs = client.crews.ListCrewOutputs(crew_pb2.ListCrewOutputsRequest(crew_name="crew")).crew_outputs
    assert len(runs) == 1
    assert runs[0].status == crew_pb2.CREW_OUTPUT_STATUS_FAILED
    assert "INVALID_ARGUMENT" in runs[0].error_message


def test_record_run_marks_failed_when_final_update_fails(client: Client) -> None:
    # RUNNING may not move back to PENDING, so the final update fails.
    with pytest.raises(grpc.RpcError) as raised:
        client.record_run(
            "crew", "review", findings=[new_finding("a.py", "R1", "m")], status=crew_pb2.CREW_OUTPUT_STATUS_PENDING
        )

    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    runs = client.crews.ListCrewOutputs(crew_pb2.ListCrewOutputsRequest(crew_name="crew")).crew_outputs
    assert len(runs) == 1
    assert runs[0].status == crew_pb2.CREW_OUTPUT_STATUS_FAILED
    assert runs[0].error_message.startswith("recording the run failed: FAILED_PRECONDITION")
    assert len(list(client.list_findings(crew_output_id=runs[0].id))) == 1


def test_record_run_rejects_unknown_status_before_calls(client: Client) -> None:
    with pytest.raises(ValueError):
        client.record_run("crew", "review", status="CREW_OUTPUT_STATUS_DONE")

    runs = client.crews.ListCrewOutputs(crew_pb2.ListCrewOutputsRequest(crew_name="crew")).crew_outputs
    assert len(runs) == 0


def test_update_status_follows_life_cycle(client: Client) -> None:
    created = client.create_crew_output("crew", "review")
    assert created.status == crew_pb2.CREW_OUTPUT_STATUS_PENDING

    running = client.update_status(created.id, "CREW_OUTPUT_STATUS_RUNNING")
    failed = client.update_status(
        created.id, crew_pb2.CREW_OUTPUT_STATUS_FAILED, error_message="tool crashed", results={"step": 3}
    )

    assert running.status == crew_pb2.CREW_OUTPUT_STATUS_RUNNING
    assert failed.status == crew_pb2.CREW_OUTPUT_STATUS_FAILED
    assert failed.error_message == "tool crashed"
    assert struct_to_dict(failed.results) == {"step": 3.0}
    assert failed.revision == 3
    with pytest.raises(grpc.RpcError) as raised:
        client.update_status(created.id, "CREW_OUTPUT_STATUS_RUNNING")
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_unknown_id_raises_not_found(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        client.get_crew_output(424242)

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "424242" in raised.value.details()


def test_unknown_enum_name_raises_value_error(client: Client) -> None:
    with pytest.raises(ValueError):
        client.create_crew_output("crew", "review", status="RUNNING")


def test_file_history_reads_every_page(client: Client) -> None:
    first = client.record_run(
        "crew-a",
        "review",
        findings=[new_finding("src/app.py", f"R{index}", f"problem {index}") for index in range(4)],
        fixes=[new_fix("src/app.py", "fix R0", finding_indexes=[0])],
    )
    second = client.record_run(
        "crew-b", "review", findings=[new_finding("src/app.py", "R9", "later problem"), new_finding("src/other.py", "R9", "elsewhere")]
    )

    history = client.file_history("src/app.py", page_size=2)

    assert len(history.events) == 6
    assert history.finding_count == 5
    assert history.fix_count == 1
    kinds = [event.WhichOneof("record") for event in history.events]
    assert kinds.count("finding") == 5
    assert kinds.count("fix") == 1
    # Newest first: the second run's finding comes before the first run's records.
    assert history.events[0].finding.id == second.findings[0].id
    assert history.events[0].crew_name == "crew-b"
    ids = [(kind, getattr(event, kind).id) for kind, event in zip(kinds, history.events)]
    assert len(set(ids)) == len(ids)
    assert ("fix", first.fixes[0].id) in ids


def test_list_findings_pages_with_filters(client: Client) -> None:
    priorities = ["PRIORITY_LOW", "PRIORITY_HIGH", "PRIORITY_CRITICAL", "PRIORITY_MEDIUM", "PRIORITY_HIGH"]
    run = client.record_run(
        "crew",
        "review",
        findings=[new_finding(f"lib/m{index}.py", "R1", "m", priority=priority) for index, priority in enumerate(priorities)]
        + [new_finding("tests/t.py", "R1", "m", priority="PRIORITY_CRITICAL")],
    )

    found = list(client.list_findings(file_path_prefix="lib/", min_priority="PRIORITY_HIGH", page_size=1))

    assert [finding.file_path for finding in found] == ["lib/m1.py", "lib/m2.py", "lib/m4.py"]
    assert all(finding.crew_output_id == run.crew_output.id for finding in found)
    assert len(list(client.list_findings(crew_output_id=run.crew_output.id))) == 6
    assert list(client.list_findings(crew_output_id=run.crew_output.id + 1)) == []


def test_compare_runs_matches_by_fingerprint(client: Client) -> None:
    base = client.record_run(
        "crew",
        "review",
        findings=[
            new_finding("src/app.py", "S105", "Possible hardcoded password", start_line=12),
            new_finding("src/app.py", "B007", "Unused loop variable", start_line=30),
        ],
        results={"files": 2, "model": "small"},
    )
    head = client.record_run(
        "crew",
        "review",
        findings=[
            # The same problem two lines lower keeps its derived fingerprint.
            new_finding("src/app.py", "S105", "Possible hardcoded password", start_line=14),
            new_finding("src/db.py", "S608", "SQL built from strings", priority="PRIORITY_CRITICAL"),
        ],
        results={"files": 3, "cached": True},
    )

    comparison = client.compare_runs(base.crew_output.id, head.crew_output.id, page_size=1)

    assert (comparison.new_count, comparison.persisting_count, comparison.resolved_count) == (1, 1, 1)
    changes = [(compared.change, compared.finding.id) for compared in comparison.findings]
    assert changes == [
        (analysis_pb2.FINDING_CHANGE_NEW, head.findings[1].id),
        (analysis_pb2.FINDING_CHANGE_PERSISTING, head.findings[0].id),
        (analysis_pb2.FINDING_CHANGE_RESOLVED, base.findings[1].id),
    ]
    assert comparison.findings[1].base_finding_id == base.findings[0].id
    assert list(comparison.results_diff.added) == ["/cached"]
    assert list(comparison.results_diff.removed) == ["/model"]
    assert list(comparison.results_diff.changed) == ["/files"]

    only_new = client.compare_runs(base.crew_output.id, head.crew_output.id, change="FINDING_CHANGE_NEW")
    assert [compared.finding.rule_id for compared in only_new.findings] == ["S608"]
    assert (only_new.new_count, only_new.persisting_count, only_new.resolved_count) == (1, 1, 1)


def test_ingest_and_query_logs(client: Client) -> None:
    run = client.create_crew_output("crew", "review")
    entries = [
        log_pb2.NewLogEntry(entry_id=f"t:{index}", level="info" if index % 2 else "WARNING", message=f"step {index}", crew_name="crew", crew_output_id=run.id)
        for index in range(2_500)
    ]

    first = client.ingest_logs(entries)
    again = client.ingest_logs(entries[:10] + [log_pb2.NewLogEntry(entry_id="bad", level="loud", message="x")])

    assert (first.accepted_count, first.duplicate_count, first.rejected_count) == (2_500, 0, 0)
    assert (again.accepted_count, again.duplicate_count, again.rejected_count) == (0, 10, 1)
    assert again.rejections[0].field == "level"
    warnings = list(client.query_logs(crew_output_id=run.id, min_level="warn", page_size=500))
    assert len(warnings) == 1_250
    assert all(entry.level == "WARNING" for entry in warnings)
    # "step 24", "step 240" to "step 249" and "step 2400" to "step 2499".
    assert len(list(client.query_logs(message_contains="step 24"))) == 111


def test_task_claim_heartbeat_complete(client: Client) -> None:
    enqueued = client.enqueue_task("analysis", {"repo": "demo"}, priority=5, dedupe_key="demo@1", retry_backoff=dt.timedelta(seconds=2))
    duplicate = client.enqueue_task("analysis", {"repo": "demo"}, dedupe_key="demo@1")
    assert not enqueued.deduplicated
    assert duplicate.deduplicated
    assert duplicate.task.id == enqueued.task.id

    [task] = client.claim_tasks("analysis", "worker-1", lease=dt.timedelta(seconds=30))
    assert client.claim_tasks("analysis", "worker-2") == []
    assert task.lease_token
    extended = client.heartbeat_task(task, lease=dt.timedelta(minutes=5))
    assert extended.lease_expires_at.ToDatetime() > task.lease_expires_at.ToDatetime()

    result = task_result(
        "review-crew",
        "code_review",
        findings=[new_finding("src/app.py", "S105", "password", priority="PRIORITY_HIGH")],
        fixes=[new_fix("src/app.py", "use env", finding_indexes=[0])],
        results={"ok": True},
    )
    completed = client.complete_task(task, result)

    assert completed.task.state == task_pb2.TASK_STATE_SUCCEEDED
    assert completed.crew_output.status == crew_pb2.CREW_OUTPUT_STATUS_SUCCEEDED
    assert completed.task.crew_output_id == completed.crew_output.id
    assert client.get_task(task.id).state == task_pb2.TASK_STATE_SUCCEEDED
    with pytest.raises(grpc.RpcError) as raised:
        client.fail_task(task, "too late")
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_fail_task_permanently_moves_to_dead(client: Client) -> None:
    client.enqueue_task("analysis", {"repo": "broken"}, max_attempts=5)
    [task] = client.claim_tasks("analysis", "worker-1")

    failed = client.fail_task(task, "clone failed", permanent=True)

    assert failed.state == task_pb2.TASK_STATE_DEAD
    assert failed.last_error == "clone failed"


def test_stubs_cover_calls_beyond_wrapper(client: Client) -> None:
    run = client.record_run("crew", "review", findings=[new_finding("a.py", "R1", "m")])
    finding_id = run.findings[0].id

    updated = client.analysis.UpdateFinding(
        analysis_pb2.UpdateFindingRequest(
            id=finding_id,
            status=common_pb2.FINDING_STATUS_DISMISSED,
            reason="test code",
            dismiss_reason=common_pb2.DISMISS_REASON_USED_IN_TESTS,
        ),
        timeout=10,
    )

    assert updated.status == common_pb2.FINDING_STATUS_DISMISSED
    assert updated.status_reason == "test code"


def test_connect_owns_channel(server) -> None:
    with Client.connect(server.address, timeout=10) as client:
        created = client.create_crew_output("crew", "review")
    assert created.id == 1
    with pytest.raises(ValueError):
        client.get_crew_output(created.id)

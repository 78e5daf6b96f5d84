"""A crew as a script would write it. It takes a task from the queue, logs
through the handler while it works and completes the task with its
findings. The test then checks what the server stored."""

from __future__ import annotations

import logging

from code_analyzer_client import Client, CodeAnalyzerLogHandler, new_finding, new_fix, struct_to_dict, task_result
from code_analyzer_client.v1 import common_pb2, crew_pb2, task_pb2

from conftest import ServerProcess

CREW = "security-crew"


def run_crew_once(client: Client, address: str) -> task_pb2.Task | None:
    """Claim one task of the "analysis" queue, review its files and
    complete it; return the claimed task, or None when none was ready."""
    tasks = client.claim_tasks("analysis", worker="crew-worker-1")
    if not tasks:
        return None
    [task] = tasks
    payload = struct_to_dict(task.payload)

    log = logging.getLogger("security_crew")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = CodeAnalyzerLogHandler(address, crew_name=CREW, batch_size=50, flush_interval=0.2)
    log.addHandler(handler)
    try:
        task_metadata = {"task_id": task.id}
        log.info("starting review of %s", payload["repo"], extra={"metadata": task_metadata})
        findings = []
        for path in payload["files"]:
            log.info("scanning %s", path, extra={"metadata": task_metadata})
            if path.endswith("settings.py"):
                findings.append(
                    new_finding(path, "S105", "Possible hardcoded password", priority="PRIORITY_HIGH", start_line=7)
                )
        log.warning("%d findings in %s", len(findings), payload["repo"], extra={"metadata": task_metadata})
        client.heartbeat_task(task)

        result = task_result(
            CREW,
            "security_review",
            findings=findings,
            fixes=[new_fix(findings[0].file_path, "Read the password from the environment", finding_indexes=[0])],
            results={"repo": payload["repo"], "files_scanned": len(payload["files"])},
        )
        client.complete_task(task, result)
        log.info("completed task %d", task.id, extra={"metadata": task_metadata})
    finally:
        log.removeHandler(handler)
        handler.close()
    assert handler.pending == 0
    return task


def test_crew_completes_task_with_findings(client: Client, server: ServerProcess) -> None:
    files = ["app/main.py", "app/settings.py", "app/views.py"]
    enqueued = client.enqueue_task("analysis", {"repo": "shop", "files": files}, dedupe_key="shop@abc123")

    task = run_crew_once(client, server.address)

    assert task is not None
    assert task.id == enqueued.task.id
    assert run_crew_once(client, server.address) is None
    stored_task = client.get_task(task.id)
    assert stored_task.state == task_pb2.TASK_STATE_SUCCEEDED
    assert stored_task.worker == "crew-worker-1"
    assert stored_task.attempts == 1

    run = client.get_crew_output(stored_task.crew_output_id)
    assert (run.crew_name, run.output_type) == (CREW, "security_review")
    assert run.status == crew_pb2.CREW_OUTPUT_STATUS_SUCCEEDED
    assert struct_to_dict(run.results) == {"repo": "shop", "files_scanned": 3.0}

    [finding] = client.list_findings(crew_output_id=run.id)
    assert (finding.file_path, finding.rule_id, finding.priority) == ("app/settings.py", "S105", common_pb2.PRIORITY_HIGH)
    history = client.file_history("app/settings.py")
    assert history.finding_count == 1
    assert history.fix_count == 1
    [fix_event] = [event for event in history.events if event.WhichOneof("record") == "fix"]
    assert list(fix_event.fix.finding_ids) == [finding.id]

    logs = list(client.query_logs(crew_name=CREW))
    messages = [entry.message for entry in reversed(logs)]
    assert messages == [
        "starting review of shop",
        "scanning app/main.py",
        "scanning app/settings.py",
        "scanning app/views.py",
        "1 findings in shop",
        f"completed task {task.id}",
    ]
    assert all(struct_to_dict(entry.metadata)["task_id"] == task.id for entry in logs)
    assert [entry.level for entry in client.query_logs(crew_name=CREW, min_level="WARNING")] == ["WARNING"]

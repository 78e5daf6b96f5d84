"""A typed wrapper over the code-analyzer gRPC API for the common work of a
crew: record runs with findings and fixes, read file histories and findings,
compare runs, send and query logs, work through tasks.

Every method is one or more unary or streaming calls with the client's
timeout. Failures surface as the `grpc.RpcError` of the call, with `code()`
and `details()`, and no method retries a call. `record_run` is the one
method that makes a second call after a failure: it marks the run FAILED
before it re-raises. The generated stubs stay reachable as attributes
(`crews`, `analysis`, `fixes`, `logs`, `tasks`, `stats`) for everything
the wrapper does not cover.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2, field_mask_pb2, json_format, struct_pb2, timestamp_pb2

from .v1 import (
    analysis_pb2,
    analysis_pb2_grpc,
    common_pb2,
    crew_pb2,
    crew_pb2_grpc,
    fix_pb2,
    fix_pb2_grpc,
    log_pb2,
    log_pb2_grpc,
    stats_pb2,
    stats_pb2_grpc,
    task_pb2,
    task_pb2_grpc,
)

# Largest number of findings the server takes in one RecordFindings request.
MAX_FINDINGS_PER_REQUEST = 10_000
# Entries per IngestLogs stream message; the server takes at most 10,000.
LOG_ENTRIES_PER_MESSAGE = 1_000
DEFAULT_TIMEOUT_SECONDS = 30.0

# An enum argument: the generated constant (an int) or its name, such as
# "PRIORITY_HIGH".
EnumValue = int | str
JsonObject = Mapping[str, Any]


def to_struct(value: JsonObject | None) -> struct_pb2.Struct | None:
    """Convert a JSON-like dict to a `google.protobuf.Struct`; numbers become
    doubles, as in any Struct."""
    if value is None:
        return None
    result = struct_pb2.Struct()
    result.update(dict(value))
    return result


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """Convert a `google.protobuf.Struct` to a plain dict."""
    return json_format.MessageToDict(value)


def to_timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    """Convert an aware datetime to a Timestamp; a naive one is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value)
    return result


def to_duration(value: dt.timedelta | float) -> duration_pb2.Duration:
    """Convert a timedelta, or a number of seconds, to a Duration."""
    if not isinstance(value, dt.timedelta):
        value = dt.timedelta(seconds=value)
    result = duration_pb2.Duration()
    result.FromTimedelta(value)
    return result


def _enum(wrapper: Any, value: EnumValue) -> int:
    """Return the number of an enum value given by number or by name; an
    unknown name raises ValueError."""
    if isinstance(value, str):
        return int(wrapper.Value(value))
    return int(value)


def new_finding(
    file_path: str,
    rule_id: str,
    message: str,
    *,
    priority: EnumValue = common_pb2.PRIORITY_MEDIUM,
    start_line: int = 0,
    end_line: int = 0,
    start_column: int = 0,
    end_column: int = 0,
    fingerprint: str = "",
    analysis: JsonObject | None = None,
) -> analysis_pb2.NewFinding:
    """Build a finding for `record_findings`, `record_run` or a `TaskResult`.
    Lines and columns start at 1, and 0 means unknown; `end_line` defaults to
    `start_line`."""
    return analysis_pb2.NewFinding(
        file_path=file_path,
        rule_id=rule_id,
        message=message,
        priority=_enum(common_pb2.Priority, priority),
        range=common_pb2.TextRange(
            start_line=start_line,
            end_line=end_line or start_line,
            start_column=start_column,
            end_column=end_column,
        ),
        fingerprint=fingerprint,
        analysis=to_struct(analysis),
    )


def new_fix(
    file_path: str,
    description: str,
    *,
    finding_indexes: Sequence[int] = (),
    status: EnumValue = common_pb2.FIX_STATUS_PROPOSED,
    changes: JsonObject | None = None,
) -> task_pb2.TaskFix:
    """Build a fix for `record_run` or a `TaskResult`, linked to the findings
    at `finding_indexes` (positions in the same call's findings, from 0)."""
    return task_pb2.TaskFix(
        file_path=file_path,
        description=description,
        changes=to_struct(changes),
        status=_enum(common_pb2.FixStatus, status),
        finding_indexes=list(finding_indexes),
    )


def task_result(
    crew_name: str,
    output_type: str,
    *,
    findings: Sequence[analysis_pb2.NewFinding] = (),
    fixes: Sequence[task_pb2.TaskFix] = (),
    results: JsonObject | None = None,
    status: EnumValue = crew_pb2.CREW_OUTPUT_STATUS_SUCCEEDED,
) -> task_pb2.TaskResult:
    """Build the result that `complete_task` stores with the task."""
    return task_pb2.TaskResult(
        crew_name=crew_name,
        output_type=output_type,
        status=_enum(crew_pb2.CrewOutputStatus, status),
        results=to_struct(results),
        findings=list(findings),
        fixes=list(fixes),
    )


@dataclass(frozen=True)
class RecordedRun:
    """Records that `record_run` stored: the crew output in its final state,
    and the findings and fixes in request order."""

    crew_output: crew_pb2.CrewOutput
    findings: list[analysis_pb2.Finding] = field(default_factory=list)
    fixes: list[fix_pb2.Fix] = field(default_factory=list)


@dataclass(frozen=True)
class RunComparison:
    """Differences of a head run from a base run, in findings and results.
    The counts cover all three kinds whatever the `change` filter. The
    findings are those of the requested kind, NEW first, then PERSISTING,
    then RESOLVED."""

    new_count: int
    persisting_count: int
    resolved_count: int
    findings: list[analysis_pb2.ComparedFinding]
    results_diff: analysis_pb2.JsonDiff


@dataclass(frozen=True)
class FileHistory:
    """Every finding and fix of one file across all runs, newest first."""

    events: list[analysis_pb2.FileHistoryEvent]
    finding_count: int
    fix_count: int


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer TOKEN` to every call of a plaintext
    channel, where gRPC refuses call credentials."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        metadata = list(details.metadata or [])
        metadata.append(self._header)
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def open_channel(
    target: str,
    *,
    token: str | None = None,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
) -> grpc.Channel:
    """Open a channel to `target` (`host:port`).

    `token` is sent as a bearer token with every call, for a server started
    with `--tokens-file`. `root_certificates` (PEM bytes of the authority
    that signed the server's certificate) turns on TLS; `private_key` and
    `certificate_chain` add a client certificate for a server that requires
    one (`--tls-client-ca`).
    """
    options = list(options or [])
    if root_certificates is None and private_key is None and certificate_chain is None:
        channel = grpc.insecure_channel(target, options=options)
        if token is None:
            return channel
        return grpc.intercept_channel(channel, _BearerToken(token))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
    )
    if token is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return grpc.secure_channel(target, credentials, options=options)


class Client:
    """Calls the code-analyzer services over one `grpc.Channel`.

    The caller owns the channel unless the client came from `connect`;
    `close()` (or leaving a `with` block) closes only a channel the client
    opened itself.
    """

    def __init__(self, channel: grpc.Channel, *, timeout: float | None = DEFAULT_TIMEOUT_SECONDS):
        self.channel = channel
        # Deadline of each call in seconds; None means no deadline.
        self.timeout = timeout
        self.crews = crew_pb2_grpc.CrewServiceStub(channel)
        self.analysis = analysis_pb2_grpc.AnalysisServiceStub(channel)
        self.fixes = fix_pb2_grpc.FixServiceStub(channel)
        self.logs = log_pb2_grpc.LogServiceStub(channel)
        self.tasks = task_pb2_grpc.TaskServiceStub(channel)
        self.stats = stats_pb2_grpc.StatsServiceStub(channel)
        self._owns_channel = False

    @classmethod
    def connect(
        cls,
        target: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        **kwargs: Any,
    ) -> Client:
        """Open a channel to `target` (`host:port`) that `close()` closes;
        the arguments other than `target` and `timeout` are those of
        `open_channel`."""
        channel = open_channel(
            target,
            token=token,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
        )
        client = cls(channel, **kwargs)
        client._owns_channel = True
        return client

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Crew outputs

    def create_crew_output(
        self,
        crew_name: str,
        output_type: str,
        *,
        status: EnumValue = crew_pb2.CREW_OUTPUT_STATUS_PENDING,
        results: JsonObject | None = None,
        error_message: str = "",
    ) -> crew_pb2.CrewOutput:
        request = crew_pb2.CreateCrewOutputRequest(
            crew_name=crew_name,
            output_type=output_type,
            status=_enum(crew_pb2.CrewOutputStatus, status),
            results=to_struct(results),
            error_message=error_message,
        )
        return self.crews.CreateCrewOutput(request, timeout=self.timeout)

    def get_crew_output(self, crew_output_id: int) -> crew_pb2.CrewOutput:
        request = crew_pb2.GetCrewOutputRequest(id=crew_output_id)
        return self.crews.GetCrewOutput(request, timeout=self.timeout)

    def update_status(
        self,
        crew_output_id: int,
        status: EnumValue,
        *,
        error_message: str | None = None,
        results: JsonObject | None = None,
    ) -> crew_pb2.CrewOutput:
        """Move a crew output to `status`, and set the error message or the
        results when given. A move the life cycle forbids raises
        FAILED_PRECONDITION."""
        paths = ["status"]
        crew_output = crew_pb2.CrewOutput(status=_enum(crew_pb2.CrewOutputStatus, status))
        if error_message is not None:
            paths.append("error_message")
            crew_output.error_message = error_message
        if results is not None:
            paths.append("results")
            crew_output.results.CopyFrom(to_struct(results))
        request = crew_pb2.UpdateCrewOutputRequest(
            id=crew_output_id,
            crew_output=crew_output,
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )
        return self.crews.UpdateCrewOutput(request, timeout=self.timeout)

    # Findings and fixes

    def record_findings(
        self, crew_output_id: int, findings: Iterable[analysis_pb2.NewFinding]
    ) -> list[analysis_pb2.Finding]:
        """Store findings for one crew output, in request order. More than
        10,000 findings go out as several requests, each its own transaction."""
        findings = list(findings)
        stored: list[analysis_pb2.Finding] = []
        for start in range(0, len(findings), MAX_FINDINGS_PER_REQUEST):
            request = analysis_pb2.RecordFindingsRequest(
                crew_output_id=crew_output_id,
                findings=findings[start : start + MAX_FINDINGS_PER_REQUEST],
            )
            response = self.analysis.RecordFindings(request, timeout=self.timeout)
            stored.extend(response.findings)
        return stored

    def record_fix(
        self,
        crew_output_id: int,
        file_path: str,
        description: str,
        *,
        finding_ids: Sequence[int] = (),
        status: EnumValue = common_pb2.FIX_STATUS_PROPOSED,
        changes: JsonObject | None = None,
    ) -> fix_pb2.Fix:
        request = fix_pb2.RecordFixRequest(
            crew_output_id=crew_output_id,
            file_path=file_path,
            description=description,
            changes=to_struct(changes),
            status=_enum(common_pb2.FixStatus, status),
            finding_ids=list(finding_ids),
        )
        return self.fixes.RecordFix(request, timeout=self.timeout)

    def record_run(
        self,
        crew_name: str,
        output_type: str,
        *,
        findings: Sequence[analysis_pb2.NewFinding] = (),
        fixes: Sequence[task_pb2.TaskFix] = (),
        results: JsonObject | None = None,
        status: EnumValue = crew_pb2.CREW_OUTPUT_STATUS_SUCCEEDED,
        error_message: str | None = None,
    ) -> RecordedRun:
        """Record one finished crew run: create the crew output as RUNNING,
        store the findings, then the fixes linked by `finding_indexes`, and
        move the run to `status` with its results.

        These are separate calls. When anything fails after the crew output
        exists, including the final status update, the run is moved to
        FAILED with the error as its message and the original exception
        (usually a `grpc.RpcError`) is raised. An unknown `status` name or a
        `finding_indexes` entry out of range raises before any call.
        `complete_task` stores a result in one transaction instead.
        """
        # Raises ValueError for an unknown name before the run exists.
        final_status = _enum(crew_pb2.CrewOutputStatus, status)
        for position, fix in enumerate(fixes):
            for index in fix.finding_indexes:
                if not 0 <= index < len(findings):
                    raise IndexError(
                        f"fixes[{position}].finding_indexes has {index}, "
                        f"but there are {len(findings)} findings"
                    )

        crew_output = self.create_crew_output(
            crew_name, output_type, status=crew_pb2.CREW_OUTPUT_STATUS_RUNNING
        )
        try:
            stored_findings = self.record_findings(crew_output.id, findings)
            stored_fixes = [
                self.record_fix(
                    crew_output.id,
                    fix.file_path,
                    fix.description,
                    finding_ids=[stored_findings[index].id for index in fix.finding_indexes],
                    status=fix.status,
                    changes=struct_to_dict(fix.changes) if fix.HasField("changes") else None,
                )
                for fix in fixes
            ]
            final = self.update_status(
                crew_output.id, final_status, error_message=error_message, results=results
            )
        except Exception as error:
            self._mark_failed(crew_output.id, error)
            raise
        return RecordedRun(crew_output=final, findings=stored_findings, fixes=stored_fixes)

    def _mark_failed(self, crew_output_id: int, error: Exception) -> None:
        if isinstance(error, grpc.Call):
            message = f"recording the run failed: {error.code().name}: {error.details()}"
        else:
            message = f"recording the run failed: {type(error).__name__}: {error}"
        try:
            self.update_status(
                crew_output_id, crew_pb2.CREW_OUTPUT_STATUS_FAILED, error_message=message
            )
        except grpc.RpcError:
            # The caller gets the first error; this one adds nothing to act on.
            pass

    def list_findings(
        self,
        *,
        crew_output_id: int = 0,
        file_path: str = "",
        file_path_prefix: str = "",
        min_priority: EnumValue = common_pb2.PRIORITY_UNSPECIFIED,
        status: EnumValue = common_pb2.FINDING_STATUS_UNSPECIFIED,
        rule_id: str = "",
        page_size: int = 0,
    ) -> Iterator[analysis_pb2.Finding]:
        """Yield every finding that matches the filters, in the order they
        were recorded (by file path first when a path filter is given),
        fetching the next page when the caller reaches it."""
        request = analysis_pb2.ListFindingsRequest(
            page_size=page_size,
            crew_output_id=crew_output_id,
            file_path=file_path,
            file_path_prefix=file_path_prefix,
            min_priority=_enum(common_pb2.Priority, min_priority),
            status=_enum(common_pb2.FindingStatus, status),
            rule_id=rule_id,
        )
        while True:
            response = self.analysis.ListFindings(request, timeout=self.timeout)
            yield from response.findings
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def file_history(self, file_path: str, *, page_size: int = 0) -> FileHistory:
        """Read every page of the history of one file."""
        request = analysis_pb2.GetFileHistoryRequest(file_path=file_path, page_size=page_size)
        events: list[analysis_pb2.FileHistoryEvent] = []
        while True:
            response = self.analysis.GetFileHistory(request, timeout=self.timeout)
            events.extend(response.events)
            if not response.next_page_token:
                break
            request.page_token = response.next_page_token
        return FileHistory(
            events=events,
            finding_count=response.finding_count,
            fix_count=response.fix_count,
        )

    def compare_runs(
        self,
        base_crew_output_id: int,
        head_crew_output_id: int,
        *,
        change: EnumValue = analysis_pb2.FINDING_CHANGE_UNSPECIFIED,
        file_path_prefix: str = "",
        rule_id: str = "",
        min_priority: EnumValue = common_pb2.PRIORITY_UNSPECIFIED,
        page_size: int = 0,
    ) -> RunComparison:
        """Compare two runs, reading every page: findings are matched by
        fingerprint, and `results_diff` lists the JSON Pointer paths of the
        results that were added, removed or changed."""
        request = analysis_pb2.CompareRunsRequest(
            base_crew_output_id=base_crew_output_id,
            head_crew_output_id=head_crew_output_id,
            change=_enum(analysis_pb2.FindingChange, change),
            file_path_prefix=file_path_prefix,
            rule_id=rule_id,
            min_priority=_enum(common_pb2.Priority, min_priority),
            page_size=page_size,
        )
        findings: list[analysis_pb2.ComparedFinding] = []
        while True:
            response = self.analysis.CompareRuns(request, timeout=self.timeout)
            findings.extend(response.findings)
            if not response.next_page_token:
                break
            request.page_token = response.next_page_token
        return RunComparison(
            new_count=response.new_count,
            persisting_count=response.persisting_count,
            resolved_count=response.resolved_count,
            findings=findings,
            results_diff=response.results_diff,
        )

    # Logs

    def ingest_logs(
        self, entries: Iterable[log_pb2.NewLogEntry]
    ) -> log_pb2.IngestLogsResponse:
        """Stream entries to IngestLogs, 1,000 per message. Entries with an
        `entry_id` that is already stored count as duplicates, so the same
        entries may be sent again after a failed call."""

        def messages() -> Iterator[log_pb2.IngestLogsRequest]:
            batch: list[log_pb2.NewLogEntry] = []
            for entry in entries:
                batch.append(entry)
                if len(batch) == LOG_ENTRIES_PER_MESSAGE:
                    yield log_pb2.IngestLogsRequest(entries=batch)
                    batch = []
            if batch:
                yield log_pb2.IngestLogsRequest(entries=batch)

        return self.logs.IngestLogs(messages(), timeout=self.timeout)

    def query_logs(
        self,
        *,
        crew_name: str = "",
        crew_output_id: int = 0,
        min_level: str = "",
        message_contains: str = "",
        start_time: dt.datetime | None = None,
        end_time: dt.datetime | None = None,
        page_size: int = 0,
    ) -> Iterator[log_pb2.LogEntry]:
        """Yield every log entry that matches the filters, newest first."""
        request = log_pb2.QueryLogsRequest(
            page_size=page_size,
            crew_name=crew_name,
            crew_output_id=crew_output_id,
            min_level=min_level,
            message_contains=message_contains,
            start_time=to_timestamp(start_time) if start_time else None,
            end_time=to_timestamp(end_time) if end_time else None,
        )
        while True:
            response = self.logs.QueryLogs(request, timeout=self.timeout)
            yield from response.entries
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    # Tasks

    def enqueue_task(
        self,
        queue: str,
        payload: JsonObject | None = None,
        *,
        priority: int = 0,
        dedupe_key: str = "",
        max_attempts: int = 0,
        run_at: dt.datetime | None = None,
        retry_backoff: dt.timedelta | None = None,
    ) -> task_pb2.EnqueueTaskResponse:
        """Add a task; `response.deduplicated` is true when an unfinished task
        with the same `dedupe_key` came back instead."""
        request = task_pb2.EnqueueTaskRequest(
            queue=queue,
            payload=to_struct(payload),
            priority=priority,
            dedupe_key=dedupe_key,
            max_attempts=max_attempts,
            run_at=to_timestamp(run_at) if run_at else None,
            retry_backoff=to_duration(retry_backoff) if retry_backoff is not None else None,
        )
        return self.tasks.EnqueueTask(request, timeout=self.timeout)

    def claim_tasks(
        self,
        queue: str,
        worker: str,
        *,
        max_tasks: int = 1,
        lease: dt.timedelta | None = None,
    ) -> list[task_pb2.Task]:
        """Claim up to `max_tasks` ready tasks; each carries the `lease_token`
        that the later calls on it need. Empty when no task is ready."""
        request = task_pb2.ClaimTasksRequest(
            queue=queue,
            worker=worker,
            max_tasks=max_tasks,
            lease=to_duration(lease) if lease is not None else None,
        )
        return list(self.tasks.ClaimTasks(request, timeout=self.timeout).tasks)

    def heartbeat_task(
        self, task: task_pb2.Task, *, lease: dt.timedelta | None = None
    ) -> task_pb2.Task:
        """Extend the lease of a claimed task; a stale lease raises
        FAILED_PRECONDITION."""
        request = task_pb2.HeartbeatTaskRequest(
            task_id=task.id,
            lease_token=task.lease_token,
            lease=to_duration(lease) if lease is not None else None,
        )
        return self.tasks.HeartbeatTask(request, timeout=self.timeout)

    def complete_task(
        self, task: task_pb2.Task, result: task_pb2.TaskResult | None = None
    ) -> task_pb2.CompleteTaskResponse:
        """Finish a claimed task and store its result (a crew output with its
        findings and fixes) in the same transaction."""
        request = task_pb2.CompleteTaskRequest(
            task_id=task.id, lease_token=task.lease_token, result=result
        )
        return self.tasks.CompleteTask(request, timeout=self.timeout)

    def fail_task(
        self, task: task_pb2.Task, error: str, *, permanent: bool = False
    ) -> task_pb2.Task:
        """Record a failed attempt: the server queues the task again after a
        backoff, or moves it to DEAD after its last attempt or when
        `permanent` is true."""
        request = task_pb2.FailTaskRequest(
            task_id=task.id, lease_token=task.lease_token, error=error, permanent=permanent
        )
        return self.tasks.FailTask(request, timeout=self.timeout)

    def get_task(self, task_id: int) -> task_pb2.Task:
        return self.tasks.GetTask(task_pb2.GetTaskRequest(id=task_id), timeout=self.timeout)

    def get_stats(self) -> stats_pb2.Stats:
        return self.stats.GetStats(stats_pb2.GetStatsRequest(), timeout=self.timeout)

"""`CodeAnalyzerLogHandler` against a real server: batching, metadata,
re-sends, a server restart, a full queue and interpreter exit."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator

import grpc
import pytest

from code_analyzer_client import Client, CodeAnalyzerLogHandler, struct_to_dict
from code_analyzer_client.v1 import log_pb2

from conftest import ServerProcess


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def stored_entries(address: str, **filters: object) -> list[log_pb2.LogEntry]:
    with Client.connect(address, timeout=10) as client:
        return list(client.query_logs(page_size=1000, **filters))


@pytest.fixture
def logger(request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    """A logger of the test's own name that does not pass records to the root."""
    test_logger = logging.getLogger(f"tests.{request.node.name}")
    test_logger.setLevel(logging.DEBUG)
    test_logger.propagate = False
    yield test_logger
    for handler in list(test_logger.handlers):
        test_logger.removeHandler(handler)
        handler.close()


def test_sends_full_batches_then_flush(server: ServerProcess, logger: logging.Logger) -> None:
    handler = CodeAnalyzerLogHandler(server.address, crew_name="crew", batch_size=10, flush_interval=60)
    logger.addHandler(handler)

    for index in range(25):
        logger.info("record %d", index)

    assert wait_until(lambda: handler.sent == 20)
    assert handler.pending == 5
    handler.flush()
    assert handler.sent == 25
    assert handler.pending == 0
    entries = stored_entries(server.address, crew_name="crew")
    assert sorted(entry.message for entry in entries) == sorted(f"record {index}" for index in range(25))
    ids = [entry.entry_id for entry in entries]
    assert len(set(ids)) == 25
    assert all(entry_id.startswith(f"{handler.entry_id_prefix}:") for entry_id in ids)


def test_interval_sends_partial_batch(server: ServerProcess, logger: logging.Logger) -> None:
    handler = CodeAnalyzerLogHandler(server.address, batch_size=100, flush_interval=0.2)
    logger.addHandler(handler)

    for index in range(3):
        logger.warning("slow record %d", index)

    assert wait_until(lambda: handler.sent == 3, timeout=5)
    assert len(stored_entries(server.address, message_contains="slow record")) == 3


def test_entry_carries_level_and_metadata(server: ServerProcess, logger: logging.Logger) -> None:
    handler = CodeAnalyzerLogHandler(server.address, crew_name="crew", crew_output_id=0)
    logger.addHandler(handler)
    with Client.connect(server.address, timeout=10) as client:
        run = client.create_crew_output("other-crew", "review")

    logger.debug("plain debug")
    try:
        raise ValueError("bad input")
    except ValueError:
        logger.exception("step failed")
    logger.critical("with extra", extra={"crew_name": "other-crew", "crew_output_id": run.id, "metadata": {"attempt": 2}})
    handler.flush()

    entries = {entry.message: entry for entry in stored_entries(server.address)}
    assert set(entries) == {"plain debug", "step failed", "with extra"}
    plain = entries["plain debug"]
    assert (plain.level, plain.severity_number, plain.crew_name) == ("DEBUG", 5, "crew")
    metadata = struct_to_dict(plain.metadata)
    assert metadata["logger"] == logger.name
    assert metadata["module"] == "test_log_handler"
    assert metadata["thread_name"] == "MainThread"
    assert isinstance(metadata["lineno"], float)
    assert "exc_info" not in metadata
    failed = entries["step failed"]
    assert failed.level == "ERROR"
    exc_info = struct_to_dict(failed.metadata)["exc_info"]
    assert exc_info.startswith("Traceback (most recent call last)")
    assert "ValueError: bad input" in exc_info
    extra = entries["with extra"]
    assert (extra.level, extra.severity_number) == ("CRITICAL", 18)
    assert (extra.crew_name, extra.crew_output_id) == ("other-crew", run.id)
    assert struct_to_dict(extra.metadata)["attempt"] == 2
    assert handler.rejected == 0


def test_custom_level_sends_nearest_python_level(server: ServerProcess, logger: logging.Logger) -> None:
    handler = CodeAnalyzerLogHandler(server.address)
    logger.addHandler(handler)

    logger.log(25, "between info and warning")
    handler.flush()

    [entry] = stored_entries(server.address)
    assert entry.level == "INFO"
    assert struct_to_dict(entry.metadata)["levelname"] == "Level 25"
    assert handler.rejected == 0


def test_long_message_is_truncated_to_limit(server: ServerProcess, logger: logging.Logger) -> None:
    handler = CodeAnalyzerLogHandler(server.address)
    logger.addHandler(handler)

    logger.info("é" * 40_000)
    handler.flush()

    [entry] = stored_entries(server.address)
    assert len(entry.message.encode()) <= 64 * 1024
    assert entry.message.endswith("[truncated 80000 bytes to 65536]")
    assert handler.rejected == 0


class LostResponseHandler(CodeAnalyzerLogHandler):
    """Reports the first successful send as UNAVAILABLE, as when the
    connection drops after the server committed the batch."""

    lost = False

    def _send(self, entries: list[log_pb2.NewLogEntry]) -> grpc.RpcError | None:
        error = super()._send(entries)
        if error is None and not self.lost:
            self.lost = True
            self.sent = 0
            return LostResponse()
        return error


class LostResponse(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection lost after the server committed"


class FailOnceStub:
    """Wraps a LogService stub whose first IngestLogs call raises an error
    that carries no gRPC status."""

    def __init__(self, stub: object) -> None:
        self._stub = stub
        self.failures = 0

    def IngestLogs(self, *args: object, **kwargs: object) -> log_pb2.IngestLogsResponse:
        if self.failures == 0:
            self.failures += 1
            raise RuntimeError("can't create new thread at interpreter shutdown")
        return self._stub.IngestLogs(*args, **kwargs)


def test_unexpected_send_error_is_retried(server: ServerProcess, logger: logging.Logger) -> None:
    handler = CodeAnalyzerLogHandler(server.address, batch_size=5, flush_interval=60, retry_interval=0.05)
    stub = FailOnceStub(handler._stub)
    handler._stub = stub
    logger.addHandler(handler)

    for index in range(5):
        logger.info("after error %d", index)
    assert wait_until(lambda: handler.last_error is not None)
    handler.flush()

    assert stub.failures == 1
    assert isinstance(handler.last_error, RuntimeError)
    assert handler._thread.is_alive()
    assert handler.pending == 0
    assert handler.sent == 5
    assert (handler.dropped, handler.discarded) == (0, 0)
    assert len(stored_entries(server.address, message_contains="after error")) == 5


def test_resent_batch_is_stored_once(server: ServerProcess, logger: logging.Logger) -> None:
    handler = LostResponseHandler(server.address, batch_size=50, flush_interval=60, retry_interval=0.05)
    logger.addHandler(handler)

    for index in range(40):
        logger.info("resent %d", index)
    handler.flush()

    assert handler.lost
    assert handler.pending == 0
    assert handler.duplicates == 40
    assert handler.sent == 0
    entries = stored_entries(server.address)
    assert len(entries) == 40
    assert len({entry.entry_id for entry in entries}) == 40


def test_server_restart_stores_each_record_once(
    start_server: Callable[..., ServerProcess], logger: logging.Logger
) -> None:
    server = start_server()
    address = server.address
    handler = CodeAnalyzerLogHandler(address, batch_size=10, flush_interval=0.1, send_timeout=1.0)
    logger.addHandler(handler)
    for index in range(30):
        logger.info("before %d", index)
    handler.flush()
    assert handler.sent == 30

    server.stop()
    for index in range(40):
        logger.info("during %d", index)
    assert wait_until(lambda: handler.last_error is not None)
    assert handler.pending == 40
    restarted = start_server(listen=address)
    handler.flush(timeout=30)

    assert handler.pending == 0
    assert handler.dropped == 0
    assert handler.sent + handler.duplicates == 70
    entries = stored_entries(restarted.address)
    counts = Counter(entry.message for entry in entries)
    expected = [f"before {index}" for index in range(30)] + [f"during {index}" for index in range(40)]
    assert sorted(counts) == sorted(expected)
    assert set(counts.values()) == {1}
    assert len({entry.entry_id for entry in entries}) == 70


def test_full_queue_drops_oldest_and_counts(
    start_server: Callable[..., ServerProcess], logger: logging.Logger
) -> None:
    server = start_server()
    address = server.address
    server.stop()
    handler = CodeAnalyzerLogHandler(
        address, batch_size=5, flush_interval=0.05, max_queue=20, send_timeout=0.5, max_retry_interval=0.5
    )
    logger.addHandler(handler)

    for index in range(50):
        logger.info("queued %d", index)

    # Entries pushed out while their batch is in flight count once that send fails.
    assert wait_until(lambda: handler.dropped == 30)
    assert handler.pending == 20
    restarted = start_server(listen=address)
    handler.flush(timeout=30)

    assert handler.pending == 0
    assert handler.dropped == 30
    assert handler.sent == 20
    entries = stored_entries(restarted.address)
    assert sorted(entry.message for entry in entries) == sorted(f"queued {index}" for index in range(30, 50))


def test_close_returns_when_server_is_down(
    start_server: Callable[..., ServerProcess], logger: logging.Logger
) -> None:
    server = start_server()
    address = server.address
    server.stop()
    handler = CodeAnalyzerLogHandler(address, send_timeout=0.5, close_timeout=1.0)
    logger.addHandler(handler)
    logger.error("nobody listens")

    started = time.monotonic()
    logger.removeHandler(handler)
    handler.close()

    assert time.monotonic() - started < 5
    assert handler.pending == 1
    assert handler.sent == 0
    logger.addHandler(handler)
    logger.error("after close")
    assert handler.dropped == 1


def test_root_logger_debug_sends_own_records(server: ServerProcess) -> None:
    root = logging.getLogger()
    previous_level = root.level
    handler = CodeAnalyzerLogHandler(server.address, batch_size=2, flush_interval=0.05)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        for index in range(6):
            logging.getLogger("crew.agent").debug("agent step %d", index)
        handler.flush()
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()

    assert handler.sent == 6
    messages = sorted(entry.message for entry in stored_entries(server.address))
    assert messages == [f"agent step {index}" for index in range(6)]


# CPython 3.12.0 to 3.12.2 cannot start the thread that grpc needs for each
# IngestLogs call once the interpreter begins to exit.
skip_if_no_threads_at_exit = pytest.mark.skipif(
    (3, 12, 0) <= sys.version_info[:3] <= (3, 12, 2),
    reason="this Python starts no threads at exit, so the queue cannot be sent then",
)


@skip_if_no_threads_at_exit
def test_queue_sent_at_interpreter_exit(server: ServerProcess) -> None:
    script = textwrap.dedent(
        f"""
        import logging
        import threading
        import time
        from code_analyzer_client import CodeAnalyzerLogHandler

        handler = CodeAnalyzerLogHandler({server.address!r}, batch_size=1000, flush_interval=60)
        logging.getLogger().addHandler(handler)
        for index in range(12):
            logging.warning("exit record %d", index)

        def log_late():
            time.sleep(0.5)
            logging.warning("record of a non-daemon thread")

        # The main thread ends first, and the interpreter joins this thread
        # before it runs the exit hook.
        threading.Thread(target=log_late).start()
        # No flush or close: the exit hook sends the queue.
        """
    )

    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)

    assert finished.returncode == 0, finished.stderr
    assert "not sent" not in finished.stderr
    messages = sorted(entry.message for entry in stored_entries(server.address))
    expected = [f"exit record {index}" for index in range(12)] + ["record of a non-daemon thread"]
    assert messages == sorted(expected)


def test_exit_reports_queue_without_threads(server: ServerProcess) -> None:
    # An atexit callback registered after the handler runs before the
    # handler's own, and makes every thread start raise, as CPython 3.12.0
    # to 3.12.2 do during exit.
    script = textwrap.dedent(
        f"""
        import atexit
        import logging
        import threading
        from code_analyzer_client import CodeAnalyzerLogHandler

        handler = CodeAnalyzerLogHandler(
            {server.address!r}, batch_size=1000, flush_interval=60, close_timeout=30
        )
        logging.getLogger().addHandler(handler)
        for index in range(12):
            logging.warning("unsent record %d", index)

        def fail_thread_starts():
            def start(thread):
                raise RuntimeError("can't create new thread at interpreter shutdown")
            threading.Thread.start = start

        atexit.register(fail_thread_starts)
        """
    )

    started = time.monotonic()
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started

    assert finished.returncode == 0, finished.stderr
    # Far below close_timeout: the handler stops at the first failed start.
    assert elapsed < 15
    assert "12 log entries not sent at exit" in finished.stderr
    assert "can't create new thread" in finished.stderr
    assert stored_entries(server.address) == []

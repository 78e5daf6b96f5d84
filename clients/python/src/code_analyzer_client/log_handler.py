"""A `logging.Handler` that sends records to `LogService.IngestLogs` in
batches from a background thread.

Each record gets an `entry_id` made of a random per-handler prefix and a
counter, so a batch sent again after a failed call is stored once: the
server counts the copies as duplicates. While the server is unreachable the
records wait in a queue of at most `max_queue` entries, and when it is full
the oldest entry is dropped and counted in `dropped`.
"""

from __future__ import annotations

import atexit
import collections
import logging
import secrets
import sys
import threading
import time
from typing import Any

import grpc

from .client import open_channel, to_struct
from .v1 import log_pb2, log_pb2_grpc

# Limits of the server on one entry (see NewLogEntry in log.proto).
MAX_MESSAGE_BYTES = 64 * 1024
MAX_METADATA_BYTES = 64 * 1024
# Share of the metadata limit that a traceback or stack may take, so the
# other fields still fit.
MAX_TRACEBACK_BYTES = 48 * 1024
# Entries per IngestLogs stream message, far below the 16 MiB message limit
# even when every entry is at its limits.
ENTRIES_PER_MESSAGE = 100

# Level names of Python logging, which the server accepts as they are.
PYTHON_LEVEL_NAMES = frozenset(
    {"CRITICAL", "FATAL", "ERROR", "WARNING", "WARN", "INFO", "DEBUG", "NOTSET"}
)

# Codes after which a batch is sent again; any other code discards the batch,
# because sending the same entries again would fail the same way.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)

# Reconnect quickly after a server restart when the handler opens the channel.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    marker = f" [truncated {len(encoded)} bytes to {max_bytes}]"
    keep = max_bytes - len(marker.encode("utf-8"))
    return encoded[:keep].decode("utf-8", errors="ignore") + marker


def _is_retryable(error: Exception) -> bool:
    """Return whether a batch that failed with `error` is sent again: after a
    gRPC status in `RETRYABLE_CODES`, or after any exception that carries no
    gRPC status, such as the RuntimeError of a thread that could not
    start."""
    code = getattr(error, "code", None)
    if isinstance(error, grpc.RpcError) and callable(code):
        return code() in RETRYABLE_CODES
    return True


def _python_level_name(record: logging.LogRecord) -> str:
    """Return the standard Python level name at or below the record's level,
    for custom levels whose names the server may not know."""
    for number, name in ((50, "CRITICAL"), (40, "ERROR"), (30, "WARNING"), (20, "INFO"), (10, "DEBUG")):
        if record.levelno >= number:
            return name
    return "NOTSET"


class CodeAnalyzerLogHandler(logging.Handler):
    """Send log records to a code-analyzer server.

    `target` is a `host:port` for a channel that the handler opens and
    closes (with `token` and `root_certificates` as in `open_channel`), or a
    `grpc.Channel` that the caller owns. The background
    thread sends when `batch_size` records are queued or `flush_interval`
    seconds after the last send. A failed send with a code in
    `RETRYABLE_CODES` is repeated after a backoff that doubles from
    `retry_interval` up to `max_retry_interval` seconds. Each call waits for
    the channel to connect, up to `send_timeout` seconds. Any other
    exception of a send is retried the same way, so the thread keeps
    running.

    A record may carry `crew_name`, `crew_output_id` and a `metadata` dict
    through `extra=`; they override the handler's values. The entry's
    metadata contains the logger name, module, line number, thread name and
    the formatted `exc_info` and `stack_info`.

    Counters, read without locking: `sent` (entries the server stored),
    `duplicates` (entries it already had), `rejected` (entries it refused,
    with `last_rejection`), `discarded` (entries of batches that failed with
    a code that is not retried), `dropped` (entries pushed out of the full
    queue or logged after `close`), and `last_error` (the exception of the
    last failed send). An entry counts as dropped or discarded when no call
    confirmed it, but a call that failed midway may still have stored some
    of its entries.

    An `atexit` callback closes the handler, sending what is queued within
    `close_timeout`, and writes a line to stderr if entries stay unsent.
    It runs after the interpreter has joined the non-daemon threads, so
    their last records are sent too.
    """

    def __init__(
        self,
        target: str | grpc.Channel,
        *,
        crew_name: str = "",
        crew_output_id: int = 0,
        level: int = logging.NOTSET,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        max_queue: int = 10_000,
        send_timeout: float = 10.0,
        retry_interval: float = 0.2,
        max_retry_interval: float = 5.0,
        close_timeout: float = 5.0,
        entry_id_prefix: str | None = None,
        token: str | None = None,
        root_certificates: bytes | None = None,
    ):
        super().__init__(level)
        if batch_size < 1 or max_queue < 1:
            raise ValueError(f"batch_size ({batch_size}) and max_queue ({max_queue}) must be at least 1")
        if isinstance(target, str):
            self._channel = open_channel(
                target, token=token, root_certificates=root_certificates, options=CHANNEL_OPTIONS
            )
            self._owns_channel = True
        else:
            self._channel = target
            self._owns_channel = False
        self._stub = log_pb2_grpc.LogServiceStub(self._channel)

        self.crew_name = crew_name
        self.crew_output_id = crew_output_id
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.send_timeout = send_timeout
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.close_timeout = close_timeout
        self.entry_id_prefix = entry_id_prefix or secrets.token_hex(8)

        self.sent = 0
        self.duplicates = 0
        self.rejected = 0
        self.discarded = 0
        self.dropped = 0
        self.last_error: Exception | None = None
        self.last_rejection: log_pb2.RejectedEntry | None = None

        # Queue of (sequence number, entry); the sequence number is also the
        # counter of the entry_id.
        self._queue: collections.deque[tuple[int, log_pb2.NewLogEntry]] = collections.deque(
            maxlen=max_queue
        )
        self._condition = threading.Condition(threading.Lock())
        self._next_sequence = 1
        # Highest sequence number of the batch being sent; 0 when idle.
        self._in_flight_through = 0
        # Entries pushed out of the queue while their batch was being sent:
        # dropped if the send fails, stored if it succeeds.
        self._evicted_in_flight = 0
        self._retry_delay = 0.0
        self._next_attempt = 0.0
        self._flush_requested = False
        self._stopping = False
        self._closed = False
        # Set by the exit hook: a send that fails without a gRPC status then
        # stops the thread instead of waiting to retry.
        self._exiting = False
        # False once the thread has returned, so flush() stops waiting.
        self._running = True

        self._thread = threading.Thread(
            target=self._run, name="code-analyzer-log-handler", daemon=True
        )
        self._thread.start()
        # logging.shutdown also closes handlers at exit, but it runs after
        # grpc's own exit hooks; this hook runs before them.
        atexit.register(self._close_at_exit)

    @property
    def pending(self) -> int:
        """Entries queued and not yet sent."""
        with self._condition:
            return len(self._queue)

    def emit(self, record: logging.LogRecord) -> None:
        # Records that grpc logs while this handler's thread sends would
        # come back here and feed themselves.
        if threading.current_thread() is self._thread:
            return
        try:
            entry = self._entry(record)
        except Exception:
            self.handleError(record)
            return
        with self._condition:
            if self._closed:
                self.dropped += 1
                return
            sequence = self._next_sequence
            self._next_sequence += 1
            entry.entry_id = f"{self.entry_id_prefix}:{sequence}"
            if len(self._queue) == self._queue.maxlen:
                self._count_eviction(self._queue[0][0])
            self._queue.append((sequence, entry))
            if len(self._queue) >= self.batch_size:
                self._condition.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Send every record queued so far, waiting up to `timeout` seconds
        (default `close_timeout`). Returns early, with the records still
        queued, when the server stays unreachable; `pending` counts them."""
        deadline = time.monotonic() + (self.close_timeout if timeout is None else timeout)
        with self._condition:
            target = self._next_sequence - 1
            while self._queue and self._queue[0][0] <= target and self._running:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                # A flush is a request to try now, even during a backoff.
                self._flush_requested = True
                self._condition.notify_all()
                self._condition.wait(remaining)

    def close(self) -> None:
        """Send what is queued (up to `close_timeout` seconds), stop the
        thread and close the channel if the handler opened it."""
        with self._condition:
            already_closed = self._closed
        if not already_closed:
            self.flush()
            with self._condition:
                self._closed = True
                self._stopping = True
                self._condition.notify_all()
            # Closing the channel cancels a send still waiting for the server.
            self._thread.join(1.0)
            if self._owns_channel:
                self._channel.close()
            atexit.unregister(self._close_at_exit)
        super().close()

    def _close_at_exit(self) -> None:
        """Close the handler from `atexit`, and report on stderr what stays
        unsent, because the program can no longer read `pending`."""
        # NOTE: CPython 3.12.0 to 3.12.2 raise RuntimeError on a thread
        # start once the interpreter begins to exit, even in
        # threading._register_atexit callbacks, and grpc starts a thread for
        # each IngestLogs call. There the queue is not sent at exit, so call
        # close() before the program ends. CPython 3.12.3 (gh-113964) starts
        # threads in atexit callbacks again.
        self._exiting = True
        self.close()
        unsent = self.pending
        if unsent:
            print(
                f"code_analyzer_client: {unsent} log entries not sent at exit "
                f"to the code-analyzer server: {self.last_error!r}",
                file=sys.stderr,
            )

    def _entry(self, record: logging.LogRecord) -> log_pb2.NewLogEntry:
        level = record.levelname
        metadata: dict[str, Any] = {
            "logger": record.name,
            "module": record.module,
            "lineno": record.lineno,
            "thread_name": record.threadName,
        }
        if level.upper() not in PYTHON_LEVEL_NAMES:
            metadata["levelname"] = level
            level = _python_level_name(record)
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            metadata["exc_info"] = _truncate_utf8(text, MAX_TRACEBACK_BYTES)
        elif record.exc_text:
            metadata["exc_info"] = _truncate_utf8(record.exc_text, MAX_TRACEBACK_BYTES)
        if record.stack_info:
            metadata["stack_info"] = _truncate_utf8(record.stack_info, MAX_TRACEBACK_BYTES // 4)
        extra_metadata = getattr(record, "metadata", None)
        if isinstance(extra_metadata, dict):
            metadata.update(extra_metadata)

        entry = log_pb2.NewLogEntry(
            level=level,
            message=_truncate_utf8(record.getMessage(), MAX_MESSAGE_BYTES),
            crew_name=str(getattr(record, "crew_name", self.crew_name)),
            crew_output_id=int(getattr(record, "crew_output_id", self.crew_output_id)),
            metadata=to_struct(metadata),
        )
        entry.timestamp.FromNanoseconds(int(record.created * 1e9))
        return entry

    def _count_eviction(self, sequence: int) -> None:
        """Count the entry `sequence` that the full queue pushes out.
        Called with the lock held."""
        if sequence <= self._in_flight_through:
            self._evicted_in_flight += 1
        else:
            self.dropped += 1

    def _run(self) -> None:
        try:
            while True:
                with self._condition:
                    batch = self._wait_for_batch()
                    if batch is None:
                        return
                    self._in_flight_through = batch[-1][0]
                error = self._send([entry for _, entry in batch])
                with self._condition:
                    self._finish_batch(batch, error)
                    self._condition.notify_all()
        finally:
            with self._condition:
                self._running = False
                self._condition.notify_all()

    def _wait_for_batch(self) -> list[tuple[int, log_pb2.NewLogEntry]] | None:
        """Wait until a batch is due and return it, or None when the handler
        stops. Called with the lock held."""
        last_send = time.monotonic()
        while True:
            now = time.monotonic()
            if self._stopping:
                return None
            if self._flush_requested:
                self._flush_requested = False
                self._next_attempt = now
            if not self._queue:
                self._next_attempt = 0.0
            if self._queue and now >= self._next_attempt:
                full = len(self._queue) >= self.batch_size
                due = now - last_send >= self.flush_interval or self._next_attempt > 0
                if full or due:
                    self._next_attempt = 0.0
                    return list(self._queue)[: self.batch_size]
            if now < self._next_attempt:
                timeout = self._next_attempt - now
            else:
                timeout = max(0.0, last_send + self.flush_interval - now) or self.flush_interval
            self._condition.wait(timeout)

    def _send(self, entries: list[log_pb2.NewLogEntry]) -> Exception | None:
        """Send one batch and return the exception of a failed send, which
        is usually the `grpc.RpcError` of the call."""
        try:
            messages = [
                log_pb2.IngestLogsRequest(entries=entries[start : start + ENTRIES_PER_MESSAGE])
                for start in range(0, len(entries), ENTRIES_PER_MESSAGE)
            ]
            response = self._stub.IngestLogs(
                iter(messages), timeout=self.send_timeout, wait_for_ready=True
            )
        except Exception as error:
            # An exception that escaped here would end the thread, and the
            # queue would never be sent.
            return error
        self.sent += response.accepted_count
        self.duplicates += response.duplicate_count
        self.rejected += response.rejected_count
        if response.rejections:
            self.last_rejection = response.rejections[-1]
        return None

    def _finish_batch(
        self, batch: list[tuple[int, log_pb2.NewLogEntry]], error: Exception | None
    ) -> None:
        """Remove a sent or discarded batch from the queue, or schedule the
        next attempt. Called with the lock held."""
        last_sequence = batch[-1][0]
        self._in_flight_through = 0
        evicted, self._evicted_in_flight = self._evicted_in_flight, 0
        if error is not None:
            self.last_error = error
            # Entries pushed out while the batch was in flight are lost.
            self.dropped += evicted
            if self._exiting and not isinstance(error, grpc.RpcError):
                # At exit, an error without a gRPC status is most likely a
                # thread that the interpreter could not start, and a retry
                # would fail the same way. The batch stays in `pending`.
                self._stopping = True
                return
            if _is_retryable(error):
                self._retry_delay = min(
                    self.max_retry_interval, max(self.retry_interval, self._retry_delay * 2)
                )
                self._next_attempt = time.monotonic() + self._retry_delay
                return
            self.discarded += len(batch) - evicted
        self._retry_delay = 0.0
        while self._queue and self._queue[0][0] <= last_sequence:
            self._queue.popleft()

"""Fixtures that run the real `code-analyzer serve` binary on 127.0.0.1 with
a SQLite file in the test's temporary folder.

The binary is `CODE_ANALYZER_BIN`, or `target/debug/code-analyzer` in the
repository (build it with `cargo build`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest

import code_analyzer_client
from code_analyzer_client import Client, _build_info, _digest

REPOSITORY = Path(__file__).resolve().parents[3]
STARTUP_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 15


def server_binary() -> Path:
    binary = Path(
        os.environ.get("CODE_ANALYZER_BIN", REPOSITORY / "target" / "debug" / "code-analyzer")
    )
    if not binary.is_file():
        pytest.fail(f"server binary {binary} not found; run `cargo build` or set CODE_ANALYZER_BIN")
    return binary


def pytest_report_header(config: pytest.Config) -> str:
    installed = _build_info.SOURCE_DIGEST
    current = _digest.source_digest(
        REPOSITORY / "proto", REPOSITORY / "clients" / "python" / "src" / "code_analyzer_client"
    )
    state = "matches" if installed == current else "is STALE against"
    return (
        f"code_analyzer_client at {Path(code_analyzer_client.__file__).parent} {state} "
        f"the working tree; reinstall with `python3 -m pip install ./clients/python`"
    )


class ServerProcess:
    """One `code-analyzer serve` process. Its stderr is read to the end on a
    thread, so the server never blocks on a full pipe."""

    def __init__(self, database: Path, listen: str = "127.0.0.1:0", extra_args: Sequence[str] = ()):
        self.database = database
        self.stderr_lines: list[str] = []
        self.process = subprocess.Popen(
            [
                str(server_binary()),
                "serve",
                "--listen",
                listen,
                "--log-format",
                "json",
                "--database-url",
                f"sqlite://{database}",
                "--shutdown-grace",
                "1",
                *extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"},
        )
        self._address: str | None = None
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._started.wait(STARTUP_TIMEOUT_SECONDS) or self._address is None:
            self.kill()
            output = "\n".join(self.stderr_lines)
            raise RuntimeError(f"serve printed no start-up line with an address; stderr:\n{output}")

    @property
    def address(self) -> str:
        """`host:port` from the start-up line."""
        assert self._address is not None
        return self._address

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line.rstrip("\n"))
            if self._address is None:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                address = event.get("fields", {}).get("address")
                if isinstance(address, str):
                    self._address = address
                    self._started.set()
        # The process closed stderr: it exited, so stop waiting for a start.
        self._started.set()

    def stop(self) -> None:
        """Stop the server with SIGTERM, and SIGKILL if it takes too long."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(5)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Return a function that starts a server on `tmp_path/analyzer.db`,
    optionally on a given `listen` address and with more `serve` flags. Every server it started is
    killed at the end of the test."""
    started: list[ServerProcess] = []

    def start(listen: str = "127.0.0.1:0", extra_args: Sequence[str] = ()) -> ServerProcess:
        server = ServerProcess(tmp_path / "analyzer.db", listen, extra_args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    channel = grpc.insecure_channel(server.address)
    grpc.channel_ready_future(channel).result(timeout=10)
    with Client(channel, timeout=10) as wrapper:
        yield wrapper
    channel.close()

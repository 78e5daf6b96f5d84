"""Bearer tokens from the Python client and the log handler."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from conftest import ServerProcess, server_binary

from code_analyzer_client import Client, CodeAnalyzerLogHandler
from code_analyzer_client.v1 import log_pb2


def create_token(tokens_file: Path, name: str, role: str) -> str:
    completed = subprocess.run(
        [str(server_binary()), "token", "create", name, "--role", role, "--tokens-file", str(tokens_file)],
        check=True,
        capture_output=True,
        text=True,
    )
    return completed.stdout.strip()


def test_token_authenticates_client_and_handler(
    tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    tokens_file = tmp_path / "tokens"
    writer = create_token(tokens_file, "python-crew", "writer")
    reader = create_token(tokens_file, "dashboard", "reader")
    server = start_server(extra_args=["--tokens-file", str(tokens_file)])

    with Client.connect(server.address) as anonymous:
        with pytest.raises(grpc.RpcError) as refused:
            anonymous.create_crew_output("auth-crew", "code_review")
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    with Client.connect(server.address, token=reader) as viewer:
        with pytest.raises(grpc.RpcError) as denied:
            viewer.create_crew_output("auth-crew", "code_review")
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs the writer role" in (denied.value.details() or "")

    with Client.connect(server.address, token=writer) as crew:
        output = crew.create_crew_output("auth-crew", "code_review")
        assert output.crew_name == "auth-crew"

    handler = CodeAnalyzerLogHandler(server.address, crew_name="auth-crew", token=writer, flush_interval=0.05)
    logger = logging.getLogger("test_auth")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("sent with a token")
        deadline = time.monotonic() + 30
        while handler.sent < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert handler.sent == 1, handler.last_error

    with Client.connect(server.address, token=reader) as viewer:
        logs = viewer.logs.QueryLogs(log_pb2.QueryLogsRequest(crew_name="auth-crew"), timeout=10)
        assert [entry.message for entry in logs.entries] == ["sent with a token"]

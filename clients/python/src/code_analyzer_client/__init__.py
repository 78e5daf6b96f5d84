"""Python client of the code-analyzer gRPC server.

`Client` wraps the common calls of a crew; `CodeAnalyzerLogHandler` sends
`logging` records to the server. The generated messages and stubs are in
`code_analyzer_client.v1` (for example `v1.crew_pb2.CrewOutput`).
"""

from .client import (
    Client,
    FileHistory,
    RecordedRun,
    RunComparison,
    new_finding,
    new_fix,
    open_channel,
    struct_to_dict,
    task_result,
    to_duration,
    to_struct,
    to_timestamp,
)
from .log_handler import CodeAnalyzerLogHandler

__all__ = [
    "Client",
    "CodeAnalyzerLogHandler",
    "FileHistory",
    "RecordedRun",
    "RunComparison",
    "new_finding",
    "new_fix",
    "open_channel",
    "struct_to_dict",
    "task_result",
    "to_duration",
    "to_struct",
    "to_timestamp",
]

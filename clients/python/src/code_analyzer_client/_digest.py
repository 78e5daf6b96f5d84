"""Digest of the sources a build of this package comes from: the protos and
the package's own modules. The build stores it in `_build_info.py`, so a test
can tell whether the installed package matches the working tree."""

from __future__ import annotations

import hashlib
from pathlib import Path

# Files the build writes into the package, which are not sources.
GENERATED = ("_build_info.py", "v1")


def source_digest(proto_root: Path, package_source: Path) -> str:
    """Return the SHA-256 over every `*.proto` under `proto_root` and every
    `*.py` of `package_source` except the generated ones, with their paths."""
    files = [("proto", path.relative_to(proto_root)) for path in proto_root.rglob("*.proto")]
    files += [
        ("package", path.relative_to(package_source))
        for path in package_source.rglob("*.py")
        if path.relative_to(package_source).parts[0] not in GENERATED
    ]
    digest = hashlib.sha256()
    for kind, relative in sorted(files):
        root = proto_root if kind == "proto" else package_source
        digest.update(f"{kind}/{relative.as_posix()}\0".encode())
        digest.update((root / relative).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()

"""Generic fixtures shared by every test module; keep module-specific helpers out of here."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from naived.ops.listen import free_ports


@pytest.fixture
def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path, for tools that make their own sockets in it
    (pytest's tmp_path is too long for a Unix socket's 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="nd-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

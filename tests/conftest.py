"""Generic fixtures shared by every test module; keep module-specific helpers out of here."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

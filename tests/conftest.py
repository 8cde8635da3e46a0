"""Generic fixtures shared by every test module; keep module-specific helpers out of here."""

from __future__ import annotations

import pytest

from naived.ops.listen import free_ports


@pytest.fixture
def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]

"""Prometheus text metrics on a loopback port, served from a daemon's own poll loop.

No thread and no framework: the listening socket sits in the same poll loop as
the daemon's other sockets; a scrape is answered inline (scrapes are rare and
small). `Metrics` builds the text exposition format (version 0.0.4).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from decimal import Decimal

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[tuple[str, float | int | Decimal]]]] = {}

    def add(self, name: str, kind: str, help_text: str, value: float | int | Decimal, **labels: str | int) -> None:
        family = self._families.setdefault(name, (kind, help_text, []))
        rendered = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
        family[2].append((f"{{{rendered}}}" if rendered else "", value))

    def render(self) -> str:
        lines = []
        for name, (kind, help_text, samples) in self._families.items():
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines += [f"{name}{labels} {value}" for labels, value in samples]
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsEndpoint:
    """`GET /metrics` on 127.0.0.1:<port>; register `fd` in the loop, call `serve` when readable."""

    def __init__(self, port: int, collect: Callable[[], str]) -> None:
        self.collect = collect
        self.listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]

    @property
    def fd(self) -> int:
        return self.listener.fileno()

    def serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(1.0)  # a slow scraper must not stall the daemon's loop for long
            try:
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 8192:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
                if path.split(b"?")[0] == b"/metrics":
                    body, status = self.collect().encode(), "200 OK"
                else:
                    body, status = b"not found: try /metrics\n", "404 Not Found"
                head = (
                    f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                conn.sendall(head.encode() + body)
            except OSError as exc:
                log.debug("metrics scrape failed: %s", exc)

    def close(self) -> None:
        self.listener.close()

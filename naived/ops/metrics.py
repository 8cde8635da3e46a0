"""Prometheus text metrics on a loopback port, served from a daemon's own poll loop.

No thread and no framework: the endpoint's sockets sit in the same poll loop as
the daemon's other sockets, and no call on a client's socket ever waits (see
`MetricsEndpoint`): the loop is the daemon's, a scraper must not hold it.
`Metrics` builds the text exposition format (version 0.0.4).
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from naived.ops.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DROP_REASONS = ("timeout", "too_large", "too_many")
ACCEPTS_PER_TURN = 16


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


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    deadline: float  # monotonic: the whole exchange (request in, response out) ends by then
    request: bytes = b""
    response: memoryview | None = None  # set once the request is complete: what is left to send


class MetricsEndpoint:
    """`GET /metrics` on 127.0.0.1:<port>, served by its owner's loop without ever waiting on a client.

    The owner watches one descriptor, `fd` (an epoll set holding the listener and every
    client socket), calls `serve()` when it is readable and once its `next_deadline()` has
    passed. Every socket is non-blocking; a client's progress (reading its request, writing
    the response) is made only as far as the kernel allows at that moment. So a client that
    trickles its request, or never reads the response, costs the loop nothing but its slot:
    it is dropped at its deadline (`deadline_seconds` from accept, for the whole exchange),
    when its request grows past `max_request_bytes`, or when `max_clients` are connected and
    a new one comes (the oldest goes: a scraper that just connected is the likely honest one).
    Every drop is counted (`naive_metrics_dropped_total{reason}`, appended to each scrape) and
    logged at a bounded rate."""

    def __init__(self, port: int, collect: Callable[[], str], deadline_seconds: float = 2.0,
                 max_request_bytes: int = 8192, max_clients: int = 16) -> None:
        self.collect = collect
        self.deadline_seconds = deadline_seconds
        self.max_request_bytes = max_request_bytes
        self.max_clients = max_clients
        self.listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self._events = select.epoll()
        self._events.register(self.listener.fileno(), select.EPOLLIN)
        self._clients: dict[int, _Client] = {}  # by fd, oldest first (dicts keep insertion order)
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._log = RateLimitedLog(log, "metrics", "clients dropped or not accepted")

    @property
    def fd(self) -> int:
        return self._events.fileno()

    def next_deadline(self) -> float | None:
        """Monotonic time by which `serve` must run even if nothing is readable: the oldest client's end."""
        return next(iter(self._clients.values())).deadline if self._clients else None

    def tick(self, now: float) -> None:
        """For the owner's loop, every turn: drop the clients whose deadline passed while nothing was readable."""
        deadline = self.next_deadline()
        if deadline is not None and now >= deadline:
            self.serve()

    def serve(self) -> None:
        """Make what progress is possible now without waiting; drop the clients past their deadline."""
        for fd, mask in self._events.poll(0, ACCEPTS_PER_TURN + len(self._clients)):
            if fd == self.listener.fileno():
                self._accept()
            elif (client := self._clients.get(fd)) is not None:
                if client.response is None:
                    self._read(client, mask)
                else:
                    self._write(client)
        now = time.monotonic()
        for client in [c for c in self._clients.values() if c.deadline <= now]:
            self._drop(client, "timeout")

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):  # bounded: a connection flood cannot keep the loop here
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the client waits in the backlog
                self._log.warning("accept", "cannot accept: %s", exc)
                return
            sock.setblocking(False)
            if len(self._clients) >= self.max_clients:
                self._drop(next(iter(self._clients.values())), "too_many")
            self._clients[sock.fileno()] = _Client(sock, time.monotonic() + self.deadline_seconds)
            self._events.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)

    def _read(self, client: _Client, mask: int) -> None:
        try:
            chunk = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(client)  # gone before asking: nothing to count
            return
        client.request += chunk
        if b"\r\n\r\n" not in client.request:
            if len(client.request) >= self.max_request_bytes:
                self._drop(client, "too_large")
            return
        path = client.request.split(b" ", 2)[1] if client.request.count(b" ") >= 2 else b""
        if path.split(b"?")[0] == b"/metrics":
            body, status = (self.collect() + self._own_metrics()).encode(), "200 OK"
        else:
            body, status = b"not found: try /metrics\n", "404 Not Found"
        head = (f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        client.response = memoryview(head.encode() + body)
        self._events.modify(client.sock.fileno(), select.EPOLLOUT)
        self._write(client)

    def _write(self, client: _Client) -> None:
        assert client.response is not None
        try:
            sent = client.sock.send(client.response)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)  # the scraper went away: its loss
            return
        client.response = client.response[sent:]
        if not client.response:
            self._close(client)

    def _drop(self, client: _Client, reason: str) -> None:
        self.dropped[reason] += 1
        self._log.warning(reason, "dropped a client (%s: %d bytes of request in, %s)", reason, len(client.request),
                          "its response not taken" if client.response is not None else "no complete request")
        self._close(client)

    def _close(self, client: _Client) -> None:
        fd = client.sock.fileno()
        del self._clients[fd]
        self._events.unregister(fd)
        client.sock.close()

    def _own_metrics(self) -> str:
        m = Metrics()
        for reason, n in self.dropped.items():
            m.add("naive_metrics_dropped_total", "counter",
                  "metrics clients dropped: timeout (whole request past its deadline), too_large, too_many (oldest "
                  "dropped for a new one)", n, reason=reason)
        return m.render()

    def close(self) -> None:
        for client in list(self._clients.values()):
            self._close(client)
        self._events.close()
        self.listener.close()

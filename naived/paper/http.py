"""The paper exchange's HTTP/1.1 server: keep-alive connections, one thread each, behind a gate.

`Server` accepts, `Gate` bounds what any client can hold (connections, time, bytes: the REST
trust boundary), `Handler` reads each request in full under the gate's deadline and limits and
hands it to the application (`PaperExchange.handle`), which answers on it.
"""

from __future__ import annotations

import io
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from naived.core.config import Paper as PaperSettings
from naived.ops.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

# Binance documents no limits of its own here; a request to its API is a line and a few headers,
# parameters in the query or a small form body. These are nginx's usual buffer sizes.
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
DROP_REASONS = ("too_many", "evicted", "timeout", "head_too_large", "body_too_large", "malformed")
_BUSY_BODY = b'{"code":-1008,"msg":"Server is currently overloaded with other requests. Please try again in a few minutes."}'
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json;charset=UTF-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class Gate:
    """Every REST connection passes here: the one place that bounds what a client can hold.

    - At most `max_connections` at once (each is a thread). Past it, the connection idle the
      longest is closed to make room (a trader's client opens a new one when it needs it), or,
      when none is idle, the new one gets a 503 at once and is closed: never a new thread.
    - A kept-alive connection idle for `idle_seconds` is closed (the socket's timeout).
    - From its first byte, a request's head and body must arrive within `request_seconds`
      (`Handler` reads them under this deadline), and its response must leave within as much
      again: a client that trickles, or never reads, loses its connection at the deadline
      (`reap`, from the accepting thread: shutdown() wakes the handler's blocked call).
    - The head is at most MAX_HEAD_BYTES (431), a body at most MAX_BODY_BYTES (413), a
      Content-Length must be a number and no Transfer-Encoding is taken (400, 501).
    Each refusal is counted (GET /paper/usage: `dropped`) and logged at a bounded rate."""

    def __init__(self, paper: PaperSettings) -> None:
        self.max_connections = paper.max_connections
        self.idle_seconds = paper.idle_seconds
        self.request_seconds = paper.request_seconds
        self._lock = threading.Lock()
        self._active = 0
        # By connection: waiting for a request since (monotonic, oldest first), or reading a request
        # or writing its response until (its deadline).
        self._idle: dict[socket.socket, float] = {}
        self._deadlines: dict[socket.socket, float] = {}
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._log = RateLimitedLog(log, "paper exchange", "requests refused or dropped")

    def admit(self, sock: socket.socket) -> bool:
        """From the accepting thread, before a handler thread exists for `sock`."""
        with self._lock:
            if self._active >= self.max_connections:
                if not self._idle:
                    self._count("too_many", "refused a connection: %d open, none idle", self._active)
                    try:
                        sock.send(BUSY, socket.MSG_DONTWAIT)
                    except OSError:
                        pass
                    return False
                oldest = next(iter(self._idle))
                del self._idle[oldest]
                self._count("evicted", "closed the connection idle the longest: %d open", self._active)
                _shut(oldest)  # its thread ends on its own; counted out when it does
            self._active += 1
            return True

    def leave(self, conn: socket.socket) -> None:
        with self._lock:
            self._active -= 1
            self._idle.pop(conn, None)
            self._deadlines.pop(conn, None)

    def idle(self, conn: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(conn, None)
            self._idle[conn] = time.monotonic()

    def busy(self, conn: socket.socket) -> None:
        """A request's first byte came, or its response starts: the deadline runs from now."""
        with self._lock:
            self._idle.pop(conn, None)
            self._deadlines[conn] = time.monotonic() + self.request_seconds

    def unbounded(self, conn: socket.socket) -> None:
        """The request is in: the exchange works on it (a fault may hang it on purpose) unwatched."""
        with self._lock:
            self._deadlines.pop(conn, None)

    def reap(self) -> None:
        """Close the connections past their deadline (called ~10 times a second)."""
        now = time.monotonic()
        with self._lock:
            late = [conn for conn, at in self._deadlines.items() if at <= now]
            for conn in late:
                del self._deadlines[conn]
                self._count("timeout", "closed a connection past its %gs request deadline", self.request_seconds)
                _shut(conn)

    def refuse(self, reason: str, detail: str) -> None:
        with self._lock:
            self._count(reason, "refused a request: %s", detail)

    def _count(self, reason: str, message: str, *args: object) -> None:
        self.dropped[reason] += 1
        self._log.warning(reason, message, *args)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by its own thread


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a trader's session reuses one connection
    disable_nagle_algorithm = True  # with Nagle on, every keep-alive request waits ~40 ms for an ACK
    wbufsize = 64 * 1024  # headers and body leave in one write (flushed after each request)
    server: Server
    rfile: io.BufferedReader  # what StreamRequestHandler makes with the default rbufsize (-1): buffered, peekable
    received_ns = 0
    body = b""

    def setup(self) -> None:
        super().setup()
        self.gate = self.server.gate

    def handle_one_request(self) -> None:
        """The stdlib's, with the gate's deadlines and limits: the head and the body are read here,
        in full and within `request_seconds`, before any route sees the request."""
        gate, conn = self.gate, self.connection
        gate.idle(conn)
        self.connection.settimeout(gate.idle_seconds)  # each call on the socket; the gate bounds the whole
        try:
            if not self.rfile.peek(1):
                self.close_connection = True  # the client closed it
                return
            gate.busy(conn)
            self.received_ns = time.time_ns()
            if not self._read_request():
                return
            gate.unbounded(conn)
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method ({self.command!r})")
                return
            method()
            self.wfile.flush()
        except (TimeoutError, ConnectionError, ValueError, OSError):
            # Idle past its time, or shut down by the gate at its deadline (a closed file reads as ValueError)
            self.close_connection = True

    def _read_request(self) -> bool:
        """Request line, headers (at most MAX_HEAD_BYTES) and body (at most MAX_BODY_BYTES);
        False when refused (answered and closed) or cut short."""
        head = b""
        while not head.endswith((b"\r\n\r\n", b"\n\n")) or head in (b"\r\n", b"\n"):
            line = self.rfile.readline(MAX_HEAD_BYTES + 1 - len(head))
            if not line:
                self.close_connection = True
                return False
            head = line if head in (b"\r\n", b"\n") else head + line  # blank lines before a request are allowed
            if len(head) > MAX_HEAD_BYTES:
                self.requestline, self.request_version, self.command = "", "", ""  # as the stdlib's 414: unparsed
                return self._refuse("head_too_large", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                    f"a request head over {MAX_HEAD_BYTES} bytes")
        self.raw_requestline, rest = head.split(b"\n", 1)
        self.raw_requestline += b"\n"
        rfile, self.rfile = self.rfile, io.BytesIO(rest)  # type: ignore[assignment]  # for parse_request only; put back below
        try:
            parsed = self.parse_request()  # reads the headers from `rest`; answers a malformed head itself
        finally:
            self.rfile = rfile
        if not parsed:
            self.gate.refuse("malformed", "a malformed request head")
            return False
        if self.headers.get("Transfer-Encoding") is not None:
            return self._refuse("malformed", HTTPStatus.NOT_IMPLEMENTED, "Transfer-Encoding (Content-Length only)")
        length = self.headers.get("Content-Length") or "0"
        if not length.isdigit():
            return self._refuse("malformed", HTTPStatus.BAD_REQUEST, f"Content-Length {length[:20]!r}")
        if int(length) > MAX_BODY_BYTES:
            return self._refuse("body_too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                f"a body of {int(length)} bytes (at most {MAX_BODY_BYTES})")
        self.body = self.rfile.read(int(length)) if int(length) else b""
        if len(self.body) < int(length):
            self.close_connection = True
            return False
        return True

    def _refuse(self, reason: str, status: HTTPStatus, detail: str) -> bool:
        self.gate.refuse(reason, detail)
        self.close_connection = True
        self.send_error(status, detail)  # with Connection: close; the body is never read
        return False

    def end_headers(self) -> None:
        self.gate.busy(self.connection)  # the response leaves within the deadline too: a client that never reads is dropped
        super().end_headers()

    def do_GET(self) -> None:
        self.server.app(self, "GET")

    def do_POST(self) -> None:
        self.server.app(self, "POST")

    def do_DELETE(self) -> None:
        self.server.app(self, "DELETE")

    def do_PUT(self) -> None:
        self.server.app(self, "PUT")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # the exchange logs events (placed, filled, cancelled), not every request


class Server(ThreadingHTTPServer):
    allow_reuse_address = True  # restart on the same port right after a kill -9
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: Callable[[Handler, str], None], gate: Gate,
                 listener: socket.socket | None = None) -> None:
        """`app(request, method)` answers each request that passed the gate, on `request`."""
        self.app = app
        self.gate = gate
        super().__init__(address, Handler, bind_and_activate=listener is None)
        if listener is not None:
            # Bound and listening already (naived's root, before fork): serve on it as it is.
            self.socket.close()
            self.socket = listener
            self.server_address = listener.getsockname()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.gate.admit(request):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the connection's thread: the handler runs, then the gate counts the connection out."""
        try:
            super().finish_request(request, client_address)
        finally:
            self.gate.leave(request)

    def service_actions(self) -> None:
        self.gate.reap()  # serve_forever calls this between its polls (every poll_interval)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that died mid-request (a trader killed with -9) is not the exchange's error:
        one line, not socketserver's traceback on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            log.info("client %s:%d went away: %s", *client_address[:2], exc)
            return
        log.exception("request from %s:%d failed", *client_address[:2])

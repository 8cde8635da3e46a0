"""The web observer's server: the page, its files, the status as JSON and live over a websocket.

One asyncio `websockets` server on the listening socket the root bound (the library the paper
exchange's user data stream already uses; no other dependency). Its `process_request` answers the
plain HTTP requests, so one port serves everything, read-only:

- `GET /`: the page; `GET /static/<file>`: its files, from the package (read once at start);
- `GET /api/v1/status`: the latest status, as `naivectl status --json` prints it (TreeStatus); 503
  with a JSON error until the root's first status arrived;
- `GET /api/v1/live` (websocket): the latest status at once, then each new one, as
  `{"type": "status", "now": <server's wall clock>, "status": {...}}`; clients send nothing.
- `GET /api/v1/symbols/<SYMBOL>/series`: the symbol's chart as this process kept it from the
  statuses (`series.py`): `{symbol, base, quote, points: [[t, price, equity], ...], fills: [...],
  resting: [...]}`; 400 for a malformed symbol, 404 for one not charted.

Limits and deadlines, as the paper exchange's listeners have them: at most MAX_CONNECTIONS
websockets (the next handshake gets 503), a handshake within OPEN_SECONDS, incoming messages of
MAX_MESSAGE_BYTES at most, pings every PING_INTERVAL (a client silent PING_TIMEOUT more is
closed). A new status is written to every client at once, without waiting for any (`broadcast`);
a client with more than WRITE_LIMIT bytes unread here is skipped and gets the latest status once it
has read them (`push`, also run every CATCH_UP_SECONDS): a stalled client holds at most its socket's
buffer (SEND_BUFFER) and one status beyond WRITE_LIMIT, and never delays the others nor the feed.
No compression: a status is written as it came, once per client, with no work per client.

Safe by default: every answer carries headers that keep the page from being framed or sniffed and
leak no referrer; there are no CORS headers; a websocket from a foreign `Origin` is refused, and on a
loopback address a request naming another `Host` (DNS rebinding) is refused. Only GET is served (405).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
from http import HTTPStatus
from pathlib import Path

import msgspec
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from naived.core.config import check_symbol
from naived.ops.ratelog import RateLimitedLog
from naived.web.series import Charts

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
LIVE, STATUS = "/api/v1/live", "/api/v1/status"
SERIES = re.compile(r"/api/v1/symbols/([^/]{1,64})/series")
MAX_CONNECTIONS = 64  # open websockets; the next handshake is answered 503
OPEN_SECONDS = 5.0  # from the connection to the end of its request (and handshake)
MAX_MESSAGE_BYTES = 1024  # clients send nothing but control frames (pongs, close)
PING_INTERVAL, PING_TIMEOUT = 20.0, 20.0
WRITE_LIMIT = 16 * 1024  # bytes a client may leave unread in this process before it is skipped
SEND_BUFFER = 32 * 1024  # SO_SNDBUF of every connection (the kernel doubles it), not autotuned up to megabytes
CATCH_UP_SECONDS = 0.5  # how often a skipped client is looked at again
SAFE_HEADERS = (
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml", ".json": "application/json", ".map": "application/json", ".png": "image/png",
    ".txt": "text/plain; charset=utf-8", "": "text/plain; charset=utf-8",  # LICENSE files
}
REFUSALS = ("method", "host", "origin", "too_many")


def load_static(directory: Path = STATIC) -> dict[str, tuple[bytes, str]]:
    """Every file under `directory` by its URL path (`/static/app.js`), with its content type; the
    page itself also at `/`. Read once: only these paths are ever served, so no request reaches a file
    by a path of its own making."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            kind = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
            files["/static/" + path.relative_to(directory).as_posix()] = (path.read_bytes(), kind)
    files["/"] = files["/static/index.html"]
    return files


def _hostname(host: str) -> str:
    """`127.0.0.1:8470` -> `127.0.0.1`, `[::1]:8470` -> `::1`."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def loopback_name(host: str) -> bool:
    name = _hostname(host).lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def response(status: HTTPStatus, body: bytes, content_type: str, *extra: tuple[str, str]) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))), ("Connection", "close"),
                       *extra])
    return Response(status.value, status.phrase, headers, body)


def error(status: HTTPStatus, message: str, *extra: tuple[str, str]) -> Response:
    return response(status, json.dumps({"error": message}).encode() + b"\n", "application/json",
                    ("Cache-Control", "no-store"), *extra)


class Observer:
    """The latest status and the websocket clients it goes to. On the server's loop only."""

    def __init__(self, files: dict[str, tuple[bytes, str]], loopback: bool) -> None:
        self.files = files
        self.loopback = loopback  # bound to a loopback address: only loopback names are valid Hosts
        self.status: bytes | None = None
        self.version = 0  # of the status, counted by this process
        self.clients: dict[ServerConnection, int] = {}  # open websockets -> the version they were last sent
        self.refused = dict.fromkeys(REFUSALS, 0)
        self._log = RateLimitedLog(log, "web observer", "requests refused")
        self.charts = Charts()
        self._charts_log = RateLimitedLog(log, "web observer", "statuses the charts could not read")

    def _refuse(self, reason: str, answer: Response, message: str, *args: object) -> Response:
        self.refused[reason] += 1
        self._log.warning(reason, message, *args)
        return answer

    # --- the status -----------------------------------------------------------------------

    def on_status(self, raw: bytes) -> None:
        """A new status from the root (feed.py): into the charts, then to every client that can take it now."""
        try:
            self.charts.take(raw, time.time())
        except (msgspec.DecodeError, ValueError, ArithmeticError) as exc:  # the charts go without it, the page not
            self._charts_log.warning("status", "a status the charts could not read: %s", str(exc)[:200])
        self.status = raw
        self.version += 1
        self.push()

    def push(self) -> None:
        """The latest status to every client that has not had it and has read what it was sent
        before. One write per client, none awaited: a client that does not read costs a skip."""
        if self.status is None:
            return
        ready = [ws for ws, sent in self.clients.items()
                 if sent < self.version and ws.transport.get_write_buffer_size() <= WRITE_LIMIT]
        if not ready:
            return
        message = b'{"type":"status","now":%.3f,"status":%s}' % (time.time(), self.status)
        broadcast(ready, message, text=True)
        for ws in ready:
            self.clients[ws] = self.version

    async def catch_up(self) -> None:
        """Clients skipped for a full buffer get the latest status once they have read it down."""
        while True:
            await asyncio.sleep(CATCH_UP_SECONDS)
            self.push()

    # --- requests -----------------------------------------------------------------------

    def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """Every request's answer; None lets a websocket handshake on /api/v1/live go on."""
        if request.method != "GET":
            return self._refuse("method", error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only: GET only", ("Allow", "GET")),
                                "refused a %s request", request.method[:16])
        host = request.headers.get("Host", "")
        if self.loopback and not loopback_name(host):
            return self._refuse("host", error(HTTPStatus.FORBIDDEN, "this server answers to loopback names only"),
                                "refused a request for Host %r (served on loopback only)", host[:64])
        path = request.path.partition("?")[0]
        if path == LIVE:
            origin = request.headers.get("Origin")
            if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
                return self._refuse("origin", error(HTTPStatus.FORBIDDEN, "cross-origin websocket refused"),
                                    "refused a websocket from origin %r", origin[:64])
            if len(self.clients) >= MAX_CONNECTIONS:
                return self._refuse("too_many", error(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections"),
                                    "refused a websocket: %d open", len(self.clients))
            return None
        if path == STATUS:
            if self.status is None:
                return error(HTTPStatus.SERVICE_UNAVAILABLE, "no status from naived yet; try again in a moment")
            return response(HTTPStatus.OK, self.status, "application/json", ("Cache-Control", "no-store"))
        if (asked := SERIES.fullmatch(path)) is not None:
            return self.series(asked[1])
        found = self.files.get(path)
        if found is None:
            return error(HTTPStatus.NOT_FOUND, f"no such page: {path[:100]}")
        body, kind = found
        return response(HTTPStatus.OK, body, kind, ("Cache-Control", "no-cache"))

    def series(self, name: str) -> Response:
        try:
            symbol = check_symbol(name)  # as naivectl's symbols are: upper-cased, letters and digits
        except ValueError as exc:
            return error(HTTPStatus.BAD_REQUEST, str(exc))
        body = self.charts.answer(symbol)
        if body is None:
            why = ("more symbols than the observer charts" if symbol in self.charts.left_out
                   else "not in the tree's status since the observer started")
            return error(HTTPStatus.NOT_FOUND, f"no series for {symbol}: {why}")
        return response(HTTPStatus.OK, body, "application/json", ("Cache-Control", "no-store"))

    def process_response(self, ws: ServerConnection, request: Request, answer: Response) -> None:
        """The safe headers on every answer: the page, the API, errors and the websocket's 101."""
        for name, value in SAFE_HEADERS:
            answer.headers[name] = value

    async def serve(self, ws: ServerConnection) -> None:
        """One websocket: the latest status at once, then every new one (`push`)."""
        self.clients[ws] = 0
        try:
            self.push()
            async for _ in ws:
                pass  # nothing a client says is used (the size limit bounds what it may send)
        except ConnectionClosed:
            pass
        finally:
            del self.clients[ws]

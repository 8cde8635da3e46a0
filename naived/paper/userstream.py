"""The paper exchange's user data stream: Binance's listenKey stream of the paper account.

Binance's `user-data-stream.md` is the specification:

- `POST /api/v3/userDataStream` (API key, no signature) answers `{"listenKey": ...}`; the
  account has one active key, so a POST while one is active returns it and extends it.
  `PUT` extends a key's validity to 60 minutes from now (`paper.listen_key_seconds`),
  `DELETE` closes it. An unknown key is -1125 "This listenKey does not exist.".
- `ws://<paper.host>:<paper.ws_port>/ws/<listenKey>` pushes, for every committed order change
  of the book (`PaperBook.listeners`), an `executionReport` with Binance's field set, then an
  `outboundAccountPosition` with the balances that change moved; a change that places or ends an
  OCO (`oco.py`) has that list's `listStatus` between the two. A key that expires gets
  `listenKeyExpired` and its connections are closed; a DELETE closes them without it.
  A connection lasts at most `paper.user_stream_connection_seconds` (Binance: 24 hours).
- Fault: `paper.faults.user_stream_drop`, a probability per event and connection of dropping
  the connection (no close frame) instead of delivering the event: the event is lost for that
  connection, as on a real network failure.

The market data streams' paths on the same port (`/ws`, `/stream`, `/ws/<name>` not shaped as a key)
are handed to `marketstream.MarketStreams` (`UserStreamServer.market`), which shares `Outbox`.

Deliberate differences: only `/ws/<listenKey>` (not the combined `/stream?streams=`), without
the `timeUnit` URL parameter (times are in ms; a URL with a query is an unknown key); a
handshake with an unknown key is refused with HTTP 400 and -1125 (Binance's behaviour there
is not documented); `REJECTED` executionReports never occur (Binance sends them only for
cancel-replace, which is not implemented: a rejected order request is an error answer and
no event, as on Binance).

Threads: the websocket server runs its own asyncio loop in one thread. The book hands over
its changes under its lock, in commit order (`publish` only queues them onto the loop), and
the HTTP threads create and close keys through the same thread-safe `ListenKeys`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import socket
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypedDict

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from naived.core.config import Faults
from naived.ops.ratelog import RateLimitedLog
from naived.paper.book import Change, OrderList, PaperOrder
from naived.paper.shapes import fmt, now_ms
from naived.paper.stops import TAKERS

if TYPE_CHECKING:
    from naived.paper.marketstream import MarketStreams

log = logging.getLogger(__name__)


class BinanceError(TypedDict):
    """A Binance error answer's body."""

    code: int
    msg: str


KEY_ALPHABET = string.ascii_letters + string.digits
KEY_LENGTH = 60  # Binance's listen keys are 60 letters and digits
UNKNOWN_KEY: BinanceError = {"code": -1125, "msg": "This listenKey does not exist."}
PING_INTERVAL, PING_TIMEOUT = 20.0, 60.0  # Binance pings every 20 s and drops a client silent for a minute
# Limits no client may pass (issue 20); Binance documents none for this stream but the ping rule.
# A client sends nothing but control frames (pongs, close): a message larger than this is
# refused with close code 1009. A handshake must be done within OPEN_SECONDS of the connection.
MAX_MESSAGE_BYTES = 4096
OPEN_SECONDS = 5.0
MAX_CONNECTIONS = 64  # open connections; the next handshake is answered 503
MAX_QUEUED = 10_000  # events waiting for a connection that does not read: then it is dropped
DROP_REASONS = ("handshake_timeout", "too_many", "message_too_large", "slow_reader")
CLOSE, ABORT = object(), object()  # queue sentinels: close normally / drop the connection


async def hold(ws: ServerConnection, tasks: set[asyncio.Task[Any]], seconds: float) -> tuple[bool, bool]:
    """Serve a connection until one of `tasks` ends or `seconds` pass (Binance: a connection is only
    valid for 24 hours; then it is closed, 1000); the tasks are cancelled on the way out. Returns
    (closed for its age, closed for a message too large)."""
    try:
        done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            await ws.close(1000, "connection lifetime reached")
        sent = ws.protocol.close_sent
        return not done, sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG
    finally:
        for task in tasks:
            task.cancel()


class ListenKeys:
    """Listen keys and their expiry (monotonic). Shared by the HTTP threads and the stream loop."""

    def __init__(self, validity: float, on_change: Callable[[], None] = lambda: None) -> None:
        self.validity = validity
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()
        self._on_change = on_change  # wakes the expiry timer

    def create(self) -> str:
        """Binance: the account's active key, extended, or a new one."""
        now = time.monotonic()
        with self._lock:
            key = next((k for k, at in self._expiry.items() if at > now), None)
            if key is None:
                key = "".join(secrets.choice(KEY_ALPHABET) for _ in range(KEY_LENGTH))
            self._expiry[key] = now + self.validity
        self._on_change()
        return key

    def keepalive(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._expiry.get(key, 0.0) <= now:
                return False
            self._expiry[key] = now + self.validity
            return True

    def close(self, key: str) -> bool:
        with self._lock:
            return self._expiry.pop(key, 0.0) > time.monotonic()

    def valid(self, key: str) -> bool:
        with self._lock:
            return self._expiry.get(key, 0.0) > time.monotonic()

    def take_expired(self) -> tuple[list[str], float | None]:
        """Forget the keys past their expiry; returns them and the next expiry (monotonic)."""
        now = time.monotonic()
        with self._lock:
            expired = [k for k, at in self._expiry.items() if at <= now]
            for key in expired:
                del self._expiry[key]
            return expired, min(self._expiry.values(), default=None)


# --- Binance's payloads -------------------------------------------------------------------------


def execution_report(change: Change, execution_id: int, event_ms: int) -> dict[str, Any]:
    """`executionReport` for one order change, with Binance's field set (and its conditional
    `W`, only once the order works on the book: a stop from its trigger, any other from its placement)."""
    o: PaperOrder = change.order
    f = change.fill
    canceled = change.execution == "CANCELED"
    return {
        "e": "executionReport", "E": event_ms, "s": o.symbol,
        # A cancel's report names the cancel request in `c` and the cancelled order in `C`.
        "c": change.cancel_id if canceled and change.cancel_id else o.client_order_id,
        "S": o.side, "o": o.type, "f": o.time_in_force, "q": fmt(o.orig_qty), "p": fmt(o.price),
        "P": fmt(o.stop_price), "F": fmt(Decimal(0)), "g": o.order_list_id,
        "C": o.client_order_id if canceled and change.cancel_id else "",
        "x": change.execution, "X": o.status, "r": "NONE", "i": o.order_id,
        "l": fmt(f.qty if f else Decimal(0)), "z": fmt(o.executed_qty), "L": fmt(f.price if f else Decimal(0)),
        "n": fmt(f.commission) if f else "0", "N": f.commission_asset if f else None,
        "T": change.time_ms, "t": f.trade_id if f else -1, "I": execution_id,
        "w": o.is_open and o.is_working and o.type not in TAKERS and o.time_in_force == "GTC",
        "m": f.is_maker if f else False,
        "M": False, "O": o.time_ms, "Z": fmt(o.cum_quote), "Y": fmt(f.price * f.qty if f else Decimal(0)),
        "Q": fmt(o.orig_quote_qty), "V": "NONE",
    } | ({"W": o.working_time} if o.is_working else {}) | ({"eR": change.expiry_reason} if change.expiry_reason else {})


def list_status(ol: OrderList, legs: list[PaperOrder], time_ms: int, event_ms: int) -> dict[str, Any]:
    """`listStatus`: an order list placed (EXEC_STARTED / EXECUTING) or ended (ALL_DONE)."""
    return {"e": "listStatus", "E": event_ms, "s": ol.symbol, "g": ol.order_list_id, "c": "OCO",
            "l": "EXEC_STARTED" if ol.is_open else "ALL_DONE", "L": ol.status, "r": "NONE",
            "C": ol.list_client_order_id, "T": time_ms,
            "O": [{"s": o.symbol, "i": o.order_id, "c": o.client_order_id} for o in legs]}


def account_position(change: Change, event_ms: int) -> dict[str, Any]:
    return {"e": "outboundAccountPosition", "E": event_ms, "u": change.time_ms,
            "B": [{"a": a, "f": fmt(b.free), "l": fmt(b.locked)} for a, b in change.balances.items()]}


# --- the websocket server -----------------------------------------------------------------------


@dataclass(eq=False)
class Outbox:
    """One websocket connection's messages waiting to be sent (shared with `marketstream`): on
    the stream's loop only. A connection that does not read is dropped, it never grows the process."""

    ws: ServerConnection
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    dead: bool = False  # closing: nothing more is queued

    def put(self, item: Any) -> bool:
        """Queue a message (or CLOSE / ABORT); False when the connection was dropped for MAX_QUEUED unread."""
        if self.dead:
            return True
        if self.queue.qsize() >= MAX_QUEUED:  # it does not read what it is sent: it must not grow the process
            self.ws.transport.abort()
            self.dead = True
            return False
        self.queue.put_nowait(item)
        self.dead = item is CLOSE or item is ABORT
        return True

    async def drain(self) -> None:
        """One writer per connection: messages leave in the order they were queued."""
        try:
            while True:
                item = await self.queue.get()
                if item is ABORT:
                    self.ws.transport.abort()
                    return
                if item is CLOSE:
                    await self.ws.close(1000)
                    return
                await self.ws.send(item)
        except ConnectionClosed:
            return


@dataclass(eq=False)
class _Connection(Outbox):
    key: str = ""


class UserStreamServer(threading.Thread):
    """Serves `/ws/<listenKey>` on a listening socket, in its own asyncio loop."""

    def __init__(self, listener: socket.socket, validity: float, connection_seconds: float,
                 faults: Callable[[], tuple[Faults, Any]]) -> None:
        super().__init__(name="user-stream", daemon=True)
        self.loop = asyncio.new_event_loop()
        self.keys = ListenKeys(validity, self._keys_changed)
        self._listener = listener
        self._connection_seconds = connection_seconds
        self._faults = faults  # (faults, their RNG for stream events): replaced by POST /paper/faults
        self._connections: set[_Connection] = set()
        self._wake: asyncio.Event | None = None
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self._server: Server | None = None
        self.address = listener.getsockname()[:2]
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)  # read by GET /paper/usage
        self._log = RateLimitedLog(log, "user data stream", "clients refused or dropped")
        # Binance's market streams on the same port (`marketstream.MarketStreams`): the paths it claims go to it.
        self.market: MarketStreams | None = None

    def _drop(self, reason: str, message: str, *args: object) -> None:
        """Count and log (at a bounded rate) a client refused or dropped. On the stream's loop only."""
        self.dropped[reason] += 1
        self._log.warning(reason, message, *args)

    # --- from other threads ---------------------------------------------------------------

    def publish(self, changes: list[Change]) -> None:
        """A `PaperBook` listener: called under the book's lock, in commit order; only queues."""
        self.loop.call_soon_threadsafe(self._dispatch, changes)

    def closed_key(self, key: str) -> None:
        """DELETE: the key's connections close, without listenKeyExpired."""
        self.loop.call_soon_threadsafe(self._close_key, key, None)

    def stop(self) -> None:
        if self._ready.is_set() and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._shutdown)

    def _keys_changed(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._wake_up)

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        owner = self

        class Connection(ServerConnection):
            async def handshake(self, *args: Any, **kwargs: Any) -> None:
                try:
                    await super().handshake(*args, **kwargs)
                except asyncio.CancelledError:  # open_timeout (or our own shutdown): no request in time
                    owner._drop("handshake_timeout", "no handshake within %gs; connection closed", OPEN_SECONDS)
                    raise

        async with serve(self._serve, sock=self._listener, process_request=self._handshake, create_connection=Connection,
                         open_timeout=OPEN_SECONDS, max_size=MAX_MESSAGE_BYTES,
                         ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT, close_timeout=2) as server:
            self._server = server
            self._ready.set()
            expiry = asyncio.create_task(self._expire())
            await self._stopped.wait()
            expiry.cancel()

    def _shutdown(self) -> None:
        if self.market is not None:
            self.market.shutdown()
        for conn in list(self._connections):
            self._enqueue(conn, CLOSE)
        self._stopped.set()

    def _handshake(self, ws: ServerConnection, request: Request) -> Response | None:
        if self.market is not None and self.market.handles(request.path):
            return self.market.handshake(ws, request)
        key = request.path.removeprefix("/ws/")
        if not request.path.startswith("/ws/") or not self.keys.valid(key):
            return ws.respond(HTTPStatus.BAD_REQUEST, msgspec.json.encode(UNKNOWN_KEY).decode())
        if len(self._connections) >= MAX_CONNECTIONS:
            self._drop("too_many", "refused a connection: %d open", len(self._connections))
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        assert ws.request is not None  # the handshake, done before a connection is served, read it
        if self.market is not None and self.market.handles(ws.request.path):
            await self.market.serve(ws)
            return
        conn = _Connection(ws, key=ws.request.path.removeprefix("/ws/"))
        self._connections.add(conn)
        log.info("user data stream: connection from %s:%d", *ws.remote_address[:2])
        writer = asyncio.create_task(conn.drain())
        closed = asyncio.create_task(ws.wait_closed())  # by the client, a ping timeout, or a message too large
        try:
            aged, too_big = await hold(ws, {writer, closed}, self._connection_seconds)
            if aged:
                log.info("user data stream: connection from %s:%d reached its %gs limit", *ws.remote_address[:2],
                         self._connection_seconds)
            if too_big:
                self._drop("message_too_large", "closed a connection that sent a message over %d bytes", MAX_MESSAGE_BYTES)
        finally:
            conn.dead = True
            self._connections.discard(conn)

    def _enqueue(self, conn: _Connection, item: Any) -> None:
        if not conn.put(item):
            self._drop("slow_reader", "dropped a connection with %d events unread", MAX_QUEUED)

    def _dispatch(self, changes: list[Change]) -> None:
        live = [c for c in self._connections if not c.dead and self.keys.valid(c.key)]
        if not live:
            return
        faults, rng = self._faults()
        for change in changes:
            now = now_ms()
            events = [msgspec.json.encode(execution_report(change, next(self._ids), now)).decode()]
            if change.order_list is not None:
                events.append(msgspec.json.encode(list_status(change.order_list, change.legs, change.time_ms, now)).decode())
            if change.balances:
                events.append(msgspec.json.encode(account_position(change, now)).decode())
            for event in events:
                for conn in live:
                    if conn.dead:
                        continue
                    if faults.user_stream_drop and rng.random() < faults.user_stream_drop:
                        log.warning("fault: user data stream connection from %s:%d dropped", *conn.ws.remote_address[:2])
                        self._enqueue(conn, ABORT)
                    else:
                        self._enqueue(conn, event)

    def _close_key(self, key: str, expired_event: str | None) -> None:
        for conn in list(self._connections):
            if conn.key == key:
                if expired_event is not None:
                    self._enqueue(conn, expired_event)
                self._enqueue(conn, CLOSE)

    async def _expire(self) -> None:
        """Keys past their validity: listenKeyExpired to their connections, then close them."""
        assert self._wake is not None
        while True:
            expired, next_at = self.keys.take_expired()
            for key in expired:
                log.info("user data stream: a listen key expired")
                event = msgspec.json.encode({"e": "listenKeyExpired", "E": str(now_ms()), "listenKey": key}).decode()
                self._close_key(key, event)
            self._wake.clear()
            timeout = None if next_at is None else max(0.0, next_at - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

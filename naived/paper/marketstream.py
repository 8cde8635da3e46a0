"""The paper exchange's market data streams: Binance's raw and combined streams of its trades.

Binance's `web-socket-streams.md` is the specification. On the user data stream's port
(`[paper] ws_port`; `userstream.UserStreamServer` hands over the paths claimed here):

- `/ws/<stream>[/<stream>...]` raw streams, `/stream?streams=<stream>/<stream>` combined ones
  (each message wrapped `{"stream": <name>, "data": <payload>}`), and `/ws` or `/stream` alone
  for a connection that subscribes later. Stream names, symbols in lower case:
  `<symbol>@trade` (e, E, s, t, p, q, T, m, M), `<symbol>@bookTicker` (u, s, b, B, a, A) and
  `<symbol>@kline_<interval>` (e, E, s, k{t, T, s, i, f, L, o, c, h, l, v, n, x, q, V, Q, B}).
- Live methods, one JSON object per message: SUBSCRIBE / UNSUBSCRIBE (`params`: stream names)
  answer `{"result": null, "id": <id>}`, LIST_SUBSCRIPTIONS the names, SET_PROPERTY /
  GET_PROPERTY the `combined` property; an error is `{"error": {"code", "msg"}, "id": <id>}`
  with Binance's codes (0 unknown property, 1 not a Boolean, 2 invalid request, 3 invalid JSON).
  `id`: a 64-bit signed integer, an alphanumeric string of at most 36, or null.
- Limits as Binance's: 1024 streams a connection, 5 incoming messages a second (the 6th within
  a second closes the connection, code 1008), a connection lasts 24 hours
  (`paper.user_stream_connection_seconds`), a ping every 20 s and a minute to answer it.
  A client that does not read is dropped at `MAX_QUEUED` unsent messages: the feed thread only
  queues onto the loop, so no client ever slows the paper exchange.

Where the data comes from: every trade the trade feed accepts (`feed.TradeFeed.trade_listeners`,
after the book has matched it). The paper book has no depth: the book ticker's bid and ask are
both the last trade's price, their quantities its quantity, `u` its trade id. Kline rows come
from a `KlineSource` (the candles the exchange builds from the same trades): the open kline of
each subscribed (symbol, interval) is pushed at most every second for `1s`, every 2 s for the
others when trades changed it, and once more, `x` true, when its close time has passed.
Subscribing to a symbol's stream subscribes the feed to its trades, as exchangeInfo does.

A `/ws/<name>` whose names have no `@` (ccxt.pro opens `/ws/0`, `/ws/1`... and SUBSCRIBEs
there, and Binance accepts those) opens a connection with nothing subscribed; only a name shaped
as a listen key (60 letters and digits) stays the user data stream's.

Deliberate differences: a handshake naming an invalid stream is refused with HTTP 400 and
`{"code": 2, "msg": "Invalid request: invalid stream"}` (Binance's handshake answer is not
documented), a URL over 8 KiB with 414 (Binance: about 8000 characters), so
more streams are subscribed by SUBSCRIBE; the `timeUnit` URL parameter is ignored (times are in ms); the
incoming-message limit counts data messages, not ping/pong frames; SUBSCRIBE past 1024 streams
is error 2 "Invalid request: too many streams" (undocumented at Binance); a kline's `f`/`L` are
the first and last trade ids this stream saw in it (-1 when it saw none: candles from history);
trades given by `POST /paper/trade` are not streamed (no subscriber of the public stream sees them).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from naived.core.messages import TradeEvent
from naived.core.symbols import table
from naived.ops.ratelog import RateLimitedLog
from naived.paper.shapes import now_ms
from naived.paper.userstream import CLOSE, KEY_ALPHABET, KEY_LENGTH, MAX_QUEUED, Outbox, hold

log = logging.getLogger(__name__)

# Binance's kline intervals (web-socket-streams.md).
INTERVALS = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")
MAX_STREAMS = 1024  # a connection's streams
MAX_INCOMING_PER_SECOND = 5  # Binance: a connection that sends more is disconnected
MAX_REQUEST_BYTES = 64 * 1024  # a SUBSCRIBE of 1024 streams fits (the user stream's 4 KiB would not)
MAX_CONNECTIONS = 256  # open market connections; the next handshake is answered 503
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
DROP_REASONS = ("too_many", "too_many_messages", "message_too_large", "slow_reader")
_ID = re.compile(r"[A-Za-z0-9]{1,36}")
_STREAM = re.compile(r"([a-z0-9]+)@(trade|bookTicker|kline_(\w+))")
INVALID_STREAM = "Invalid request: invalid stream"
_LISTEN_KEY = re.compile(f"[{KEY_ALPHABET}]{{{KEY_LENGTH}}}")

# (SYMBOL, interval) -> Binance's kline row of the open candle ([open time, open, high, low, close,
# volume, close time, quote volume, trades, taker buy base, taker buy quote, ignore]), or None.
KlineSource = Callable[[str, str], list[Any] | None]


class RequestError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code, self.msg = code, msg


@dataclass(eq=False)
class _Connection(Outbox):
    combined: bool = False
    streams: dict[str, None] = field(default_factory=dict)  # in subscription order (LIST_SUBSCRIPTIONS)
    received: deque[float] = field(default_factory=deque)  # monotonic times of the last messages in


@dataclass
class _Kline:
    """What a kline stream pushed and has to push, for one (symbol, interval)."""

    row: list[Any] | None = None
    first_id: int = -1
    last_id: int = -1
    dirty: bool = False  # changed since last pushed
    closed_sent: bool = False


def kline_payload(symbol: str, interval: str, k: _Kline, closed: bool, event_ms: int) -> dict[str, Any]:
    row = k.row
    assert row is not None
    return {"e": "kline", "E": event_ms, "s": symbol, "k": {
        "t": row[0], "T": row[6], "s": symbol, "i": interval, "f": k.first_id, "L": k.last_id,
        "o": row[1], "c": row[4], "h": row[2], "l": row[3], "v": row[5], "n": row[8], "x": closed,
        "q": row[7], "V": row[9], "Q": row[10], "B": "0"}}


class MarketStreams:
    """Binance's market streams on the user stream's server and loop (`UserStreamServer.market`).
    Everything runs on that loop but `on_trade`, which the feed thread calls."""

    def __init__(self, loop: asyncio.AbstractEventLoop, want: Callable[[str], None],
                 kline_source: KlineSource | None = None, connection_seconds: float = 86400.0) -> None:
        """`want`: subscribe the feed to a symbol's trades; `kline_source`: without one, kline
        streams are invalid streams."""
        self._loop = loop
        self._want = want
        self._kline_source = kline_source
        self._connection_seconds = connection_seconds
        self._connections: set[_Connection] = set()
        self._subscribers: dict[str, set[_Connection]] = {}  # stream name -> its connections
        self._klines: dict[str, dict[str, _Kline]] = {}  # SYMBOL -> interval -> state
        # Symbols someone subscribed to, read by the feed thread: replaced whole, never mutated.
        self._watched: frozenset[str] = frozenset()
        self._ticker: asyncio.Task[None] | None = None
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)  # read by GET /paper/usage
        self._log = RateLimitedLog(log, "market stream", "clients refused or dropped")

    # --- from the feed thread ------------------------------------------------------------------

    def on_trade(self, event: TradeEvent) -> None:
        """A `TradeFeed` trade listener: queues the trade onto the loop if anyone follows its symbol."""
        if event.s in self._watched:
            try:
                self._loop.call_soon_threadsafe(self._dispatch, event)
            except RuntimeError:  # the loop closed: the exchange is stopping
                pass

    # --- routing (called by UserStreamServer on the loop) ----------------------------------------

    @staticmethod
    def handles(path: str) -> bool:
        """The paths of market streams: every `/ws/...` but one shaped as a listen key (60 letters
        and digits, no `@`), which is the user data stream's."""
        url = urlsplit(path)
        if url.path.startswith("/ws/") and url.path != "/ws/":
            return _LISTEN_KEY.fullmatch(url.path[len("/ws/"):]) is None
        return url.path in ("/ws", "/ws/", "/stream", "/stream/")

    def handshake(self, ws: ServerConnection, request: Request) -> Response | None:
        try:
            self._initial(request.path)
        except RequestError as exc:
            return ws.respond(HTTPStatus.BAD_REQUEST, msgspec.json.encode({"code": exc.code, "msg": exc.msg}).decode())
        if len(self._connections) >= MAX_CONNECTIONS:
            self._drop("too_many", "refused a connection: %d open", len(self._connections))
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        return None

    def _initial(self, path: str) -> tuple[bool, list[str]]:
        """(combined, streams) a URL names; RequestError if one is invalid."""
        url = urlsplit(path)
        if url.path.startswith("/stream"):
            names = [n for n in parse_qs(url.query).get("streams", [""])[0].split("/") if n]
            combined = True
        else:
            # A name without an `@` names no stream: ccxt opens `/ws/0`, `/ws/1`... and SUBSCRIBEs,
            # and Binance accepts that connection, so it is opened with nothing subscribed.
            names = [n for n in url.path[len("/ws/"):].split("/") if "@" in n]
            combined = False
        if len(names) > MAX_STREAMS:
            raise RequestError(2, INVALID_STREAM)
        for name in names:
            self._parse(name)
        return combined, names

    async def serve(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        combined, names = self._initial(ws.request.path)
        ws.protocol.max_message_size = MAX_REQUEST_BYTES
        conn = _Connection(ws, combined=combined)
        self._connections.add(conn)
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick())
        log.info("market stream: connection from %s:%d (%d streams)", *ws.remote_address[:2], len(names))
        self._subscribe(conn, names)
        writer = asyncio.create_task(conn.drain())
        reader = asyncio.create_task(self._read(conn))
        try:
            _, too_big = await hold(ws, {writer, reader}, self._connection_seconds)
            if too_big:
                self._drop("message_too_large", "closed a connection that sent a message over %d bytes", MAX_REQUEST_BYTES)
        finally:
            conn.dead = True
            self._unsubscribe(conn, list(conn.streams))
            self._connections.discard(conn)

    def shutdown(self) -> None:
        for conn in list(self._connections):
            conn.put(CLOSE)
        if self._ticker is not None:
            self._ticker.cancel()

    def _drop(self, reason: str, message: str, *args: object) -> None:
        self.dropped[reason] += 1
        self._log.warning(reason, message, *args)

    def _send(self, conn: _Connection, text: str) -> None:
        if not conn.put(text):
            self._drop("slow_reader", "dropped a connection with %d messages unread", MAX_QUEUED)

    # --- requests --------------------------------------------------------------------------------

    async def _read(self, conn: _Connection) -> None:
        try:
            async for message in conn.ws:
                now = time.monotonic()
                conn.received.append(now)
                while conn.received and conn.received[0] <= now - 1.0:
                    conn.received.popleft()
                if len(conn.received) > MAX_INCOMING_PER_SECOND:
                    self._drop("too_many_messages", "closed a connection over %d messages a second", MAX_INCOMING_PER_SECOND)
                    conn.dead = True
                    await conn.ws.close(CloseCode.POLICY_VIOLATION, "too many requests")
                    return
                self._send(conn, msgspec.json.encode(self._request(conn, message)).decode())
        except ConnectionClosed:
            return

    def _request(self, conn: _Connection, message: str | bytes) -> dict[str, Any]:
        try:
            request = msgspec.json.decode(message)
        except msgspec.DecodeError as exc:
            return {"error": {"code": 3, "msg": f"Invalid JSON: {exc}"}, "id": None}
        if not isinstance(request, dict):
            return {"error": {"code": 3, "msg": "Invalid JSON: expected an object"}, "id": None}
        request_id = request.get("id")
        if not (request_id is None or (isinstance(request_id, int) and not isinstance(request_id, bool)
                                       and -2**63 <= request_id < 2**63)
                or (isinstance(request_id, str) and _ID.fullmatch(request_id))):
            return {"error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}, "id": None}
        try:
            return {"result": self._method(conn, request), "id": request_id}
        except RequestError as exc:
            return {"error": {"code": exc.code, "msg": exc.msg}, "id": request_id}

    def _method(self, conn: _Connection, request: dict[str, Any]) -> Any:
        method, params = request.get("method"), request.get("params", [])
        if method is None:
            raise RequestError(2, "Invalid request: missing field `method`")
        if method not in METHODS:
            raise RequestError(2, f"Invalid request: unknown variant `{method}`, expected one of "
                               + ", ".join(f"`{m}`" for m in METHODS))
        if not isinstance(params, list):
            raise RequestError(2, "Invalid request: params must be an array")
        if method == "LIST_SUBSCRIPTIONS":
            return list(conn.streams)
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            return self._property(conn, method, params)
        if not all(isinstance(n, str) for n in params):
            raise RequestError(2, INVALID_STREAM)
        for name in params:
            self._parse(name)
        if method == "UNSUBSCRIBE":
            self._unsubscribe(conn, params)
        elif len(conn.streams.keys() | set(params)) > MAX_STREAMS:
            raise RequestError(2, "Invalid request: too many streams")
        else:
            self._subscribe(conn, params)
        return None

    @staticmethod
    def _property(conn: _Connection, method: str, params: list[Any]) -> Any:
        if not params or not isinstance(params[0], str):
            raise RequestError(2, "Invalid request: property name must be a string")
        if params[0] != "combined":
            raise RequestError(0, "Unknown property")
        if method == "GET_PROPERTY":
            return conn.combined
        if len(params) != 2 or not isinstance(params[1], bool):
            raise RequestError(1, "Invalid value type: expected Boolean")
        conn.combined = params[1]
        return None

    def _parse(self, name: str) -> tuple[str, str | None]:
        """(SYMBOL, kline interval or None) of a valid stream name; RequestError otherwise."""
        match = _STREAM.fullmatch(name)
        if match is None or match[1].upper() not in table():
            raise RequestError(2, INVALID_STREAM)
        interval = match[3]
        if interval is not None and (interval not in INTERVALS or self._kline_source is None):
            raise RequestError(2, INVALID_STREAM)
        return match[1].upper(), interval

    # --- subscriptions -----------------------------------------------------------------------------

    def _subscribe(self, conn: _Connection, names: list[str]) -> None:
        for name in names:
            symbol, interval = self._parse(name)
            conn.streams[name] = None
            self._subscribers.setdefault(name, set()).add(conn)
            if interval is not None and interval not in self._klines.get(symbol, {}):
                assert self._kline_source is not None  # _parse refuses kline streams without one
                row = self._kline_source(symbol, interval)  # pushed by the next tick, as Binance does
                self._klines.setdefault(symbol, {})[interval] = _Kline(row, dirty=row is not None)
            if symbol not in self._watched:
                self._want(symbol)
        self._watched = frozenset(n.split("@")[0].upper() for n in self._subscribers)

    def _unsubscribe(self, conn: _Connection, names: list[str]) -> None:
        for name in names:
            conn.streams.pop(name, None)
            subscribers = self._subscribers.get(name)
            if subscribers is None:
                continue
            subscribers.discard(conn)
            if not subscribers:
                del self._subscribers[name]
                symbol, interval = self._parse(name)
                if interval is not None:
                    self._klines[symbol].pop(interval, None)
        self._watched = frozenset(n.split("@")[0].upper() for n in self._subscribers)

    # --- pushing ---------------------------------------------------------------------------------

    def _push(self, name: str, data: dict[str, Any]) -> None:
        subscribers = self._subscribers.get(name)
        if not subscribers:
            return
        raw = msgspec.json.encode(data).decode()
        wrapped = f'{{"stream":"{name}","data":{raw}}}'  # stream names are [a-z0-9@_]: no escaping
        for conn in list(subscribers):
            self._send(conn, wrapped if conn.combined else raw)

    def _dispatch(self, event: TradeEvent) -> None:
        low, now = event.s.lower(), now_ms()
        self._push(f"{low}@trade", {"e": "trade", "E": now, "s": event.s, "t": event.t, "p": event.p, "q": event.q,
                                    "T": event.T, "m": event.m, "M": True})
        # The paper book's only level is the last trade: bid = ask = its price.
        self._push(f"{low}@bookTicker", {"u": event.t, "s": event.s, "b": event.p, "B": event.q, "a": event.p, "A": event.q})
        for interval, k in self._klines.get(event.s, {}).items():
            assert self._kline_source is not None
            row = self._kline_source(event.s, interval)
            if row is None:
                continue
            if k.row is not None and row[0] != k.row[0]:  # a new candle: the previous one closed
                if not k.closed_sent:
                    self._push(f"{low}@kline_{interval}", kline_payload(event.s, interval, k, True, now))
                k.first_id = event.t
            elif k.first_id < 0:
                k.first_id = event.t
            k.row, k.last_id, k.dirty, k.closed_sent = row, event.t, True, False

    async def _tick(self) -> None:
        """Kline pushes: the open candle every 1 s (`1s`) or 2 s when it changed; the closed one once."""
        count = 0
        while True:
            await asyncio.sleep(1.0)
            count += 1
            now = now_ms()
            for symbol, klines in self._klines.items():
                for interval, k in klines.items():
                    if k.row is None or k.closed_sent:
                        continue
                    name = f"{symbol.lower()}@kline_{interval}"
                    if now > k.row[6]:
                        self._push(name, kline_payload(symbol, interval, k, True, now))
                        k.closed_sent, k.dirty = True, False
                    elif k.dirty and (interval == "1s" or count % 2 == 0):
                        self._push(name, kline_payload(symbol, interval, k, False, now))
                        k.dirty = False

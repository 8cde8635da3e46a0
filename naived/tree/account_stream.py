"""The account-stream process: the account's user data stream -> ZeroMQ PUB, one per naived.

A permanent child of the root, for every exchange (the paper exchange serves the same
stream as Binance). It holds the account's listen key, so no other process needs one:

- the key is made with `POST /api/v3/userDataStream` and kept alive with `PUT` every
  `account_stream.keepalive_seconds` (Binance: valid 60 minutes after the last keep-alive);
  a key the exchange no longer knows (-1125, `listenKeyExpired`) is replaced by a new one;
- it connects to `<user stream url>/ws/<listenKey>`, reconnects with jittered exponential
  backoff, and opens a new connection before Binance's 24 h limit (`rollover_seconds`);
- each `executionReport` is published as `[EXECUTION_REPORT:<clientOrderId>, msgpack]`:
  client order ids are `<prefix>-<trader>-<cycle><leg>`, so each trader subscribes to
  `EXECUTION_REPORT:<prefix>-<trader>-` and receives exactly its own orders' reports;
- `[ACCOUNT_STREAM, StreamStatus(session, up)]` to every trader when that changes: `up` with
  a new session when a connection opens, `up=False` at once when it is lost. A session is one
  connection of one process: events between two sessions may be lost (Binance does not replay
  them), so a trader that sees a new session asks the exchange once about an order it waits on.
- No heartbeat wakes the traders: the PUB is an XPUB (verbose), so this process sees each
  trader's subscription arrive (a trader starting, or every trader reconnecting to a restarted
  account stream) and tells that trader alone the current status, on the trader's own topic
  `EXECUTION_REPORT:<prefix>-<trader>-`. A process that has not tried to connect yet says
  nothing: its first attempt's outcome goes to everyone.
- Its liveness is the root's business: every `heartbeat_seconds` (and before each call that may
  block, with that call's timeout) it pushes `StreamAlive(within)` to the root, which kills a
  process that stays silent longer (a hung stream is restarted, and its successor's new session
  makes the waiting traders ask).
- Each `outboundAccountPosition` (the balances an account update moved) is kept, the latest per
  asset, and goes to the root with every `StreamAlive` (at once after a push): the root shows
  the balances its reconcile worker read with those pushed since (naived/tree/account.py).

The listen key is a credential for the account's events: it is never logged, never in argv
(the process title is fixed), and the websocket URL that contains it is never printed.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import ssl
import time

import msgspec
import websocket
import zmq
from websocket import ABNF

from naived.core.config import SYMBOL_RE, Config
from naived.core.messages import (
    EXECUTION_TOPIC_PREFIX,
    STREAM_STATUS_TOPIC,
    ExecutionReport,
    PushedBalance,
    StreamAlive,
    StreamStatus,
    encode,
    execution_report_json_decoder,
    execution_topic,
)
from naived.exchange import binance as exchange
from naived.market.gate import plain_decimal
from naived.ops.ratelog import RateLimitedLog
from naived.tree.ipc import bind, close_bound

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 70.0  # Binance pings every 20 s: this much silence means a dead link
BACKOFF_BASE = 0.1
KEEPALIVE_RETRY = 60.0  # a failed keep-alive is tried again this soon (the key has most of its hour left)


class _Event(msgspec.Struct):
    e: str


_event_decoder = msgspec.json.Decoder(_Event)


class _Balance(msgspec.Struct):
    a: str  # asset
    f: str  # free
    l: str  # noqa: E741 - Binance's name: locked


class AccountPosition(msgspec.Struct):
    """Binance's `outboundAccountPosition`: the balances an account update moved."""

    e: str
    E: int  # event time, ms
    u: int  # time of the account update, ms
    B: list[_Balance]


_position_decoder = msgspec.json.Decoder(AccountPosition)
ASSET_RE = re.compile(r"[A-Z0-9]{1,20}")
MAX_ASSETS = 1000  # kept from the pushes; far above what one account holds, a bound on what the stream may make us keep

# Binance's order statuses (spot REST and user data stream); a report with another is not ours to guess at.
ORDER_STATUSES = frozenset({"NEW", "PARTIALLY_FILLED", "FILLED", "CANCELED", "PENDING_CANCEL", "REJECTED", "EXPIRED",
                            "EXPIRED_IN_MATCH"})
# Drop reasons of the stream's boundary (metrics label `reason`).
UNDECODABLE, BAD_SYMBOL, BAD_STATUS, BAD_AMOUNT, BAD_ORDER, BAD_ASSET = "decode", "symbol", "status", "amount", "order", "asset"


def report_problem(report: ExecutionReport) -> str | None:
    """Why an `executionReport` must not reach a trader (a drop reason), or None.

    The trader turns these fields into Decimals and into its state: a NaN, a negative or an
    exponent, an unknown status or a symbol that is no symbol would raise in it or mislead it.
    Dropping one costs nothing but time: the REST lookups by client order id stay the path at
    every (re)start, while the stream is down, and at the leader's reconcile."""
    if not SYMBOL_RE.fullmatch(report.s):
        return BAD_SYMBOL
    if report.X not in ORDER_STATUSES:
        return BAD_STATUS
    for amount in (report.q, report.p, report.l, report.z, report.L, report.n, report.Z):
        if plain_decimal(amount) is None:
            return BAD_AMOUNT
    if report.i < 0 or not report.client_order_id:
        return BAD_ORDER
    return None


def position_problem(position: AccountPosition, known: dict[str, PushedBalance]) -> str | None:
    """Why an `outboundAccountPosition` must not reach the root's account (a drop reason), or None:
    an asset that is no asset name (or one more than MAX_ASSETS), an amount not a plain decimal >= 0."""
    for b in position.B:
        if not ASSET_RE.fullmatch(b.a) or (b.a not in known and len(known) >= MAX_ASSETS):
            return BAD_ASSET
        if plain_decimal(b.f) is None or plain_decimal(b.l) is None:
            return BAD_AMOUNT
    return None


class KeyGone(Exception):
    """The exchange no longer knows the listen key: make a new one."""


class AccountStream:
    def __init__(self, config: Config) -> None:
        self.settings = config.account_stream
        self.url = config.user_stream_url
        self.ctx = zmq.Context()
        self.pub = bind(self.ctx, zmq.XPUB, config.account_stream_endpoint)
        self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, a restarted trader's too
        self.root = self.ctx.socket(zmq.PUSH)  # liveness, for the root's watchdog
        self.root.setsockopt(zmq.CONFLATE, 1)
        self.root.setsockopt(zmq.LINGER, 0)
        self.root.connect(config.reports_endpoint)
        self.call_timeout = config.exchange.timeout_seconds
        self.up: bool | None = None  # None: no connection tried yet by this process
        self.client = exchange.client_for(config)
        self.key: str | None = None
        self.keepalive_at = 0.0  # monotonic: when the key is due for a keep-alive
        self.connections = 0
        self.ws: websocket.WebSocket | None = None
        self.session = ""
        self.next_alive = 0.0  # monotonic
        self.dropped: dict[str, int] = {}  # events refused at the boundary, by reason (to the root, with StreamAlive)
        self.balances: dict[str, PushedBalance] = {}  # the latest push of each asset (to the root, with StreamAlive)
        self.drop_log = RateLimitedLog(log, "account stream", "events dropped")

    # --- the listen key ------------------------------------------------------------------

    def alive(self, within: float | None = None) -> None:
        """Tell the root this process turns: the next word comes within `within` seconds (a call
        that may block that long is next), else within a heartbeat."""
        heartbeat = self.settings.heartbeat_seconds
        try:
            alive = StreamAlive(heartbeat + (within or 0.0), dict(self.dropped), list(self.balances.values()))
            self.root.send(encode(alive), zmq.NOBLOCK)
        except zmq.Again:
            pass  # the root is restarting: the next one will do
        self.next_alive = time.monotonic() + heartbeat

    def listen_key(self) -> str:
        """A key the exchange knows: the current one after a keep-alive proves it, else a new one."""
        self.alive(2 * self.call_timeout)
        if self.key is not None:
            try:
                self.client.keepalive_listen_key(self.key)
            except exchange.BinanceError as exc:
                if exc.code != exchange.UNKNOWN_LISTEN_KEY:
                    raise
                log.info("account stream: the listen key is gone (%s); making a new one", exc.msg)
                self.key = None
        if self.key is None:
            self.key = self.client.new_listen_key()
            log.info("account stream: listen key made")
        self.keepalive_at = time.monotonic() + self.settings.keepalive_seconds
        return self.key

    def keep_alive(self) -> None:
        assert self.key is not None
        self.alive(self.call_timeout)
        try:
            self.client.keepalive_listen_key(self.key)
            self.keepalive_at = time.monotonic() + self.settings.keepalive_seconds
            log.info("account stream: listen key kept alive")
        except exchange.BinanceError as exc:
            if exc.code == exchange.UNKNOWN_LISTEN_KEY:
                self.key = None
                raise KeyGone(exc.msg) from None
            self._keepalive_failed(exc)
        except (exchange.OutcomeUnknown, exchange.RateLimited) as exc:
            self._keepalive_failed(exc)

    def _keepalive_failed(self, exc: Exception) -> None:
        log.warning("account stream: keep-alive failed (%s: %s); again in %gs", type(exc).__name__, exc, KEEPALIVE_RETRY)
        self.keepalive_at = time.monotonic() + KEEPALIVE_RETRY

    # --- connections ---------------------------------------------------------------------

    def connect(self) -> websocket.WebSocket:
        key = self.listen_key()
        self.alive(CONNECT_TIMEOUT)
        ws = websocket.create_connection(f"{self.url}/ws/{key}", timeout=CONNECT_TIMEOUT, enable_multithread=False)
        self.connections += 1
        self.session = f"{os.getpid()}.{self.connections}"
        log.info("account stream: connected to %s (session %s)", self.url, self.session)
        return ws

    def status(self, up: bool) -> None:
        """A change: said to every trader."""
        self.up = up
        self.pub.send_multipart([STREAM_STATUS_TOPIC, encode(StreamStatus(self.session, up))])

    def on_subscriptions(self) -> None:
        """A trader's subscription arrived: tell that trader alone the status, on its own topic."""
        while True:
            try:
                message = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            topic = message[1:]
            if message[:1] == b"\x01" and topic.startswith(EXECUTION_TOPIC_PREFIX) and self.up is not None:
                self.pub.send_multipart([topic, encode(StreamStatus(self.session, self.up))])

    def wait(self, seconds: float, ws: websocket.WebSocket | None = None) -> bool:
        """Up to `seconds`, answering subscriptions; True as soon as `ws` has data to read."""
        if ws is not None and isinstance(ws.sock, ssl.SSLSocket) and ws.sock.pending():
            return True  # decrypted already: the socket itself may never become readable for it
        poller = zmq.Poller()
        poller.register(self.pub, zmq.POLLIN)
        if ws is not None:
            poller.register(ws.sock, zmq.POLLIN)
        deadline = time.monotonic() + seconds
        while True:
            ready = dict(poller.poll(max(0, int((deadline - time.monotonic()) * 1000)) + 1))
            if self.pub in ready:
                self.on_subscriptions()
            if ws is not None and ws.sock is not None and ws.sock.fileno() in ready:  # a descriptor is returned as its number
                return True
            if time.monotonic() >= deadline:
                return False

    def on_frame(self, data: bytes) -> None:
        """The stream's boundary: every event is decoded and checked here, once; what fails is
        dropped, counted by reason and logged at a bounded rate, never raised."""
        try:
            kind = _event_decoder.decode(data).e
            if kind == "executionReport":
                report = execution_report_json_decoder.decode(data)
                problem = report_problem(report)
                if problem is not None:
                    self.drop(problem, f"{report.s} {report.client_order_id[:40]!r} {report.X!r}")
                    return
                self.pub.send_multipart([execution_topic(report.client_order_id), encode(report)])
                log.debug("account stream: %s %s %s %s", report.s, report.client_order_id, report.x, report.X)
            elif kind == "outboundAccountPosition":
                position = _position_decoder.decode(data)
                problem = position_problem(position, self.balances)
                if problem is not None:
                    self.drop(problem, f"outboundAccountPosition {[(b.a[:20], b.f[:30], b.l[:30]) for b in position.B[:3]]}")
                    return
                for b in position.B:
                    self.balances[b.a] = PushedBalance(b.a, b.f, b.l, position.u)
                self.alive()  # the root has them now, not at the next heartbeat
            elif kind == "listenKeyExpired":
                log.warning("account stream: the listen key expired; reconnecting with a new one")
                self.key = None
                raise KeyGone("listenKeyExpired")
        except msgspec.DecodeError as exc:  # ValidationError is one: a missing field, a number for a string
            self.drop(UNDECODABLE, str(exc)[:200])

    def drop(self, reason: str, detail: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.drop_log.warning(reason, "dropped an event (%s: %s)", reason, detail)

    def serve(self, ws: websocket.WebSocket) -> None:
        """Read one connection until it ends; keep-alives, liveness and the rollover on the way."""
        self.ws = ws
        now = time.monotonic()
        rollover_at, last_recv = now + self.settings.rollover_seconds, now
        self.status(True)
        try:
            while True:
                now = time.monotonic()
                if now >= self.next_alive:
                    self.alive()
                if now >= self.keepalive_at:
                    self.keep_alive()
                if now >= rollover_at:
                    # A new connection first, then the old one goes: its new session makes every
                    # waiting trader ask once about what the switch-over may have missed.
                    try:
                        successor = self.connect()
                    except Exception as exc:
                        log.warning("account stream: rollover connection failed (%s); keeping this one", type(exc).__name__)
                        rollover_at = now + KEEPALIVE_RETRY
                    else:
                        ws.close()
                        self.ws = ws = successor
                        rollover_at, last_recv = now + self.settings.rollover_seconds, now
                        self.status(True)
                if now - last_recv > IDLE_TIMEOUT:
                    log.warning("account stream: nothing received for %gs; reconnecting", IDLE_TIMEOUT)
                    return
                if not self.wait(min(self.next_alive, self.keepalive_at, rollover_at) - time.monotonic(), ws):
                    continue
                opcode, frame = ws.recv_data_frame(True)  # pings are answered inside
                last_recv = time.monotonic()
                if opcode == ABNF.OPCODE_CLOSE:
                    log.warning("account stream: the exchange closed the connection")
                    return
                if opcode == ABNF.OPCODE_TEXT:
                    self.on_frame(frame.data)
        except KeyGone:
            return
        except (websocket.WebSocketException, OSError) as exc:
            log.warning("account stream: connection lost (%s)", type(exc).__name__)
        finally:
            self.status(False)  # traders fall back to asking the exchange at once
            self.ws = None
            ws.close()

    def run(self) -> int:
        failures = 0
        while True:
            try:
                ws = self.connect()
            except (KeyGone, exchange.BinanceError, exchange.OutcomeUnknown, exchange.RateLimited,
                    websocket.WebSocketException, OSError) as exc:
                failures += 1
                delay = min(self.settings.reconnect_max_seconds, BACKOFF_BASE * 2 ** min(failures, 16))
                if isinstance(exc, exchange.RateLimited):
                    delay = max(delay, exc.retry_after)
                if isinstance(exc, websocket.WebSocketBadStatusException):
                    self.key = None  # refused at the handshake: the key is no good there
                delay *= random.uniform(0.5, 1.0)  # jitter: many hosts never retry in step
                log.warning("account stream: cannot connect (%s); retrying in %.2fs", type(exc).__name__, delay)
                if self.up is not False:
                    self.status(False)  # said once: the traders ask the exchange meanwhile
                deadline = time.monotonic() + delay
                while (left := deadline - time.monotonic()) > 0:
                    self.alive()
                    self.wait(min(left, self.settings.heartbeat_seconds))
                continue
            failures = 0
            self.serve(ws)


def run(config: Config) -> int:
    """Entry point in the forked child. SIGTERM (its supervisor stopping it) ends it by an
    exception, so its socket file is removed on the way out."""
    signal.signal(signal.SIGTERM, _stop)
    stream = AccountStream(config)
    try:
        return stream.run()
    finally:
        close_bound(stream.pub, config.account_stream_endpoint)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)

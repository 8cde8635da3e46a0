"""Binance combined-stream websocket source.

Runs on the main loop's thread: each connection's socket is non-blocking and
its file descriptor sits in the daemon's poller; a readable socket is drained
frame by frame until the kernel (and, for TLS, the SSL buffer) is empty, which
websocket-client supports because its frame reader keeps partial frames.

Binance's rules kept here: at most 5 messages/s sent per connection (we send at
most one SUBSCRIBE/UNSUBSCRIBE per 0.25 s, batching every stream that changed,
so pongs still fit), at most 1024 streams per connection (another connection
past that), at most 300 connection attempts per 5 minutes, pongs carry the
ping's payload (websocket-client answers them), a connection lives 24 h and
`serverShutdown` announces an early end: both are handled by opening the
successor first and closing the old one once the successor has caught up.
"""

from __future__ import annotations

import collections
import logging
import random
import ssl
import time
from typing import Any

import msgspec
import websocket
from websocket import ABNF

from naived.core.messages import TradeEvent
from naived.market.gate import PRICE, QUANTITY, positive_decimal
from naived.ops.ratelog import RateLimitedLog
from streamerd.daemon import Emit
from streamerd.gapfill import GapFiller
from streamerd.publisher import Stats

log = logging.getLogger(__name__)

MAX_STREAMS = 1024
SEND_INTERVAL = 0.25
MAX_ATTEMPTS, ATTEMPT_WINDOW = 300, 300.0
MAX_AGE = 23.5 * 3600  # Binance cuts every connection at 24 h: hand over well before
HANDOVER_TIMEOUT = 60.0  # quiet symbols never prove the successor caught up: stop waiting
IDLE_TIMEOUT = 70.0  # Binance pings every 20 s; this much silence means a dead link
BACKOFF_BASE, BACKOFF_CAP = 0.25, 30.0
CONNECT_TIMEOUT = 10.0
DRAIN_LIMIT = 2000  # frames per turn, so one busy connection cannot starve the loop


class _TradeFrame(msgspec.Struct):
    stream: str
    data: TradeEvent


_decode_trade_frame = msgspec.json.Decoder(_TradeFrame).decode
_encode_json = msgspec.json.Encoder().encode


def stream_of(symbol: str) -> str:
    return f"{symbol.lower()}@trade"


class Connection:
    """One websocket and the streams it should carry."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.ws: websocket.WebSocket | None = None
        self.fd = -1  # kept apart: websocket-client drops ws.sock when the peer closes
        self.streams: set[str] = set()  # what it should carry
        self.sent: set[str] = set()  # what the server was asked for (URL or SUBSCRIBE)
        self.retry_at = 0.0
        self.failures = 0
        self.opened_at = 0.0
        self.last_recv = 0.0
        self.next_send = 0.0
        self.request_id = 0
        self.predecessor: Connection | None = None
        self.successor: Connection | None = None
        self.handover_deadline = 0.0
        self.caught_up: set[str] = set()  # symbols where this successor joined the old stream seamlessly


class BinanceSource:
    name = "binance"

    def __init__(
        self,
        emit: Emit,
        stats: Stats,
        base_url: str,
        max_age: float = MAX_AGE,
        handover_timeout: float = HANDOVER_TIMEOUT,
        gaps: GapFiller | None = None,
    ) -> None:
        """`gaps`: fills the recorder's tapes where trade ids were skipped (None: not recording)."""
        self.emit = emit
        self.gaps = gaps
        self.stats = stats
        self.base_url = base_url.rstrip("/")
        self.max_age = max_age
        self.handover_timeout = handover_timeout
        self.conns: list[Connection] = []
        self.by_fd: dict[int, Connection] = {}
        self.wanted: set[str] = set()  # symbols
        self.last_id: dict[str, int] = {}
        self.held: dict[str, list[tuple[TradeEvent, bytes | None]]] = {}  # successor trades waiting for the old connection
        self.attempts: collections.deque[float] = collections.deque()
        self.backlog: set[Connection] = set()
        self._numbers = 0
        self.refusals = RateLimitedLog(log, "binance", "trades refused")

    # --- demand ------------------------------------------------------------------

    def set_wanted(self, symbols: set[str]) -> None:
        removed, added = self.wanted - symbols, symbols - self.wanted
        self.wanted = set(symbols)
        for symbol in removed:
            self.last_id.pop(symbol, None)  # a later restart is not a gap
            self.held.pop(symbol, None)
            for conn in self._live():
                conn.streams.discard(stream_of(symbol))
        for symbol in sorted(added):
            conn = next((c for c in self._live() if len(c.streams) < MAX_STREAMS), None) or self._new()
            conn.streams.add(stream_of(symbol))
        if added or removed:
            log.info("wanted: %s", " ".join(sorted(self.wanted)) or "nothing")

    def _live(self) -> list[Connection]:
        return [c for c in self.conns if c.successor is None]

    def _new(self, now: float = 0.0) -> Connection:
        self._numbers += 1
        conn = Connection(self._numbers)
        conn.retry_at = now
        self.conns.append(conn)
        return conn

    # --- loop interface ----------------------------------------------------------

    def fds(self) -> list[int]:
        return [*self.by_fd, self.gaps.fd] if self.gaps is not None else list(self.by_fd)

    def next_deadline(self) -> float | None:
        if self.backlog:
            return 0.0
        deadlines = []
        if self.gaps is not None and (filling := self.gaps.next_deadline()) is not None:
            deadlines.append(filling)
        for c in self.conns:
            if c.ws is None:
                if c.streams:
                    deadlines.append(c.retry_at)
            elif c.successor is not None:
                deadlines.append(c.handover_deadline)
            else:
                deadlines += [c.last_recv + IDLE_TIMEOUT, c.opened_at + self.max_age]
                if c.streams != c.sent:
                    deadlines.append(c.next_send)
        return min(deadlines, default=None)

    def on_timer(self, now: float) -> None:
        if self.gaps is not None:
            self.gaps.on_timer(now)
        for conn in list(self.backlog):
            self._drain(conn)
        for c in list(self.conns):
            if c.ws is None:
                if c.streams and now >= c.retry_at:
                    self._connect(c)
            elif c.successor is not None:
                if now >= c.handover_deadline:
                    self._finish_handover(c, "handover timeout")
            elif now - c.last_recv > IDLE_TIMEOUT:
                self._drop(c, f"nothing received for {IDLE_TIMEOUT:g}s")
            elif now - c.opened_at > self.max_age:
                self._handover(c, "connection age limit (Binance cuts at 24 h)")
            elif c.streams != c.sent and now >= c.next_send:
                self._send_changes(c, now)

    def on_readable(self, fd: int) -> None:
        conn = self.by_fd.get(fd)
        if conn is not None:
            self._drain(conn)
        elif self.gaps is not None and fd == self.gaps.fd:
            self.gaps.on_readable()

    def close(self) -> None:
        for c in list(self.conns):
            self._close_ws(c)
        self.conns.clear()
        if self.gaps is not None:
            self.gaps.close()  # before the recorder's close: what it holds back is written

    # --- connections -------------------------------------------------------------

    def _connect(self, c: Connection) -> None:
        now = time.monotonic()
        while self.attempts and self.attempts[0] <= now - ATTEMPT_WINDOW:
            self.attempts.popleft()
        if len(self.attempts) >= MAX_ATTEMPTS:
            c.retry_at = self.attempts[0] + ATTEMPT_WINDOW
            log.warning("connection %d: %d attempts in %gs, next in %.0fs", c.number, MAX_ATTEMPTS,
                        ATTEMPT_WINDOW, c.retry_at - now)
            return
        self.attempts.append(now)
        streams = sorted(c.streams)
        url = f"{self.base_url}/stream?streams={'/'.join(streams)}"
        try:
            ws = websocket.create_connection(
                url, timeout=CONNECT_TIMEOUT, skip_utf8_validation=True, enable_multithread=False
            )
        except (websocket.WebSocketException, OSError) as exc:
            self._schedule_retry(c, f"connect failed: {exc}")
            return
        assert ws.sock is not None  # create_connection returns a connected socket
        ws.sock.settimeout(0)
        c.ws, c.fd, c.sent, c.caught_up = ws, ws.sock.fileno(), set(streams), set()
        c.opened_at = c.last_recv = time.monotonic()
        c.next_send = c.opened_at + SEND_INTERVAL
        self.by_fd[c.fd] = c
        role = f", taking over from connection {c.predecessor.number}" if c.predecessor else ""
        log.info("connection %d open: %d streams%s", c.number, len(streams), role)

    def _schedule_retry(self, c: Connection, reason: str) -> None:
        c.failures += 1
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (c.failures - 1))
        delay = random.uniform(delay / 2, delay)  # jitter: many daemons must not reconnect in step
        c.retry_at = time.monotonic() + delay
        log.warning("connection %d: %s; retry in %.2fs", c.number, reason, delay)

    def _close_ws(self, c: Connection) -> None:
        ws, c.ws = c.ws, None
        self.backlog.discard(c)
        if ws is None:
            return
        self.by_fd.pop(c.fd, None)
        try:
            if ws.sock:
                ws.sock.settimeout(1.0)
                ws.send_close()
        except (websocket.WebSocketException, OSError):
            pass  # it is going away anyway
        ws.shutdown()  # type: ignore[no-untyped-call]  # websocket-client leaves shutdown() unannotated

    def _drop(self, c: Connection, reason: str) -> None:
        """The connection failed: reconnect, or end the handover it was leaving."""
        self._close_ws(c)
        c.sent = set()
        if c.successor is not None:
            self._finish_handover(c, reason)
        else:
            self._schedule_retry(c, f"lost ({reason})")

    def _send(self, c: Connection, payload: dict[str, Any]) -> None:
        assert c.ws is not None and c.ws.sock is not None  # _close_ws sets c.ws to None first
        c.ws.sock.settimeout(5.0)  # sends may block briefly; reads never do
        try:
            c.ws.send(_encode_json(payload))
        finally:
            if c.ws.sock:
                c.ws.sock.settimeout(0)

    def _send_changes(self, c: Connection, now: float) -> None:
        add, remove = c.streams - c.sent, c.sent - c.streams
        method, params = ("SUBSCRIBE", sorted(add)) if add else ("UNSUBSCRIBE", sorted(remove))
        c.request_id += 1
        try:
            self._send(c, {"method": method, "params": params, "id": c.request_id})
        except (websocket.WebSocketException, OSError) as exc:
            self._drop(c, f"send failed: {exc}")
            return
        c.sent = (c.sent | add) if add else (c.sent - remove)
        c.next_send = now + SEND_INTERVAL
        log.info("connection %d: %s %s (id %d)", c.number, method, " ".join(params), c.request_id)

    # --- handover (24 h limit, serverShutdown) -----------------------------------

    def _handover(self, old: Connection, reason: str) -> None:
        if old.successor is not None or old.ws is None:
            return
        new = self._new(time.monotonic())
        new.streams, old.streams = old.streams, set()
        new.predecessor, old.successor = old, new
        old.handover_deadline = time.monotonic() + self.handover_timeout
        log.info("connection %d: %s, opening connection %d before closing it", old.number, reason, new.number)

    def _caught_up(self, new: Connection, symbol: str) -> None:
        new.caught_up.add(symbol)
        old = new.predecessor
        waiting = {s.split("@")[0].upper() for s in old.sent} & self.wanted if old else set()
        if old is not None and waiting <= new.caught_up:
            self._finish_handover(old, "successor caught up")

    def _finish_handover(self, old: Connection, reason: str) -> None:
        new = old.successor
        self._close_ws(old)
        if old in self.conns:
            self.conns.remove(old)
        if new is not None:
            new.predecessor = None
        old.successor = None
        for symbol in list(self.held):
            self._release(symbol, final=True)
        log.info("connection %d closed after handover (%s)", old.number, reason)

    # --- frames ------------------------------------------------------------------

    def _drain(self, c: Connection) -> None:
        ws = c.ws
        self.backlog.discard(c)
        if ws is None:
            return
        try:
            for _ in range(DRAIN_LIMIT):
                opcode, frame = ws.recv_data_frame(True)
                if opcode == ABNF.OPCODE_TEXT or opcode == ABNF.OPCODE_BINARY:
                    self._on_message(c, frame.data)
                elif opcode == ABNF.OPCODE_CLOSE:
                    self._drop(c, "closed by the server")
                    return
                # pings were answered inside recv_data_frame, with their payload
                if c.ws is not ws:  # the message closed this connection (handover)
                    return
            self.backlog.add(c)
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            self._drop(c, str(exc) or type(exc).__name__)
        if c.ws is ws:
            c.last_recv = time.monotonic()

    def _on_message(self, c: Connection, data: bytes) -> None:
        try:
            event = _decode_trade_frame(data).data
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
            # UTF-8 is checked here, by msgspec, instead of by websocket-client (skip_utf8_validation)
            self._on_other(c, data)
            return
        # What every consumer checks again (naived/market/gate.py), refused at the source too: a NaN,
        # negative or zero price is never published. Its trade id then shows as a gap.
        bad = PRICE if positive_decimal(event.p) is None else QUANTITY if positive_decimal(event.q) is None else None
        if bad is not None:
            self.stats.refused += 1
            self.refusals.warning(bad, "refused a trade (%s: connection %d: %r)", bad, c.number, data[:200])
            return
        self.stats.events_in += 1
        if c.failures:
            c.failures = 0  # it works again: the next loss starts the backoff afresh
        self._on_trade(c, event, data)

    def _on_other(self, c: Connection, data: bytes) -> None:
        try:
            msg = msgspec.json.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError):
            msg = None
        if isinstance(msg, dict):
            wrapped = msg.get("data")  # a combined stream's envelope, else the message itself
            inner = wrapped if isinstance(wrapped, dict) else msg
            if inner.get("e") == "serverShutdown":
                self._handover(c, "serverShutdown")
                return
            if "id" in msg and "result" in msg:
                if msg["result"] is not None:
                    log.info("connection %d: reply %s", c.number, data[:200])
                return
            if "error" in msg:
                log.warning("connection %d: request refused: %s", c.number, data[:200])
                return
        self.stats.malformed += 1
        if self.stats.malformed <= 10 or self.stats.malformed % 1000 == 0:
            log.warning("connection %d: unexpected frame (%d so far): %r", c.number, self.stats.malformed, data[:200])

    def _on_trade(self, c: Connection, event: TradeEvent, raw: bytes | None = None) -> None:
        """`raw`: the frame as Binance sent it, for the recorder."""
        symbol, trade_id = event.s, event.t
        if symbol not in self.wanted:
            return  # unsubscribed, the UNSUBSCRIBE is on its way
        last = self.last_id.get(symbol)
        old = c.predecessor
        if last is not None:
            if trade_id <= last:
                self.stats.duplicates += 1
                if old is not None:
                    self._caught_up(c, symbol)
                return
            if trade_id > last + 1:
                if old is not None and symbol not in c.caught_up and stream_of(symbol) in old.sent:
                    # The old connection may still deliver the missing ids: wait for it.
                    self.held.setdefault(symbol, []).append((event, raw))
                    return
                self._gap(symbol, last, trade_id, event.E)
            elif old is not None:
                self.last_id[symbol] = trade_id
                self.emit(event, raw)
                self._caught_up(c, symbol)
                return
        self.last_id[symbol] = trade_id
        self.emit(event, raw)
        if c.successor is not None and symbol in self.held:
            self._release(symbol)

    def _release(self, symbol: str, final: bool = False) -> None:
        """Publish held successor trades that now follow on; all of them when `final`."""
        held = self.held.pop(symbol, [])
        for i, (event, raw) in enumerate(held):
            last = self.last_id.get(symbol, event.t - 1)
            if event.t <= last:
                self.stats.duplicates += 1
                continue
            if event.t > last + 1:
                if not final:
                    self.held[symbol] = held[i:]
                    return
                self._gap(symbol, last, event.t, event.E)
            self.last_id[symbol] = event.t
            self.emit(event, raw)

    def _gap(self, symbol: str, last: int, trade_id: int, time_ms: int) -> None:
        """Ids after `last` and before `trade_id` were skipped; called before `trade_id` is emitted,
        so that the recorder's hole comes before it in the tape."""
        missing = trade_id - last - 1
        self.stats.gaps += 1
        self.stats.missing += missing
        log.warning("%s: gap of %d trades (ids %d..%d never received)", symbol, missing, last + 1, trade_id - 1)
        if self.gaps is not None:
            self.gaps.on_gap(symbol, last + 1, trade_id - 1, time_ms)

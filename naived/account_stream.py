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
- `[ACCOUNT_STREAM, StreamStatus(session, up)]` every `heartbeat_seconds` while connected,
  `up=False` at once when the connection is lost. A session is one connection of one process:
  events between two sessions may be lost (Binance does not replay them), so a trader that
  sees a new session asks the exchange once about an order it waits on.

The listen key is a credential for the account's events: it is never logged, never in argv
(the process title is fixed), and the websocket URL that contains it is never printed.
"""

from __future__ import annotations

import logging
import os
import random
import time

import msgspec
import websocket
import zmq
from websocket import ABNF

from naived import exchange
from naived.config import Config
from naived.ipc import bind
from naived.messages import (
    STREAM_STATUS_TOPIC,
    StreamStatus,
    encode,
    execution_report_json_decoder,
    execution_topic,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 70.0  # Binance pings every 20 s: this much silence means a dead link
BACKOFF_BASE = 0.1
KEEPALIVE_RETRY = 60.0  # a failed keep-alive is tried again this soon (the key has most of its hour left)


class _Event(msgspec.Struct):
    e: str


_event_decoder = msgspec.json.Decoder(_Event)


class KeyGone(Exception):
    """The exchange no longer knows the listen key: make a new one."""


class AccountStream:
    def __init__(self, config: Config) -> None:
        self.settings = config.account_stream
        self.url = config.user_stream_url
        self.ctx = zmq.Context()
        self.pub = bind(self.ctx, zmq.PUB, config.account_stream_endpoint)
        self.client = exchange.client_for(config)
        self.key: str | None = None
        self.keepalive_at = 0.0  # monotonic: when the key is due for a keep-alive
        self.connections = 0
        self.ws: websocket.WebSocket | None = None
        self.session = ""

    # --- the listen key ------------------------------------------------------------------

    def listen_key(self) -> str:
        """A key the exchange knows: the current one after a keep-alive proves it, else a new one."""
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
        ws = websocket.create_connection(f"{self.url}/ws/{key}", timeout=CONNECT_TIMEOUT, enable_multithread=False)
        self.connections += 1
        self.session = f"{os.getpid()}.{self.connections}"
        log.info("account stream: connected to %s (session %s)", self.url, self.session)
        return ws

    def status(self, up: bool) -> None:
        self.pub.send_multipart([STREAM_STATUS_TOPIC, encode(StreamStatus(self.session, up))])

    def on_frame(self, data: bytes) -> None:
        try:
            kind = _event_decoder.decode(data).e
            if kind == "executionReport":
                report = execution_report_json_decoder.decode(data)
                self.pub.send_multipart([execution_topic(report.client_order_id), encode(report)])
                log.debug("account stream: %s %s %s %s", report.s, report.client_order_id, report.x, report.X)
            elif kind == "listenKeyExpired":
                log.warning("account stream: the listen key expired; reconnecting with a new one")
                self.key = None
                raise KeyGone("listenKeyExpired")
        except msgspec.DecodeError as exc:  # malformed: counted in the log, never fatal
            log.warning("account stream: ignored an undecodable event: %s", exc)

    def serve(self, ws: websocket.WebSocket) -> None:
        """Read one connection until it ends; keep-alives, heartbeats and the rollover on the way."""
        self.ws = ws
        heartbeat = self.settings.heartbeat_seconds
        now = time.monotonic()
        next_heartbeat, rollover_at, last_recv = now, now + self.settings.rollover_seconds, now
        try:
            while True:
                now = time.monotonic()
                if now >= next_heartbeat:
                    self.status(True)
                    next_heartbeat = now + heartbeat
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
                        next_heartbeat = now + heartbeat
                if now - last_recv > IDLE_TIMEOUT:
                    log.warning("account stream: nothing received for %gs; reconnecting", IDLE_TIMEOUT)
                    return
                ws.settimeout(max(0.001, min(next_heartbeat, self.keepalive_at, rollover_at) - time.monotonic()))
                try:
                    opcode, frame = ws.recv_data_frame(True)  # pings are answered inside
                except websocket.WebSocketTimeoutException:
                    continue
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
                time.sleep(delay)
                continue
            failures = 0
            self.serve(ws)


def run(config: Config) -> int:
    """Entry point in the forked child."""
    return AccountStream(config).run()

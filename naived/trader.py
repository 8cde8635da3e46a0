"""The trader process: one cycle of the naive strategy for one symbol.

A thin shell around `strategy`: it subscribes to the symbol's trade events,
feeds them to the strategy, and carries out what it decides. Every state change
goes to the leader, and the trader waits for the ack (the book's
`GenServer.call`): what the leader acked is what a restarted trader resumes.

Orders follow the intent protocol: the intent (with its deterministic client
order id) is acked by the leader *before* the order is sent, so a trader that
restarts with an intent looks the order up instead of placing it twice.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

import msgspec
import requests
import zmq

from naived import exchange, strategy
from naived.supervisor import last_words
from naived.config import Config
from naived.messages import (
    Intent,
    Order,
    RebuyTriggered,
    StateUpdated,
    TraderFailed,
    TraderHello,
    TraderState,
    decode_trade,
    encode,
    leader_reply_decoder,
    trade_topic,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

LEADER_TIMEOUT_MS = 2000
CHECK_INTERVAL = 0.05  # at most one order query per this many seconds while the price sits on our order
BACKOFF_MAX = 2.0
STALE_MARGIN = 0.25  # seconds on top of recvWindow: our estimate of the exchange's clock may be off by an RTT


class LeaderLink:
    """REQ to the leader. RELAXED + CORRELATE: a lost reply is resent, a stale one ignored."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.socket = ctx.socket(zmq.REQ)
        self.socket.setsockopt(zmq.REQ_RELAXED, 1)
        self.socket.setsockopt(zmq.REQ_CORRELATE, 1)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def call(self, message: msgspec.Struct) -> None:
        payload = encode(message)
        while True:
            self.socket.send(payload)
            if self.socket.poll(LEADER_TIMEOUT_MS, zmq.POLLIN):
                leader_reply_decoder.decode(self.socket.recv())
                return
            log.warning("no ack from the leader in %d ms, resending", LEADER_TIMEOUT_MS)


class Trader:
    def __init__(self, config: Config, state: TraderState) -> None:
        self.state = state
        self.symbol = state.symbol
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(config.streamer.endpoint)
        self.sub.setsockopt(zmq.SUBSCRIBE, trade_topic(self.symbol))
        self.leader = LeaderLink(self.ctx, config.leader_endpoint(self.symbol))
        self.client = exchange.client_for(config)
        self.recv_window = config.exchange.recv_window_ms / 1000
        # The latest moment an order request for our intent may have left: a predecessor that
        # died cannot have sent one after this process was forked.
        self.last_sent = time.time()
        self.last_check = 0.0
        self.recheck: str | None = None  # an order to query again once the poll goes quiet

    # --- talking to the leader ---------------------------------------------------

    def report(self) -> None:
        self.leader.call(StateUpdated(self.state, self.client.used_weight))

    # --- talking to the exchange ---------------------------------------------------

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """Retry transient failures (unknown outcome, rate limit, connection) of a read."""
        delay = 0.05
        while True:
            try:
                return call()
            except exchange.RateLimited as exc:
                log.warning("%s: rate limited, waiting %.1fs", what, exc.retry_after)
                time.sleep(exc.retry_after)
            except (exchange.OutcomeUnknown, requests.RequestException) as exc:
                log.warning("%s: %s, retrying in %.2fs", what, type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    def lookup(self, intent: Intent) -> Order | None:
        """The order behind an intent, or None only when the exchange definitely has none."""

        def get() -> Order | None:
            try:
                return self.client.get_order(self.symbol, intent.client_order_id)
            except exchange.UnknownOrder:
                return None

        return self._retrying(f"look up {intent.client_order_id}", get)

    def lookup_once_stale(self, intent: Intent) -> Order | None:
        """Ask again once a request still in flight would be refused as stale.

        "No such order" is definite only for requests the exchange has already seen: one sent
        just before a crash may still arrive, be accepted, and make a second placement a
        duplicate (Binance refuses a repeated client order id only while the first is open).
        A request older than recvWindow is rejected (-1021), so after that it cannot execute.
        """
        wait = self.last_sent + self.recv_window + STALE_MARGIN - time.time()
        if wait > 0:
            log.info("%s not at the exchange; asking again in %.1fs, when no request in flight can still execute", intent.client_order_id, wait)
            time.sleep(wait)
        return self.lookup(intent)

    def place(self, intent: Intent) -> Order:
        """Place the intent's order exactly once, whatever fails on the way."""
        delay = 0.05
        while True:
            if intent.unknown:
                found = self.lookup(intent) or self.lookup_once_stale(intent)
                if found is not None:
                    log.info("adopted %s %s: %s", intent.side, intent.client_order_id, found.status)
                    return found
            try:
                self.last_sent = time.time()
                order = self.client.new_order(
                    self.symbol, intent.side, intent.price, intent.quantity, intent.client_order_id
                )
                log.info("placed %s %s %s @ %s", intent.side, intent.client_order_id, intent.quantity, intent.price)
                return order
            except exchange.RateLimited as exc:
                log.warning("place %s: rate limited, waiting %.1fs", intent.client_order_id, exc.retry_after)
                time.sleep(exc.retry_after)
            except (exchange.OutcomeUnknown, requests.RequestException) as exc:
                # The exchange may or may not have the order: record that, then ask it.
                log.warning("place %s: outcome unknown (%s)", intent.client_order_id, type(exc).__name__)
                if not intent.unknown:
                    self.state = strategy.intent_unknown(self.state)
                    intent = self.state.intent  # type: ignore[assignment]
                    self.report()
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
            except exchange.BinanceError as exc:
                if exc.code == -2010 and "Duplicate" in exc.msg:
                    intent = msgspec.structs.replace(intent, unknown=True)  # it is there: adopt it
                    continue
                raise

    def check(self, client_order_id: str, follow_up: bool = True) -> strategy.Action:
        """Query one of our orders. The paper exchange sees the same trade we just saw and may
        not have filled on it yet: `follow_up` asks once more when the stream goes quiet."""
        self.last_check = time.monotonic()
        order = self._retrying(f"check {client_order_id}", lambda: self.client.get_order(self.symbol, client_order_id))
        previous = self.state
        self.state, action = strategy.on_order(self.state, order)
        if self.state != previous:
            self.report()
        self.recheck = client_order_id if follow_up and order.status != "FILLED" else None
        return action

    def warm_up(self) -> None:
        """Open the exchange connection and learn its clock before the first trade, so the
        first order does not pay for a TCP handshake and a server-time request."""
        try:
            self.client.server_time()
        except Exception as exc:  # the first order will retry whatever failed here
            log.warning("exchange warm-up failed: %s", exc)

    # --- the cycle -------------------------------------------------------------------

    def act(self, action: strategy.Action) -> bool:
        """Carry out actions until there is nothing to do; True when the cycle is over."""
        while action is not None:
            match action:
                case strategy.Place(intent):
                    self.report()  # the intent is acked before the order exists
                    order = self.place(intent)
                    self.state, action = strategy.placed(self.state, order)
                    self.report()
                case strategy.Check(client_order_id):
                    if time.monotonic() - self.last_check < CHECK_INTERVAL:
                        self.recheck = client_order_id
                        return False
                    action = self.check(client_order_id)
                case strategy.Finish():
                    log.info("cycle %d finished", self.state.cycle)
                    return True
        return False

    def resume(self) -> bool:
        """On (re)start: settle the pending intent, then ask about open orders."""
        state = self.state
        if state.status == "done":
            return True
        if state.intent is not None:
            order = self.place(msgspec.structs.replace(state.intent, unknown=True))
            self.state, action = strategy.placed(self.state, order)
            self.report()
            return self.act(action)
        open_order = state.sell_order or state.buy_order
        if open_order is not None:
            return self.act(strategy.Check(open_order.client_order_id))
        return False

    def run(self) -> int:
        s = self.state
        log.info(
            "trader %s/%d cycle %d starting (%s%s)",
            s.symbol, s.trader_id, s.cycle, s.status, ", with a pending intent" if s.intent else "",
        )
        self.leader.call(TraderHello(s.trader_id, os.getpid()))
        try:
            if self.resume():
                return 0
            if self.state.status == "new":
                self.warm_up()
            while True:
                # Idle traders sleep until a trade arrives: hundreds of them cost no CPU.
                timeout = int(CHECK_INTERVAL * 1000) if self.recheck else None
                if not self.sub.poll(timeout, zmq.POLLIN):
                    if self.recheck and self.act(self.check(self.recheck, follow_up=False)):
                        return 0
                    continue
                _, payload = self.sub.recv_multipart()
                event = decode_trade(payload)
                if strategy.rebuy_due(self.state, event):
                    self.state = msgspec.structs.replace(self.state, rebuy_notified=True)
                    self.report()
                    self.leader.call(RebuyTriggered(self.state.trader_id))
                self.state, action = strategy.on_trade(self.state, event)
                if self.act(action):
                    return 0
        except (strategy.StrategyError, exchange.BinanceError) as exc:
            log.error("%s", exc)
            last_words(str(exc))
            self.leader.call(TraderFailed(s.trader_id, str(exc)))
            return 2


def run(config: Config, state: TraderState) -> int:
    """Entry point in the forked child."""
    return Trader(config, state).run()

"""The trade feed: the public trades the paper exchange matches against, from streamerd.

One thread owns the SUB socket (a ZeroMQ socket belongs to one thread) and subscribes to the
symbols asked for (`want`): in exchangeInfo (`symbol`/`symbols`) or avgPrice, at a symbol's first
order, and at start for every symbol with open orders. Every frame passes the symbol's market
gate (`naived.market.gate`, the traders' own check) before the book sees it; what the gates drop
is counted by symbol and reason (GET /paper/feed), what was taken per symbol (GET /paper/market).
Every trade taken is also added to the candles (`candles.py`) the market data is answered from,
then goes to the `trade_listeners` (the market data streams).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import zmq

from naived.core.messages import TradeEvent, trade_topic
from naived.core.symbols import SymbolFilters, table
from naived.market.gate import MAX_MARKET_FRAME, TOPIC, MarketGate
from naived.ops.ratelog import RateLimitedLog
from naived.paper.book import PaperBook
from naived.paper.candles import Candles

log = logging.getLogger(__name__)


class TradeFeed(threading.Thread):
    """Owns the SUB socket (a ZeroMQ socket belongs to one thread). Other threads ask for a
    symbol with `want()`; a pipe wakes the poll so the subscription is made at once."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, book: PaperBook,
                 band_of: Callable[[str], Decimal] = lambda symbol: Decimal("0.1"), candles: Candles | None = None) -> None:
        """`band_of`: a symbol's `[trading] price_band`, for its market gate; `candles`: the klines
        every trade taken is added to (the market data's, `market_data.py`)."""
        super().__init__(name="trade-feed", daemon=True)
        self._ctx = ctx
        self._endpoint = endpoint
        self._book = book
        self._band_of = band_of
        self._candles = candles
        # The same check as the traders' (naived/market/gate.py), one gate per subscribed symbol; it
        # acts from the first trade (confirm=1): it fills what traders placed, it places nothing.
        self._gates: dict[bytes, MarketGate] = {}
        # frames on a topic no gate is for (a prefix neighbour)
        self._stray = RateLimitedLog(log, "paper feed", "market frames dropped")
        self._dropped: dict[str, dict[str, int]] = {}  # symbol ("" for no symbol's) -> reason -> count
        self._wanted: set[str] = set()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._market: dict[str, dict[str, Any]] = {}  # symbol -> last price, last trade id, count
        self.after_trade: Callable[[SymbolFilters], None] | None = None  # exchange-side faults
        # Called on this thread with every accepted trade, after the book matched it (the market
        # streams, `marketstream.MarketStreams.on_trade`): each must only hand it over, never block.
        self.trade_listeners: list[Callable[[TradeEvent], None]] = []

    def want(self, symbol: str) -> None:
        if symbol in self._wanted:  # the common case: no lock, no syscall
            return
        with self._lock:
            # Keep-alive HTTP threads outlive server.shutdown(): never write to a closed pipe.
            if not self._stopping:
                self._wanted.add(symbol)
                os.write(self._wake_w, b"s")

    def stop(self) -> None:
        with self._lock:
            if not self._stopping:
                self._stopping = True
                os.write(self._wake_w, b"x")

    def run(self) -> None:
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.MAXMSGSIZE, MAX_MARKET_FRAME)
        sub.connect(self._endpoint)
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        subscribed: set[str] = set()
        try:
            while not self._stopping:
                ready = dict(poller.poll(self._summary_due_ms()))
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                    with self._lock:
                        new = self._wanted - subscribed
                    for symbol in sorted(new):
                        self._gates[trade_topic(symbol)] = MarketGate(
                            symbol, self._band_of(symbol), f"paper feed {symbol}", confirm=1)
                        sub.setsockopt(zmq.SUBSCRIBE, trade_topic(symbol))
                        log.info("subscribed to %s trades", symbol)
                    subscribed |= new
                if sub in ready:
                    while sub.poll(0, zmq.POLLIN):
                        self._on_message(sub.recv_multipart())
                for log_ in (self._stray, *(g.log for g in self._gates.values())):
                    log_.flush()
        finally:
            sub.close()
            with self._lock:
                self._stopping = True
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _summary_due_ms(self) -> int | None:
        """Poll timeout: until the next drop summary is due, or None (no drop pending)."""
        due = [d for d in (self._stray.deadline(), *(g.log.deadline() for g in self._gates.values())) if d is not None]
        return None if not due else max(0, int((min(due) - time.monotonic()) * 1000) + 1)

    def _on_message(self, frames: list[bytes]) -> None:
        gate = self._gates.get(frames[0])
        if gate is None:  # a longer symbol matching a subscription's prefix (TUSDTRY for TUSDT)
            self._stray.warning(TOPIC, "dropped a market frame (%s: %r)", TOPIC, frames[0][:40])
            self._count("", TOPIC)
            return
        event = gate.check(frames)
        if not isinstance(event, TradeEvent):
            if event in gate.dropped:
                self._count(gate.symbol, event)
            return
        f = table().get(event.s)
        if f is None:
            return
        price, qty = Decimal(event.p), Decimal(event.q)
        self._book.on_trade(f, price, qty, event.t)
        if self._candles is not None:
            self._candles.add(event.s, price, qty, event.T, event.m, event.t)
        if self.after_trade is not None:
            self.after_trade(f)
        for listener in self.trade_listeners:
            listener(event)
        with self._lock:
            seen = self._market.setdefault(event.s, {"trades": 0})
            seen.update(lastPrice=event.p, lastTradeId=event.t, trades=seen["trades"] + 1)

    def _count(self, symbol: str, reason: str) -> None:
        with self._lock:
            counts = self._dropped.setdefault(symbol, {})
            counts[reason] = counts.get(reason, 0) + 1

    def dropped(self) -> dict[str, dict[str, int]]:
        """Market frames dropped by the feed's checks: symbol ("" = on no subscribed symbol's
        topic) -> reason -> count."""
        with self._lock:
            return {symbol: dict(counts) for symbol, counts in self._dropped.items()}

    def market(self) -> dict[str, dict[str, Any]]:
        """What trades were processed, per symbol: tests wait on `lastTradeId` instead of sleeping."""
        with self._lock:
            return {symbol: dict(seen) for symbol, seen in self._market.items()}

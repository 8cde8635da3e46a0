"""A seeded synthetic market: Binance-shaped trades, clearly not real ones.

Each symbol's price is a mean-reverting random walk on log price, rounded to the
symbol's tick size, with a step of `volatility` per trade (default 2 basis points: at
20 trades/s it wanders ~0.1-0.2% within seconds, calm enough for tests that rest
orders 1% away) and is pulled back towards its start price, so it never drifts off to
zero. The demo asks for a livelier market (see naived/demo.py), in which the default
trading settings finish cycles within seconds. Every symbol has its own RNG seeded from (seed, symbol):
the same seed gives the same trades whatever order symbols are requested in.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import time
from dataclasses import dataclass
from decimal import Decimal

from naived.core.messages import TradeEvent
from naived.core.symbols import lookup
from streamerd.daemon import Emit
from streamerd.publisher import Stats

log = logging.getLogger(__name__)

START_PRICES = {
    "BTCUSDT": Decimal("60000"),
    "ETHUSDT": Decimal("3000"),
    "BNBUSDT": Decimal("550"),
    "XRPUSDT": Decimal("0.5"),
    "ADAUSDT": Decimal("0.35"),
}
VOLATILITY = 0.0002  # default log-price standard deviation per trade
REVERSION = 0.005  # pull towards the start price per trade (stationary spread: volatility × 10)
MEDIAN_NOTIONAL = 150.0  # USDT per trade, log-normal around it
EIGHT = Decimal("0.00000001")  # Binance prints prices and quantities with 8 decimals


@dataclass
class _Market:
    symbol: str
    rng: random.Random
    tick: Decimal
    step: Decimal
    start: float
    volatility: float
    log_offset: float = 0.0
    next_id: int = 1
    next_at: float = 0.0  # monotonic
    running: bool = False

    def trade(self, now_ms: int) -> TradeEvent:
        rng = self.rng
        self.log_offset += -REVERSION * self.log_offset + rng.gauss(0.0, self.volatility)
        ticks = max(1, round(self.start * math.exp(self.log_offset) / float(self.tick)))
        price = Decimal(ticks) * self.tick
        notional = rng.lognormvariate(math.log(MEDIAN_NOTIONAL), 1.0)
        steps = max(1, int(notional / float(price) / float(self.step)))
        event = TradeEvent(
            e="trade",
            E=now_ms,
            s=self.symbol,
            t=self.next_id,
            p=str(price.quantize(EIGHT)),
            q=str((Decimal(steps) * self.step).quantize(EIGHT)),
            T=now_ms,
            m=rng.random() < 0.5,
        )
        self.next_id += 1
        return event


class SimulatedSource:
    name = "simulate"

    def __init__(self, emit: Emit, stats: Stats, seed: int, rate: float, volatility: float = VOLATILITY) -> None:
        self.emit = emit
        self.stats = stats
        self.seed = seed
        self.rate = rate
        self.volatility = volatility
        self.markets: dict[str, _Market] = {}
        # (next trade time, symbol) of running markets: each wake-up costs O(log n), not a scan of
        # every market (1,340 symbols at a few trades/s each: the scans cost more than the trades).
        # Entries of a market stopped or rescheduled since are skipped when they come up.
        self._due: list[tuple[float, str]] = []

    def _market(self, symbol: str) -> _Market:
        market = self.markets.get(symbol)
        if market is None:
            rng = random.Random(f"{self.seed}:{symbol}")
            filters = lookup(symbol)
            if filters is None:
                tick, step = Decimal("0.01"), Decimal("0.001")
                log.warning("SIMULATED %s: not in the symbol table, using tick %s step %s", symbol, tick, step)
            else:
                tick, step = filters.tick_size, filters.step_size
            start = START_PRICES.get(symbol, tick * 10_000)  # a tick of ~1 basis point, like most pairs
            market = self.markets[symbol] = _Market(symbol, rng, tick, step, float(start), self.volatility,
                                                    next_id=rng.randrange(1, 10**9))
        return market

    def set_wanted(self, symbols: set[str]) -> None:
        now = time.monotonic()
        for symbol in symbols:
            market = self._market(symbol)
            if not market.running:
                market.running, market.next_at = True, now
                heapq.heappush(self._due, (now, symbol))
                log.info("SIMULATED %s: start at %s, %g trades/s (synthetic prices, not a real market)",
                         symbol, market.start, self.rate)
        for market in self.markets.values():
            if market.running and market.symbol not in symbols:
                market.running = False
                log.info("SIMULATED %s: stop", market.symbol)

    def fds(self) -> list[int]:
        return []

    def on_readable(self, fd: int) -> None:
        pass

    def _current(self) -> tuple[float, str] | None:
        """The next entry that is still a running market's schedule (stale ones dropped)."""
        while self._due:
            at, symbol = self._due[0]
            market = self.markets[symbol]
            if market.running and market.next_at == at:
                return at, symbol
            heapq.heappop(self._due)
        return None

    def next_deadline(self) -> float | None:
        current = self._current()
        return current[0] if current else None

    def on_timer(self, now: float) -> None:
        now_ms = int(time.time() * 1000)
        while (current := self._current()) is not None and current[0] <= now:
            heapq.heappop(self._due)
            market = self.markets[current[1]]
            if now - market.next_at > 1.0:  # the loop stalled (suspend, debugger): no burst
                market.next_at = now
            self.stats.events_in += 1
            self.emit(market.trade(now_ms))
            market.next_at += market.rng.expovariate(self.rate)
            heapq.heappush(self._due, (market.next_at, market.symbol))

    def close(self) -> None:
        pass

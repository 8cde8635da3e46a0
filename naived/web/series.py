"""The web observer's charts: each symbol's price and equity over time, its buys and sells, its resting
orders; kept by this process from the statuses the root pushes (the root keeps no history, and a
restarted web child starts again from its first status).

From each status (`Charts.take`), per symbol:
- a point (t, price, equity) when either changed: t this process's wall clock in seconds, price the
  last trade price its leader values the position at (`Profit.price`), equity the symbol's result in
  its quote asset, realised + unrealised (`Profit`); an unknown one is NaN (null in JSON). Floats:
  they are for drawing; the exact figures are the status's decimal strings;
- a fill marker per order seen filled, fully or in part, for the first time (by client order id), from
  the traders' states and the leader's `last_fills` (a cycle that ends with its sell's fill is often
  gone from the states before a status shows it): its time (the exchange's update time, else now), side,
  average price (quote / quantity) and quantity; one seen again with more executed is updated in place;
- the resting orders of the latest status (NEW or PARTIALLY_FILLED): side, price, quantity left.

Bounds (a symbol's series at its fullest holds about 110 KiB, measured by tests/test_web_series.py):
- MAX_POINTS per symbol. A full series is thinned, not cut: every other point of its older half goes,
  so it reaches back to the first status at a resolution that halves with age. The root pushes at
  most 4 statuses a second (and only on a change), so 2,000 points hold at least the last 4 minutes
  at full resolution, and more than a small chart's width of pixels;
- MAX_FILLS markers per symbol, the oldest dropped first: 100 cycles of a buy and a sell;
- MAX_SYMBOLS symbols: a status with more evicts the series that changed longest ago among the
  symbols it no longer lists; one whose symbols are all listed leaves the newcomer without a chart.
  At the fullest, 256 × ~110 KiB is ~28 MiB; a host trading a few hundred symbols charts them all.
"""

from __future__ import annotations

import math
from array import array
from decimal import Decimal

import msgspec

from naived.core import cycles, pnl
from naived.core.messages import FilledOrder, Profit, TraderInfo

MAX_POINTS = 2000
MAX_FILLS = 200
MAX_SYMBOLS = 256
RESTING = ("NEW", "PARTIALLY_FILLED")
NAN = math.nan


class Fill(msgspec.Struct, frozen=True):
    """A marker: an order that filled, at its average price."""

    t: float  # seconds since the epoch
    side: str
    price: str
    qty: str
    id: str  # its client order id


class Level(msgspec.Struct, frozen=True):
    """A resting order: a level on the chart."""

    side: str
    price: str
    qty: str  # left to fill
    id: str


# What a status holds that the charts read; msgspec skips the rest (and the tags).
class _Leader(msgspec.Struct):
    traders: list[TraderInfo] = []
    profit: Profit | None = None
    last_fills: list[FilledOrder] = []


class _Symbol(msgspec.Struct):
    symbol: str
    leader: msgspec.Raw = msgspec.Raw(b"null")  # decoded only when it differs from the last status's


class _Tree(msgspec.Struct):
    symbols: list[_Symbol] = []


_decoder = msgspec.json.Decoder(_Tree)
_leader_decoder = msgspec.json.Decoder(_Leader | None)


class Answer(msgspec.Struct):
    """`GET /api/v1/symbols/<SYMBOL>/series`."""

    symbol: str
    base: str
    quote: str
    points: list[tuple[float, float, float]]
    fills: list[Fill]
    resting: list[Level]


def point(profit: Profit | None) -> tuple[float, float] | None:
    """(price, equity) of a symbol's profit, NaN for what is not known; None when neither is."""
    if profit is None:
        return None
    price = float(profit.price) if profit.price is not None else NAN
    equity = float(Decimal(profit.realised) + Decimal(profit.unrealised)) if profit.unrealised is not None else NAN
    return None if math.isnan(price) and math.isnan(equity) else (price, equity)


def fill(order: FilledOrder, now: float) -> Fill | None:
    """The marker of an order that filled; None without a quote amount to price it by."""
    executed, quote = Decimal(order.executed_qty), Decimal(order.quote_qty)
    if executed <= 0 or quote <= 0:
        return None
    t = order.update_time / 1000 if order.update_time is not None else now
    return Fill(t, order.side, pnl.text(quote / executed), pnl.text(executed), order.client_order_id)


def fills(leader: _Leader, now: float) -> list[Fill]:
    """The markers of a leader's status: its traders' orders, then the finished cycles' (`last_fills`)."""
    filled = [f for t in leader.traders if t.state is not None for f in cycles.filled(cycles.orders(t.state))]
    return [m for order in (*filled, *leader.last_fills) if (m := fill(order, now)) is not None]


def resting(leader: _Leader) -> list[Level]:
    levels = []
    for t in leader.traders:
        if t.state is None:
            continue
        for o in (t.state.buy_order, t.state.sell_order):
            if o is not None and o.status in RESTING:
                levels.append(Level(o.side, pnl.text(Decimal(o.price)), pnl.text(Decimal(o.quantity) - Decimal(o.executed_qty)),
                                    o.client_order_id))
    return levels


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


class Series:
    """One symbol's chart. `version` moves with every change, so its answer is encoded once per change."""

    def __init__(self, symbol: str, max_points: int = MAX_POINTS, max_fills: int = MAX_FILLS) -> None:
        self.symbol = symbol
        self.base = self.quote = ""
        self.max_points, self.max_fills = max_points, max_fills
        self.t, self.price, self.equity = array("d"), array("d"), array("d")
        self.fills: dict[str, Fill] = {}  # by client order id, in the order first seen
        self.resting: list[Level] = []
        self.version = 0
        self.changed_at = 0.0
        self.leader_seen = b""  # the last status's leader, as it came: one unchanged is not decoded again
        self._answer: tuple[int, bytes] | None = None

    def add_point(self, t: float, price: float, equity: float) -> bool:
        if self.t and _same(self.price[-1], price) and _same(self.equity[-1], equity):
            return False
        if len(self.t) >= self.max_points:
            self.thin()
        self.t.append(t)
        self.price.append(price)
        self.equity.append(equity)
        return True

    def thin(self) -> None:
        """Every other point of the older half goes: the series keeps its start, coarser with age."""
        half = len(self.t) // 2
        for values in (self.t, self.price, self.equity):
            values[:] = values[:half:2] + values[half:]

    def add_fill(self, marker: Fill) -> bool:
        known = self.fills.get(marker.id)
        if known is not None:
            if known.qty == marker.qty:
                return False
            self.fills[marker.id] = marker  # filled further since: the same marker, moved (its place kept)
            return True
        if len(self.fills) >= self.max_fills:
            del self.fills[next(iter(self.fills))]
        self.fills[marker.id] = marker
        return True

    def take(self, leader: _Leader | None, now: float) -> None:
        """One status's news for this symbol."""
        changed = False
        if leader is not None:
            if leader.profit is not None:
                self.base, self.quote = leader.profit.base, leader.profit.quote
            if (p := point(leader.profit)) is not None:
                changed |= self.add_point(round(now, 3), *p)
            for marker in fills(leader, now):
                changed |= self.add_fill(marker)
        levels = resting(leader) if leader is not None else []
        if levels != self.resting:
            self.resting, changed = levels, True
        if changed:
            self.version += 1
            self.changed_at = now

    def answer(self) -> bytes:
        if self._answer is None or self._answer[0] != self.version:
            body = Answer(self.symbol, self.base, self.quote, list(zip(self.t, self.price, self.equity, strict=True)),
                          list(self.fills.values()), self.resting)
            self._answer = (self.version, msgspec.json.encode(body))
        return self._answer[1]


class Charts:
    """Every symbol's series, from the statuses as they come."""

    def __init__(self, max_symbols: int = MAX_SYMBOLS, max_points: int = MAX_POINTS, max_fills: int = MAX_FILLS) -> None:
        self.max_symbols, self.max_points, self.max_fills = max_symbols, max_points, max_fills
        self.series: dict[str, Series] = {}
        self.left_out: set[str] = set()  # symbols of the last status without a chart (MAX_SYMBOLS)

    def take(self, raw: bytes, now: float) -> None:
        """A status as the root pushed it (TreeStatus, JSON). Raises msgspec.DecodeError on what is not one."""
        tree = _decoder.decode(raw)
        listed = {s.symbol for s in tree.symbols}
        self.left_out = set()
        for sym in tree.symbols:
            series = self.series.get(sym.symbol) or self._add(sym.symbol, listed)
            if series is None:
                self.left_out.add(sym.symbol)
                continue
            if memoryview(sym.leader) != series.leader_seen:  # most leaders are as they were in the last status
                series.take(_leader_decoder.decode(sym.leader), now)
                series.leader_seen = bytes(sym.leader)  # a copy: a Raw would hold the whole status

    def _add(self, symbol: str, listed: set[str]) -> Series | None:
        if len(self.series) >= self.max_symbols:
            gone = [s for s in self.series.values() if s.symbol not in listed]
            if not gone:
                return None
            del self.series[min(gone, key=lambda s: s.changed_at).symbol]
        series = self.series[symbol] = Series(symbol, self.max_points, self.max_fills)
        return series

    def answer(self, symbol: str) -> bytes | None:
        series = self.series.get(symbol)
        return series.answer() if series is not None else None

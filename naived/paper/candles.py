"""Klines built from the public trades the paper exchange sees, as Binance builds them.

Binance's kline rules (spot API, "Kline/Candlestick data"): a kline is identified by its open time,
aligned in UTC (`1w` from Monday 00:00, `1M` on the calendar month; `3d` counted from the Unix
epoch, which is how fixed intervals align); its close time is the next open time − 1 ms. A row is
`[open time, open, high, low, close, volume, close time, quote asset volume, number of trades,
taker buy base volume, taker buy quote volume, "0"]`, times as ints and amounts as decimal strings
(8 decimals, as the paper exchange prints every amount). The taker is the buyer when the trade's
buyer-is-maker flag is false. A period without a trade has no kline: none is ever invented, so
the first kline after start holds only the trades seen since.

Memory is bounded by keeping four tiers of bars per symbol, each derived interval built from the
finest tier that divides it:

    tier   kept               serves
    1s     the last hour      1s
    1m     the last 7 days    1m 3m 5m 15m 30m
    1h     the last 400 days  1h 2h 4h 6h 8h 12h
    1d     the last 10 years  1d 3d 1w 1M

(at most 3,600 + 10,080 + 9,600 + 3,660 bars a symbol, after years of uptime). A kline whose
bars a tier has already dropped is left out rather than answered short.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

SECOND, MINUTE, HOUR, DAY = 1000, 60_000, 3_600_000, 86_400_000
WEEK = 7 * DAY
MONDAY = 4 * DAY  # 1970-01-01 was a Thursday: Mondays start 4 days after the epoch
MONTH = -1  # marks the calendar month, which has no fixed length
ZERO = Decimal(0)
EIGHT = Decimal("0.00000001")
# Binance's spot intervals: length in ms (MONTH: the calendar month), and the tier built from
INTERVALS: dict[str, tuple[int, int]] = {
    "1s": (SECOND, SECOND),
    "1m": (MINUTE, MINUTE), "3m": (3 * MINUTE, MINUTE), "5m": (5 * MINUTE, MINUTE),
    "15m": (15 * MINUTE, MINUTE), "30m": (30 * MINUTE, MINUTE),
    "1h": (HOUR, HOUR), "2h": (2 * HOUR, HOUR), "4h": (4 * HOUR, HOUR), "6h": (6 * HOUR, HOUR),
    "8h": (8 * HOUR, HOUR), "12h": (12 * HOUR, HOUR),
    "1d": (DAY, DAY), "3d": (3 * DAY, DAY), "1w": (WEEK, DAY), "1M": (MONTH, DAY),
}
# tier bar length -> bars kept
TIERS = {SECOND: 3600, MINUTE: 7 * 1440, HOUR: 400 * 24, DAY: 3660}
TRIM_SLACK = 256  # bars over the bound before a tier is trimmed: a list's front is dropped in one go


def open_time(interval: str, time_ms: int) -> int:
    """The open time of the `interval` kline holding `time_ms` (UTC)."""
    length = INTERVALS[interval][0]
    if length == MONTH:
        at = datetime.fromtimestamp(time_ms / 1000, UTC)
        return int(datetime(at.year, at.month, 1, tzinfo=UTC).timestamp()) * 1000
    if length == WEEK:
        return time_ms - (time_ms - MONDAY) % WEEK
    return time_ms - time_ms % length


def close_time(interval: str, open_ms: int) -> int:
    """The next kline's open time − 1 ms."""
    length = INTERVALS[interval][0]
    if length != MONTH:
        return open_ms + length - 1
    at = datetime.fromtimestamp(open_ms / 1000, UTC)
    following = datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC)
    return int(following.timestamp()) * 1000 - 1


class Bar:
    """One tier's bar: a kline's figures, kept as Decimals until they are printed."""

    __slots__ = ("open_ms", "last_ms", "open", "high", "low", "close", "volume", "quote", "trades",
                 "taker_base", "taker_quote")

    def __init__(self, open_ms: int, price: Decimal, time_ms: int) -> None:
        self.open_ms, self.last_ms = open_ms, time_ms
        self.open = self.high = self.low = self.close = price
        self.volume = self.quote = self.taker_base = self.taker_quote = ZERO
        self.trades = 0

    def add(self, price: Decimal, qty: Decimal, quote: Decimal, time_ms: int, taker_buys: bool) -> None:
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        if time_ms >= self.last_ms:  # a trade that arrives late is not the close
            self.close, self.last_ms = price, time_ms
        self.volume += qty
        self.quote += quote
        self.trades += 1
        if taker_buys:
            self.taker_base += qty
            self.taker_quote += quote

    def merge(self, later: Bar) -> None:
        """Fold in the next bar of the same kline (bars come oldest first)."""
        self.high, self.low, self.close = max(self.high, later.high), min(self.low, later.low), later.close
        self.last_ms = later.last_ms
        self.volume += later.volume
        self.quote += later.quote
        self.trades += later.trades
        self.taker_base += later.taker_base
        self.taker_quote += later.taker_quote

    def copy(self, open_ms: int) -> Bar:
        bar = Bar(open_ms, self.open, self.last_ms)
        bar.merge(self)
        return bar


def _fmt(value: Decimal) -> str:
    return format(value.quantize(EIGHT), "f")


def row(interval: str, bar: Bar) -> list[int | str]:
    """Binance's kline row."""
    return [bar.open_ms, _fmt(bar.open), _fmt(bar.high), _fmt(bar.low), _fmt(bar.close), _fmt(bar.volume),
            close_time(interval, bar.open_ms), _fmt(bar.quote), bar.trades, _fmt(bar.taker_base),
            _fmt(bar.taker_quote), "0"]


class _Tier:
    """A symbol's bars of one length, oldest first; `floor`: the first open time still complete
    (bars before it were dropped)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.opens: list[int] = []
        self.bars: list[Bar] = []
        self.floor = 0

    def add(self, price: Decimal, qty: Decimal, quote: Decimal, time_ms: int, taker_buys: bool) -> None:
        start = time_ms - time_ms % self.length
        if not self.opens or start > self.opens[-1]:  # the usual case: the newest bar or a new one
            self.opens.append(start)
            self.bars.append(Bar(start, price, time_ms))
        elif start < self.floor:
            return  # older than what is kept
        at = bisect_left(self.opens, start)
        if at == len(self.opens) or self.opens[at] != start:  # a late trade in a bar not seen yet
            self.opens.insert(at, start)
            self.bars.insert(at, Bar(start, price, time_ms))
        self.bars[at].add(price, qty, quote, time_ms, taker_buys)
        excess = len(self.bars) - TIERS[self.length]
        if excess >= TRIM_SLACK:
            self.floor = self.opens[excess - 1] + self.length
            del self.opens[:excess], self.bars[:excess]

    def between(self, first: int, last: int) -> tuple[int, int]:
        """Index range of the bars opening in [first, last]."""
        return bisect_left(self.opens, first), bisect_right(self.opens, last)


class _Symbol:
    def __init__(self) -> None:
        self.tiers = {length: _Tier(length) for length in TIERS}
        self.last: tuple[Decimal, Decimal, int] | None = None  # the newest trade: price, qty, time


class Candles:
    """Klines of every symbol the paper exchange has seen trade. `add` from the feed's thread,
    the rest from the HTTP threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._symbols: dict[str, _Symbol] = {}

    def add(self, symbol: str, price: Decimal, qty: Decimal, time_ms: int, buyer_maker: bool) -> None:
        quote = price * qty
        with self._lock:
            seen = self._symbols.get(symbol)
            if seen is None:
                seen = self._symbols[symbol] = _Symbol()
            for tier in seen.tiers.values():
                tier.add(price, qty, quote, time_ms, not buyer_maker)
            if seen.last is None or time_ms >= seen.last[2]:
                seen.last = (price, qty, time_ms)

    def last_trade(self, symbol: str) -> tuple[Decimal, Decimal, int] | None:
        """The newest trade seen: (price, quantity, time ms)."""
        with self._lock:
            seen = self._symbols.get(symbol)
            return seen.last if seen is not None else None

    def klines(self, symbol: str, interval: str, start_ms: int | None = None, end_ms: int | None = None,
               limit: int = 500) -> list[list[int | str]]:
        """Binance's GET /api/v3/klines: the klines opening in [start_ms, end_ms], the first `limit`
        from `start_ms`, or without it the `limit` most recent up to `end_ms`."""
        tier_length = INTERVALS[interval][1]
        first = start_ms if start_ms is not None else 0
        last = end_ms if end_ms is not None else 2**62
        with self._lock:
            seen = self._symbols.get(symbol)
            if seen is None or limit <= 0:
                return []
            tier = seen.tiers[tier_length]
            lo, hi = tier.between(open_time(interval, max(first, 0)), last)
            bars = tier.bars[lo:hi]
            floor = tier.floor
            if start_ms is not None:
                klines = self._merged(interval, iter(bars), first, floor, limit)
            else:  # the most recent: merge from the newest backwards, then put back in order
                klines = self._merged_backwards(interval, bars, floor, limit)
            return [row(interval, k) for k in klines]

    def current(self, symbol: str, interval: str) -> list[int | str] | None:
        """The kline of the newest trade (the one a kline stream would be updating), None before any."""
        newest = self.klines(symbol, interval, limit=1)
        return newest[0] if newest else None

    def window(self, symbol: str, start_ms: int, end_ms: int) -> tuple[Bar, Decimal | None] | None:
        """The trades of the 1m bars opening in [start_ms, end_ms] as one bar (the 24 h ticker's
        figures), and the close of the bar before them (None if none is kept); None without a trade."""
        with self._lock:
            seen = self._symbols.get(symbol)
            if seen is None:
                return None
            tier = seen.tiers[MINUTE]
            lo, hi = tier.between(start_ms, end_ms)
            if lo == hi:
                return None
            total = tier.bars[lo].copy(tier.bars[lo].open_ms)
            for bar in tier.bars[lo + 1:hi]:
                total.merge(bar)
            return total, (tier.bars[lo - 1].close if lo > 0 else None)

    @staticmethod
    def _merged(interval: str, bars: Iterator[Bar], first: int, floor: int, limit: int) -> list[Bar]:
        out: list[Bar] = []
        for bar in bars:
            start = open_time(interval, bar.open_ms)
            if start < first or start < floor:
                continue  # a kline opening before the range, or one whose first bars were dropped
            if out and out[-1].open_ms == start:
                out[-1].merge(bar)
            elif len(out) == limit:
                break
            else:
                out.append(bar.copy(start))
        return out

    @staticmethod
    def _merged_backwards(interval: str, bars: list[Bar], floor: int, limit: int) -> list[Bar]:
        groups: list[list[Bar]] = []  # newest kline first, each kline's bars newest first
        for bar in reversed(bars):
            start = open_time(interval, bar.open_ms)
            if start < floor:
                break
            if groups and open_time(interval, groups[-1][0].open_ms) == start:
                groups[-1].append(bar)
            elif len(groups) == limit:
                break
            else:
                groups.append([bar])
        out = []
        for group in reversed(groups):
            kline = group[-1].copy(open_time(interval, group[-1].open_ms))
            for bar in reversed(group[:-1]):
                kline.merge(bar)
            out.append(kline)
        return out

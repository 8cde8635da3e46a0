"""Candles (Binance's klines) built from the public trades the paper exchange sees.

The rules are Binance's (GET /api/v3/klines): a kline is identified by its open time, aligned to
its interval in UTC (or in `timeZone`'s offset when asked): 1s..12h and 1d, 3d at whole multiples
of the interval since the epoch, 1w on Monday 00:00, 1M on the first of the calendar month; its
close time is the next open time - 1 ms. Each kline holds open/high/low/close, volume (base),
quote asset volume (sum of price x qty), number of trades, taker buy base and quote volume (the
taker is the buyer when the trade's `m`, "buyer is maker", is false), and Binance's unused "0".
Prices and volumes are printed as Binance prints them: decimal strings with 8 decimals.
A period without trades has no kline (as on Binance): nothing is ever filled in or invented.

Memory is bounded: per symbol four base levels are kept, each built from the trades directly —
1s for the last hour (3,600), 1m for 7 days (10,080), 1h for 365 days (8,760), 1d for 3,000 days —
the oldest dropped first. Every other interval is derived from the coarsest base that divides it
(3m..30m from 1m; 2h..12h from 1h; 3d, 1w, 1M from 1d; from 1m when a `timeZone` offset is not a
whole number of hours). A derived kline whose period begins before its base's oldest complete
candle is left out rather than answered short. So a 1m history goes back 7 days, a 1h one a year:
older requests get a shorter answer.

Trades with an id at or below the last id already counted for the symbol are skipped, so history
read from files (`load_history`) and the live feed can overlap without counting a trade twice.

`Candles` is thread-safe: the trade feed's thread adds, the HTTP threads (and the market-data
websocket) read. API:

    add(symbol, price, qty, time_ms, buyer_maker, trade_id=None) -> None
    klines(symbol, interval, start_ms=None, end_ms=None, limit=500, tz_offset_ms=0) -> list[list]
    current(symbol, interval, tz_offset_ms=0) -> list | None   # the kline of the last trade
    stream_kline(symbol, interval, closed=False) -> dict | None # the same as a kline stream's `k`
    last_trade(symbol) -> LastTrade | None
    window(symbol, end_ms, span_ms) -> Window | None           # rolling statistics (24 h ticker)
    symbols() -> list[str]
    load_history(candles, paths) -> int                        # trades read from recorded files
"""

from __future__ import annotations

import bisect
import datetime
import heapq
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from naived.market import tape

log = logging.getLogger(__name__)

EIGHT = Decimal("0.00000001")
SECOND, MINUTE, HOUR, DAY = 1000, 60_000, 3_600_000, 86_400_000
WEEK = 7 * DAY
FAR = 2**53  # "no end time": beyond any date a calendar computes
MONDAY_MS = 4 * DAY  # 1970-01-05, the first Monday after the epoch (a Thursday)
# Binance's spot intervals -> their length in ms (1w: a week from Monday; 1M: None, a calendar month)
INTERVALS: dict[str, int | None] = {
    "1s": SECOND, "1m": MINUTE, "3m": 3 * MINUTE, "5m": 5 * MINUTE, "15m": 15 * MINUTE, "30m": 30 * MINUTE,
    "1h": HOUR, "2h": 2 * HOUR, "4h": 4 * HOUR, "6h": 6 * HOUR, "8h": 8 * HOUR, "12h": 12 * HOUR,
    "1d": DAY, "3d": 3 * DAY, "1w": WEEK, "1M": None,
}
# The base levels, built from trades: interval -> (length ms, candles kept)
BASES: dict[str, tuple[int, int]] = {
    "1s": (SECOND, 3600), "1m": (MINUTE, 7 * 1440), "1h": (HOUR, 365 * 24), "1d": (DAY, 3000),
}


def fmt(value: Decimal) -> str:
    """Binance prints prices and volumes with 8 decimals."""
    return format(value.quantize(EIGHT), "f")


def _month_open(ms: int) -> int:
    day = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return int(datetime.datetime(day.year, day.month, 1, tzinfo=datetime.UTC).timestamp()) * 1000


def _next_month(open_ms: int) -> int:
    day = datetime.datetime.fromtimestamp(open_ms / 1000, datetime.UTC)
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return int(datetime.datetime(year, month, 1, tzinfo=datetime.UTC).timestamp()) * 1000


def open_time(interval: str, time_ms: int, tz_offset_ms: int = 0) -> int:
    """The open time (UTC ms) of the `interval` kline holding `time_ms`, its periods aligned in
    the time zone `tz_offset_ms` east of UTC."""
    local = time_ms + tz_offset_ms
    length = INTERVALS[interval]
    if interval == "1M":
        return _month_open(local) - tz_offset_ms
    assert length is not None
    if interval == "1w":
        return (local - MONDAY_MS) // WEEK * WEEK + MONDAY_MS - tz_offset_ms
    return local // length * length - tz_offset_ms


def close_time(interval: str, open_ms: int, tz_offset_ms: int = 0) -> int:
    """The close time of the kline opened at `open_ms`: the next open time - 1 ms."""
    length = INTERVALS[interval]
    if length is None:
        return _next_month(open_ms + tz_offset_ms) - tz_offset_ms - 1
    return open_ms + length - 1


class Candle:
    """One kline's running totals. Prices and volumes are exact Decimals until printed."""

    __slots__ = ("open_ms", "open", "high", "low", "close", "volume", "quote", "trades", "taker_base",
                 "taker_quote", "first_id", "last_id")

    def __init__(self, open_ms: int, price: Decimal) -> None:
        self.open_ms = open_ms
        self.open = self.high = self.low = self.close = price
        self.volume = self.quote = self.taker_base = self.taker_quote = Decimal(0)
        self.trades = 0
        self.first_id = self.last_id = -1

    def add(self, price: Decimal, qty: Decimal, quote: Decimal, buyer_maker: bool, trade_id: int) -> None:
        """One trade; `quote`: price x qty (computed once for every level)."""
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        self.close = price
        self.volume += qty
        self.quote += quote
        self.trades += 1
        if not buyer_maker:  # the buyer took: a taker buy
            self.taker_base += qty
            self.taker_quote += quote
        if self.first_id < 0:
            self.first_id = trade_id
        self.last_id = trade_id

    def merged(self, later: Candle) -> None:
        """Fold in the candle that follows this one in time."""
        self.high = max(self.high, later.high)
        self.low = min(self.low, later.low)
        self.close = later.close
        self.volume += later.volume
        self.quote += later.quote
        self.trades += later.trades
        self.taker_base += later.taker_base
        self.taker_quote += later.taker_quote
        if self.first_id < 0:
            self.first_id = later.first_id
        self.last_id = later.last_id if later.last_id >= 0 else self.last_id

    def copy(self, open_ms: int) -> Candle:
        c = Candle(open_ms, self.open)
        c.high, c.low, c.close = self.high, self.low, self.close
        c.volume, c.quote, c.trades = self.volume, self.quote, self.trades
        c.taker_base, c.taker_quote, c.first_id, c.last_id = self.taker_base, self.taker_quote, self.first_id, self.last_id
        return c

    def row(self, close_ms: int) -> list[object]:
        """Binance's kline array."""
        return [self.open_ms, fmt(self.open), fmt(self.high), fmt(self.low), fmt(self.close), fmt(self.volume),
                close_ms, fmt(self.quote), self.trades, fmt(self.taker_base), fmt(self.taker_quote), "0"]


class _Level:
    """One base interval of one symbol: candles by open time, oldest evicted past `keep`."""

    def __init__(self, length: int, keep: int) -> None:
        self.length, self.keep = length, keep
        self.opens: list[int] = []  # sorted
        self.candles: dict[int, Candle] = {}
        self.complete_from = 0  # candles from this open time on hold every trade seen in them

    def add(self, price: Decimal, qty: Decimal, quote: Decimal, time_ms: int, buyer_maker: bool, trade_id: int) -> None:
        open_ms = time_ms // self.length * self.length
        if open_ms < self.complete_from:
            return  # older than what is kept
        candle = self.candles.get(open_ms)
        if candle is None:
            candle = self.candles[open_ms] = Candle(open_ms, price)
            if not self.opens or open_ms > self.opens[-1]:
                self.opens.append(open_ms)
            else:
                bisect.insort(self.opens, open_ms)
            if len(self.opens) > self.keep:
                oldest = self.opens.pop(0)
                del self.candles[oldest]
                self.complete_from = oldest + self.length
        candle.add(price, qty, quote, buyer_maker, trade_id)

    def between(self, start_ms: int, end_ms: int) -> list[Candle]:
        lo, hi = bisect.bisect_left(self.opens, start_ms), bisect.bisect_right(self.opens, end_ms)
        return [self.candles[o] for o in self.opens[lo:hi]]


@dataclass(frozen=True)
class LastTrade:
    price: Decimal
    qty: Decimal
    time_ms: int
    trade_id: int


@dataclass(frozen=True)
class Window:
    """A rolling window's statistics (GET /api/v3/ticker/24hr), from the 1m candles."""

    candle: Candle  # the whole window folded into one (open, high, low, close, volumes, ids)
    prev_close: Decimal | None  # the close of the last candle before the window
    open_ms: int
    close_ms: int


class _Symbol:
    def __init__(self) -> None:
        self.levels = {name: _Level(length, keep) for name, (length, keep) in BASES.items()}
        self.last: LastTrade | None = None
        self.next_id = 1  # ids given to trades added without one


def _base_for(interval: str, tz_offset_ms: int) -> str:
    """The coarsest base level a kline of `interval` (in that time zone) is a whole number of."""
    if interval in BASES:
        return interval
    length = INTERVALS[interval]
    for base in ("1d", "1h", "1m"):
        step = BASES[base][0]
        if (length is None or length % step == 0) and tz_offset_ms % step == 0:
            return base
    return "1m"


class Candles:
    """Klines of every symbol the exchange has seen trades of (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._symbols: dict[str, _Symbol] = {}

    def add(self, symbol: str, price: Decimal, qty: Decimal, time_ms: int, buyer_maker: bool,
            trade_id: int | None = None) -> None:
        """One public trade. A `trade_id` at or below the last one counted is skipped (seen already)."""
        with self._lock:
            s = self._symbols.get(symbol)
            if s is None:
                s = self._symbols[symbol] = _Symbol()
            if trade_id is None:
                trade_id = s.next_id
            elif s.last is not None and trade_id <= s.last.trade_id:
                return
            s.next_id = trade_id + 1
            quote = price * qty
            for level in s.levels.values():
                level.add(price, qty, quote, time_ms, buyer_maker, trade_id)
            if s.last is None or time_ms >= s.last.time_ms:
                s.last = LastTrade(price, qty, time_ms, trade_id)

    def symbols(self) -> list[str]:
        with self._lock:
            return sorted(self._symbols)

    def last_trade(self, symbol: str) -> LastTrade | None:
        with self._lock:
            s = self._symbols.get(symbol)
            return s.last if s else None

    def _derived(self, s: _Symbol, interval: str, start_ms: int, end_ms: int, tz_offset_ms: int) -> list[Candle]:
        """The `interval` candles opened in [start_ms, end_ms], oldest first (under the lock)."""
        level = s.levels[_base_for(interval, tz_offset_ms)]
        if interval in BASES:
            return level.between(start_ms, end_ms)
        first = max(open_time(interval, start_ms, tz_offset_ms), open_time(interval, level.complete_from, tz_offset_ms))
        if first < level.complete_from:  # its first part was evicted: left out, not answered short
            first = close_time(interval, first, tz_offset_ms) + 1
        out: list[Candle] = []
        last = end_ms if end_ms >= FAR else close_time(interval, open_time(interval, end_ms, tz_offset_ms), tz_offset_ms)
        for base in level.between(first, last):
            open_ms = open_time(interval, base.open_ms, tz_offset_ms)
            if out and out[-1].open_ms == open_ms:
                out[-1].merged(base)
            else:
                out.append(base.copy(open_ms))
        return [c for c in out if start_ms <= c.open_ms <= end_ms]

    def klines(self, symbol: str, interval: str, start_ms: int | None = None, end_ms: int | None = None,
               limit: int = 500, tz_offset_ms: int = 0) -> list[list[object]]:
        """Binance's GET /api/v3/klines: the klines opened in [start_ms, end_ms]; with `start_ms`
        the first `limit` of them, else the last `limit` (the most recent without either)."""
        if interval not in INTERVALS:
            raise ValueError(f"unknown interval {interval!r}")
        with self._lock:
            s = self._symbols.get(symbol)
            if s is None or limit <= 0:
                return []
            lo = start_ms if start_ms is not None else 0
            hi = end_ms if end_ms is not None else FAR
            candles = self._derived(s, interval, lo, hi, tz_offset_ms)
            chosen = candles[:limit] if start_ms is not None else candles[-limit:]
            return [c.row(close_time(interval, c.open_ms, tz_offset_ms)) for c in chosen]

    def _last_candle(self, symbol: str, interval: str, tz_offset_ms: int) -> Candle | None:
        """The `interval` candle holding the symbol's last trade (a folded copy when derived)."""
        if interval not in INTERVALS:
            raise ValueError(f"unknown interval {interval!r}")
        with self._lock:
            s = self._symbols.get(symbol)
            if s is None or s.last is None:
                return None
            open_ms = open_time(interval, s.last.time_ms, tz_offset_ms)
            candles = self._derived(s, interval, open_ms, open_ms, tz_offset_ms)
            return candles[-1].copy(open_ms) if candles else None

    def current(self, symbol: str, interval: str, tz_offset_ms: int = 0) -> list[object] | None:
        """The kline that holds the symbol's last trade (still open until a trade falls in the next
        period), in Binance's kline array; None before any trade of the symbol."""
        c = self._last_candle(symbol, interval, tz_offset_ms)
        return c.row(close_time(interval, c.open_ms, tz_offset_ms)) if c else None

    def stream_kline(self, symbol: str, interval: str, closed: bool = False) -> dict[str, object] | None:
        """The kline of the last trade as the `k` object of Binance's `<symbol>@kline_<interval>`
        stream event (`x`: `closed`, which the stream's sender knows); None before any trade."""
        c = self._last_candle(symbol, interval, 0)
        if c is None:
            return None
        return {"t": c.open_ms, "T": close_time(interval, c.open_ms), "s": symbol, "i": interval,
                "f": c.first_id, "L": c.last_id, "o": fmt(c.open), "c": fmt(c.close), "h": fmt(c.high),
                "l": fmt(c.low), "v": fmt(c.volume), "n": c.trades, "x": closed, "q": fmt(c.quote),
                "V": fmt(c.taker_base), "Q": fmt(c.taker_quote), "B": "0"}

    def window(self, symbol: str, end_ms: int, span_ms: int) -> Window | None:
        """The 1m candles overlapping (end_ms - span_ms, end_ms] folded into one; None if none."""
        with self._lock:
            s = self._symbols.get(symbol)
            if s is None:
                return None
            level = s.levels["1m"]
            start = end_ms - span_ms
            inside = level.between(start - MINUTE + 1, end_ms)  # every minute overlapping the window
            if not inside:
                return None
            total = inside[0].copy(inside[0].open_ms)
            for c in inside[1:]:
                total.merged(c)
            before = bisect.bisect_left(level.opens, inside[0].open_ms)
            prev = level.candles[level.opens[before - 1]].close if before > 0 else None
            return Window(total, prev, start, end_ms)


def load_history(candles: Candles, paths: Iterable[str]) -> int:
    """Read recorded trades (streamerd tapes, data.binance.vision trade CSVs: `naived.market.tape`)
    into `candles`, in time order; the number of trades read."""
    files = [Path(p) for p in paths]
    if not files:
        return 0
    stats, progress = tape.ReadCounts(), tape.Progress()
    # Each file is in time order (a recording, a day's CSV): merged, never all held at once.
    merged = heapq.merge(*(tape.read_file(path, order, stats, progress) for order, path in enumerate(files)),
                         key=lambda t: (t[0], t[1]))
    count = 0
    for _, _, event, _ in merged:
        candles.add(event.s, Decimal(event.p), Decimal(event.q), event.T, event.m, event.t)
        count += 1
    log.info("history: %d trades from %d files (%d malformed lines)", count, len(files), stats.malformed)
    return count

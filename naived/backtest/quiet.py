"""The backtest's fast path: runs of trades that cannot change anything are skipped at once.

Per trade the engine (`engine.Backtest.on_trade`) asks the paper book to match, the traders to
decide, and marks the account. Almost every trade changes nothing: no resting order is crossed,
no rebuy is due, no trader is new. Which trade can matter is known from the state alone:

- a trader acts only when the price reaches its buy (`price <= buy`, strategy.on_trade's Check),
  its sell (`price >= sell`) or its rebuy level (`price < buy − buy × rebuy_interval`,
  strategy.rebuy_due); the book fills only an order a trade crosses. So each symbol has a low
  and a high watermark (`_watch`), and the next trade at or beyond one is found by numpy over
  the symbol's price column;
- a trader whose market gate is still filling, or that is new or mid-intent, acts on any trade:
  each of its symbol's trades is then an event, as is a symbol's first trade.

Those events are handed to the engine one by one (the daemon's own rules decide, exactly as on
the slow path). The trades between them are accounted in bulk (`_Skip`): the ledger's count,
last price and time; its equity, peak and drawdown from the run's lowest price and its largest
fall from a running maximum (equity is cash + units × price with units ≥ 0: monotone in the
price); the quote's curve likewise while one symbol of that quote moves it (else the run goes
through the engine trade by trade). The state the engine keeps per trade is rebuilt when an
event needs it: the feed gate's last five prices, the book's last trade per symbol, and the
PERCENT_PRICE_BY_SIDE average (`_ColumnAverage`, the window's in-band trades summed in exact
integers). `tests/test_backtest_fast.py` holds the result to the slow path's, byte for byte.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Callable
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from naived.backtest.columns import SCALE, Checked, Ints, text
from naived.backtest.ledger import SAMPLE_MS, Curve, Ledger
from naived.core.messages import TradeEvent
from naived.core.strategy import EIGHT
from naived.market.gate import REFERENCE_TRADES
from naived.paper.book import AVERAGE_SLICES, _Market

if TYPE_CHECKING:
    from naived.backtest.engine import Backtest

NEVER_LOW, NEVER_HIGH = -1, 2**62
EVERY = (2**62, -1)  # watermarks every price reaches: each trade is an event
FIRST_BLOCK, LAST_BLOCK = 512, 1 << 20  # the search for the next event reads blocks of growing size


def event(trades: Checked, k: int) -> TradeEvent:
    """The k-th trade as the engine takes it (Binance's trade message)."""
    ms = int(trades.time_ms[k])
    return TradeEvent("trade", ms, trades.symbols[trades.code[k]], int(trades.trade_id[k]), text(int(trades.price[k])),
                      text(int(trades.qty[k])), ms, False)


def every_trade(bt: Backtest, trades: Checked, progress: Callable[[int], None]) -> None:
    """The slow path, the reference: every trade through the engine."""
    for k in range(len(trades)):
        bt.on_trade(event(trades, k))
        if not k & 0x3FFF:
            progress(k)


def _dec(scaled: int) -> Decimal:
    return Decimal(scaled).scaleb(-8)


def _ceil(value: Decimal) -> int:
    return int((value * SCALE).to_integral_value(ROUND_CEILING))


def _floor(value: Decimal) -> int:
    return int((value * SCALE).to_integral_value(ROUND_FLOOR))


class _Symbol:
    """One symbol's columns: its rows in the input and their prices, quantities and times."""

    def __init__(self, trades: Checked, code: int, rows: Ints) -> None:
        self.name = trades.symbols[code]
        self.rows = rows
        self.price: Ints = trades.price[self.rows]
        self.qty: Ints = trades.qty[self.rows]
        self.time_ms: Ints = trades.time_ms[self.rows]
        self.next_event = -1  # the row of its next event; -1: to be found again
        self.done = 0  # its trades accounted so far (position in `rows`)

    def position(self, row: int) -> int:
        return int(np.searchsorted(self.rows, row))

    def in_band(self, start: int, end: int, band: Decimal) -> npt.NDArray[np.bool_]:
        """The feed gate's verdict on its trades start..end-1: within `band` of the median of
        the last five prices (its own included; the upper middle of an even count)."""
        verdicts = np.ones(end - start, dtype=bool)
        num, den = band.as_integer_ratio()
        for k in range(start, min(end, REFERENCE_TRADES - 1)):  # fewer than five prices yet
            window = sorted(int(p) for p in self.price[: k + 1])
            middle = window[len(window) // 2]
            verdicts[k - start] = abs(int(self.price[k]) - middle) * den <= num * middle
        first = max(start, REFERENCE_TRADES - 1)
        if first < end:
            windows = np.lib.stride_tricks.sliding_window_view(self.price[first - REFERENCE_TRADES + 1: end], REFERENCE_TRADES)
            medians = np.partition(windows, REFERENCE_TRADES // 2, axis=1)[:, REFERENCE_TRADES // 2]
            prices = self.price[first:end]
            if int(prices.max()) * max(num, den) < 2**62:
                verdicts[first - start:] = np.abs(prices - medians) * den <= medians * num
            else:  # too large for int64: exact in Python
                pairs = zip(prices.tolist(), medians.tolist(), strict=True)
                verdicts[first - start:] = [abs(p - m) * den <= m * num for p, m in pairs]
        return verdicts


class _ColumnAverage:
    """The book's PERCENT_PRICE_BY_SIDE average (`paper.book._Average`) computed when asked, from
    the symbol's columns: the in-band trades up to the current event in the slices of the window."""

    def __init__(self, symbol: _Symbol, minutes: int, band: Decimal, upto: Callable[[], int]) -> None:
        self.symbol = symbol
        self.window_ms = minutes * 60_000
        self.slice_ms = max(1000, self.window_ms // AVERAGE_SLICES)
        self.band = band
        self.upto = upto  # the row of the trade the engine is at

    def add(self, now: int, price: Decimal, qty: Decimal) -> None:
        pass  # the columns hold every trade

    def price(self, now: int) -> Decimal | None:
        s = self.symbol
        end = s.position(self.upto() + 1)
        # a slice leaves once all of it is older than the window: the oldest kept starts after this
        oldest = now - self.window_ms - self.slice_ms
        starts = s.time_ms[:end] - s.time_ms[:end] % self.slice_ms
        begin = int(np.searchsorted(starts, oldest, side="right"))
        keep = s.in_band(begin, end, self.band)
        prices, qtys = s.price[begin:end][keep].tolist(), s.qty[begin:end][keep].tolist()
        volume = sum(qtys)
        if not volume:
            return None
        quoted = sum(map(operator.mul, prices, qtys))
        return (Decimal(quoted).scaleb(-16) / Decimal(volume).scaleb(-8)).quantize(EIGHT)


def _firsts_of_seconds(times: Ints, last_sampled: int | None) -> list[int]:
    """Which of these trades open a new second of tape (`SAMPLE_MS`) after the last sample."""
    if not len(times):
        return []
    seconds = times // SAMPLE_MS
    new = np.empty(len(times), dtype=bool)
    new[0] = last_sampled is None or int(seconds[0]) != last_sampled // SAMPLE_MS
    new[1:] = seconds[1:] != seconds[:-1]
    return np.flatnonzero(new).tolist()


class _Peak:
    """Where a run of prices takes an equity `cash + units × price` (units > 0) with its peak
    and largest drawdown so far: `Ledger.mark`'s and `Curve.move`'s rules over the whole run."""

    @staticmethod
    def run(cash: Decimal, units: Decimal, prices: Ints, peak: Decimal, drawdown: Decimal,
            fraction: Decimal) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        """(equity at the end, peak, max drawdown, its fraction of the peak before it)."""
        highest = int(prices.max())
        top = cash + units * _dec(highest)
        new_peak = top if top > peak else peak
        # drawdown at t = max(peak before the run, equity at the highest price before t) − equity at t
        low = int(prices.argmin())
        falls = [(peak - (cash + units * _dec(int(prices[low]))), low)]
        if len(prices) > 1:
            running = np.maximum.accumulate(prices)[:-1]
            drop = running - prices[1:]
            at = int(drop.argmax())
            falls.append((units * _dec(int(drop[at])), at + 1))
        deepest = max(f for f, _ in falls)
        if deepest > drawdown:
            t = min(at for f, at in falls if f == deepest)
            before = peak if t == 0 else max(peak, cash + units * _dec(int(prices[:t].max())))
            drawdown = before - (cash + units * _dec(int(prices[t])))
            fraction = drawdown / before
        return cash + units * _dec(int(prices[-1])), new_peak, drawdown, fraction


class Quiet:
    """Drives one `Backtest` over checked trades, handing it only the trades that can matter."""

    def __init__(self, bt: Backtest, trades: Checked) -> None:
        self.bt = bt
        self.trades = trades
        by_symbol = np.argsort(trades.code, kind="stable")  # each symbol's rows, in order
        bounds = np.cumsum(np.bincount(trades.code, minlength=len(trades.symbols)))[:-1]
        self.symbols = [_Symbol(trades, c, rows.astype(np.int64))
                        for c, rows in enumerate(np.split(by_symbol, bounds))]
        self.by_name = {s.name: s for s in self.symbols}
        self.at = -1  # the row of the event being handed over
        self.averaged: set[str] = set()

    def possible(self) -> bool:
        """The skip's arithmetic holds: each symbol's times go forward (the book's average
        window and the plot's samples assume it)."""
        return all(bool(np.all(np.diff(s.time_ms) >= 0)) for s in self.symbols)

    def run(self, progress: Callable[[int], None]) -> None:
        n = len(self.trades)
        row = 0
        while row < n:
            nxt = min((self._next(s, row) for s in self.symbols), default=n)
            if nxt > row:
                self._skip(row, nxt)
            if nxt >= n:
                break
            self._event(nxt)
            row = nxt + 1
            progress(row)

    # --- events ------------------------------------------------------------------------

    def _watch(self, s: _Symbol) -> tuple[int, int]:
        """(low, high): a trade at or below low, or at or above high, may change something."""
        route = self.bt._routes.get(s.name)
        if route is None:
            return EVERY  # its first trade adds it
        run = route[0]
        low, high = NEVER_LOW, NEVER_HIGH
        if run.failed is None:
            for trader in run.order:
                state = trader.state
                if trader.gate is not None or state.intent is not None:
                    return EVERY
                buy, sell = state.buy_order, state.sell_order
                if state.status == "buying" and buy is not None:
                    low = max(low, _floor(Decimal(buy.price)))
                elif state.status == "selling" and sell is not None:
                    high = min(high, _ceil(Decimal(sell.price)))
                else:
                    return EVERY
                if not state.rebuy_notified and buy is not None:
                    price = Decimal(buy.price)
                    limit = price - price * Decimal(state.settings.rebuy_interval)  # strategy.rebuy_due's
                    low = max(low, _ceil(limit) - 1)  # price < limit
        for order in self.bt.exchange.book._open.get(s.name, {}).values():
            if order.side == "BUY":
                low = max(low, _floor(order.price))
            else:
                high = min(high, _ceil(order.price))
        return low, high

    def _next(self, s: _Symbol, row: int) -> int:
        if s.next_event >= row:
            return s.next_event
        low, high = self._watch(s)
        prices = s.price
        pos = s.position(row)
        step = FIRST_BLOCK
        while pos < len(prices):
            end = min(len(prices), pos + step)
            block = prices[pos:end]
            hit = (block <= low) | (block >= high)
            k = int(hit.argmax())
            if hit[k]:
                s.next_event = int(s.rows[pos + k])
                return s.next_event
            pos, step = end, min(step * 4, LAST_BLOCK)
        s.next_event = len(self.trades)
        return s.next_event

    def _event(self, row: int) -> None:
        s = self.symbols[self.trades.code[row]]
        self.at = row
        self._refresh(s, row)
        self.bt.on_trade(event(self.trades, row))
        s.next_event = -1  # its state may have changed
        s.done = s.position(row + 1)
        if s.name not in self.averaged and s.name in self.bt._routes:
            self._average(s)

    def _average(self, s: _Symbol) -> None:
        self.averaged.add(s.name)
        f = self.bt.filters[s.name]
        if f.avg_price_mins:
            band = self.bt._routes[s.name][0].trading.price_band
            self.bt.exchange.book._averages[s.name] = _ColumnAverage(s, f.avg_price_mins, band, lambda: self.at)  # type: ignore[assignment]  # the book's average, computed from the columns

    def _refresh(self, s: _Symbol, row: int) -> None:
        """What the engine keeps per trade, as of the trade before `row`: the feed gate's last
        prices and the book's last trade (per symbol; a BNB market prices commissions)."""
        route = self.bt._routes.get(s.name)
        if route is None:
            return
        end = s.position(row)
        feed = route[4]
        feed.recent = deque((_dec(int(p)) for p in s.price[max(0, end - REFERENCE_TRADES):end]), maxlen=REFERENCE_TRADES)
        for other in self.symbols:
            if other is s or other.name.startswith("BNB"):
                self._market(other, other.position(row))

    def _market(self, s: _Symbol, end: int) -> None:
        route = self.bt._routes.get(s.name)
        if route is None or end == 0:
            return
        band = route[0].trading.price_band
        start = max(0, end - 64)
        while True:
            verdicts = s.in_band(start, end, band)
            hits = np.flatnonzero(verdicts)
            if len(hits):
                k = start + int(hits[-1])
                book = self.bt.exchange.book
                book._market[s.name] = _Market(_dec(int(s.price[k])), _dec(int(s.qty[k])), int(self.trades.trade_id[s.rows[k]]),
                                               int(s.time_ms[k]))
                return
            if start == 0:
                return
            end, start = start, max(0, start - 4096)

    # --- the trades between events -----------------------------------------------------------

    def _skip(self, row: int, end: int) -> None:
        moving: dict[str, list[_Symbol]] = {}
        spans: list[tuple[_Symbol, int, int]] = []
        for s in self.symbols:
            a, b = s.done, s.position(end)
            if a >= b:
                continue
            spans.append((s, a, b))
            ledger = self.bt.ledgers.get(s.name)
            if ledger is not None and ledger.units:
                moving.setdefault(ledger.quote, []).append(s)
        if any(len(group) > 1 for group in moving.values()) or any(
                self.bt.ledgers[s.name].units < 0 for group in moving.values() for s in group):
            for s, _, _ in spans:  # what the engine keeps per trade, as of `row`
                self._refresh(s, row)
            for k in range(row, end):  # several symbols move one curve: their sum, trade by trade
                self.at = k
                self.bt.on_trade(event(self.trades, k))
        else:
            if self.bt.keep_samples:  # before the accounts move: the samples need where they start
                self._samples(spans, moving)
            for s, a, b in spans:
                self._account(s, a, b)
        for s, _, b in spans:
            s.done = b
        self.bt.now_ms = int(self.trades.time_ms[end - 1])

    def _samples(self, spans: list[tuple[_Symbol, int, int]], moving: dict[str, list[_Symbol]]) -> None:
        """The plot's samples over the run (`Ledger.mark`'s and `Curve.move`'s: the first trade
        of each second of tape), per symbol and per quote; at most one symbol per quote moves."""
        by_quote: dict[str, list[tuple[_Symbol, int, int]]] = {}
        for s, a, b in spans:
            ledger = self.bt.ledgers[s.name]
            by_quote.setdefault(ledger.quote, []).append((s, a, b))
            assert ledger.samples is not None
            for k in _firsts_of_seconds(s.time_ms[a:b], ledger.samples[-1][0] if ledger.samples else None):
                price = _dec(int(s.price[a + k]))
                ledger.samples.append((int(s.time_ms[a + k]), price, ledger.cash + ledger.units * price))
        for quote, group in by_quote.items():
            curve = self.bt.curves[quote]
            assert curve.samples is not None
            rows = np.sort(np.concatenate([s.rows[a:b] for s, a, b in group]))
            times = self.trades.time_ms[rows]
            mover = next(((s, a, b) for s, a, b in group if s in moving.get(quote, [])), None)
            for k in _firsts_of_seconds(times, curve.samples[-1][0] if curve.samples else None):
                equity = curve.equity
                if mover is not None:  # the curve moves with its one moving symbol's last price
                    m, a, b = mover
                    seen = int(np.searchsorted(m.rows[a:b], rows[k], side="right"))
                    if seen:
                        ledger = self.bt.ledgers[m.name]
                        price = _dec(int(m.price[a + seen - 1]))
                        equity = curve.equity - ledger.equity + ledger.cash + ledger.units * price
                curve.samples.append((int(times[k]), equity))

    def _account(self, s: _Symbol, a: int, b: int) -> None:
        """`Ledger.mark` (and `Curve.move`) over trades a..b-1 of the symbol, none of them a fill."""
        ledger: Ledger = self.bt.ledgers[s.name]
        curve: Curve = self.bt.curves[ledger.quote]
        prices = s.price[a:b]
        ledger.trades += b - a
        ledger.last_ms = int(s.time_ms[b - 1])
        ledger.price_text = text(int(prices[-1]))
        ledger.price = Decimal(ledger.price_text)
        if not ledger.units:
            return  # equity is the cash: nothing moves
        units = ledger.units
        offset = curve.equity - ledger.equity
        equity, ledger.peak, ledger.max_drawdown, ledger.max_drawdown_fraction = _Peak.run(
            ledger.cash, units, prices, ledger.peak, ledger.max_drawdown, ledger.max_drawdown_fraction)
        total, curve.peak, curve.max_drawdown, curve.max_drawdown_fraction = _Peak.run(
            offset + ledger.cash, units, prices, curve.peak, curve.max_drawdown, curve.max_drawdown_fraction)
        ledger.equity, curve.equity = equity, total

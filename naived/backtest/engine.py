"""Backtest: the naive strategy over recorded trades, with the daemon's own rules, in one process.

Nothing in this package decides anything about trading. One `Backtest` per setting is fed
every trade of the input (`trades.py`) in one pass; per trade, as the tree would: the paper
exchange's feed gate judges it and the book fills what it crosses (`exchange.py`: the paper
exchange's own request handlers over an in-memory book, answers read by the Binance client's own
decoders), then each symbol's traders decide with `naived.core.strategy` and carry the decisions
out with the daemon's own interpreter, started and numbered by the leader's own rules
(`traders.py`: `naived.core.actions`, `naived.core.cycles`), then the account is marked
(`ledger.py`). The report (`report.py`) is made from the ledger, the finished cycles and the
traders' states only, so the run through the real tree (`through_tree.py`) makes the same one
from the same facts. Only the transport is gone: no processes, no sockets, no HTTP.

Deliberate differences from a paper run of the same tape (docs/architecture.md, "Backtest"):
- Each trade goes to the book first, then to the traders, and a trader checks its order as
  soon as a trade reaches the order's price: it learns of a fill at the trade that made it.
  In the tree the trader may query before the paper exchange has seen that trade and learn
  it one or more trades later, so its next order may start from a later price.
- A trader started by the leader (new cycle, rebuy) sees the trade after the one that
  started it; in the tree it sees whichever trade comes after its fork and subscription.
- A trader's gate sees every trade from its start; in the tree a trader misses the trades
  while it is unsubscribed (its buy rests, the account stream pushes its fills).
- Exchange-side faults (`paper.faults`) are not drawn: a backtest has no requests to fail.
- A trader that fails (a rejected order, a chunk below the minimum) ends the symbol's
  backtest at once, with the reason in the report; the tree would restart it until the
  restart intensity marks the symbol failed.

Deterministic: the paper book's clock is the tape's time, client order ids carry the fixed
prefix `traders.BACKTEST_PREFIX`, and nothing reads the wall clock but the speed figure (stderr).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from naived.backtest import columns, parallel, quiet
from naived.backtest.columns import Checked
from naived.backtest.errors import BacktestError
from naived.backtest.exchange import InProcessExchange
from naived.backtest.ledger import ZERO, Curve, Ledger
from naived.backtest.orders import OrderLog
from naived.backtest.report import InputSummary, Report, settings_dict, totals
from naived.backtest.sweep import apply_settings
from naived.backtest.traders import SymbolRun
from naived.core.config import Config, NoBudget
from naived.core.messages import TradeEvent
from naived.core.symbols import SymbolFilters, table
from naived.market.gate import MarketGate
from naived.ops.progress import ProgressBar
from naived.paper.book import Change


class Backtest:
    """One configuration over the trades it is fed, one `SymbolRun` per symbol, one paper
    account for all of them (as one naived trades every symbol on one account)."""

    def __init__(self, config: Config, symbols: list[str] | None = None, keep_samples: bool = False,
                 keep_orders: bool = False) -> None:
        self.config = config
        self.only = set(symbols) if symbols else None
        self.keep_samples = keep_samples
        self.now_ms = 0
        self.exchange = InProcessExchange(config, self.clock)
        self.exchange.book.listeners.append(self._on_changes)
        self.orders = OrderLog() if keep_orders else None  # --orders, --plot: every order and fill
        if self.orders is not None:
            self.exchange.book.listeners.append(self.orders.on_changes)
        self.filters: dict[str, SymbolFilters] = {}
        self.runs: dict[str, SymbolRun] = {}
        self.ledgers: dict[str, Ledger] = {}
        self.curves: dict[str, Curve] = {}
        self._routes: dict[str, tuple[SymbolRun, SymbolFilters, Ledger, Curve, MarketGate]] = {}  # one lookup per trade
        self._book_on_trade = self.exchange.book.on_trade
        for symbol in sorted(self.only or ()):
            self.add(symbol)

    def add(self, symbol: str) -> SymbolRun:
        """Start trading a symbol at its first trade, as `naivectl start-trading` would."""
        f = table().get(symbol)
        if f is None:
            raise BacktestError(f"{symbol}: not in the paper exchange's symbol table (naived/core/symbols.csv)")
        try:
            trading = self.config.trading.for_symbol(symbol, f.quote)
        except NoBudget as exc:
            raise BacktestError(str(exc)) from None
        assert trading.budget is not None
        ledger = Ledger(symbol, f.base, f.quote, trading.budget)
        if self.keep_samples:
            ledger.samples, ledger.markers = [], []
        curve = self.curves.setdefault(f.quote, Curve(ZERO, samples=[] if self.keep_samples else None))
        curve.equity += trading.budget  # a symbol joining adds its budget: not a gain
        curve.peak += trading.budget
        self.filters[symbol], self.ledgers[symbol] = f, ledger
        run = self.runs[symbol] = SymbolRun(symbol, trading, f, self.exchange, self.clock, ledger)
        # The paper exchange's feed judges each trade as its feed thread does (paper/feed.py
        # `TradeFeed`): the traders' band, acting from the first trade.
        feed = MarketGate(symbol, trading.price_band, f"paper feed {symbol}", confirm=1)
        self._routes[symbol] = (run, f, ledger, curve, feed)
        return run

    def clock(self) -> int:
        return self.now_ms

    def _on_changes(self, changes: list[Change]) -> None:
        """The account's fills, as the user data stream would carry them."""
        for change in changes:
            fill = change.fill
            if fill is not None:
                order = change.order
                self.ledgers[order.symbol].fill(order.side, fill.price, fill.qty, fill.commission,
                                                fill.commission_asset, self.now_ms)

    def on_trade(self, event: TradeEvent) -> None:
        route = self._routes.get(event.s)
        if route is None:
            if self.only is not None:
                return
            self.add(event.s)
            route = self._routes[event.s]
        run, f, ledger, curve, feed = route
        self.now_ms = event.E
        # As the paper exchange's trade feed does, then the traders (who saw the same trade).
        price = ledger.price if event.p == ledger.price_text else Decimal(event.p)
        in_band = isinstance(feed.judge(event), TradeEvent)
        if in_band:
            self._book_on_trade(f, price, Decimal(event.q), event.t)
        run.on_trade(event, in_band)
        change = ledger.mark(price, event.p, event.E)
        if change or curve.samples is not None:
            curve.move(change, event.E)

    def report(self, inputs: list[str], mode: str = "backtest", read: InputSummary | None = None) -> Report:
        summaries = [self.runs[s].summary() for s in sorted(self.runs)]
        settings = {s: settings_dict(self.runs[s].trading) for s in sorted(self.runs)}
        return Report([Path(p).name for p in inputs], mode, settings, summaries, totals(summaries, self.curves), read)


@dataclass
class Outcome:
    reports: list[tuple[dict[str, str], Report]]  # per setting, in the sweep's order
    backtest: Backtest | None  # the last setting's run, when run in this process (the plot draws it)
    trades: int
    seconds: float
    input: InputSummary
    breaks: list[int]  # when a new period of the input starts (ms): the plot's panels


def drive(bt: Backtest, trades: Checked, every_trade: bool = False, progress: Callable[[int], None] | None = None) -> None:
    """One setting over the checked trades: the fast path (`quiet.Quiet`) where its arithmetic
    holds, else (or when asked: the reference) every trade through `Backtest.on_trade`."""
    tick = progress or (lambda _: None)
    fast = None if every_trade else quiet.Quiet(bt, trades)
    if fast is not None and fast.possible():
        fast.run(tick)
    else:
        quiet.every_trade(bt, trades, tick)


def run(config: Config, paths: list[str], sets: list[dict[str, str]] | None = None, keep_samples: bool = False,
        symbols: list[str] | None = None, every_trade: bool = False, csv_symbol: str | None = None,
        jobs: int = 1, keep_orders: bool = False) -> Outcome:
    """Every setting of the sweep over the input, read and checked once (`columns.read`); with
    `jobs` > 1 the settings run in that many processes (`parallel.sweep`), in the same order."""
    trades = columns.read(paths, csv_symbol, set(symbols) if symbols else None)
    if not len(trades):
        raise BacktestError("the input has no trades")
    settings = [(changes, apply_settings(config, changes)) for changes in (sets or [{}])]
    started = time.perf_counter()
    bt = None
    if jobs > 1 and len(settings) > 1:
        reports = parallel.sweep(settings, trades, paths, symbols, every_trade, jobs)
    else:
        reports = []
        done = [0]
        bar = ProgressBar("backtest", lambda: done[0] / (len(trades) * len(settings)))
        for number, (changes, chosen) in enumerate(settings):
            bt = Backtest(chosen, symbols, keep_samples, keep_orders)

            def tick(row: int, base: int = number * len(trades)) -> None:
                done[0] = base + row
                if bar.enabled:
                    bar.update(done[0])

            drive(bt, trades, every_trade, tick)
            reports.append((changes, bt.report(paths, read=trades.summary)))
        bar.close()
    return Outcome(reports, bt, len(trades), time.perf_counter() - started, trades.summary, trades.breaks)

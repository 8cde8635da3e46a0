"""Backtest: the naive strategy over recorded trades, with the daemon's own rules.

Nothing here decides anything about trading. The decisions are `naived.core.strategy`'s pure
functions, carried out by the daemon's trader's own interpreter (`naived.core.actions`: Place,
Check, FetchFills, Finish); traders are started, restarted for a new cycle and added on a
rebuy by the leader's own rules (`naived.core.cycles`); orders go to the paper exchange's own request handlers
(`naived.paper.server.PaperExchange`: Binance's checks, `PaperBook`'s matching and
commission) and their JSON answers are read by the exchange client's own decoders. Trades
pass the market gates first (`naived.market.gate`: a fresh gate per trader process, one with
`confirm=1` for the paper exchange's feed). Only the transport is gone: no processes, no
sockets, no HTTP.

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

The report is made from three things only, so a run through the real tree
(`naived.backtest.through_tree`) produces the same one from the same facts: the account's fills
(cash and base per symbol, marked at each trade: the equity curve), the finished cycles'
books (`CycleResult`: realised P&L) and the traders' states at the end.

Deterministic: the paper book's clock is the tape's time, client order ids carry the fixed
prefix `BACKTEST_PREFIX`, and nothing reads the wall clock but the speed figure (stderr).
"""

from __future__ import annotations

import datetime
import heapq
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from naived.core import actions, cycles, strategy
from naived.core.config import Config, NoBudget, TradingSettings
from naived.core.messages import CycleResult, Fill, Intent, Order, TradeEvent, TraderState
from naived.core.symbols import SymbolFilters, quote_assets, table
from naived.exchange import binance as exchange
from naived.market.gate import REFERENCE_TRADES, MarketGate
from naived.market.tape import Progress, ReadCounts, TapeError, check_files, read_file
from naived.ops.progress import ProgressBar
from naived.paper.book import Change, Fees, PaperBook, Rejected
from naived.paper.server import PaperExchange

BACKTEST_PREFIX = "bt"  # client order id prefix: fixed, so two runs place the same ids
EIGHT = Decimal("0.00000001")
ZERO = Decimal(0)
SAMPLE_MS = 1000  # the plot keeps one point per symbol per second of tape (the figures use every trade)


class BacktestError(Exception):
    """An input or setting the backtest cannot use, worded for the user in one line."""


# --- input ---------------------------------------------------------------------------------


def read_trades(paths: Iterable[str], stats: ReadCounts | None = None) -> tuple[Iterator[TradeEvent], Callable[[], float]]:
    """The trades of every file, merged by time as streamerd's replay merges them (the same
    reader: recorded `<ns> <json>` tapes and data.binance.vision CSVs, ms or µs), and a
    function giving the fraction of the input read so far (for the progress bar)."""
    try:
        files = check_files(list(paths))
    except TapeError as exc:
        raise BacktestError(str(exc)) from None
    stats = stats or ReadCounts()
    progress = Progress()
    streams = [read_file(p, i, stats, progress) for i, p in enumerate(files)]
    merged = streams[0] if len(streams) == 1 else heapq.merge(*streams)
    return (item[2] for item in merged), progress.ratio


# --- the paper exchange, in-process --------------------------------------------------------


class _NoFeed:
    """PaperExchange's trade feed: the backtest hands trades to the book itself."""

    after_trade = None

    def want(self, symbol: str) -> None:
        pass

    def market(self) -> dict[str, dict[str, Any]]:
        return {}


class InProcessExchange:
    """`BinanceClient`'s order calls, answered by the paper exchange's request handlers in this
    process: the same parameters, checks, matching, commission and JSON, decoded by the
    client's own decoders. A refusal becomes the client's `BinanceError` / `UnknownOrder`."""

    def __init__(self, config: Config, clock: Callable[[], int]) -> None:
        paper = config.paper
        self.clock = clock
        fees = Fees(paper.maker_commission, paper.taker_commission, paper.commission_in_bnb)
        self.book = PaperBook(Path(":memory:"), paper.starting_balances(quote_assets()), fees=fees, fill_on_touch=paper.fill_on_touch,
                              partial_fills=paper.partial_fills, clock=clock)
        self.app = PaperExchange(config, self.book, _NoFeed())  # type: ignore[arg-type]

    def _call(self, handler: Callable[[dict[str, str], int], tuple[int, Any]], params: dict[str, str]) -> bytes:
        try:
            _, body = handler(params, self.clock() * 1_000_000)
        except Rejected as exc:
            kind = exchange.UnknownOrder if exc.code == exchange.UNKNOWN_ORDER else exchange.BinanceError
            raise kind(exc.code, exc.msg, exc.status) from None
        return msgspec.json.encode(body)

    def new_order(self, symbol: str, side: str, price: str, quantity: str, client_order_id: str) -> Order:
        params = {"symbol": symbol, "side": side, "type": "LIMIT", "timeInForce": "GTC", "quantity": quantity,
                  "price": price, "newClientOrderId": client_order_id, "newOrderRespType": "FULL"}
        return exchange._order(exchange._order_decoder.decode(self._call(self.app.new_order, params)))

    def get_order(self, symbol: str, client_order_id: str) -> Order:
        params = {"symbol": symbol, "origClientOrderId": client_order_id}
        return exchange._order(exchange._order_decoder.decode(self._call(self.app.get_order, params)))

    def my_trades(self, symbol: str, order_id: int) -> list[Fill]:
        params = {"symbol": symbol, "orderId": str(order_id), "fromId": "0", "limit": str(exchange.MY_TRADES_LIMIT)}
        page = exchange._trades_decoder.decode(self._call(self.app.my_trades, params))
        return [Fill(t.price, t.qty, t.commission, t.commissionAsset, t.id) for t in page if t.orderId == order_id]


# --- the account, marked at every trade: equity and drawdown -----------------------------------


@dataclass
class Marker:
    """A fill on the price chart."""

    time_ms: int
    price: Decimal
    side: str


@dataclass
class Ledger:
    """One symbol's share of the paper account, from its fills: quote cash (starting at the
    budget) and base held, marked at each trade's price."""

    symbol: str
    base: str
    quote: str
    budget: Decimal
    cash: Decimal = ZERO
    units: Decimal = ZERO
    fees_quote: Decimal = ZERO
    fees_other: dict[str, Decimal] = field(default_factory=dict)  # commission in a third asset (BNB)
    price: Decimal = ZERO  # the last trade's
    price_text: str = ""  # as printed: the next trade at the same text needs no new Decimal
    moved: bool = False  # a fill since the last mark
    equity: Decimal = ZERO
    peak: Decimal = ZERO
    max_drawdown: Decimal = ZERO
    max_drawdown_fraction: Decimal = ZERO
    trades: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    first_price: Decimal | None = None
    samples: list[tuple[int, Decimal, Decimal]] | None = None  # (ms, price, equity), for the plot
    markers: list[Marker] | None = None

    def __post_init__(self) -> None:
        self.cash = self.equity = self.peak = self.budget

    def fill(self, side: str, price: Decimal, qty: Decimal, commission: Decimal, asset: str, time_ms: int) -> None:
        self.moved = True
        amount = price * qty
        if side == "BUY":
            self.cash -= amount
            self.units += qty
        else:
            self.cash += amount
            self.units -= qty
        if asset == self.quote:
            self.cash -= commission
            self.fees_quote += commission
        elif asset == self.base:
            self.units -= commission
            self.fees_quote += commission * price
        elif commission:
            self.fees_other[asset] = self.fees_other.get(asset, ZERO) + commission
        if self.markers is not None:
            self.markers.append(Marker(time_ms, price, side))

    def mark(self, price: Decimal, text: str, time_ms: int) -> Decimal:
        """The equity at this trade's price (`text` as the trade printed it); returns the change
        since the last mark."""
        self.trades += 1
        self.last_ms = time_ms
        if self.samples is not None and (not self.samples or time_ms // SAMPLE_MS != self.samples[-1][0] // SAMPLE_MS):
            self.samples.append((time_ms, price, self.cash + self.units * price))
        if text == self.price_text and not self.moved:
            return ZERO  # same price, no fill since: the same equity
        if self.first_ms is None:
            self.first_ms, self.first_price = time_ms, price
        self.price, self.price_text, self.moved = price, text, False
        equity = self.cash + self.units * price if self.units else self.cash
        change = equity - self.equity
        self.equity = equity
        if equity > self.peak:
            self.peak = equity
        elif self.peak - equity > self.max_drawdown:
            self.max_drawdown = self.peak - equity
            self.max_drawdown_fraction = self.max_drawdown / self.peak
        return change


@dataclass
class Curve:
    """The equity of every symbol together (one quote asset), for the total drawdown."""

    equity: Decimal
    peak: Decimal = ZERO
    max_drawdown: Decimal = ZERO
    max_drawdown_fraction: Decimal = ZERO
    samples: list[tuple[int, Decimal]] | None = None

    def __post_init__(self) -> None:
        self.peak = self.equity

    def move(self, change: Decimal, time_ms: int) -> None:
        if change:
            self.equity += change
            if self.equity > self.peak:
                self.peak = self.equity
            elif self.peak - self.equity > self.max_drawdown:
                self.max_drawdown = self.peak - self.equity
                self.max_drawdown_fraction = self.max_drawdown / self.peak
        if self.samples is not None and (not self.samples or time_ms // SAMPLE_MS != self.samples[-1][0] // SAMPLE_MS):
            self.samples.append((time_ms, self.equity))


# --- the report ------------------------------------------------------------------------------


class Finished(msgspec.Struct, frozen=True):
    """A finished cycle: who, when (exchange ms), and its books."""

    trader_id: int
    cycle: int
    started_at: int | None
    finished_at: int | None
    result: CycleResult


class SymbolSummary(msgspec.Struct, frozen=True):
    """Money in the quote asset, quantities in the base asset, decimal strings."""

    symbol: str
    base: str
    quote: str
    budget: str
    trades: int
    first_trade_ms: int | None
    last_trade_ms: int | None
    first_price: str | None
    last_price: str | None
    cycles_completed: int
    open_cycles: int  # traders mid-cycle at the end (a buy resting, or holding base)
    open_positions: int  # of those, the ones holding base
    held: str  # base held at the end: open positions and dust of finished cycles
    held_value: str  # marked at the last price
    orders_placed: int
    fees: str  # commission in the quote asset (base commission valued at its fill's price)
    fees_other: dict[str, str]  # commission in a third asset (BNB), not valued
    realised_pnl: str  # finished cycles' books (`CycleResult.pnl`)
    unrealised_pnl: str  # pnl − realised: what is held, at the last price, minus what it cost
    pnl: str  # the account's change: cash + held × last price − budget
    return_on_budget: str  # pnl / budget
    max_drawdown: str
    max_drawdown_fraction: str  # of the equity's peak before it
    failed: str | None = None  # why this symbol stopped early


class Total(msgspec.Struct, frozen=True):
    quote: str
    symbols: list[str]
    budget: str
    trades: int
    cycles_completed: int
    open_positions: int
    orders_placed: int
    fees: str
    realised_pnl: str
    unrealised_pnl: str
    pnl: str
    return_on_budget: str
    max_drawdown: str
    max_drawdown_fraction: str


class Report(msgspec.Struct, frozen=True):
    inputs: list[str]  # file names (without directories: the same report wherever the files are)
    mode: str  # "backtest" | "through-tree"
    settings: dict[str, dict[str, str]]  # per symbol, what the traders traded with
    symbols: list[SymbolSummary]
    totals: list[Total]  # one per quote asset


def _q(value: Decimal) -> str:
    """Money for the report: 8 decimals, as Binance prints amounts."""
    return format(value.quantize(EIGHT), "f")


def _num(value: Decimal) -> str:
    return strategy._plain(value)


def summarize(ledger: Ledger, finished: list[Finished], open_states: list[TraderState], orders_placed: int,
              failed: str | None) -> SymbolSummary:
    realised = sum((Decimal(f.result.pnl) for f in finished), ZERO)
    # A cycle books a sell when the sell ends (its fees are known then): an open cycle books the
    # sells that ended part-filled (cancelled, expired); its open sell's fills are unrealised.
    for state in open_states:
        if state.sells:
            realised += Decimal(strategy.cycle_result(msgspec.structs.replace(state, sell_order=None)).pnl)
    pnl = ledger.equity - ledger.budget
    positions = [s for s in open_states if s.buy_order is not None and strategy.holding(s) > 0]
    return SymbolSummary(
        symbol=ledger.symbol, base=ledger.base, quote=ledger.quote, budget=_num(ledger.budget), trades=ledger.trades,
        first_trade_ms=ledger.first_ms, last_trade_ms=ledger.last_ms,
        first_price=_num(ledger.first_price) if ledger.first_price is not None else None,
        last_price=_num(ledger.price) if ledger.trades else None,
        cycles_completed=len(finished), open_cycles=len(open_states), open_positions=len(positions),
        held=_num(ledger.units), held_value=_q(ledger.units * ledger.price), orders_placed=orders_placed,
        fees=_q(ledger.fees_quote), fees_other={a: _num(v) for a, v in sorted(ledger.fees_other.items())},
        realised_pnl=_q(realised), unrealised_pnl=_q(pnl - realised), pnl=_q(pnl),
        return_on_budget=_q(pnl / ledger.budget), max_drawdown=_q(ledger.max_drawdown),
        max_drawdown_fraction=_q(ledger.max_drawdown_fraction), failed=failed,
    )


def totals(summaries: list[SymbolSummary], curves: dict[str, Curve]) -> list[Total]:
    result = []
    for quote in sorted({s.quote for s in summaries}):
        group = [s for s in summaries if s.quote == quote]

        def add(name: str, group: list[SymbolSummary] = group) -> Decimal:
            return sum((Decimal(getattr(s, name)) for s in group), ZERO)

        budget, pnl, curve = add("budget"), add("pnl"), curves[quote]
        result.append(Total(
            quote=quote, symbols=[s.symbol for s in group], budget=_num(budget), trades=sum(s.trades for s in group),
            cycles_completed=sum(s.cycles_completed for s in group),
            open_positions=sum(s.open_positions for s in group), orders_placed=sum(s.orders_placed for s in group),
            fees=_q(add("fees")), realised_pnl=_q(add("realised_pnl")), unrealised_pnl=_q(add("unrealised_pnl")),
            pnl=_q(pnl), return_on_budget=_q(pnl / budget), max_drawdown=_q(curve.max_drawdown),
            max_drawdown_fraction=_q(curve.max_drawdown_fraction),
        ))
    return result


def settings_dict(trading: TradingSettings) -> dict[str, str]:
    return {f: str(getattr(trading, f)) for f in trading.__struct_fields__}


# --- the traders and their leader, as the daemon runs them --------------------------------------


class _Trader:
    """A trader without the process: its state, its market gate, and the venue its actions are
    carried out at (`naived.core.actions`): the paper exchange in this process, where nothing is
    in flight and nothing needs storing."""

    __slots__ = ("state", "client", "symbol", "clock", "placed", "gate", "quiet_state", "quiet_price")

    def __init__(self, state: TraderState, client: InProcessExchange, clock: Callable[[], int], band: Decimal) -> None:
        self.state = state
        self.client = client
        self.symbol = state.symbol
        self.clock = clock
        self.placed = 0  # orders placed, as the leader counts them (`cycles.counts`)
        # Its own market gate, fresh as a new trader process's: it acts on nothing before it has
        # seen 5 prices, then drops a price out of the band (naived/market/gate.py). The tape was read
        # and checked by its reader, so only the band is judged (`MarketGate.judge`). None once
        # full: see `SymbolRun.on_trade`.
        self.gate: MarketGate | None = MarketGate(state.symbol, band, f"{state.symbol}/{state.trader_id}")
        # The last (state, price) for which rebuy_due and on_trade decided nothing. Both are pure
        # functions of the state and the trade's price (its time matters only to a "new" state,
        # which always places), so the same state at the same price decides nothing again:
        # about 60% of real trades repeat the previous price.
        self.quiet_state: TraderState | None = None
        self.quiet_price = ""

    def act(self, action: strategy.Action) -> bool:
        """True when the cycle is over (the trader would exit 0)."""
        self.state, done = actions.carry_out(self.state, action, self)
        return done

    # --- the venue -------------------------------------------------------------------

    def record(self, state: TraderState) -> None:
        # In memory, nothing to store: only the leader's count of orders placed.
        self.placed += cycles.counts(self.state, state).get("orders_placed", 0)
        self.state = state

    def now(self) -> float:
        return self.clock() / 1000  # the tape's time, not the wall clock's

    def send(self, intent: Intent) -> Order | actions.Unsent:
        return self.client.new_order(self.symbol, intent.side, intent.price, intent.quantity, intent.client_order_id)

    def find(self, intent: Intent) -> Order | None:
        try:
            return self.client.get_order(self.symbol, intent.client_order_id)
        except exchange.UnknownOrder:
            return None

    def back_off(self, attempt: int) -> None:
        pass  # no send's outcome is unknown in process

    def look_up(self, client_order_id: str) -> Order | None:
        return self.client.get_order(self.symbol, client_order_id)

    def fills(self, order: Order) -> list[Fill]:
        return self.client.my_trades(self.symbol, order.order_id)  # type: ignore[arg-type]

    def fills_lag(self, order: Order, attempt: int) -> None:
        # The trader would ask again; in process the fills are all there at once.
        raise strategy.StrategyError(f"{strategy.s_id(self.state)}: fills of {order.client_order_id} do not add up")


class SymbolRun:
    """One symbol: the leader's bookkeeping (`naived.core.cycles`: fresh cycles, rebuys) over
    `_Trader`s."""

    def __init__(self, symbol: str, trading: TradingSettings, filters: SymbolFilters, client: InProcessExchange,
                 clock: Callable[[], int], ledger: Ledger) -> None:
        self.symbol = symbol
        self.trading = trading
        self.settings = strategy.settings_for(symbol, trading, filters)
        self.client = client
        self.clock = clock
        self.ledger = ledger
        self.next_cycle = 1  # the store's counter: cycles are numbered per symbol from 1
        self.traders: dict[int, _Trader] = {}
        self.order: list[_Trader] = []  # the traders in id order: who sees a trade first
        self.finished: list[Finished] = []
        self.orders_placed = 0
        self.failed: str | None = None
        for trader_id in cycles.starting((), trading.traders_at_start):
            self.start(trader_id)

    def start(self, trader_id: int) -> None:
        state = cycles.fresh(self.settings, trader_id, self.next_cycle, BACKTEST_PREFIX)
        self.next_cycle += 1
        self.traders[trader_id] = _Trader(state, self.client, self.clock, self.trading.price_band)
        self.order = [self.traders[i] for i in sorted(self.traders)]

    def on_trade(self, event: TradeEvent, in_band: bool) -> None:
        """`in_band`: the paper exchange's feed gate passed the trade (see below)."""
        if self.failed is not None:
            return
        done: list[_Trader] = []
        rebuys = 0
        try:
            price = event.p
            for trader in self.order:
                # The gate first, as trader.Trader.run, on every trade (before the quiet check).
                # A trader's own gate judges until it knows 5 prices. Those are then the symbol's
                # last 5, as the feed gate's (it has seen every trade of the symbol), and the band
                # is the same: from then on the trader's verdict is the feed gate's, judged once
                # per trade instead of once per trader (the backtest runs ~25% faster).
                gate = trader.gate
                if gate is not None:
                    verdict = gate.judge(event)
                    if len(gate.recent) == REFERENCE_TRADES:
                        trader.gate = None
                    if not isinstance(verdict, TradeEvent):
                        continue  # warming up, or out of the band: the strategy never sees it
                elif not in_band:
                    continue  # out of the band
                state = trader.state
                if state is trader.quiet_state and price == trader.quiet_price:
                    continue
                if strategy.rebuy_due(state, event):
                    trader.state = state = msgspec.structs.replace(state, rebuy_notified=True)
                    rebuys += 1
                trader.state, action = strategy.on_trade(state, event)
                if action is None:
                    if trader.state is state:
                        trader.quiet_state, trader.quiet_price = state, price
                elif trader.act(action):
                    done.append(trader)
        except (strategy.StrategyError, exchange.BinanceError) as exc:
            self.failed = str(exc)
            return
        for trader in done:
            self.finish(trader)
        for _ in range(rebuys):
            self.rebuy()

    def finish(self, trader: _Trader) -> None:
        """The trader exited 0: record the cycle, start the next one (leader.on_exit)."""
        state = trader.state
        assert state.result is not None
        self.finished.append(Finished(state.trader_id, state.cycle, state.started_at, state.finished_at, state.result))
        self.orders_placed += trader.placed
        del self.traders[state.trader_id]
        if cycles.continues(state.trader_id, self.trading.chunks):
            self.start(state.trader_id)
        else:
            self.order = [self.traders[i] for i in sorted(self.traders)]

    def rebuy(self) -> None:
        """leader.on_rebuy: another trader while fewer than `chunks` run."""
        free = cycles.rebuy_starts(self.traders, self.trading.chunks)
        if free is not None:
            self.start(free)

    def summary(self) -> SymbolSummary:
        placed = self.orders_placed + sum(t.placed for t in self.traders.values())
        open_states = [t.state for t in self.order]
        return summarize(self.ledger, self.finished, open_states, placed, self.failed)


# --- one run ---------------------------------------------------------------------------------


class Backtest:
    """One configuration over the trades it is fed, one `SymbolRun` per symbol, one paper
    account for all of them (as one naived trades every symbol on one account)."""

    def __init__(self, config: Config, symbols: list[str] | None = None, keep_samples: bool = False) -> None:
        self.config = config
        self.only = set(symbols) if symbols else None
        self.keep_samples = keep_samples
        self.now_ms = 0
        self.exchange = InProcessExchange(config, self.clock)
        self.exchange.book.listeners.append(self._on_changes)
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
        # The paper exchange's feed judges each trade as its feed thread does (paper/server.py
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

    def report(self, inputs: list[str], mode: str = "backtest") -> Report:
        summaries = [self.runs[s].summary() for s in sorted(self.runs)]
        settings = {s: settings_dict(self.runs[s].trading) for s in sorted(self.runs)}
        return Report([Path(p).name for p in inputs], mode, settings, summaries, totals(summaries, self.curves))


def apply_settings(config: Config, changes: dict[str, str]) -> Config:
    """`--set key=value` on the trading settings of every symbol (defaults and overrides),
    checked as the config file's are."""
    if not changes:
        return config
    allowed = set(TradingSettings.__struct_fields__)
    unknown = sorted(set(changes) - allowed)
    if unknown:
        raise BacktestError(f"--set {unknown[0]}: not a trading setting (one of {', '.join(sorted(allowed))})")
    raw = msgspec.to_builtins(config.trading)
    if "budget" in changes:  # every symbol's budget, each in its own quote asset
        raw["budgets"] = dict.fromkeys(quote_assets(), changes["budget"])
    raw["defaults"].update({k: v for k, v in changes.items() if k != "budget"})
    for overrides in raw["symbols"].values():
        overrides.update(changes)
    try:
        trading = msgspec.convert(raw, type(config.trading), strict=False)
    except msgspec.ValidationError as exc:
        raise BacktestError(f"--set: {exc}") from None
    return msgspec.structs.replace(config, trading=trading)


def parse_sets(values: Iterable[str]) -> list[dict[str, str]]:
    """`--set a=1,2 --set b=3` → every combination, in order: [{a:1,b:3}, {a:2,b:3}]."""
    axes: list[tuple[str, list[str]]] = []
    for text in values:
        key, sep, rhs = text.partition("=")
        options = [v.strip() for v in rhs.split(",") if v.strip()]
        if not sep or not key.strip() or not options:
            raise BacktestError(f"--set {text!r}: expected key=value[,value...], e.g. profit_interval=0.001,0.002")
        axes.append((key.strip(), options))
    return [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]


@dataclass
class Outcome:
    runs: list[tuple[dict[str, str], Backtest]]
    trades: int
    seconds: float


def run(config: Config, paths: list[str], sets: list[dict[str, str]] | None = None, keep_samples: bool = False,
        symbols: list[str] | None = None) -> Outcome:
    """Every setting of the sweep over one pass of the input (one `Backtest` each)."""
    events, ratio = read_trades(paths)
    runs = [(changes, Backtest(apply_settings(config, changes), symbols, keep_samples)) for changes in (sets or [{}])]
    bar = ProgressBar("backtest", ratio)
    started = time.perf_counter()
    count = 0
    handlers = [bt.on_trade for _, bt in runs]
    for count, event in enumerate(events, 1):
        for handle in handlers:
            handle(event)
        if bar.enabled and not count & 0x3FFF:
            bar.update(count)
    bar.close()
    if not count:
        raise BacktestError("the input has no trades")
    return Outcome(runs, count, time.perf_counter() - started)


# --- output ----------------------------------------------------------------------------------


def encode(report: Report | list[dict[str, Any]]) -> bytes:
    return msgspec.json.format(msgspec.json.encode(report), indent=2)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _pct(fraction: str) -> str:
    return f"{Decimal(fraction) * 100:+.4f}%"


_COLUMNS = ("cycles", "open", "orders", "fees", "realised", "unrealised", "pnl", "return", "max dd", "dd %")


def _figures(x: SymbolSummary | Total) -> list[str]:
    return [str(x.cycles_completed), str(x.open_positions), str(x.orders_placed), x.fees, x.realised_pnl,
            x.unrealised_pnl, x.pnl, _pct(x.return_on_budget), x.max_drawdown,
            f"{Decimal(x.max_drawdown_fraction) * 100:.4f}%"]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def render(report: Report) -> str:
    """The human summary: one row per symbol, one total per quote asset."""
    lines = [f"{report.mode}: {', '.join(report.inputs)}"]
    for s in report.symbols:
        t = report.settings[s.symbol]
        lines.append(
            f"{s.symbol}: {s.trades:,} trades {_when(s.first_trade_ms)} → {_when(s.last_trade_ms)} UTC, "
            f"price {s.first_price} → {s.last_price}; chunks {t['chunks']}, budget {t['budget']} {s.quote}, "
            f"buy_down {t['buy_down_interval']}, profit {t['profit_interval']}, rebuy {t['rebuy_interval']}"
        )
        if Decimal(s.held):
            lines.append(f"  held at the end: {s.held} {s.base} ({s.open_positions} open positions and dust), "
                         f"worth {s.held_value} {s.quote} at {s.last_price}")
        if s.fees_other:
            lines.append(f"  fees also paid in: {', '.join(f'{v} {a}' for a, v in s.fees_other.items())} (not valued)")
        if s.failed:
            lines.append(f"  FAILED, stopped early: {s.failed}")
    rows = [["", *_COLUMNS]]
    rows += [[s.symbol, *_figures(s)] for s in report.symbols]
    rows += [[f"total {t.quote}", *_figures(t)] for t in report.totals if len(t.symbols) > 1 or len(report.totals) > 1]
    lines.append("")
    lines += _table(rows)
    quotes = ", ".join(t.quote for t in report.totals)
    lines.append(f"(money in {quotes}; open = positions holding base at the end, marked to the last price; "
                 "return on the budget; max dd = largest fall of equity from a peak)")
    return "\n".join(lines)


def render_sweep(rows: list[tuple[dict[str, str], Report]]) -> str:
    keys = list(rows[0][0])
    table = [[*keys, "quote", *_COLUMNS]]
    for changes, report in rows:
        for t in report.totals:
            table.append([*(changes[k] for k in keys), t.quote, *_figures(t)])
    return "\n".join(_table(table))

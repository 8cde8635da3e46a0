"""One symbol's traders and their leader in the backtest's process: each trader's decisions
carried out by the daemon's own interpreter (`naived.core.actions`) at the in-process paper
exchange, and cycles started, numbered and added on a rebuy by the leader's own rules
(`naived.core.cycles`). Where this differs from the tree: `naived.backtest.engine`.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import msgspec

from naived.backtest.exchange import InProcessExchange
from naived.backtest.ledger import Ledger
from naived.backtest.report import Finished, SymbolSummary, summarize
from naived.core import actions, cycles, strategy
from naived.core.config import TradingSettings
from naived.core.messages import Fill, Intent, Order, TradeEvent, TraderState
from naived.core.symbols import SymbolFilters
from naived.exchange import binance as exchange
from naived.market.gate import REFERENCE_TRADES, MarketGate

BACKTEST_PREFIX = "bt"  # client order id prefix: fixed, so two runs place the same ids


class _Trader:
    """A trader without the process: its state, its market gate, and the venue its actions are
    carried out at (`naived.core.actions`): the paper exchange in this process, where nothing is
    in flight and nothing needs storing."""

    __slots__ = ("client", "clock", "gate", "placed", "quiet_price", "quiet_state", "state", "symbol")

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
        assert order.order_id is not None  # an order whose fills are asked for came from the exchange, with its id
        return self.client.my_trades(self.symbol, order.order_id)

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

"""The backtest's report: its structs (per symbol, totals per quote asset) and how they are
made from three facts only, the account's ledger, the finished cycles' books and the traders'
states at the end, so a run through the real tree (`naived.backtest.through_tree`) makes the
same report from the same facts."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from naived.backtest.ledger import Curve, Ledger
from naived.core import strategy
from naived.core.config import TradingSettings
from naived.core.messages import CycleResult, TraderState
from naived.core.strategy import EIGHT, ZERO


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


class Gap(msgspec.Struct, frozen=True):
    """Trade ids of a symbol that no input holds: from `after_id` + 1 to `before_id` − 1."""

    symbol: str
    after_id: int
    before_id: int
    missing: int
    from_ms: int  # the last trade before the gap
    to_ms: int  # the first trade after it


class InputSummary(msgspec.Struct, frozen=True):
    """What the input held and what its checks found (`naived.backtest.columns`)."""

    trades: int  # used: after duplicates were dropped
    duplicates: int  # the same symbol and trade id again: dropped
    malformed: int  # lines that are not trades: skipped
    truncated: int  # gzip files cut short: read up to the cut
    gaps: int
    missing_trades: int  # trade ids inside gaps
    recorded_gaps: int  # of those, holes streamerd marked in its tape (it could not fetch them)
    largest_gaps: list[Gap]  # at most `columns.GAPS_LISTED`, the largest first


class Report(msgspec.Struct, frozen=True):
    inputs: list[str]  # file names (without directories: the same report wherever the files are)
    mode: str  # "backtest" | "through-tree"
    settings: dict[str, dict[str, str | int]]  # per symbol, what the traders traded with
    symbols: list[SymbolSummary]
    totals: list[Total]  # one per quote asset
    input: InputSummary | None = None  # what reading the files found (in-process runs)


def money(value: Decimal) -> str:
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
        held=_num(ledger.units), held_value=money(ledger.units * ledger.price), orders_placed=orders_placed,
        fees=money(ledger.fees_quote), fees_other={a: _num(v) for a, v in sorted(ledger.fees_other.items())},
        realised_pnl=money(realised), unrealised_pnl=money(pnl - realised), pnl=money(pnl),
        return_on_budget=money(pnl / ledger.budget), max_drawdown=money(ledger.max_drawdown),
        max_drawdown_fraction=money(ledger.max_drawdown_fraction), failed=failed,
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
            fees=money(add("fees")), realised_pnl=money(add("realised_pnl")), unrealised_pnl=money(add("unrealised_pnl")),
            pnl=money(pnl), return_on_budget=money(pnl / budget), max_drawdown=money(curve.max_drawdown),
            max_drawdown_fraction=money(curve.max_drawdown_fraction),
        ))
    return result


def settings_dict(trading: TradingSettings) -> dict[str, str | int]:
    """The settings as the report shows them: counts (chunks, initial_traders) as numbers, the rest
    (decimal intervals and budgets, names) as the strings they are written as."""
    shown: dict[str, str | int] = {}
    for name in trading.__struct_fields__:
        value = getattr(trading, name)
        shown[name] = value if isinstance(value, int) and not isinstance(value, bool) else str(value)
    return shown

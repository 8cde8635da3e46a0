"""A symbol's cycle bookkeeping, as the book's leader keeps it (chapters 5 and 9): the traders a
symbol starts with, a fresh cycle's state, the next cycle after a finished one under the same
trader id, the trader a rebuy starts, what a trader's state change adds to the symbol's
counters, and the orders of a cycle that filled.

Pure rules over plain values. The leader (`naived.tree.leader`: forking and reaping the
traders, the durable store and its cycle counter) and the backtest (`naived.backtest.traders`,
in process) both follow them, so a backtest starts and numbers cycles as the tree does.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from decimal import Decimal

from naived.core.config import TradingSettings
from naived.core.messages import FilledOrder, Order, Settings, TraderState


def starting(resumed: Iterable[int], traders_at_start: int, shutting_down: bool = False) -> list[int]:
    """The traders a symbol (re)starts with, in id order: each one with a stored state (it resumes
    its cycle) and, unless the symbol is shutting down, the first `traders_at_start`."""
    ids = set(resumed)
    if not shutting_down:
        ids |= set(range(traders_at_start))
    return sorted(ids)


def fresh(settings: Settings, trader_id: int, cycle: int, id_prefix: str) -> TraderState:
    """A new cycle's state: nothing decided yet. `cycle` must never have been used for the symbol:
    client order ids derive from it."""
    return TraderState(settings.symbol, trader_id, cycle, settings, id_prefix=id_prefix)


def continues(trader_id: int, chunks: int, shutting_down: bool = False) -> bool:
    """Does a trader whose cycle finished start the next one, under its id? Not while the symbol
    shuts down, nor a trader past `chunks` (a reload made them fewer)."""
    return not shutting_down and trader_id < chunks


def rebuy_starts(running: Collection[int], chunks: int, shutting_down: bool = False) -> int | None:
    """The trader a rebuy starts: the lowest free id, while fewer than `chunks` run; None when
    the rebuy is ignored."""
    if shutting_down or len(running) >= chunks:
        return None
    return next(i for i in range(chunks) if i not in running)


def rebuy_possible(trading: TradingSettings) -> bool:
    """Can a rebuy ever start a trader? Only when fewer than `chunks` start with the symbol."""
    return trading.traders_at_start < trading.chunks


def counts(old: TraderState | None, new: TraderState) -> dict[str, int]:
    """What a state change means for the counters: orders placed or filled, outcomes unknown."""
    result: dict[str, int] = {}
    legs = ((old.buy_order if old else None, new.buy_order), (old.sell_order if old else None, new.sell_order))
    for before, after in legs:
        if after is None:
            continue
        if before is None or before.client_order_id != after.client_order_id:
            result["orders_placed"] = result.get("orders_placed", 0) + 1
        if after.status == "FILLED" and (before is None or before.status != "FILLED"):
            result["orders_filled"] = result.get("orders_filled", 0) + 1
    if new.intent and new.intent.unknown and not (old and old.intent and old.intent.unknown):
        result["intents_unknown"] = 1
    return result


def orders(state: TraderState) -> list[Order]:
    """A cycle's orders in the order they were placed: the buy, the earlier sells, the sell."""
    return [o for o in (state.buy_order, *state.sells, state.sell_order) if o is not None]


def filled(placed: Iterable[Order]) -> list[FilledOrder]:
    """The orders that filled, fully or in part (whatever their status: a sell cancelled part-filled
    sold something), as the observer's chart marks them."""
    return [FilledOrder(o.client_order_id, o.side, o.executed_qty, o.quote_qty, o.update_time)
            for o in placed if Decimal(o.executed_qty) > 0]

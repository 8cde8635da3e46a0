"""Positions and profit of a symbol's traders, from their states: pure functions, Decimal money.

A trader's cycle as it stands (`cycle`, from its state), in the symbol's quote asset:
- position: base asset the cycle holds (as `strategy.holding` counts it): the buy's executed quantity less a
  commission taken in the base asset, less what its sells executed (and any base commission);
- cost: what the held units cost: the buy's quote spent plus a commission taken in quote, per unit
  received, times the units held (the whole buy while nothing is sold). A base commission costs
  units, not quote: fewer units for the same money;
- sold: what the cycle's sells brought so far, less their quote commissions, less the cost of the
  units they sold. It is realised only when the cycle finishes (its books are kept then), so until
  then it is part of the unrealised profit;
- unrealised at a price: position × price − cost + sold.
A commission in a third asset (BNB, when the account pays its fees with it) is listed by asset,
never converted: it is in no cost and no profit, like `CycleResult.fees_quote` leaves it. A
commission not learned yet (an open order's: they are summed from its fills once it is final)
counts as none until it is.

Finished cycles (`Realised`): the sum of their `CycleResult`s (`strategy.cycle_result`): pnl, fees
by asset and their value in quote, how many. A cycle whose trader has reported it done counts as
finished before its leader records it, so its profit is never missing from both.

A symbol (`profit`): its traders' cycles and its finished ones, the position valued at the last
trade price; its return on budget is (realised + unrealised) / budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from naived.core import strategy
from naived.core.messages import CycleResult, Order, Profit, TraderState

ZERO = Decimal(0)
EIGHT = strategy.EIGHT  # Binance's precision for amounts: every figure is given to it


def text(value: Decimal) -> str:
    """A decimal string to 8 places without exponent or trailing zeros: "0.01591608", "100", "-0.5"."""
    value = value.quantize(EIGHT)
    return "0" if value.is_zero() else format(value.normalize(), "f")


def _add(into: dict[str, Decimal], fees: Mapping[str, str | Decimal] | None) -> None:
    for asset, amount in (fees or {}).items():
        into[asset] = into.get(asset, ZERO) + Decimal(amount)


def _fee(order: Order | None, asset: str) -> Decimal:
    return Decimal(order.fees.get(asset, "0")) if order is not None and order.fees else ZERO


@dataclass(frozen=True)
class Cycle:
    """One trader's cycle as it stands. `done`: its trader reported it finished (`result`: its books)."""

    position: Decimal = ZERO
    cost: Decimal = ZERO
    sold: Decimal = ZERO
    fees: Mapping[str, Decimal] = field(default_factory=dict)
    done: bool = False
    result: CycleResult | None = None

    def unrealised(self, price: Decimal) -> Decimal:
        return self.position * price - self.cost + self.sold


def cycle(state: TraderState) -> Cycle:
    if state.status == "done":
        return Cycle(done=True, result=state.result)
    buy = state.buy_order
    if buy is None:
        return Cycle()
    try:
        base, quote = strategy.assets(state.settings)
    except strategy.StrategyError:  # neither the state nor the table knows them: no fee is the base's or quote's
        base = quote = ""
    sells = [*state.sells, *([state.sell_order] if state.sell_order is not None else [])]
    received = Decimal(buy.executed_qty) - _fee(buy, base)
    spent = Decimal(buy.quote_qty) + _fee(buy, quote)
    units_sold = sum((Decimal(o.executed_qty) for o in sells), ZERO)
    held = received - units_sold - sum((_fee(o, base) for o in sells), ZERO)  # strategy.holding
    proceeds = sum((Decimal(o.quote_qty) - _fee(o, quote) for o in sells), ZERO)
    # Per unit received, as strategy.cycle_result prices the units sold: the same books once it is done.
    cost = spent * held / received if received else ZERO
    sold = proceeds - (units_sold * spent / received if received else ZERO)
    fees: dict[str, Decimal] = {}
    for order in (buy, *sells):
        _add(fees, order.fees)
    return Cycle(position=held, cost=cost, sold=sold, fees=fees)


@dataclass(frozen=True)
class Realised:
    """Finished cycles' books, summed: their pnl, their fees by asset and in quote, how many."""

    cycles: int = 0
    pnl: Decimal = ZERO
    fees: Mapping[str, Decimal] = field(default_factory=dict)
    fees_quote: Decimal = ZERO

    def add(self, result: CycleResult | None) -> Realised:
        """One more finished cycle; one finished before cycles kept their books (no result) counts, at zero."""
        if result is None:
            return Realised(self.cycles + 1, self.pnl, self.fees, self.fees_quote)
        fees = dict(self.fees)
        _add(fees, result.fees)
        return Realised(self.cycles + 1, self.pnl + Decimal(result.pnl), fees, self.fees_quote + Decimal(result.fees_quote))

    @classmethod
    def of(cls, finished: Iterable[TraderState]) -> Realised:
        total = cls()
        for state in finished:
            total = total.add(state.result)
        return total


def profit(cycles: Iterable[Cycle], realised: Realised, price: Decimal | None, budget: Decimal,
           base: str, quote: str) -> Profit:
    """A symbol's figures: its traders' cycles (done ones join `realised`), at `price` (None: no
    trade seen yet; a position then has no value, and no return can be given)."""
    position = cost = sold = ZERO
    open_fees: dict[str, Decimal] = {}
    for c in cycles:
        if c.done:
            realised = realised.add(c.result)
            continue
        position += c.position
        cost += c.cost
        sold += c.sold
        _add(open_fees, c.fees)
    unrealised = sold + (position * price - cost if price is not None else ZERO)
    known = price is not None or position.is_zero()
    return Profit(
        base=base,
        quote=quote,
        budget=text(budget),
        position=text(position),
        cost=text(cost),
        price=text(price) if price is not None else None,
        unrealised=text(unrealised) if known else None,
        realised=text(realised.pnl),
        fees={asset: text(amount) for asset, amount in sorted(realised.fees.items())},
        fees_quote=text(realised.fees_quote),
        cycles=realised.cycles,
        open_fees={asset: text(amount) for asset, amount in sorted(open_fees.items())},
        return_on_budget=text((realised.pnl + unrealised) / budget) if known and budget else None,
    )

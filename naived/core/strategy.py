"""The naive strategy: pure functions of (state, event), no I/O.

A cycle: buy a little below the first price seen, sell what the buy really
delivered a little above the buy price, exit. The trader process (`trader.py`)
executes what these functions decide; everything here is tested without
processes. Every final order status has a defined next step (the table in
`docs/architecture.md`, "The strategy").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

import msgspec

from naived.core import symbols
from naived.core.config import TradingSettings
from naived.core.messages import CycleResult, ExecutionReport, Fill, Intent, Order, Settings, TradeEvent, TraderState
from naived.core.symbols import SymbolFilters

FEE = Decimal("1.001")  # Binance's 0.1% fee, paid on the buy and on the sell
CLIENT_ID_MAX = 36  # Binance: newClientOrderId matches ^[\.A-Z\:/a-z0-9_-]{1,36}$
OPEN = frozenset({"NEW", "PARTIALLY_FILLED", "PENDING_NEW", "PENDING_CANCEL"})
FINAL = frozenset({"FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED"})
LISTED = frozenset({"NEW", "PARTIALLY_FILLED"})  # acknowledged open: the exchange's openOrders must list them
EIGHT = Decimal("0.00000001")  # Binance's precision for amounts
ZERO = Decimal(0)


def listed_open_ids(states: Iterable[TraderState]) -> set[str]:
    """Client order ids of the traders' orders the exchange acknowledged as open: the ones its
    `openOrders` must list (a reconcile that misses one has found a fill or a cancel unheard)."""
    return {o.client_order_id for s in states for o in (s.buy_order, s.sell_order) if o is not None and o.status in LISTED}


class StrategyError(Exception):
    """The settings cannot produce a valid order (e.g. a chunk below the minimum notional), or the
    exchange refused one of our orders outright (REJECTED): a human has to look."""


def trunc(value: Decimal, unit: Decimal) -> Decimal:
    """Truncate down to a multiple of `unit`, keeping the unit's number of decimals."""
    return ((value // unit) * unit).quantize(unit, rounding=ROUND_DOWN)


def _plain(value: Decimal) -> str:
    """A decimal string without exponent or trailing zeros: "0.01202", "39", "0"."""
    exponent = value.as_tuple().exponent  # an int for every finite Decimal (a letter for NaN and infinity)
    text = format(value.quantize(EIGHT) if isinstance(exponent, int) and exponent < -8 else value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def client_order_id(state: TraderState, leg: str) -> str:
    """`<prefix>-<trader>-<cycle><leg>`: the store's random prefix keeps installations apart,
    the cycle number is durable before it is used, legs are B, S, S2, S3... (a new id for each
    sell placed after one ended unfilled). No symbol: a 20-letter one would not fit in 36."""
    cid = f"{state.id_prefix}-{state.trader_id}-{state.cycle}{leg}"
    assert len(cid) <= CLIENT_ID_MAX, cid
    return cid


def buy_intent(state: TraderState, price: str) -> Intent:
    s = state.settings
    tick, step = Decimal(s.tick_size), Decimal(s.step_size)
    p = Decimal(price)
    buy_price = trunc(p - p * Decimal(s.buy_down_interval), tick)
    quantity = trunc(Decimal(s.budget) / s.chunks / buy_price, step)
    if quantity < Decimal(s.min_qty) or quantity * buy_price < Decimal(s.min_notional):
        raise StrategyError(
            f"{s.symbol}: budget {s.budget} / {s.chunks} chunks buys {quantity} at {buy_price}, "
            f"below the minimum (quantity {s.min_qty}, notional {s.min_notional})"
        )
    return Intent(client_order_id(state, "B"), "BUY", str(buy_price), str(quantity))


def sell_price(state: TraderState) -> Decimal:
    """The book's formula: buy price × 1.001 × (1 + profit_interval) × 1.001, down to the tick."""
    assert state.buy_order is not None
    s = state.settings
    buy_price = Decimal(state.buy_order.price)
    return trunc(buy_price * FEE * (1 + Decimal(s.profit_interval)) * FEE, Decimal(s.tick_size))


# --- fees ----------------------------------------------------------------------------


def assets(settings: Settings) -> tuple[str, str]:
    """(base, quote) of the symbol; older stored settings lack them: the shipped table knows."""
    if settings.base_asset and settings.quote_asset:
        return settings.base_asset, settings.quote_asset
    known = symbols.lookup(settings.symbol)
    if known is None:
        raise StrategyError(f"{settings.symbol}: base and quote assets unknown")
    return known.base, known.quote


def with_fills(order: Order, fills: list[Fill], settings: Settings) -> Order | None:
    """The order with its commissions summed from its fills; None when the fills do not add up to
    the executed quantity yet (the trade list may lag the order's status: ask again)."""
    if sum((Decimal(f.qty) for f in fills), ZERO) != Decimal(order.executed_qty):
        return None
    base, quote = assets(settings)
    fees: dict[str, Decimal] = {}
    in_quote = ZERO
    for f in fills:
        commission = Decimal(f.commission)
        if not commission:
            continue
        fees[f.commission_asset] = fees.get(f.commission_asset, ZERO) + commission
        if f.commission_asset == quote:
            in_quote += commission
        elif f.commission_asset == base:
            in_quote += commission * Decimal(f.price)
    return msgspec.structs.replace(
        order, fees={a: _plain(v) for a, v in fees.items()}, fees_quote=_plain(in_quote)
    )


def _fee(order: Order | None, asset: str) -> Decimal:
    return Decimal(order.fees.get(asset, "0")) if order is not None and order.fees else ZERO


def _sells(state: TraderState) -> list[Order]:
    return [*state.sells, *([state.sell_order] if state.sell_order is not None else [])]


def holding(state: TraderState) -> Decimal:
    """Base asset this cycle holds: what the buy delivered (executed minus a commission taken in
    the base asset) minus what its sells executed (and any base commission they paid)."""
    base, _ = assets(state.settings)
    buy = state.buy_order
    received = Decimal(buy.executed_qty) - _fee(buy, base) if buy is not None else ZERO
    sells = _sells(state)
    return received - sum((Decimal(o.executed_qty) + _fee(o, base) for o in sells), ZERO)


def cycle_result(state: TraderState, note: str = "") -> CycleResult:
    """The cycle's books, from its orders (all final, their fees known)."""
    base, quote = assets(state.settings)
    buy = state.buy_order
    sells = _sells(state)
    bought = Decimal(buy.executed_qty) if buy is not None else ZERO
    cost = Decimal(buy.quote_qty) if buy is not None else ZERO
    received = bought - _fee(buy, base)
    sold = sum((Decimal(o.executed_qty) for o in sells), ZERO)
    proceeds = sum((Decimal(o.quote_qty) for o in sells), ZERO)
    fees: dict[str, Decimal] = {}
    for o in [buy, *sells]:
        for asset, amount in (o.fees or {}).items() if o is not None else ():
            fees[asset] = fees.get(asset, ZERO) + Decimal(amount)
    fees_quote = sum((Decimal(o.fees_quote or "0") for o in [buy, *sells] if o is not None), ZERO)
    unit_cost = (cost + _fee(buy, quote)) / received if received else ZERO
    pnl = proceeds - sum((_fee(o, quote) for o in sells), ZERO) - sold * unit_cost
    dust = holding(state)
    return CycleResult(
        bought=_plain(bought),
        cost=_plain(cost),
        sold=_plain(sold),
        proceeds=_plain(proceeds),
        fees={a: _plain(v) for a, v in fees.items()},
        fees_quote=_plain(fees_quote),
        pnl=_plain(pnl.quantize(EIGHT)),
        dust=_plain(dust),
        dust_cost=_plain((dust * unit_cost).quantize(EIGHT)),
        note=note,
    )


# --- what to do next ------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    intent: Intent


@dataclass(frozen=True)
class Check:
    """Ask the exchange about an order (fills are not in the public trade stream)."""

    client_order_id: str


@dataclass(frozen=True)
class FetchFills:
    """A final order with fills and unknown commissions: ask for its trades (myTrades)."""

    order: Order


@dataclass(frozen=True)
class Finish:
    """The cycle is over (sold, or nothing left worth selling): the trader exits 0."""


Action = Place | Check | FetchFills | Finish | None


def on_trade(state: TraderState, event: TradeEvent) -> tuple[TraderState, Action]:
    """Decide on one trade event; the state changes only when an order is to be placed."""
    price = Decimal(event.p)
    if state.intent is not None:
        return state, None  # the trader resolves its intent before anything else
    if state.status == "new":
        intent = buy_intent(state, event.p)
        return msgspec.structs.replace(state, intent=intent, started_at=event.E), Place(intent)
    if state.status == "buying" and state.buy_order is not None:
        buy_price = Decimal(state.buy_order.price)
        if price <= buy_price:
            return state, Check(state.buy_order.client_order_id)
        return state, None
    if state.status == "selling" and state.sell_order is not None and price >= Decimal(state.sell_order.price):
        return state, Check(state.sell_order.client_order_id)
    return state, None


def rebuy_due(state: TraderState, event: TradeEvent) -> bool:
    """Chapter 9: once per trader, when the price falls `rebuy_interval` below the buy price."""
    if state.rebuy_notified or state.buy_order is None:
        return False
    buy_price = Decimal(state.buy_order.price)
    limit = buy_price - buy_price * Decimal(state.settings.rebuy_interval)
    return Decimal(event.p) < limit


def _keep_fees(known: Order | None, order: Order) -> Order:
    """A later answer about the same order (GET /api/v3/order) has no commissions: keep the ones
    learned, as long as nothing more was executed since."""
    if (
        order.fees is None
        and known is not None
        and known.fees is not None
        and known.client_order_id == order.client_order_id
        and Decimal(known.executed_qty) == Decimal(order.executed_qty)
    ):
        return msgspec.structs.replace(order, fees=known.fees, fees_quote=known.fees_quote)
    return order


def _done(state: TraderState, order: Order, note: str = "") -> tuple[TraderState, Action]:
    done = msgspec.structs.replace(state, status="done", finished_at=order.update_time)
    return msgspec.structs.replace(done, result=cycle_result(done, note)), Finish()


def _sell_the_rest(state: TraderState, last: Order) -> tuple[TraderState, Action]:
    """Sell what the cycle holds, in step units at the cycle's sell price, under a new client
    order id; a remainder the exchange would refuse (below min qty / min notional) is dust."""
    s = state.settings
    quantity = trunc(holding(state), Decimal(s.step_size))
    price = sell_price(state)
    if quantity <= 0 or quantity < Decimal(s.min_qty) or quantity * price < Decimal(s.min_notional):
        return _done(state, last, f"{_plain(holding(state))} left, below the exchange's minimum: dust")
    attempt = len(state.sells) + 1
    intent = Intent(client_order_id(state, "S" if attempt == 1 else f"S{attempt}"), "SELL", str(price), str(quantity))
    return msgspec.structs.replace(state, intent=intent, status="selling"), Place(intent)


def on_order(state: TraderState, order: Order) -> tuple[TraderState, Action]:
    """Take in what the exchange says about one of our orders and decide the next step.

    Only the legs the state names count: an answer about an older leg (a sell the exchange
    cancelled, asked about again after its successor was placed) or another cycle's order
    changes nothing, or it would stand in for the current leg."""
    current = state.buy_order if order.side == "BUY" else state.sell_order
    if current is None or current.client_order_id != order.client_order_id:
        return state, None
    return _decide(state, order)


def _decide(state: TraderState, order: Order) -> tuple[TraderState, Action]:
    if order.fills is not None:  # an answer with the order's trades: keep their sum, not them
        order = msgspec.structs.replace(with_fills(order, order.fills, state.settings) or order, fills=None)
    if order.side == "BUY":
        order = _keep_fees(state.buy_order, order)
        if state.status in ("selling", "done"):
            return msgspec.structs.replace(state, buy_order=order), None  # the buy leg is decided
        state = msgspec.structs.replace(state, buy_order=order, status="buying")
        if order.status not in FINAL:
            return state, None
        executed = Decimal(order.executed_qty)
        if order.status == "REJECTED" and not executed:
            raise StrategyError(f"{s_id(state)}: the exchange rejected buy {order.client_order_id}")
        if not executed:
            return _done(state, order, f"buy {order.status}, nothing bought")
        if order.fees is None:
            return state, FetchFills(order)
        return _sell_the_rest(state, order)
    order = _keep_fees(state.sell_order, order)
    state = msgspec.structs.replace(state, sell_order=order, status="selling")
    if order.status not in FINAL:
        return state, None
    executed = Decimal(order.executed_qty)
    if executed and order.fees is None:
        return state, FetchFills(order)
    if order.status == "FILLED":
        return _done(state, order)
    if order.status == "REJECTED" and not executed:
        # Placing the same sell again would be refused again: stop and let a human look.
        raise StrategyError(f"{s_id(state)}: the exchange rejected sell {order.client_order_id}")
    # Cancelled or expired (by a user, STP, the exchange): what it did not sell is sold anew.
    ended = msgspec.structs.replace(state, sells=[*state.sells, order], sell_order=None)
    return _sell_the_rest(ended, order)


# --- pushed reports (the user data stream) ------------------------------------------------


def order_from_report(report: ExecutionReport) -> Order:
    """The order an `executionReport` describes, as a REST answer would (its fill travels apart)."""
    return Order(
        client_order_id=report.client_order_id, side=report.S, price=report.p, quantity=report.q, status=report.X,
        order_id=report.i, executed_qty=report.z, quote_qty=report.Z, update_time=report.T,
    )


def fill_from_report(report: ExecutionReport) -> Fill | None:
    """The trade a TRADE report carries, with its commission (so a pushed fill needs no myTrades)."""
    if report.x != "TRADE":
        return None
    return Fill(report.L, report.l, report.n, report.N or "", report.t)


def open_order(state: TraderState) -> Order | None:
    """The order this trader waits on, if any."""
    for order in (state.sell_order, state.buy_order):
        if order is not None and order.status not in FINAL:
            return order
    return None


def is_news(known: Order, order: Order) -> bool:
    """Does a pushed report tell more than what the state knows? Pushes race the REST answers
    (a taker's FILLED answer comes before the NEW and TRADE pushes of the same order), so an
    older report must never take the state back."""
    if known.status in FINAL:
        return False
    executed, before = Decimal(order.executed_qty), Decimal(known.executed_qty)
    if executed != before:
        return executed > before
    return order.status != known.status and order.status != "NEW"


def on_report(state: TraderState, order: Order, fills: list[Fill]) -> tuple[TraderState, Action]:
    """A pushed report about one of our orders: decide as for a REST answer. `fills`: every fill
    of the order pushed so far; once they add up to what it executed, its commissions are known
    without asking (otherwise a final order asks myTrades, as after a REST lookup)."""
    known = next((o for o in (state.buy_order, state.sell_order)
                  if o is not None and o.client_order_id == order.client_order_id), None)
    if state.intent is not None or known is None or not is_news(known, order):
        return state, None  # not the order waited on (an older leg, an old cycle), or old news
    if order.status in FINAL and Decimal(order.executed_qty) and \
            sum((Decimal(f.qty) for f in fills), ZERO) == Decimal(order.executed_qty):
        order = msgspec.structs.replace(order, fills=list(fills))
    return on_order(state, order)


def wants_trades(state: TraderState, rebuy_possible: bool, stream_up: bool) -> bool:
    """Must the trader wake for public trades? For its first buy price, and while the stream is
    not known to be up (trades crossing the order's price then trigger a REST check, as without
    the stream); otherwise only while chapter 9's rebuy can still fire: it needs the prices while
    the buy rests (and after: the book fires it whenever the price falls below the buy)."""
    if state.status == "new" or state.intent is not None or not stream_up:
        return True
    return rebuy_possible and not state.rebuy_notified and state.buy_order is not None and state.status != "done"


def fills_learned(state: TraderState, order: Order, fills: list[Fill]) -> tuple[TraderState, Action]:
    """The trades of a final order arrived: with its commissions known, decide as for the order."""
    complete = with_fills(order, fills, state.settings)
    if complete is None:
        return state, FetchFills(order)
    return on_order(state, complete)


def placed(state: TraderState, order: Order) -> tuple[TraderState, Action]:
    """The intent's order exists at the exchange (placed or adopted): clear the intent."""
    return _decide(msgspec.structs.replace(state, intent=None), order)


def buy_refused(state: TraderState) -> TraderState:
    """The exchange refused the buy for its price alone (PERCENT_PRICE_BY_SIDE: too far from the
    market's average, e.g. a trade far off the market decided it): nothing was placed, so the
    cycle forgets the intent and its next buy comes from a later trade (same client order id:
    no order ever had it)."""
    assert state.intent is not None and state.intent.side == "BUY" and state.status == "new"
    return msgspec.structs.replace(state, intent=None, started_at=None)


def intent_unknown(state: TraderState) -> TraderState:
    assert state.intent is not None
    return msgspec.structs.replace(state, intent=msgspec.structs.replace(state.intent, unknown=True))


def intent_sending(state: TraderState, now: float) -> TraderState:
    """Record, before the send, that the intent's order may be sent from `now` (wall clock)."""
    assert state.intent is not None
    return msgspec.structs.replace(state, intent=msgspec.structs.replace(state.intent, sent_at=now))


def s_id(state: TraderState) -> str:
    return f"{state.symbol}/{state.trader_id} cycle {state.cycle}"


def settings_for(symbol: str, trading: TradingSettings, filters: SymbolFilters) -> Settings:
    """A trader's `Settings`: the configured trading settings plus the exchange's filters."""
    # Only `Trading.for_symbol` makes settings to trade with, and it names the budget or refuses.
    assert trading.budget is not None, f"{symbol}: settings without a budget"
    return Settings(
        symbol=symbol,
        chunks=trading.chunks,
        budget=str(trading.budget),
        buy_down_interval=str(trading.buy_down_interval),
        profit_interval=str(trading.profit_interval),
        rebuy_interval=str(trading.rebuy_interval),
        tick_size=str(filters.tick_size),
        step_size=str(filters.step_size),
        min_qty=str(filters.min_qty),
        min_notional=str(filters.min_notional),
        base_asset=filters.base,
        quote_asset=filters.quote,
    )

"""The naive strategy: pure functions of (state, event), no I/O.

A cycle: buy a little below the first price seen, sell a little above the buy
once it is filled, exit. The trader process (`trader.py`) executes what these
functions decide; everything here is tested without processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Literal

import msgspec

from naived.config import TradingSettings
from naived.messages import Intent, Order, Settings, TradeEvent, TraderState
from naived.symbols import SymbolFilters

FEE = Decimal("1.001")  # Binance's 0.1% fee, paid on the buy and on the sell
CLIENT_ID_PREFIX = "nv"


class StrategyError(Exception):
    """The settings cannot produce a valid order (e.g. a chunk below the minimum notional)."""


def trunc(value: Decimal, unit: Decimal) -> Decimal:
    """Truncate down to a multiple of `unit`, keeping the unit's number of decimals."""
    return ((value // unit) * unit).quantize(unit, rounding=ROUND_DOWN)


def client_order_id(state: TraderState, side: Literal["BUY", "SELL"]) -> str:
    """Deterministic and never reused: cycle numbers are unique per symbol and persisted."""
    return f"{CLIENT_ID_PREFIX}-{state.symbol}-{state.trader_id}-{state.cycle}{side[0]}"


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
    return Intent(client_order_id(state, "BUY"), "BUY", str(buy_price), str(quantity))


def sell_intent(state: TraderState) -> Intent:
    assert state.buy_order is not None
    s = state.settings
    buy_price = Decimal(state.buy_order.price)
    sell_price = trunc(buy_price * FEE * (1 + Decimal(s.profit_interval)) * FEE, Decimal(s.tick_size))
    return Intent(client_order_id(state, "SELL"), "SELL", str(sell_price), state.buy_order.executed_qty)


# --- what to do next ------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    intent: Intent


@dataclass(frozen=True)
class Check:
    """Ask the exchange about an order (fills are not in the public trade stream)."""

    client_order_id: str


@dataclass(frozen=True)
class Finish:
    """The sell is filled: the cycle is over."""


Action = Place | Check | Finish | None


def on_trade(state: TraderState, event: TradeEvent) -> tuple[TraderState, Action]:
    """Decide on one trade event; the state changes only when an order is to be placed."""
    price = Decimal(event.p)
    if state.intent is not None:
        return state, None  # the trader resolves its intent before anything else
    if state.status == "new":
        intent = buy_intent(state, event.p)
        return msgspec.structs.replace(state, intent=intent), Place(intent)
    if state.status == "buying" and state.buy_order is not None:
        buy_price = Decimal(state.buy_order.price)
        if price <= buy_price:
            return state, Check(state.buy_order.client_order_id)
        return state, None
    if state.status == "selling" and state.sell_order is not None:
        if price >= Decimal(state.sell_order.price):
            return state, Check(state.sell_order.client_order_id)
    return state, None


def rebuy_due(state: TraderState, event: TradeEvent) -> bool:
    """Chapter 9: once per trader, when the price falls `rebuy_interval` below the buy price."""
    if state.rebuy_notified or state.buy_order is None:
        return False
    buy_price = Decimal(state.buy_order.price)
    limit = buy_price - buy_price * Decimal(state.settings.rebuy_interval)
    return Decimal(event.p) < limit


def on_order(state: TraderState, order: Order) -> tuple[TraderState, Action]:
    """Take in what the exchange says about one of our orders and decide the next step."""
    if order.side == "BUY":
        state = msgspec.structs.replace(state, buy_order=order, status="buying")
        if order.status == "FILLED":
            state = msgspec.structs.replace(state, status="selling")
            if state.sell_order is None:
                intent = sell_intent(state)
                return msgspec.structs.replace(state, intent=intent), Place(intent)
        return state, None
    state = msgspec.structs.replace(state, sell_order=order, status="selling")
    if order.status == "FILLED":
        return msgspec.structs.replace(state, status="done"), Finish()
    return state, None


def placed(state: TraderState, order: Order) -> tuple[TraderState, Action]:
    """The intent's order exists at the exchange (placed or adopted): clear the intent."""
    return on_order(msgspec.structs.replace(state, intent=None), order)


def intent_unknown(state: TraderState) -> TraderState:
    assert state.intent is not None
    return msgspec.structs.replace(state, intent=msgspec.structs.replace(state.intent, unknown=True))


def settings_for(symbol: str, trading: TradingSettings, filters: SymbolFilters) -> Settings:
    """A trader's `Settings`: the configured trading settings plus the exchange's filters."""
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
    )

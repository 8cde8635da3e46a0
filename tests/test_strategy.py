"""The naive strategy's formulas and decisions: pure functions, no processes."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from naived import strategy
from naived.messages import Order, Settings, TradeEvent, TraderState


def settings(**overrides: object) -> Settings:
    base = dict(
        symbol="XRPUSDT",
        chunks=5,
        budget="100",
        buy_down_interval="0.01",
        profit_interval="-0.0012",
        rebuy_interval="0.05",
        tick_size="0.0001",
        step_size="1",
        min_qty="1",
        min_notional="5",
    )
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


def state(**overrides: object) -> TraderState:
    return TraderState(symbol="XRPUSDT", trader_id=3, cycle=17, settings=overrides.pop("settings", settings()), **overrides)  # type: ignore[arg-type]


def trade(price: str, trade_id: int = 1) -> TradeEvent:
    return TradeEvent(e="trade", E=1, s="XRPUSDT", t=trade_id, p=price, q="10", T=1, m=False)


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        ("0.51239", "0.0001", "0.5123"),
        ("0.5123", "0.0001", "0.5123"),
        ("61837.639", "0.01", "61837.63"),
        ("39.9", "1", "39"),
        ("0.000019999", "0.00001", "0.00001"),
        ("12.5", "0.1", "12.5"),
    ],
)
def test_trunc_keeps_the_units_decimals(value: str, unit: str, expected: str) -> None:
    assert str(strategy.trunc(Decimal(value), Decimal(unit))) == expected


@pytest.mark.parametrize(
    ("price", "buy_down", "tick", "step", "budget", "chunks", "buy_price", "quantity"),
    [
        ("0.5", "0.01", "0.0001", "1", "100", "5", "0.4950", "40"),  # 20 / 0.495 = 40.4 -> 40
        ("61837.63", "0.0001", "0.01", "0.00001", "100", "2", "61831.44", "0.00080"),
        ("0.3500", "0", "0.0001", "0.1", "10", "1", "0.3500", "28.5"),
        ("550.0", "0.001", "0.1", "0.001", "20", "1", "549.4", "0.036"),
    ],
)
def test_buy_price_and_quantity(
    price: str, buy_down: str, tick: str, step: str, budget: str, chunks: str, buy_price: str, quantity: str
) -> None:
    s = settings(buy_down_interval=buy_down, tick_size=tick, step_size=step, budget=budget, chunks=int(chunks), min_qty=step)
    intent = strategy.buy_intent(state(settings=s), price)
    assert (intent.price, intent.quantity, intent.side) == (buy_price, quantity, "BUY")


@pytest.mark.parametrize(
    ("buy_price", "profit", "tick", "expected"),
    [
        # 0.4950 * 1.001 * 0.9988 * 1.001 = 0.495395... -> 0.4953 (negative profit: the book's chapter 5)
        ("0.4950", "-0.0012", "0.0001", "0.4953"),
        # 61831.44 * 1.001 * 1.001 * 1.001 = 62017.117...
        ("61831.44", "0.001", "0.01", "62017.11"),
        ("1.0000", "0", "0.0001", "1.0020"),
    ],
)
def test_sell_price_includes_both_fees(buy_price: str, profit: str, tick: str, expected: str) -> None:
    s = settings(profit_interval=profit, tick_size=tick)
    buy = Order("nv-XRPUSDT-3-17B", "BUY", buy_price, "40", "FILLED", 1, "40")
    intent = strategy.sell_intent(state(settings=s, buy_order=buy, status="selling"))
    assert (intent.price, intent.quantity, intent.side) == (expected, "40", "SELL")


def test_a_chunk_below_the_exchange_minimum_is_refused() -> None:
    s = settings(budget="20", chunks=5)  # 4 USDT per trader, minimum notional 5
    with pytest.raises(strategy.StrategyError, match="below the minimum"):
        strategy.buy_intent(state(settings=s), "0.5")


def test_client_order_ids_are_deterministic_short_and_distinct() -> None:
    ids = {strategy.client_order_id(state(), side) for side in ("BUY", "SELL")}
    assert ids == {"nv-XRPUSDT-3-17B", "nv-XRPUSDT-3-17S"}
    long = TraderState("ABCDEFGHIJKLMNOPQRST", 99, 99_999_999, settings())
    cid = strategy.client_order_id(long, "SELL")
    assert len(cid) <= 36 and all(c.isalnum() or c in "-_" for c in cid)


def test_a_full_cycle_of_decisions() -> None:
    s0 = state()
    s1, action = strategy.on_trade(s0, trade("0.5000"))
    assert isinstance(action, strategy.Place) and s1.intent == action.intent
    buy = Order(action.intent.client_order_id, "BUY", "0.4950", "40", "NEW", 11)
    s2, action = strategy.placed(s1, buy)
    assert action is None and s2.intent is None and s2.status == "buying"
    # a trade above the buy price: nothing to ask; at or below it: ask the exchange
    assert strategy.on_trade(s2, trade("0.4960"))[1] is None
    assert strategy.on_trade(s2, trade("0.4950"))[1] == strategy.Check(buy.client_order_id)
    s3, action = strategy.on_order(s2, msgspec.structs.replace(buy, status="FILLED", executed_qty="40"))
    assert isinstance(action, strategy.Place) and action.intent.side == "SELL" and s3.status == "selling"
    sell = Order(action.intent.client_order_id, "SELL", action.intent.price, "40", "NEW", 12)
    s4, action = strategy.placed(s3, sell)
    assert action is None and s4.sell_order == sell
    assert strategy.on_trade(s4, trade("0.4952"))[1] is None
    assert strategy.on_trade(s4, trade("0.4953"))[1] == strategy.Check(sell.client_order_id)
    s5, action = strategy.on_order(s4, msgspec.structs.replace(sell, status="FILLED", executed_qty="40"))
    assert action == strategy.Finish() and s5.status == "done"


def test_partially_filled_buy_waits_for_the_rest() -> None:
    buy = Order("nv-XRPUSDT-3-17B", "BUY", "0.4950", "40", "NEW", 11)
    s = state(buy_order=buy, status="buying")
    s2, action = strategy.on_order(s, msgspec.structs.replace(buy, status="PARTIALLY_FILLED", executed_qty="10"))
    assert action is None and s2.status == "buying" and s2.sell_order is None


def test_nothing_is_decided_while_an_intent_is_pending() -> None:
    s1, action = strategy.on_trade(state(), trade("0.5"))
    assert strategy.on_trade(s1, trade("0.4"))[1] is None


def test_rebuy_once_when_the_price_falls_far_enough() -> None:
    buy = Order("nv-XRPUSDT-3-17B", "BUY", "0.5000", "40", "NEW", 11)
    s = state(buy_order=buy, status="buying")  # rebuy_interval 0.05: below 0.4750
    assert not strategy.rebuy_due(s, trade("0.4750"))
    assert strategy.rebuy_due(s, trade("0.4749"))
    assert not strategy.rebuy_due(msgspec.structs.replace(s, rebuy_notified=True), trade("0.4"))

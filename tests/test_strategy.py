"""The naive strategy's formulas and decisions: pure functions, no processes."""

from __future__ import annotations

import re
from decimal import Decimal

import msgspec
import pytest

from naived.core import strategy
from naived.core.messages import Fill, Order, Settings, TradeEvent, TraderState


def settings(**overrides: object) -> Settings:
    base = dict(
        symbol="XRPUSDT",
        chunks=5,
        budget="100",
        buy_down_interval="0.01",
        profit_interval="0.001",
        rebuy_interval="0.05",
        tick_size="0.0001",
        step_size="1",
        min_qty="1",
        min_notional="5",
        base_asset="XRP",
        quote_asset="USDT",
    )
    base.update(overrides)
    return Settings(**base)


def state(**overrides: object) -> TraderState:
    return TraderState(symbol="XRPUSDT", trader_id=3, cycle=17, id_prefix="nvq7x2k9",
                       settings=overrides.pop("settings", settings()), **overrides)


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
        # 61831.44 * 1.001 * 1.001 * 1.001 = 62017.1198... -> 62017.11
        ("61831.44", "0.001", "0.01", "62017.11"),
        ("1.0000", "0", "0.0001", "1.0020"),
    ],
)
def test_sell_price_includes_both_fees(buy_price: str, profit: str, tick: str, expected: str) -> None:
    s = settings(profit_interval=profit, tick_size=tick)
    buy = Order("nvq7x2k9-3-17B", "BUY", buy_price, "40", "FILLED", 1, "40")
    assert str(strategy.sell_price(state(settings=s, buy_order=buy, status="buying"))) == expected


def test_a_chunk_below_the_exchange_minimum_is_refused() -> None:
    s = settings(budget="20", chunks=5)  # 4 USDT per trader, minimum notional 5
    with pytest.raises(strategy.StrategyError, match="below the minimum"):
        strategy.buy_intent(state(settings=s), "0.5")


BINANCE_CLIENT_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")


def test_client_order_ids_carry_the_stores_prefix_and_fit_binances_limit() -> None:
    assert strategy.buy_intent(state(), "0.5").client_order_id == "nvq7x2k9-3-17B"
    assert strategy.client_order_id(state(), "S") == "nvq7x2k9-3-17S"
    assert strategy.client_order_id(state(), "S2") == "nvq7x2k9-3-17S2"
    # the longest: a 20-letter symbol (not in the id), trader 999, cycle 10^11, the 99th sell
    long = TraderState("ABCDEFGHIJKLMNOPQRST", 999, 99_999_999_999, settings(), id_prefix="nvzzzzzz")
    assert BINANCE_CLIENT_ID.match(strategy.client_order_id(long, "S99"))


# --- fees: hand-computed ----------------------------------------------------------------

BUY = Order("nvq7x2k9-3-17B", "BUY", "0.4950", "40", "NEW", 11)
XRP_FILLS = [Fill("0.4950", "20", "0.02", "XRP", 1), Fill("0.4950", "20", "0.02", "XRP", 2)]


def filled(order: Order, qty: str, quote: str, status: str = "FILLED", **changes: object) -> Order:
    return msgspec.structs.replace(order, status=status, executed_qty=qty, quote_qty=quote, update_time=1_700_000_000_000,
                                   **changes)


def test_commission_in_the_base_asset_is_summed_and_valued_at_each_fills_price() -> None:
    order = strategy.with_fills(filled(BUY, "40", "19.8"), XRP_FILLS, settings())
    assert order is not None
    # 0.02 + 0.02 XRP; in USDT 0.04 * 0.4950 = 0.0198
    assert (order.fees, order.fees_quote) == ({"XRP": "0.04"}, "0.0198")


def test_commission_in_a_third_asset_is_listed_not_valued() -> None:
    btc = settings(symbol="BTCUSDT", base_asset="BTC", tick_size="0.01", step_size="0.00001", min_qty="0.00001")
    buy = Order("nvq7x2k9-3-17B", "BUY", "61831.44", "0.00080", "FILLED", 11, "0.00080", "49.465152")
    order = strategy.with_fills(buy, [Fill("61831.44", "0.00080", "0.0000371", "BNB", 9)], btc)
    assert order is not None and (order.fees, order.fees_quote) == ({"BNB": "0.0000371"}, "0")
    placed = msgspec.structs.replace(buy, status="NEW", executed_qty="0", quote_qty="0")
    s = TraderState("BTCUSDT", 0, 1, btc, status="buying", buy_order=placed, id_prefix="nvq7x2k9")
    s2, action = strategy.on_order(s, order)
    # nothing was taken from the BTC: all of it is sold
    assert isinstance(action, strategy.Place) and action.intent.quantity == "0.00080"


def test_fills_that_do_not_add_up_to_the_executed_quantity_are_asked_for_again() -> None:
    order = filled(BUY, "40", "19.8")
    assert strategy.with_fills(order, XRP_FILLS[:1], settings()) is None
    s, action = strategy.fills_learned(state(buy_order=order, status="buying"), order, XRP_FILLS[:1])
    assert action == strategy.FetchFills(order)


def full_cycle() -> tuple[TraderState, Order]:
    """Buy 40 XRP at 0.4950 (0.04 XRP commission), sell order placed: 39 at 0.4964."""
    s = state(buy_order=BUY, status="buying")
    s, action = strategy.on_order(s, filled(BUY, "40", "19.8"))
    assert action == strategy.FetchFills(filled(BUY, "40", "19.8"))
    s, action = strategy.fills_learned(s, filled(BUY, "40", "19.8"), XRP_FILLS)
    assert isinstance(action, strategy.Place)
    # received 40 - 0.04 = 39.96 -> 39 (step 1); 0.4950 * 1.001 * 1.001 * 1.001 = 0.49648... -> 0.4964
    assert (action.intent.client_order_id, action.intent.quantity, action.intent.price) == ("nvq7x2k9-3-17S", "39", "0.4964")
    sell = Order(action.intent.client_order_id, "SELL", "0.4964", "39", "NEW", 12)
    s, action = strategy.placed(s, sell)
    assert action is None and s.status == "selling" and s.intent is None
    return s, sell


def test_a_cycle_sells_what_was_received_and_books_fees_pnl_and_dust() -> None:
    s, sell = full_cycle()
    # the sell fills at once (FULL answer with its fill): 39 * 0.4964 = 19.3596 USDT, 0.1% = 0.0193596 USDT
    done = filled(sell, "39", "19.3596", fills=[Fill("0.4964", "39", "0.0193596", "USDT", 3)])
    s, action = strategy.on_order(s, done)
    assert action == strategy.Finish() and s.status == "done" and s.finished_at == 1_700_000_000_000
    assert s.sell_order is not None and s.sell_order.fills is None  # summed, not stored
    r = s.result
    assert r is not None
    assert (r.bought, r.cost, r.sold, r.proceeds) == ("40", "19.8", "39", "19.3596")
    assert r.fees == {"XRP": "0.04", "USDT": "0.0193596"}
    assert r.fees_quote == "0.0391596"  # 0.0198 + 0.0193596
    # cost per XRP received: 19.8 / 39.96 = 0.495495...; 39 of them cost 19.324324...
    # pnl = 19.3596 - 0.0193596 - 19.3243243243 = 0.0159160757 -> 0.01591608
    assert r.pnl == "0.01591608"
    assert (r.dust, r.dust_cost) == ("0.96", "0.47567568")  # 0.96 * 0.495495...


def test_a_sell_learned_by_query_asks_for_its_trades_first() -> None:
    s, sell = full_cycle()
    s, action = strategy.on_order(s, filled(sell, "39", "19.3596"))
    assert action == strategy.FetchFills(filled(sell, "39", "19.3596")) and s.status == "selling"
    s, action = strategy.fills_learned(s, filled(sell, "39", "19.3596"), [Fill("0.4964", "39", "0.0193596", "USDT", 3)])
    assert action == strategy.Finish() and s.result is not None and s.result.pnl == "0.01591608"


def test_a_later_query_keeps_the_commissions_learned() -> None:
    s, sell = full_cycle()
    assert s.buy_order is not None and s.buy_order.fees == {"XRP": "0.04"}
    s2, _ = strategy.on_order(s, filled(BUY, "40", "19.8"))  # GET /api/v3/order: no commissions
    assert s2.buy_order is not None and s2.buy_order.fees == {"XRP": "0.04"}


# --- every order status has a next step ------------------------------------------------------


@pytest.mark.parametrize("status", ["NEW", "PARTIALLY_FILLED", "PENDING_CANCEL"])
def test_an_open_buy_waits(status: str) -> None:
    s, action = strategy.on_order(state(buy_order=BUY, status="buying"),
                                  filled(BUY, "10" if status != "NEW" else "0", "4.95", status))
    assert action is None and s.status == "buying" and s.intent is None


@pytest.mark.parametrize("status", ["CANCELED", "EXPIRED", "EXPIRED_IN_MATCH"])
def test_a_buy_ended_with_no_fill_ends_the_cycle_with_nothing_bought(status: str) -> None:
    s, action = strategy.on_order(state(buy_order=BUY, status="buying"), filled(BUY, "0", "0", status))
    assert action == strategy.Finish() and s.status == "done"
    assert s.result is not None and (s.result.bought, s.result.pnl, s.result.dust) == ("0", "0", "0")
    assert s.result.note == f"buy {status}, nothing bought"


def test_a_buy_rejected_with_no_fill_stops_the_trader() -> None:
    with pytest.raises(strategy.StrategyError, match="rejected buy"):
        strategy.on_order(state(buy_order=BUY, status="buying"), filled(BUY, "0", "0", "REJECTED"))


@pytest.mark.parametrize("status", ["CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED"])
def test_a_buy_ended_after_a_partial_fill_sells_what_was_received(status: str) -> None:
    partial = filled(BUY, "10", "4.95", status)
    s, action = strategy.on_order(state(buy_order=BUY, status="buying"), partial)
    assert action == strategy.FetchFills(partial)
    s, action = strategy.fills_learned(s, partial, [Fill("0.4950", "10", "0.01", "XRP", 1)])
    # 10 - 0.01 = 9.99 -> 9 at 0.4964: 4.4676 USDT, below the 5 USDT minimum notional: dust
    assert action == strategy.Finish() and s.result is not None and s.result.dust == "9.99"


def test_a_partial_buy_worth_selling_is_sold() -> None:
    partial = filled(BUY, "20", "9.9", "CANCELED")
    s, _ = strategy.on_order(state(buy_order=BUY, status="buying"), partial)
    s, action = strategy.fills_learned(s, partial, [Fill("0.4950", "20", "0.02", "XRP", 1)])
    # 20 - 0.02 = 19.98 -> 19; 19 * 0.4964 = 9.43 >= 5
    assert isinstance(action, strategy.Place) and (action.intent.quantity, action.intent.client_order_id) == (
        "19", "nvq7x2k9-3-17S")


@pytest.mark.parametrize("status", ["NEW", "PARTIALLY_FILLED"])
def test_an_open_sell_waits(status: str) -> None:
    s, sell = full_cycle()
    s2, action = strategy.on_order(s, filled(sell, "10" if status != "NEW" else "0", "4.964", status))
    assert action is None and s2.status == "selling"


@pytest.mark.parametrize("status", ["CANCELED", "EXPIRED", "EXPIRED_IN_MATCH"])
def test_a_sell_ended_with_no_fill_is_placed_again_under_a_new_id(status: str) -> None:
    s, sell = full_cycle()
    s, action = strategy.on_order(s, filled(sell, "0", "0", status))
    assert isinstance(action, strategy.Place)
    assert (action.intent.client_order_id, action.intent.quantity, action.intent.price) == ("nvq7x2k9-3-17S2", "39", "0.4964")
    assert s.sell_order is None and [o.status for o in s.sells] == [status] and s.status == "selling"
    # and again: S3
    sell2 = Order("nvq7x2k9-3-17S2", "SELL", "0.4964", "39", "NEW", 13)
    s, _ = strategy.placed(s, sell2)
    s, action = strategy.on_order(s, filled(sell2, "0", "0", status))
    assert isinstance(action, strategy.Place) and action.intent.client_order_id == "nvq7x2k9-3-17S3"


def test_an_answer_about_an_older_sell_leg_changes_nothing() -> None:
    # Found by the chaos test: a check of S planned before S was cancelled and S2 placed came back
    # "CANCELED" and stood in for S2, which was never tracked again.
    s, sell = full_cycle()
    s, _ = strategy.on_order(s, filled(sell, "0", "0", "CANCELED"))
    sell2 = Order("nvq7x2k9-3-17S2", "SELL", "0.4964", "39", "NEW", 13)
    s, _ = strategy.placed(s, sell2)
    after, action = strategy.on_order(s, filled(sell, "0", "0", "CANCELED"))
    assert (after, action) == (s, None)
    other_cycle = Order("nvq7x2k9-3-16S", "SELL", "0.4964", "39", "FILLED", 9, executed_qty="39")
    assert strategy.on_order(s, other_cycle) == (s, None)


def test_a_sell_rejected_with_no_fill_stops_the_trader() -> None:
    s, sell = full_cycle()
    with pytest.raises(strategy.StrategyError, match="rejected sell"):
        strategy.on_order(s, filled(sell, "0", "0", "REJECTED"))


@pytest.mark.parametrize("status", ["CANCELED", "EXPIRED", "EXPIRED_IN_MATCH"])
def test_a_sell_ended_after_a_partial_fill_sells_the_rest_and_books_both(status: str) -> None:
    s, sell = full_cycle()
    partial = filled(sell, "20", "9.928", status)  # 20 * 0.4964
    s, action = strategy.on_order(s, partial)
    assert action == strategy.FetchFills(partial)
    s, action = strategy.fills_learned(s, partial, [Fill("0.4964", "20", "0.009928", "USDT", 4)])
    # held 39.96 - 20 = 19.96 -> 19
    assert isinstance(action, strategy.Place) and (action.intent.client_order_id, action.intent.quantity) == (
        "nvq7x2k9-3-17S2", "19")
    sell2 = Order("nvq7x2k9-3-17S2", "SELL", "0.4964", "19", "NEW", 13)
    s, _ = strategy.placed(s, sell2)
    s, action = strategy.on_order(s, filled(sell2, "19", "9.4316", fills=[Fill("0.4964", "19", "0.0094316", "USDT", 5)]))
    assert action == strategy.Finish()
    r = s.result
    assert r is not None and (r.sold, r.proceeds, r.dust) == ("39", "19.3596", "0.96")
    assert r.fees == {"XRP": "0.04", "USDT": "0.0193596"}  # 0.009928 + 0.0094316
    assert r.pnl == "0.01591608"  # the same books as one sell of 39


def test_a_sell_remainder_below_the_minimum_is_dust_and_ends_the_cycle() -> None:
    s, sell = full_cycle()
    partial = filled(sell, "35", "17.374", "EXPIRED", fills=[Fill("0.4964", "35", "0.017374", "USDT", 4)])
    s, action = strategy.on_order(s, partial)
    # held 39.96 - 35 = 4.96 -> 4 XRP; 4 * 0.4964 = 1.99 USDT < 5 minimum notional
    assert action == strategy.Finish() and s.status == "done"
    assert s.result is not None and s.result.dust == "4.96" and "below the exchange's minimum" in s.result.note


def test_a_buy_update_after_the_sell_is_placed_changes_nothing() -> None:
    s, sell = full_cycle()
    s2, action = strategy.on_order(s, filled(BUY, "40", "19.8"))
    assert action is None and s2.intent is None and s2.status == "selling"


def test_a_full_cycle_of_decisions() -> None:
    s0 = state()
    s1, action = strategy.on_trade(s0, trade("0.5000"))
    assert isinstance(action, strategy.Place) and s1.intent == action.intent and s1.started_at == 1
    buy = Order(action.intent.client_order_id, "BUY", "0.4950", "40", "NEW", 11)
    s2, action = strategy.placed(s1, buy)
    assert action is None and s2.intent is None and s2.status == "buying"
    # a trade above the buy price: nothing to ask; at or below it: ask the exchange
    assert strategy.on_trade(s2, trade("0.4960"))[1] is None
    assert strategy.on_trade(s2, trade("0.4950"))[1] == strategy.Check(buy.client_order_id)
    s3, action = strategy.on_order(s2, filled(buy, "40", "19.8", fills=XRP_FILLS))
    assert isinstance(action, strategy.Place) and action.intent.side == "SELL" and s3.status == "selling"
    sell = Order(action.intent.client_order_id, "SELL", action.intent.price, "39", "NEW", 12)
    s4, action = strategy.placed(s3, sell)
    assert action is None and s4.sell_order == sell
    assert strategy.on_trade(s4, trade("0.4963"))[1] is None
    assert strategy.on_trade(s4, trade("0.4964"))[1] == strategy.Check(sell.client_order_id)
    s5, action = strategy.on_order(s4, filled(sell, "39", "19.3596", fills=[Fill("0.4964", "39", "0.0193596", "USDT", 3)]))
    assert action == strategy.Finish() and s5.status == "done"


def test_nothing_is_decided_while_an_intent_is_pending() -> None:
    s1, action = strategy.on_trade(state(), trade("0.5"))
    assert strategy.on_trade(s1, trade("0.4"))[1] is None


def test_rebuy_once_when_the_price_falls_far_enough() -> None:
    buy = Order("nvq7x2k9-3-17B", "BUY", "0.5000", "40", "NEW", 11)
    s = state(buy_order=buy, status="buying")  # rebuy_interval 0.05: below 0.4750
    assert not strategy.rebuy_due(s, trade("0.4750"))
    assert strategy.rebuy_due(s, trade("0.4749"))
    assert not strategy.rebuy_due(msgspec.structs.replace(s, rebuy_notified=True), trade("0.4"))


def test_older_stored_settings_find_their_assets_in_the_symbol_table() -> None:
    assert strategy.assets(settings(base_asset="", quote_asset="")) == ("XRP", "USDT")

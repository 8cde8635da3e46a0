"""The cycle bookkeeping (`naived.core.cycles`): pure rules the leader and the backtest both follow."""

from __future__ import annotations

import msgspec
from test_strategy import filled, settings, state, trade

from naived.core import cycles, strategy
from naived.core.config import TradingSettings
from naived.core.messages import Order


def test_a_symbol_starts_its_stored_traders_and_the_first_traders_at_start() -> None:
    assert cycles.starting((), 3) == [0, 1, 2]
    assert cycles.starting({4: None, 1: None}, 2) == [0, 1, 4]  # a trader past chunks resumes its cycle
    assert cycles.starting([4, 1], 2, shutting_down=True) == [1, 4]  # no fresh cycle while shutting down


def test_a_fresh_cycle_is_the_settings_symbol_with_nothing_decided() -> None:
    fresh = cycles.fresh(settings(), 2, 9, "nvabc123")
    assert (fresh.symbol, fresh.trader_id, fresh.cycle, fresh.id_prefix, fresh.status) == ("XRPUSDT", 2, 9, "nvabc123", "new")
    assert fresh.intent is None and fresh.buy_order is None and fresh.result is None


def test_a_finished_cycle_is_followed_by_the_next_under_the_same_id_within_chunks() -> None:
    assert cycles.continues(0, 2) and cycles.continues(1, 2)
    assert not cycles.continues(2, 2)  # a reload made the chunks fewer: that trader stops
    assert not cycles.continues(0, 2, shutting_down=True)


def test_a_rebuy_starts_the_lowest_free_id_while_fewer_than_chunks_run() -> None:
    assert cycles.rebuy_starts({0}, 3) == 1
    assert cycles.rebuy_starts({0, 2}, 3) == 1
    assert cycles.rebuy_starts({1, 2}, 3) == 0
    assert cycles.rebuy_starts({0, 1, 2}, 3) is None
    assert cycles.rebuy_starts({0, 5}, 2) is None  # a trader past chunks still counts as running
    assert cycles.rebuy_starts({0}, 3, shutting_down=True) is None
    assert cycles.rebuy_possible(TradingSettings(chunks=3, initial_traders=1))
    assert not cycles.rebuy_possible(TradingSettings(chunks=3))  # all start at once: none left to add


def test_a_state_change_counts_orders_placed_and_filled_and_outcomes_unknown() -> None:
    buy = Order("nvq7x2k9-3-17B", "BUY", "0.4950", "40", "NEW", 11)
    new, _ = strategy.on_trade(state(), trade("0.5000"))  # an intent: nothing placed yet
    assert cycles.counts(None, new) == {}
    unknown = strategy.intent_unknown(new)
    assert cycles.counts(new, unknown) == {"intents_unknown": 1}
    assert cycles.counts(unknown, unknown) == {}  # told once
    placed = state(buy_order=buy, status="buying")
    assert cycles.counts(unknown, placed) == {"orders_placed": 1}
    assert cycles.counts(placed, placed) == {}
    assert cycles.counts(placed, msgspec.structs.replace(placed, buy_order=filled(buy, "40", "19.8"))) == {"orders_filled": 1}
    sell = Order("nvq7x2k9-3-17S", "SELL", "0.4964", "39", "FILLED", 12, "39", "19.3596")
    # placed and filled at once (a taker), with the buy's fill learned in the same change
    assert cycles.counts(placed, msgspec.structs.replace(placed, buy_order=filled(buy, "40", "19.8"), sell_order=sell)) == {
        "orders_placed": 1, "orders_filled": 2}


"""The root's view of its leases (naived/tree/cluster.py): what each keeper report makes it do."""

from __future__ import annotations

from naived.core.messages import HeldLease, LeasesHeld
from naived.tree.cluster import Leased


def held(symbol: str, token: int, deadline: float, mode: str = "running", run: int = 1,
         generation: int = 1) -> HeldLease:
    return HeldLease(symbol, token, deadline, mode, run, generation)


def test_a_report_starts_what_is_newly_held_and_stops_what_is_not_held_any_more() -> None:
    leased = Leased("h1", 15.0)
    first = leased.on_report(LeasesHeld([held("BTCUSDT", 1, 20.0), held("XRPUSDT", 2, 20.0)]), now=10.0)
    assert [h.symbol for h in first.start] == ["BTCUSDT", "XRPUSDT"] and first.stop == []
    second = leased.on_report(LeasesHeld([held("XRPUSDT", 2, 25.0), held("ETHUSDT", 3, 25.0)]), now=15.0)
    assert [h.symbol for h in second.start] == ["ETHUSDT"] and second.stop == ["BTCUSDT"]
    assert second.stop_by == {"BTCUSDT": 20.0}  # handed off: its graceful stop ends by the deadline it had
    assert leased.token("XRPUSDT") == 2 and leased.token("BTCUSDT") is None


def test_a_new_token_restarts_the_symbol_under_it() -> None:
    leased = Leased("h1", 15.0)
    leased.on_report(LeasesHeld([held("XRPUSDT", 2, 20.0)]), now=10.0)
    again = leased.on_report(LeasesHeld([held("XRPUSDT", 7, 25.0)]), now=15.0)
    assert again.stop == ["XRPUSDT"] and [(h.symbol, h.token) for h in again.start] == [("XRPUSDT", 7)]


def test_a_lease_past_its_deadline_is_not_held_even_when_a_report_says_so() -> None:
    leased = Leased("h1", 15.0)
    changes = leased.on_report(LeasesHeld([held("XRPUSDT", 2, 9.0)]), now=10.0)
    assert changes.start == [] and leased.next_deadline() is None


def test_deadlines_stop_symbols_without_any_report() -> None:
    leased = Leased("h1", 15.0)
    leased.on_report(LeasesHeld([held("BTCUSDT", 1, 20.0), held("XRPUSDT", 2, 22.0)]), now=10.0)
    assert leased.next_deadline() == 20.0
    assert leased.overdue(19.9) == []
    assert leased.overdue(20.0) == ["BTCUSDT"]
    assert leased.next_deadline() == 22.0
    # an error report keeps the old deadlines: what passes them stops all the same
    leased.on_report(LeasesHeld([held("XRPUSDT", 2, 22.0)], error="database down"), now=21.0)
    assert leased.overdue(22.5) == ["XRPUSDT"] and leased.held == {}
    assert leased.status().error == "database down"


def test_a_shutdown_in_the_shared_trading_set_is_passed_on_once() -> None:
    leased = Leased("h1", 15.0)
    leased.on_report(LeasesHeld([held("XRPUSDT", 2, 20.0)]), now=10.0)
    first = leased.on_report(LeasesHeld([held("XRPUSDT", 2, 25.0, "shutting-down")]), now=11.0)
    assert first.shut_down == ["XRPUSDT"] and first.start == [] and first.stop == []
    assert leased.on_report(LeasesHeld([held("XRPUSDT", 2, 30.0, "shutting-down")]), now=12.0).shut_down == []


def test_a_stop_trading_is_told_from_a_hand_off_by_the_trading_set_the_round_read() -> None:
    leased = Leased("h1", 15.0)
    leased.on_report(LeasesHeld([held("BTCUSDT", 1, 20.0), held("XRPUSDT", 2, 20.0)], trading=["BTCUSDT", "XRPUSDT"]),
                     now=10.0)
    # XRPUSDT left the set (stop-trading); BTCUSDT is still in it, placed elsewhere now (a hand-off)
    changes = leased.on_report(LeasesHeld([], trading=["BTCUSDT"]), now=11.0)
    assert changes.stop == ["BTCUSDT", "XRPUSDT"] and changes.left == ["XRPUSDT"]
    # a round that failed read no trading set: a lease it lost is no stop that was asked for
    leased.on_report(LeasesHeld([held("ETHUSDT", 3, 20.0)], trading=["ETHUSDT"]), now=12.0)
    assert leased.on_report(LeasesHeld([], error="database down"), now=13.0).left == []


def test_a_stop_and_a_start_within_one_round_start_the_symbol_afresh_under_the_same_token() -> None:
    leased = Leased("h1", 15.0)
    leased.on_report(LeasesHeld([held("XRPUSDT", 2, 20.0, run=5, generation=5)]), now=10.0)
    again = leased.on_report(LeasesHeld([held("XRPUSDT", 2, 25.0, run=9, generation=9)]), now=11.0)
    assert [(h.symbol, h.token, h.deadline) for h in again.restart] == [("XRPUSDT", 2, 25.0)]
    assert again.start == [] and again.stop == [] and again.retry == []
    assert leased.on_report(LeasesHeld([held("XRPUSDT", 2, 30.0, run=9, generation=9)]), now=12.0).restart == []


def test_a_start_trading_of_a_symbol_held_already_is_passed_on_once_for_a_failed_run() -> None:
    leased = Leased("h1", 15.0)
    leased.on_report(LeasesHeld([held("XRPUSDT", 2, 20.0, run=5, generation=5)]), now=10.0)
    asked = leased.on_report(LeasesHeld([held("XRPUSDT", 2, 25.0, run=5, generation=7)]), now=11.0)
    assert [h.symbol for h in asked.retry] == ["XRPUSDT"] and asked.restart == [] and asked.start == []
    assert leased.on_report(LeasesHeld([held("XRPUSDT", 2, 30.0, run=5, generation=7)]), now=12.0).retry == []

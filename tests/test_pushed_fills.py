"""Traders act on pushed fills: the strategy's pure functions, then a real tree where a fill
happens with no public trade after it (the market has stopped; the exchange matched on a trade
no subscriber saw) and is noticed by the push, by the REST fallback while the account stream is
not up, and by the leader's reconcile while the trader still believes it up."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from harness import Tree, open_buys, running_tree, wait_for

from naived.core import strategy
from naived.core.messages import ExecutionReport, Fill, Order, Settings, TraderState

SETTINGS = Settings("XRPUSDT", 2, "100", "0.01", "0.5", "0.01", "0.0001", "1", "1", "5", "XRP", "USDT")


def report(x: str, status: str, z: str, l: str = "0", n: str = "0", t: int = -1, cid: str = "nv-0-1B") -> ExecutionReport:  # noqa: E741 - `l` is the name of the field Binance sends
    return ExecutionReport("executionReport", 1, "XRPUSDT", cid, "BUY", "20", "0.5", x, status, 7, l, z, "0.5", n,
                           "XRP" if x == "TRADE" else None, 2, t, str(Decimal(z) * Decimal("0.5")))


def buying(status: str = "NEW", executed: str = "0") -> TraderState:
    order = Order("nv-0-1B", "BUY", "0.5", "20", status, 7, executed)
    return TraderState("XRPUSDT", 0, 1, SETTINGS, status="buying", buy_order=order)


# --- the strategy ----------------------------------------------------------------------------


def test_pushed_fills_that_add_up_carry_their_commissions() -> None:
    state = buying()
    fills: list[Fill] = []
    part = report("TRADE", "PARTIALLY_FILLED", "8", "8", "0.008", 11)
    fills.append(strategy.fill_from_report(part))
    state, action = strategy.on_report(state, strategy.order_from_report(part), fills)
    assert action is None and state.buy_order.status == "PARTIALLY_FILLED" and state.buy_order.executed_qty == "8"
    done = report("TRADE", "FILLED", "20", "12", "0.012", 12)
    fills.append(strategy.fill_from_report(done))
    state, action = strategy.on_report(state, strategy.order_from_report(done), fills)
    # The commissions came with the pushes: straight to the sell, no myTrades.
    assert isinstance(action, strategy.Place) and action.intent.side == "SELL"
    assert state.buy_order.fees == {"XRP": "0.02"} and action.intent.quantity == "19"


def test_a_pushed_final_order_with_a_missed_fill_asks_for_its_trades() -> None:
    done = report("TRADE", "FILLED", "20", "12", "0.012", 12)
    state, action = strategy.on_report(buying("PARTIALLY_FILLED", "8"), strategy.order_from_report(done),
                                       [strategy.fill_from_report(done)])
    assert isinstance(action, strategy.FetchFills) and state.buy_order.status == "FILLED"


def test_old_news_never_takes_the_state_back() -> None:
    # The REST answer (FILLED, with fills) came first; the NEW and TRADE pushes arrive after it.
    filled = buying("FILLED", "20")
    for old in (report("NEW", "NEW", "0"), report("TRADE", "FILLED", "20", "20", "0.02", 11)):
        assert strategy.on_report(filled, strategy.order_from_report(old), []) == (filled, None)
    partly = buying("PARTIALLY_FILLED", "8")
    assert strategy.on_report(partly, strategy.order_from_report(report("NEW", "NEW", "0")), []) == (partly, None)
    # An earlier cycle's or another leg's order, or a report while an intent is pending: ignored.
    other = strategy.order_from_report(report("CANCELED", "CANCELED", "0", cid="nv-0-0B"))
    assert strategy.on_report(buying(), other, []) == (buying(), None)
    cancelled = strategy.order_from_report(report("CANCELED", "CANCELED", "0"))
    state, action = strategy.on_report(buying(), cancelled, [])
    assert state.status == "done" and isinstance(action, strategy.Finish)


def test_a_trader_follows_trades_only_when_it_needs_them() -> None:
    new = TraderState("XRPUSDT", 0, 1, SETTINGS)
    assert strategy.wants_trades(new, rebuy_possible=False, stream_up=True)  # its first buy price
    waiting = buying()
    assert not strategy.wants_trades(waiting, rebuy_possible=False, stream_up=True)  # pushes only
    assert strategy.wants_trades(waiting, rebuy_possible=False, stream_up=False)  # fallback: as before
    assert strategy.wants_trades(waiting, rebuy_possible=True, stream_up=True)  # chapter 9's rebuy
    notified = msgspec.structs.replace(waiting, rebuy_notified=True)
    assert not strategy.wants_trades(notified, rebuy_possible=True, stream_up=True)


# --- a real tree -----------------------------------------------------------------------------

WAITING = re.compile(r"trader XRPUSDT/(\d+).*waiting for pushes only")


def config(reconcile: float, heartbeat: float, fallback: float) -> str:
    return f"""
[trading.defaults]
chunks = 2
buy_down_interval = "0.01"   # the buys rest 1% below the market
profit_interval = "0.5"      # and the sells far above it

[naived]
reconcile_seconds = {reconcile}

[account_stream]
heartbeat_seconds = {heartbeat}
fallback_check_seconds = {fallback}
reconnect_max_seconds = 0.5
"""


MODES = {
    # only the push can explain a fill noticed in time: no fallback checks, no reconcile
    "push": config(reconcile=600, heartbeat=0.2, fallback=600),
    # the fill's event drops the stream's connection: it says "down" and the traders ask by REST
    "rest-fallback": config(reconcile=600, heartbeat=0.2, fallback=0.5),
    # the account stream hangs: the root's watchdog kills it, and its successor's new session
    # makes the traders ask
    "watchdog": config(reconcile=600, heartbeat=0.2, fallback=600),
    # it hangs, its watchdog is slow and there is no REST fallback: the leader's reconcile finds it
    "reconcile": config(reconcile=1.0, heartbeat=30.0, fallback=600),
}
EXPLAINED_BY = {"push": "pushed: ", "rest-fallback": "the account stream is not up",
                "watchdog": ": account stream session ", "reconcile": "the leader's reconcile found it no longer open"}
HANGS = ("watchdog", "reconcile")


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tree(tmp_path: Path, mode: str) -> Iterator[Tree]:
    with running_tree(tmp_path, MODES[mode]) as t:
        yield t


def test_a_fill_no_trade_announces_is_noticed(tree: Tree, mode: str) -> None:
    assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
    buys = open_buys(tree, "XRPUSDT", 2)
    # Once the stream is up and the buys rest, the traders stop waking for public trades.
    wait_for("both traders to wait on pushes only", lambda: {m[1] for m in WAITING.finditer(tree.log("naived"))} >= {"0", "1"})
    tree.stop_streamer()  # the market stops: no public trade will cross the buys any more
    stream_pid = tree.status()["account_stream"]["pid"]
    if mode in HANGS:
        os.kill(stream_pid, signal.SIGSTOP)  # connected, but it publishes nothing any more
    if mode == "rest-fallback":
        tree.http.post(f"{tree.paper_url}/paper/faults", json={"user_stream_drop": 1.0}, timeout=5)
    try:
        lowest = min(Decimal(t["state"]["buy_order"]["price"]) for t in buys.values())
        logged = len(tree.log("naived"))  # what explains the fill is logged after this
        answer = tree.http.post(f"{tree.paper_url}/paper/trade",
                                json={"symbol": "XRPUSDT", "price": str(lowest - Decimal("0.0001")), "qty": "100000"}, timeout=5)
        assert answer.json() == {"fills": 2}

        def selling() -> bool:
            traders = tree.traders("XRPUSDT")
            return len(traders) == 2 and all(t["state"]["sell_order"] for t in traders.values())

        wait_for(f"both traders to notice their fills ({mode})", selling, timeout=5.0)
        assert tree.log("naived")[logged:].count(EXPLAINED_BY[mode]) >= 2
        states = [t["state"] for t in tree.traders("XRPUSDT").values()]
        # The buy's commission is known (from the pushes, or from myTrades after a REST lookup).
        assert all(s["buy_order"]["status"] == "FILLED" and s["buy_order"]["fees"] for s in states)
    finally:
        if mode == "reconcile":  # the watchdog kills it itself in "watchdog" mode
            os.kill(stream_pid, signal.SIGKILL)
    if mode in HANGS:
        wait_for("the account stream to be restarted", lambda: tree.status()["account_stream"]["pid"] not in (None, stream_pid))

"""Running naive for months: systemd notifications, config errors, rebuy, stop/shutdown/autostart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from fake_exchange import FakeExchange
from harness import BIN, RESTING, Tree, open_buys, running_tree, wait_for

from naived.core.config import load_config
from naived.core.messages import Ack, OpenOrdersFetched, leader_reply_decoder
from naived.exchange.binance import BinanceClient
from naived.tree.ipc import request


@pytest.fixture
def resting(tmp_path: Path) -> Iterator[Tree]:
    with running_tree(tmp_path, RESTING) as t:
        yield t


def test_naived_tells_systemd_ready_watchdog_stopping(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(20)
    tree = Tree(tmp_path, RESTING + '\n[naived]\nautostart = ["XRPUSDT"]\n')
    try:
        tree.start_streamer()
        tree.start_naived(env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"})
        first = notify.recv(4096).decode().split("\n")
        assert first[0] == "READY=1"
        if not tree.store_dsn:  # a cluster host (PostgreSQL) starts what the shared trading set holds, not naived.autostart
            assert first[1].startswith("STATUS=1 symbols trading")
            # READY came after the autostarted symbol was started
            assert tree.symbol("XRPUSDT")["state"] == "running"
        wait_for("a WATCHDOG=1", lambda: "WATCHDOG=1" in notify.recv(4096).decode())
        tree.naived.send_signal(signal.SIGTERM)
        wait_for("STOPPING=1", lambda: "STOPPING=1" in notify.recv(4096).decode())
        assert tree.naived.wait(15) == 0
    finally:
        tree.stop()
        notify.close()


def test_check_config_names_the_key_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[trading.symbols.XRPUSDT]\nchunks = 0\n')
    for command in (["check-config"], ["start"]):
        result = subprocess.run([str(BIN / "naived"), *command, "--config", str(bad)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2
        assert "trading.symbols.XRPUSDT" in result.stderr and "chunks" in result.stderr
        assert result.stderr.count("\n") == 1
    good = subprocess.run(
        [str(BIN / "naived"), "check-config", "--config", str(Path(__file__).parents[1] / "config" / "naive.toml")],
        capture_output=True, text=True, timeout=30,
    )
    assert good.returncode == 0, good.stderr


def test_rebuy_starts_another_trader_up_to_chunks(tmp_path: Path) -> None:
    # One trader at start (the book's chapter 9); a tiny rebuy interval and a large profit
    # target keep its cycle open while the simulated price wanders below its buy.
    with running_tree(tmp_path, """
[trading.defaults]
chunks = 2
initial_traders = 1
buy_down_interval = "0"
profit_interval = "0.05"
rebuy_interval = "0.0002"
""") as tree:
        tree.ctl("start-trading", "BTCUSDT")
        most = 0

        def second_trader() -> bool:
            nonlocal most
            traders = tree.traders("BTCUSDT")
            most = max(most, len(traders))
            return 1 in traders

        wait_for("a rebuy to start trader 1", second_trader, timeout=60)
        assert tree.traders("BTCUSDT")[0]["state"]["rebuy_notified"] is True
        assert most <= 2
        log = tree.log("naived")
        # one trader at start; the second only because trader 0's rebuy fired
        assert log.index("started trader BTCUSDT/0") < log.index("BTCUSDT/0: rebuy: starting trader 1")
        assert log.index("BTCUSDT/0: rebuy: starting trader 1") < log.index("started trader BTCUSDT/1")


def test_stop_trading_leaves_orders_that_the_next_start_adopts(resting: Tree) -> None:
    resting.ctl("start-trading", "XRPUSDT")
    before = open_buys(resting, "XRPUSDT", 2)
    orders_before = resting.paper_orders("XRPUSDT")
    stopped = resting.ctl("stop-trading", "XRPUSDT")
    assert stopped.returncode == 0 and "open orders stay" in stopped.stdout
    assert resting.symbol("XRPUSDT") is None
    wait_for("the old traders to be gone", lambda: not any(os.path.exists(f"/proc/{t['pid']}") for t in before.values()))
    assert all(o["status"] == "NEW" for o in resting.paper_orders("XRPUSDT"))

    resting.ctl("start-trading", "XRPUSDT")
    after = open_buys(resting, "XRPUSDT", 2)
    for i, t in after.items():
        assert t["state"]["buy_order"]["client_order_id"] == before[i]["state"]["buy_order"]["client_order_id"]
    assert len(resting.paper_orders("XRPUSDT")) == len(orders_before)  # adopted, not placed again


def test_shutdown_trading_finishes_the_cycles_then_stops(tmp_path: Path) -> None:
    with running_tree(tmp_path, """
[trading.defaults]
chunks = 2
buy_down_interval = "0"
profit_interval = "-0.0012"
""") as tree:
        tree.ctl("start-trading", "BTCUSDT")
        open_buys(tree, "BTCUSDT", 2)
        result = tree.ctl("shutdown-trading", "BTCUSDT")
        assert result.returncode == 0, result.stderr
        wait_for("BTCUSDT to stop by itself", lambda: tree.symbol("BTCUSDT") is None, timeout=90)
        orders = tree.paper_orders("BTCUSDT")
        assert orders and all(o["status"] == "FILLED" for o in orders)
        assert sorted(o["side"] for o in orders).count("BUY") == sorted(o["side"] for o in orders).count("SELL")
        assert tree.ctl("shutdown-trading", "BTCUSDT").returncode == 1  # not trading any more


def test_symbols_trading_when_naived_stopped_start_again_with_their_states(resting: Tree) -> None:
    resting.ctl("start-trading", "XRPUSDT")
    before = open_buys(resting, "XRPUSDT", 2)
    orders = len(resting.paper_orders("XRPUSDT"))
    resting.naived.send_signal(signal.SIGTERM)
    assert resting.naived.wait(15) == 0

    resting.start_naived()
    after = open_buys(resting, "XRPUSDT", 2)
    for i, t in after.items():
        assert t["state"]["cycle"] == before[i]["state"]["cycle"]
        assert t["state"]["buy_order"]["client_order_id"] == before[i]["state"]["buy_order"]["client_order_id"]
    assert len(resting.paper_orders("XRPUSDT")) == orders


def test_status_answers_while_traders_restart(tmp_path: Path) -> None:
    # 30 kills in a few seconds: above the default restart intensity, which would (rightly)
    # give the symbol up. This test is about status answering mid-restart.
    with running_tree(tmp_path, RESTING + "\n[naived.supervision]\nmax_restarts = 1000\n") as resting:
        resting.ctl("start-trading", "XRPUSDT")
        open_buys(resting, "XRPUSDT", 2)
        for _ in range(15):
            for t in resting.traders("XRPUSDT").values():
                try:
                    os.kill(t["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass  # gone already: status may show a trader that was just killed
            result = resting.ctl("status", "XRPUSDT")  # right after the kills, mid-restart
            assert result.returncode == 0 and "XRPUSDT [running]" in result.stdout, result.stderr
            open_buys(resting, "XRPUSDT", 2)


def test_reconciliation_reports_an_order_no_trader_owns(resting: Tree) -> None:
    resting.ctl("start-trading", "XRPUSDT")
    prefix = open_buys(resting, "XRPUSDT", 2)[0]["state"]["id_prefix"]  # the symbol store's, made at its first start
    assert "started reconcile XRPUSDT" not in resting.log("naived")  # a new store: no order can carry its prefix
    resting.ctl("stop-trading", "XRPUSDT")
    stray = BinanceClient(resting.paper_url, "paper-key", "paper-secret")
    # 0.2: far below the market, within PERCENT_PRICE_BY_SIDE's 0.2× its average (0.1 is not, near 0.5)
    stray.new_order("XRPUSDT", "BUY", "0.2000", "100", f"{prefix}-9-999B")
    stray.new_order("XRPUSDT", "BUY", "0.2000", "100", "nvother1-9-999B")  # another installation's: not ours
    resting.ctl("start-trading", "XRPUSDT")
    open_buys(resting, "XRPUSDT", 2)
    wait_for("reconciliation", lambda: "drift" in resting.log("naived"))
    assert f"drift: exchange has open order {prefix}-9-999B that no trader owns" in resting.log("naived")
    assert "open order nvother1" not in resting.log("naived")
    assert resting.symbol("XRPUSDT")["leader"]["counters"]["drift"] == 1
    assert resting.symbol("XRPUSDT")["leader"]["counters"]["drift"] == 1


def test_an_unknown_outcome_is_settled_by_asking_never_by_resending_blindly(tmp_path: Path) -> None:
    # Every order request is dropped before the exchange processes it: the traders cannot know
    # whether their buy exists. They mark the intent unknown, ask, and place again only once a
    # request still in flight would be refused as stale (recvWindow, 1 s here).
    # The paper exchange decides every order before it answers: a short backend window is true of it.
    config = (RESTING + '\n[exchange]\nrecv_window_ms = 1000\nbackend_timeout_seconds = 0.5\n'
              '\n[paper.faults]\ndrop_connection = 1.0\n')
    with running_tree(tmp_path, config) as tree:
        tree.ctl("start-trading", "XRPUSDT")

        def both_unknown() -> bool:
            traders = tree.traders("XRPUSDT").values()
            return len(traders) == 2 and all(t["state"]["intent"] and t["state"]["intent"]["unknown"] for t in traders)

        wait_for("both traders to hold an intent of unknown outcome", both_unknown)
        assert tree.paper_orders("XRPUSDT") == []
        assert tree.http.post(f"{tree.paper_url}/paper/faults", json={"drop_connection": 0.0}, timeout=5).ok
        placed = open_buys(tree, "XRPUSDT", 2)
        orders = tree.paper_orders("XRPUSDT")
        assert sorted(o["clientOrderId"] for o in orders) == sorted(
            t["state"]["buy_order"]["client_order_id"] for t in placed.values())
        assert "when no request in flight can still execute" in tree.log("naived")
        assert tree.symbol("XRPUSDT")["leader"]["counters"]["intents_unknown"] == 2


@pytest.mark.parametrize("restart", [False, True], ids=["same-trader", "restarted-trader"])
def test_an_order_accepted_late_is_adopted_not_placed_twice(tmp_path: Path, restart: bool) -> None:
    # Binance answers -1007 ("execution status unknown") and the order shows up 2 s later.
    # "Not there" is definite only recvWindow (1 s) + the backend timeout (1 s) + 1 s after
    # the send: a trader that asks before that and places again makes a duplicate. A trader
    # killed while it waits is replaced by one that waits from its own start.
    with FakeExchange(late_after=2.0) as fake:
        config = f"""
[naived]
exchange = "binance-testnet"

[exchange]
testnet_url = "{fake.url}"
recv_window_ms = 1000
backend_timeout_seconds = 1.0
timeout_seconds = 2.0

[trading.defaults]
chunks = 1
buy_down_interval = "0.5"
"""
        tree = Tree(tmp_path, config)
        try:
            tree.start_streamer()
            tree.start_naived(env={"BINANCE_API_KEY": "k", "BINANCE_API_SECRET": "s"})
            assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
            if restart:
                def unknown() -> dict | None:
                    t = tree.traders("XRPUSDT").get(0)
                    return t if t and t["state"]["intent"] and t["state"]["intent"]["unknown"] else None

                victim = wait_for("the trader to hold an intent of unknown outcome", unknown, interval=0.01)
                os.kill(victim["pid"], signal.SIGKILL)
            placed = open_buys(tree, "XRPUSDT", 1)[0]
            cid = placed["state"]["buy_order"]["client_order_id"]
            assert fake.posts == {cid: 1}, fake.posts
            assert placed["state"]["buy_order"]["status"] == "NEW"
            assert "when no request in flight can still execute" in tree.log("naived")
            if restart:
                assert placed["pid"] != victim["pid"]
        finally:
            tree.stop()


def test_the_paper_exchanges_late_acceptance_is_adopted_not_placed_twice(tmp_path: Path) -> None:
    # The paper exchange's own fault: every order is answered 503 -1007 ("execution status
    # unknown") and enters the book 2 s later, where the buys (1% above the market) fill at once.
    # A filled order no longer blocks its client order id, so a trader that trusted the first
    # "not there" and placed again would buy twice. The traders' window (recvWindow 1 s +
    # backend 1 s + 1 s) outlasts the 2 s: each adopts its late, filled buy.
    config = """
[trading.defaults]
chunks = 2
buy_down_interval = "-0.01"

[exchange]
recv_window_ms = 1000
backend_timeout_seconds = 1.0

[paper.faults]
late_accept_5xx = 1.0
late_accept_seconds = 2.0
"""
    with running_tree(tmp_path, config) as tree:
        tree.ctl("start-trading", "XRPUSDT")
        selling = wait_for("both traders to hold a filled buy", lambda: (t := tree.traders("XRPUSDT")) and len(t) == 2 and all(
            x["state"]["buy_order"] and x["state"]["buy_order"]["status"] == "FILLED" for x in t.values()) and t)
        buys = [o for o in tree.paper_orders("XRPUSDT") if o["side"] == "BUY"]
        assert sorted(o["clientOrderId"] for o in buys) == sorted(
            t["state"]["buy_order"]["client_order_id"] for t in selling.values())
        assert "entered the book late" in tree.log("naived")


def test_the_roots_reconcile_finds_missing_only_what_was_open_before_it_asked(resting: Tree) -> None:
    """The root's periodic check (one openOrders call for every symbol) hands a leader the list
    with the time it asked: an order opened after that time is not missing, one opened before is."""
    resting.ctl("start-trading", "XRPUSDT")
    buys = open_buys(resting, "XRPUSDT", 2)
    endpoint = load_config(str(resting.config_path)).leader_endpoint("XRPUSDT")
    ctx = zmq.Context()
    try:
        asked_before = OpenOrdersFetched([], asked_at=time.time() - 3600)  # before the buys were placed
        assert isinstance(request(ctx, endpoint, asked_before, leader_reply_decoder, 5000), Ack)
        assert "reconcile: a trader thinks" not in resting.log("naived")
        asked_now = OpenOrdersFetched([], asked_at=time.time())  # the buys were open: missing now
        assert isinstance(request(ctx, endpoint, asked_now, leader_reply_decoder, 5000), Ack)
    finally:
        ctx.term()
    for trader in buys.values():
        cid = trader["state"]["buy_order"]["client_order_id"]
        wait_for(f"{cid} looked up", lambda cid=cid: f"asking about {cid}: the leader's reconcile found it no longer open"
                 in resting.log("naived"))
    assert resting.symbol("XRPUSDT")["leader"]["counters"].get("drift", 0) == 0  # a periodic check counts no drift

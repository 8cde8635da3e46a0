"""The naived process tree: real processes, real kill -9, through naivectl and signals only."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from harness import BIN, Tree, open_buys, running_tree, wait_for

# Buy 50% below the market: the buy order stays open, so states are stable to compare.
RESTING = """
[trading.defaults]
chunks = 2
buy_down_interval = "0.5"

[naived.supervision]
max_restarts = 3
period_seconds = 30.0
stop_timeout_seconds = 3.0
"""


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    with running_tree(tmp_path, RESTING) as t:
        yield t


def test_the_tree_runs_on_the_store_the_test_run_asks_for(tree: Tree, tmp_path: Path) -> None:
    """NAIVE_TEST_STORE=postgresql (tests/conftest.py): every tree is a cluster of one host, its
    state in PostgreSQL and none in SQLite files; else SQLite, as a user who configures nothing has."""
    on_postgresql = os.environ.get("NAIVE_TEST_STORE") == "postgresql"
    assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
    open_buys(tree, "XRPUSDT", 2)
    cluster = tree.status()["cluster"]
    assert (cluster is not None) == on_postgresql
    assert cluster is None or [h["host_id"] for h in cluster["hosts"]] == ["test-host"]
    assert (tmp_path / "state" / "symbols" / "XRPUSDT.sqlite").exists() != on_postgresql


def test_kill_9_a_trader_restarts_it_with_its_last_state(tree: Tree) -> None:
    assert tree.ctl("start-trading", "xrpusdt").returncode == 0
    before = open_buys(tree, "XRPUSDT", 2)[0]
    os.kill(before["pid"], signal.SIGKILL)

    after = wait_for(
        "trader 0 to come back with a new PID",
        lambda: (t := tree.traders("XRPUSDT").get(0)) and t["pid"] != before["pid"] and t,
    )
    assert after["trader_id"] == 0
    assert after["restarts"] == before["restarts"] + 1
    assert after["state"]["cycle"] == before["state"]["cycle"]
    assert after["state"]["buy_order"]["client_order_id"] == before["state"]["buy_order"]["client_order_id"]
    # ...and the exchange holds that one buy, not a second one.
    cid = before["state"]["buy_order"]["client_order_id"]
    buys = [o for o in tree.paper_orders("XRPUSDT") if o["side"] == "BUY" and o["clientOrderId"].startswith(cid[:-1])]
    assert [o["clientOrderId"] for o in buys] == [cid]


def test_kill_9_the_leader_restarts_the_whole_symbol(tree: Tree) -> None:
    tree.ctl("start-trading", "XRPUSDT")
    before = open_buys(tree, "XRPUSDT", 2)
    leader_pid = tree.symbol("XRPUSDT")["leader"]["pid"]
    os.kill(leader_pid, signal.SIGKILL)

    def all_new() -> dict[int, dict] | None:
        sym = tree.symbol("XRPUSDT")
        if not sym or not sym["leader"] or sym["leader"]["pid"] == leader_pid:
            return None
        traders = tree.traders("XRPUSDT")
        fresh = all(t["pid"] != before[i]["pid"] for i, t in traders.items())
        return traders if len(traders) == 2 and fresh else None

    after = wait_for("a new leader and new traders", all_new)
    for old_trader in before.values():
        assert not psutil.pid_exists(old_trader["pid"]) or psutil.Process(old_trader["pid"]).status() == psutil.STATUS_ZOMBIE
    for i, t in after.items():
        assert t["state"]["cycle"] == before[i]["state"]["cycle"]  # resumed from the durable store
        assert t["state"]["buy_order"]["client_order_id"] == before[i]["state"]["buy_order"]["client_order_id"]
    assert tree.symbol("XRPUSDT")["supervisor"]["restarts"] == 0  # the supervisor itself did not die


def test_a_failing_symbol_is_marked_failed_and_others_keep_trading(tmp_path: Path) -> None:
    # BTCUSDT with 5 USDT per trader passes start-trading's check (the minimum notional is 5), but
    # its buy, truncated to the lot step, is a little below it: its trader fails on its first
    # trade, every time, until the tree gives up on the symbol.
    with running_tree(tmp_path, RESTING + '\n[trading.symbols.BTCUSDT]\nbudget = "5"\nchunks = 1\n') as t:
        t.ctl("start-trading", "XRPUSDT")
        t.ctl("start-trading", "BTCUSDT")
        failed = wait_for("BTCUSDT to be marked failed",
                          lambda: (s := t.symbol("BTCUSDT")) and s["state"] == "failed" and s, timeout=60)
        assert "minimum" in failed["error"]
        assert t.symbol("XRPUSDT")["state"] == "running"
        open_buys(t, "XRPUSDT", 2)
        text = t.ctl("status").stdout
        assert "BTCUSDT [failed]" in text and "XRPUSDT [running]" in text


def test_sigterm_leaves_no_process_behind(tree: Tree) -> None:
    tree.ctl("start-trading", "XRPUSDT")
    tree.ctl("start-trading", "ADAUSDT")
    open_buys(tree, "XRPUSDT", 2)
    open_buys(tree, "ADAUSDT", 2)
    pids = list(tree.seen)
    assert len(pids) >= 1 + 1 + 2 * (1 + 1 + 2)  # root, paper exchange, 2 x (supervisor, leader, 2 traders)
    run = tree.dir / "run"
    assert {"naived.sock", "account-stream.sock"} <= {p.name for p in run.iterdir()}
    tree.naived.send_signal(signal.SIGTERM)
    assert tree.naived.wait(15) == 0
    wait_for("every process of the tree to be gone", lambda: not tree.leftovers(), timeout=5)
    # Nor any socket file: streamerd's (still running) is left, and the host's rate budget, which
    # outlives naived on purpose (a ban from Binance holds across a restart).
    assert sorted(p.name for p in run.iterdir()) == ["market.sock", "rate-budget"]


def test_status_shows_the_symbols_last_trade_and_a_silent_feed(tmp_path: Path) -> None:
    # One trader of two at start: while its buy rests it follows the trades, for a rebuy (chapter 9)
    # that this far below the market never fires. (Traders that cannot rebuy stop following once
    # their buys rest: status then shows the last trade they saw before.)
    with running_tree(tmp_path, RESTING.replace("chunks = 2\n", "chunks = 2\ninitial_traders = 1\n")) as tree:
        tree.ctl("start-trading", "XRPUSDT")
        open_buys(tree, "XRPUSDT", 1)  # placed (a cluster host may first wait for its share of the order limits)

        def leader() -> dict[str, Any] | None:
            sym = tree.symbol("XRPUSDT")
            return sym["leader"] if sym and sym["leader"] and sym["leader"]["last_trade"] else None

        seen = wait_for("XRPUSDT's last trade in status", leader)
        assert seen["following_market"] and seen["last_trade"]["s"] == "XRPUSDT"
        assert re.search(r"leader .*, last trade 0\.\d+ \d+s ago", tree.ctl("status", "XRPUSDT").stdout)
        wait_for("a later trade in status (the traders keep telling)",
                 lambda: (lead := leader()) and lead["last_trade"]["t"] > seen["last_trade"]["t"], timeout=5)
        tree.stop_streamer()
        # 50 trades/s while the feed lives: a last trade older than 3 s means it no longer moves.
        wait_for("the last trade to age once the feed is silent",
                 lambda: (lead := leader()) and time.time() - lead["last_trade"]["E"] / 1000 > 3, timeout=15)


def test_naivectl_stop_stops_the_tree_and_waits_for_it(tree: Tree) -> None:
    tree.ctl("start-trading", "XRPUSDT")
    open_buys(tree, "XRPUSDT", 2)
    pid = tree.naived.pid
    stopped = tree.ctl("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines() == [
        f"naived pid {pid} is stopping: its traders stop first; open orders stay at the exchange and are adopted at "
        "the next start",
        f"naived pid {pid} stopped",
    ]
    assert tree.naived.poll() == 0  # gone when naivectl said so, and cleanly
    assert not tree.leftovers()
    again = tree.ctl("stop")
    assert again.returncode == 1 and "naived is not running" in again.stderr


def test_naivectl_errors_are_one_clear_line(tree: Tree, tmp_path: Path) -> None:
    unknown = tree.ctl("start-trading", "NOSUCHUSDT")
    assert unknown.returncode == 1 and "unknown symbol NOSUCHUSDT" in unknown.stderr
    assert unknown.stderr.count("\n") == 1
    bad = tree.ctl("start-trading", "xrp/usdt")
    assert bad.returncode == 1 and "bad symbol" in bad.stderr
    assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
    again = tree.ctl("start-trading", "XRPUSDT")
    assert again.returncode == 0 and "already trading" in again.stdout
    assert tree.ctl("stop-trading", "ADAUSDT").returncode == 1

    # Garbage on the control socket gets an error reply; the root keeps serving.
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{tmp_path / 'run' / 'naived.sock'}")
    sock.send(b"\x93not msgpack at all")
    assert sock.poll(5000) and b"bad request" in sock.recv()
    sock.close()
    ctx.term()
    assert tree.ctl("status").returncode == 0

    # naived not running: one line, exit 1, no traceback
    lonely = subprocess.run(
        [str(BIN / "naivectl"), "--endpoint", f"ipc://{tmp_path / 'nothing.sock'}", "status"],
        capture_output=True, text=True, timeout=30,
    )
    assert lonely.returncode == 1 and "naived is not running" in lonely.stderr
    assert "Traceback" not in lonely.stderr and lonely.stderr.count("\n") == 1


def test_leaders_get_their_filters_from_the_roots_one_exchange_info_call(tree: Tree) -> None:
    """exchangeInfo weighs 20: fetched once for every symbol, not once per symbol started."""
    wait_for("the root's filters", lambda: "exchange filters of" in tree.log("naived"))
    symbols = ("XRPUSDT", "ETHUSDT", "BTCUSDT")
    for symbol in symbols:
        assert tree.ctl("start-trading", symbol).returncode == 0
    for symbol in symbols:
        open_buys(tree, symbol, 2)
    log = tree.log("naived")
    assert log.count("started exchange-info") == 1
    assert "started filters" not in log  # no leader needed a worker of its own

"""Reconcile finds orphans (issue 20): open orders at the exchange that carry one of this install's
client order id prefixes but that no trader owns show in status, metrics and the log, including
the orders of a store that was moved aside (its prefix is in the install's registry)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from harness import Tree, free_port, open_buys, running_tree, tree_pids, wait_for

from naived.exchange.binance import BinanceClient

RESTING = """
[trading.defaults]
chunks = 2
buy_down_interval = "0.5"   # the buys rest far below the market

[naived]
# Often, for a quick test, but within the read budget: an openOrders of every symbol weighs 80, and
# reconciles every 0.3 s spent the host's reads within seconds (a cluster host's first orders, which
# wait for its order share, then met a budget that held every reconcile back).
reconcile_seconds = 1.5
metrics_port = {port}
"""


def orphan_metrics(port: int) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {m[1]: float(m[2]) for m in re.finditer(r'^naive_orphan_orders\{symbol="([A-Z0-9]*)"\} (\S+)$', text, re.M)}


def orphans(tree: Tree) -> dict[str, dict[str, Any]]:
    return {o["client_order_id"]: o for o in tree.status().get("orphans", [])}


def reconciles_after(tree: Tree, n: int) -> None:
    """Wait until `n` more reconcile workers have come and gone."""
    start = tree.log("naived").count("started reconcile pid")
    wait_for(f"{n} reconciles", lambda: tree.log("naived").count("started reconcile pid") >= start + n)


def test_an_order_with_our_prefix_that_no_trader_owns_shows_in_status_metrics_and_log(tmp_path: Path) -> None:
    port = free_port()
    with running_tree(tmp_path, RESTING.format(port=port)) as tree:
        assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
        traders = open_buys(tree, "XRPUSDT", 2)
        prefix = traders[0]["state"]["id_prefix"]
        assert tree.recorded_prefixes() == {prefix: "XRPUSDT"}  # recorded before any order carried it
        stray = BinanceClient(tree.paper_url, "paper-key", "paper-secret")
        stray.new_order("XRPUSDT", "BUY", "0.2000", "100", f"{prefix}-9-999B")
        stray.new_order("XRPUSDT", "BUY", "0.2000", "100", "nvother1-9-999B")  # another installation's: not ours

        found = wait_for("the orphan in status", lambda: orphans(tree).get(f"{prefix}-9-999B"))
        assert found["symbol"] == "XRPUSDT" and found["minted_for"] == "XRPUSDT" and found["side"] == "BUY"
        assert set(orphans(tree)) == {f"{prefix}-9-999B"}  # neither the traders' buys nor another install's order
        assert orphan_metrics(port) == {"XRPUSDT": 1.0}
        shown = tree.ctl("status").stdout
        assert f"orphan XRPUSDT {prefix}-9-999B  BUY 100 @ 0.2" in shown and "no trader owns it" in shown, shown
        reconciles_after(tree, 3)
        assert tree.log("naived").count(f"orphan order {prefix}-9-999B") == 1  # one line when first seen

        stray.cancel_order("XRPUSDT", f"{prefix}-9-999B")
        wait_for("the orphan to go", lambda: not orphans(tree))
        assert orphan_metrics(port) == {"XRPUSDT": 0.0}
        assert f"{prefix}-9-999B is no longer an orphan" in tree.log("naived")


@pytest.mark.sqlite_only("a symbol's store files moved aside")
def test_the_orders_of_a_store_moved_aside_are_orphans_and_a_stopped_symbols_are_not(tmp_path: Path) -> None:
    port = free_port()
    with running_tree(tmp_path, RESTING.format(port=port)) as tree:
        assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
        old = open_buys(tree, "XRPUSDT", 2)
        old_ids = {t["state"]["buy_order"]["client_order_id"] for t in old.values()}
        pids = tree_pids({"pid": 0, "symbols": [tree.symbol("XRPUSDT")]})[1:]
        assert tree.ctl("stop-trading", "XRPUSDT").returncode == 0
        wait_for("XRPUSDT's processes to end", lambda: all(gone(pid) for pid in pids))

        reconciles_after(tree, 3)  # stopped: its store still owns its open orders
        assert orphans(tree) == {} and orphan_metrics(port) == {}

        store = tmp_path / "state" / "symbols" / "XRPUSDT.sqlite"
        aside = tmp_path / "state" / "aside"
        aside.mkdir()
        for path in store.parent.glob("XRPUSDT.sqlite*"):  # what the failed-store message tells the user to do
            path.rename(aside / path.name)
        assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
        new = open_buys(tree, "XRPUSDT", 2)
        assert new[0]["state"]["id_prefix"] != old[0]["state"]["id_prefix"]  # a new store, a new prefix

        wait_for("the old store's orders as orphans", lambda: set(orphans(tree)) == old_ids)
        assert {o["minted_for"] for o in orphans(tree).values()} == {"XRPUSDT"}
        assert orphan_metrics(port) == {"XRPUSDT": 2.0}
        for cid in old_ids:
            assert tree.log("naived").count(f"orphan order {cid}") == 1


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True

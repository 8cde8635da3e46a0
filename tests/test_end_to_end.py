"""streamerd + naived + the paper exchange trading a simulated market, end to end."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from harness import Tree, running_tree, wait_for

from naived.core.symbols import lookup

# The book's chapter-5 settings: buy at the market, sell slightly *below* the buy price plus
# fees (negative profit interval), so cycles complete within seconds on a random walk.
CYCLING = """
[trading.defaults]
chunks = 2
buy_down_interval = "0.0001"
profit_interval = "-0.0012"
"""


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    with running_tree(tmp_path, CYCLING) as t:
        yield t


def finished_cycles(tree: Tree, symbol: str) -> int:
    sym = tree.symbol(symbol)
    return sym["leader"]["cycles_finished"] if sym and sym["leader"] else 0


def test_cycles_complete_at_the_exchange_and_the_next_cycle_starts(tree: Tree) -> None:
    assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
    first = wait_for("trader 0 to start", lambda: tree.traders("XRPUSDT").get(0))
    wait_for("a finished cycle", lambda: finished_cycles(tree, "XRPUSDT") >= 1, timeout=60)

    # The exchange saw full cycles: a filled BUY, then a filled SELL of what the buy delivered
    # after its commission (0.1% of the XRP bought), down to the step size.
    orders = tree.paper_orders("XRPUSDT")
    filled = [o for o in orders if o["status"] == "FILLED"]
    by_cycle: dict[str, list[dict]] = {}
    for o in filled:
        by_cycle.setdefault(o["clientOrderId"][:-1], []).append(o)
    complete = [legs for legs in by_cycle.values() if sorted(o["side"] for o in legs) == ["BUY", "SELL"]]
    assert complete, orders
    buy, sell = sorted(complete[0], key=lambda o: o["side"])
    fee = sum((Decimal(f["commission"]) for f in buy["fills"] if f["commissionAsset"] == "XRP"), Decimal(0))
    received, sold, step = Decimal(buy["executedQty"]) - fee, Decimal(sell["executedQty"]), lookup("XRPUSDT").step_size
    assert fee > 0 and 0 < sold <= received and received - sold < step
    # No client order id was ever used twice.
    assert not [cid for cid, n in Counter(o["clientOrderId"] for o in orders).items() if n > 1]

    # Each finished cycle keeps its books: what the buy delivered was sold or is dust; with times.
    cycle = tree.history("XRPUSDT")[0]
    r = cycle["result"]
    assert Decimal(r["sold"]) + Decimal(r["dust"]) + Decimal(r["fees"].get("XRP", "0")) == Decimal(r["bought"]) > 0
    assert cycle["started_at"] and cycle["finished_at"] >= cycle["started_at"]
    text = tree.ctl("history", "XRPUSDT").stdout
    assert f"cycle {cycle['cycle']} trader" in text and " UTC  bought " in text and "pnl" in text and "total USDT" in text
    books = tree.symbol("XRPUSDT")["leader"]["books"]  # the leader's running totals, for naived/metrics
    assert Decimal(books["pnl_quote"]) != 0 and "fees_quote" in books

    # The trader that finished exited 0 and a fresh one runs the next cycle.
    def next_cycle() -> dict | None:
        t = tree.traders("XRPUSDT").get(0)
        return t if t and t["state"]["cycle"] != first["state"]["cycle"] else None

    nxt = wait_for("trader 0 on a new cycle", next_cycle, timeout=60)
    assert nxt["pid"] != first["pid"]
    assert nxt["restarts"] == 0  # finishing a cycle is not a crash


def test_kill_9_with_an_open_buy_completes_the_cycle_with_that_same_order(tree: Tree) -> None:
    tree.ctl("start-trading", "BTCUSDT")

    def open_buy() -> dict | None:
        for t in tree.traders("BTCUSDT").values():
            s = t["state"]
            if s and s["status"] == "buying" and s["buy_order"] and s["buy_order"]["status"] == "NEW":
                return t
        return None

    victim = wait_for("a trader with an open buy", open_buy)
    cid = victim["state"]["buy_order"]["client_order_id"]
    os.kill(victim["pid"], signal.SIGKILL)

    def cycle_done() -> bool:
        orders = {o["clientOrderId"]: o for o in tree.paper_orders("BTCUSDT")}
        sell = orders.get(cid[:-1] + "S")
        return bool(sell and sell["status"] == "FILLED")

    wait_for(f"the cycle of {cid} to finish", cycle_done, timeout=90)
    legs = [o for o in tree.paper_orders("BTCUSDT") if o["clientOrderId"][:-1] == cid[:-1]]
    assert sorted(o["side"] for o in legs) == ["BUY", "SELL"]  # one buy, the original one
    assert [o["clientOrderId"] for o in legs if o["side"] == "BUY"] == [cid]

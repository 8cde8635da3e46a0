"""Orders the exchange refuses for their price (PERCENT_PRICE_BY_SIDE, -1013) cost a trader a
wait, never a crash: a buy is dropped and made again from a later trade, a sell is placed again
later (the band follows the market's average). Without this, one bad price crash-looped the
symbol's traders into `[failed]`. The paper exchange's average is moved by trades no trader sees
(POST /paper/trade)."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

from harness import Tree, open_buys, running_tree, wait_for

CONFIG = """
[trading.defaults]
chunks = 2
buy_down_interval = "0.01"   # the buys rest 1% below the market
profit_interval = "0.5"      # the sells 50% above the buy
"""
REFUSED = re.compile(r"rejected XRPUSDT \S+-(\d+)-\d+(B|S): Filter failure: PERCENT_PRICE_BY_SIDE")


def unseen_trade(tree: Tree, price: Decimal, qty: str) -> None:
    answer = tree.http.post(f"{tree.paper_url}/paper/trade", json={"symbol": "XRPUSDT", "price": str(price), "qty": qty},
                            timeout=5)
    assert answer.status_code == 200, answer.text


def refusals(tree: Tree, leg: str) -> dict[str, int]:
    """Refused orders per trader id, of the buy ("B") or first sell ("S") legs."""
    counts: dict[str, int] = {}
    for trader, kind in REFUSED.findall(tree.log("naived")):
        if kind == leg:
            counts[trader] = counts.get(trader, 0) + 1
    return counts


def average(tree: Tree) -> Decimal:
    return Decimal(tree.http.get(f"{tree.paper_url}/api/v3/avgPrice", params={"symbol": "XRPUSDT"}, timeout=5).json()["price"])


def test_orders_refused_for_their_price_are_made_again_later_by_the_same_traders(tmp_path: Path) -> None:
    with running_tree(tmp_path, CONFIG) as tree:
        average(tree)  # the paper exchange follows XRPUSDT from now on
        market = Decimal(wait_for(
            "XRPUSDT trades at the paper exchange",
            lambda: tree.http.get(f"{tree.paper_url}/paper/market", timeout=5).json().get("XRPUSDT", {}).get("lastPrice")))
        # The average goes to 10× the market: a buy at the market is below its 0.2× band.
        unseen_trade(tree, market * 10, "100000000")
        assert average(tree) > market * 9
        assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
        pids = wait_for("two traders",
                        lambda: (t := tree.traders("XRPUSDT")) and len(t) == 2 and {i: x["pid"] for i, x in t.items()})
        wait_for("each trader's buy refused three times",
                 lambda: (r := refusals(tree, "B")) and len(r) == 2 and min(r.values()) >= 3)
        # not one refused buy per trade (50 a second): waits of 1 s, 2 s, then 4 s between them
        assert max(refusals(tree, "B").values()) <= 4, refusals(tree, "B")
        symbol = tree.symbol("XRPUSDT")
        assert symbol is not None and symbol["state"] == "running"
        traders = tree.traders("XRPUSDT")
        assert {i: t["pid"] for i, t in traders.items()} == pids and all(t["restarts"] == 0 for t in traders.values())
        assert all(t["state"]["status"] == "new" and t["state"]["intent"] is None for t in traders.values())

        # The market's own trades bring the average back: the same traders buy.
        unseen_trade(tree, market, "1000000000000")
        buys = open_buys(tree, "XRPUSDT", 2)
        assert {i: t["pid"] for i, t in buys.items()} == pids

        # The average jumps to 10× again and the buys fill: each sell (1.5× the buy) is under 0.2×.
        unseen_trade(tree, market * 10, "100000000000000")
        lowest = min(Decimal(t["state"]["buy_order"]["price"]) for t in buys.values())
        unseen_trade(tree, lowest - Decimal("0.0001"), "100000")
        wait_for("each trader's sell refused twice", lambda: (r := refusals(tree, "S")) and len(r) == 2 and min(r.values()) >= 2,
                 timeout=30)
        unseen_trade(tree, market, "1000000000000000000")
        wait_for("both sells placed", lambda: (t := tree.traders("XRPUSDT")) and len(t) == 2
                 and all(x["state"]["sell_order"] for x in t.values()), timeout=30)
        traders = tree.traders("XRPUSDT")
        assert {i: t["pid"] for i, t in traders.items()} == pids and all(t["restarts"] == 0 for t in traders.values())

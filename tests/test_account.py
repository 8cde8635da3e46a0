"""The account, live (issue 24): balances, the open orders at the exchange and the host's rate budget,
read by the root's reconcile worker (never by the root), kept by the root with the balances the user
data stream pushed since, and shown by `naivectl account` (and `status --json`, and the web observer,
tests/test_web_account.py). An exchange that does not answer shows as the account's error while the
rest of the tree goes on."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from harness import RESTING, Tree, open_buys, running_tree, wait_for

from naived import ctl
from naived.core.config import load_config, parse_config
from naived.core.messages import AccountRead, Balance, OpenOrder, PushedBalance
from naived.core.order_shares import OrderShare
from naived.exchange import binance as exchange
from naived.exchange import budget as rate_budget
from naived.tree import workers
from naived.tree.account import Account, budget_in_use

# Reads every 2 s (weight 100 each: within the reads' share of the minute); the exchange's calls give
# up after 1 s, so a frozen exchange is an error within a read or two.
CONFIG = RESTING + """
[naived]
autostart = ["XRPUSDT"]
reconcile_seconds = 2.0

[exchange]
timeout_seconds = 1.0
"""


def account(tree: Tree) -> dict[str, Any]:
    result = tree.ctl("account", "--json")
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def nonzero(balances: dict[str, dict[str, str]]) -> dict[str, tuple[Decimal, Decimal]]:
    return {a: (Decimal(b["free"]), Decimal(b["locked"])) for a, b in balances.items()
            if Decimal(b["free"]) or Decimal(b["locked"])}


def shown(acc: dict[str, Any]) -> dict[str, tuple[Decimal, Decimal]]:
    return {b["asset"]: (Decimal(b["free"]), Decimal(b["locked"])) for b in acc["balances"]}


def resting_ids(tree: Tree, symbol: str) -> set[str]:
    return {t["state"]["buy_order"]["client_order_id"] for t in tree.traders(symbol).values()}


# --- the worker's read, against the real paper exchange -----------------------------------


def test_the_workers_read_is_the_exchanges_balances_and_open_orders_through_the_hosts_budget(tmp_path: Path) -> None:
    with running_tree(tmp_path, CONFIG) as tree:
        buys = [t["state"]["buy_order"] for t in open_buys(tree, "XRPUSDT", 2).values()]
        ours = {b["client_order_id"] for b in buys}
        config = load_config(str(tree.config_path))
        client = exchange.client_for(config)  # as the worker builds it: on the host's budget file
        stray = exchange.BinanceClient(tree.paper_url, "paper-key", "paper-secret")
        stray.new_order("BTCUSDT", "BUY", "1000.00", "0.01000", "someone-elses-1")  # every symbol's, not only ours

        before = rate_budget.snapshot(config.budget_path)
        assert before is not None
        asked = time.time()
        read = workers.read_account(client, asked, client.all_open_orders())
        after = rate_budget.snapshot(config.budget_path)
        assert after is not None

        assert read.error is None and read.asked_at == asked
        paper = {a: (Decimal(b["free"]), Decimal(b["locked"])) for a, b in tree.paper_balances().items()}
        assert {b.asset: (Decimal(b.free), Decimal(b.locked)) for b in read.balances} == paper  # (the root drops zeros)
        assert paper["USDT"][1] == sum(Decimal(b["price"]) * Decimal(b["quantity"]) for b in buys) + 10  # and the stray one's
        listed = {o.client_order_id: o for o in read.open_orders}
        assert set(listed) == ours | {"someone-elses-1"}
        at_paper = {o["clientOrderId"]: o for o in tree.paper_orders() if o["status"] == "NEW"}
        for cid, order in listed.items():
            o = at_paper[cid]
            assert (order.symbol, order.side, order.price, order.quantity, order.executed_qty, order.status, order.time) == (
                o["symbol"], o["side"], o["price"], o["origQty"], o["executedQty"], "NEW", o["time"])
        # Both calls went through the host's budget: openOrders of every symbol (80) and the account (20).
        if after.minute == before.minute:
            assert after.weight_spent - before.weight_spent >= 100


def test_a_read_whose_balances_fail_says_why_and_keeps_the_orders(tmp_path: Path) -> None:
    """The exchange refusing the account call (a wrong key here) is the read's error, never raised."""
    with running_tree(tmp_path, CONFIG) as tree:
        wrong = exchange.BinanceClient(tree.paper_url, "paper-key", "not-the-secret")
        read = workers.read_account(wrong, time.time(), [])
        assert read.balances == [] and read.error is not None and read.error.startswith("balances not read: Binance error")


# --- the root's keeping of it (naived/tree/account.py) ------------------------------------


def test_pushed_balances_newer_than_the_read_replace_the_reads_and_a_failed_read_keeps_the_last_good_one() -> None:
    keep = Account()
    keep.worker_started()
    keep.on_read(AccountRead(1000.0, [Balance("USDT", "900", "100"), Balance("XRP", "5", "0")],
                             [OpenOrder("XRPUSDT", "nv-0-1B", "BUY", "0.25", "200", "0", "NEW", 999_000)]))
    keep.on_pushed([PushedBalance("XRP", "3", "0", 999_500)])  # older than the read: the read's stays
    assert keep.balances(keep.read) == ([Balance("USDT", "900", "100"), Balance("XRP", "5", "0")], None)  # type: ignore[arg-type]
    keep.on_pushed([PushedBalance("USDT", "950", "50", 1_001_000), PushedBalance("XRP", "0", "0.00000000", 1_002_000)])
    keep.on_pushed([PushedBalance("USDT", "1", "1", 1_000_500)])  # an older push of an asset: not taken
    assert keep.balances(keep.read) == ([Balance("USDT", "950", "50")], 1002.0)  # type: ignore[arg-type]

    keep.worker_started()
    keep.on_read(AccountRead(1010.0, error="open orders not read: the exchange did not answer: timed out"))
    assert keep.error is not None and keep.error_at == 1010.0
    assert keep.read is not None and keep.read.asked_at == 1000.0  # what is shown: the last good read
    keep.worker_ended("exit status 1")  # after its report: nothing more to say
    assert keep.error_at == 1010.0

    keep.worker_started()
    keep.worker_ended("killed by signal 9")  # no report: a failed read as well
    assert keep.error is not None and "ended without reading it (killed by signal 9)" in keep.error

    keep.worker_started()
    keep.on_read(AccountRead(1020.0, [Balance("USDT", "1000", "0")], []))
    assert keep.error is None and keep.error_at is None and keep.read.asked_at == 1020.0


def test_the_budget_in_use_is_this_hosts_own_against_its_share_of_the_accounts_order_limits(tmp_path: Path) -> None:
    config = parse_config(f'[paths]\nruntime_dir = "{tmp_path}"\nstate_dir = "{tmp_path / "state"}"\n'.encode())
    assert budget_in_use(config) is None  # no file: nothing to show, nothing raised
    budget = exchange.shared_budget(config)
    try:
        wall = time.time()
        budget.acquire(20, "read", wall)
        budget.acquire(1, "order", wall)
        budget.record(wall, 500, 7, 900)  # Binance's headers: the account's counts, every host's orders
        alone = budget_in_use(config)
        assert alone is not None and (alone.weight, alone.weight_limit) == (500, 4800)
        assert (alone.orders_10s, alone.orders_10s_limit, alone.orders_day, alone.orders_day_limit) == (7, 45, 900, 150000)
        assert alone.share_hosts == 0 and alone.banned_until is None
        budget.set_order_share(OrderShare(3, 15, 50000, int(wall) // 86400), confirmed=True, wall=wall, at_once=True)
        budget.record(wall, None, None, None, limited=429, retry_after=30)
        shared = budget_in_use(config)
        assert shared is not None and shared.share_hosts == 3
        # this host's own count (1) against its share; the account's (the headers) is not its to spend
        assert (shared.orders_10s, shared.orders_10s_limit, shared.orders_day, shared.orders_day_limit) == (1, 15, 1, 50000)
        assert shared.ban_status == 429 and shared.banned_until is not None and 25 < shared.banned_until - time.time() <= 31
    finally:
        budget.close()


# --- the tree -----------------------------------------------------------------------------


def test_naivectl_account_shows_the_balances_the_traders_resting_orders_and_the_budget(tmp_path: Path) -> None:
    with running_tree(tmp_path, CONFIG) as tree:
        open_buys(tree, "XRPUSDT", 2)
        ours = resting_ids(tree, "XRPUSDT")
        acc = wait_for("a read with both resting buys",
                       lambda: (a := account(tree))["read_at"] and {o["client_order_id"] for o in a["open_orders"]} == ours and a)
        assert acc["type"] == "AccountStatus" and acc["error"] is None and acc["every_seconds"] == 2.0
        assert shown(acc) == nonzero(tree.paper_balances())
        assert all(o["symbol"] == "XRPUSDT" and o["side"] == "BUY" and o["status"] == "NEW" for o in acc["open_orders"])
        budget = acc["budget"]
        assert budget["weight_limit"] == 4800 and budget["orders_10s_limit"] == 45 and budget["orders_day_limit"] == 150000
        assert budget["weight"] > 0 and budget["orders_day"] >= 2 and budget["share_hosts"] == 0
        assert tree.status()["account"]["open_orders"]  # the same in the tree's status (and so on the page)

        text = tree.ctl("account").stdout
        assert text.startswith("account  read ") and "(every 2s)" in text, text
        usdt = next(b for b in acc["balances"] if b["asset"] == "USDT")
        free_text, locked_text = (re.escape(ctl._num(usdt[k])) for k in ("free", "locked"))
        assert re.search(rf"^  USDT +{free_text} +{locked_text}$", text, re.M), text
        for o in acc["open_orders"]:
            price, qty = re.escape(ctl._num(o["price"])), ctl._num(o["quantity"])
            row = rf"^  XRPUSDT  BUY +{price} +{qty} +0  NEW +{o['client_order_id']} +\d+s$"
            assert re.search(row, text, re.M), text
        assert "  request weight  " in text and " / 4800 this minute" in text, text

        # Between two reads, a push of the user data stream moves the balances at once: an order
        # placed just after a read locks 10 USDT more, shown before the next read lists the order.
        read_at = acc["read_at"]
        wait_for("the next read", lambda: account(tree)["read_at"] != read_at)
        stray = exchange.BinanceClient(tree.paper_url, "paper-key", "paper-secret")
        stray.new_order("BTCUSDT", "BUY", "1000.00", "0.01000", "someone-elses-1")
        pushed = wait_for("the pushed balance", lambda: (a := account(tree))["pushed_at"] and a, timeout=10)
        free, locked = shown(acc)["USDT"]
        assert pushed["pushed_at"] > pushed["read_at"] and shown(pushed)["USDT"] == (free - 10, locked + 10)
        assert "someone-elses-1" not in {o["client_order_id"] for o in pushed["open_orders"]}  # not read yet
        wait_for("the order in a read", lambda: "someone-elses-1" in {o["client_order_id"] for o in account(tree)["open_orders"]})


def test_an_exchange_that_does_not_answer_is_the_accounts_error_and_the_tree_goes_on(tmp_path: Path) -> None:
    with running_tree(tmp_path, CONFIG) as tree:
        open_buys(tree, "XRPUSDT", 2)
        good = wait_for("a first read", lambda: (a := account(tree))["read_at"] and a)
        status = tree.status()
        traders = {t["trader_id"]: t["pid"] for t in tree.traders("XRPUSDT").values()}
        paper = status["paper_exchange"]["pid"]
        os.kill(paper, signal.SIGSTOP)  # it takes connections (the kernel's backlog) and answers nothing
        try:
            failed = wait_for("the account's error", lambda: (a := account(tree))["error"] and a, timeout=15)
            assert failed["error"].startswith("open orders not read: the exchange did not answer"), failed["error"]
            assert failed["read_at"] >= good["read_at"] and failed["error_at"] > failed["read_at"]
            assert failed["balances"] == good["balances"]  # the last good read, shown with its age
            text = tree.ctl("account").stdout
            assert "  error " in text and "the exchange did not answer" in text, text
            assert tree.status()["account"]["error"] == failed["error"]
            # The rest of the tree goes on: the root answers, nothing died or was restarted.
            started = time.monotonic()
            again = tree.status()
            assert time.monotonic() - started < 2
            assert {t["trader_id"]: t["pid"] for t in tree.traders("XRPUSDT").values()} == traders
            assert again["paper_exchange"]["pid"] == paper and again["paper_exchange"]["restarts"] == 0
            assert all(s["state"] == "running" for s in again["symbols"])
            assert "account: open orders not read" in tree.log("naived")  # one line when it starts failing
        finally:
            os.kill(paper, signal.SIGCONT)
        back = wait_for("a good read again", lambda: (a := account(tree))["error"] is None and a, timeout=15)
        assert back["read_at"] > failed["error_at"] and shown(back) == nonzero(tree.paper_balances())
        assert "account: read again" in tree.log("naived")

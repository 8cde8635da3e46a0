"""The web observer's Account panel in a real browser (headless Chromium, tests/browser.py): the
balances, the open orders at the exchange and the rate budget, live, with no console error; an
exchange that stops answering shows as an error line, and goes away once it answers again. The run
keeps two screenshots: test-artifacts/observer-account.png (at the end) and
observer-account-error.png (while the exchange is frozen)."""

from __future__ import annotations

import os
import signal
from decimal import Decimal
from pathlib import Path

from browser import artifacts_dir, open_page
from harness import Tree, open_buys, wait_for
from test_account import CONFIG, account, nonzero

from naived import ctl


def test_the_account_panel_shows_the_balances_the_orders_and_an_exchange_that_does_not_answer(short_tmp: Path) -> None:
    tree = Tree(short_tmp, CONFIG, web="")
    try:
        tree.start_streamer()
        tree.start_naived()
        ours = {t["state"]["buy_order"]["client_order_id"] for t in open_buys(tree, "XRPUSDT", 2).values()}
        wait_for("a read with both resting buys", lambda: {o["client_order_id"] for o in account(tree)["open_orders"]} == ours)
        with open_page(f"{tree.web_url}/", "observer-account") as watched:
            page = watched.page
            for cid in ours:
                row = page.wait_for_selector(f'#account tr[data-order="{cid}"]')
                assert row is not None
                cells = row.inner_text().split("\t")
                assert cells[:2] == ["XRPUSDT", "BUY"] and cells[5:7] == ["NEW", cid], cells
            balances = {a: b for a, b in tree.paper_balances().items() if a in nonzero(tree.paper_balances())}
            for asset, b in balances.items():
                row = page.wait_for_selector(f'#account tr[data-asset="{asset}"]')
                assert row is not None
                assert row.inner_text().split("\t") == [asset, ctl._num(b["free"]), ctl._num(b["locked"])]
            assert page.locator("#account tr[data-asset]").count() == len(balances)  # non-zero ones only
            assert Decimal(page.locator('#account tr[data-asset="USDT"] td').nth(2).inner_text()) > 0  # the buys lock USDT
            budget = page.locator("#budget").inner_text()
            assert "request weight" in budget and "/ 4800" in budget and "/ 45" in budget, budget
            assert page.locator("#account h2 .age").inner_text().startswith("read ")
            assert page.locator("#account-error").is_hidden()

            paper = tree.status()["paper_exchange"]["pid"]
            os.kill(paper, signal.SIGSTOP)
            try:
                error = page.wait_for_selector("#account-error:not([hidden])", timeout=15_000)
                assert error is not None and "the exchange did not answer" in error.inner_text(), error.inner_text()
                assert "shown as read" in error.inner_text()
                assert page.locator(f'#account tr[data-order="{next(iter(ours))}"]').count() == 1  # the last read stays
                page.screenshot(path=artifacts_dir() / "observer-account-error.png", full_page=True)
            finally:
                os.kill(paper, signal.SIGCONT)
            page.wait_for_selector("#account-error", state="hidden", timeout=15_000)
            page.wait_for_timeout(300)  # a Playwright call: the events of the last moments are delivered
            assert watched.problems == [], watched.problems
    finally:
        tree.stop()

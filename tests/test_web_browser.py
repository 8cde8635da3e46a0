"""The web observer in a real browser (headless Chromium, tests/browser.py): the page loads with no
console error and no failed request, draws the tree, shows a failed symbol with its reason, and a
trader killed with `kill -9` shows its new PID and `restarts 1` within 2 s, pushed, without a
reload. The run keeps a screenshot of the page (test-artifacts/observer.png) for a person to look at."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from browser import open_page
from harness import RESTING, Tree, wait_for

CONFIG = RESTING + '\n[naived]\nautostart = ["BTCUSDT", "ETHUSDT"]\n'
TRADER = 'tr[data-key="BTCUSDT/trader/0"]'


@pytest.mark.sqlite_only("a symbol's store file made corrupt, to show a failed symbol")
def test_the_page_shows_the_tree_a_failed_symbol_and_a_killed_trader_come_back(short_tmp: Path) -> None:
    tree = Tree(short_tmp, CONFIG, web="")
    store = short_tmp / "state" / "symbols" / "ETHUSDT.sqlite"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"not an SQLite database\n" * 100)  # ETHUSDT fails at its start, with a reason
    try:
        tree.start_streamer()
        tree.start_naived()
        wait_for("BTCUSDT's traders", lambda: len(tree.traders("BTCUSDT")) == 2)
        with open_page(f"{tree.web_url}/", "observer") as watched:
            page = watched.page
            navigations: list[str] = []
            page.on("framenavigated", lambda frame: navigations.append(frame.url))
            row = page.wait_for_selector(f'{TRADER}[data-restarts="0"]')
            assert row is not None
            pid = int(row.get_attribute("data-pid") or 0)
            assert pid == tree.traders("BTCUSDT")[0]["pid"]
            failed = page.wait_for_selector('tr[data-key="ETHUSDT/supervisor"].failed')
            assert failed is not None and "unreadable" in failed.inner_text()

            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            again = page.wait_for_selector(f'{TRADER}[data-restarts="1"]', timeout=2000)
            shown = time.monotonic() - killed
            assert again is not None and int(again.get_attribute("data-pid") or 0) not in (0, pid)
            assert "flash" in (again.get_attribute("class") or "")  # the row says it changed
            page.wait_for_timeout(300)  # a Playwright call: the events of the last moments are delivered
            assert navigations == [], f"the page was reloaded: {navigations}"
            assert watched.problems == [], watched.problems
        print(f"\ntrader BTCUSDT/0 kill -9 -> new pid and restarts 1 on the page in {shown:.2f}s")
    finally:
        tree.stop()

"""The web observer's profit in a real browser (headless Chromium, tests/browser.py): a cycle that
finishes moves the symbol's realised profit and cycles on the page, pushed, without a reload, and the
page's figures are those of the finished cycles `naivectl history` lists; the totals per quote asset
above the tree say the same; the line stays through the page's redraws between statuses. The run
keeps a screenshot (test-artifacts/observer-pnl.png)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from browser import open_page
from harness import Tree, wait_for
from playwright.sync_api import Page
from test_end_to_end import CYCLING

CONFIG = CYCLING + '\n[naived]\nautostart = ["XRPUSDT"]\n'
LINE = 'tr[data-key="XRPUSDT/supervisor"] .pnl[data-symbol="XRPUSDT"]'
TOTALS = '#profit-totals li[data-quote="USDT"]'


def on_page(page: Page) -> dict[str, Any]:
    """The profit line's figures as the page shows them now, and the USDT totals line's realised."""
    return page.eval_on_selector(LINE, """line => ({
        cycles: Number(line.dataset.cycles), realised: line.dataset.realised,
        realisedClass: line.querySelectorAll('.amount')[1].className,
        total: document.querySelector('#profit-totals li[data-quote="USDT"]').dataset.realised})""")


def test_a_finished_cycle_updates_the_profit_on_the_page_without_a_reload(short_tmp: Any) -> None:
    tree = Tree(short_tmp, CONFIG, web="")
    try:
        tree.start_streamer()
        tree.start_naived()
        with open_page(f"{tree.web_url}/", "observer-pnl") as watched:
            page = watched.page
            navigations: list[str] = []
            page.on("framenavigated", lambda frame: navigations.append(frame.url))
            line = page.wait_for_selector(LINE)
            assert line is not None and "position" in line.inner_text() and "cost" in line.inner_text()
            before = on_page(page)["cycles"]
            page.wait_for_selector(f'{LINE}:not([data-cycles="{before}"])', timeout=60_000)  # pushed, not reloaded

            def agreed() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
                shown, cycles = on_page(page), tree.history("XRPUSDT")
                return (shown, cycles) if shown["cycles"] == len(cycles) else None  # no cycle finished between

            shown, cycles = wait_for("the page and the history on the same cycles", agreed)
            realised = sum((Decimal(c["result"]["pnl"]) for c in cycles), Decimal(0))
            assert realised != 0 and Decimal(shown["realised"]) == realised == Decimal(shown["total"])
            assert shown["realisedClass"] == f"amount {'pos' if realised > 0 else 'neg'}"  # coloured by its sign
            # A buy that fills shows as a position valued at the market (and the screenshot has every figure).
            held = page.wait_for_selector(f'{LINE}:not([data-position="0"])', timeout=60_000)
            assert held is not None and held.get_attribute("data-unrealised") not in (None, "")
            # The page redraws the tree every second between statuses (ages move on): the line stays.
            missing = page.evaluate("""line => new Promise(done => {
                let missing = 0;
                const poll = setInterval(() => { if (!document.querySelector(line)) missing += 1; }, 20);
                setTimeout(() => { clearInterval(poll); done(missing); }, 2500);
            })""", LINE)
            assert missing == 0, f"the profit line was missing {missing} times in 2.5 s"
            page.wait_for_timeout(300)  # a Playwright call: the events of the last moments are delivered
            assert navigations == [], f"the page was reloaded: {navigations}"
            assert watched.problems == [], watched.problems
            assert page.locator(TOTALS).count() == 1
        print(f"\n{tree.ctl('status').stdout}")
    finally:
        tree.stop()

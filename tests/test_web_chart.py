"""The web observer's charts on a real tree: `GET /api/v1/symbols/<SYMBOL>/series` has the symbol's
points and every fill of its finished cycles (`naivectl history`), the buys and the sells, exactly; and
in a real browser (headless Chromium, tests/browser.py) the first symbol's chart is open and drawn with
its buy and sell markers, under the page's CSP with no console error, the others closed and not fetched
until opened, and an open one fetched at most every 2 s. The run keeps a screenshot
(test-artifacts/observer-chart.png). The series themselves, exactly: tests/test_web_series.py."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import msgspec
import requests
from browser import open_page
from harness import Tree, running_tree, wait_for
from test_end_to_end import CYCLING
from test_web import assert_safe, http

from naived.core import cycles, pnl
from naived.core.messages import TraderState
from naived.web import series

CONFIG = CYCLING + '\n[naived]\nautostart = ["XRPUSDT"]\n'
TWO = CYCLING + '\n[naived]\nautostart = ["XRPUSDT", "BTCUSDT"]\n'
CHART = 'details.chart[data-symbol="{}"]'


def get_series(tree: Tree, symbol: str) -> requests.Response:
    return http().get(f"{tree.web_url}/api/v1/symbols/{symbol}/series", timeout=5)


def expected_fills(tree: Tree, symbol: str) -> dict[str, dict[str, Any]]:
    """Every fill of the symbol's finished cycles, as the chart marks them, by client order id."""
    marks = {}
    for raw in tree.history(symbol):
        for order in cycles.filled(cycles.orders(msgspec.convert(raw, TraderState))):
            executed, quote = Decimal(order.executed_qty), Decimal(order.quote_qty)
            assert order.update_time is not None
            marks[order.client_order_id] = {"t": order.update_time / 1000, "side": order.side,
                                            "price": pnl.text(quote / executed), "qty": pnl.text(executed),
                                            "id": order.client_order_id}
    return marks


def test_the_series_api_has_the_points_and_every_buy_and_sell_of_the_finished_cycles(short_tmp: Any) -> None:
    with running_tree(short_tmp, CONFIG, web="") as tree:
        def agreed() -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
            shown, history = get_series(tree, "XRPUSDT").json(), expected_fills(tree, "XRPUSDT")
            sides = {m["side"] for m in history.values()}
            marked = {f["id"]: f for f in shown["fills"]}
            complete = sides == {"BUY", "SELL"} and all(marked.get(i) == m for i, m in history.items())
            return (shown, history) if complete and len(shown["points"]) >= 2 else None

        # The chart has every fill of every finished cycle: its sell's too, though the cycle ends within
        # milliseconds of it (the leader's last_fills carry it)
        shown, history = wait_for("every fill of the finished cycles on the chart", agreed, timeout=90, interval=0.5)
        print(f"\n{len(history)} fills of {len(tree.history('XRPUSDT'))} finished cycles on the chart, "
              f"{len(shown['points'])} points, {len(shown['resting'])} resting")
        answer = get_series(tree, "XRPUSDT")
        assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
        assert answer.headers["Cache-Control"] == "no-store"
        assert_safe(answer.headers, "the series")
        body = msgspec.json.decode(answer.content, type=series.Answer)  # its schema, strictly
        assert (body.symbol, body.base, body.quote) == ("XRPUSDT", "XRP", "USDT")
        times = [p[0] for p in body.points]
        assert len(times) >= 2 and times == sorted(times) and all(p[1] > 0 for p in body.points)
        assert abs(times[-1] - time.time()) < 600
        for level in body.resting:
            assert level.side in ("BUY", "SELL") and Decimal(level.price) > 0 and Decimal(level.qty) > 0

        # The symbol as naivectl takes it: any case; a malformed one is 400, one not traded 404
        assert get_series(tree, "xrpusdt").json()["symbol"] == "XRPUSDT"
        bad = get_series(tree, "XRP_USDT")
        assert bad.status_code == 400
        assert bad.json() == {"error": "bad symbol 'XRP_USDT': expected letters and digits like XRPUSDT"}
        assert_safe(bad.headers, "400")
        unknown = get_series(tree, "ETHUSDT")
        assert unknown.status_code == 404
        assert unknown.json() == {"error": "no series for ETHUSDT: not in the tree's status since the observer started"}
        assert_safe(unknown.headers, "404")


def drawn(page: Any, symbol: str) -> dict[str, Any]:
    """What the symbol's chart shows now: its data attributes, and its canvas's pixels by colour."""
    return page.eval_on_selector(CHART.format(symbol), """details => {
        const box = details.querySelector('.chart-box'), canvas = box.querySelector('canvas');
        const counts = {painted: 0, price: 0, buy: 0, sell: 0};
        if (canvas) {
            const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            for (let i = 0; i < pixels.length; i += 4) {
                const [r, g, b, a] = pixels.subarray(i, i + 4);
                if (a) counts.painted += 1;
                if (a === 255 && r === 0x3a && g === 0x5a && b === 0x8c) counts.price += 1;
                if (a === 255 && r === 0x1f && g === 0x6f && b === 0x43) counts.buy += 1;
                if (a === 255 && r === 0xb3 && g === 0x26 && b === 0x1e) counts.sell += 1;
            }
        }
        return {open: details.open, canvas: Boolean(canvas), buys: Number(box.dataset.buys || 0),
                sells: Number(box.dataset.sells || 0), points: Number(box.dataset.points || 0), ...counts};
    }""")


def test_the_first_symbols_chart_is_drawn_with_its_buys_and_sells_and_the_others_only_when_opened(short_tmp: Any) -> None:
    tree = Tree(short_tmp, TWO, web="")
    try:
        tree.start_streamer()
        tree.start_naived()
        wait_for("both symbols' leaders", lambda: all(tree.traders(s) for s in ("XRPUSDT", "BTCUSDT")))
        with open_page(f"{tree.web_url}/", "observer-chart") as watched:
            page = watched.page
            asked: list[tuple[float, str]] = []
            page.on("request", lambda r: "/series" in r.url and asked.append((time.monotonic(), r.url)))
            first = json.loads(page.evaluate("fetch('/api/v1/status').then(r => r.text())"))["symbols"][0]["symbol"]
            other = "BTCUSDT" if first == "XRPUSDT" else "XRPUSDT"
            page.wait_for_selector(f"{CHART.format(first)}[open] .chart-box canvas")
            # A buy and a sell of a finished cycle, drawn: the markers counted as drawn, and their colours on the canvas
            page.wait_for_selector(f'{CHART.format(first)} .chart-box[data-buys]:not([data-buys="0"])'
                                   f':not([data-sells="0"])', timeout=90_000)
            shown = drawn(page, first)
            assert shown["open"] and shown["canvas"] and shown["points"] >= 1, shown
            assert shown["buys"] >= 1 and shown["sells"] >= 1, shown
            # The price line, ▲ and ▼ in their colours (opaque: the resting levels are drawn translucent)
            assert shown["price"] > 50 and shown["buy"] > 10 and shown["sell"] > 10, shown

            # The other symbol's chart is closed: not drawn, never fetched
            closed = drawn(page, other)
            assert not closed["open"] and not closed["canvas"], closed
            assert not [url for _, url in asked if other in url], asked
            # An open chart is fetched again after pushed statuses, at most every 2 s (the page's own times)
            since = page.evaluate("performance.now()")
            page.wait_for_timeout(7000)
            recent = page.evaluate("""([symbol, since]) => performance.getEntriesByType('resource')
                .filter(e => e.name.endsWith(`/api/v1/symbols/${symbol}/series`) && e.startTime >= since)
                .map(e => e.startTime)""", [first, since])
            gaps = [b - a for a, b in zip(recent, recent[1:], strict=False)]
            assert recent and all(gap >= 1990 for gap in gaps), f"series requests {len(recent)} in 7 s, gaps {gaps} ms"
            # Opened, it is fetched and drawn; closed again, its plot is gone
            page.click(f"{CHART.format(other)} summary")
            page.wait_for_selector(f"{CHART.format(other)}[open] .chart-box canvas")
            assert [url for _, url in asked if other in url]
            page.click(f"{CHART.format(other)} summary")
            page.wait_for_selector(f"{CHART.format(other)} .chart-box canvas", state="detached")
            page.click(f"{CHART.format(other)} summary")  # open for the screenshot
            page.wait_for_selector(f"{CHART.format(other)}[open] .chart-box canvas")
            # The chart stays through the page's redraws between statuses (every second)
            missing = page.evaluate("""chart => new Promise(done => {
                let missing = 0;
                const poll = setInterval(() => { if (!document.querySelector(chart)) missing += 1; }, 20);
                setTimeout(() => { clearInterval(poll); done(missing); }, 2500);
            })""", f"{CHART.format(first)} canvas")
            assert missing == 0, f"the chart was missing {missing} times in 2.5 s"
            assert watched.problems == [], watched.problems  # no console error: no CSP violation either
    finally:
        tree.stop()

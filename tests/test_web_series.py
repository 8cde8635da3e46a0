"""The web observer's charts (naived/web/series.py), from statuses built here: the points, the fill
markers, the resting levels, their bounds, and the API's answer, exact. On a real tree and in a
browser: tests/test_web_chart.py."""

from __future__ import annotations

import json
import math
import tracemalloc
from typing import Any

import msgspec
from test_strategy import state
from websockets.datastructures import Headers
from websockets.http11 import Request

from naived.core import cycles
from naived.core.messages import (
    FilledOrder,
    LeaderStatus,
    Order,
    ProcessInfo,
    Profit,
    SymbolStatus,
    TraderInfo,
    TraderState,
    TreeStatus,
)
from naived.web import series, server

BUY = Order("nvq7x2k9-3-17B", "BUY", "0.5", "40", "NEW", 11)
SELL = Order("nvq7x2k9-3-17S", "SELL", "0.52", "39.9", "NEW", 12)


def profit(price: str | None = "0.51", realised: str = "0.25", unrealised: str | None = "0.4") -> Profit:
    return Profit("XRP", "USDT", "100", "40", "20", price=price, realised=realised, unrealised=unrealised)


def leader(*states: TraderState, money: Profit | None = None, last_fills: list[FilledOrder] | None = None,
           symbol: str = "XRPUSDT") -> LeaderStatus:
    return LeaderStatus(symbol, 4242, 1.0, [TraderInfo(s.trader_id, 4243, 1.0, 0, s) for s in states],
                        profit=money or profit(), last_fills=last_fills or [])


def status(*symbols: tuple[str, LeaderStatus | None]) -> bytes:
    """A status as the root pushes it: TreeStatus in JSON."""
    return msgspec.json.encode(TreeStatus(1, 1.0, "paper", "simulate", [
        SymbolStatus(name, "running", ProcessInfo(100, 1.0, 0), led) for name, led in symbols]))


def answer(charts: series.Charts, symbol: str = "XRPUSDT") -> dict[str, Any]:
    body = charts.answer(symbol)
    assert body is not None
    return json.loads(body)


def test_a_point_is_the_last_trade_price_and_realised_plus_unrealised() -> None:
    assert series.point(profit()) == (0.51, 0.65)
    assert series.point(None) is None
    # No trade seen yet and nothing held: the equity is known, the price is not
    price, equity = series.point(profit(price=None, unrealised="0")) or (0.0, 0.0)
    assert math.isnan(price) and equity == 0.25
    assert series.point(profit(price=None, unrealised=None)) is None  # a position and no price: nothing known


def test_a_cycles_filled_orders_are_those_that_executed_anything_whatever_their_status() -> None:
    partly = msgspec.structs.replace(SELL, client_order_id="nvq7x2k9-3-17T", status="CANCELED", executed_qty="13",
                                     quote_qty="6.76", update_time=5000)
    filled = msgspec.structs.replace(BUY, status="FILLED", executed_qty="40", quote_qty="19.96", update_time=4000)
    s = state(buy_order=filled, sells=[partly], sell_order=SELL, status="selling")
    assert cycles.orders(s) == [filled, partly, SELL]
    assert cycles.filled(cycles.orders(s)) == [
        FilledOrder("nvq7x2k9-3-17B", "BUY", "40", "19.96", 4000),
        FilledOrder("nvq7x2k9-3-17T", "SELL", "13", "6.76", 5000),
    ]


def test_points_fills_and_resting_orders_from_the_statuses_as_they_come() -> None:
    charts = series.Charts()
    # A buy rests; the price and equity make the first point, at this process's clock
    charts.take(status(("XRPUSDT", leader(state(buy_order=BUY, status="buying")))), 100.0)
    assert answer(charts) == {
        "symbol": "XRPUSDT", "base": "XRP", "quote": "USDT", "points": [[100.0, 0.51, 0.65]], "fills": [],
        "resting": [{"side": "BUY", "price": "0.5", "qty": "40", "id": "nvq7x2k9-3-17B"}],
    }
    version = charts.series["XRPUSDT"].version
    # The same figures again: no point, no change
    charts.take(status(("XRPUSDT", leader(state(buy_order=BUY, status="buying")))), 100.5)
    assert charts.series["XRPUSDT"].version == version and len(answer(charts)["points"]) == 1

    # Partly filled: a marker at the exchange's time and its average price; the rest still rests
    partly = msgspec.structs.replace(BUY, status="PARTIALLY_FILLED", executed_qty="10", quote_qty="4.99", update_time=101_500)
    charts.take(status(("XRPUSDT", leader(state(buy_order=partly, status="buying"), money=profit(price="0.499")))),
                101.7339)
    shown = answer(charts)
    assert shown["points"] == [[100.0, 0.51, 0.65], [101.734, 0.499, 0.65]]  # to the millisecond
    assert shown["fills"] == [{"t": 101.5, "side": "BUY", "price": "0.499", "qty": "10", "id": "nvq7x2k9-3-17B"}]
    assert shown["resting"] == [{"side": "BUY", "price": "0.5", "qty": "30", "id": "nvq7x2k9-3-17B"}]

    # Filled: the same marker, moved to the whole fill; nothing rests; the sell rests
    filled = msgspec.structs.replace(BUY, status="FILLED", executed_qty="40", quote_qty="19.97", update_time=102_000)
    charts.take(status(("XRPUSDT", leader(state(buy_order=filled, sell_order=SELL, status="selling"),
                                          money=profit(price="0.499")))), 102.25)
    shown = answer(charts)
    assert shown["fills"] == [{"t": 102.0, "side": "BUY", "price": "0.49925", "qty": "40", "id": "nvq7x2k9-3-17B"}]
    assert shown["resting"] == [{"side": "SELL", "price": "0.52", "qty": "39.9", "id": "nvq7x2k9-3-17S"}]
    assert len(shown["points"]) == 2

    # The cycle finished between two statuses (its sell's fill never in one): the leader's last fills
    # have it; the trader's next cycle holds nothing yet. Realised moved: a point.
    sold = FilledOrder("nvq7x2k9-3-17S", "SELL", "39.9", "20.748", 103_250)
    after = leader(msgspec.structs.replace(state(), cycle=18), money=profit(price="0.52", realised="0.778", unrealised="0"),
                   last_fills=[cycles.filled([filled])[0], sold])
    charts.take(status(("XRPUSDT", after)), 103.5)
    shown = answer(charts)
    assert shown["fills"] == [
        {"t": 102.0, "side": "BUY", "price": "0.49925", "qty": "40", "id": "nvq7x2k9-3-17B"},
        {"t": 103.25, "side": "SELL", "price": "0.52", "qty": "39.9", "id": "nvq7x2k9-3-17S"},
    ]
    assert shown["resting"] == [] and shown["points"][-1] == [103.5, 0.52, 0.778]


def test_unknown_figures_are_null_and_a_fill_without_a_quote_amount_is_no_marker() -> None:
    no_quote = msgspec.structs.replace(BUY, status="FILLED", executed_qty="40", quote_qty="0")
    charts = series.Charts()
    charts.take(status(("XRPUSDT", leader(state(buy_order=no_quote), money=profit(price=None, unrealised="0")))), 7.0)
    assert answer(charts)["points"] == [[7.0, None, 0.25]] and answer(charts)["fills"] == []
    assert series.fill(FilledOrder("x", "SELL", "2", "3"), now=9.0) == series.Fill(9.0, "SELL", "1.5", "2", "x")  # no time: now


def test_a_full_series_is_thinned_in_its_older_half_and_keeps_its_start() -> None:
    s = series.Series("XRPUSDT", max_points=8)
    for t in range(8):
        assert s.add_point(float(t), 1.0 + t, 0.0)
    assert not s.add_point(8.0, 8.0, 0.0)  # unchanged: no point, no thinning
    assert s.add_point(8.0, 9.0, 0.0)
    assert list(s.t) == [0.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert list(s.price) == [1.0, 3.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    for t in range(9, 20):
        s.add_point(float(t), 1.0 + t, 0.0)
    assert len(s.t) <= 8 and s.t[0] == 0.0 and s.t[-1] == 19.0 and list(s.t) == sorted(s.t)


def test_the_oldest_fills_go_first_past_the_cap() -> None:
    s = series.Series("XRPUSDT", max_fills=3)
    for i in range(5):
        assert s.add_fill(series.Fill(float(i), "BUY", "1", "1", f"id{i}"))
    assert not s.add_fill(series.Fill(9.0, "BUY", "1", "1", "id4"))  # seen, unchanged
    assert list(s.fills) == ["id2", "id3", "id4"]


def test_more_symbols_than_the_cap_evict_one_no_longer_listed_else_go_without() -> None:
    charts = series.Charts(max_symbols=2)
    charts.take(status(("ADAUSDT", None), ("BTCUSDT", leader(symbol="BTCUSDT"))), 1.0)
    charts.take(status(("BTCUSDT", leader(symbol="BTCUSDT")), ("ETHUSDT", None)), 2.0)  # ADAUSDT stopped
    assert sorted(charts.series) == ["BTCUSDT", "ETHUSDT"]
    charts.take(status(("BTCUSDT", None), ("ETHUSDT", None), ("XRPUSDT", leader())), 3.0)
    assert sorted(charts.series) == ["BTCUSDT", "ETHUSDT"] and charts.left_out == {"XRPUSDT"}


def test_the_api_answers_a_symbols_series_checked_as_naive_checks_symbols() -> None:
    observer = server.Observer(server.load_static(), loopback=True)

    def get(path: str) -> tuple[int, Any]:
        got = observer.process_request(None, Request(path, Headers({"Host": "127.0.0.1:8470"})))  # type: ignore[arg-type]
        assert got is not None and got.headers["Content-Type"] == "application/json"
        return got.status_code, json.loads(got.body)

    assert get("/api/v1/symbols/XRPUSDT/series") == (
        404, {"error": "no series for XRPUSDT: not in the tree's status since the observer started"})
    observer.on_status(status(("XRPUSDT", leader(state(buy_order=BUY, status="buying")))))
    code, body = get("/api/v1/symbols/xrpusdt/series")  # upper-cased, as naivectl takes it
    assert code == 200 and body["symbol"] == "XRPUSDT" and len(body["points"]) == 1 and body["resting"][0]["price"] == "0.5"
    assert get("/api/v1/symbols/XRP-USDT/series") == (
        400, {"error": "bad symbol 'XRP-USDT': expected letters and digits like XRPUSDT"})
    assert get("/api/v1/symbols/XRPUSDT/series/more")[0] == 404
    observer.charts.max_symbols = 1
    observer.on_status(status(("XRPUSDT", None), ("BTCUSDT", None)))
    assert get("/api/v1/symbols/BTCUSDT/series") == (
        404, {"error": "no series for BTCUSDT: more symbols than the observer charts"})
    # A status the charts cannot read is still served and pushed: the page does not depend on them
    observer.on_status(b'{"type":"TreeStatus","symbols":[{"symbol":"XRPUSDT","leader":{"profit":7}}]}')
    assert observer.status is not None and observer.status.endswith(b"7}}]}") and observer.version == 3


def test_a_full_series_holds_about_110_kib() -> None:
    """The memory a symbol's series takes at its fullest: MAX_POINTS points, MAX_FILLS markers, 4 levels."""
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        s = series.Series("XRPUSDT")
        for i in range(series.MAX_POINTS):
            s.add_point(1.7e9 + i, 0.5 + i * 1e-4, -0.01 * i)
        for i in range(series.MAX_FILLS):
            s.add_fill(series.Fill(1.7e9 + i, "BUY" if i % 2 else "SELL", f"0.{5000 + i}", f"{40 + i}.1",
                                   f"nvq7x2k9-{i % 4}-{i // 2}{'BS'[i % 2]}"))
        s.resting = [series.Level("BUY", f"0.{4000 + i}", "40", f"nvq7x2k9-{i}-999B") for i in range(4)]
        held = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    print(f"\na full series ({series.MAX_POINTS} points, {series.MAX_FILLS} fills, 4 levels): {held / 1024:.0f} KiB; "
          f"its answer {len(s.answer()) / 1024:.0f} KiB")
    assert 48 * 1024 < held < 120 * 1024

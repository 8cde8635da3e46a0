"""The paper exchange's market data: klines built from trades (`naived.paper.candles`) against an
independent aggregation of a recorded tape, Binance's week and month alignment, the bounded
tiers; then a real paper exchange process answering ccxt's fetch_ohlcv, fetch_order_book,
fetch_ticker and fetch_tickers, and the discovery calls ccxt makes while loading markets."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from test_client_library import ccxt_binance
from test_paper_exchange import Exchange, Market, ex, market, start, wait_for  # noqa: F401 - fixtures

from naived.core.messages import TradeEvent, encode_trade
from naived.market.tape import Progress, ReadCounts, read_file
from naived.paper.candles import MINUTE, SECOND, TIERS, TRIM_SLACK, Candles, close_time, open_time

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "btcusdt_20240809.gz"
Trade = tuple[Decimal, Decimal, int, bool]  # price, qty, time ms, buyer is maker


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def tape_trades(stretch: int = 1) -> list[Trade]:
    """The sample's BTCUSDT trades in file order; `stretch` spreads their times out from the first
    (78 s × 1000 ≈ 22 h: many hourly klines from one small tape)."""
    events = [event for _, _, event, _ in read_file(SAMPLE, 0, ReadCounts(), Progress())]
    first = events[0].T
    return [(Decimal(e.p), Decimal(e.q), first + (e.T - first) * stretch, e.m) for e in events]


def aggregate(trades: Iterable[Trade], length_ms: int) -> list[list[Any]]:
    """Binance's kline rows computed the plain way: group by open time, in arrival order."""
    groups: dict[int, list[Trade]] = {}
    for trade in trades:
        groups.setdefault(trade[2] - trade[2] % length_ms, []).append(trade)
    eight = Decimal("0.00000001")

    def text(value: Decimal) -> str:
        return format(value.quantize(eight), "f")

    rows = []
    for opened, group in sorted(groups.items()):
        prices = [p for p, _, _, _ in group]
        taker = [(p, q) for p, q, _, maker in group if not maker]
        rows.append([opened, text(prices[0]), text(max(prices)), text(min(prices)), text(prices[-1]),
                     text(sum((q for _, q, _, _ in group), Decimal(0))), opened + length_ms - 1,
                     text(sum((p * q for p, q, _, _ in group), Decimal(0))), len(group),
                     text(sum((q for _, q in taker), Decimal(0))), text(sum((p * q for p, q in taker), Decimal(0))), "0"])
    return rows


def candles_of(trades: Iterable[Trade], symbol: str = "BTCUSDT") -> Candles:
    candles = Candles()
    for price, qty, time_ms, maker in trades:
        candles.add(symbol, price, qty, time_ms, maker)
    return candles


@pytest.mark.parametrize(("interval", "length", "stretch"), [
    ("1s", 1000, 1), ("1m", 60_000, 1), ("5m", 300_000, 30), ("1h", 3_600_000, 1), ("1h", 3_600_000, 1000),
    ("4h", 4 * 3_600_000, 1000), ("1d", 86_400_000, 3000),
])
def test_klines_agree_with_an_independent_aggregation_of_a_tape(interval: str, length: int, stretch: int) -> None:
    trades = tape_trades(stretch)
    expected = aggregate(trades, length)
    candles = candles_of(trades)
    assert len(trades) == 2927 and expected[0][8] > 0
    assert candles.klines("BTCUSDT", interval, limit=1000) == expected
    # from a start time, and the most recent up to an end time, a page at a time
    assert candles.klines("BTCUSDT", interval, start_ms=expected[0][0], limit=2) == expected[:2]
    assert candles.klines("BTCUSDT", interval, end_ms=expected[-1][0] - 1, limit=2) == expected[-3:-1]
    assert candles.current("BTCUSDT", interval) == expected[-1]
    assert candles.klines("ETHUSDT", interval) == [] and candles.current("ETHUSDT", interval) is None


def test_a_kline_opens_at_or_after_start_and_none_is_invented() -> None:
    p = Decimal("100")
    candles = candles_of([(p, Decimal(1), ms("2024-08-09T00:00:10"), True), (p + 1, Decimal(2), ms("2024-08-09T00:00:50"), False),
                   (p + 2, Decimal(1), ms("2024-08-09T00:03:01"), False)])
    rows = candles.klines("BTCUSDT", "1m")
    assert [r[0] for r in rows] == [ms("2024-08-09T00:00:00"), ms("2024-08-09T00:03:00")]  # minutes 1 and 2: no trade
    assert rows[0][1:6] == ["100.00000000", "101.00000000", "100.00000000", "101.00000000", "3.00000000"]
    assert rows[0][8:] == [2, "2.00000000", "202.00000000", "0"]  # taker buys: the buyer was not the maker
    # a start inside a kline: that kline opened before it (Binance: open time >= startTime)
    assert [r[0] for r in candles.klines("BTCUSDT", "1m", start_ms=ms("2024-08-09T00:00:30"))] == [ms("2024-08-09T00:03:00")]
    assert candles.klines("BTCUSDT", "1m", start_ms=ms("2024-08-09T00:01:00"), end_ms=ms("2024-08-09T00:02:59")) == []
    assert [r[0] for r in candles.klines("BTCUSDT", "3m")] == [ms("2024-08-09T00:00:00"), ms("2024-08-09T00:03:00")]


def test_weeks_open_on_monday_and_months_on_the_first() -> None:
    # 2024-03-03 was a Sunday; 2024 is a leap year
    assert open_time("1w", ms("2024-03-03T23:59:59.999")) == ms("2024-02-26T00:00:00")
    assert open_time("1w", ms("2024-03-04T00:00:00")) == ms("2024-03-04T00:00:00")
    assert close_time("1w", ms("2024-02-26T00:00:00")) == ms("2024-03-03T23:59:59.999")
    assert open_time("1M", ms("2024-02-29T12:00:00")) == ms("2024-02-01T00:00:00")
    assert close_time("1M", ms("2024-02-01T00:00:00")) == ms("2024-02-29T23:59:59.999")
    assert close_time("1M", ms("2024-12-01T00:00:00")) == ms("2024-12-31T23:59:59.999")
    assert open_time("1d", ms("2024-12-31T23:59:59.999")) == ms("2024-12-31T00:00:00")
    assert open_time("3d", ms("2024-08-09T12:00:00")) % (3 * 86_400_000) == 0  # counted from the epoch
    one = Decimal(1)
    candles = candles_of([(one, one, ms("2024-02-25T10:00:00"), False), (one * 2, one, ms("2024-02-29T10:00:00"), False),
                   (one * 3, one, ms("2024-03-01T00:00:00"), True), (one * 4, one, ms("2024-03-04T00:00:00"), True)])
    weeks = candles.klines("BTCUSDT", "1w")
    assert [(r[0], r[6], r[1], r[4], r[8]) for r in weeks] == [
        (ms("2024-02-19T00:00:00"), ms("2024-02-25T23:59:59.999"), "1.00000000", "1.00000000", 1),
        (ms("2024-02-26T00:00:00"), ms("2024-03-03T23:59:59.999"), "2.00000000", "3.00000000", 2),
        (ms("2024-03-04T00:00:00"), ms("2024-03-10T23:59:59.999"), "4.00000000", "4.00000000", 1)]
    months = candles.klines("BTCUSDT", "1M")
    assert [(r[0], r[6], r[4], r[8], r[9]) for r in months] == [
        (ms("2024-02-01T00:00:00"), ms("2024-02-29T23:59:59.999"), "2.00000000", 2, "2.00000000"),
        (ms("2024-03-01T00:00:00"), ms("2024-03-31T23:59:59.999"), "4.00000000", 2, "0.00000000")]


def test_tiers_keep_a_bounded_window_and_never_answer_a_kline_short() -> None:
    one, first = Decimal(1), ms("2024-08-09T00:00:00")
    seconds = TIERS[SECOND] + TRIM_SLACK + 30  # past the 1s tier's bound: its oldest seconds are dropped
    trades = [(one, one, first + i * 1000, False) for i in range(seconds)]
    candles = candles_of(trades)
    kept = candles.klines("BTCUSDT", "1s", start_ms=first, limit=1000)
    every = aggregate(trades, 1000)
    assert kept[0][0] > first and kept == [r for r in every if r[0] >= kept[0][0]][:1000]
    newest = candles.klines("BTCUSDT", "1s", end_ms=first + 1000 * seconds, limit=1000)
    assert newest == every[-1000:]
    # what is left is at least the bound, and the seconds before it are not answered
    assert (every[-1][0] - kept[0][0]) // 1000 + 1 >= TIERS[SECOND]
    assert candles.klines("BTCUSDT", "1s", start_ms=first, end_ms=kept[0][0] - 1) == []
    # the 1m tier still has every minute
    assert candles.klines("BTCUSDT", "1m", limit=1000) == aggregate(trades, 60_000)


@pytest.mark.parametrize("backwards", [False, True])
def test_a_kline_whose_first_bars_were_dropped_is_left_out(backwards: bool) -> None:
    first = ms("2024-08-09T00:00:00")
    minutes = TIERS[MINUTE] + TRIM_SLACK + 7  # the 1m tier drops its oldest 256 minutes (TRIM_SLACK): to 04:16
    trades = [(Decimal(1 + i % 5), Decimal(1), first + i * 60_000, i % 2 == 0) for i in range(minutes)]
    every = aggregate(trades, 30 * 60_000)
    if backwards:
        answered = candles_of(trades).klines("BTCUSDT", "30m", end_ms=first + minutes * 60_000, limit=1000)
    else:
        answered = candles_of(trades).klines("BTCUSDT", "30m", start_ms=first, limit=1000)
    # the 30m kline opening at 04:00 lost its first 16 minutes: the first answered opens at 04:30
    assert answered[0][0] == first + 9 * 30 * 60_000
    assert answered == [r for r in every if r[0] >= answered[0][0]]


# --- a real paper exchange, through ccxt ------------------------------------------------------------

SYMBOL = "XRPUSDT"


def send(market: Market, trades: list[Trade]) -> None:
    for price, qty, time_ms, maker in trades:
        trade_id = market.next_id
        market.next_id += 1
        event = TradeEvent("trade", time_ms, SYMBOL, trade_id, str(price), str(qty), time_ms, maker)
        market.pub.send_multipart(encode_trade(event))


def test_ccxt_reads_candles_book_and_tickers(ex: Exchange, market: Market) -> None:
    exchange = ccxt_binance(ex)
    # ccxt's defaults ask futures, margin and wallet discovery while loading markets: empty, well formed
    exchange.options |= {"fetchMarkets": {"types": ["spot", "linear", "inverse"]}, "fetchMargins": True,
                         "fetchCurrencies": True}
    exchange.urls["api"] |= {name: f"{ex.url}/{path}" for name, path in (
        ("fapiPublic", "fapi/v1"), ("dapiPublic", "dapi/v1"), ("sapi", "sapi/v1"))}
    asked: list[str] = []
    fetch = exchange.fetch
    exchange.fetch = lambda url, *args, **kwargs: asked.append(url.split("?")[0]) or fetch(url, *args, **kwargs)  # type: ignore[method-assign]
    assert [m["id"] for m in exchange.load_markets().values() if not m["spot"]] == []
    assert {f"{ex.url}{path}" for path in ("/api/v3/exchangeInfo", "/fapi/v1/exchangeInfo", "/dapi/v1/exchangeInfo",
                                           "/sapi/v1/capital/config/getall", "/sapi/v1/margin/allPairs",
                                           "/sapi/v1/margin/isolated/allPairs")} <= set(asked), asked
    for path, answer in (("/sapi/v1/margin/allPairs", []), ("/sapi/v1/margin/isolated/allPairs", [])):
        assert ex.http.get(f"{ex.url}{path}").json() == answer
    assert ex.signed("GET", "/sapi/v1/capital/config/getall", {}) == (200, [])
    assert ex.http.get(f"{ex.url}/sapi/v1/capital/config/getall").status_code != 200  # signed

    assert exchange.fetch_ohlcv("XRP/USDT", "1m") == []  # no trade seen: no candle, and XRPUSDT now followed
    market.wait_subscribed(SYMBOL)
    now = ex.http.get(f"{ex.url}/api/v3/time").json()["serverTime"]
    base = now - now % 60_000 - 3 * 60_000
    trades = [(Decimal("0.5"), Decimal("100"), base + 1000, False), (Decimal("0.52"), Decimal("40"), base + 20_000, True),
              (Decimal("0.49"), Decimal("10"), base + 61_000, False), (Decimal("0.51"), Decimal("25"), base + 125_000, True)]
    send(market, trades)
    wait_for("the trades", lambda: ex.http.get(f"{ex.url}/paper/market").json().get(SYMBOL, {}).get("lastTradeId") == 4)

    expected = aggregate(trades, 60_000)
    raw = ex.http.get(f"{ex.url}/api/v3/klines", params={"symbol": SYMBOL, "interval": "1m"})
    assert raw.json() == expected and raw.headers["X-MBX-USED-WEIGHT-1M"]
    newest = ex.http.get(f"{ex.url}/api/v3/uiKlines", params={"symbol": SYMBOL, "interval": "1m", "limit": 1})
    assert newest.json() == expected[-1:]
    ohlcv = exchange.fetch_ohlcv("XRP/USDT", "1m", since=base)
    assert ohlcv == [[r[0], float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5])] for r in expected]
    assert exchange.fetch_ohlcv("XRP/USDT", "1h")[0][1:] == [0.5, 0.52, 0.49, 0.51, 175.0]

    book = exchange.fetch_order_book("XRP/USDT")
    assert (book["bids"], book["asks"], book["nonce"]) == ([[0.51, 25.0]], [[0.51, 25.0]], 4)
    ticker = exchange.fetch_ticker("XRP/USDT")
    assert (ticker["last"], ticker["open"], ticker["high"], ticker["low"], ticker["baseVolume"], ticker["bid"]) == (
        0.51, 0.5, 0.52, 0.49, 175.0, 0.51)
    assert ticker["quoteVolume"] == pytest.approx(0.5 * 100 + 0.52 * 40 + 0.49 * 10 + 0.51 * 25)
    tickers = exchange.fetch_tickers()
    # every symbol; BTCUSDT has no trade: price 0, which ccxt reads as none
    assert tickers["XRP/USDT"]["last"] == 0.51 and tickers["BTC/USDT"]["last"] is None
    assert exchange.fetch_tickers(["XRP/USDT"])["XRP/USDT"]["close"] == 0.51
    prices = ex.http.get(f"{ex.url}/api/v3/ticker/price", params={"symbols": '["XRPUSDT","BTCUSDT"]'}).json()
    assert prices == [{"symbol": SYMBOL, "price": "0.51000000"}, {"symbol": "BTCUSDT", "price": "0.00000000"}]
    assert ex.http.get(f"{ex.url}/api/v3/ticker/bookTicker", params={"symbol": SYMBOL}).json() == {
        "symbol": SYMBOL, "bidPrice": "0.51000000", "bidQty": "25.00000000", "askPrice": "0.51000000", "askQty": "25.00000000"}


def test_market_data_errors_and_weights(ex: Exchange) -> None:
    def get(path: str, **params: Any) -> tuple[int, Any, int]:
        answer = ex.http.get(f"{ex.url}{path}", params=params)
        return answer.status_code, answer.json(), int(answer.headers["X-MBX-USED-WEIGHT-1M"])

    def weight(path: str, **params: Any) -> int:
        before = get("/api/v3/ping")[2]
        return get(path, **params)[2] - before

    assert get("/api/v3/klines", symbol=SYMBOL, interval="2m")[:2] == (400, {"code": -1120, "msg": "Invalid interval."})
    assert get("/api/v3/klines", symbol="NOPEUSDT", interval="1m")[:2] == (400, {"code": -1121, "msg": "Invalid symbol."})
    assert get("/api/v3/klines", symbol=SYMBOL)[1]["code"] == -1102
    assert get("/api/v3/klines", symbol=SYMBOL, interval="1m", limit=1001)[1]["code"] == -1100
    assert get("/api/v3/klines", symbol=SYMBOL, interval="1d", timeZone="8")[1]["code"] == -1100
    assert get("/api/v3/klines", symbol=SYMBOL, interval="1d", timeZone="0")[:2] == (200, [])
    assert get("/api/v3/depth", symbol=SYMBOL)[:2] == (200, {"lastUpdateId": 0, "bids": [], "asks": []})
    assert get("/api/v3/ticker/24hr", symbol="NOPEUSDT")[1]["code"] == -1121
    day = get("/api/v3/ticker/24hr", symbol=SYMBOL, type="MINI")[1]
    assert (day["lastPrice"], day["count"], "priceChange" in day) == ("0.00000000", 0, False)
    assert weight("/api/v3/klines", symbol=SYMBOL, interval="1m") == 2
    assert [weight("/api/v3/depth", symbol=SYMBOL, limit=n) for n in (100, 500, 1000, 5000)] == [5, 25, 50, 250]
    assert weight("/api/v3/ticker/24hr", symbol=SYMBOL) == 2 and weight("/api/v3/ticker/24hr") == 80
    assert weight("/api/v3/ticker/24hr", symbols='["XRPUSDT","BTCUSDT"]') == 2
    assert weight("/api/v3/ticker/price") == 4 and weight("/api/v3/ticker/bookTicker", symbol=SYMBOL) == 2

"""The paper exchange's market data (issue 26): klines, depth, tickers and the discovery calls ccxt
makes, against a real paper exchange process, read by ccxt; the candles' rules (`candles.py`) held to
an independent aggregation of the same trades, interval alignment and Binance's errors."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt
import pytest
from test_client_library import SYMBOL, XRP, loopback_only
from test_paper_exchange import KEY, SECRET, Exchange, Market, ex, market, start, wait_for  # noqa: F401 - fixtures

from naived.core.config import Paper
from naived.core.messages import TradeEvent
from naived.market import tape
from naived.paper import candles as candles_module
from naived.paper.candles import INTERVALS, Candles, close_time, load_history, open_time

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "btcusdt_20240809.gz"


def utc_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.UTC).timestamp()) * 1000


def ccxt_everywhere(ex: Exchange) -> ccxt.binance:
    """ccxt's Binance with every API URL at the paper exchange, its defaults otherwise (futures
    markets, currencies, margin pairs all loaded): what a bot like freqtrade configures."""
    api = {key: f"{ex.url}/{url.split('/', 3)[3]}" for key, url in ccxt.binance().urls["api"].items()}
    exchange = ccxt.binance({"apiKey": KEY, "secret": SECRET, "enableRateLimit": False, "timeout": 5000,
                             "urls": {"api": api}})
    loopback_only(exchange.session, ex)
    return exchange


def sample_trades() -> list[TradeEvent]:
    stats, progress = tape.ReadCounts(), tape.Progress()
    return [t[2] for t in tape.read_file(SAMPLE, 0, stats, progress)]


def independent(trades: list[TradeEvent], interval_ms: int) -> list[list[Any]]:
    """Klines by the book: group by open time, fold in order; nothing shared with candles.py."""
    groups: dict[int, list[TradeEvent]] = {}
    for t in trades:
        groups.setdefault(t.T - t.T % interval_ms, []).append(t)
    rows = []
    for open_ms, group in sorted(groups.items()):
        prices = [Decimal(t.p) for t in group]
        qty = [Decimal(t.q) for t in group]
        takers = [i for i, t in enumerate(group) if not t.m]
        rows.append([open_ms, prices[0], max(prices), min(prices), prices[-1], sum(qty), open_ms + interval_ms - 1,
                     sum(p * q for p, q in zip(prices, qty, strict=True)), len(group),
                     sum((qty[i] for i in takers), Decimal(0)), sum((prices[i] * qty[i] for i in takers), Decimal(0))])
    return rows


def decoded(rows: list[list[Any]]) -> list[list[Any]]:
    """Binance's kline arrays with their decimal strings as Decimals (the "0" dropped)."""
    return [[r[0], *map(Decimal, r[1:6]), r[6], Decimal(r[7]), r[8], Decimal(r[9]), Decimal(r[10])] for r in rows]


# --- candles.py --------------------------------------------------------------------------------


def test_klines_from_a_recorded_tape_agree_with_an_independent_aggregation() -> None:
    candles = Candles()
    assert load_history(candles, [str(SAMPLE)]) == 2927
    trades = sample_trades()
    for interval, length in (("1s", 1000), ("1m", 60_000), ("3m", 180_000), ("1h", 3_600_000), ("1d", 86_400_000)):
        rows = candles.klines("BTCUSDT", interval, limit=1000)
        assert all(r[11] == "0" and len(r[1].split(".")[1]) == 8 for r in rows)
        want = independent(trades, length)
        assert decoded(rows) == [[r[0], *(Decimal(x).quantize(Decimal("1e-8")) if isinstance(x, Decimal) else x
                                          for x in r[1:])] for r in want], interval
    assert candles.klines("BTCUSDT", "1s", limit=5) == candles.klines("BTCUSDT", "1s", limit=1000)[-5:]
    first = candles.klines("BTCUSDT", "1s", limit=1000)
    assert candles.klines("BTCUSDT", "1s", start_ms=first[3][0], limit=2) == first[3:5]
    assert candles.klines("BTCUSDT", "1s", end_ms=first[3][0], limit=2) == first[2:4]
    # the same trades again (a live feed overlapping the history): counted once
    load_history(candles, [str(SAMPLE)])
    assert candles.klines("BTCUSDT", "1m") == decoded_back(independent(trades, 60_000))


def decoded_back(rows: list[list[Any]]) -> list[list[Any]]:
    """`independent`'s rows printed as Binance prints klines."""
    def q(x: Decimal) -> str:
        return format(x.quantize(Decimal("1e-8")), "f")
    return [[r[0], *map(q, r[1:6]), r[6], q(r[7]), r[8], q(r[9]), q(r[10]), "0"] for r in rows]


def test_interval_alignment_week_month_and_time_zone() -> None:
    # 2024-02-29 (a Thursday, leap day) 13:45:10.5 UTC
    t = utc_ms(2024, 2, 29, 13, 45, 10) + 500
    assert open_time("1w", t) == utc_ms(2024, 2, 26)  # Monday 00:00 UTC
    assert close_time("1w", utc_ms(2024, 2, 26)) == utc_ms(2024, 3, 4) - 1
    assert open_time("1M", t) == utc_ms(2024, 2, 1)
    assert close_time("1M", utc_ms(2024, 2, 1)) == utc_ms(2024, 3, 1) - 1  # 29 days
    assert close_time("1M", utc_ms(2023, 12, 1)) == utc_ms(2024, 1, 1) - 1
    assert open_time("4h", t) == utc_ms(2024, 2, 29, 12) and open_time("15m", t) == utc_ms(2024, 2, 29, 13, 45)
    assert open_time("1d", t, tz_offset_ms=8 * 3_600_000) == utc_ms(2024, 2, 29) - 8 * 3_600_000
    candles = Candles()
    # a Sunday and the Monday after: two weeks; Jan 31 and Feb 1: two months; one trade each
    for i, when in enumerate((utc_ms(2024, 1, 31, 23, 59), utc_ms(2024, 2, 1, 0, 1), utc_ms(2024, 2, 4, 23),
                              utc_ms(2024, 2, 5, 1))):
        candles.add("XRPUSDT", Decimal(1 + i), Decimal(10), when, buyer_maker=i % 2 == 0, trade_id=i + 1)
    weeks = candles.klines("XRPUSDT", "1w")
    assert [(r[0], r[6], r[8]) for r in weeks] == [(utc_ms(2024, 1, 29), utc_ms(2024, 2, 5) - 1, 3),
                                                   (utc_ms(2024, 2, 5), utc_ms(2024, 2, 12) - 1, 1)]
    months = candles.klines("XRPUSDT", "1M")
    assert [(r[0], r[6], r[1], r[4], r[8]) for r in months] == [
        (utc_ms(2024, 1, 1), utc_ms(2024, 2, 1) - 1, "1.00000000", "1.00000000", 1),
        (utc_ms(2024, 2, 1), utc_ms(2024, 3, 1) - 1, "2.00000000", "4.00000000", 3)]
    assert months[1][9] == "20.00000000" and months[1][10] == "60.00000000"  # takers: trades 2 and 4 (m false)
    assert candles.current("XRPUSDT", "1M") == months[-1]
    assert candles.current("XRPUSDT", "1w") == weeks[-1]
    assert candles.current("NOPE", "1m") is None
    k = candles.stream_kline("XRPUSDT", "1M")  # what a kline stream sends: the same figures, and the trade ids
    assert k is not None and [k[f] for f in "tohlcvTqnVQ"] == months[-1][:11] and (k["f"], k["L"], k["x"]) == (2, 4, False)
    # no trade between Feb 1 00:01 and Feb 4 23:00: no candle for those days (nothing invented)
    assert [r[0] for r in candles.klines("XRPUSDT", "1d")] == [utc_ms(2024, 1, 31), utc_ms(2024, 2, 1),
                                                                utc_ms(2024, 2, 4), utc_ms(2024, 2, 5)]
    assert set(INTERVALS) == {"1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h",
                              "1d", "3d", "1w", "1M"}


# --- over HTTP, read by ccxt -----------------------------------------------------------------------


def wait_trade(ex: Exchange, trade_id: int) -> None:
    wait_for("the trade", lambda: ex.get("/paper/market").get(SYMBOL, {}).get("lastTradeId") == trade_id)


def test_ccxt_reads_candles_book_and_tickers(ex: Exchange, market: Market) -> None:
    exchange = ccxt_everywhere(ex)
    markets = exchange.load_markets()  # futures exchangeInfo, currencies and margin pairs: empty, not 404
    assert markets[XRP]["spot"] and not any(m["contract"] for m in markets.values())
    assert exchange.fetch_ohlcv(XRP, "1m") == []  # no trade seen: no candles, none invented
    assert exchange.fetch_order_book(XRP)["bids"] == []
    market.wait_subscribed(SYMBOL)  # asking for its market data subscribed it
    last = 0
    for price, qty in (("0.5000", "100"), ("0.5100", "50"), ("0.4900", "20")):
        last = market.trade(SYMBOL, price, qty)
    wait_trade(ex, last)
    (candle,) = exchange.fetch_ohlcv(XRP, "1m")
    assert candle[1:] == [0.5, 0.51, 0.49, 0.49, 170.0]
    assert exchange.fetch_ohlcv(XRP, "1h") == [[candle[0] - candle[0] % 3_600_000, *candle[1:]]]
    book = exchange.fetch_order_book(XRP)
    assert book["bids"] == [[0.49, 20.0]] and book["asks"] == [[0.49, 20.0]] and book["nonce"] == last
    ticker = exchange.fetch_ticker(XRP)
    assert (ticker["open"], ticker["high"], ticker["low"], ticker["last"], ticker["bid"], ticker["ask"]) == (
        0.5, 0.51, 0.49, 0.49, 0.49, 0.49)
    assert ticker["baseVolume"] == 170.0 and ticker["quoteVolume"] == pytest.approx(50 + 25.5 + 9.8)
    assert ticker["info"]["count"] == 3 and ticker["info"]["firstId"] == last - 2
    assert list(exchange.fetch_tickers()) == [XRP]  # every symbol with trades seen
    both = exchange.fetch_tickers([XRP, "BTC/USDT"])
    assert both["BTC/USDT"]["info"]["count"] == 0 and both[XRP]["last"] == 0.49
    prices = exchange.fetch_bids_asks([XRP])
    assert prices[XRP]["bid"] == 0.49
    assert exchange.publicGetTickerPrice({"symbol": SYMBOL}) == {"symbol": SYMBOL, "price": "0.49000000"}


def test_klines_errors_and_weights(ex: Exchange) -> None:
    def get(path: str, **params: str) -> tuple[int, Any, int]:
        r = ex.http.get(ex.url + path, params=params, timeout=5)
        return r.status_code, r.json(), int(r.headers["X-MBX-USED-WEIGHT-1M"])

    assert get("/api/v3/klines", symbol=SYMBOL, interval="2m")[:2] == (400, {"code": -1120, "msg": "Invalid interval."})
    assert get("/api/v3/klines", symbol="NOPEUSDT", interval="1m")[1]["code"] == -1121
    assert get("/api/v3/klines", symbol=SYMBOL)[1]["code"] == -1102
    assert get("/api/v3/klines", symbol=SYMBOL, interval="1m", limit="1001")[1]["code"] == -1100
    assert get("/api/v3/klines", symbol=SYMBOL, interval="1m", timeZone="15:00")[1]["code"] == -1100
    assert get("/api/v3/uiKlines", symbol=SYMBOL, interval="1M", timeZone="-1:30")[:2] == (200, [])
    assert get("/api/v3/ticker/24hr", symbol=SYMBOL, type="MINI")[1]["count"] == 0
    assert get("/api/v3/ticker/24hr", symbol=SYMBOL, symbols='["XRPUSDT"]')[1]["code"] == -1128
    before = get("/api/v3/ping")[2]
    assert get("/api/v3/depth", symbol=SYMBOL, limit="500")[2] - before == 25
    after_depth = get("/api/v3/ping")[2]
    assert get("/api/v3/ticker/24hr")[2] - after_depth == 80
    assert get("/fapi/v1/exchangeInfo")[1]["symbols"] == [] and get("/dapi/v1/exchangeInfo")[1]["symbols"] == []
    ms_ticker = get("/api/v3/ticker/24hr", symbol=SYMBOL)[1]
    us_ticker = ex.http.get(ex.url + "/api/v3/ticker/24hr", params={"symbol": SYMBOL}, timeout=5,
                            headers={"X-MBX-TIME-UNIT": "MICROSECOND"}).json()
    assert us_ticker["closeTime"] - us_ticker["openTime"] == 86_400_000_000  # both in µs
    assert abs(us_ticker["closeTime"] - ms_ticker["closeTime"] * 1000) < 5_000_000


def test_history_files_give_the_startup_candles(start: Callable[..., Exchange], market: Market) -> None:
    ex = start(f'history_files = ["{SAMPLE}"]')
    exchange = ccxt_everywhere(ex)
    since = sample_trades()[0].T - sample_trades()[0].T % 60_000
    rows = exchange.publicGetKlines({"symbol": "BTCUSDT", "interval": "1m", "startTime": since})
    assert rows == decoded_back(independent(sample_trades(), 60_000))
    assert exchange.fetch_ohlcv("BTC/USDT", "1s", since=since, limit=3) == [
        [r[0], *map(float, r[1:6])] for r in decoded_back(independent(sample_trades(), 1000))[:3]]
    assert exchange.fetch_ticker("BTC/USDT")["info"]["count"] == 2927


def test_memory_is_bounded_and_a_part_evicted_candle_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(candles_module.BASES, "1m", (60_000, 12))  # twelve 1m candles kept
    candles = Candles()
    t0 = utc_ms(2024, 3, 1, 10, 0)
    for i in range(25):  # one trade a minute, 10:00 .. 10:24
        candles.add("XRPUSDT", Decimal(1 + i), Decimal(1), t0 + i * 60_000, buyer_maker=False, trade_id=i + 1)
    minutes = candles.klines("XRPUSDT", "1m")
    assert [r[0] for r in minutes] == [t0 + i * 60_000 for i in range(13, 25)]
    # from the 1m kept (10:13 .. 10:24): 10:10's 5m and 10:00's 15m lost their first minutes: left out, not short
    assert [(r[0], r[8]) for r in candles.klines("XRPUSDT", "5m")] == [(t0 + 15 * 60_000, 5), (t0 + 20 * 60_000, 5)]
    assert [(r[0], r[8]) for r in candles.klines("XRPUSDT", "15m")] == [(t0 + 15 * 60_000, 10)]
    # the 1h level keeps its own: the hour is whole there
    assert [(r[0], r[8]) for r in candles.klines("XRPUSDT", "1h")] == [(t0, 25)]
    # the 24 h ticker's window: every 1m candle kept, ending at the last trade
    window = candles.window("XRPUSDT", t0 + 24 * 60_000, 86_400_000)
    assert window is not None and window.candle.trades == 12 and window.prev_close is None


def test_history_files_are_checked_at_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="history_files: no such file"):
        Paper(history_files=[str(tmp_path / "nope.gz")])
    assert Paper(history_files=[str(SAMPLE)]).history_files == [str(SAMPLE)]

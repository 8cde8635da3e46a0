"""The paper exchange's market data streams (Binance's web-socket-streams.md), over real websockets.

A real paper exchange process fed by a test-owned ZeroMQ publisher (the path streamerd's trades
take): trade and bookTicker payloads with Binance's exact field sets, raw and combined streams,
live SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / properties with Binance's id echo and errors,
the incoming-message limit, and a client that never reads dropped without delaying another.
Kline streams are tested in process, against a small fake candle source.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import pytest
import websocket
import zmq
from test_paper_exchange import Exchange, Market, ex, market, start, wait_for  # noqa: F401 - fixtures
from test_user_stream import Stream

from naived.core.config import Faults
from naived.core.messages import TradeEvent
from naived.core.symbols import table
from naived.paper.marketstream import MarketStreams
from naived.paper.userstream import UserStreamServer

TRADE_FIELDS = {"e", "E", "s", "t", "p", "q", "T", "m", "M"}
BOOK_FIELDS = {"u", "s", "b", "B", "a", "A"}
KLINE_FIELDS = {"t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B"}


class Client(Stream):
    """A websocket-client connection to any URL, with deadlines on every read (`Stream`'s)."""

    def __init__(self, url: str, **options: Any) -> None:
        self.ws = websocket.create_connection(url, timeout=5, **options)

    def call(self, request: dict[str, Any]) -> Any:
        self.ws.send(json.dumps(request))
        return self.next()


def traded(ex: Exchange, market: Market, price: str, qty: str = "12.5") -> int:
    trade_id = market.trade("XRPUSDT", price, qty)
    ex.processed("XRPUSDT", trade_id)
    return trade_id


def test_trade_and_book_ticker_streams_in_binances_format(ex: Exchange, market: Market) -> None:
    trades = Client(f"{ex.ws_url}/ws/xrpusdt@trade")
    both = Client(f"{ex.ws_url}/ws/xrpusdt@trade/xrpusdt@bookTicker")  # a raw stream of two names
    market.wait_subscribed("XRPUSDT")  # subscribing to a stream subscribes the feed
    before = int(time.time() * 1000)
    trade_id = traded(ex, market, "0.51230000")
    trade = trades.next()
    assert set(trade) == TRADE_FIELDS
    assert {k: trade[k] for k in ("e", "s", "t", "p", "q", "m", "M")} == {
        "e": "trade", "s": "XRPUSDT", "t": trade_id, "p": "0.51230000", "q": "12.5", "m": False, "M": True}
    assert before <= trade["T"] <= trade["E"] <= int(time.time() * 1000)
    again = both.next()  # in the order of the names: the trade, then the book ticker
    assert again["e"] == "trade" and again["t"] == trade_id and set(again) == TRADE_FIELDS
    book = both.next()
    assert book == {"u": trade_id, "s": "XRPUSDT", "b": "0.51230000", "B": "12.5", "a": "0.51230000", "A": "12.5"}


def test_combined_streams_wrap_and_live_methods_echo_the_id(ex: Exchange, market: Market) -> None:
    c = Client(f"{ex.ws_url}/stream?streams=xrpusdt@bookTicker")
    market.wait_subscribed("XRPUSDT")
    first = traded(ex, market, "0.5")
    assert c.next() == {"stream": "xrpusdt@bookTicker",
                        "data": {"u": first, "s": "XRPUSDT", "b": "0.5", "B": "12.5", "a": "0.5", "A": "12.5"}}
    assert c.call({"method": "SUBSCRIBE", "params": ["xrpusdt@trade"], "id": 7}) == {"result": None, "id": 7}
    assert c.call({"method": "LIST_SUBSCRIPTIONS", "id": "abc"}) == {
        "result": ["xrpusdt@bookTicker", "xrpusdt@trade"], "id": "abc"}
    assert c.call({"method": "UNSUBSCRIBE", "params": ["xrpusdt@bookTicker"], "id": None}) == {"result": None, "id": None}
    assert c.call({"method": "GET_PROPERTY", "params": ["combined"], "id": 2}) == {"result": True, "id": 2}
    second = traded(ex, market, "0.6")
    wrapped = c.next()
    assert wrapped["stream"] == "xrpusdt@trade" and wrapped["data"]["t"] == second and set(wrapped["data"]) == TRADE_FIELDS
    assert c.call({"method": "SET_PROPERTY", "params": ["combined", False], "id": 3}) == {"result": None, "id": 3}
    third = traded(ex, market, "0.61")
    assert c.next()["t"] == third  # raw payloads now

    # A bare /ws that subscribes later, as ccxt does.
    later = Client(f"{ex.ws_url}/ws")
    assert later.call({"method": "SUBSCRIBE", "params": ["xrpusdt@bookTicker"], "id": 1}) == {"result": None, "id": 1}
    fourth = traded(ex, market, "0.62")
    assert later.next()["u"] == fourth
    assert c.next()["t"] == fourth


def test_binances_errors(ex: Exchange) -> None:
    invalid = {"code": 2, "msg": "Invalid request: invalid stream"}
    c = Client(f"{ex.ws_url}/ws")  # at most 5 messages a second on a connection: a new one every 5
    assert c.call({"method": "SUBSCRIBE", "params": ["nosuchcoin@trade"], "id": 1}) == {"error": invalid, "id": 1}
    assert c.call({"method": "SUBSCRIBE", "params": ["XRPUSDT@trade"], "id": 2}) == {"error": invalid, "id": 2}  # lower case only
    assert c.call({"method": "SUBSCRIBE", "params": ["xrpusdt@depth"], "id": 3}) == {"error": invalid, "id": 3}
    assert c.call({"method": "SUBSCRIBE", "params": ["xrpusdt@trade", "bad"], "id": 4}) == {"error": invalid, "id": 4}
    assert c.call({"method": "LIST_SUBSCRIPTIONS", "id": 5}) == {"result": [], "id": 5}  # all or nothing
    c = Client(f"{ex.ws_url}/ws")
    unknown = c.call({"method": "SUBSCRIBED", "id": 6})
    assert unknown["id"] == 6 and unknown["error"]["code"] == 2
    assert unknown["error"]["msg"].startswith("Invalid request: unknown variant `SUBSCRIBED`, expected one of `SUBSCRIBE`")
    assert c.call({"params": [], "id": 7}) == {"error": {"code": 2, "msg": "Invalid request: missing field `method`"}, "id": 7}
    assert c.call({"method": "LIST_SUBSCRIPTIONS", "id": [1]}) == {
        "error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}, "id": None}
    assert c.call({"method": "GET_PROPERTY", "params": ["colour"], "id": 8}) == {
        "error": {"code": 0, "msg": "Unknown property"}, "id": 8}
    assert c.call({"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 9}) == {
        "error": {"code": 1, "msg": "Invalid value type: expected Boolean"}, "id": 9}
    c = Client(f"{ex.ws_url}/ws")
    c.ws.send("{not json")
    assert c.next()["error"]["code"] == 3
    assert c.call({"method": "LIST_SUBSCRIPTIONS", "id": "x" * 37})["error"]["code"] == 2  # ids: at most 36 characters

    with pytest.raises(websocket.WebSocketBadStatusException) as refused:  # a URL is at most 8 KiB (Binance: ~8000)
        Client(f"{ex.ws_url}/stream?streams={'/'.join(['xrpusdt@trade'] * 1025)}")
    assert refused.value.status_code == 414
    with pytest.raises(websocket.WebSocketBadStatusException) as bad:
        Client(f"{ex.ws_url}/ws/xrpusdt@nothing")
    assert bad.value.status_code == 400 and json.loads(bad.value.resp_body) == invalid
    with pytest.raises(websocket.WebSocketBadStatusException) as no_interval:  # not one of Binance's intervals
        Client(f"{ex.ws_url}/ws/xrpusdt@kline_7m")
    assert no_interval.value.status_code == 400
    names = sorted(s.lower() for s in table())[:1025]
    many = Client(f"{ex.ws_url}/ws")
    subscribed = many.call({"method": "SUBSCRIBE", "params": [f"{n}@trade" for n in names[:1024]], "id": 1})
    assert subscribed == {"result": None, "id": 1}
    assert many.call({"method": "SUBSCRIBE", "params": [f"{names[1024]}@trade"], "id": 2}) == {
        "error": {"code": 2, "msg": "Invalid request: too many streams"}, "id": 2}
    again = many.call({"method": "SUBSCRIBE", "params": [f"{names[0]}@trade"], "id": 3})  # subscribed: no new one
    assert again == {"result": None, "id": 3}


def test_more_than_five_messages_a_second_close_the_connection(ex: Exchange) -> None:
    c = Client(f"{ex.ws_url}/ws")
    for i in range(5):
        assert c.call({"method": "LIST_SUBSCRIPTIONS", "id": i}) == {"result": [], "id": i}
    c.ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 6}))
    assert c.close_frame() == 1008
    assert ex.get("/paper/usage")["market_stream_dropped"]["too_many_messages"] == 1


def test_a_client_that_never_reads_is_dropped_and_never_delays_another(ex: Exchange, market: Market) -> None:
    # A small receive buffer: the server's queue fills after few messages stuck in the kernel.
    stuck = Client(f"{ex.ws_url}/ws/xrpusdt@trade", sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    reader = Client(f"{ex.ws_url}/ws/xrpusdt@trade")
    market.wait_subscribed("XRPUSDT")
    market.pub.setsockopt(zmq.XPUB_NODROP, 1)  # the publisher waits for the feed: every trade arrives
    started = time.monotonic()
    batches = 0
    worst = 0.0
    while ex.get("/paper/usage")["market_stream_dropped"]["slow_reader"] == 0:
        assert time.monotonic() - started < 60, "the client that never reads was never dropped"
        batches += 1
        for _ in range(2000):
            last = market.trade("XRPUSDT", "0.5", "1")
        sent = time.monotonic()
        while True:  # the reader gets every trade, each batch's last one soon after it was sent
            message = reader.next()
            if message["t"] == last:
                worst = max(worst, time.monotonic() - sent)
                break
    print(f"dropped after {batches} batches of 2000 trades, {time.monotonic() - started:.1f}s; "
          f"the reader's worst lag {worst:.3f}s")
    assert worst < 2.0, worst
    assert ex.get("/paper/usage")["market_stream_dropped"]["slow_reader"] == 1  # the stuck one alone
    stuck.ws.close()
    after = market.trade("XRPUSDT", "0.5", "1")
    while reader.next()["t"] != after:
        pass


# --- klines, in process ---------------------------------------------------------------------------


class Candles:
    """A fake kline source: one open 1s candle per symbol, whose trades the test counts."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], list[Any]] = {}

    def __call__(self, symbol: str, interval: str) -> list[Any] | None:
        return self.rows.get((symbol, interval))


@pytest.fixture
def streams() -> Iterator[tuple[UserStreamServer, MarketStreams, Candles]]:
    listener = socket.create_server(("127.0.0.1", 0))
    server = UserStreamServer(listener, 3600.0, 3600.0, lambda: (Faults(), None))
    candles = Candles()
    wanted: list[str] = []
    server.market = MarketStreams(server.loop, wanted.append, candles)
    server.start()
    try:
        yield server, server.market, candles
    finally:
        server.stop()
        server.join(5)
        listener.close()


def test_kline_stream_pushes_the_open_candle_then_the_closed_one(
        streams: tuple[UserStreamServer, MarketStreams, Candles]) -> None:
    server, market_streams, candles = streams
    left_ms = 60_000 - int(time.time() * 1000) % 60_000
    if left_ms < 15_000:  # the test's candle is this minute's and must stay open through it: wait for the clock
        time.sleep(left_ms / 1000 + 0.05)
    now = int(time.time() * 1000)
    start_ms = now - now % 60_000
    row = [start_ms, "0.5", "0.6", "0.4", "0.55", "30", start_ms + 59_999, "16.5", 3, "10", "5.5", "0"]
    candles.rows[("XRPUSDT", "1m")] = row
    url = f"ws://127.0.0.1:{server.address[1]}"
    c = Client(f"{url}/stream?streams=xrpusdt@kline_1m")
    first = c.next(4.0)  # the open candle, as soon as subscribed (within 2 s)
    assert first["stream"] == "xrpusdt@kline_1m"
    k = first["data"]["k"]
    assert set(first["data"]) == {"e", "E", "s", "k"} and set(k) == KLINE_FIELDS
    assert first["data"]["e"] == "kline" and first["data"]["s"] == "XRPUSDT"
    assert k == {"t": start_ms, "T": start_ms + 59_999, "s": "XRPUSDT", "i": "1m", "f": -1, "L": -1, "o": "0.5",
                 "c": "0.55", "h": "0.6", "l": "0.4", "v": "30", "n": 3, "x": False, "q": "16.5", "V": "10",
                 "Q": "5.5", "B": "0"}
    # A trade: the candle source moved on to a new candle, so the old one is pushed closed at once.
    new_row = [start_ms + 60_000, "0.7", "0.7", "0.7", "0.7", "1", start_ms + 119_999, "0.7", 1, "1", "0.7", "0"]
    candles.rows[("XRPUSDT", "1m")] = new_row
    market_streams.on_trade(TradeEvent("trade", now, "XRPUSDT", 41, "0.7", "1", now, False))
    closed = c.next()["data"]["k"]
    assert (closed["t"], closed["x"], closed["c"]) == (start_ms, True, "0.55")
    pushed = c.next(4.0)["data"]["k"]  # the new candle, at the next 2 s push
    assert (pushed["t"], pushed["x"], pushed["f"], pushed["L"], pushed["o"]) == (start_ms + 60_000, False, 41, 41, "0.7")
    assert asyncio.run_coroutine_threadsafe(asyncio.sleep(0), server.loop).result(5) is None  # the loop lives on
    # A 1s candle whose close time has passed: pushed once, closed.
    candles.rows[("XRPUSDT", "1s")] = [now - 5000, "1", "1", "1", "1", "1", now - 4001, "1", 1, "0", "0", "0"]
    assert c.call({"method": "SUBSCRIBE", "params": ["xrpusdt@kline_1s"], "id": 1}) == {"result": None, "id": 1}
    done = wait_for("the closed 1s kline", lambda: (m := c.next(3.0))["stream"] == "xrpusdt@kline_1s" and m or None)
    assert done["data"]["k"]["x"] is True
    c.ws.close()


def test_a_real_exchange_streams_the_klines_its_candles_hold(ex: Exchange, market: Market) -> None:
    """The paper exchange wires its candles (candles.py) to the kline streams: the open candle of
    the trades it took, the same one GET /api/v3/klines answers."""
    klines = Client(f"{ex.ws_url}/ws/xrpusdt@kline_1m")
    market.wait_subscribed("XRPUSDT")
    first = traded(ex, market, "0.51230000")
    last = traded(ex, market, "0.51250000", "2")
    deadline = time.monotonic() + 10
    while True:  # pushed every 2 s while it changes: the candle holding both trades comes
        k = klines.next()["k"]
        if k["n"] == 2 or time.monotonic() > deadline:
            break
    assert set(k) == KLINE_FIELDS
    assert (k["s"], k["i"], k["o"], k["c"], k["h"], k["l"], k["n"], k["x"]) == (
        "XRPUSDT", "1m", "0.51230000", "0.51250000", "0.51250000", "0.51230000", 2, False)
    assert (k["f"], k["L"]) == (first, last)
    rest = json.loads(urlopen(f"{ex.url}/api/v3/klines?symbol=XRPUSDT&interval=1m&limit=1", timeout=5).read())
    assert rest[0][:6] == [k["t"], k["o"], k["h"], k["l"], k["c"], k["v"]]


def readme_freqtrade_exchange(ex: Exchange) -> dict[str, Any]:
    """The README's freqtrade `exchange` section, its ports made this test's exchange's."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = text.split('"exchange": {', 1)[1].split("\n```", 1)[0]
    block = block.replace("127.0.0.1:5681", ex.url.removeprefix("http://")).replace("127.0.0.1:5682", ex.ws_url.removeprefix("ws://"))
    section: dict[str, Any] = json.loads("{" + block)
    return section


def urls_of(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [u for v in value.values() for u in urls_of(v)]


def test_ccxt_pro_with_the_readmes_freqtrade_config_streams_trades_and_candles(ex: Exchange, market: Market) -> None:
    """ccxt.pro, what freqtrade's `enable_ws` uses, built as freqtrade builds it from the README's
    `ccxt_config`: every URL at the paper exchange; it connects to `/ws/0`, `/ws/1`... (names
    without an `@`) and SUBSCRIBEs there."""
    import ccxt.pro  # the async half of ccxt, imported only here

    section = readme_freqtrade_exchange(ex)
    assert section["enable_ws"] is True

    async def run() -> tuple[list[Any], list[Any]]:
        exchange = ccxt.pro.binance({"apiKey": section["key"], "secret": section["secret"], "enableRateLimit": False,
                                     **section["ccxt_config"]})
        assert all(u.startswith((ex.url, ex.ws_url)) for u in urls_of(exchange.urls["api"])), "a URL left at Binance"
        try:
            await exchange.load_markets()
            trades = asyncio.ensure_future(exchange.watch_trades("XRP/USDT"))
            await asyncio.to_thread(market.wait_subscribed, "XRPUSDT")  # its SUBSCRIBE subscribed the feed
            await asyncio.to_thread(traded, ex, market, "0.5000")
            # The kline stream pushes the open candle, which holds that trade, once subscribed.
            return await asyncio.wait_for(trades, 10), await asyncio.wait_for(exchange.watch_ohlcv("XRP/USDT", "1m"), 10)
        finally:
            await exchange.close()

    trades, ohlcv = asyncio.run(run())
    assert [(t["symbol"], t["price"], t["amount"]) for t in trades] == [("XRP/USDT", 0.5, 12.5)]
    assert ohlcv[-1][1:] == [0.5, 0.5, 0.5, 0.5, 12.5]

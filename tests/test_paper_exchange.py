"""The paper exchange as a real process on 127.0.0.1, fed trades by a test-owned ZeroMQ XPUB."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import msgspec
import pytest
import requests
import zmq
from harness import die_with_test, free_port
from recorded import EXCHANGE_INFO

from naived.core.messages import TradeEvent, encode_trade, trade_topic
from naived.exchange.binance import BinanceClient, BinanceError, OutcomeUnknown, RateLimited, UnknownOrder, signature
from naived.paper.book import Change, Fill, PaperOrder
from naived.paper.usage import MAX_ANSWER_KEYS, OTHER, OrderCount, Usage

KEY, SECRET = "paper-key", "paper-secret"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class Market:
    """The test's stand-in for streamerd: an XPUB that also reports who subscribed to what."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, also a restarted subscriber's repeat
        self.pub.bind(endpoint)
        self.next_id = 1
        self.seen: set[bytes] = set()  # subscriptions reported and not yet waited for

    def wait_subscribed(self, symbol: str) -> None:
        wanted = b"\x01" + trade_topic(symbol)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if wanted in self.seen:
                self.seen.discard(wanted)  # a restarted exchange subscribes again: wait for that one
                return
            if self.pub.poll(100):
                self.seen.add(self.pub.recv())
        raise AssertionError(f"the exchange never subscribed to {symbol}")

    def trade(self, symbol: str, price: str, qty: str = "1000") -> int:
        trade_id = self.next_id
        self.next_id += 1
        now = int(time.time() * 1000)
        self.pub.send_multipart(encode_trade(TradeEvent("trade", now, symbol, trade_id, price, qty, now, False)))
        return trade_id

    def close(self) -> None:
        self.pub.close()
        self.ctx.term()


class Exchange:
    """One paper-exchange process (restartable on the same port and state) and HTTP helpers."""

    def __init__(self, directory: Path, market_endpoint: str, extra: str = "", listener: socket.socket | None = None) -> None:
        self.dir = directory
        self.listener = listener  # served instead of binding paper.port, as under naived's root
        self.port = listener.getsockname()[1] if listener else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_port = free_port()
        self.ws_url = f"ws://127.0.0.1:{self.ws_port}"
        self.config = directory / "naive.toml"
        self.config.write_text(
            f'[paths]\nstate_dir = "{directory / "state"}"\nruntime_dir = "{directory / "run"}"\n'
            f'[streamer]\nendpoint = "{market_endpoint}"\n'
            f'[exchange]\ntimeout_seconds = 0.4\n'
            f'[paper]\nport = {free_port() if listener else self.port}\nws_port = {self.ws_port}\n{extra}\n'
            + ("" if "balances" in extra else 'balances = { USDT = "10000", XRP = "100" }\n')
            # these tests compare whole balance sheets: only the assets they name
            + ("" if "default_balance" in extra else 'default_balance = "0"\n')
        )
        self.http = requests.Session()
        self.http.trust_env = False
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        code = (
            "import logging, socket, sys; logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s');"
            "from naived.core.config import load_config; from naived.paper import main as paper;"
            "fd = int(sys.argv[2]); paper.run(load_config(sys.argv[1]), socket.socket(fileno=fd) if fd >= 0 else None)"
        )
        fd = self.listener.fileno() if self.listener else -1
        with open(self.dir / "paper-exchange.log", "ab") as log:
            # Kept as `self.proc` at once: the fixture kills it by PID whatever the test does next.
            self.proc = subprocess.Popen([sys.executable, "-c", code, str(self.config), str(fd)], stderr=log,
                                         start_new_session=True, pass_fds=(fd,) if fd >= 0 else (),
                                         preexec_fn=die_with_test)
        return self.proc

    def start(self) -> None:
        self.spawn()

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                return self.http.get(f"{self.url}/api/v3/ping", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for("the paper exchange to answer", up)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        return self.proc.wait(10)

    def log(self) -> str:
        return (self.dir / "paper-exchange.log").read_text(errors="replace")

    def client(self, secret: str = SECRET) -> BinanceClient:
        return BinanceClient(self.url, KEY, secret, timeout=0.4)

    def get(self, path: str) -> Any:
        return self.http.get(self.url + path, timeout=5).json()

    def orders(self) -> dict[str, dict[str, Any]]:
        return {o["clientOrderId"]: o for o in self.get("/paper/orders")}

    def balances(self) -> dict[str, dict[str, Decimal]]:
        return {a: {k: Decimal(v) for k, v in b.items()} for a, b in self.get("/paper/balances").items()}

    def faults(self, **faults: Any) -> None:
        assert self.http.post(f"{self.url}/paper/faults", json=faults, timeout=5).status_code == 200

    def processed(self, symbol: str, trade_id: int) -> None:
        wait_for(f"trade {trade_id} to be processed",
                 lambda: self.get("/paper/market").get(symbol, {}).get("lastTradeId") == trade_id)

    def signed(self, method: str, path: str, params: dict[str, Any], *, body: bool = False,
               stamp: int | None = None, secret: str = SECRET, key: str = KEY, recv_window: str = "5000") -> tuple[int, Any]:
        """A hand-made signed request, to reach what the client never sends."""
        query = urlencode({**params, "recvWindow": recv_window, "timestamp": stamp or int(time.time() * 1000)})
        query += "&signature=" + signature(secret, query)
        headers = {"X-MBX-APIKEY": key}
        if body:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            r = self.http.request(method, self.url + path, data=query, headers=headers, timeout=5)
        else:
            r = self.http.request(method, f"{self.url}{path}?{query}", headers=headers, timeout=5)
        assert "X-MBX-USED-WEIGHT-1M" in r.headers
        return r.status_code, r.json()


@pytest.fixture
def market(tmp_path: Path) -> Iterator[Market]:
    m = Market(f"ipc://{tmp_path / 'market.sock'}")
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def start(tmp_path: Path, market: Market) -> Iterator[Callable[..., Exchange]]:
    started: list[Exchange] = []

    def make(extra: str = "", listener: socket.socket | None = None) -> Exchange:
        directory = tmp_path / f"x{len(started)}"
        directory.mkdir()
        started.append(Exchange(directory, f"ipc://{tmp_path / 'market.sock'}", extra, listener))
        started[-1].start()  # after the append: one that never answers is still killed below
        return started[-1]

    try:
        yield make
    finally:
        for x in started:
            if x.proc is not None and x.proc.poll() is None:
                os.kill(x.proc.pid, signal.SIGKILL)
                x.proc.wait(10)


@pytest.fixture
def ex(start: Callable[..., Exchange]) -> Exchange:
    return start()


def order(side: str, price: str, qty: str, cid: str) -> dict[str, str]:
    return {"symbol": "XRPUSDT", "side": side, "type": "LIMIT", "timeInForce": "GTC", "price": price,
            "quantity": qty, "newClientOrderId": cid}


# --- API -----------------------------------------------------------------------------------


def test_public_endpoints(ex: Exchange) -> None:
    c = ex.client()
    c.ping()
    assert abs(c.server_time() - time.time() * 1000) < 1000
    info = c.exchange_info("XRPUSDT")
    assert [s["symbol"] for s in info["symbols"]] == ["XRPUSDT"]
    filters = {f["filterType"]: f for f in info["symbols"][0]["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.00010000" and filters["LOT_SIZE"]["stepSize"] == "1.00000000"
    both = ex.http.get(f"{ex.url}/api/v3/exchangeInfo", params={"symbols": '["BTCUSDT","XRPUSDT"]'}).json()
    assert [s["symbol"] for s in both["symbols"]] == ["BTCUSDT", "XRPUSDT"]
    assert len(c.exchange_info()["symbols"]) > 300
    with pytest.raises(BinanceError) as info_error:
        c.exchange_info("NOPEUSDT")
    assert (info_error.value.code, info_error.value.msg) == (-1121, "Invalid symbol.")
    assert c.used_weight > 0


def test_binance_errors_over_http(ex: Exchange) -> None:
    c = ex.client()
    cases = [
        (("XRPUSDT", "BUY", "0.50005", "20", "a1"), -1013, "Filter failure: PRICE_FILTER"),
        (("XRPUSDT", "BUY", "0.5", "20.5", "a2"), -1013, "Filter failure: LOT_SIZE"),
        (("XRPUSDT", "BUY", "0.5", "2", "a3"), -1013, "Filter failure: NOTIONAL"),
        (("XRPUSDT", "BUY", "1", "20000", "a4"), -2010, "Account has insufficient balance for requested action."),
        (("XRPUSDT", "SELL", "1", "101", "a5"), -2010, "Account has insufficient balance for requested action."),
        (("NOPEUSDT", "BUY", "1", "10", "a6"), -1121, "Invalid symbol."),
    ]
    for args, code, msg in cases:
        with pytest.raises(BinanceError) as info:
            c.new_order(*args)
        assert (info.value.code, info.value.msg) == (code, msg), args
    c.new_order("XRPUSDT", "BUY", "0.5", "20", "dup")
    with pytest.raises(BinanceError) as dup:
        c.new_order("XRPUSDT", "BUY", "0.4", "20", "dup")
    assert (dup.value.code, dup.value.msg) == (-2010, "Duplicate order sent.")
    with pytest.raises(UnknownOrder) as unknown:
        c.get_order("XRPUSDT", "never-placed")
    assert unknown.value.msg == "Order does not exist."
    with pytest.raises(BinanceError) as bad_sig:
        ex.client(secret="wrong").new_order("XRPUSDT", "BUY", "0.5", "20", "a7")
    assert (bad_sig.value.code, bad_sig.value.msg) == (-1022, "Signature for this request is not valid.")

    stale = ex.signed("POST", "/api/v3/order", order("BUY", "0.5", "20", "a8"), stamp=int(time.time() * 1000) - 60_000)
    assert stale == (400, {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."})
    assert ex.signed("GET", "/api/v3/account", {}, key="other")[1]["code"] == -2015
    assert ex.signed("DELETE", "/api/v3/order", {"symbol": "XRPUSDT", "origClientOrderId": "nope"}) == (
        400, {"code": -2011, "msg": "Unknown order sent."})
    assert ex.signed("GET", "/api/v3/order", {"symbol": "XRPUSDT"})[1]["code"] == -1102
    # rejected orders lock nothing and leave no trace
    assert set(ex.orders()) == {"dup"}
    assert ex.balances()["USDT"] == {"free": Decimal("9990"), "locked": Decimal("10")}


@pytest.mark.parametrize("kind", ["ACK", "RESULT", "FULL"])
def test_response_types(ex: Exchange, kind: str) -> None:
    # parameters in the form body this time, signature over it
    status, body = ex.signed("POST", "/api/v3/order", order("BUY", "0.5", "20", f"r-{kind}") | {"newOrderRespType": kind},
                             body=True)
    assert status == 200, body
    ack = {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}
    result = ack | {"price", "origQty", "executedQty", "origQuoteOrderQty", "cummulativeQuoteQty", "status", "timeInForce",
                    "type", "side", "workingTime", "selfTradePreventionMode"}
    assert set(body) == {"ACK": ack, "RESULT": result, "FULL": result | {"fills"}}[kind]
    assert body["clientOrderId"] == f"r-{kind}"
    if kind != "ACK":
        assert (body["status"], body["price"], body["origQty"]) == ("NEW", "0.50000000", "20.00000000")


def test_a_parameter_in_both_the_query_string_and_the_body_takes_the_query_strings_value(ex: Exchange) -> None:
    # Binance: "If a parameter sent in both the query string and request body, the query string
    # parameter will be used"; the signature is over the query string followed by the body.
    query = urlencode(order("BUY", "0.5", "20", "both") | {"timestamp": int(time.time() * 1000)})
    body = urlencode({"quantity": "30", "price": "0.4", "newClientOrderId": "body", "recvWindow": "5000"})
    body += "&signature=" + signature(SECRET, query + body)
    r = ex.http.post(f"{ex.url}/api/v3/order?{query}", data=body, timeout=5,
                     headers={"X-MBX-APIKEY": KEY, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    placed = r.json()
    assert (placed["clientOrderId"], placed["origQty"], placed["price"]) == ("both", "20.00000000", "0.50000000")
    # what only the body sends is still taken: recvWindow (and the signature)
    assert set(ex.orders()) == {"both"}


def test_query_open_orders_cancel_account(ex: Exchange) -> None:
    c = ex.client()
    placed = c.new_order("XRPUSDT", "SELL", "0.6", "10", "s1")
    assert c.get_order("XRPUSDT", "s1") == placed
    assert [o.client_order_id for o in c.open_orders("XRPUSDT")] == ["s1"]
    assert {b["asset"]: b["locked"] for b in c.account()["balances"]}["XRP"] == "10.00000000"
    cancelled = c.cancel_order("XRPUSDT", "s1")
    assert cancelled.status == "CANCELED" and cancelled.client_order_id == "s1"
    assert c.open_orders("XRPUSDT") == []
    assert ex.balances()["XRP"] == {"free": Decimal("100"), "locked": Decimal("0")}
    # a closed client order id may be reused, as on Binance; lookups find the newest
    again = c.new_order("XRPUSDT", "SELL", "0.7", "10", "s1")
    assert c.get_order("XRPUSDT", "s1").order_id == again.order_id != placed.order_id


# --- fills -------------------------------------------------------------------------------------


def assert_balances_follow_fills(ex: Exchange, start: dict[str, Decimal] | None = None) -> None:
    """Start balances + every fill - every fee == free + locked of each asset, and locked ==
    what open orders hold (the limit price times what remains of a BUY, the rest of a SELL)."""
    total = dict(start or {"USDT": Decimal("10000"), "XRP": Decimal("100")})
    locked = dict.fromkeys(total, Decimal(0))
    for o in ex.get("/paper/orders"):
        assert o["symbol"] == "XRPUSDT"
        bought = sum((Decimal(f["qty"]) for f in o["fills"]), Decimal(0))
        assert bought == Decimal(o["executedQty"])
        assert sum((Decimal(f["price"]) * Decimal(f["qty"]) for f in o["fills"]), Decimal(0)) == Decimal(o["cummulativeQuoteQty"])
        sign = 1 if o["side"] == "BUY" else -1
        for f in o["fills"]:
            total["XRP"] += sign * Decimal(f["qty"])
            total["USDT"] -= sign * Decimal(f["qty"]) * Decimal(f["price"])
            total[f["commissionAsset"]] -= Decimal(f["commission"])
        if o["status"] in ("NEW", "PARTIALLY_FILLED"):
            remaining = Decimal(o["origQty"]) - bought
            if o["side"] == "BUY":
                locked["USDT"] += remaining * Decimal(o["price"])
            else:
                locked["XRP"] += remaining
    b = ex.balances()
    for asset, amount in total.items():
        have = b.get(asset, {"free": Decimal(0), "locked": Decimal(0)})
        assert (have["free"] + have["locked"], have["locked"]) == (amount, locked[asset]), asset


def test_strict_fills(ex: Exchange, market: Market) -> None:
    c = ex.client()
    c.new_order("XRPUSDT", "BUY", "0.5", "20", "b1")
    market.wait_subscribed("XRPUSDT")
    c.new_order("XRPUSDT", "SELL", "0.6", "20", "s1")
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.5"))  # touching is not crossing
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.6"))
    assert {cid: o["status"] for cid, o in ex.orders().items()} == {"b1": "NEW", "s1": "NEW"}
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.4999"))
    buy = c.get_order("XRPUSDT", "b1")
    assert (buy.status, buy.executed_qty) == ("FILLED", "20.00000000")
    assert c.get_order("XRPUSDT", "s1").status == "NEW"
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.6001"))
    assert c.get_order("XRPUSDT", "s1").status == "FILLED"
    fills = ex.orders()["b1"]["fills"]
    # At the limit price, as a maker; 0.1% of the 20 XRP received is 0.02 XRP.
    assert [(f["price"], f["qty"], f["commission"], f["commissionAsset"], f["isMaker"]) for f in fills] == [
        ("0.50000000", "20.00000000", "0.02000000", "XRP", True)]
    # The SELL gave 20 × 0.6 = 12 USDT, less 0.012 USDT: 10000 - 10 + 12 - 0.012; XRP 100 + 20 - 0.02 - 20.
    assert ex.balances() == {"USDT": {"free": Decimal("10001.988"), "locked": Decimal(0)},
                             "XRP": {"free": Decimal("99.98"), "locked": Decimal(0)}}
    assert_balances_follow_fills(ex)


def test_fill_on_touch(start: Callable[..., Exchange], market: Market) -> None:
    ex = start("fill_on_touch = true")
    c = ex.client()
    c.new_order("XRPUSDT", "BUY", "0.5", "20", "b1")
    market.wait_subscribed("XRPUSDT")
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.5001"))
    assert c.get_order("XRPUSDT", "b1").status == "NEW"
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.5"))
    assert c.get_order("XRPUSDT", "b1").status == "FILLED"


def test_partial_fills(start: Callable[..., Exchange], market: Market) -> None:
    ex = start("partial_fills = true")
    c = ex.client()
    c.new_order("XRPUSDT", "BUY", "0.5", "30", "b1")
    market.wait_subscribed("XRPUSDT")
    c.new_order("XRPUSDT", "BUY", "0.5", "20", "b2")
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.49", "10"))
    assert (c.get_order("XRPUSDT", "b1").status, c.get_order("XRPUSDT", "b1").executed_qty) == ("PARTIALLY_FILLED", "10.00000000")
    assert c.get_order("XRPUSDT", "b2").status == "NEW"
    assert_balances_follow_fills(ex)
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.49", "25"))  # 20 finish b1 (time priority), 5 go to b2
    assert c.get_order("XRPUSDT", "b1").status == "FILLED"
    b2 = c.get_order("XRPUSDT", "b2")
    assert (b2.status, b2.executed_qty) == ("PARTIALLY_FILLED", "5.00000000")
    assert_balances_follow_fills(ex)
    assert c.cancel_order("XRPUSDT", "b2").executed_qty == "5.00000000"
    assert_balances_follow_fills(ex)
    assert ex.balances()["USDT"] == {"free": Decimal("10000") - Decimal("0.5") * 35, "locked": Decimal(0)}


def post(ex: Exchange, **params: str) -> tuple[int, Any]:
    """A new order by hand (the client only sends LIMIT GTC with RESULT)."""
    return ex.signed("POST", "/api/v3/order", {"symbol": "XRPUSDT", **params})


def follow(ex: Exchange, market: Market, symbol: str = "XRPUSDT") -> None:
    """Make the exchange subscribe to `symbol` (a trader asks exchangeInfo first) and see one trade at 0.5."""
    ex.http.get(f"{ex.url}/api/v3/exchangeInfo", params={"symbol": symbol}, timeout=5)
    market.wait_subscribed(symbol)


def test_marketable_orders_fill_at_once_at_the_last_price_as_takers(start: Callable[..., Exchange], market: Market) -> None:
    ex = start('maker_commission = "0.001"\ntaker_commission = "0.002"')
    follow(ex, market)
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.5"))
    status, body = post(ex, side="BUY", type="LIMIT", timeInForce="GTC", price="0.6", quantity="20", newClientOrderId="b1")
    assert status == 200, body
    assert (body["status"], body["executedQty"], body["cummulativeQuoteQty"]) == ("FILLED", "20.00000000", "10.00000000")
    # 20 XRP at 0.5 (not the 0.6 limit); taker 0.2% of the 20 XRP received = 0.04 XRP
    assert [{k: f[k] for k in ("price", "qty", "commission", "commissionAsset")} for f in body["fills"]] == [
        {"price": "0.50000000", "qty": "20.00000000", "commission": "0.04000000", "commissionAsset": "XRP"}]
    assert ex.balances() == {"USDT": {"free": Decimal("9990"), "locked": Decimal(0)},
                             "XRP": {"free": Decimal("119.96"), "locked": Decimal(0)}}
    # A SELL at or below the last price takes it too: 10 × 0.5 = 5 USDT, less 0.2% = 0.01 USDT.
    status, body = post(ex, side="SELL", type="LIMIT", timeInForce="GTC", price="0.5", quantity="10", newClientOrderId="s1")
    assert (body["status"], body["fills"][0]["commission"], body["fills"][0]["commissionAsset"]) == (
        "FILLED", "0.01000000", "USDT")
    assert ex.balances()["USDT"] == {"free": Decimal("9994.99"), "locked": Decimal(0)}
    # MARKET by quantity and by quoteOrderQty (7.3 USDT at 0.5 buys 14 XRP on a step of 1: 7 USDT, never more)
    status, body = post(ex, side="BUY", type="MARKET", quantity="4", newClientOrderId="m0")
    assert (status, body) == (400, {"code": -1013, "msg": "Filter failure: NOTIONAL"})  # 2 USDT at the last price
    status, body = post(ex, side="BUY", type="MARKET", quantity="12", newClientOrderId="m1")
    assert (body["status"], body["cummulativeQuoteQty"], body["fills"][0]["commission"]) == ("FILLED", "6.00000000", "0.02400000")
    status, body = post(ex, side="BUY", type="MARKET", quoteOrderQty="7.3", newClientOrderId="m2")
    assert (body["status"], body["origQty"], body["origQuoteOrderQty"], body["cummulativeQuoteQty"]) == (
        "FILLED", "14.00000000", "7.30000000", "7.00000000")
    trades = ex.signed("GET", "/api/v3/myTrades", {"symbol": "XRPUSDT"})[1]
    assert [(t["isBuyer"], t["isMaker"], t["qty"], t["quoteQty"], t["commission"], t["commissionAsset"]) for t in trades] == [
        (True, False, "20.00000000", "10.00000000", "0.04000000", "XRP"),
        (False, False, "10.00000000", "5.00000000", "0.01000000", "USDT"),
        (True, False, "12.00000000", "6.00000000", "0.02400000", "XRP"),
        (True, False, "14.00000000", "7.00000000", "0.02800000", "XRP"),
    ]
    assert len({t["id"] for t in trades}) == 4
    assert_balances_follow_fills(ex)


def test_resting_orders_fill_by_price_then_time_as_makers(start: Callable[..., Exchange], market: Market) -> None:
    ex = start('partial_fills = true\nmaker_commission = "0.001"\ntaker_commission = "0.002"')
    c = ex.client()
    c.new_order("XRPUSDT", "BUY", "0.5", "10", "b1")
    market.wait_subscribed("XRPUSDT")
    c.new_order("XRPUSDT", "BUY", "0.52", "10", "b2")
    c.new_order("XRPUSDT", "BUY", "0.52", "10", "b3")
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.49", "15"))  # b2 (best price) 10, then b3 (later) 5, b1 none
    orders = ex.orders()
    assert [(orders[c]["status"], orders[c]["executedQty"]) for c in ("b1", "b2", "b3")] == [
        ("NEW", "0.00000000"), ("FILLED", "10.00000000"), ("PARTIALLY_FILLED", "5.00000000")]
    assert [(f["price"], f["commission"], f["isMaker"]) for f in orders["b3"]["fills"]] == [("0.52000000", "0.00500000", True)]
    assert_balances_follow_fills(ex)


def test_partial_fills_leave_marketable_orders_what_the_last_trade_left(start: Callable[..., Exchange], market: Market) -> None:
    ex = start("partial_fills = true")
    follow(ex, market)
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.5", "15"))
    _, ioc = post(ex, side="BUY", type="LIMIT", timeInForce="IOC", price="0.6", quantity="20", newClientOrderId="i1")
    assert (ioc["status"], ioc["executedQty"]) == ("EXPIRED", "15.00000000")
    _, fok = post(ex, side="BUY", type="LIMIT", timeInForce="FOK", price="0.6", quantity="10", newClientOrderId="k1")
    assert (fok["status"], fok["executedQty"], fok["fills"]) == ("EXPIRED", "0.00000000", [])  # nothing left of the trade
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.5", "4"))
    _, gtc = post(ex, side="BUY", type="LIMIT", timeInForce="GTC", price="0.6", quantity="10", newClientOrderId="g1")
    assert (gtc["status"], gtc["executedQty"]) == ("PARTIALLY_FILLED", "4.00000000")
    assert ex.balances()["USDT"]["locked"] == Decimal("3.6")  # the 6 resting, at their 0.6 limit
    _, mkt = post(ex, side="SELL", type="MARKET", quantity="10", newClientOrderId="m1")
    assert (mkt["status"], mkt["executedQty"]) == ("EXPIRED", "0.00000000")
    assert_balances_follow_fills(ex)


def test_bad_market_frames_are_dropped_and_counted_and_the_feed_lives_on(ex: Exchange, market: Market) -> None:
    """Issue 20, item 2: a NaN price killed the feed thread (`_crosses`); a prefix neighbour's or a
    wild price filled orders. Now the feed checks frames as the traders do (naived/market/gate.py)."""
    c = ex.client()
    c.new_order("XRPUSDT", "BUY", "0.5", "20", "b1")
    market.wait_subscribed("XRPUSDT")
    for _ in range(5):  # the market at 0.6: the band's reference
        ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.6"))
    topic = trade_topic("XRPUSDT")
    now = int(time.time() * 1000)
    event = {"e": "trade", "E": now, "s": "XRPUSDT", "t": 99, "p": "0.4", "q": "10", "T": now, "m": False}
    for frames in (
        [topic],  # frames
        [topic, b"\xc1junk"],  # decode
        [topic, msgspec.msgpack.encode({**event, "p": 0.4})],  # decode: a float
        [topic, msgspec.msgpack.encode({**event, "p": "NaN"})],  # price
        [topic, msgspec.msgpack.encode({**event, "p": "-0.4"})],  # price
        [topic, msgspec.msgpack.encode({**event, "q": "0"})],  # quantity
        [topic, msgspec.msgpack.encode({**event, "s": "XRPUSDTX"})],  # symbol
        [trade_topic("XRPUSDTX"), msgspec.msgpack.encode({**event, "s": "XRPUSDTX"})],  # topic: no such subscription
    ):
        market.pub.send_multipart(frames)
    market.trade("XRPUSDT", "0.001")  # band: the wild tick, far below the buy
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.6"))  # the feed thread lives on, after every one of them
    assert ex.orders()["b1"]["status"] == "NEW"  # nothing above filled it
    assert ex.get("/paper/feed") == {
        "dropped": {"XRPUSDT": {"frames": 1, "decode": 2, "price": 2, "quantity": 1, "symbol": 1, "band": 1},
                    "": {"topic": 1}}}
    for price in ("0.58", "0.55", "0.52", "0.4999"):  # a market that moves, step by step within the band, still fills
        ex.processed("XRPUSDT", market.trade("XRPUSDT", price))
    assert ex.orders()["b1"]["status"] == "FILLED"
    assert "Traceback" not in ex.log()


def test_without_a_trade_seen_marketable_limits_rest_and_market_orders_expire(ex: Exchange) -> None:
    _, limit = post(ex, side="BUY", type="LIMIT", timeInForce="GTC", price="5", quantity="20", newClientOrderId="l1")
    assert (limit["status"], limit["executedQty"]) == ("NEW", "0.00000000")
    _, market_order = post(ex, side="BUY", type="MARKET", quantity="20", newClientOrderId="m1")
    assert (market_order["status"], market_order["executedQty"]) == ("EXPIRED", "0.00000000")
    assert ex.balances()["USDT"] == {"free": Decimal("9900"), "locked": Decimal("100")}


def test_a_buy_of_an_asset_never_held(start: Callable[..., Exchange]) -> None:
    ex = start('balances = { USDT = "100" }')
    _, body = post(ex, side="BUY", type="LIMIT", timeInForce="GTC", price="0.5", quantity="20", newClientOrderId="b1")
    assert body["status"] == "NEW", body
    assert ex.balances() == {"USDT": {"free": Decimal("90"), "locked": Decimal("10")},
                             "XRP": {"free": Decimal(0), "locked": Decimal(0)}}


def test_commission_in_bnb_at_the_discount_when_the_balance_covers_it(start: Callable[..., Exchange], market: Market) -> None:
    ex = start('commission_in_bnb = true\nbalances = { USDT = "10000", BNB = "0.00004" }')
    follow(ex, market)
    market.wait_subscribed("BNBUSDT")
    ex.processed("BNBUSDT", market.trade("BNBUSDT", "200"))
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.5"))
    # 20 XRP at 0.5 = 10 USDT; 0.1% × 75% = 0.0075 USDT = 0.0000375 BNB at 200
    _, body = post(ex, side="BUY", type="LIMIT", timeInForce="GTC", price="0.5", quantity="20", newClientOrderId="b1")
    assert (body["fills"][0]["commission"], body["fills"][0]["commissionAsset"]) == ("0.00003750", "BNB")
    # 0.0000025 BNB left does not cover the next one: taken from the XRP received, undiscounted
    _, body = post(ex, side="BUY", type="LIMIT", timeInForce="GTC", price="0.5", quantity="20", newClientOrderId="b2")
    assert (body["fills"][0]["commission"], body["fills"][0]["commissionAsset"]) == ("0.02000000", "XRP")
    assert ex.balances() == {"BNB": {"free": Decimal("0.0000025"), "locked": Decimal(0)},
                             "USDT": {"free": Decimal("9980"), "locked": Decimal(0)},
                             "XRP": {"free": Decimal("39.98"), "locked": Decimal(0)}}
    rates = ex.signed("GET", "/api/v3/account/commission", {"symbol": "XRPUSDT"})[1]
    assert rates == {
        "symbol": "XRPUSDT",
        "standardCommission": {"maker": "0.00100000", "taker": "0.00100000", "buyer": "0.00000000", "seller": "0.00000000"},
        "specialCommission": {"maker": "0.00000000", "taker": "0.00000000", "buyer": "0.00000000", "seller": "0.00000000"},
        "taxCommission": {"maker": "0.00000000", "taker": "0.00000000", "buyer": "0.00000000", "seller": "0.00000000"},
        "discount": {"enabledForAccount": True, "enabledForSymbol": True, "discountAsset": "BNB", "discount": "0.25000000"},
    }
    account = ex.signed("GET", "/api/v3/account", {})[1]
    assert (account["makerCommission"], account["commissionRates"]["taker"]) == (10, "0.00100000")


# --- endpoints -------------------------------------------------------------------------------------

def test_exchange_info_has_every_field_of_binances_symbol_entry(ex: Exchange) -> None:
    real = next(s for s in json.loads(EXCHANGE_INFO.read_text())["symbols"] if s["symbol"] == "XRPUSDT")
    ours = ex.get("/api/v3/exchangeInfo?symbol=XRPUSDT")["symbols"][0]
    assert set(real) <= set(ours)
    real_filters = {f["filterType"]: f for f in real["filters"]}
    for f in ours["filters"]:
        assert set(f) == set(real_filters[f["filterType"]]), f["filterType"]
    for kind, key in [("PRICE_FILTER", "tickSize"), ("LOT_SIZE", "stepSize"), ("LOT_SIZE", "minQty"),
                      ("NOTIONAL", "minNotional")]:
        assert {f["filterType"]: f for f in ours["filters"]}[kind][key] == real_filters[kind][key]
    assert ours["orderTypes"] == real["orderTypes"]  # what it implements, as Binance enables them
    # Fields Binance added after that 2023 recording (rest-api.md's exchangeInfo sample), each on
    # only where the paper exchange implements it
    assert {k: ours[k] for k in ("otoAllowed", "opoAllowed", "cancelReplaceAllowed", "amendAllowed",
                                 "pegInstructionsAllowed")} == {
        "otoAllowed": False, "opoAllowed": False, "cancelReplaceAllowed": True, "amendAllowed": False,
        "pegInstructionsAllowed": False}


def test_every_listed_order_type_is_accepted_and_binances_errors(ex: Exchange, market: Market) -> None:
    follow(ex, market)
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.5"))
    valid = {"LIMIT": {"timeInForce": "GTC", "price": "0.4", "quantity": "20"},
             "LIMIT_MAKER": {"price": "0.4", "quantity": "20"}, "MARKET": {"quantity": "20"},
             # BUY stops: a stop loss above the last price (0.5), a take profit below it
             "STOP_LOSS_LIMIT": {"stopPrice": "0.6", "price": "0.61", "timeInForce": "GTC", "quantity": "20"},
             "TAKE_PROFIT_LIMIT": {"stopPrice": "0.4", "price": "0.4", "timeInForce": "GTC", "quantity": "20"}}
    for kind in ex.get("/api/v3/exchangeInfo?symbol=XRPUSDT")["symbols"][0]["orderTypes"]:
        status, body = post(ex, side="BUY", type=kind, newClientOrderId=f"ok-{kind}", **valid[kind])
        assert status == 200, (kind, body)
    assert set(ex.orders()["ok-LIMIT_MAKER"]) >= {"status"}
    for tif in ("IOC", "FOK"):
        assert post(ex, side="BUY", type="LIMIT", timeInForce=tif, price="0.4", quantity="20")[0] == 200
    # LIMIT_MAKER answers ACK by default (only LIMIT and MARKET default to FULL)
    assert set(post(ex, side="SELL", type="LIMIT_MAKER", price="0.6", quantity="20")[1]) == {
        "symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}
    cases = [
        ({"type": "LIMIT_MAKER", "price": "0.5", "quantity": "20"}, -2010, "Order would immediately match and take."),
        ({"type": "STOP_MARKET", "stopPrice": "0.5", "quantity": "20"}, -1116, "Invalid orderType."),
        ({"type": "LIMIT", "timeInForce": "GTD", "price": "0.4", "quantity": "20"}, -1115, "Invalid timeInForce."),
        ({"type": "LIMIT", "price": "0.4", "quantity": "20"}, -1102,
         "Mandatory parameter 'timeInForce' was not sent, was empty/null, or malformed."),
        ({"type": "MARKET"}, -1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!"),
        ({"type": "MARKET", "quantity": "20", "price": "0.5"}, -1106, "Parameter 'price' sent when not required."),
        ({"type": "LIMIT", "timeInForce": "GTC", "price": "0.4", "quantity": "20", "quoteOrderQty": "8"}, -1106,
         "Parameter 'quoteOrderQty' sent when not required."),
        ({"type": "MARKET", "quoteOrderQty": "4"}, -1013, "Filter failure: NOTIONAL"),
    ]
    for params, code, msg in cases:
        assert post(ex, side="BUY", **params) == (400, {"code": code, "msg": msg}), params
    assert post(ex, side="HOLD", type="MARKET", quantity="20") == (400, {"code": -1117, "msg": "Invalid side."})


def test_all_orders_my_trades_and_cancel_all(ex: Exchange, market: Market) -> None:
    c = ex.client()
    ids = [c.new_order("XRPUSDT", "BUY", price, "20", f"o{i}").order_id for i, price in enumerate(["0.5", "0.4", "0.3"])]
    market.wait_subscribed("XRPUSDT")
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.45"))  # fills o0
    every = ex.signed("GET", "/api/v3/allOrders", {"symbol": "XRPUSDT"})[1]
    assert [(o["clientOrderId"], o["status"], o["origQuoteOrderQty"]) for o in every] == [
        ("o0", "FILLED", "0.00000000"), ("o1", "NEW", "0.00000000"), ("o2", "NEW", "0.00000000")]
    assert [o["orderId"] for o in ex.signed("GET", "/api/v3/allOrders", {"symbol": "XRPUSDT", "limit": 2})[1]] == ids[1:]
    assert [o["orderId"] for o in ex.signed("GET", "/api/v3/allOrders",
                                            {"symbol": "XRPUSDT", "orderId": ids[1], "limit": 1})[1]] == [ids[1]]
    trades = ex.signed("GET", "/api/v3/myTrades", {"symbol": "XRPUSDT", "orderId": ids[0]})[1]
    assert [(t["orderId"], t["price"], t["qty"], t["isMaker"], t["commission"]) for t in trades] == [
        (ids[0], "0.50000000", "20.00000000", True, "0.02000000")]
    status, cancelled = ex.signed("DELETE", "/api/v3/openOrders", {"symbol": "XRPUSDT"})
    assert status == 200 and [(o["origClientOrderId"], o["status"]) for o in cancelled] == [
        ("o1", "CANCELED"), ("o2", "CANCELED")]
    assert ex.signed("DELETE", "/api/v3/openOrders", {"symbol": "XRPUSDT"}) == (
        400, {"code": -2011, "msg": "Unknown order sent."})
    assert_balances_follow_fills(ex)


def test_test_order_places_nothing_and_computes_commission_rates(ex: Exchange) -> None:
    params = {"symbol": "XRPUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "price": "0.5", "quantity": "20"}
    assert ex.signed("POST", "/api/v3/order/test", params) == (200, {})
    status, rates = ex.signed("POST", "/api/v3/order/test", params | {"computeCommissionRates": "true"})
    assert rates == {
        "standardCommissionForOrder": {"maker": "0.00100000", "taker": "0.00100000"},
        "specialCommissionForOrder": {"maker": "0.00000000", "taker": "0.00000000"},
        "taxCommissionForOrder": {"maker": "0.00000000", "taker": "0.00000000"},
        "discount": {"enabledForAccount": False, "enabledForSymbol": True, "discountAsset": "BNB", "discount": "0.25000000"},
    }
    assert ex.signed("POST", "/api/v3/order/test", params | {"price": "0.50005"}) == (
        400, {"code": -1013, "msg": "Filter failure: PRICE_FILTER"})
    assert ex.orders() == {}


def test_timestamps_in_microseconds_and_decimal_recv_windows(ex: Exchange) -> None:
    now_us = time.time_ns() // 1000
    assert ex.signed("GET", "/api/v3/account", {}, stamp=now_us)[0] == 200
    assert ex.signed("GET", "/api/v3/account", {}, recv_window="5000.5")[0] == 200
    stale = {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."}
    assert ex.signed("GET", "/api/v3/account", {}, stamp=now_us - 2_000_000, recv_window="1000") == (400, stale)
    # 1.5 ms late with a 1.499 ms window: only µs resolution on both sides tells
    assert ex.signed("GET", "/api/v3/account", {}, stamp=time.time_ns() // 1000 - 1500, recv_window="1.499") == (400, stale)
    assert ex.signed("GET", "/api/v3/account", {}, recv_window="60000.001")[1]["code"] == -1131
    ahead = ex.signed("GET", "/api/v3/account", {}, stamp=time.time_ns() // 1000 + 3_000_000)
    assert ahead == (400, {"code": -1021, "msg": "Timestamp for this request was 1000ms ahead of the server's time."})


# --- crashes and faults ----------------------------------------------------------------------------


def test_state_survives_kill_9_and_fills_continue(ex: Exchange, market: Market) -> None:
    c = ex.client()
    c.new_order("XRPUSDT", "BUY", "0.5", "20", "b1")
    market.wait_subscribed("XRPUSDT")
    c.new_order("XRPUSDT", "BUY", "0.4", "20", "b2")
    c.new_order("XRPUSDT", "SELL", "0.9", "30", "s1")
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.45"))
    orders, balances = ex.orders(), ex.balances()
    assert orders["b1"]["status"] == "FILLED"

    assert ex.kill(signal.SIGKILL) == -signal.SIGKILL
    ex.start()
    assert ex.orders() == orders and ex.balances() == balances
    market.wait_subscribed("XRPUSDT")  # restored for the symbol with resting orders
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.3"))
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.95"))
    assert c.get_order("XRPUSDT", "b2").status == "FILLED"  # same client, new process behind it
    assert c.get_order("XRPUSDT", "s1").status == "FILLED"
    ids = [o["orderId"] for o in ex.get("/paper/orders")]
    # ids never reused (0.13: within 0.2× the average)
    assert c.new_order("XRPUSDT", "BUY", "0.13", "50", "b3").order_id == max(ids) + 1
    assert_balances_follow_fills(ex)
    assert ex.kill(signal.SIGTERM) == 0  # a clean stop is exit 0


def test_accept_then_timeout_is_outcome_unknown_and_the_order_exists(ex: Exchange) -> None:
    c = ex.client()
    c.server_time()
    ex.faults(accept_then_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown):
        c.new_order("XRPUSDT", "BUY", "0.5", "20", "t1")
    assert time.monotonic() - started < 1.0
    ex.faults()
    found = c.get_order("XRPUSDT", "t1")
    assert (found.status, found.quantity) == ("NEW", "20.00000000")
    assert ex.orders()["t1"]["receivedNs"] > 0


def test_other_faults(ex: Exchange) -> None:
    c = ex.client()
    c.server_time()
    ex.faults(accept_then_5xx=1.0)
    with pytest.raises(OutcomeUnknown):
        c.new_order("XRPUSDT", "BUY", "0.5", "20", "f1")
    ex.faults(drop_connection=1.0)
    with pytest.raises(OutcomeUnknown):
        c.new_order("XRPUSDT", "BUY", "0.5", "20", "f2")
    ex.faults(stale_timestamp=1.0)
    with pytest.raises(BinanceError) as stale:
        c.new_order("XRPUSDT", "BUY", "0.5", "20", "f3")
    assert stale.value.code == -1021  # resynced and retried once, then given up
    ex.faults(rate_limit_429=1.0, retry_after_seconds=0)
    with pytest.raises(RateLimited) as limited:
        c.new_order("XRPUSDT", "BUY", "0.5", "20", "f4")
    assert not limited.value.banned and limited.value.retry_after == 0
    ex.faults(ban_418=1.0, retry_after_seconds=3)
    with pytest.raises(RateLimited) as banned:
        c.new_order("XRPUSDT", "BUY", "0.5", "20", "f5")
    assert banned.value.banned and banned.value.retry_after == 3
    ex.faults()
    with pytest.raises(RateLimited):
        c.get_order("XRPUSDT", "f1")  # the client itself holds back during the ban
    fresh = ex.client()
    assert fresh.get_order("XRPUSDT", "f1").status == "NEW"  # 5XX after accepting: it is there
    with pytest.raises(UnknownOrder):
        fresh.get_order("XRPUSDT", "f2")  # dropped before processing: it is not
    assert set(ex.orders()) == {"f1"}


def test_faults_are_deterministic_for_a_seed(ex: Exchange) -> None:
    def pattern() -> list[bool]:
        ex.faults(rate_limit_429=0.5, retry_after_seconds=0, seed=7)
        c = ex.client()
        c.server_time()
        hits = []
        for i in range(12):
            try:
                c.open_orders("XRPUSDT")  # not an order request: never faulted, draws nothing
                c.new_order("XRPUSDT", "BUY", "0.1", "50", f"d{len(ex.orders())}-{i}")
                hits.append(False)
            except RateLimited:
                hits.append(True)
        return hits

    first = pattern()
    assert any(first) and not all(first)
    assert pattern() == first


# --- the process ------------------------------------------------------------------------------


def test_serves_on_an_inherited_listening_socket(start: Callable[..., Exchange]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        ex = start(listener=listener)  # paper.port in its config is another, unbound port
        assert ex.client().exchange_info("XRPUSDT")["symbols"][0]["symbol"] == "XRPUSDT"
        assert ex.kill(signal.SIGTERM) == 0


def test_a_taken_user_data_stream_port_stops_it_with_one_line(tmp_path: Path, market: Market) -> None:
    """Alone, it binds the stream's port itself (naived.ops.listen, as naived's root does)."""
    ex = Exchange(tmp_path, f"ipc://{tmp_path / 'market.sock'}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ex.ws_port))
        taken.listen(1)
        assert ex.spawn().wait(10) == 1
    lines = [line for line in ex.log().splitlines() if line.strip()]
    assert lines == [f"paper exchange: cannot listen on 127.0.0.1:{ex.ws_port} for the user data stream: "
                     "Address already in use (set [paper] ws_port)"]


def _refused_state(ex: Exchange) -> str:
    """Start on the existing state file; it must exit at once, with one line naming the file."""
    proc = ex.spawn()
    assert proc.wait(10) == 1
    lines = [line for line in ex.log().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_corrupt_state_file_stops_it_and_is_left_as_it_was(ex: Exchange) -> None:
    c = ex.client()
    c.new_order("XRPUSDT", "BUY", "0.5", "20", "kept")
    assert ex.kill(signal.SIGTERM) == 0
    path = ex.dir / "state" / "paper-exchange.sqlite"
    (ex.dir / "paper-exchange.log").write_text("")

    garbage = b"this is not a database" * 300
    path.write_bytes(garbage)
    line = _refused_state(ex)
    assert str(path) in line and "move it aside" in line
    assert path.read_bytes() == garbage

    # An intact SQLite file holding a value the book cannot read: refused the same way.
    (ex.dir / "paper-exchange.log").write_text("")
    path.unlink()
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); "
                     "INSERT INTO meta VALUES ('initialized', '1');"
                     "CREATE TABLE balances (asset TEXT PRIMARY KEY, free TEXT NOT NULL, locked TEXT NOT NULL);"
                     "INSERT INTO balances VALUES ('USDT', 'lots', '0');")
    db.close()

    def rows() -> list[str]:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return list(db.iterdump())

    before = rows()
    assert str(path) in _refused_state(ex)
    assert rows() == before  # what was committed is still there (the journal mode may have changed)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_state_file_stops_it(ex: Exchange) -> None:
    assert ex.kill(signal.SIGTERM) == 0
    path = ex.dir / "state" / "paper-exchange.sqlite"
    (ex.dir / "paper-exchange.log").write_text("")
    path.chmod(0)
    try:
        assert str(path) in _refused_state(ex)
    finally:
        path.chmod(0o600)


# --- exchange-side faults ----------------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["late_accept_5xx", "late_accept_timeout"])
def test_late_acceptance_answers_unknown_then_places_the_order_later(ex: Exchange, answer: str) -> None:
    c = ex.client()
    c.server_time()
    ex.faults(**{answer: 1.0, "late_accept_seconds": 1.0})
    sent = time.monotonic()
    with pytest.raises(OutcomeUnknown):
        c.new_order("XRPUSDT", "BUY", "0.5", "20", "late")
    ex.faults()
    with pytest.raises(UnknownOrder):
        ex.client().get_order("XRPUSDT", "late")  # not in the book while the answer is "unknown"
    assert time.monotonic() - sent < 1.0, "too slow to see the gap; the assertion above proved nothing"
    placed = wait_for("the late order", lambda: ex.orders().get("late"))
    assert time.monotonic() - sent >= 1.0
    assert (placed["status"], placed["origQty"]) == ("NEW", "20.00000000")
    assert ex.balances()["USDT"] == {"free": Decimal("9990"), "locked": Decimal("10")}


def test_a_late_order_is_refused_if_its_client_order_id_is_open_by_then(ex: Exchange) -> None:
    c = ex.client()
    c.server_time()
    ex.faults(late_accept_5xx=1.0, late_accept_seconds=0.5)
    with pytest.raises(OutcomeUnknown):
        c.new_order("XRPUSDT", "BUY", "0.5", "20", "twice")
    ex.faults()
    c.new_order("XRPUSDT", "BUY", "0.5", "20", "twice")  # a client that did not wait out the window
    wait_for("the late order to be refused", lambda: "twice, accepted late, was refused: Duplicate order sent." in ex.log())
    assert len(ex.get("/paper/orders")) == 1


def test_late_accept_seconds_stays_within_binances_window(ex: Exchange) -> None:
    r = ex.http.post(f"{ex.url}/paper/faults", json={"late_accept_seconds": 10.5}, timeout=5)
    assert r.status_code == 400 and "late_accept_seconds" in r.json()["msg"]


@pytest.mark.parametrize("fault,status", [("exchange_cancel", "CANCELED"), ("exchange_expire", "EXPIRED")])
def test_the_exchange_cancels_or_expires_an_open_order(ex: Exchange, market: Market, fault: str, status: str) -> None:
    c = ex.client()
    c.new_order("XRPUSDT", "SELL", "0.9", "30", "s1")
    market.wait_subscribed("XRPUSDT")
    ex.faults(**{fault: 1.0})
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.5"))  # crosses nothing
    found = wait_for(f"s1 {status}", lambda: (o := c.get_order("XRPUSDT", "s1")).status == status and o)
    assert found.executed_qty == "0.00000000"
    assert ex.balances()["XRP"] == {"free": Decimal("100"), "locked": Decimal(0)}


def test_usage_counts_every_request_at_binances_weight(ex: Exchange) -> None:
    before = ex.get("/paper/usage")
    assert ex.get("/paper/usage") == before  # inspection is free
    ex.signed("GET", "/api/v3/myTrades", {"symbol": "XRPUSDT", "orderId": "1"})  # 5 with orderId
    ex.signed("GET", "/api/v3/myTrades", {"symbol": "XRPUSDT"})  # 20
    ex.signed("GET", "/api/v3/openOrders", {"symbol": "XRPUSDT"})  # 6
    ex.signed("GET", "/api/v3/openOrders", {})  # 80: every symbol
    ex.faults(ban_418=1.0, retry_after_seconds=1)
    status, _ = ex.signed("POST", "/api/v3/order", order("BUY", "0.5", "20", "u1"))  # refused, still counted
    assert status == 418
    assert ex.http.get(f"{ex.url}/api/v3/nothing", timeout=5).status_code == 404
    after = ex.get("/paper/usage")
    assert after["requests"] - before["requests"] == 5
    assert after["weight"] - before["weight"] == 5 + 20 + 6 + 80 + 1
    assert sum(after["minutes"].values()) == after["weight"]
    # Every answer by method, path and status (what another bot asked, and got); not /paper/ ones.
    answers = {k: n - before["answers"].get(k, 0) for k, n in after["answers"].items()}
    assert {k: n for k, n in answers.items() if n} == {
        "GET /api/v3/myTrades 200": 2, "GET /api/v3/openOrders 200": 2, "POST /api/v3/order 418": 1,
        "GET /api/v3/nothing 404": 1}


def test_usage_answers_keep_a_bounded_number_of_paths() -> None:
    usage = Usage()
    for i in range(MAX_ANSWER_KEYS + 10):
        usage.answered("GET", f"/api/v3/no{i}", 404)
    usage.answered("GET", "/api/v3/no0", 404)  # a key already counted keeps counting
    answers = usage.counted()["answers"]
    assert isinstance(answers, dict)
    assert len(answers) == MAX_ANSWER_KEYS + 1 and answers[OTHER] == 10 and answers["GET /api/v3/no0 404"] == 2


# --- PERCENT_PRICE_BY_SIDE and the average price ----------------------------------------------


def test_percent_price_by_side_refuses_a_price_far_from_the_average_as_binance_does(ex: Exchange, market: Market) -> None:
    """XRPUSDT's band (Binance's exchangeInfo): a BUY within 0.2× to 5× the average, a SELL too."""
    follow(ex, market)
    assert ex.get("/api/v3/avgPrice?symbol=XRPUSDT") == {"mins": 5, "price": "0.00000000", "closeTime": 0}
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.5", "1000"))
    average = ex.get("/api/v3/avgPrice?symbol=XRPUSDT")
    assert (average["mins"], average["price"]) == (5, "0.50000000") and average["closeTime"] > 0
    refused = (400, {"code": -1013, "msg": "Filter failure: PERCENT_PRICE_BY_SIDE"})
    assert post(ex, side="BUY", type="LIMIT", timeInForce="GTC", price="0.0999", quantity="60") == refused
    assert post(ex, side="SELL", type="LIMIT", timeInForce="GTC", price="2.5001", quantity="20") == refused
    assert post(ex, side="BUY", type="LIMIT_MAKER", price="0.0999", quantity="60") == refused
    assert ex.signed("POST", "/api/v3/order/test", order("BUY", "0.0999", "60", "t1")) == refused
    # the band's ends are in it
    assert post(ex, side="BUY", type="LIMIT", timeInForce="GTC", price="0.1", quantity="60", newClientOrderId="low")[0] == 200
    assert post(ex, side="SELL", type="LIMIT", timeInForce="GTC", price="2.5", quantity="20", newClientOrderId="high")[0] == 200
    # MARKET orders have no price: not this filter's
    assert post(ex, side="BUY", type="MARKET", quantity="20")[0] == 200
    # volume-weighted: 1000 at 0.5 and 3000 at 1.3 average 1.1, so 0.2× is 0.22
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "1.3", "3000"))
    assert ex.get("/api/v3/avgPrice?symbol=XRPUSDT")["price"] == "1.10000000"
    assert post(ex, side="BUY", type="LIMIT", timeInForce="GTC", price="0.2199", quantity="30") == refused
    assert post(ex, side="BUY", type="LIMIT", timeInForce="GTC", price="0.22", quantity="30", newClientOrderId="low2")[0] == 200
    assert {"low", "high", "low2"} <= set(ex.orders()) and len(ex.orders()) == 4  # nothing refused was placed


def test_exchange_info_lists_percent_price_by_side_with_binances_values(ex: Exchange) -> None:
    ours = {f["filterType"]: f for f in ex.get("/api/v3/exchangeInfo?symbol=XRPUSDT")["symbols"][0]["filters"]}
    assert ours["PERCENT_PRICE_BY_SIDE"] == {"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": "5",
                                             "bidMultiplierDown": "0.2", "askMultiplierUp": "5",
                                             "askMultiplierDown": "0.2", "avgPriceMins": 5}
    # The same as Binance lists, for every TRADING symbol of samples/exchangeInfo.json.
    real = {s["symbol"]: {f["filterType"]: f for f in s["filters"]}["PERCENT_PRICE_BY_SIDE"]
            for s in json.loads(EXCHANGE_INFO.read_text())["symbols"] if s["status"] == "TRADING"}
    listed = {entry["symbol"]: entry for entry in ex.get("/api/v3/exchangeInfo")["symbols"]}
    for symbol, band in real.items():
        assert {f["filterType"]: f for f in listed[symbol]["filters"]}["PERCENT_PRICE_BY_SIDE"] == band, symbol


def test_the_average_price_window(tmp_path: Path) -> None:
    """The book's clock drives it: the volume-weighted average of the last avgPriceMins minutes, the
    last trade's price once none is left in the window, nothing before the first trade."""
    from naived.core.symbols import lookup
    from naived.paper.book import NewOrder, PaperBook, Rejected

    now = [1_700_000_000_000]
    book = PaperBook(Path(":memory:"), {"USDT": Decimal("10000")}, clock=lambda: now[0])
    f = lookup("XRPUSDT")
    assert f is not None and f.avg_price_mins == 5

    def buy(price: str) -> str:
        try:
            book.check(f, NewOrder("BUY", "LIMIT", "GTC", "x", 0, Decimal(price), Decimal("100")))
            return "ok"
        except Rejected as exc:
            return exc.msg

    assert book.average_price(f) is None and buy("0.0999") == "ok"  # no trade yet: not evaluated
    book.on_trade(f, Decimal("1"), Decimal("10"), 1)
    now[0] += 200_000
    book.on_trade(f, Decimal("2"), Decimal("30"), 2)
    assert book.average_price(f) == (Decimal("1.75"), now[0])
    assert buy("0.3499") == "Filter failure: PERCENT_PRICE_BY_SIDE" and buy("0.35") == "ok"
    now[0] += 103_000  # the first trade is over 5 minutes old (and past its 3 s slice)
    assert book.average_price(f) == (Decimal("2"), now[0] - 103_000)
    assert buy("0.3999") == "Filter failure: PERCENT_PRICE_BY_SIDE" and buy("0.4") == "ok"
    now[0] += 3_600_000  # no trade in the window: the last trade's price
    assert book.average_price(f) == (Decimal("2"), now[0] - 3_703_000)
    assert buy("0.3999") == "Filter failure: PERCENT_PRICE_BY_SIDE"


# --- POST /api/v3/order/cancelReplace --------------------------------------------------------------


def cancel_replace(ex: Exchange, mode: str, cancel: dict[str, str], **new: str) -> tuple[int, Any]:
    """A cancelReplace on XRPUSDT: `cancel` names the order, `new` is the new order's parameters."""
    return ex.signed("POST", "/api/v3/order/cancelReplace",
                     {"symbol": "XRPUSDT", "cancelReplaceMode": mode, **cancel, **new})


LIMIT_BUY = {"side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "20"}


def test_cancel_replace_cancels_and_places_as_binance_answers(ex: Exchange, market: Market) -> None:
    c = ex.client()
    old = c.new_order("XRPUSDT", "BUY", "0.4", "20", "cr-old")
    before = ex.get("/paper/usage")
    status, body = cancel_replace(ex, "STOP_ON_FAILURE", {"cancelOrderId": str(old.order_id), "cancelNewClientOrderId": "cr-x"},
                           **LIMIT_BUY, price="0.45", newClientOrderId="cr-new")
    assert status == 200, body
    assert (body["cancelResult"], body["newOrderResult"]) == ("SUCCESS", "SUCCESS")
    cancelled, placed = body["cancelResponse"], body["newOrderResponse"]
    # the cancel's answer is DELETE /api/v3/order's; the new order's POST /api/v3/order's (LIMIT: FULL)
    assert (cancelled["orderId"], cancelled["origClientOrderId"], cancelled["clientOrderId"], cancelled["status"]) == (
        old.order_id, "cr-old", "cr-x", "CANCELED")
    assert (placed["clientOrderId"], placed["status"], placed["price"], placed["fills"]) == (
        "cr-new", "NEW", "0.45000000", [])
    assert {o: v["status"] for o, v in ex.orders().items()} == {"cr-old": "CANCELED", "cr-new": "NEW"}
    assert ex.balances()["USDT"] == {"free": Decimal("10000") - Decimal("9"), "locked": Decimal("9")}
    after = ex.get("/paper/usage")
    assert after["weight"] - before["weight"] == 1  # Binance's weight for it
    # newOrderRespType and cancelOrigClientOrderId, as for the endpoints they stand for
    status, body = cancel_replace(ex, "STOP_ON_FAILURE", {"cancelOrigClientOrderId": "cr-new"}, **LIMIT_BUY, price="0.44",
                           newClientOrderId="cr-ack", newOrderRespType="ACK")
    assert status == 200 and set(body["newOrderResponse"]) == {
        "symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}
    assert body["cancelResponse"]["origClientOrderId"] == "cr-new" and body["cancelResponse"]["clientOrderId"]


def test_cancel_replace_failures_answer_2021_or_2022_with_both_halves(ex: Exchange, market: Market) -> None:
    follow(ex, market)
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.5"))
    unknown = {"code": -2011, "msg": "Unknown order sent."}
    # the cancel fails, STOP_ON_FAILURE: nothing is attempted, 400 -2022
    assert cancel_replace(ex, "STOP_ON_FAILURE", {"cancelOrigClientOrderId": "none"}, **LIMIT_BUY, price="0.4",
                   newClientOrderId="never") == (400, {
        "code": -2022, "msg": "Order cancel-replace failed.",
        "data": {"cancelResult": "FAILURE", "newOrderResult": "NOT_ATTEMPTED", "cancelResponse": unknown,
                 "newOrderResponse": None}})
    assert "never" not in ex.orders()
    # the cancel fails, ALLOW_FAILURE: the new order is placed all the same, 409 -2021
    status, body = cancel_replace(ex, "ALLOW_FAILURE", {"cancelOrigClientOrderId": "none"}, **LIMIT_BUY, price="0.4",
                           newClientOrderId="placed", newOrderRespType="ACK")
    assert (status, body["code"], body["msg"]) == (409, -2021, "Order cancel-replace partially failed.")
    assert (body["data"]["cancelResult"], body["data"]["newOrderResult"], body["data"]["cancelResponse"]) == (
        "FAILURE", "SUCCESS", unknown)
    assert body["data"]["newOrderResponse"]["clientOrderId"] == "placed" and ex.orders()["placed"]["status"] == "NEW"
    # the cancel succeeds, the new order is refused by the engine (a LIMIT_MAKER that would take): 409 -2021
    status, body = cancel_replace(ex, "STOP_ON_FAILURE", {"cancelOrigClientOrderId": "placed"}, side="BUY", type="LIMIT_MAKER",
                           quantity="20", price="0.6", newClientOrderId="taker")
    assert (status, body["code"], body["data"]["cancelResult"], body["data"]["newOrderResult"]) == (
        409, -2021, "SUCCESS", "FAILURE")
    assert body["data"]["cancelResponse"]["status"] == "CANCELED"
    assert body["data"]["newOrderResponse"] == {"code": -2010, "msg": "Order would immediately match and take."}
    assert ex.orders()["placed"]["status"] == "CANCELED" and "taker" not in ex.orders()
    # both fail, ALLOW_FAILURE: 400 -2022
    status, body = cancel_replace(ex, "ALLOW_FAILURE", {"cancelOrderId": "999"}, side="BUY", type="LIMIT_MAKER",
                           quantity="20", price="0.6")
    assert (status, body["code"], body["data"]["cancelResult"], body["data"]["newOrderResult"]) == (
        400, -2022, "FAILURE", "FAILURE")
    # parameters and filters are checked before anything is done: a plain error, the order stays
    ex.client().new_order("XRPUSDT", "BUY", "0.4", "20", "stays")
    assert cancel_replace(ex, "STOP_ON_FAILURE", {"cancelOrigClientOrderId": "stays"}, **LIMIT_BUY, price="0.40005") == (
        400, {"code": -1013, "msg": "Filter failure: PRICE_FILTER"})
    assert cancel_replace(ex, "STOP_ON_FAILURE", {}, **LIMIT_BUY, price="0.4") == (400, {
        "code": -1102, "msg": "Param 'cancelOrigClientOrderId' or 'cancelOrderId' must be sent, but both were empty/null!"})
    assert cancel_replace(ex, "", {"cancelOrigClientOrderId": "stays"}, **LIMIT_BUY, price="0.4")[1]["code"] == -1102
    assert cancel_replace(ex, "STOP_ON_FAILURE", {"cancelOrigClientOrderId": "stays", "cancelRestrictions": "ONLY_OLD"},
                   **LIMIT_BUY, price="0.4") == (400, {"code": -1145, "msg": "Invalid cancelRestrictions"})
    # cancelRestrictions: a NEW order is not PARTIALLY_FILLED, so the cancel fails
    status, body = cancel_replace(ex, "STOP_ON_FAILURE", {"cancelOrigClientOrderId": "stays",
                                                   "cancelRestrictions": "ONLY_PARTIALLY_FILLED"}, **LIMIT_BUY, price="0.4")
    assert (status, body["data"]["cancelResponse"]) == (
        400, {"code": -2011, "msg": "Order was not canceled due to cancel restrictions."})
    assert ex.orders()["stays"]["status"] == "NEW"
    assert ex.signed("DELETE", "/api/v3/order", {"symbol": "XRPUSDT", "origClientOrderId": "stays",
                                                 "cancelRestrictions": "ONLY_NEW"})[1]["status"] == "CANCELED"
    assert_balances_follow_fills(ex)


# --- unfilled order count ------------------------------------------------------------------------


def test_order_answers_carry_the_unfilled_order_count(ex: Exchange, market: Market) -> None:
    """X-MBX-ORDER-COUNT-10S/-1D on every order placed (rest-api.md, "Unfilled Order Count"): +1 an
    order, -1 when it first fills (faqs/order_count_decrement.md); not on other answers."""
    follow(ex, market)
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.5"))
    first_window = int(time.time()) // 10

    def counts(method: str, path: str, params: dict[str, str]) -> tuple[int, int] | None:
        query = urlencode({**params, "timestamp": int(time.time() * 1000)})
        r = ex.http.request(method, f"{ex.url}{path}?{query}&signature={signature(SECRET, query)}",
                            headers={"X-MBX-APIKEY": KEY}, timeout=5)
        if "X-MBX-ORDER-COUNT-1D" not in r.headers:
            assert "X-MBX-ORDER-COUNT-10S" not in r.headers
            return None
        in_10s, in_day = int(r.headers["X-MBX-ORDER-COUNT-10S"]), int(r.headers["X-MBX-ORDER-COUNT-1D"])
        # within one 10 s window both count the same orders; a later window has counted fewer
        assert in_10s == in_day if int(time.time()) // 10 == first_window else in_10s <= in_day
        return in_10s, in_day

    def day(method: str, path: str, params: dict[str, str]) -> int | None:
        got = counts(method, path, params)
        return None if got is None else got[1]

    assert day("POST", "/api/v3/order", order("BUY", "0.48", "20", "A")) == 1  # rests
    assert day("POST", "/api/v3/order", order("BUY", "0.495", "20", "B")) == 2  # rests
    assert day("POST", "/api/v3/order", order("BUY", "0.6", "20", "C")) == 2  # filled at once: +1 -1
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.49"))  # B's first fill, as a maker: -1
    assert day("POST", "/api/v3/order", order("BUY", "0.4", "20", "D")) == 2
    assert day("POST", "/api/v3/order", order("BUY", "0.4", "200000", "E")) is None  # refused: not counted
    # a cancelReplace counts its new order even when it was not attempted
    assert day("POST", "/api/v3/order/cancelReplace", {"symbol": "XRPUSDT", "cancelReplaceMode": "STOP_ON_FAILURE",
                                                        "cancelOrigClientOrderId": "none", **LIMIT_BUY, "price": "0.4"}) == 3
    assert day("POST", "/api/v3/order/cancelReplace", {"symbol": "XRPUSDT", "cancelReplaceMode": "STOP_ON_FAILURE",
                                                        "cancelOrigClientOrderId": "D", **LIMIT_BUY, "price": "0.41"}) == 4
    assert day("GET", "/api/v3/order", {"symbol": "XRPUSDT", "origClientOrderId": "D"}) is None
    assert day("DELETE", "/api/v3/order", {"symbol": "XRPUSDT", "origClientOrderId": "A"}) is None
    assert day("POST", "/api/v3/order/test", order("BUY", "0.4", "20", "T")) is None


def test_the_unfilled_order_count_by_window() -> None:
    now = [86400.0 * 20000 + 5]  # 5 s into a UTC day and into a 10 s window
    count = OrderCount(clock=lambda: now[0])
    placed = PaperOrder(1, "XRPUSDT", "a", "BUY", Decimal("0.4"), Decimal(20), 0, 0)
    fill = Fill(Decimal("0.4"), Decimal(5), 1, 0, Decimal(0), "XRP", True, 1)
    first, second = replace(placed, fills=[fill]), replace(placed, fills=[fill, fill])

    def changes(*pairs: tuple[PaperOrder, str]) -> list[Change]:
        return [Change(o, kind, fill if kind == "TRADE" else None, {}, 0) for o, kind in pairs]

    assert count.headers() == {"X-MBX-ORDER-COUNT-10S": "0", "X-MBX-ORDER-COUNT-1D": "0"}
    count.on_changes(changes((placed, "NEW"), (placed, "NEW"), (placed, "CANCELED"), (placed, "EXPIRED")))
    assert count.headers() == {"X-MBX-ORDER-COUNT-10S": "2", "X-MBX-ORDER-COUNT-1D": "2"}
    count.on_changes(changes((first, "TRADE"), (second, "TRADE")))  # only the first fill counts
    assert count.headers() == {"X-MBX-ORDER-COUNT-10S": "1", "X-MBX-ORDER-COUNT-1D": "1"}
    now[0] += 5  # the next 10 s window
    count.add(2)
    assert count.headers() == {"X-MBX-ORDER-COUNT-10S": "2", "X-MBX-ORDER-COUNT-1D": "3"}
    count.on_changes(changes((first, "TRADE"), (first, "TRADE"), (first, "TRADE")))  # never below 0
    assert count.headers() == {"X-MBX-ORDER-COUNT-10S": "0", "X-MBX-ORDER-COUNT-1D": "0"}
    count.add(1)
    now[0] += 86400  # the next UTC day
    assert count.headers() == {"X-MBX-ORDER-COUNT-10S": "0", "X-MBX-ORDER-COUNT-1D": "0"}

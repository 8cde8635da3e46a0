"""The paper exchange's user data stream, over a real websocket, against a real paper exchange process.

Binance's user-data-stream.md is the specification: listen keys (POST/PUT/DELETE
/api/v3/userDataStream), `executionReport` with its exact field set, `outboundAccountPosition`
for the balances a change moved, `listenKeyExpired`, and the `user_stream_drop` fault.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import websocket
from recorded import BTC_TAPE
from test_paper_exchange import Exchange, Market, ex, market, order, start, wait_for  # noqa: F401 - fixtures

from naived.exchange.binance import BinanceError

# Every field Binance's executionReport carries for an order of the types the paper exchange
# implements (the conditional ones for trailing stops, strategies, STP and SOR never apply;
# `W` does: every order here is working from its placement).
REPORT_FIELDS = {"e", "E", "s", "c", "S", "o", "f", "q", "p", "P", "F", "g", "C", "x", "X", "r", "i", "l", "z", "L",
                 "n", "N", "T", "t", "I", "w", "m", "M", "O", "Z", "Y", "Q", "W", "V"}


class Stream:
    """A websocket-client connection to /ws/<listenKey>, with deadlines on every read."""

    def __init__(self, url: str, key: str) -> None:
        self.ws = websocket.create_connection(f"{url}/ws/{key}", timeout=5)

    def next(self, timeout: float = 5.0) -> dict[str, Any]:
        self.ws.settimeout(timeout)
        text = self.ws.recv()
        assert text, "the stream closed"
        return json.loads(text)

    def report(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next executionReport, skipping nothing else: an account position must follow it
        only where a balance moved, which the callers check."""
        event = self.next(timeout)
        assert event["e"] == "executionReport", event
        assert set(event) == REPORT_FIELDS, set(event) ^ REPORT_FIELDS
        return event

    def position(self) -> dict[str, dict[str, str]]:
        event = self.next()
        assert event["e"] == "outboundAccountPosition", event
        assert set(event) == {"e", "E", "u", "B"}
        return {b["a"]: {"free": b["f"], "locked": b["l"]} for b in event["B"]}

    def close_frame(self, timeout: float = 5.0) -> int:
        """Read until the server closes; the close code (1006: dropped without a close frame)."""
        self.ws.settimeout(timeout)
        try:
            while True:
                opcode, frame = self.ws.recv_data_frame(True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return int.from_bytes(frame.data[:2], "big") if frame.data else 1005
        except websocket.WebSocketConnectionClosedException:
            return 1006

    def close(self) -> None:
        self.ws.close()


def listen_key(ex: Exchange) -> str:
    r = ex.http.post(f"{ex.url}/api/v3/userDataStream", headers={"X-MBX-APIKEY": "paper-key"}, timeout=5)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"listenKey"}
    return r.json()["listenKey"]


def keyed(ex: Exchange, method: str, key: str, api_key: str = "paper-key") -> tuple[int, Any]:
    r = ex.http.request(method, f"{ex.url}/api/v3/userDataStream", params={"listenKey": key},
                        headers={"X-MBX-APIKEY": api_key}, timeout=5)
    return r.status_code, r.json()


def balances_now(ex: Exchange, assets: set[str]) -> dict[str, dict[str, str]]:
    return {a: b for a, b in ex.get("/paper/balances").items() if a in assets}


# --- listen keys -----------------------------------------------------------------------------


def test_listen_keys_as_binance_manages_them(ex: Exchange) -> None:
    assert ex.http.post(f"{ex.url}/api/v3/userDataStream", timeout=5).json() == {"code": -2014, "msg": "API-key format invalid."}
    assert keyed(ex, "POST", "", api_key="other")[1]["code"] == -2015
    key = listen_key(ex)
    assert len(key) == 60 and key.isalnum()
    assert listen_key(ex) == key  # the account's active key is returned (and extended), not a second one
    assert keyed(ex, "PUT", key) == (200, {})
    assert keyed(ex, "PUT", "nope") == (400, {"code": -1125, "msg": "This listenKey does not exist."})
    no_key = ex.http.put(f"{ex.url}/api/v3/userDataStream", headers={"X-MBX-APIKEY": "paper-key"}, timeout=5)
    assert no_key.json()["code"] == -1102
    c = ex.client()  # the exchange client speaks the same endpoints
    assert c.new_listen_key() == key
    c.keepalive_listen_key(key)

    stream = Stream(ex.ws_url, key)
    assert keyed(ex, "DELETE", key) == (200, {})
    assert stream.close_frame() == 1000  # closed normally, no listenKeyExpired
    with pytest.raises(BinanceError) as gone:
        c.keepalive_listen_key(key)
    assert (gone.value.code, gone.value.msg) == (-1125, "This listenKey does not exist.")
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        Stream(ex.ws_url, key)
    assert refused.value.status_code == 400
    assert c.new_listen_key() != key


# --- events ----------------------------------------------------------------------------------


def test_a_resting_buy_new_partial_fills_and_filled(start: Callable[..., Exchange], market: Market) -> None:
    ex = start("partial_fills = true")
    stream = Stream(ex.ws_url, listen_key(ex))
    c = ex.client()
    placed_at = int(time.time() * 1000)
    placed = c.new_order("XRPUSDT", "BUY", "0.5", "20", "ud-buy")
    new = stream.report()
    assert {k: new[k] for k in ("e", "s", "c", "S", "o", "f", "q", "p", "P", "F", "g", "C", "x", "X", "r", "i", "l", "z",
                                "L", "n", "N", "t", "w", "m", "M", "Z", "Y", "Q", "V")} == {
        "e": "executionReport", "s": "XRPUSDT", "c": "ud-buy", "S": "BUY", "o": "LIMIT", "f": "GTC", "q": "20.00000000",
        "p": "0.50000000", "P": "0.00000000", "F": "0.00000000", "g": -1, "C": "", "x": "NEW", "X": "NEW", "r": "NONE",
        "i": placed.order_id, "l": "0.00000000", "z": "0.00000000", "L": "0.00000000", "n": "0", "N": None, "t": -1,
        "w": True, "m": False, "M": False, "Z": "0.00000000", "Y": "0.00000000", "Q": "0.00000000", "V": "NONE"}
    assert new["O"] == new["T"] == new["W"] and abs(new["O"] - placed_at) < 2000 and new["E"] >= new["T"]
    assert stream.position() == {"USDT": {"free": "9990.00000000", "locked": "10.00000000"}}

    market.wait_subscribed("XRPUSDT")
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.49", "8"))  # crosses it for 8 of its 20
    part = stream.report()
    assert {k: part[k] for k in ("c", "x", "X", "l", "z", "L", "n", "N", "Z", "Y", "w", "m")} == {
        "c": "ud-buy", "x": "TRADE", "X": "PARTIALLY_FILLED", "l": "8.00000000", "z": "8.00000000", "L": "0.50000000",
        "n": "0.00800000", "N": "XRP", "Z": "4.00000000", "Y": "4.00000000", "w": True, "m": True}
    assert part["t"] > 0 and part["I"] > new["I"]
    assert stream.position() == {"USDT": {"free": "9990.00000000", "locked": "6.00000000"},
                                 "XRP": {"free": "107.99200000", "locked": "0.00000000"}}

    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.48", "100"))
    done = stream.report()
    assert {k: done[k] for k in ("x", "X", "l", "z", "Z", "Y", "n", "N", "w")} == {
        "x": "TRADE", "X": "FILLED", "l": "12.00000000", "z": "20.00000000", "Z": "10.00000000", "Y": "6.00000000",
        "n": "0.01200000", "N": "XRP", "w": False}
    assert done["t"] == part["t"] + 1
    assert stream.position() == balances_now(ex, {"USDT", "XRP"})
    # What the stream said adds up to what REST says: a pushed fill needs no myTrades call.
    trades = c.my_trades("XRPUSDT", placed.order_id)
    assert [(t.trade_id, t.qty, t.commission, t.commission_asset) for t in trades] == [
        (part["t"], part["l"], part["n"], "XRP"), (done["t"], done["l"], done["n"], "XRP")]
    stream.close()


def test_marketable_cancelled_and_expired_orders(ex: Exchange, market: Market) -> None:
    stream = Stream(ex.ws_url, listen_key(ex))
    c = ex.client()
    c.new_order("XRPUSDT", "SELL", "0.9", "20", "ud-rest")  # rests: no trade seen yet
    assert stream.report()["x"] == "NEW"
    assert stream.position() == {"XRP": {"free": "80.00000000", "locked": "20.00000000"}}
    assert ex.signed("DELETE", "/api/v3/order", {"symbol": "XRPUSDT", "origClientOrderId": "ud-rest",
                                                 "newClientOrderId": "ud-cancel"})[0] == 200
    cancel = stream.report()
    # Binance names the cancel request in `c` and the cancelled order in `C`.
    assert {k: cancel[k] for k in ("c", "C", "x", "X", "z", "w")} == {
        "c": "ud-cancel", "C": "ud-rest", "x": "CANCELED", "X": "CANCELED", "z": "0.00000000", "w": False}
    assert stream.position() == {"XRP": {"free": "100.00000000", "locked": "0.00000000"}}

    market.wait_subscribed("XRPUSDT")
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.5"))
    ex.signed("POST", "/api/v3/order", {**order("BUY", "0.4", "20", "ud-ioc"), "timeInForce": "IOC"})
    assert [stream.report()["x"], (e := stream.report())["x"], e["X"], e["w"]] == ["NEW", "EXPIRED", "EXPIRED", False]
    # nothing moved: no account position

    taker = c.new_order("XRPUSDT", "BUY", "0.6", "20", "ud-taker")  # marketable: fills at once at 0.5
    assert taker.status == "FILLED"
    assert stream.report()["x"] == "NEW"
    fill = stream.report()
    assert {k: fill[k] for k in ("x", "X", "L", "l", "m", "n", "N", "p")} == {
        "x": "TRADE", "X": "FILLED", "L": "0.50000000", "l": "20.00000000", "m": False, "n": "0.02000000", "N": "XRP",
        "p": "0.60000000"}
    assert stream.position() == balances_now(ex, {"USDT", "XRP"})
    stream.close()


def test_the_exchange_cancelling_an_order_reports_the_cancel(ex: Exchange, market: Market) -> None:
    stream = Stream(ex.ws_url, listen_key(ex))
    ex.client().new_order("XRPUSDT", "BUY", "0.3", "20", "ud-victim")
    stream.report(), stream.position()
    market.wait_subscribed("XRPUSDT")
    ex.faults(exchange_cancel=1.0)
    ex.processed("XRPUSDT", market.trade("XRPUSDT", "0.5"))
    cancel = stream.report()
    assert (cancel["x"], cancel["C"]) == ("CANCELED", "ud-victim") and cancel["c"] not in ("", "ud-victim")
    stream.close()


# --- expiry, keep-alive, lifetime, faults ---------------------------------------------------------


def test_a_key_lives_while_kept_alive_then_expires_with_listen_key_expired(start: Callable[..., Exchange]) -> None:
    ex = start("listen_key_seconds = 1.0")
    key = listen_key(ex)
    stream = Stream(ex.ws_url, key)
    kept_until = time.monotonic() + 2.5  # past two validities: only the keep-alives hold it
    while time.monotonic() < kept_until:
        assert keyed(ex, "PUT", key) == (200, {})
        time.sleep(0.3)  # the keep-alive cadence under test, well inside the 1 s validity
    ex.client().new_order("XRPUSDT", "BUY", "0.3", "20", "ud-alive")
    assert stream.report()["c"] == "ud-alive"
    stream.position()
    stopped = time.monotonic()
    expired = stream.next(timeout=3.0)
    assert set(expired) == {"e", "E", "listenKey"}
    assert expired["e"] == "listenKeyExpired" and expired["listenKey"] == key and expired["E"].isdigit()
    assert 0.5 < time.monotonic() - stopped < 2.0
    assert stream.close_frame() == 1000
    assert keyed(ex, "PUT", key)[1]["code"] == -1125
    assert listen_key(ex) != key


def test_a_connection_ends_at_its_lifetime(start: Callable[..., Exchange]) -> None:
    ex = start("user_stream_connection_seconds = 0.5")
    stream = Stream(ex.ws_url, listen_key(ex))
    began = time.monotonic()
    assert stream.close_frame() == 1000
    assert 0.4 < time.monotonic() - began < 3.0


def test_user_stream_drop_loses_the_event_and_the_connection(ex: Exchange) -> None:
    key = listen_key(ex)
    other = Stream(ex.ws_url, key)
    ex.faults(user_stream_drop=1.0)
    dropped = Stream(ex.ws_url, key)
    c = ex.client()
    c.new_order("XRPUSDT", "BUY", "0.3", "20", "ud-lost")
    assert dropped.close_frame() == 1006  # no close frame: a network failure
    assert other.close_frame() == 1006
    ex.faults(user_stream_drop=0.0)
    again = Stream(ex.ws_url, key)  # the key is still valid: reconnecting is enough
    c.new_order("XRPUSDT", "BUY", "0.3", "20", "ud-after")
    assert again.report()["c"] == "ud-after"  # the lost event is not replayed
    again.close()


def test_ws_port_is_validated() -> None:
    from naived.core.config import ConfigError, parse_config

    for text, message in [("ws_port = 0", "paper.ws_port: must be a TCP port 1-65535, got 0"),
                          ("ws_port = 70000", "paper.ws_port: must be a TCP port 1-65535, got 70000"),
                          ("port = 6000\nws_port = 6000", "paper.ws_port: must differ from port (6000)"),
                          ("listen_key_seconds = 0", "paper.listen_key_seconds: must be > 0")]:
        with pytest.raises(ConfigError) as info:
            parse_config(f"[paper]\n{text}\n".encode())
        assert message in str(info.value), info.value
    with pytest.raises(ConfigError, match="paper.faults.user_stream_drop: must be a probability"):
        parse_config(b"[paper.faults]\nuser_stream_drop = 2\n")


def tape_trades(path: Path) -> list[tuple[str, str]]:
    """(price, quantity) of the tape's trades, in the order Binance sent them."""
    out = []
    with gzip.open(path, "rt") as f:
        for line in f:
            frame = json.loads(line.split(" ", 1)[1])
            if str(frame.get("stream", "")).endswith("@trade"):  # depth updates and others are skipped
                out.append((frame["data"]["p"], frame["data"]["q"]))
    return out


def test_every_fill_of_a_replayed_real_tape_is_pushed_in_order(start: Callable[..., Exchange], market: Market) -> None:
    trades = tape_trades(BTC_TAPE)  # samples/: 2,927 trades
    first, low = Decimal(trades[0][0]), min(Decimal(p) for p, _ in trades)
    ex = start("partial_fills = true")
    stream = Stream(ex.ws_url, listen_key(ex))
    c = ex.client()
    # Eight buys, two at each of four prices between the tape's first price and its lowest: the tape
    # crosses each price at its own time, with real quantities, so orders fill in parts, as makers,
    # and one trade can fill both orders of a price (two changes in one commit, in time priority).
    step = (first - low) / 5
    ids = []
    for i in range(1, 9):
        price = (first - step * ((i + 1) // 2)).quantize(Decimal("0.01"))
        ids.append(c.new_order("BTCUSDT", "BUY", str(price), "0.01000", f"tape-{i}").order_id)
        assert stream.report()["x"] == "NEW"
        stream.position()
    market.wait_subscribed("BTCUSDT")
    last = 0
    for n, (price, qty) in enumerate(trades, 1):
        last = market.trade("BTCUSDT", price, qty)
        if n % 200 == 0:  # a PUB drops what its subscriber has not taken past 1,000 messages
            ex.processed("BTCUSDT", last)
    ex.processed("BTCUSDT", last)
    pushed = []
    while True:
        try:
            event = stream.next(timeout=1.0)
        except websocket.WebSocketTimeoutException:
            break
        if event["e"] == "executionReport":
            pushed.append(event)
    fills = [e for e in pushed if e["x"] == "TRADE"]
    assert len(fills) > 8, "the tape filled too little to test anything"
    # Every fill REST knows of was pushed, once, with the same trade, quantity, price and commission...
    at_rest = sorted((t.trade_id, i, t.qty, t.price, t.commission) for i in ids for t in c.my_trades("BTCUSDT", i))
    assert sorted((e["t"], e["i"], e["l"], e["L"], e["n"]) for e in fills) == at_rest
    # ...in the order the exchange made them, each order's cumulative quantity growing to FILLED.
    assert [e["t"] for e in fills] == sorted(e["t"] for e in fills)
    for k, order_id in enumerate(ids, 1):
        mine = [e for e in fills if e["i"] == order_id]
        assert [Decimal(e["z"]) for e in mine] == sorted({Decimal(e["z"]) for e in mine})
        state = c.get_order("BTCUSDT", f"tape-{k}")
        if mine:
            assert (mine[-1]["X"], Decimal(mine[-1]["z"])) == (state.status, Decimal(state.executed_qty))
    stream.close()

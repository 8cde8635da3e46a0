"""The Binance client against a scripted HTTP server on 127.0.0.1 (real sockets, in a thread)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from naived.core.config import ConfigError, parse_config
from naived.exchange import binance as exchange
from naived.exchange.binance import BinanceClient, BinanceError, OutcomeUnknown, RateLimited, UnknownOrder, signature
from naived.exchange.budget import Limits, LocalBudget

SECRET = "test-secret-do-not-leak"
KEY = "test-api-key"
ORDER = {
    "symbol": "XRPUSDT", "orderId": 7, "orderListId": -1, "clientOrderId": "cid-1", "transactTime": 1,
    "price": "0.50000000", "origQty": "20.00000000", "executedQty": "0.00000000", "cummulativeQuoteQty": "0.00000000",
    "status": "NEW", "timeInForce": "GTC", "type": "LIMIT", "side": "BUY", "workingTime": 1, "selfTradePreventionMode": "NONE",
}


class Script:
    """What the stub answers: per path, a queue of (status, body, headers); when empty, 200 `default`."""

    def __init__(self) -> None:
        self.answers: dict[str, list[tuple[int, Any, dict[str, str]]]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, raw path with query, headers
        self.server_time = int(time.time() * 1000)

    def add(self, path: str, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.answers.setdefault(path, []).append((status, body, headers or {}))

    def count(self, path: str) -> int:
        return sum(1 for _, p, _ in self.requests if urlsplit(p).path == path)


def _stub_handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def _answer(self) -> None:
            script.requests.append((self.command, self.path, dict(self.headers)))
            path = urlsplit(self.path).path
            queue = script.answers.get(path)
            if queue:
                status, body, headers = queue.pop(0)
            elif path == "/api/v3/time":
                status, body, headers = 200, {"serverTime": script.server_time}, {}
            else:
                status, body, headers = 200, ORDER if path == "/api/v3/order" else {}, {}
            if status == 0:  # hang past the client's timeout
                time.sleep(float(body))
                self.close_connection = True
                return
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-MBX-USED-WEIGHT-1M", str(len(script.requests)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def stub() -> Iterator[tuple[Script, BinanceClient]]:
    script = Script()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _stub_handler(script))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    client = BinanceClient(f"http://127.0.0.1:{server.server_address[1]}", KEY, SECRET, timeout=0.5)
    try:
        yield script, client
    finally:
        client.close()
        server.shutdown()
        server.server_close()


def test_signature_matches_binance_published_example() -> None:
    secret = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
    payload = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
    assert signature(secret, payload) == "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"


def test_signed_order_request_shape(stub: tuple[Script, BinanceClient]) -> None:
    script, client = stub
    order = client.new_order("XRPUSDT", "BUY", "0.5", "20", "cid-1")
    assert order.client_order_id == "cid-1" and order.price == "0.50000000" and order.quantity == "20.00000000"
    assert order.status == "NEW" and order.order_id == 7 and order.executed_qty == "0.00000000"
    # the server time was fetched lazily, once, before the first signed request
    assert [urlsplit(p).path for _, p, _ in script.requests] == ["/api/v3/time", "/api/v3/order"]
    method, raw, headers = script.requests[-1]
    assert method == "POST" and headers["X-MBX-APIKEY"] == KEY
    query = urlsplit(raw).query
    payload, _, sig = query.rpartition("&signature=")
    assert signature(SECRET, payload) == sig  # signature last, over the exact query string
    params = dict(parse_qsl(payload))
    assert params["type"] == "LIMIT" and params["timeInForce"] == "GTC" and params["newOrderRespType"] == "FULL"
    assert params["newClientOrderId"] == "cid-1" and params["recvWindow"] == "5000"
    assert abs(int(params["timestamp"]) - script.server_time) < 5000
    assert client.used_weight == 2


def test_cancel_reports_the_original_client_order_id(stub: tuple[Script, BinanceClient]) -> None:
    script, client = stub
    script.add("/api/v3/order", 200, ORDER | {"status": "CANCELED", "origClientOrderId": "cid-1", "clientOrderId": "cancel-9"})
    assert client.cancel_order("XRPUSDT", "cid-1").client_order_id == "cid-1"
    assert script.requests[-1][0] == "DELETE"


def test_error_mapping(stub: tuple[Script, BinanceClient]) -> None:
    script, client = stub
    script.add("/api/v3/order", 400, {"code": -2010, "msg": "Account has insufficient balance for requested action."})
    with pytest.raises(BinanceError) as info:
        client.new_order("XRPUSDT", "BUY", "0.5", "20", "cid-1")
    assert (info.value.code, info.value.msg) == (-2010, "Account has insufficient balance for requested action.")
    assert not isinstance(info.value, UnknownOrder)

    script.add("/api/v3/order", 400, {"code": -2013, "msg": "Order does not exist."})
    with pytest.raises(UnknownOrder) as unknown:
        client.get_order("XRPUSDT", "cid-1")
    assert unknown.value.code == -2013

    script.add("/api/v3/order", 503, {"code": -1007, "msg": "Timeout waiting for response from backend server."})
    with pytest.raises(OutcomeUnknown):
        client.new_order("XRPUSDT", "BUY", "0.5", "20", "cid-1")

    script.add("/api/v3/openOrders", 403, b"<html>forbidden</html>")
    with pytest.raises(BinanceError) as waf:
        client.open_orders("XRPUSDT")
    assert waf.value.code == 0 and "403" in waf.value.msg

    script.add("/api/v3/order", 0, "1.0")  # no answer within the client's 0.5 s
    with pytest.raises(OutcomeUnknown):
        client.new_order("XRPUSDT", "BUY", "0.5", "20", "cid-1")


def test_stale_timestamp_resyncs_and_retries_once(stub: tuple[Script, BinanceClient]) -> None:
    script, client = stub
    client.server_time()
    stale = {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."}
    script.add("/api/v3/order", 400, stale)
    assert client.new_order("XRPUSDT", "BUY", "0.5", "20", "cid-1").status == "NEW"
    assert script.count("/api/v3/time") == 2 and script.count("/api/v3/order") == 2

    script.add("/api/v3/order", 400, stale)
    script.add("/api/v3/order", 400, stale)
    with pytest.raises(BinanceError) as info:
        client.get_order("XRPUSDT", "cid-1")
    assert info.value.code == -1021 and script.count("/api/v3/order") == 4  # once retried, not more


def test_429_raises_with_retry_after(stub: tuple[Script, BinanceClient]) -> None:
    script, client = stub
    script.add("/api/v3/ping", 429, {"code": -1003, "msg": "Too much request weight used"}, {"Retry-After": "0"})
    with pytest.raises(RateLimited) as info:
        client.ping()
    assert info.value.retry_after == 0 and not info.value.banned
    client.ping()  # Retry-After 0: nothing holds the next call back


def test_418_ban_blocks_every_request_until_retry_after(stub: tuple[Script, BinanceClient]) -> None:
    script, client = stub
    client.server_time()
    script.add("/api/v3/order", 418, {"code": -1003, "msg": "Way too much request weight used; IP banned"}, {"Retry-After": "1"})
    started = time.monotonic()
    with pytest.raises(RateLimited) as info:
        client.new_order("XRPUSDT", "BUY", "0.5", "20", "cid-1")
    assert info.value.banned and info.value.retry_after == 1
    sent = len(script.requests)
    for call in (client.ping, lambda: client.get_order("XRPUSDT", "cid-1"), client.account):
        with pytest.raises(RateLimited) as again:
            call()
        assert again.value.banned and 0 < again.value.retry_after <= 1
    assert len(script.requests) == sent  # refused locally: the banned IP sent nothing
    deadline = time.monotonic() + 3
    while True:
        try:
            client.ping()
            break
        except RateLimited:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert time.monotonic() - started >= 1.0


def test_secrets_stay_out_of_reprs_and_errors(stub: tuple[Script, BinanceClient]) -> None:
    script, client = stub
    script.add("/api/v3/order", 400, {"code": -1022, "msg": "Signature for this request is not valid."})
    with pytest.raises(BinanceError) as info:
        client.new_order("XRPUSDT", "BUY", "0.5", "20", "cid-1")
    script.add("/api/v3/order", 0, "1.0")
    with pytest.raises(OutcomeUnknown) as unknown:
        client.new_order("XRPUSDT", "BUY", "0.5", "20", "cid-2")
    for text in (repr(client), str(client.__dict__), str(info.value), repr(info.value), str(unknown.value)):
        assert SECRET not in text and KEY not in text


def _config(tmp_path: Path, key_file: str = "", target: str = "binance") -> Any:
    # runtime_dir: client_for maps the host's rate budget there
    return parse_config(f'[paths]\nruntime_dir = "{tmp_path}"\n[naived]\nexchange = "{target}"\n'
                        f'[exchange]\nkey_file = "{key_file}"\n'.encode())


def test_key_file_must_be_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BINANCE_API_KEY", raising=False)
    monkeypatch.delenv("BINANCE_API_SECRET", raising=False)
    key_file = tmp_path / "binance.keys"
    key_file.write_text("API_KEY=file-key-123\nAPI_SECRET=file-secret-456\n")
    key_file.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        exchange.client_for(_config(tmp_path, str(key_file)))
    message = str(info.value)
    assert str(key_file) in message and "0644" in message and "0600" in message and "\n" not in message
    assert "file-key-123" not in message and "file-secret-456" not in message

    key_file.chmod(0o600)
    client = exchange.client_for(_config(tmp_path, str(key_file), "binance-testnet"))
    assert client.base_url == "https://testnet.binance.vision"
    assert "file-secret-456" not in repr(client)

    with pytest.raises(ConfigError, match="BINANCE_API_KEY"):
        exchange.client_for(_config(tmp_path))
    monkeypatch.setenv("BINANCE_API_KEY", "env-key")
    monkeypatch.setenv("BINANCE_API_SECRET", "env-secret")
    assert exchange.client_for(_config(tmp_path)).base_url == "https://api.binance.com"


def test_paper_target_uses_paper_settings(tmp_path: Path) -> None:
    config = parse_config(
        f"[paths]\nruntime_dir = '{tmp_path}'\n[paper]\nport = 6123\napi_key = 'k'\napi_secret = 's'\n".encode())
    client = exchange.client_for(config)
    assert client.base_url == "http://127.0.0.1:6123"
    assert b"\r\nX-MBX-APIKEY: k\r\n" in client._http._fixed  # never the BINANCE_API_KEY of the environment


def test_an_order_past_its_not_after_is_not_sent(stub: tuple[Script, BinanceClient]) -> None:
    """A process paused between being allowed to send and sending (trader.SEND_WITHIN) sends nothing."""
    script, client = stub
    client.server_time()
    with pytest.raises(exchange.Stale):
        client.new_order("XRPUSDT", "BUY", "0.5", "20", "cid-1", not_after=time.monotonic() - 0.001)
    assert script.count("/api/v3/order") == 0
    # The refused attempt spent none of the order budget: the one order this 10 s allows still goes.
    client.budget = LocalBudget(Limits(orders_per_10s=1))
    with pytest.raises(exchange.Stale):
        client.new_order("XRPUSDT", "BUY", "0.5", "20", "cid-1", not_after=time.monotonic() - 0.001)
    assert client.new_order("XRPUSDT", "BUY", "0.5", "20", "cid-1", not_after=time.monotonic() + 5).order_id == 7
    assert script.count("/api/v3/order") == 1
    # Paused after the budget and before the stamp (here: a slow budget): still not sent.
    slow = LocalBudget()
    acquire = slow.acquire
    slow.acquire = lambda *a, **k: (time.sleep(0.05), acquire(*a, **k))[1]  # type: ignore[method-assign]  # a pause
    client.budget = slow
    with pytest.raises(exchange.Stale):
        client.new_order("XRPUSDT", "BUY", "0.5", "20", "cid-1", not_after=time.monotonic() + 0.02)
    assert script.count("/api/v3/order") == 1

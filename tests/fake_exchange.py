"""A fake Binance spot REST exchange for tests that need what the paper exchange cannot do (yet).

A real HTTP server on 127.0.0.1 (stdlib, one thread per request, TCP_NODELAY), speaking the
few endpoints a naived trading one symbol uses, in Binance's shapes. No signature checks.
Scripted behaviour:

- `late_accept`: the first POST of each client order id is answered
  `503 {"code": -1007, "msg": "Timeout waiting for response from backend server. ..."}` and the
  order appears (NEW) only `late_after` seconds later, as Binance's matching engine may do;
  until then `GET /api/v3/order` says -2013. Any later POST of that id is accepted at once.

Every POST is recorded (`posts`: client order id -> count) for the test to check.

    with FakeExchange(late_after=2.0) as fake:
        ... naived with exchange = "binance-testnet", testnet_url = fake.url ...
        assert fake.posts[cid] == 1
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from naived.core.symbols import lookup
from naived.paper.shapes import exchange_info_entry

TIMEOUT_1007 = {"code": -1007,
                "msg": "Timeout waiting for response from backend server. Send status unknown; execution status unknown."}
UNKNOWN_ORDER = {"code": -2013, "msg": "Order does not exist."}


class FakeExchange:
    def __init__(self, late_after: float) -> None:
        self.late_after = late_after
        self.lock = threading.Lock()
        self.orders: dict[str, dict[str, Any]] = {}  # client order id -> order JSON
        self.visible_at: dict[str, float] = {}  # client order id -> monotonic time it appears
        self.posts: dict[str, int] = {}
        self.next_id = 1
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer(*fake.handle("GET", self.path, b""))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer(*fake.handle("POST", self.path, body))

            def do_DELETE(self) -> None:
                self._answer(404, {"code": -1, "msg": "not here"})

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-MBX-USED-WEIGHT-1M", "1")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeExchange:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def _visible(self, cid: str) -> dict[str, Any] | None:
        if cid in self.orders and time.monotonic() >= self.visible_at[cid]:
            return self.orders[cid]
        return None

    def handle(self, method: str, target: str, body: bytes) -> tuple[int, Any]:
        url = urlsplit(target)
        params = {k: v[0] for k, v in parse_qs(url.query + "&" + body.decode()).items()}
        with self.lock:
            if url.path == "/api/v3/time":
                return 200, {"serverTime": int(time.time() * 1000)}
            if url.path == "/api/v3/exchangeInfo":
                f = lookup(params.get("symbol", ""))
                return 200, {"symbols": [exchange_info_entry(f)] if f else []}
            if url.path == "/api/v3/order" and method == "POST":
                return self._new_order(params)
            if url.path == "/api/v3/order":
                order = self._visible(params.get("origClientOrderId", ""))
                return (200, order) if order else (400, UNKNOWN_ORDER)
            if url.path == "/api/v3/openOrders":
                return 200, [o for cid in self.orders if (o := self._visible(cid))]
            if url.path == "/api/v3/myTrades":
                return 200, []
            return 404, {"code": -1, "msg": f"no {method} {url.path} here"}

    def _new_order(self, params: dict[str, str]) -> tuple[int, Any]:
        cid = params["newClientOrderId"]
        first = cid not in self.posts
        self.posts[cid] = self.posts.get(cid, 0) + 1
        now = time.monotonic()
        order = {
            "symbol": params["symbol"], "orderId": self.next_id, "orderListId": -1, "clientOrderId": cid,
            "price": params["price"], "origQty": params["quantity"], "executedQty": "0", "cummulativeQuoteQty": "0",
            "status": "NEW", "timeInForce": "GTC", "type": "LIMIT", "side": params["side"],
            "time": int(time.time() * 1000), "updateTime": int(time.time() * 1000), "transactTime": int(time.time() * 1000),
        }
        self.next_id += 1
        if first:  # taken in, answered -1007, decided by the matching engine later
            self.orders[cid] = order
            self.visible_at[cid] = now + self.late_after
            return 503, TIMEOUT_1007
        if self._visible(cid) is not None:
            return 400, {"code": -2010, "msg": "Duplicate order sent."}
        self.orders[f"{cid}#{self.posts[cid]}"] = order  # a second order under the same id
        self.visible_at[f"{cid}#{self.posts[cid]}"] = now
        return 200, order | {"fills": []}

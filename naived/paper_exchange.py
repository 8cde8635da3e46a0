"""The paper exchange: Binance's spot REST API on 127.0.0.1, filled by the public trade stream.

The book's BinanceMock as its own process. `run(config)` serves until SIGTERM/SIGINT.

Binance endpoints (same paths, parameters in the query string and/or a form body,
same JSON shapes, statuses, error codes and messages, `X-MBX-USED-WEIGHT-1M` header):

    GET    /api/v3/ping, /api/v3/time, /api/v3/exchangeInfo[?symbol=|?symbols=]
    POST   /api/v3/order        LIMIT GTC; newOrderRespType ACK | RESULT | FULL   (signed)
    GET    /api/v3/order        by orderId or origClientOrderId                  (signed)
    DELETE /api/v3/order        by orderId or origClientOrderId                  (signed)
    GET    /api/v3/openOrders[?symbol=]                                          (signed)
    GET    /api/v3/myTrades?symbol=&orderId=[&fromId=&limit=]                    (signed)
    GET    /api/v3/account                                                       (signed)

Signed requests are checked like Binance does: `X-MBX-APIKEY` must be
`paper.api_key`, the HMAC-SHA256 `signature` (key `paper.api_secret`) must match the
query string followed by the body, and `timestamp` must be within `recvWindow`.
Not implemented: order types other than LIMIT, time in force other than GTC,
commissions (always 0), rate limits other than the injected faults.

Fills: resting orders are matched by `naived.paper_book` against the trade events
streamerd publishes (topic `TRADE_EVENTS:<SYMBOL>`); a symbol is subscribed when its
first order is placed, and at start for every symbol with open orders.

Inspection and control, unsigned (the server only listens on loopback):

    GET  /paper/orders[?symbol=]  every order ever placed, oldest first: the RESULT fields
                                  plus `time`, `updateTime`, `receivedNs` (wall clock in ns
                                  when the request line arrived) and `fills`
                                  [{price, qty, tradeId, time}]
    GET  /paper/balances          {asset: {"free": "...", "locked": "..."}}
    GET  /paper/market            {symbol: {"lastPrice", "lastTradeId", "trades"}}: trades
                                  processed so far (tests wait on `lastTradeId`)
    POST /paper/faults            JSON object of `config.Faults` fields: replaces the fault
                                  probabilities and reseeds the fault RNG; answers the faults

Faults (`paper.faults`, probabilities drawn once per new-order request, seeded RNG):
418/429 with `Retry-After`, -1021, drop the connection before processing, accept then
answer 503, accept then answer nothing until the client has timed out.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import random
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec
import zmq

from naived.config import Config, Faults
from naived.messages import decode_trade, trade_topic
from naived.paper_book import Fill, PaperBook, PaperOrder, Rejected
from naived.symbols import SymbolFilters, exchange_info_entry, table

log = logging.getLogger(__name__)

EIGHT = Decimal("0.00000001")
NUMBER_RE = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")
CLIENT_ID_RE = re.compile(r"^[a-zA-Z0-9-_]{1,36}$")
MAX_RECV_WINDOW = 60000
RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 50},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 160000},
]
Params = dict[str, str]
Reply = tuple[int, Any]


def _fmt(value: Decimal) -> str:
    """Binance prints amounts with 8 decimals."""
    return format(value.quantize(EIGHT), "f")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- Binance JSON shapes ---------------------------------------------------------------------


def _details(o: PaperOrder) -> dict[str, Any]:
    return {
        "price": _fmt(o.price),
        "origQty": _fmt(o.orig_qty),
        "executedQty": _fmt(o.executed_qty),
        "cummulativeQuoteQty": _fmt(o.cum_quote),
        "status": o.status,
        "timeInForce": "GTC",
        "type": "LIMIT",
        "side": o.side,
    }


def _placed_json(o: PaperOrder, kind: str) -> dict[str, Any]:
    """POST /api/v3/order, in the newOrderRespType asked for."""
    body: dict[str, Any] = {"symbol": o.symbol, "orderId": o.order_id, "orderListId": -1,
                            "clientOrderId": o.client_order_id, "transactTime": o.time_ms}
    if kind == "ACK":
        return body
    body |= _details(o) | {"workingTime": o.time_ms, "selfTradePreventionMode": "NONE"}
    if kind == "FULL":
        zero = _fmt(Decimal(0))
        body["fills"] = [_fill_json(f) | {"commission": zero, "commissionAsset": "USDT"} for f in o.fills]
    return body


def _query_json(o: PaperOrder) -> dict[str, Any]:
    """GET /api/v3/order and each entry of openOrders."""
    zero = _fmt(Decimal(0))
    return {"symbol": o.symbol, "orderId": o.order_id, "orderListId": -1, "clientOrderId": o.client_order_id} | _details(o) | {
        "stopPrice": zero, "icebergQty": zero, "time": o.time_ms, "updateTime": o.update_ms, "isWorking": True,
        "workingTime": o.time_ms, "origQuoteOrderQty": zero, "selfTradePreventionMode": "NONE",
    }


def _cancelled_json(o: PaperOrder, cancel_id: str) -> dict[str, Any]:
    """DELETE /api/v3/order: `clientOrderId` is the cancel request's own id."""
    return {"symbol": o.symbol, "origClientOrderId": o.client_order_id, "orderId": o.order_id, "orderListId": -1,
            "clientOrderId": cancel_id, "transactTime": o.update_ms} | _details(o) | {"selfTradePreventionMode": "NONE"}


def _fill_json(f: Fill) -> dict[str, Any]:
    return {"price": _fmt(f.price), "qty": _fmt(f.qty), "tradeId": f.trade_id}


def _inspection_json(o: PaperOrder) -> dict[str, Any]:
    return {"symbol": o.symbol, "orderId": o.order_id, "clientOrderId": o.client_order_id} | _details(o) | {
        "time": o.time_ms, "updateTime": o.update_ms, "receivedNs": o.received_ns,
        "fills": [_fill_json(f) | {"time": f.time_ms} for f in o.fills],
    }


def _generated_id() -> str:
    return "paper" + secrets.token_hex(8)


# --- parameters -----------------------------------------------------------------------------


def _mandatory(params: Params, name: str) -> str:
    value = params.get(name)
    if not value:
        raise Rejected(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return value


def _number(params: Params, name: str) -> Decimal:
    text = _mandatory(params, name)
    if not NUMBER_RE.match(text):
        raise Rejected(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^([0-9]{{1,20}})(\\.[0-9]{{1,20}})?$'.")
    return Decimal(text)


def _choice(params: Params, name: str, allowed: tuple[str, ...], default: str | None = None) -> str:
    value = params.get(name) or default or _mandatory(params, name)
    if value not in allowed:
        raise Rejected(-1100, f"Illegal characters found in parameter '{name}'; legal range is '{', '.join(allowed)}'.")
    return value


def _int(params: Params, name: str) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise Rejected(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.") from None


def _filters(symbol: str) -> SymbolFilters:
    f = table().get(symbol)
    if f is None:
        raise Rejected(-1121, "Invalid symbol.")
    return f


def _without_signature(raw: str) -> str:
    return "&".join(part for part in raw.split("&") if not part.startswith("signature="))


# --- the trade feed ---------------------------------------------------------------------------


class TradeFeed(threading.Thread):
    """Owns the SUB socket (a ZeroMQ socket belongs to one thread). Other threads ask for a
    symbol with `want()`; a pipe wakes the poll so the subscription is made at once."""

    def __init__(self, ctx: zmq.Context, endpoint: str, book: PaperBook) -> None:
        super().__init__(name="trade-feed", daemon=True)
        self._ctx = ctx
        self._endpoint = endpoint
        self._book = book
        self._wanted: set[str] = set()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._market: dict[str, dict[str, Any]] = {}  # symbol -> last price, last trade id, count

    def want(self, symbol: str) -> None:
        if symbol in self._wanted:  # the common case: no lock, no syscall
            return
        with self._lock:
            # Keep-alive HTTP threads outlive server.shutdown(): never write to a closed pipe.
            if not self._stopping:
                self._wanted.add(symbol)
                os.write(self._wake_w, b"s")

    def stop(self) -> None:
        with self._lock:
            if not self._stopping:
                self._stopping = True
                os.write(self._wake_w, b"x")

    def run(self) -> None:
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(self._endpoint)
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        subscribed: set[str] = set()
        try:
            while not self._stopping:
                ready = dict(poller.poll())
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                    with self._lock:
                        new = self._wanted - subscribed
                    for symbol in sorted(new):
                        sub.setsockopt(zmq.SUBSCRIBE, trade_topic(symbol))
                        log.info("subscribed to %s trades", symbol)
                    subscribed |= new
                if sub in ready:
                    while sub.poll(0, zmq.POLLIN):
                        self._on_message(sub.recv_multipart())
        finally:
            sub.close()
            with self._lock:
                self._stopping = True
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _on_message(self, frames: list[bytes]) -> None:
        try:
            event = decode_trade(frames[-1])
            price, qty = Decimal(event.p), Decimal(event.q)
        except (msgspec.DecodeError, InvalidOperation):
            log.warning("ignored an undecodable trade event on %r", frames[0][:40])
            return
        f = table().get(event.s)
        if f is None:
            return
        self._book.on_trade(f, price, qty, event.t)
        with self._lock:
            seen = self._market.setdefault(event.s, {"trades": 0})
            seen.update(lastPrice=event.p, lastTradeId=event.t, trades=seen["trades"] + 1)

    def market(self) -> dict[str, dict[str, Any]]:
        """What trades were processed, per symbol: tests wait on `lastTradeId` instead of sleeping."""
        with self._lock:
            return {symbol: dict(seen) for symbol, seen in self._market.items()}


# --- the HTTP API ------------------------------------------------------------------------------


class PaperExchange:
    """Request routing, Binance's checks, fault injection. Called from the HTTP threads."""

    def __init__(self, config: Config, book: PaperBook, feed: TradeFeed) -> None:
        self.book = book
        self.feed = feed
        self._key = config.paper.api_key
        self._mac = hmac.new(config.paper.api_secret.encode(), digestmod=hashlib.sha256)
        self._hang_seconds = config.exchange.timeout_seconds + 1.0  # outlive the client's timeout
        self._set_faults(config.paper.faults)
        self._weight_lock = threading.Lock()
        self._minute, self._weight = 0, 0
        self._symbols = {s: exchange_info_entry(f) for s, f in sorted(table().items())}
        # (method, path) -> (handler, request weight, signed)
        self.routes: dict[tuple[str, str], tuple[Callable[[Params, int], Reply], int, bool]] = {
            ("GET", "/api/v3/ping"): (lambda p, t: (200, {}), 1, False),
            ("GET", "/api/v3/time"): (lambda p, t: (200, {"serverTime": _now_ms()}), 1, False),
            ("GET", "/api/v3/exchangeInfo"): (self.exchange_info, 20, False),
            ("POST", "/api/v3/order"): (self.new_order, 1, True),
            ("GET", "/api/v3/order"): (self.get_order, 4, True),
            ("DELETE", "/api/v3/order"): (self.cancel_order, 1, True),
            ("GET", "/api/v3/openOrders"): (self.open_orders, 6, True),
            ("GET", "/api/v3/myTrades"): (self.my_trades, 5, True),
            ("GET", "/api/v3/account"): (self.account, 20, True),
            ("GET", "/paper/orders"): (self.paper_orders, 0, False),
            ("GET", "/paper/balances"): (self.paper_balances, 0, False),
            ("GET", "/paper/market"): (lambda p, t: (200, self.feed.market()), 0, False),
        }

    def _set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)

    def _count_weight(self, weight: int) -> int:
        with self._weight_lock:
            minute = int(time.time() // 60)
            if minute != self._minute:
                self._minute, self._weight = minute, 0
            self._weight += weight
            return self._weight

    def _draw_fault(self) -> str | None:
        f = self.faults
        r, total = self._rng.random(), 0.0
        for name in ("ban_418", "rate_limit_429", "stale_timestamp", "drop_connection", "accept_then_5xx", "accept_then_timeout"):
            total += getattr(f, name)
            if r < total:
                return name
        return None

    def check_signed(self, headers: Any, query: str, body: str, params: Params) -> None:
        """Binance's SIGNED checks: API key, timestamp within recvWindow, signature."""
        key = headers.get("X-MBX-APIKEY")
        if not key:
            raise Rejected(-2014, "API-key format invalid.", 401)
        if not hmac.compare_digest(key, self._key):
            raise Rejected(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        stamp = _int(params, "timestamp")
        if stamp is None:
            raise Rejected(-1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
        window = _int(params, "recvWindow") or 5000
        if window > MAX_RECV_WINDOW:
            raise Rejected(-1131, "recvWindow must be less than 60000")
        now = _now_ms()
        if stamp >= now + 1000:
            raise Rejected(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if now - stamp > window:
            raise Rejected(-1021, "Timestamp for this request is outside of the recvWindow.")
        signature = _mandatory(params, "signature")
        mac = self._mac.copy()
        mac.update((_without_signature(query) + _without_signature(body)).encode())
        if not hmac.compare_digest(mac.hexdigest(), signature.lower()):
            raise Rejected(-1022, "Signature for this request is not valid.")

    # --- endpoints -----------------------------------------------------------------------------

    def exchange_info(self, params: Params, received_ns: int) -> Reply:
        if "symbol" in params:
            names = [params["symbol"]]
        elif "symbols" in params:
            try:
                names = msgspec.json.decode(params["symbols"], type=list[str])
            except msgspec.DecodeError:
                raise Rejected(-1100, "Illegal characters found in parameter 'symbols'.") from None
        else:
            names = list(self._symbols)
        if any(n not in self._symbols for n in names):
            raise Rejected(-1121, "Invalid symbol.")
        return 200, {"timezone": "UTC", "serverTime": _now_ms(), "rateLimits": RATE_LIMITS, "exchangeFilters": [],
                     "symbols": [self._symbols[n] for n in names]}

    def new_order(self, params: Params, received_ns: int) -> Reply:
        f = _filters(_mandatory(params, "symbol"))
        side = _choice(params, "side", ("BUY", "SELL"))
        if _mandatory(params, "type") != "LIMIT":
            raise Rejected(-1116, "Invalid orderType.")  # the paper exchange only rests LIMIT orders
        if _mandatory(params, "timeInForce") != "GTC":
            raise Rejected(-1115, "Invalid timeInForce.")
        quantity, price = _number(params, "quantity"), _number(params, "price")
        kind = _choice(params, "newOrderRespType", ("ACK", "RESULT", "FULL"), default="FULL")
        client_id = params.get("newClientOrderId") or _generated_id()
        if not CLIENT_ID_RE.match(client_id):
            raise Rejected(-1100, "Illegal characters found in parameter 'newClientOrderId'; legal range is '^[a-zA-Z0-9-_]{1,36}$'.")
        order = self.book.place(f, side, price, quantity, client_id, received_ns)
        self.feed.want(f.symbol)
        return 200, _placed_json(order, kind)

    def _find(self, params: Params) -> tuple[SymbolFilters, int | None, str | None]:
        f = _filters(_mandatory(params, "symbol"))
        order_id, client_id = _int(params, "orderId"), params.get("origClientOrderId")
        if order_id is None and not client_id:
            raise Rejected(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        return f, order_id, client_id

    def get_order(self, params: Params, received_ns: int) -> Reply:
        f, order_id, client_id = self._find(params)
        order = self.book.find(f.symbol, order_id, client_id)
        if order is None:
            raise Rejected(-2013, "Order does not exist.")
        return 200, _query_json(order)

    def cancel_order(self, params: Params, received_ns: int) -> Reply:
        order = self.book.cancel(*self._find(params))
        return 200, _cancelled_json(order, params.get("newClientOrderId") or _generated_id())

    def my_trades(self, params: Params, received_ns: int) -> Reply:
        """The trades of one order (`symbol` + `orderId` [+ `fromId`], the one combination the
        bot uses). Commission 0, as everywhere on this exchange."""
        f = _filters(_mandatory(params, "symbol"))
        order_id = _int(params, "orderId")
        if order_id is None:
            raise Rejected(-1102, "Mandatory parameter 'orderId' was not sent, was empty/null, or malformed.")
        order = self.book.find(f.symbol, order_id, None)
        from_id = _int(params, "fromId") or 0
        trades = [
            {"symbol": f.symbol, "id": fill.trade_id, "orderId": order_id, "orderListId": -1, "price": _fmt(fill.price),
             "qty": _fmt(fill.qty), "quoteQty": _fmt(fill.price * fill.qty), "commission": _fmt(Decimal(0)),
             "commissionAsset": f.quote, "time": fill.time_ms, "isBuyer": order.side == "BUY", "isMaker": True,
             "isBestMatch": True}
            for fill in (order.fills if order is not None else []) if fill.trade_id >= from_id
        ]
        return 200, trades[: _int(params, "limit") or 500]

    def open_orders(self, params: Params, received_ns: int) -> Reply:
        symbol = params.get("symbol")
        if symbol:
            _filters(symbol)
        return 200, [_query_json(o) for o in self.book.open_orders(symbol)]

    def account(self, params: Params, received_ns: int) -> Reply:
        zero = _fmt(Decimal(0))
        balances = [{"asset": a, "free": _fmt(b.free), "locked": _fmt(b.locked)} for a, b in self.book.balance_sheet().items()]
        return 200, {
            "makerCommission": 0, "takerCommission": 0, "buyerCommission": 0, "sellerCommission": 0,
            "commissionRates": {"maker": zero, "taker": zero, "buyer": zero, "seller": zero},
            "canTrade": True, "canWithdraw": False, "canDeposit": False, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False, "updateTime": _now_ms(),
            "accountType": "SPOT", "balances": balances, "permissions": ["SPOT"], "uid": 0,
        }

    def paper_orders(self, params: Params, received_ns: int) -> Reply:
        return 200, [_inspection_json(o) for o in self.book.all_orders(params.get("symbol"))]

    def paper_balances(self, params: Params, received_ns: int) -> Reply:
        return 200, {a: {"free": _fmt(b.free), "locked": _fmt(b.locked)} for a, b in self.book.balance_sheet().items()}

    def set_faults(self, body: bytes) -> Reply:
        try:
            faults = msgspec.json.decode(body or b"{}", type=Faults)
        except msgspec.ValidationError as exc:
            raise Rejected(-1100, f"bad faults: {exc}") from None
        self._set_faults(faults)
        log.info("faults now %s", msgspec.json.encode(faults).decode())
        return 200, faults

    # --- one request ------------------------------------------------------------------------

    def handle(self, request: _Handler, method: str) -> None:
        url = urlsplit(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        if (method, url.path) == ("POST", "/paper/faults"):
            self._respond(request, *self._guarded(lambda: self.set_faults(body)), 0)
            return
        route = self.routes.get((method, url.path))
        if route is None:
            self._respond(request, 404, {"code": -1000, "msg": f"Unknown endpoint {method} {url.path}"}, 0)
            return
        handler, weight, signed = route
        used = self._count_weight(weight)
        form = body.decode("latin-1")
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        params.update(parse_qsl(form, keep_blank_values=True))
        fault = self._draw_fault() if (method, url.path) == ("POST", "/api/v3/order") else None
        if fault in ("ban_418", "rate_limit_429", "stale_timestamp", "drop_connection"):
            self._refuse(request, fault, used, params)
            return

        def call() -> Reply:
            if signed:
                self.check_signed(request.headers, url.query, form, params)
            return handler(params, request.received_ns)

        status, reply = self._guarded(call)
        if fault is None and status != 200 and (method, url.path) == ("POST", "/api/v3/order"):
            log.info("rejected %s %s: %s", params.get("symbol"), params.get("newClientOrderId"), reply.get("msg"))
        if fault == "accept_then_5xx" and status == 200:
            log.warning("fault: accepted %s, answering 503", params.get("newClientOrderId"))
            status, reply = 503, {"code": -1007, "msg": "Timeout waiting for response from backend server. Send status unknown; execution status unknown."}
        elif fault == "accept_then_timeout" and status == 200:
            log.warning("fault: accepted %s, answering nothing for %.1fs", params.get("newClientOrderId"), self._hang_seconds)
            time.sleep(self._hang_seconds)
            request.close_connection = True
            return
        self._respond(request, status, reply, used)

    def _guarded(self, call: Callable[[], Reply]) -> Reply:
        try:
            return call()
        except Rejected as exc:
            return exc.status, {"code": exc.code, "msg": exc.msg}
        except Exception:
            log.exception("internal error")
            return 500, {"code": -1000, "msg": "An unknown error occurred while processing the request."}

    def _refuse(self, request: _Handler, fault: str, used: int, params: Params) -> None:
        log.warning("fault %s on new order %s", fault, params.get("newClientOrderId"))
        if fault == "drop_connection":
            request.close_connection = True
            return
        retry = {"Retry-After": str(self.faults.retry_after_seconds)}
        if fault == "ban_418":
            until = _now_ms() + 1000 * self.faults.retry_after_seconds
            msg = f"Way too much request weight used; IP banned until {until}. Please use WebSocket Streams for live updates to avoid bans."
            self._respond(request, 418, {"code": -1003, "msg": msg}, used, retry)
        elif fault == "rate_limit_429":
            msg = "Too much request weight used; current limit is 6000 request weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API."
            self._respond(request, 429, {"code": -1003, "msg": msg}, used, retry)
        else:
            self._respond(request, 400, {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."}, used)

    def _respond(self, request: _Handler, status: int, reply: Any, used: int, extra: dict[str, str] | None = None) -> None:
        payload = msgspec.json.encode(reply)
        request.send_response(status)
        request.send_header("Content-Type", "application/json;charset=UTF-8")
        request.send_header("Content-Length", str(len(payload)))
        request.send_header("X-MBX-USED-WEIGHT-1M", str(used))
        for name, value in (extra or {}).items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(payload)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a trader's session reuses one connection
    disable_nagle_algorithm = True  # with Nagle on, every keep-alive request waits ~40 ms for an ACK
    wbufsize = 64 * 1024  # headers and body leave in one write (flushed after each request)
    server: _Server
    received_ns = 0

    def parse_request(self) -> bool:
        self.received_ns = time.time_ns()  # the request line has just been read
        return super().parse_request()

    def do_GET(self) -> None:
        self.server.app.handle(self, "GET")

    def do_POST(self) -> None:
        self.server.app.handle(self, "POST")

    def do_DELETE(self) -> None:
        self.server.app.handle(self, "DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # the exchange logs events (placed, filled, cancelled), not every request


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True  # restart on the same port right after a kill -9
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: PaperExchange, listener: socket.socket | None = None) -> None:
        self.app = app
        super().__init__(address, _Handler, bind_and_activate=listener is None)
        if listener is not None:  # bound and listening in naived's root, inherited across fork
            self.socket.close()
            self.socket = listener

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that died mid-request (a trader killed with -9) is not the exchange's error:
        one line, not socketserver's traceback on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            log.info("client %s:%d went away: %s", *client_address[:2], exc)
            return
        log.exception("request from %s:%d failed", *client_address[:2])


# --- the process -------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def run(config: Config, listener: socket.socket | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then return. Starts its own zmq context and threads.

    `listener`: a socket already bound and listening (naived's root binds it before READY and
    keeps it across restarts); None binds `paper.host:paper.port` here."""
    paper = config.paper
    if not _is_loopback(paper.host):
        raise SystemExit(f"paper exchange: paper.host {paper.host!r} is not a loopback address; refusing to serve unsigned inspection endpoints")
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before any thread exists, so every thread inherits the mask and the signals
    # wait for sigtimedwait below instead of interrupting a commit half way.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with ExitStack() as cleanup:
        cleanup.callback(signal.pthread_sigmask, signal.SIG_SETMASK, previous_mask)
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = config.state_dir / "paper-exchange.sqlite"
        book = PaperBook(path, paper.balances, fill_on_touch=paper.fill_on_touch, partial_fills=paper.partial_fills)
        cleanup.callback(book.close)
        ctx = zmq.Context()
        cleanup.callback(ctx.term)
        feed = TradeFeed(ctx, config.streamer.endpoint, book)
        server = _Server((paper.host, paper.port), PaperExchange(config, book, feed), listener)
        cleanup.callback(server.server_close)
        for symbol in book.symbols_with_open_orders():
            feed.want(symbol)
        feed.start()
        cleanup.callback(feed.join)
        cleanup.callback(feed.stop)
        serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True)
        serving.start()
        cleanup.callback(server.shutdown)
        log.info("paper exchange on %s (state %s, %d open orders), trades from %s", config.paper_url, path,
                 len(book.open_orders(None)), config.streamer.endpoint)
        while True:
            received = signal.sigtimedwait(stop_signals, 1.0)
            if received is not None:
                log.info("%s: stopping", signal.Signals(received.si_signo).name)
                return
            if not feed.is_alive() or not serving.is_alive():
                raise RuntimeError("paper exchange: a worker thread died; exiting so the supervisor restarts it")

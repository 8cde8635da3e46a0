"""The paper exchange: Binance's spot REST API on 127.0.0.1, filled by the public trade stream.

The book's BinanceMock as its own process. `run(config, listener)` serves until SIGTERM/SIGINT.
Binance's spot API documentation is the specification: same paths, parameters (query
string and/or form body), JSON shapes, statuses, error codes and messages, and the
`X-MBX-USED-WEIGHT-1M` header.

    GET    /api/v3/ping, /api/v3/time, /api/v3/exchangeInfo[?symbol=|?symbols=], /api/v3/avgPrice?symbol=
    POST   /api/v3/order        LIMIT (GTC, IOC, FOK), LIMIT_MAKER, MARKET by quantity or
                                quoteOrderQty; newOrderRespType ACK | RESULT | FULL    (signed)
    POST   /api/v3/order/test   the same checks, nothing placed; computeCommissionRates (signed)
    GET    /api/v3/order        by orderId or origClientOrderId                      (signed)
    DELETE /api/v3/order        by orderId or origClientOrderId                      (signed)
    GET    /api/v3/openOrders[?symbol=]   DELETE /api/v3/openOrders?symbol=          (signed)
    GET    /api/v3/allOrders, /api/v3/myTrades   (orderId/fromId, startTime, endTime, limit)
    GET    /api/v3/account, /api/v3/account/commission                              (signed)
    POST | PUT | DELETE /api/v3/userDataStream   listen keys (API key, no signature); the
                                stream itself: ws://<host>:<ws_port>/ws/<listenKey> (userstream.py)

Signed requests are checked like Binance does: `X-MBX-APIKEY` must be `paper.api_key`,
the HMAC-SHA256 `signature` (key `paper.api_secret`) must match the query string
followed by the body, and `timestamp` (ms, or µs) must be within `recvWindow` (ms, up to
three decimals, at most 60000) and not 1 s ahead. `startTime`/`endTime` are also taken in ms or
µs, and `X-MBX-TIME-UNIT: MICROSECOND` puts the time fields of the answers in µs (the book keeps
ms: whole milliseconds × 1000); any value but MILLISECOND/MICROSECOND (either case) is -1194.

Matching and commission are `naived.paper.book`'s (see its docstring): marketable orders
fill at once at the last trade price as takers, resting ones as makers when a later
trade crosses them, and every fill pays the maker or taker rate from the asset it gives
(or BNB at the discount). A symbol is subscribed when it is asked for in exchangeInfo
(`symbol`/`symbols`) or avgPrice, when its first order is placed, and at start for every
symbol with open orders.

Filters, as Binance applies them, with its error (-1013 "Filter failure: <name>"): PRICE_FILTER,
LOT_SIZE, PERCENT_PRICE_BY_SIDE (orders with a price: LIMIT, LIMIT_MAKER; the band is the
symbol table's multipliers around the book's average price, which GET /api/v3/avgPrice
answers), NOTIONAL.

Deliberate differences from Binance (the paper exchange is never kinder):
- The only book is the last public trade: its price is the best opposite price, and with
  `partial_fills` its quantity the liquidity; without a trade seen since start, limit
  orders rest and MARKET orders expire unfilled. Our orders do not move the market.
- Commission rounds up to 8 decimals; a commission in BNB converts at the last BNB<quote>
  trade seen (Binance does not say which price it uses).
- MARKET orders check the NOTIONAL minimum and the balance against the last trade price
  (Binance: the average price over `avgPriceMins`); MARKET_LOT_SIZE is LOT_SIZE.
- The average price is the trades' this process has seen (kept in memory, as the last
  price): after a restart PERCENT_PRICE_BY_SIDE is not evaluated until the symbol's first
  trade, and avgPrice answers price "0.00000000", closeTime 0 until then. Binance's newer
  "reference price" (which, when set, replaces the average in the filter) is not modelled.
- Not implemented, so not listed in exchangeInfo: stop and take-profit orders, iceberg
  orders, order lists (OCO/OTO), cancel-replace, SOR, self-trade prevention modes other
  than NONE, MAX_NUM_ORDERS; rate limits other than injected faults.

Inspection and control, unsigned (the server only listens on loopback):

    GET  /paper/orders[?symbol=]  every order ever placed, oldest first: the RESULT fields
                                  plus `time`, `updateTime`, `receivedNs` (wall clock in ns
                                  when the request line arrived) and `fills` [{price, qty,
                                  commission, commissionAsset, tradeId, time, isMaker,
                                  marketTradeId}]
    GET  /paper/balances          {asset: {"free": "...", "locked": "..."}}
    GET  /paper/market            {symbol: {"lastPrice", "lastTradeId", "trades"}}: trades
                                  processed so far (tests wait on `lastTradeId`)
    GET  /paper/usage             {"requests", "weight", "minutes": {epoch minute: weight}}:
                                  requests to Binance's paths and their weight since start,
                                  and the weight of each of the last 60 minutes; `dropped` and
                                  `stream_dropped`: connections and requests refused by the
                                  REST gate (`_Gate`) and the user data stream, by reason
    POST /paper/faults            JSON object of `config.Faults` fields: replaces the fault
                                  probabilities and reseeds the fault RNG; answers the faults
    POST /paper/trade             {"symbol", "price", "qty"}: a public trade the exchange matches
                                  on that no subscriber of the trade stream sees (an outage of
                                  the public stream): tests of fills that no trade announces

Faults (`paper.faults`, seeded RNGs). Drawn once per new-order request: 418/429 with
`Retry-After`, -1021, drop the connection before processing, accept then answer 503,
accept then answer nothing until the client has timed out, and late acceptance (answer
503 -1007 "execution status unknown", or nothing, while the order is NOT in the book, and
place it `late_accept_seconds` later). Drawn after each public trade of a symbol with open
orders: the exchange cancels, or expires, one of them.
"""

from __future__ import annotations

import hashlib
import hmac
import io
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
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec
import zmq

from naived.core.config import Config, Faults
from naived.core.config import Paper as PaperSettings
from naived.market.gate import MAX_MARKET_FRAME, TOPIC, DropLog, MarketGate
from naived.core.messages import TradeEvent, trade_topic
from naived.ops.listen import CannotListen, listen
from naived.ops.metrics import RateLimitedLog
from naived.paper.book import BNB_DISCOUNT, MAX_PRICE, Fees, Fill, NewOrder, PaperBook, PaperOrder, Rejected
from naived.paper.userstream import UNKNOWN_KEY, UserStreamServer
from naived.core.symbols import SymbolFilters, quote_assets, table

log = logging.getLogger(__name__)

EIGHT = Decimal("0.00000001")
NUMBER_RE = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")
CLIENT_ID_RE = re.compile(r"^[a-zA-Z0-9-_]{1,36}$")
MAX_RECV_WINDOW = 60000
RECV_WINDOW_RE = re.compile(r"^[0-9]{1,5}(\.[0-9]{1,3})?$")
MICROSECOND_STAMPS = 10**14  # a ms timestamp stays below this until the year 5138
# X-MBX-TIME-UNIT's accepted values (True: µs), and the answers' time fields that µs rescales
TIME_UNITS = {"MILLISECOND": False, "millisecond": False, "MICROSECOND": True, "microsecond": True}
TIME_FIELDS = frozenset({"serverTime", "transactTime", "time", "updateTime", "workingTime", "closeTime"})
ORDER_TYPES = ("LIMIT", "LIMIT_MAKER", "MARKET")  # what exchangeInfo lists: what is implemented
TIME_IN_FORCE = ("GTC", "IOC", "FOK")
RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 50},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 160000},
]
Params = dict[str, str]
Reply = tuple[int, Any]
USAGE_MINUTES = 60  # minutes of weight history /paper/usage keeps
# Binance documents no limits of its own here; a request to its API is a line and a few headers,
# parameters in the query or a small form body. These are nginx's usual buffer sizes.
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
DROP_REASONS = ("too_many", "evicted", "timeout", "head_too_large", "body_too_large", "malformed")
_BUSY_BODY = b'{"code":-1008,"msg":"Server is currently overloaded with other requests. Please try again in a few minutes."}'
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json;charset=UTF-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


def _fmt(value: Decimal) -> str:
    """Binance prints amounts with 8 decimals."""
    return format(value.quantize(EIGHT), "f")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _stamp_us(stamp: int) -> int:
    """A timestamp parameter in µs: Binance takes `timestamp`, `startTime`, `endTime` in ms or µs."""
    return stamp if stamp >= MICROSECOND_STAMPS else stamp * 1000


def _wants_microseconds(headers: Any) -> bool:
    unit = headers.get("X-MBX-TIME-UNIT")
    if unit is not None and unit not in TIME_UNITS:
        raise Rejected(-1194, "Invalid value for time unit; expected either MICROSECOND or MILLISECOND.")
    return unit is not None and TIME_UNITS[unit]


def _in_microseconds(reply: Any) -> Any:
    """An answer's time fields (ms, as the book keeps them) in µs, for `X-MBX-TIME-UNIT: MICROSECOND`."""
    if isinstance(reply, list):
        return [_in_microseconds(r) for r in reply]
    if isinstance(reply, dict):
        return {k: v * 1000 if k in TIME_FIELDS and type(v) is int else _in_microseconds(v) for k, v in reply.items()}
    return reply


# --- Binance JSON shapes ---------------------------------------------------------------------


def _details(o: PaperOrder) -> dict[str, Any]:
    return {
        "price": _fmt(o.price),
        "origQty": _fmt(o.orig_qty),
        "executedQty": _fmt(o.executed_qty),
        "origQuoteOrderQty": _fmt(o.orig_quote_qty),
        "cummulativeQuoteQty": _fmt(o.cum_quote),
        "status": o.status,
        "timeInForce": o.time_in_force,
        "type": o.type,
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
        body["fills"] = [_fill_json(f) for f in o.fills]
    return body


def _query_json(o: PaperOrder) -> dict[str, Any]:
    """GET /api/v3/order and each entry of openOrders."""
    zero = _fmt(Decimal(0))
    return {"symbol": o.symbol, "orderId": o.order_id, "orderListId": -1, "clientOrderId": o.client_order_id} | _details(o) | {
        "stopPrice": zero, "icebergQty": zero, "time": o.time_ms, "updateTime": o.update_ms, "isWorking": True,
        "workingTime": o.time_ms, "selfTradePreventionMode": "NONE",
    }


def _cancelled_json(o: PaperOrder, cancel_id: str) -> dict[str, Any]:
    """DELETE /api/v3/order: `clientOrderId` is the cancel request's own id."""
    return {"symbol": o.symbol, "origClientOrderId": o.client_order_id, "orderId": o.order_id, "orderListId": -1,
            "clientOrderId": cancel_id, "transactTime": o.update_ms} | _details(o) | {"selfTradePreventionMode": "NONE"}


def _fill_json(f: Fill) -> dict[str, Any]:
    """One entry of a FULL answer's `fills`."""
    return {"price": _fmt(f.price), "qty": _fmt(f.qty), "commission": _fmt(f.commission),
            "commissionAsset": f.commission_asset, "tradeId": f.trade_id}


def _trade_json(o: PaperOrder, f: Fill) -> dict[str, Any]:
    """One entry of GET /api/v3/myTrades."""
    return {"symbol": o.symbol, "id": f.trade_id, "orderId": o.order_id, "orderListId": -1, "price": _fmt(f.price),
            "qty": _fmt(f.qty), "quoteQty": _fmt(f.price * f.qty), "commission": _fmt(f.commission),
            "commissionAsset": f.commission_asset, "time": f.time_ms, "isBuyer": o.side == "BUY",
            "isMaker": f.is_maker, "isBestMatch": True}


def _inspection_json(o: PaperOrder) -> dict[str, Any]:
    return {"symbol": o.symbol, "orderId": o.order_id, "clientOrderId": o.client_order_id} | _details(o) | {
        "time": o.time_ms, "updateTime": o.update_ms, "receivedNs": o.received_ns,
        "fills": [_fill_json(f) | {"time": f.time_ms, "isMaker": f.is_maker, "marketTradeId": f.market_trade_id}
                  for f in o.fills],
    }


def _rates(fees: Fees) -> dict[str, str]:
    return {"maker": _fmt(fees.maker), "taker": _fmt(fees.taker), "buyer": _fmt(Decimal(0)), "seller": _fmt(Decimal(0))}


def _discount(fees: Fees) -> dict[str, Any]:
    return {"enabledForAccount": fees.bnb, "enabledForSymbol": True, "discountAsset": "BNB", "discount": _fmt(BNB_DISCOUNT)}


def exchange_info_entry(f: SymbolFilters) -> dict[str, Any]:
    """One symbol in Binance's `exchangeInfo` shape, every field Binance sends; what the paper
    exchange does not implement is switched off (order types, icebergs, order lists, STP)."""
    q = _fmt
    lot = {"minQty": q(f.min_qty), "maxQty": q(f.max_qty), "stepSize": q(f.step_size)}
    return {
        "symbol": f.symbol, "status": f.status,
        "baseAsset": f.base, "baseAssetPrecision": 8, "quoteAsset": f.quote, "quotePrecision": 8,
        "quoteAssetPrecision": 8, "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
        "orderTypes": list(ORDER_TYPES),
        "icebergAllowed": False, "ocoAllowed": False, "otoAllowed": False, "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": False, "cancelReplaceAllowed": False, "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": q(f.tick_size), "maxPrice": q(MAX_PRICE), "tickSize": q(f.tick_size)},
            {"filterType": "LOT_SIZE"} | lot,
            {"filterType": "MARKET_LOT_SIZE"} | lot,  # MARKET orders are held to LOT_SIZE here
            *([_percent_price_by_side(f)] if f.avg_price_mins is not None else []),
            {"filterType": "NOTIONAL", "minNotional": q(f.min_notional), "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
        ],
        "permissions": [], "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "NONE", "allowedSelfTradePreventionModes": ["NONE"],
    }


def _percent_price_by_side(f: SymbolFilters) -> dict[str, Any]:
    # Binance prints these multipliers as plain decimals ("5", "0.2"), not with 8 decimals
    return {"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": str(f.bid_multiplier_up),
            "bidMultiplierDown": str(f.bid_multiplier_down), "askMultiplierUp": str(f.ask_multiplier_up),
            "askMultiplierDown": str(f.ask_multiplier_down), "avgPriceMins": f.avg_price_mins or 0}


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


def _optional_number(params: Params, name: str) -> Decimal | None:
    return _number(params, name) if params.get(name) else None


def _not_sent(params: Params, *names: str) -> None:
    for name in names:
        if params.get(name):
            raise Rejected(-1106, f"Parameter '{name}' sent when not required.")


def _limit(params: Params) -> int:
    """`limit` of the list endpoints: default 500, at most 1000."""
    limit = _int(params, "limit")
    if limit is None:
        return 500
    if not 1 <= limit <= 1000:
        raise Rejected(-1100, "Illegal characters found in parameter 'limit'; legal range is '1-1000'.")
    return limit


def _within(params: Params, time_ms: int) -> bool:
    start, end = _int(params, "startTime"), _int(params, "endTime")
    return (start is None or time_ms * 1000 >= _stamp_us(start)) and (end is None or time_ms * 1000 <= _stamp_us(end))


def parse_new_order(params: Params, received_ns: int) -> tuple[SymbolFilters, NewOrder]:
    """POST /api/v3/order's parameters, checked in Binance's terms. Implemented: LIMIT
    (GTC, IOC, FOK), LIMIT_MAKER, MARKET by `quantity` or by `quoteOrderQty`."""
    f = _filters(_mandatory(params, "symbol"))
    side = _mandatory(params, "side")
    if side not in ("BUY", "SELL"):
        raise Rejected(-1117, "Invalid side.")
    kind = _mandatory(params, "type")
    if kind not in ORDER_TYPES:
        raise Rejected(-1116, "Invalid orderType.")
    client_id = params.get("newClientOrderId") or _generated_id()
    if not CLIENT_ID_RE.match(client_id):
        raise Rejected(-1100, "Illegal characters found in parameter 'newClientOrderId'; legal range is '^[a-zA-Z0-9-_]{1,36}$'.")
    new = NewOrder(side=side, type=kind, time_in_force="GTC", client_order_id=client_id, received_ns=received_ns)
    if kind == "LIMIT":
        tif = _mandatory(params, "timeInForce")
        if tif not in TIME_IN_FORCE:
            raise Rejected(-1115, "Invalid timeInForce.")
        _not_sent(params, "quoteOrderQty")
        new.time_in_force, new.qty, new.price = tif, _number(params, "quantity"), _number(params, "price")
    elif kind == "LIMIT_MAKER":
        _not_sent(params, "timeInForce", "quoteOrderQty")
        new.qty, new.price = _number(params, "quantity"), _number(params, "price")
    else:  # MARKET
        _not_sent(params, "timeInForce", "price")
        qty, quote = _optional_number(params, "quantity"), _optional_number(params, "quoteOrderQty")
        if qty is None and quote is None:
            raise Rejected(-1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!")
        if qty is not None and quote is not None:
            raise Rejected(-1106, "Parameter 'quoteOrderQty' sent when not required.")
        new.qty, new.quote_qty = qty or Decimal(0), quote or Decimal(0)
    return f, new


def _weight(method: str, path: str, params: Params, weight: int) -> int:
    """Binance's weights that depend on the parameters (rest-api.md)."""
    if (method, path) == ("GET", "/api/v3/openOrders") and not params.get("symbol"):
        return 80  # every symbol
    if (method, path) == ("GET", "/api/v3/myTrades") and params.get("orderId"):
        return 5
    return weight


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

    def __init__(self, ctx: zmq.Context, endpoint: str, book: PaperBook,
                 band_of: Callable[[str], Decimal] = lambda symbol: Decimal("0.1")) -> None:
        """`band_of`: a symbol's `[trading] price_band`, for its market gate."""
        super().__init__(name="trade-feed", daemon=True)
        self._ctx = ctx
        self._endpoint = endpoint
        self._book = book
        self._band_of = band_of
        # The same check as the traders' (naived/market/gate.py), one gate per subscribed symbol; it
        # acts from the first trade (confirm=1): it fills what traders placed, it places nothing.
        self._gates: dict[bytes, MarketGate] = {}
        self._stray = DropLog("paper feed")  # frames on a topic no gate is for (a prefix neighbour)
        self._dropped: dict[str, dict[str, int]] = {}  # symbol ("" for no symbol's) -> reason -> count
        self._wanted: set[str] = set()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._market: dict[str, dict[str, Any]] = {}  # symbol -> last price, last trade id, count
        self.after_trade: Callable[[SymbolFilters], None] | None = None  # exchange-side faults

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
        sub.setsockopt(zmq.MAXMSGSIZE, MAX_MARKET_FRAME)
        sub.connect(self._endpoint)
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        subscribed: set[str] = set()
        try:
            while not self._stopping:
                ready = dict(poller.poll(self._summary_due_ms()))
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                    with self._lock:
                        new = self._wanted - subscribed
                    for symbol in sorted(new):
                        self._gates[trade_topic(symbol)] = MarketGate(symbol, self._band_of(symbol), f"paper feed {symbol}", confirm=1)
                        sub.setsockopt(zmq.SUBSCRIBE, trade_topic(symbol))
                        log.info("subscribed to %s trades", symbol)
                    subscribed |= new
                if sub in ready:
                    while sub.poll(0, zmq.POLLIN):
                        self._on_message(sub.recv_multipart())
                for log_ in (self._stray, *(g.log for g in self._gates.values())):
                    log_.flush()
        finally:
            sub.close()
            with self._lock:
                self._stopping = True
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _summary_due_ms(self) -> int | None:
        """Poll timeout: until the next drop summary is due, or None (no drop pending)."""
        due = [d for d in (self._stray.deadline(), *(g.log.deadline() for g in self._gates.values())) if d is not None]
        return None if not due else max(0, int((min(due) - time.monotonic()) * 1000) + 1)

    def _on_message(self, frames: list[bytes]) -> None:
        gate = self._gates.get(frames[0])
        if gate is None:  # a longer symbol matching a subscription's prefix (TUSDTRY for TUSDT)
            self._stray.note(TOPIC, repr(frames[0][:40]))
            self._count("", TOPIC)
            return
        event = gate.check(frames)
        if not isinstance(event, TradeEvent):
            if event in gate.dropped:
                self._count(gate.symbol, event)
            return
        f = table().get(event.s)
        if f is None:
            return
        self._book.on_trade(f, Decimal(event.p), Decimal(event.q), event.t)
        if self.after_trade is not None:
            self.after_trade(f)
        with self._lock:
            seen = self._market.setdefault(event.s, {"trades": 0})
            seen.update(lastPrice=event.p, lastTradeId=event.t, trades=seen["trades"] + 1)

    def _count(self, symbol: str, reason: str) -> None:
        with self._lock:
            counts = self._dropped.setdefault(symbol, {})
            counts[reason] = counts.get(reason, 0) + 1

    def dropped(self) -> dict[str, dict[str, int]]:
        """Market frames dropped by the feed's checks: symbol ("" = on no subscribed symbol's
        topic) -> reason -> count."""
        with self._lock:
            return {symbol: dict(counts) for symbol, counts in self._dropped.items()}

    def market(self) -> dict[str, dict[str, Any]]:
        """What trades were processed, per symbol: tests wait on `lastTradeId` instead of sleeping."""
        with self._lock:
            return {symbol: dict(seen) for symbol, seen in self._market.items()}


# --- the HTTP API ------------------------------------------------------------------------------


class PaperExchange:
    """Request routing, Binance's checks, fault injection. Called from the HTTP threads."""

    def __init__(self, config: Config, book: PaperBook, feed: TradeFeed, stream: UserStreamServer | None = None) -> None:
        self.book = book
        self.feed = feed
        self.stream = stream
        self.gate: _Gate | None = None  # set by the server: its refusals are reported in /paper/usage
        self._key = config.paper.api_key
        self._mac = hmac.new(config.paper.api_secret.encode(), digestmod=hashlib.sha256)
        self._hang_seconds = config.exchange.timeout_seconds + 1.0  # outlive the client's timeout
        self._set_faults(config.paper.faults)
        feed.after_trade = self._book_faults
        self._weight_lock = threading.Lock()
        self._minute, self._weight = 0, 0
        self._requests, self._weight_total = 0, 0
        self._minutes: dict[int, int] = {}  # epoch minute -> weight counted in it (the last USAGE_MINUTES)
        self._symbols = {s: exchange_info_entry(f) for s, f in sorted(table().items())}
        # (method, path) -> (handler, request weight, signed)
        self.routes: dict[tuple[str, str], tuple[Callable[[Params, int], Reply], int, bool]] = {
            ("GET", "/api/v3/ping"): (lambda p, t: (200, {}), 1, False),
            ("GET", "/api/v3/time"): (lambda p, t: (200, {"serverTime": _now_ms()}), 1, False),
            ("GET", "/api/v3/exchangeInfo"): (self.exchange_info, 20, False),
            ("GET", "/api/v3/avgPrice"): (self.avg_price, 2, False),
            ("POST", "/api/v3/order"): (self.new_order, 1, True),
            ("POST", "/api/v3/order/test"): (self.test_order, 1, True),
            ("GET", "/api/v3/order"): (self.get_order, 4, True),
            ("DELETE", "/api/v3/order"): (self.cancel_order, 1, True),
            ("GET", "/api/v3/openOrders"): (self.open_orders, 6, True),
            ("DELETE", "/api/v3/openOrders"): (self.cancel_open_orders, 1, True),
            ("GET", "/api/v3/allOrders"): (self.all_orders, 20, True),
            ("GET", "/api/v3/myTrades"): (self.my_trades, 20, True),
            ("GET", "/api/v3/account"): (self.account, 20, True),
            ("GET", "/api/v3/account/commission"): (self.commission, 20, True),
            # USER_STREAM: the API key, no signature (checked in `handle`)
            ("POST", "/api/v3/userDataStream"): (self.listen_key_create, 2, False),
            ("PUT", "/api/v3/userDataStream"): (self.listen_key_keepalive, 2, False),
            ("DELETE", "/api/v3/userDataStream"): (self.listen_key_close, 2, False),
            ("GET", "/paper/orders"): (self.paper_orders, 0, False),
            ("GET", "/paper/balances"): (self.paper_balances, 0, False),
            ("GET", "/paper/market"): (lambda p, t: (200, self.feed.market()), 0, False),
            ("GET", "/paper/feed"): (lambda p, t: (200, {"dropped": self.feed.dropped()}), 0, False),
            ("GET", "/paper/usage"): (self.usage, 0, False),
        }

    def _set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._book_rng = random.Random(faults.seed + 1)  # drawn by the trade thread only
        self.stream_faults = (faults, random.Random(faults.seed + 2))  # the user stream's thread only; swapped whole

    def _book_faults(self, f: SymbolFilters) -> None:
        """After each public trade: the exchange itself may cancel or expire one open order of
        the symbol (Binance does, e.g. on a symbol's halt or a self-trade prevention)."""
        faults, rng = self.faults, self._book_rng
        if not (faults.exchange_cancel or faults.exchange_expire):
            return
        open_orders = self.book.open_orders(f.symbol)
        if not open_orders:
            return
        r = rng.random()
        status = "CANCELED" if r < faults.exchange_cancel else "EXPIRED" if r < faults.exchange_cancel + faults.exchange_expire else None
        if status is not None:
            victim = rng.choice(open_orders)
            # A cancel the account did not ask for still names a cancel request in `c`, as another
            # client's (or Binance's web page's) cancel would; an expiry names none.
            cancel_id = _generated_id() if status == "CANCELED" else ""
            if self.book.close_open(f, victim.order_id, status, cancel_id) is not None:
                log.warning("fault: the exchange %s %s (orderId %d)", status.lower(), victim.client_order_id, victim.order_id)

    def late_order(self, params: Params, received_ns: int) -> Reply:
        """The late-acceptance fault: a valid order is answered "execution status unknown" while
        it is not in the book yet, and enters it `late_accept_seconds` later (at most Binance's
        10 s). A paper exchange killed in between never places it (one of the two outcomes
        Binance leaves open)."""
        f, new = parse_new_order(params, received_ns)
        self.book.check(f, new)
        self._want(f)
        timer = threading.Timer(self.faults.late_accept_seconds, self._accept_late, (f, new))
        timer.daemon = True
        timer.start()
        return 200, {}

    def _accept_late(self, f: SymbolFilters, new: NewOrder) -> None:
        try:
            order, _ = self.book.place(f, new)
            log.warning("fault: %s entered the book late (orderId %d)", new.client_order_id, order.order_id)
        except Rejected as exc:
            log.warning("fault: %s, accepted late, was refused: %s", new.client_order_id, exc.msg)
        except Exception:
            log.exception("fault: %s, accepted late, could not be placed", new.client_order_id)

    def _count_weight(self, weight: int) -> int:
        """Every request to Binance's paths, refused or not, counts (Binance: per IP, per minute)."""
        with self._weight_lock:
            minute = int(time.time() // 60)
            if minute != self._minute:
                self._minute, self._weight = minute, 0
            self._weight += weight
            self._requests += 1
            self._weight_total += weight
            self._minutes[minute] = self._weight
            while len(self._minutes) > USAGE_MINUTES:
                del self._minutes[min(self._minutes)]
            return self._weight

    def _weight_now(self) -> int:
        with self._weight_lock:
            return self._weight if self._minute == int(time.time() // 60) else 0

    def usage(self, params: Params, received_ns: int) -> Reply:
        """GET /paper/usage: what the exchange counted (tests and benchmarks read the exchange's
        own figures, not the client's): requests and weight since start, and weight per minute."""
        with self._weight_lock:
            usage = {"requests": self._requests, "weight": self._weight_total,
                     "minutes": {str(m): w for m, w in sorted(self._minutes.items())}}
        return 200, {**usage, "dropped": dict(self.gate.dropped) if self.gate is not None else {},
                     "stream_dropped": dict(self.stream.dropped) if self.stream is not None else {}}

    def _draw_fault(self) -> str | None:
        f = self.faults
        r, total = self._rng.random(), 0.0
        # New faults go last: a seed keeps drawing the same older faults in the same order.
        for name in ("ban_418", "rate_limit_429", "stale_timestamp", "drop_connection", "accept_then_5xx", "accept_then_timeout",
                     "late_accept_5xx", "late_accept_timeout"):
            total += getattr(f, name)
            if r < total:
                return name
        return None

    def check_key(self, headers: Any) -> None:
        """USER_STREAM and SIGNED endpoints: the API key header."""
        key = headers.get("X-MBX-APIKEY")
        if not key:
            raise Rejected(-2014, "API-key format invalid.", 401)
        if not hmac.compare_digest(key, self._key):
            raise Rejected(-2015, "Invalid API-key, IP, or permissions for action.", 401)

    def check_signed(self, headers: Any, query: str, body: str, params: Params) -> None:
        """Binance's SIGNED checks: API key, timestamp within recvWindow, signature."""
        self.check_key(headers)
        stamp = _int(params, "timestamp")
        if stamp is None:
            raise Rejected(-1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
        # Binance takes the timestamp in ms or µs, and recvWindow in ms with up to 3 decimals (µs).
        stamp_us = _stamp_us(stamp)
        window_text = params.get("recvWindow") or "5000"
        if not RECV_WINDOW_RE.match(window_text):
            raise Rejected(-1100, "Illegal characters found in parameter 'recvWindow'; legal range is '^[0-9]{1,5}(\\.[0-9]{1,3})?$'.")
        window_us = int(Decimal(window_text) * 1000)
        if window_us > MAX_RECV_WINDOW * 1000:
            raise Rejected(-1131, "recvWindow must be less than 60000")
        now_us = time.time_ns() // 1000
        if stamp_us >= now_us + 1_000_000:
            raise Rejected(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if now_us - stamp_us > window_us:
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
        if "symbol" in params or "symbols" in params:
            for name in names:  # a trader about to trade it: learn its price before the first order
                self._want(table()[name])
        return 200, {"timezone": "UTC", "serverTime": _now_ms(), "rateLimits": RATE_LIMITS, "exchangeFilters": [],
                     "symbols": [self._symbols[n] for n in names]}

    def avg_price(self, params: Params, received_ns: int) -> Reply:
        """GET /api/v3/avgPrice: the average PERCENT_PRICE_BY_SIDE checks orders against."""
        f = _filters(_mandatory(params, "symbol"))
        self._want(f)  # asked about: follow its trades, so the average can be known
        average = self.book.average_price(f)
        price, close_time = average if average is not None else (Decimal(0), 0)
        return 200, {"mins": f.avg_price_mins if f.avg_price_mins is not None else 5, "price": _fmt(price),
                     "closeTime": close_time}

    def new_order(self, params: Params, received_ns: int) -> Reply:
        f, new = parse_new_order(params, received_ns)
        # Binance answers MARKET and LIMIT orders in FULL by default, others in ACK.
        default = "FULL" if new.type in ("MARKET", "LIMIT") else "ACK"
        kind = _choice(params, "newOrderRespType", ("ACK", "RESULT", "FULL"), default=default)
        self._want(f)
        order, _ = self.book.place(f, new)
        return 200, _placed_json(order, kind)

    def _want(self, f: SymbolFilters) -> None:
        """Follow the symbol's trades (and BNB's price, when commission is paid in BNB)."""
        self.feed.want(f.symbol)
        if self.book.fees.bnb and "BNB" + f.quote in table():
            self.feed.want("BNB" + f.quote)

    def test_order(self, params: Params, received_ns: int) -> Reply:
        """POST /api/v3/order/test: every check of a new order but the balance; nothing is placed."""
        f, new = parse_new_order(params, received_ns)
        self.book.check(f, new)
        if params.get("computeCommissionRates") != "true":
            return 200, {}
        fees = self.book.fees
        zero = _fmt(Decimal(0))
        return 200, {
            "standardCommissionForOrder": {"maker": _fmt(fees.maker), "taker": _fmt(fees.taker)},
            "specialCommissionForOrder": {"maker": zero, "taker": zero},
            "taxCommissionForOrder": {"maker": zero, "taker": zero},
            "discount": _discount(fees),
        }

    def all_orders(self, params: Params, received_ns: int) -> Reply:
        f = _filters(_mandatory(params, "symbol"))
        from_id = _int(params, "orderId")
        orders = [o for o in self.book.all_orders(f.symbol)
                  if (from_id is None or o.order_id >= from_id) and _within(params, o.time_ms)]
        limit = _limit(params)
        # From orderId on: the oldest `limit`; otherwise the most recent `limit`, oldest first.
        orders = orders[:limit] if from_id is not None else orders[-limit:]
        return 200, [_query_json(o) for o in orders]

    def my_trades(self, params: Params, received_ns: int) -> Reply:
        f = _filters(_mandatory(params, "symbol"))
        order_id, from_id = _int(params, "orderId"), _int(params, "fromId")
        trades = [(o, t) for o, t in self.book.my_trades(f.symbol)
                  if (order_id is None or o.order_id == order_id) and (from_id is None or t.trade_id >= from_id)
                  and _within(params, t.time_ms)]
        limit = _limit(params)
        trades = trades[:limit] if from_id is not None else trades[-limit:]
        return 200, [_trade_json(o, t) for o, t in trades]

    def cancel_open_orders(self, params: Params, received_ns: int) -> Reply:
        f = _filters(_mandatory(params, "symbol"))
        return 200, [_cancelled_json(c.order, c.cancel_id) for c in self.book.cancel_all(f, lambda o: _generated_id())]

    def commission(self, params: Params, received_ns: int) -> Reply:
        f = _filters(_mandatory(params, "symbol"))
        zeros = _rates(Fees(Decimal(0), Decimal(0)))
        return 200, {"symbol": f.symbol, "standardCommission": _rates(self.book.fees), "specialCommission": zeros,
                     "taxCommission": zeros, "discount": _discount(self.book.fees)}

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
        cancel_id = params.get("newClientOrderId") or _generated_id()
        order = self.book.cancel(*self._find(params), cancel_id)
        return 200, _cancelled_json(order, cancel_id)

    def open_orders(self, params: Params, received_ns: int) -> Reply:
        symbol = params.get("symbol")
        if symbol:
            _filters(symbol)
        return 200, [_query_json(o) for o in self.book.open_orders(symbol)]

    def account(self, params: Params, received_ns: int) -> Reply:
        balances = [{"asset": a, "free": _fmt(b.free), "locked": _fmt(b.locked)} for a, b in self.book.balance_sheet().items()]
        fees = self.book.fees
        return 200, {
            # The integer fields are in basis points (0.001 → 10), as Binance's are.
            "makerCommission": int(fees.maker * 10000), "takerCommission": int(fees.taker * 10000),
            "buyerCommission": 0, "sellerCommission": 0, "commissionRates": _rates(fees),
            "canTrade": True, "canWithdraw": False, "canDeposit": False, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False, "updateTime": _now_ms(),
            "accountType": "SPOT", "balances": balances, "permissions": ["SPOT"], "uid": 0,
        }

    def _user_stream(self) -> UserStreamServer:
        if self.stream is None:
            raise Rejected(-1000, "The user data stream is not served by this paper exchange.")
        return self.stream

    def listen_key_create(self, params: Params, received_ns: int) -> Reply:
        return 200, {"listenKey": self._user_stream().keys.create()}

    def listen_key_keepalive(self, params: Params, received_ns: int) -> Reply:
        if not self._user_stream().keys.keepalive(_mandatory(params, "listenKey")):
            raise Rejected(UNKNOWN_KEY["code"], UNKNOWN_KEY["msg"])
        return 200, {}

    def listen_key_close(self, params: Params, received_ns: int) -> Reply:
        stream, key = self._user_stream(), _mandatory(params, "listenKey")
        if not stream.keys.close(key):
            raise Rejected(UNKNOWN_KEY["code"], UNKNOWN_KEY["msg"])
        stream.closed_key(key)
        return 200, {}

    def paper_orders(self, params: Params, received_ns: int) -> Reply:
        return 200, [_inspection_json(o) for o in self.book.all_orders(params.get("symbol"))]

    def paper_balances(self, params: Params, received_ns: int) -> Reply:
        return 200, {a: {"free": _fmt(b.free), "locked": _fmt(b.locked)} for a, b in self.book.balance_sheet().items()}

    def unseen_trade(self, body: bytes) -> Reply:
        try:
            trade = msgspec.json.decode(body, type=dict[str, str])
            f, price, qty = _filters(trade["symbol"]), Decimal(trade["price"]), Decimal(trade["qty"])
        except (msgspec.DecodeError, KeyError, InvalidOperation):
            raise Rejected(-1100, "bad trade: expected {\"symbol\", \"price\", \"qty\"} as strings") from None
        trade_id = int(self.feed.market().get(f.symbol, {}).get("lastTradeId", 0)) + 1
        filled = self.book.on_trade(f, price, qty, trade_id)
        log.warning("unseen trade %s %s @ %s: %d fills", f.symbol, qty, price, len(filled))
        return 200, {"fills": len(filled)}

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
        body = request.body  # read in full, within its deadline and size limit, by `_Handler`
        if (method, url.path) == ("POST", "/paper/faults"):
            self._respond(request, *self._guarded(lambda: self.set_faults(body)), 0)
            return
        if (method, url.path) == ("POST", "/paper/trade"):
            self._respond(request, *self._guarded(lambda: self.unseen_trade(body)), 0)
            return
        route = self.routes.get((method, url.path))
        if route is None:
            self._respond(request, 404, {"code": -1000, "msg": f"Unknown endpoint {method} {url.path}"}, 0)
            return
        handler, weight, signed = route
        form = body.decode("latin-1")
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        params.update(parse_qsl(form, keep_blank_values=True))
        used = self._count_weight(_weight(method, url.path, params, weight)) if weight else self._weight_now()
        fault = self._draw_fault() if (method, url.path) == ("POST", "/api/v3/order") else None
        if fault in ("ban_418", "rate_limit_429", "stale_timestamp", "drop_connection"):
            self._refuse(request, fault, used, params)
            return
        if fault in ("late_accept_5xx", "late_accept_timeout"):
            handler = self.late_order

        def call() -> Reply:
            microseconds = _wants_microseconds(request.headers)
            if signed:
                self.check_signed(request.headers, url.query, form, params)
            elif url.path == "/api/v3/userDataStream":
                self.check_key(request.headers)
            status, reply = handler(params, request.received_ns)
            return status, _in_microseconds(reply) if microseconds else reply

        status, reply = self._guarded(call)
        if fault is None and status != 200 and (method, url.path) == ("POST", "/api/v3/order"):
            log.info("rejected %s %s: %s", params.get("symbol"), params.get("newClientOrderId"), reply.get("msg"))
        if fault in ("accept_then_5xx", "late_accept_5xx") and status == 200:
            log.warning("fault: accepted %s, answering 503", params.get("newClientOrderId"))
            status, reply = 503, {"code": -1007, "msg": "Timeout waiting for response from backend server. Send status unknown; execution status unknown."}
        elif fault in ("accept_then_timeout", "late_accept_timeout") and status == 200:
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


class _Gate:
    """Every REST connection passes here: the one place that bounds what a client can hold.

    - At most `max_connections` at once (each is a thread). Past it, the connection idle the
      longest is closed to make room (a trader's client opens a new one when it needs it), or,
      when none is idle, the new one gets a 503 at once and is closed: never a new thread.
    - A kept-alive connection idle for `idle_seconds` is closed (the socket's timeout).
    - From its first byte, a request's head and body must arrive within `request_seconds`
      (`_Handler` reads them under this deadline), and its response must leave within as much
      again: a client that trickles, or never reads, loses its connection at the deadline
      (`reap`, from the accepting thread: shutdown() wakes the handler's blocked call).
    - The head is at most MAX_HEAD_BYTES (431), a body at most MAX_BODY_BYTES (413), a
      Content-Length must be a number and no Transfer-Encoding is taken (400, 501).
    Each refusal is counted (GET /paper/usage: `dropped`) and logged at a bounded rate."""

    def __init__(self, paper: PaperSettings) -> None:
        self.max_connections = paper.max_connections
        self.idle_seconds = paper.idle_seconds
        self.request_seconds = paper.request_seconds
        self._lock = threading.Lock()
        self._active = 0
        # By connection: waiting for a request since (monotonic, oldest first), or reading a request
        # or writing its response until (its deadline).
        self._idle: dict[socket.socket, float] = {}
        self._deadlines: dict[socket.socket, float] = {}
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._log = RateLimitedLog(log)

    def admit(self, sock: socket.socket) -> bool:
        """From the accepting thread, before a handler thread exists for `sock`."""
        with self._lock:
            if self._active >= self.max_connections:
                if not self._idle:
                    self._count("too_many", "refused a connection: %d open, none idle", self._active)
                    try:
                        sock.send(BUSY, socket.MSG_DONTWAIT)
                    except OSError:
                        pass
                    return False
                oldest = next(iter(self._idle))
                del self._idle[oldest]
                self._count("evicted", "closed the connection idle the longest: %d open", self._active)
                _shut(oldest)  # its thread ends on its own; counted out when it does
            self._active += 1
            return True

    def leave(self, conn: socket.socket) -> None:
        with self._lock:
            self._active -= 1
            self._idle.pop(conn, None)
            self._deadlines.pop(conn, None)

    def idle(self, conn: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(conn, None)
            self._idle[conn] = time.monotonic()

    def busy(self, conn: socket.socket) -> None:
        """A request's first byte came, or its response starts: the deadline runs from now."""
        with self._lock:
            self._idle.pop(conn, None)
            self._deadlines[conn] = time.monotonic() + self.request_seconds

    def unbounded(self, conn: socket.socket) -> None:
        """The request is in: the exchange works on it (a fault may hang it on purpose) unwatched."""
        with self._lock:
            self._deadlines.pop(conn, None)

    def reap(self) -> None:
        """Close the connections past their deadline (called ~10 times a second)."""
        now = time.monotonic()
        with self._lock:
            late = [conn for conn, at in self._deadlines.items() if at <= now]
            for conn in late:
                del self._deadlines[conn]
                self._count("timeout", "closed a connection past its %gs request deadline", self.request_seconds)
                _shut(conn)

    def refuse(self, reason: str, detail: str) -> None:
        with self._lock:
            self._count(reason, "refused a request: %s", detail)

    def _count(self, reason: str, message: str, *args: object) -> None:
        self.dropped[reason] += 1
        self._log.warning(f"paper exchange: {message}", *args)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by its own thread


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a trader's session reuses one connection
    disable_nagle_algorithm = True  # with Nagle on, every keep-alive request waits ~40 ms for an ACK
    wbufsize = 64 * 1024  # headers and body leave in one write (flushed after each request)
    server: _Server
    received_ns = 0
    body = b""

    def setup(self) -> None:
        super().setup()
        self.gate = self.server.gate

    def handle_one_request(self) -> None:
        """The stdlib's, with the gate's deadlines and limits: the head and the body are read here,
        in full and within `request_seconds`, before any route sees the request."""
        gate, conn = self.gate, self.connection
        gate.idle(conn)
        self.connection.settimeout(gate.idle_seconds)  # each call on the socket; the gate bounds the whole
        try:
            if not self.rfile.peek(1):
                self.close_connection = True  # the client closed it
                return
            gate.busy(conn)
            self.received_ns = time.time_ns()
            if not self._read_request():
                return
            gate.unbounded(conn)
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method ({self.command!r})")
                return
            method()
            self.wfile.flush()
        except (TimeoutError, ConnectionError, ValueError, OSError):
            # Idle past its time, or shut down by the gate at its deadline (a closed file reads as ValueError)
            self.close_connection = True

    def _read_request(self) -> bool:
        """Request line, headers (at most MAX_HEAD_BYTES) and body (at most MAX_BODY_BYTES);
        False when refused (answered and closed) or cut short."""
        head = b""
        while not head.endswith((b"\r\n\r\n", b"\n\n")) or head in (b"\r\n", b"\n"):
            line = self.rfile.readline(MAX_HEAD_BYTES + 1 - len(head))
            if not line:
                self.close_connection = True
                return False
            head = line if head in (b"\r\n", b"\n") else head + line  # blank lines before a request are allowed
            if len(head) > MAX_HEAD_BYTES:
                self.requestline, self.request_version, self.command = "", "", ""  # as the stdlib's 414: unparsed
                return self._refuse("head_too_large", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                    f"a request head over {MAX_HEAD_BYTES} bytes")
        self.raw_requestline, rest = head.split(b"\n", 1)
        self.raw_requestline += b"\n"
        rfile, self.rfile = self.rfile, io.BytesIO(rest)  # type: ignore[assignment]
        try:
            parsed = self.parse_request()  # reads the headers from `rest`; answers a malformed head itself
        finally:
            self.rfile = rfile
        if not parsed:
            self.gate.refuse("malformed", "a malformed request head")
            return False
        if self.headers.get("Transfer-Encoding") is not None:
            return self._refuse("malformed", HTTPStatus.NOT_IMPLEMENTED, "Transfer-Encoding (Content-Length only)")
        length = self.headers.get("Content-Length") or "0"
        if not length.isdigit():
            return self._refuse("malformed", HTTPStatus.BAD_REQUEST, f"Content-Length {length[:20]!r}")
        if int(length) > MAX_BODY_BYTES:
            return self._refuse("body_too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                f"a body of {int(length)} bytes (at most {MAX_BODY_BYTES})")
        self.body = self.rfile.read(int(length)) if int(length) else b""
        if len(self.body) < int(length):
            self.close_connection = True
            return False
        return True

    def _refuse(self, reason: str, status: HTTPStatus, detail: str) -> bool:
        self.gate.refuse(reason, detail)
        self.close_connection = True
        self.send_error(status, detail)  # with Connection: close; the body is never read
        return False

    def end_headers(self) -> None:
        self.gate.busy(self.connection)  # the response leaves within the deadline too: a client that never reads is dropped
        super().end_headers()

    def do_GET(self) -> None:
        self.server.app.handle(self, "GET")

    def do_POST(self) -> None:
        self.server.app.handle(self, "POST")

    def do_DELETE(self) -> None:
        self.server.app.handle(self, "DELETE")

    def do_PUT(self) -> None:
        self.server.app.handle(self, "PUT")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # the exchange logs events (placed, filled, cancelled), not every request


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True  # restart on the same port right after a kill -9
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: PaperExchange, listener: socket.socket | None = None,
                 gate: _Gate | None = None) -> None:
        self.app = app
        self.gate = gate or _Gate(PaperSettings())
        app.gate = self.gate
        super().__init__(address, _Handler, bind_and_activate=listener is None)
        if listener is not None:
            # Bound and listening already (naived's root, before fork): serve on it as it is.
            self.socket.close()
            self.socket = listener
            self.server_address = listener.getsockname()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.gate.admit(request):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the connection's thread: the handler runs, then the gate counts the connection out."""
        try:
            super().finish_request(request, client_address)
        finally:
            self.gate.leave(request)

    def service_actions(self) -> None:
        self.gate.reap()  # serve_forever calls this between its polls (every poll_interval)

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


def run(config: Config, listener: socket.socket | None = None, ws_listener: socket.socket | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then return. Starts its own zmq context and threads.

    `listener`, `ws_listener`: TCP sockets already bound and listening, for the REST API and
    the user data stream (naived's root binds them before it says READY, so the ports are
    taken and answering from the start; they are inherited across fork). Without them, bind
    `paper.host:paper.port` and `paper.ws_port` (the standalone `naived paper-exchange`).
    A state file that cannot be read raises SystemExit with one line saying what to do."""
    paper = config.paper
    host = listener.getsockname()[0] if listener is not None else paper.host
    if not _is_loopback(host):
        raise SystemExit(f"paper exchange: {host!r} is not a loopback address; refusing to serve unsigned inspection endpoints")
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before any thread exists, so every thread inherits the mask and the signals
    # wait for sigtimedwait below instead of interrupting a commit half way.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with ExitStack() as cleanup:
        cleanup.callback(signal.pthread_sigmask, signal.SIG_SETMASK, previous_mask)
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = config.state_dir / "paper-exchange.sqlite"
        fees = Fees(paper.maker_commission, paper.taker_commission, paper.commission_in_bnb)
        book = PaperBook(path, paper.starting_balances(quote_assets()), fees=fees, fill_on_touch=paper.fill_on_touch, partial_fills=paper.partial_fills)
        cleanup.callback(book.close)
        ctx = zmq.Context()
        cleanup.callback(ctx.term)
        feed = TradeFeed(ctx, config.streamer.endpoint, book, lambda symbol: config.trading.for_symbol(symbol).price_band)
        app = PaperExchange(config, book, feed)
        if ws_listener is None:
            try:
                ws_listener = listen(paper.host, paper.ws_port, "the user data stream", "[paper] ws_port")
            except CannotListen as exc:
                raise SystemExit(f"paper exchange: {exc}") from None
        cleanup.callback(ws_listener.close)
        stream = UserStreamServer(ws_listener, paper.listen_key_seconds, paper.user_stream_connection_seconds,
                                  lambda: app.stream_faults)
        app.stream = stream
        book.listeners.append(stream.publish)
        server = _Server((paper.host, paper.port), app, listener, _Gate(paper))
        cleanup.callback(server.server_close)
        for symbol in book.symbols_with_open_orders():
            feed.want(symbol)
        feed.start()
        cleanup.callback(feed.join)
        cleanup.callback(feed.stop)
        serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True)
        serving.start()
        cleanup.callback(server.shutdown)
        stream.start()
        cleanup.callback(stream.join, 5.0)
        cleanup.callback(stream.stop)
        log.info("paper exchange on %s:%d, user data stream on port %d (state %s, %d open orders), trades from %s",
                 *server.server_address[:2], stream.address[1], path, len(book.open_orders(None)), config.streamer.endpoint)
        while True:
            received = signal.sigtimedwait(stop_signals, 1.0)
            if received is not None:
                log.info("%s: stopping", signal.Signals(received.si_signo).name)
                return
            if not feed.is_alive() or not serving.is_alive() or not stream.is_alive():
                raise RuntimeError("paper exchange: a worker thread died; exiting so the supervisor restarts it")

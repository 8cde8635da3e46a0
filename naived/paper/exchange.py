"""The paper exchange's endpoints: Binance's spot REST API, answered from the book.

Binance's spot API documentation is the specification: same paths, parameters (query
string and/or form body; the query string's value when both send one), JSON shapes, statuses,
error codes and messages, the `X-MBX-USED-WEIGHT-1M` header on every answer, and the
unfilled-order counts `X-MBX-ORDER-COUNT-10S`/`-1D` (`usage.OrderCount`) on the answer of every
order placed (POST /api/v3/order, and cancelReplace's whenever it counted one: 200, or an
error with `data`).

    GET    /api/v3/ping, /api/v3/time, /api/v3/exchangeInfo[?symbol=|?symbols=], /api/v3/avgPrice?symbol=
    POST   /api/v3/order        LIMIT (GTC, IOC, FOK), LIMIT_MAKER, MARKET by quantity or
                                quoteOrderQty, STOP_LOSS_LIMIT, TAKE_PROFIT_LIMIT (`stops.py`);
                                newOrderRespType ACK | RESULT | FULL                  (signed)
    POST   /api/v3/order/test   the same checks, nothing placed; computeCommissionRates (signed)
    POST   /api/v3/order/cancelReplace   cancel an order and place a new one on its symbol:
                                cancelReplaceMode STOP_ON_FAILURE | ALLOW_FAILURE     (signed)
    GET    /api/v3/order        by orderId or origClientOrderId                      (signed)
    DELETE /api/v3/order        by orderId or origClientOrderId                      (signed)
    GET    /api/v3/openOrders[?symbol=]   DELETE /api/v3/openOrders?symbol=          (signed)
    GET    /api/v3/allOrders, /api/v3/myTrades   (orderId/fromId, startTime, endTime, limit)
    GET    /api/v3/account, /api/v3/account/commission                              (signed)
    POST   /api/v3/orderList/oco   an OCO of LIMIT_MAKER, STOP_LOSS_LIMIT, TAKE_PROFIT_LIMIT legs (oco.py)
    DELETE /api/v3/orderList, GET /api/v3/orderList, /api/v3/openOrderList, /api/v3/allOrderList  (signed)
    POST | PUT | DELETE /api/v3/userDataStream   listen keys (API key, no signature); the
                                stream itself: ws://<host>:<ws_port>/ws/<listenKey> (userstream.py)
    GET    /api/v3/klines, /api/v3/uiKlines, /api/v3/depth, /api/v3/ticker/24hr, /api/v3/ticker/price,
           /api/v3/ticker/bookTicker, and the futures/margin/capital discovery calls, answered empty:
                                market_data.py (its docstring: the book stays the last trade)

Signed requests are checked as Binance checks them (`auth.py`). `startTime`/`endTime` are taken
in ms or µs, and `X-MBX-TIME-UNIT: MICROSECOND` puts the time fields of the answers in µs (the
book keeps ms: whole milliseconds × 1000); any value but MILLISECOND/MICROSECOND (either case)
is -1194.

Matching and commission are `naived.paper.book`'s (see its docstring): marketable orders
fill at once at the last trade price as takers, resting ones as makers when a later
trade crosses them, and every fill pays the maker or taker rate from the asset it gives
(or BNB at the discount). A symbol is subscribed when it is asked for in exchangeInfo
(`symbol`/`symbols`), avgPrice or the market data, when its first order is placed, and at start for every
symbol with open orders.

Filters, as Binance applies them, with its error (-1013 "Filter failure: <name>"): PRICE_FILTER
(on `price` and `stopPrice`), LOT_SIZE, PERCENT_PRICE_BY_SIDE (orders with a price: LIMIT,
LIMIT_MAKER, STOP_LOSS_LIMIT, TAKE_PROFIT_LIMIT; the band is the symbol table's multipliers
around the book's average price, which GET /api/v3/avgPrice answers), NOTIONAL (a STOP_LOSS /
TAKE_PROFIT valued at its stop price).

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
- Stop orders trigger on the paper exchange's last trade price (Binance: "the market price");
  STOP_LOSS and TAKE_PROFIT are implemented but refused as Binance refuses them on every recorded
  symbol (not in their `orderTypes`); a stop placed before the symbol's first trade is seen
  cannot be checked for "would trigger immediately" and is accepted.
- Not implemented, so not listed in exchangeInfo: trailing stops (`trailingDelta`), iceberg
  orders, order lists other than OCO (OTO/OTOCO/OPO), order amend, pegged orders, SOR, self-trade prevention
  modes other than NONE, MAX_NUM_ORDERS; rate limits other than injected faults (`faults.py`).
- cancelReplace: `orderRateLimitExceededMode` is checked and changes nothing (no unfilled-order
  limit is enforced); faults are drawn for POST /api/v3/order only.

Inspection and control, unsigned (the server listens on loopback, unless `[paper] remote_clients`):

    GET  /paper/orders[?symbol=]  every order ever placed, oldest first: the RESULT fields
                                  plus `time`, `updateTime`, `receivedNs` (wall clock in ns
                                  when the request line arrived) and `fills` [{price, qty,
                                  commission, commissionAsset, tradeId, time, isMaker,
                                  marketTradeId}]
    GET  /paper/balances          {asset: {"free": "...", "locked": "..."}}
    GET  /paper/market            {symbol: {"lastPrice", "lastTradeId", "trades"}}: trades
                                  processed so far (tests wait on `lastTradeId`)
    GET  /paper/feed              {"dropped": {symbol: {reason: count}}}: market frames the
                                  feed's gates dropped ("" for frames on no symbol's topic)
    GET  /paper/usage             {"requests", "weight", "minutes": {epoch minute: weight}}:
                                  requests to Binance's paths and their weight since start,
                                  and the weight of each of the last 60 minutes; `dropped` and
                                  `stream_dropped`: connections and requests refused by the
                                  REST gate (`http.Gate`) and the user data stream, by reason;
                                  `market_stream_dropped`: the market streams' (marketstream.py);
                                  `answers`: {"GET /api/v3/klines 200": count}, every answer by
                                  method, path and status (what another bot asked, and got)
    POST /paper/faults            JSON object of `config.Faults` fields: replaces the fault
                                  probabilities and reseeds the fault RNG; answers the faults
    POST /paper/trade             {"symbol", "price", "qty"}: a public trade the exchange matches
                                  on that no subscriber of the trade stream sees (an outage of
                                  the public stream): tests of fills that no trade announces
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol
from urllib.parse import urlsplit

import msgspec

from naived.core.config import Config, Faults
from naived.core.symbols import SymbolFilters, table
from naived.paper import shapes
from naived.paper.auth import Auth
from naived.paper.book import NewOrder, PaperBook, PaperOrder, Rejected
from naived.paper.candles import Candles
from naived.paper.faults import (
    ANSWER_503,
    ANSWER_NOTHING,
    EXECUTION_UNKNOWN,
    LATE,
    REFUSED,
    FaultInjector,
)
from naived.paper.http import Gate, Handler
from naived.paper.market_data import MarketData, Reply, Route
from naived.paper.oco import legs_in_order, parse_oco, price_check
from naived.paper.params import (
    Params,
    cancel_restriction,
    choice,
    generated_id,
    in_time_range,
    mandatory,
    optional_int,
    page_limit,
    parse_new_order,
    request_params,
    response_type,
    symbol_filters,
    wants_microseconds,
)
from naived.paper.usage import OrderCount, Usage, weight_of
from naived.paper.userstream import UNKNOWN_KEY, UserStreamServer

log = logging.getLogger(__name__)

NEW_ORDER = ("POST", "/api/v3/order")  # the only request faults are drawn for
CANCEL_REPLACE = ("POST", "/api/v3/order/cancelReplace")
NEW_OCO = ("POST", "/api/v3/orderList/oco")


class Feed(Protocol):
    """What the exchange asks of its trade feed (the live `feed.TradeFeed`, or the backtest's own,
    which hands trades to the book itself)."""

    after_trade: Callable[[SymbolFilters], None] | None  # exchange-side faults, run after each trade

    def want(self, symbol: str) -> None: ...

    def market(self) -> dict[str, dict[str, Any]]: ...

    def dropped(self) -> dict[str, dict[str, int]]: ...


class PaperExchange:
    """Request routing, Binance's checks, fault injection. Called from the HTTP threads."""

    def __init__(self, config: Config, book: PaperBook, feed: Feed, stream: UserStreamServer | None = None,
                 candles: Candles | None = None) -> None:
        """`candles`: the klines the feed builds (`main.run` shares them); an empty set without."""
        self.book = book
        self.feed = feed
        self.stream = stream
        self.gate: Gate | None = None  # set by whoever serves it: its refusals are reported in /paper/usage
        self.auth = Auth(config.paper.api_key, config.paper.api_secret)
        self.faults = FaultInjector(config.paper.faults, book, hang_seconds=config.exchange.timeout_seconds + 1.0)
        feed.after_trade = self.faults.after_trade
        self.usage = Usage()
        self.order_count = OrderCount()
        book.listeners.append(self.order_count.on_changes)
        self._symbols = {s: shapes.exchange_info_entry(f) for s, f in sorted(table().items())}
        # (method, path) -> (handler, request weight, signed)
        self.routes: dict[tuple[str, str], Route] = {
            ("GET", "/api/v3/ping"): (lambda p, t: (200, {}), 1, False),
            ("GET", "/api/v3/time"): (lambda p, t: (200, {"serverTime": shapes.now_ms()}), 1, False),
            ("GET", "/api/v3/exchangeInfo"): (self.exchange_info, 20, False),
            ("GET", "/api/v3/avgPrice"): (self.avg_price, 2, False),
            ("POST", "/api/v3/order"): (self.new_order, 1, True),
            ("POST", "/api/v3/order/test"): (self.test_order, 1, True),
            ("POST", "/api/v3/order/cancelReplace"): (self.cancel_replace, 1, True),
            ("GET", "/api/v3/order"): (self.get_order, 4, True),
            ("DELETE", "/api/v3/order"): (self.cancel_order, 1, True),
            ("GET", "/api/v3/openOrders"): (self.open_orders, 6, True),
            ("DELETE", "/api/v3/openOrders"): (self.cancel_open_orders, 1, True),
            ("GET", "/api/v3/allOrders"): (self.all_orders, 20, True),
            ("GET", "/api/v3/myTrades"): (self.my_trades, 20, True),
            # OCO order lists (oco.py)
            ("POST", "/api/v3/orderList/oco"): (self.new_oco, 1, True),
            ("DELETE", "/api/v3/orderList"): (self.cancel_order_list, 1, True),
            ("GET", "/api/v3/orderList"): (self.get_order_list, 4, True),
            ("GET", "/api/v3/openOrderList"): (self.open_order_lists, 6, True),
            ("GET", "/api/v3/allOrderList"): (self.all_order_lists, 20, True),
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
            ("GET", "/paper/usage"): (self.paper_usage, 0, False),
        }
        self.candles = candles if candles is not None else Candles()
        self.routes.update(MarketData(self, self.candles).routes())  # klines, depth, tickers: market_data.py

    def _want(self, f: SymbolFilters) -> None:
        """Follow the symbol's trades (and BNB's price, when commission is paid in BNB)."""
        self.feed.want(f.symbol)
        if self.book.fees.bnb and "BNB" + f.quote in table():
            self.feed.want("BNB" + f.quote)

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
        return 200, shapes.exchange_info_json([self._symbols[n] for n in names])

    def avg_price(self, params: Params, received_ns: int) -> Reply:
        """GET /api/v3/avgPrice: the average PERCENT_PRICE_BY_SIDE checks orders against."""
        f = symbol_filters(mandatory(params, "symbol"))
        self._want(f)  # asked about: follow its trades, so the average can be known
        return 200, shapes.avg_price_json(f, self.book.average_price(f))

    def new_order(self, params: Params, received_ns: int) -> Reply:
        f, new = parse_new_order(params, received_ns)
        kind = response_type(params, new.type)
        return 200, self._place(f, new, kind)

    def _place(self, f: SymbolFilters, new: NewOrder, kind: str) -> dict[str, Any]:
        self._want(f)
        order, _ = self.book.place(f, new)
        return shapes.placed_json(order, kind)

    def new_oco(self, params: Params, received_ns: int) -> Reply:
        """POST /api/v3/orderList/oco (`oco.py`); newOrderRespType FULL by default (web-socket-api.md's
        orderList.place: "FULL (default)")."""
        f, list_id, above, below = parse_oco(params, received_ns)
        kind = choice(params, "newOrderRespType", ("ACK", "RESULT", "FULL"), default="FULL")
        self._want(f)
        order_list, legs = self.book.place_oco(f, legs_in_order(above, below), list_id, price_check(above, below))
        return 200, shapes.oco_placed_json(order_list, legs, kind)

    def _order_list(self, params: Params, by_id: str) -> tuple[int | None, str | None]:
        order_list_id, client_id = optional_int(params, "orderListId"), params.get(by_id) or None
        if order_list_id is None and client_id is None:
            raise Rejected(-1102, f"Param '{by_id}' or 'orderListId' must be sent, but both were empty/null!")
        return order_list_id, client_id

    def cancel_order_list(self, params: Params, received_ns: int) -> Reply:
        f = symbol_filters(mandatory(params, "symbol"))
        order_list_id, client_id = self._order_list(params, "listClientOrderId")
        cancel_id = params.get("newClientOrderId") or generated_id()
        order_list, legs = self.book.cancel_list(f, order_list_id, client_id, cancel_id)
        return 200, shapes.list_cancelled_json(order_list, legs, cancel_id)

    def get_order_list(self, params: Params, received_ns: int) -> Reply:
        found = self.book.find_list(*self._order_list(params, "origClientOrderId"))
        if found is None:
            raise Rejected(-2013, "Order list does not exist.")
        return 200, shapes.order_list_json(*found)

    def open_order_lists(self, params: Params, received_ns: int) -> Reply:
        return 200, [shapes.order_list_json(*found) for found in self.book.order_lists(only_open=True)]

    def all_order_lists(self, params: Params, received_ns: int) -> Reply:
        """From `fromId` on the oldest `limit`, else the most recent; newest first, as Binance's example."""
        from_id = optional_int(params, "fromId")
        found = [(ol, legs) for ol, legs in self.book.order_lists()
                 if (from_id is None or ol.order_list_id >= from_id) and in_time_range(params, ol.time_ms)]
        limit = page_limit(params)
        found = found[:limit] if from_id is not None else found[-limit:]
        return 200, [shapes.order_list_json(*one) for one in reversed(found)]

    def cancel_replace(self, params: Params, received_ns: int) -> Reply:
        """POST /api/v3/order/cancelReplace. Parameters and filters are checked before anything
        is done (a plain error, as for a new order); then the cancel, then, unless the cancel
        failed under STOP_ON_FAILURE, the placement. Both done: 200; one of them: 409 -2021; neither:
        400 -2022, each with the four fields (under `data` for an error), as Binance answers."""
        f, new = parse_new_order(params, received_ns)
        kind = response_type(params, new.type)
        mode = choice(params, "cancelReplaceMode", ("STOP_ON_FAILURE", "ALLOW_FAILURE"))
        choice(params, "orderRateLimitExceededMode", ("DO_NOTHING", "CANCEL_ONLY"), default="DO_NOTHING")
        only = cancel_restriction(params)
        _, order_id, client_id = self._find(params, "cancelOrderId", "cancelOrigClientOrderId")
        self.book.check(f, new)  # "Filters ... are evaluated before the processing of the cancellation"
        result: dict[str, Any] = {"cancelResult": "SUCCESS", "newOrderResult": "SUCCESS",
                                  "cancelResponse": None, "newOrderResponse": None}
        try:
            result["cancelResponse"] = self._cancel(f, order_id, client_id, params.get("cancelNewClientOrderId"), only)
        except Rejected as exc:
            result["cancelResult"], result["cancelResponse"] = "FAILURE", exc.answer()
        if result["cancelResult"] == "FAILURE" and mode == "STOP_ON_FAILURE":
            result["newOrderResult"] = "NOT_ATTEMPTED"
        else:
            try:
                result["newOrderResponse"] = self._place(f, new, kind)
            except Rejected as exc:
                result["newOrderResult"], result["newOrderResponse"] = "FAILURE", exc.answer()
        if result["newOrderResult"] != "SUCCESS":
            self.order_count.add(1)  # Binance counts the new order even when it was not placed
        done = [result["cancelResult"], result["newOrderResult"]].count("SUCCESS")
        if done == 2:
            return 200, result
        if done == 1:
            return 409, {"code": -2021, "msg": "Order cancel-replace partially failed.", "data": result}
        return 400, {"code": -2022, "msg": "Order cancel-replace failed.", "data": result}

    def late_order(self, params: Params, received_ns: int) -> Reply:
        """POST /api/v3/order under a late-acceptance fault: a valid order is answered (then
        "execution status unknown", or nothing) while it is not in the book yet."""
        f, new = parse_new_order(params, received_ns)
        self.book.check(f, new)
        self._want(f)
        self.faults.place_later(f, new)
        return 200, {}

    def test_order(self, params: Params, received_ns: int) -> Reply:
        """POST /api/v3/order/test: every check of a new order but the balance; nothing is placed."""
        f, new = parse_new_order(params, received_ns)
        self.book.check(f, new)
        if params.get("computeCommissionRates") != "true":
            return 200, {}
        return 200, shapes.order_commission_json(self.book.fees)

    def all_orders(self, params: Params, received_ns: int) -> Reply:
        f = symbol_filters(mandatory(params, "symbol"))
        from_id = optional_int(params, "orderId")
        orders = [o for o in self.book.all_orders(f.symbol)
                  if (from_id is None or o.order_id >= from_id) and in_time_range(params, o.time_ms)]
        limit = page_limit(params)
        # From orderId on: the oldest `limit`; otherwise the most recent `limit`, oldest first.
        orders = orders[:limit] if from_id is not None else orders[-limit:]
        return 200, [shapes.query_json(o) for o in orders]

    def my_trades(self, params: Params, received_ns: int) -> Reply:
        f = symbol_filters(mandatory(params, "symbol"))
        order_id, from_id = optional_int(params, "orderId"), optional_int(params, "fromId")
        trades = [(o, t) for o, t in self.book.my_trades(f.symbol)
                  if (order_id is None or o.order_id == order_id) and (from_id is None or t.trade_id >= from_id)
                  and in_time_range(params, t.time_ms)]
        limit = page_limit(params)
        trades = trades[:limit] if from_id is not None else trades[-limit:]
        return 200, [shapes.trade_json(o, t) for o, t in trades]

    def cancel_open_orders(self, params: Params, received_ns: int) -> Reply:
        """Every open order of the symbol; the legs of an order list as that list's entry (Binance's shape)."""
        f = symbol_filters(mandatory(params, "symbol"))
        ids: dict[tuple[str, int], str] = {}  # the legs of a list share their cancel's id

        def cancel_id(o: PaperOrder) -> str:
            key = ("list", o.order_list_id) if o.order_list_id >= 0 else ("order", o.order_id)
            return ids.setdefault(key, generated_id())
        changes = self.book.cancel_all(f, cancel_id)
        answer: list[dict[str, Any]] = []
        for change in changes:
            if change.order.order_list_id < 0:
                answer.append(shapes.cancelled_json(change.order, change.cancel_id))
            elif change.order_list is not None:  # on the list's last leg: the list, all its legs
                legs = [c.order for c in changes if c.order.order_list_id == change.order.order_list_id]
                answer.append(shapes.list_cancelled_json(change.order_list, legs, change.cancel_id))
        return 200, answer

    def commission(self, params: Params, received_ns: int) -> Reply:
        f = symbol_filters(mandatory(params, "symbol"))
        return 200, shapes.commission_json(f.symbol, self.book.fees)

    def _find(self, params: Params, by_id: str = "orderId",
              by_client_id: str = "origClientOrderId") -> tuple[SymbolFilters, int | None, str | None]:
        """The order a request names: by order id and/or client order id (cancelReplace's own names)."""
        f = symbol_filters(mandatory(params, "symbol"))
        order_id, client_id = optional_int(params, by_id), params.get(by_client_id)
        if order_id is None and not client_id:
            raise Rejected(-1102, f"Param '{by_client_id}' or '{by_id}' must be sent, but both were empty/null!")
        return f, order_id, client_id

    def get_order(self, params: Params, received_ns: int) -> Reply:
        f, order_id, client_id = self._find(params)
        order = self.book.find(f.symbol, order_id, client_id)
        if order is None:
            raise Rejected(-2013, "Order does not exist.")
        return 200, shapes.query_json(order)

    def cancel_order(self, params: Params, received_ns: int) -> Reply:
        return 200, self._cancel(*self._find(params), params.get("newClientOrderId"), cancel_restriction(params))

    def _cancel(self, f: SymbolFilters, order_id: int | None, client_id: str | None, cancel_id: str | None,
                only_status: str | None) -> dict[str, Any]:
        """Cancel an open order; `cancel_id`: the request's own client order id (generated if none)."""
        cancel_id = cancel_id or generated_id()
        return shapes.cancelled_json(self.book.cancel(f, order_id, client_id, cancel_id, only_status), cancel_id)

    def open_orders(self, params: Params, received_ns: int) -> Reply:
        symbol = params.get("symbol")
        if symbol:
            symbol_filters(symbol)
        return 200, [shapes.query_json(o) for o in self.book.open_orders(symbol)]

    def account(self, params: Params, received_ns: int) -> Reply:
        return 200, shapes.account_json(self.book.balance_sheet(), self.book.fees)

    def _user_stream(self) -> UserStreamServer:
        if self.stream is None:
            raise Rejected(-1000, "The user data stream is not served by this paper exchange.")
        return self.stream

    def listen_key_create(self, params: Params, received_ns: int) -> Reply:
        return 200, {"listenKey": self._user_stream().keys.create()}

    def listen_key_keepalive(self, params: Params, received_ns: int) -> Reply:
        if not self._user_stream().keys.keepalive(mandatory(params, "listenKey")):
            raise Rejected(UNKNOWN_KEY["code"], UNKNOWN_KEY["msg"])
        return 200, {}

    def listen_key_close(self, params: Params, received_ns: int) -> Reply:
        stream, key = self._user_stream(), mandatory(params, "listenKey")
        if not stream.keys.close(key):
            raise Rejected(UNKNOWN_KEY["code"], UNKNOWN_KEY["msg"])
        stream.closed_key(key)
        return 200, {}

    # --- inspection and control ------------------------------------------------------------------

    def paper_orders(self, params: Params, received_ns: int) -> Reply:
        return 200, [shapes.inspection_json(o) for o in self.book.all_orders(params.get("symbol"))]

    def paper_balances(self, params: Params, received_ns: int) -> Reply:
        return 200, shapes.balances_json(self.book.balance_sheet())

    def paper_usage(self, params: Params, received_ns: int) -> Reply:
        """GET /paper/usage: the weight counted (`usage.py`) and what the gates refused."""
        return 200, {**self.usage.counted(), "dropped": dict(self.gate.dropped) if self.gate is not None else {},
                     "stream_dropped": dict(self.stream.dropped) if self.stream is not None else {},
                     "market_stream_dropped": dict(self.stream.market.dropped) if self.stream and self.stream.market else {}}

    def unseen_trade(self, body: bytes) -> Reply:
        try:
            trade = msgspec.json.decode(body, type=dict[str, str])
            f, price, qty = symbol_filters(trade["symbol"]), Decimal(trade["price"]), Decimal(trade["qty"])
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
        self.faults.set(faults)
        log.info("faults now %s", msgspec.json.encode(faults).decode())
        return 200, faults

    # --- one request ------------------------------------------------------------------------

    def handle(self, request: Handler, method: str) -> None:
        url = urlsplit(request.path)
        body = request.body  # read in full, within its deadline and size limit, by `http.Handler`
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
        params = request_params(url.query, form)
        used = self.usage.count(weight_of(method, url.path, params, weight)) if weight else self.usage.used()
        fault = self.faults.draw() if (method, url.path) == NEW_ORDER else None
        if fault in REFUSED:
            self._refuse(request, fault, used, params)
            return
        if fault in LATE:
            handler = self.late_order

        def call() -> Reply:
            microseconds = wants_microseconds(request.headers)
            if signed:
                self.auth.check_signed(request.headers, url.query, form, params)
            elif url.path == "/api/v3/userDataStream":
                self.auth.check_key(request.headers)
            status, reply = handler(params, request.received_ns)
            return status, shapes.in_microseconds(reply) if microseconds else reply

        status, reply = self._guarded(call)
        if fault is None and status != 200 and (method, url.path) == NEW_ORDER:
            log.info("rejected %s %s: %s", params.get("symbol"), params.get("newClientOrderId"), reply.get("msg"))
        if fault in ANSWER_503 and status == 200:
            log.warning("fault: accepted %s, answering 503", params.get("newClientOrderId"))
            status, reply = 503, EXECUTION_UNKNOWN
        elif fault in ANSWER_NOTHING and status == 200:
            log.warning("fault: accepted %s, answering nothing for %.1fs",
                        params.get("newClientOrderId"), self.faults.hang_seconds)
            time.sleep(self.faults.hang_seconds)
            request.close_connection = True
            return
        counted = status == 200 or (isinstance(reply, dict) and "data" in reply)
        placing = (method, url.path) in (NEW_ORDER, CANCEL_REPLACE, NEW_OCO)
        order_counts = self.order_count.headers() if counted and placing else None
        self._respond(request, status, reply, used, order_counts)

    def _guarded(self, call: Callable[[], Reply]) -> Reply:
        try:
            return call()
        except Rejected as exc:
            return exc.status, exc.answer()
        except Exception:
            log.exception("internal error")
            return 500, {"code": -1000, "msg": "An unknown error occurred while processing the request."}

    def _refuse(self, request: Handler, fault: str, used: int, params: Params) -> None:
        log.warning("fault %s on new order %s", fault, params.get("newClientOrderId"))
        if fault == "drop_connection":
            request.close_connection = True
            return
        status, reply, headers = self.faults.refusal(fault)
        self._respond(request, status, reply, used, headers)

    def _respond(self, request: Handler, status: int, reply: Any, used: int, extra: dict[str, str] | None = None) -> None:
        payload = msgspec.json.encode(reply)
        path = urlsplit(request.path).path
        if not path.startswith("/paper/"):  # inspection is free, and uncounted
            self.usage.answered(request.command, path, status)
        request.send_response(status)
        request.send_header("Content-Type", "application/json;charset=UTF-8")
        request.send_header("Content-Length", str(len(payload)))
        request.send_header("X-MBX-USED-WEIGHT-1M", str(used))
        for name, value in (extra or {}).items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(payload)

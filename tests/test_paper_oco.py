"""OCO order lists on the paper exchange (issue 26), as Binance's rest-api.md ("New Order list -
OCO", the order list queries and cancel), errors.md and user-data-stream.md describe them.

Through ccxt's raw calls (`privatePostOrderListOco` & co: an independent client's own paths and
signing) and hand-made requests against a paper exchange process, trades from the test's XPUB, the
user data stream over a websocket; and the book itself for partial fills and a restart.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from test_client_library import ccxt_binance
from test_paper_exchange import KEY, SECRET, Exchange, Market, ex, follow, market, signature, start  # noqa: F401 - fixtures
from test_user_stream import Stream, listen_key

from naived.core.symbols import SymbolFilters, lookup
from naived.paper.book import Balance, Change, NewOrder, PaperBook
from naived.paper.oco import price_check
from naived.paper.userstream import execution_report

SYMBOL = "XRPUSDT"
# A SELL OCO around the last price 0.5: take profit as a LIMIT_MAKER at 0.52, stop loss at 0.48 (limit 0.47)
SELL = {"symbol": SYMBOL, "side": "SELL", "quantity": "20", "aboveType": "LIMIT_MAKER", "abovePrice": "0.52",
        "belowType": "STOP_LOSS_LIMIT", "belowStopPrice": "0.48", "belowPrice": "0.47", "belowTimeInForce": "GTC",
        "listClientOrderId": "list1", "aboveClientOrderId": "tp", "belowClientOrderId": "sl"}


def trade(ex: Exchange, market: Market, price: str, qty: str = "1000") -> None:
    ex.processed(SYMBOL, market.trade(SYMBOL, price, qty))


def oco(ex: Exchange, **params: str) -> tuple[int, Any]:
    return ex.signed("POST", "/api/v3/orderList/oco", params)


def test_ccxt_places_an_oco_and_the_stop_triggering_expires_the_other_leg(ex: Exchange, market: Market) -> None:
    follow(ex, market)
    trade(ex, market, "0.5")
    exchange = ccxt_binance(ex)
    stream = Stream(ex.ws_url, listen_key(ex))
    placed = exchange.privatePostOrderListOco(dict(SELL))
    assert {k: placed[k] for k in ("contingencyType", "listStatusType", "listOrderStatus", "listClientOrderId",
                                   "symbol")} == {"contingencyType": "OCO", "listStatusType": "EXEC_STARTED",
                                                  "listOrderStatus": "EXECUTING", "listClientOrderId": "list1",
                                                  "symbol": SYMBOL}
    # the stop-loss leg first, as Binance's examples number them; FULL reports by default
    assert [(o["clientOrderId"], o["orderId"]) for o in placed["orders"]] == [("sl", 1), ("tp", 2)]
    sl, tp = placed["orderReports"]
    assert (sl["type"], sl["stopPrice"], sl["workingTime"], sl["orderListId"], sl["fills"]) == (
        "STOP_LOSS_LIMIT", "0.48000000", -1, placed["orderListId"], [])
    assert (tp["type"], tp["price"], "stopPrice" in tp, tp["workingTime"] > 0) == ("LIMIT_MAKER", "0.52000000", False, True)
    # the quantity is locked once for the pair
    assert ex.balances()["XRP"] == {"free": Decimal(80), "locked": Decimal(20)}
    # two executionReports NEW, then the list's status, then the balances
    events = [stream.next() for _ in range(4)]
    assert [(e["e"], e.get("x"), e.get("C") if e["e"] == "listStatus" else e.get("c")) for e in events] == [
        ("executionReport", "NEW", "sl"), ("executionReport", "NEW", "tp"), ("listStatus", None, "list1"),
        ("outboundAccountPosition", None, None)]
    assert events[0]["g"] == events[1]["g"] == placed["orderListId"]
    assert {k: events[2][k] for k in ("s", "g", "c", "l", "L", "r", "O")} == {
        "s": SYMBOL, "g": placed["orderListId"], "c": "OCO", "l": "EXEC_STARTED", "L": "EXECUTING", "r": "NONE",
        "O": [{"s": SYMBOL, "i": 1, "c": "sl"}, {"s": SYMBOL, "i": 2, "c": "tp"}]}
    # the legs are open orders with their orderListId; the list is open
    assert {o["clientOrderId"]: o["orderListId"] for o in exchange.privateGetOpenOrders({"symbol": SYMBOL})} == {
        "sl": placed["orderListId"], "tp": placed["orderListId"]}
    (open_list,) = exchange.privateGetOpenOrderList()
    assert open_list == {k: placed[k] for k in placed if k != "orderReports"}

    trade(ex, market, "0.48")  # the stop triggers: it works (and fills, marketable) and the LIMIT_MAKER expires
    orders = ex.orders()
    assert (orders["sl"]["status"], orders["tp"]["status"]) == ("FILLED", "EXPIRED")
    assert ex.balances()["XRP"] == {"free": Decimal(80), "locked": Decimal(0)}
    events = [stream.next() for _ in range(5)]
    assert [(e["e"], e.get("C") if e["e"] == "listStatus" else e.get("c"), e.get("x"), e.get("eR")) for e in events] == [
        ("executionReport", "tp", "EXPIRED", "OCO_TRIGGER"), ("executionReport", "sl", "NEW", None),
        ("executionReport", "sl", "TRADE", None), ("listStatus", "list1", None, None),
        ("outboundAccountPosition", None, None, None)]
    assert (events[3]["l"], events[3]["L"]) == ("ALL_DONE", "ALL_DONE")
    assert exchange.privateGetOpenOrderList() == []
    got = exchange.privateGetOrderList({"orderListId": placed["orderListId"]})
    assert (got["listStatusType"], got["listOrderStatus"], got["orders"]) == ("ALL_DONE", "ALL_DONE", placed["orders"])
    assert exchange.privateGetOrderList({"origClientOrderId": "list1"}) == got
    stream.close()


def test_the_limit_maker_filling_expires_the_stop_and_a_buy_locks_the_larger_leg(ex: Exchange, market: Market) -> None:
    follow(ex, market)
    trade(ex, market, "0.5")
    # a BUY: take profit below (LIMIT_MAKER at 0.48), stop loss above (stop 0.52, limit 0.53)
    status, placed = oco(ex, symbol=SYMBOL, side="BUY", quantity="20", aboveType="STOP_LOSS_LIMIT",
                         aboveStopPrice="0.52", abovePrice="0.53", aboveTimeInForce="GTC", belowType="LIMIT_MAKER",
                         belowPrice="0.48", newOrderRespType="ACK")
    assert status == 200, placed
    assert set(placed["orderReports"][0]) == {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}
    assert [r["orderId"] for r in placed["orderReports"]] == [1, 2]  # the stop loss (above) first
    # the larger of the legs' commitments: 20 × 0.53, once
    assert ex.balances()["USDT"] == {"free": Decimal("10000") - Decimal("10.6"), "locked": Decimal("10.6")}
    trade(ex, market, "0.47")  # crosses the LIMIT_MAKER: it fills at its price, the stop loss expires
    stop, limit = (ex.orders()[o["clientOrderId"]] for o in placed["orders"])
    assert (stop["status"], limit["status"], limit["executedQty"]) == ("EXPIRED", "FILLED", "20.00000000")
    assert ex.balances()["USDT"] == {"free": Decimal("10000") - Decimal("9.6"), "locked": Decimal(0)}
    trade(ex, market, "0.53")  # through the expired stop: nothing
    assert ex.orders()[stop["clientOrderId"]]["executedQty"] == "0.00000000"


def test_cancelling_a_leg_or_the_list_cancels_both(ex: Exchange, market: Market) -> None:
    follow(ex, market)
    trade(ex, market, "0.5")
    exchange = ccxt_binance(ex)
    first = exchange.privatePostOrderListOco(dict(SELL))
    cancelled = exchange.privateDeleteOrderList({"symbol": SYMBOL, "listClientOrderId": "list1",
                                                 "newClientOrderId": "stop-it"})
    assert (cancelled["listStatusType"], cancelled["listOrderStatus"], cancelled["orderListId"]) == (
        "ALL_DONE", "ALL_DONE", first["orderListId"])
    assert [(r["origClientOrderId"], r["clientOrderId"], r["status"], r["orderListId"])
            for r in cancelled["orderReports"]] == [("sl", "stop-it", "CANCELED", 1), ("tp", "stop-it", "CANCELED", 1)]
    assert ex.balances()["XRP"] == {"free": Decimal(100), "locked": Decimal(0)}
    status, body = ex.signed("DELETE", "/api/v3/orderList", {"symbol": SYMBOL, "orderListId": first["orderListId"]})
    assert (status, body) == (400, {"code": -2011, "msg": "Unknown order list sent."})
    # the same ids again, now that the first list is done; cancelling one leg cancels the list
    second = exchange.privatePostOrderListOco(dict(SELL))
    assert second["orderListId"] == first["orderListId"] + 1
    status, body = ex.signed("DELETE", "/api/v3/order", {"symbol": SYMBOL, "origClientOrderId": "tp"})
    assert status == 200 and (body["status"], body["orderListId"]) == ("CANCELED", second["orderListId"])
    assert {o["clientOrderId"]: o["status"] for o in ex.get("/paper/orders") if o["orderListId"] == 2} == {
        "sl": "CANCELED", "tp": "CANCELED"}
    assert ex.balances()["XRP"] == {"free": Decimal(100), "locked": Decimal(0)}
    # DELETE openOrders answers a list's legs as the list
    exchange.privatePostOrderListOco(dict(SELL))
    status, body = ex.signed("DELETE", "/api/v3/openOrders", {"symbol": SYMBOL})
    assert status == 200 and [(e["orderListId"], e["contingencyType"], len(e["orderReports"])) for e in body] == [
        (3, "OCO", 2)]
    assert [e["orderListId"] for e in exchange.privateGetAllOrderList()] == [3, 2, 1]  # newest first
    assert [e["orderListId"] for e in exchange.privateGetAllOrderList({"fromId": 2, "limit": 1})] == [2]
    assert ex.balances()["XRP"] == {"free": Decimal(100), "locked": Decimal(0)}


def test_binances_rules_and_errors(ex: Exchange, market: Market) -> None:
    follow(ex, market)
    trade(ex, market, "0.5")
    bad = "The relationship of the prices for the orders is not correct."
    cases = [
        ({"aboveType": "LIMIT"}, -1158, "Order type not supported in OCO."),
        ({"aboveType": "STOP_MARKET"}, -1116, "Invalid orderType."),
        ({"belowType": "LIMIT_MAKER", "belowPrice": "0.47", "belowStopPrice": "", "belowTimeInForce": ""}, -1168,
         "At least one OCO order must be contingent."),
        ({"aboveType": "STOP_LOSS_LIMIT", "aboveStopPrice": "0.52", "aboveTimeInForce": "GTC"}, -1197,
         "A stop loss order in a sell OCO must be below."),
        ({"belowType": "TAKE_PROFIT_LIMIT"}, -1199, "A take profit order in a sell OCO must be above."),
        ({"side": "BUY"}, -1165, "A limit order in a buy OCO must be below."),
        ({"abovePrice": "0.49"}, -2010, bad),  # the limit below the last price
        ({"belowStopPrice": "0.51"}, -2010, bad),  # the stop above it
        ({"belowStopPrice": "0.5"}, -2010, bad),  # at it: strictly below, as Binance writes it
        ({"belowTimeInForce": ""}, -1102,
         "Mandatory parameter 'belowTimeInForce' was not sent, was empty/null, or malformed."),
        ({"aboveStopPrice": "0.6"}, -1106, "Parameter 'aboveStopPrice' sent when not required."),
        ({"belowTrailingDelta": "100"}, -2010, "Trailing stop orders are not supported for this symbol."),
        ({"belowType": "STOP_LOSS", "belowPrice": "", "belowTimeInForce": ""}, -2010,
         "Stop loss orders are not supported for this symbol."),
        ({"abovePrice": "0.520005"}, -1013, "Filter failure: PRICE_FILTER"),
        ({"quantity": "101"}, -2010, "Account has insufficient balance for requested action."),
        ({"aboveClientOrderId": "sl"}, -2010, "Duplicate order sent."),
    ]
    for params, code, msg in cases:
        assert oco(ex, **{**SELL, **params}) == (400, {"code": code, "msg": msg}), params
    assert ex.orders() == {} and ex.balances()["XRP"]["locked"] == 0
    # a quantity of 100 is enough once for both legs
    assert oco(ex, **{**SELL, "quantity": "100"})[0] == 200
    assert oco(ex, **{**SELL, "aboveClientOrderId": "a2", "belowClientOrderId": "b2"}) == (
        400, {"code": -2010, "msg": "Duplicate order sent."})  # listClientOrderId list1 is open
    status, body = ex.signed("GET", "/api/v3/orderList", {"orderListId": "9"})
    assert (status, body) == (400, {"code": -2013, "msg": "Order list does not exist."})
    info = ex.get("/api/v3/exchangeInfo?symbol=XRPUSDT")["symbols"][0]
    assert (info["ocoAllowed"], info["otoAllowed"]) == (True, False)


def test_an_oco_counts_two_orders_and_weighs_as_binance_says(ex: Exchange, market: Market) -> None:
    follow(ex, market)
    trade(ex, market, "0.5")
    query = urlencode({**SELL, "timestamp": int(time.time() * 1000)})
    before = ex.get("/paper/usage")["weight"]
    r = ex.http.post(f"{ex.url}/api/v3/orderList/oco?{query}&signature={signature(SECRET, query)}",
                     headers={"X-MBX-APIKEY": KEY}, timeout=5)
    assert r.status_code == 200 and r.headers["X-MBX-ORDER-COUNT-10S"] == "2"  # two orders placed
    assert ex.get("/paper/usage")["weight"] == before + 1
    for path, weight in [("/api/v3/orderList", 4), ("/api/v3/openOrderList", 6), ("/api/v3/allOrderList", 20),
                         ("/api/v3/orderList", 1)]:
        before = ex.get("/paper/usage")["weight"]
        params = {"orderListId": "1"} if path == "/api/v3/orderList" else {}
        assert ex.signed("DELETE" if weight == 1 else "GET", path, params | ({"symbol": SYMBOL} if weight == 1 else {}))[0] == 200
        assert ex.get("/paper/usage")["weight"] == before + weight, path


def test_oco_survives_a_restart_and_still_cancels_the_other_leg(ex: Exchange, market: Market) -> None:
    follow(ex, market)
    trade(ex, market, "0.5")
    status, placed = oco(ex, **SELL)
    assert status == 200
    orders, balances = ex.orders(), ex.balances()
    ex.kill()
    ex.start()
    assert ex.orders() == orders and ex.balances() == balances
    status, (listed,) = ex.signed("GET", "/api/v3/openOrderList", {})
    assert listed == {k: placed[k] for k in placed if k != "orderReports"}
    market.wait_subscribed(SYMBOL)
    trade(ex, market, "0.53")  # the LIMIT_MAKER fills; the stop expires
    assert {k: o["status"] for k, o in ex.orders().items()} == {"sl": "EXPIRED", "tp": "FILLED"}
    assert ex.balances()["XRP"] == {"free": Decimal(80), "locked": Decimal(0)}
    assert ex.signed("GET", "/api/v3/openOrderList", {}) == (200, [])


# --- the book itself --------------------------------------------------------------------------


def xrp() -> SymbolFilters:
    f = lookup(SYMBOL)
    assert f is not None
    return f


def legs() -> tuple[NewOrder, NewOrder]:
    stop = NewOrder("SELL", "STOP_LOSS_LIMIT", "GTC", "sl", 0, Decimal("0.47"), Decimal(20), stop_price=Decimal("0.48"))
    limit = NewOrder("SELL", "LIMIT_MAKER", "GTC", "tp", 0, Decimal("0.52"), Decimal(20))
    return stop, limit


def test_a_partial_fill_of_a_leg_expires_the_other_and_the_rest_keeps_its_lock() -> None:
    f = xrp()
    book = PaperBook(Path(":memory:"), {"XRP": Decimal(100)}, partial_fills=True)
    changes: list[Change] = []
    book.listeners.append(changes.extend)
    book.on_trade(f, Decimal("0.5"), Decimal(1000), 1)
    stop, limit = legs()
    book.place_oco(f, (stop, limit), "l", price_check(limit, stop))
    del changes[:]
    book.on_trade(f, Decimal("0.53"), Decimal(5), 2)  # 5 of the 20 fill
    reports = [execution_report(c, i, 0) for i, c in enumerate(changes)]
    assert [(r["c"], r["x"], r["X"]) for r in reports] == [("sl", "EXPIRED", "EXPIRED"), ("tp", "TRADE", "PARTIALLY_FILLED")]
    assert changes[-1].order_list is not None and changes[-1].order_list.status == "ALL_DONE"
    assert book.balance_sheet()["XRP"] == Balance(Decimal(80), Decimal(15))
    del changes[:]
    book.on_trade(f, Decimal("0.53"), Decimal(100), 3)  # the rest: no list to end any more
    assert [(c.execution, c.order.status, c.order_list) for c in changes] == [("TRADE", "FILLED", None)]
    assert book.balance_sheet()["XRP"] == Balance(Decimal(80), Decimal(0))


def test_the_lists_and_their_legs_are_kept_on_disk(tmp_path: Path) -> None:
    f, path = xrp(), tmp_path / "paper.sqlite"
    book = PaperBook(path, {"XRP": Decimal(100)})
    book.on_trade(f, Decimal("0.5"), Decimal(1000), 1)
    stop, limit = legs()
    placed, _ = book.place_oco(f, (stop, limit), "l", price_check(limit, stop))
    book.close()
    book = PaperBook(path, {"XRP": Decimal(100)})
    assert book.find_list(placed.order_list_id, None) == book.find_list(None, "l")
    found = book.find_list(placed.order_list_id, "l")
    assert found is not None and found[0] == placed and [o.order_list_id for o in found[1]] == [1, 1]
    book.on_trade(f, Decimal("0.48"), Decimal(1000), 2)  # triggered: the stop works, the limit maker expires
    assert [o.status for o in book.find_list(1, None)[1]] == ["FILLED", "EXPIRED"]  # type: ignore[index]
    assert book.order_lists(only_open=True) == []
    book.close()
    again = PaperBook(path, {"XRP": Decimal(100)})
    assert again.order_lists()[0][0].status == "ALL_DONE"

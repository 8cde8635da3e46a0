"""Three independent Python clients of Binance against a real paper exchange process.

Binance's own connector (binance-connector, `binance.spot.Spot`), python-binance
(`binance.client.Client`) and ccxt (`ccxt.binance`): their request signing, their parameter
encoding (the connector puts everything in the query string, also for POST, PUT and DELETE, under
a JSON Content-Type with no body; python-binance and ccxt send a form body for POST, and
python-binance for DELETE too), the fields they read and their error handling are not naived's.
What they can do against api.binance.com they must be able to do against the paper exchange,
cancelReplace included (ccxt's `edit_order` on a spot market is a cancelReplace). Each client's
`requests` session can reach the paper exchange only (`loopback_only`). Trades come from the
test's XPUB (`Market`), as in test_paper_exchange.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import ccxt
import pytest
import requests
from binance.client import Client
from binance.error import ClientError
from binance.exceptions import BinanceAPIException
from binance.spot import Spot
from requests.adapters import BaseAdapter, HTTPAdapter
from test_paper_exchange import KEY, SECRET, Exchange, Market, ex, market, start  # noqa: F401 - fixtures

SYMBOL = "XRPUSDT"


class Refuse(BaseAdapter):
    """Mounted for every address but the paper exchange's: a client that tries to leave the
    machine (Binance's real hosts, a futures or margin endpoint) fails the test."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        raise AssertionError(f"a request to {request.url}: only the paper exchange may be asked")

    def close(self) -> None:
        pass


def loopback_only(session: requests.Session, ex: Exchange) -> None:
    session.trust_env = False  # loopback: no proxy from the environment
    session.mount("http://", Refuse())
    session.mount("https://", Refuse())
    session.mount(f"{ex.url}/", HTTPAdapter())  # the longest matching prefix wins


def spot(ex: Exchange, key: str = KEY, secret: str = SECRET, **options: Any) -> Spot:
    client = Spot(api_key=key, api_secret=secret, base_url=ex.url, timeout=5, **options)
    loopback_only(client.session, ex)
    return client


def balances(client: Spot) -> dict[str, dict[str, Decimal]]:
    """GET /api/v3/account through the library, as Decimals."""
    return {b["asset"]: {"free": Decimal(b["free"]), "locked": Decimal(b["locked"])} for b in client.account()["balances"]}


def refused(call: Callable[[], Any]) -> tuple[int, int, str]:
    """(HTTP status, Binance code, message) of the ClientError the library raises for `call`."""
    with pytest.raises(ClientError) as info:
        call()
    return info.value.status_code, info.value.error_code, info.value.error_message


def test_server_time_and_exchange_info(ex: Exchange) -> None:
    client = spot(ex)
    assert client.ping() == {}
    assert abs(client.time()["serverTime"] - time.time() * 1000) < 1000
    info = client.exchange_info(symbol=SYMBOL)
    (xrp,) = info["symbols"]
    assert (xrp["symbol"], xrp["status"], xrp["baseAsset"], xrp["quoteAsset"]) == (SYMBOL, "TRADING", "XRP", "USDT")
    filters = {f["filterType"]: f for f in xrp["filters"]}
    assert Decimal(filters["PRICE_FILTER"]["tickSize"]) == Decimal("0.0001")
    assert Decimal(filters["LOT_SIZE"]["stepSize"]) == Decimal("1")
    # the library sends `symbols` as a JSON array
    assert [s["symbol"] for s in client.exchange_info(symbols=["BTCUSDT", SYMBOL])["symbols"]] == ["BTCUSDT", SYMBOL]
    assert refused(lambda: client.exchange_info(symbol="NOPEUSDT")) == (400, -1121, "Invalid symbol.")
    # the weight header, as the library reads it
    usage = spot(ex, show_limit_usage=True).ping()
    assert usage["data"] == {} and int(usage["limit_usage"]["x-mbx-used-weight-1m"]) > 0


def test_a_resting_limit_order_queried_listed_and_cancelled(ex: Exchange) -> None:
    client = spot(ex)
    assert balances(client) == {"USDT": {"free": Decimal("10000"), "locked": Decimal(0)},
                                "XRP": {"free": Decimal("100"), "locked": Decimal(0)}}
    placed = client.new_order(SYMBOL, "BUY", "LIMIT", timeInForce="GTC", price="0.5", quantity="20",
                              newClientOrderId="lib-b1")
    # no trade seen yet: it rests; LIMIT answers in FULL by default
    assert (placed["status"], placed["clientOrderId"], placed["fills"]) == ("NEW", "lib-b1", [])
    assert (Decimal(placed["price"]), Decimal(placed["origQty"]), Decimal(placed["executedQty"])) == (
        Decimal("0.5"), Decimal("20"), Decimal(0))
    assert balances(client)["USDT"] == {"free": Decimal("9990"), "locked": Decimal("10")}

    by_id = client.get_order(SYMBOL, orderId=placed["orderId"])
    assert client.get_order(SYMBOL, origClientOrderId="lib-b1") == by_id
    assert (by_id["orderId"], by_id["status"], by_id["side"], by_id["type"], by_id["timeInForce"]) == (
        placed["orderId"], "NEW", "BUY", "LIMIT", "GTC")
    assert [o["orderId"] for o in client.get_open_orders(SYMBOL)] == [placed["orderId"]]
    assert client.get_open_orders() == client.get_open_orders(SYMBOL)  # every symbol

    cancelled = client.cancel_order(SYMBOL, orderId=placed["orderId"])
    assert (cancelled["orderId"], cancelled["origClientOrderId"], cancelled["status"]) == (
        placed["orderId"], "lib-b1", "CANCELED")
    assert client.get_open_orders(SYMBOL) == []
    assert client.get_order(SYMBOL, origClientOrderId="lib-b1")["status"] == "CANCELED"
    assert balances(client)["USDT"] == {"free": Decimal("10000"), "locked": Decimal(0)}
    assert refused(lambda: client.cancel_order(SYMBOL, orderId=placed["orderId"])) == (400, -2011, "Unknown order sent.")


def test_marketable_orders_fill_at_once_as_takers(start: Callable[..., Exchange], market: Market) -> None:
    ex = start('maker_commission = "0.001"\ntaker_commission = "0.002"')
    client = spot(ex)
    client.exchange_info(symbol=SYMBOL)  # as a trader would: the exchange follows XRPUSDT from now on
    market.wait_subscribed(SYMBOL)
    ex.processed(SYMBOL, market.trade(SYMBOL, "0.5"))
    before = balances(client)

    buy = client.new_order(SYMBOL, "BUY", "LIMIT", timeInForce="GTC", price="0.6", quantity="20",
                           newOrderRespType="FULL", newClientOrderId="lib-take")
    assert (buy["status"], Decimal(buy["executedQty"]), Decimal(buy["cummulativeQuoteQty"])) == (
        "FILLED", Decimal("20"), Decimal("10"))
    (fill,) = buy["fills"]
    # at the last price, not the 0.6 limit; the taker's 0.2% of the 20 XRP received
    assert (Decimal(fill["price"]), Decimal(fill["qty"])) == (Decimal("0.5"), Decimal("20"))
    assert (Decimal(fill["commission"]), fill["commissionAsset"]) == (Decimal("20") * Decimal("0.002"), "XRP")
    after = balances(client)
    assert after["XRP"] == {"free": before["XRP"]["free"] + Decimal("20") - Decimal("0.04"), "locked": Decimal(0)}
    assert after["USDT"] == {"free": before["USDT"]["free"] - Decimal("20") * Decimal("0.5"), "locked": Decimal(0)}

    (trade,) = client.my_trades(SYMBOL, orderId=buy["orderId"])
    assert (trade["orderId"], trade["isBuyer"], trade["isMaker"], trade["commissionAsset"]) == (
        buy["orderId"], True, False, "XRP")
    assert (Decimal(trade["price"]), Decimal(trade["qty"]), Decimal(trade["quoteQty"]), Decimal(trade["commission"])) == (
        Decimal("0.5"), Decimal("20"), Decimal("10"), Decimal("0.04"))

    # a MARKET SELL pays in the USDT it receives: 10 × 0.5 × 0.2%
    sell = client.new_order(SYMBOL, "SELL", "MARKET", quantity="10")
    assert sell["status"] == "FILLED" and sell["clientOrderId"]  # generated when not sent
    assert [(Decimal(f["commission"]), f["commissionAsset"]) for f in sell["fills"]] == [(Decimal("0.01"), "USDT")]
    assert balances(client)["USDT"]["free"] == after["USDT"]["free"] + Decimal("5") - Decimal("0.01")

    every = client.get_orders(SYMBOL)
    assert [(o["orderId"], o["type"], o["side"], o["status"]) for o in every] == [
        (buy["orderId"], "LIMIT", "BUY", "FILLED"), (sell["orderId"], "MARKET", "SELL", "FILLED")]
    assert [(t["orderId"], t["isBuyer"]) for t in client.my_trades(SYMBOL)] == [(buy["orderId"], True), (sell["orderId"], False)]


def test_errors_are_the_librarys_client_errors_with_binances_codes(ex: Exchange) -> None:
    client = spot(ex)
    assert refused(lambda: client.get_order(SYMBOL, orderId=424242)) == (400, -2013, "Order does not exist.")
    assert refused(lambda: client.get_order(SYMBOL, origClientOrderId="never-placed")) == (400, -2013, "Order does not exist.")
    assert refused(lambda: client.new_order(SYMBOL, "BUY", "LIMIT", timeInForce="GTC", price="0.5", quantity="20.5")) == (
        400, -1013, "Filter failure: LOT_SIZE")
    assert refused(lambda: client.new_order(SYMBOL, "BUY", "LIMIT", timeInForce="GTC", price="0.5", quantity="lots"))[:2] == (
        400, -1100)
    assert refused(lambda: spot(ex, secret="wrong").account()) == (400, -1022, "Signature for this request is not valid.")
    assert client.get_orders(SYMBOL) == []  # nothing placed


def test_listen_keys(ex: Exchange) -> None:
    client = spot(ex)
    key = client.new_listen_key()["listenKey"]
    assert len(key) == 60 and client.new_listen_key() == {"listenKey": key}  # the account's active key, extended
    assert client.renew_listen_key(key) == {}
    assert client.close_listen_key(key) == {}
    assert refused(lambda: client.renew_listen_key(key)) == (400, -1125, "This listenKey does not exist.")
    assert refused(lambda: spot(ex, key="other").new_listen_key())[:2] == (401, -2015)


def test_times_in_microseconds_when_the_header_asks(ex: Exchange) -> None:
    """Binance: `X-MBX-TIME-UNIT: MICROSECOND` (the library's `time_unit`) puts every time field of
    the JSON answers in µs; `startTime`/`endTime` may be sent in ms or µs whatever the header."""
    micro, milli = spot(ex, time_unit="MICROSECOND"), spot(ex)
    for now_us in (micro.time()["serverTime"], micro.exchange_info(symbol=SYMBOL)["serverTime"], micro.account()["updateTime"]):
        assert abs(now_us - time.time() * 1_000_000) < 1_000_000
    placed = micro.new_order(SYMBOL, "BUY", "LIMIT", timeInForce="GTC", price="0.5", quantity="20")
    as_ms = milli.get_order(SYMBOL, orderId=placed["orderId"])
    # the same instants (Binance's µs carry more digits: compare the milliseconds)
    assert (placed["transactTime"] // 1000, placed["workingTime"] // 1000) == (as_ms["time"], as_ms["workingTime"])
    times = ("time", "updateTime", "workingTime")
    as_us = micro.get_order(SYMBOL, orderId=placed["orderId"])
    assert {k: as_us[k] // 1000 for k in times} == {k: as_ms[k] for k in times}
    assert micro.get_open_orders(SYMBOL) == [as_us] and milli.get_open_orders(SYMBOL) == [as_ms]
    cancelled_at = micro.cancel_order(SYMBOL, orderId=placed["orderId"])["transactTime"]
    assert cancelled_at // 1000 == milli.get_order(SYMBOL, orderId=placed["orderId"])["updateTime"]
    for since in (as_ms["time"], as_us["time"]):  # ms or µs, with either header
        for client in (micro, milli):
            assert [o["orderId"] for o in client.get_orders(SYMBOL, startTime=since)] == [placed["orderId"]]
            assert client.get_orders(SYMBOL, endTime=since - 1) == []
    odd = spot(ex)
    odd.session.headers["X-MBX-TIME-UNIT"] = "SECOND"  # the library itself only sends the two units
    assert refused(odd.time) == (400, -1194, "Invalid value for time unit; expected either MICROSECOND or MILLISECOND.")


def test_avg_price_and_a_percent_price_by_side_refusal(ex: Exchange, market: Market) -> None:
    client = spot(ex)
    client.exchange_info(symbol=SYMBOL)
    market.wait_subscribed(SYMBOL)
    ex.processed(SYMBOL, market.trade(SYMBOL, "0.5"))
    average = client.avg_price(SYMBOL)
    assert (average["mins"], Decimal(average["price"])) == (5, Decimal("0.5"))
    assert refused(lambda: client.new_order(SYMBOL, "BUY", "LIMIT", timeInForce="GTC", price="0.0999", quantity="60")) == (
        400, -1013, "Filter failure: PERCENT_PRICE_BY_SIDE")
    assert client.new_order(SYMBOL, "BUY", "LIMIT", timeInForce="GTC", price="0.1", quantity="60")["status"] == "NEW"


def test_cancel_and_replace(ex: Exchange) -> None:
    """`cancel_and_replace`: POST /api/v3/order/cancelReplace; a partial failure is the library's
    ClientError with HTTP 409, Binance's -2021 and both halves in `error_data`."""
    client = spot(ex)
    old = client.new_order(SYMBOL, "SELL", "LIMIT", timeInForce="GTC", price="0.7", quantity="20", newClientOrderId="lib-o")
    done = client.cancel_and_replace(SYMBOL, "SELL", "LIMIT", "STOP_ON_FAILURE", cancelOrderId=old["orderId"],
                                     timeInForce="GTC", price="0.65", quantity="20", newClientOrderId="lib-n")
    assert (done["cancelResult"], done["newOrderResult"]) == ("SUCCESS", "SUCCESS")
    assert (done["cancelResponse"]["origClientOrderId"], done["cancelResponse"]["status"]) == ("lib-o", "CANCELED")
    assert (done["newOrderResponse"]["clientOrderId"], Decimal(done["newOrderResponse"]["price"])) == ("lib-n", Decimal("0.65"))
    assert [o["clientOrderId"] for o in client.get_open_orders(SYMBOL)] == ["lib-n"]
    assert balances(client)["XRP"] == {"free": Decimal("80"), "locked": Decimal("20")}

    with pytest.raises(ClientError) as info:  # the cancel fails; ALLOW_FAILURE places the new order anyway
        client.cancel_and_replace(SYMBOL, "SELL", "LIMIT", "ALLOW_FAILURE", cancelOrigClientOrderId="lib-o",
                                  timeInForce="GTC", price="0.66", quantity="20", newClientOrderId="lib-2")
    assert (info.value.status_code, info.value.error_code, info.value.error_message) == (
        409, -2021, "Order cancel-replace partially failed.")
    data = info.value.error_data
    assert (data["cancelResult"], data["newOrderResult"], data["cancelResponse"]) == (
        "FAILURE", "SUCCESS", {"code": -2011, "msg": "Unknown order sent."})
    assert sorted(o["clientOrderId"] for o in client.get_open_orders(SYMBOL)) == ["lib-2", "lib-n"]
    assert refused(lambda: client.cancel_and_replace(SYMBOL, "SELL", "LIMIT", "STOP_ON_FAILURE", cancelOrderId=424242,
                                                     timeInForce="GTC", price="0.66", quantity="20")) == (
        400, -2022, "Order cancel-replace failed.")
    # the unfilled order count headers, as the library reads them (`show_limit_usage`): lib-o, lib-n, lib-2
    counted = spot(ex, show_limit_usage=True).cancel_and_replace(
        SYMBOL, "SELL", "LIMIT", "STOP_ON_FAILURE", cancelOrigClientOrderId="lib-2", timeInForce="GTC", price="0.67",
        quantity="20")
    assert counted["data"]["newOrderResult"] == "SUCCESS"
    assert int(counted["limit_usage"]["x-mbx-order-count-1d"]) == 5  # and the not-attempted one above
    assert 1 <= int(counted["limit_usage"]["x-mbx-order-count-10s"]) <= 5


# --- python-binance (`binance.client.Client`) ------------------------------------------------------


def python_binance(ex: Exchange) -> Client:
    """python-binance at the paper exchange. Its URLs are `API_URL` + "/v3/" + path (`tld` and
    `base_endpoint` only fill in Binance's host name), so `API_URL` is set on the instance;
    `ping=False`, or the constructor would ask Binance's host before that."""
    client = Client(KEY, SECRET, ping=False, requests_params={"timeout": 5})
    client.API_URL = f"{ex.url}/api"
    loopback_only(client.session, ex)
    return client


def raised(call: Callable[[], Any]) -> tuple[int, int, str, Any]:
    """(HTTP status, Binance code, message, the body's `data`) of python-binance's BinanceAPIException."""
    with pytest.raises(BinanceAPIException) as info:
        call()
    return info.value.status_code, info.value.code, info.value.message, info.value.response.json().get("data")


def statuses(ex: Exchange) -> dict[str, str]:
    """Every order the paper exchange keeps, by clientOrderId: its status."""
    return {cid: o["status"] for cid, o in ex.orders().items()}


def terms(ex: Exchange, client_order_id: str) -> tuple[Decimal, Decimal]:
    """(price, quantity) of an order as the paper exchange keeps it."""
    kept = ex.orders()[client_order_id]
    return Decimal(kept["price"]), Decimal(kept["origQty"])


def test_python_binance_places_queries_replaces_and_cancels(ex: Exchange) -> None:
    """A resting order placed, queried, replaced by `cancel_replace_order` (POST
    /api/v3/order/cancelReplace) and cancelled, parameters in a form body (POST, DELETE)."""
    client = python_binance(ex)
    assert client.ping() == {}
    assert abs(client.get_server_time()["serverTime"] - time.time() * 1000) < 1000
    xrp = client.get_symbol_info(SYMBOL)  # looked up in the whole exchangeInfo
    assert xrp is not None and (xrp["baseAsset"], xrp["quoteAsset"], xrp["cancelReplaceAllowed"]) == ("XRP", "USDT", True)
    old = client.order_limit_sell(symbol=SYMBOL, quantity="20", price="0.7", newClientOrderId="pb-old")
    assert (old["status"], old["clientOrderId"], old["fills"]) == ("NEW", "pb-old", [])
    assert client.get_order(symbol=SYMBOL, orderId=old["orderId"])["status"] == "NEW"

    done = client.cancel_replace_order(symbol=SYMBOL, side="SELL", type="LIMIT", cancelReplaceMode="STOP_ON_FAILURE",
                                       cancelOrderId=old["orderId"], timeInForce="GTC", price="0.65", quantity="15",
                                       newClientOrderId="pb-new")
    assert (done["cancelResult"], done["newOrderResult"]) == ("SUCCESS", "SUCCESS")
    assert (done["cancelResponse"]["orderId"], done["cancelResponse"]["status"]) == (old["orderId"], "CANCELED")
    new = done["newOrderResponse"]
    assert (new["clientOrderId"], new["status"], Decimal(new["price"]), Decimal(new["origQty"])) == (
        "pb-new", "NEW", Decimal("0.65"), Decimal("15"))
    # as the client reads them back, and as the paper exchange keeps them
    assert client.get_order(symbol=SYMBOL, origClientOrderId="pb-old")["status"] == "CANCELED"
    listed = client.get_open_orders(symbol=SYMBOL)
    assert [(o["orderId"], o["status"], Decimal(o["price"]), Decimal(o["origQty"])) for o in listed] == [
        (new["orderId"], "NEW", Decimal("0.65"), Decimal("15"))]
    assert statuses(ex) == {"pb-old": "CANCELED", "pb-new": "NEW"}
    assert terms(ex, "pb-new") == (Decimal("0.65"), Decimal("15"))
    assert {b["asset"]: (Decimal(b["free"]), Decimal(b["locked"])) for b in client.get_account()["balances"]}["XRP"] == (
        Decimal("85"), Decimal("15"))

    assert client.cancel_order(symbol=SYMBOL, orderId=new["orderId"])["status"] == "CANCELED"
    assert client.get_open_orders(symbol=SYMBOL) == []
    assert raised(lambda: client.cancel_order(symbol=SYMBOL, orderId=new["orderId"])) == (
        400, -2011, "Unknown order sent.", None)


def test_python_binance_cancel_replace_failures(ex: Exchange) -> None:
    """A failed cancelReplace as python-binance raises it: BinanceAPIException with the HTTP status,
    Binance's code and msg, both halves under the body's `data`."""
    client = python_binance(ex)

    def replace(mode: str, price: str, **cancel: Any) -> Any:
        return client.cancel_replace_order(symbol=SYMBOL, side="SELL", type="LIMIT", cancelReplaceMode=mode,
                                           timeInForce="GTC", price=price, quantity="20", **cancel)

    unknown = {"code": -2011, "msg": "Unknown order sent."}
    # an unknown order, STOP_ON_FAILURE: nothing placed
    assert raised(lambda: replace("STOP_ON_FAILURE", "0.7", cancelOrderId=424242, newClientOrderId="pb-never")) == (
        400, -2022, "Order cancel-replace failed.",
        {"cancelResult": "FAILURE", "newOrderResult": "NOT_ATTEMPTED", "cancelResponse": unknown, "newOrderResponse": None})
    assert statuses(ex) == {}
    # ALLOW_FAILURE: placed all the same
    status, code, msg, data = raised(lambda: replace("ALLOW_FAILURE", "0.7", cancelOrigClientOrderId="pb-none",
                                                     newClientOrderId="pb-1"))
    assert (status, code, msg, data["cancelResult"], data["newOrderResult"], data["cancelResponse"]) == (
        409, -2021, "Order cancel-replace partially failed.", "FAILURE", "SUCCESS", unknown)
    assert data["newOrderResponse"]["clientOrderId"] == "pb-1" and statuses(ex) == {"pb-1": "NEW"}
    # the new order's filters are checked before the cancel: a plain error, pb-1 stays
    assert raised(lambda: replace("STOP_ON_FAILURE", "0.70005", cancelOrigClientOrderId="pb-1")) == (
        400, -1013, "Filter failure: PRICE_FILTER", None)
    assert statuses(ex) == {"pb-1": "NEW"}


# --- ccxt (`ccxt.binance`) -------------------------------------------------------------------------------

XRP = "XRP/USDT"  # ccxt's name of XRPUSDT


def ccxt_binance(ex: Exchange) -> ccxt.binance:
    """ccxt's Binance at the paper exchange: the spot API's public and private URLs point at it;
    only spot markets (no futures' exchangeInfo, no margin pairs) and no currencies (sapi), which
    the paper exchange does not serve; no rate limiter, to keep the tests quick."""
    exchange = ccxt.binance({
        "apiKey": KEY, "secret": SECRET, "enableRateLimit": False, "timeout": 5000,
        "urls": {"api": {"public": f"{ex.url}/api/v3", "private": f"{ex.url}/api/v3"}},
        "options": {"fetchMarkets": {"types": ["spot"]}, "fetchMargins": False, "fetchCurrencies": False},
    })
    loopback_only(exchange.session, ex)
    return exchange


def answer(error: ccxt.ExchangeError) -> Any:
    """Binance's JSON answer, which ccxt puts in its exception's message after "binance "."""
    return json.loads(str(error).removeprefix("binance "))


def test_ccxt_places_fetches_edits_and_cancels(ex: Exchange) -> None:
    """ccxt's unified calls: its markets from exchangeInfo's filters, a resting order placed,
    fetched, edited (`edit_order` on a spot market: a cancelReplace, STOP_ON_FAILURE) and cancelled."""
    exchange = ccxt_binance(ex)
    market = exchange.load_markets()[XRP]
    assert (market["id"], market["spot"], market["active"]) == (SYMBOL, True, True)
    assert (market["precision"]["price"], market["precision"]["amount"], market["limits"]["cost"]["min"]) == (0.0001, 1, 5)
    assert exchange.fetch_balance()["XRP"] == {"free": 100, "used": 0, "total": 100}
    old = exchange.create_order(XRP, "limit", "sell", 20, 0.7, {"newClientOrderId": "cx-old"})
    assert (old["status"], old["clientOrderId"], old["price"], old["amount"]) == ("open", "cx-old", 0.7, 20)
    assert exchange.fetch_order(old["id"], XRP)["status"] == "open"

    new = exchange.edit_order(old["id"], XRP, "limit", "sell", 15, 0.65, {"newClientOrderId": "cx-new"})
    assert new["id"] != old["id"]
    assert (new["status"], new["clientOrderId"], new["price"], new["amount"]) == ("open", "cx-new", 0.65, 15)
    assert exchange.fetch_order(old["id"], XRP)["status"] == "canceled"
    assert [(o["id"], o["price"], o["amount"]) for o in exchange.fetch_open_orders(XRP)] == [(new["id"], 0.65, 15)]
    assert statuses(ex) == {"cx-old": "CANCELED", "cx-new": "NEW"}
    assert terms(ex, "cx-new") == (Decimal("0.65"), Decimal("15"))
    assert exchange.fetch_balance()["XRP"] == {"free": 85, "used": 15, "total": 100}

    assert exchange.cancel_order(new["id"], XRP)["status"] == "canceled"
    assert exchange.fetch_open_orders(XRP) == []
    with pytest.raises(ccxt.OrderNotFound):  # -2011
        exchange.cancel_order(new["id"], XRP)


def test_ccxt_edit_order_failures(ex: Exchange) -> None:
    """A failed `edit_order` as ccxt raises it: an ExchangeError carrying Binance's answer. (ccxt's
    table for -2021/-2022 is keyed on Binance's spot hosts: at another URL they stay ExchangeError.)"""
    exchange = ccxt_binance(ex)
    exchange.load_markets()
    with pytest.raises(ccxt.ExchangeError) as unknown:
        exchange.edit_order("424242", XRP, "limit", "sell", 20, 0.7, {"newClientOrderId": "cx-never"})
    assert answer(unknown.value) == {"code": -2022, "msg": "Order cancel-replace failed.", "data": {
        "cancelResult": "FAILURE", "newOrderResult": "NOT_ATTEMPTED",
        "cancelResponse": {"code": -2011, "msg": "Unknown order sent."}, "newOrderResponse": None}}
    assert statuses(ex) == {}
    # the cancel succeeds and the new order is refused (more XRP than the account has): the old one is gone
    old = exchange.create_order(XRP, "limit", "sell", 20, 0.7, {"newClientOrderId": "cx-old"})
    with pytest.raises(ccxt.ExchangeError) as partial:
        exchange.edit_order(old["id"], XRP, "limit", "sell", 200, 0.65, {"newClientOrderId": "cx-big"})
    data = answer(partial.value)["data"]
    assert (answer(partial.value)["code"], data["cancelResult"], data["newOrderResult"], data["newOrderResponse"]) == (
        -2021, "SUCCESS", "FAILURE", {"code": -2010, "msg": "Account has insufficient balance for requested action."})
    assert statuses(ex) == {"cx-old": "CANCELED"} and exchange.fetch_order(old["id"], XRP)["status"] == "canceled"

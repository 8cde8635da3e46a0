"""Binance's own Python connector (binance-connector, `binance.spot.Spot`) against a real paper exchange process.

An independent client: its request signing, its parameter encoding (everything in the query
string, also for POST, PUT and DELETE, under a JSON Content-Type with no body), its JSON-array
`symbols` and its error handling (`ClientError` from Binance's `code`/`msg`) are not naived's.
What it can do against api.binance.com it must be able to do against the paper exchange.
Trades come from the test's XPUB (`Market`), as in test_paper_exchange.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from binance.error import ClientError
from binance.spot import Spot
from test_paper_exchange import KEY, SECRET, Exchange, Market, ex, market, start  # noqa: F401 - fixtures

SYMBOL = "XRPUSDT"


def spot(ex: Exchange, key: str = KEY, secret: str = SECRET, **options: Any) -> Spot:
    client = Spot(api_key=key, api_secret=secret, base_url=ex.url, timeout=5, **options)
    client.session.trust_env = False  # loopback: no proxy from the environment
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

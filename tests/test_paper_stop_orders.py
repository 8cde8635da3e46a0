"""Stop-loss and take-profit orders on the paper exchange (issue 26), as Binance documents them.

Through ccxt (an independent client: its own types, parameters and reading of the answers) against
a paper exchange process, trades from the test's XPUB; and the book itself for the direction of
every type and side, the execution reports and a restart. Binance's rules (rest-api.md, the
trailing-stop FAQ's "stop price condition"): a SELL stop loss triggers at last price <= stopPrice,
a SELL take profit at >=, BUY mirrored; a stop whose condition already holds is refused (-2010).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt
import pytest
from test_client_library import XRP, ccxt_binance
from test_paper_exchange import Exchange, Market, ex, follow, market, post, start  # noqa: F401 - fixtures

from naived.core.symbols import SymbolFilters, lookup
from naived.paper.book import Balance, Change, NewOrder, PaperBook, Rejected
from naived.paper.stops import WOULD_TRIGGER
from naived.paper.usage import OrderCount
from naived.paper.userstream import execution_report

SYMBOL = "XRPUSDT"


def trade(ex: Exchange, market: Market, price: str, qty: str = "1000") -> None:
    ex.processed(SYMBOL, market.trade(SYMBOL, price, qty))


def order(ex: Exchange, order_id: str) -> dict[str, Any]:
    status, body = ex.signed("GET", "/api/v3/order", {"symbol": SYMBOL, "orderId": order_id})
    assert status == 200, body
    return body


def test_ccxt_places_a_stop_loss_limit_and_a_take_profit_limit(ex: Exchange, market: Market) -> None:
    """ccxt's `stopLossPrice`/`takeProfitPrice` on a limit order: STOP_LOSS_LIMIT / TAKE_PROFIT_LIMIT,
    allowed because exchangeInfo lists them. The stop loss triggers on the first trade at or below
    its stop (and works as a LIMIT: marketable, it fills as a taker at the trade's price); the take
    profit, triggered above, rests at its limit until a later trade crosses it."""
    follow(ex, market)
    trade(ex, market, "0.5")
    exchange = ccxt_binance(ex)
    exchange.load_markets()
    # (the prices stay within the feed's 10% band around the recent trades: a wilder one is dropped)
    sl = exchange.create_order(XRP, "limit", "sell", 20, 0.47, {"stopLossPrice": 0.48, "newClientOrderId": "sl"})
    tp = exchange.create_order(XRP, "limit", "sell", 30, 0.53, {"takeProfitPrice": 0.52, "newClientOrderId": "tp"})
    assert ex.orders()["sl"]["type"] == "STOP_LOSS_LIMIT" and ex.orders()["tp"]["type"] == "TAKE_PROFIT_LIMIT"
    # funds are locked at placement, as for a resting order
    assert exchange.fetch_balance()["XRP"] == {"free": 50, "used": 50, "total": 100}
    fetched = exchange.fetch_order(sl["id"], XRP)
    assert (fetched["status"], fetched["triggerPrice"], fetched["price"], fetched["amount"]) == ("open", 0.48, 0.47, 20)
    raw = order(ex, sl["id"])
    assert (raw["stopPrice"], raw["isWorking"], raw["workingTime"]) == ("0.48000000", False, -1)
    assert sorted(o["clientOrderId"] for o in exchange.fetch_open_orders(XRP)) == ["sl", "tp"]

    trade(ex, market, "0.4801")  # above the stop loss, below the take profit: nothing
    trade(ex, market, "0.5199")
    assert order(ex, sl["id"])["isWorking"] is False and order(ex, tp["id"])["isWorking"] is False
    trade(ex, market, "0.48")  # the first trade at the stop price triggers it
    done = order(ex, sl["id"])
    assert (done["status"], done["executedQty"], done["cummulativeQuoteQty"], done["isWorking"]) == (
        "FILLED", "20.00000000", "9.60000000", True)
    assert done["workingTime"] > 0 and done["type"] == "STOP_LOSS_LIMIT"  # Binance keeps the type
    (fill,) = ex.orders()["sl"]["fills"]
    assert (fill["price"], fill["isMaker"]) == ("0.48000000", False)
    assert order(ex, tp["id"])["isWorking"] is False  # a trade below its stop: still waiting

    trade(ex, market, "0.525")  # through the take profit's stop, below its limit: triggered, it rests
    working = order(ex, tp["id"])
    assert (working["status"], working["isWorking"], working["executedQty"]) == ("NEW", True, "0.00000000")
    assert exchange.fetch_balance()["XRP"]["used"] == 30  # held again, now as a resting LIMIT
    trade(ex, market, "0.535")  # crosses 0.53: fills as a maker at its price
    assert exchange.fetch_order(tp["id"], XRP)["status"] == "closed"
    (fill,) = ex.orders()["tp"]["fills"]
    assert (fill["price"], fill["isMaker"]) == ("0.53000000", True)
    assert exchange.fetch_balance()["XRP"] == {"free": 50, "used": 0, "total": 50}


def test_a_stop_that_would_trigger_at_once_is_refused(ex: Exchange, market: Market) -> None:
    follow(ex, market)
    trade(ex, market, "0.5")
    exchange = ccxt_binance(ex)
    exchange.load_markets()
    with pytest.raises(ccxt.OrderImmediatelyFillable) as refused:  # ccxt's class for Binance's message
        exchange.create_order(XRP, "limit", "sell", 20, 0.5, {"stopLossPrice": 0.5})  # at the last price
    assert str(refused.value) == f"binance {WOULD_TRIGGER}"
    status, body = post(ex, side="BUY", type="TAKE_PROFIT_LIMIT", timeInForce="GTC", quantity="20", price="0.51",
                        stopPrice="0.51")
    assert (status, body) == (400, {"code": -2010, "msg": WOULD_TRIGGER})
    assert ex.orders() == {} and ex.balances()["USDT"]["locked"] == 0


def test_a_cancelled_stop_releases_its_locked_funds(ex: Exchange, market: Market) -> None:
    follow(ex, market)
    trade(ex, market, "0.5")
    exchange = ccxt_binance(ex)
    exchange.load_markets()
    buy = exchange.create_order(XRP, "limit", "buy", 20, 0.54, {"stopLossPrice": 0.53})  # a BUY stop: above
    assert ex.balances()["USDT"] == {"free": Decimal("10000") - Decimal("10.8"), "locked": Decimal("10.8")}
    sell = exchange.create_order(XRP, "limit", "sell", 20, 0.4, {"takeProfitPrice": 0.53})
    assert ex.balances()["XRP"] == {"free": Decimal("80"), "locked": Decimal("20")}
    cancelled = exchange.cancel_order(buy["id"], XRP)
    assert (cancelled["status"], cancelled["info"]["stopPrice"]) == ("canceled", "0.53000000")
    assert ex.balances()["USDT"] == {"free": Decimal("10000"), "locked": Decimal(0)}
    status, body = ex.signed("DELETE", "/api/v3/openOrders", {"symbol": SYMBOL})
    assert status == 200 and [o["orderId"] for o in body] == [int(sell["id"])]
    assert ex.balances()["XRP"] == {"free": Decimal("100"), "locked": Decimal(0)}
    trade(ex, market, "0.54")  # through both stops: cancelled, nothing triggers
    assert {o["status"] for o in ex.orders().values()} == {"CANCELED"}


def test_stop_parameters_as_binance_checks_them(ex: Exchange, market: Market) -> None:
    follow(ex, market)
    trade(ex, market, "0.5")
    sll = {"type": "STOP_LOSS_LIMIT", "side": "SELL", "timeInForce": "GTC", "quantity": "20", "price": "0.4"}
    cases = [
        (sll, -1102, "Mandatory parameter 'stopPrice' was not sent, was empty/null, or malformed."),
        (sll | {"stopPrice": "0.4", "trailingDelta": "100"}, -2010,
         "Trailing stop orders are not supported for this symbol."),
        (sll | {"stopPrice": "0.40005"}, -1013, "Filter failure: PRICE_FILTER"),  # the tick size holds for it too
        ({k: v for k, v in sll.items() if k != "price"} | {"stopPrice": "0.4"}, -1102,
         "Mandatory parameter 'price' was not sent, was empty/null, or malformed."),
        (sll | {"stopPrice": "0.4", "quantity": "2"}, -1013, "Filter failure: NOTIONAL"),
        (sll | {"stopPrice": "0.4", "quantity": "101"}, -2010, "Account has insufficient balance for requested action."),
        ({"type": "LIMIT", "side": "BUY", "timeInForce": "GTC", "quantity": "20", "price": "0.4", "stopPrice": "0.3"},
         -1106, "Parameter 'stopPrice' sent when not required."),
        # not enabled on Binance's symbols (their exchangeInfo lists only the _LIMIT variants)
        ({"type": "STOP_LOSS", "side": "SELL", "quantity": "20", "stopPrice": "0.4"}, -2010,
         "Stop loss orders are not supported for this symbol."),
        ({"type": "TAKE_PROFIT", "side": "SELL", "quantity": "20", "stopPrice": "0.6"}, -2010,
         "Take profit orders are not supported for this symbol."),
    ]
    for params, code, msg in cases:
        assert post(ex, **params) == (400, {"code": code, "msg": msg}), params
    assert ex.orders() == {}
    # the default answer of a stop is ACK, as for every type but LIMIT and MARKET
    status, body = post(ex, **sll, stopPrice="0.4")
    assert status == 200 and set(body) == {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}
    status, body = post(ex, **sll, stopPrice="0.4", newOrderRespType="RESULT")
    assert (body["stopPrice"], body["workingTime"], body["status"]) == ("0.40000000", -1, "NEW")


# --- the book itself --------------------------------------------------------------------------


def xrp() -> SymbolFilters:
    f = lookup(SYMBOL)
    assert f is not None
    return f


def new_book(path: Path | str = ":memory:") -> PaperBook:
    return PaperBook(Path(path), {"USDT": Decimal("1000"), "XRP": Decimal("100")})


def stop(kind: str, side: str, stop_price: str, price: str = "0", tif: str = "GTC", cid: str = "s") -> NewOrder:
    return NewOrder(side, kind, tif, cid, 0, Decimal(price), Decimal("20"), stop_price=Decimal(stop_price))


# (type, side, the stop, trades that must not trigger it, the first that must): the last price is
# 0.5. A _LIMIT variant's limit is its stop, so that the trade at its stop takes it; a STOP_LOSS or
# TAKE_PROFIT is triggered by a trade through its stop, at whose price it fills.
DIRECTIONS = [
    ("STOP_LOSS", "SELL", "0.45", ["0.4501", "0.6"], "0.44"),
    ("STOP_LOSS", "BUY", "0.55", ["0.5499", "0.4"], "0.56"),
    ("TAKE_PROFIT", "SELL", "0.55", ["0.5499", "0.4"], "0.56"),
    ("TAKE_PROFIT", "BUY", "0.45", ["0.4501", "0.6"], "0.44"),
    ("STOP_LOSS_LIMIT", "SELL", "0.45", ["0.4501", "0.6"], "0.45"),
    ("STOP_LOSS_LIMIT", "BUY", "0.55", ["0.5499", "0.4"], "0.55"),
    ("TAKE_PROFIT_LIMIT", "SELL", "0.55", ["0.5499", "0.4"], "0.55"),
    ("TAKE_PROFIT_LIMIT", "BUY", "0.45", ["0.4501", "0.6"], "0.45"),
]


@pytest.mark.parametrize(("kind", "side", "stop_price", "before", "first"), DIRECTIONS)
def test_each_type_and_side_triggers_on_the_first_trade_through_its_stop(
    kind: str, side: str, stop_price: str, before: list[str], first: str,
) -> None:
    f, book = xrp(), new_book()
    changes: list[Change] = []
    count = OrderCount()
    book.listeners += [changes.extend, count.on_changes]
    book.on_trade(f, Decimal("0.5"), Decimal(1000), 1)
    # the same stop on the other side of the last price would trigger at once: refused
    wrong = str(Decimal("1") - Decimal(stop_price))
    with pytest.raises(Rejected) as refused:
        book.place(f, stop(kind, side, wrong, wrong if kind.endswith("_LIMIT") else "0"))
    assert (refused.value.code, refused.value.msg) == (-2010, WOULD_TRIGGER)
    limit = stop_price if kind.endswith("_LIMIT") else "0"
    placed, _ = book.place(f, stop(kind, side, stop_price, limit))
    for n, price in enumerate(before, start=2):
        assert book.on_trade(f, Decimal(price), Decimal(1000), n) == []
        assert book.find(SYMBOL, placed.order_id, None) == placed  # untouched
    (filled, fill), = book.on_trade(f, Decimal(first), Decimal(1000), 99)
    assert (filled.order_id, filled.status, fill.is_maker, fill.market_trade_id) == (placed.order_id, "FILLED", False, 99)
    # a taker at the trade's price (a _LIMIT one here is marketable at its stop)
    assert fill.price == Decimal(first)
    assert book.balance_sheet()["USDT" if side == "BUY" else "XRP"].locked == 0
    reports = [execution_report(c, i, 0) for i, c in enumerate(changes)]
    assert [(r["x"], r["X"], r["w"], "W" in r, r["P"]) for r in reports] == [
        ("NEW", "NEW", False, False, f"{Decimal(stop_price):.8f}"),  # placed: not working, no W
        ("NEW", "NEW", kind.endswith("_LIMIT"), True, f"{Decimal(stop_price):.8f}"),  # triggered
        ("TRADE", "FILLED", False, True, f"{Decimal(stop_price):.8f}"),
    ]
    # Binance's unfilled order count: +1 when placed (not again when triggered), -1 at its first fill
    assert count.headers()["X-MBX-ORDER-COUNT-1D"] == "0"


def test_a_triggered_stop_loss_buy_the_quote_no_longer_covers_expires() -> None:
    """A STOP_LOSS BUY holds its quantity at the stop price; triggered by a trade far above it, the
    market order it becomes would cost more than the account has: it expires, its funds released."""
    f = xrp()
    book = PaperBook(Path(":memory:"), {"USDT": Decimal("11.5")})
    book.on_trade(f, Decimal("0.5"), Decimal(1000), 1)
    placed, _ = book.place(f, stop("STOP_LOSS", "BUY", "0.55"))
    assert book.balance_sheet()["USDT"].locked == Decimal("11")
    assert book.on_trade(f, Decimal("0.6"), Decimal(1000), 2) == []  # 20 × 0.6 = 12 > 11.5
    assert book.find(SYMBOL, placed.order_id, None).status == "EXPIRED"  # type: ignore[union-attr]
    assert book.balance_sheet()["USDT"].free == Decimal("11.5") and book.open_orders(SYMBOL) == []


def test_stops_survive_a_restart(tmp_path: Path) -> None:
    f, path = xrp(), tmp_path / "paper.sqlite"
    book = new_book(path)
    book.on_trade(f, Decimal("0.5"), Decimal(1000), 1)
    placed, _ = book.place(f, stop("STOP_LOSS_LIMIT", "SELL", "0.45", "0.44"))
    book.close()
    book = new_book(path)
    (again,) = book.open_orders(SYMBOL)
    assert (again.stop_price, again.is_working, again.working_time) == (Decimal("0.45"), False, -1)
    book.on_trade(f, Decimal("0.46"), Decimal(1000), 2)
    ((filled, _),) = book.on_trade(f, Decimal("0.45"), Decimal(1000), 3)
    assert filled.order_id == placed.order_id and filled.status == "FILLED" and filled.is_working


def test_cancelling_a_stop_in_the_book_releases_what_it_locked() -> None:
    f, book = xrp(), new_book()
    book.on_trade(f, Decimal("0.5"), Decimal(1000), 1)
    placed, _ = book.place(f, stop("STOP_LOSS_LIMIT", "BUY", "0.55", "0.56"))
    assert book.balance_sheet()["USDT"].locked == Decimal("11.2")
    book.cancel(f, placed.order_id, None)
    assert book.balance_sheet()["USDT"] == Balance(Decimal("1000"), Decimal(0))
    # cancelled: a trade through its stop (and at its limit) does nothing, whatever else rests
    book.place(f, NewOrder("BUY", "LIMIT", "GTC", "other", 0, Decimal("0.4"), Decimal("20")))
    assert book.on_trade(f, Decimal("0.56"), Decimal(1000), 2) == []
    assert book.find(SYMBOL, placed.order_id, None).status == "CANCELED"  # type: ignore[union-attr]
    assert book.balance_sheet()["USDT"] == Balance(Decimal("992"), Decimal("8"))

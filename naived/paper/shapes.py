"""Binance's JSON answers, built from the book's orders, fills and fees and the symbol table.

Every field Binance sends, with its name and type; amounts are printed with 8 decimals, time
fields in ms (`in_microseconds` rescales an answer for `X-MBX-TIME-UNIT: MICROSECOND`). What the
paper exchange does not implement is switched off, not left out (order types, icebergs, OTO/OPO
lists, self-trade prevention modes). The user data stream's events are `userstream.py`'s.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from naived.core.symbols import SymbolFilters
from naived.paper.book import (
    BNB_DISCOUNT,
    EIGHT,
    MAX_PRICE,
    Balance,
    Fees,
    Fill,
    OrderList,
    PaperOrder,
)
from naived.paper.params import ORDER_TYPES
from naived.paper.stops import is_stop

ZERO = Decimal(0)
# The answers' time fields that X-MBX-TIME-UNIT: MICROSECOND rescales
TIME_FIELDS = frozenset({"serverTime", "transactTime", "time", "updateTime", "workingTime", "openTime", "closeTime"})
RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 50},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 160000},
]


def fmt(value: Decimal) -> str:
    """Binance prints amounts with 8 decimals."""
    return format(value.quantize(EIGHT), "f")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def in_microseconds(reply: Any) -> Any:
    """An answer's time fields (ms, as the book keeps them) in µs, for `X-MBX-TIME-UNIT: MICROSECOND`."""
    if isinstance(reply, list):
        return [in_microseconds(r) for r in reply]
    if isinstance(reply, dict):
        return {k: v * 1000 if k in TIME_FIELDS and type(v) is int else in_microseconds(v) for k, v in reply.items()}
    return reply


# --- orders and fills ------------------------------------------------------------------------


def _details(o: PaperOrder) -> dict[str, Any]:
    return {
        "price": fmt(o.price),
        "origQty": fmt(o.orig_qty),
        "executedQty": fmt(o.executed_qty),
        "origQuoteOrderQty": fmt(o.orig_quote_qty),
        "cummulativeQuoteQty": fmt(o.cum_quote),
        "status": o.status,
        "timeInForce": o.time_in_force,
        "type": o.type,
        "side": o.side,
    }


def _stop_price(o: PaperOrder) -> dict[str, str]:
    """Binance's conditional `stopPrice`: in placement and cancel answers of stop orders only."""
    return {"stopPrice": fmt(o.stop_price)} if is_stop(o.type) else {}


def placed_json(o: PaperOrder, kind: str) -> dict[str, Any]:
    """POST /api/v3/order, in the newOrderRespType asked for (a stop not triggered: workingTime -1)."""
    body: dict[str, Any] = {"symbol": o.symbol, "orderId": o.order_id, "orderListId": o.order_list_id,
                            "clientOrderId": o.client_order_id, "transactTime": o.time_ms}
    if kind == "ACK":
        return body
    body |= _details(o) | _stop_price(o) | {"workingTime": o.working_time, "selfTradePreventionMode": "NONE"}
    if kind == "FULL":
        body["fills"] = [_fill_json(f) for f in o.fills]
    return body


def query_json(o: PaperOrder) -> dict[str, Any]:
    """GET /api/v3/order and each entry of openOrders."""
    zero = fmt(ZERO)
    return {"symbol": o.symbol, "orderId": o.order_id, "orderListId": o.order_list_id,
            "clientOrderId": o.client_order_id} | _details(o) | {
        "stopPrice": fmt(o.stop_price), "icebergQty": zero, "time": o.time_ms, "updateTime": o.update_ms,
        "isWorking": o.is_working, "workingTime": o.working_time, "selfTradePreventionMode": "NONE",
    }


def cancelled_json(o: PaperOrder, cancel_id: str) -> dict[str, Any]:
    """DELETE /api/v3/order: `clientOrderId` is the cancel request's own id."""
    return {"symbol": o.symbol, "origClientOrderId": o.client_order_id, "orderId": o.order_id, "orderListId": o.order_list_id,
            "clientOrderId": cancel_id, "transactTime": o.update_ms} | _details(o) | _stop_price(o) | {
                "selfTradePreventionMode": "NONE"}


def order_list_json(ol: OrderList, legs: list[PaperOrder], time_ms: int | None = None) -> dict[str, Any]:
    """An order list, as GET /api/v3/orderList, openOrderList and allOrderList answer it; `time_ms`:
    the transaction's, when not the list's placement."""
    done = not ol.is_open
    return {"orderListId": ol.order_list_id, "contingencyType": "OCO",
            "listStatusType": "ALL_DONE" if done else "EXEC_STARTED", "listOrderStatus": ol.status,
            "listClientOrderId": ol.list_client_order_id,
            "transactionTime": ol.time_ms if time_ms is None else time_ms, "symbol": ol.symbol,
            "orders": [{"symbol": o.symbol, "orderId": o.order_id, "clientOrderId": o.client_order_id} for o in legs]}


def oco_placed_json(ol: OrderList, legs: list[PaperOrder], kind: str) -> dict[str, Any]:
    """POST /api/v3/orderList/oco: the list and its legs' reports in the newOrderRespType asked for."""
    return order_list_json(ol, legs) | {"orderReports": [placed_json(o, kind) for o in legs]}


def list_cancelled_json(ol: OrderList, legs: list[PaperOrder], cancel_id: str) -> dict[str, Any]:
    """DELETE /api/v3/orderList (and an order list's entry in DELETE /api/v3/openOrders)."""
    return order_list_json(ol, legs, max(o.update_ms for o in legs)) | {
        "orderReports": [cancelled_json(o, cancel_id) for o in legs]}


def _fill_json(f: Fill) -> dict[str, Any]:
    """One entry of a FULL answer's `fills`."""
    return {"price": fmt(f.price), "qty": fmt(f.qty), "commission": fmt(f.commission),
            "commissionAsset": f.commission_asset, "tradeId": f.trade_id}


def trade_json(o: PaperOrder, f: Fill) -> dict[str, Any]:
    """One entry of GET /api/v3/myTrades."""
    return {"symbol": o.symbol, "id": f.trade_id, "orderId": o.order_id, "orderListId": o.order_list_id, "price": fmt(f.price),
            "qty": fmt(f.qty), "quoteQty": fmt(f.price * f.qty), "commission": fmt(f.commission),
            "commissionAsset": f.commission_asset, "time": f.time_ms, "isBuyer": o.side == "BUY",
            "isMaker": f.is_maker, "isBestMatch": True}


def inspection_json(o: PaperOrder) -> dict[str, Any]:
    """One entry of GET /paper/orders: the RESULT fields and what tests look at besides."""
    return {"symbol": o.symbol, "orderId": o.order_id, "orderListId": o.order_list_id,
            "clientOrderId": o.client_order_id} | _details(o) | {
        "stopPrice": fmt(o.stop_price), "workingTime": o.working_time,
        "time": o.time_ms, "updateTime": o.update_ms, "receivedNs": o.received_ns,
        "fills": [_fill_json(f) | {"time": f.time_ms, "isMaker": f.is_maker, "marketTradeId": f.market_trade_id}
                  for f in o.fills],
    }


# --- the account ---------------------------------------------------------------------------


def _rates(fees: Fees) -> dict[str, str]:
    return {"maker": fmt(fees.maker), "taker": fmt(fees.taker), "buyer": fmt(ZERO), "seller": fmt(ZERO)}


def _discount(fees: Fees) -> dict[str, Any]:
    return {"enabledForAccount": fees.bnb, "enabledForSymbol": True, "discountAsset": "BNB", "discount": fmt(BNB_DISCOUNT)}


def account_json(balances: dict[str, Balance], fees: Fees) -> dict[str, Any]:
    """GET /api/v3/account."""
    return {
        # The integer fields are in basis points (0.001 → 10), as Binance's are.
        "makerCommission": int(fees.maker * 10000), "takerCommission": int(fees.taker * 10000),
        "buyerCommission": 0, "sellerCommission": 0, "commissionRates": _rates(fees),
        "canTrade": True, "canWithdraw": False, "canDeposit": False, "brokered": False,
        "requireSelfTradePrevention": False, "preventSor": False, "updateTime": now_ms(),
        "accountType": "SPOT",
        "balances": [{"asset": a, "free": fmt(b.free), "locked": fmt(b.locked)} for a, b in balances.items()],
        "permissions": ["SPOT"], "uid": 0,
    }


def balances_json(balances: dict[str, Balance]) -> dict[str, dict[str, str]]:
    """GET /paper/balances."""
    return {a: {"free": fmt(b.free), "locked": fmt(b.locked)} for a, b in balances.items()}


def commission_json(symbol: str, fees: Fees) -> dict[str, Any]:
    """GET /api/v3/account/commission: the account's rates, no special or tax commission."""
    zeros = _rates(Fees(ZERO, ZERO))
    return {"symbol": symbol, "standardCommission": _rates(fees), "specialCommission": zeros,
            "taxCommission": zeros, "discount": _discount(fees)}


def order_commission_json(fees: Fees) -> dict[str, Any]:
    """POST /api/v3/order/test with computeCommissionRates=true."""
    zero = fmt(ZERO)
    return {
        "standardCommissionForOrder": {"maker": fmt(fees.maker), "taker": fmt(fees.taker)},
        "specialCommissionForOrder": {"maker": zero, "taker": zero},
        "taxCommissionForOrder": {"maker": zero, "taker": zero},
        "discount": _discount(fees),
    }


# --- the market ----------------------------------------------------------------------------


def exchange_info_json(symbols: list[dict[str, Any]]) -> dict[str, Any]:
    """GET /api/v3/exchangeInfo: `symbols` are `exchange_info_entry`'s."""
    return {"timezone": "UTC", "serverTime": now_ms(), "rateLimits": RATE_LIMITS, "exchangeFilters": [], "symbols": symbols}


def exchange_info_entry(f: SymbolFilters) -> dict[str, Any]:
    """One symbol in Binance's `exchangeInfo` shape, every field Binance sends; what the paper
    exchange does not implement is switched off (order types, icebergs, OTO/OPO lists, STP); what
    it does is on (quoteOrderQty MARKET orders, cancelReplace, OCO lists: `oco.py`)."""
    q = fmt
    lot = {"minQty": q(f.min_qty), "maxQty": q(f.max_qty), "stepSize": q(f.step_size)}
    return {
        "symbol": f.symbol, "status": f.status,
        "baseAsset": f.base, "baseAssetPrecision": 8, "quoteAsset": f.quote, "quotePrecision": 8,
        "quoteAssetPrecision": 8, "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
        "orderTypes": list(ORDER_TYPES),
        # amendAllowed (2025-04), pegInstructionsAllowed (2025-08, true on every symbol) and opoAllowed
        # (2025-12) came after the 2023 recording (CHANGELOG.md): false here, none is implemented.
        "icebergAllowed": False, "ocoAllowed": True, "otoAllowed": False, "opoAllowed": False,
        "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": False, "cancelReplaceAllowed": True,
        "amendAllowed": False, "pegInstructionsAllowed": False, "isSpotTradingAllowed": True,
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


def avg_price_json(f: SymbolFilters, average: tuple[Decimal, int] | None) -> dict[str, Any]:
    """GET /api/v3/avgPrice: before the book has seen a trade, price 0 and closeTime 0."""
    price, close_time = average if average is not None else (ZERO, 0)
    return {"mins": f.avg_price_mins if f.avg_price_mins is not None else 5, "price": fmt(price), "closeTime": close_time}

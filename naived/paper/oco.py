"""OCO order lists: POST /api/v3/orderList/oco's parameters and Binance's rules for them.

Binance's rest-api.md ("New Order list - OCO") and errors.md are the specification:

- Two legs, the *above* and the *below* order, one quantity. One leg is a STOP_LOSS[_LIMIT], the
  other a LIMIT_MAKER or TAKE_PROFIT[_LIMIT]: a SELL has the stop loss below, a BUY above
  (-1165/-1166 a limit order on the wrong side, -1196/-1197 a stop loss, -1198/-1199 a take
  profit, -1168 two LIMIT_MAKERs, -1158 a type OCOs do not take).
- Prices: SELL  LIMIT_MAKER / TAKE_PROFIT_LIMIT price (TAKE_PROFIT: stopPrice) > last price > stop
  loss stopPrice; BUY the mirror. Broken: -2010 "The relationship of the prices for the orders is
  not correct." Then each leg's own checks (filters, "would trigger immediately", "would
  immediately match and take"), as a single order's.
- Funds are locked once for the pair: the larger of the two legs' commitments (a SELL: its quantity).
- The legs are numbered stop-loss leg first (as in Binance's examples); both are NEW and the list
  EXEC_STARTED / EXECUTING. The first fill of a leg (even partial) or the trigger of a stop leg
  expires the other leg (EXPIRED, `eR` OCO_TRIGGER) and ends the list (ALL_DONE); cancelling either
  leg, or the list (DELETE /api/v3/orderList), or the symbol's open orders cancels both legs.
- The user data stream: an executionReport per leg, then the `listStatus` event, then
  outboundAccountPosition (Binance does not document the order of these events).

The book does the matching and keeps the lists (`PaperBook.place_oco`, the `order_lists` table:
lists survive a restart as orders do).

Differences from Binance (never kinder):
- STOP_LOSS and TAKE_PROFIT legs are refused as Binance refuses them on its symbols (not in their
  `orderTypes`), after the parameters' checks, as for a single order.
- Not implemented: trailingDelta, icebergQty and pegged legs (refused as on a symbol without them),
  strategy ids (ignored), OTO / OTOCO / OPO lists, the deprecated POST /api/v3/order/oco,
  MAX_NUM_ORDER_LISTS. Before the symbol's first trade the prices are only checked against each
  other (above > below). A BUY locks the larger of its legs' prices × quantity (Binance does not
  document which it holds). GET /api/v3/allOrderList answers newest first, as its example does.
- `eR` is sent only with OCO_TRIGGER (other expiries do not carry it here).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from naived.core.symbols import SymbolFilters
from naived.paper.book import NewOrder, Rejected
from naived.paper.params import (
    CLIENT_ID_RE,
    TIME_IN_FORCE,
    UNLISTED,
    Params,
    generated_id,
    mandatory,
    not_sent,
    number,
    symbol_filters,
)

STOP_LOSSES = ("STOP_LOSS", "STOP_LOSS_LIMIT")
TAKE_PROFITS = ("TAKE_PROFIT", "TAKE_PROFIT_LIMIT")
LEG_TYPES = ("LIMIT_MAKER", *STOP_LOSSES, *TAKE_PROFITS)
KNOWN_TYPES = ("LIMIT", "MARKET", *LEG_TYPES)
BAD_PRICES = "The relationship of the prices for the orders is not correct."
# (side, position, kind of leg) on the wrong side -> Binance's error
WRONG_SIDE = {
    ("BUY", "above", "LIMIT_MAKER"): (-1165, "A limit order in a buy OCO must be below."),
    ("SELL", "below", "LIMIT_MAKER"): (-1166, "A limit order in a sell OCO must be above."),
    ("BUY", "below", "STOP_LOSS"): (-1196, "A stop loss order in a buy OCO must be above."),
    ("SELL", "above", "STOP_LOSS"): (-1197, "A stop loss order in a sell OCO must be below."),
    ("BUY", "above", "TAKE_PROFIT"): (-1198, "A take profit order in a buy OCO must be below."),
    ("SELL", "below", "TAKE_PROFIT"): (-1199, "A take profit order in a sell OCO must be above."),
}


def _kind(order_type: str) -> str:
    return "STOP_LOSS" if order_type in STOP_LOSSES else "TAKE_PROFIT" if order_type in TAKE_PROFITS else order_type


def _client_id(params: Params, name: str) -> str:
    value = params.get(name) or generated_id()
    if not CLIENT_ID_RE.match(value):
        raise Rejected(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[a-zA-Z0-9-_]{{1,36}}$'.")
    return value


def _leg(params: Params, position: str, side: str, qty: Decimal, received_ns: int) -> NewOrder:
    """One leg's parameters (`above...` or `below...`), checked as Binance checks them."""
    kind = mandatory(params, f"{position}Type")
    if kind not in KNOWN_TYPES:
        raise Rejected(-1116, "Invalid orderType.")
    if kind not in LEG_TYPES:
        raise Rejected(-1158, "Order type not supported in OCO.")
    if params.get(f"{position}TrailingDelta"):
        raise Rejected(-2010, "Trailing stop orders are not supported for this symbol.")
    if params.get(f"{position}IcebergQty"):
        raise Rejected(-2010, "Iceberg orders are not supported for this symbol.")
    if params.get(f"{position}PegPriceType"):
        raise Rejected(-2010, "Pegged orders are not supported for this symbol.")
    leg = NewOrder(side=side, type=kind, time_in_force="GTC", client_order_id=_client_id(params, f"{position}ClientOrderId"),
                   received_ns=received_ns, qty=qty)
    if kind == "LIMIT_MAKER":
        not_sent(params, f"{position}StopPrice")
    else:
        leg.stop_price = number(params, f"{position}StopPrice")
    if kind in ("LIMIT_MAKER", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"):
        leg.price = number(params, f"{position}Price")
    else:
        not_sent(params, f"{position}Price")
    if kind.endswith("_LIMIT"):
        leg.time_in_force = mandatory(params, f"{position}TimeInForce")
        if leg.time_in_force not in TIME_IN_FORCE:
            raise Rejected(-1115, "Invalid timeInForce.")
    else:
        not_sent(params, f"{position}TimeInForce")
    return leg


def parse_oco(params: Params, received_ns: int) -> tuple[SymbolFilters, str, NewOrder, NewOrder]:
    """POST /api/v3/orderList/oco's parameters: (symbol, listClientOrderId, above leg, below leg)."""
    f = symbol_filters(mandatory(params, "symbol"))
    list_id = _client_id(params, "listClientOrderId")
    side = mandatory(params, "side")
    if side not in ("BUY", "SELL"):
        raise Rejected(-1117, "Invalid side.")
    qty = number(params, "quantity")
    above = _leg(params, "above", side, qty, received_ns)
    below = _leg(params, "below", side, qty, received_ns)
    if above.type == below.type == "LIMIT_MAKER":
        raise Rejected(-1168, "At least one OCO order must be contingent.")
    for position, leg in (("above", above), ("below", below)):
        wrong = WRONG_SIDE.get((side, position, _kind(leg.type)))
        if wrong is not None:
            raise Rejected(*wrong)
    for leg in (above, below):
        if leg.type in UNLISTED:  # the matching engine's refusal, after the parameters' checks
            raise Rejected(-2010, UNLISTED[leg.type])
    return f, list_id, above, below


def legs_in_order(above: NewOrder, below: NewOrder) -> tuple[NewOrder, NewOrder]:
    """The order the legs are numbered in: the stop-loss leg first, as in Binance's examples."""
    return (above, below) if above.type in STOP_LOSSES else (below, above)


def price_check(above: NewOrder, below: NewOrder) -> Callable[[Decimal | None], None]:
    """Binance's price relation, against the last trade price (None: none seen, the legs only)."""
    def value(leg: NewOrder) -> Decimal:  # the price that leg works at: a limit's price, else the stop
        return leg.price if leg.type in ("LIMIT_MAKER", "TAKE_PROFIT_LIMIT") else leg.stop_price

    def check(last: Decimal | None) -> None:
        high, low = value(above), value(below)
        if not (high > last > low if last is not None else high > low):
            raise Rejected(-2010, BAD_PRICES)
    return check

"""Request parameters → typed values, in Binance's terms.

A parameter that is missing, malformed or not allowed with the others is refused here with
Binance's error code and message (`Rejected`: -1100 illegal characters, -1102 mandatory, -1106
not required, -1115/-1116/-1117 invalid timeInForce/type/side, -1121 invalid symbol, -1194
time unit), before the book sees the request. Parameters come from the query string and/or
the form body, as one `Params` mapping (`request_params`: the query string's value wins).
"""

from __future__ import annotations

import re
import secrets
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from naived.core.symbols import SymbolFilters, table
from naived.paper.book import NewOrder, Rejected
from naived.paper.stops import MARKET_STOPS, STOP_TYPES

Params = dict[str, str]
NUMBER_RE = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")
CLIENT_ID_RE = re.compile(r"^[a-zA-Z0-9-_]{1,36}$")
MICROSECOND_STAMPS = 10**14  # a ms timestamp stays below this until the year 5138
# X-MBX-TIME-UNIT's accepted values (True: µs)
TIME_UNITS = {"MILLISECOND": False, "millisecond": False, "MICROSECOND": True, "microsecond": True}
# What exchangeInfo lists, as Binance lists it for every recorded symbol (samples/exchangeInfo.json):
# the book implements STOP_LOSS and TAKE_PROFIT too, but Binance does not enable them on these
# symbols, so they are refused as Binance refuses them (`UNLISTED`): never kinder than Binance.
ORDER_TYPES = ("LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT")
UNLISTED = {"STOP_LOSS": "Stop loss orders are not supported for this symbol.",
            "TAKE_PROFIT": "Take profit orders are not supported for this symbol."}
TIME_IN_FORCE = ("GTC", "IOC", "FOK")
CANCEL_RESTRICTIONS = {"ONLY_NEW": "NEW", "ONLY_PARTIALLY_FILLED": "PARTIALLY_FILLED"}  # value -> the status it allows


def request_params(query: str, form: str) -> Params:
    """A request's parameters from its query string and its form body. A parameter sent in both
    takes the query string's value, as Binance documents ("General Information on Endpoints");
    the signature is still over both as sent (`auth.check_signed`)."""
    params = dict(parse_qsl(form, keep_blank_values=True))
    params.update(parse_qsl(query, keep_blank_values=True))
    return params


def mandatory(params: Params, name: str) -> str:
    value = params.get(name)
    if not value:
        raise Rejected(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return value


def number(params: Params, name: str) -> Decimal:
    text = mandatory(params, name)
    if not NUMBER_RE.match(text):
        raise Rejected(-1100,
                       f"Illegal characters found in parameter '{name}'; legal range is '^([0-9]{{1,20}})(\\.[0-9]{{1,20}})?$'.")
    return Decimal(text)


def optional_number(params: Params, name: str) -> Decimal | None:
    return number(params, name) if params.get(name) else None


def optional_int(params: Params, name: str) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise Rejected(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.") from None


def choice(params: Params, name: str, allowed: tuple[str, ...], default: str | None = None) -> str:
    value = params.get(name) or default or mandatory(params, name)
    if value not in allowed:
        raise Rejected(-1100, f"Illegal characters found in parameter '{name}'; legal range is '{', '.join(allowed)}'.")
    return value


def not_sent(params: Params, *names: str) -> None:
    for name in names:
        if params.get(name):
            raise Rejected(-1106, f"Parameter '{name}' sent when not required.")


def symbol_filters(symbol: str) -> SymbolFilters:
    f = table().get(symbol)
    if f is None:
        raise Rejected(-1121, "Invalid symbol.")
    return f


def page_limit(params: Params) -> int:
    """`limit` of the list endpoints: default 500, at most 1000."""
    limit = optional_int(params, "limit")
    if limit is None:
        return 500
    if not 1 <= limit <= 1000:
        raise Rejected(-1100, "Illegal characters found in parameter 'limit'; legal range is '1-1000'.")
    return limit


def stamp_us(stamp: int) -> int:
    """A timestamp parameter in µs: Binance takes `timestamp`, `startTime`, `endTime` in ms or µs."""
    return stamp if stamp >= MICROSECOND_STAMPS else stamp * 1000


def in_time_range(params: Params, time_ms: int) -> bool:
    """Whether `time_ms` is within `startTime` and `endTime` (either may be absent)."""
    start, end = optional_int(params, "startTime"), optional_int(params, "endTime")
    return (start is None or time_ms * 1000 >= stamp_us(start)) and (end is None or time_ms * 1000 <= stamp_us(end))


def wants_microseconds(headers: Any) -> bool:
    """The `X-MBX-TIME-UNIT` header: answers' time fields in µs instead of ms."""
    unit = headers.get("X-MBX-TIME-UNIT")
    if unit is not None and unit not in TIME_UNITS:
        raise Rejected(-1194, "Invalid value for time unit; expected either MICROSECOND or MILLISECOND.")
    return unit is not None and TIME_UNITS[unit]


def cancel_restriction(params: Params) -> str | None:
    """`cancelRestrictions` of a cancel: the status the order must have to be cancelled, or None."""
    value = params.get("cancelRestrictions")
    if not value:
        return None
    if value not in CANCEL_RESTRICTIONS:
        raise Rejected(-1145, "Invalid cancelRestrictions")
    return CANCEL_RESTRICTIONS[value]


def generated_id() -> str:
    """A client order id for a request that names none (an order, a cancel)."""
    return "paper" + secrets.token_hex(8)


def response_type(params: Params, order_type: str) -> str:
    """`newOrderRespType`: Binance answers MARKET and LIMIT orders in FULL by default, others in ACK."""
    return choice(params, "newOrderRespType", ("ACK", "RESULT", "FULL"),
                  default="FULL" if order_type in ("MARKET", "LIMIT") else "ACK")


def parse_new_order(params: Params, received_ns: int) -> tuple[SymbolFilters, NewOrder]:
    """POST /api/v3/order's parameters, checked in Binance's terms. Implemented: LIMIT
    (GTC, IOC, FOK), LIMIT_MAKER, MARKET by `quantity` or by `quoteOrderQty`, STOP_LOSS_LIMIT and
    TAKE_PROFIT_LIMIT (`quantity`, `price`, `timeInForce`, `stopPrice`); STOP_LOSS and TAKE_PROFIT
    (`quantity`, `stopPrice`) are checked, then refused as on Binance's symbols (`UNLISTED`).
    `trailingDelta` is refused as on a symbol without trailing stops (exchangeInfo's
    `allowTrailingStop` is false)."""
    f = symbol_filters(mandatory(params, "symbol"))
    side = mandatory(params, "side")
    if side not in ("BUY", "SELL"):
        raise Rejected(-1117, "Invalid side.")
    kind = mandatory(params, "type")
    if kind not in ORDER_TYPES and kind not in UNLISTED:
        raise Rejected(-1116, "Invalid orderType.")
    client_id = params.get("newClientOrderId") or generated_id()
    if not CLIENT_ID_RE.match(client_id):
        raise Rejected(-1100, "Illegal characters found in parameter 'newClientOrderId'; legal range is '^[a-zA-Z0-9-_]{1,36}$'.")
    new = NewOrder(side=side, type=kind, time_in_force="GTC", client_order_id=client_id, received_ns=received_ns)
    if kind in STOP_TYPES:
        if params.get("trailingDelta"):
            raise Rejected(-2010, "Trailing stop orders are not supported for this symbol.")
        new.stop_price = number(params, "stopPrice")
    else:
        not_sent(params, "stopPrice", "trailingDelta")
    if kind in ("LIMIT", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"):
        tif = mandatory(params, "timeInForce")
        if tif not in TIME_IN_FORCE:
            raise Rejected(-1115, "Invalid timeInForce.")
        not_sent(params, "quoteOrderQty")
        new.time_in_force, new.qty, new.price = tif, number(params, "quantity"), number(params, "price")
    elif kind in MARKET_STOPS:
        not_sent(params, "timeInForce", "price", "quoteOrderQty")
        new.qty = number(params, "quantity")
    elif kind == "LIMIT_MAKER":
        not_sent(params, "timeInForce", "quoteOrderQty")
        new.qty, new.price = number(params, "quantity"), number(params, "price")
    else:  # MARKET
        not_sent(params, "timeInForce", "price")
        qty, quote = optional_number(params, "quantity"), optional_number(params, "quoteOrderQty")
        if qty is None and quote is None:
            raise Rejected(-1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!")
        if qty is not None and quote is not None:
            raise Rejected(-1106, "Parameter 'quoteOrderQty' sent when not required.")
        new.qty, new.quote_qty = qty or Decimal(0), quote or Decimal(0)
    if kind in UNLISTED:  # the matching engine's refusal, after the parameters' checks
        raise Rejected(-2010, UNLISTED[kind])
    return f, new

"""Stop and take-profit orders: when Binance triggers them.

Binance's `STOP_LOSS`, `STOP_LOSS_LIMIT`, `TAKE_PROFIT` and `TAKE_PROFIT_LIMIT` ("algo" orders)
wait, off the book, until the market price reaches their `stopPrice`; then a `STOP_LOSS` or
`TAKE_PROFIT` works as a MARKET order, a `_LIMIT` one as a LIMIT order at its `price` (with its
`timeInForce`). The direction, from Binance's trailing-stop FAQ ("Stop price condition"), which
the new-order page's "price above/below market price" rules agree with:

    STOP_LOSS[_LIMIT]    SELL: last price <= stopPrice    BUY: last price >= stopPrice
    TAKE_PROFIT[_LIMIT]  SELL: last price >= stopPrice    BUY: last price <= stopPrice

An order whose condition already holds against the last trade price when it is placed is
refused (-2010). The book (`PaperBook.on_trade`) triggers them on the first public trade that
meets the condition; until then they hold their funds locked, as a resting order does.
"""

from __future__ import annotations

from decimal import Decimal

STOP_TYPES = ("STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT")
MARKET_STOPS = ("STOP_LOSS", "TAKE_PROFIT")  # work as MARKET orders once triggered
TAKERS = ("MARKET", *MARKET_STOPS)  # orders with no limit price: they take, never rest
NOT_WORKING = -1  # workingTime of a stop not triggered yet (Binance's answers say -1)
# Binance's errors.md words it "Order would trigger immediately."; the matching engine answers
# this (clients and ccxt's error table match on it), so the paper exchange does too.
WOULD_TRIGGER = "Stop price would trigger immediately."


def is_stop(order_type: str) -> bool:
    return order_type in STOP_TYPES


def triggers(order_type: str, side: str, stop_price: Decimal, price: Decimal) -> bool:
    """Whether a trade at `price` meets the stop condition of this order type and side."""
    rising = (side == "BUY") == order_type.startswith("STOP_LOSS")  # BUY stop loss, SELL take profit
    return price >= stop_price if rising else price <= stop_price

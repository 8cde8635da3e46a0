"""`naived backtest --orders FILE.csv`: every order and fill of a run, as the paper book made them.

Collected from the paper book's listener (the user data stream's own source: one `Change` per
committed change of an order, with the order as it stood and the fill it made), so the list is
what the exchange did, not what the traders believed. Kept only when asked for: a run without
`--orders` or `--plot` registers no listener and pays nothing.
"""

from __future__ import annotations

import csv
import datetime
import re
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

from naived.paper.book import Change

# The backtest's client order ids, `strategy.client_order_id`: `<prefix>-<trader>-<cycle><leg>`.
_CLIENT_ID = re.compile(r"^[^-]+-(\d+)-(\d+)([A-Z]\d*)$")

COLUMNS = ("time_utc", "time_ms", "symbol", "trader", "cycle", "leg", "client_order_id", "order_id", "side", "event",
           "price", "quantity", "fill_price", "fill_qty", "fee", "fee_asset", "liquidity", "executed_qty", "status")


def _text(value: Decimal) -> str:
    return format(value, "f")  # as the book holds it: exact, never exponent notation


def utc(ms: int) -> str:
    """ISO 8601 in UTC with milliseconds: `2024-08-09T00:01:09.123Z`."""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class OrderEvent:
    """One row: an order's change (NEW, TRADE, CANCELED, EXPIRED: Binance's execution types) and,
    for TRADE, the fill it made. Money and quantities are the book's Decimals."""

    time_ms: int
    symbol: str
    client_order_id: str
    order_id: int
    side: str
    event: str
    price: Decimal
    quantity: Decimal
    executed_qty: Decimal
    status: str  # the order's status after this change
    fill_price: Decimal | None = None
    fill_qty: Decimal | None = None
    fee: Decimal | None = None
    fee_asset: str = ""
    maker: bool | None = None

    def row(self) -> list[str]:
        match = _CLIENT_ID.match(self.client_order_id)
        trader, cycle, leg = match.groups() if match else ("", "", "")
        liquidity = "" if self.maker is None else "MAKER" if self.maker else "TAKER"
        return [utc(self.time_ms), str(self.time_ms), self.symbol, trader, cycle, leg, self.client_order_id,
                str(self.order_id), self.side, self.event, _text(self.price), _text(self.quantity),
                "" if self.fill_price is None else _text(self.fill_price),
                "" if self.fill_qty is None else _text(self.fill_qty),
                "" if self.fee is None else _text(self.fee), self.fee_asset, liquidity, _text(self.executed_qty),
                self.status]


@dataclass(frozen=True)
class Resting:
    """An order on the book from its placement to its end (filled, cancelled, expired), or to the
    end of the input (`until_ms` None): what the plot draws as a level."""

    symbol: str
    side: str
    price: Decimal
    since_ms: int
    until_ms: int | None


class OrderLog:
    """The paper book's changes of one run, in commit order."""

    def __init__(self) -> None:
        self.events: list[OrderEvent] = []

    def on_changes(self, changes: list[Change]) -> None:
        """A paper book listener: it only appends (a listener must not block nor call the book)."""
        for change in changes:
            order, fill = change.order, change.fill
            event = OrderEvent(change.time_ms, order.symbol, order.client_order_id, order.order_id, order.side,
                               change.execution, order.price, order.orig_qty, order.executed_qty, order.status)
            if fill is not None:
                event = replace(event, time_ms=fill.time_ms, fill_price=fill.price, fill_qty=fill.qty,
                                fee=fill.commission, fee_asset=fill.commission_asset, maker=fill.is_maker)
            self.events.append(event)

    def write_csv(self, path: str | Path) -> int:
        """Every event, one row each with a header; returns the number of rows."""
        with open(path, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows(e.row() for e in self.events)
        return len(self.events)

    def resting(self) -> list[Resting]:
        """Each order's time on the book, in placement order."""
        placed: dict[int, OrderEvent] = {}
        ended: dict[int, int] = {}
        for e in self.events:
            placed.setdefault(e.order_id, e)
            if e.status not in ("NEW", "PARTIALLY_FILLED"):
                ended.setdefault(e.order_id, e.time_ms)
        return [Resting(e.symbol, e.side, e.price, e.time_ms, ended.get(order_id)) for order_id, e in placed.items()]

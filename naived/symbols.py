"""Exchange filters per symbol.

The project ships a compact table (`symbols.csv`) of the USDT spot pairs that
were TRADING, with the facts the bot needs: tick size, step size, quantity
bounds and the minimum notional. The paper exchange serves it as `exchangeInfo`
(`naived.paper.server.exchange_info_entry`);
the leader reads filters from whichever exchange it trades on, through
`filters_from_exchange_info`.
"""

from __future__ import annotations

import csv
import functools
from decimal import Decimal
from importlib import resources
from typing import Any

import msgspec


class SymbolFilters(msgspec.Struct, frozen=True):
    symbol: str
    base: str
    quote: str
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal
    status: str = "TRADING"


@functools.cache
def table() -> dict[str, SymbolFilters]:
    """The shipped table, by symbol."""
    text = resources.files("naived").joinpath("symbols.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {row["symbol"]: msgspec.convert(row, SymbolFilters, strict=False) for row in rows}


def lookup(symbol: str) -> SymbolFilters | None:
    return table().get(symbol.upper())


def _dec(text: str) -> Decimal:
    # normalize() turns "9000.00000000" into 9E+3; keep plain notation for readable logs
    value = Decimal(text).normalize()
    return value.quantize(Decimal(1)) if value == value.to_integral() else value


def filters_from_exchange_info(info: dict[str, Any], symbol: str) -> SymbolFilters:
    """Read a symbol's filters from an `exchangeInfo` response (NOTIONAL or the older MIN_NOTIONAL)."""
    for entry in info.get("symbols", []):
        if entry.get("symbol") != symbol:
            continue
        by_type = {f["filterType"]: f for f in entry.get("filters", [])}
        notional = by_type.get("NOTIONAL") or by_type.get("MIN_NOTIONAL") or {"minNotional": "0"}
        return SymbolFilters(
            symbol=symbol,
            base=entry.get("baseAsset", ""),
            quote=entry.get("quoteAsset", ""),
            status=entry.get("status", "TRADING"),
            tick_size=_dec(by_type["PRICE_FILTER"]["tickSize"]),
            step_size=_dec(by_type["LOT_SIZE"]["stepSize"]),
            min_qty=_dec(by_type["LOT_SIZE"]["minQty"]),
            max_qty=_dec(by_type["LOT_SIZE"]["maxQty"]),
            min_notional=_dec(notional["minNotional"]),
        )
    raise KeyError(symbol)

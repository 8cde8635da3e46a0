"""Exchange filters per symbol: the symbol table.

The project ships a compact table (`symbols.csv`) of every spot symbol that was
TRADING on Binance, all quote assets, with the facts the bot needs: tick size,
step size, quantity bounds, the minimum notional and the PERCENT_PRICE_BY_SIDE band
(empty where a symbol has none). `naived refresh-symbols`
regenerates it from an `exchangeInfo` answer (Binance's, or a saved file) and
writes it to `<state_dir>/symbols.csv`, which this module prefers over the
shipped table once `use_state_dir` has been called (the `naived` commands do):
an installed package is never rewritten, and a refresh survives upgrades.
`--output naived/core/symbols.csv` regenerates the shipped table itself.

The paper exchange serves the table as `exchangeInfo`
(`naived.paper.shapes.exchange_info_entry`); the leader reads filters from
whichever exchange it trades on, through `filters_from_exchange_info`.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import time
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

TABLE_NAME = "symbols.csv"
COLUMNS = ("symbol", "base", "quote", "tick_size", "step_size", "min_qty", "max_qty", "min_notional",
           "bid_multiplier_up", "bid_multiplier_down", "ask_multiplier_up", "ask_multiplier_down", "avg_price_mins")
_override: Path | None = None  # <state_dir>/symbols.csv, preferred when it exists


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
    # PERCENT_PRICE_BY_SIDE (None: the symbol has no such filter, or the table predates it): a BUY's
    # price must lie within [avg × bid_multiplier_down, avg × bid_multiplier_up], a SELL's within the
    # ask multipliers, avg being the volume-weighted average price of the last avg_price_mins minutes.
    bid_multiplier_up: Decimal | None = None
    bid_multiplier_down: Decimal | None = None
    ask_multiplier_up: Decimal | None = None
    ask_multiplier_down: Decimal | None = None
    avg_price_mins: int | None = None

    def price_band(self, side: str, average: Decimal) -> tuple[Decimal, Decimal] | None:
        """The prices PERCENT_PRICE_BY_SIDE lets an order of `side` have around `average`;
        None when the symbol has no such filter."""
        up, down = (self.bid_multiplier_up, self.bid_multiplier_down) if side == "BUY" else (
            self.ask_multiplier_up, self.ask_multiplier_down)
        if up is None or down is None:
            return None
        return average * down, average * up


def use_state_dir(state_dir: Path) -> None:
    """Prefer the table `naived refresh-symbols` wrote into `state_dir`, if there is one."""
    global _override
    _override = Path(state_dir) / TABLE_NAME
    table.cache_clear()


def table_path() -> str:
    """Where the table in use comes from, for messages."""
    if _override is not None and _override.exists():
        return str(_override)
    return "naived/core/symbols.csv (shipped)"


@functools.cache
def table() -> dict[str, SymbolFilters]:
    """The table in use, by symbol: the state directory's refreshed one, else the shipped one."""
    text = None
    if _override is not None:
        try:
            text = _override.read_text()
        except FileNotFoundError:
            pass
    if text is None:
        text = resources.files(__package__).joinpath(TABLE_NAME).read_text()
    return parse_table(text)


def parse_table(text: str) -> dict[str, SymbolFilters]:
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    # An empty cell is a filter the symbol does not have (its field's default, None).
    return {row["symbol"]: msgspec.convert({k: v for k, v in row.items() if v != ""}, SymbolFilters, strict=False)
            for row in rows}


def lookup(symbol: str) -> SymbolFilters | None:
    return table().get(symbol.upper())


def similar(text: str, limit: int = 5) -> list[str]:
    """Symbols of the table a user may have meant by `text` ("BTC" -> BTCUSDT, BTCFDUSD, ...):
    those whose base asset it is, then those that start with it, then those that contain it,
    USDT-quoted first, at most `limit`."""
    text, symbols = text.upper(), table()
    names = sorted(symbols, key=lambda s: (symbols[s].base != text, not s.endswith("USDT"), s))
    starts = [s for s in names if s.startswith(text) and s != text]
    contains = [s for s in names if text in s and not s.startswith(text)]
    return (starts + contains)[:limit]


def quote_assets() -> list[str]:
    """Every quote asset of the table in use (the paper exchange funds each one)."""
    return sorted({f.quote for f in table().values()})


def _dec(text: str) -> Decimal:
    # normalize() turns "9000.00000000" into 9E+3; keep plain notation for readable logs
    value = Decimal(text).normalize()
    return value.quantize(Decimal(1)) if value == value.to_integral() else value


def _filters(entry: dict[str, Any]) -> SymbolFilters:
    by_type = {f["filterType"]: f for f in entry.get("filters", [])}
    notional = by_type.get("NOTIONAL") or by_type.get("MIN_NOTIONAL") or {"minNotional": "0"}
    band = by_type.get("PERCENT_PRICE_BY_SIDE")
    return SymbolFilters(
        symbol=entry["symbol"],
        base=entry.get("baseAsset", ""),
        quote=entry.get("quoteAsset", ""),
        status=entry.get("status", "TRADING"),
        tick_size=_dec(by_type["PRICE_FILTER"]["tickSize"]),
        step_size=_dec(by_type["LOT_SIZE"]["stepSize"]),
        min_qty=_dec(by_type["LOT_SIZE"]["minQty"]),
        max_qty=_dec(by_type["LOT_SIZE"]["maxQty"]),
        min_notional=_dec(notional["minNotional"]),
        bid_multiplier_up=_dec(band["bidMultiplierUp"]) if band else None,
        bid_multiplier_down=_dec(band["bidMultiplierDown"]) if band else None,
        ask_multiplier_up=_dec(band["askMultiplierUp"]) if band else None,
        ask_multiplier_down=_dec(band["askMultiplierDown"]) if band else None,
        avg_price_mins=int(band["avgPriceMins"]) if band else None,
    )


def filters_from_exchange_info(info: dict[str, Any], symbol: str) -> SymbolFilters:
    """Read a symbol's filters from an `exchangeInfo` response (NOTIONAL or the older MIN_NOTIONAL)."""
    for entry in info.get("symbols", []):
        if entry.get("symbol") == symbol:
            return _filters(entry)
    raise KeyError(symbol)


class TableError(Exception):
    """An exchangeInfo answer that cannot make a table: one line for the user."""


def trading_filters(info: dict[str, Any]) -> list[SymbolFilters]:
    """Every TRADING symbol of an exchangeInfo answer (all quote assets), sorted by symbol.
    A symbol without a price or lot filter cannot be traded by the strategy and is left out."""
    if not isinstance(info, dict) or not isinstance(info.get("symbols"), list):
        raise TableError("not an exchangeInfo answer (no \"symbols\" list)")
    rows = []
    for entry in info["symbols"]:
        if entry.get("status") != "TRADING":
            continue
        try:
            rows.append(_filters(entry))
        except KeyError:
            continue
    if not rows:
        raise TableError("no TRADING symbol in the exchangeInfo answer")
    return sorted(rows, key=lambda f: f.symbol)


def render_table(rows: list[SymbolFilters], origin: str, server_time_ms: int | None) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(server_time_ms / 1000)) if server_time_ms else "unknown time"
    out = io.StringIO()
    out.write(f"# Spot symbols TRADING on Binance (all quote assets), from exchangeInfo of {when} ({origin});"
              " regenerate with `naived refresh-symbols`\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for f in rows:
        # plain notation ("0.00000001", not "1E-8"): the table is read by people too
        writer.writerow([format(v, "f") if isinstance(v := getattr(f, c), Decimal) else "" if v is None else v for c in COLUMNS])
    return out.getvalue()


def write_table(path: Path, text: str) -> None:
    """Replace `path` atomically: a reader sees the old table or the new one, never half of one."""
    parse_table(text)  # never write what this module could not read back
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

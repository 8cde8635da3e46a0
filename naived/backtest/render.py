"""The backtest's report as text: JSON, the human summary and the sweep's table."""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

import msgspec

from naived.backtest.report import Report, SymbolSummary, Total


def encode(report: Report | list[dict[str, Any]]) -> bytes:
    return msgspec.json.format(msgspec.json.encode(report), indent=2)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _pct(fraction: str) -> str:
    return f"{Decimal(fraction) * 100:+.4f}%"


_COLUMNS = ("cycles", "open", "orders", "fees", "realised", "unrealised", "pnl", "return", "max dd", "dd %")


def _figures(x: SymbolSummary | Total) -> list[str]:
    return [str(x.cycles_completed), str(x.open_positions), str(x.orders_placed), x.fees, x.realised_pnl,
            x.unrealised_pnl, x.pnl, _pct(x.return_on_budget), x.max_drawdown,
            f"{Decimal(x.max_drawdown_fraction) * 100:.4f}%"]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
            for r in rows]


def render(report: Report) -> str:
    """The human summary: one row per symbol, one total per quote asset."""
    lines = [f"{report.mode}: {', '.join(report.inputs)}"]
    for s in report.symbols:
        t = report.settings[s.symbol]
        lines.append(
            f"{s.symbol}: {s.trades:,} trades {_when(s.first_trade_ms)} → {_when(s.last_trade_ms)} UTC, "
            f"price {s.first_price} → {s.last_price}; chunks {t['chunks']}, budget {t['budget']} {s.quote}, "
            f"buy_down {t['buy_down_interval']}, profit {t['profit_interval']}, rebuy {t['rebuy_interval']}"
        )
        if Decimal(s.held):
            lines.append(f"  held at the end: {s.held} {s.base} ({s.open_positions} open positions and dust), "
                         f"worth {s.held_value} {s.quote} at {s.last_price}")
        if s.fees_other:
            lines.append(f"  fees also paid in: {', '.join(f'{v} {a}' for a, v in s.fees_other.items())} (not valued)")
        if s.failed:
            lines.append(f"  FAILED, stopped early: {s.failed}")
    rows = [["", *_COLUMNS]]
    rows += [[s.symbol, *_figures(s)] for s in report.symbols]
    rows += [[f"total {t.quote}", *_figures(t)] for t in report.totals if len(t.symbols) > 1 or len(report.totals) > 1]
    lines.append("")
    lines += _table(rows)
    quotes = ", ".join(t.quote for t in report.totals)
    lines.append(f"(money in {quotes}; open = positions holding base at the end, marked to the last price; "
                 "return on the budget; max dd = largest fall of equity from a peak)")
    return "\n".join(lines)


def render_sweep(rows: list[tuple[dict[str, str], Report]]) -> str:
    keys = list(rows[0][0])
    table = [[*keys, "quote", *_COLUMNS]]
    for changes, report in rows:
        for t in report.totals:
            table.append([*(changes[k] for k in keys), t.quote, *_figures(t)])
    return "\n".join(_table(table))

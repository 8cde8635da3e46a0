"""`naived backtest --plot FILE.png`: equity, price with the fills, drawdown.

matplotlib is an optional extra (`pip install -e '.[plot]'`) so the daemon's own install stays
lean; it is imported only here, only when a plot is asked for. Money is converted to float for
drawing only: every figure in the report stays Decimal.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Protocol

from naived.backtest.errors import BacktestError
from naived.backtest.ledger import Curve, Ledger

if TYPE_CHECKING:
    from matplotlib.axes import Axes


class Books(Protocol):
    """A backtest's account per symbol and per quote (in-process `Backtest` or the tree's)."""

    ledgers: dict[str, Ledger]
    curves: dict[str, Curve]

WIDTH_IN, DPI = 12.0, 100  # a fixed size, so a test can check it
PANEL_IN = 2.6  # height of each panel: equity, one price panel per symbol, drawdown


def size_px(symbols: int) -> tuple[int, int]:
    """The PNG's (width, height) in pixels for this many symbols."""
    return int(WIDTH_IN * DPI), int(PANEL_IN * (symbols + 2) * DPI)


def check_available() -> None:
    """Fail before the backtest runs, in one line, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401 - imported only to learn that it is there
    except ImportError:
        raise BacktestError("--plot needs matplotlib: pip install -e '.[plot]'") from None


def _times(ms: list[int]) -> list[datetime.datetime]:
    """Aware datetimes, which matplotlib's date units draw; its stubs type x values as numbers and
    arrays only, hence the `type: ignore[arg-type]` where these reach a typed Axes."""
    return [datetime.datetime.fromtimestamp(t / 1000, datetime.UTC) for t in ms]


def plot(bt: Books, path: str) -> None:
    check_available()
    import matplotlib

    matplotlib.use("Agg")  # no display needed; the same PNG on every machine
    import matplotlib.pyplot as plt

    symbols = sorted(bt.ledgers)
    width, height = size_px(len(symbols))
    fig, axes = plt.subplots(len(symbols) + 2, 1, figsize=(width / DPI, height / DPI), dpi=DPI, sharex=True)
    equity_ax: Axes = axes[0]
    drawdown_ax: Axes = axes[-1]
    for quote, curve in sorted(bt.curves.items()):
        points = curve.samples or []
        xs = _times([t for t, _ in points])
        ys = [float(e) for _, e in points]
        equity_ax.plot(xs, ys, label=f"total ({quote})", linewidth=1.2)  # type: ignore[arg-type]  # datetimes: see _times
        peak, drawdown = float("-inf"), []
        for y in ys:
            peak = max(peak, y)
            drawdown.append(y - peak)
        drawdown_ax.fill_between(xs, drawdown, 0, step="post", alpha=0.4,  # type: ignore[arg-type]  # datetimes: see _times
                                 label=f"drawdown ({quote})")
    if len(symbols) > 1:
        for symbol in symbols:
            samples = bt.ledgers[symbol].samples or []
            equity_ax.plot(_times([t for t, _, _ in samples]),  # type: ignore[arg-type]  # datetimes: see _times
                           [float(e) for _, _, e in samples], linewidth=0.8, label=symbol)
    equity_ax.set_ylabel("equity")
    equity_ax.set_title("budget plus positions, marked to each trade")
    equity_ax.legend(loc="best", fontsize="small")
    for ax, symbol in zip(axes[1:-1], symbols, strict=True):
        ledger = bt.ledgers[symbol]
        samples = ledger.samples or []
        ax.plot(_times([t for t, _, _ in samples]), [float(p) for _, p, _ in samples], linewidth=0.8, color="grey")
        for side, marker, color in (("BUY", "^", "tab:green"), ("SELL", "v", "tab:red")):
            fills = [m for m in ledger.markers or [] if m.side == side]
            ax.scatter(_times([m.time_ms for m in fills]), [float(m.price) for m in fills], marker=marker, color=color,
                       s=30, zorder=3, label=f"{side.lower()} ({len(fills)})")
        ax.set_ylabel(f"{symbol} ({ledger.quote})")
        ax.legend(loc="best", fontsize="small")
    drawdown_ax.set_ylabel("drawdown")
    drawdown_ax.legend(loc="lower left", fontsize="small")
    drawdown_ax.set_xlabel("UTC")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)  # no bbox "tight": the size stays what size_px says
    plt.close(fig)

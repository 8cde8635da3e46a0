"""`naived backtest --plot FILE.png`: pnl, price with every order, drawdown, one column per period.

The title says what was run and what it made: symbols, period (UTC), the settings that matter
and the result. Each fill is one marker (several fills of one side at one instant and price sit
on one spot: a `×n` label beside them says how many); each order's time on the book is a
horizontal segment at its price (buys green, sells red), from the run's `OrderLog` when there is
one. Inputs separated in time (the caller's `breaks`, or else any pause of more than
`GAP_MS` between two trades) are drawn as separate columns of panels, each with its own time
axis, so nothing is drawn across the gap.

matplotlib is an optional extra (`pip install -e '.[plot]'`) so the daemon's own install stays
lean; it is imported only here, only when a plot is asked for. Money is converted to float for
drawing only: every figure in the report stays Decimal.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from naived.backtest.errors import BacktestError
from naived.backtest.ledger import Curve, Ledger
from naived.backtest.orders import OrderLog, Resting
from naived.backtest.report import Report

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


class Books(Protocol):
    """A backtest's account per symbol and per quote (in-process `Backtest` or the tree's)."""

    ledgers: dict[str, Ledger]
    curves: dict[str, Curve]

WIDTH_IN, DPI = 12.0, 100  # a fixed size, so a test can check it
PANEL_IN = 2.6  # height of each panel: pnl, one price panel per symbol, drawdown
TITLE_LINE_IN = 0.25  # the title: one line for the run, one per symbol
PERIOD_MIN_IN = 3.0  # the narrowest a period's column gets: many periods widen the picture
GAP_MS = 6 * 3600 * 1000  # without breaks from the caller: a pause this long starts a new period
COLORS = {"BUY": "tab:green", "SELL": "tab:red"}
MARKERS = {"BUY": "^", "SELL": "v"}


def size_px(symbols: int, periods: int = 1) -> tuple[int, int]:
    """The PNG's (width, height) in pixels for this many symbols and periods."""
    width = max(WIDTH_IN, PERIOD_MIN_IN * periods)
    return int(width * DPI), int((PANEL_IN * (symbols + 2) + TITLE_LINE_IN * (symbols + 1)) * DPI)


def check_available() -> None:
    """Fail before the backtest runs, in one line, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401 - imported only to learn that it is there
    except ImportError:
        raise BacktestError("--plot needs matplotlib: pip install -e '.[plot]'") from None


def _times(ms: Sequence[int]) -> list[datetime.datetime]:
    """Aware datetimes, which matplotlib's date units draw; its stubs type x values as numbers and
    arrays only, hence the `type: ignore[arg-type]` where these reach a typed Axes."""
    return [datetime.datetime.fromtimestamp(t / 1000, datetime.UTC) for t in ms]


def _when(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def periods(bt: Books, breaks: Sequence[int] = ()) -> list[tuple[int, int]]:
    """The [first, last] ms of each period: split at `breaks` (the times a new period starts),
    or, without them, wherever two consecutive trades drawn are more than `GAP_MS` apart.
    Periods with nothing to draw are left out."""
    # The samples (one a second), the fills and each symbol's last trade: what is drawn.
    times = sorted({t for c in bt.curves.values() for t, _ in c.samples or []}
                   | {t for ledger in bt.ledgers.values() for t, _, _ in ledger.samples or []}
                   | {m.time_ms for ledger in bt.ledgers.values() for m in ledger.markers or []}
                   | {ledger.last_ms for ledger in bt.ledgers.values() if ledger.last_ms is not None})
    if not times:
        return []
    starts = sorted(breaks) if breaks else [b for a, b in zip(times, times[1:], strict=False) if b - a > GAP_MS]
    result: list[tuple[int, int]] = []
    i = 0
    for start in [*starts, None]:
        inside = []
        while i < len(times) and (start is None or times[i] < start):
            inside.append(times[i])
            i += 1
        if inside:
            result.append((inside[0], inside[-1]))
    return result


def _pct(fraction: str) -> str:
    return f"{Decimal(fraction) * 100:+.4f}%"


def title(report: Report, spans: list[tuple[int, int]]) -> str:
    """One line for the run (symbols, period, the total result per quote asset), one per symbol
    (its settings and result)."""
    first = min((s.first_trade_ms for s in report.symbols if s.first_trade_ms is not None), default=None)
    last = max((s.last_trade_ms for s in report.symbols if s.last_trade_ms is not None), default=None)
    period = f"{_when(first)} → {_when(last)} UTC" if first is not None and last is not None else "no trades"
    if len(spans) > 1:
        period += f" ({len(spans)} periods)"
    totals = "; ".join(f"pnl {t.pnl} {t.quote} ({_pct(t.return_on_budget)}), {t.cycles_completed} cycles"
                       for t in report.totals)
    lines = [f"{', '.join(s.symbol for s in report.symbols)} · {period} · {totals}"]
    for s in report.symbols:
        t = report.settings[s.symbol]
        lines.append(f"{s.symbol}: chunks {t['chunks']}, budget {t['budget']} {s.quote}, buy_down {t['buy_down_interval']}, "
                     f"profit {t['profit_interval']}, rebuy {t['rebuy_interval']} → pnl {s.pnl} {s.quote} "
                     f"({_pct(s.return_on_budget)}), {s.cycles_completed} cycles"
                     + (f", FAILED: {s.failed}" if s.failed else ""))
    return "\n".join(lines)


def _within(points: Sequence[tuple[int, Any]], span: tuple[int, int]) -> list[tuple[int, Any]]:
    return [p for p in points if span[0] <= p[0] <= span[1]]


def figure(bt: Books, report: Report, orders: OrderLog | None = None, breaks: Sequence[int] = ()) -> Figure:
    """The picture as a matplotlib Figure (the caller saves or reads it, then closes it)."""
    check_available()
    import matplotlib

    matplotlib.use("Agg")  # no display needed; the same PNG on every machine
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    symbols = sorted(bt.ledgers)
    spans = periods(bt, breaks) or [(0, 0)]
    width, height = size_px(len(symbols), len(spans))
    fig, grid = plt.subplots(len(symbols) + 2, len(spans), figsize=(width / DPI, height / DPI), dpi=DPI,
                             sharex="col", squeeze=False, layout="constrained")
    fig.suptitle(title(report, spans), fontsize="medium")
    resting = orders.resting() if orders is not None else []
    end_ms = max((ledger.last_ms or 0 for ledger in bt.ledgers.values()), default=0)
    # The drawdown over the whole run (a new period starts from the peak of the ones before).
    drawdowns: dict[str, list[tuple[int, float]]] = {}
    for quote, curve in sorted(bt.curves.items()):
        peak, drawdowns[quote] = float("-inf"), []
        for t, e in curve.samples or []:
            peak = max(peak, float(e))
            drawdowns[quote].append((t, float(e) - peak))
    totals = {quote: _total_pnl([bt.ledgers[s] for s in symbols if bt.ledgers[s].quote == quote]) for quote in bt.curves}
    for column, span in enumerate(spans):
        axes: list[Axes] = list(grid[:, column])
        pnl_ax, drawdown_ax = axes[0], axes[-1]
        for quote in sorted(bt.curves):
            points = _within(totals[quote], span)
            pnl_ax.plot(_times([t for t, _ in points]), [p for _, p in points],  # type: ignore[arg-type]  # datetimes: see _times
                        label=f"total ({quote})", linewidth=1.2)
            fall = _within(drawdowns[quote], span)
            drawdown_ax.fill_between(_times([t for t, _ in fall]), [d for _, d in fall], 0, step="post",  # type: ignore[arg-type]  # datetimes: see _times
                                     alpha=0.4, label=f"drawdown ({quote})")
        if len(symbols) > 1:
            for symbol in symbols:
                ledger = bt.ledgers[symbol]
                samples = _within([(t, float(e - ledger.budget)) for t, _, e in ledger.samples or []], span)
                pnl_ax.plot(_times([t for t, _ in samples]), [p for _, p in samples],  # type: ignore[arg-type]  # datetimes: see _times
                            linewidth=0.8, label=symbol)
        for ax, symbol in zip(axes[1:-1], symbols, strict=True):
            _price_panel(ax, bt.ledgers[symbol], [r for r in resting if r.symbol == symbol], span, end_ms)
        for ax in axes:
            # A margin, so a fill at either end (and its ×n label) is not cut by the frame.
            pad = max((span[1] - span[0]) // 50, 500)
            ax.set_xlim(*_times((span[0] - pad, span[1] + pad)))  # type: ignore[arg-type]  # datetimes: see _times
            # Concise labels: a column of a few minutes reads as times, not as repeated dates.
            locator = mdates.AutoDateLocator(tz=datetime.UTC)  # type: ignore[no-untyped-call]  # untyped in matplotlib's stubs
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=datetime.UTC))  # type: ignore[no-untyped-call]  # the same
        if column == 0:
            pnl_ax.set_ylabel("pnl (equity − budget)")
            drawdown_ax.set_ylabel("drawdown")
            for ax, symbol in zip(axes[1:-1], symbols, strict=True):
                ax.set_ylabel(f"{symbol} ({bt.ledgers[symbol].quote})")
        if column == len(spans) - 1:
            pnl_ax.legend(loc="best", fontsize="small")
            drawdown_ax.legend(loc="lower left", fontsize="small")
        drawdown_ax.set_xlabel("UTC" if len(spans) == 1 else f"UTC, period {column + 1}")
    return fig


def _total_pnl(ledgers: list[Ledger]) -> list[tuple[int, float]]:
    """The symbols' pnl summed at each of their sample times, each symbol at its last sample (none
    before its first trade). Not the quote's `Curve`: that one jumps by a budget as a symbol
    joins, which would hide the pnl under a scale of whole budgets."""
    last: dict[str, float] = {}
    result: list[tuple[int, float]] = []
    merged = sorted((t, ledger.symbol, float(e - ledger.budget)) for ledger in ledgers for t, _, e in ledger.samples or [])
    for t, symbol, pnl in merged:
        last[symbol] = pnl
        if result and result[-1][0] == t:
            result.pop()
        result.append((t, sum(last.values())))
    return result


def _price_panel(ax: Axes, ledger: Ledger, resting: list[Resting], span: tuple[int, int], end_ms: int) -> None:
    """The price, each order's time on the book at its price, each fill."""
    samples = _within([(t, p) for t, p, _ in ledger.samples or []], span)
    ax.plot(_times([t for t, _ in samples]), [float(p) for _, p in samples], linewidth=0.8, color="grey")  # type: ignore[arg-type]  # datetimes: see _times
    for side in ("BUY", "SELL"):
        levels = []
        for r in resting:
            since, until = max(r.since_ms, span[0]), min(end_ms if r.until_ms is None else r.until_ms, span[1])
            if r.side == side and since < until:
                levels.append((float(r.price), since, until))
        if levels:
            ax.hlines([y for y, _, _ in levels], _times([a for _, a, _ in levels]), _times([b for _, _, b in levels]),  # type: ignore[arg-type]  # datetimes: see _times
                      colors=COLORS[side], linewidth=1.0, alpha=0.6, label=f"{side.lower()} orders resting")
        fills = [m for m in ledger.markers or [] if m.side == side and span[0] <= m.time_ms <= span[1]]
        ax.scatter(_times([m.time_ms for m in fills]), [float(m.price) for m in fills], marker=MARKERS[side],  # type: ignore[arg-type]  # datetimes: see _times
                   color=COLORS[side], s=30, zorder=3, label=f"{side.lower()} fills ({len(fills)})")
        # Fills of one side at one instant and price are drawn on one spot: say how many.
        for (t, price), n in sorted(Counter((m.time_ms, m.price) for m in fills).items()):
            if n > 1:
                ax.annotate(f"×{n}", (_times([t])[0], float(price)), xytext=(5, 5 if side == "SELL" else -12),
                            textcoords="offset points", fontsize="x-small", color=COLORS[side])
    ax.legend(loc="best", fontsize="small")


def plot(bt: Books, path: str, report: Report, orders: OrderLog | None = None, breaks: Sequence[int] = ()) -> None:
    fig = figure(bt, report, orders, breaks)  # first: it says in one line when matplotlib is missing
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=DPI)  # no bbox "tight": the size stays what size_px says
    finally:
        plt.close(fig)

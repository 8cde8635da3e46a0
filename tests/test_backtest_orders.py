"""What a user looks at after a backtest: `--orders` (every order and fill), the plot's title,
markers, resting levels and periods, and the README's sweep."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from readme import example_of
from test_backtest import HAND_CONFIG, HAND_TRADES, T0, cli, png_size, write_config, write_csv

from naived.backtest import engine
from naived.backtest.orders import COLUMNS, OrderLog
from naived.cli import main
from naived.core.config import parse_config

DAY = 86_400_000
# The hand-computed tape a second apart: the plot keeps one sample a second (ledger.SAMPLE_MS).
SECONDS = [(p, t * 1000) for p, t in HAND_TRADES]


def orders_of(tmp_path: Path, trades: list[tuple[str, int]], config: bytes = HAND_CONFIG) -> list[dict[str, str]]:
    out = tmp_path / "orders.csv"
    cli(str(write_csv(tmp_path, trades)), "--config", str(write_config(tmp_path, config)), "--orders", str(out))
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        return list(reader)


def test_orders_lists_every_order_and_fill_of_the_hand_computed_tape(tmp_path: Path) -> None:
    rows = orders_of(tmp_path, HAND_TRADES)
    # test_backtest.test_the_report_of_a_hand_computed_tape's arithmetic: trade n is at T0 + n ms.
    # Trade 5 (1.0000): buy 101 @ 0.99 (1% lower, 100 USDT / 0.99 = 101.01 → 101, step 1), resting.
    # Trade 6 (0.9800) fills it as a maker: 0.1% of 101 XRP = 0.101 XRP commission; the sell is
    # placed at once: 100 @ 0.99 × 1.001 × 1.01 × 1.001 → 1.0019. Trade 8 (1.0100) fills it:
    # 0.1% of 100.19 USDT = 0.10019. The cycle-2 trader buys at trade 13, filled at trade 15; its
    # sell rests to the end.
    shown = [(r["time_ms"], r["client_order_id"], r["trader"], r["cycle"], r["leg"], r["order_id"], r["side"], r["event"],
              r["price"], r["quantity"], r["fill_price"], r["fill_qty"], r["fee"], r["fee_asset"], r["liquidity"],
              r["executed_qty"], r["status"]) for r in rows]
    t = [str(T0 + n) for n in range(17)]
    assert shown == [
        (t[5], "bt-0-1B", "0", "1", "B", "1", "BUY", "NEW", "0.9900", "101", "", "", "", "", "", "0", "NEW"),
        (t[6], "bt-0-1B", "0", "1", "B", "1", "BUY", "TRADE", "0.9900", "101", "0.9900", "101", "0.10100000", "XRP",
         "MAKER", "101", "FILLED"),
        (t[6], "bt-0-1S", "0", "1", "S", "2", "SELL", "NEW", "1.0019", "100", "", "", "", "", "", "0", "NEW"),
        (t[8], "bt-0-1S", "0", "1", "S", "2", "SELL", "TRADE", "1.0019", "100", "1.0019", "100", "0.10019000", "USDT",
         "MAKER", "100", "FILLED"),
        (t[13], "bt-0-2B", "0", "2", "B", "3", "BUY", "NEW", "0.9900", "101", "", "", "", "", "", "0", "NEW"),
        (t[15], "bt-0-2B", "0", "2", "B", "3", "BUY", "TRADE", "0.9900", "101", "0.9900", "101", "0.10100000", "XRP",
         "MAKER", "101", "FILLED"),
        (t[15], "bt-0-2S", "0", "2", "S", "4", "SELL", "NEW", "1.0019", "100", "", "", "", "", "", "0", "NEW"),
    ]
    assert {r["symbol"] for r in rows} == {"XRPUSDT"}
    assert rows[0]["time_utc"] == "2024-01-01T00:00:00.005Z"
    # The fills add up to the report's fees (0.101 XRP at 0.99 twice, plus 0.10019 USDT).
    fees = sum(Decimal(r["fee"]) * (Decimal(r["fill_price"]) if r["fee_asset"] == "XRP" else 1)
               for r in rows if r["event"] == "TRADE")
    assert fees == Decimal("0.30017")


def test_orders_is_one_run_in_process_and_costs_nothing_unasked(tmp_path: Path) -> None:
    args = [str(write_csv(tmp_path, HAND_TRADES)), "--config", str(write_config(tmp_path)), "--orders", str(tmp_path / "o.csv")]
    for extra, message in ((["--set", "chunks=1,2"], "--orders lists one run's orders: give one value per --set"),
                           (["--through-tree"], "--orders lists the in-process run's orders: not with --through-tree")):
        result = CliRunner().invoke(main, ["backtest", *args, *extra])
        assert result.exit_code == 2 and result.output.strip().splitlines() == [f"naived backtest: {message}"]
    assert not (tmp_path / "o.csv").exists()
    # Without --orders or --plot, no listener collects anything.
    plain = engine.Backtest(parse_config(HAND_CONFIG), ["XRPUSDT"])
    assert plain.orders is None
    assert not [f for f in plain.exchange.book.listeners if isinstance(getattr(f, "__self__", None), OrderLog)]


# --- the plot ----------------------------------------------------------------------------------


@pytest.fixture
def plt() -> Iterator[Any]:
    pytest.importorskip("matplotlib", reason="matplotlib is the optional extra: pip install -e '.[plot]'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    yield matplotlib.pyplot
    matplotlib.pyplot.close("all")


def drawn(tmp_path: Path, trades: list[tuple[str, int]], config: bytes = HAND_CONFIG, breaks: tuple[int, ...] = (),
          files: list[Path] | None = None) -> Any:
    from naived.backtest import plot as backtest_plot

    paths = [str(p) for p in files or [write_csv(tmp_path, trades)]]
    outcome = engine.run(parse_config(config), paths, keep_samples=True, keep_orders=True)
    bt = outcome.backtest
    assert bt is not None
    return backtest_plot.figure(bt, bt.report(paths), bt.orders, breaks)


def price_axes(fig: Any) -> list[Any]:
    """The price panels (one symbol here), left to right: the ones with fills."""
    return [ax for ax in fig.axes if any(str(c.get_label()).startswith("buy fills") for c in ax.collections)]


def fills_drawn(ax: Any, side: str) -> int:
    (points,) = [c for c in ax.collections if str(c.get_label()).startswith(f"{side} fills")]
    return len(points.get_offsets())


def levels_drawn(ax: Any, side: str) -> list[Any]:
    found = [c for c in ax.collections if c.get_label() == f"{side} orders resting"]
    return [segment for c in found for segment in c.get_segments()]


def test_the_plot_says_what_was_run_and_what_it_made(tmp_path: Path, plt: Any) -> None:
    fig = drawn(tmp_path, SECONDS)
    text = fig.get_suptitle()
    assert text.splitlines() == [
        "XRPUSDT · 2024-01-01 00:00:01 → 2024-01-01 00:00:16 UTC · pnl -1.14613000 USDT (-1.1461%), 1 cycles",
        "XRPUSDT: chunks 1, budget 100 USDT, buy_down 0.01, profit 0.01, rebuy 0.5 → pnl -1.14613000 USDT (-1.1461%), 1 cycles",
    ]


def test_every_order_is_drawn(tmp_path: Path, plt: Any) -> None:
    fig = drawn(tmp_path, SECONDS)
    (ax,) = price_axes(fig)
    # Two buys filled (trades 6 and 15), one sell (trade 8); each order's time on the book is a
    # level: the buys 5→6 and 13→15, the sells 6→8 and 15→the end (16).
    assert (fills_drawn(ax, "buy"), fills_drawn(ax, "sell")) == (2, 1)
    buys, sells = levels_drawn(ax, "buy"), levels_drawn(ax, "sell")
    assert [(s[0][1], s[1][1]) for s in buys] == [(0.99, 0.99)] * 2
    assert [(s[0][1], s[1][1]) for s in sells] == [(1.0019, 1.0019)] * 2

    def seconds(x: float) -> float:
        return (round(x * DAY) - T0) / 1000  # matplotlib's dates: days since 1970-01-01

    assert [(seconds(s[0][0]), seconds(s[1][0])) for s in buys] == [(5, 6), (13, 15)]
    assert [(seconds(s[0][0]), seconds(s[1][0])) for s in sells] == [(6, 8), (15, 16)]


def test_two_fills_at_one_instant_are_both_drawn_and_counted(tmp_path: Path, plt: Any) -> None:
    # Two chunks: both traders buy 50 @ 0.99 at trade 5, both filled by trade 6.
    fig = drawn(tmp_path, SECONDS, HAND_CONFIG.replace(b"chunks = 1", b"chunks = 2"))
    (ax,) = price_axes(fig)
    assert (fills_drawn(ax, "buy"), fills_drawn(ax, "sell")) == (4, 2)  # two at each spot
    labels = [t.get_text() for t in ax.texts]
    assert "×2" in labels


def two_days(tmp_path: Path) -> list[Path]:
    first = write_csv(tmp_path, SECONDS)
    second = tmp_path / "XRPUSDT-trades-2024-01-02.csv"
    second.write_text("".join(f"{200 + i},{p},10.0,0,{T0 + DAY + t},true,true\n" for i, (p, t) in enumerate(SECONDS)))
    return [first, second]


def test_separate_periods_are_separate_columns(tmp_path: Path, plt: Any) -> None:
    from naived.backtest import plot as backtest_plot

    fig = drawn(tmp_path, [], files=two_days(tmp_path))
    rows = 3  # pnl, XRPUSDT, drawdown
    assert len(fig.axes) == rows * 2
    assert "(2 periods)" in fig.get_suptitle().splitlines()[0]
    # No line runs across the day between them: every line stays within its 16 s.
    for ax in fig.axes:
        for line in ax.get_lines():
            xs = line.get_xdata(orig=False)
            if len(xs):
                assert (max(xs) - min(xs)) * DAY < 16_000
    # A break given by the caller splits one input in two as well.
    fig = drawn(tmp_path, SECONDS, breaks=(T0 + 10_000,))
    assert len(fig.axes) == rows * 2
    left, right = price_axes(fig)
    assert (fills_drawn(left, "buy"), fills_drawn(left, "sell"), fills_drawn(right, "buy")) == (1, 1, 1)
    # The PNG's size is what size_px says for two periods; wider for many.
    out = tmp_path / "two.png"
    cli(*map(str, two_days(tmp_path)), "--config", str(write_config(tmp_path)), "--plot", str(out))
    assert png_size(out) == backtest_plot.size_px(1, 2) == (1200, 830)
    assert backtest_plot.size_px(2, 6) == (1800, 1115)


def test_the_readme_sweep_rows_differ() -> None:
    """The README's sweep on the shipped sample: sells fill and each setting gives another row
    (tests/test_readme.py checks that the rows are what the command prints)."""
    example = example_of(".venv/bin/naived backtest samples/*.gz --set profit_interval=0.0005,0.001,0.002")
    assert example.output is not None
    header, *rows = example.output.strip().splitlines()
    assert header.split()[:3] == ["profit_interval", "quote", "cycles"]
    figures = [row.split()[2:] for row in rows]
    assert len(figures) == 3 and len({tuple(f) for f in figures}) == 3
    assert any(int(f[0]) > 0 for f in figures)  # some cycles finished: sells filled


def test_an_order_rests_until_it_ends_whatever_ends_it() -> None:
    """A part-filled order still rests; a cancel or an expiry ends it; one never ended rests to
    the end of the input (None)."""
    from naived.paper.book import Change, Fill, PaperOrder

    def change(order_id: int, execution: str, status: str, time_ms: int, filled: str = "0") -> Change:
        order = PaperOrder(order_id, "XRPUSDT", f"bt-0-{order_id}B", "BUY", Decimal("0.99"), Decimal(10), 1, 0,
                           executed_qty=Decimal(filled), status=status)
        fill = Fill(Decimal("0.99"), Decimal(4), 7, time_ms) if execution == "TRADE" else None
        return Change(order, execution, fill, {}, time_ms)

    log = OrderLog()
    log.on_changes([change(1, "NEW", "NEW", 1), change(2, "NEW", "NEW", 1), change(3, "NEW", "NEW", 2)])
    log.on_changes([change(1, "TRADE", "PARTIALLY_FILLED", 5, "4"), change(2, "CANCELED", "CANCELED", 6)])
    log.on_changes([change(1, "TRADE", "PARTIALLY_FILLED", 8, "8"), change(1, "EXPIRED", "EXPIRED", 9, "8")])
    assert [(r.since_ms, r.until_ms) for r in log.resting()] == [(1, 9), (1, 6), (2, None)]
    assert [(e.event, e.fill_qty) for e in log.events if e.order_id == 1] == [
        ("NEW", None), ("TRADE", Decimal(4)), ("TRADE", Decimal(4)), ("EXPIRED", None)]

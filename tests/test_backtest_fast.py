"""The backtest's fast path (naived/backtest/quiet.py) gives, byte for byte, the report of the
slow path that hands every trade to the strategy, and of the reader the backtest had before
(tape → TradeEvent as the file writes it), on random tapes: several symbols on one quote (their
summed curve), a BNB market paying commissions, rebuys, wild prices the gates drop, partial
fills, fills on touch, prices written with and without trailing zeros."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

import msgspec
import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_backtest import HAND_CONFIG, WARM, write_csv

from naived.backtest import engine, render
from naived.backtest.report import Report
from naived.backtest.trades import read_trades
from naived.core.config import parse_config

T0 = 1_735_689_600_000  # 2025-01-01, ms
# symbol -> (start price, tick): XRPUSDT and ADAUSDT share the USDT curve, BNBUSDT prices BNB
MARKETS = {"XRPUSDT": (Decimal("0.5000"), Decimal("0.0001")), "ADAUSDT": (Decimal("0.3000"), Decimal("0.0001")),
           "BNBUSDT": (Decimal("300.0"), Decimal("0.1"))}


def tape(directory: Path, seed: int, symbols: list[str], trades: int, wild: float, zeros: bool) -> list[str]:
    """One CSV per symbol: a random walk in ticks, bursts of a repeated price, now and then a
    price far out of the band; every trade's time shared by the next one at times."""
    rng = random.Random(seed)
    paths = []
    for n, symbol in enumerate(symbols):
        price, tick = MARKETS[symbol]
        t = T0 + n
        rows = []
        for i in range(trades):
            if rng.random() < 0.5:
                price = max(tick * 100, price + tick * rng.randint(-25, 24))
            shown = price * 3 if rng.random() < wild else price
            t += rng.choice((0, 0, 1, 250, 4000))
            text = format(shown.quantize(Decimal("0.00000001")) if zeros and i % 2 else shown, "f")
            qty = rng.choice(("1", "5.5", "20", "300"))
            rows.append(f"{1000 + i},{text},{qty},0,{t},{'true' if i % 3 else 'false'},true\n")
        path = directory / f"{symbol}-trades-2025-01-01.csv"
        path.write_text("".join(rows))
        paths.append(str(path))
    return paths


def config(chunks: int, buy_down: str, profit: str, rebuy: str, partial: bool, touch: bool, bnb: bool) -> bytes:
    return f"""
[trading.defaults]
chunks = {chunks}
buy_down_interval = "{buy_down}"
profit_interval = "{profit}"
rebuy_interval = "{rebuy}"

[paper]
partial_fills = {str(partial).lower()}
fill_on_touch = {str(touch).lower()}
commission_in_bnb = {str(bnb).lower()}
""".encode()


def before(text: bytes, paths: list[str]) -> bytes:
    """The backtest as it was: the replay's reader, every trade as the file writes it."""
    bt = engine.Backtest(parse_config(text))
    events, _ = read_trades(paths)
    for event in events:
        bt.on_trade(event)
    return render.encode(bt.report(paths))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), symbols=st.sampled_from([["XRPUSDT"], ["XRPUSDT", "ADAUSDT"], ["XRPUSDT", "BNBUSDT"],
                                                                  ["XRPUSDT", "ADAUSDT", "BNBUSDT"]]),
       trades=st.integers(50, 600), wild=st.sampled_from([0.0, 0.01, 0.05]), zeros=st.booleans(),
       chunks=st.integers(1, 3), buy_down=st.sampled_from(["0.001", "0.003", "0.01"]),
       profit=st.sampled_from(["0.0005", "0.002", "0.01"]), rebuy=st.sampled_from(["0.002", "0.005", "0.5"]),
       partial=st.booleans(), touch=st.booleans(), bnb=st.booleans(), samples=st.booleans())
def test_the_fast_path_gives_the_slow_paths_report(tmp_path_factory: object, seed: int, symbols: list[str], trades: int,
                                                   wild: float, zeros: bool, chunks: int, buy_down: str, profit: str,
                                                   rebuy: str, partial: bool, touch: bool, bnb: bool,
                                                   samples: bool) -> None:
    directory = tmp_path_factory.mktemp("tape")  # type: ignore[attr-defined]  # pytest's TempPathFactory
    paths = tape(directory, seed, symbols, trades, wild, zeros)
    text = config(chunks, buy_down, profit, rebuy, partial, touch, bnb)
    fast = engine.run(parse_config(text), paths, keep_samples=samples)
    slow = engine.run(parse_config(text), paths, every_trade=True, keep_samples=samples)
    (_, fast_report), = fast.reports
    (_, slow_report), = slow.reports
    assert render.encode(fast_report) == render.encode(slow_report)
    assert fast.backtest is not None and slow.backtest is not None
    for name, ledger in fast.backtest.ledgers.items():  # the plot's: one sample a second of tape
        assert ledger.samples == slow.backtest.ledgers[name].samples
    for quote, curve in fast.backtest.curves.items():
        assert curve.samples == slow.backtest.curves[quote].samples
    assert render.encode(msgspec.structs.replace(fast_report, input=None)) == before(text, paths)


def test_the_random_tapes_exercise_what_the_fast_path_skips(tmp_path: Path) -> None:
    """The comparison above means something only if its tapes fill orders, finish cycles and
    rebuy, with several symbols holding positions at once."""
    paths = tape(tmp_path, 7, ["XRPUSDT", "ADAUSDT", "BNBUSDT"], 600, 0.01, True)
    outcome = engine.run(parse_config(config(3, "0.003", "0.002", "0.005", False, False, True)), paths)
    (_, report), = outcome.reports
    assert all(s.cycles_completed >= 2 and s.orders_placed >= 6 for s in report.symbols), report.symbols
    assert all(Decimal(s.max_drawdown) > 0 for s in report.symbols)
    assert report.totals[0].max_drawdown != "0.00000000"
    assert isinstance(report, Report)


# --- the pieces the fast path computes in bulk, each against the rule it replaces -------------


def sequential(cash: Decimal, units: Decimal, prices: list[int], peak: Decimal, drawdown: Decimal,
               fraction: Decimal) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """`Ledger.mark`'s peak and drawdown, trade by trade."""
    equity = cash
    for p in prices:
        equity = cash + units * Decimal(p).scaleb(-8)
        if equity > peak:
            peak = equity
        elif peak - equity > drawdown:
            drawdown = peak - equity
            fraction = drawdown / peak
    return equity, peak, drawdown, fraction


@settings(max_examples=500, deadline=None)
@given(prices=st.lists(st.integers(1, 12), min_size=1, max_size=40), units=st.sampled_from([1, 2, 3, 1234]),
       cash=st.integers(0, 10**6), above=st.integers(0, 30), drawdown=st.integers(0, 20))
# The same deepest fall twice: from the old peak (10) to 5, and from 12 to 7; the first one's peak
# makes the fraction (5 / 10, not 5 / 12).
@example(prices=[5, 12, 7], units=1, cash=0, above=5, drawdown=0)
def test_a_run_of_prices_takes_the_ledgers_peak_and_drawdown(prices: list[int], units: int, cash: int, above: int,
                                                             drawdown: int) -> None:
    from naived.backtest.quiet import _Peak

    # Small whole numbers: equal prices, equal drawdowns at different times, ties everywhere.
    u, c = Decimal(units), Decimal(cash).scaleb(-4)
    scaled = [p * 10**8 for p in prices]
    peak = c + u * prices[0] + above  # a peak at or over the equity
    start = (peak, Decimal(drawdown), Decimal("0.125"))
    got = _Peak.run(c, u, np.array(scaled, dtype=np.int64), *start)
    assert got == sequential(c, u, scaled, *start)
    assert [str(x) for x in got[2:]] == [str(x) for x in sequential(c, u, scaled, *start)[2:]]


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32), trades=st.integers(1, 400), wild=st.sampled_from([0.0, 0.1, 0.3]))
def test_the_column_average_is_the_books(seed: int, trades: int, wild: float) -> None:
    """PERCENT_PRICE_BY_SIDE's average from the columns equals the book's `_Average`, fed only the
    trades the feed gate lets in, at whichever trade it is asked (an order placed on it)."""
    from naived.backtest.columns import Checked
    from naived.backtest.quiet import _ColumnAverage, _Symbol
    from naived.market.gate import MarketGate
    from naived.paper.book import _Average

    rng = random.Random(seed)
    band = Decimal("0.1")
    t, p, rows = T0, 50_000_000, []
    for _ in range(trades):
        t += rng.choice((0, 300, 2000, 40_000))
        p = max(1000, p + rng.randint(-400_000, 400_000))
        rows.append((p * 3 if rng.random() < wild else p, rng.randint(1, 10**9), t))
    column = np.array(rows, dtype=np.int64)
    checked = Checked(["XRPUSDT"], np.zeros(trades, np.int32), np.arange(trades, dtype=np.int64), column[:, 0],
                      column[:, 1], column[:, 2], msgspec.convert({}, object))  # type: ignore[arg-type]
    symbol = _Symbol(checked, 0, np.arange(trades, dtype=np.int64))
    at = [0]
    lazy = _ColumnAverage(symbol, 5, band, lambda: at[0])
    book = _Average(5)
    gate = MarketGate("XRPUSDT", band, "test", confirm=1)
    for k, (price, qty, ms) in enumerate(rows):
        event = engine.TradeEvent("trade", ms, "XRPUSDT", k, format(Decimal(price).scaleb(-8), "f"), "1", ms, False)
        if gate.judge(event) is event:
            book.add(ms, Decimal(price).scaleb(-8), Decimal(qty).scaleb(-8))
        at[0] = k
        if rng.random() < 0.3 or k == trades - 1:  # asked at the trade's time, as an order placed on it asks
            assert lazy.price(ms) == book.price(ms)


def test_a_rebuy_due_while_the_sell_rests_is_not_skipped(tmp_path: Path) -> None:
    """A selling trader still watches for its rebuy (chapter 9): the trade under the rebuy price
    is an event though it crosses no order."""
    config = HAND_CONFIG.replace(b"chunks = 1", b"chunks = 2\ninitial_traders = 1").replace(
        b'rebuy_interval = "0.5"', b'rebuy_interval = "0.005"')
    # 0.9890 fills the buy at 0.99 (above the rebuy price 0.99 × 0.995 = 0.98505): the sell rests
    # at 1.0019; 0.9880 .. 0.9860 change nothing; 0.9840 is under the rebuy price: a second
    # trader, which buys after its gate's five prices.
    prices = WARM + ["1.0000", "0.9890", "0.9880", "0.9870", "0.9860"] + ["0.9840"] + ["0.9850"] * 6
    path = write_csv(tmp_path, [(p, t * 1000) for t, p in enumerate(prices, 1)])
    fast = engine.run(parse_config(config), [str(path)])
    slow = engine.run(parse_config(config), [str(path)], every_trade=True)
    (_, report), = fast.reports
    assert render.encode(report) == render.encode(slow.reports[0][1])
    assert report.symbols[0].orders_placed == 3  # the buy, its sell, the second trader's buy


def test_a_csv_is_read_in_blocks_of_whole_lines(tmp_path: Path, monkeypatch: object) -> None:
    """numpy parses a CSV a block at a time: a line cut by a block's end, a header, no newline at
    the end and blank lines give the trades the line reader gives."""
    from naived.backtest import columns

    paths = tape(tmp_path, 3, ["XRPUSDT"], 300, 0.0, True)
    path = Path(paths[0])
    text = path.read_text()
    path.write_text("id,price,qty,quote_qty,time,is_buyer_maker,is_best_match\n" + text.replace("\n", "\n\n", 7).rstrip("\n"))
    monkeypatch.setattr(columns, "BLOCK_BYTES", 97)  # type: ignore[attr-defined]  # pytest's MonkeyPatch

    def no_line_reader(*args: object) -> None:
        raise AssertionError("numpy refused the CSV")

    monkeypatch.setattr(columns, "_line_reader", no_line_reader)  # type: ignore[attr-defined]
    read = columns.read(paths)
    events, _ = read_trades(paths)
    expected = [(e.t, Decimal(e.p), Decimal(e.q), e.E) for e in events]
    got = [(int(i), Decimal(int(p)).scaleb(-8), Decimal(int(q)).scaleb(-8), int(t))
           for i, p, q, t in zip(read.trade_id, read.price, read.qty, read.time_ms, strict=True)]
    assert got == expected and len(got) == 300 and read.summary.malformed == 0

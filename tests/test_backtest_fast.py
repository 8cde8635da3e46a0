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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), symbols=st.sampled_from([["XRPUSDT"], ["XRPUSDT", "ADAUSDT"], ["XRPUSDT", "BNBUSDT"],
                                                                  ["XRPUSDT", "ADAUSDT", "BNBUSDT"]]),
       trades=st.integers(50, 600), wild=st.sampled_from([0.0, 0.01, 0.05]), zeros=st.booleans(),
       chunks=st.integers(1, 3), buy_down=st.sampled_from(["0.001", "0.003", "0.01"]),
       profit=st.sampled_from(["0.0005", "0.002", "0.01"]), rebuy=st.sampled_from(["0.002", "0.005", "0.5"]),
       partial=st.booleans(), touch=st.booleans(), bnb=st.booleans())
def test_the_fast_path_gives_the_slow_paths_report(tmp_path_factory: object, seed: int, symbols: list[str], trades: int,
                                                   wild: float, zeros: bool, chunks: int, buy_down: str, profit: str,
                                                   rebuy: str, partial: bool, touch: bool, bnb: bool) -> None:
    directory = tmp_path_factory.mktemp("tape")  # type: ignore[attr-defined]  # pytest's TempPathFactory
    paths = tape(directory, seed, symbols, trades, wild, zeros)
    text = config(chunks, buy_down, profit, rebuy, partial, touch, bnb)
    fast = engine.run(parse_config(text), paths)
    slow = engine.run(parse_config(text), paths, every_trade=True)
    (_, fast_report), = fast.reports
    (_, slow_report), = slow.reports
    assert render.encode(fast_report) == render.encode(slow_report)
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

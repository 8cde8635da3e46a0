"""`naived backtest`: the report's arithmetic, determinism, the daemon's own rules, real tapes, the plot."""

from __future__ import annotations

import json
import struct
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from recorded import BTC_TAPE, ETH_TAPE

from naived.backtest import engine
from naived.backtest.report import Report, money
from naived.cli import main
from naived.core import strategy
from naived.core.config import parse_config
from naived.core.symbols import quote_assets
from naived.paper.book import PaperBook

# One trader, no rebuy: buy 1% under the first price, sell 1% (plus both fees) over the buy.
HAND_CONFIG = b"""
[trading.defaults]
chunks = 1
buy_down_interval = "0.01"
profit_interval = "0.01"
rebuy_interval = "0.5"
"""
# XRPUSDT: tick 0.0001, step 1. A trader acts on nothing before its market gate has seen 5
# prices (naived/market/gate.py), and each cycle is a fresh trader: WARM is what each cycle's trader
# sees before the trade its arithmetic starts from.
WARM = ["1.0000"] * 4
# The cycle-2 trader starts after the trade that ended cycle 1 and waits for 5 prices; a spare
# sixth at the same price gives the same buy if, through the tree, it subscribes one trade late.
WARM_AGAIN = ["1.0000"] * 5
CYCLES = ["1.0000", "0.9800", "1.0019", "1.0100"] + WARM_AGAIN + ["1.0000", "0.9500", "0.9700"]
# (price, time ms) of each trade.
HAND_TRADES = [(p, t) for t, p in enumerate(WARM + CYCLES, 1)]
T0 = 1_704_067_200_000  # 2024-01-01, ms: data.binance.vision's CSVs before 2025


def write_csv(directory: Path, trades: list[tuple[str, int]], micros: bool = False, symbol: str = "XRPUSDT") -> Path:
    path = directory / f"{symbol}-trades-2024-01-01.csv"
    scale = 1000 if micros else 1
    path.write_text("".join(f"{100 + i},{p},10.0,0,{(T0 + t) * scale},true,true\n" for i, (p, t) in enumerate(trades)))
    return path


def write_config(directory: Path, text: bytes = HAND_CONFIG) -> Path:
    path = directory / "naive.toml"
    path.write_bytes(text)
    return path


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, ["backtest", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def report_of(*args: str) -> Report:
    return msgspec.json.decode(cli("--json", *args), type=Report)


def test_the_report_of_a_hand_computed_tape(tmp_path: Path) -> None:
    report = report_of(str(write_csv(tmp_path, HAND_TRADES)), "--config", str(write_config(tmp_path)))
    (s,) = report.symbols
    D = Decimal
    # No price is more than 10% (price_band) from the median of the last 5: the gate drops none.
    # Trades 1-4 (1.0000): trader 0 (cycle 1) waits for its gate's 5th price.
    # Trade 5 (1.0000): buy 1% lower, 0.9900, 100 / 0.99 = 101.01 → 101 XRP (step 1), rests.
    # Trade 6 (0.9800) crosses it: 101 @ 0.99 = 99.99 USDT, commission 0.1% of 101 XRP = 0.101 XRP,
    # so 100.899 received; sell 100 (step) @ 0.99 × 1.001 × 1.01 × 1.001 = 1.0019007999 → 1.0019.
    # Trade 7 (1.0019) touches it: no fill (strict). Trade 8 (1.0100): sold, 100.19 USDT, commission
    # 0.10019 USDT. Cycle 1 done, 0.899 XRP dust. Trades 9-12 (1.0000): the cycle-2 trader, fresh,
    # waits; trade 13 (1.0000), its 5th price: it buys 101 @ 0.99; trade 14 (1.0000) leaves it
    # resting; trade 15 (0.9500) fills it; its sell rests at 1.0019. Trade 16 (0.9700) ends the tape.
    # Before a fill the equity is the budget, 100; at 1.0000 after cycle 1 it is
    # 100 − 99.99 + 100.19 − 0.10019 + 0.899 = 100.99881, under the peak: the warm-up trades move
    # neither the peak nor the trough, and the figures are those of the tape without them.
    unit_cost = D("99.99") / D("100.899")
    realised = D("100.19") - D("0.10019") - 100 * unit_cost
    cash = 100 - D("99.99") + D("100.19") - D("0.10019") - D("99.99")
    held = D("0.899") + D("100.899")
    pnl = cash + held * D("0.97") - 100
    peak = 100 - D("99.99") + D("100.899") * D("1.0019")  # after trade 7
    trough = cash + held * D("0.95")  # after trade 15
    q = money
    assert (s.symbol, s.trades, s.cycles_completed, s.open_cycles, s.open_positions, s.orders_placed) == (
        "XRPUSDT", 16, 1, 1, 1, 4)
    assert s.first_price == "1" and s.last_price == "0.97"
    assert (s.first_trade_ms, s.last_trade_ms) == (T0 + 1, T0 + 16)
    assert s.fees == q(D("0.101") * D("0.99") + D("0.10019") + D("0.101") * D("0.99")) == "0.30017000"
    assert s.held == "101.798" and s.held_value == q(held * D("0.97"))
    assert s.realised_pnl == q(realised)
    assert s.pnl == q(pnl) == "-1.14613000"
    assert s.unrealised_pnl == q(pnl - realised)
    # Unrealised is what is held, at the last price, minus what it cost (both cycles' units at the
    # same unit cost here): the report's residual agrees with the positions.
    assert Decimal(s.unrealised_pnl) == (held * D("0.97") - held * unit_cost).quantize(strategy.EIGHT)
    assert s.return_on_budget == q(pnl / 100)
    assert s.max_drawdown == q(peak - trough) == "4.28279810"
    assert s.max_drawdown_fraction == q((peak - trough) / peak)
    (total,) = report.totals
    assert (total.quote, total.pnl, total.max_drawdown, total.cycles_completed) == ("USDT", s.pnl, s.max_drawdown, 1)


def test_each_cycles_trader_waits_for_five_prices(tmp_path: Path) -> None:
    """Every cycle is a new trader process with a fresh market gate: it places nothing before
    it has seen 5 prices, as in the tree (where this tape gave 2 orders to the backtest's 4)."""
    trades = [(p, t) for t, p in enumerate(WARM + ["1.0000", "0.9800", "1.0019", "1.0100", "1.0000", "0.9500", "0.9700"], 1)]
    report = report_of(str(write_csv(tmp_path, trades)), "--config", str(write_config(tmp_path)))
    (s,) = report.symbols
    D = Decimal
    # Cycle 1 as in the hand-computed tape: buy 101 @ 0.99 at trade 5, filled at trade 6 (100.899
    # XRP after the 0.101 commission), sold 100 @ 1.0019 at trade 8 (100.19 USDT, 0.10019 fee).
    # The cycle-2 trader sees trades 9-11 only (1.0000, 0.9500, 0.9700): 3 prices, no buy.
    cash = 100 - D("99.99") + D("100.19") - D("0.10019")  # 100.09981
    pnl = cash + D("0.899") * D("0.97") - 100  # 0.09981 + 0.87203
    # Equity: 100 until the buy fills at trade 6, 0.01 + 100.899 × 0.98 = 98.89102 there (the
    # largest fall, 1.10898 from 100); later peak 0.01 + 100.899 × 1.0019 = 101.1007081 (trade 7),
    # trough 100.09981 + 0.899 × 0.95 = 100.95386 (trade 10): a fall of 0.1468481 only.
    assert (s.trades, s.cycles_completed, s.open_cycles, s.open_positions, s.orders_placed) == (11, 1, 1, 0, 2)
    assert s.held == "0.899" and s.fees == money(D("0.101") * D("0.99") + D("0.10019")) == "0.20018000"
    assert s.pnl == money(pnl) == "0.97184000"
    assert s.max_drawdown == "1.10898000" and s.max_drawdown_fraction == "0.01108980"


# A wild trade (0.5000 on a 1.0000 market: 50% off the median of the last 5, band 10%), where
# acting on it would cost: as a fresh trader's first judged price (it would buy at 0.4950), or
# crossing the resting buy (the paper book would fill it, the trader would sell), the tape's
# last trade (the tree's run ends once the paper exchange has judged every trade).
WILD = {
    "first-price": WARM + ["0.5000", "1.0000", "1.0000"],
    "crosses-the-buy": WARM + ["1.0000", "0.5000"],
}


@pytest.mark.parametrize("tape", list(WILD))
def test_an_out_of_band_trade_is_dropped_as_the_tree_drops_it(tmp_path: Path, tape: str) -> None:
    """The trader's gate and the paper exchange's feed drop the wild trade."""
    (tmp_path / "in").mkdir()
    trades = [(p, t * 1000) for t, p in enumerate(WILD[tape], 1)]
    csv = write_csv(tmp_path / "in", trades)
    config = write_config(tmp_path)
    # One buy, 101 @ 0.99 from a 1.0000 trade: at trade 6 ("first-price": trade 5 is dropped, the
    # gate's 5th price), at trade 5 ("crosses-the-buy"). Nothing fills: the wild trade is the only
    # one under 0.99. The account never moves: equity 100 at every trade, marked at 0.5 too.
    outcome = engine.run(parse_config(config.read_bytes()), [str(csv)])
    bt = outcome.backtest
    assert bt is not None
    buy_trade = {"first-price": 6, "crosses-the-buy": 5}[tape]
    assert [(o.side, o.price, o.time_ms, o.executed_qty) for o in bt.exchange.book.all_orders()] == \
        [("BUY", Decimal("0.99"), T0 + 1000 * buy_trade, 0)]
    in_process = report_of(str(csv), "--config", str(config))
    (s,) = in_process.symbols
    assert (s.trades, s.cycles_completed, s.open_cycles, s.open_positions, s.orders_placed) == (len(trades), 0, 1, 0, 1)
    assert (s.held, s.fees, s.pnl, s.max_drawdown) == ("0", "0.00000000", "0.00000000", "0.00000000")
    through = report_of(str(csv), "--config", str(config), "--through-tree", "--speed", "2", "--keep", str(tmp_path / "tree"))
    assert through.symbols == in_process.symbols and through.totals == in_process.totals


def test_the_gate_sees_the_trades_the_quiet_check_skips(tmp_path: Path) -> None:
    """The backtest skips a trader on a repeated price while its state is the same; its gate
    must still see that price, as a trader process's gate sees every frame."""
    config = write_config(tmp_path, HAND_CONFIG.replace(b"chunks = 1", b"chunks = 2\ninitial_traders = 1")
                          .replace(b'rebuy_interval = "0.5"', b'rebuy_interval = "0.03"'))
    (tmp_path / "in").mkdir()
    prices = WARM + ["1.0000"] + ["1.0500"] * 3 + ["0.9400"] + ["1.0500"] * 5
    csv = write_csv(tmp_path / "in", [(p, t * 1000) for t, p in enumerate(prices, 1)])
    # Trader 0 buys at 0.9900 on trade 5 (its 5th price) and waits; nothing else fills (the buy
    # only on a trade under 0.99). Trades 6-8 (1.0500): its state does not change; its last 5
    # prices become 1, 1, 1.05, 1.05, 1.05. Trade 9 (0.9400): the median of 1, 1.05, 1.05, 1.05,
    # 0.94 is 1.05 and 0.94 lies 0.11 from it, over 10% of it (0.105): dropped, by the paper
    # exchange's feed too (the same 5 prices). Had the gate missed trades 7 and 8, the median
    # would be 1 (of 1, 1, 1, 1.05, 0.94), 0.94 in the band, and under the rebuy price
    # 0.99 × (1 − 0.03) = 0.9603: a second trader, buying at 1.05 × 0.99 after its 5 prices.
    report = report_of(str(csv), "--config", str(config))
    (s,) = report.symbols
    assert (s.trades, s.cycles_completed, s.open_cycles, s.open_positions, s.orders_placed) == (len(prices), 0, 1, 0, 1)
    assert (s.held, s.pnl) == ("0", "0.00000000")
    through = report_of(str(csv), "--config", str(config), "--through-tree", "--speed", "2", "--keep", str(tmp_path / "tree"))
    assert through.symbols == report.symbols and through.totals == report.totals


def test_a_trader_decides_again_at_a_price_it_has_seen_once_its_state_changed(tmp_path: Path) -> None:
    """The backtest skips a trader on a repeated price only while its state is the same."""
    # After 4 trades at 1.0000 (the gate's warm-up) a buy at 0.9900: 1.0200 while buying: nothing
    # to do; 0.9800 fills the buy (sell at 1.0019); 1.0200 again: now it is the sell's price, and
    # the cycle ends. All within 10% of the median (1.0000) of the last 5.
    trades = [(p, t) for t, p in enumerate(WARM + ["1.0000", "1.0200", "0.9800", "1.0200"], 1)]
    report = report_of(str(write_csv(tmp_path, trades)), "--config", str(write_config(tmp_path)))
    assert report.symbols[0].cycles_completed == 1


def test_an_open_sell_part_filled_is_unrealised_until_it_ends(tmp_path: Path) -> None:
    config = write_config(tmp_path, HAND_CONFIG + b"[paper]\npartial_fills = true\n")
    # After the gate's warm-up (4 trades at 1.0000: nothing placed, so nothing fills on them), the
    # buy (101 @ 0.99) fills whole on 1000 traded; the sell (100 @ 1.0019) gets 40 of it.
    trades = [(p, "1000") for p in WARM] + [("1.0000", "1000"), ("0.9800", "1000"), ("1.0100", "40")]
    path = tmp_path / "XRPUSDT-trades-2024-01-01.csv"
    path.write_text("".join(f"{100 + i},{p},{q},0,{T0 + i},true,true\n" for i, (p, q) in enumerate(trades)))
    (s,) = report_of(str(path), "--config", str(config)).symbols
    assert (s.cycles_completed, s.open_positions, s.held) == (0, 1, "60.899")
    assert s.realised_pnl == "0.00000000" and s.unrealised_pnl == s.pnl
    # cash: −99.99 + 40 × 1.0019 − its 0.1% commission; held 100.899 − 40 at 1.01.
    cash = -Decimal("99.99") + Decimal("40.076") - Decimal("0.040076")
    assert s.pnl == money(cash + Decimal("60.899") * Decimal("1.01"))


def test_the_books_agree_with_the_paper_account(tmp_path: Path) -> None:
    """The ledger (from fills) and the paper exchange's balances are the same account."""
    config = parse_config(HAND_CONFIG)
    outcome = engine.run(config, [str(write_csv(tmp_path, HAND_TRADES))])
    bt = outcome.backtest
    assert bt is not None
    balances = bt.exchange.book.balance_sheet()
    ledger = bt.ledgers["XRPUSDT"]
    usdt, xrp = balances["USDT"], balances["XRP"]
    start = config.paper.starting_balances(quote_assets())  # XRP is a quote asset too (of one pair)
    assert usdt.free + usdt.locked - start["USDT"] == ledger.cash - ledger.budget
    assert xrp.free + xrp.locked - start.get("XRP", 0) == ledger.units


def test_ms_and_us_timestamps_give_the_same_report(tmp_path: Path) -> None:
    (tmp_path / "ms").mkdir()
    (tmp_path / "us").mkdir()
    config = str(write_config(tmp_path))
    ms = cli("--json", str(write_csv(tmp_path / "ms", HAND_TRADES)), "--config", config)
    us = cli("--json", str(write_csv(tmp_path / "us", HAND_TRADES, micros=True)), "--config", config)
    assert ms == us


def test_two_runs_give_byte_identical_json(tmp_path: Path) -> None:
    inputs = [str(BTC_TAPE), str(ETH_TAPE)]
    first = cli("--json", *inputs)
    assert cli("--json", *inputs) == first
    settings = json.loads(first)["settings"]["BTCUSDT"]
    assert (settings["chunks"], settings["initial_traders"]) == (2, 0)  # counts as numbers, not "2"
    assert settings["buy_down_interval"] == "0.0001"  # a decimal as written: exact
    assert "bt-0-1B" in repr(engine.run(parse_config(b""), inputs).backtest.exchange.book.all_orders())


def test_the_strategy_functions_decide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backtest calls the daemon's strategy: change a rule there and the result changes."""
    args = (str(write_csv(tmp_path, HAND_TRADES)), "--config", str(write_config(tmp_path)))
    before = report_of(*args).symbols[0]
    real = strategy.sell_price
    monkeypatch.setattr(strategy, "sell_price", lambda state: real(state) + Decimal("0.0200"))  # sells at 1.0219
    after = report_of(*args).symbols[0]
    assert (before.cycles_completed, after.cycles_completed) == (1, 0)
    monkeypatch.undo()
    real_buy = strategy.buy_intent
    monkeypatch.setattr(strategy, "buy_intent",
                        lambda state, price: msgspec.structs.replace(real_buy(state, price), quantity="50"))
    # 50 bought, 49.95 received, 49 sold, 0.95 dust; cycle 2 holds 49.95.
    assert report_of(*args).symbols[0].held == "50.9"


def test_the_paper_books_commission_is_charged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backtest fills through the paper exchange's book: change its commission and the fees change."""
    args = (str(write_csv(tmp_path, HAND_TRADES)), "--config", str(write_config(tmp_path)))
    assert report_of(*args).symbols[0].fees == "0.30017000"
    real = PaperBook._commission
    monkeypatch.setattr(PaperBook, "_commission", lambda self, *a: (real(self, *a)[0] * 2, real(self, *a)[1]))
    assert report_of(*args).symbols[0].fees == "0.60034000"


def test_a_sweep_prints_one_row_per_setting(tmp_path: Path) -> None:
    args = [str(write_csv(tmp_path, HAND_TRADES)), "--config", str(write_config(tmp_path))]
    out = cli(*args, "--set", "profit_interval=0.01,0.03", "--set", "chunks=1,2")
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["profit_interval", "chunks", "quote"]
    assert [line.split()[:2] for line in lines[1:]] == [["0.01", "1"], ["0.01", "2"], ["0.03", "1"], ["0.03", "2"]]
    # One value is the same run as the config file saying it.
    assert report_of(*args, "--set", "profit_interval=0.01").symbols == report_of(*args).symbols
    result = CliRunner().invoke(main, ["backtest", *args, "--set", "profit=0.1"])
    assert result.exit_code == 2 and "profit: not a trading setting" in result.output
    result = CliRunner().invoke(main, ["backtest", *args, "--set", "chunks=0"])
    assert result.exit_code == 2 and "chunks" in result.output


def test_the_recorded_sample(tmp_path: Path) -> None:
    """samples/: real trades, cut so that cycles finish with the default settings (the README's
    example): ETHUSDT's traders buy near the bottom and sell; BTCUSDT's never reach their sells."""
    report = report_of(str(BTC_TAPE), str(ETH_TAPE))
    btc, eth = report.symbols
    assert (btc.trades, eth.trades) == (2_927, 2_810)  # samples/README.md's counts: every trade, none twice
    assert (btc.first_price, btc.last_price, eth.first_price, eth.last_price) == ("61563.99", "61698.49", "2674.07", "2682.4")
    assert (btc.cycles_completed, btc.open_positions, eth.cycles_completed, eth.open_positions) == (0, 2, 2, 2)
    assert eth.realised_pnl == "0.09848228" and Decimal(btc.realised_pnl) == 0
    for s in (btc, eth):
        assert Decimal(s.realised_pnl) + Decimal(s.unrealised_pnl) == Decimal(s.pnl)
        assert s.orders_placed >= 2 and Decimal(s.fees) > 0 and Decimal(s.max_drawdown) > 0
        assert s.failed is None


def test_a_symbol_the_exchange_does_not_list_is_a_clear_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path, HAND_TRADES, symbol="NOSUCHUSDT")
    result = CliRunner().invoke(main, ["backtest", str(path)])
    assert result.exit_code == 2 and "NOSUCHUSDT: not in the paper exchange's symbol table" in result.output


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_plot_is_a_png_of_the_expected_size(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is the optional extra: pip install -e '.[plot]'")
    from naived.backtest import plot as backtest_plot

    out = tmp_path / "bt.png"
    cli(str(write_csv(tmp_path, HAND_TRADES)), "--config", str(write_config(tmp_path)), "--plot", str(out))
    assert png_size(out) == backtest_plot.size_px(1)


def test_without_matplotlib_plot_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    result = CliRunner().invoke(main, ["backtest", str(write_csv(tmp_path, HAND_TRADES)), "--plot", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["naived backtest: --plot needs matplotlib: pip install -e '.[plot]'"]


def test_through_the_tree_the_report_is_the_same(tmp_path: Path) -> None:
    """streamerd's replay, naived and its paper exchange as processes, the same report. The
    trades are a second apart on the tape and replayed 2× faster: 500 ms each, time for a trader
    to learn of a fill, and for the next cycle's trader to be forked and subscribed, before the
    next trade (docs/architecture.md: fill timing, start of trading)."""
    (tmp_path / "in").mkdir()
    trades = [(p, t * 1000) for p, t in HAND_TRADES]
    args = [str(write_csv(tmp_path / "in", trades)), "--config", str(write_config(tmp_path))]
    in_process = report_of(*args)
    keep = tmp_path / "tree"
    through = report_of(*args, "--through-tree", "--speed", "2", "--keep", str(keep))
    assert through.mode == "through-tree" and in_process.mode == "backtest"
    assert through.symbols == in_process.symbols and through.totals == in_process.totals
    assert through.symbols[0].cycles_completed == 1
    assert "naived stopped" in (keep / "naived.log").read_text()  # stopped in order, nothing left behind

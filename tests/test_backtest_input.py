"""The backtest's input boundary (naived/backtest/columns.py): duplicates dropped and counted,
gaps reported, out-of-order files refused with their line, `--symbol` for a nameless CSV,
malformed rows and cut gzip files read as the replay reads them, `--jobs` printing what a serial
sweep prints."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import msgspec
from click.testing import CliRunner, Result
from test_backtest import CYCLES, HAND_CONFIG, T0, WARM, write_config

from naived.backtest import columns, engine
from naived.backtest.report import Report
from naived.cli import main
from naived.core.config import parse_config

PRICES = WARM + CYCLES  # the hand-computed tape: two cycles


def rows(first_id: int, count: int, t0: int = T0, step: int = 1000) -> list[str]:
    return [f"{first_id + i},{PRICES[i % len(PRICES)]},10.0,0,{t0 + i * step},true,true\n" for i in range(count)]


def csv(path: Path, lines: list[str]) -> str:
    path.write_text("".join(lines))
    return str(path)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["backtest", *args], catch_exceptions=False)


def report(*args: str) -> Report:
    result = run("--json", *args)
    assert result.exit_code == 0, result.output
    return msgspec.json.decode(result.stdout, type=Report)


def same_but_inputs(a: Report, b: Report, summary: bool = True) -> bool:
    """The same report but for the files' names (and, summary=False, what the input check found)."""
    def trimmed(r: Report) -> Report:
        return msgspec.structs.replace(r, inputs=[], input=r.input if summary else None)

    return trimmed(a) == trimmed(b)


def test_the_same_file_twice_counts_its_trades_once(tmp_path: Path) -> None:
    config = str(write_config(tmp_path))
    once = csv(tmp_path / "XRPUSDT-trades-2024-01-01.csv", rows(1, len(PRICES)))
    single = report(once, "--config", config)
    double = run("--json", once, once, "--config", config)
    twice = msgspec.json.decode(double.stdout, type=Report)
    assert same_but_inputs(twice, single, summary=False)
    assert twice.input is not None and twice.input.duplicates == len(PRICES) and twice.input.trades == len(PRICES)
    assert f"input: {len(PRICES)} duplicate trades dropped" in double.stderr


def test_overlapping_files_keep_each_trade_once(tmp_path: Path) -> None:
    a = csv(tmp_path / "XRPUSDT-trades-2024-01-01.csv", rows(1, 100))
    b = csv(tmp_path / "XRPUSDT-trades-2024-01-01b.csv", rows(50, 101, T0 + 49 * 1000))
    checked = columns.read([a, b])
    assert (len(checked), checked.summary.duplicates, checked.summary.gaps) == (150, 51, 0)
    assert checked.trade_id.tolist() == list(range(1, 151))
    other = csv(tmp_path / "BTCUSDT-trades-2024-01-01.csv", rows(1, 100))  # the same ids, another symbol
    assert (len(columns.read([a, other])), columns.read([a, other]).summary.duplicates) == (200, 0)


def test_a_file_that_goes_back_in_time_is_refused_with_its_line(tmp_path: Path) -> None:
    lines = rows(1, 10)
    lines[6] = lines[6].replace(str(T0 + 6000), str(T0 + 1000))  # line 7 is earlier than line 6
    for header in ("", "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match\n"):
        path = csv(tmp_path / "XRPUSDT-trades-2024-01-01.csv", [header, *lines])
        result = run(path)
        line = 7 + bool(header)
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and f"{path}: line {line} (trade id 7)" in result.stderr, result.stderr
    # a malformed row too: the line reader takes the file, and the error still names the line (of
    # trade id 3's second row, the one that goes back)
    lines = rows(1, 10)
    path = csv(tmp_path / "XRPUSDT-trades-2024-01-01.csv", [lines[0], "x,bad\n", *lines[1:6], lines[2], *lines[6:]])
    result = run(path)
    assert result.exit_code == 2 and result.stdout == "" and f"{path}: line 8 (trade id 3)" in result.stderr, result.stderr


def test_symbol_names_a_csv_whose_name_does_not(tmp_path: Path) -> None:
    config = str(write_config(tmp_path))
    named = csv(tmp_path / "XRPUSDT-trades-2024-01-01.csv", rows(1, len(PRICES)))
    nameless = csv(tmp_path / "trades.csv", rows(1, len(PRICES)))
    assert same_but_inputs(report(nameless, "--symbol", "xrpusdt", "--config", config), report(named, "--config", config))
    for args in ([nameless], [nameless, "--symbol", "XRPUSDT", "--symbol", "BTCUSDT"]):
        result = run(*args)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
        assert f"{nameless}: cannot tell the symbol" in result.stderr and "one --symbol SYMBOL" in result.stderr
    # --through-tree replays the files through streamerd, which reads a CSV's symbol from its name only
    result = run("--through-tree", "--symbol", "XRPUSDT", nameless)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "rename it" in result.stderr, result.stderr


def test_gaps_in_trade_ids_are_reported_and_a_long_one_starts_a_period(tmp_path: Path) -> None:
    first = csv(tmp_path / "XRPUSDT-trades-2024-01-01.csv", rows(1, 100))
    for pause, breaks in ((60_000, 0), (columns.BREAK_MS + 1000, 1)):
        start = T0 + 99 * 1000 + pause
        second = csv(tmp_path / "XRPUSDT-trades-2024-01-02.csv", rows(201, 100, start))
        outcome = engine.run(parse_config(HAND_CONFIG), [first, second])
        summary = outcome.input
        assert (summary.gaps, summary.missing_trades) == (1, 100)
        gap = summary.largest_gaps[0]
        assert (gap.symbol, gap.after_id, gap.before_id, gap.from_ms, gap.to_ms) == ("XRPUSDT", 100, 201, T0 + 99_000, start)
        assert outcome.breaks == [start] * breaks
    one_missing = csv(tmp_path / "XRPUSDT-trades-2024-01-02.csv", rows(102, 10, T0 + 100_000))
    summary = columns.read([first, one_missing]).summary
    assert (summary.gaps, summary.missing_trades, summary.largest_gaps[0].after_id) == (1, 1, 100)


def test_a_malformed_row_is_skipped_and_counted(tmp_path: Path) -> None:
    config = str(write_config(tmp_path))
    lines = rows(1, len(PRICES))
    clean = csv(tmp_path / "XRPUSDT-trades-2024-01-01.csv", lines)
    broken = csv(tmp_path / "XRPUSDT-trades-2024-01-02.csv", [*lines[:5], "5,not-a-price,1,0,1,true,true\n", *lines[5:]])
    bad, good = report(broken, "--config", config), report(clean, "--config", config)
    assert same_but_inputs(bad, good, summary=False) and bad.input is not None and bad.input.malformed == 1
    assert bad.input.trades == len(PRICES) and bad.input.duplicates == 0


def test_a_gzip_cut_short_is_read_up_to_the_cut(tmp_path: Path) -> None:
    path = tmp_path / "XRPUSDT-trades-2024-01-01.csv.gz"
    path.write_bytes(gzip.compress("".join(rows(1, 5000)).encode()))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = run("--json", str(path))
    assert result.exit_code == 0, result.output
    read = json.loads(result.stdout)["input"]
    assert read["truncated"] == 1 and 0 < read["trades"] < 5000


def test_a_gap_streamerd_marked_in_its_tape_is_counted(tmp_path: Path) -> None:
    def trade(i: int) -> str:
        data = {"e": "trade", "E": T0 + i, "s": "XRPUSDT", "t": i, "p": "1.00000000", "q": "10.00000000",
                "T": T0 + i, "m": True, "M": True}
        return f"{(T0 + i) * 10**6} " + json.dumps({"stream": "xrpusdt@trade", "data": data}) + "\n"

    gap = {"stream": "xrpusdt@gap", "data": {"e": "gap", "E": T0 + 20, "s": "XRPUSDT", "from": 10, "to": 19}}
    marked = f"{(T0 + 19) * 10**6 + 1} {json.dumps(gap)}\n"
    lines = [trade(i) for i in range(1, 10)] + [marked] + [trade(i) for i in range(20, 30)]
    path = tmp_path / "xrpusdt_20240101.gz"
    path.write_bytes(gzip.compress("".join(lines).encode()))
    read = columns.read([str(path)]).summary
    assert (read.recorded_gaps, read.gaps, read.missing_trades, read.malformed) == (1, 1, 10, 0)
    result = run(str(path))
    assert result.exit_code == 0 and "1 gaps (10 trade ids missing, 1 marked in the tapes)" in result.stderr, result.stderr


def test_a_parallel_sweep_prints_what_a_serial_one_prints(tmp_path: Path) -> None:
    config = str(write_config(tmp_path))
    path = csv(tmp_path / "XRPUSDT-trades-2024-01-01.csv", rows(1, 200))
    sweep = ["--set", "profit_interval=0.005,0.01,0.02", "--config", config, path]
    for extra in ([], ["--json"]):
        serial, parallel = run(*extra, "--jobs", "1", *sweep), run(*extra, "--jobs", "2", *sweep)
        assert serial.exit_code == parallel.exit_code == 0
        assert parallel.stdout == serial.stdout and "in 2 processes" in parallel.stderr

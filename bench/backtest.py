"""Backtest speed against a bare parse of the same input, and a sweep serial vs `--jobs`.

Generates (seeded) data.binance.vision trade CSVs of a mean-reverting BTCUSDT-like random walk on
the 0.01 tick, then times, in this process, on each input:
- a bare parse: the CSV's lines split and their price, quantity and time converted (gzip
  included), nothing else: the floor any backtest in Python pays to read the file;
- the backtest (`engine.run`, default settings): the fast path, and `every_trade=True`, the
  reference path that hands every trade to the strategy.
Then a 20-setting sweep (`--set profit_interval=...`) over the first input, serial and with
`--jobs` = the cores this process may use (wall time: the processes run at once). The recorded
sample tapes in `samples/` are timed too (JSON lines with depth updates: read by the line reader).

    .venv/bin/python bench/backtest.py [--trades 1000000 10000000] [--seed 1] [--keep DIR] [--json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from naived.backtest import engine
from naived.core.config import Config

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def synthetic_csv(path: Path, trades: int, seed: int) -> None:
    """`id,price,qty,quoteQty,time(µs),isBuyerMaker,isBestMatch` rows, as data.binance.vision
    publishes them from 2025 on (eight decimals): a BTCUSDT-like walk on the 0.01 tick, pulled
    back towards its start, where 60% of trades repeat the previous price; about 30 trades a
    second, so 1M trades ≈ 9 hours and 40M ≈ a month."""
    rng = random.Random(seed)
    cents = centre = 6_183_763  # 61837.63
    t = 1_735_689_600_000_000  # 2025-01-01 in µs
    with gzip.open(path, "wt", compresslevel=1) as out:
        for i in range(trades):
            if rng.random() >= 0.6:
                cents += int(rng.gauss((centre - cents) / 20_000, 150)) or 1
            t += rng.randint(0, 60_000)
            qty = rng.choice(("0.00010000", "0.00100000", "0.01000000", "0.05000000"))
            price = f"{cents // 100}.{cents % 100:02d}000000"
            out.write(f"{3_000_000_000 + i},{price},{qty},0,{t},{'true' if rng.random() < 0.5 else 'false'},true\n")


def bare_parse(path: Path) -> tuple[int, float]:
    started = time.process_time()
    n = 0
    with gzip.open(path, "rt") as f:
        for line in f:
            fields = line.split(",")
            float(fields[1]), float(fields[2]), int(fields[4])
            n += 1
    return n, time.process_time() - started


def cpu(paths: list[str], every_trade: bool = False) -> tuple[int, float]:
    started = time.process_time()
    outcome = engine.run(Config(), paths, every_trade=every_trade)
    return outcome.trades, time.process_time() - started


def figures(path: Path, slow: bool) -> dict[str, float]:
    n, bare = bare_parse(path)
    _, fast = cpu([str(path)])
    result = {"trades": n, "bare_parse_s": bare, "backtest_s": fast, "ratio": fast / bare, "trades_per_s": n / fast}
    if slow:
        _, every = cpu([str(path)], every_trade=True)
        result.update(every_trade_s=every, every_trade_ratio=every / bare)
    return result


def sweep(path: Path, jobs: int) -> dict[str, float]:
    values = ",".join(f"{0.0005 + 0.0005 * i:.4f}" for i in range(20))
    result: dict[str, float] = {"settings": 20, "jobs": jobs}
    for name, j in (("serial_s", 1), ("parallel_s", jobs)):
        started = time.perf_counter()
        engine.run(Config(), [str(path)], [{"profit_interval": v} for v in values.split(",")], jobs=j)
        result[name] = time.perf_counter() - started
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", metavar="DIR", help="write the synthetic CSVs here and keep them")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    jobs = len(os.sched_getaffinity(0))
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(args.keep or tmp)
        directory.mkdir(parents=True, exist_ok=True)
        csvs = []
        for trades in args.trades:
            csv = directory / f"BTCUSDT-trades-synthetic-{trades}.csv.gz"
            if not csv.exists():
                synthetic_csv(csv, trades, args.seed)
            csvs.append(csv)
            # the reference path only on the smaller inputs: 10M trades take minutes there
            out[f"synthetic {trades:,}"] = figures(csv, slow=trades <= 1_000_000)
        started = time.process_time()
        tapes = [str(p) for p in sorted(SAMPLES.glob("*usdt_*.gz"))]
        trades, seconds = cpu(tapes)
        _, every = cpu(tapes, every_trade=True)
        out["sample tapes"] = {"trades": trades, "backtest_s": seconds, "every_trade_s": every}
        del started
        out["sweep of 20 settings"] = sweep(csvs[0], jobs)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for name, f in out.items():
        if "ratio" in f:
            line = (f"{name}: bare parse {f['bare_parse_s']:.2f}s; backtest {f['backtest_s']:.2f}s CPU "
                    f"({f['trades_per_s']:,.0f} trades/s), {f['ratio']:.2f}x the bare parse")
            if "every_trade_s" in f:
                line += f"; every trade {f['every_trade_s']:.2f}s ({f['every_trade_ratio']:.1f}x)"
        elif "serial_s" in f:
            line = (f"{name} over the first input: serial {f['serial_s']:.2f}s, --jobs {f['jobs']:.0f} "
                    f"{f['parallel_s']:.2f}s (wall)")
        else:
            line = (f"{name}: {f['trades']:,.0f} trades; backtest {f['backtest_s']:.2f}s CPU, "
                    f"every trade {f['every_trade_s']:.2f}s")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Backtest speed: trades per second through `naived backtest`'s engine, and where it goes.

Generates (seeded) a data.binance.vision trade CSV of a mean-reverting BTCUSDT-like random
walk on the 0.01 tick, then times: reading the input alone, and the whole backtest (read +
paper book + strategy + accounting) with the default trading settings. It also times the
recorded BTCUSDT tapes: the larger ones beside the repository (`../shared/data/binance-spot-tapes`,
~20k trades) when they are there, else the sample in `samples/` (2,927 trades: a rough figure).
Their depth lines make reading them slower per trade: most of their bytes are not trades.

    .venv/bin/python bench/backtest.py [--trades 1000000] [--seed 1] [--keep DIR] [--json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import recorded

from naived.backtest import engine
from naived.backtest.trades import read_trades
from naived.core.config import Config


def synthetic_csv(path: Path, trades: int, seed: int) -> None:
    """`id,price,qty,quoteQty,time(µs),isBuyerMaker,isBestMatch` rows, as data.binance.vision
    publishes them from 2025 on: a BTCUSDT-like walk on the 0.01 tick, pulled back towards its
    start, where 60% of trades repeat the previous price (as in the recorded tapes: a taker
    order takes several makers at one level); about 30 trades a second, so 1M trades ≈ 9 hours."""
    rng = random.Random(seed)
    cents = centre = 6_183_763  # 61837.63
    t = 1_735_689_600_000_000  # 2025-01-01 in µs
    with gzip.open(path, "wt", compresslevel=1) as out:
        for i in range(trades):
            if rng.random() >= 0.6:
                cents += int(rng.gauss((centre - cents) / 20_000, 150)) or 1
            t += rng.randint(0, 60_000)
            qty = rng.choice(("0.00010000", "0.00100000", "0.01000000", "0.05000000"))
            price = f"{cents // 100}.{cents % 100:02d}"
            out.write(f"{3_000_000_000 + i},{price},{qty},0,{t},{'true' if rng.random() < 0.5 else 'false'},true\n")


def time_it(paths: list[str]) -> dict[str, float]:
    """CPU seconds of this process (the machine is shared: wall time would count the others)."""
    started = time.process_time()
    events, _ = read_trades(paths)
    n = sum(1 for _ in events)
    read = time.process_time() - started
    started = time.process_time()
    outcome = engine.run(Config(), paths)
    seconds = time.process_time() - started
    return {"trades": n, "read_per_s": n / read, "backtest_per_s": outcome.trades / seconds,
            "engine_per_s": outcome.trades / max(seconds - read, 1e-9), "backtest_seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", metavar="DIR", help="write the synthetic CSV here and keep it")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(args.keep or tmp)
        directory.mkdir(parents=True, exist_ok=True)
        csv = directory / f"BTCUSDT-trades-synthetic-{args.trades}.csv.gz"
        if not csv.exists():
            synthetic_csv(csv, args.trades, args.seed)
        figures = {"synthetic_csv": time_it([str(csv)])}
        figures["btcusdt_tapes"] = time_it([str(p) for p in sorted(recorded.tapes().glob("btcusdt_*.gz"))])
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for name, f in figures.items():
            print(f"{name}: {f['trades']:,} trades; read alone {f['read_per_s']:,.0f}/s; "
                  f"backtest {f['backtest_per_s']:,.0f}/s ({f['backtest_seconds']:.2f}s CPU); "
                  f"without reading {f['engine_per_s']:,.0f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

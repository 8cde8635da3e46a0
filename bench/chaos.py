"""Chaos, long: kill -9 random processes of a trading tree N times, then check every order.

The same run as `tests/test_chaos.py` (see `tests/chaos.py`), as long as you like:
streamerd replays a real BTCUSDT tape at a speed that makes it last the run: the larger
recordings beside the repository (`../shared/data/binance-spot-tapes`, ~11 minutes) when they
are there, else the sample (`samples/`, 78 s); the simulated market when the tape would end
before the run (a 1000-kill run lasts ~9 minutes). naived trades it with 4 traders and a
negative profit interval; the paper exchange injects faults (seeded); a killer sends SIGKILL to
random traders, leaders, symbol supervisors and the paper exchange. At the end the market stops,
the tree settles, and the paper exchange's orders and balances are checked against the live
states and the finished cycles.

Prints kills survived, cycles completed, orders lost and duplicated (both must be 0), and the
time from a leader (or symbol supervisor) kill until all its traders are trading again (p50/p99,
from the leader's `ready_at` hello timestamps). Exits 1 when an invariant broke.

    .venv/bin/python bench/chaos.py [--kills 1000] [--seed 1] [--pause 0.05 0.5] [--no-faults] [--partial-fills] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import chaos
import recorded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1, help="of the killer and of the paper exchange's faults")
    parser.add_argument("--pause", type=float, nargs=2, default=(0.05, 0.5), metavar=("MIN", "MAX"),
                        help="random pause between kills, seconds")
    parser.add_argument("--market-seconds", type=float, help="how long the tape should last (default: the kills' expected time)")
    parser.add_argument("--no-faults", action="store_true", help="no fault injection at the paper exchange")
    parser.add_argument("--partial-fills", action="store_true", help="the paper exchange fills at most each trade's quantity")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs, SQLite files)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="naive-chaos-"))
    tapes = sorted(recorded.tapes().glob("btcusdt_*.gz"))
    market_seconds = args.market_seconds or chaos.default_market_seconds(args.kills, tuple(args.pause))
    speed = chaos.replay_speed(tapes, market_seconds)
    names = ", ".join(p.name for p in tapes)
    market = f"replay of {names} at {speed:.2f}x" if speed else f"SIMULATED market ({names} would end before the run)"
    if not args.json:
        print(f"chaos: {args.kills} kills, seed {args.seed}, {market}, in {directory}", flush=True)
    try:
        report = chaos.run(
            directory, args.kills, seed=args.seed, pause=tuple(args.pause), market_seconds=market_seconds,
            faults=not args.no_faults, partial_fills=args.partial_fills,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
            tapes=tapes,
        )
    except BaseException:
        print(f"chaos: the run failed; logs and state kept in {directory}", file=sys.stderr)
        raise
    if report.problems or args.keep:
        print(f"chaos: logs and state kept in {directory}", file=sys.stderr)
    else:
        shutil.rmtree(directory, ignore_errors=True)
    if args.json:
        print(json.dumps({
            "kills": report.killed, "by_kind": dict(report.kills), "kill_seconds": report.kill_seconds,
            "cycles": report.cycles, "orders": report.orders, "lost": len(report.lost) + len(report.orphaned),
            "duplicated": len(report.duplicated), "recovery_ms": report.recovery_ms, "problems": report.problems,
        }))
    else:
        print(report.summary())
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())

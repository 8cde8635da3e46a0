"""kill -9 → replacement ready: how fast the tree brings a trader (or a leader's traders) back.

Starts a real tree (simulated market, paper exchange) in a temp dir, then sends
`kill -9` to trader 0 of XRPUSDT again and again. "Ready" is the moment the
leader receives the new trader's hello (it is subscribed to trades and holds its
restored state); the leader timestamps it, so how often this script polls does
not change the figure. Also kills the leader and times until all its traders
are ready again.

    .venv/bin/python bench/recovery.py [--kills 200] [--leader-kills 20] [--quick]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import Tree, wait_for  # noqa: E402

CONFIG = """
[trading.defaults]
chunks = 2
buy_down_interval = "0.5"   # the buys rest: every restart resumes an open order

[naived.supervision]
max_restarts = 100000       # this benchmark restarts on purpose
period_seconds = 1.0
"""


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": statistics.median(ordered), "p90": pick(0.9), "p99": pick(0.99), "max": ordered[-1]}


def ready(tree: Tree, symbol: str, trader_id: int, old_pid: int) -> dict | None:
    t = tree.traders(symbol).get(trader_id)
    return t if t and t["pid"] != old_pid and t["ready_at"] else None


def trader_kills(tree: Tree, kills: int) -> list[float]:
    samples = []
    for _ in range(kills):
        victim = wait_for("trader 0", lambda: (t := tree.traders("XRPUSDT").get(0)) and t["ready_at"] and t)
        killed_at = time.time()
        os.kill(victim["pid"], signal.SIGKILL)
        back = wait_for("the replacement", lambda: ready(tree, "XRPUSDT", 0, victim["pid"]), interval=0.002)
        samples.append((back["ready_at"] - killed_at) * 1000)
    return samples


def leader_kills(tree: Tree, kills: int) -> list[float]:
    samples = []
    for _ in range(kills):
        traders = wait_for("2 ready traders", lambda: len(t := {i: x for i, x in tree.traders("XRPUSDT").items() if x["ready_at"]}) == 2 and t)
        leader = tree.symbol("XRPUSDT")["leader"]["pid"]
        killed_at = time.time()
        os.kill(leader, signal.SIGKILL)

        def all_back() -> list[float] | None:
            new = [ready(tree, "XRPUSDT", i, t["pid"]) for i, t in traders.items()]
            return [t["ready_at"] for t in new] if all(new) else None

        samples.append((max(wait_for("all traders back", all_back, interval=0.002)) - killed_at) * 1000)
    return samples


def report(name: str, samples: list[float]) -> None:
    p = percentiles(samples)
    print(f"{name:<34} n={len(samples):<4} p50 {p['p50']:6.2f} ms  p90 {p['p90']:6.2f} ms  p99 {p['p99']:6.2f} ms  max {p['max']:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--leader-kills", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="a few kills, to check the script works")
    args = parser.parse_args()
    if args.quick:
        args.kills, args.leader_kills = 5, 2
    with tempfile.TemporaryDirectory(prefix="naive-bench-") as directory:
        tree = Tree(Path(directory), CONFIG)
        try:
            tree.start_streamer()
            tree.start_naived()
            tree.ctl("start-trading", "XRPUSDT")
            report("kill -9 trader -> trader ready", trader_kills(tree, args.kills))
            report("kill -9 leader -> all traders ready", leader_kills(tree, args.leader_kills))
        finally:
            tree.stop()


if __name__ == "__main__":
    main()

"""Start-trading latency: `naivectl start-trading SYMBOL` → every trader of the symbol ready.

A real tree in a temp dir (simulated market, paper exchange). For each sample a
symbol that has never traded here is started, and the time runs to the last of
its traders' hellos (`ready_at` in status, stamped by the leader). Two clocks:
- from the `StartTrading` request sent on the control socket (what naivectl sends:
  the tree's own latency);
- from launching the `naivectl start-trading` command (adds a Python start-up).
The symbol is stopped again before the next sample, so one symbol trades at a time.

    .venv/bin/python bench/start_latency.py [--samples 30] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from figures import percentiles
from harness import BIN, Tree, wait_for

from naived.core.config import load_config
from naived.core.messages import Error, StartTrading, StatusRequest, StopTrading, TreeStatus, control_reply_decoder
from naived.core.symbols import table
from naived.tree.ipc import request

TARGET_MS = 20.0  # issue 13 (was 50)
CONFIG = """
[trading.defaults]
chunks = 2
buy_down_interval = "0.5"
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=30, help="per clock")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print one BENCH-JSON line for bench/run_all")
    args = parser.parse_args()
    if args.quick:
        args.samples = 5
    names = iter(sorted(s for s, f in table().items() if f.quote == "USDT"))  # the default budget is in USDT
    ctx = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="naive-bench-") as directory:
        tree = Tree(Path(directory), CONFIG)
        try:
            tree.start_streamer()
            tree.start_naived()
            endpoint = load_config(str(tree.config_path)).control_endpoint
            # as on a running naived: every symbol's filters are in the root (one exchangeInfo call)
            wait_for("the root's exchange filters", lambda: "exchange filters of" in tree.log("naived"))

            steps: dict[str, list[float]] = {"symbol supervisor forked": [], "leader forked (it then opens its store)": [],
                                             "last trader forked (after the store)": [], "last trader ready": []}

            def all_ready(symbol: str) -> tuple | None:
                reply = request(ctx, endpoint, StatusRequest(symbol), control_reply_decoder, 5000)
                sym = reply.symbols[0] if isinstance(reply, TreeStatus) and reply.symbols else None
                traders = [t for t in (sym.leader.traders if sym and sym.leader else []) if t.pid and t.ready_at]
                return (sym, traders) if len(traders) == 2 else None

            def sample(via_naivectl: bool) -> float:
                symbol = next(names)
                start = time.time()
                if via_naivectl:
                    done = subprocess.run([str(BIN / "naivectl"), "--config", str(tree.config_path), "start-trading", symbol],
                                          capture_output=True, text=True)
                    assert done.returncode == 0, done.stderr
                else:
                    reply = request(ctx, endpoint, StartTrading(symbol), control_reply_decoder, 5000)
                    assert reply is not None and not isinstance(reply, Error), reply
                sym, traders = wait_for(f"{symbol}'s traders", lambda: all_ready(symbol), interval=0.002)
                tree.status()  # records the PIDs for the clean-up
                request(ctx, endpoint, StopTrading(symbol), control_reply_decoder, 30_000)
                if not via_naivectl:  # where the time goes, from the tree's own timestamps (fork times, hellos)
                    for name, at in zip(steps, (sym.supervisor.started_at, sym.leader.started_at,
                                                max(t.started_at for t in traders), max(t.ready_at for t in traders)),
                                        strict=True):
                        steps[name].append((at - start) * 1000)
                return (max(t.ready_at for t in traders) - start) * 1000

            sample(False)  # warm-up: the paper exchange's first connections, page cache
            direct = percentiles([sample(False) for _ in range(args.samples)])
            cli = percentiles([sample(True) for _ in range(args.samples)])
            print(f"start-trading -> all 2 traders ready, one new symbol per sample (n={args.samples} each)")
            print(f"{'':<40}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}  (ms)")
            for name, p in (("from the StartTrading request", direct), ("from launching naivectl", cli)):
                print(f"{name:<40}{p['p50']:9.2f}{p['p90']:9.2f}{p['p99']:9.2f}{p['max']:9.2f}")
            print("  steps, from the request (p50 of each):")
            for name, values in steps.items():
                if values:
                    p = percentiles(values)
                    print(f"    {name:<44}{p['p50']:9.2f}{p['p90']:9.2f}{p['p99']:9.2f}{p['max']:9.2f}")
            verdict = "met" if direct["p50"] <= TARGET_MS else f"MISSED by {direct['p50'] - TARGET_MS:.1f} ms"
            print(f"target <= {TARGET_MS:g} ms (request -> ready, p50): {verdict}")
            if args.json:
                rows = [{"figure": "start-trading -> traders ready", "unit": "ms", "p50": direct["p50"], "p99": direct["p99"],
                         "peer": None, "ratio": None, "target": "<=20", "n": direct["n"]},
                        {"figure": "  same, incl. naivectl start-up", "unit": "ms", "p50": cli["p50"], "p99": cli["p99"],
                         "peer": None, "ratio": None, "target": "", "n": cli["n"]}]
                print("BENCH-JSON: " + json.dumps(rows))
        finally:
            tree.stop()
            ctx.term()


if __name__ == "__main__":
    main()

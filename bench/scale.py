"""Scale: every symbol the paper exchange lists, 2 traders each, on one machine.

A real tree in a temp dir (simulated market at a low rate per symbol, paper
exchange). The script sends `StartTrading` for every symbol over the control
socket (the request `naivectl start-trading` sends; one naivectl process per
symbol would mostly time Python start-ups), then measures:
- time from the first request to the last trader's hello (`ready_at`);
- USS/PSS (psutil `memory_full_info`) of the whole tree and per trader;
- CPU of the whole tree (streamerd included) while idle, over 10 s;
- file descriptors, total and per trader.

The traders' buys rest far below the market (`buy_down_interval = 0.5`), so after
their first trade they idle like a trader waiting for a fill.
`[naived.supervision]`: the defaults (5 restarts in 10 s per child) are kept; a
stop timeout of 10 s gives ~1100 processes time to stop in order.

    .venv/bin/python bench/scale.py [--symbols 400] [--idle-seconds 10] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import Tree, tree_pids, wait_for  # noqa: E402

from naived.config import load_config  # noqa: E402
from naived.ipc import request  # noqa: E402
from naived.symbols import table  # noqa: E402
from naived.messages import Error, StartTrading, StatusRequest, TreeStatus, control_reply_decoder  # noqa: E402

RATE = 0.2  # simulated trades per second per symbol: a quiet market, for the idle figure
TARGET_USS_MB, TARGET_IDLE_CPU = 4.0, 5.0

CONFIG = """
[trading.defaults]
chunks = 2
buy_down_interval = "0.5"    # buys rest: traders idle after their first trade

[paper.balances]
USDT = "100000000"           # every symbol's traders can afford their buys

[naived.supervision]
max_restarts = 5
period_seconds = 10.0
stop_timeout_seconds = 10.0
"""


def symbols(limit: int) -> list[str]:
    return sorted(table())[:limit]  # the paper exchange's table: USDT pairs


def tree_status(ctx: zmq.Context, endpoint: str) -> TreeStatus:
    reply = request(ctx, endpoint, StatusRequest(), control_reply_decoder, 60_000)
    assert isinstance(reply, TreeStatus), reply
    return reply


def ready_times(status: TreeStatus, traders: int) -> list[float] | None:
    times = []
    for sym in status.symbols:
        ready = [t.ready_at for t in (sym.leader.traders if sym.leader else []) if t.pid and t.ready_at]
        if len(ready) < traders:
            return None
        times += ready
    return times


def mb(n: float) -> float:
    return n / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=400, help="at most this many (the table has ~359 USDT symbols)")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="20 symbols, 3 s idle")
    parser.add_argument("--json", action="store_true", help="also print one BENCH-JSON line for bench/run_all")
    args = parser.parse_args()
    if args.quick:
        args.symbols, args.idle_seconds = 20, 3.0
    names = symbols(args.symbols)
    ctx = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="naive-bench-") as directory:
        tree = Tree(Path(directory), CONFIG)
        try:
            streamer = tree._spawn("streamerd", "start", "--rate", str(RATE))
            tree.start_naived()
            endpoint = load_config(str(tree.config_path)).control_endpoint
            start = time.time()
            for name in names:
                reply = request(ctx, endpoint, StartTrading(name), control_reply_decoder, 30_000)
                assert not isinstance(reply, Error) and reply is not None, (name, reply)
            sent = time.time()
            times = wait_for("every trader ready", lambda: ready_times(tree_status(ctx, endpoint), 2), timeout=600, interval=0.2)
            all_ready = max(times) - start
            # let every trader see its first trade and place its buy, then settle
            print(f"{len(names)} symbols x 2 traders: all {len(times)} ready {all_ready:.2f} s after the first request"
                  f" (requests sent in {sent - start:.2f} s)", flush=True)
            settle = 2.0 if args.quick else 3 / RATE  # most traders have seen a trade and placed their buy
            time.sleep(settle)
            status = tree_status(ctx, endpoint)
            tree.status()  # records every PID for the harness's clean-up
            pids = tree_pids(msgspec_to_dict(status))
            trader_pids = {t.pid for s in status.symbols if s.leader for t in s.leader.traders if t.pid}
            procs = [psutil.Process(p) for p in pids] + [psutil.Process(streamer.pid)]
            # idle CPU of the whole tree
            before = {p.pid: sum(p.cpu_times()[:2]) for p in procs}
            t0 = time.monotonic()
            time.sleep(args.idle_seconds)
            elapsed = time.monotonic() - t0
            used = sum(sum(p.cpu_times()[:2]) - before[p.pid] for p in procs)
            cpu_pct = 100 * used / elapsed
            mem = {p.pid: p.memory_full_info() for p in procs}
            fds = {p.pid: p.num_fds() for p in procs}
            uss_t = sorted(mb(mem[p].uss) for p in trader_pids)
            pss_t = sorted(mb(mem[p].pss) for p in trader_pids)
            fds_t = sorted(fds[p] for p in trader_pids)
            total_uss, total_pss = mb(sum(m.uss for m in mem.values())), mb(sum(m.pss for m in mem.values()))
            orders = len(tree.paper_orders())
            vm = psutil.virtual_memory()
            print(f"processes: {len(procs)} ({len(trader_pids)} traders), orders resting: {orders}")
            print(f"memory, whole tree: USS {total_uss:.0f} MiB, PSS {total_pss:.0f} MiB"
                  f" (machine: {mb(vm.total) / 1024:.1f} GiB, {mb(vm.available) / 1024:.1f} GiB available)")
            print(f"memory per trader: USS p50 {statistics.median(uss_t):.2f} MiB, max {uss_t[-1]:.2f} MiB;"
                  f" PSS p50 {statistics.median(pss_t):.2f} MiB, max {pss_t[-1]:.2f} MiB")
            print(f"idle CPU, whole tree over {elapsed:.0f} s: {cpu_pct:.2f} % of one core (market: {RATE} trades/s per symbol)")
            print(f"file descriptors: {sum(fds.values())} in all; per trader p50 {statistics.median(fds_t):.0f}, max {fds_t[-1]}")
            met = statistics.median(uss_t) <= TARGET_USS_MB and cpu_pct < TARGET_IDLE_CPU
            print(f"targets USS <= {TARGET_USS_MB:g} MB per trader, idle CPU < {TARGET_IDLE_CPU:g} %: {'met' if met else 'MISSED'}")
            if args.json:
                n = len(names)
                rows = [
                    {"figure": f"scale: {n} symbols x 2 traders all ready", "unit": "s", "p50": all_ready, "p99": None,
                     "peer": None, "ratio": None, "target": "fits the machine", "n": len(times)},
                    {"figure": "scale: USS per trader", "unit": "MiB", "p50": statistics.median(uss_t), "p99": uss_t[-1],
                     "peer": None, "ratio": None, "target": "<=4 MB", "n": len(uss_t)},
                    {"figure": "scale: PSS per trader", "unit": "MiB", "p50": statistics.median(pss_t), "p99": pss_t[-1],
                     "peer": None, "ratio": None, "target": "", "n": len(pss_t)},
                    {"figure": "scale: whole tree USS / PSS", "unit": "MiB", "p50": total_uss, "p99": total_pss,
                     "peer": None, "ratio": None, "target": "", "n": len(procs), "note": "p50 column = USS, p99 column = PSS"},
                    {"figure": "scale: idle CPU, whole tree", "unit": "% core", "p50": cpu_pct, "p99": None,
                     "peer": None, "ratio": None, "target": "<5 %", "n": 1},
                    {"figure": "scale: fds total / per trader max", "unit": "fds", "p50": sum(fds.values()), "p99": fds_t[-1],
                     "peer": None, "ratio": None, "target": "", "n": len(procs)},
                ]
                print("BENCH-JSON: " + json.dumps(rows))
        finally:
            tree.stop()
            ctx.term()


def msgspec_to_dict(status: TreeStatus) -> dict:
    import msgspec

    return msgspec.to_builtins(status)


if __name__ == "__main__":
    main()

"""Request weight per minute at 400 traders, as the exchange counted it, against Binance's 6,000.

A real tree in a temp dir: streamerd replays the recorded BTCUSDT/ETHUSDT tapes of 2024-08-09
(`../shared/data/binance-spot-tapes` beside the repository when it is there, 5 minutes; else the
78 s of `samples/`, which a run with `--seconds` over ~70 outlasts) as `--symbols` symbols (each
symbol gets one tape's trades as a data.binance.vision CSV, prices rescaled onto its tick so
that a trader's 50 USDT buys a valid quantity), at `--speed` times real time: every symbol trades as busily as
BTCUSDT did (~16 trades/s at speed 1). naived trades every symbol with 2 traders buying just
below the market and selling just above (the book's chapter-5 settings: cycles complete, and
the price keeps reaching the traders' orders, so they keep asking about them).

Once every trader has said hello (start-up: the leaders' exchangeInfo, the traders' clock
sync), streamerd starts and the replay begins, so every run measures the same market: for
`--seconds` the script reads the paper exchange's own counter (`/paper/usage`, or the
`X-MBX-USED-WEIGHT-1M` header of a ping for code without it) and prints the weight per minute
the exchange saw, and the host's budget figures.

    .venv/bin/python bench/weight.py [--symbols 200] [--seconds 60] [--speed 1] [--quick] [--json]
    .venv/bin/python bench/weight.py --code DIR    # the same run on another checkout (e.g. before the budget)

It starts ~400 processes: run it alone on the machine, and `nice` it on a shared one.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import msgspec
import psutil
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import recorded
from harness import Tree, wait_for
from scale import ready_times, tree_status

from naived.core.config import load_config
from naived.core.messages import Error, StartTrading, control_reply_decoder
from naived.core.symbols import SymbolFilters, table
from naived.exchange import budget
from naived.tree.ipc import request

BINANCE_LIMIT = 6000
PER_TRADER = Decimal(50)  # trading.budgets USDT 100 / chunks 2

CONFIG = """
[trading.defaults]
chunks = 2
buy_down_interval = "0.0001"   # just below the market: the price keeps reaching the buys
profit_interval = "-0.0012"    # the book's chapter 5: sells just above, cycles complete

[paper.balances]
USDT = "100000000"

[naived.supervision]
max_restarts = 5
period_seconds = 10.0
stop_timeout_seconds = 10.0
"""


class _Trade(msgspec.Struct):
    p: str
    T: int
    m: bool


class _Envelope(msgspec.Struct):
    stream: str
    data: msgspec.Raw


def tape_trades(name: str, seconds: float) -> list[tuple[int, Decimal, bool]]:
    """(time ms, price, buyer is maker) of the first `seconds` of a tape's trades."""
    out: list[tuple[int, Decimal, bool]] = []
    with gzip.open(recorded.tapes() / name) as f:
        for line in f:
            if b'@trade"' not in line:
                continue
            env = msgspec.json.decode(line.partition(b" ")[2], type=_Envelope)
            t = msgspec.json.decode(env.data, type=_Trade)
            if out and t.T - out[0][0] > seconds * 1000:
                break
            out.append((t.T, Decimal(t.p), t.m))
    return out


def base_price(f: SymbolFilters) -> Decimal | None:
    """A price on the symbol's tick, ~100,000 ticks (BTC moves ~0.5% over the tape: ~500
    ticks), at which 50 USDT buys at least 10 lots; None if the tick allows no such price."""
    lot = max(f.step_size, f.min_qty)
    price = min(f.tick_size * 100_000, PER_TRADER / (10 * lot))
    price = (price / f.tick_size).to_integral_value(rounding="ROUND_FLOOR") * f.tick_size
    return price if price >= f.tick_size * 1000 and price * lot * 10 >= f.min_notional else None


def write_tapes(directory: Path, count: int, seconds: float) -> list[Path]:
    sources = [tape_trades("btcusdt_20240809.gz", seconds), tape_trades("ethusdt_20240809.gz", seconds)]
    # USDT-quoted only: the budget (trading.budgets USDT, PER_TRADER a trader) is in USDT
    chosen = [(s, p) for s, f in sorted(table().items()) if f.quote == "USDT" and (p := base_price(f)) is not None][:count]
    files = []
    for i, (symbol, base) in enumerate(chosen):
        trades = sources[i % 2]
        first = trades[0][1]
        tick = table()[symbol].tick_size
        path = directory / f"{symbol}-trades-2024-08-09.csv"
        with open(path, "w") as out:
            for n, (ms, price, maker) in enumerate(trades, 1):
                p = (base * price / first / tick).to_integral_value() * tick
                out.write(f"{n},{p},100,{p * 100},{ms},{str(maker).lower()},true\n")
        files.append(path)
    return files


def usage(tree: Tree) -> dict:
    """The exchange's own counts; for code without /paper/usage, the minute's header."""
    r = tree.http.get(f"{tree.paper_url}/paper/usage", timeout=10)
    if r.status_code == 200:
        return r.json()
    ping = tree.http.get(f"{tree.paper_url}/api/v3/ping", timeout=10)
    minute = int(time.time() // 60)
    return {"requests": None, "weight": None, "minutes": {str(minute): int(ping.headers["X-MBX-USED-WEIGHT-1M"])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured, after every trader is ready")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed (1 = as the tape was recorded)")
    parser.add_argument("--code", help="run naived and streamerd from this source tree (PYTHONPATH)")
    parser.add_argument("--json", action="store_true", help="also print one BENCH-JSON line for bench/run_all")
    parser.add_argument("--quick", action="store_true", help="20 symbols, 20 s")
    args = parser.parse_args()
    if args.quick:
        args.symbols, args.seconds = 20, 20.0
    env = {"PYTHONPATH": str(Path(args.code).resolve())} if args.code else None
    ctx = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="naive-weight-") as directory:
        tapes_dir = Path(directory) / "tapes"
        tapes_dir.mkdir()
        files = write_tapes(tapes_dir, args.symbols, 600)
        names = [p.name.split("-")[0] for p in files]
        streamer = f"replay_files = {json.dumps([str(p) for p in files])}\nreplay_speed = {args.speed}"
        tree = Tree(Path(directory), CONFIG, market="replay", streamer=streamer)
        try:
            tree.start_naived(env=env)
            config = load_config(str(tree.config_path))
            start = time.time()
            for name in names:
                reply = request(ctx, config.control_endpoint, StartTrading(name), control_reply_decoder, 30_000)
                assert not isinstance(reply, Error) and reply is not None, (name, reply)
            times = wait_for("every trader ready", lambda: ready_times(tree_status(ctx, config.control_endpoint), 2),
                             timeout=900, interval=0.5)
            ready = max(times) - start
            print(f"{len(names)} symbols x 2 traders: all {len(times)} ready {ready:.1f} s after the first request"
                  f" (exchange weight so far: {sum(usage(tree)['minutes'].values())})", flush=True)
            # The market starts now, from the tape's first trade, whatever the start-up took: every
            # run sees the same market in its measured seconds (the traders' SUB sockets connect
            # when streamerd binds; the replay starts at the first subscription).
            tree._spawn("streamerd", "start", env=env)
            tree.status()  # every PID, for the harness's clean-up
            procs = ([psutil.Process(p.pid) for p in tree.procs]
                     + [c for p in tree.procs for c in psutil.Process(p.pid).children(recursive=True)])
            cpu0 = sum(sum(p.cpu_times()[:2]) for p in procs if p.is_running())
            before, t0 = usage(tree), time.monotonic()
            peak: dict[str, int] = {}
            while time.monotonic() - t0 < args.seconds:
                time.sleep(1.0)
                for minute, w in usage(tree)["minutes"].items():
                    peak[minute] = max(peak.get(minute, 0), w)
            after, elapsed = usage(tree), time.monotonic() - t0
            cpu = sum(sum(p.cpu_times()[:2]) for p in procs if p.is_running()) - cpu0
            held = budget.snapshot(config.budget_path)
            orders = len(tree.paper_orders())
        finally:
            tree.stop()
            ctx.term()
    first, last = min(peak), max(peak)
    print(f"market: {len(names)} symbols replaying BTCUSDT/ETHUSDT tapes at speed {args.speed:g}; measured {elapsed:.0f} s;"
          f" tree CPU {100 * cpu / elapsed:.0f}% of one core (the machine has {os.cpu_count()})")
    if after["weight"] is not None:
        rate = (after["weight"] - before["weight"]) * 60 / elapsed
        reqs = (after["requests"] - before["requests"]) / elapsed
        print(f"weight per minute the exchange counted: {rate:.0f} (Binance allows {BINANCE_LIMIT}); {reqs:.1f} requests/s")
    else:
        rate = None
    for minute in sorted(peak):
        part = " (partial: measurement began or ended in it)" if minute in (first, last) else ""
        print(f"  minute {minute}: weight {peak[minute]}{part}")
    if held is not None:
        print(f"host budget: {config.exchange.weight_budget_per_minute} per minute; requests held back {held.held_total};"
              f" 429/418 seen {held.limited_total}")
    print(f"orders at the exchange: {orders}")
    if args.json:
        full = [w for m, w in peak.items() if m not in (first, last)] or list(peak.values())
        print("BENCH-JSON: " + json.dumps([{
            "figure": f"weight per minute, {len(names)} symbols x 2 traders, busy replay", "unit": "weight/min",
            "p50": rate, "p99": max(full), "peer": BINANCE_LIMIT, "ratio": None, "target": "<= budget (4800) < 6000",
            "n": len(peak), "note": "p50 = rate over the window, p99 = largest calendar minute, peer = Binance's limit"}]))


if __name__ == "__main__":
    main()

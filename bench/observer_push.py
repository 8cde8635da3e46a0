"""What the root pays per push of its status to the web observer (root.py `publish_status`).

The real Root in this process (its sockets bound in a temp dir, nothing forked), holding `--symbols`
symbols as if each leader had pushed a status with `--traders` traders mid-cycle (a buy filled, a
sell open, a last trade): the status naivectl shows, built and JSON-encoded as the root does it
each time it may have changed, and sent when it did (a SUB connected, as the web child is).
Prints the cost per push (status built + encoded + compared + sent), the part the encoding
takes, and the bytes per status.

    .venv/bin/python bench/observer_push.py [--symbols 100] [--traders 2] [--pushes 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import free_port  # noqa: I001

from naived.core.config import parse_config
from naived.core.messages import LeaderStatus, Order, Settings, TradeEvent, TraderInfo, TraderState
from naived.core.symbols import table
from naived.tree import root as tree_root
from naived.tree.supervisor import Child, ChildSpec, Kind


def leader(symbol: str, traders: int, now: float) -> LeaderStatus:
    settings = Settings(symbol, traders, "100", "0.0001", "0.001", "0.001", "0.01", "0.001", "0.001", "5", "BASE", "USDT")
    infos = []
    for i in range(traders):
        buy = Order(f"nv1a2b-{i}-7b", "BUY", "61234.56", "0.00081", "FILLED", 123456 + i, "0.00081", "49.6", 1733400000000)
        sell = Order(f"nv1a2b-{i}-7s", "SELL", "61357.02", "0.00081", "NEW", 223456 + i, "0", "0", 1733400001000)
        state = TraderState(symbol, i, 7, settings, "selling", buy, sell, id_prefix="nv1a2b", started_at=1733400000000)
        infos.append(TraderInfo(i, 40000 + i, now - 300, 0, state, now - 299))
    trade = TradeEvent("trade", int(now * 1000), symbol, 99887766, "61300.12", "0.0123", int(now * 1000), False)
    return LeaderStatus(symbol, 30000, now - 600, infos, 12, counters={"orders_placed": 26, "orders_filled": 25},
                        last_trade=trade, following_market=True, books={"fees_quote": "0.6", "pnl_quote": "1.2"},
                        start_id="0011223344556677")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--traders", type=int, default=2)
    parser.add_argument("--pushes", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="obs-", dir="/tmp") as tmp:
        config = parse_config(f'[paths]\nruntime_dir = "{tmp}/run"\nstate_dir = "{tmp}/state"\n'
                              f'[paper]\nport = {free_port()}\nws_port = {free_port()}\n'
                              f'[web]\nport = {free_port()}\n'.encode())
        root = tree_root.Root(config)
        now = time.time()
        symbols = sorted(table())[:args.symbols]
        for symbol in symbols:
            root.symbols[symbol] = tree_root.SymbolEntry(start_id="0011223344556677")
            root.leaders[symbol] = leader(symbol, args.traders, now)
            spec = ChildSpec(symbol, f"supervisor {symbol}", lambda: 0, kind=Kind.SYMBOL_SUPERVISOR)
            root.supervisor.children[symbol] = Child(spec, 20000, -1, -1, now - 600)
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(config.observer_endpoint)
        time.sleep(0.3)  # the subscription reaches the XPUB
        root.on_observer()
        push, encode, size = [], [], 0
        for i in range(args.pushes):
            # A changed status each time (a newer trade), as a busy tree has: every push encodes and sends.
            first = root.leaders[symbols[i % len(symbols)]]
            root.leaders[first.symbol] = msgspec.structs.replace(first, last_trade=msgspec.structs.replace(
                first.last_trade, t=first.last_trade.t + 1)) if first.last_trade else first
            root.publish_at, root.published_at = None, 0.0
            started = time.perf_counter()
            root.publish_status(time.monotonic())
            push.append(time.perf_counter() - started)
            started = time.perf_counter()
            size = len(msgspec.json.encode(root.status(None)))
            encode.append(time.perf_counter() - started)
            while sub.poll(0):
                sub.recv()
        root.on_stop()
        sub.close()
        ctx.term()
    p50 = statistics.median(push) * 1e6
    p99 = sorted(push)[int(len(push) * 0.99) - 1] * 1e6
    print(f"{args.symbols} symbols x {args.traders} traders: status {size / 1024:.1f} KiB; per push (build + encode + "
          f"compare + send) p50 {p50:.0f} us, p99 {p99:.0f} us; build + encode alone p50 "
          f"{statistics.median(encode) * 1e6:.0f} us; at most 4 pushes a second: {p50 * 4 / 1e4:.2f}% of a core")


if __name__ == "__main__":
    main()

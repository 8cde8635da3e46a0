"""streamerd throughput: fake Binance websocket -> streamerd (decode, publish) -> SUB.

    .venv/bin/python bench/streamer_throughput.py [--quick]

Part 1 measures websocket-client's recv_data() alone, in a fresh process per
variant (websocket-client picks wsaccel up at import time when it is installed):
plain, skip_utf8_validation=True, and wsaccel. Part 2 runs the real
`streamerd start --source binance` against the fake server, with 1, 10 and 100
symbols, and reports received trades/s, streamerd's CPU per trade and the loss.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_binance import FakeBinance, server_frame, trade_json

from naived.ops import processes

CHUNK = 2000  # frames per write, so sending and receiving overlap

# --- part 1: recv() alone ------------------------------------------------------------

_RECV_CHILD = r"""
import sys, time
variant, url, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
if variant != "wsaccel":
    sys.modules["wsaccel"] = None  # make websocket-client fall back to pure Python
import websocket
ws = websocket.create_connection(url, skip_utf8_validation=(variant == "skip"), enable_multithread=False)
print("ready", flush=True)
ws.recv_data()
start = time.perf_counter()
for _ in range(count - 1):
    ws.recv_data()
print(f"{(count - 1) / (time.perf_counter() - start):.0f}", flush=True)
"""


def wsaccel_installed() -> bool:
    try:
        import wsaccel  # noqa: F401 - imported only to learn that it is there
    except ImportError:
        return False
    return True


def measure_recv(variant: str, count: int) -> float | None:
    if variant == "wsaccel" and not wsaccel_installed():
        return None
    with FakeBinance() as fake:
        child = subprocess.Popen(
            [sys.executable, "-c", _RECV_CHILD, variant, f"{fake.url}/stream?streams=btcusdt@trade", str(count)],
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            assert child.stdout.readline().strip() == "ready"
            conn = fake.wait_for_subscription("btcusdt@trade", timeout=10)
            frames = [server_frame(trade_json("BTCUSDT", 1_000_000 + i, price="61837.63000000", qty="0.02000000"))
                      for i in range(count)]
            for start in range(0, count, CHUNK):
                conn.send(b"".join(frames[start : start + CHUNK]))
            return float(child.stdout.readline())
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
            child.wait(5)


# --- part 2: the whole daemon ----------------------------------------------------------


def measure_streamer(symbols: int, count: int, idle: float, extra_args: tuple[str, ...] = ()) -> dict[str, float]:
    """`extra_args` go to `streamerd start`; the result's "log" is streamerd's log once it stopped."""
    names = [f"S{i:03d}USDT" for i in range(symbols)]
    with FakeBinance() as fake, tempfile.TemporaryDirectory() as tmp:
        endpoint = f"ipc://{tmp}/trades.sock"
        log_path = Path(tmp) / "streamerd.log"
        with open(log_path, "wb") as log:  # streamerd keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamerd.cli", "start", "--source", "binance", "--binance-url", fake.url,
                 "--endpoint", endpoint, *extra_args],
                stderr=log, start_new_session=True,
            )
        result: dict = {}
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.LINGER, 0)
        try:
            sub.connect(endpoint)
            for name in names:
                sub.subscribe(f"TRADE_EVENTS:{name}".encode())
            deadline = time.monotonic() + 20
            conn = None
            while conn is None or not all(f"{n.lower()}@trade" in conn.streams for n in names):
                assert time.monotonic() < deadline, "streamerd did not subscribe every symbol"
                conn = fake.wait_for_subscription(f"{names[0].lower()}@trade", timeout=20)
                time.sleep(0.01)
            ids = {n: itertools.count(1) for n in names}
            frames = [server_frame(trade_json(n, next(ids[n]), price="0.51230000", qty="100.00000000"))
                      for n in itertools.islice(itertools.cycle(names), count)]
            process = psutil.Process(proc.pid)
            cpu_before = sum(process.cpu_times()[:2])

            def push() -> None:
                for start in range(0, count, CHUNK):
                    conn.send(b"".join(frames[start : start + CHUNK]))

            sender = threading.Thread(target=push)
            started = time.perf_counter()
            sender.start()
            received, last = 0, started
            while received < count and sub.poll(int(idle * 1000)):
                sub.recv()
                sub.recv()
                received += 1
                last = time.perf_counter()
            sender.join()
            cpu = sum(process.cpu_times()[:2]) - cpu_before
            result = {
                "symbols": symbols,
                "sent": count,
                "received": received,
                "rate": received / (last - started),
                "cpu_us": cpu / max(received, 1) * 1e6,
                "loss": 1 - received / count,
            }
            return result
        finally:
            sub.close()
            ctx.term()
            processes.stop([proc], 10)
            result["log"] = log_path.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    args = parser.parse_args()
    recv_count, trades, idle = (20_000, 30_000, 1.0) if args.quick else (200_000, 300_000, 2.0)

    print(f"websocket-client recv_data(), {recv_count} trade frames")
    print(f"{'variant':<28}{'frames/s':>12}")
    for variant, label in (("plain", "plain"), ("skip", "skip_utf8_validation=True"), ("wsaccel", "wsaccel")):
        rate = measure_recv(variant, recv_count)
        print(f"{label:<28}{'n/a' if rate is None else f'{rate:,.0f}':>12}")

    print(f"\nstreamerd end to end (fake websocket -> decode -> XPUB -> SUB), {trades} trades")
    print(f"{'symbols':>8}{'received':>10}{'trades/s':>12}{'cpu µs/trade':>14}{'loss':>8}")
    for symbols in (1, 10, 100):
        r = measure_streamer(symbols, trades, idle)
        print(f"{r['symbols']:>8}{r['received']:>10}{r['rate']:>12,.0f}{r['cpu_us']:>14.1f}{r['loss']:>8.2%}")


if __name__ == "__main__":
    main()

"""The recorder's cost: streamerd's publish path with and without recording, in the same run.

    .venv/bin/python bench/record.py [--quick]

Part 1 deflates the trade lines of a recorded tape (the sample's BTCUSDT) at several gzip levels on one core: what
recording would cost inline, per trade. Part 2 runs the real `streamerd start --source binance`
against the fake websocket server (as bench/streamer_throughput.py does), alternating runs
without and with `--record-dir`, and prints received trades/s, streamerd's CPU per trade (all
threads: the recorder's writer included), trades the recorder dropped and gzip bytes per trade.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from recorded import BTC_TAPE
from streamer_throughput import measure_streamer


def deflate_rates(lines: list[bytes]) -> list[tuple[int, float, float]]:
    """(level, lines/s, compression ratio) for a raw deflate of `lines`."""
    data = b"".join(lines)
    rows = []
    for level in (1, 3, 6, 9):
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
        started = time.perf_counter()
        out = compressor.compress(data) + compressor.flush()
        rows.append((level, len(lines) / (time.perf_counter() - started), len(data) / len(out)))
    return rows


def recorder_counter(log: str, name: str) -> int:
    match = re.search(rf"recorder stopped: .*\b{name}=(\d+)", log)
    return int(match.group(1)) if match else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    args = parser.parse_args()
    trades, idle, rounds = (30_000, 1.0, 1) if args.quick else (300_000, 2.0, 2)

    with gzip.open(BTC_TAPE) as f:
        lines = [line for line in f if b'@trade"' in line] * 10
    print(f"deflate alone, {len(lines)} trade lines of {BTC_TAPE.name} (one core)")
    print(f"{'level':>6}{'lines/s':>12}{'µs/line':>10}{'ratio':>8}")
    for level, rate, ratio in deflate_rates(lines):
        print(f"{level:>6}{rate:>12,.0f}{1e6 / rate:>10.1f}{ratio:>7.1f}x")

    print(f"\nstreamerd end to end (fake websocket -> decode -> XPUB -> SUB), {trades} trades per run")
    print(f"{'symbols':>8}{'recording':>11}{'received':>10}{'trades/s':>12}{'cpu µs/trade':>14}{'loss':>8}"
          f"{'dropped':>9}{'gz B/trade':>12}")
    for symbols in (1, 10):
        for _ in range(rounds):
            for recording in (False, True):
                with tempfile.TemporaryDirectory() as tmp:
                    extra = ("--record-dir", tmp) if recording else ()
                    r = measure_streamer(symbols, trades, idle, extra)
                    size = sum(p.stat().st_size for p in Path(tmp).iterdir())
                dropped = recorder_counter(r["log"], "dropped") if recording else 0
                per_trade = f"{size / max(recorder_counter(r['log'], 'recorded'), 1):.1f}" if recording else "-"
                print(f"{r['symbols']:>8}{'on' if recording else 'off':>11}{r['received']:>10}{r['rate']:>12,.0f}"
                      f"{r['cpu_us']:>14.1f}{r['loss']:>8.2%}{dropped:>9}{per_trade:>12}")
                sys.stdout.flush()


if __name__ == "__main__":
    main()

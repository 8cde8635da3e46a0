"""What one log line costs, and what the log file's rotation check (one stat(2) per line) adds.

In this process, one logger, the line naive writes (timestamp, level, process name, message):
- to stderr sent to /dev/null (the default handler, as under systemd minus journald's side);
- to a log file (`[naived.log] file`): one write(2) per record on an O_APPEND descriptor, after
  comparing the path's inode with the descriptor's (naived/ops/log.py);
- the same without that comparison, which is what the check costs.
Figures are the median of `--rounds` rounds of `--lines` lines each.

    .venv/bin/python bench/log_line.py [--lines 100000] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from naived.ops import log as naive_log


def per_line(lines: int, rounds: int) -> float:
    """Median µs per line of `lines` info lines through the root logger as configured now."""
    log = logging.getLogger("naived.bench")
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(lines):
            log.info("XRPUSDT/%d: placed BUY %s @ %s", i & 1, "199", "0.5004")
        timings.append((time.perf_counter() - start) / lines * 1e6)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a few lines: check that the script works")
    args = parser.parse_args()
    lines, rounds = (2_000, 2) if args.quick else (args.lines, args.rounds)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "naived.log")
        saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)  # stderr to /dev/null for the stderr case
        try:
            naive_log.setup_logging("naived", "info")
            results["stderr (to /dev/null)"] = per_line(lines, rounds)
            naive_log.setup_logging("naived", "info", path)
            results["log file, with the rotation check"] = per_line(lines, rounds)
            handler = logging.getLogger().handlers[0]
            # type: ignore: the handler's private rotation check, switched off to time a line without it
            check: Callable[[], None] = handler._follow_rotation  # type: ignore[attr-defined]
            handler._follow_rotation = lambda: None  # type: ignore[attr-defined]
            results["log file, without it"] = per_line(lines, rounds)
            handler._follow_rotation = check  # type: ignore[attr-defined]
        finally:
            os.dup2(saved, 2)
            os.close(null)
            os.close(saved)
        size = os.path.getsize(path)
    for what, micros in results.items():
        print(f"{what:<36} {micros:6.2f} µs per line")
    added = results["log file, with the rotation check"] - results["log file, without it"]
    print(f"{'the rotation check (one stat)':<36} {added:6.2f} µs per line ({size / (2 * lines * rounds):.0f} bytes a line)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

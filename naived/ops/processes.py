"""Stopping the daemons a tool started: the one way the demo, `backtest --through-tree`, the
tests and the benchmarks end what they spawned; and why one of them exited, from its log.

Each process must lead its own process group (`start_new_session=True`): a daemon that does not
stop in time is SIGKILLed with everything it forked, so none is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def stop(procs: Sequence[subprocess.Popen[Any]], timeout: float) -> None:
    """SIGTERM each process still running, the last started first (one may depend on those
    started before it: naived on the streamerd it trades from); wait for all of them until one
    deadline `timeout` seconds away; then SIGKILL the process group of each one left, and reap it."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # not a group leader after all: the process alone
                proc.kill()
            proc.wait()


def exit_reason(name: str, proc: subprocess.Popen[Any], log: Path) -> str:
    """One line for the user on a daemon `name` that exited early: its status and the last line
    of its log that says why (an ERROR line, or the `name: message` a command-line error prints)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    errors = [line for line in lines if " ERROR " in line or line.startswith(f"{name}:")]
    return f"{name} exited ({proc.returncode}): {errors[-1] if errors else f'see {log}'}"

"""`naived.ops.processes.stop`: how the demo, the backtest, the tests and the benchmarks end the
daemons they started."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import psutil
from harness import wait_for

from naived.ops import processes

# Ignores SIGTERM; with an argument, forks a child (in its process group) that ignores it too.
STUBBORN = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = os.fork() if len(sys.argv) > 1 else -1
if child == 0:
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
time.sleep(60)
"""
POLITE = "import time; print(-1, flush=True); time.sleep(60)"  # SIGTERM ends it


class Recorded(subprocess.Popen[Any]):
    """A Popen that notes, in a list shared by its kind, each signal it is sent."""

    sent: list[tuple[str, int]] = []

    def __init__(self, name: str, code: str, *args: str, session: bool = True) -> None:
        super().__init__([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, start_new_session=session)
        self.name = name
        assert self.stdout is not None
        self.forked = int(self.stdout.readline())  # also: its signal disposition is set

    def send_signal(self, sig: int) -> None:
        Recorded.sent.append((self.name, sig))
        super().send_signal(sig)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_sigterm_goes_to_the_last_started_first_and_a_polite_process_is_not_killed() -> None:
    Recorded.sent.clear()
    first, second = Recorded("first", POLITE), Recorded("second", POLITE)
    processes.stop([first, second], timeout=10)
    assert Recorded.sent == [("second", signal.SIGTERM), ("first", signal.SIGTERM)]
    assert (first.returncode, second.returncode) == (-signal.SIGTERM, -signal.SIGTERM)


def test_at_the_deadline_what_is_left_is_killed_with_its_process_group() -> None:
    stubborn, polite = Recorded("stubborn", STUBBORN, "fork"), Recorded("polite", POLITE)
    started = time.monotonic()
    processes.stop([stubborn, polite], timeout=1.0)
    assert time.monotonic() - started < 5  # one deadline, not one wait per process
    assert (stubborn.returncode, polite.returncode) == (-signal.SIGKILL, -signal.SIGTERM)
    wait_for("the stubborn process's child to die with it", lambda: gone(stubborn.forked), timeout=5)


def test_one_deadline_for_all() -> None:
    both = [Recorded("a", STUBBORN), Recorded("b", STUBBORN)]
    started = time.monotonic()
    processes.stop(both, timeout=1.5)
    assert time.monotonic() - started < 2.8  # a wait of 1.5 s for each would take 3
    assert [p.returncode for p in both] == [-signal.SIGKILL, -signal.SIGKILL]


def test_a_process_that_leads_no_group_is_killed_alone() -> None:
    stubborn = Recorded("stubborn", STUBBORN, session=False)  # in pytest's own group
    processes.stop([stubborn], timeout=0.5)
    assert stubborn.returncode == -signal.SIGKILL

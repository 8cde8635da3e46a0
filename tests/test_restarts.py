"""One definition of a restart (naived/tree/supervisor.py), the same number in status, metrics and
logs, at every level of the tree: real processes, real kill -9."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from harness import RESTING_QUICK_FAILURE, Tree, free_port, open_buys, running_tree, wait_for

from naived.core.config import load_config

Key = tuple[str, str, str]  # level, symbol, trader


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    port = free_port()
    with running_tree(tmp_path, RESTING_QUICK_FAILURE + f"\n[naived]\nmetrics_port = {port}\n") as t:
        yield t


def from_status(status: dict[str, Any]) -> dict[Key, int]:
    """The restarts counter of every line of `naivectl status --json`."""
    counts = {("paper_exchange", "", ""): status["paper_exchange"]["restarts"],
              ("account_stream", "", ""): status["account_stream"]["restarts"]}
    for sym in status["symbols"]:
        counts["symbol_supervisor", sym["symbol"], ""] = sym["supervisor"]["restarts"]
        if sym["leader"]:
            counts["leader", sym["symbol"], ""] = sym["leader"]["restarts"]
            for t in sym["leader"]["traders"]:
                counts["trader", sym["symbol"], str(t["trader_id"])] = t["restarts"]
    return counts


def from_metrics(tree: Tree) -> dict[Key, int]:
    http = requests.Session()
    http.trust_env = False
    port = load_config(str(tree.config_path)).naived.metrics_port
    text = http.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    counts = {}
    for labels, value in re.findall(r"^naive_restarts_total\{(.*)\} (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        counts[found["level"], found["symbol"], found.get("trader", "")] = int(float(value))
    return counts


def agreed(tree: Tree, **expected: int) -> dict[Key, int] | None:
    """Status and metrics, once they say the same numbers and those include `expected`
    (`leader=1`, `trader_0=1`, `symbol_supervisor=0`, for XRPUSDT)."""
    status = from_status(tree.status())
    if from_metrics(tree) != status:
        return None
    for name, n in expected.items():
        level, _, trader = name.partition("_") if name.startswith("trader") else (name, "", "")
        if status.get((level, "XRPUSDT", trader)) != n:
            return None
    return status


def test_kill_9_counts_one_restart_of_the_killed_process_only_and_no_count_resets(tree: Tree) -> None:
    assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
    before = open_buys(tree, "XRPUSDT", 2)
    assert wait_for("all counters at 0", lambda: agreed(tree, symbol_supervisor=0, leader=0, trader_0=0, trader_1=0))

    # A trader: its count is 1, in status, metrics and one log line with its new pid and why.
    os.kill(before[0]["pid"], signal.SIGKILL)
    wait_for("trader 0's restart", lambda: agreed(tree, leader=0, trader_0=1, trader_1=0))
    new_pid = tree.traders("XRPUSDT")[0]["pid"]
    assert (f"leader XRPUSDT: restarted trader XRPUSDT/0 as pid {new_pid}, restart 1 "
            f"(pid {before[0]['pid']} killed by SIGKILL)") in tree.log("naived")

    # The leader: its count is 1 (the symbol supervisor restarted it, and says so); the traders it
    # starts again from the store are new starts, not restarts: their counts stay as they were.
    leader_pid = tree.symbol("XRPUSDT")["leader"]["pid"]
    os.kill(leader_pid, signal.SIGKILL)
    wait_for("the new leader", lambda: (s := tree.symbol("XRPUSDT")) and s["leader"] and s["leader"]["pid"] != leader_pid
             and len(tree.traders("XRPUSDT")) == 2)
    counts = wait_for("the leader's restart", lambda: agreed(tree, symbol_supervisor=0, leader=1, trader_0=1, trader_1=0))
    assert counts["symbol_supervisor", "XRPUSDT", ""] == 0
    sym = tree.symbol("XRPUSDT")
    assert (f"supervisor XRPUSDT: restarted leader XRPUSDT as pid {sym['leader']['pid']}, restart 1 "
            f"(pid {leader_pid} killed by SIGKILL)") in tree.log("naived")
    assert tree.log("naived").count("restarted trader XRPUSDT/") == 1  # one line per restart, and no more
    text = tree.ctl("status", "XRPUSDT").stdout
    assert re.search(r"XRPUSDT \[running\]  (lease \d+, )?supervisor pid \d+, up \S+, restarts 0", text), text
    assert re.search(r"leader  pid \d+, up \S+, restarts 1,", text), text
    assert re.search(r"trader 0  pid \d+, up \S+, restarts 1", text) and re.search(r"trader 1  pid \d+, up \S+, restarts 0",
                                                                                    text), text

    # The symbol supervisor: its own count is 1; its leader's and traders' go on where they were.
    supervisor_pid = sym["supervisor"]["pid"]
    os.kill(supervisor_pid, signal.SIGKILL)
    wait_for("a new symbol supervisor, leader and traders",
             lambda: (s := tree.symbol("XRPUSDT")) and s["supervisor"]["pid"] not in (None, supervisor_pid) and s["leader"]
             and s["leader"]["pid"] != sym["leader"]["pid"] and len(tree.traders("XRPUSDT")) == 2)
    wait_for("the supervisor's restart", lambda: agreed(tree, symbol_supervisor=1, leader=1, trader_0=1, trader_1=0))
    assert f"naived: restarted supervisor XRPUSDT as pid {tree.symbol('XRPUSDT')['supervisor']['pid']}, restart 1 " \
           f"(pid {supervisor_pid} killed by SIGKILL)" in tree.log("naived")


def test_stop_start_and_a_new_naived_count_no_restart(tree: Tree) -> None:
    assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
    before = open_buys(tree, "XRPUSDT", 2)
    os.kill(before[0]["pid"], signal.SIGKILL)
    wait_for("trader 0's restart", lambda: agreed(tree, trader_0=1))

    # stop-trading + start-trading is a fresh start of the symbol: every count begins at 0 again
    assert tree.ctl("stop-trading", "XRPUSDT").returncode == 0
    wait_for("the symbol to start again",
             lambda: tree.ctl("start-trading", "XRPUSDT").stdout.startswith("started trading"))
    open_buys(tree, "XRPUSDT", 2)
    wait_for("every count at 0", lambda: agreed(tree, symbol_supervisor=0, leader=0, trader_0=0, trader_1=0))

    # ...and so is a new naived (it autostarts the symbol), whose metrics count no restart either
    tree.naived.send_signal(signal.SIGTERM)
    assert tree.naived.wait(15) == 0
    tree.start_naived()
    open_buys(tree, "XRPUSDT", 2)
    counts = wait_for("every count at 0 after a new naived",
                      lambda: agreed(tree, symbol_supervisor=0, leader=0, trader_0=0, trader_1=0))
    assert set(counts.values()) == {0}
    assert "restarted" not in tree.log("naived").split("naived ready")[-1]

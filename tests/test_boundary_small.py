"""Issue 20, item 7 (the smaller ones): what the root says and does at its edges."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from harness import open_buys, running_tree, wait_for


@pytest.mark.sqlite_only("the trading set's file, trading.json")
def test_start_trading_that_cannot_be_recorded_starts_nothing_and_says_why(tmp_path: Path) -> None:
    """The trading set is written before the symbol starts. A state dir that refuses the write
    (read-only, full; here its temp file's name is taken by a directory, which also stops root)
    gets an error naming the file, and nothing runs that would not autostart after a restart."""
    with running_tree(tmp_path) as tree:
        blocker = tmp_path / "state" / "trading.tmp"
        blocker.mkdir(parents=True)
        answer = tree.ctl("start-trading", "XRPUSDT")
        assert answer.returncode != 0
        assert tree.symbol("XRPUSDT") is None
        assert "XRPUSDT not started" in answer.stderr and "trading.json" in answer.stderr
        assert "supervisor XRPUSDT" not in tree.log("naived")
        blocker.rmdir()
        assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
        wait_for("XRPUSDT running", lambda: (s := tree.symbol("XRPUSDT")) and s["supervisor"]["pid"])
        assert json.loads((tmp_path / "state" / "trading.json").read_text()) == {"XRPUSDT": "running"}


def test_sigusr1_to_naived_finishes_every_cycle_then_exits_0(tmp_path: Path) -> None:
    """What the code and the docs promised (USR1 shuts down gracefully) is what the root does:
    `shutdown-trading` for every symbol (no new cycle), then exit 0 once every symbol ended."""
    with running_tree(tmp_path, """
[trading.defaults]
chunks = 2
buy_down_interval = "0"
profit_interval = "-0.0012"
""") as tree:
        assert tree.ctl("start-trading", "BTCUSDT").returncode == 0
        open_buys(tree, "BTCUSDT", 2)
        tree.naived.send_signal(signal.SIGUSR1)
        assert tree.naived.wait(90) == 0
        log = tree.log("naived")
        assert "BTCUSDT: shut down" in log and "graceful shutdown: every symbol has finished its cycles" in log
        if not tree.store_dsn:  # one host: nothing autostarts (a cluster host's symbols go on elsewhere: in the shared set)
            assert json.loads((tmp_path / "state" / "trading.json").read_text()) == {}


@pytest.mark.sqlite_only("the trading set's file, trading.json")
def test_an_emptied_trading_set_is_said_in_status_not_silently_an_empty_one(tmp_path: Path) -> None:
    """A trading.json truncated to 0 bytes (a power cut, a full disk, a user) is not "no symbols":
    it is kept aside, and status says that nothing autostarted from it and what to do."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "trading.json").write_bytes(b"")
    with running_tree(tmp_path) as tree:
        problems = tree.status()["problems"]
        assert len(problems) == 1 and "trading set" in problems[0] and "was unreadable" in problems[0], problems
        assert "naivectl start-trading" in problems[0]
        assert "  problem: the trading set" in tree.ctl("status").stdout
        aside = [p.name for p in state.iterdir() if p.name.startswith("trading.json.corrupt-")]
        assert len(aside) == 1 and (state / aside[0]).read_bytes() == b""  # kept, as it was
        assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
        assert json.loads((state / "trading.json").read_text()) == {"XRPUSDT": "running"}

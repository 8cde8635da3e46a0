"""What naivectl and naived print: replies rendered, help texts (no daemon needed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from unittest import mock

import click
from click.testing import CliRunner

from naived import cli, ctl
from naived.core.messages import History, LeaderStatus, TradeEvent
from naived.ctl import history_lines
from naived.store.ownership import StateDirLock


def test_history_says_so_before_the_first_finished_cycle() -> None:
    assert history_lines(History("XRPUSDT", [])) == [
        "XRPUSDT: no finished cycle yet (a cycle finishes when its sell fills; naivectl status XRPUSDT shows the open ones)"]


def test_every_command_and_option_has_help_that_is_not_cut() -> None:
    for group in (cli.main, ctl.main):
        assert isinstance(group, click.Group)
        listing = CliRunner().invoke(group, ["--help"], terminal_width=80).output.partition("Commands:")[2]
        assert listing and "..." not in listing, listing  # click cuts a long first sentence with "..."
        for name, command in group.commands.items():
            assert command.short_help or command.help, name
            for param in command.params:
                assert not isinstance(param, click.Option) or param.help, f"{name} {param.name} has no help"


def _leader(last_trade: TradeEvent | None, following: bool) -> LeaderStatus:
    return LeaderStatus("XRPUSDT", 5022, NOW - 60, [], last_trade=last_trade, following_market=following)


NOW = 1_700_000_000.0


def _trade(age: float) -> TradeEvent:
    ms = int((NOW - age) * 1000)
    return TradeEvent("trade", ms, "XRPUSDT", 7, "0.50120000", "100.00000000", ms, False)


def test_the_leader_line_shows_the_market_so_a_silent_feed_shows() -> None:
    def line(leader: LeaderStatus) -> str:
        return ctl._leader_lines(leader, NOW)[0]

    assert line(_leader(_trade(3), True)).endswith(", restarts 0, cycles finished 0, last trade 0.5012 3s ago")
    assert line(_leader(None, True)).endswith(", no market trade seen yet")
    assert line(_leader(_trade(300), True)).endswith(
        ", last trade 0.5012 5m ago (a quiet market or a silent feed: is streamerd running?)")
    assert line(_leader(_trade(300), False)).endswith(
        ", last trade 0.5012 5m ago (not followed while the orders rest)")


def test_naivectl_gives_a_naived_that_is_starting_time_to_bind_its_socket(tmp_path: Path) -> None:
    """`naived start &` then `naivectl ...` at once: naived holds its state directory a moment
    before its control socket exists; naivectl waits for it, but not for a long-running one."""
    lock = StateDirLock(tmp_path)
    held = lock.acquire()
    socket_path = tmp_path / "naived.sock"
    target = ctl.Target(f"ipc://{socket_path}", 1.0, str(tmp_path))
    try:
        threading.Timer(0.3, socket_path.touch).start()
        assert ctl._starting(target, str(socket_path))
        socket_path.unlink()
        started = time.monotonic()
        with mock.patch.object(time, "time", lambda: held.since + ctl.STARTING_GRACE + 1):
            assert not ctl._starting(target, str(socket_path))
        assert time.monotonic() - started < 0.5
    finally:
        lock.release()
    assert not ctl._starting(target, str(socket_path))  # nobody holds it: not running, said at once

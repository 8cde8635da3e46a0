"""What naivectl and naived print: replies rendered, help texts (no daemon needed)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from unittest import mock

import click
import msgspec
from click.testing import CliRunner

from naived import cli, ctl
from naived.core.messages import (
    AccountStatus,
    Balance,
    ClusterStatus,
    History,
    Holding,
    Host,
    LeaderStatus,
    OpenOrder,
    ProcessInfo,
    RateBudget,
    SymbolStatus,
    TradeEvent,
    TreeStatus,
)
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


def _tree(cluster: ClusterStatus | None, token: int | None = None) -> TreeStatus:
    leader = _leader(_trade(3), False)
    return TreeStatus(10167, NOW - 8, "paper", "tcp://127.0.0.1:5680",
                      [SymbolStatus("XRPUSDT", "running", ProcessInfo(10190, NOW - 6, 0), leader, lease_token=token)],
                      paper_exchange=ProcessInfo(10173, NOW - 7, 0), account_stream=ProcessInfo(10174, NOW - 7, 0),
                      cluster=cluster)


SQLITE_STATUS = """\
naived  pid 10167, up 8s, exchange paper, market tcp://127.0.0.1:5680
├── paper-exchange  pid 10173, up 7s, restarts 0
├── account-stream  pid 10174, up 7s, restarts 0
└── XRPUSDT [running]  supervisor pid 10190, up 6s, restarts 0
    └── leader  pid 5022, up 60s, restarts 0, cycles finished 0, last trade 0.5012 3s ago (not followed while the orders rest)"""


def test_status_on_sqlite_has_no_cluster_and_no_lease() -> None:
    """The single-host text stays as it was (the README's tour compares its samples to it)."""
    assert ctl.render(_tree(None), NOW) == SQLITE_STATUS


def test_status_shows_the_cluster_after_the_tree_and_each_symbols_lease() -> None:
    """Figures are as the keeper read them 1s ago, aged by that second: h3, last seen 14.2s before the
    read, is now past the 15s lease time (dead); XRPUSDT's lease had 9.9s left, 8.9s now."""
    started = dt.datetime(2023, 11, 14, tzinfo=dt.UTC)
    cluster = ClusterStatus(
        "h1", [Host("h3", 6161, started, 14.2), Host("h1", 4242, started, 0.2), Host("h2", 5151, started, 12.5)],
        [Holding("XRPUSDT", "h1", 17, 130.0, 9.9), Holding("BTCUSDT", "h3", 12, 300.0, -2.5),
         Holding("ADAUSDT", "h2", 9, 5.0, 13.0)],
        read_seconds_ago=1.0)
    tree_text = SQLITE_STATUS.replace("supervisor pid 10190", "lease 17, supervisor pid 10190")
    assert ctl.render(_tree(cluster, 17), NOW) == tree_text + """
cluster  this host h1, lease time 15s, read 1s ago
├── host h1  alive, last seen 1s ago, pid 4242  (this host)
├── host h2  alive, last seen 13s ago, pid 5151
├── host h3  dead, last seen 15s ago, pid 6161
├── lease ADAUSDT  h2, token 9, age 6s, expires in 12s
├── lease BTCUSDT  h3, token 12, age 5m, expired 3s ago (free for another host)
└── lease XRPUSDT  h1 (this host), token 17, age 2m, expires in 8s"""


def test_the_cluster_says_when_the_lease_keeper_cannot_read_the_database() -> None:
    lost = ClusterStatus("h1", [Host("h1", 4242, dt.datetime(2023, 11, 14, tzinfo=dt.UTC), 0.5)],
                         [Holding("XRPUSDT", "h1", 17, 60.0, 14.0)], read_seconds_ago=12.0,
                         error="connection refused")
    assert ctl.cluster_lines(lost) == [
        "cluster  this host h1, lease time 15s",
        "  lease keeper: connection refused, last good read 12s ago",
        "├── host h1  alive, last seen 12s ago, pid 4242  (this host)",
        "└── lease XRPUSDT  h1 (this host), token 17, age 72s, expires in 2s"]
    assert ctl.cluster_lines(ClusterStatus("h1", [], [], None, "connection refused", lease_seconds=30)) == [
        "cluster  this host h1, lease time 30s",
        "  lease keeper: connection refused, no good read yet"]
    assert ctl.cluster_lines(ClusterStatus("h1", [], [], None)) == ["cluster  this host h1, lease time 15s, not read yet"]
    assert ctl.cluster_lines(ClusterStatus("h1", lost.hosts, [], 0.0))[1:] == [
        "├── host h1  alive, last seen 0s ago, pid 4242  (this host)", "└── (no leases)"]


def test_status_json_carries_the_cluster() -> None:
    cluster = ClusterStatus("h1", [Host("h1", 4242, dt.datetime(2023, 11, 14, tzinfo=dt.UTC), 0.5)],
                            [Holding("XRPUSDT", "h1", 17, 60.0, 14.0)], read_seconds_ago=1.0)
    tree = _tree(cluster, 17)
    with mock.patch.object(ctl, "call", lambda target, message: tree):
        out = CliRunner().invoke(ctl.main, ["--endpoint", "ipc:///nowhere", "status", "--json"]).output
    assert msgspec.json.decode(out, type=TreeStatus) == tree
    assert msgspec.json.decode(out)["cluster"]["leases"][0] == {
        "symbol": "XRPUSDT", "holder": "h1", "token": 17, "age_seconds": 60.0, "expires_in_seconds": 14.0}


def test_a_cluster_host_holding_nothing_points_to_the_cluster_not_to_start_trading() -> None:
    empty = msgspec.structs.replace(_tree(None), symbols=[])
    assert "(no symbols trading: naivectl start-trading XRPUSDT)" in ctl.render(empty, NOW)
    clustered = msgspec.structs.replace(empty, cluster=ClusterStatus("h1", [], [], 0.0))
    text = ctl.render(clustered, NOW)
    assert "no symbols held by this host" in text and "start-trading" not in text


def test_the_account_as_text_says_how_old_it_is_and_why_it_failed() -> None:
    budget = RateBudget(120, 4800, 3, 15, 40, 50000, share_hosts=3, ban_status=429, banned_until=NOW + 30)
    assert ctl.account_text(AccountStatus(every_seconds=30.0, budget=budget), NOW).splitlines() == [
        "account  not read yet (naived's reconcile worker reads it every 30s)",
        "rate budget (this host)",
        "  request weight  120 / 4800 this minute",
        "  orders          3 / 15 this 10 s, 40 / 50000 today (UTC) (this host's share of the account, among 3 hosts)",
        "  held: the exchange answered 429; nothing is sent for 30s more",
    ]
    account = AccountStatus(
        read_at=NOW - 95, balances=[Balance("USDT", "9900.00000000", "100.00000000"), Balance("XRP", "0.5", "0")],
        open_orders=[OpenOrder("XRPUSDT", "nvabc-0-1B", "BUY", "0.25000000", "200.00000000", "0.00000000", "NEW",
                               int((NOW - 300) * 1000))],
        error="open orders not read: the exchange did not answer: timed out", error_at=NOW - 5, pushed_at=NOW - 40,
        every_seconds=30.0)
    assert ctl.account_text(account, NOW).splitlines() == [
        "account  read 95s ago (every 30s), balances pushed 40s ago",
        "  error 5s ago: open orders not read: the exchange did not answer: timed out",
        "balances",
        "  asset  free  locked",
        "  USDT   9900     100",
        "  XRP     0.5       0",
        "open orders at the exchange  (1)",
        "  symbol   side  price  qty  executed  status  client order id  age",
        "  XRPUSDT  BUY    0.25  200         0  NEW     nvabc-0-1B        5m",
    ]
    empty = AccountStatus(read_at=NOW - 1)
    assert ctl.account_text(empty, NOW).splitlines() == [
        "account  read 1s ago (every 30s)", "balances  (none)", "open orders at the exchange  (none)"]

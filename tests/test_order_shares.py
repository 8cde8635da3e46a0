"""The account's order limits shared by the hosts of a cluster: the allowance (a pure function,
naived/core/order_shares.py), the share in the host's budget file (naived/exchange/budget.py)
and the keeper's round through a real PostgreSQL (naived/store/order_counts.py)."""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from naived.core.config import load_config
from naived.core.order_shares import HostOrders, OrderCounts, OrderLimits, OrderShare, allowance
from naived.exchange import budget
from naived.store import pgschema
from naived.store.leases import Leases
from naived.store.order_counts import share_orders
from naived.store.pgschema import Conn
from naived.store.postgres import connect

WORKER = Path(__file__).resolve().parent / "budget_worker.py"
MINUTE = 60 * 29_000_000  # an epoch second at the start of a minute (and of a 10 s window)
DAY = MINUTE // 86400
LIMITS = OrderLimits(45, 150_000)
HOSTS = ["h1", "h2", "h3", "h4", "h5"]


def place(b: budget.Budget, n: int, since: float = MINUTE - 3600.0) -> None:
    """`n` orders on budget `b`, 40 every 10 s from `since` (within the account's 45)."""
    for i in range(n):
        b.acquire(1, "order", since + i // 40 * 10)


def published(host: str, share_10s: int = 0, orders_day: int = 0, day: int = DAY) -> HostOrders:
    return HostOrders(host, MINUTE // 10, 0, share_10s, day, orders_day, 0)


# --- the allowance ------------------------------------------------------------------------------


def test_a_newcomer_gets_what_the_others_leave_and_all_settle_on_equal_shares() -> None:
    rows = {"h1": published("h1", 22), "h2": published("h2", 22), "h3": published("h3")}
    alive = {"h1", "h2", "h3"}

    def round_of(host: str) -> int:
        share = allowance(LIMITS, host, alive, list(rows.values()))
        rows[host] = published(host, share.per_10s)
        return share.per_10s

    assert round_of("h3") == 1  # 45 - 22 - 22: a plain split (15) would make 59, past Binance's 50
    assert [round_of(h) for h in ("h1", "h2", "h3")] == [15, 15, 15]


def test_a_dead_hosts_day_count_still_counts_and_its_10s_share_is_free() -> None:
    rows = [published("h1", 15, 1000), published("h2", 15, 500), published("h3", 15, 30_000),
            published("h4", 40, 99, day=DAY - 1)]  # yesterday's: nothing today
    share = allowance(LIMITS, "h1", {"h1", "h2"}, rows)  # h3 (and h4) not seen within the lease time
    assert share == OrderShare(2, 22, 1000 + (150_000 - 31_500) // 2, DAY)
    assert allowance(LIMITS, "h1", {"h2"}, rows).hosts == 2  # this host always counts


@given(st.lists(st.tuples(st.sampled_from(["round", "dies"]), st.sampled_from(HOSTS), st.sets(st.sampled_from(HOSTS))),
                max_size=40),
       st.integers(1, 50))
def test_shares_written_one_after_another_never_add_up_past_the_limit(
        steps: list[tuple[str, str, set[str]]], limit: int) -> None:
    """Each write of a share is computed from the shares held when it is written (the database's
    compare-and-set). Hosts may disagree on who is alive (a view may count hosts that never came,
    or dead ones), as long as none leaves out a host still trading: a host is not alive to the
    others only once its lease deadlines have stopped it (then it is gone for good here)."""
    limits = OrderLimits(limit, 1000)
    rows: dict[str, HostOrders] = {}
    trading: set[str] = set()
    for what, host, seen in steps:
        if what == "dies":
            trading.discard(host)
            continue
        rows.setdefault(host, published(host, 0))  # a host's first publish: held to nothing yet
        share = allowance(limits, host, seen | trading, list(rows.values()))
        rows[host] = published(host, share.per_10s)
        trading.add(host)
        assert sum(rows[h].share_10s for h in trading) <= limit


@given(st.dictionaries(st.sampled_from(HOSTS), st.integers(0, 200_000), min_size=1), st.data())
def test_day_allowances_from_one_snapshot_add_up_to_the_limit(used: dict[str, int], data: st.DataObject) -> None:
    alive = data.draw(st.sets(st.sampled_from(sorted(used)), min_size=1))
    rows = [published(h, 0, n) for h, n in used.items()]
    shares = {h: allowance(LIMITS, h, alive, rows).per_day for h in alive}
    assert all(shares[h] >= used[h] for h in alive)  # never below what it placed
    dead = sum(n for h, n in used.items() if h not in alive)
    assert sum(shares.values()) + dead <= max(LIMITS.per_day, sum(used.values()))
    if sum(used.values()) <= LIMITS.per_day:  # and no more than the rounding is left unshared
        assert sum(shares.values()) + dead > LIMITS.per_day - len(alive)


# --- the share in the budget file ---------------------------------------------------------------


def test_the_share_limits_this_hosts_count_and_binances_figure_the_accounts() -> None:
    b = budget.LocalBudget()
    at = MINUTE + 1.0
    b.set_order_share(OrderShare(3, 15, 50_000, DAY), confirmed=True, wall=at)  # from the whole account: a cut
    b.record(at, None, 40, 120_000)  # the account (every host) placed 40 in this window, 120,000 today
    for _ in range(5):
        b.acquire(1, "order", at)  # this host's 5 of its 15: Binance's 40 is the account's, not this host's
    b.record(at, None, 45, 120_005)
    with pytest.raises(budget.Refused) as held:
        b.acquire(1, "order", at)  # the account's 45
    assert held.value.retry_after == pytest.approx(9.0)
    b = budget.LocalBudget()
    b.set_order_share(OrderShare(3, 2, 50_000, DAY), confirmed=True, wall=at)
    b.acquire(1, "order", at)
    b.acquire(1, "order", at)
    with pytest.raises(budget.Refused) as held:
        b.acquire(1, "order", at)  # this host's 2
    assert held.value.retry_after == pytest.approx(9.0)


def test_a_day_share_holds_until_the_next_round_and_the_days_limit_until_the_day_ends() -> None:
    b = budget.LocalBudget()
    at = MINUTE + 1.0
    b.set_order_share(OrderShare(2, 45, 1, DAY), confirmed=True, wall=at)
    b.acquire(1, "order", at)
    with pytest.raises(budget.Refused) as held:
        b.acquire(1, "order", at)
    assert held.value.retry_after == budget.SHARE_RECHECK_SECONDS  # the keeper may give more next round
    b = budget.LocalBudget(budget.Limits(orders_per_day=1))
    b.acquire(1, "order", at)
    with pytest.raises(budget.Refused) as held:
        b.acquire(1, "order", at)
    assert held.value.retry_after > 3600  # the account's own limit: not before tomorrow
    b = budget.LocalBudget()
    b.set_order_share(OrderShare(3, 45, 1, DAY - 1), confirmed=True, wall=at)  # yesterday's share
    assert b.orders(at).per_day == 150_000 // 3  # a new day: an equal split until the keeper's round


def test_a_cut_is_in_force_at_once_and_a_raise_from_the_next_window() -> None:
    b = budget.LocalBudget()
    at = MINUTE + 8.5  # 1.5 s before the window ends: the raise waits for the one after it
    b.hold_orders(3, at)
    assert (b.orders(at).per_10s, b.orders(at).per_day) == (0, 0)
    b.set_order_share(OrderShare(3, 15, 100, DAY), confirmed=False, wall=at)
    assert (b.orders(at).per_10s, b.orders(at).per_day) == (0, 0)  # unconfirmed: nothing raised
    b.set_order_share(OrderShare(3, 15, 100, DAY), confirmed=True, wall=at)
    assert (b.orders(at).per_10s, b.orders(at).per_10s_most, b.orders(at).per_day) == (0, 15, 100)
    assert b.orders(MINUTE + 10.0).per_10s == 15  # the next window
    b.set_order_share(OrderShare(3, 5, 100, DAY), confirmed=False, wall=MINUTE + 10.0)
    assert (b.orders(MINUTE + 10.0).per_10s, b.orders(MINUTE + 10.0).per_10s_most) == (5, 5)
    at = MINUTE + 19.5  # within the guard of the next window: the raise waits for the one after
    b.set_order_share(OrderShare(3, 15, 100, DAY), confirmed=True, wall=at)
    assert b.orders(MINUTE + 20.0).per_10s == 5 and b.orders(MINUTE + 30.0).per_10s == 15


def test_a_raise_never_lands_in_a_window_another_process_already_opened() -> None:
    b = budget.LocalBudget()
    b.hold_orders(3, MINUTE + 1.0)
    with pytest.raises(budget.Refused):
        b.acquire(1, "order", MINUTE + 12.0)  # a trader whose clock is ahead has opened the next window
    b.set_order_share(OrderShare(3, 15, 100, DAY), confirmed=True, wall=MINUTE + 5.0)  # the keeper's, behind
    assert b.orders(MINUTE + 12.0).per_10s == 0 and b.orders(MINUTE + 20.0).per_10s == 15


def test_a_raise_confirmed_for_a_host_alone_is_in_force_at_once_and_only_if_confirmed() -> None:
    b = budget.LocalBudget()
    at = MINUTE + 1.0
    b.hold_orders(2, at)
    b.set_order_share(OrderShare(1, 45, 100, DAY), confirmed=False, wall=at, at_once=True)
    assert b.orders(at).per_10s_most == 0  # not in the database yet: nothing raised, at once or not
    b.set_order_share(OrderShare(1, 45, 100, DAY), confirmed=True, wall=at)
    assert (b.orders(at).per_10s, b.orders(at).per_10s_most) == (0, 45)  # waiting for the next window
    b.set_order_share(OrderShare(1, 45, 100, DAY), confirmed=True, wall=at, at_once=True)
    assert (b.orders(at).per_10s, b.orders(at).per_10s_most) == (45, 45)  # the waiting raise, now
    b.set_order_share(OrderShare(2, 22, 100, DAY), confirmed=True, wall=at, at_once=True)
    assert (b.orders(at).per_10s, b.orders(at).per_10s_most) == (22, 22)  # a cut stays a cut
    for _ in range(22):
        b.acquire(1, "order", at)
    b.set_order_share(OrderShare(1, 30, 100, DAY), confirmed=True, wall=at, at_once=True)
    for _ in range(8):
        b.acquire(1, "order", at)
    with pytest.raises(budget.Refused):  # its own orders earlier in the window count against the new share
        b.acquire(1, "order", at)


def test_the_database_remembers_todays_count_for_a_file_made_afresh() -> None:
    b = budget.LocalBudget()
    b.acquire(1, "order", MINUTE + 1.0)
    b.count_orders_day(DAY, 300, MINUTE + 1.0)
    b.count_orders_day(DAY, 200, MINUTE + 1.0)  # less than it has: kept
    b.count_orders_day(DAY - 1, 900, MINUTE + 1.0)  # another day's: nothing to do with today
    assert b.state(MINUTE + 1.0).orders_day == 300


def worker(config: Path, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, str(WORKER), str(config), *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_share_set_by_the_keeper_holds_every_process_of_the_host(tmp_path: Path) -> None:
    config = tmp_path / "naive.toml"
    config.write_text(f'[paths]\nruntime_dir = "{tmp_path / "run"}"\n')
    (tmp_path / "run").mkdir(mode=0o700)
    path = load_config(str(config)).budget_path
    budget.ensure(path)
    keeper = budget.SharedBudget(path)
    at = MINUTE + 1.0
    keeper.hold_orders(3, at)
    assert worker(config, "orders", "5", str(at)) == [{"placed": 0}]
    keeper.set_order_share(OrderShare(3, 2, 1000, DAY), confirmed=True, wall=at)
    assert worker(config, "orders", "5", str(at)) == [{"placed": 0}]  # a raise: from the next window
    assert worker(config, "orders", "5", str(at + 10)) == [{"placed": 2}]
    assert keeper.orders(at + 10).orders_10s == 2
    budget.ensure(path)  # the root's next start: no share from an earlier run (one host has it all)
    assert worker(config, "orders", "50", str(at + 20)) == [{"placed": 45}]
    keeper.close()


def test_a_file_of_the_older_layout_is_made_afresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "rate-budget"
    old = struct.Struct("<8s16s14q")  # layout 1: 136 bytes, no shares
    record = old.pack(b"NVBUDGT1", budget.BOOT_ID, *([0] * 5), MINUTE // 10, 7, 0, DAY, 7, *([0] * 4))
    path.write_bytes(record + b"\x01" * (budget.SIZE - old.size))  # even at the new size
    assert budget.snapshot(path) is None  # not this layout: never misread
    with caplog.at_level(logging.WARNING, logger="naived.exchange.budget"):
        budget.ensure(path)
    assert "older layout" in caplog.text
    assert path.stat().st_size == budget.SIZE == 184
    state = budget.snapshot(path)
    assert state is not None and state.orders_day == 0 and state.share_hosts == 0


# --- through PostgreSQL -------------------------------------------------------------------------

AT = MINUTE + 1.0


class Watched:
    """A keeper's connection that runs `before_confirm` before it sends the confirm."""

    def __init__(self, conn: Conn, before_confirm: Callable[[dict[str, Any]], None]) -> None:
        self.conn = conn
        self.before_confirm = before_confirm

    def execute(self, query: str, params: dict[str, Any]) -> Any:
        if "order_share_epoch SET" in query:
            self.before_confirm(params)
        return self.conn.execute(query, params)


class Cluster:
    """Hosts on one migrated schema, each with its keeper's connection and its budget."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.db = connect(dsn)  # the test's own reads
        pgschema.migrate(self.db)
        self.conns: dict[str, Conn] = {}
        self.budgets: dict[str, budget.LocalBudget] = {}

    def round(self, host: str, alive: Collection[str], wall: float = AT,
              before_confirm: Callable[[dict[str, Any]], None] | None = None) -> OrderCounts:
        """`host`'s keeper's call, its connection watched when `before_confirm` is given."""
        self.budget(host)
        conn: Any = self.conns[host] if before_confirm is None else Watched(self.conns[host], before_confirm)
        return share_orders(conn, host, alive, self.budgets[host], wall)

    def budget(self, host: str, trading: bool = True) -> budget.LocalBudget:
        """`host`'s budget (and its keeper's connection), made at first use. A host `trading` holds a
        lease from then on (its keeper takes its leases before it shares the orders), so no host is
        alone (naived/core/order_shares.py) unless a test says so."""
        if host not in self.conns:
            self.conns[host], self.budgets[host] = connect(self.dsn), budget.LocalBudget()
            if trading:
                self.leased(host, -60.0)
        return self.budgets[host]

    def leased(self, host: str, ago: float | None) -> None:
        """`host` registered, its last lease ending `ago` seconds before now by the database's clock
        (negative: a live one; None: it never held one)."""
        self.db.execute("INSERT INTO hosts (host_id, pid, started_at, last_seen, leased_until) "
                        "VALUES (%(h)s, 1, now(), now(), now() - make_interval(secs => %(ago)s)) "
                        "ON CONFLICT (host_id) DO UPDATE SET leased_until = excluded.leased_until",
                        {"h": host, "ago": ago})

    def reserved(self) -> dict[str, int]:
        rows = self.db.execute("SELECT host_id, allowance FROM order_counts WHERE kind = '10s'").fetchall()
        return {host: int(n) for host, n in rows}

    def close(self) -> None:
        for conn in [self.db, *self.conns.values()]:
            conn.close()


@pytest.fixture
def cluster(pg_dsn: str) -> Iterator[Cluster]:
    made = Cluster(pg_dsn)
    yield made
    made.close()


def test_three_hosts_share_the_accounts_orders(cluster: Cluster) -> None:
    hosts = ["a", "b", "c"]
    place(cluster.budget("a"), 100)  # placed today before the hosts shared anything
    place(cluster.budget("b"), 50)
    for _ in range(2):
        for h in hosts:
            cluster.round(h, hosts)
            assert sum(cluster.reserved().values()) <= 45
    assert cluster.reserved() == {"a": 15, "b": 15, "c": 15}
    counts = {h: cluster.budgets[h].orders(AT + 10) for h in hosts}
    assert {h: c.per_10s for h, c in counts.items()} == {"a": 15, "b": 15, "c": 15}
    assert {h: c.per_day for h, c in counts.items()} == {"a": 100 + 49_950, "b": 50 + 49_950, "c": 49_950}
    assert sum(c.per_day for c in counts.values()) == 150_000
    rows = cluster.db.execute("SELECT host_id, count FROM order_counts WHERE kind = 'day' ORDER BY host_id").fetchall()
    assert rows == [("a", 100), ("b", 50), ("c", 0)]


def test_a_joining_host_never_takes_room_another_still_holds(cluster: Cluster) -> None:
    for h in ("a", "b"):
        cluster.round(h, {"a", "b"}, wall=AT - 20)
    assert cluster.reserved() == {"a": 22, "b": 22} and cluster.budgets["a"].orders(AT).per_10s == 22
    wrote: list[tuple[str, int]] = []
    for h in ("c", "a", "b", "c"):  # c joins; a and b see it in their next rounds

        def check(params: dict[str, Any], h: str = h) -> None:
            wrote.append((h, params["a10"]))
            assert cluster.budgets[h].orders(AT).per_10s_most <= params["a10"]  # a cut is in force before it is written

        cluster.round(h, {"a", "b", "c"}, before_confirm=check)
        assert sum(cluster.reserved().values()) <= 45
        assert cluster.budgets[h].orders(AT).per_10s_most <= cluster.reserved()[h]
    assert wrote == [("c", 1), ("a", 15), ("b", 15), ("c", 15)]  # c first gets what is left: 45 - 22 - 22
    assert [cluster.budgets[h].orders(AT).per_10s for h in "abc"] == [15, 15, 0]  # cuts at once; c's raise later
    assert [cluster.budgets[h].orders(AT + 10).per_10s for h in "abc"] == [15, 15, 15]


def test_of_two_hosts_joining_at_once_one_waits_a_round(cluster: Cluster) -> None:
    """c and d join together while a still holds 22 (its share of two): each alone may take 15
    (45 - 22 - 0), both would make 52. d writes between c's read and c's write: c's is refused."""
    cluster.round("a", {"a", "b"})  # b: gone since, never published
    alive = {"a", "c", "d"}

    def meanwhile(params: dict[str, Any]) -> None:
        assert params["a10"] == 15
        cluster.round("d", alive)

    cluster.round("c", alive, before_confirm=meanwhile)
    assert cluster.reserved() == {"a": 22, "c": 0, "d": 15}
    assert cluster.budgets["c"].orders(AT + 10).per_10s_most == 0  # held, not raised
    for h in ("c", "a", "c"):  # the next rounds
        cluster.round(h, alive)
        assert sum(cluster.reserved().values()) <= 45
    assert cluster.reserved() == {"a": 15, "c": 15, "d": 15}


def test_a_host_publishes_the_share_it_may_use_into_a_table_that_lost_it(cluster: Cluster) -> None:
    cluster.round("a", {"a", "b"}, wall=AT - 20)
    assert cluster.budgets["a"].orders(AT).per_10s == 22
    cluster.db.execute("DELETE FROM order_counts")  # a database restored from before the hosts shared

    def check(params: dict[str, Any]) -> None:  # read by the others before a's new share is written
        assert cluster.reserved()["a"] == 22

    cluster.round("a", {"a", "b", "c"}, before_confirm=check)
    assert cluster.reserved() == {"a": 15}


def test_a_dead_hosts_orders_count_all_day(cluster: Cluster) -> None:
    hosts = ["a", "b", "c"]
    place(cluster.budget("c"), 1000)
    for h in hosts:
        cluster.round(h, hosts)
    for h in ("a", "b"):  # c is seen no more
        cluster.round(h, {"a", "b"})
    a = cluster.budgets["a"].orders(AT + 10)
    assert (a.hosts, a.per_day) == (2, (150_000 - 1000) // 2)


def test_a_host_whose_file_was_made_afresh_takes_back_its_count_of_the_day(cluster: Cluster) -> None:
    place(cluster.budget("a"), 300)
    cluster.round("a", {"a"})
    cluster.budgets["a"] = budget.LocalBudget()  # the runtime directory emptied: the file starts from nothing
    counts = cluster.round("a", {"a"})
    assert counts.orders_day == 300 and counts.per_day == 150_000


def test_with_the_database_gone_a_host_keeps_its_share_and_a_new_one_gets_none(cluster: Cluster) -> None:
    cluster.round("a", {"a", "b"})
    had = cluster.budgets["a"].orders(AT + 10)
    assert had.per_10s == 22
    cluster.round("c", {"a", "b", "c"})  # c's connection made
    cluster.budgets["c"] = budget.LocalBudget()  # c as new: never shared
    for conn in cluster.conns.values():
        conn.close()  # every statement now fails
    assert cluster.round("a", {"a", "b", "c"}, wall=AT + 10) == had
    counts = cluster.round("c", {"a", "b", "c"}, wall=AT + 10)
    assert (counts.hosts, counts.per_10s, counts.per_day) == (3, 0, 0)
    with pytest.raises(budget.Refused):
        cluster.budgets["c"].acquire(1, "order", AT + 10)


def test_a_raise_confirmed_again_every_round_is_not_pushed_back() -> None:
    """The keeper confirms its share every round (every renew_seconds, less than a window): a raise
    must come in its window all the same, not be re-scheduled a window later each time."""
    b = budget.LocalBudget()
    b.hold_orders(2, MINUTE + 1.0)
    for second in range(1, 30):
        b.set_order_share(OrderShare(2, 22, 75_000, DAY), confirmed=True, wall=MINUTE + second)
    assert b.orders(MINUTE + 30.0).per_10s == 22
    b.acquire(1, "order", MINUTE + 30.0)


# --- a host alone: its raise at once ------------------------------------------------------------


def test_a_host_alone_has_its_share_in_force_in_this_window(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    cluster.budget("a")  # it holds a lease: its own do not matter
    with caplog.at_level(logging.INFO, logger="naived.store.order_counts"):
        counts = cluster.round("a", {"a"})  # no other host ever: its first round
        assert (counts.per_10s, counts.per_10s_most) == (45, 45)
        cluster.round("a", {"a"})
    assert [r.getMessage() for r in caplog.records if "at once" in r.getMessage()] == [
        "order share a: 45 orders per 10 s (45 in force at once: no other host held a lease in the last 11s), "
        "150000 today (0 placed), among 1 hosts"]  # once
    assert cluster.reserved() == {"a": 45}


def test_hosts_whose_leases_ended_long_ago_or_never_were_leave_a_host_alone(cluster: Cluster) -> None:
    cluster.leased("b", 10 + budget.RAISE_GUARD_SECONDS + 1)  # its last lease ended 12 s ago: gone
    cluster.leased("c", None)  # alive, never held a lease: it placed no order
    counts = cluster.round("a", {"a", "c"})
    assert (counts.per_10s, counts.per_10s_most) == (22, 22)


@pytest.mark.parametrize("other", ["live lease", "live lease of an earlier naive", "lease ended 3 s ago",
                                   "lease ended 10.5 s ago"])
def test_a_host_that_held_a_lease_lately_makes_a_raise_wait_for_the_next_window(cluster: Cluster, other: str) -> None:
    """2 hosts at 22 each, b dies: a's raise to 45 waits for the next window, since b may have
    placed its 22 in this one (its lease ended at most 10 s + the guard ago)."""
    for h in ("a", "b"):
        cluster.round(h, {"a", "b"}, wall=AT - 20)
    assert cluster.budgets["a"].orders(AT).per_10s == 22
    if other == "live lease":
        cluster.leased("b", None)
        assert Leases(cluster.db).acquire("XRPUSDT", "b", 60) is not None
        assert in_window(cluster, "a", 0) == 22
    elif other == "live lease of an earlier naive":  # it sets no leased_until; its lease is there all the same
        cluster.leased("b", None)
        cluster.db.execute("INSERT INTO leases VALUES ('XRPUSDT', 'b', 1, now(), now() + interval '1 minute')")
        assert in_window(cluster, "a", 0) == 22
    elif other == "lease ended 3 s ago":
        assert in_window(cluster, "a", 3.0) == 22
    else:  # within the guard: the database's clock may be behind a's by up to the guard
        for _ in range(5):  # a's round within 0.4 s of the lease's end being set, or the test says nothing
            cluster.budgets["a"] = budget.LocalBudget()
            cluster.round("a", {"a", "b"}, wall=AT - 20)
            started = time.monotonic()
            now = in_window(cluster, "a", 10.5)
            if time.monotonic() - started < 0.4:
                assert now == 22
                break
        else:
            pytest.skip("the database too slow to answer within 0.4 s: the guard's edge untested")
    assert (cluster.budgets["a"].orders(AT).per_10s_most, cluster.budgets["a"].orders(AT + 10).per_10s) == (45, 45)


def in_window(cluster: Cluster, host: str, other_ago: float) -> int:
    """b's last lease ended `other_ago` s ago (0: b's live lease stays); then `host`'s round, alone
    among the alive hosts: its share in force in this window after it."""
    if other_ago:
        cluster.leased("b", other_ago)
    return cluster.round(host, {host}).per_10s


def observe(cluster: Cluster, wall: float, most: dict[int, dict[str, int]]) -> None:
    """Each host's share in force at `wall`, the most seen in its window kept in `most`."""
    seen = most.setdefault(int(wall) // 10, {})
    for h, b in cluster.budgets.items():
        seen[h] = max(seen.get(h, 0), b.orders(wall).per_10s)


@pytest.mark.parametrize("b_trading", [True, False], ids=["b took a lease", "b holds none"])
@pytest.mark.parametrize("race", ["b's round in a's", "a's round in b's", "b's round after a's"])
def test_a_host_joining_a_host_alone_never_makes_a_window_pass_the_limit(cluster: Cluster, race: str,
                                                                          b_trading: bool) -> None:
    """a, alone, takes its 45 at once; b joins around a's round (its publish and confirm before
    a's confirm, its confirm after a's, or its round after): the most each host has in force in a
    window adds up to at most 45 in every window, while both keep going in rounds."""
    cluster.budget("a")  # a trades: its leases were taken before its rounds
    most: dict[int, dict[str, int]] = {}

    def round_of(h: str, alive: set[str], wall: float, meanwhile: Callable[[], None] | None = None) -> None:
        if h == "b":
            cluster.budget("b", trading=b_trading)

        def hook(params: dict[str, Any]) -> None:
            observe(cluster, wall, most)
            if meanwhile is not None:
                meanwhile()
                observe(cluster, wall, most)

        cluster.round(h, alive, wall=wall, before_confirm=hook)
        observe(cluster, wall, most)

    both = {"a", "b"}
    if race == "b's round in a's":
        round_of("a", {"a"}, AT, lambda: round_of("b", both, AT))
    elif race == "a's round in b's":
        round_of("b", both, AT, lambda: round_of("a", {"a"}, AT))
    else:
        round_of("a", {"a"}, AT)
        round_of("b", both, AT)
    for wall in (AT + 10, AT + 20):
        observe(cluster, wall, most)  # the window has come before either keeper's next round
        for h in ("b", "a", "b", "a"):
            round_of(h, both, wall)
            assert sum(cluster.reserved().values()) <= 45
    assert {w: sum(hosts.values()) for w, hosts in most.items() if sum(hosts.values()) > 45} == {}
    assert [cluster.budgets[h].orders(AT + 30).per_10s for h in "ab"] == [22, 22]

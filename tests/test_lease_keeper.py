"""The lease keeper (naived/tree/lease_keeper.py) against a real PostgreSQL.

Its rounds: three hosts share the trading set by placement, each symbol held by one; a host that
stops renewing loses its symbols to the others once the leases expire by the database's clock,
never before. Its process (`run`, forked as the root forks its children, reporting to a REP socket
that stands in for the root's workers endpoint): what it reports, the poke, a database that goes
away or never answers, a root that does not take a report, SIGTERM."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import zmq
from harness import wait_for
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from naived.core.config import Config, Paths, StoreSettings
from naived.core.messages import Ack, HeldLease, LeasesHeld, encode, worker_report_decoder
from naived.core.placement import place
from naived.exchange.budget import LocalBudget
from naived.store import pgschema, postgres
from naived.store.leases import Lease, Leases
from naived.store.pgschema import Conn
from naived.store.postgres import PgTradingSet, connect
from naived.tree import lease_keeper
from naived.tree.ipc import bind, close_bound
from naived.tree.lease_keeper import Keeper
from naived.tree.process import fork_child, read_words

WANTED = {f"S{i:02d}USDT": "running" for i in range(24)}
TTL, MARGIN = 2.0, 0.5


@pytest.fixture
def connections(pg_dsn: str) -> Iterator[Callable[[], Conn]]:
    opened: list[Conn] = []

    def another() -> Conn:
        opened.append(connect(pg_dsn))
        if len(opened) == 1:
            pgschema.migrate(opened[0])
        return opened[-1]

    yield another
    for conn in opened:
        conn.close()


def keepers(connections: Callable[[], Conn], names: list[str], orders: bool = False) -> dict[str, Keeper]:
    """A keeper per host; with `orders`, each sharing the account's order limits through a budget of its own."""
    return {name: Keeper(Leases(connections()), name, 100 + i, TTL, MARGIN, LocalBudget() if orders else None)
            for i, name in enumerate(names)}


DOUBLES: list[str] = []  # symbols two hosts reported at once (checked after each test: wait_for retries asserts)


@pytest.fixture(autouse=True)
def one_holder_each() -> Iterator[None]:
    DOUBLES.clear()
    yield
    assert DOUBLES == []


def holders(keepers: dict[str, Keeper]) -> dict[str, str]:
    """symbol -> host, from each keeper's round; a symbol two hosts report is noted in DOUBLES."""
    seen: dict[str, str] = {}
    for name, keeper in keepers.items():
        for held in keeper.round(WANTED).held:
            if held.symbol in seen:
                DOUBLES.append(f"{held.symbol} held by {seen[held.symbol]} and {name}")
            seen[held.symbol] = name
    return seen


def test_hosts_share_the_symbols_by_placement_one_holder_each(connections: Callable[[], Conn]) -> None:
    hosts = keepers(connections, ["h1", "h2", "h3"])
    held = wait_for("every symbol held", lambda: h if len(h := holders(hosts)) == len(WANTED) else None, timeout=10)
    assert held == {s: place(s, {"h1", "h2", "h3"}) for s in WANTED}
    report = hosts["h1"].round(WANTED)
    now = time.monotonic()
    assert all(now < h.deadline <= now + TTL - MARGIN for h in report.held)
    assert report.alive == ["h1", "h2", "h3"]


def test_a_silent_host_loses_its_symbols_after_its_leases_expire_not_before(connections: Callable[[], Conn]) -> None:
    hosts = keepers(connections, ["h1", "h2", "h3"])
    wait_for("every symbol held", lambda: len(holders(hosts)) == len(WANTED), timeout=10)
    lost = {h.symbol: h for h in hosts["h3"].round(WANTED).held}
    assert lost
    silent_since = time.monotonic()
    survivors = {k: v for k, v in hosts.items() if k != "h3"}  # h3 frozen: no more rounds

    early: list[str] = []  # h3's symbols taken while h3 may still trade them (before its deadlines)

    def adopted() -> dict[str, str] | None:
        held = holders(survivors)
        early.extend(s for s in lost if s in held and time.monotonic() <= lost[s].deadline)
        return held if len(held) == len(WANTED) else None

    held = wait_for("h3's symbols adopted", adopted, timeout=TTL * 4)
    assert early == []
    assert time.monotonic() - silent_since >= TTL - MARGIN
    assert held == {s: place(s, {"h1", "h2"}) for s in WANTED}


def test_a_host_that_joins_gets_its_share_in_an_orderly_hand_off(connections: Callable[[], Conn]) -> None:
    hosts = keepers(connections, ["h1", "h2"])
    wait_for("every symbol held by two hosts", lambda: len(holders(hosts)) == len(WANTED), timeout=10)
    hosts.update(keepers(connections, ["h3"]))
    hosts["h3"].leases.heartbeat("h3")
    final = {s: place(s, {"h1", "h2", "h3"}) for s in WANTED}
    wait_for("h3's share handed over", lambda: holders(hosts) == final, timeout=TTL * 5)


def test_a_restarted_keeper_takes_its_own_leases_again_with_new_tokens(connections: Callable[[], Conn]) -> None:
    hosts = keepers(connections, ["h1"])
    before = {h.symbol: h.token for h in hosts["h1"].round(WANTED).held}
    assert set(before) == set(WANTED)
    again = Keeper(Leases(connections()), "h1", 999, TTL, MARGIN)  # the keeper process restarted
    after = {h.symbol: h.token for h in again.round(WANTED).held}
    assert set(after) == set(WANTED) and all(after[s] > before[s] for s in WANTED)


def test_each_lease_is_reported_with_the_start_requests_of_its_symbol(connections: Callable[[], Conn]) -> None:
    """The control requests as one host takes them: a start of a symbol in the set answers "already
    trading" but draws a new generation (its holder starts it afresh if it failed); a stop and a
    start between two rounds leave the row, and the lease, in place, under a new run."""
    trading = PgTradingSet(connections())
    keeper = Keeper(Leases(connections()), "h1", 100, TTL, MARGIN)

    def btc() -> HeldLease:
        trading.reload()
        done = keeper.round(trading.modes, trading.starts)
        assert done.trading == sorted(trading.modes)
        return next(h for h in done.held if h.symbol == "BTCUSDT")

    assert trading.request("BTCUSDT", "running") is True
    first = btc()
    assert first.run == first.generation > 0
    assert trading.request("BTCUSDT", "running") is False  # already trading
    asked = btc()
    assert (asked.token, asked.run) == (first.token, first.run) and asked.generation > first.generation
    assert trading.request("BTCUSDT", None) is True and trading.request("BTCUSDT", "running") is True
    again = btc()
    assert again.token == first.token and again.run == again.generation > asked.generation
    assert trading.request("BTCUSDT", "shutting-down") is True
    assert trading.request("BTCUSDT", "running") is False  # a start never undoes a shutdown under way
    last = btc()
    assert last.mode == "shutting-down" and last.run == again.run and last.generation > again.generation
    assert trading.request("BTCUSDT", None) is True
    trading.reload()
    assert keeper.round(trading.modes, trading.starts).trading == []


def leased_until(conn: Conn, host: str) -> dt.datetime | None:
    row = conn.execute("SELECT leased_until FROM hosts WHERE host_id = %s", (host,)).fetchone()
    assert row is not None
    return row[0]


def expiry(conn: Conn, symbol: str) -> dt.datetime:
    row = conn.execute("SELECT expires_at FROM leases WHERE symbol = %s", (symbol,)).fetchone()
    assert row is not None
    return row[0]


def test_a_grant_or_a_renewal_pushes_the_hosts_leased_until_and_a_refusal_does_not(
        connections: Callable[[], Conn]) -> None:
    leases = Leases(connections())
    for i, host in enumerate(["h1", "h2"]):
        leases.register_host(host, 100 + i)
    assert leased_until(leases.conn, "h1") is None  # never held a lease
    long = leases.acquire("S1", "h1", 30)
    assert long is not None and leased_until(leases.conn, "h1") == long.expires_at
    assert leases.acquire("S1", "h2", 600) is None and leased_until(leases.conn, "h2") is None  # refused
    short = leases.acquire("S2", "h1", 1)
    assert short is not None and leased_until(leases.conn, "h1") == long.expires_at  # never taken back
    assert leases.renew(long, 60) and leased_until(leases.conn, "h1") == expiry(leases.conn, "S1") > long.expires_at
    pushed = leased_until(leases.conn, "h1")
    stale = Lease("S1", "h1", long.token - 1, 600, long.expires_at)  # an older token: refused
    forged = Lease("S1", "h2", long.token, 600, long.expires_at)  # another holder: refused
    assert not leases.renew(stale, 600) and not leases.renew(forged, 600)
    assert (leased_until(leases.conn, "h1"), leased_until(leases.conn, "h2")) == (pushed, None)
    brief = leases.acquire("S3", "h2", 0.2)
    assert brief is not None and leased_until(leases.conn, "h2") == brief.expires_at
    wait_for("S3's lease to expire", lambda: expiry(leases.conn, "S3") < leases.conn.execute("SELECT now()").fetchone()[0],
             timeout=5)
    assert not leases.renew(brief, 600) and leased_until(leases.conn, "h2") == brief.expires_at  # expired: refused


def test_the_migration_takes_leased_until_from_the_leases_held_then(
        pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = connect(pg_dsn)
    try:
        with monkeypatch.context() as before:
            # a database of the naive before hosts.leased_until
            before.setattr(pgschema, "MIGRATIONS", {k: v for k, v in pgschema.MIGRATIONS.items() if k <= 3})
            before.setattr(pgschema, "LATEST", 3)
            pgschema.migrate(conn)
        leases = Leases(conn)
        for i, host in enumerate(["h1", "h2", "h3"]):
            leases.register_host(host, i)
        conn.execute("INSERT INTO leases VALUES ('S1', 'h1', 1, now(), now() + interval '30 s'), "
                     "('S2', 'h1', 2, now(), now() + interval '60 s'), ('S3', 'h2', 3, now(), now() - interval '5 s')")
        assert pgschema.migrate(conn) == (3, pgschema.LATEST)
        assert [leased_until(conn, h) for h in ("h1", "h2", "h3")] == [
            expiry(conn, "S2"), expiry(conn, "S3"), None]  # the latest of each; h3 never held one
    finally:
        conn.close()


def test_a_lone_keepers_order_share_is_in_force_in_its_first_round(connections: Callable[[], Conn]) -> None:
    hosts = keepers(connections, ["h1"], orders=True)
    assert {h.symbol for h in hosts["h1"].round(WANTED).held} == set(WANTED)
    hosts.update(keepers(connections, ["h2"], orders=True))  # registered: seen now
    h1, h2 = (k.orders for k in hosts.values())
    assert isinstance(h1, LocalBudget) and isinstance(h2, LocalBudget)
    assert (h1.orders().per_10s, h1.orders().per_10s_most) == (45, 45)  # the leases it took are its own
    before = time.time()
    hosts["h2"].round(WANTED)  # h2 joins: h1 holds leases, so h2 is not alone; 45 - 45 left
    assert h2.orders(before).per_10s_most == 0
    hosts["h1"].round(WANTED)  # a cut: at once
    assert h1.orders().per_10s == 22
    before = time.time()
    hosts["h2"].round(WANTED)
    assert (h2.orders(before).per_10s, h2.orders(before).per_10s_most) == (0, 22)  # from the next window


def test_when_one_of_two_keepers_dies_the_survivors_raise_waits_for_the_next_window(
        connections: Callable[[], Conn]) -> None:
    """The dead host may have placed its 22 in the current window: its lease ended less than 10 s +
    the guard ago when the survivor stops counting it alive (lease_seconds after its last round)."""
    hosts = keepers(connections, ["h1", "h2"], orders=True)
    h1 = hosts["h1"].orders
    assert isinstance(h1, LocalBudget)

    def settled() -> bool:
        holders(hosts)
        return all(isinstance(k.orders, LocalBudget) and k.orders.orders().per_10s == 22 for k in hosts.values())

    wait_for("both hosts trading at 22 orders per 10 s", settled, timeout=TTL * 10)
    del hosts["h2"]  # dies: no more rounds

    def raised() -> tuple[int, int] | None:
        before = time.time()
        hosts["h1"].round(WANTED)
        counts = h1.orders(before)
        return (counts.per_10s, counts.per_10s_most) if counts.per_10s_most == 45 else None

    assert wait_for("h1 to take h2's share", raised, timeout=TTL * 4) == (22, 45)


# --- the process ----------------------------------------------------------------------------------


class KeeperChild:
    """A forked `lease_keeper.run`, and the REP socket it reports to (answered as the root does)."""

    def __init__(self, config: Config, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.config = config
        self.host = config.store.resolved_host_id()
        self.ctx = ctx
        self.rep = bind(ctx, zmq.REP, config.workers_endpoint)
        self.pid, self.words_fd = fork_child(f"lease-keeper {self.host}", lambda: lease_keeper.run(config),
                                             new_process_group=True, supervises=True, keep_fds=())
        self.status: int | None = None
        self.words: str | None = None

    def last_words(self) -> str:
        """What it said before it exited (its supervisor's read); once it has exited."""
        if self.words is None:
            self.words = read_words(self.words_fd)
        return self.words

    def next_report(self, timeout: float, ack: bool = True) -> LeasesHeld:
        if not self.rep.poll(int(timeout * 1000)):
            raise AssertionError(f"no report from the keeper within {timeout}s")
        report = worker_report_decoder.decode(self.rep.recv())
        assert isinstance(report, LeasesHeld)
        if ack:
            self.rep.send(encode(Ack()))  # what the root's on_worker_reports answers
        return report

    def rebind(self) -> None:
        """The root restarting: its socket gone (with a report not answered), then a new one."""
        close_bound(self.rep, self.config.workers_endpoint)
        self.rep = bind(self.ctx, zmq.REP, self.config.workers_endpoint)

    def exited(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def stop(self) -> None:
        if self.exited() is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.status = -signal.SIGKILL
        self.last_words()
        self.rep.close()


@pytest.fixture
def trading(pg_dsn: str) -> Iterator[PgTradingSet]:
    conn = connect(pg_dsn)
    pgschema.migrate(conn)
    yield PgTradingSet(conn)
    conn.close()


@pytest.fixture
def keeper_process(pg_dsn: str, short_tmp: Path) -> Iterator[Callable[..., KeeperChild]]:
    ctx = zmq.Context()
    children: list[KeeperChild] = []

    def start(renew: float, lease: float, margin: float, dsn: str = pg_dsn) -> KeeperChild:
        store = StoreSettings(backend="postgresql", dsn=dsn, host_id=f"h-{secrets.token_hex(4)}", lease_seconds=lease,
                              renew_seconds=renew, stop_margin_seconds=margin)
        config = Config(paths=Paths(runtime_dir=str(short_tmp), state_dir=str(short_tmp / "state")), store=store)
        children.append(KeeperChild(config, ctx))
        return children[-1]

    yield start
    for child in children:
        child.stop()
    ctx.term()


LONG = {"renew": 30.0, "lease": 70.0, "margin": 3.0}  # no round on its own schedule within a test


def test_the_keeper_process_reports_its_leases_and_a_poke_runs_a_round_at_once(
        trading: PgTradingSet, keeper_process: Callable[..., KeeperChild]) -> None:
    trading.set("BTCUSDT", "running")
    keeper = keeper_process(**LONG)
    first = keeper.next_report(timeout=10)
    now = time.monotonic()
    assert first.error is None and first.trading == ["BTCUSDT"]
    (btc,) = first.held
    assert btc.symbol == "BTCUSDT" and btc.token > 0 and btc.mode == "running"
    assert now < btc.deadline <= now + LONG["lease"] - LONG["margin"]
    assert [(h.host_id, h.pid) for h in first.hosts] == [(keeper.host, os.getpid())]  # the root's pid: its parent's
    # the cluster as status shows it: with what this very round took
    assert [(h.symbol, h.holder, h.token) for h in first.leases] == [("BTCUSDT", keeper.host, btc.token)]

    trading.set("ETHUSDT", "shutting-down")  # what start-trading on any host does, then the root's poke
    poked = time.monotonic()
    os.kill(keeper.pid, signal.SIGUSR1)
    second = keeper.next_report(timeout=2)  # on its own, the next round would come 30 s after the first
    assert time.monotonic() - poked < 2
    assert [(h.symbol, h.mode) for h in second.held] == [("BTCUSDT", "running"), ("ETHUSDT", "shutting-down")]
    assert second.held[0].token == btc.token and second.held[0].deadline > btc.deadline  # renewed, not re-taken
    assert [(h.symbol, h.holder, h.token) for h in second.leases] == [
        ("BTCUSDT", keeper.host, btc.token), ("ETHUSDT", keeper.host, second.held[1].token)]
    assert not keeper.rep.poll(500)  # one poke, one round (the poke was consumed)


def test_sigterm_ends_the_keeper_process_at_once_with_0_and_leaves_its_leases_to_expire(
        trading: PgTradingSet, keeper_process: Callable[..., KeeperChild]) -> None:
    trading.set("BTCUSDT", "running")
    keeper = keeper_process(**LONG)
    (btc,) = keeper.next_report(timeout=10).held
    os.kill(keeper.pid, signal.SIGTERM)
    wait_for("the keeper's exit", lambda: keeper.exited() is not None, timeout=2)
    assert (keeper.exited(), keeper.last_words()) == (0, "")
    row = trading.conn.execute("SELECT holder, token, expires_at > now() FROM leases WHERE symbol = 'BTCUSDT'").fetchone()
    assert row == (keeper.host, btc.token, True)  # not released: the root stops the symbol, the lease expires


def test_a_lost_database_is_reported_with_the_old_deadlines_then_the_keeper_reconnects(
        pg_dsn: str, trading: PgTradingSet, keeper_process: Callable[..., KeeperChild]) -> None:
    trading.set("BTCUSDT", "running")
    trading.set("ETHUSDT", "running")
    keeper = keeper_process(**LONG)
    first = keeper.next_report(timeout=10)
    assert [h.symbol for h in first.held] == ["BTCUSDT", "ETHUSDT"]

    row = trading.conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                               "WHERE application_name = %s", (f"naived lease-keeper {keeper.host}",)).fetchone()
    assert row == (True,)
    os.kill(keeper.pid, signal.SIGUSR1)
    failed = keeper.next_report(timeout=5)
    assert failed.error is not None and "\n" not in failed.error
    assert str(conninfo_to_dict(pg_dsn)["password"]) not in failed.error
    assert failed.held == first.held  # the same tokens and deadlines: never extended without the database
    assert (failed.hosts, failed.leases) == ([], [])

    os.kill(keeper.pid, signal.SIGUSR1)
    again = keeper.next_report(timeout=5)
    assert again.error is None
    assert [(h.symbol, h.token) for h in again.held] == [(h.symbol, h.token) for h in first.held]
    assert all(new.deadline > old.deadline for new, old in zip(again.held, first.held, strict=True))


def test_a_database_that_never_answers_fails_the_round_within_its_time_and_hides_the_password(
        keeper_process: Callable[..., KeeperChild]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the kernel does), never answers
        dsn = make_conninfo(host="127.0.0.1", port=str(silent.getsockname()[1]), dbname="naive", user="naive",
                            password="hunter2-not-shown")
        started = time.monotonic()
        keeper = keeper_process(renew=2.0, lease=6.0, margin=1.0, dsn=dsn)
        failed = keeper.next_report(timeout=6)
        assert time.monotonic() - started < 6
    assert failed.held == [] and failed.error is not None
    assert "cannot connect" in failed.error and "hunter2" not in failed.error


def test_a_report_the_root_does_not_take_is_dropped_and_the_keeper_goes_on(
        trading: PgTradingSet, keeper_process: Callable[..., KeeperChild]) -> None:
    trading.set("BTCUSDT", "running")
    keeper = keeper_process(renew=2.0, lease=6.0, margin=1.0)
    (btc,) = keeper.next_report(timeout=10, ack=False).held
    keeper.rebind()  # the root restarted without answering
    later = keeper.next_report(timeout=8)  # the report timeout (renew: 2 s), then the next round
    assert later.error is None and keeper.exited() is None
    assert [(h.symbol, h.token) for h in later.held] == [("BTCUSDT", btc.token)]


def test_a_host_frozen_inside_a_fenced_write_holds_up_no_one(connections: Callable[[], Conn]) -> None:
    """A host frozen (SIGSTOP, a paused VM) in the middle of a fenced write holds the lease row's
    lock: the adopter's round must not wait on it (it takes that symbol a round after the lock
    goes) and the rest of its round goes on."""
    old = Keeper(Leases(connections()), "old", 1, TTL, MARGIN)
    old.round({"XRPUSDT": "running"})
    frozen = connections()  # the old host's leader, mid-write: the fence's lock, then nothing
    frozen.execute("SET idle_in_transaction_session_timeout = 0")  # here the test ends it, not the server
    frozen.execute("BEGIN")
    frozen.execute("SELECT 1 FROM leases WHERE symbol = 'XRPUSDT' FOR SHARE")
    adopter_conn = connections()
    adopter_conn.execute(f"SET lock_timeout = {int(lease_keeper.LOCK_WAIT_SECONDS * 1000)}".encode())
    adopter = Keeper(Leases(adopter_conn), "new", 2, TTL, MARGIN)
    wanted = {"XRPUSDT": "running", "BTCUSDT": "running"}
    Leases(connections()).conn.execute("UPDATE hosts SET last_seen = now() - interval '1 hour' WHERE host_id = 'old'")
    wait_for("the old lease to expire", lambda: all(h.expires_in_seconds <= 0 for h in adopter.leases.holders()), 10)
    started = time.monotonic()
    first = adopter.round(wanted)
    assert time.monotonic() - started < 2 * lease_keeper.LOCK_WAIT_SECONDS + 1
    assert [h.symbol for h in first.held] == ["BTCUSDT"]  # the rest of the round went on
    frozen.execute("ROLLBACK")  # the session ends (below: the server does it by itself)
    assert {h.symbol for h in adopter.round(wanted).held} == set(wanted)


def test_the_server_ends_a_session_left_idle_inside_a_transaction(connections: Callable[[], Conn]) -> None:
    """naive never waits between a transaction's statements: a session idle inside one belongs to a
    frozen or cut-off process, and the server ends it, releasing its locks."""
    frozen, observer = connections(), connections()
    frozen.execute("BEGIN")
    frozen.execute("SELECT 1")
    ended = time.monotonic()

    def gone() -> bool:
        row = observer.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (frozen.info.backend_pid,)).fetchone()
        return row == (0,)

    wait_for("the server to end the idle session", gone, postgres.IDLE_IN_TRANSACTION_SECONDS + 5, 0.1)
    assert time.monotonic() - ended >= postgres.IDLE_IN_TRANSACTION_SECONDS - 0.2
    with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
        frozen.execute("SELECT 1")  # what it wrote in that transaction never commits

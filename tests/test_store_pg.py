"""The PostgreSQL store's own guarantees, on a real server (tests/pg.py): the schema migrated by
naive itself, hosts' leases with tokens that only grow and expiries by the database's clock, every
write fenced by the lease, the shared trading set and prefix registry, and a DSN's password never
shown. The SymbolStore contract itself is tests/test_store.py's, on both backends."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from harness import wait_for

from naived.core.messages import CycleResult, Settings, TraderState
from naived.store import pgschema
from naived.store.leases import Lease, Leases
from naived.store.pgschema import Conn
from naived.store.postgres import (
    ConnectError,
    DsnError,
    Fenced,
    PgStore,
    PgTradingSet,
    connect,
    record_prefix,
    recorded_prefixes,
    redact,
)

SETTINGS = Settings("XRPUSDT", 1, "100", "0", "0.001", "0.01", "0.0001", "1", "1", "5", "XRP", "USDT")
RESULT = CycleResult("40", "19.8", "39", "19.3596", {"USDT": "0.0193596"}, "0.0391596", "0.01591608", "0.96", "0.47567568")


@pytest.fixture
def db(pg_db: Conn) -> Conn:
    return pg_db


@pytest.fixture
def hosts(pg_dsn: str) -> Iterator[Callable[[], Conn]]:
    """More connections to the same schema: one per host (or per concurrent transaction)."""
    opened: list[Conn] = []

    def another() -> Conn:
        opened.append(connect(pg_dsn))
        return opened[-1]

    yield another
    for conn in opened:
        conn.close()


def taken(leases: Leases, symbol: str, host: str, ttl: float, within: float = 10) -> Lease:
    """The lease, taken as soon as it is free (the database's clock says when)."""
    return wait_for(f"{host} to take {symbol}'s lease", lambda: leases.acquire(symbol, host, ttl), timeout=within)


# --- the schema ------------------------------------------------------------------------------------


def test_a_fresh_database_is_migrated_to_the_latest_version_and_again_is_a_no_op(pg_dsn: str) -> None:
    conn = connect(pg_dsn)
    assert pgschema.version(conn) == 0
    with pytest.raises(pgschema.SchemaError, match="older than"):
        PgStore(conn, "XRPUSDT", None)  # never used unmigrated
    assert pgschema.migrate(conn) == (0, pgschema.LATEST)
    assert pgschema.version(conn) == pgschema.LATEST
    assert pgschema.migrate(conn) == (pgschema.LATEST, pgschema.LATEST)
    rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert [v for (v,) in rows] == sorted(pgschema.MIGRATIONS)
    tables = {t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    assert tables == {"schema_version", "hosts", "leases", "traders", "cycles", "meta", "id_prefixes", "trading",
                      "order_counts", "order_share_epoch"}
    PgStore(conn, "XRPUSDT", None).close()


def test_hosts_migrating_together_apply_each_step_once(pg_dsn: str, hosts: Callable[[], Conn]) -> None:
    conns = [hosts() for _ in range(4)]
    start = threading.Barrier(len(conns))
    results: list[tuple[int, int] | BaseException] = []

    def run(conn: Conn) -> None:
        start.wait()
        try:
            results.append(pgschema.migrate(conn))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results, key=str) == [(0, pgschema.LATEST)] + [(pgschema.LATEST, pgschema.LATEST)] * 3
    assert pgschema.version(conns[0]) == pgschema.LATEST


def test_a_step_numbered_below_the_last_one_applied_is_applied_when_it_comes(
        db: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two branches that each added a step, merged: a database migrated by the one with the higher
    number gets the other's step at its next migration, and is not current until then. (Played with
    step 1 taken out of the record and standing for the step merged late.)"""
    db.execute("DELETE FROM schema_version WHERE version = 1")
    monkeypatch.setitem(pgschema.MIGRATIONS, 1, "CREATE TABLE merged_step (x integer);")
    assert not pgschema.current(db) and pgschema.version(db) == pgschema.LATEST
    with pytest.raises(pgschema.SchemaError, match="without step 1 of this naive's"):
        PgStore(db, "XRPUSDT", None)
    assert pgschema.migrate(db) == (pgschema.LATEST, pgschema.LATEST)
    assert pgschema.current(db) and db.execute("SELECT to_regclass('merged_step') IS NOT NULL").fetchone() == (True,)
    PgStore(db, "XRPUSDT", None).close()


def test_a_database_of_a_newer_naive_is_refused_untouched(db: Conn) -> None:
    db.execute("INSERT INTO schema_version (version) VALUES (%s)", (pgschema.LATEST + 1,))
    with pytest.raises(pgschema.SchemaError, match="newer than this naive"):
        pgschema.migrate(db)
    with pytest.raises(pgschema.SchemaError, match="newer than"):
        PgStore(db, "XRPUSDT", None)
    assert pgschema.version(db) == pgschema.LATEST + 1


# --- hosts and leases ---------------------------------------------------------------------------


def test_tokens_only_grow_and_a_live_lease_is_nobody_elses(db: Conn, hosts: Callable[[], Conn]) -> None:
    a, b = Leases(db), Leases(hosts())
    a.register_host("host-a", 101)
    b.register_host("host-b", 202)
    first = a.acquire("XRPUSDT", "host-a", 30)
    assert first is not None and first.holder == "host-a"
    assert b.acquire("XRPUSDT", "host-b", 30) is None  # held and live
    again = a.acquire("XRPUSDT", "host-a", 30)  # a restarted leader re-takes its own: a new token
    other = b.acquire("BTCUSDT", "host-b", 30)
    assert again is not None and other is not None
    assert first.token < again.token < other.token  # one sequence for every symbol and host
    assert not a.renew(first, 30) and a.renew(again, 30)  # the old token is dead, even for its own host
    assert [(h.symbol, h.holder, h.token) for h in a.holders()] == [
        ("BTCUSDT", "host-b", other.token), ("XRPUSDT", "host-a", again.token)]
    assert all(0 <= h.age_seconds < 5 and 25 < h.expires_in_seconds <= 30 for h in a.holders())
    assert [(h.host_id, h.pid) for h in b.hosts()] == [("host-a", 101), ("host-b", 202)]
    assert a.heartbeat("host-a") and not a.heartbeat("host-z")
    assert not a.release(first)  # an old token cannot free the lease its successor holds
    assert a.release(again) and not a.release(again)
    freed = b.acquire("XRPUSDT", "host-b", 30)  # released: free at once
    assert freed is not None and freed.token > other.token
    # Two acquisitions by one host racing: the one that drew the smaller token commits last. As if
    # the later one had committed first, the row's token is raised: the smaller one must not replace it.
    db.execute("UPDATE leases SET token = token + 1000 WHERE symbol = 'XRPUSDT'")
    assert b.acquire("XRPUSDT", "host-b", 30) is None
    assert [h.token for h in a.holders() if h.symbol == "XRPUSDT"] == [freed.token + 1000]


def test_an_expired_lease_goes_to_another_host_with_a_bigger_token(db: Conn, hosts: Callable[[], Conn]) -> None:
    a, b = Leases(db), Leases(hosts())
    mine = a.acquire("XRPUSDT", "host-a", 0.5)
    assert mine is not None
    t0 = time.monotonic()
    theirs = taken(b, "XRPUSDT", "host-b", 30)
    assert time.monotonic() - t0 > 0.3  # not before the expiry (the database's now() passed it)
    assert theirs.token > mine.token
    assert not a.renew(mine, 30)  # taken over: the old holder cannot renew
    assert a.acquire("XRPUSDT", "host-a", 30) is None
    assert [(h.holder, h.token) for h in a.holders()] == [("host-b", theirs.token)]


def test_a_renewed_lease_outlives_its_first_expiry(db: Conn, hosts: Callable[[], Conn]) -> None:
    a, b = Leases(db), Leases(hosts())
    mine = a.acquire("XRPUSDT", "host-a", 1)
    assert mine is not None and a.renew(mine, 30)
    # past the first expiry (the database's clock), the lease is still held
    wait_for("the first ttl to pass", lambda: b.holders()[0].age_seconds > 1.2, timeout=10)
    assert b.acquire("XRPUSDT", "host-b", 30) is None and a.renew(mine, 30)


# --- fencing ------------------------------------------------------------------------------------


def symbol_rows(conn: Conn, symbol: str) -> dict[str, list[tuple[object, ...]]]:
    return {table: conn.execute(f"SELECT * FROM {table} WHERE symbol = %s ORDER BY 2".encode(), (symbol,)).fetchall()
            for table in ("traders", "cycles", "meta")}


def test_after_a_takeover_the_old_holders_writes_are_refused_and_change_nothing(
        db: Conn, hosts: Callable[[], Conn]) -> None:
    a_conn, b_conn = hosts(), hosts()
    a, b = Leases(a_conn), Leases(b_conn)
    mine = a.acquire("XRPUSDT", "host-a", 0.5)
    assert mine is not None
    old = PgStore(a_conn, "XRPUSDT", mine)
    old.save(TraderState("XRPUSDT", 0, 1, SETTINGS), {"fills": 1})
    prefix = old.id_prefix()
    assert old.next_cycles(2) == [1, 2]
    theirs = taken(b, "XRPUSDT", "host-b", 30)
    before = symbol_rows(db, "XRPUSDT")
    writes: list[Callable[[], object]] = [
        lambda: old.save(TraderState("XRPUSDT", 0, 1, SETTINGS, status="selling"), {"fills": 1}),
        lambda: old.finish(TraderState("XRPUSDT", 0, 1, SETTINGS, status="done", result=RESULT)),
        lambda: old.next_cycles(3), lambda: old.next_cycle(), lambda: old.set_meta("last_error", "stale"),
        lambda: old.set_meta("id_prefix", None), lambda: old.bump("leader_starts")]
    for write in writes:
        with pytest.raises(Fenced) as refused:
            write()
        assert str(refused.value) == (f"XRPUSDT: write refused: our lease (host host-a, token {mine.token}) is lost, "
                                      f"now held by host host-b with token {theirs.token}")
    assert symbol_rows(db, "XRPUSDT") == before
    new = PgStore(b_conn, "XRPUSDT", theirs)  # the adopter goes on from the old holder's last write
    assert new.traders() == {0: TraderState("XRPUSDT", 0, 1, SETTINGS)} and new.id_prefix() == prefix
    assert new.next_cycle() == 3 and new.counter("fills") == 1


def test_a_new_lease_of_the_same_host_fences_the_old_leases_store(db: Conn) -> None:
    """A leader restarted on the same host takes a new token: a store left from the old one (a
    paused process that wakes up) is refused, though the holder's name is the same."""
    leases = Leases(db)
    old = leases.acquire("XRPUSDT", "host-a", 30)
    assert old is not None
    stale = PgStore(db, "XRPUSDT", old)
    new = leases.acquire("XRPUSDT", "host-a", 30)
    assert new is not None
    with pytest.raises(Fenced, match=rf"token {old.token}\) is lost, now held by host host-a with token {new.token}$"):
        stale.save(TraderState("XRPUSDT", 0, 1, SETTINGS))
    PgStore(db, "XRPUSDT", new).save(TraderState("XRPUSDT", 0, 1, SETTINGS))


def test_a_lease_expired_or_never_given_refuses_writes(db: Conn) -> None:
    leases = Leases(db)
    mine = leases.acquire("XRPUSDT", "host-a", 0.3)
    assert mine is not None
    store = PgStore(db, "XRPUSDT", mine)
    store.save(TraderState("XRPUSDT", 0, 1, SETTINGS))
    wait_for("the lease to expire", lambda: leases.holders()[0].expires_in_seconds < 0, timeout=10)
    with pytest.raises(Fenced, match=rf"XRPUSDT: .*token {mine.token}\) is lost, it expired \d+\.\ds ago"):
        store.save(TraderState("XRPUSDT", 0, 1, SETTINGS, status="selling"))  # nobody took it, still refused
    assert not leases.renew(mine, 30)  # nor can it be renewed: the holder had to stop by its deadline
    assert leases.release(mine)
    with pytest.raises(Fenced, match="the symbol has no lease now"):
        store.set_meta("drift", "1")
    reader = PgStore(db, "XRPUSDT", None)
    assert reader.traders() == {0: TraderState("XRPUSDT", 0, 1, SETTINGS)}  # reads need no lease
    with pytest.raises(Fenced, match="opened without a lease"):
        reader.save(TraderState("XRPUSDT", 0, 1, SETTINGS))
    with pytest.raises(ValueError, match="cannot fence"):
        PgStore(db, "BTCUSDT", mine)


def blocked_by(watcher: Conn, pid: int) -> list[int]:
    row = watcher.execute("SELECT pg_blocking_pids(%s)", (pid,)).fetchone()
    return list(row[0]) if row else []


def test_a_takeover_waits_for_a_fenced_write_in_flight_which_commits_first(
        db: Conn, hosts: Callable[[], Conn]) -> None:
    """A's save has passed its fence (the lease row locked FOR SHARE) when the lease expires and B
    takes it: B's takeover waits for A's transaction, so A's write is ordered before it, and A's
    next write is refused. (A third connection holds the trader's row, to keep A's transaction open.)"""
    a_conn, b_conn, blocker = hosts(), hosts(), hosts()
    a, b = Leases(a_conn), Leases(b_conn)
    mine = a.acquire("XRPUSDT", "host-a", 1)
    assert mine is not None
    store = PgStore(a_conn, "XRPUSDT", mine)
    store.save(TraderState("XRPUSDT", 0, 1, SETTINGS))
    outcome: dict[str, object] = {}
    with blocker.transaction():
        blocker.execute("SELECT 1 FROM traders WHERE symbol = 'XRPUSDT' FOR UPDATE")
        writer = threading.Thread(target=lambda: outcome.update(
            write=store.save(TraderState("XRPUSDT", 0, 1, SETTINGS, status="selling")), write_done=time.monotonic()))
        writer.start()
        a_pid, b_pid = a_conn.info.backend_pid, b_conn.info.backend_pid
        wait_for("A's save to pass its fence and wait on the trader's row",
                 lambda: blocked_by(db, a_pid) == [blocker.info.backend_pid], timeout=10)
        wait_for("A's lease to expire", lambda: Leases(db).holders()[0].expires_in_seconds < 0, timeout=10)
        taker = threading.Thread(target=lambda: outcome.update(
            lease=b.acquire("XRPUSDT", "host-b", 30), take_done=time.monotonic()))
        taker.start()
        wait_for("B's takeover to wait on A's fenced transaction", lambda: blocked_by(db, b_pid) == [a_pid], timeout=10)
        assert "lease" not in outcome and "write_done" not in outcome
    writer.join(10)
    taker.join(10)
    theirs = outcome["lease"]
    assert isinstance(theirs, Lease) and theirs.token > mine.token  # B took it, after A's write
    assert PgStore(db, "XRPUSDT", None).traders()[0].status == "selling"  # A's write committed, before B
    with pytest.raises(Fenced, match=f"now held by host host-b with token {theirs.token}"):
        store.save(TraderState("XRPUSDT", 0, 1, SETTINGS, status="done"))


# --- shared by all hosts: the trading set and the prefix registry ----------------------------------


def test_the_trading_set_is_one_for_every_host(db: Conn, hosts: Callable[[], Conn]) -> None:
    here, there = PgTradingSet(db), PgTradingSet(hosts())
    assert here.modes == {} and here.problem is None
    here.set("XRPUSDT", "running")
    here.set("BTCUSDT", "running")
    here.set("BTCUSDT", "shutting-down")
    there.reload()
    assert there.modes == {"BTCUSDT": "shutting-down", "XRPUSDT": "running"} == here.modes
    there.set("XRPUSDT", None)
    assert PgTradingSet(db).modes == {"BTCUSDT": "shutting-down"}
    with pytest.raises(psycopg.errors.CheckViolation):
        here.set("ETHUSDT", "bogus")
    assert here.modes == {"BTCUSDT": "shutting-down", "XRPUSDT": "running"}  # unchanged by the failed write


def test_the_prefix_registry_keeps_the_first_symbol_of_a_prefix(db: Conn, hosts: Callable[[], Conn]) -> None:
    assert recorded_prefixes(db) == {}
    record_prefix(db, "nvaaaaaa", "XRPUSDT")
    record_prefix(hosts(), "nvbbbbbb", "BTCUSDT")
    record_prefix(db, "nvaaaaaa", "ETHUSDT")  # recorded before: left as it is
    assert recorded_prefixes(db) == {"nvaaaaaa": "XRPUSDT", "nvbbbbbb": "BTCUSDT"}


# --- the test server itself ------------------------------------------------------------------------


def test_a_server_that_cannot_start_fails_with_its_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never a silent skip: the failure says why, from the server's own log, and leaves nothing behind."""
    import socket
    import tempfile

    import pg
    import psutil

    made: list[str] = []
    mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: made.append(mkdtemp(**kw)) or made[-1])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setattr(pg, "free_ports", lambda n: [busy.getsockname()[1]])
        with pytest.raises(RuntimeError, match=r"(?s)pg_ctl start failed.*--- server log ---.*could not bind"), \
                pg.running_server():
            pass
    assert made and not Path(made[0]).exists()
    assert not [p for p in psutil.process_iter(["cmdline"]) if made[0] in " ".join(p.info["cmdline"] or [])]


# --- the DSN's password -------------------------------------------------------------------------

SECRET = "pw-Zq81-never-shown"


def test_a_dsn_password_is_never_in_a_message_or_a_log_line(
        pg_dsn: str, db: Conn, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = psycopg.conninfo.make_conninfo(pg_dsn, password=SECRET)
    messages: list[str] = []
    with pytest.raises(ConnectError) as refused:
        connect(wrong)
    messages.append(str(refused.value))
    assert "password authentication failed" in messages[-1] and "password=********" in messages[-1]
    with pytest.raises(ConnectError) as refused:  # libpq quotes the user: one that is the password is hidden too
        connect(psycopg.conninfo.make_conninfo(pg_dsn, user=SECRET, password=SECRET))
    messages.append(str(refused.value))
    assert 'for user "********"' in messages[-1]
    # libpq's own error for a DSN that does not parse quotes the text after the password's first word
    for broken in (f"host=127.0.0.1 password=x {SECRET}", f"postgresql://naive:{SECRET}@[::1"):
        with pytest.raises(DsnError) as bad:
            connect(broken)
        messages.append(str(bad.value))
    good = connect(pg_dsn)  # logs where it connected
    password = psycopg.conninfo.conninfo_to_dict(pg_dsn)["password"]
    messages += [redact(wrong), redact(pg_dsn), PgTradingSet(good).path]
    messages += [r.getMessage() for r in caplog.records] + [r.exc_text or "" for r in caplog.records]
    assert any("connected to PostgreSQL" in m and "password=********" in m for m in messages)
    for message in messages:
        assert SECRET not in message and str(password) not in message
    good.close()

"""The leader and the root's store workers on the PostgreSQL store (a real server, tests/pg.py).

A leader restores its traders from the shared store and stores their states under its lease's
token; once another host holds the lease, the first write it is refused ends the leader with
EXIT_LEASE_LOST, its last words naming the lost lease, and the refused state is never acked (the
trader that reported it hears nothing, so it sends nothing to the exchange for it). The leader
runs for real (tests/leader_child.py: forked by a supervisor as its symbol supervisor forks it);
only its traders are fakes. The root's workers: a symbol's history, and the shared trading set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq
from psycopg.conninfo import conninfo_to_dict

from naived.core.config import Config, parse_config
from naived.core.messages import (
    Ack,
    CycleResult,
    Error,
    History,
    Intent,
    Ok,
    Settings,
    TraderState,
    WorkerReply,
    encode,
    worker_report_decoder,
)
from naived.exchange.binance import Listed
from naived.store.backend import backend
from naived.store.leases import Lease, Leases
from naived.store.pgschema import Conn
from naived.store.postgres import PgStore, PgTradingSet, connect, record_prefix
from naived.tree import leader, workers
from naived.tree.ipc import bind
from naived.tree.supervisor import EXIT_LEASE_LOST

CHILD = Path(__file__).with_name("leader_child.py")
SYMBOL = "XRPUSDT"
SETTINGS = Settings(SYMBOL, 1, "100", "0", "0.001", "0.01", "0.0001", "1", "1", "5", "XRP", "USDT")
RESULT = CycleResult("40", "19.8", "39", "19.3596", {"USDT": "0.0193596"}, "0.0391596", "0.01591608", "0.96", "0.47567568")
WAIT_MS = 20_000


def config_text(directory: Path) -> str:
    """One trader per symbol; the DSN (with its password) comes from $NAIVE_STORE_DSN, as advised."""
    return f"""
[paths]
runtime_dir = "{directory / 'run'}"
state_dir = "{directory / 'state'}"

[store]
backend = "postgresql"
host_id = "host-a"

[trading.defaults]
chunks = 1
"""


@pytest.fixture
def db(pg_db: Conn) -> Conn:
    return pg_db


@pytest.fixture
def config(short_tmp: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Config:
    (short_tmp / "run").mkdir(mode=0o700)
    (short_tmp / "naive.toml").write_text(config_text(short_tmp))
    monkeypatch.setenv("NAIVE_STORE_DSN", pg_dsn)
    return parse_config((short_tmp / "naive.toml").read_bytes())


class Run:
    """A leader (tests/leader_child.py) and the test's two sockets to its fake traders."""

    def __init__(self, directory: Path, dsn: str, token: int | None, extra_env: dict[str, str] | None = None) -> None:
        run = directory / "run"
        self.ctx = zmq.Context()
        self.events = bind(self.ctx, zmq.PULL, f"ipc://{run / 'test-events.sock'}")
        self.go = bind(self.ctx, zmq.PUSH, f"ipc://{run / 'test-go.sock'}")
        self.stderr_path = directory / "leader.log"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), str(directory / "naive.toml"), SYMBOL, "none" if token is None else str(token)],
                stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
                env={**os.environ, "NAIVE_STORE_DSN": dsn, **(extra_env or {})},
            )

    def event(self) -> tuple[str, TraderState]:
        assert self.events.poll(WAIT_MS), f"no word from the fake trader in {WAIT_MS} ms; leader log:\n{self.log()}"
        what, state = self.events.recv_multipart()
        return what.decode(), msgspec.json.decode(state, type=TraderState)

    def report(self, state: TraderState) -> None:
        """Have the fake trader report `state` to the leader."""
        self.go.send(msgspec.json.encode(state))

    def exit(self) -> tuple[int, str]:
        """The leader's exit status and last words, once it exited by itself."""
        try:
            out, _ = self.proc.communicate(timeout=WAIT_MS / 1000)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the leader did not exit; its log:\n{self.log()}") from None
        code, _, words = out.strip().partition(" ")
        return int(code), words

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the supervisor, the leader, its traders: one group
        except ProcessLookupError:
            pass
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.events.close()
        self.go.close()
        self.ctx.term()


@pytest.fixture
def running(short_tmp: Path, config: Config, pg_dsn: str) -> Iterator[type[Run]]:
    started: list[Run] = []

    class Started(Run):
        def __init__(self, token: int | None, dsn: str = pg_dsn) -> None:
            super().__init__(short_tmp, dsn, token)
            started.append(self)

    yield Started
    for run in started:
        run.close()


def seeded(db: Conn, host: str = "host-a") -> tuple[Lease, TraderState]:
    """The symbol as a host that traded it left it: a trader mid-cycle, and the lease now `host`'s."""
    leases = Leases(db)
    lease = leases.acquire(SYMBOL, host, 60)
    assert lease is not None
    store = PgStore(db, SYMBOL, lease)
    prefix = store.id_prefix(lambda p: record_prefix(db, p, SYMBOL))  # as a leader mints it
    state = TraderState(SYMBOL, 0, store.next_cycles(7)[-1], SETTINGS, status="buying", id_prefix=prefix)
    store.save(state)
    return lease, state


def stored(db: Conn) -> dict[int, TraderState]:
    return PgStore(db, SYMBOL, None).traders()


def take_over(db: Conn, lease: Lease) -> Lease:
    """Another host takes the lease, as it would once it expired: acquire, after the database's clock passed it."""
    db.execute("UPDATE leases SET expires_at = now() WHERE symbol = %s AND token = %s", (lease.symbol, lease.token))
    theirs = Leases(db).acquire(lease.symbol, "host-b", 60)
    assert theirs is not None and theirs.token > lease.token
    return theirs


def test_a_leader_restores_its_traders_from_the_shared_store_and_stores_under_its_token(db: Conn, running: type[Run]) -> None:
    _, state = seeded(db, "host-a")
    lease = Leases(db).acquire(SYMBOL, "host-a", 60)  # this host's naived started again: a new token
    assert lease is not None
    leader = running(lease.token)
    assert leader.event() == ("started", state)  # resumed as another host (or this one) left it
    selling = msgspec.structs.replace(state, status="selling")
    leader.report(selling)
    assert leader.event() == ("acked", selling)
    assert stored(db) == {0: selling}  # acked once stored
    assert PgStore(db, SYMBOL, None).counter("leader_starts") == 1
    assert leader.proc.poll() is None


def test_a_leader_whose_lease_was_taken_over_stops_at_its_next_write_and_does_not_ack_it(
        db: Conn, running: type[Run], pg_dsn: str) -> None:
    lease, state = seeded(db, "host-a")
    leader = running(lease.token)
    assert leader.event() == ("started", state)
    theirs = take_over(db, lease)
    leader.report(msgspec.structs.replace(state, status="selling"))
    code, words = leader.exit()
    assert code == EXIT_LEASE_LOST, (code, words, leader.log())
    assert f"{SYMBOL}: write refused: our lease (host host-a, token {lease.token}) is lost, " \
           f"now held by host host-b with token {theirs.token}" in words
    assert stored(db) == {0: state}  # the refused state is not there
    # and the trader was never acked: it was stopped with the leader, waiting (it says so only if acked or timed out)
    assert not leader.events.poll(500)
    said = [line for line in leader.log().splitlines() if f"token {lease.token}) is lost" in line]
    assert len([line for line in said if f" leader {SYMBOL}[" in line]) == 1  # one line, the leader's (and its supervisor's)
    assert str(conninfo_to_dict(pg_dsn)["password"]) not in leader.log()


def test_a_leader_started_on_a_lease_already_lost_stops_before_any_trader(db: Conn, running: type[Run]) -> None:
    lease, _ = seeded(db, "host-a")
    theirs = take_over(db, lease)
    code, words = running(lease.token).exit()
    assert code == EXIT_LEASE_LOST
    assert f"now held by host host-b with token {theirs.token}" in words
    assert PgStore(db, SYMBOL, None).counter("leader_starts") == 0  # its start was not counted either


def test_a_database_that_does_not_answer_is_a_restartable_failure_that_never_shows_the_password(
        db: Conn, running: type[Run], pg_dsn: str, free_tcp_port: int) -> None:
    lease, _ = seeded(db, "host-a")
    params = conninfo_to_dict(pg_dsn)
    nowhere = pg_dsn.replace(f"port={params['port']}", f"port={free_tcp_port}")
    leader = running(lease.token, dsn=nowhere)
    code, words = leader.exit()
    assert code == 1, (code, words)
    assert words.startswith("state store postgresql ") and f"port={free_tcp_port}" in words
    assert f"symbol {SYMBOL} failed (cannot connect to PostgreSQL" in words and "password=********" in words
    password = str(params["password"])
    assert password not in words and password not in leader.log()


# --- the root's workers on PostgreSQL -----------------------------------------------------------


def answered(config: Config, work: threading.Thread) -> WorkerReply:
    """What a worker (run in `work`) hands the root: the test binds the root's workers socket."""
    ctx = zmq.Context()
    rep = bind(ctx, zmq.REP, config.workers_endpoint)
    try:
        work.start()
        assert rep.poll(WAIT_MS), "the worker reported nothing"
        reply = worker_report_decoder.decode(rep.recv())
        rep.send(encode(Ack()))
        work.join(WAIT_MS / 1000)
        assert isinstance(reply, WorkerReply)
        return reply
    finally:
        rep.close(linger=0)
        ctx.term()


def test_history_is_read_from_the_shared_store_and_a_symbol_never_traded_is_said_so(db: Conn, config: Config) -> None:
    lease, state = seeded(db, "host-b")  # traded by another host: its history is the cluster's
    done = msgspec.structs.replace(state, status="done", result=RESULT)
    PgStore(db, SYMBOL, lease).finish(done)
    codes: list[int] = []
    reply = answered(config, threading.Thread(target=lambda: codes.append(workers.read_history(config, SYMBOL, 7))))
    assert reply == WorkerReply(7, History(SYMBOL, [done])) and codes == [0]
    reply = answered(config, threading.Thread(target=lambda: codes.append(workers.read_history(config, "BTCUSDT", 8))))
    assert reply == WorkerReply(8, Error("BTCUSDT has never traded here")) and codes == [0, 0]


def test_the_shared_trading_set_is_written_for_the_root_and_a_failure_is_answered_in_one_line(
        db: Conn, config: Config, pg_dsn: str, free_tcp_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    codes: list[int] = []

    def write(mode: str | None, request_id: int) -> WorkerReply:
        return answered(config, threading.Thread(target=lambda: codes.append(
            workers.write_trading_set(config, SYMBOL, mode, request_id, f"{SYMBOL}: {mode}"))))

    assert write("running", 1) == WorkerReply(1, Ok(f"{SYMBOL}: running"))
    assert PgTradingSet(db).modes == {SYMBOL: "running"}
    assert write("shutting-down", 2) == WorkerReply(2, Ok(f"{SYMBOL}: shutting-down"))
    assert PgTradingSet(db).modes == {SYMBOL: "shutting-down"}
    assert write(None, 3) == WorkerReply(3, Ok(f"{SYMBOL}: None"))
    assert PgTradingSet(db).modes == {} and codes == [0, 0, 0]
    # As on one host: a shutdown or stop of a symbol not trading is refused, and adds nothing (a
    # shutdown once put it in the set, and a host started it); a start of one trading is no change.
    assert write("shutting-down", 31) == WorkerReply(31, Error(f"{SYMBOL} is not trading"))
    assert write(None, 32) == WorkerReply(32, Error(f"{SYMBOL} is not trading"))
    assert PgTradingSet(db).modes == {}
    write("running", 33)
    write("shutting-down", 34)
    assert write("running", 35) == WorkerReply(35, Ok(f"{SYMBOL} is already trading"))  # its shutdown goes on
    assert PgTradingSet(db).modes == {SYMBOL: "shutting-down"} and codes == [0] * 8
    write(None, 36)
    params = conninfo_to_dict(pg_dsn)
    monkeypatch.setenv("NAIVE_STORE_DSN", pg_dsn.replace(f"port={params['port']}", f"port={free_tcp_port}"))
    reply = write("running", 4)
    assert isinstance(reply.reply, Error) and codes[-1] == 1
    message = reply.reply.message
    assert message.startswith(f"cannot record {SYMBOL} in the shared trading set: cannot connect to PostgreSQL (")
    assert "\n" not in message and str(params["password"]) not in message and "password=********" in message
    assert PgTradingSet(db).modes == {}


def test_a_start_trading_on_a_new_database_before_the_keepers_first_round_is_recorded(
        config: Config, pg_dsn: str) -> None:
    """A naived just started on an empty database: its trading-set worker may run before the lease
    keeper migrated the schema (a start-trading at once); it migrates it itself, not fail."""
    codes: list[int] = []
    reply = answered(config, threading.Thread(target=lambda: codes.append(
        workers.write_trading_set(config, SYMBOL, "running", 1, "started"))))
    assert reply == WorkerReply(1, Ok("started")) and codes == [0]
    conn = connect(pg_dsn)
    try:
        assert PgTradingSet(conn).modes == {SYMBOL: "running"}
    finally:
        conn.close()


def test_orphans_are_our_prefixes_no_state_in_the_shared_store_names_and_a_failing_database_finds_none(
        db: Conn, config: Config) -> None:
    lease, state = seeded(db, "host-b")  # another host trades XRPUSDT: its states own its orders
    prefix = state.id_prefix
    PgStore(db, SYMBOL, lease).save(msgspec.structs.replace(
        state, intent=Intent(f"{prefix}-0-7B", "BUY", "0.5", "20")))  # recorded before it is sent
    record_prefix(db, "nvmoved1", "BTCUSDT")  # a prefix whose store kept no state (its orders: nobody's)
    orders = [Listed(SYMBOL, f"{prefix}-0-7B"), Listed(SYMBOL, f"{prefix}-0-6B"), Listed("BTCUSDT", "nvmoved1-0-1B"),
              Listed("ETHUSDT", "other-0-1B"), Listed(SYMBOL, f"{prefix}-1-8B")]
    stores = backend(config, "reconcile")
    try:
        found = workers.find_orphans(stores, orders, owned={f"{prefix}-1-8B"}, reporting=frozenset())
    finally:
        stores.close()
    assert [(o.client_order_id, o.minted_for) for o in found] == [(f"{prefix}-0-6B", SYMBOL), ("nvmoved1-0-1B", "BTCUSDT")]

    stores = backend(config, "reconcile")
    prefixes = stores.recorded_prefixes()

    def then_the_database_goes() -> dict[str, str]:
        stores.conn.close()  # read the registry, then lost the connection: the states cannot be read
        return prefixes

    stores.recorded_prefixes = then_the_database_goes
    with pytest.raises(stores.errors):  # the round is skipped (reconcile_all says so): no order is called an orphan
        workers.find_orphans(stores, orders, owned=set(), reporting=frozenset())
    stores.close()


SQLITE_USER = """
import sys
from pathlib import Path
from naived import cli, ctl  # the entry points
from naived.core.config import Config, Paths
from naived.store.backend import backend
from naived.store.sqlite import store_path
from naived.tree import leader, root, symbol_supervisor, trader, workers  # the processes of the tree

state = Path(sys.argv[1])
stores = backend(Config(paths=Paths(state_dir=str(state))), "leader XRPUSDT")
assert stores.name("XRPUSDT") == str(store_path(state, "XRPUSDT")), stores.name("XRPUSDT")
assert stores.recorded_prefixes() == {}
print(sorted(m for m in sys.modules if m.split(".")[0] == "psycopg" or m == "naived.store.postgres"))
"""


def test_a_sqlite_user_never_imports_psycopg(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", SQLITE_USER, str(tmp_path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


class Unreachable(Exception):
    pass


class Flaky:
    """A backend whose store cannot be reached the first `failures` times it is opened."""

    unreachable = (Unreachable,)

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.opened = 0

    def open(self, symbol: str, lease_token: int | None) -> str:
        self.opened += 1
        if self.opened <= self.failures:
            raise Unreachable("FATAL: remaining connection slots are reserved")
        return f"store of {symbol}"


def test_a_leader_asks_again_with_backoff_while_its_store_cannot_be_reached(caplog: pytest.LogCaptureFixture) -> None:
    flaky = Flaky(failures=3)
    assert leader.open_patiently(flaky, SYMBOL, 7, patience=5.0) == f"store of {SYMBOL}"  # type: ignore[arg-type,comparison-overlap]  # a stand-in backend
    assert flaky.opened == 4
    assert [r.levelname for r in caplog.records if "not reachable" in r.getMessage()] == ["WARNING"]  # said once


def test_a_store_still_unreachable_after_the_patience_fails_the_leader_and_other_errors_at_once() -> None:
    flaky = Flaky(failures=100)
    with pytest.raises(Unreachable):
        leader.open_patiently(flaky, SYMBOL, 7, patience=0.5)  # type: ignore[arg-type]  # a stand-in backend
    assert 2 <= flaky.opened <= 4  # 0.2 s, then 0.4 s would pass the deadline
    flaky = Flaky(failures=1)
    flaky.unreachable = ()  # type: ignore[assignment]  # SQLite's: nothing is worth waiting for
    with pytest.raises(Unreachable):
        leader.open_patiently(flaky, SYMBOL, 7, patience=5.0)  # type: ignore[arg-type]  # a stand-in backend
    assert flaky.opened == 1

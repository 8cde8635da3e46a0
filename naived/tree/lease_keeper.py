"""The lease keeper: this host's hold on its symbols in a cluster of hosts on one PostgreSQL.

The root forks it when `[store] backend = "postgresql"` (naived/tree/root.py, `start_lease_keeper`).

A child of the root, because every step is a call to the database, which may hang or fail: the
root only supervises (the error kernel), and it learns what is held from the keeper's reports.
Each round, every `renew_seconds`:

1. say the host is alive (the hosts table);
2. renew every lease it holds; a lease it cannot renew is dropped from the report at once;
3. read the shared trading set, the hosts seen within `lease_seconds` and the live leases;
4. follow the placement (naived/core/placement.py): take the free leases of the symbols placed
   here; stop renewing the ones placed elsewhere (a hand-off: this host stops the symbol when it
   leaves the report, and its lease expires by the database's clock before the next holder can
   take it, so the old holder has stopped first);
5. report to the root every lease held, with its token and its *deadline*: `t0 + lease_seconds -
   stop_margin_seconds` on this host's monotonic clock, `t0` taken before the renewal was sent
   (naived/store/leases.py says why the lease cannot expire before `t0 + lease_seconds`).

The root stops a symbol whose deadline passes even if no report comes (a keeper stuck in a call to
an unreachable database): that, not the keeper, is what keeps a cut-off host from trading past its
lease.

**The process** (`run`): a loop of rounds, each `renew_seconds` after the previous one *started*
(time.monotonic, so the schedule does not drift). A round (re)connects when it has no connection
(migrating the schema once per connection), reads the trading set, runs `Keeper.round` and sends
the root `LeasesHeld` on its workers endpoint (`ipc.report`, acked once handled). One `Keeper` for
the life of the process: a new connection is handed to it (`Keeper.use`), so what it holds, and
each deadline, survives a reconnect (a lease lives by the database's clock, not a connection's).

- A round the database fails (an error, a lost or refused connection, a DSN that does not parse):
  one warning line (again only when the error changes; never the password), the connection
  closed, and a report with `error` set whose `held` is what the last report held, with the
  deadlines it had then (never extended), less any lease the failed round found lost; the next
  round connects again. The connection's TCP timeouts are kept within a round
  (`_dsn_with_timeouts`), so a database cut off mid-call fails the round instead of hanging it.
- A report the root does not take in time (restarting, busy): one line per kind of failure until
  a report is taken again; the keeper goes on.
- SIGUSR1 (the root's poke, after start-trading changed the shared trading set): a round now.
  A poke during a round is kept (the signal's wake-up byte) and runs one more round right after.
- SIGTERM: exit 0 at once, releasing nothing: the root stops its symbols, and the leases expire
  by the database's clock.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import signal
import time

import msgspec
import psycopg
import zmq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from naived.core.config import Config
from naived.core.messages import HeldLease, Holding, Host, LeasesHeld
from naived.core.order_shares import OrderBudget
from naived.core.placement import plan
from naived.exchange.binance import shared_budget
from naived.store import pgschema, postgres
from naived.store.leases import Lease, Leases
from naived.store.order_counts import share_orders
from naived.store.pgschema import Conn
from naived.store.postgres import DsnError, PgTradingSet, Starts
from naived.tree import ipc
from naived.tree.process import SignalQueue

log = logging.getLogger(__name__)

NO_STARTS = Starts(0, 0)  # the start requests of a symbol held but not in the trading set (handed back this round)


class Round(msgspec.Struct, frozen=True):
    held: list[HeldLease]
    alive: list[str]  # hosts seen within the lease time, this one included
    hosts: list[Host]  # every registered host, as the database showed them this round
    leases: list[Holding]  # every symbol's lease as read this round (after its acquisitions)
    trading: list[str]  # the trading set's symbols, as this round read them


class Keeper:
    def __init__(self, leases: Leases, host_id: str, pid: int, lease_seconds: float, stop_margin_seconds: float,
                 orders: OrderBudget | None = None) -> None:
        self.orders = orders  # the host's rate budget: its share of the account's order limits, set each round
        self.leases = leases
        self.host_id = host_id
        self.pid = pid  # the host's naived (the root): shown in the hosts table
        self.ttl = lease_seconds
        self.margin = stop_margin_seconds
        self.held: dict[str, tuple[Lease, float]] = {}  # symbol -> (lease, deadline)
        leases.register_host(host_id, pid)

    def use(self, leases: Leases) -> None:
        """Go on over a new connection (the old one failed). What is held stays held, each lease
        until its deadline: a lease lives by the database's clock, not by a connection."""
        self.leases = leases

    def round(self, wanted: dict[str, str], starts: dict[str, Starts] | None = None) -> Round:
        """One round (see the module docstring). `wanted`: the trading set, symbol -> mode; `starts`:
        its start requests, reported with each lease held. Raises psycopg.Error when the database
        fails; what was held stays held until its deadline."""
        if not self.leases.heartbeat(self.host_id):
            self.leases.register_host(self.host_id, self.pid)
        for symbol, (lease, _) in list(self.held.items()):
            t0 = time.monotonic()
            try:
                renewed = self.leases.renew(lease, self.ttl)
            except psycopg.errors.LockNotAvailable:  # our own leader's write still holds the row: next round
                log.warning("%s: lease token %d not renewed this round: its row is locked", symbol, lease.token)
                continue
            if renewed:
                self.held[symbol] = (lease, t0 + self.ttl - self.margin)
            else:
                log.warning("%s: lease token %d lost (taken over or expired); stopping it here", symbol, lease.token)
                del self.held[symbol]
        hosts, holdings = self.leases.hosts(), self.leases.holders()
        alive = {h.host_id for h in hosts if h.seen_seconds_ago < self.ttl} | {self.host_id}
        held_by = {h.symbol: h.holder for h in holdings if h.expires_in_seconds > 0}
        todo = plan(self.host_id, sorted(wanted), held_by, alive)
        for symbol in todo.release:
            if symbol in self.held:
                log.info("%s: placed on another host now (or no longer traded): handing it off", symbol)
                del self.held[symbol]  # not renewed again: it expires before anyone else takes it
        # Our own live leases this keeper does not know (it was restarted): taken again, with a new
        # token, which fences whatever the old one still writes.
        forgotten = [s for s, holder in held_by.items()
                     if holder == self.host_id and s not in self.held and s in wanted and s not in todo.release]
        taken = False
        for symbol in todo.acquire + sorted(forgotten):
            t0 = time.monotonic()
            try:
                granted = self.leases.acquire(symbol, self.host_id, self.ttl)
            except psycopg.errors.LockNotAvailable:
                # The old holder's write is still open on the row (a host frozen mid-transaction):
                # the server ends that session (postgres.IDLE_IN_TRANSACTION_SECONDS); try next round.
                log.info("%s: lease row locked by an open write of its last holder; taking it next round", symbol)
                continue
            if granted is not None:
                log.info("%s: lease acquired, token %d", symbol, granted.token)
                self.held[symbol] = (granted, t0 + self.ttl - self.margin)
                taken = True
        if taken:  # the cluster as status shows it: with what this round took, not a round behind
            holdings = self.leases.holders()
        if self.orders is not None:  # before the report: a symbol starts here only under this host's share
            share_orders(self.leases.conn, self.host_id, alive, self.orders)
        asked = starts or {}
        held = [HeldLease(s, lease.token, deadline, wanted.get(s, "running"), asked.get(s, NO_STARTS).run,
                          asked.get(s, NO_STARTS).generation) for s, (lease, deadline) in sorted(self.held.items())]
        return Round(held, sorted(alive), hosts, holdings, sorted(wanted))


# What a round may fail with: the database (psycopg.Error, ConnectError among them), its DSN, the
# network under it, a schema this naive cannot use (a newer naive migrated it).
DB_ERRORS = (psycopg.Error, DsnError, OSError, pgschema.SchemaError)
LOCK_WAIT_SECONDS = 0.5  # the longest a keeper statement waits on a row lock
ERROR_MAX = 500  # characters of an error kept for the report (status shows it on one line)


def _dsn_with_timeouts(dsn: str, seconds: float) -> str:
    """The DSN with libpq's timeouts kept within `seconds` (a round's time), where it sets none of
    its own: connecting (`connect_timeout`, whole seconds, libpq's minimum 2) and, on TCP, data or
    keep-alive probes left unacknowledged (`tcp_user_timeout`, with keep-alive probes after half a
    round idle): a database cut off mid-call fails the round instead of hanging it past its leases.
    Raises DsnError (never quoting the DSN) when it does not parse."""
    postgres.redact(dsn)  # DsnError before anything below can quote it
    given = conninfo_to_dict(dsn)
    wanted = {"connect_timeout": str(max(2, math.ceil(seconds))), "tcp_user_timeout": str(int(seconds * 1000)),
              "keepalives": "1", "keepalives_idle": str(max(1, int(seconds / 2))), "keepalives_interval": "1",
              "keepalives_count": "3"}
    return make_conninfo(dsn, **{k: v for k, v in wanted.items() if k not in given})


class KeeperProcess:
    """The keeper process's state across rounds (the module docstring's process)."""

    def __init__(self, config: Config, root_pid: int) -> None:
        self.settings = config.store
        self.orders = shared_budget(config)  # the host's budget file (the root made it before forking)
        self.host_id = config.store.resolved_host_id()
        self.dsn = config.store.resolved_dsn()
        self.root_pid = root_pid
        self.endpoint = config.workers_endpoint
        self.report_timeout_ms = min(ipc.REPORT_TIMEOUT_MS, int(config.store.renew_seconds * 1000))
        self.conn: Conn | None = None  # None: not connected (at start, after a failed round)
        self.trading: PgTradingSet | None = None
        self.keeper: Keeper | None = None  # made on the first connection, kept for the process's life
        self.held: list[HeldLease] = []  # as last reported
        self.failed_rounds = 0  # in a row
        self.error_logged = ""  # the failure last logged, so a lasting one is logged once
        self.report_failures: set[str] = set()  # kinds logged since a report was last taken

    def connect(self) -> tuple[PgTradingSet, Keeper]:
        conn = postgres.connect(_dsn_with_timeouts(self.dsn, self.settings.renew_seconds),
                                application_name=f"naived lease-keeper {self.host_id}")
        try:
            # A row lock held by another session (a host frozen in the middle of a fenced write) fails
            # the statement that waits on it within a fraction of a round, instead of stalling the
            # round, and every other lease's renewal with it, until that session ends.
            pgschema.migrate(conn)  # first: its advisory lock may rightly wait for another host's migration
            conn.execute(f"SET lock_timeout = {int(LOCK_WAIT_SECONDS * 1000)}".encode())
            trading = PgTradingSet(conn)
            if self.keeper is None:
                self.keeper = Keeper(Leases(conn), self.host_id, self.root_pid, self.settings.lease_seconds,
                                     self.settings.stop_margin_seconds, self.orders)
            else:
                self.keeper.use(Leases(conn))
        except BaseException:
            conn.close()
            raise
        self.conn, self.trading = conn, trading
        return trading, self.keeper

    def round(self) -> LeasesHeld:
        """One round, as the report for the root; never raises a database's error."""
        try:
            if self.trading is None or self.keeper is None or self.conn is None:
                trading, keeper = self.connect()
            else:
                trading, keeper = self.trading, self.keeper
                trading.reload()
            done = keeper.round(trading.modes, trading.starts)
        except DB_ERRORS as exc:
            return self.failed(exc)
        if self.failed_rounds:
            log.info("lease keeper %s: the database answers again after %d failed rounds", self.host_id,
                     self.failed_rounds)
        self.failed_rounds, self.error_logged = 0, ""
        self.held = done.held
        return LeasesHeld(done.held, done.hosts, done.leases, None, done.trading)

    def failed(self, exc: BaseException) -> LeasesHeld:
        error = self.one_line(exc)
        self.failed_rounds += 1
        self.close()
        # What the last report held, at the deadlines it had then: a lease this round renewed is
        # not reported longer (the next good round does), one it found lost is not reported at all.
        still = self.keeper.held if self.keeper is not None else {}
        self.held = [h for h in self.held if h.symbol in still]
        if error != self.error_logged:
            log.warning("lease keeper %s: round failed, %d leases kept only until their deadlines; "
                        "connecting again in %gs: %s", self.host_id, len(self.held), self.settings.renew_seconds, error)
            self.error_logged = error
        return LeasesHeld(self.held, [], [], error)

    def one_line(self, exc: BaseException) -> str:
        """The error for the log and the report: one line, never the password (postgres's own
        errors hide it already; a server's message could still quote it back)."""
        line = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        try:
            password = str(conninfo_to_dict(self.dsn).get("password") or "")
        except psycopg.Error:
            password = ""  # a DSN that does not parse is never quoted (DsnError)
        if password:
            line = line.replace(password, postgres.HIDDEN)
        return line[:ERROR_MAX]

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                self.conn.close()
        self.conn = self.trading = None

    def send(self, report: LeasesHeld) -> None:
        """The report to the root; one not taken is dropped (the next round sends a fresh one)."""
        try:
            ipc.report(self.endpoint, report, self.report_timeout_ms)
        except (ipc.Unanswered, zmq.ZMQError) as exc:
            kind = type(exc).__name__
            if kind not in self.report_failures:
                self.report_failures.add(kind)
                log.warning("lease keeper %s: report not taken (%s); going on", self.host_id, exc)
            return
        if self.report_failures:
            log.info("lease keeper %s: reports taken again", self.host_id)
            self.report_failures.clear()


def run(config: Config) -> int:
    """Entry point in the forked child: rounds until SIGTERM, which ends it with 0 at once.

    The root should fork it with the handled signals kept blocked (process.fork_child's
    `supervises`): a poke that came before the handler is installed would otherwise kill it
    (SIGUSR1's default action). Both are installed, then unblocked, before anything else."""
    pokes = _signals()
    keeper = KeeperProcess(config, os.getppid())
    log.info("lease keeper %s: started (a round every %gs, leases of %gs)", keeper.host_id,
             config.store.renew_seconds, config.store.lease_seconds)
    next_round = time.monotonic()
    while True:
        _sleep_until(next_round, pokes.fd)
        started = time.monotonic()
        pokes.drain()  # the pokes so far are served by this round; one during it makes another
        keeper.send(keeper.round())
        next_round = started + config.store.renew_seconds


def _signals() -> SignalQueue:
    """SIGTERM ends the process; SIGUSR1 wakes its sleep (the queue's wake-up fd)."""
    signal.signal(signal.SIGTERM, _stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    return SignalQueue(signal.SIGUSR1)  # its handler installed, then unblocked


def _sleep_until(deadline: float, wake: int) -> None:
    while (left := deadline - time.monotonic()) > 0:
        if select.select([wake], [], [], left)[0]:
            return


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


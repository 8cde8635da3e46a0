"""The symbol stores, the trading set and the id prefix registry in PostgreSQL, shared by all hosts.

The SQLite store's contract (naived/store/base.py, SymbolStore) on tables keyed by symbol
(naived/store/pgschema.py). **Every write is fenced**: its transaction first locks the symbol's
lease row `FOR SHARE` where the holder, the token and an unexpired expiry (the database's clock)
are still this store's. A takeover is an UPDATE of that row, so it waits for the write to commit,
and a write that starts after the takeover finds another token and is refused (`Fenced`): a write
is ordered before the takeover or refused, never both, and a host that was paused or cut off
cannot overwrite the state its successor restored. Reads are not fenced.

Durability: every commit waits for PostgreSQL's WAL flush (synchronous_commit stays on, the
server's default), so a write acked here survives the database's crash; this is stronger than
the SQLite store's `synchronous=NORMAL` for states, the same as its `synchronous=FULL` for what
client order ids derive from.

A DSN's password is never shown: `redact` is the only form of a DSN this module puts into a
message, and libpq's own errors, which can quote a DSN that does not parse, are replaced.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, NamedTuple

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from naived.core.config import check_symbol
from naived.core.messages import TraderState
from naived.store import pgschema
from naived.store.base import FEES, Fenced, add_fees, fees_by_asset, new_id_prefix
from naived.store.leases import Lease
from naived.store.pgschema import Conn

if TYPE_CHECKING:
    from naived.store.base import SymbolStore

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(TraderState).decode

HIDDEN = "********"
FENCED_SQLSTATE = "NVFNC"  # naive_fence's error (pgschema, migration 3): the lease is not ours
IDLE_IN_TRANSACTION_SECONDS = 2.0
# The server's keep-alive probes of a session (connect): after this many seconds idle, every this
# many seconds, this many unanswered (and data unacknowledged as long as the first): a host gone
# from the network frees its slots within ~10 s.
SERVER_KEEPALIVE = (5, 1, 3)


class DsnError(ValueError):
    """A DSN that does not parse; the message never quotes it."""


class ConnectError(psycopg.OperationalError):
    """The database cannot be reached or refused us; the message names it by its redacted DSN."""


def redact(dsn: str) -> str:
    """The DSN as a `key=value` string with its password replaced, for messages and logs."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        # libpq's message quotes the text around the mistake, which may be the password
        raise DsnError("the PostgreSQL DSN does not parse (not shown: it may hold a password); "
                       "write key=value pairs or a postgresql:// URI") from None
    if "password" in params:
        params["password"] = HIDDEN
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def connect(dsn: str, application_name: str = "naived") -> Conn:
    """A connection in autocommit (each statement its own transaction unless a block opens one).
    Raises DsnError or ConnectError, whose messages never hold the password."""
    where = redact(dsn)
    password = str(conninfo_to_dict(dsn).get("password") or "")
    params = {} if "application_name" in conninfo_to_dict(dsn) else {"application_name": application_name}
    try:
        conn = psycopg.connect(make_conninfo(dsn, **params), autocommit=True)
    except psycopg.Error as exc:
        message = f"cannot connect to PostgreSQL ({where}): {str(exc).strip()}".replace("\n", " ")
        # libpq quotes hosts, users and databases: the password is hidden wherever it turns up
        raise ConnectError(message.replace(password, HIDDEN) if password else message) from None
    # The server's side of this session, set for it alone (every one of these is a user's setting):
    # - naive never waits between the statements of a transaction: one open and idle this long
    #   belongs to a process that was frozen (SIGSTOP, a paused VM) or cut off in the middle of it.
    #   The server ends its session, so that its locks (the fence's FOR SHARE on a lease row) do not
    #   hold up the host that takes the lease over once it expires;
    # - the server probes the connection when idle and drops it when the host stops answering (cut
    #   off, powered off): by default it would keep the session, and its connection slot, for two
    #   hours, and the hosts that adopt the lost host's symbols need slots for their own leaders.
    conn.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false), "
                 "set_config('tcp_keepalives_idle', %s, false), set_config('tcp_keepalives_interval', %s, false), "
                 "set_config('tcp_keepalives_count', %s, false), set_config('tcp_user_timeout', %s, false)",
                 [str(int(IDLE_IN_TRANSACTION_SECONDS * 1000)), *(str(v) for v in SERVER_KEEPALIVE),
                  str(SERVER_KEEPALIVE[0] * 1000)])
    log.info("connected to PostgreSQL (%s), backend pid %d", where, conn.info.backend_pid)
    return conn


# The fence (naive_fence, pgschema's migration 3): the lease row, still ours and unexpired by the
# database's clock, locked FOR SHARE to the end of the transaction, or the transaction fails. A
# takeover (leases.acquire's UPDATE) waits for that lock, so it cannot commit between the check and
# the write's commit.


class PgStore:
    """One symbol's store in PostgreSQL (the SymbolStore contract). `lease`: the lease every write is
    fenced by; None opens it for reading only (every write raises Fenced). A DSN opens a connection
    of its own, closed by `close`; a given connection (autocommit) is the caller's. Raises
    pgschema.SchemaError when the database is not at this naive's schema (naived migrates it)."""

    def __init__(self, conn_or_dsn: Conn | str, symbol: str, lease: Lease | None) -> None:
        self.symbol = check_symbol(symbol)
        if lease is not None and lease.symbol != self.symbol:
            raise ValueError(f"a lease of {lease.symbol} cannot fence {self.symbol}'s store")
        self.lease = lease
        self._own = isinstance(conn_or_dsn, str)
        self._conn = connect(conn_or_dsn) if isinstance(conn_or_dsn, str) else conn_or_dsn
        try:
            if not self._conn.autocommit:
                raise ValueError("PgStore needs a connection in autocommit (postgres.connect gives one)")
            pgschema.check(self._conn)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._own:
            self._conn.close()

    @contextlib.contextmanager
    def _fenced(self) -> Iterator[Conn]:
        """A transaction that goes on only while the lease is ours (see naive_fence above); Fenced otherwise.

        Pipelined: the fence, the writes and the COMMIT go to the server at once and their answers
        come back together (one round trip, not one per statement). That is safe because the fence
        is `naive_fence`, which *fails* the transaction when the lease is not ours: the server then
        skips every statement after it and the COMMIT rolls back. The writes inside must not read
        a result (no fetch) before the block ends."""
        lease = self.lease
        if lease is None:
            raise Fenced(f"{self.symbol}: write refused: this store was opened without a lease (read only)")
        try:
            with self._conn.pipeline(), self._conn.transaction():
                self._conn.execute("SELECT naive_fence(%s, %s, %s)", (self.symbol, lease.holder, lease.token))
                yield self._conn
        except psycopg.Error as exc:
            if exc.sqlstate == FENCED_SQLSTATE:
                raise Fenced(self._refusal(lease)) from None
            raise

    def _refusal(self, lease: Lease) -> str:
        row = self._conn.execute("SELECT holder, token, extract(epoch FROM expires_at - now())::float8 "
                                 "FROM leases WHERE symbol = %s", (self.symbol,)).fetchone()
        if row is None:
            now = "the symbol has no lease now"
        elif (row[0], row[1]) == (lease.holder, lease.token):
            now = f"it expired {-row[2]:.1f}s ago"
        else:
            now = f"now held by host {row[0]} with token {row[1]}"
        return f"{self.symbol}: write refused: our lease (host {lease.holder}, token {lease.token}) is lost, {now}"

    def traders(self) -> dict[int, TraderState]:
        rows = self._conn.execute("SELECT trader_id, state FROM traders WHERE symbol = %s ORDER BY trader_id",
                                  (self.symbol,))
        return {trader_id: _decode(state) for trader_id, state in rows}

    def save(self, state: TraderState, counts: dict[str, int] | None = None) -> None:
        with self._fenced() as conn:
            conn.execute(
                "INSERT INTO traders (symbol, trader_id, state, updated_at) VALUES (%s, %s, %s, now()) "
                "ON CONFLICT (symbol, trader_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                (self.symbol, state.trader_id, _encode(state).decode()))
            for key, n in (counts or {}).items():
                self._bump(conn, key, n)

    def bump(self, key: str, n: int = 1) -> None:
        with self._fenced() as conn:
            self._bump(conn, key, n)

    def _bump(self, conn: Conn, key: str, n: int) -> None:
        conn.execute("INSERT INTO meta (symbol, key, value) VALUES (%s, %s, %s) ON CONFLICT (symbol, key) "
                     "DO UPDATE SET value = (meta.value::bigint + excluded.value::bigint)::text",
                     (self.symbol, key, str(n)))

    def counter(self, key: str) -> int:
        value = self.get_meta(key)
        return int(value) if value else 0

    def finish(self, state: TraderState) -> None:
        with self._fenced() as conn:
            fresh = conn.execute("SELECT 1 FROM cycles WHERE symbol = %s AND cycle = %s",
                                 (self.symbol, state.cycle)).fetchone() is None
            fees = self.fees() if fresh and state.result is not None else {}  # before this cycle is among them
            conn.execute(
                "INSERT INTO cycles (symbol, cycle, trader_id, state, finished_at) VALUES (%s, %s, %s, %s, now()) "
                "ON CONFLICT (symbol, cycle) DO UPDATE SET trader_id = excluded.trader_id, state = excluded.state, "
                "finished_at = excluded.finished_at",
                (self.symbol, state.cycle, state.trader_id, _encode(state).decode()))
            conn.execute("DELETE FROM traders WHERE symbol = %s AND trader_id = %s", (self.symbol, state.trader_id))
            if fresh and state.result is not None:
                for key, amount in (("fees_quote", state.result.fees_quote), ("pnl_quote", state.result.pnl)):
                    total = Decimal(self.get_meta(key) or "0") + Decimal(amount)  # Decimal, as SQLite's store sums
                    self._put(conn, key, str(total))
                self._put(conn, FEES, _encode(add_fees(fees, state.result.fees)).decode())

    def books(self) -> dict[str, str]:
        return {key: self.get_meta(key) or "0" for key in ("fees_quote", "pnl_quote")}

    def fees(self) -> dict[str, str]:
        return fees_by_asset(self.get_meta(FEES), self.finished_cycles)

    def finished_cycles(self) -> list[TraderState]:
        rows = self._conn.execute("SELECT state FROM cycles WHERE symbol = %s ORDER BY cycle", (self.symbol,))
        return [_decode(s) for (s,) in rows]

    def cycles_finished(self) -> int:
        row = self._conn.execute("SELECT count(*) FROM cycles WHERE symbol = %s", (self.symbol,)).fetchone()
        return int(row[0]) if row else 0

    def next_cycle(self) -> int:
        return self.next_cycles(1)[0]

    def next_cycles(self, n: int) -> list[int]:
        """`n` cycle numbers never handed out before for this symbol by any host, in one fenced commit."""
        with self._fenced() as conn:
            row = conn.execute(
                "INSERT INTO meta (symbol, key, value) VALUES (%s, 'last_cycle', %s) ON CONFLICT (symbol, key) "
                "DO UPDATE SET value = (meta.value::bigint + excluded.value::bigint)::text RETURNING value::bigint",
                (self.symbol, str(n))).fetchone()
        assert row is not None  # an upsert always returns its row
        last = int(row[0])
        return list(range(last - n + 1, last + 1))

    def id_prefix(self, record: Callable[[str], None] | None = None) -> str:
        """The symbol's client order id prefix, made once for all hosts: an adopting host goes on with
        the same prefix and cycle numbers, so its ids are the ones the exchange knows."""
        prefix = self.get_meta("id_prefix")
        if prefix is None:
            candidate = new_id_prefix()
            if record is not None:
                record(candidate)  # a crash after this leaves a recorded prefix no order carries: harmless
            with self._fenced() as conn:
                conn.execute("INSERT INTO meta (symbol, key, value) VALUES (%s, 'id_prefix', %s) "
                             "ON CONFLICT (symbol, key) DO NOTHING", (self.symbol, candidate))
            prefix = self.get_meta("id_prefix")
            assert prefix is not None
        return prefix

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE symbol = %s AND key = %s", (self.symbol, key)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str | None) -> None:
        with self._fenced() as conn:
            if value is None:
                conn.execute("DELETE FROM meta WHERE symbol = %s AND key = %s", (self.symbol, key))
            else:
                self._put(conn, key, value)

    def _put(self, conn: Conn, key: str, value: str) -> None:
        conn.execute("INSERT INTO meta (symbol, key, value) VALUES (%s, %s, %s) "
                     "ON CONFLICT (symbol, key) DO UPDATE SET value = excluded.value", (self.symbol, key, value))


if TYPE_CHECKING:
    def _satisfies(store: PgStore) -> SymbolStore:  # mypy: PgStore is a SymbolStore
        return store


# --- shared by every host: the trading set and the id prefix registry ---------------------------


class Starts(NamedTuple):
    """A symbol's start requests in the trading set (pgschema's migration 5)."""

    run: int  # the start that added the row: a new one means it was stopped and started again since
    generation: int  # the latest start request, of any host: a failed run starts afresh when it moves


# A start: a row added takes a new number as its run and its generation; a row there already (trading,
# or shutting down) keeps its run and mode, and only its generation moves. So run = generation only
# for a row just added: a number drawn later is always larger.
_START = """
INSERT INTO trading AS t (symbol, mode, run, generation)
SELECT %s, 'running', g, g FROM nextval('trading_generations') AS g
ON CONFLICT (symbol) DO UPDATE SET generation = excluded.generation
RETURNING t.run, t.generation, t.mode
"""


class PgTradingSet:
    """The trading set (naived/store/trading_set.py's interface) in the `trading` table: which symbols
    trade and how, for every host. `modes` is this host's copy, read at start and by `reload`; `starts`
    each symbol's start requests (the lease keeper reports them to the holder's root)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.path = f"the trading table ({redact(conn.info.dsn)})"  # where it is kept, for messages
        self.problem: str | None = None  # a table cannot be half-written: nothing to report, unlike the file
        self.modes: dict[str, str] = {}
        self.starts: dict[str, Starts] = {}
        self.reload()

    def reload(self) -> None:
        """Read the set again (another host may have changed it). Raises psycopg.Error."""
        rows = self.conn.execute("SELECT symbol, mode, run, generation FROM trading ORDER BY symbol").fetchall()
        self.modes = {symbol: mode for symbol, mode, _, _ in rows}
        self.starts = {symbol: Starts(run, generation) for symbol, _, run, generation in rows}

    def set(self, symbol: str, mode: str | None) -> None:
        """Record a symbol's mode (None: remove it) for every host, durably; a psycopg.Error leaves
        both the table and the modes in memory as they were. A row added is a start (a new run)."""
        if mode is None:
            self.conn.execute("DELETE FROM trading WHERE symbol = %s", (symbol,))
        else:
            self.conn.execute("INSERT INTO trading (symbol, mode, run, generation) "
                              "SELECT %s, %s, g, g FROM nextval('trading_generations') AS g "
                              "ON CONFLICT (symbol) DO UPDATE SET mode = excluded.mode", (symbol, mode))
        self._remember(symbol, mode)

    def request(self, symbol: str, mode: str | None) -> bool:
        """A control request, as one host's root takes it (naived/tree/root.py): start ("running") adds
        a symbol not in the set, shutdown ("shutting-down") changes one in it, stop (None) removes one
        in it. False: nothing to do (started already, or not trading), and the mode is left as it was:
        a shutdown of a symbol not in the set must not add it (a host would take its lease and start
        it, resuming its stored traders), nor a start undo a shutdown under way. A start always draws
        a new generation, even of a symbol started already: its holder starts a failed run afresh, as
        one host does (and leaves a healthy one alone). Raises psycopg.Error."""
        args: tuple[str, ...]
        if mode == "running":
            row = self.conn.execute(_START, (symbol,)).fetchone()
            assert row is not None  # an upsert always returns its row
            run, generation, now = row
            self._remember(symbol, str(now))
            self.starts = {**self.starts, symbol: Starts(run, generation)}
            return bool(run == generation)  # added now: else it was trading, or shutting down, already
        if mode is None:
            sql, args = "DELETE FROM trading WHERE symbol = %s", (symbol,)
        else:
            sql, args = "UPDATE trading SET mode = %s WHERE symbol = %s", (mode, symbol)
        if self.conn.execute(sql, args).rowcount == 0:
            return False
        self._remember(symbol, mode)
        return True

    def _remember(self, symbol: str, mode: str | None) -> None:
        modes, starts = dict(self.modes), dict(self.starts)
        if mode is None:
            modes.pop(symbol, None)
            starts.pop(symbol, None)
        else:
            modes[symbol] = mode
        self.modes, self.starts = modes, starts


def record_prefix(conn: Conn, prefix: str, symbol: str) -> None:
    """Record `prefix` (minted for `symbol`) in the shared registry, durably; a prefix recorded
    before is left as it is (sqlite.record_prefix's contract). Raises psycopg.Error."""
    conn.execute("INSERT INTO id_prefixes (prefix, symbol) VALUES (%s, %s) ON CONFLICT (prefix) DO NOTHING",
                 (prefix, symbol))


def recorded_prefixes(conn: Conn) -> dict[str, str]:
    """Every prefix any host ever minted -> the symbol it was minted for."""
    return {prefix: symbol for prefix, symbol in conn.execute("SELECT prefix, symbol FROM id_prefixes")}

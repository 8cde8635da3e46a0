"""The store backend a config names (`[store] backend`), as one process of the tree uses it.

`backend(config, user)` gives the symbol stores and the install's id prefix registry on SQLite
(the default: a file per symbol and `id-prefixes.sqlite` in the state directory, exactly as
before) or on PostgreSQL (shared by every host; naived/store/postgres.py). The leader opens its
symbol's store for writing (`open`, fenced by its lease's token on PostgreSQL); the root's
workers read (`history`, `stored_states`, `recorded_prefixes`).

psycopg is imported only when the config says PostgreSQL: a SQLite user never imports it. One
PostgreSQL backend keeps one connection, made at its first use and closed by `close`.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import TYPE_CHECKING, Protocol

import msgspec

from naived.core.config import Config
from naived.core.messages import TraderState
from naived.store import sqlite

if TYPE_CHECKING:
    from naived.store.base import SymbolStore
    from naived.store.pgschema import Conn

# The leader is handed its lease's token, not the lease: the fence reads the holder and the token
# only, and the expiry is the lease keeper's to watch (its deadline on the monotonic clock).
EXPIRY_NOT_KNOWN_HERE = dt.datetime.min.replace(tzinfo=dt.UTC)


class Backend(Protocol):
    """A symbol's store and the id prefix registry, on one backend. Operations raise one of `errors`
    when the store fails, and a write on PostgreSQL raises base.Fenced once the lease is lost."""

    errors: tuple[type[Exception], ...]
    # Of `errors`: the store could not be reached at all (a database refusing connections: its slots
    # full, restarting), which passes; asked again after a while rather than failed on at once.
    unreachable: tuple[type[Exception], ...]
    registry: str  # the id prefix registry, as messages name it

    def name(self, symbol: str) -> str:
        """The symbol's store as messages name it (never with a password)."""
        ...

    def open(self, symbol: str, lease_token: int | None) -> SymbolStore:
        """The symbol's store for its leader: every write fenced by `lease_token` on PostgreSQL
        (required there; None on SQLite)."""
        ...

    def history(self, symbol: str) -> list[TraderState] | None:
        """The symbol's finished cycles, read only; None when the database has no record of the
        symbol (PostgreSQL; on SQLite the root checks the file exists, and a missing one raises)."""
        ...

    def stored_states(self, symbol: str) -> list[TraderState]:
        """Every trader state kept for the symbol (not running here: adopted at its next start)."""
        ...

    def record_prefix(self, prefix: str, symbol: str) -> None: ...

    def recorded_prefixes(self) -> dict[str, str]: ...

    def close(self) -> None: ...


def backend(config: Config, user: str) -> Backend:
    """The backend `config.store` names. `user`: who uses it, e.g. "leader XRPUSDT" (PostgreSQL shows
    it as the connection's application_name, `naived <user>`)."""
    if config.store.shared:
        return PgBackend(config, user)
    return SqliteBackend(config)


class SqliteBackend:
    """A file per symbol in the state directory and the install's registry beside them."""

    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    unreachable: tuple[type[Exception], ...] = ()  # a file: there or not, nothing to wait for

    def __init__(self, config: Config) -> None:
        self.state_dir = config.state_dir
        self.registry = str(sqlite.registry_path(self.state_dir))

    def name(self, symbol: str) -> str:
        return str(sqlite.store_path(self.state_dir, symbol))

    def open(self, symbol: str, lease_token: int | None) -> SymbolStore:
        return sqlite.Store(sqlite.store_path(self.state_dir, symbol))  # one host: no lease to fence by

    def history(self, symbol: str) -> list[TraderState] | None:
        store = sqlite.Store(sqlite.store_path(self.state_dir, symbol), readonly=True)
        try:
            return store.finished_cycles()
        finally:
            store.close()

    def stored_states(self, symbol: str) -> list[TraderState]:
        """A store that is gone, moved aside or unreadable keeps none: its file is all there is."""
        try:
            store = sqlite.Store(sqlite.store_path(self.state_dir, symbol), readonly=True)
        except (sqlite3.Error, OSError):
            return []
        try:
            return list(store.traders().values())
        except (sqlite3.Error, msgspec.DecodeError, msgspec.ValidationError):
            return []
        finally:
            store.close()

    def record_prefix(self, prefix: str, symbol: str) -> None:
        sqlite.record_prefix(self.state_dir, prefix, symbol)

    def recorded_prefixes(self) -> dict[str, str]:
        return sqlite.recorded_prefixes(self.state_dir)

    def close(self) -> None:
        pass  # every call opened and closed its own file


class PgBackend:
    """The shared database: the symbols' stores, the registry, on one connection of this process."""

    def __init__(self, config: Config, user: str) -> None:
        import psycopg

        from naived.store import pgschema, postgres

        self.errors: tuple[type[Exception], ...] = (psycopg.Error, pgschema.SchemaError)
        self.unreachable: tuple[type[Exception], ...] = (postgres.ConnectError,)
        self.dsn = config.store.resolved_dsn()
        self.host_id = config.store.resolved_host_id()
        self.ttl = config.store.lease_seconds
        self.user = user
        self.where = postgres.redact(self.dsn)
        self.registry = f"the id prefix registry (postgresql {self.where})"
        self._conn: Conn | None = None

    @property
    def conn(self) -> Conn:
        """Connected at the first use, the schema migrated if it is behind: on a new database this
        process may come before the lease keeper's first round (a start-trading right after naived
        started). Raises ConnectError (a psycopg.Error) with no password, or pgschema.SchemaError."""
        if self._conn is None:
            from naived.store import pgschema
            from naived.store.postgres import connect

            conn = connect(self.dsn, application_name=f"naived {self.user}")
            try:
                if not pgschema.current(conn):
                    pgschema.migrate(conn)  # under its lock, idempotent: the keeper may be at it too
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def name(self, symbol: str) -> str:
        return f"postgresql {self.where} symbol {symbol}"

    def open(self, symbol: str, lease_token: int | None) -> SymbolStore:
        from naived.store.leases import Lease
        from naived.store.postgres import PgStore

        if lease_token is None:
            raise ValueError(f"{symbol}: a PostgreSQL store is written under the symbol's lease: its token is needed")
        return PgStore(self.conn, symbol, Lease(symbol, self.host_id, lease_token, self.ttl, EXPIRY_NOT_KNOWN_HERE))

    def _reader(self, symbol: str) -> SymbolStore:
        from naived.store.postgres import PgStore

        return PgStore(self.conn, symbol, None)  # no lease: reads only

    def history(self, symbol: str) -> list[TraderState] | None:
        store = self._reader(symbol)
        # A leader's first act on a store is to count its start (meta), so a symbol that ever
        # traded on any host has a row there.
        row = self.conn.execute("SELECT EXISTS (SELECT 1 FROM meta WHERE symbol = %s) "
                                "OR EXISTS (SELECT 1 FROM cycles WHERE symbol = %s)", (symbol, symbol)).fetchone()
        if row is None or not row[0]:
            return None
        return store.finished_cycles()

    def stored_states(self, symbol: str) -> list[TraderState]:
        """A database that fails raises: unread states are not "none" (orders they name would be
        called orphans)."""
        return list(self._reader(symbol).traders().values())

    def record_prefix(self, prefix: str, symbol: str) -> None:
        from naived.store.postgres import record_prefix

        record_prefix(self.conn, prefix, symbol)

    def recorded_prefixes(self) -> dict[str, str]:
        from naived.store.postgres import recorded_prefixes

        return recorded_prefixes(self.conn)

    def set_trading(self, symbol: str, mode: str | None) -> bool:
        """A start ("running"), shutdown ("shutting-down") or stop (None) of the symbol in the trading
        set every host shares; False when there was nothing to do (PgTradingSet.request)."""
        from naived.store.postgres import PgTradingSet

        return PgTradingSet(self.conn).request(symbol, mode)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


if TYPE_CHECKING:
    def _satisfies(s: SqliteBackend, p: PgBackend) -> tuple[Backend, Backend]:  # mypy: both are Backends
        return s, p

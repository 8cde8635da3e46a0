"""The leader's durable memory: each trader's last state, finished cycles, cycle numbers.

One SQLite file per symbol in the state directory (WAL). A state is committed
before the leader acks the trader, so whatever a trader was told is stored
survives a crash of the trader, the leader, the symbol supervisor or naived.
`synchronous=NORMAL` in WAL mode survives any process being killed; only a power
loss could roll back the last commits. The two facts client order ids derive from
are committed with `synchronous=FULL` (fsync of the WAL) before they are used: the
cycle counter (`next_cycle`) and the store's random client order id prefix
(`id_prefix`), so no id is ever handed out twice, power cuts included.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from naived.core.messages import TraderState
from naived.store import sqlfile
from naived.store.base import FEES, add_fees, fees_by_asset, new_id_prefix

if TYPE_CHECKING:
    from naived.store.base import SymbolStore

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(TraderState).decode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS traders (
    trader_id  INTEGER PRIMARY KEY,
    state      TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cycles (
    cycle       INTEGER PRIMARY KEY,
    trader_id   INTEGER NOT NULL,
    state       TEXT NOT NULL,
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# A symbol store is recognised by its header (naived/store/sqlfile.py); one written before naive stamped
# its files, by its three tables.
SYMBOL_STORE = sqlfile.kind("symbol store", b"nvSy", 1, _SCHEMA, frozenset({"traders", "cycles", "meta"}))


def store_path(state_dir: Path, symbol: str) -> Path:
    return state_dir / "symbols" / f"{symbol}.sqlite"


# --- the install's record of every id prefix it minted -----------------------------------------
# A store moved aside (or lost) takes its prefix with it; its orders at the exchange are still
# this install's. So every prefix is recorded here, at the state directory's level, durably and
# before any order can carry it: the root's reconcile knows them all (naived/tree/workers.py, find_orphans).

_PREFIX_SCHEMA = """
CREATE TABLE IF NOT EXISTS id_prefixes (
    prefix    TEXT PRIMARY KEY,
    symbol    TEXT NOT NULL,
    minted_at REAL NOT NULL
);
"""
PREFIX_REGISTRY = sqlfile.kind("id prefix registry", b"nvIn", 1, _PREFIX_SCHEMA)  # new with the header: no legacy form


def registry_path(state_dir: Path) -> Path:
    return state_dir / "id-prefixes.sqlite"


def record_prefix(state_dir: Path, prefix: str, symbol: str) -> None:
    """Record `prefix` (minted for `symbol`) in the install's registry, durably (fsync); a prefix
    recorded before is left as it is. Raises sqlite3.Error."""
    db = sqlfile.open_db(registry_path(state_dir), PREFIX_REGISTRY, timeout=5)  # leaders starting together queue here
    try:
        if db.execute("SELECT 1 FROM id_prefixes WHERE prefix = ?", (prefix,)).fetchone() is None:
            db.execute("PRAGMA synchronous=FULL")
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT OR IGNORE INTO id_prefixes VALUES (?, ?, ?)", (prefix, symbol, time.time()))
    finally:
        db.close()


def recorded_prefixes(state_dir: Path) -> dict[str, str]:
    """Every prefix this install ever minted -> the symbol it was minted for (none yet: empty)."""
    try:
        db = sqlfile.open_db(registry_path(state_dir), PREFIX_REGISTRY, readonly=True, timeout=5)
    except FileNotFoundError:
        return {}
    try:
        return dict(db.execute("SELECT prefix, symbol FROM id_prefixes"))
    finally:
        db.close()


class Store:
    def __init__(self, path: Path, readonly: bool = False) -> None:
        """Open (creating it if new) a symbol's store. Raises sqlite3.Error for a file that is not
        a healthy store, and then writes nothing to it. `readonly`: for readers beside the leader."""
        if readonly:
            self._db = sqlfile.open_db(path, SYMBOL_STORE, readonly=True, timeout=1)
            self._db.execute("SELECT count(*) FROM cycles").fetchone()  # a bad file fails here, not later
            return
        # A short busy timeout: the leader's loop must not wait long on a lock someone else holds.
        # An empty, foreign or unstamped-and-unrecognised file raises here, untouched.
        self._db = sqlfile.open_db(path, SYMBOL_STORE, timeout=1)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(f"BEGIN; {_SCHEMA} COMMIT;")  # a new store's tables in one commit

    def close(self) -> None:
        self._db.close()

    def traders(self) -> dict[int, TraderState]:
        """Every trader's last state (finished cycles are in `cycles`, not here)."""
        rows = self._db.execute("SELECT trader_id, state FROM traders ORDER BY trader_id")
        return {trader_id: _decode(state) for trader_id, state in rows}

    def save(self, state: TraderState, counts: dict[str, int] | None = None) -> None:
        """Store a trader's state, and bump counters (metrics) in the same transaction."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO traders (trader_id, state, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (trader_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                (state.trader_id, _encode(state).decode(), time.time()),
            )
            for key, n in (counts or {}).items():
                self._bump(key, n)

    def bump(self, key: str, n: int = 1) -> None:
        self._bump(key, n)

    def _bump(self, key: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + excluded.value",
            (key, n),
        )

    def counter(self, key: str) -> int:
        value = self.get_meta(key)
        return int(value) if value else 0

    def finish(self, state: TraderState) -> None:
        """Record a finished cycle and forget the trader's state, in one transaction; its fees and
        pnl join the symbol's running totals (`books`) in the same transaction."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            fresh = self._db.execute("SELECT 1 FROM cycles WHERE cycle = ?", (state.cycle,)).fetchone() is None
            fees = self.fees() if fresh and state.result is not None else {}  # before this cycle is among them
            self._db.execute(
                "INSERT OR REPLACE INTO cycles (cycle, trader_id, state, finished_at) VALUES (?, ?, ?, ?)",
                (state.cycle, state.trader_id, _encode(state).decode(), time.time()),
            )
            self._db.execute("DELETE FROM traders WHERE trader_id = ?", (state.trader_id,))
            if fresh and state.result is not None:
                for key, amount in (("fees_quote", state.result.fees_quote), ("pnl_quote", state.result.pnl)):
                    total = Decimal(self.get_meta(key) or "0") + Decimal(amount)
                    self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(total)))
                fees = add_fees(fees, state.result.fees)
                self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (FEES, _encode(fees).decode()))

    def books(self) -> dict[str, str]:
        """Totals over the finished cycles, in the quote asset (decimal strings): fees_quote, pnl_quote."""
        return {key: self.get_meta(key) or "0" for key in ("fees_quote", "pnl_quote")}

    def fees(self) -> dict[str, str]:
        return fees_by_asset(self.get_meta(FEES), self.finished_cycles)

    def finished_cycles(self) -> list[TraderState]:
        return [_decode(s) for (s,) in self._db.execute("SELECT state FROM cycles ORDER BY cycle")]

    def cycles_finished(self) -> int:
        count: int = self._db.execute("SELECT count(*) FROM cycles").fetchone()[0]
        return count

    def next_cycle(self) -> int:
        """A cycle number never handed out before for this symbol (client order ids derive from it)."""
        return self.next_cycles(1)[0]

    def next_cycles(self, n: int) -> list[int]:
        """`n` cycle numbers never handed out before, in one commit (a leader starting its traders).

        Durable before they are returned (fsync): after a power cut the counter cannot roll back
        under an id that an order at the exchange already carries."""
        with self._durably():
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT value FROM meta WHERE key = 'last_cycle'").fetchone()
            first = int(row[0]) + 1 if row else 1
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_cycle', ?)", (str(first + n - 1),))
        return list(range(first, first + n))

    def id_prefix(self, record: Callable[[str], None] | None = None) -> str:
        """This store's client order id prefix: `nv` and 6 random characters, made once, durably.

        Cycle numbers start again at 1 in a new store (a new installation, or a deleted state
        directory); a new random prefix keeps its ids apart from every other store's, so two
        installations trading one account never take each other's orders (36^6 ≈ 2·10^9).
        `record` is given a new prefix before this store keeps it (the install's registry)."""
        prefix = self.get_meta("id_prefix")
        if prefix is None:
            candidate = new_id_prefix()
            if record is not None:
                record(candidate)  # a crash after this leaves a recorded prefix no order carries: harmless
            with self._durably():
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('id_prefix', ?)", (candidate,))
            prefix = self.get_meta("id_prefix")
            assert prefix is not None
        return prefix

    @contextlib.contextmanager
    def _durably(self) -> Iterator[None]:
        """One transaction committed with synchronous=FULL (the WAL is fsynced at the commit)."""
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            with self._db:
                yield
        finally:
            self._db.execute("PRAGMA synchronous=NORMAL")

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


if TYPE_CHECKING:
    def _satisfies(store: Store) -> SymbolStore:  # mypy: Store is a SymbolStore
        return store

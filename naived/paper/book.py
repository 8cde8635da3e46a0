"""The paper exchange's state: orders, fills and balances, matched against public trades.

Everything lives in memory for speed and in SQLite (WAL) for survival: each change
is committed before the caller hears about it, so a `kill -9` loses nothing that
was ever acknowledged. If a commit fails the memory is reloaded from the database,
which stays the single truth.

Matching follows the book's BinanceMock: orders rest until a public trade crosses
them. A BUY fills when a trade prints strictly below its price, a SELL strictly
above (`fill_on_touch` makes it <= / >=). The fill price is the order's own limit
price, and no commission is charged (the strategy budgets the fee in its prices).
With `partial_fills` a trade fills at most its own quantity, across the orders it
crosses in time priority.

One lock guards it all: HTTP threads place/cancel/query, the trade thread fills.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

from naived.symbols import SymbolFilters

log = logging.getLogger(__name__)

OPEN = ("NEW", "PARTIALLY_FILLED")
MAX_PRICE = Decimal("1000000")  # exchange_info_entry's maxPrice
ZERO = Decimal(0)


class Rejected(Exception):
    """A Binance error answer: HTTP status, code and message, as Binance words them."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(f"{code} {msg}")
        self.code = code
        self.msg = msg
        self.status = status


@dataclass
class Fill:
    price: Decimal
    qty: Decimal
    trade_id: int
    time_ms: int


@dataclass
class PaperOrder:
    order_id: int
    symbol: str
    client_order_id: str
    side: str
    price: Decimal
    orig_qty: Decimal
    time_ms: int
    received_ns: int
    executed_qty: Decimal = ZERO
    cum_quote: Decimal = ZERO
    status: str = "NEW"
    update_ms: int = 0
    fills: list[Fill] = field(default_factory=list)

    @property
    def remaining(self) -> Decimal:
        return self.orig_qty - self.executed_qty

    @property
    def is_open(self) -> bool:
        return self.status in OPEN


@dataclass
class Balance:
    free: Decimal = ZERO
    locked: Decimal = ZERO


_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id INTEGER PRIMARY KEY, symbol TEXT NOT NULL, client_order_id TEXT NOT NULL,
    side TEXT NOT NULL, price TEXT NOT NULL, orig_qty TEXT NOT NULL, executed_qty TEXT NOT NULL,
    cum_quote TEXT NOT NULL, status TEXT NOT NULL, time_ms INTEGER NOT NULL,
    update_ms INTEGER NOT NULL, received_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS fills (
    order_id INTEGER NOT NULL, seq INTEGER NOT NULL, price TEXT NOT NULL, qty TEXT NOT NULL,
    trade_id INTEGER NOT NULL, time_ms INTEGER NOT NULL, PRIMARY KEY (order_id, seq));
CREATE TABLE IF NOT EXISTS balances (asset TEXT PRIMARY KEY, free TEXT NOT NULL, locked TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _open(path: Path) -> sqlite3.Connection:
    """Connect, refusing a file that is not an intact paper-exchange database before anything
    is written to it (journal mode and schema creation both write)."""
    existed = path.exists() and path.stat().st_size > 0
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    if existed:
        problems = [row[0] for row in db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(problems[:3]))
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            raise sqlite3.DatabaseError("not a paper exchange database (no meta table)")
    # WAL + synchronous=NORMAL: a commit is in the OS before we answer, which is what
    # surviving kill -9 needs; only a power cut could lose the last transactions.
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class PaperBook:
    def __init__(
        self, path: Path, starting_balances: dict[str, Decimal], *, fill_on_touch: bool = False, partial_fills: bool = False
    ) -> None:
        self.fill_on_touch = fill_on_touch
        self.partial_fills = partial_fills
        self._lock = threading.Lock()
        try:
            self._db = _open(path)
            # Schema, first balances and the first load in one transaction: a file the book
            # cannot read is rolled back to exactly what it held.
            with self._transaction():
                for statement in _SCHEMA.split(";"):
                    self._db.execute(statement)
                if self._db.execute("SELECT 1 FROM meta WHERE key = 'initialized'").fetchone() is None:
                    for asset, amount in starting_balances.items():
                        self._db.execute("INSERT INTO balances VALUES (?, ?, '0')", (asset, str(amount)))
                    self._db.execute("INSERT INTO meta VALUES ('initialized', '1')")
                self._load()
        except (sqlite3.Error, OSError, ArithmeticError, ValueError, KeyError) as exc:
            # Never start afresh over a file that may hold committed orders and balances:
            # the operator decides (restore it, or move it aside), so say exactly that.
            raise SystemExit(
                f"paper exchange: cannot use its state file {path} ({type(exc).__name__}: {exc}); "
                f"restore it from a backup, or move it aside to start with fresh balances"
            ) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- storage --------------------------------------------------------------------

    def _load(self) -> None:
        self.orders: dict[int, PaperOrder] = {}
        self.balances: dict[str, Balance] = {}
        self._open: dict[str, dict[int, PaperOrder]] = {}  # symbol -> open orders, in time priority
        self._by_client_id: dict[tuple[str, str], PaperOrder] = {}  # latest order with that id
        for row in self._db.execute("SELECT * FROM orders ORDER BY order_id"):
            oid, symbol, cid, side, price, qty, executed, quote, status, t, updated, received = row
            order = PaperOrder(oid, symbol, cid, side, Decimal(price), Decimal(qty), t, received,
                               Decimal(executed), Decimal(quote), status, updated)
            self._index(order)
        for oid, price, qty, trade_id, t in self._db.execute(
            "SELECT order_id, price, qty, trade_id, time_ms FROM fills ORDER BY order_id, seq"
        ):
            self.orders[oid].fills.append(Fill(Decimal(price), Decimal(qty), trade_id, t))
        for asset, free, locked in self._db.execute("SELECT asset, free, locked FROM balances"):
            self.balances[asset] = Balance(Decimal(free), Decimal(locked))
        self._next_id = max(self.orders, default=0) + 1

    def _index(self, order: PaperOrder) -> None:
        self.orders[order.order_id] = order
        self._by_client_id[(order.symbol, order.client_order_id)] = order
        if order.is_open:
            self._open.setdefault(order.symbol, {})[order.order_id] = order

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # The connection is in autocommit mode, so transactions are explicit and obvious.
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _save(self, orders: list[PaperOrder], assets: set[str], fills: Sequence[tuple[PaperOrder, int, Fill]] = ()) -> None:
        """Write what changed in one transaction; on failure memory goes back to the disk's truth."""
        try:
            with self._transaction():
                self._db.executemany(
                    "INSERT OR REPLACE INTO orders VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(o.order_id, o.symbol, o.client_order_id, o.side, str(o.price), str(o.orig_qty),
                      str(o.executed_qty), str(o.cum_quote), o.status, o.time_ms, o.update_ms, o.received_ns)
                     for o in orders],
                )
                self._db.executemany(
                    "INSERT INTO fills VALUES (?,?,?,?,?,?)",
                    [(o.order_id, seq, str(f.price), str(f.qty), f.trade_id, f.time_ms) for o, seq, f in fills],
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO balances VALUES (?,?,?)",
                    [(a, str(self.balances[a].free), str(self.balances[a].locked)) for a in assets],
                )
        except sqlite3.Error:
            log.exception("commit failed; reloading the paper exchange's state from disk")
            self._load()
            raise

    def _balance(self, asset: str) -> Balance:
        return self.balances.setdefault(asset, Balance())

    # --- orders ---------------------------------------------------------------------

    def place(
        self, f: SymbolFilters, side: str, price: Decimal, qty: Decimal, client_order_id: str, received_ns: int
    ) -> PaperOrder:
        """Check filters, balance and duplicates, lock the funds, rest the order."""
        if not (f.tick_size <= price <= MAX_PRICE) or price % f.tick_size:
            raise Rejected(-1013, "Filter failure: PRICE_FILTER")
        if not (f.min_qty <= qty <= f.max_qty) or (qty - f.min_qty) % f.step_size:
            raise Rejected(-1013, "Filter failure: LOT_SIZE")
        if price * qty < f.min_notional:
            raise Rejected(-1013, "Filter failure: NOTIONAL")
        asset, amount = (f.quote, price * qty) if side == "BUY" else (f.base, qty)
        with self._lock:
            existing = self._by_client_id.get((f.symbol, client_order_id))
            if existing is not None and existing.is_open:
                raise Rejected(-2010, "Duplicate order sent.")
            balance = self._balance(asset)
            if balance.free < amount:
                raise Rejected(-2010, "Account has insufficient balance for requested action.")
            now = _now_ms()
            order = PaperOrder(self._next_id, f.symbol, client_order_id, side, price, qty, now, received_ns, update_ms=now)
            balance.free -= amount
            balance.locked += amount
            self._next_id += 1
            self._index(order)
            self._save([order], {asset})
            order = _snapshot(order)
        log.info("placed %s %s %s %s @ %s (orderId %d)", f.symbol, client_order_id, side, qty, price, order.order_id)
        return order

    def _lookup(self, symbol: str, order_id: int | None, client_order_id: str | None) -> PaperOrder | None:
        order = self.orders.get(order_id) if order_id is not None else self._by_client_id.get((symbol, client_order_id or ""))
        if order is None or order.symbol != symbol:
            return None
        if order_id is not None and client_order_id is not None and order.client_order_id != client_order_id:
            return None
        return order

    def find(self, symbol: str, order_id: int | None, client_order_id: str | None) -> PaperOrder | None:
        """By order id, else the latest order with that client order id (a copy, safe to read)."""
        with self._lock:
            order = self._lookup(symbol, order_id, client_order_id)
            return _snapshot(order) if order else None

    def cancel(self, f: SymbolFilters, order_id: int | None, client_order_id: str | None) -> PaperOrder:
        with self._lock:
            order = self._lookup(f.symbol, order_id, client_order_id)
            if order is None or not order.is_open:
                raise Rejected(-2011, "Unknown order sent.")
            asset, amount = (f.quote, order.price * order.remaining) if order.side == "BUY" else (f.base, order.remaining)
            balance = self._balance(asset)
            balance.locked -= amount
            balance.free += amount
            order.status = "CANCELED"
            order.update_ms = _now_ms()
            del self._open[f.symbol][order.order_id]
            self._save([order], {asset})
            order = _snapshot(order)
        log.info("cancelled %s %s (orderId %d)", f.symbol, order.client_order_id, order.order_id)
        return order

    def open_orders(self, symbol: str | None) -> list[PaperOrder]:
        with self._lock:
            books = [self._open.get(symbol, {})] if symbol else list(self._open.values())
            return sorted((_snapshot(o) for book in books for o in book.values()), key=lambda o: o.order_id)

    def all_orders(self, symbol: str | None = None) -> list[PaperOrder]:
        with self._lock:
            return [_snapshot(o) for o in self.orders.values() if symbol is None or o.symbol == symbol]

    def balance_sheet(self) -> dict[str, Balance]:
        with self._lock:
            return {a: Balance(b.free, b.locked) for a, b in sorted(self.balances.items())}

    def symbols_with_open_orders(self) -> set[str]:
        with self._lock:
            return {s for s, book in self._open.items() if book}

    # --- matching -------------------------------------------------------------------

    def on_trade(self, f: SymbolFilters, price: Decimal, qty: Decimal, trade_id: int) -> list[tuple[PaperOrder, Fill]]:
        """Fill the resting orders this public trade crosses."""
        filled: list[tuple[PaperOrder, Fill]] = []
        with self._lock:
            book = self._open.get(f.symbol)
            if not book:
                return filled
            available = qty
            assets: set[str] = set()
            rows: list[tuple[PaperOrder, int, Fill]] = []
            now = _now_ms()
            for order in list(book.values()):
                if order.side == "BUY":
                    crosses = price < order.price or (self.fill_on_touch and price == order.price)
                else:
                    crosses = price > order.price or (self.fill_on_touch and price == order.price)
                if not crosses:
                    continue
                amount = min(order.remaining, available) if self.partial_fills else order.remaining
                if amount <= 0:
                    break
                available -= amount
                fill = Fill(order.price, amount, trade_id, now)
                quote = order.price * amount
                if order.side == "BUY":
                    self._balance(f.quote).locked -= quote
                    self._balance(f.base).free += amount
                else:
                    self._balance(f.base).locked -= amount
                    self._balance(f.quote).free += quote
                assets |= {f.base, f.quote}
                order.fills.append(fill)
                rows.append((order, len(order.fills) - 1, fill))
                order.executed_qty += amount
                order.cum_quote += quote
                order.update_ms = now
                order.status = "FILLED" if order.remaining == 0 else "PARTIALLY_FILLED"
                if order.status == "FILLED":
                    del book[order.order_id]
                filled.append((order, fill))
            if filled:
                self._save([o for o, _ in filled], assets, rows)
        for order, fill in filled:
            log.info("%s %s %s %s %s @ %s (orderId %d, trade %d)", order.status.lower().replace("_", " "), order.symbol,
                     order.client_order_id, order.side, fill.qty, fill.price, order.order_id, trade_id)
        return filled



def _snapshot(order: PaperOrder) -> PaperOrder:
    """A copy for callers outside the lock: the trade thread keeps filling the original."""
    return replace(order, fills=list(order.fills))

"""The paper exchange's state: orders, fills and balances, matched against public trades.

Everything lives in memory for speed and in SQLite (WAL) for survival: each change
is committed before the caller hears about it, so a `kill -9` loses nothing that
was ever acknowledged. If a commit fails the memory is reloaded from the database,
which stays the single truth.

Matching. The public trade stream is the only book the paper exchange sees, so the
last trade price of a symbol stands for the best price on the other side:
- A new order is *marketable* when a BUY's limit is at or above the last trade price
  (a SELL's at or below), as a Binance limit order at or through the best opposite
  price is. It fills at once, as a taker, at the last trade price (Binance fills at
  the prices of the resting orders it takes, which here is that one price). MARKET
  orders fill the same way. With `fill_on_touch` off a limit exactly at the last
  price still counts as marketable: on Binance a buy at the best ask takes it.
- A symbol with no trade seen since the paper exchange started has no price: a
  limit order cannot be known to be marketable and rests; a MARKET order finds no
  liquidity and EXPIRES unfilled (Binance's answer to a market order on an empty book).
- Resting orders fill as makers at their own limit price when a later trade crosses
  them: a BUY when a trade prints strictly below its price, a SELL strictly above
  (`fill_on_touch` makes it <= / >=; strict, because a trade at your price may have
  been with an order ahead of yours in the queue). Crossing orders fill by price
  priority (highest BUY, lowest SELL first), then time priority.
- With `partial_fills` a trade's quantity is liquidity: resting orders take at most
  what it traded, and marketable orders placed after it take at most what is left of
  it (until the next trade); the rest of a GTC order rests, of an IOC or MARKET
  order expires, and an FOK order that cannot fill entirely expires unfilled.
  Without it every fill is for the whole remaining quantity.

The average price (PERCENT_PRICE_BY_SIDE, GET /api/v3/avgPrice), as Binance computes it: the
volume-weighted average of the symbol's trades in the last `avg_price_mins` minutes of the
book's clock; with no trade in that window, the last trade's price; with no trade seen since
start, none (and the filter is not evaluated). The window is kept as sums per slice of 1/100
of it (3 s of 5 minutes), so a trade leaves it up to one slice late: memory stays bounded
whatever the trade rate, and only an order's check computes the sum.

Commission (`Fees`), as Binance charges it: the maker or taker rate of each fill,
taken from the asset the fill gives (BUY: the base asset, SELL: the quote asset),
rounded up to 8 decimals (never below Binance's). With `bnb` on, it is taken from
BNB instead at 75% of the standard rate (Binance's 25% discount) when the BNB
balance covers it, converted at the last BNBUSDT-style price seen (Binance does not
say which price it uses); without a BNB price or enough BNB it is taken from the
received asset, undiscounted, as on Binance.

OCO order lists (`oco.py`, `place_oco`): two legs under one `OrderList`, their funds locked once
(the larger leg's commitment; `_release` frees a leg's share while the other leg is open). A leg's
first fill or trigger expires the other leg and ends the list in the same commit; closing a leg
closes the list's other leg with it (`_with_other_legs`).

One lock guards it all: HTTP threads place/cancel/query, the trade thread fills.
Every change is also handed to the `listeners` (the user data stream) once it is
committed, still under the lock, so that they see the changes in commit order: a listener
must only queue them (it must not block, nor call the book).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from pathlib import Path
from typing import Any

from naived.core.symbols import SymbolFilters
from naived.paper import stops
from naived.store import sqlfile

log = logging.getLogger(__name__)

OPEN = ("NEW", "PARTIALLY_FILLED")
MAX_PRICE = Decimal("1000000")  # exchange_info_entry's maxPrice
ZERO = Decimal(0)
EIGHT = Decimal("0.00000001")
BNB = "BNB"
BNB_DISCOUNT = Decimal("0.25")  # Binance's discount on the standard commission paid in BNB


class Rejected(Exception):
    """A Binance error answer: HTTP status, code and message, as Binance words them."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(f"{code} {msg}")
        self.code = code
        self.msg = msg
        self.status = status

    def answer(self) -> dict[str, Any]:
        """Binance's error body."""
        return {"code": self.code, "msg": self.msg}


@dataclass(frozen=True)
class Fees:
    """Commission rates of the paper account (fractions: 0.001 = 0.1%)."""

    maker: Decimal = Decimal("0.001")
    taker: Decimal = Decimal("0.001")
    bnb: bool = False  # pay in BNB at the discounted rate when the balance covers it


@dataclass
class Fill:
    price: Decimal
    qty: Decimal
    trade_id: int  # the paper exchange's own trade id (Binance's `tradeId` / myTrades `id`)
    time_ms: int
    commission: Decimal = ZERO
    commission_asset: str = ""
    is_maker: bool = True
    market_trade_id: int = 0  # the public trade that made it happen (the last one seen, for a taker)


@dataclass
class NewOrder:
    """A checked new-order request (the server parses and validates the parameters)."""

    side: str
    type: str  # LIMIT | LIMIT_MAKER | MARKET | STOP_LOSS[_LIMIT] | TAKE_PROFIT[_LIMIT]
    time_in_force: str  # GTC | IOC | FOK; GTC for LIMIT_MAKER, MARKET, STOP_LOSS, TAKE_PROFIT, as Binance reports them
    client_order_id: str
    received_ns: int
    price: Decimal = ZERO  # 0 for MARKET, STOP_LOSS, TAKE_PROFIT
    qty: Decimal = ZERO  # 0 for a MARKET order by quoteOrderQty until it is known
    quote_qty: Decimal = ZERO  # MARKET by quoteOrderQty
    stop_price: Decimal = ZERO  # stop and take-profit orders (`stops.py`)


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
    type: str = "LIMIT"
    time_in_force: str = "GTC"
    orig_quote_qty: Decimal = ZERO
    stop_price: Decimal = ZERO
    # None: working since its placement (time_ms); stops.NOT_WORKING: a stop not triggered yet;
    # else when its stop triggered (Binance's `workingTime`)
    working_ms: int | None = None
    order_list_id: int = -1  # the OCO it is a leg of (Binance's `orderListId`), -1 for none

    @property
    def working_time(self) -> int:
        return self.time_ms if self.working_ms is None else self.working_ms

    @property
    def is_working(self) -> bool:
        """On the book (Binance's `isWorking`): every order but a stop not triggered yet."""
        return self.working_time != stops.NOT_WORKING

    @property
    def remaining(self) -> Decimal:
        return self.orig_qty - self.executed_qty

    @property
    def is_open(self) -> bool:
        return self.status in OPEN


@dataclass
class OrderList:
    """An OCO (`oco.py`): its two legs, the stop-loss leg first (as Binance's examples list them),
    EXECUTING until one leg fills, triggers or is cancelled, then ALL_DONE."""

    order_list_id: int
    symbol: str
    list_client_order_id: str
    order_ids: tuple[int, int]
    time_ms: int  # Binance's `transactionTime`
    status: str = "EXECUTING"  # listOrderStatus: EXECUTING | ALL_DONE

    @property
    def is_open(self) -> bool:
        return self.status == "EXECUTING"


@dataclass
class Balance:
    free: Decimal = ZERO
    locked: Decimal = ZERO


@dataclass
class Change:
    """One committed change of an order, for the user data stream: Binance's execution type,
    the fill it made (for TRADE), and the balances it moved."""

    order: PaperOrder
    execution: str  # NEW | TRADE | CANCELED | EXPIRED
    fill: Fill | None
    balances: dict[str, Balance]
    time_ms: int
    cancel_id: str = ""  # CANCELED by a request: that request's client order id (Binance's `c`)
    triggered: bool = False  # NEW: a stop that starts working, not an order placed
    expiry_reason: str = ""  # EXPIRED: Binance's `eR` (here only OCO_TRIGGER)
    order_list: OrderList | None = None  # a `listStatus` event follows this change's executionReport
    legs: list[PaperOrder] = field(default_factory=list)  # that list's orders


@dataclass
class _Market:
    """The last public trade of a symbol: the paper exchange's whole order book."""

    price: Decimal
    left: Decimal  # its quantity not yet taken by paper orders (partial_fills)
    trade_id: int
    time_ms: int = 0  # when it was seen (the book's clock): avgPrice's closeTime


AVERAGE_SLICES = 100  # an average's window is kept as this many sums


class _Average:
    """Trades of a symbol's last `minutes` (the book's clock), as [slice start ms, Σ price × qty,
    Σ qty] per slice of the window, oldest first."""

    def __init__(self, minutes: int) -> None:
        self.window_ms = minutes * 60_000
        self.slice_ms = max(1000, self.window_ms // AVERAGE_SLICES)
        self.slices: deque[list[Any]] = deque()

    def add(self, now: int, price: Decimal, qty: Decimal) -> None:
        start = now - now % self.slice_ms
        if self.slices and self.slices[-1][0] == start:
            self.slices[-1][1] += price * qty
            self.slices[-1][2] += qty
        else:
            self.slices.append([start, price * qty, qty])
        self._expire(now)

    def _expire(self, now: int) -> None:
        # a slice leaves once all of it is older than the window
        while self.slices and self.slices[0][0] + self.slice_ms <= now - self.window_ms:
            self.slices.popleft()

    def price(self, now: int) -> Decimal | None:
        """The volume-weighted average of the window; None if no trade is in it."""
        self._expire(now)
        volume = sum((s[2] for s in self.slices), ZERO)
        if not volume:
            return None
        return (sum((s[1] for s in self.slices), ZERO) / volume).quantize(EIGHT)


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
CREATE TABLE IF NOT EXISTS order_lists (
    order_list_id INTEGER PRIMARY KEY, symbol TEXT NOT NULL, list_client_order_id TEXT NOT NULL,
    order_ids TEXT NOT NULL, time_ms INTEGER NOT NULL, status TEXT NOT NULL);
"""
# Columns added since the first schema: older state files gain them with these defaults.
_ADDED_COLUMNS = {
    "orders": [("type", "TEXT NOT NULL DEFAULT 'LIMIT'"), ("time_in_force", "TEXT NOT NULL DEFAULT 'GTC'"),
               ("orig_quote_qty", "TEXT NOT NULL DEFAULT '0'"), ("stop_price", "TEXT NOT NULL DEFAULT '0'"),
               ("working_ms", "INTEGER"), ("order_list_id", "INTEGER NOT NULL DEFAULT -1")],
    "fills": [("commission", "TEXT NOT NULL DEFAULT '0'"), ("commission_asset", "TEXT NOT NULL DEFAULT ''"),
              ("is_maker", "INTEGER NOT NULL DEFAULT 1"), ("market_trade_id", "INTEGER NOT NULL DEFAULT 0")],
}
_ORDER_COLUMNS = ("order_id, symbol, client_order_id, side, price, orig_qty, executed_qty, cum_quote, status, time_ms, "
                  "update_ms, received_ns, type, time_in_force, orig_quote_qty, stop_price, working_ms, order_list_id")
_FILL_COLUMNS = "order_id, seq, price, qty, trade_id, time_ms, commission, commission_asset, is_maker, market_trade_id"


# Recognised by its header (naived/store/sqlfile.py); one written before naive stamped its files, by
# the tables the paper exchange has always had.
PAPER_STORE = sqlfile.kind("paper exchange database", b"nvPx", 1, _SCHEMA, frozenset({"orders", "fills", "balances", "meta"}))


def _open(path: Path | str) -> sqlite3.Connection:
    """Connect, refusing a file that is not an intact paper-exchange database before anything
    is written to it (journal mode and schema creation both write): an empty file, a foreign
    one, or one without naive's header and tables is never started afresh over."""
    if str(path) == ":memory:":
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    else:
        existed = os.path.exists(path)
        db = sqlfile.open_db(Path(path), PAPER_STORE, check_same_thread=False)
        if existed:
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                db.close()
                raise sqlite3.DatabaseError("; ".join(problems[:3]))
    # WAL + synchronous=NORMAL: a commit is in the OS before we answer, which is what
    # surviving kill -9 needs; only a power cut could lose the last transactions.
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class PaperBook:
    def __init__(
        self, path: Path, starting_balances: dict[str, Decimal], *, fees: Fees = Fees(), fill_on_touch: bool = False,
        partial_fills: bool = False, clock: Callable[[], int] = _now_ms,
    ) -> None:
        # `clock` (ms) stamps orders and fills; a backtest passes the tape's time so its books
        # are the same on every run. `path` may be ":memory:" (a backtest keeps nothing).
        self.clock = clock
        self.fees = fees
        self.fill_on_touch = fill_on_touch
        self.partial_fills = partial_fills
        self.listeners: list[Callable[[list[Change]], None]] = []
        self._lock = threading.Lock()
        self._market: dict[str, _Market] = {}  # not kept on disk: after a restart, prices are unknown until a trade
        self._averages: dict[str, _Average] = {}  # symbols with PERCENT_PRICE_BY_SIDE; in memory, as `_market`
        try:
            self._db = _open(path)
            # Schema, first balances and the first load in one transaction: a file the book
            # cannot read is rolled back to exactly what it held.
            with self._transaction():
                for statement in _SCHEMA.split(";"):
                    self._db.execute(statement)
                for table, columns in _ADDED_COLUMNS.items():
                    have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                    for name, kind in columns:
                        if name not in have:
                            self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
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
        # symbol -> the open stops not triggered yet (also in `_open`): what each trade checks for a trigger
        self._waiting: dict[str, dict[int, PaperOrder]] = {}
        self._by_client_id: dict[tuple[str, str], PaperOrder] = {}  # latest order with that id
        for row in self._db.execute(f"SELECT {_ORDER_COLUMNS} FROM orders ORDER BY order_id"):
            (oid, symbol, cid, side, price, qty, executed, quote, status, t, updated, received, kind, tif, quote_qty,
             stop, working, list_id) = row
            order = PaperOrder(oid, symbol, cid, side, Decimal(price), Decimal(qty), t, received, Decimal(executed),
                               Decimal(quote), status, updated, type=kind, time_in_force=tif, orig_quote_qty=Decimal(quote_qty),
                               stop_price=Decimal(stop), working_ms=working, order_list_id=list_id)
            self._index(order)
        self._next_trade_id = 1
        for oid, _, price, qty, trade_id, t, fee, fee_asset, maker, market_id in self._db.execute(
            f"SELECT {_FILL_COLUMNS} FROM fills ORDER BY order_id, seq"
        ):
            self.orders[oid].fills.append(
                Fill(Decimal(price), Decimal(qty), trade_id, t, Decimal(fee), fee_asset, bool(maker), market_id))
            self._next_trade_id = max(self._next_trade_id, trade_id + 1)
        for asset, free, locked in self._db.execute("SELECT asset, free, locked FROM balances"):
            self.balances[asset] = Balance(Decimal(free), Decimal(locked))
        self._next_id = max(self.orders, default=0) + 1
        self.lists: dict[int, OrderList] = {}
        self._list_by_client_id: dict[str, OrderList] = {}  # latest list with that id
        for list_id, symbol, list_cid, ids, t, status in self._db.execute(
                "SELECT order_list_id, symbol, list_client_order_id, order_ids, time_ms, status FROM order_lists "
                "ORDER BY order_list_id"):
            first, second = (int(i) for i in ids.split(","))
            self._index_list(OrderList(list_id, symbol, list_cid, (first, second), t, status))
        self._next_list_id = max(self.lists, default=0) + 1

    def _index_list(self, order_list: OrderList) -> None:
        self.lists[order_list.order_list_id] = order_list
        self._list_by_client_id[order_list.list_client_order_id] = order_list

    def _index(self, order: PaperOrder) -> None:
        self.orders[order.order_id] = order
        self._by_client_id[(order.symbol, order.client_order_id)] = order
        if order.is_open:
            self._open.setdefault(order.symbol, {})[order.order_id] = order
            if not order.is_working:
                self._waiting.setdefault(order.symbol, {})[order.order_id] = order

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

    def _save(self, orders: list[PaperOrder], assets: set[str], fills: Sequence[tuple[PaperOrder, int, Fill]] = (),
              lists: Sequence[OrderList] = ()) -> None:
        """Write what changed in one transaction; on failure memory goes back to the disk's truth."""
        try:
            with self._transaction():
                self._db.executemany(
                    f"INSERT OR REPLACE INTO orders ({_ORDER_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(o.order_id, o.symbol, o.client_order_id, o.side, str(o.price), str(o.orig_qty),
                      str(o.executed_qty), str(o.cum_quote), o.status, o.time_ms, o.update_ms, o.received_ns,
                      o.type, o.time_in_force, str(o.orig_quote_qty), str(o.stop_price), o.working_ms, o.order_list_id)
                     for o in orders],
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO order_lists VALUES (?,?,?,?,?,?)",
                    [(ol.order_list_id, ol.symbol, ol.list_client_order_id, ",".join(map(str, ol.order_ids)), ol.time_ms,
                      ol.status) for ol in lists],
                )
                self._db.executemany(
                    f"INSERT INTO fills ({_FILL_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [(o.order_id, seq, str(f.price), str(f.qty), f.trade_id, f.time_ms, str(f.commission),
                      f.commission_asset, int(f.is_maker), f.market_trade_id) for o, seq, f in fills],
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO balances VALUES (?,?,?)",
                    [(a, str(self._balance(a).free), str(self._balance(a).locked)) for a in assets],
                )
        except sqlite3.Error:
            log.exception("commit failed; reloading the paper exchange's state from disk")
            self._load()
            raise

    def _balance(self, asset: str) -> Balance:
        return self.balances.setdefault(asset, Balance())

    def _publish(self, changes: list[Change]) -> None:
        """Under the lock, after the commit: listeners get changes in commit order."""
        for listener in self.listeners:
            try:
                listener(changes)
            except Exception:
                log.exception("a listener failed on %d order changes", len(changes))

    # --- orders ---------------------------------------------------------------------

    def check(self, f: SymbolFilters, new: NewOrder) -> None:
        """Binance's filters for a new order (also what POST /api/v3/order/test checks)."""
        market = self._market.get(f.symbol)
        limited = new.type not in stops.TAKERS  # the order has a `price`
        for price in ([new.price] if limited else []) + ([new.stop_price] if stops.is_stop(new.type) else []):
            # PRICE_FILTER holds for `price` and `stopPrice` alike (filters.md)
            if not (f.tick_size <= price <= MAX_PRICE) or price % f.tick_size:
                raise Rejected(-1013, "Filter failure: PRICE_FILTER")
        if new.type == "MARKET" and new.quote_qty:
            if new.quote_qty < f.min_notional:
                raise Rejected(-1013, "Filter failure: NOTIONAL")
            return  # the quantity is computed at execution, on the step size (never breaks LOT_SIZE)
        if not (f.min_qty <= new.qty <= f.max_qty) or (new.qty - f.min_qty) % f.step_size:
            raise Rejected(-1013, "Filter failure: LOT_SIZE")
        if limited:  # a filter on the order's `price`: MARKET, STOP_LOSS and TAKE_PROFIT have none
            average = self.average_price(f)
            band = f.price_band(new.side, average[0]) if average is not None else None
            if band is not None and not band[0] <= new.price <= band[1]:
                raise Rejected(-1013, "Filter failure: PERCENT_PRICE_BY_SIDE")
        # A STOP_LOSS / TAKE_PROFIT is valued at its stop price: the price it is meant to sell or buy at.
        notional_price = new.price if limited else new.stop_price if stops.is_stop(new.type) else (
            market.price if market else None)
        if notional_price is not None and notional_price * new.qty < f.min_notional:
            raise Rejected(-1013, "Filter failure: NOTIONAL")

    def place(self, f: SymbolFilters, new: NewOrder) -> tuple[PaperOrder, list[Change]]:
        """Check filters, duplicates and balance; fill what is marketable at once (taker), rest
        or expire the rest; commit. A stop or take-profit order only rests, its funds locked,
        until a trade triggers it (`on_trade`). Returns the order and its changes (NEW, then
        TRADEs, then EXPIRED if it expired)."""
        self.check(f, new)
        with self._lock:
            existing = self._by_client_id.get((f.symbol, new.client_order_id))
            if existing is not None and existing.is_open:
                raise Rejected(-2010, "Duplicate order sent.")
            market = self._market.get(f.symbol)
            qty = new.qty
            if new.type == "MARKET" and new.quote_qty and market is not None:
                # As close to quoteOrderQty as the step size allows, never above it.
                qty = (new.quote_qty / market.price / f.step_size).to_integral_value(ROUND_DOWN) * f.step_size
                if qty < f.min_qty:
                    raise Rejected(-1013, "Filter failure: LOT_SIZE")
            stop = stops.is_stop(new.type)
            if stop and market is not None and stops.triggers(new.type, new.side, new.stop_price, market.price):
                raise Rejected(-2010, stops.WOULD_TRIGGER)
            if new.type == "LIMIT_MAKER" and self._marketable(new.type, new.side, new.price, market):
                raise Rejected(-2010, "Order would immediately match and take.")
            # Funds: a BUY commits its limit price (a MARKET BUY the last price, a STOP_LOSS or
            # TAKE_PROFIT BUY its stop price) times its quantity.
            spend_price = (market.price if market else ZERO) if new.type == "MARKET" else (
                new.stop_price if new.type in stops.TAKERS else new.price)
            asset, amount = (f.quote, spend_price * qty) if new.side == "BUY" else (f.base, qty)
            balance = self._balance(asset)
            if balance.free < amount:
                raise Rejected(-2010, "Account has insufficient balance for requested action.")
            now = self.clock()
            order = PaperOrder(self._next_id, f.symbol, new.client_order_id, new.side, new.price, qty, now,
                               new.received_ns, update_ms=now, type=new.type, time_in_force=new.time_in_force,
                               orig_quote_qty=new.quote_qty, stop_price=new.stop_price,
                               working_ms=stops.NOT_WORKING if stop else None)
            self._next_id += 1
            changes = [Change(_snapshot(order), "NEW", None, {}, now)]
            rows: list[tuple[PaperOrder, int, Fill]] = []
            # What the account position lists: only the balances this order moved. A stop is off
            # the book until a trade triggers it: only its funds are held.
            changed = {self._lock_commitment(f, order)} if stop else self._work(f, order, market, now, changes, rows)
            self._index(order)
            self._save([order], {f.base, f.quote} | changed, rows)
            changes[-1].balances = {a: replace(self.balances[a]) for a in sorted(changed)}
            order = _snapshot(order)
            self._publish(changes)
        log.info("placed %s %s %s %s %s %s @ %s (orderId %d): %s", f.symbol, new.client_order_id, new.type, new.time_in_force,
                 new.side, qty, new.price, order.order_id, order.status)
        return order, changes

    def place_oco(self, f: SymbolFilters, legs: tuple[NewOrder, NewOrder], list_client_id: str,
                  check_prices: Callable[[Decimal | None], None]) -> tuple[OrderList, list[PaperOrder]]:
        """POST /api/v3/orderList/oco, its parameters checked (`oco.parse_oco`), the legs in the order
        they are numbered (the stop-loss leg first). Binance's checks: each leg's filters, duplicate
        ids (of the open lists and the open orders), the prices' relation to the last trade price
        (`check_prices`, given None before the symbol's first trade), each leg's own "would trigger
        immediately" / "would immediately match"; then the funds, locked once for the pair: the
        larger of the two legs' commitments (a SELL: the quantity)."""
        for leg in legs:
            self.check(f, leg)
        with self._lock:
            known = self._list_by_client_id.get(list_client_id)
            ids = [leg.client_order_id for leg in legs]
            if (known is not None and known.is_open) or ids[0] == ids[1] or any(
                    (o := self._by_client_id.get((f.symbol, cid))) is not None and o.is_open for cid in ids):
                raise Rejected(-2010, "Duplicate order sent.")
            market = self._market.get(f.symbol)
            check_prices(market.price if market else None)
            for leg in legs:
                if stops.is_stop(leg.type) and market is not None and stops.triggers(leg.type, leg.side, leg.stop_price,
                                                                                      market.price):
                    raise Rejected(-2010, stops.WOULD_TRIGGER)
                if leg.type == "LIMIT_MAKER" and self._marketable(leg.type, leg.side, leg.price, market):
                    raise Rejected(-2010, "Order would immediately match and take.")
            now, list_id = self.clock(), self._next_list_id
            orders = [PaperOrder(self._next_id + n, f.symbol, leg.client_order_id, leg.side, leg.price, leg.qty, now,
                                 leg.received_ns, update_ms=now, type=leg.type, time_in_force=leg.time_in_force,
                                 stop_price=leg.stop_price, order_list_id=list_id,
                                 working_ms=stops.NOT_WORKING if stops.is_stop(leg.type) else None)
                      for n, leg in enumerate(legs)]
            (asset, first), (_, second) = (self._commitment(f, o) for o in orders)
            balance = self._balance(asset)
            if balance.free < max(first, second):
                raise Rejected(-2010, "Account has insufficient balance for requested action.")
            balance.free -= max(first, second)
            balance.locked += max(first, second)
            self._next_id += len(orders)
            self._next_list_id += 1
            order_list = OrderList(list_id, f.symbol, list_client_id, (orders[0].order_id, orders[1].order_id), now)
            for order in orders:
                self._index(order)
            self._index_list(order_list)
            self._save(orders, {asset}, lists=[order_list])
            changes = [Change(_snapshot(o), "NEW", None, {}, now) for o in orders]
            changes[-1].balances = {asset: replace(balance)}
            self._tag(changes[-1], order_list)
            self._publish(changes)
        log.info("placed OCO %s %s (orderListId %d): %s", f.symbol, list_client_id, list_id,
                 ", ".join(f"{o.client_order_id} {o.type} {o.side} {o.orig_qty} @ {o.price} stop {o.stop_price}" for o in orders))
        return replace(order_list), [_snapshot(o) for o in orders]

    def _other_leg(self, order: PaperOrder) -> PaperOrder | None:
        order_list = self.lists.get(order.order_list_id)
        if order_list is None:
            return None
        return self.orders[next(i for i in order_list.order_ids if i != order.order_id)]

    def _release(self, f: SymbolFilters, order: PaperOrder) -> tuple[str, Decimal]:
        """What `order` frees when it closes or starts working: its commitment; for an OCO leg whose
        other leg stays open, what of the pair's single lock the other leg does not hold."""
        asset, amount = self._commitment(f, order)
        other = self._other_leg(order)
        if other is not None and other.is_open:
            kept = self._commitment(f, other)[1]
            return asset, max(amount, kept) - kept
        return asset, amount

    def _end_list(self, f: SymbolFilters, order: PaperOrder, now: int, changes: list[Change], ended: list[OrderList]) -> set[str]:
        """`order`, a leg of an executing OCO, fills or triggers: the other leg expires (Binance's
        `eR` OCO_TRIGGER), its share of the pair's lock freed, and the list is ALL_DONE (`ended`).
        Returns the assets moved."""
        order_list = self.lists.get(order.order_list_id)
        if order_list is None or not order_list.is_open:
            return set()
        order_list.status = "ALL_DONE"
        ended.append(order_list)
        other = self._other_leg(order)
        if other is None or not other.is_open:
            return set()
        asset, amount = self._release(f, other)
        self._balance(asset).locked -= amount
        self._balance(asset).free += amount
        other.status, other.update_ms = "EXPIRED", now
        del self._open[f.symbol][other.order_id]
        self._waiting.get(f.symbol, {}).pop(other.order_id, None)
        changes.append(Change(_snapshot(other), "EXPIRED", None, {}, now, expiry_reason="OCO_TRIGGER"))
        return {asset}

    def _with_other_legs(self, orders: list[PaperOrder]) -> list[PaperOrder]:
        """Binance: cancelling one order of an order list cancels the whole list (its open legs, in list order)."""
        found: dict[int, PaperOrder] = {}
        for order in orders:
            order_list = self.lists.get(order.order_list_id)
            legs = [self.orders[i] for i in order_list.order_ids] if order_list is not None and order_list.is_open else [order]
            found.update((o.order_id, o) for o in legs if o.is_open)
        return list(found.values())

    def find_list(self, order_list_id: int | None, list_client_id: str | None) -> tuple[OrderList, list[PaperOrder]] | None:
        """By orderListId (and then its listClientOrderId must match, if given), else the latest list with that id."""
        with self._lock:
            order_list = (self.lists.get(order_list_id) if order_list_id is not None
                          else self._list_by_client_id.get(list_client_id or ""))
            if order_list is None or (list_client_id is not None and order_list.list_client_order_id != list_client_id):
                return None
            return replace(order_list), [_snapshot(self.orders[i]) for i in order_list.order_ids]

    def order_lists(self, only_open: bool = False) -> list[tuple[OrderList, list[PaperOrder]]]:
        """Every order list (or the executing ones), oldest first, with its legs."""
        with self._lock:
            return [(replace(ol), [_snapshot(self.orders[i]) for i in ol.order_ids])
                    for ol in self.lists.values() if ol.is_open or not only_open]

    def cancel_list(self, f: SymbolFilters, order_list_id: int | None, list_client_id: str | None,
                    cancel_id: str) -> tuple[OrderList, list[PaperOrder]]:
        """DELETE /api/v3/orderList: both legs CANCELED, the list ALL_DONE, in one commit."""
        with self._lock:
            order_list = (self.lists.get(order_list_id) if order_list_id is not None
                          else self._list_by_client_id.get(list_client_id or ""))
            if (order_list is None or order_list.symbol != f.symbol or not order_list.is_open
                    or (list_client_id is not None and order_list.list_client_order_id != list_client_id)):
                raise Rejected(-2011, "Unknown order list sent.")
            legs = [self.orders[i] for i in order_list.order_ids]
            self._close_many(f, legs, "CANCELED", lambda o: cancel_id)
            return replace(order_list), [_snapshot(o) for o in legs]

    @staticmethod
    def _marketable(kind: str, side: str, price: Decimal, market: _Market | None) -> bool:
        """At or through the best opposite price (the last trade's): fills at once as a taker."""
        if market is None:
            return False
        return kind in stops.TAKERS or (market.price <= price if side == "BUY" else market.price >= price)

    def _work(self, f: SymbolFilters, order: PaperOrder, market: _Market | None, now: int, changes: list[Change],
              rows: list[tuple[PaperOrder, int, Fill]]) -> set[str]:
        """An order starting to work (placed, or a stop just triggered): what is marketable fills at
        once as a taker at the last trade price; the rest of a MARKET (or triggered STOP_LOSS /
        TAKE_PROFIT), IOC or FOK order expires, of a GTC order rests with its commitment locked.
        Appends its changes and fill rows; returns the assets it moved."""
        changed: set[str] = set()
        take = ZERO
        if market is not None and self._marketable(order.type, order.side, order.price, market):
            take = min(order.remaining, market.left) if self.partial_fills else order.remaining
            if order.time_in_force == "FOK" and take < order.remaining:
                take = ZERO  # all or nothing
        if take > 0 and market is not None:
            if self.partial_fills:
                market.left -= take
            fill, moved = self._fill(f, order, market.price, take, maker=False, locked=False,
                                     market_trade_id=market.trade_id, now=now)
            changed |= moved
            rows.append((order, len(order.fills) - 1, fill))
            changes.append(Change(_snapshot(order), "TRADE", fill, {}, now))
        if order.remaining > 0:
            if order.type in stops.TAKERS or order.time_in_force in ("IOC", "FOK"):
                order.status = "EXPIRED"
                order.update_ms = now
                changes.append(Change(_snapshot(order), "EXPIRED", None, {}, now))
            else:
                changed.add(self._lock_commitment(f, order))
        return changed

    def _lock_commitment(self, f: SymbolFilters, order: PaperOrder) -> str:
        asset, amount = self._commitment(f, order)
        self._balance(asset).free -= amount
        self._balance(asset).locked += amount
        return asset

    def _commitment(self, f: SymbolFilters, order: PaperOrder) -> tuple[str, Decimal]:
        """What a resting order holds locked: the quote at its limit price (a STOP_LOSS or
        TAKE_PROFIT: its stop price) for a BUY, the base for a SELL."""
        price = order.stop_price if order.type in stops.TAKERS else order.price
        return (f.quote, price * order.remaining) if order.side == "BUY" else (f.base, order.remaining)

    def _fill(self, f: SymbolFilters, order: PaperOrder, price: Decimal, qty: Decimal, *, maker: bool, locked: bool,
              market_trade_id: int, now: int) -> tuple[Fill, set[str]]:
        """One fill of `order`: move the funds (from locked for a resting order, from free for a
        taker), charge the commission, update the order. Returns the fill and the assets moved."""
        quote = price * qty
        if order.side == "BUY":
            paid, paid_amount, received, received_amount = f.quote, quote, f.base, qty
        else:
            paid, paid_amount, received, received_amount = f.base, qty, f.quote, quote
        if locked:
            # A resting order locked its commitment at its limit price; it fills at that price.
            self._balance(paid).locked -= paid_amount
        else:
            self._balance(paid).free -= paid_amount
        self._balance(received).free += received_amount
        fee, fee_asset = self._commission(f, price, received, received_amount, maker)
        self._balance(fee_asset).free -= fee
        fill = Fill(price, qty, self._next_trade_id, now, fee, fee_asset, maker, market_trade_id)
        self._next_trade_id += 1
        order.fills.append(fill)
        order.executed_qty += qty
        order.cum_quote += quote
        order.update_ms = now
        order.status = "FILLED" if order.remaining == 0 else "PARTIALLY_FILLED"
        return fill, {paid, received, fee_asset}

    def _commission(self, f: SymbolFilters, price: Decimal, received: str, amount: Decimal, maker: bool) -> tuple[Decimal, str]:
        rate = self.fees.maker if maker else self.fees.taker
        if self.fees.bnb and rate:
            in_bnb = self._in_bnb(f, price, received, amount * rate * (1 - BNB_DISCOUNT))
            if in_bnb is not None and self._balance(BNB).free >= in_bnb:
                return in_bnb, BNB
        return (amount * rate).quantize(EIGHT, ROUND_UP), received

    def _in_bnb(self, f: SymbolFilters, price: Decimal, asset: str, amount: Decimal) -> Decimal | None:
        """`amount` of `asset` (the symbol's base or quote) in BNB, at the last BNB price seen."""
        if asset == BNB:
            return amount.quantize(EIGHT, ROUND_UP)
        in_quote = amount * price if asset == f.base else amount
        if f.base == BNB:
            bnb_price: Decimal | None = price
        else:
            bnb_market = self._market.get(BNB + f.quote)
            bnb_price = bnb_market.price if bnb_market else None
        return (in_quote / bnb_price).quantize(EIGHT, ROUND_UP) if bnb_price else None

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

    def cancel(self, f: SymbolFilters, order_id: int | None, client_order_id: str | None, cancel_id: str = "",
               only_status: str | None = None) -> PaperOrder:
        """DELETE /api/v3/order: the order must be open (and, with `cancelRestrictions`, have
        `only_status`). `cancel_id`: the request's own id."""
        with self._lock:
            order = self._lookup(f.symbol, order_id, client_order_id)
            if order is None or not order.is_open:
                raise Rejected(-2011, "Unknown order sent.")
            if only_status is not None and order.status != only_status:
                raise Rejected(-2011, "Order was not canceled due to cancel restrictions.")
            return self._close(f, order, "CANCELED", lambda o: cancel_id).order

    def cancel_all(self, f: SymbolFilters, cancel_id: Callable[[PaperOrder], str] = lambda o: "") -> list[Change]:
        """DELETE /api/v3/openOrders: every open order of the symbol, in one commit."""
        with self._lock:
            book = self._open.get(f.symbol, {})
            if not book:
                raise Rejected(-2011, "Unknown order sent.")
            return self._close_many(f, list(book.values()), "CANCELED", cancel_id)

    def close_open(self, f: SymbolFilters, order_id: int, status: str, cancel_id: str = "") -> Change | None:
        """The exchange itself cancels or expires an open order (a seeded fault); None if it
        is no longer open."""
        with self._lock:
            order = self.orders.get(order_id)
            if order is None or not order.is_open:
                return None
            return self._close(f, order, status, lambda o: cancel_id)

    def _close(self, f: SymbolFilters, order: PaperOrder, status: str, cancel_id: Callable[[PaperOrder], str]) -> Change:
        """`order` (and, if it is a leg of an executing OCO, the other leg): its change."""
        return next(c for c in self._close_many(f, [order], status, cancel_id) if c.order.order_id == order.order_id)

    def _close_many(self, f: SymbolFilters, orders: list[PaperOrder], status: str,
                    cancel_id: Callable[[PaperOrder], str]) -> list[Change]:
        """Close the open `orders` (with the other legs of their order lists), in one commit."""
        now = self.clock()
        assets: set[str] = set()
        orders = self._with_other_legs(orders)
        ended = {o.order_list_id: self.lists[o.order_list_id] for o in orders
                 if o.order_list_id in self.lists and self.lists[o.order_list_id].is_open}
        for order in orders:
            asset, amount = self._release(f, order)
            balance = self._balance(asset)
            balance.locked -= amount
            balance.free += amount
            assets.add(asset)
            order.status = status
            order.update_ms = now
            del self._open[f.symbol][order.order_id]
            self._waiting.get(f.symbol, {}).pop(order.order_id, None)
        for order_list in ended.values():
            order_list.status = "ALL_DONE"
        self._save(orders, assets, lists=list(ended.values()))
        sheet = {a: replace(self.balances[a]) for a in sorted(assets)}
        for order in orders:
            log.info("%s %s %s (orderId %d)", status.lower(), f.symbol, order.client_order_id, order.order_id)
        changes = [Change(_snapshot(o), status, None, sheet, now, cancel_id(o)) for o in orders]
        for change in changes:  # a list's listStatus after its last leg's report
            if change.order.order_list_id in ended and change.order.order_id == max(
                    c.order.order_id for c in changes if c.order.order_list_id == change.order.order_list_id):
                self._tag(change, ended[change.order.order_list_id])
        self._publish(changes)
        return changes

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

    def average_price(self, f: SymbolFilters) -> tuple[Decimal, int] | None:
        """(average price, last trade time ms) as PERCENT_PRICE_BY_SIDE and GET /api/v3/avgPrice
        use it: the window's volume-weighted average, else the last trade's price (Binance: "the
        first trade outside the window"); None before any trade was seen."""
        with self._lock:
            market = self._market.get(f.symbol)
            if market is None:
                return None
            average = self._averages.get(f.symbol)
            in_window = average.price(self.clock()) if average is not None else None
            return (in_window if in_window is not None else market.price), market.time_ms

    def last_price(self, symbol: str) -> Decimal | None:
        with self._lock:
            market = self._market.get(symbol)
            return market.price if market else None

    # --- matching -------------------------------------------------------------------

    def on_trade(self, f: SymbolFilters, price: Decimal, qty: Decimal, trade_id: int) -> list[tuple[PaperOrder, Fill]]:
        """Fill the resting orders this public trade crosses (makers, at their own price, by
        price then time priority), then trigger the stop orders it reaches (`_trigger`); what is
        left of its quantity is the liquidity for them and for marketable orders until the next trade."""
        filled: list[tuple[PaperOrder, Fill]] = []
        changes: list[Change] = []
        with self._lock:
            now = self.clock()
            market = self._market[f.symbol] = _Market(price, qty, trade_id, now)
            if f.avg_price_mins:
                average = self._averages.get(f.symbol)
                if average is None or average.window_ms != f.avg_price_mins * 60_000:
                    average = self._averages[f.symbol] = _Average(f.avg_price_mins)
                average.add(now, price, qty)
            book = self._open.get(f.symbol)
            if not book:
                return filled
            waiting = self._waiting.get(f.symbol)
            crossing = [o for o in book.values() if self._crosses(o, price) and not (waiting and o.order_id in waiting)]
            triggered = [o for o in waiting.values() if stops.triggers(o.type, o.side, o.stop_price, price)] if waiting else []
            if not crossing and not triggered:
                return filled  # most trades: nothing to sort, save or tell the listeners
            assets: set[str] = set()
            rows: list[tuple[PaperOrder, int, Fill]] = []
            ended: list[OrderList] = []  # OCOs a leg of which filled or triggered: the other leg expired
            # Price priority (best price first: the highest BUY, the lowest SELL), then time (order id).
            crossing.sort(key=lambda o: (-o.price if o.side == "BUY" else o.price, o.order_id))
            for order in crossing:
                amount = min(order.remaining, market.left) if self.partial_fills else order.remaining
                if amount <= 0:
                    break
                if not order.is_open:
                    continue  # the other leg of an OCO that filled earlier in this trade
                if self.partial_fills:
                    market.left -= amount
                # An OCO leg's first fill, even a partial one, expires the other leg first: the pair's
                # lock comes down to this leg's own commitment, which the fill then takes from.
                assets |= self._end_list(f, order, now, changes, ended)
                fill, moved = self._fill(f, order, order.price, amount, maker=True, locked=True,
                                         market_trade_id=trade_id, now=now)
                assets |= moved
                rows.append((order, len(order.fills) - 1, fill))
                if order.status == "FILLED":
                    del book[order.order_id]
                filled.append((order, fill))
                changes.append(Change(_snapshot(order), "TRADE", fill, {}, now))
                self._list_status(order, changes, ended)
            for order in triggered:  # in the order they were placed
                if order.order_id not in self._waiting[f.symbol]:
                    continue  # the other leg of an OCO that filled or triggered on this trade: expired
                del self._waiting[f.symbol][order.order_id]
                assets |= self._end_list(f, order, now, changes, ended)  # a leg that starts working ends its OCO
                assets |= self._trigger(f, order, market, now, changes, rows)
                self._list_status(order, changes, ended)
                if not order.is_open:
                    del book[order.order_id]
                filled.extend((order, fill) for o, _, fill in rows if o is order)
            if changes:
                others = [self.orders[i] for ol in ended for i in ol.order_ids]
                self._save(list({o.order_id: o for o in [*crossing, *triggered, *others]}.values()), assets, rows, ended)
                changes[-1].balances = {a: replace(self.balances[a]) for a in sorted(assets)}
                self._publish(changes)
        for order, fill in filled:
            log.info("%s %s %s %s %s @ %s (orderId %d, trade %d)", order.status.lower().replace("_", " "), order.symbol,
                     order.client_order_id, order.side, fill.qty, fill.price, order.order_id, trade_id)
        return filled

    def _list_status(self, order: PaperOrder, changes: list[Change], ended: list[OrderList]) -> None:
        """The listStatus of the OCO `order` just ended follows the last report of that step."""
        if ended and ended[-1].order_list_id == order.order_list_id and changes[-1].order_list is None:
            self._tag(changes[-1], ended[-1])

    def _tag(self, change: Change, order_list: OrderList) -> None:
        """`change` is followed by the list's listStatus (a copy of the list and its legs as they are now)."""
        change.order_list = replace(order_list)
        change.legs = [_snapshot(self.orders[i]) for i in order_list.order_ids]

    def _trigger(self, f: SymbolFilters, order: PaperOrder, market: _Market, now: int, changes: list[Change],
                 rows: list[tuple[PaperOrder, int, Fill]]) -> set[str]:
        """A stop reached by the trade starts working (an executionReport NEW with `w` true, as Binance
        sends when a stop triggers): its funds are released, then it works as the MARKET or LIMIT order
        it becomes (`_work`), as a taker at the trade's price. A triggered STOP_LOSS / TAKE_PROFIT BUY
        whose quote no longer covers the trade's price expires unfilled (never kinder than Binance)."""
        asset, amount = self._release(f, order)
        self._balance(asset).locked -= amount
        self._balance(asset).free += amount
        order.working_ms = order.update_ms = now
        changes.append(Change(_snapshot(order), "NEW", None, {}, now, triggered=True))
        if order.type in stops.TAKERS and order.side == "BUY" and self._balance(f.quote).free < market.price * order.remaining:
            order.status = "EXPIRED"
            changes.append(Change(_snapshot(order), "EXPIRED", None, {}, now))
            return {asset}
        log.info("triggered %s %s %s %s stop %s at %s (orderId %d)", f.symbol, order.client_order_id, order.type,
                 order.side, order.stop_price, market.price, order.order_id)
        return {asset} | self._work(f, order, market, now, changes, rows)

    def _crosses(self, order: PaperOrder, price: Decimal) -> bool:
        if order.side == "BUY":
            return price < order.price or (self.fill_on_touch and price == order.price)
        return price > order.price or (self.fill_on_touch and price == order.price)

    def my_trades(self, symbol: str) -> list[tuple[PaperOrder, Fill]]:
        """Every fill of the symbol, oldest first (GET /api/v3/myTrades)."""
        with self._lock:
            trades = [(o, fill) for o in self.orders.values() if o.symbol == symbol for fill in o.fills]
            snapshots = {id(o): _snapshot(o) for o, _ in trades}
            return sorted(((snapshots[id(o)], fill) for o, fill in trades), key=lambda t: t[1].trade_id)


def _snapshot(order: PaperOrder) -> PaperOrder:
    """A copy for callers outside the lock: the trade thread keeps filling the original."""
    return replace(order, fills=list(order.fills))

"""The leader process of one symbol: the book's Leader and DynamicTraderSupervisor in one.

It forks the traders (only a parent can `waitpid` a child), keeps each trader's
last reported state in memory and in the durable store, and acks a state only
once it is stored. A trader that exits 0 finished its cycle: it is recorded and
a fresh trader starts the next cycle. A trader that is killed or fails is
started again from its last state.

The leader supervises, so it never talks to the exchange itself: the symbol's
filters and the reconciliation of open orders are fetched by short-lived
worker children (`workers.py`) that report back over the leader's own socket. Their failures
are theirs: retried, counted against the restart intensity, and a symbol the
exchange does not list gives up (exit 3) with that reason.

Restarts (the definition is supervisor.py's): the leader counts its traders' and keeps the
counts in its store under the symbol's `start_id`, so a restarted leader goes on from them (the
traders it starts again are starts, not restarts); its own count is its symbol supervisor's,
handed to it at fork, and shown in its status.

The store is the backend `[store]` names (naived/store/backend.py): a SQLite file per symbol,
or the PostgreSQL database every host shares, where each write is fenced by the symbol's lease
token, which the leader is handed at fork. A store that fails ends the leader with the reason as
its last words: exit 1 (restarted) for an error that may pass (locked, full, read-only, a
database that does not answer), exit 3 (the symbol is marked failed) for a corrupt file, which
is never overwritten. A write refused as fenced (another host holds the lease now) ends it with
EXIT_LEASE_LOST, unacked: what the trader reported was not stored, so it was not acked, and the
trader is stopped before it can act on it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import deque
from decimal import Decimal

import msgspec
import zmq

from naived.core import cycles, pnl, strategy, validate
from naived.core.config import Config, reload_config
from naived.core.messages import (
    LAST_FILLS,
    Ack,
    ExchangeWaiting,
    FilledOrder,
    FiltersFetched,
    LeaderStatus,
    LeaderStatusRequest,
    MarketReport,
    OpenOrdersFetched,
    Profit,
    RebuyTriggered,
    Settings,
    ShutdownRequest,
    StateUpdated,
    TradeEvent,
    TraderFailed,
    TraderHello,
    TraderInfo,
    TraderState,
    check_topic,
    encode,
    leader_request_decoder,
)
from naived.core.symbols import SymbolFilters, lookup
from naived.store.backend import Backend, backend
from naived.store.base import Fenced, SymbolStore
from naived.tree import trader, workers
from naived.tree.ipc import bind, bind_rep, close_bound
from naived.tree.process import last_words
from naived.tree.supervisor import (
    EXIT_GAVE_UP,
    EXIT_LEASE_LOST,
    Child,
    ChildSpec,
    Decision,
    Exit,
    ExitStatus,
    Kind,
    Role,
    Supervisor,
)

log = logging.getLogger(__name__)

FILTERS, RECONCILE = "filters", "reconcile"  # the keys of the leader's workers
REPORT_RETRY = 0.1  # seconds: a status the root's socket did not take is sent again this soon

RESTARTS = "trader_restarts"  # the store's meta key of the traders' restart counts (RestartCounts)


class RestartCounts(msgspec.Struct):
    """The traders' restarts within one start of the symbol: a later start begins from 0."""

    start_id: str
    traders: dict[int, int]


COUNTERS = ("leader_starts", "orders_placed", "orders_filled", "intents_unknown", "drift")


def store_failed(path: object, exc: Exception) -> Exit:
    """The exit a store failure calls for: a corrupt file will not heal by restarting; a write
    refused as fenced means another host trades the symbol now (the symbol stops here); a
    database that failed may come back (restarted)."""
    if isinstance(exc, Fenced):
        return Exit(f"{exc}: the symbol stops on this host, the refused write was not acked", EXIT_LEASE_LOST)
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return Exit(f"state store {path} is unreadable ({exc}); it was left as it is: restore it or move it "
                    "aside with its -wal and -shm files, then naivectl start-trading again", EXIT_GAVE_UP)
    # PostgreSQL's errors may span lines (DETAIL, HINT): one line, as last words and logs want
    return Exit(f"state store {path} failed ({exc if isinstance(exc, sqlite3.Error) else ' '.join(str(exc).split())})", 1)


OPEN_RETRY_FIRST, OPEN_RETRY_MAX = 0.2, 2.0  # seconds between attempts to reach the store, doubling


def open_patiently(store_backend: Backend, symbol: str, lease_token: int | None, patience: float) -> SymbolStore:
    """The symbol's store, asked again with backoff for `patience` seconds while it cannot be reached
    (a database out of connection slots while a lost host's sessions linger, or restarting); then
    the error. Failing at once would restart the leader many times a second, adding to the load of
    a database that is short of room, and spend the symbol's restart budget on something that passes."""
    deadline = time.monotonic() + patience
    delay = OPEN_RETRY_FIRST
    while True:
        try:
            return store_backend.open(symbol, lease_token)
        except store_backend.unreachable as exc:
            if time.monotonic() + delay > deadline:
                raise
            if delay == OPEN_RETRY_FIRST:  # once: the attempts after it say nothing new
                log.warning("leader %s: store not reachable (%s); asking again for %.0fs",
                            symbol, " ".join(str(exc).split()), patience)
            time.sleep(delay)
            delay = min(delay * 2, OPEN_RETRY_MAX)


class Leader(Role):
    def __init__(self, config: Config, symbol: str, shutting_down: bool, filters: SymbolFilters | None = None,
                 start_id: str = "", restarts: int = 0, lease_token: int | None = None) -> None:
        self.config = config
        self.symbol = symbol
        self.shutting_down = shutting_down
        self.start_id = start_id
        self.restarts = restarts
        self.started_at = time.time()
        self.backend = backend(config, f"leader {symbol}")
        # What a failing store raises (sqlite3.Error, or psycopg's), and Fenced: store_failed words the exit.
        self.store_errors: tuple[type[Exception], ...] = (*self.backend.errors, Fenced)
        self.path = self.backend.name(symbol)
        try:
            self.store = open_patiently(self.backend, symbol, lease_token, config.store.lease_seconds)
            self.states: dict[int, TraderState] = self.store.traders()
            self.store.bump("leader_starts")
            self.counters = {k: self.store.counter(k) for k in COUNTERS}
            self.cycles_finished = self.store.cycles_finished()
            self.last_error = self.store.get_meta("last_error")
            new_store = self.store.get_meta("id_prefix") is None
            # Made once per store, durably: client order ids start with it. A new one is recorded
            # in the install's registry first, so its orders stay recognisable as ours even if
            # this store is lost.
            self.id_prefix = self.store.id_prefix(self._record_prefix)
            self.books = self.store.books()
            # The finished cycles' totals, as the store keeps them (no cycle is read again), then
            # added to in memory as each cycle finishes.
            self.realised = pnl.Realised(self.cycles_finished, Decimal(self.books["pnl_quote"]),
                                         {a: Decimal(v) for a, v in self.store.fees().items()}, Decimal(self.books["fees_quote"]))
            self.trader_restarts = self.stored_restarts()
        except self.store_errors as exc:
            raise store_failed(self.path, exc) from None
        if not new_store:  # a store from before the registry, or one whose record was lost
            try:
                self.backend.record_prefix(self.id_prefix, symbol)
            except self.backend.errors as exc:  # only orphan detection needs it: trade on, say so
                log.warning("%s: could not record id prefix %s in %s (%s); orders of this store are not "
                            "recognised if it is lost", symbol, self.id_prefix, self.backend.registry, exc)
        self.ctx = zmq.Context()
        self.supervisor = Supervisor(f"leader {symbol}", config.naived.supervision)
        for trader_id, n in self.trader_restarts.items():
            self.supervisor.carry(str(trader_id), n)
        self.rep = bind_rep(self.ctx, config.leader_endpoint(symbol))
        self.supervisor.watch(self.rep, self.on_request)
        # Requests to the traders: look up an order the reconcile found no longer open.
        self.pub = bind(self.ctx, zmq.PUB, config.leader_pub_endpoint(symbol))
        self.drift_counted = False  # the first reconcile after a (re)start counts drift
        # Status goes up to the root as it changes; CONFLATE: only the latest is worth sending.
        self.report = self.ctx.socket(zmq.PUSH)
        self.report.setsockopt(zmq.CONFLATE, 1)
        self.report.setsockopt(zmq.LINGER, 0)
        self.report.connect(config.reports_endpoint)
        self.trading = config.trading.for_symbol(symbol, filters.quote if filters else None)
        # Fresh cycles need the exchange's filters: from the root, which fetched every symbol's at
        # once, or else (not fetched yet, or the symbol missing there) from a filters worker.
        self.filters = filters
        self.settings: Settings | None = strategy.settings_for(symbol, self.trading, filters) if filters else None
        self.waiting: set[int] = set()  # traders that start a fresh cycle once the settings are known
        # Why they wait (for status): the filters worker's latest reason, and since when (wall clock).
        self.waiting_reason: str | None = None
        self.waiting_since: float | None = None
        self.report_again: float | None = None  # monotonic: a status the root could not take yet
        self.reserved: list[int] = []  # cycle numbers taken at start, in one durable commit, for the fresh traders
        self.ready_at: dict[int, float] = {}
        self.used_weight = 0
        # Market frames dropped by reason: the running traders' own counts (by trader id: the
        # reporting pid and its cumulative counts) and those of traders that have exited.
        self.dropped_by: dict[int, tuple[int, dict[str, int]]] = {}
        self.dropped_before: dict[str, int] = {}
        # The market as the traders saw it (their MarketReports): for status, so a silent feed shows.
        self.last_trade: TradeEvent | None = None
        self.following: dict[int, bool] = {}  # by running trader
        # A store made just now has a prefix no order at the exchange can carry: nothing to
        # reconcile, so no worker (one fork and one weight-6 request less per symbol started).
        self.reconciled = new_store
        self.open_when_asked: set[str] = set()
        # Since when (wall clock) each of the traders' orders is known here to be open: the root's
        # periodic reconcile can only find missing what was open before it asked.
        self.open_since = dict.fromkeys(self.open_ours(), self.started_at)
        # Each trader's cycle figures, with the state they were computed from: a status recomputes
        # only those of states that changed since (it is sent after every trader's report).
        self.figures: dict[int, tuple[TraderState, pnl.Cycle]] = {}
        # The filled orders of the last finished cycles, for status (the observer's chart): since this start.
        self.last_fills: deque[FilledOrder] = deque(maxlen=LAST_FILLS)
        self.changed = True

    def _record_prefix(self, prefix: str) -> None:
        """A failure names the registry, not the symbol's store (store_failed words the exit)."""
        try:
            self.backend.record_prefix(prefix, self.symbol)
        except self.backend.errors as exc:
            raise type(exc)(f"{self.backend.registry}: {exc}") from None

    # --- traders ------------------------------------------------------------------

    def trader_spec(self, trader_id: int) -> ChildSpec:
        return ChildSpec(
            key=str(trader_id),
            title=f"trader {self.symbol}/{trader_id}",
            # Evaluated in the child at fork time: a restart resumes the latest acked state.
            run=lambda: trader.run(self.config, self.states[trader_id]),
            kind=Kind.TRADER,
        )

    def start_trader(self, trader_id: int) -> None:
        """Resume the trader's stored state, or begin a new cycle once the settings are known."""
        if trader_id not in self.states and not self.new_cycle(trader_id):
            return
        self.ready_at.pop(trader_id, None)
        self.supervisor.start(self.trader_spec(trader_id))
        self.changed = True

    def new_cycle(self, trader_id: int) -> bool:
        """A fresh state with a never-used cycle number; False (and the trader waits) while the
        filters are not known yet."""
        if self.settings is None:
            self.waiting.add(trader_id)
            if self.waiting_since is None:
                self.waiting_since = time.time()
                self.changed = True
            self.start_worker(FILTERS)
            return False
        cycle = self.reserved.pop(0) if self.reserved else self.store.next_cycle()
        state = cycles.fresh(self.settings, trader_id, cycle, self.id_prefix)
        self.store.save(state)
        self.states[trader_id] = state
        return True

    def on_exit(self, child: Child, status: ExitStatus) -> Decision | None:
        kind = child.spec.kind
        self.changed = True
        if kind is not Kind.TRADER:  # a worker
            if kind is Kind.FILTERS and not status.normal and status.words:
                self.waiting_reason = status.words  # e.g. "did not answer for 30s: ..."; retried
            return None  # their restart types decide
        trader_id = int(child.spec.key)
        self.ready_at.pop(trader_id, None)
        _, dropped = self.dropped_by.pop(trader_id, (0, {}))
        self.following.pop(trader_id, None)
        for reason, n in dropped.items():
            self.dropped_before[reason] = self.dropped_before.get(reason, 0) + n
        if status.words:
            self.last_error = f"trader {self.symbol}/{trader_id}: {status.words}"
        state = self.states.get(trader_id)
        if not (status.normal and state is not None and state.status == "done"):
            return None  # killed or failed: restart from the last acked state, counted
        try:
            self.store.finish(state)
            del self.states[trader_id]
            self.cycles_finished += 1
            self.realised = self.realised.add(state.result)
            self.last_fills.extend(cycles.filled(cycles.orders(state)))
            self.books = self.store.books()
            log.info("%s/%d: cycle %d finished", self.symbol, trader_id, state.cycle)
            if not cycles.continues(trader_id, self.trading.chunks, self.shutting_down):
                return "forget"
            return "restart_uncounted" if self.new_cycle(trader_id) else "forget"
        except self.store_errors as exc:
            raise store_failed(self.path, exc) from None

    def stored_restarts(self) -> dict[int, int]:
        """The traders' restart counts of this start of the symbol, as the leader before us left them."""
        raw = self.store.get_meta(RESTARTS)
        try:
            counts = msgspec.json.decode(raw, type=RestartCounts) if raw else None
        except msgspec.DecodeError:
            counts = None  # written by no leader of ours: the counts start again, nothing else depends on them
        return dict(counts.traders) if counts is not None and counts.start_id == self.start_id else {}

    def on_started(self, child: Child) -> None:
        """A trader restarted: its count is stored before anything else happens, so a leader
        restarted from now on goes on from it."""
        if child.spec.kind is not Kind.TRADER or self.trader_restarts.get(int(child.spec.key), 0) == child.restarts:
            return
        self.trader_restarts[int(child.spec.key)] = child.restarts
        try:
            self.store.set_meta(RESTARTS, msgspec.json.encode(RestartCounts(self.start_id, self.trader_restarts)).decode())
        except self.store_errors as exc:
            raise store_failed(self.path, exc) from None

    def on_give_up(self, child: Child, status: ExitStatus, reason: str) -> bool:
        self.last_error = reason
        return False  # the leader gives up too: its supervisor escalates, the root marks the symbol failed

    # --- workers: whatever talks to the exchange -----------------------------------

    def start_worker(self, key: str) -> None:
        """FILTERS or RECONCILE, unless it runs already: it reports back on the leader's socket."""
        if key in self.supervisor.children:
            return
        if key == FILTERS:  # transient: a fetch that fails is retried (counted)
            spec = ChildSpec(FILTERS, f"filters {self.symbol}", lambda: workers.fetch_filters(self.config, self.symbol),
                             "transient", kind=Kind.FILTERS)
        else:  # temporary: a check, once
            self.open_when_asked = self.open_ours()
            spec = ChildSpec(RECONCILE, f"reconcile {self.symbol}", lambda: workers.reconcile_symbol(self.config, self.symbol),
                             "temporary", kind=Kind.RECONCILE)
        self.supervisor.start(spec)

    def open_ours(self) -> set[str]:
        return strategy.listed_open_ids(self.states.values())

    def note_open_orders(self) -> None:
        now, still = time.time(), self.open_ours()
        self.open_since = {cid: self.open_since.get(cid, now) for cid in still}

    def on_open_orders(self, client_order_ids: list[str], asked_at: float | None = None) -> None:
        """Log any drift between the traders' orders and the exchange's open orders."""
        prefix = f"{self.id_prefix}-"
        at_exchange = {cid for cid in client_order_ids if cid.startswith(prefix)}
        # Any order a trader has, or has an acked intent for, is owned, not drift.
        owned = {o.client_order_id for s in self.states.values() for o in (s.buy_order, s.sell_order) if o} | {
            s.intent.client_order_id for s in self.states.values() if s.intent}
        # Only orders already open when the exchange was asked can be missing from its answer.
        asked = self.open_when_asked if asked_at is None else {cid for cid, since in self.open_since.items() if since < asked_at}
        unowned, missing = sorted(at_exchange - owned), sorted((self.open_ours() & asked) - at_exchange)
        first = asked_at is None and not self.drift_counted  # the root's periodic check counts no drift
        self.drift_counted = self.drift_counted or asked_at is None
        for cid in unowned:
            log.warning("%s: drift: exchange has open order %s that no trader owns", self.symbol, cid)
        for cid in missing:
            # After the start a trader may simply not have heard yet (a fill with no push, no trade).
            log.log(logging.WARNING if first else logging.INFO,
                    "%s: %s: a trader thinks %s is open; the exchange does not: asking it to look it up",
                    self.symbol, "drift" if first else "reconcile", cid)
            owner = next((t for t, s in self.states.items() for o in (s.buy_order, s.sell_order)
                          if o is not None and o.client_order_id == cid), None)
            if owner is not None:
                self.pub.send_multipart([check_topic(owner), cid.encode()], zmq.NOBLOCK)
        if first:  # drift is what a (re)started leader found; later misses are news not yet heard
            self.counters["drift"] = len(unowned) + len(missing)
            self.store.set_meta("drift", str(self.counters["drift"]))

    # --- requests from traders and workers -----------------------------------------

    def on_request(self) -> None:
        frames = self.rep.recv_multipart()
        try:
            request = leader_request_decoder.decode(frames[-1]) if len(frames) == 1 else None
        except msgspec.DecodeError:
            request = None
        if request is None:
            log.warning("%s: ignored a malformed request (%d frames)", self.symbol, len(frames))
            self.rep.send(encode(Ack()))
            return
        try:
            reply = self.handle(request)
        except self.store_errors as exc:
            raise store_failed(self.path, exc) from None  # no ack: what was not stored was not acked
        except Exception as exc:
            raise Exit(f"handling {type(request).__name__} failed: {exc!r}", 1) from None
        self.rep.send(encode(reply))

    def handle(self, request: msgspec.Struct) -> msgspec.Struct:
        self.changed = True
        match request:
            case StateUpdated(state, used_weight):
                # stored before the ack: the ack means durable
                delta = cycles.counts(self.states.get(state.trader_id), state)
                self.store.save(state, delta)
                for key, n in delta.items():
                    self.counters[key] = self.counters.get(key, 0) + n
                self.states[state.trader_id] = state
                self.used_weight = used_weight
                self.note_open_orders()
            case TraderHello(trader_id, pid):
                self.ready_at[trader_id] = time.time()
                log.debug("%s/%d: trader pid %d ready", self.symbol, trader_id, pid)
            case TraderFailed(trader_id, error):
                self.last_error = f"trader {self.symbol}/{trader_id}: {error}"
                self.store.set_meta("last_error", self.last_error)
            case RebuyTriggered(trader_id):
                self.on_rebuy(trader_id)
            case MarketReport(trader_id, pid, dropped, last_trade, following):
                child = self.supervisor.children.get(str(trader_id))
                if child is not None and child.pid == pid:  # not a late word from one already reaped
                    self.dropped_by[trader_id] = (pid, dropped)
                    self.following[trader_id] = following
                if last_trade is not None and (self.last_trade is None or last_trade.t > self.last_trade.t):
                    self.last_trade = last_trade
            case FiltersFetched(filters):
                self.on_filters(filters)
            case ExchangeWaiting(reason):
                self.waiting_reason = reason
            case OpenOrdersFetched(client_order_ids, asked_at):
                self.on_open_orders(client_order_ids, asked_at)
            case LeaderStatusRequest():
                return self.status()
            case ShutdownRequest():
                self.shutdown()
        return Ack()

    def on_filters(self, filters: SymbolFilters) -> None:
        self.filters = filters
        self.waiting_reason = self.waiting_since = None
        self.settings = strategy.settings_for(self.symbol, self.trading, filters)
        waiting, self.waiting = sorted(self.waiting), set()
        if not self.shutting_down:
            for trader_id in waiting:
                self.start_trader(trader_id)

    def on_rebuy(self, trader_id: int) -> None:
        running = {int(k) for k in self.traders_running()}
        free = cycles.rebuy_starts(running, self.trading.chunks, self.shutting_down)
        if free is None:
            log.info("%s/%d: rebuy ignored (%d of %d traders running)", self.symbol, trader_id, len(running), self.trading.chunks)
            return
        log.info("%s/%d: rebuy: starting trader %d", self.symbol, trader_id, free)
        self.start_trader(free)

    def traders_running(self) -> list[str]:
        return [child.spec.key for child in self.supervisor.of_kind(Kind.TRADER)]

    # --- signals -------------------------------------------------------------------

    def shutdown(self) -> None:
        if not self.shutting_down:
            log.info("%s: shutting down: no new cycles", self.symbol)
        self.shutting_down = True
        self.waiting.clear()
        self.changed = True

    def reload(self) -> None:
        """New trading settings apply to cycles that start from now on."""
        new = reload_config(self.config, lambda new: validate.symbol_problem(new, self.symbol, self.filters))
        if new is None:
            return  # refused and logged: the running settings stay, and nothing says "reloaded"
        self.config = new
        self.trading = self.config.trading.for_symbol(self.symbol, self.filters.quote if self.filters else None)
        # the next fresh cycle gets the new settings; filters not known yet are fetched then
        self.settings = strategy.settings_for(self.symbol, self.trading, self.filters) if self.filters else None
        t = self.trading
        log.info("%s: configuration reloaded: new cycles get budget %s%s over %d chunks", self.symbol, t.budget,
                 f" {self.filters.quote}" if self.filters else "", t.chunks)

    # --- the loop ------------------------------------------------------------------

    def tick(self) -> None:
        traders = self.traders_running()
        if not self.reconciled and traders and all(int(k) in self.ready_at for k in traders):
            self.reconciled = True  # once the traders are back: it only reports, it can wait
            self.start_worker(RECONCILE)
        # Later checks are the root's: one openOrders call for every symbol (workers.reconcile_all).
        if self.changed and (self.report_again is None or time.monotonic() >= self.report_again):
            try:
                self.report.send(encode(self.status()), zmq.NOBLOCK)
                self.changed, self.report_again = False, None
            except zmq.Again:
                # Not connected yet (just started) or the root is restarting: a leader that waits
                # on nothing else would otherwise never be seen, so it tries again shortly.
                self.report_again = time.monotonic() + REPORT_RETRY
        if self.shutting_down and not traders and not self.states:
            raise Exit("last trader finished, symbol stopped", 0)

    def next_tick(self) -> float | None:
        return self.report_again

    def on_stop(self) -> None:
        close_bound(self.rep, self.config.leader_endpoint(self.symbol))
        close_bound(self.pub, self.config.leader_pub_endpoint(self.symbol))

    def status(self) -> LeaderStatus:
        traders = []
        for trader_id in sorted(set(self.states) | {int(k) for k in self.traders_running()}):
            child = self.supervisor.children.get(str(trader_id))
            traders.append(
                TraderInfo(
                    trader_id=trader_id,
                    pid=child.pid if child else None,
                    started_at=child.started_at if child else None,
                    restarts=self.supervisor.restarts(str(trader_id)),
                    state=self.states.get(trader_id),
                    ready_at=self.ready_at.get(trader_id),
                )
            )
        return LeaderStatus(
            symbol=self.symbol,
            pid=os.getpid(),
            started_at=self.started_at,
            traders=traders,
            cycles_finished=self.cycles_finished,
            shutting_down=self.shutting_down,
            last_error=self.last_error,
            counters=dict(self.counters),
            books=self.books,
            used_weight=self.used_weight,
            waiting=f"the exchange's filters ({self.waiting_reason or 'asking'})" if self.waiting_since is not None else None,
            waiting_since=self.waiting_since,
            market_dropped=self.market_dropped(),
            last_trade=self.last_trade,
            following_market=any(self.following.values()),
            restarts=self.restarts,
            start_id=self.start_id,
            profit=self.profit(),
            last_fills=list(self.last_fills),
        )

    def profit(self) -> Profit:
        """The symbol's position and profit at the last trade price (naived/core/pnl.py)."""
        figures = {}
        for trader_id, state in self.states.items():
            known = self.figures.get(trader_id)
            figures[trader_id] = known if known is not None and known[0] is state else (state, pnl.cycle(state))
        self.figures = figures
        price = Decimal(self.last_trade.p) if self.last_trade is not None else None
        if self.filters is not None:
            base, quote = self.filters.base, self.filters.quote
        else:  # not fetched yet: the symbol table knows it (the budget needed its quote asset)
            known_symbol = lookup(self.symbol)
            base, quote = (known_symbol.base, known_symbol.quote) if known_symbol else ("", "")
        budget = self.trading.budget or pnl.ZERO  # for_symbol always gives one; none would mean no return, not no status
        return pnl.profit((c for _, c in figures.values()), self.realised, price, budget, base, quote)

    def market_dropped(self) -> dict[str, int]:
        total = dict(self.dropped_before)
        for _, dropped in self.dropped_by.values():
            for reason, n in dropped.items():
                total[reason] = total.get(reason, 0) + n
        return total

    def run(self) -> int:
        trader_ids = cycles.starting(self.states, self.trading.traders_at_start, self.shutting_down)
        try:
            fresh = len(set(trader_ids) - set(self.states))
            if fresh > 1 and self.settings is not None:
                self.reserved = self.store.next_cycles(fresh)  # one fsync, not one per trader
            for trader_id in trader_ids:
                self.start_trader(trader_id)
        except self.store_errors as exc:
            raise store_failed(self.path, exc) from None
        return self.supervisor.run(self)


def run(config: Config, symbol: str, shutting_down: bool = False, filters: SymbolFilters | None = None,
        start_id: str = "", restarts: int = 0, lease_token: int | None = None) -> int:
    """Entry point in the forked child. `restarts`: this leader's, as its supervisor counts them.
    `lease_token`: the symbol's lease held by this host (PostgreSQL; None on SQLite)."""
    try:
        return Leader(config, symbol, shutting_down, filters, start_id, restarts, lease_token).run()
    except Exit as exc:  # at start, before the loop: the store could not be opened
        log.error("leader %s: %s", symbol, exc)
        last_words(str(exc))
        return exc.code

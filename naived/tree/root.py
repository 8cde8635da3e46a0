"""The naived root: `Naive.Application` and `Naive.DynamicSymbolSupervisor` in one process.

A `Role` in the one supervising loop (`supervisor.py`). Its children: the paper
exchange and the account stream (permanent) and one symbol supervisor per traded symbol (transient,
restart intensity counted per symbol), plus short-lived workers (`workers.py`): every symbol's
filters, every symbol's open orders, a symbol's history. The root is the error kernel's last line:

- it never talks to the exchange and never opens another role's files: a
  symbol is checked against the symbol table, the leaders push their status up
  (PUSH/PULL, latest only), and a store is read by a worker child that dies in
  its place if the file is bad;
- every control request is answered, whatever its frames hold (`control.py`);
- a symbol whose supervisor gave up is marked `failed` with the reason its
  processes left as last words; the root never crash-loops and keeps serving
  the other symbols;
- every port it needs is bound before READY=1: a port in use is one line and
  exit status 1, not a restart loop.

What trades and how is kept in the trading set (naived/store/trading_set.py); the Prometheus text
of the tree is `metrics.py`'s.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec
import setproctitle
import zmq

from naived.core import strategy, validate
from naived.core.config import Config, check_symbol, is_loopback, reload_config
from naived.core.messages import (
    AccountRead,
    AccountRequest,
    Ack,
    ControlRequest,
    Error,
    ExchangeFilters,
    HeldLease,
    HistoryRequest,
    LeaderStatus,
    LeasesHeld,
    Ok,
    OrphanOrder,
    OrphansFound,
    ProcessInfo,
    ShutdownTrading,
    StartTrading,
    StatusRequest,
    StopDaemon,
    Stopping,
    StopTrading,
    StreamAlive,
    SymbolStatus,
    TreeStatus,
    WorkerReply,
    encode,
    root_report_decoder,
    worker_report_decoder,
)
from naived.core.symbols import SymbolFilters, lookup, similar
from naived.exchange import budget as rate_budget
from naived.ops import sdnotify
from naived.ops.listen import CannotListen, listen
from naived.ops.metrics import MetricsEndpoint
from naived.store.ownership import Holder
from naived.store.sqlite import store_path
from naived.store.trading_set import TradingSet
from naived.tree import account_stream, symbol_supervisor, trader, workers
from naived.tree import metrics as tree_metrics
from naived.tree.account import Account
from naived.tree.cluster import Leased
from naived.tree.control import ControlServer
from naived.tree.ipc import bind, close_bound, request
from naived.tree.process import merge_identical_pages, send_signal
from naived.tree.supervisor import (
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

PAPER = "paper-exchange"
ACCOUNT_STREAM = "account-stream"
LEASE_KEEPER = "lease-keeper"  # a cluster's (PostgreSQL store): this host's leases
WEB = "web"  # the web observer ([web]): the tree's status as a page, pushed to it by the root
EXCHANGE_INFO = "exchange-info"  # the worker that fetches every symbol's filters at once
RECONCILE = "reconcile"  # the worker that checks every symbol's open orders at once
FILTERS_REFRESH = 3600.0  # seconds between two fetches of every symbol's filters
FILTERS_RETRY = 30.0  # ...after a fetch that failed
REPORTS_PER_TURN = 1000  # drained per wake-up, so a flood of reports cannot starve the control socket
# The status pushed to the web observer: at most this often, and only when its bytes changed. The
# socket keeps OBSERVER_HWM statuses for a child that does not read, then drops: never waits.
OBSERVE_SECONDS = 0.25
OBSERVER_HWM = 4
OBSERVER_MAX_MESSAGE = 256  # what the observer sends: its subscription (one byte and an empty topic)

T = TypeVar("T")


class StartError(Exception):
    """naived cannot start: one line for the user, exit status 1."""


@dataclass
class SymbolEntry:
    state: str = "running"  # running | shutting-down | failed
    error: str | None = None
    # This start of the symbol (start-trading, autostart): restarts count within it, so a new
    # start (or a new naived) begins from 0 while a restarted supervisor or leader goes on.
    start_id: str = field(default_factory=lambda: secrets.token_hex(8))
    leader_restarts: int = 0  # as the leader last said: handed to a restarted symbol supervisor
    lease_token: int | None = None  # in a cluster: the lease this host trades the symbol under




class Root(Role):
    def __init__(self, config: Config) -> None:
        self.config = config
        self.started_at = time.time()
        config.make_dirs()
        self.ctx = zmq.Context()
        if request(self.ctx, config.control_endpoint, StatusRequest(), msgspec.msgpack.Decoder(), 300) is not None:
            raise StartError(f"naived is already running on {config.control_endpoint}")
        self.supervisor = Supervisor("naived", config.naived.supervision, scope="child")
        try:  # before any fork: every process of the tree maps this one file (naived/exchange/budget.py)
            rate_budget.ensure(config.budget_path)
        except OSError as exc:
            raise StartError(f"cannot create the rate budget {config.budget_path}: {exc.strerror}") from None
        try:
            self.control = ControlServer(self.ctx, config.control_endpoint, self.dispatch)
            self.reports = bind(self.ctx, zmq.PULL, config.reports_endpoint)
            self.worker_reports = bind(self.ctx, zmq.REP, config.workers_endpoint)
        except zmq.ZMQError as exc:
            raise StartError(f"cannot bind {config.control_endpoint}: {exc}") from None
        self.supervisor.watch(self.control.socket, self.control.on_readable)
        self.supervisor.watch(self.reports, self.on_reports)
        self.supervisor.watch(self.worker_reports, self.on_worker_reports)
        self.paper_listener: socket.socket | None = None
        self.paper_ws_listener: socket.socket | None = None
        if config.naived.exchange == "paper":
            try:
                self.paper_listener = listen(config.paper.host, config.paper.port, "the paper exchange", "[paper] port")
                self.paper_ws_listener = listen(config.paper.host, config.paper.ws_port, "the paper exchange's user data stream",
                                                "[paper] ws_port")
            except CannotListen as exc:
                raise StartError(str(exc)) from None
        self.web_listener: socket.socket | None = None
        self.observer: zmq.Socket[bytes] | None = None  # XPUB: the status, pushed to the web observer
        if config.web.enabled:
            try:
                self.web_listener = listen(config.web.host, config.web.port, "the web observer", "[web] port")
                self.observer = bind(self.ctx, zmq.XPUB, config.observer_endpoint, OBSERVER_MAX_MESSAGE,
                                     ((zmq.SNDHWM, OBSERVER_HWM), (zmq.XPUB_VERBOSE, 1)))
            except CannotListen as exc:
                raise StartError(str(exc)) from None
            except zmq.ZMQError as exc:
                raise StartError(f"cannot bind {config.observer_endpoint}: {exc}") from None
            self.supervisor.watch(self.observer, self.on_observer)
        self.published = b""  # the status last pushed to the web observer (JSON)
        self.published_at = 0.0  # monotonic: when it was last encoded
        self.publish_at: float | None = None  # monotonic: the next push is due then (a loop turn may have changed it)
        self.observer_joined = False  # a web observer subscribed: it gets the status at once, changed or not
        self.web_failed: str | None = None
        self.metrics: MetricsEndpoint | None = None
        if config.naived.metrics_port:
            try:
                self.metrics = MetricsEndpoint(config.naived.metrics_port, self.collect_metrics)
            except OSError as exc:
                raise StartError(f"cannot listen on 127.0.0.1:{config.naived.metrics_port} for metrics: "
                                 f"{exc.strerror} (set [naived] metrics_port)") from None
            self.supervisor.watch(self.metrics.fd, self.metrics.serve)
        self.symbols: dict[str, SymbolEntry] = {}
        self.leaders: dict[str, LeaderStatus] = {}  # as each leader last pushed it
        # Every symbol's exchange filters, fetched by a worker in one call and handed to each leader
        # at fork; a leader started before they came (or for a symbol missing here) fetches its own.
        self.filters: dict[str, SymbolFilters] = {}
        self.next_filters: float | None = None  # monotonic: when the exchange-info worker runs again
        self.stream_due: float | None = None  # monotonic: the account stream's next word is due by then
        # Events the account stream dropped at its boundary, by reason: its current process's
        # totals (from StreamAlive) and the sum over the processes before it (a counter never goes back).
        self.stream_dropped: dict[str, int] = {}
        self.stream_dropped_before: dict[str, int] = {}
        self.next_reconcile = time.monotonic() + config.naived.reconcile_seconds
        self.trading = TradingSet(config.state_dir / "trading.json")  # one host's (SQLite store)
        # A cluster (PostgreSQL store): what trades is the shared trading set, and this host trades
        # what its lease keeper holds; control requests write the set through a worker.
        self.cluster = Leased(config.store.resolved_host_id(), config.store.lease_seconds) if config.store.shared else None
        self.paper_failed: str | None = None
        self.account_stream_failed: str | None = None
        self.pending: dict[int, list[bytes]] = {}  # history request id -> the client's envelope, until answered
        self.readers: dict[str, int] = {}  # a history worker's key -> the request id it answers
        self.request_ids = itertools.count(1)
        self.watchdog = sdnotify.Watchdog()
        self.draining = False  # SIGUSR1: every symbol shuts down, then naived exits 0
        # Open orders with an install prefix that no trader owns (client order id -> order): an
        # order is an orphan once two reconciles in a row found it unowned (a trader's order placed
        # while the worker asked may not have reached the root yet); `orphan_suspects`: the last one's.
        self.orphans: dict[str, OrphanOrder] = {}
        self.orphan_suspects: set[str] = set()
        self.account = Account()  # balances and open orders as the reconcile worker last read them

    # --- children --------------------------------------------------------------------

    def start_paper_exchange(self) -> None:
        listener, ws_listener = self.paper_listener, self.paper_ws_listener
        assert listener is not None and ws_listener is not None
        self.supervisor.start(ChildSpec(
            key=PAPER,
            title="paper-exchange",
            run=lambda: _run_paper_exchange(self.config, listener, ws_listener),
            new_process_group=True,
            keep_fds=(listener.fileno(), ws_listener.fileno()),
            kind=Kind.PAPER_EXCHANGE,
        ))

    def start_account_stream(self) -> None:
        """The account's user data stream, for every exchange: it talks to the exchange, so it is
        a child; it holds the listen key, so it is one per naived."""
        self.supervisor.start(ChildSpec(
            key=ACCOUNT_STREAM,
            title="account-stream",
            run=lambda: account_stream.run(self.config),
            new_process_group=True,
            kind=Kind.ACCOUNT_STREAM,
        ))

    def start_web(self) -> None:
        """The web observer: a page of the tree and its JSON API, on the listener bound in __init__."""
        listener = self.web_listener
        assert listener is not None
        self.supervisor.start(ChildSpec(
            key=WEB,
            title="web",
            run=lambda: _run_web(self.config, listener),
            new_process_group=True,
            keep_fds=(listener.fileno(),),
            kind=Kind.WEB,
        ))

    def start_symbol(self, symbol: str, mode: str = "running", lease_token: int | None = None) -> None:
        self.symbols[symbol] = SymbolEntry(mode, lease_token=lease_token)
        self.supervisor.start(ChildSpec(
            key=symbol,
            title=f"supervisor {symbol}",
            # the mode as of fork time: a supervisor restarted after a shutdown-trading keeps it
            run=lambda: symbol_supervisor.run(self.config, symbol, self.symbols[symbol].state == "shutting-down",
                                              self.filters.get(symbol), self.symbols[symbol].start_id,
                                              self.symbols[symbol].leader_restarts, self.symbols[symbol].lease_token),
            restart="transient",  # exit 0 = shut down on request
            new_process_group=True,
            kind=Kind.SYMBOL_SUPERVISOR,
        ))

    def start_exchange_info(self) -> None:
        self.next_filters = None
        self.supervisor.start(ChildSpec(EXCHANGE_INFO, "exchange-info", lambda: workers.fetch_filters(self.config), "temporary",
                                        kind=Kind.FILTERS))

    # --- the cluster (PostgreSQL store) ------------------------------------------------

    def start_lease_keeper(self) -> None:
        self.supervisor.start(ChildSpec(LEASE_KEEPER, "lease-keeper", lambda: _run_lease_keeper(self.config),
                                        new_process_group=True, kind=Kind.LEASE_KEEPER))

    def poke_lease_keeper(self) -> None:
        """A round now (SIGUSR1), not at its next turn: the shared trading set just changed."""
        child = self.supervisor.children.get(LEASE_KEEPER)
        if child is not None:
            send_signal(child.pid, signal.SIGUSR1)

    def write_trading_set(self, symbol: str, mode: str | None, answer: str, envelope: list[bytes] | None) -> None:
        """Record a start, stop or shutdown in the shared trading set, by a worker (the root makes
        no call to the database); `envelope`: the client to answer once it is written."""
        request_id = next(self.request_ids)
        if envelope is not None:
            self.pending[request_id] = envelope
        child = self.supervisor.start(ChildSpec(
            key=f"trading-set-{request_id}", title=f"trading-set {symbol}",
            run=lambda: workers.write_trading_set(self.config, symbol, mode, request_id, answer),
            restart="temporary", kind=Kind.TRADING_SET))
        self.readers[child.spec.key] = request_id

    def on_leases(self, report: LeasesHeld) -> None:
        """The keeper's round: start what this host holds now, stop what it does not."""
        assert self.cluster is not None
        if report.error is not None:
            log.warning("lease keeper: %s; the symbols held stop at their deadlines unless a renewal comes", report.error)
        now = time.monotonic()
        self.stop_overdue(now)  # first: a report that comes late never saves a lease past its deadline
        changes = self.cluster.on_report(report, now)
        for symbol in changes.stop:
            if symbol in changes.left:  # stop-trading, on any host: its lease was handed back for it
                self.lose_symbol(symbol, "no longer in the trading set (stop-trading)", by=changes.stop_by[symbol],
                                 level=logging.INFO)
            else:
                self.hand_off(symbol, changes.stop_by[symbol])
        for held in changes.restart:  # as one host takes a stop-trading, then a start-trading
            self.lose_symbol(held.symbol, "stop-trading and start-trading came at once: it starts afresh",
                             by=held.deadline, level=logging.INFO)
        retry = [h for h in changes.retry if (e := self.symbols.get(h.symbol)) is not None and e.state == "failed"]
        for held in retry:  # as one host takes a start-trading of a symbol that failed
            log.info("%s: start-trading after it failed: starting it afresh", held.symbol)
        for held in sorted(changes.start + changes.restart + retry, key=lambda h: h.symbol):
            if self.supervisor.stopping(held.symbol):
                self.cluster.forget(held.symbol)  # its last run is still stopping: the next round starts it
                continue
            self.start_held(held)
        for symbol in changes.shut_down:
            self.shutdown_here(symbol)

    def start_held(self, held: HeldLease) -> None:
        """Start a symbol under the lease this host holds for it, afresh (a new restart budget)."""
        problem = validate.symbol_problem(self.config, held.symbol, self.filters.get(held.symbol))
        if problem is not None:
            log.error("%s: lease %d held but not started: %s", held.symbol, held.token, problem)
            self.symbols[held.symbol] = SymbolEntry("failed", problem, lease_token=held.token)
            return
        log.info("%s: lease %d held: starting it here", held.symbol, held.token)
        self.leaders.pop(held.symbol, None)
        self.supervisor.forget_history(held.symbol)
        self.start_symbol(held.symbol, held.mode, held.token)

    def stop_overdue(self, now: float) -> None:
        """No renewal came in time: stop the symbol at once, before its lease can expire anywhere."""
        if self.cluster is not None:
            for symbol in self.cluster.overdue(now):
                self.lose_symbol(symbol, "its lease could not be renewed in time", kill=True)

    def lose_symbol(self, symbol: str, why: str, kill: bool = False, by: float | None = None,
                    level: int = logging.WARNING) -> None:
        """Stop a symbol this host may no longer trade; its open orders stay at the exchange for the
        next holder. `kill`: at once (its lease deadline passed), not after a graceful stop; `by`: the
        graceful stop ends then at the latest (Supervisor.stop); `level`: of its log line (a stop that
        was asked for is no warning)."""
        entry = self.symbols.pop(symbol, None)
        if entry is None:
            return
        log.log(level, "%s: stopping it here: %s", symbol, why)
        self.leaders.pop(symbol, None)
        self.supervisor.stop(symbol, kill=kill, by=by)
        self.supervisor.forget_history(symbol)

    def hand_off(self, symbol: str, deadline: float) -> None:
        """A lease no longer held (handed off, or lost): a graceful stop, but one that ends by the
        deadline the lease was held to (SIGKILL then): stop_timeout_seconds could outlast the lease."""
        self.lose_symbol(symbol, "its lease is no longer held here (handed off, or lost)", by=deadline)

    def open_orders_known(self) -> dict[str, tuple[str, set[str]]]:
        """Per symbol, the id prefix and the orders its traders last said are open (as pushed up)."""
        known: dict[str, tuple[str, set[str]]] = {}
        for symbol, leader in self.leaders.items():
            states = [t.state for t in leader.traders if t.state is not None]
            if open_ids := strategy.listed_open_ids(states):
                known[symbol] = (states[0].id_prefix, open_ids)
        return known

    def owned_ids(self) -> set[str]:
        """Every client order id the running traders' states name (as the leaders last pushed them)."""
        return {cid for leader in self.leaders.values() for t in leader.traders if t.state for cid in workers.named_ids(t.state)}

    def start_reconcile(self) -> None:
        """Every reconcile_seconds: one openOrders call for every symbol (weight 80, not 6 per
        symbol), so no cycle waits on a fill that no push and no trade announced. The worker tells
        only the leaders whose traders wait on an order the exchange no longer lists, and reports
        the orders with an install prefix that no trader owns (orphans): also while no trader has
        an open order, since an abandoned position is exactly when none has."""
        self.next_reconcile = time.monotonic() + self.config.naived.reconcile_seconds
        known, owned, reporting = self.open_orders_known(), self.owned_ids(), frozenset(self.leaders)
        if RECONCILE not in self.supervisor.children:
            self.supervisor.start(ChildSpec(RECONCILE, "reconcile",
                                            lambda: workers.reconcile_all(self.config, known, owned, reporting),
                                            "temporary", kind=Kind.RECONCILE))
            self.account.worker_started()

    def on_orphans(self, found: list[OrphanOrder]) -> None:
        """The worker's unowned orders, checked again against the traders as known now; one log
        line when an order becomes an orphan and one when it stops being one."""
        owned = self.owned_ids()
        unowned = {o.client_order_id: o for o in found if o.client_order_id not in owned}
        now, orphans = time.time(), {}
        for cid, order in unowned.items():
            if cid in self.orphans:
                orphans[cid] = msgspec.structs.replace(order, since=self.orphans[cid].since)
            elif cid in self.orphan_suspects:
                orphans[cid] = msgspec.structs.replace(order, since=now)
                log.warning("%s: orphan order %s (%s %s @ %s, executed %s): it carries the id prefix of %s's store "
                            "but no trader owns it; cancel it or settle its position by hand", order.symbol, cid, order.side,
                            order.quantity, order.price, order.executed_qty, order.minted_for)
        for cid in self.orphans.keys() - orphans.keys():
            log.info("%s: %s is no longer an orphan (closed at the exchange, or a trader owns it)", self.orphans[cid].symbol, cid)
        self.orphans, self.orphan_suspects = orphans, set(unowned)

    def on_exit(self, child: Child, status: ExitStatus) -> Decision | None:
        match child.spec.kind:
            case Kind.SYMBOL_SUPERVISOR:
                return self.on_symbol_exit(child, status)
            case Kind.ACCOUNT_STREAM:
                self.stream_due = None  # its successor's first word starts the watch again
                for reason, n in self.stream_dropped.items():
                    self.stream_dropped_before[reason] = self.stream_dropped_before.get(reason, 0) + n
                self.stream_dropped = {}
            case Kind.RECONCILE:
                self.account.worker_ended(status.reason())
            case Kind.FILTERS:
                if not status.normal:
                    log.warning("fetching every symbol's filters failed (%s); leaders fetch their own meanwhile", status.reason())
                self.next_filters = time.monotonic() + (FILTERS_REFRESH if status.normal else FILTERS_RETRY)
            case Kind.TRADING_SET:
                request_id = self.readers.pop(child.spec.key)
                if request_id in self.pending:
                    self.control.reply(self.pending.pop(request_id),
                                       Error(f"could not record it in the shared trading set: {status.reason()}"))
                self.poke_lease_keeper()
                return "forget"
            case Kind.HISTORY:
                request_id = self.readers.pop(child.spec.key)
                if request_id in self.pending:  # a reader that answered was acked, so had its answer taken, before it exited
                    why = ("the store reader exited without an answer" if status.normal
                           else f"could not read the store: {status.reason()}")
                    self.control.reply(self.pending.pop(request_id), Error(why))
                return "forget"
        # The paper exchange, the account stream and the reconcile worker: their restart types decide.
        return None

    def on_symbol_exit(self, child: Child, status: ExitStatus) -> Decision | None:
        symbol = child.spec.key
        self.leaders.pop(symbol, None)
        if child.stop_deadline is not None:
            return None  # stop-trading: already forgotten
        if status.code == EXIT_LEASE_LOST and symbol in self.symbols:
            # Fenced: another host holds it now. Not restarted; the keeper's next round has the lease
            # under a new token (started again) or not at all.
            log.warning("%s: %s", symbol, status.reason())
            del self.symbols[symbol]
            return "forget"
        if status.normal and symbol in self.symbols:
            log.info("%s: shut down", symbol)
            del self.symbols[symbol]
            if self.cluster is not None:
                if not self.draining:  # naived stopping gracefully here: the symbol goes on on another host
                    self.write_trading_set(symbol, None, "", None)
            else:
                self.trading.set(symbol, None)
            return "forget"
        return None

    def on_give_up(self, child: Child, status: ExitStatus, reason: str) -> bool:
        key = child.spec.key
        match child.spec.kind:
            case Kind.PAPER_EXCHANGE:
                self.paper_failed = reason
                log.error("%s; orders cannot be placed until naived restarts", reason)
            case Kind.ACCOUNT_STREAM:
                self.account_stream_failed = reason
                log.error("%s; traders learn of fills by asking the exchange until naived restarts", reason)
            case Kind.WEB:
                self.web_failed = reason
                log.error("%s; the web observer is off until naived restarts", reason)
            case Kind.SYMBOL_SUPERVISOR if key in self.symbols:
                entry = self.symbols[key]
                entry.state, entry.error = "failed", reason
                log.error("%s: failed: %s", key, reason)
        return True  # the root never gives up: the other symbols keep trading

    # --- what the children tell the root ----------------------------------------------

    def on_reports(self) -> None:
        """Pushed news (PULL): each leader's status, the account stream's heartbeat."""
        for raw in _received(self.reports.recv):
            try:
                report = root_report_decoder.decode(raw)
            except msgspec.DecodeError as exc:
                log.warning("ignored a malformed report: %s", exc)
                continue
            match report:
                case LeaderStatus(symbol=symbol, start_id=start_id) if (
                        symbol in self.symbols and start_id == self.symbols[symbol].start_id):
                    self.leaders[symbol] = report  # not a late word of a leader from a start before this one
                    self.symbols[symbol].leader_restarts = report.restarts
                case StreamAlive(within, dropped, balances):
                    self.stream_due = time.monotonic() + within + self.config.account_stream.heartbeat_seconds
                    self.stream_dropped = dropped
                    self.account.on_pushed(balances)

    def on_worker_reports(self) -> None:
        """The workers' answers (REP, `ipc.report`): each is acked once handled, so a worker that
        exits 0 has had its answer taken."""
        for frames in _received(self.worker_reports.recv_multipart):
            try:
                self.on_worker_report(frames)
            finally:  # REP's lock-step: every request is acked, or the socket takes no other
                self.worker_reports.send(encode(Ack()), zmq.NOBLOCK)

    def on_worker_report(self, frames: list[bytes]) -> None:
        try:
            report = worker_report_decoder.decode(frames[0]) if len(frames) == 1 else None
        except msgspec.DecodeError:
            report = None
        match report:
            case None:
                log.warning("ignored a malformed worker report (%d frames)", len(frames))
            case WorkerReply(request_id, reply) if request_id in self.pending:
                self.control.reply(self.pending.pop(request_id), reply)
            case OrphansFound(orders):
                self.on_orphans(orders)
            case AccountRead():
                self.account.on_read(report)
            case LeasesHeld() if self.cluster is not None:
                self.on_leases(report)
            case ExchangeFilters(symbols):
                self.filters = {f.symbol: f for f in symbols}
                log.info("exchange filters of %d symbols fetched", len(self.filters))

    # --- control requests --------------------------------------------------------------

    def dispatch(self, req: ControlRequest, envelope: list[bytes]) -> msgspec.Struct | None:
        match req:
            case StartTrading(symbol):
                return self.start_trading(check_symbol(symbol), envelope)
            case StopTrading(symbol):
                return self.stop_trading(check_symbol(symbol), envelope)
            case ShutdownTrading(symbol):
                return self.shutdown_trading(check_symbol(symbol), envelope)
            case StatusRequest(symbol):
                return self.status(check_symbol(symbol) if symbol else None)
            case HistoryRequest(symbol):
                return self.history(check_symbol(symbol), envelope)
            case StopDaemon(finish_cycles):
                return self.stop_daemon(finish_cycles)
            case AccountRequest():
                return self.account.status(self.config)
        return Error("unknown request")

    def stop_daemon(self, finish_cycles: bool) -> msgspec.Struct:
        """`naivectl stop`: the signal that stops naived, sent to itself, so there is one way to
        stop (the named handler runs on the loop's next turn, after this answer is sent)."""
        sig = signal.SIGUSR1 if finish_cycles else signal.SIGTERM
        log.info("naivectl stop: sending %s to naived pid %d", sig.name, os.getpid())
        os.kill(os.getpid(), sig)
        how = "every symbol finishes its cycles, then it exits" if finish_cycles else \
            "its traders stop first; open orders stay at the exchange and are adopted at the next start"
        return Stopping(os.getpid(), socket.gethostname(), f"naived pid {os.getpid()} is stopping: {how}")

    def start_trading(self, symbol: str, envelope: list[bytes] | None = None) -> msgspec.Struct | None:
        if self.cluster is not None:
            problem = validate.symbol_problem(self.config, symbol, self.filters.get(symbol))
            if problem is not None:
                return Error(problem)
            self.write_trading_set(symbol, "running", f"started trading {symbol} (in the shared trading set: "
                                   "the host it is placed on starts it)", envelope)
            return None  # answered once written
        entry = self.symbols.get(symbol)
        if entry is not None and entry.state != "failed":
            return Ok(f"{symbol} is already trading")
        if self.supervisor.stopping(symbol):
            return Error(f"{symbol} is still stopping; try again in a moment")
        problem = validate.symbol_problem(self.config, symbol, self.filters.get(symbol))
        if problem is not None:  # no budget in its quote asset, below the minimum notional, unknown
            return Error(problem)  # the client's to read; not logged, so no client can flood the log
        # Recorded before it starts: a symbol trading now must autostart after a restart, so
        # what cannot be recorded is not started.
        try:
            self.trading.set(symbol, "running")
        except OSError as exc:
            log.error("%s: not started: cannot write %s: %s", symbol, self.trading.path, exc.strerror or exc)
            return Error(f"{symbol} not started: cannot record it in {self.trading.path} ({exc.strerror or exc})")
        if entry is not None:  # failed before: a fresh start with a fresh restart budget
            self.supervisor.forget_history(symbol)
        self.leaders.pop(symbol, None)
        self.start_symbol(symbol)
        return Ok(f"started trading {symbol}")

    def stop_trading(self, symbol: str, envelope: list[bytes] | None = None) -> msgspec.Struct | None:
        if self.cluster is not None:  # its holder stops it when its keeper hands the lease back
            self.write_trading_set(symbol, None, f"stopped trading {symbol} (on whichever host holds it); "
                                   "its open orders stay on the exchange", envelope)
            return None
        if symbol not in self.symbols:
            return Error(f"{symbol} is not trading")
        del self.symbols[symbol]
        self.leaders.pop(symbol, None)
        self.supervisor.stop(symbol)
        self.supervisor.forget_history(symbol)
        self.trading.set(symbol, None)
        return Ok(f"stopped trading {symbol}; its open orders stay on the exchange")

    def shutdown_trading(self, symbol: str, envelope: list[bytes] | None = None) -> msgspec.Struct | None:
        if self.cluster is not None:  # its holder shuts it down when its keeper reads the new mode
            self.write_trading_set(symbol, "shutting-down", f"shutting down {symbol} (on whichever host holds it): "
                                   "no new cycles; it stops when its traders finish", envelope)
            return None
        entry = self.symbols.get(symbol)
        if entry is None or entry.state == "failed":
            return Error(f"{symbol} is not trading")
        self.trading.set(symbol, "shutting-down")
        return self.shutdown_here(symbol)

    def shutdown_here(self, symbol: str) -> msgspec.Struct:
        """This host's part of a shutdown: the symbol's supervisor is told (or starts so when restarting)."""
        entry = self.symbols.get(symbol)
        if entry is None or entry.state == "failed":
            return Error(f"{symbol} is not trading")
        entry.state = "shutting-down"
        child = self.supervisor.children.get(symbol)
        if child is not None:  # else it is restarting, and starts in shutdown mode
            try:
                os.kill(child.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass  # it just died: its restart starts in shutdown mode
        return Ok(f"shutting down {symbol}: no new cycles; it stops when its traders finish")

    def history(self, symbol: str, envelope: list[bytes]) -> msgspec.Struct | None:
        """Read by a worker child: a bad store fails there, not here."""
        if self.cluster is None and not store_path(self.config.state_dir, symbol).exists():
            return Error(f"{symbol} has never traded here")
        request_id = next(self.request_ids)
        self.pending[request_id] = envelope
        child = self.supervisor.start(ChildSpec(
            key=f"history-{request_id}",
            title=f"history {symbol}",
            run=lambda: workers.read_history(self.config, symbol, request_id),
            restart="temporary",
            kind=Kind.HISTORY,
        ))
        self.readers[child.spec.key] = request_id
        return None  # answered when the worker reports (or dies)

    def status(self, only: str | None) -> TreeStatus:
        # A root that was frozen may be asked before its tick ran: what is past its deadline is
        # stopped first, so that status never shows a symbol running that this host may not trade.
        self.stop_overdue(time.monotonic())
        if only and only not in self.symbols:
            if lookup(only) is not None:
                raise ValueError(f"{only} is not trading (naivectl start-trading {only})")
            near = similar(only)
            raise ValueError(f"{only} is not a symbol of the exchange" + (f"; did you mean {', '.join(near)}?" if near else ""))
        symbols = [
            SymbolStatus(
                symbol=symbol,
                state=entry.state,
                supervisor=self._process_info(symbol),
                leader=self.leaders.get(symbol) if symbol in self.supervisor.children else None,
                error=entry.error,
                lease_token=entry.lease_token,
            )
            for symbol, entry in sorted(self.symbols.items())
            if not only or symbol == only
        ]
        paper = None
        if self.config.naived.exchange == "paper":
            paper = self._process_info(PAPER)
            paper.error = self.paper_failed
        stream = self._process_info(ACCOUNT_STREAM)
        stream.error = self.account_stream_failed
        web = None
        if self.web_listener is not None:
            web = self._process_info(WEB)
            web.error = self.web_failed
        return TreeStatus(
            pid=os.getpid(),
            started_at=self.started_at,
            exchange=self.config.naived.exchange,
            market=self.config.streamer.endpoint,
            symbols=symbols,
            paper_exchange=paper,
            account_stream=stream,
            orphans=[o for _, o in sorted(self.orphans.items()) if not only or o.symbol == only],
            problems=[p for p in [self.trading.problem] if p is not None],
            cluster=self.cluster.status() if self.cluster is not None else None,
            lease_keeper=self._process_info(LEASE_KEEPER) if self.cluster is not None else None,
            web=web,
            account=self.account.status(self.config),
        )

    def _process_info(self, key: str) -> ProcessInfo:
        child = self.supervisor.children.get(key)
        return ProcessInfo(
            pid=child.pid if child else None,
            started_at=child.started_at if child else None,
            restarts=self.supervisor.restarts(key),
        )

    def collect_metrics(self) -> str:
        dropped = {reason: self.stream_dropped.get(reason, 0) + self.stream_dropped_before.get(reason, 0)
                   for reason in set(self.stream_dropped) | set(self.stream_dropped_before)}
        return tree_metrics.render(self.config, self.status(None), self.control.refused, dropped)

    def web_url(self) -> str:
        host, port = self.config.web.host, self.config.web.port
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def status_line(self) -> str:
        running = sum(1 for e in self.symbols.values() if e.state != "failed")
        failed = [s for s, e in self.symbols.items() if e.state == "failed"]
        restarts = sum(self.supervisor.restarts(k) for k in self.symbols)
        line = f"{running} symbols trading, {restarts} symbol restarts"
        return line + (f", failed: {' '.join(failed)}" if failed else "")

    # --- signals and the loop -----------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: the trading settings and restart limits change at run time; the rest is
        reported as needing a restart. Each symbol supervisor passes it to its leader."""
        new = reload_config(self.config, self.reload_problem)
        if new is None:
            return  # refused (logged): nothing changes, and no level below is told to reload
        self.config = new
        self.supervisor.limits = self.config.naived.supervision
        for child in self.supervisor.of_kind(Kind.SYMBOL_SUPERVISOR):
            os.kill(child.pid, signal.SIGHUP)

    def reload_problem(self, new: Config) -> str | None:
        """A reload may not take away what a trading symbol needs (its budget, enough of it)."""
        for symbol, entry in sorted(self.symbols.items()):
            if entry.state != "failed" and (problem := validate.symbol_problem(new, symbol, self.filters.get(symbol))):
                return problem
        return None

    def next_tick(self) -> float | None:
        metrics = self.metrics.next_deadline() if self.metrics is not None else None
        lease = self.cluster.next_deadline() if self.cluster is not None else None
        return min((t for t in (self.watchdog.deadline(), self.next_filters, self.stream_due, self.next_reconcile,
                                metrics, lease, self.publish_at)
                    if t is not None), default=None)

    def shutdown(self) -> None:
        """SIGUSR1, a graceful shutdown: `shutdown-trading` for every symbol (no new cycles; a
        symbol ends when its traders finish theirs), then exit 0 once none is left. Each symbol's
        shutdown is recorded, as `shutdown-trading` records it, so it survives a restart."""
        running = [s for s, e in self.symbols.items() if e.state == "running"]
        log.info("SIGUSR1: shutting down gracefully: %d symbols finish their cycles, then naived exits", len(running))
        self.draining = True
        for symbol in running:
            if self.cluster is not None:
                self.shutdown_here(symbol)  # not the shared set: the other hosts go on trading it
            else:
                self.shutdown_trading(symbol)

    def tick(self) -> None:
        if self.draining and not any(e.state != "failed" for e in self.symbols.values()):
            raise Exit("graceful shutdown: every symbol has finished its cycles", 0)
        now = time.monotonic()
        if self.metrics is not None:
            self.metrics.tick(now)  # a scraper past its deadline is dropped even if it sends nothing more
        if self.next_filters is not None and now >= self.next_filters:
            self.start_exchange_info()
        if now >= self.next_reconcile:
            self.start_reconcile()
        self.stop_overdue(now)
        stream = self.supervisor.children.get(ACCOUNT_STREAM)
        if self.stream_due is not None and now >= self.stream_due and stream is not None:
            # Hung (its traders would wait on pushes that never come): killed, and restarted by the
            # loop like any crash; the new process's session makes the traders ask once.
            log.warning("account stream: silent past its word; killing pid %d", stream.pid)
            os.kill(stream.pid, signal.SIGKILL)
            self.stream_due = None
        # Healthy = this loop turns and the paper exchange has not given up; otherwise systemd's
        # watchdog restarts naived as a whole.
        self.watchdog.tick(self.paper_failed is None, self.status_line)
        self.publish_status(now)

    # --- the web observer ---------------------------------------------------------------

    def publish_status(self, now: float) -> None:
        """Push the tree's status to the web observer when it changed, at most every OBSERVE_SECONDS.
        Every turn of the loop may have changed it (a report, an exit, a request), so a turn that
        cannot push yet makes the loop turn again when it can (next_tick); an idle root is not woken.
        NOBLOCK on a PUB with a small high-water mark: a web child that does not read loses
        statuses, and the root never waits for it."""
        if self.observer is None:
            return
        if self.publish_at is None:
            self.publish_at = max(now, self.published_at + OBSERVE_SECONDS)
        if now < self.publish_at:
            return
        self.publish_at, self.published_at = None, now
        raw = msgspec.json.encode(self.status(None))
        if raw == self.published and not self.observer_joined:
            return
        self.published, self.observer_joined = raw, False
        try:
            self.observer.send(raw, zmq.NOBLOCK)
        except zmq.Again:
            pass  # a PUB drops past its high-water mark rather than wait; kept for the non-dropping kinds

    def on_observer(self) -> None:
        """The XPUB's incoming frames: subscriptions. A web observer that (re)connects gets the
        status at this turn's tick, unchanged or not, instead of at the next change."""
        assert self.observer is not None
        for frame in _received(self.observer.recv):
            if frame[:1] == b"\x01":
                self.observer_joined = True
                self.publish_at = time.monotonic()

    def autostart(self) -> None:
        """One host (SQLite): the symbols of naived.autostart and those trading when naived stopped."""
        for symbol in dict.fromkeys(self.config.naived.autostart + list(self.trading.modes)):
            log.info("%s: autostart", symbol)
            mode = self.trading.modes.get(symbol, "running")
            problem = validate.symbol_problem(self.config, symbol)
            if problem is not None:  # as start-trading would answer; kept for autostart once fixed
                log.error("%s: not autostarted: %s", symbol, problem)
                self.symbols[symbol] = SymbolEntry("failed", problem)
                continue
            self.start_symbol(symbol, mode)
            try:
                self.trading.set(symbol, mode)
            except OSError as exc:  # it autostarts from the config next time too; trading goes on
                log.warning("%s: cannot record it in %s: %s", symbol, self.trading.path, exc.strerror or exc)

    def run(self) -> int:
        trader.prepare(self.config)  # shared by every trader forked below us (see trader.prepare)
        if self.paper_listener is not None:
            self.start_paper_exchange()
        self.start_account_stream()
        if self.web_listener is not None:
            self.start_web()
        self.start_exchange_info()
        if self.cluster is not None:
            self.start_lease_keeper()
            if self.config.naived.autostart:
                log.warning("naived.autostart is not used with the PostgreSQL store: the shared trading set says what "
                            "trades (naivectl start-trading adds to it)")
        else:
            self.autostart()
        sdnotify.notify("READY=1", f"STATUS={self.status_line()}")
        log.info("naived ready: control %s, exchange %s%s", self.config.control_endpoint, self.config.naived.exchange,
                 f", web observer {self.web_url()}" if self.web_listener is not None else "")
        if self.web_listener is not None and not is_loopback(self.config.web.host):
            log.warning("web observer on %s: reachable from other hosts, and it has no login; an SSH tunnel to "
                        "a loopback address keeps it to you (README)", self.web_url())
        return self.supervisor.run(self)

    def before_stop(self) -> None:
        """The symbols first (their traders first of all), the account stream and paper exchange last."""
        sdnotify.notify("STOPPING=1")
        self.supervisor.stop_all(keep=frozenset({PAPER, ACCOUNT_STREAM, LEASE_KEEPER, WEB}))

    def on_stop(self) -> None:
        close_bound(self.control.socket, self.config.control_endpoint)
        close_bound(self.reports, self.config.reports_endpoint)
        close_bound(self.worker_reports, self.config.workers_endpoint)
        if self.observer is not None:
            close_bound(self.observer, self.config.observer_endpoint)
        self.ctx.term()
        log.info("naived stopped")


def _received(recv: Callable[[int], T]) -> Iterator[T]:
    """What a socket holds now, REPORTS_PER_TURN messages at most: a flood of reports on one
    socket cannot starve the others (the control socket first of all)."""
    for _ in range(REPORTS_PER_TURN):
        try:
            yield recv(zmq.NOBLOCK)
        except zmq.Again:
            return


def _run_lease_keeper(config: Config) -> int:
    """In the forked child; imported here, so that a host on SQLite never imports the database client."""
    from naived.tree import lease_keeper

    return lease_keeper.run(config)


def _run_web(config: Config, listener: socket.socket) -> int:
    """In the forked child; imported here, so the root never holds asyncio's and websockets' modules."""
    from naived.web import main as web

    return web.run(config, listener)


def _run_paper_exchange(config: Config, listener: socket.socket, ws_listener: socket.socket) -> int:
    """In the forked child. Imported here, not by the root: the paper exchange's modules (HTTP
    server, book) would otherwise sit in the root's memory, and every process forked from it pays
    for the pages its fork() copies the mappings of (a fork of a 36 MiB process took 1.5 ms
    here, of a 13 MiB one 0.5 ms) and for whatever of them it touches."""
    from naived.paper import main as paper

    paper.run(config, listener, ws_listener)
    return 0


def run(config: Config, owner: Holder | None = None) -> int:
    """`owner`: this tree's hold on the state directory (naived/store/ownership.py), taken by the caller."""
    setproctitle.setproctitle("naive: naived")
    try:
        root = Root(config)
    except StartError as exc:
        log.error("%s", exc)
        return 1
    if owner is not None:  # after the listeners are bound: a start that cannot bind stays one line
        log.info("naived pid %d holds %s (token %d)", owner.pid, config.state_dir, owner.token)
    if config.naived.memory_merge:  # before the first fork (in run): every child inherits it
        log.info("%s", merge_identical_pages())
    return root.run()

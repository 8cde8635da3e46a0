"""The leader process of one symbol: the book's Leader and DynamicTraderSupervisor in one.

It forks the traders (only a parent can `waitpid` a child), keeps each trader's
last reported state in memory and in the durable store, and acks a state only
once it is stored. A trader that exits 0 finished its cycle: it is recorded and
a fresh trader starts the next cycle. A trader that is killed or fails is
started again from its last state.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time

import msgspec
import zmq

from naived import exchange, strategy, trader
from naived.config import Config
from naived.ipc import bind_rep
from naived.messages import (
    Ack,
    LeaderStatus,
    LeaderStatusRequest,
    RebuyTriggered,
    Settings,
    ShutdownRequest,
    StateUpdated,
    TraderFailed,
    TraderHello,
    TraderInfo,
    TraderState,
    TradeEvent,
    decode_trade,
    encode,
    leader_request_decoder,
    trade_topic,
)
from naived.store import Store, store_path
from naived.supervisor import EXIT_GAVE_UP, ChildSpec, SignalQueue, Supervisor
from naived.symbols import SymbolFilters, filters_from_exchange_info

log = logging.getLogger(__name__)

FILTERS_DEADLINE = 30.0  # how long to wait for the exchange at start before giving up


COUNTERS = ("leader_starts", "orders_placed", "orders_filled", "intents_unknown", "drift")


def counts(old: TraderState | None, new: TraderState) -> dict[str, int]:
    """What a state change means for the counters: orders placed or filled, outcomes unknown."""
    result = {}
    for before, after in ((old and old.buy_order, new.buy_order), (old and old.sell_order, new.sell_order)):
        if after is None:
            continue
        if before is None or before.client_order_id != after.client_order_id:
            result["orders_placed"] = result.get("orders_placed", 0) + 1
        if after.status == "FILLED" and (before is None or before.status != "FILLED"):
            result["orders_filled"] = result.get("orders_filled", 0) + 1
    if new.intent and new.intent.unknown and not (old and old.intent and old.intent.unknown):
        result["intents_unknown"] = 1
    return result


class Leader:
    def __init__(self, config: Config, symbol: str) -> None:
        self.config = config
        self.symbol = symbol
        self.started_at = time.time()
        self.signals = SignalQueue(signal.SIGTERM, signal.SIGINT)
        self.ctx = zmq.Context()
        self.rep = bind_rep(self.ctx, config.leader_endpoint(symbol))
        # The symbol's last trade, for status. Drained in batches when readable: one wake-up
        # per burst, not per trade.
        self.market = self.ctx.socket(zmq.SUB)
        self.market.setsockopt(zmq.LINGER, 0)
        self.market.connect(config.streamer.endpoint)
        self.market.setsockopt(zmq.SUBSCRIBE, trade_topic(symbol))
        self.last_trade: TradeEvent | None = None
        self.store = Store(store_path(config.state_dir, symbol))
        self.poller = zmq.Poller()
        self.supervisor = Supervisor(f"leader {symbol}", config.naived.supervision, self.poller)
        self.client = exchange.client_for(config)
        self.states: dict[int, TraderState] = self.store.traders()
        self.ready_at: dict[int, float] = {}
        self.used_weight = 0
        self.store.bump("leader_starts")
        self.shutting_down = self.store.get_meta("shutting_down") == "1"
        self.trading = config.trading.for_symbol(symbol)
        self.reconciled = False

    @functools.cached_property
    def settings(self) -> Settings:
        """For fresh cycles only: a resumed trader keeps the settings its cycle began with, so a
        restarted leader forks its traders without waiting for the exchange."""
        return strategy.settings_for(self.symbol, self.trading, self._filters())

    def _filters(self) -> SymbolFilters:
        """Exchange filters, fetched once for all traders (the exchange may still be starting)."""
        deadline = time.monotonic() + FILTERS_DEADLINE
        delay = 0.02
        while True:
            try:
                return filters_from_exchange_info(self.client.exchange_info(self.symbol), self.symbol)
            except KeyError:
                raise
            except Exception as exc:  # not up yet, rate limited, connection refused...
                if time.monotonic() > deadline:
                    raise
                log.info("%s: exchange not ready (%s), retrying", self.symbol, type(exc).__name__)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    # --- traders ------------------------------------------------------------------

    def start_trader(self, trader_id: int) -> None:
        """Resume the trader's stored state, or begin a new cycle with a never-used number."""
        state = self.states.get(trader_id)
        if state is None:
            state = TraderState(self.symbol, trader_id, self.store.next_cycle(), self.settings, id_prefix=self.store.id_prefix())
            self.store.save(state)
            self.states[trader_id] = state
        spec = ChildSpec(
            key=str(trader_id),
            title=f"trader {self.symbol}/{trader_id}",
            run=functools.partial(trader.run, self.config, state),
        )
        self.ready_at.pop(trader_id, None)
        self.supervisor.start(spec)

    def on_trader_exit(self, pidfd: int) -> bool:
        """Reap a trader and apply the book's rule; False when the leader must give up."""
        child, status = self.supervisor.reap(pidfd)
        trader_id = int(child.spec.key)
        state = self.states[trader_id]
        finished = status.normal and state.status == "done"
        if finished:
            self.store.finish(state)
            del self.states[trader_id]
            log.info("%s/%d: cycle %d finished", self.symbol, trader_id, state.cycle)
            if self.shutting_down or trader_id >= self.trading.chunks:
                return True
        decision = self.supervisor.on_exit(child, status, count=not finished)
        if decision == "give_up":
            said = self.store.get_meta("last_error")
            self.store.set_meta("last_error", f"trader {self.symbol}/{trader_id} kept failing ({status})" + (f"; {said}" if said else ""))
            return False
        self.start_trader(trader_id)
        return True

    def reconcile(self) -> None:
        """Log any drift between the traders' orders and the exchange's open orders."""
        try:
            open_orders = self.client.open_orders(self.symbol)
        except Exception as exc:  # reconciliation is a check, never a reason not to trade
            log.warning("%s: reconciliation skipped: %s", self.symbol, exc)
            return
        prefix = f"{self.store.id_prefix()}-"
        at_exchange = {o.client_order_id for o in open_orders if o.client_order_id.startswith(prefix)}
        orders = [o for s in self.states.values() for o in (s.buy_order, s.sell_order) if o is not None]
        # An acked intent may already be an order at the exchange: it is owned, not drift.
        owned = {o.client_order_id for o in orders} | {s.intent.client_order_id for s in self.states.values() if s.intent}
        ours = {o.client_order_id for o in orders if o.status in ("NEW", "PARTIALLY_FILLED")}
        unowned, missing = at_exchange - owned, ours - at_exchange
        for cid in sorted(unowned):
            log.warning("%s: drift: exchange has open order %s that no trader owns", self.symbol, cid)
        for cid in sorted(missing):
            log.warning("%s: drift: a trader thinks %s is open; the exchange does not (it will re-check)", self.symbol, cid)
        self.store.set_meta("drift", str(len(unowned) + len(missing)))

    # --- requests from traders and the root --------------------------------------

    def handle_raw(self, raw: bytes) -> msgspec.Struct:
        try:
            request = leader_request_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            log.warning("%s: ignored a malformed request: %s", self.symbol, exc)
            return Ack()
        return self.handle(request)

    def handle(self, request: msgspec.Struct) -> msgspec.Struct:
        match request:
            case StateUpdated(state, used_weight):
                # stored before the ack: the ack means durable
                self.store.save(state, counts(self.states.get(state.trader_id), state))
                self.states[state.trader_id] = state
                self.used_weight = used_weight
            case TraderHello(trader_id, pid):
                self.ready_at[trader_id] = time.time()
                log.debug("%s/%d: trader pid %d ready", self.symbol, trader_id, pid)
            case TraderFailed(trader_id, error):
                self.store.set_meta("last_error", error)
            case RebuyTriggered(trader_id):
                self.on_rebuy(trader_id)
            case LeaderStatusRequest():
                return self.status()
            case ShutdownRequest():
                self.shutting_down = True
                self.store.set_meta("shutting_down", "1")
                log.info("%s: shutting down: no new cycles", self.symbol)
        return Ack()

    def on_rebuy(self, trader_id: int) -> None:
        running = len(self.supervisor.children)
        if self.shutting_down or running >= self.trading.chunks:
            log.info("%s/%d: rebuy ignored (%d of %d traders running)", self.symbol, trader_id, running, self.trading.chunks)
            return
        free = next(i for i in range(self.trading.chunks) if str(i) not in self.supervisor.children)
        log.info("%s/%d: rebuy: starting trader %d", self.symbol, trader_id, free)
        self.start_trader(free)

    def drain_market(self) -> None:
        payload = None
        while True:
            try:
                _, payload = self.market.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
        if payload is not None:
            self.last_trade = decode_trade(payload)

    def status(self) -> LeaderStatus:
        traders = []
        for trader_id in sorted(set(self.states) | {int(k) for k in self.supervisor.children}):
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
            cycles_finished=self.store.cycles_finished(),
            shutting_down=self.shutting_down,
            last_error=self.store.get_meta("last_error"),
            counters={k: self.store.counter(k) for k in COUNTERS},
            books=self.store.books(),
            last_trade=self.last_trade,
            used_weight=self.used_weight,
        )

    # --- the loop --------------------------------------------------------------------

    def run(self) -> int:
        trader_ids = set(self.states)
        if not self.shutting_down:
            trader_ids |= set(range(self.trading.traders_at_start))
        for trader_id in sorted(trader_ids):
            self.start_trader(trader_id)
        self.poller.register(self.rep, zmq.POLLIN)
        self.poller.register(self.signals.fd, zmq.POLLIN)
        self.poller.register(self.market, zmq.POLLIN)
        while True:
            for item, _ in self.poller.poll():
                if item is self.rep:
                    self.rep.send(encode(self.handle_raw(self.rep.recv())))
                elif item is self.market:
                    self.drain_market()
                elif item == self.signals.fd:
                    if self.signals.drain():
                        log.info("%s: stopping %d traders", self.symbol, len(self.supervisor.children))
                        self.supervisor.stop_all()
                        return 0
                elif self.supervisor.exited(item):
                    if not self.on_trader_exit(item):
                        self.supervisor.stop_all()
                        return EXIT_GAVE_UP
            if not self.reconciled and all(int(k) in self.ready_at for k in self.supervisor.children):
                self.reconciled = True  # once the traders are back: it only reports, it can wait
                self.reconcile()
            if self.shutting_down and not self.supervisor.children:
                log.info("%s: last trader finished, symbol stopped", self.symbol)
                self.store.set_meta("shutting_down", None)
                return 0


def run(config: Config, symbol: str) -> int:
    """Entry point in the forked child."""
    return Leader(config, symbol).run()

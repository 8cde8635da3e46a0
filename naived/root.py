"""The naived root: `Naive.Application` and `Naive.DynamicSymbolSupervisor` in one process.

One loop (gunicorn's arbiter shape): the control socket, queued signals and the
pidfds of its children — the paper exchange and one symbol supervisor per
traded symbol. A symbol whose supervisor gave up is marked `failed` with its
last error; the root itself never crash-loops and keeps serving the others.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import select
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import requests
import setproctitle
import zmq

from naived import exchange, sdnotify, symbol_supervisor
from naived import paper as paper_exchange
from naived.config import Config, check_symbol
from naived.ipc import bind_rep, request
from naived.metrics import Metrics, MetricsEndpoint
from naived.messages import (
    ControlRequest,
    Error,
    History,
    HistoryRequest,
    LeaderStatus,
    LeaderStatusRequest,
    Ok,
    ProcessInfo,
    ShutdownRequest,
    ShutdownTrading,
    StartTrading,
    StatusRequest,
    StopTrading,
    SymbolStatus,
    TreeStatus,
    control_request_decoder,
    encode,
    leader_reply_decoder,
)
from naived.store import Store, store_path
from naived.supervisor import EXIT_GAVE_UP, ChildSpec, SignalQueue, Supervisor
from naived.symbols import lookup

log = logging.getLogger(__name__)

PAPER = "paper-exchange"
PAPER_READY_DEADLINE = 15.0
LEADER_STATUS_TIMEOUT_MS = 500


class AlreadyRunning(Exception):
    pass


@dataclass
class SymbolEntry:
    state: str = "running"  # running | failed | shutting-down
    error: str | None = None


class TradingSet:
    """Symbols that are trading, kept on disk so naived restarts them (autostart)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.symbols: list[str] = json.loads(path.read_text())
        except FileNotFoundError:
            self.symbols = []

    def set(self, symbol: str, trading: bool) -> None:
        others = [s for s in self.symbols if s != symbol]
        self.symbols = sorted(others + [symbol] if trading else others)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.symbols))
        os.replace(tmp, self.path)  # atomic: a crash leaves the old or the new list


class Root:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.started_at = time.time()
        self.ctx = zmq.Context()
        if request(self.ctx, config.control_endpoint, StatusRequest(), msgspec.msgpack.Decoder(), 300) is not None:
            raise AlreadyRunning(f"naived is already running on {config.control_endpoint}")
        self.signals = SignalQueue(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        self.control = bind_rep(self.ctx, config.control_endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self.signals.fd, zmq.POLLIN)
        self.supervisor = Supervisor("naived", config.naived.supervision, self.poller)
        self.symbols: dict[str, SymbolEntry] = {}
        self.trading = TradingSet(config.state_dir / "trading.json")
        self.paper_failed: str | None = None
        self.metrics: MetricsEndpoint | None = None
        if config.naived.metrics_port:
            self.metrics = MetricsEndpoint(config.naived.metrics_port, self.collect_metrics)
            self.poller.register(self.metrics.fd, zmq.POLLIN)

    # --- children --------------------------------------------------------------------

    def start_paper_exchange(self) -> None:
        spec = ChildSpec(
            key=PAPER,
            title="paper-exchange",
            run=lambda: paper_exchange.run(self.config) or 0,
            new_process_group=True,
        )
        child = self.supervisor.start(spec)
        # Wait for it to answer (or die) before any leader asks it for filters.
        deadline = time.monotonic() + PAPER_READY_DEADLINE
        session = requests.Session()
        session.trust_env = False
        while time.monotonic() < deadline:
            try:
                session.get(f"{self.config.paper_url}/api/v3/ping", timeout=1).raise_for_status()
                log.info("paper exchange ready on %s", self.config.paper_url)
                return
            except requests.RequestException:
                if select.select([child.pidfd], [], [], 0.02)[0]:
                    return  # it died; the loop reaps it and applies the restart rule
        log.error("paper exchange did not answer on %s within %gs", self.config.paper_url, PAPER_READY_DEADLINE)

    def start_symbol(self, symbol: str) -> None:
        self.symbols[symbol] = SymbolEntry()
        self.supervisor.start(
            ChildSpec(
                key=symbol,
                title=f"supervisor {symbol}",
                run=functools.partial(symbol_supervisor.run, self.config, symbol),
                restart="transient",  # exit 0 = shut down on request
                new_process_group=True,
            )
        )

    def on_child_exit(self, pidfd: int) -> None:
        child, status = self.supervisor.reap(pidfd)
        key = child.spec.key
        decision = self.supervisor.on_exit(child, status)
        if key == PAPER:
            if decision == "give_up":
                self.paper_failed = f"paper exchange kept failing ({status})"
                log.error("%s; orders cannot be placed until naived restarts", self.paper_failed)
            else:
                self.start_paper_exchange()
            return
        entry = self.symbols.get(key)
        if entry is None:
            return  # stopped on request
        if decision == "forget":
            log.info("%s: shut down", key)
            del self.symbols[key]
            self.trading.set(key, False)
        elif decision == "give_up" or status.code == EXIT_GAVE_UP:
            entry.state, entry.error = "failed", self.last_error(key, str(status))
            log.error("%s: failed: %s", key, entry.error)
        else:
            self.start_symbol(key)

    def last_error(self, symbol: str, status: str) -> str:
        store = Store(store_path(self.config.state_dir, symbol))
        try:
            detail = store.get_meta("last_error")
        finally:
            store.close()
        return f"supervisor {status}" + (f"; last error: {detail}" if detail else "")

    # --- control requests --------------------------------------------------------------

    def handle(self, raw: bytes) -> msgspec.Struct:
        try:
            req = control_request_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            return Error(f"bad request: {exc}")
        try:
            return self._dispatch(req)
        except ValueError as exc:
            return Error(str(exc))

    def _dispatch(self, req: ControlRequest) -> msgspec.Struct:
        match req:
            case StartTrading(symbol):
                return self.start_trading(check_symbol(symbol))
            case StopTrading(symbol):
                symbol = check_symbol(symbol)
                if symbol not in self.symbols:
                    return Error(f"{symbol} is not trading")
                del self.symbols[symbol]
                self.supervisor.stop(symbol)
                self.supervisor.forget_history(symbol)
                self.trading.set(symbol, False)
                return Ok(f"stopped trading {symbol}; its open orders stay on the exchange")
            case ShutdownTrading(symbol):
                symbol = check_symbol(symbol)
                entry = self.symbols.get(symbol)
                if entry is None or entry.state != "running":
                    return Error(f"{symbol} is not trading")
                reply = request(self.ctx, self.config.leader_endpoint(symbol), ShutdownRequest(), leader_reply_decoder, 2000)
                if reply is None:
                    return Error(f"{symbol}: the leader did not answer; try again")
                entry.state = "shutting-down"
                return Ok(f"shutting down {symbol}: no new cycles; it stops when its traders finish")
            case StatusRequest(symbol):
                return self.status(check_symbol(symbol) if symbol else None)
            case HistoryRequest(symbol):
                symbol = check_symbol(symbol)
                path = store_path(self.config.state_dir, symbol)
                if not path.exists():
                    return Error(f"{symbol} has never traded here")
                store = Store(path)
                try:
                    return History(symbol, store.finished_cycles())
                finally:
                    store.close()
        return Error("unknown request")

    def start_trading(self, symbol: str) -> msgspec.Struct:
        entry = self.symbols.get(symbol)
        if entry is not None and entry.state != "failed":
            return Ok(f"{symbol} is already trading")
        if not self.symbol_exists(symbol):
            return Error(f"unknown symbol {symbol}: the {self.config.naived.exchange} exchange does not list it")
        if entry is not None:  # failed before: a fresh start with a fresh restart budget
            self.supervisor.forget_history(symbol)
        self.start_symbol(symbol)
        self.trading.set(symbol, True)
        return Ok(f"started trading {symbol}")

    def symbol_exists(self, symbol: str) -> bool:
        if self.config.naived.exchange == "paper":
            return lookup(symbol) is not None
        try:
            exchange.client_for(self.config).exchange_info(symbol)
            return True
        except exchange.BinanceError:
            return False

    def status(self, only: str | None) -> TreeStatus:
        symbols = []
        for symbol, entry in sorted(self.symbols.items()):
            if only and symbol != only:
                continue
            child = self.supervisor.children.get(symbol)
            leader = None
            if child is not None:
                reply = request(
                    self.ctx, self.config.leader_endpoint(symbol), LeaderStatusRequest(), leader_reply_decoder,
                    LEADER_STATUS_TIMEOUT_MS,
                )
                leader = reply if isinstance(reply, LeaderStatus) else None
            symbols.append(
                SymbolStatus(
                    symbol=symbol,
                    state=entry.state,
                    supervisor=self._process_info(symbol),
                    leader=leader,
                    error=entry.error,
                )
            )
        paper = self._process_info(PAPER) if self.config.naived.exchange == "paper" else None
        return TreeStatus(
            pid=os.getpid(),
            started_at=self.started_at,
            exchange=self.config.naived.exchange,
            market=self.config.streamer.endpoint,
            symbols=symbols,
            paper_exchange=paper,
        )

    def _process_info(self, key: str) -> ProcessInfo:
        child = self.supervisor.children.get(key)
        return ProcessInfo(
            pid=child.pid if child else None,
            started_at=child.started_at if child else None,
            restarts=self.supervisor.restarts(key),
        )

    def collect_metrics(self) -> str:
        tree = self.status(None)
        m = Metrics()
        m.add("naive_up", "gauge", "1 while naived answers", 1)
        restarts = "naive_restarts_total"
        restarts_help = "process restarts by level of the tree"
        if tree.paper_exchange is not None:
            m.add(restarts, "counter", restarts_help, tree.paper_exchange.restarts, level="paper_exchange", symbol="")
        weight = 0
        for sym in tree.symbols:
            m.add("naive_symbol_state", "gauge", "1 for the state each symbol is in", 1, symbol=sym.symbol, state=sym.state)
            m.add(restarts, "counter", restarts_help, sym.supervisor.restarts, level="symbol_supervisor", symbol=sym.symbol)
            leader = sym.leader
            if leader is None:
                continue
            c = leader.counters
            m.add(restarts, "counter", restarts_help, max(0, c.get("leader_starts", 1) - 1), level="leader", symbol=sym.symbol)
            m.add(restarts, "counter", restarts_help, sum(t.restarts for t in leader.traders), level="trader", symbol=sym.symbol)
            by_status: dict[str, int] = {}
            for t in leader.traders:
                status = t.state.status if t.state else "new"
                by_status[status] = by_status.get(status, 0) + 1
            for status, n in sorted(by_status.items()):
                m.add("naive_traders", "gauge", "traders by the state of their cycle", n, symbol=sym.symbol, status=status)
            m.add("naive_orders_placed_total", "counter", "orders placed", c.get("orders_placed", 0), symbol=sym.symbol)
            m.add("naive_orders_filled_total", "counter", "orders filled", c.get("orders_filled", 0), symbol=sym.symbol)
            m.add("naive_intents_unknown_total", "counter", "order placements whose outcome was unknown", c.get("intents_unknown", 0), symbol=sym.symbol)
            pending = sum(1 for t in leader.traders if t.state and t.state.intent and t.state.intent.unknown)
            m.add("naive_intents_unknown", "gauge", "unknown outcomes not yet resolved", pending, symbol=sym.symbol)
            m.add("naive_order_drift", "gauge", "orders the exchange and the traders disagree on, at the leader's start", c.get("drift", 0), symbol=sym.symbol)
            m.add("naive_cycles_finished_total", "counter", "cycles finished", leader.cycles_finished, symbol=sym.symbol)
            weight = max(weight, leader.used_weight)
        m.add("naive_exchange_used_weight", "gauge", "X-MBX-USED-WEIGHT-1M last seen by a trader", weight)
        return m.render()

    def status_line(self) -> str:
        running = sum(1 for e in self.symbols.values() if e.state == "running")
        failed = [s for s, e in self.symbols.items() if e.state == "failed"]
        restarts = sum(self.supervisor.restarts(k) for k in self.symbols)
        line = f"{running} symbols trading, {restarts} symbol restarts"
        return line + (f", failed: {' '.join(failed)}" if failed else "")

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> int:
        if self.config.naived.exchange == "paper":
            self.start_paper_exchange()
        for symbol in dict.fromkeys(self.config.naived.autostart + self.trading.symbols):
            log.info("%s: autostart", symbol)
            reply = self.start_trading(symbol)
            if isinstance(reply, Error):
                log.error("%s", reply.message)
        sdnotify.notify("READY=1", f"STATUS={self.status_line()}")
        log.info("naived ready: control %s, exchange %s", self.config.control_endpoint, self.config.naived.exchange)
        watchdog = sdnotify.watchdog_interval()
        next_ping = time.monotonic()
        while True:
            timeout_ms = max(0, int((next_ping - time.monotonic()) * 1000)) if watchdog else None
            for item, _ in self.poller.poll(timeout_ms):
                if item is self.control:
                    self.control.send(encode(self.handle(self.control.recv())))
                elif item == self.signals.fd:
                    if self.signals.drain():
                        return self.shutdown()
                elif self.supervisor.exited(item):
                    self.on_child_exit(item)
                elif self.metrics is not None and item == self.metrics.fd:
                    self.metrics.serve()
            # Healthy = this loop turns and the paper exchange has not given up; otherwise
            # systemd's watchdog restarts naived as a whole.
            if watchdog and time.monotonic() >= next_ping and self.paper_failed is None:
                sdnotify.notify("WATCHDOG=1", f"STATUS={self.status_line()}")
                next_ping = time.monotonic() + watchdog

    def shutdown(self) -> int:
        """Stop the symbols first (their traders first of all), the paper exchange last."""
        sdnotify.notify("STOPPING=1")
        log.info("naived stopping")
        self.supervisor.stop_all(keep=frozenset({PAPER}))
        self.supervisor.stop_all()
        self.control.close()
        path = self.config.control_endpoint.removeprefix("ipc://")
        if path != self.config.control_endpoint and os.path.exists(path):
            os.unlink(path)
        self.ctx.term()
        log.info("naived stopped")
        return 0


def run(config: Config) -> int:
    setproctitle.setproctitle("naive: naived")
    try:
        root = Root(config)
    except AlreadyRunning as exc:
        log.error("%s", exc)
        return 1
    return root.run()

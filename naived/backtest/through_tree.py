"""`naived backtest --through-tree`: the same input through the real process tree (the book's chapter 15).

streamerd replays the files (its replay source, at `speed` × real time), naived trades every
symbol of the input with the configured settings on its paper exchange, each in its own
process, all in a temporary directory. Between them sits a ZeroMQ forwarder in this process:
it holds the replay until the paper exchange and the starting traders of every
symbol have subscribed (a subscriber that connects late would miss the first trades: ZeroMQ
retries a connection every 100 ms), then passes every trade through. Once every trade has been
forwarded, the paper exchange has judged every one (taken or dropped) and the traders' states
stop changing, the report is built from what the tree says (the paper exchange's fills, `naivectl history`'s
finished cycles, `naivectl status`'s trader states) by the same functions as the in-process
backtest, so the two reports can be compared line by line. Where and why they may differ:
docs/architecture.md, "Backtest".
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import msgspec
import requests
import zmq

from naived.backtest.errors import BacktestError
from naived.backtest.ledger import Curve, Ledger
from naived.backtest.report import Finished, Report, settings_dict, summarize, totals
from naived.backtest.trades import read_trades
from naived.core import validate
from naived.core.config import Config
from naived.core.messages import (
    History,
    HistoryRequest,
    StatusRequest,
    TraderState,
    TreeStatus,
    control_reply_decoder,
    trade_topic,
)
from naived.core.symbols import table
from naived.ops import processes
from naived.ops.listen import free_ports
from naived.ops.progress import ProgressBar
from naived.tree.ipc import request
from naived.tree.process import die_with_parent

SETTLE_SECONDS = 1.5  # the traders' states unchanged this long after the last trade: done
STOP_TIMEOUT = 15.0


@dataclass
class Books:
    """What the plot draws, as `Backtest` has it."""

    ledgers: dict[str, Ledger]
    curves: dict[str, Curve]


@dataclass
class TreeResult:
    report: Report
    backtest: Books


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # strings and Decimals: TOML basic strings ("100", not 100.0)


def _table(name: str, values: dict[str, Any]) -> str:
    lines = [f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def tree_configs(config: Config, directory: Path, files: list[str], symbols: list[str], speed: float,
                 paper_port: int, ws_port: int) -> tuple[Path, Path, str, str]:
    """(streamerd's config, naived's config, streamerd's endpoint, the forwarder's endpoint).
    The trading and paper settings are the user's; faults are off; no web observer (its fixed
    port may be another tree's); everything else lives in `directory`."""
    run = directory / "run"
    run.mkdir(mode=0o700)
    upstream, market = f"ipc://{run / 'replay.sock'}", f"ipc://{run / 'market.sock'}"
    paths = {"runtime_dir": str(run), "state_dir": str(directory / "state")}
    streamer = _table("paths", paths) + _table("streamer", {
        "endpoint": upstream, "source": "replay", "replay_files": [str(Path(f).resolve()) for f in files],
        "replay_speed": speed})
    paper = config.paper
    trading = config.trading
    naived = _table("paths", paths) + _table("streamer", {"endpoint": market}) + _table("naived", {
        "exchange": "paper", "autostart": symbols}) + _table("paper", {
        "port": paper_port, "ws_port": ws_port, "fill_on_touch": paper.fill_on_touch, "partial_fills": paper.partial_fills,
        "balances": paper.balances, "default_balance": paper.default_balance, "maker_commission": paper.maker_commission,
        "taker_commission": paper.taker_commission, "commission_in_bnb": paper.commission_in_bnb,
    }) + _table("web", {"enabled": False}) + _table("trading", {"allow_losing_settings": trading.allow_losing_settings}) + _table(
        "trading.defaults", msgspec.structs.asdict(trading.defaults)) + _table("trading.budgets", trading.budgets)
    for symbol, overrides in trading.symbols.items():
        naived += _table(f"trading.symbols.{symbol}", msgspec.structs.asdict(overrides))
    (directory / "streamerd.toml").write_text(streamer)
    (directory / "naived.toml").write_text(naived)
    return directory / "streamerd.toml", directory / "naived.toml", upstream, market


class Forwarder(threading.Thread):
    """XSUB (to streamerd) → XPUB (to the tree). Counts the tree's subscriptions per symbol
    (XPUB_VERBOSE reports each one) and subscribes upstream, which starts the replay, only when
    every symbol has `expected` subscribers."""

    def __init__(self, upstream: str, market: str, expected: dict[str, int], total: int) -> None:
        super().__init__(name="forwarder", daemon=True)
        self.ctx = zmq.Context()
        self.upstream, self.market = upstream, market
        self.expected = expected
        self.total = total
        self.subscribers = {s: 0 for s in expected}
        self.forwarded = 0
        self.started = threading.Event()  # the replay was asked for
        self.done = threading.Event()  # every trade went through
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.bound = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported to the main thread, which fails with it
            self.error = exc
        finally:
            self.bound.set()

    def _run(self) -> None:
        xsub, xpub = self.ctx.socket(zmq.XSUB), self.ctx.socket(zmq.XPUB)
        for s in (xsub, xpub):
            s.setsockopt(zmq.LINGER, 0)
        xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
        xpub.setsockopt(zmq.SNDHWM, 0)  # never drop: the replay's speed is the only pace
        xsub.setsockopt(zmq.RCVHWM, 0)
        xpub.bind(self.market)
        xsub.connect(self.upstream)
        self.bound.set()
        topics = {trade_topic(s): s for s in self.expected}
        poller = zmq.Poller()
        poller.register(xsub, zmq.POLLIN)
        poller.register(xpub, zmq.POLLIN)
        try:
            while not self.stopping.is_set():
                ready = dict(poller.poll(100))
                if xpub in ready:
                    message = xpub.recv()
                    symbol = topics.get(message[1:])
                    if message[:1] == b"\x01" and symbol is not None:
                        self.subscribers[symbol] += 1
                    if not self.started.is_set() and all(self.subscribers[s] >= n for s, n in self.expected.items()):
                        self.started.set()
                        for topic in topics:
                            xsub.send(b"\x01" + topic)
                if xsub in ready:
                    while xsub.poll(0, zmq.POLLIN):
                        xpub.send_multipart(xsub.recv_multipart())
                        self.forwarded += 1
                        if self.forwarded >= self.total:
                            self.done.set()
        finally:
            xsub.close()
            xpub.close()
            self.ctx.term()


def _wait(what: str, probe: Callable[[], Any], deadline: float, logs: Path) -> Any:
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise BacktestError(f"--through-tree: timed out waiting for {what} (logs in {logs})")


class _Tree:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, module: str, config: Path) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{module.split('.')[0]}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen([sys.executable, "-m", module, "start", "--config", str(config)], stdout=log,
                                stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent)  # a killed backtest leaves no tree
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """naived first (it stops its tree, children first), then streamerd."""
        processes.stop(self.procs, STOP_TIMEOUT)


def run(config: Config, files: list[str], symbols: list[str] | None = None, speed: float = 20.0,
        keep: str | None = None) -> TreeResult:
    events, _ = read_trades(files)
    counts: dict[str, int] = {}
    for e in events:
        if symbols is None or e.s in symbols:
            counts[e.s] = counts.get(e.s, 0) + 1
    if not counts:
        raise BacktestError("the input has no trades")
    unknown = sorted(s for s in counts if s not in table())
    if unknown:
        raise BacktestError(f"{unknown[0]}: not in the paper exchange's symbol table (naived/core/symbols.csv)")
    names = sorted(counts)
    for symbol in names:  # as the tree's autostart would refuse it, but before starting anything
        if problem := validate.symbol_problem(config, symbol):
            raise BacktestError(problem)
    total = sum(1 for _ in read_trades(files)[0])  # the replay publishes every trade, asked for or not
    # Not a TemporaryDirectory: a failure's message points to the logs in it, so they must stay.
    directory = Path(keep or tempfile.mkdtemp(prefix="naive-backtest-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        # Free ports for both listeners: another naived on this host holds the defaults.
        port, ws_port = free_ports(2)
        streamer_toml, naived_toml, upstream, market = tree_configs(config, directory, files, names, speed, port, ws_port)
        # Per symbol: the paper exchange and the traders a leader starts with (the ones that trade;
        # anyone else subscribing only makes the count come sooner).
        expected = {s: 1 + config.trading.merged(s).traders_at_start for s in names}
        forwarder = Forwarder(upstream, market, expected, total)
        forwarder.start()
        forwarder.bound.wait(10)
        tree = _Tree(directory)
        try:
            tree.spawn("streamerd.cli", streamer_toml)
            tree.spawn("naived.cli", naived_toml)
            facts = _trade_and_settle(forwarder, tree, directory, config, names, counts, port, total)
        finally:
            tree.stop()
            forwarder.stopping.set()
            forwarder.join(10)
    except BacktestError:
        raise  # its message names the directory: keep it
    except BaseException:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    if not keep:
        shutil.rmtree(directory, ignore_errors=True)
    return _report(config, files, names, *facts)


def _trade_and_settle(forwarder: Forwarder, tree: _Tree, directory: Path, config: Config, names: list[str],
                      counts: dict[str, int], port: int, total: int
                      ) -> tuple[list[dict[str, Any]], dict[str, list[TraderState]], dict[str, list[TraderState]]]:
    control = f"ipc://{directory / 'run' / 'naived.sock'}"
    ctx = zmq.Context()
    http = requests.Session()
    http.trust_env = False
    paper = f"http://127.0.0.1:{port}"

    def ask(message: msgspec.Struct) -> Any:
        return request(ctx, control, message, control_reply_decoder, 2000)

    def alive() -> None:
        if forwarder.error is not None:
            raise BacktestError(f"--through-tree: the forwarder failed: {forwarder.error}")
        for proc in tree.procs:
            if proc.poll() is not None:
                module = cast(list[str], proc.args)[2]  # the list `_Tree.spawn` gave it: [python, "-m", module, ...]
                name = module.split(".")[0]
                raise BacktestError(f"--through-tree: {processes.exit_reason(name, proc, directory / f'{name}.log')} "
                                    f"(logs in {directory})")

    try:
        def started() -> bool:
            alive()
            return forwarder.started.is_set()

        _wait(f"the tree to subscribe (subscribers so far {forwarder.subscribers}, expected {forwarder.expected})",
              started, time.monotonic() + 60, directory)
        bar = ProgressBar("backtest", lambda: forwarder.forwarded / total)

        def forwarded() -> bool:
            alive()
            if bar.enabled:
                bar.update(forwarder.forwarded)
            return forwarder.done.is_set()

        events_span = 24 * 3600.0  # the replay's own pace bounds it; this only stops a hang
        _wait("the replay", forwarded, time.monotonic() + events_span, directory)
        bar.close()

        def processed() -> bool:
            alive()
            # Every trade of the input judged by the paper exchange's feed: taken or dropped (a
            # price out of the band; a dropped last trade never becomes its `lastTradeId`).
            market = http.get(f"{paper}/paper/market", timeout=5).json()
            dropped = http.get(f"{paper}/paper/feed", timeout=5).json()["dropped"]
            return all(market.get(s, {}).get("trades", 0) + sum(dropped.get(s, {}).values()) == counts[s] for s in names)

        _wait("the paper exchange to judge every trade", processed, time.monotonic() + 60, directory)
        # Settled: the traders' states unchanged for SETTLE_SECONDS (fills learned, sells placed).
        previous, since = None, time.monotonic()
        deadline = time.monotonic() + 120
        while True:
            alive()
            status = ask(StatusRequest(None))
            states = _states(status) if isinstance(status, TreeStatus) else None
            if states is not None and states == previous:
                if time.monotonic() - since >= SETTLE_SECONDS:
                    break
            else:
                previous, since = states, time.monotonic()
            if time.monotonic() > deadline:
                raise BacktestError(f"--through-tree: the traders did not settle (logs in {directory})")
            time.sleep(0.1)
        history = {}
        for symbol in names:
            reply = ask(HistoryRequest(symbol))
            if not isinstance(reply, History):
                raise BacktestError(f"--through-tree: no history of {symbol}: {reply}")
            history[symbol] = reply.cycles
        orders = http.get(f"{paper}/paper/orders", timeout=5).json()
        return orders, history, previous or {}
    finally:
        http.close()
        ctx.term()


def _states(status: TreeStatus) -> dict[str, list[TraderState]]:
    return {s.symbol: [t.state for t in s.leader.traders if t.state is not None and t.state.status != "done"]
            for s in status.symbols if s.leader is not None}


def _report(config: Config, files: list[str], names: list[str], orders: list[dict[str, Any]],
            history: dict[str, list[TraderState]], states: dict[str, list[TraderState]]) -> TreeResult:
    """The in-process report's functions over the tree's facts: its fills marked at each trade
    of the input (a fill is applied at the public trade that made it: `marketTradeId`)."""
    ledgers: dict[str, Ledger] = {}
    curves: dict[str, Curve] = {}
    for symbol in names:
        f = table()[symbol]
        budget = config.trading.for_symbol(symbol).budget
        assert budget is not None  # for_symbol raises NoBudget rather than return a symbol without one
        ledger = ledgers[symbol] = Ledger(symbol, f.base, f.quote, budget)
        ledger.samples, ledger.markers = [], []
        curve = curves.setdefault(f.quote, Curve(Decimal(0), samples=[]))
        curve.equity += budget
        curve.peak += budget
    fills: dict[tuple[str, int], list[tuple[str, dict[str, Any]]]] = {}
    placed: dict[str, int] = {s: 0 for s in names}
    for order in orders:
        if order["symbol"] in placed:
            placed[order["symbol"]] += 1
            for fill in order["fills"]:
                fills.setdefault((order["symbol"], fill["marketTradeId"]), []).append((order["side"], fill))
    events, _ = read_trades(files)
    for e in events:
        traded = ledgers.get(e.s)
        if traded is None:
            continue
        for side, fill in fills.pop((e.s, e.t), ()):
            traded.fill(side, Decimal(fill["price"]), Decimal(fill["qty"]), Decimal(fill["commission"]),
                        fill["commissionAsset"], e.E)
        price = Decimal(e.p)
        change = traded.mark(price, e.p, e.E)
        curves[traded.quote].move(change, e.E)
    if fills:
        raise BacktestError(f"--through-tree: {len(fills)} fills made by trades not in the input")
    summaries = []
    for symbol in names:
        finished = [Finished(s.trader_id, s.cycle, s.started_at, s.finished_at, s.result)
                    for s in history[symbol] if s.result is not None]
        summaries.append(summarize(ledgers[symbol], finished, states.get(symbol, []), placed[symbol], None))
    settings = {s: settings_dict(config.trading.for_symbol(s)) for s in names}
    report = Report([Path(p).name for p in files], "through-tree", settings, summaries, totals(summaries, curves))
    return TreeResult(report, Books(ledgers, curves))

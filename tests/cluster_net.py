"""naived hosts in network namespaces (tests/netns.py), for the host-fault tests (issue 23).

    with net_cluster(SYMBOLS, lease=(3.0, 1.0, 0.5)) as net:   # db, paper, h1..h3, all running
        net.statuses()                  # host -> TreeStatus, from each root's control socket
        net.cluster.cut("h1")           # faults: see netns.Cluster
        net.kill_db(); net.start_db()   # PostgreSQL killed at once, started again on its data

The layout (one sandbox, one namespace each): PostgreSQL in `db`, listening on its address only
(tests/pg.py's server, `postgres` in the foreground as `nobody`; the role's password reaches the
hosts in their environment, never argv); streamerd (simulated market, its XPUB on the `paper`
address) and the standalone `naived paper-exchange` (`[paper] remote_clients = true`) in `paper`;
one naived per host namespace, `exchange = "binance-testnet"` pointed at that paper exchange, so
every host trades one shared account as hosts would on Binance, and `[store] backend = "postgresql"`
with short leases. The test reaches what it must by the filesystem (each root's control socket is
a path, PostgreSQL's Unix socket too) or by a socket made in a namespace (the paper exchange's
HTTP): the test process itself never changes namespace.

What the tests look at: `statuses` (which symbols run where), `orders` (every order the exchange
ever took), `events` (log lines with their timestamps: one machine, one clock) and a `Sampler`
thread that checks, many times a second, that no symbol runs on two hosts at once, by the roots'
statuses and by the hosts' live processes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import zmq
from harness import BIN, wait_for
from netns import Cluster
from pg import PgServer, create_database, initialized_server

from naived.core.messages import History, HistoryRequest, StatusRequest, TreeStatus, control_reply_decoder
from naived.store import pgschema
from naived.store.postgres import PgTradingSet, connect
from naived.tree.ipc import request

ROOT = Path(__file__).resolve().parent.parent
DB_PORT = 5432  # each namespace has its own ports: the usual ones are free
MARKET_PORT = 5680
PAPER_PORT = 5681
PAPER_WS_PORT = 5682
PAPER_KEYS = {"BINANCE_API_KEY": "paper-key", "BINANCE_API_SECRET": "paper-secret"}
# The buys rest far below the market: open orders stay put, nothing fills.
RESTING = """
[trading.defaults]
chunks = 2
buy_down_interval = "0.5"
"""
T = TypeVar("T")
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+)\s+(.*?)\[(\d+)\] (.*)$")


def toml(tables: dict[str, dict[str, Any]]) -> str:
    """A configuration file of these tables (strings, numbers, booleans: JSON writes them as TOML does)."""
    return "".join(f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()) + "\n"
                   for name, values in tables.items())


def config_of(directory: Path, paper_addr: str, tables: dict[str, dict[str, Any]],
              streamer: dict[str, Any] | None = None) -> str:
    """A process's configuration: its own directories, the market on the paper namespace, `tables`."""
    own = {"paths": {"runtime_dir": str(directory / "run"), "state_dir": str(directory / "state")},
           "streamer": {"endpoint": f"tcp://{paper_addr}:{MARKET_PORT}", "source": "simulate", "simulate_rate": 2.0,
                        **(streamer or {})}}
    return toml(own | tables)


def services_config(directory: Path, paper_addr: str, paper: dict[str, Any] | None = None,
                    streamer: dict[str, Any] | None = None) -> str:
    return config_of(directory, paper_addr, {"paper": {
        "host": paper_addr, "port": PAPER_PORT, "ws_port": PAPER_WS_PORT, "remote_clients": True, **(paper or {})}},
        streamer)


def host_config(directory: Path, host_id: str, paper_addr: str, lease: tuple[float, float, float], trading: str) -> str:
    ttl, renew, margin = lease
    return config_of(directory, paper_addr, {
        "naived": {"exchange": "binance-testnet", "reconcile_seconds": 5.0},
        # the paper exchange decides at once: short timeouts
        "exchange": {"testnet_url": f"http://{paper_addr}:{PAPER_PORT}", "testnet_ws_url": f"ws://{paper_addr}:{PAPER_WS_PORT}",
                     "recv_window_ms": 1000, "backend_timeout_seconds": 0.5, "timeout_seconds": 2.0},
        "store": {"backend": "postgresql", "host_id": host_id, "lease_seconds": ttl, "renew_seconds": renew,
                  "stop_margin_seconds": margin},
    }) + trading


class Host:
    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.dir = directory
        self.config = directory / "naive.toml"
        self.log = directory / "naived.log"
        self.endpoint = f"ipc://{directory / 'run' / 'naived.sock'}"  # its root's control socket
        self.pid = 0  # naived's root, a real PID


@dataclass(frozen=True)
class Event:
    at: float  # wall clock, from the log line (milliseconds)
    pid: int
    message: str


def wait_until(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T:
    """harness.wait_for, but an AssertionError in `probe` fails at once (a symbol seen on two hosts
    is an answer, not a state to wait out); other errors (a host or the exchange restarting) are retried."""
    def checked() -> T | None:
        try:
            return probe()
        except AssertionError as exc:
            raise Seen(str(exc)) from exc

    try:
        return wait_for(what, checked, timeout, interval)
    except Seen as seen:
        raise AssertionError(str(seen)) from None


class Seen(BaseException):
    """An assertion inside a probe, carried past wait_for's retries (it catches Exception only)."""


def wait_for_or_tell(what: str, probe: Callable[[], object], logs: list[Path], timeout: float) -> None:
    """wait_for, failing with the end of the logs of what did not come up."""
    try:
        wait_for(what, probe, timeout, interval=0.1)
    except AssertionError as exc:
        tails = []
        for log in logs:
            try:
                tails.append(f"{log} ends:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))
            except OSError as error:
                tails.append(f"(no {log}: {error})")
        raise AssertionError(f"{exc}; " + "\n".join(tails)) from None


def log_events(path: Path, pattern: str) -> list[tuple[Event, re.Match[str]]]:
    """The lines of a naive log whose message matches `pattern` (re.search), oldest first."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        parsed = _LINE.match(line)
        if parsed is None:
            continue
        match = re.search(pattern, parsed[5])
        if match:
            at = dt.datetime.strptime(parsed[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append((Event(at, int(parsed[4]), parsed[5]), match))
    return found


class NetCluster:
    def __init__(self, cluster: Cluster, directory: Path, pg: PgServer, symbols: list[str],
                 lease: tuple[float, float, float], trading: str, paper: dict[str, Any] | None = None,
                 streamer: dict[str, Any] | None = None) -> None:
        self.cluster = cluster
        self.paper_table = paper or {}  # more of the shared paper exchange's and streamerd's settings
        self.streamer_table = streamer or {}
        self.streamer_pid = 0
        self.dir = directory
        self.pg = pg
        self.symbols = symbols
        self.lease = lease
        self.trading = trading
        self.paper_addr = cluster.addr("paper")
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.hosts: dict[str, Host] = {}
        self.db_pid = 0
        # This checkout's code in every process (the shared venv's editable install may be another's).
        self.base_env = {**os.environ, "PYTHONPATH": str(ROOT)}

    # -- PostgreSQL ---------------------------------------------------------------------------------

    def local_dsn(self) -> str:
        """The role naive over the server's Unix socket: the test's own way in, whatever the network."""
        return f"host={self.pg.socket_dir} port={self.pg.port} dbname=naive user=naive password={self.pg.password}"

    def start_db(self, first: bool = False) -> None:
        env = {"LC_ALL": "C", "TZ": "UTC", "PATH": os.environ["PATH"]}
        self.db_pid = self.cluster.spawn("db", self.pg.foreground_argv(), env=env, log=self.pg.log)

        def answers() -> bool:
            with self.pg.admin() as admin:
                return admin.execute("SELECT 1").fetchone() == (1,)

        wait_for_or_tell("PostgreSQL to answer", answers, [self.pg.log], 60)
        if first:
            create_database(self.pg)

    def kill_db(self) -> None:
        """SIGKILL the server's whole tree at once (the postmaster and every backend)."""
        self.cluster.kill_tree(self.db_pid)

    def set_trading(self, symbols: list[str]) -> None:
        with connect(self.local_dsn(), application_name="test") as conn:
            pgschema.migrate(conn)
            trading = PgTradingSet(conn)
            for symbol in symbols:
                trading.set(symbol, "running")

    def leases(self) -> dict[str, tuple[str, int, float]]:
        """symbol -> (holder, token, seconds left by the database's clock), read from the table."""
        with connect(self.local_dsn(), application_name="test") as conn:
            rows = conn.execute("SELECT symbol, holder, token, extract(epoch FROM expires_at - now())::float8 FROM leases")
            return {row[0]: (row[1], row[2], row[3]) for row in rows}

    # -- services and hosts -------------------------------------------------------------------------

    def start_services(self) -> None:
        path = self.dir / "services"
        path.mkdir()
        (path / "run").mkdir(mode=0o700)
        config = path / "naive.toml"
        config.write_text(services_config(path, self.paper_addr, self.paper_table, self.streamer_table))
        env = {**self.base_env, **PAPER_KEYS}
        self.streamer_pid = self.cluster.spawn("paper", [str(BIN / "streamerd"), "start", "--config", str(config)], env=env,
                           log=path / "streamerd.log")
        self.cluster.spawn("paper", [str(BIN / "naived"), "paper-exchange", "--config", str(config)], env=env,
                           log=path / "paper-exchange.log")
        wait_for_or_tell("the paper exchange", lambda: self.paper("/api/v3/ping") == {},
                         [path / "paper-exchange.log", path / "streamerd.log"], 60)

    def add_host(self, name: str) -> Host:
        host = Host(name, self.dir / name)
        host.dir.mkdir()
        (host.dir / "run").mkdir(mode=0o700)
        host.config.write_text(host_config(host.dir, name, self.paper_addr, self.lease, self.trading))
        self.hosts[name] = host
        self.start_host(name)
        return host

    def start_host(self, name: str) -> None:
        host = self.hosts[name]
        dsn = self.pg.dsn()  # over the network, to the db namespace's address
        env = {**self.base_env, **PAPER_KEYS, "NAIVE_STORE_DSN": dsn}
        host.pid = self.cluster.spawn(name, [str(BIN / "naived"), "start", "--config", str(host.config),
                                             "--log-file", str(host.log)], env=env, log=host.dir / "stderr.log")
        wait_for_or_tell(f"{name} to answer", lambda: self.status(name) is not None,
                         [host.dir / "stderr.log", host.log], 60)

    # -- looking ------------------------------------------------------------------------------------

    def status(self, name: str, timeout: float = 1.0) -> TreeStatus | None:
        """The host root's status; None when it does not answer within `timeout` (frozen, starting)."""
        reply = request(self.ctx, self.hosts[name].endpoint, StatusRequest(None), control_reply_decoder,
                        int(timeout * 1000))
        return reply if isinstance(reply, TreeStatus) else None

    def history(self, name: str, symbol: str, timeout: float = 10.0) -> History:
        """`symbol`'s finished cycles, asked of host `name`'s root (read from the shared store)."""
        reply = request(self.ctx, self.hosts[name].endpoint, HistoryRequest(symbol), control_reply_decoder,
                        int(timeout * 1000))
        assert isinstance(reply, History), f"history of {symbol} from {name}: {reply!r}"
        return reply

    def statuses(self, skip: tuple[str, ...] = ()) -> dict[str, TreeStatus]:
        found = {}
        for name in self.hosts:
            if name not in skip and (status := self.status(name)) is not None:
                found[name] = status
        return found

    def paper(self, path: str) -> Any:
        """GET `path` of the paper exchange, from the test process through a socket of the paper
        namespace (its HTTP is on that namespace's address only)."""
        sock = self.cluster.connect("paper", self.paper_addr, PAPER_PORT, timeout=5.0)
        conn = http.client.HTTPConnection(self.paper_addr, PAPER_PORT, timeout=5.0)
        conn.sock = sock
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise AssertionError(f"GET {path}: {response.status} {body[:200]!r}")
            return json.loads(body)
        finally:
            conn.close()

    def orders(self) -> dict[str, tuple[str, str, str]]:
        """Every order the exchange ever took: client order id -> (symbol, side, status). Ids repeat
        never: Binance refuses a client order id already open, and the paper exchange keeps them all."""
        listed = self.paper("/paper/orders")
        orders = {o["clientOrderId"]: (o["symbol"], o["side"], o["status"]) for o in listed}
        assert len(orders) == len(listed), f"a client order id placed twice: {sorted(o['clientOrderId'] for o in listed)}"
        return orders

    def events(self, name: str, pattern: str) -> list[tuple[Event, re.Match[str]]]:
        return log_events(self.hosts[name].log, pattern)

    def close(self) -> None:
        self.ctx.term()


def running(status: TreeStatus) -> dict[str, int]:
    """symbol -> number of traders ready (hello said: subscribed, state restored), of the symbols
    running here with their leader up."""
    return {s.symbol: sum(1 for t in s.leader.traders if t.pid and t.ready_at)
            for s in status.symbols if s.state == "running" and s.leader is not None}


def placement(statuses: dict[str, TreeStatus]) -> dict[str, str]:
    """symbol -> the host it runs on, asserting that no symbol runs on two."""
    found: dict[str, str] = {}
    for name, status in statuses.items():
        for symbol in running(status):
            assert symbol not in found, f"{symbol} runs on {found[symbol]} and {name}"
            found[symbol] = name
    return found


def resting_buys(status: TreeStatus) -> dict[str, set[str]]:
    """symbol -> the client order ids of its traders' buys, as their states say."""
    buys: dict[str, set[str]] = {}
    for s in status.symbols:
        if s.state == "running" and s.leader is not None:
            buys[s.symbol] = {t.state.buy_order.client_order_id for t in s.leader.traders
                              if t.pid and t.ready_at and t.state is not None and t.state.buy_order is not None}
    return buys


# -- the sampler ------------------------------------------------------------------------------------

_TITLE = re.compile(r"^naive: (?:supervisor|leader|trader) ([A-Z0-9]+)")


@dataclass
class Overlap:
    start: float  # wall clock: the sample was taken between these two times
    end: float
    symbol: str
    hosts: list[str]
    by: str  # "status" or "processes"

    def within(self, start: float, end: float) -> bool:
        """Whether the sample may have been taken (in part) between `start` and `end`."""
        return self.end >= start and self.start <= end


@dataclass
class Sampler:
    """Samples, every `interval`, which host runs which symbol: by each root's status, and by the
    live (not stopped) processes under each root. Records every sample where a symbol runs on two
    hosts at once. Its own zmq sockets, psutil: it never uses the Cluster (one thread only)."""

    net: NetCluster
    interval: float = 0.1
    by_status: bool = True  # False: by processes only (statuses of hundreds of symbols are slow to ask)
    overlaps: list[Overlap] = field(default_factory=list)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            now = time.time()
            by_status: dict[str, list[str]] = {}
            for name in list(self.net.hosts) if self.by_status else []:
                status = self.net.status(name, timeout=0.3)
                for symbol in running(status) if status is not None else {}:
                    by_status.setdefault(symbol, []).append(name)
            by_process: dict[str, list[str]] = {}
            for name, host in list(self.net.hosts.items()):
                for symbol in live_symbols(host.pid):
                    by_process.setdefault(symbol, []).append(name)
            end = time.time()
            for by, found in (("status", by_status), ("processes", by_process)):
                for symbol, hosts in found.items():
                    if len(hosts) > 1:
                        self.overlaps.append(Overlap(now, end, symbol, sorted(hosts), by))
            self.samples += 1


def live_symbols(root: int) -> set[str]:
    """The symbols with a process running (not stopped, not a zombie) under this root."""
    symbols: set[str] = set()
    try:
        children = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        return symbols
    for child in children:
        with contextlib.suppress(psutil.Error):
            if child.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                continue
            title = " ".join(child.cmdline())
            if match := _TITLE.match(title):
                symbols.add(match[1])
    return symbols


@contextlib.contextmanager
def net_cluster(directory: Path, symbols: list[str], hosts: int = 3, lease: tuple[float, float, float] = (3.0, 1.0, 0.5),
                trading: str = RESTING, paper: dict[str, Any] | None = None, streamer: dict[str, Any] | None = None,
                max_connections: int = 60) -> Iterator[NetCluster]:
    """The sandbox, PostgreSQL, the market and the paper exchange, `hosts` naived hosts and the
    trading set of `symbols`, all running; everything killed at the end (the sandbox's close).
    `paper`, `streamer`: more settings of the shared paper exchange and market."""
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(Cluster(hosts=hosts, services=("db", "paper")))
        pg = stack.enter_context(initialized_server(listen=cluster.addr("db"), port=DB_PORT))
        pg.max_connections = max_connections
        stack.callback(cluster.close)  # before the server's directory goes: postgres dies first
        net = NetCluster(cluster, directory, pg, symbols, lease, trading, paper, streamer)
        stack.callback(net.close)
        net.start_db(first=True)
        net.set_trading(symbols)
        net.start_services()
        for name in cluster.hosts:
            net.add_host(name)
        yield net


"""Several naived hosts on one PostgreSQL, one market and one shared paper exchange, for tests.

Each host is a `Tree` of its own (its runtime and state directories, its host id) whose store is the
test's PostgreSQL schema and whose exchange is one `naived paper-exchange` that every host trades on,
as hosts would share Binance: `exchange = "binance-testnet"` pointed at it. One streamerd feeds every
host and the exchange over TCP. The hosts here share the machine's network (loopback); the tests
that cut a host off the network use tests/netns.py.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
from harness import Tree, free_port, wait_for

from naived.core.symbols import table
from streamerd.simulate import START_PRICES

PAPER_KEYS = {"BINANCE_API_KEY": "paper-key", "BINANCE_API_SECRET": "paper-secret"}


def host_config(services: Tree, host_id: str, trading: str, lease: tuple[float, float, float]) -> str:
    ttl, renew, margin = lease
    return f"""
[naived]
exchange = "binance-testnet"
reconcile_seconds = 5.0

[exchange]
testnet_url = "{services.paper_url}"
testnet_ws_url = "ws://127.0.0.1:{services.paper_ws_port}"
recv_window_ms = 1000
backend_timeout_seconds = 0.5   # the paper exchange decides at once

[store]
backend = "postgresql"
host_id = "{host_id}"
lease_seconds = {ttl}
renew_seconds = {renew}
stop_margin_seconds = {margin}

{trading}
"""


class Hosts:
    def __init__(self, directory: Path, dsn: str, trading: str, lease: tuple[float, float, float] = (3.0, 1.0, 0.5),
                 paper: str = "", streamer: str = "") -> None:
        """`paper`, `streamer`: extra lines for the shared paper exchange's and streamerd's tables."""
        self.dir = directory
        self.dsn = dsn
        self.trading = trading
        self.lease = lease
        market = f"tcp://127.0.0.1:{free_port()}"
        (directory / "services").mkdir()
        self.services = Tree(directory / "services", trading, market_endpoint=market, paper=paper, streamer=streamer)
        self.market = market
        self.hosts: dict[str, Tree] = {}  # the hosts running
        self.down: dict[str, Tree] = {}  # killed, to be restarted

    def start_services(self) -> None:
        self.services.start_streamer()
        self.services._spawn("naived", "paper-exchange")
        wait_for("the paper exchange", lambda: self.services.http.get(f"{self.services.paper_url}/api/v3/ping", timeout=1).ok)

    def add(self, host_id: str, web: str | None = None) -> Tree:
        """`web`: as Tree's (None: no web observer; "": one on a free port, `tree.web_url`)."""
        path = self.dir / host_id
        path.mkdir()
        tree = Tree(path, host_config(self.services, host_id, self.trading, self.lease), market_endpoint=self.market,
                    web=web)
        self.hosts[host_id] = tree
        self.restart(host_id)
        return tree

    def restart(self, host_id: str) -> None:
        """Start the host's naived (again, after `kill`: its directories as they were)."""
        tree = self.hosts.get(host_id) or self.down.pop(host_id)
        self.hosts[host_id] = tree
        tree.start_naived(env={**PAPER_KEYS, "NAIVE_STORE_DSN": self.dsn})

    def members(self, host_id: str) -> list[psutil.Process]:
        """The host's naived and every process under it."""
        root = psutil.Process(self.hosts[host_id].naived.pid)
        return [root, *root.children(recursive=True)]

    def freeze(self, host_id: str) -> list[psutil.Process]:
        """SIGSTOP the host's tree (a paused VM); returns what to resume. A short-lived worker that
        exits between the listing and its signal is simply not there to freeze."""
        frozen = []
        for p in self.members(host_id):
            try:
                p.suspend()
                frozen.append(p)
            except psutil.NoSuchProcess:
                pass
        return frozen

    def kill(self, host_id: str) -> None:
        """SIGKILL the host's whole tree at once (a power cut): the root and every descendant."""
        members = self.members(host_id)
        tree = self.hosts.pop(host_id)
        self.down[host_id] = tree
        for p in members:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(members, timeout=10)
        tree.naived.wait(10)
        tree.stop()

    def held(self) -> dict[str, str]:
        """symbol -> the host trading it now (its leader running), over every live host."""
        found: dict[str, str] = {}
        for host_id, tree in self.hosts.items():
            for sym in tree.status()["symbols"]:
                if sym["state"] == "running" and sym.get("leader"):
                    assert sym["symbol"] not in found, f"{sym['symbol']} runs on {found[sym['symbol']]} and {host_id}"
                    found[sym["symbol"]] = host_id
        return found

    def traders_with_buys(self, symbol: str) -> dict[int, Any]:
        for tree in self.hosts.values():
            traders = tree.traders(symbol)
            if traders:
                return {i: t for i, t in traders.items() if t["state"] and t["state"]["buy_order"]}
        return {}

    def stop(self) -> None:
        for tree in self.hosts.values():
            tree.stop()
        self.services.stop()


@contextmanager
def running_hosts(directory: Path, dsn: str, trading: str, names: list[str], **options: Any) -> Iterator[Hosts]:
    hosts = Hosts(directory, dsn, trading, **options)
    with ExitStack() as stack:
        stack.callback(hosts.stop)
        hosts.start_services()
        for name in names:
            hosts.add(name)
        yield hosts


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def usable_symbols(n: int) -> list[str]:
    """USDT symbols whose resting buy (half the simulated start price) a 50 USDT chunk can place."""
    found = []
    for name, f in sorted(table().items()):
        if f.quote != "USDT" or f.status != "TRADING":
            continue
        buy = START_PRICES.get(name, f.tick_size * 10_000) * Decimal("0.5")
        qty = Decimal(50) / buy
        if f.min_notional <= 10 and f.min_qty <= qty <= f.max_qty and f.min_qty * buy <= 20:
            found.append(name)
    return found[:n]

"""A real naive deployment for tests: streamerd + naived (+ its paper exchange) in a temp dir.

Tests talk to it only through its real interfaces: the command lines, the
control socket (via naivectl), the paper exchange's HTTP API and signals.
Everything started here is killed by PID at the end, including every process
the tree reported in its status.

Its store is SQLite (the state directory), or PostgreSQL when `store_dsn` is set
(NAIVE_TEST_STORE=postgresql, tests/conftest.py): naived then runs as a cluster of one host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psutil
import requests

from naived.ops import processes
from naived.ops.listen import free_ports
from naived.store import sqlite
from naived.tree.process import die_with_parent

BIN = Path(sys.executable).parent
# Every daemon a test starts dies with the test process (PR_SET_PDEATHSIG, surviving exec), so a
# test run killed with -9 (a timeout, an interrupted loop) leaves no tree behind.
die_with_test = die_with_parent
UNITS = Path(__file__).resolve().parent.parent / "systemd"
SANDBOX = Path(__file__).resolve().parent / "sandbox.py"

T = TypeVar("T")

# Trading settings whose buys rest far below the market: orders stay open, nothing fills.
RESTING = """
[trading.defaults]
chunks = 2
buy_down_interval = "0.5"   # the buys rest far below the market
"""
# The same, with a restart budget a test can exhaust in seconds and a quick stop.
RESTING_QUICK_FAILURE = RESTING + """
[naived.supervision]
max_restarts = 3
period_seconds = 30.0
stop_timeout_seconds = 3.0
"""

# The store every Tree's naived keeps its state in. None: SQLite, the default (files in <dir>/state).
# Else a function giving the PostgreSQL DSN for a tree's directory: a schema of its own, the same one for
# the same directory (a tree started again there finds its state, as on SQLite). tests/conftest.py sets it
# for a test when NAIVE_TEST_STORE=postgresql. A config that names its own [store] (tests/hosts.py) keeps it.
store_dsn: Callable[[Path], str] | None = None
PG_HOST_ID = "test-host"
# One host alone: a lease matters only to the rounds' pace (a symbol starts on the keeper's round; a
# poke after start-trading runs one at once). Rounds every 2 s keep a restart's wait short; 10 s
# leases survive a keeper delayed by a busy machine (it stops its symbols at lease - margin = 8 s).
PG_STORE = f"""
[store]
backend = "postgresql"
host_id = "{PG_HOST_ID}"
lease_seconds = 10.0
renew_seconds = 2.0
stop_margin_seconds = 2.0
"""


def free_port() -> int:
    return free_ports(1)[0]


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.02) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # the tree may be mid-restart; keep polling until the deadline
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_error})" if last_error else ""))


class Tree:
    def __init__(
        self, directory: Path, extra_config: str = "", market: str = "simulate", streamer: str = "", paper: str = "",
        market_endpoint: str = "", sandboxed: bool = False, web: str | None = None,
    ) -> None:
        """`streamer` and `paper`: extra lines for the [streamer] and [paper] tables (TOML allows a
        table once, so they cannot go into `extra_config`). `web`: None, the web observer is off (a
        test tree serves no page unless it asks); else it serves on a free port (`web_url`), with
        these extra lines for the [web] table. `market_endpoint`: streamerd's XPUB
        (default: ipc in the run directory). `sandboxed`: each daemon runs under its unit file's
        seccomp filters (tests/sandbox.py)."""
        self.dir = directory
        self.sandboxed = sandboxed
        # PostgreSQL (`store_dsn` set): the DSN goes to every naived and naivectl by the environment,
        # as the README advises (never in the file, never in argv).
        self.store_dsn = store_dsn(directory) if store_dsn is not None and "[store]" not in extra_config else None
        self.store_env = {"NAIVE_STORE_DSN": self.store_dsn} if self.store_dsn else {}
        self.paper_port, self.paper_ws_port, self.web_port = free_ports(3)
        web_table = "enabled = false" if web is None else f"port = {self.web_port}\n{web}"
        run = directory / "run"
        run.mkdir(mode=0o700, exist_ok=True)
        self.config_path = directory / "naive.toml"
        self.config_path.write_text(
            f"""
[paths]
runtime_dir = "{run}"
state_dir = "{directory / 'state'}"

[streamer]
endpoint = "{market_endpoint or f"ipc://{run / 'market.sock'}"}"
source = "{market}"
simulate_rate = 50.0
grace_seconds = 30.0
{streamer}

[paper]
port = {self.paper_port}
ws_port = {self.paper_ws_port}
{paper}

[web]
{web_table}

{extra_config}
{PG_STORE if self.store_dsn else ""}
"""
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        self.seen: dict[int, float] = {}  # pid -> create time, of every tree process ever reported
        self.paper_url = f"http://127.0.0.1:{self.paper_port}"
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        self.http = requests.Session()
        self.http.trust_env = False

    # --- processes ------------------------------------------------------------------

    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        sandbox = [sys.executable, str(SANDBOX), str(UNITS / f"{name}.service"), "--"] if self.sandboxed else []
        with open(self.dir / f"{name}.log", "ab") as log:  # the daemon keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [*sandbox, str(BIN / name), *args, "--config", str(self.config_path)],
                stderr=log,
                start_new_session=True,
                preexec_fn=die_with_test,
                env={**self.env(), **(env or {})},
            )
        self.procs.append(proc)
        return proc

    def start_streamer(self, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        self.streamer = self._spawn("streamerd", "start", *args, env=env)
        return self.streamer

    def stop_streamer(self, timeout: float = 15.0) -> None:
        """Stop the market: SIGTERM streamerd and wait for it (SIGKILL at the deadline)."""
        processes.stop([self.streamer], timeout)

    def start_naived(self, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        """`args`: more of `naived start`'s options. Its stderr goes to <dir>/naived.log (`log`)."""
        self.naived = self._spawn("naived", "start", *args, env=env)
        wait_for("naived to answer", lambda: self.ctl("status").returncode == 0)
        return self.naived

    def env(self) -> dict[str, str]:
        """The environment naived and naivectl get here: this one's, with the store's DSN when on PostgreSQL."""
        return {**os.environ, **self.store_env}

    def recorded_prefixes(self) -> dict[str, str]:
        """The install's client order id prefixes, each -> the symbol it was minted for, as its store has them."""
        if not self.store_dsn:
            return sqlite.recorded_prefixes(self.dir / "state")
        from naived.store import postgres

        conn = postgres.connect(self.store_dsn, application_name="test")
        try:
            return postgres.recorded_prefixes(conn)
        finally:
            conn.close()

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "naivectl"), "--config", str(self.config_path), *args], capture_output=True, text=True, timeout=30,
            env=self.env(),
        )

    def status(self) -> dict[str, Any]:
        result = self.ctl("status", "--json")
        assert result.returncode == 0, result.stderr
        tree = json.loads(result.stdout)
        for pid in tree_pids(tree):
            if pid not in self.seen:
                try:
                    self.seen[pid] = psutil.Process(pid).create_time()
                except psutil.NoSuchProcess:
                    pass
        return tree

    def symbol(self, symbol: str) -> dict[str, Any] | None:
        return next((s for s in self.status()["symbols"] if s["symbol"] == symbol), None)

    def traders(self, symbol: str) -> dict[int, dict[str, Any]]:
        """Running traders of a symbol that have a PID, by trader id."""
        sym = self.symbol(symbol)
        if not sym or not sym.get("leader"):
            return {}
        return {t["trader_id"]: t for t in sym["leader"]["traders"] if t["pid"]}

    def paper_orders(self, symbol: str | None = None) -> list[dict[str, Any]]:
        orders = self.http.get(f"{self.paper_url}/paper/orders", timeout=5).json()
        return [o for o in orders if symbol is None or o["symbol"] == symbol]

    def paper_balances(self) -> dict[str, dict[str, str]]:
        return self.http.get(f"{self.paper_url}/paper/balances", timeout=5).json()

    def history(self, symbol: str) -> list[dict[str, Any]]:
        """Finished cycles of `symbol` (`naivectl history --json`), oldest first."""
        result = self.ctl("history", symbol, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["cycles"]

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        """Stop what we started, then SIGKILL any tree process still alive."""
        processes.stop(self.procs, 15)
        for pid in self.leftovers():
            os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[int]:
        """Tree processes reported at some point that are still alive (same PID and start time)."""
        alive = []
        for pid, created in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        return alive


@contextmanager
def running_tree(directory: Path, extra_config: str = "", **options: Any) -> Iterator[Tree]:
    """streamerd + naived up and answering; everything stopped and killed on the way out.
    `options`: more of `Tree`'s arguments (e.g. `paper` lines)."""
    tree = Tree(directory, extra_config, **options)
    try:
        tree.start_streamer()
        tree.start_naived()
        yield tree
    finally:
        tree.stop()


def open_buys(tree: Tree, symbol: str, count: int) -> dict[int, dict[str, Any]]:
    """Wait until `count` running traders of `symbol` each report a buy order."""

    def ready() -> dict[int, dict[str, Any]] | None:
        placed = {i: t for i, t in tree.traders(symbol).items() if t["state"] and t["state"]["buy_order"]}
        return placed if len(placed) == count else None

    return wait_for(f"{count} {symbol} traders with a buy order", ready)


def tree_pids(tree: dict[str, Any]) -> list[int]:
    pids = [tree["pid"]]
    for name in ("paper_exchange", "account_stream", "lease_keeper", "web"):
        if tree.get(name) and tree[name]["pid"]:
            pids.append(tree[name]["pid"])
    for sym in tree["symbols"]:
        if sym["supervisor"]["pid"]:
            pids.append(sym["supervisor"]["pid"])
        if sym.get("leader"):
            pids.append(sym["leader"]["pid"])
            pids += [t["pid"] for t in sym["leader"]["traders"] if t["pid"]]
    return pids

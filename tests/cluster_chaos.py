"""Host faults under trading: a cluster of naived hosts loses hosts while its symbols cycle.

Shared by `tests/test_cluster_chaos.py` (short, in CI) and `bench/cluster_chaos.py` (long).

Hosts on one PostgreSQL, one shared paper exchange and one simulated market (tests/hosts.py) trade
several symbols with the chaos test's settings (tests/chaos.py: buys at the market, sells below the
buy, so cycles finish every few seconds and every leg of the order protocol runs all the time). A
fault loop picks a random running host and either kills its whole tree with SIGKILL (a power cut;
the host is started again a little later, as systemd would, and takes its share back by hand-off)
or freezes it with SIGSTOP past its leases (a paused VM) and then resumes it; in network
namespaces it can also cut a host off and heal it, or kill the database (every host must stop
every symbol by its leases) and start it again. After each fault it
waits, with a deadline, until every symbol runs again on exactly one host with all its traders,
and keeps that time (the adoption time). Then the market stops, the cluster settles, and every
symbol's orders at the exchange are checked against its live traders and finished cycles, and the
account's balances against every fill (tests/chaos.py's invariants), so an order placed twice,
lost or owned by nobody, or a fill missing from the books, fails the run.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import msgspec
import psutil
from chaos import Report, check_balances, check_symbol, trading_config
from cluster_net import NetCluster, Sampler, live_symbols, net_cluster
from figures import percentiles
from harness import wait_for
from hosts import Hosts, running_hosts

CHUNKS = 2
START_USDT = Decimal("10000")
SYMBOLS = ["BTCUSDT", "ETHUSDT", "XRPUSDT", "ADAUSDT", "SOLUSDT", "DOGEUSDT"]
# tests/chaos.py's trading settings. The hosts trade as "binance-testnet" (the shared paper
# exchange), which refuses a losing profit interval unless told.
TRADING = "[trading]\nallow_losing_settings = true\n" + trading_config(CHUNKS)


@dataclass
class ClusterReport:
    faults: dict[str, int] = field(default_factory=dict)  # by kind
    adoption_s: list[float] = field(default_factory=list)  # fault -> every symbol running again on one host
    fenced: int = 0  # leader writes refused for an old token (the hosts' logs)
    db_stops_s: list[float] = field(default_factory=list)  # database killed -> every host seen stopped
    seconds: float = 0.0
    checks: Report = field(default_factory=Report)

    def summary(self) -> str:
        r = self.checks
        p = percentiles([s * 1000 for s in self.adoption_s]) if self.adoption_s else None
        lines = [
            f"host faults survived: {sum(self.faults.values()) if not r.problems else 'FAILED'} "
            f"({', '.join(f'{k} {n}' for k, n in sorted(self.faults.items()))}) in {self.seconds:.0f}s",
            f"every symbol trading again after a fault: p50 {p['p50'] / 1000:.1f}s, p99 {p['p99'] / 1000:.1f}s"
            if p else "no fault",
            *([f"database killed: every host seen stopping every symbol within {max(self.db_stops_s):.1f}s"]
              if self.db_stops_s else []),
            f"cycles completed: {r.cycles}; orders at the exchange: {r.orders}",
            f"orders lost: {len(r.lost) + len(r.orphaned)}; duplicated: {len(r.duplicated)}; "
            f"stale-token writes refused: {self.fenced}",
        ]
        return "\n".join(lines + [f"PROBLEM: {p}" for p in r.problems])


class Fleet(Protocol):
    """The hosts as the fault loop sees them: on one machine (`LocalFleet`) or each in a network
    namespace of its own (`NetFleet`, which can also cut a host off)."""

    kinds: tuple[str, ...]  # the faults it can make

    def up(self) -> list[str]: ...  # the hosts running (a frozen or cut one included)

    def status(self, host: str) -> dict[str, Any] | None: ...  # as `naivectl status --json`; None: no answer

    def kill(self, host: str) -> None: ...

    def restart(self, host: str) -> None: ...

    def isolate(self, host: str, kind: str) -> Callable[[], None]: ...  # freeze or cut; returns the undo

    def kill_db(self) -> Callable[[], None]: ...  # the database killed; returns what starts it again

    def symbol_processes(self, host: str) -> set[str]: ...  # the symbols with a live process under its root

    def orders(self) -> list[dict[str, Any]]: ...  # the paper exchange's, every order ever taken

    def balances(self) -> dict[str, dict[str, str]]: ...

    def history(self, symbol: str) -> list[dict[str, Any]]: ...

    def stop_market(self) -> None: ...

    def refused_writes(self) -> int: ...  # leader writes refused for an old token, in every host's log

    def sampling(self) -> contextlib.AbstractContextManager[Callable[[], list[str]]]: ...
    # ^ while in it, look for symbols running on two hosts as often as it can; gives what it saw


class LocalFleet:
    """tests/hosts.py's hosts: one machine, one network; a host killed or frozen, never cut."""

    kinds = ("kill", "freeze")

    def __init__(self, hosts: Hosts) -> None:
        self.hosts = hosts

    def up(self) -> list[str]:
        return sorted(self.hosts.hosts)

    def status(self, host: str) -> dict[str, Any] | None:
        return self.hosts.hosts[host].status()

    def kill(self, host: str) -> None:
        self.hosts.kill(host)

    def restart(self, host: str) -> None:
        self.hosts.restart(host)

    def isolate(self, host: str, kind: str) -> Callable[[], None]:
        assert kind == "freeze", kind
        members = self.hosts.freeze(host)

        def resume() -> None:
            for p in members:
                with contextlib.suppress(psutil.NoSuchProcess):  # a member that died meanwhile: nothing to resume
                    p.resume()

        return resume

    def kill_db(self) -> Callable[[], None]:
        raise NotImplementedError("the database is the test's own server here (kinds has no 'db')")

    def symbol_processes(self, host: str) -> set[str]:
        return live_symbols(self.hosts.hosts[host].naived.pid)

    def orders(self) -> list[dict[str, Any]]:
        return self.hosts.services.paper_orders()

    def balances(self) -> dict[str, dict[str, str]]:
        return self.hosts.services.paper_balances()

    def history(self, symbol: str) -> list[dict[str, Any]]:
        return next(iter(self.hosts.hosts.values())).history(symbol)  # the shared store: any host answers

    def stop_market(self) -> None:
        self.hosts.services.stop_streamer()

    def refused_writes(self) -> int:
        return sum(t.log("naived").count("write refused") for t in [*self.hosts.hosts.values(), *self.hosts.down.values()])

    @contextlib.contextmanager
    def sampling(self) -> Iterator[Callable[[], list[str]]]:
        yield list  # `running` looks between faults; nothing more here




class NetFleet:
    """tests/cluster_net.py's hosts, each in its own network namespace: a host can also be cut off."""

    kinds = ("kill", "freeze", "cut", "db")

    def __init__(self, net: NetCluster) -> None:
        self.net = net
        self.down: set[str] = set()
        self.woken: list[tuple[float, str]] = []  # (wall clock, host) of every resume after a freeze

    def up(self) -> list[str]:
        return sorted(set(self.net.hosts) - self.down)

    def status(self, host: str) -> dict[str, Any] | None:
        status = self.net.status(host, timeout=STATUS_TIMEOUT)
        return None if status is None else msgspec.to_builtins(status)

    def kill(self, host: str) -> None:
        self.net.cluster.kill_tree(self.net.hosts[host].pid)
        self.down.add(host)

    def restart(self, host: str) -> None:
        self.down.discard(host)
        self.net.start_host(host)

    def isolate(self, host: str, kind: str) -> Callable[[], None]:
        if kind == "cut":
            self.net.cluster.cut(host)
            return lambda: self.net.cluster.heal(host)
        assert kind == "freeze", kind
        pid = self.net.hosts[host].pid
        self.net.cluster.kill_tree(pid, signal.SIGSTOP)

        def resume() -> None:
            self.woken.append((time.time(), host))
            self.net.cluster.kill_tree(pid, signal.SIGCONT)

        return resume

    def kill_db(self) -> Callable[[], None]:
        self.net.kill_db()
        return self.net.start_db

    def symbol_processes(self, host: str) -> set[str]:
        return live_symbols(self.net.hosts[host].pid)

    def orders(self) -> list[dict[str, Any]]:
        orders: list[dict[str, Any]] = self.net.paper("/paper/orders")
        return orders

    def balances(self) -> dict[str, dict[str, str]]:
        balances: dict[str, dict[str, str]] = self.net.paper("/paper/balances")
        return balances

    def history(self, symbol: str) -> list[dict[str, Any]]:
        cycles: list[dict[str, Any]] = msgspec.to_builtins(self.net.history(self.up()[0], symbol))["cycles"]
        return cycles

    def stop_market(self) -> None:
        self.net.cluster.kill(self.net.streamer_pid, signal.SIGTERM)
        self.net.cluster.wait(self.net.streamer_pid, 15)

    def refused_writes(self) -> int:
        return sum(host.log.read_text(errors="replace").count("write refused") for host in self.net.hosts.values())

    @contextlib.contextmanager
    def sampling(self) -> Iterator[Callable[[], list[str]]]:
        """tests/cluster_net.py's Sampler, by the hosts' live processes, every 0.1 s. A frozen host's
        processes run on waking until its root kills them (within a second: test_cluster_faults),
        beside the adopter's, their writes fenced: that moment is not counted."""
        with Sampler(self.net, by_status=False) as sampler:
            def seen() -> list[str]:
                return [f"{o.symbol} ran on {' and '.join(o.hosts)} at once (by their processes, at "
                        f"{time.strftime('%H:%M:%S', time.localtime(o.start))})"
                        for o in sampler.overlaps if o.by == "processes"
                        and not any(o.within(at, at + WAKE_SECONDS) and host in o.hosts for at, host in self.woken)]
            yield seen


WAKE_SECONDS = 1.0  # a woken host's overdue symbols are killed within this (tests/test_cluster_faults.py)
# How long a root may take to answer a status under load (hundreds of traders on two cores).
STATUS_TIMEOUT = 5.0


def running(fleet: Fleet, symbols: list[str], report: ClusterReport, hosts: list[str] | None = None,
            watch: tuple[str, ...] = ()) -> dict[str, tuple[str, dict[str, Any]]] | None:
    """symbol -> (host, leader) once every symbol runs on exactly one of `hosts` (default: every
    host up) with all its traders ready; None before. `watch`: hosts (one cut off) whose symbols
    only count against running twice. A symbol seen on two hosts is asked again (`_twice`)."""
    hosts = fleet.up() if hosts is None else hosts
    on: dict[str, dict[str, dict[str, Any]]] = {}  # symbol -> host -> leader
    for host in [*hosts, *watch]:
        status = fleet.status(host)
        if status is None:
            if host in watch:
                continue
            return None
        for sym in status["symbols"]:
            if sym["state"] == "running" and sym.get("leader"):
                on.setdefault(sym["symbol"], {})[host] = sym["leader"]
    if twice := {symbol: list(where) for symbol, where in on.items() if len(where) > 1}:
        _twice(fleet, twice, report)
        return None
    found = {symbol: (host, leader) for symbol, where in on.items() for host, leader in where.items()
             if host in hosts and sum(1 for t in leader["traders"] if t["pid"] and t["ready_at"]) == CHUNKS}
    return found if set(found) == set(symbols) else None


def stopped(fleet: Fleet) -> bool:
    """No host up runs any symbol: by its status (every host answers) and by its processes."""
    for host in fleet.up():
        status = fleet.status(host)
        if status is None or any(s["state"] == "running" and s.get("leader") for s in status["symbols"]):
            return False
        if fleet.symbol_processes(host):
            return False
    return True


def _twice(fleet: Fleet, twice: dict[str, list[str]], report: ClusterReport) -> None:
    """Statuses are asked one host after another: an old holder seen before its hand-off and the
    new one seen after it look like one symbol on two hosts. So ask again, the later host first:
    if the earlier one still runs the symbol after the later one was seen running it, both ran
    it at once, and that goes into the report."""
    for symbol, (earlier, later) in ((s, hosts[:2]) for s, hosts in twice.items()):
        statuses = {host: fleet.status(host) for host in (later, earlier)}
        if all(st is not None and any(x["symbol"] == symbol and x["state"] == "running" and x.get("leader")
                                      for x in st["symbols"]) for st in statuses.values()):
            report.checks.problems.append(f"{symbol} ran on {earlier} and {later} at once")


def fault_loop(fleet: Fleet, symbols: list[str], faults: int, rng: random.Random, report: ClusterReport,
               pause: tuple[float, float], ttl: float) -> None:
    """`faults` faults; the first ones are one of each kind the fleet can make, in a random order."""
    down: list[tuple[float, str]] = []  # (when to start it again, host)
    first = rng.sample(fleet.kinds, len(fleet.kinds))
    for n in range(faults):
        victim = rng.choice(fleet.up())
        kind = first[n] if n < len(first) else rng.choice(fleet.kinds)
        if kind == "kill" and len(fleet.up()) == 1:
            kind = "freeze"  # the last host up: nobody would adopt its symbols until it came back
        t0 = time.monotonic()
        if kind == "kill":
            fleet.kill(victim)
            down.append((t0 + rng.uniform(ttl, 2 * ttl), victim))
        elif kind == "db":
            start_db = fleet.kill_db()
            try:
                # By the leases' deadlines (under ttl), and the probe's own slowness under load.
                told(fleet, symbols, "every host to stop every symbol (the database killed)",
                     lambda: stopped(fleet), 2 * ttl + 10)
                report.db_stops_s.append(time.monotonic() - t0)
            finally:
                start_db()
            t0 = time.monotonic()  # its time: from the database's return until every symbol trades again
        else:
            undo = fleet.isolate(victim, kind)
            watch = (victim,) if kind == "cut" else ()  # a frozen host answers nothing
            try:
                others = [h for h in fleet.up() if h != victim]
                told(fleet, symbols, f"the others to adopt {victim}'s symbols ({kind})",
                     lambda others=others, watch=watch: running(fleet, symbols, report, others, watch), 4 * ttl + 60)
            finally:
                undo()
        told(fleet, symbols, "every symbol trading again on one host", lambda: running(fleet, symbols, report), 4 * ttl + 60)
        report.adoption_s.append(time.monotonic() - t0)
        report.faults[kind] = report.faults.get(kind, 0) + 1
        for when, host in [d for d in down if d[0] <= time.monotonic()]:
            down.remove((when, host))
            fleet.restart(host)
        time.sleep(rng.uniform(*pause))  # the workload: random moments
    for _, host in down:
        fleet.restart(host)


def told(fleet: Fleet, symbols: list[str], what: str, probe: Callable[[], object], timeout: float) -> None:
    """wait_for, failing with where each symbol not yet trading on one host stands on every host."""
    try:
        wait_for(what, probe, timeout, 0.1)
    except AssertionError as exc:
        where: dict[str, list[str]] = {s: [] for s in symbols}
        for host in fleet.up():
            status = fleet.status(host)
            for sym in status["symbols"] if status is not None else []:
                leader = sym.get("leader") or {"traders": []}
                ready = sum(1 for t in leader["traders"] if t["pid"] and t["ready_at"])
                where.setdefault(sym["symbol"], []).append(f"{host}: {sym['state']} {ready}/{CHUNKS} ready "
                                                           f"token {sym.get('lease_token')} {sym.get('error') or ''}")
        stuck = {s: w for s, w in where.items() if len(w) != 1 or f"running {CHUNKS}/{CHUNKS}" not in w[0]}
        raise AssertionError(f"{exc}; {len(stuck)} symbols not trading on one host: "
                             + "; ".join(f"{s} [{', '.join(w) or 'nowhere'}]" for s, w in sorted(stuck.items())[:20])) from None


def settle(fleet: Fleet, symbols: list[str], report: ClusterReport, timeout: float = 120.0,
           stable_for: float = 2.0) -> dict[str, dict[str, Any]]:
    """Every symbol on one host, every trader running with no pending intent, nothing changing."""
    last: list[Any] = [None, 0.0]

    def quiet() -> dict[str, dict[str, Any]] | None:
        found = running(fleet, symbols, report)
        if found is None or any(t["state"] and t["state"]["intent"] for _, leader in found.values()
                                for t in leader["traders"]):
            return None
        orders = fleet.orders()
        snapshot = ({s: (h, leader["pid"], [(t["pid"], t["state"]) for t in leader["traders"]])
                     for s, (h, leader) in found.items()},
                    [(o["clientOrderId"], o["status"], o["executedQty"]) for o in orders])
        now = time.monotonic()
        if snapshot != last[0]:
            last[0], last[1] = snapshot, now
            return None
        return {s: leader for s, (_, leader) in found.items()} if now - last[1] >= stable_for else None

    return wait_for("the cluster to settle", quiet, timeout=timeout, interval=0.2)


@contextlib.contextmanager
def local_fleet(directory: Path, dsn: str, names: list[str], symbols: list[str], seed: int,
                lease: tuple[float, float, float]) -> Iterator[Fleet]:
    with running_hosts(directory, dsn, TRADING, names, lease=lease, paper='default_balance = "0"',
                       streamer=f"simulate_seed = {seed}") as hosts:
        for symbol in symbols:
            result = hosts.hosts[names[0]].ctl("start-trading", symbol)
            assert result.returncode == 0, result.stderr
        yield LocalFleet(hosts)


@contextlib.contextmanager
def net_fleet(directory: Path, hosts_n: int, symbols: list[str], seed: int, lease: tuple[float, float, float],
              rate: float = 50.0) -> Iterator[Fleet]:
    """The hosts in network namespaces, the trading set written before they start. `rate`: the
    simulated market's trades per second per symbol (tests/harness.py's default, 50)."""
    # a connection per leader, twice (a frozen host's stay open), per keeper, a few for workers and checks
    with net_cluster(directory, symbols, hosts_n, lease, TRADING, paper={"default_balance": "0"},
                     streamer={"simulate_seed": seed, "simulate_rate": rate},
                     max_connections=2 * len(symbols) + 10 * hosts_n + 20) as net:
        yield NetFleet(net)


def run(fleet: Fleet, faults: int, seed: int = 1, pause: tuple[float, float] = (1.0, 3.0),
        ttl: float = 3.0, symbols: list[str] | None = None) -> ClusterReport:
    """The faults on `fleet` (its trading set: `symbols`), then the checks."""
    symbols = symbols or SYMBOLS
    rng = random.Random(seed)
    report = ClusterReport()
    wait_for("every symbol trading", lambda: running(fleet, symbols, report), 120 + 2 * len(symbols), 0.2)
    started = time.monotonic()
    with fleet.sampling() as overlaps:  # until settled: a host started last takes its share back then
        fault_loop(fleet, symbols, faults, rng, report, pause, ttl)
        report.seconds = time.monotonic() - started
        fleet.stop_market()
        leaders = settle(fleet, symbols, report, timeout=120 + len(symbols))
    report.checks.problems.extend(overlaps())
    orders = fleet.orders()
    for symbol in symbols:
        history = fleet.history(symbol)
        mine = [o for o in orders if o["symbol"] == symbol]
        report.checks.cycles += len(history)
        report.checks.orders += len(mine)
        check_symbol(symbol, CHUNKS, history, leaders[symbol], mine, report.checks)
    check_balances(orders, fleet.balances(), {"USDT": START_USDT}, report.checks)
    report.fenced = fleet.refused_writes()
    return report

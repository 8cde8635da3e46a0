"""Host faults under trading: a cluster of naived hosts loses hosts while its symbols cycle.

Shared by `tests/test_cluster_chaos.py` (short, in CI) and `bench/cluster_chaos.py` (long).

Hosts on one PostgreSQL, one shared paper exchange and one simulated market (tests/hosts.py) trade
several symbols with the chaos test's settings (tests/chaos.py: buys at the market, sells below the
buy, so cycles finish every few seconds and every leg of the order protocol runs all the time). A
fault loop picks a random running host and either kills its whole tree with SIGKILL (a power cut;
the host is started again a little later, as systemd would, and takes its share back by hand-off)
or freezes it with SIGSTOP past its leases (a paused VM) and then resumes it. After each fault it
waits, with a deadline, until every symbol runs again on exactly one host with all its traders,
and keeps that time (the adoption time). Then the market stops, the cluster settles, and every
symbol's orders at the exchange are checked against its live traders and finished cycles, and the
account's balances against every fill (tests/chaos.py's invariants), so an order placed twice,
lost or owned by nobody, or a fill missing from the books, fails the run.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
from chaos import Report, check_balances, check_symbol, trading_config
from figures import percentiles
from harness import Tree, wait_for
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
            f"cycles completed: {r.cycles}; orders at the exchange: {r.orders}",
            f"orders lost: {len(r.lost) + len(r.orphaned)}; duplicated: {len(r.duplicated)}; "
            f"stale-token writes refused: {self.fenced}",
        ]
        return "\n".join(lines + [f"PROBLEM: {p}" for p in r.problems])


def running(hosts: Hosts, symbols: list[str]) -> dict[str, tuple[str, dict[str, Any]]] | None:
    """symbol -> (host, leader) once every symbol runs on exactly one host with all its traders
    ready; None before. A symbol seen running on two hosts at once is a problem of its own."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for host_id, tree in hosts.hosts.items():
        for sym in tree.status()["symbols"]:
            leader = sym.get("leader")
            if sym["state"] != "running" or not leader:
                continue
            assert sym["symbol"] not in found, f"{sym['symbol']} runs on {found[sym['symbol']][0]} and {host_id}"
            ready = [t for t in leader["traders"] if t["pid"] and t["ready_at"]]
            if len(ready) == CHUNKS:
                found[sym["symbol"]] = (host_id, leader)
    return found if set(found) == set(symbols) else None


def fault_loop(hosts: Hosts, symbols: list[str], faults: int, rng: random.Random, report: ClusterReport,
               pause: tuple[float, float], ttl: float) -> None:
    down: list[tuple[float, str]] = []  # (when to start it again, host)
    for _ in range(faults):
        victim = rng.choice(sorted(hosts.hosts))
        kind = rng.choice(["kill", "freeze"]) if len(hosts.hosts) > 1 else "freeze"
        t0 = time.monotonic()
        if kind == "kill":
            hosts.kill(victim)
            down.append((t0 + rng.uniform(ttl, 2 * ttl), victim))
        else:
            members = hosts.freeze(victim)
            try:
                others = {h: t for h, t in hosts.hosts.items() if h != victim}
                wait_for(f"the others to adopt {victim}'s symbols",
                         lambda others=others: set(_running_on(others)) == set(symbols), 4 * ttl + 30)
            finally:
                for p in members:
                    try:
                        p.resume()
                    except psutil.NoSuchProcess:  # a member that died meanwhile: nothing to resume
                        pass
        wait_for("every symbol trading again on one host", lambda: running(hosts, symbols), 4 * ttl + 60, 0.1)
        report.adoption_s.append(time.monotonic() - t0)
        report.faults[kind] = report.faults.get(kind, 0) + 1
        for when, host in [d for d in down if d[0] <= time.monotonic()]:
            down.remove((when, host))
            hosts.restart(host)
        time.sleep(rng.uniform(*pause))  # the workload: random moments
    for _, host in down:
        hosts.restart(host)


def _running_on(trees: dict[str, Tree]) -> list[str]:
    return [s["symbol"] for t in trees.values() for s in t.status()["symbols"] if s["state"] == "running" and s.get("leader")]


def settle(hosts: Hosts, symbols: list[str], timeout: float = 120.0, stable_for: float = 2.0) -> dict[str, dict[str, Any]]:
    """Every symbol on one host, every trader running with no pending intent, nothing changing."""
    last: list[Any] = [None, 0.0]

    def quiet() -> dict[str, dict[str, Any]] | None:
        found = running(hosts, symbols)
        if found is None or any(t["state"] and t["state"]["intent"] for _, leader in found.values()
                                for t in leader["traders"]):
            return None
        orders = hosts.services.paper_orders()
        snapshot = ({s: (h, leader["pid"], [(t["pid"], t["state"]) for t in leader["traders"]])
                     for s, (h, leader) in found.items()},
                    [(o["clientOrderId"], o["status"], o["executedQty"]) for o in orders])
        now = time.monotonic()
        if snapshot != last[0]:
            last[0], last[1] = snapshot, now
            return None
        return {s: leader for s, (_, leader) in found.items()} if now - last[1] >= stable_for else None

    return wait_for("the cluster to settle", quiet, timeout=timeout, interval=0.2)


def run(directory: Path, dsn: str, faults: int, hosts_n: int = 3, seed: int = 1,
        pause: tuple[float, float] = (1.0, 3.0), lease: tuple[float, float, float] = (3.0, 1.0, 0.5),
        symbols: list[str] | None = None) -> ClusterReport:
    symbols = symbols or SYMBOLS
    rng = random.Random(seed)
    report = ClusterReport()
    names = [f"h{i + 1}" for i in range(hosts_n)]
    with running_hosts(directory, dsn, TRADING, names, lease=lease, paper='default_balance = "0"',
                       streamer=f"simulate_seed = {seed}") as hosts:
        for symbol in symbols:
            result = hosts.hosts[names[0]].ctl("start-trading", symbol)
            assert result.returncode == 0, result.stderr
        wait_for("every symbol trading", lambda: running(hosts, symbols), 120 + 2 * len(symbols), 0.2)
        started = time.monotonic()
        fault_loop(hosts, symbols, faults, rng, report, pause, lease[0])
        report.seconds = time.monotonic() - started
        hosts.services.stop_streamer()
        leaders = settle(hosts, symbols)
        anyone = next(iter(hosts.hosts.values()))
        orders = hosts.services.paper_orders()
        for symbol in symbols:
            history = anyone.history(symbol)  # the shared store: any host answers for every symbol
            mine = [o for o in orders if o["symbol"] == symbol]
            report.checks.cycles += len(history)
            report.checks.orders += len(mine)
            check_symbol(symbol, CHUNKS, history, leaders[symbol], mine, report.checks)
        check_balances(orders, hosts.services.paper_balances(), {"USDT": START_USDT}, report.checks)
        report.fenced = sum(t.log("naived").count("write refused") for t in [*hosts.hosts.values(), *hosts.down.values()])
    return report

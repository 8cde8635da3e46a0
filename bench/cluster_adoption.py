"""A host killed in a cluster: how long until its symbols trade again on the others.

Starts a real PostgreSQL (tests/pg.py), one streamerd, one shared paper exchange and `--hosts`
naived hosts on this machine (tests/hosts.py), trades `--symbols` USDT symbols with buys resting
far below the market (nothing fills: every order must survive the hand-over as it is), then
SIGKILLs one host's whole tree. For each of its symbols it measures, by polling the survivors'
status:

- `expiry`: when the symbol's lease expired by the database's clock (its expiry read just before
  the kill, as seconds after the kill): the floor no adopter may beat;
- `adopted`: when a survivor's traders of the symbol were running again with their resting buys,
  reconciled with the exchange;

and prints the adoption time's p50/p99 after the kill and the part of it after the lease expired
(what naive adds: the keeper's round, the fork, the store's restore and the reconcile), beside the
same figures for one host losing a symbol's supervisor to `kill -9` (the in-host restart, the
baseline). It checks that the exchange's open orders are the same set before and after.

    .venv/bin/python bench/cluster_adoption.py [--hosts 3] [--symbols 30] [--lease 15 5 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import psycopg
from harness import RESTING, wait_for
from hosts import Hosts, running_hosts, usable_symbols
from pg import running_server


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def open_orders(hosts: Hosts) -> set[str]:
    return {o["clientOrderId"] for o in hosts.services.paper_orders() if o["status"] in ("NEW", "PARTIALLY_FILLED")}


def running_with_buys(hosts: Hosts, exclude: str) -> set[str]:
    ready = set()
    for host_id, tree in hosts.hosts.items():
        if host_id == exclude:
            continue
        for sym in tree.status()["symbols"]:
            traders = [t for t in (sym.get("leader") or {}).get("traders", []) if t["pid"]]
            if sym["state"] == "running" and traders and all(t["state"] and t["state"]["buy_order"] for t in traders):
                ready.add(sym["symbol"])
    return ready


def expiries(dsn: str) -> dict[str, tuple[str, float]]:
    """symbol -> (holder, seconds until its lease expires), by the database's clock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT symbol, holder, extract(epoch FROM expires_at - now())::float8 FROM leases")
        return {s: (h, e) for s, h, e in rows}


def in_host_restart(hosts: Hosts, host_id: str, symbol: str) -> float:
    """kill -9 a symbol's supervisor: seconds until its traders run again with their buys (one host)."""
    tree = hosts.hosts[host_id]
    pid = next(s["supervisor"]["pid"] for s in tree.status()["symbols"] if s["symbol"] == symbol)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    def back() -> bool:
        sym = next((s for s in tree.status()["symbols"] if s["symbol"] == symbol), None)
        traders = [t for t in ((sym or {}).get("leader") or {}).get("traders", []) if t["pid"]]
        return bool(sym and sym["supervisor"]["pid"] != pid and traders and all(t["state"]["buy_order"] for t in traders))

    wait_for(f"{symbol} back on {host_id}", back, 60, 0.05)
    return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--symbols", type=int, default=30)
    parser.add_argument("--lease", type=float, nargs=3, default=(15.0, 5.0, 3.0), metavar=("TTL", "RENEW", "MARGIN"))
    parser.add_argument("--json", action="store_true", help="also print one BENCH-JSON line for bench/run_all")
    parser.add_argument("--quick", action="store_true", help="2 hosts, 6 symbols, a 6 s lease")
    args = parser.parse_args()
    if args.quick:
        args.hosts, args.symbols, args.lease = 2, 6, (6.0, 2.0, 1.0)
    symbols = usable_symbols(args.symbols)
    names = [f"h{i + 1}" for i in range(args.hosts)]
    with running_server() as server, tempfile.TemporaryDirectory() as tmp:
        dsn = server.dsn()
        with running_hosts(Path(tmp), dsn, RESTING, names, lease=tuple(args.lease)) as hosts:
            for symbol in symbols:
                result = hosts.hosts[names[0]].ctl("start-trading", symbol)
                assert result.returncode == 0, result.stderr
            wait_for("every symbol trading with its buys resting",
                     lambda: running_with_buys(hosts, "") == set(symbols), 300, 0.5)
            before = open_orders(hosts)
            placed = hosts.held()
            victim = max(names, key=lambda h: sum(1 for v in placed.values() if v == h))
            restart = [in_host_restart(hosts, placed[s], s) for s in [s for s in sorted(symbols) if placed[s] != victim][:5]]
            lost = sorted(s for s, h in placed.items() if h == victim)
            leases = expiries(dsn)
            t0 = time.monotonic()
            hosts.kill(victim)
            adopted: dict[str, float] = {}
            deadline = t0 + 3 * args.lease[0] + 60
            while len(adopted) < len(lost) and time.monotonic() < deadline:
                now = time.monotonic() - t0
                for symbol in running_with_buys(hosts, victim) & set(lost):
                    adopted.setdefault(symbol, now)
                time.sleep(0.1)
            after = open_orders(hosts)
    missing = sorted(set(lost) - set(adopted))
    expiry = {s: leases[s][1] for s in lost}
    overhead = [adopted[s] - expiry[s] for s in adopted]
    figures = {
        "hosts": args.hosts, "symbols": len(symbols), "lease": list(args.lease), "killed": victim, "lost": len(lost),
        "adopted": len(adopted), "not_adopted": missing,
        "adoption_p50": percentile(list(adopted.values()), 0.5), "adoption_p99": percentile(list(adopted.values()), 0.99),
        "after_expiry_p50": percentile(overhead, 0.5), "after_expiry_p99": percentile(overhead, 0.99),
        "in_host_restart_p50": statistics.median(restart) if restart else None,
        "orders_before": len(before), "orders_after": len(after), "orders_same": before == after,
    }
    if args.json:  # the BENCH-JSON line bench/run_all reads, beside the table
        print("BENCH-JSON: " + json.dumps([
            {"figure": "host killed -> its symbols trading elsewhere", "unit": "s", "p50": figures["adoption_p50"],
             "p99": figures["adoption_p99"], "peer": figures["in_host_restart_p50"], "ratio": None, "target": "",
             "n": len(adopted)},
            {"figure": "  same, after the lease expired", "unit": "s", "p50": figures["after_expiry_p50"],
             "p99": figures["after_expiry_p99"], "peer": None, "ratio": None, "target": "", "n": len(adopted)}]))
    print(f"{args.hosts} hosts, {len(symbols)} symbols, lease {args.lease[0]:g}s (renew {args.lease[1]:g}s, "
          f"margin {args.lease[2]:g}s); killed {victim} holding {len(lost)}")
    print(f"  adopted {len(adopted)}/{len(lost)}: after the kill p50 {figures['adoption_p50']:.2f}s "
          f"p99 {figures['adoption_p99']:.2f}s; after the lease expired p50 {figures['after_expiry_p50']:.2f}s "
          f"p99 {figures['after_expiry_p99']:.2f}s")
    if restart:
        print(f"  baseline, a symbol supervisor killed on its own host: back in "
              f"{statistics.median(restart):.2f}s (p50 of {len(restart)})")
    print(f"  open orders: {len(before)} before, {len(after)} after, same set: {before == after}")
    return 0 if not missing and before == after else 1


if __name__ == "__main__":
    sys.exit(main())

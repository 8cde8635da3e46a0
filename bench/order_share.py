"""What sharing the account's order limits between hosts costs, in the same run on the same machine.

- The order path: `SharedBudget.acquire` for an order placement (the flock'd read-modify-write of
  the host's budget file every request makes), on the file of the layout before the order shares
  (loaded from git: the revision before the one that brought `NVBUDGT2`), on the new layout with
  no share (one host), and with a share set by the keeper (a cluster host). No database is
  touched on the order path.
- The keeper's round: `Keeper.round` holding 33 leases (100 symbols on 3 hosts), and the
  `share_orders` call it adds (two statements: publish and read, then the compare-and-set),
  against a real PostgreSQL started as the tests start it (tests/pg.py), over TCP on 127.0.0.1,
  with three hosts' rows in the table.

    .venv/bin/python bench/order_share.py [--orders 20000] [--rounds 300] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pg import running_server
from store_backends import report, timed

from naived.core.order_shares import OrderShare
from naived.exchange import budget
from naived.store import pgschema
from naived.store.leases import Leases
from naived.store.order_counts import share_orders
from naived.store.postgres import connect
from naived.tree.lease_keeper import Keeper

ROOT = Path(__file__).resolve().parents[1]
HUGE = budget.Limits(10**9, 10**9, 10**9)  # nothing is refused: the figure is the check's cost


def layout_1() -> types.ModuleType | None:
    """naived/exchange/budget.py as it was before the order shares, from git (None without git)."""
    try:
        found = subprocess.run(["git", "-C", str(ROOT), "log", "--format=%H", "-n1", "-S", 'MAGIC = b"NVBUDGT2"', "--",
                                "naived/exchange/budget.py"], capture_output=True, text=True, check=True).stdout.strip()
        before = f"{found}^" if found else "HEAD"  # not committed yet: HEAD is still the layout before
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{before}:naived/exchange/budget.py"],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("budget_layout_1", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, "budget.py (layout 1)", "exec"), module.__dict__)
    return module


def order_path(n: int, tmp: Path) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    old = layout_1()
    if old is not None:
        shared: Any = old.SharedBudget(tmp / "layout-1", old.Limits(10**9, 10**9, 10**9))
        results["acquire(order), layout 1 (before the shares)"] = timed(n, lambda i: shared.acquire(1, "order", time.time()))
        shared.close()
    one = budget.SharedBudget(tmp / "one-host", HUGE)
    results["acquire(order), layout 2, no share (one host)"] = timed(n, lambda i: one.acquire(1, "order", time.time()))
    one.close()
    cluster = budget.SharedBudget(tmp / "cluster-host", HUGE)
    cluster.set_order_share(OrderShare(3, 10**8, 10**9, int(time.time()) // 86400), confirmed=False)  # a cut: at once
    assert cluster.orders().hosts == 3
    results["acquire(order), layout 2, keeper's share"] = timed(n, lambda i: cluster.acquire(1, "order", time.time()))
    cluster.close()
    return results


def keeper_round(n: int, tmp: Path) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    symbols = {f"S{i:03d}USDT": "running" for i in range(100)}
    with running_server() as server:
        conns = [connect(server.dsn()) for _ in range(3)]
        pgschema.migrate(conns[0])
        hosts = ["host-a", "host-b", "host-c"]
        keepers = [Keeper(Leases(c), h, 1, 3600, 3) for c, h in zip(conns, hosts, strict=True)]
        budgets = [budget.SharedBudget(tmp / f"pg-{h}") for h in hosts]
        for keeper, b in zip(keepers, budgets, strict=True):  # every host's leases and rows in place
            keeper.round(symbols)
            share_orders(keeper.leases.conn, keeper.host_id, hosts, b)
        me, mine = keepers[0], budgets[0]
        held = len(me.round(symbols).held)
        results[f"keeper round, {held} leases held"] = timed(n, lambda i: me.round(symbols))
        results["share_orders (publish + compare-and-set)"] = timed(n, lambda i: share_orders(me.leases.conn, me.host_id,
                                                                                              hosts, mine))

        def both(i: int) -> None:
            done = me.round(symbols)
            share_orders(me.leases.conn, me.host_id, done.alive, mine)

        results[f"keeper round + share_orders, {held} leases held"] = timed(n, both)
        for c in conns:
            c.close()
        for b in budgets:
            b.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="2000 orders, 50 rounds")
    parser.add_argument("--json", action="store_true", help="also print one BENCH-JSON line for bench/run_all")
    args = parser.parse_args()
    orders, rounds = (2000, 50) if args.quick else (args.orders, args.rounds)
    with tempfile.TemporaryDirectory(prefix="nd-bench-") as tmp:
        results = order_path(orders, Path(tmp))
        if not any("layout 1" in k for k in results):
            print("(no git history here: the layout-1 baseline is left out)")
        results |= keeper_round(rounds, Path(tmp))
    print(f"{orders} order acquisitions each, {rounds} keeper rounds each")
    report(results, args.json, decimals=1)

if __name__ == "__main__":
    main()

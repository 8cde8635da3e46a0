"""Several naived hosts on one PostgreSQL (tests/hosts.py): symbols shared out by fenced leases, a
dead host's symbols adopted with their open orders, nothing placed twice, nothing lost."""

from __future__ import annotations

import time
from pathlib import Path

from harness import RESTING, wait_for
from hosts import Hosts, running_hosts

SYMBOLS = ["XRPUSDT", "BTCUSDT", "ETHUSDT", "ADAUSDT"]


def open_orders(hosts: Hosts) -> dict[str, tuple[str, str]]:
    """Open orders at the shared exchange: client order id -> (symbol, side)."""
    return {o["clientOrderId"]: (o["symbol"], o["side"]) for o in hosts.services.paper_orders()
            if o["status"] in ("NEW", "PARTIALLY_FILLED")}


def all_resting(hosts: Hosts) -> dict[str, str] | None:
    """symbol -> host, once every symbol runs somewhere with both traders' buys resting."""
    held = hosts.held()
    if sorted(held) != sorted(SYMBOLS):
        return None
    return held if all(len(hosts.traders_with_buys(s)) == 2 for s in SYMBOLS) else None


def test_a_killed_hosts_symbols_are_adopted_with_their_open_orders(tmp_path: Path, pg_dsn: str) -> None:
    with running_hosts(tmp_path, pg_dsn, RESTING, ["h1", "h2"]) as hosts:
        for symbol in SYMBOLS:
            result = hosts.hosts["h1"].ctl("start-trading", symbol)
            assert result.returncode == 0, result.stderr
        placed = wait_for("every symbol trading on one host with its buys resting", lambda: all_resting(hosts), 60)
        assert set(placed.values()) == {"h1", "h2"}, f"the placement gave one host everything: {placed}"
        before = wait_for("8 open buys at the exchange", lambda: (o := open_orders(hosts)) and len(o) == 8 and o)

        victim = "h1"
        t0 = time.monotonic()
        hosts.kill(victim)
        adopted = wait_for("the survivor to trade every symbol", lambda: all_resting(hosts), 30)
        took = time.monotonic() - t0
        assert set(adopted.values()) == {"h2"}
        # the adopter reconciled the resting buys by client order id: none placed again, none lost
        assert open_orders(hosts) == before
        assert len(hosts.services.paper_orders()) == 8
        print(f"adopted {sum(1 for h in placed.values() if h == victim)} symbols in {took:.2f}s")

"""The lease keeper's rounds (naived/tree/lease_keeper.py) against a real PostgreSQL: three hosts
share the trading set by placement, each symbol held by one; a host that stops renewing loses its
symbols to the others once the leases expire by the database's clock, never before."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from harness import wait_for

from naived.core.placement import place
from naived.store import pgschema
from naived.store.leases import Leases
from naived.store.pgschema import Conn
from naived.store.postgres import connect
from naived.tree.lease_keeper import Keeper

WANTED = {f"S{i:02d}USDT": "running" for i in range(24)}
TTL, MARGIN = 2.0, 0.5


@pytest.fixture
def connections(pg_dsn: str) -> Iterator[Callable[[], Conn]]:
    opened: list[Conn] = []

    def another() -> Conn:
        opened.append(connect(pg_dsn))
        if len(opened) == 1:
            pgschema.migrate(opened[0])
        return opened[-1]

    yield another
    for conn in opened:
        conn.close()


def keepers(connections: Callable[[], Conn], names: list[str]) -> dict[str, Keeper]:
    return {name: Keeper(Leases(connections()), name, 100 + i, TTL, MARGIN) for i, name in enumerate(names)}


DOUBLES: list[str] = []  # symbols two hosts reported at once (checked after each test: wait_for retries asserts)


@pytest.fixture(autouse=True)
def one_holder_each() -> Iterator[None]:
    DOUBLES.clear()
    yield
    assert DOUBLES == []


def holders(keepers: dict[str, Keeper]) -> dict[str, str]:
    """symbol -> host, from each keeper's round; a symbol two hosts report is noted in DOUBLES."""
    seen: dict[str, str] = {}
    for name, keeper in keepers.items():
        for held in keeper.round(WANTED).held:
            if held.symbol in seen:
                DOUBLES.append(f"{held.symbol} held by {seen[held.symbol]} and {name}")
            seen[held.symbol] = name
    return seen


def test_hosts_share_the_symbols_by_placement_one_holder_each(connections: Callable[[], Conn]) -> None:
    hosts = keepers(connections, ["h1", "h2", "h3"])
    held = wait_for("every symbol held", lambda: h if len(h := holders(hosts)) == len(WANTED) else None, timeout=10)
    assert held == {s: place(s, {"h1", "h2", "h3"}) for s in WANTED}
    report = hosts["h1"].round(WANTED)
    now = time.monotonic()
    assert all(now < h.deadline <= now + TTL - MARGIN for h in report.held)
    assert report.alive == ["h1", "h2", "h3"]


def test_a_silent_host_loses_its_symbols_after_its_leases_expire_not_before(connections: Callable[[], Conn]) -> None:
    hosts = keepers(connections, ["h1", "h2", "h3"])
    wait_for("every symbol held", lambda: len(holders(hosts)) == len(WANTED), timeout=10)
    lost = {h.symbol: h for h in hosts["h3"].round(WANTED).held}
    assert lost
    silent_since = time.monotonic()
    survivors = {k: v for k, v in hosts.items() if k != "h3"}  # h3 frozen: no more rounds

    early: list[str] = []  # h3's symbols taken while h3 may still trade them (before its deadlines)

    def adopted() -> dict[str, str] | None:
        held = holders(survivors)
        early.extend(s for s in lost if s in held and time.monotonic() <= lost[s].deadline)
        return held if len(held) == len(WANTED) else None

    held = wait_for("h3's symbols adopted", adopted, timeout=TTL * 4)
    assert early == []
    assert time.monotonic() - silent_since >= TTL - MARGIN
    assert held == {s: place(s, {"h1", "h2"}) for s in WANTED}


def test_a_host_that_joins_gets_its_share_in_an_orderly_hand_off(connections: Callable[[], Conn]) -> None:
    hosts = keepers(connections, ["h1", "h2"])
    wait_for("every symbol held by two hosts", lambda: len(holders(hosts)) == len(WANTED), timeout=10)
    hosts.update(keepers(connections, ["h3"]))
    hosts["h3"].leases.heartbeat("h3")
    final = {s: place(s, {"h1", "h2", "h3"}) for s in WANTED}
    wait_for("h3's share handed over", lambda: holders(hosts) == final, timeout=TTL * 5)


def test_a_restarted_keeper_takes_its_own_leases_again_with_new_tokens(connections: Callable[[], Conn]) -> None:
    hosts = keepers(connections, ["h1"])
    before = {h.symbol: h.token for h in hosts["h1"].round(WANTED).held}
    assert set(before) == set(WANTED)
    again = Keeper(Leases(connections()), "h1", 999, TTL, MARGIN)  # the keeper process restarted
    after = {h.symbol: h.token for h in again.round(WANTED).held}
    assert set(after) == set(WANTED) and all(after[s] > before[s] for s in WANTED)

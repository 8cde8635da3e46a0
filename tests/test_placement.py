"""Placement of symbols on hosts (naived/core/placement.py): pure functions, no database."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from naived.core.placement import place, plan

SYMBOLS = [f"S{i:03d}USDT" for i in range(100)]


def test_every_host_agrees_and_shares_are_near_equal() -> None:
    hosts = {"h1", "h2", "h3"}
    owners = {s: place(s, hosts) for s in SYMBOLS}
    counts = {h: sum(1 for o in owners.values() if o == h) for h in hosts}
    assert sum(counts.values()) == 100 and min(counts.values()) >= 20, counts
    assert owners == {s: place(s, set(sorted(hosts, reverse=True))) for s in SYMBOLS}  # order of the set is no input


def test_a_host_leaving_moves_only_its_own_symbols() -> None:
    before = {s: place(s, {"h1", "h2", "h3"}) for s in SYMBOLS}
    after = {s: place(s, {"h1", "h2"}) for s in SYMBOLS}
    assert {s for s in SYMBOLS if before[s] != after[s]} == {s for s in SYMBOLS if before[s] == "h3"}


def test_each_host_acquires_its_free_symbols_and_hands_off_the_rest() -> None:
    alive = {"h1", "h2"}
    held = {s: "h1" for s in SYMBOLS[:10]}  # h1 held these alone; h2 has just joined
    p1, p2 = plan("h1", SYMBOLS, held, alive), plan("h2", SYMBOLS, held, alive)
    assert set(p1.acquire).isdisjoint(p2.acquire)  # no two hosts ask for the same free lease
    assert set(p1.acquire) | set(p2.acquire) == set(SYMBOLS[10:])
    assert set(p1.release) == {s for s in SYMBOLS[:10] if place(s, alive) == "h2"}
    assert p2.release == []
    stopped = plan("h1", SYMBOLS[1:], held, alive)  # SYMBOLS[0] was stopped by the user
    assert SYMBOLS[0] in stopped.release


@given(st.sets(st.sampled_from(SYMBOLS), max_size=30), st.sets(st.sampled_from(["h1", "h2", "h3", "h4"]), min_size=1))
def test_after_every_host_follows_its_plan_each_symbol_has_one_holder(wanted: set[str], alive: set[str]) -> None:
    held: dict[str, str] = {}
    for _ in range(2):  # hand-offs are released in one round and taken in the next
        plans = {h: plan(h, sorted(wanted), held, alive) for h in alive}
        for h, p in plans.items():
            for s in p.release:
                del held[s]
            for s in p.acquire:
                assert s not in held
                held[s] = h
    assert held == {s: place(s, alive) for s in wanted}

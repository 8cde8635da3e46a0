"""The leader's store: what client order ids derive from is durable and never handed out twice.

The contract (naived/store/base.py, SymbolStore) is checked on both backends: SQLite (a file per
symbol) and PostgreSQL (a real server, tests/pg.py; each write fenced by the symbol's lease).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from naived.core.messages import CycleResult, Settings, TraderState
from naived.store.base import SymbolStore
from naived.store.sqlite import Store

SETTINGS = Settings("XRPUSDT", 1, "100", "0", "0.001", "0.01", "0.0001", "1", "1", "5", "XRP", "USDT")
RESULT = CycleResult("40", "19.8", "39", "19.3596", {"USDT": "0.0193596"}, "0.0391596", "0.01591608", "0.96", "0.47567568")

OpenStore = Callable[[str], SymbolStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens a symbol's store on the backend under test; called again, it reopens the same store
    (PostgreSQL: a new PgStore on a new lease of this host, as a restarted leader's)."""
    if request.param == "sqlite":
        yield lambda symbol: Store(tmp_path / f"{symbol}.sqlite")
        return
    from naived.store import pgschema
    from naived.store.leases import Leases
    from naived.store.postgres import PgStore, connect

    dsn = request.getfixturevalue("pg_dsn")
    conn = connect(dsn)
    pgschema.migrate(conn)
    leases = Leases(conn)

    def open_pg(symbol: str) -> SymbolStore:
        lease = leases.acquire(symbol, "host-a", 60)
        assert lease is not None
        return PgStore(conn, symbol, lease)

    yield open_pg
    conn.close()


def test_cycle_numbers_and_the_id_prefix_survive_a_reopen(open_store: OpenStore) -> None:
    store = open_store("XRPUSDT")
    prefix = store.id_prefix()
    assert re.fullmatch(r"nv[a-z0-9]{6}", prefix)
    assert [store.next_cycle() for _ in range(3)] == [1, 2, 3]
    store.close()
    again = open_store("XRPUSDT")
    assert again.id_prefix() == prefix and again.next_cycle() == 4


def test_each_new_store_draws_its_own_prefix(open_store: OpenStore) -> None:
    prefixes = {open_store(f"S{i}USDT").id_prefix() for i in range(20)}
    assert len(prefixes) == 20  # a new installation's cycle 1 is not another's cycle 1


def test_the_id_prefix_is_recorded_before_the_store_keeps_it(open_store: OpenStore) -> None:
    store = open_store("XRPUSDT")
    seen: list[tuple[str, str | None]] = []
    prefix = store.id_prefix(lambda p: seen.append((p, store.get_meta("id_prefix"))))
    assert seen == [(prefix, None)]  # told the new prefix while the store did not have it yet
    assert store.id_prefix(lambda p: seen.append((p, "again"))) == prefix and len(seen) == 1


def test_the_cycle_counter_and_the_prefix_are_committed_with_an_fsync(tmp_path: Path) -> None:
    store = Store(tmp_path / "XRPUSDT.sqlite")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.id_prefix()
    store.next_cycle()
    text = "\n".join(statements)
    # each commit that hands out an id ingredient runs under synchronous=FULL; NORMAL again after
    assert re.search(r"synchronous=FULL.*?INSERT OR IGNORE INTO meta.*?COMMIT.*?synchronous=NORMAL", text, re.S)
    assert re.search(r"synchronous=FULL.*?last_cycle.*?COMMIT.*?synchronous=NORMAL", text, re.S)
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL for everything else


def test_saved_states_come_back_and_a_finished_one_moves_to_the_cycles(open_store: OpenStore) -> None:
    store = open_store("XRPUSDT")
    assert store.traders() == {} and store.finished_cycles() == [] and store.cycles_finished() == 0
    first, second = TraderState("XRPUSDT", 0, 1, SETTINGS), TraderState("XRPUSDT", 1, 2, SETTINGS)
    store.save(first, {"orders_placed": 2})
    store.save(second, {"orders_placed": 1, "fills": 1})
    store.save(TraderState("XRPUSDT", 0, 1, SETTINGS, status="selling"))  # the newer state replaces the older
    store.bump("leader_starts")
    store.close()
    store = open_store("XRPUSDT")
    assert store.traders() == {0: TraderState("XRPUSDT", 0, 1, SETTINGS, status="selling"), 1: second}
    assert (store.counter("orders_placed"), store.counter("fills"), store.counter("leader_starts")) == (3, 1, 1)
    assert store.counter("never") == 0
    done = TraderState("XRPUSDT", 1, 2, SETTINGS, status="done", result=RESULT)
    store.finish(done)
    assert store.traders() == {0: TraderState("XRPUSDT", 0, 1, SETTINGS, status="selling")}
    assert store.finished_cycles() == [done] and store.cycles_finished() == 1
    store.set_meta("last_error", "boom")
    assert store.get_meta("last_error") == "boom"
    store.set_meta("last_error", None)
    assert store.get_meta("last_error") is None


def test_finished_cycles_add_their_fees_and_pnl_to_the_books_once(open_store: OpenStore) -> None:
    store = open_store("XRPUSDT")
    assert store.books() == {"fees_quote": "0", "pnl_quote": "0"}
    for cycle in (1, 2):
        store.finish(TraderState("XRPUSDT", 0, cycle, SETTINGS, status="done", result=RESULT))
    store.finish(TraderState("XRPUSDT", 0, 2, SETTINGS, status="done", result=RESULT))  # recorded again: not counted twice
    assert store.books() == {"fees_quote": "0.0783192", "pnl_quote": "0.03183216"}
    assert store.fees() == {"USDT": "0.0387192"}  # by asset, as the results list them
    assert store.cycles_finished() == 2


def test_a_store_from_before_fees_by_asset_sums_them_from_its_cycles(open_store: OpenStore) -> None:
    store = open_store("XRPUSDT")
    assert store.fees() == {}
    third = CycleResult("40", "19.8", "39", "19.3596", {"BNB": "0.00003", "USDT": "0.01"}, "0.01", "0.1", "0", "0")
    store.finish(TraderState("XRPUSDT", 0, 1, SETTINGS, status="done", result=RESULT))
    store.finish(TraderState("XRPUSDT", 0, 2, SETTINGS, status="done", result=third))
    store.set_meta("fees", None)  # as a store written before it kept them
    assert store.fees() == {"USDT": "0.0293596", "BNB": "0.00003"}
    store.finish(TraderState("XRPUSDT", 0, 3, SETTINGS, status="done", result=third))  # kept from now on
    assert store.get_meta("fees") is not None and store.fees() == {"USDT": "0.0393596", "BNB": "0.00006"}


def test_cycles_taken_together_are_never_handed_out_again(open_store: OpenStore) -> None:
    store = open_store("XRPUSDT")
    assert store.next_cycles(2) == [1, 2]
    store.close()
    again = open_store("XRPUSDT")
    assert again.next_cycle() == 3 and again.next_cycles(3) == [4, 5, 6]


def test_symbols_keep_their_own_counters(open_store: OpenStore) -> None:
    """PostgreSQL keeps every symbol in the same tables: one symbol's numbers are not another's."""
    a, b = open_store("XRPUSDT"), open_store("BTCUSDT")
    assert a.next_cycles(3) == [1, 2, 3] and b.next_cycle() == 1
    a.save(TraderState("XRPUSDT", 0, 3, SETTINGS), {"fills": 2})
    assert b.traders() == {} and b.counter("fills") == 0 and a.id_prefix() != b.id_prefix()

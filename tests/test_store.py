"""The leader's store: what client order ids derive from is durable and never handed out twice."""

from __future__ import annotations

import re
from pathlib import Path

from naived.store.sqlite import Store


def test_cycle_numbers_and_the_id_prefix_survive_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "XRPUSDT.sqlite")
    prefix = store.id_prefix()
    assert re.fullmatch(r"nv[a-z0-9]{6}", prefix)
    assert [store.next_cycle() for _ in range(3)] == [1, 2, 3]
    store.close()
    again = Store(tmp_path / "XRPUSDT.sqlite")
    assert again.id_prefix() == prefix and again.next_cycle() == 4


def test_each_new_store_draws_its_own_prefix(tmp_path: Path) -> None:
    prefixes = {Store(tmp_path / f"{i}.sqlite").id_prefix() for i in range(20)}
    assert len(prefixes) == 20  # a new installation's cycle 1 is not another's cycle 1


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


def test_finished_cycles_add_their_fees_and_pnl_to_the_books_once(tmp_path: Path) -> None:
    from naived.core.messages import CycleResult, Settings, TraderState

    settings = Settings("XRPUSDT", 1, "100", "0", "0.001", "0.01", "0.0001", "1", "1", "5", "XRP", "USDT")
    result = CycleResult("40", "19.8", "39", "19.3596", {"USDT": "0.0193596"}, "0.0391596", "0.01591608", "0.96", "0.47567568")
    store = Store(tmp_path / "XRPUSDT.sqlite")
    assert store.books() == {"fees_quote": "0", "pnl_quote": "0"}
    for cycle in (1, 2):
        store.finish(TraderState("XRPUSDT", 0, cycle, settings, status="done", result=result))
    store.finish(TraderState("XRPUSDT", 0, 2, settings, status="done", result=result))  # recorded again: not counted twice
    assert store.books() == {"fees_quote": "0.0783192", "pnl_quote": "0.03183216"}


def test_cycles_taken_together_are_never_handed_out_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "X.sqlite")
    assert store.next_cycles(2) == [1, 2]
    store.close()
    again = Store(tmp_path / "X.sqlite")
    assert again.next_cycle() == 3 and again.next_cycles(3) == [4, 5, 6]

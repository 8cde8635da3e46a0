"""The leader's store: what client order ids derive from is durable and never handed out twice."""

from __future__ import annotations

import re
from pathlib import Path

from naived.store import Store


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

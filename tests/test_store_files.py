"""Stores must be naive's (issue 20, item 5): every SQLite file naive keeps carries a header; an
empty or foreign file is a corrupt store (the symbol fails with the reason, the file is left as
it is), a missing one is new, and a store written before the header existed still opens."""

from __future__ import annotations

import contextlib
import sqlite3
from decimal import Decimal
from pathlib import Path

import msgspec
import psutil
import pytest
from harness import RESTING_QUICK_FAILURE, Tree, open_buys, tree_pids, wait_for

from naived.core.messages import Settings, TraderState
from naived.paper.book import PAPER_STORE, PaperBook
from naived.store.sqlfile import NotOurs
from naived.store.sqlite import SYMBOL_STORE, Store

# What naived/store/sqlite.py wrote before stores carried a header (its schema has not changed since).
OLD_SYMBOL_SCHEMA = """
CREATE TABLE traders (trader_id INTEGER PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE cycles (cycle INTEGER PRIMARY KEY, trader_id INTEGER NOT NULL, state TEXT NOT NULL, finished_at REAL NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def gone_or_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def header(path: Path) -> tuple[int, int]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute("PRAGMA application_id").fetchone()[0], db.execute("PRAGMA user_version").fetchone()[0]


def foreign_database(path: Path) -> bytes:
    """Someone else's SQLite file (here: one with a `meta` table too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript("CREATE TABLE meta (key TEXT, value TEXT); CREATE TABLE photos (id INTEGER, jpeg BLOB);"
                         "INSERT INTO meta VALUES ('owner', 'someone else');")
    return path.read_bytes()


def test_a_new_store_carries_naives_header(tmp_path: Path) -> None:
    path = tmp_path / "symbols" / "XRPUSDT.sqlite"
    Store(path).close()
    assert header(path) == (SYMBOL_STORE.application_id, 1)
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.parametrize("content", ["empty", "foreign", "paper"])
def test_an_empty_or_foreign_file_is_refused_untouched(tmp_path: Path, content: str) -> None:
    path = tmp_path / "XRPUSDT.sqlite"
    if content == "empty":
        path.write_bytes(b"")
    elif content == "foreign":
        foreign_database(path)
    else:  # another kind of naive file is not a symbol store either
        PaperBook(path, {"USDT": Decimal(1)}).close()
    before = path.read_bytes()
    with pytest.raises(NotOurs) as refused:
        Store(path)
    assert {"empty": "empty (0 bytes)", "foreign": "not a symbol store naive wrote",
            "paper": "naive's paper exchange database, not a symbol store"}[content] in str(refused.value)
    assert path.read_bytes() == before
    with pytest.raises(NotOurs):
        Store(path, readonly=True)  # the history reader refuses it too


def test_a_store_from_before_the_header_opens_and_is_stamped(tmp_path: Path) -> None:
    path = tmp_path / "XRPUSDT.sqlite"
    settings = Settings("XRPUSDT", 1, "100", "0", "0.001", "0.01", "0.0001", "1", "1", "5", "XRP", "USDT")
    state = TraderState("XRPUSDT", 0, 7, settings, status="buying", id_prefix="nvold123")
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(OLD_SYMBOL_SCHEMA)
        db.execute("INSERT INTO meta VALUES ('id_prefix', 'nvold123'), ('last_cycle', '7')")
        db.execute("INSERT INTO traders VALUES (0, ?, 0)", (msgspec.json.encode(state).decode(),))
    assert header(path) == (0, 0)
    readonly = Store(path, readonly=True)  # a reader beside the leader accepts it as it is
    assert readonly.finished_cycles() == []
    readonly.close()
    store = Store(path)
    assert store.id_prefix() == "nvold123" and store.traders() == {0: state} and store.next_cycle() == 8
    store.close()
    assert header(path) == (SYMBOL_STORE.application_id, 1)


def test_the_paper_exchange_refuses_an_empty_file_and_opens_an_old_one(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with pytest.raises(SystemExit) as refused:
        PaperBook(empty, {"USDT": Decimal(100)})
    assert "empty (0 bytes)" in str(refused.value) and "move it aside" in str(refused.value)
    assert empty.read_bytes() == b""

    old = tmp_path / "old.sqlite"
    book = PaperBook(old, {"USDT": Decimal(100)})
    book.close()
    with contextlib.closing(sqlite3.connect(old, isolation_level=None)) as db:  # as naive wrote it before the header
        db.execute("PRAGMA application_id = 0")
        db.execute("PRAGMA user_version = 0")
    again = PaperBook(old, {"USDT": Decimal(5)})
    assert again.balances["USDT"].free == Decimal(100)
    again.close()
    assert header(old) == (PAPER_STORE.application_id, 1)


@pytest.mark.sqlite_only("symbols' store files emptied and replaced")
def test_an_emptied_store_and_a_foreign_one_fail_their_symbols_only(tmp_path: Path) -> None:
    """The failure of item 5: a store truncated to 0 bytes opened as a new one (new prefix, cycles
    counted from 1, its orders and positions owned by nobody) without a word."""
    tree = Tree(tmp_path, RESTING_QUICK_FAILURE)
    symbols = tmp_path / "state" / "symbols"
    try:
        tree.start_streamer()
        tree.start_naived()
        for symbol in ("XRPUSDT", "BTCUSDT"):
            assert tree.ctl("start-trading", symbol).returncode == 0
        open_buys(tree, "BTCUSDT", 2)
        pids = tree_pids({"pid": 0, "symbols": [tree.symbol("BTCUSDT")]})[1:]
        assert tree.ctl("stop-trading", "BTCUSDT").returncode == 0
        wait_for("BTCUSDT's processes to end", lambda: all(gone_or_zombie(pid) for pid in pids))
        (symbols / "BTCUSDT.sqlite").write_bytes(b"")  # truncated; its WAL files stay as they were
        foreign = foreign_database(symbols / "ETHUSDT.sqlite")

        for symbol in ("BTCUSDT", "ETHUSDT"):
            wait_for(f"{symbol} to start", lambda symbol=symbol: tree.ctl("start-trading", symbol).returncode == 0)
        emptied = wait_for("BTCUSDT to fail", lambda: (s := tree.symbol("BTCUSDT")) and s["state"] == "failed" and s)
        assert "BTCUSDT.sqlite is unreadable (it is empty (0 bytes)" in emptied["error"], emptied["error"]
        assert "left as it is" in emptied["error"] and "move it" in emptied["error"]
        other = wait_for("ETHUSDT to fail", lambda: (s := tree.symbol("ETHUSDT")) and s["state"] == "failed" and s)
        assert "ETHUSDT.sqlite is unreadable (not a symbol store naive wrote" in other["error"], other["error"]

        assert (symbols / "BTCUSDT.sqlite").read_bytes() == b""
        assert (symbols / "ETHUSDT.sqlite").read_bytes() == foreign
        open_buys(tree, "XRPUSDT", 2)  # the other symbol trades on
        assert tree.symbol("XRPUSDT")["state"] == "running" and tree.naived.poll() is None
    finally:
        tree.stop()


def test_a_store_moved_aside_without_its_journal_is_not_replayed_into_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "XRPUSDT.sqlite"
    store = Store(path)
    prefix = store.id_prefix()  # committed to the WAL; the open connection keeps it there
    path.rename(tmp_path / "aside.sqlite")  # only the main file moved
    assert Path(f"{path}-wal").exists()
    with pytest.raises(NotOurs) as refused:
        Store(path)
    assert "XRPUSDT.sqlite-wal" in str(refused.value) and not path.exists()
    store.close()
    assert prefix

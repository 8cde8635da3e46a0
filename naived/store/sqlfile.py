"""Every SQLite file naive keeps is one naive wrote: a header says so, and it is checked on open.

How a file is recognised (`open_db`):

- It does not exist: a new store, unless its journal (`-wal`, `-journal`) is there without it
  (a store moved aside without its log: SQLite would replay it onto the new file), which is
  corrupt. A new store is built whole under a temporary name (schema and header in
  one commit, fsynced) and linked into place, so a crash never leaves a half-made file under the
  real name: an empty file there can only be damage.
- It exists and is empty (0 bytes): corrupt (a truncated store: every order it owned would be
  silently forgotten under a new prefix). Nothing is opened, nothing written.
- Its header: SQLite's `application_id` (a 4-byte code per kind of file, `Kind.application_id`)
  and `user_version` (the schema version). Ours and of this kind: opened. Written by a newer
  naive (a higher version): refused. Another application's (or another kind of naive file): corrupt.
- No header (application_id 0): a store written before naive stamped its files, recognised by its
  tables (`Kind.legacy_tables`), is stamped and opened; anything else (a foreign database, a
  database with no tables) is corrupt. A read-only open accepts it unstamped.

"Corrupt" is `NotOurs`, an `sqlite3.DatabaseError`: callers handle it as they handle a file
SQLite cannot read (the symbol is marked failed with the reason, the file is left as it is).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _code(tag: bytes) -> int:
    return int.from_bytes(tag, "big")  # ASCII: below 2^31, a positive application_id


@dataclass(frozen=True)
class Kind:
    name: str  # for messages: "symbol store"
    application_id: int
    version: int  # user_version of the schema this naive writes
    schema: str  # CREATE TABLE IF NOT EXISTS ... statements
    legacy_tables: frozenset[str] = frozenset()  # tables of an unstamped store of this kind; empty: none exist


KINDS: dict[int, str] = {}  # application_id -> name, to say what a file of another kind is


def kind(name: str, tag: bytes, version: int, schema: str, legacy_tables: frozenset[str] = frozenset()) -> Kind:
    k = Kind(name, _code(tag), version, schema, legacy_tables)
    KINDS[k.application_id] = name
    return k


class NotOurs(sqlite3.DatabaseError):
    """The file is not a store of this kind that naive wrote: corrupt, never written to."""


def open_db(path: Path, kind: Kind, *, readonly: bool = False, **connect: Any) -> sqlite3.Connection:
    """Connect to a store of `kind` at `path`, creating it if it does not exist (module docstring).
    Raises `NotOurs` (or another sqlite3.Error) without writing to a file it refuses."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        if readonly:
            raise
        for journal in (Path(f"{path}-wal"), Path(f"{path}-journal")):
            # SQLite would replay a lost store's log onto the new file: the old store, half back.
            if journal.exists():
                raise NotOurs(f"the file is missing but its journal {journal.name} is there: a store moved or deleted "
                              f"without it; move {journal.name} (and any -shm) along with it") from None
        _create(path, kind)
        size = -1
    if size == 0:
        raise NotOurs(f"it is empty (0 bytes): not a {kind.name} naive wrote")
    target = f"file:{path}?mode=ro" if readonly else str(path)
    db: sqlite3.Connection = sqlite3.connect(target, uri=readonly, isolation_level=None, **connect)
    try:
        _check(db, kind, readonly)
    except BaseException:
        db.close()
        raise
    return db


def _check(db: sqlite3.Connection, kind: Kind, readonly: bool) -> None:
    app = db.execute("PRAGMA application_id").fetchone()[0]  # "file is not a database" for garbage
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if app == kind.application_id:
        if version > kind.version:
            raise NotOurs(f"written by a newer naive ({kind.name} schema {version}; this one knows {kind.version})")
        if version < kind.version and not readonly:
            _stamp(db, kind)  # no migration yet between versions: the schema statements add what is new
        return
    if app != 0:
        other = KINDS.get(app)
        raise NotOurs(f"its application_id {app:#010x} is " + (f"naive's {other}" if other else "not naive's")
                      + f", not a {kind.name}")
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not kind.legacy_tables or not kind.legacy_tables <= tables:
        found = ", ".join(sorted(tables)) or "none"
        raise NotOurs(f"not a {kind.name} naive wrote (no naive header; tables: {found})")
    if not readonly:
        _stamp(db, kind)
        log.info("%s: a %s from before naive stamped its files: stamped (application_id, schema %d)",
                 db.execute("PRAGMA database_list").fetchone()[2], kind.name, kind.version)


def _stamp(db: sqlite3.Connection, kind: Kind) -> None:
    """Schema and header in one transaction: a crash leaves the file as it was, or stamped."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in kind.schema.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA application_id = {kind.application_id}")
        db.execute(f"PRAGMA user_version = {kind.version}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _create(path: Path, kind: Kind) -> None:
    """A new store, whole: built as a temporary file (fsynced at its commit) and linked into place;
    if another process made it meanwhile, theirs is kept."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # a predecessor with our pid died half way
    db = sqlite3.connect(tmp, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous=FULL")  # rollback journal: the commit fsyncs the file
        _stamp(db, kind)
    finally:
        db.close()
    try:
        os.link(tmp, path)  # never replaces a file that appeared meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

"""Generic fixtures shared by every test module; keep module-specific helpers out of here."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
import pytest
from pg import PgServer, running_server, server_bin_dir

from naived.ops.listen import free_ports

# The store the trees of tests/harness.py keep their state in: `sqlite` (the default) or `postgresql`
# (NAIVE_TEST_STORE=postgresql: every Tree's naived on a schema of its own on the session's server; .ci/run
# runs the tree-level tests so a second time). Tests marked sqlite_only look at SQLite's files themselves.
TREE_STORE = os.environ.get("NAIVE_TEST_STORE", "sqlite")
if TREE_STORE not in ("sqlite", "postgresql"):
    raise pytest.UsageError(f"NAIVE_TEST_STORE: sqlite or postgresql, got {TREE_STORE!r}")


def pytest_report_header() -> str:
    return f"trees' store: {TREE_STORE} (NAIVE_TEST_STORE)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if TREE_STORE == "sqlite":
        return
    for item in items:
        if (marker := item.get_closest_marker("sqlite_only")) is not None:
            why = marker.args[0] if marker.args else "it looks at the SQLite store's files"
            item.add_marker(pytest.mark.skip(reason=f"SQLite-specific: {why} (NAIVE_TEST_STORE={TREE_STORE})"))


@pytest.fixture(autouse=True)
def tree_store(request: pytest.FixtureRequest) -> Iterator[None]:
    """NAIVE_TEST_STORE=postgresql: every Tree this test makes keeps its state in PostgreSQL, a schema
    per tree directory (harness.store_dsn), on the session's server, started at the first Tree."""
    if TREE_STORE == "sqlite":
        yield
        return
    schemas: dict[Path, str] = {}

    def dsn(directory: Path) -> str:
        key = directory.resolve()
        if key not in schemas:
            schemas[key] = new_schema(request.getfixturevalue("postgres"))
        return schemas[key]

    harness.store_dsn = dsn
    try:
        yield
    finally:
        harness.store_dsn = None


def new_schema(server: PgServer) -> str:
    """The role naive's DSN onto a new, empty schema: tests share the server, never a table."""
    import psycopg

    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}".encode())
    return server.dsn(options=f"-c search_path={schema}")


@pytest.fixture
def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path, for tools that make their own sockets in it
    (pytest's tmp_path is too long for a Unix socket's 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="nd-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """A real PostgreSQL server for the whole run (tests/pg.py), started by the first test that asks
    (about 0.6 s). One that cannot start fails every test that needs it, with its log: never a skip."""
    if server_bin_dir() is None:
        missing_service("PostgreSQL's server programs (initdb, pg_ctl) are not installed: apt-get install postgresql")
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_server())
        except RuntimeError as exc:
            pytest.fail(f"PostgreSQL did not start: {exc}", pytrace=False)
        yield server


def missing_service(reason: str) -> None:
    """A service a test needs cannot be had on this machine: in CI (`.ci/run` sets NAIVE_CI=1) the test
    fails; on a developer's machine it is skipped, saying what to install."""
    if os.environ.get("NAIVE_CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def pg_dsn(postgres: PgServer) -> str:
    """The role naive's DSN onto a schema of this test's own (empty, not migrated): tests share the
    server, never a table."""
    return new_schema(postgres)


@pytest.fixture
def pg_db(pg_dsn: str) -> Iterator[Any]:
    """A connection (autocommit) onto this test's own schema, migrated to naive's latest version."""
    from naived.store import pgschema
    from naived.store.postgres import connect

    conn = connect(pg_dsn)
    pgschema.migrate(conn)
    yield conn
    conn.close()

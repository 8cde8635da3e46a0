"""Host faults while the symbols trade (tests/cluster_chaos.py): nothing lost, nothing doubled."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import cluster_chaos
from test_cluster_faults import prerequisites


def test_hosts_killed_and_frozen_mid_trade_lose_and_double_nothing(tmp_path: Path, pg_dsn: str) -> None:
    with cluster_chaos.local_fleet(tmp_path, pg_dsn, ["h1", "h2", "h3"], cluster_chaos.SYMBOLS, 3, (3.0, 1.0, 0.5)) as fleet:
        report = cluster_chaos.run(fleet, faults=4, seed=3)
    print(report.summary())
    assert not report.checks.problems, report.summary()
    assert sum(report.faults.values()) == 4
    assert report.checks.cycles > 0  # cycles finished: fills crossed the faults


def test_hosts_cut_off_killed_frozen_and_the_database_killed_in_namespaces_lose_and_double_nothing() -> None:
    """The same, each host in its own network namespace, so a host can also be cut off mid-trade,
    and the database killed: one fault of each kind."""
    prerequisites()
    directory = Path(tempfile.mkdtemp(prefix="nd-c-"))  # short: the hosts' Unix sockets live under it
    try:
        with cluster_chaos.net_fleet(directory, 3, cluster_chaos.SYMBOLS, 5, (3.0, 1.0, 0.5)) as fleet:
            report = cluster_chaos.run(fleet, faults=4, seed=5)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(report.summary())
    assert not report.checks.problems, report.summary()
    assert report.faults == {"kill": 1, "freeze": 1, "cut": 1, "db": 1}
    assert report.checks.cycles > 0

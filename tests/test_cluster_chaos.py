"""Host faults while the symbols trade (tests/cluster_chaos.py): nothing lost, nothing doubled."""

from __future__ import annotations

from pathlib import Path

import cluster_chaos


def test_hosts_killed_and_frozen_mid_trade_lose_and_double_nothing(tmp_path: Path, pg_dsn: str) -> None:
    report = cluster_chaos.run(tmp_path, pg_dsn, faults=4, seed=3)
    print(report.summary())
    assert not report.checks.problems, report.summary()
    assert sum(report.faults.values()) == 4
    assert report.checks.cycles > 0  # cycles finished: fills crossed the faults

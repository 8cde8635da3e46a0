"""Issue 5: kill -9 anything of the tree, many times, while it trades; no order lost or placed twice.

Real processes (streamerd replaying the BTCUSDT tape of `samples/`;
naived, its paper exchange with seeded fault injection). See `tests/chaos.py` for the killer,
the settling and the invariants; `bench/chaos.py` runs the same for as many kills as asked.
"""

from __future__ import annotations

from pathlib import Path

import chaos

KILLS = 100


def test_no_order_lost_or_duplicated_under_kill_9(tmp_path: Path) -> None:
    report = chaos.run(tmp_path, kills=KILLS, seed=5, pause=(0.02, 0.4), partial_fills=True)
    print(report.summary())
    assert report.killed >= 50
    assert not report.problems, report.summary() + f"\nlogs in {tmp_path}"
    assert report.cycles > 0, "no cycle finished: the market did not trade"

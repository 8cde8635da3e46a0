"""The one rate-limited warning log (naived/ops/ratelog.py) every boundary logs its drops with."""

from __future__ import annotations

import logging

import pytest

from naived.ops.ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_at_once_then_one_summary_by_reason_then_quiet(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rl = RateLimitedLog(logging.getLogger("ratelog-test"), "XRPUSDT/0", "frames dropped", every=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="ratelog-test"):
        rl.warning("band", "dropped a frame (%s)", "band")
        assert [r.getMessage() for r in caplog.records] == ["XRPUSDT/0: dropped a frame (band) (more are summed up every 10s)"]
        for reason in ["band"] * 3 + ["topic"] * 2:
            rl.warning(reason, "dropped a frame (%s)", reason)
        assert len(caplog.records) == 1 and rl.deadline() == 1010.0  # held back, a summary due
        clock.now = 1009.9
        rl.flush()
        assert len(caplog.records) == 1  # not yet due
        clock.now = 1010.0
        rl.flush()
        assert caplog.records[-1].getMessage() == "XRPUSDT/0: 5 more frames dropped (band 3, topic 2)"
        assert rl.deadline() is None
        rl.flush()
        assert len(caplog.records) == 2  # told once
        # Within the next window: held back again; its summary comes with the next warning past it
        clock.now = 1015.0
        rl.warning("band", "dropped a frame (%s)", "band")
        clock.now = 1021.0
        rl.warning("band", "dropped a frame (%s)", "band")
        assert caplog.records[-1].getMessage() == "XRPUSDT/0: 2 more frames dropped (band 2)"
        # A quiet spell: the next one is logged in full again
        clock.now = 1040.0
        rl.warning("topic", "dropped a frame (%s)", "topic")
        assert caplog.records[-1].getMessage().startswith("XRPUSDT/0: dropped a frame (topic)")
        assert len(caplog.records) == 4

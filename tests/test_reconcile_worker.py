"""A leader's reconcile worker when the exchange does not answer: one log line, exit 1, no traceback.

A hundred symbols restarting at once (a cluster host adopting, the database back) spend the host's
read budget; their reconcile workers used to crash with a traceback each. The worker runs here in
this process, against a paper exchange address nobody listens on, and against a spent budget."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from harness import free_port

from naived.core.config import Config, parse_config
from naived.exchange import binance
from naived.exchange.budget import Limits, LocalBudget
from naived.tree import workers


def config_for(tmp_path: Path) -> Config:
    return parse_config(f'[paths]\nruntime_dir = "{tmp_path}"\nstate_dir = "{tmp_path / "state"}"\n'
                        f'[paper]\nport = {free_port()}\n'.encode())


def test_an_exchange_that_does_not_answer_is_one_line_and_exit_1(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert workers.reconcile_symbol(config_for(tmp_path), "XRPUSDT") == 1
    lines = [r for r in caplog.records if "reconcile XRPUSDT" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert "next time" in lines[0].getMessage()


def test_a_spent_read_budget_is_one_line_and_exit_1(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    spent = LocalBudget(Limits(weight_per_minute=1))
    made = binance.client_for

    def client(config: Config) -> binance.BinanceClient:
        c = made(config)
        c.budget = spent
        return c

    monkeypatch.setattr(binance, "client_for", client)
    with caplog.at_level(logging.WARNING):
        assert workers.reconcile_symbol(config_for(tmp_path), "XRPUSDT") == 1
    lines = [r.getMessage() for r in caplog.records if "reconcile XRPUSDT" in r.getMessage()]
    assert len(lines) == 1 and "budget" in lines[0], lines

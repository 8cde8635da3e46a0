"""`--jobs N`: a sweep's settings in N processes, over the input read once.

The parent reads and checks the input (`columns.read`) before it forks: every child shares the
columns copy-on-write, runs whole settings (`engine.drive`) and sends back its `Report` (a
msgspec Struct: plain data). Results come
back in the settings' order whatever the order the processes finish in, so a parallel sweep
prints what a serial one prints. The backtest uses no ZeroMQ and no threads: forking it is safe.
"""

from __future__ import annotations

import multiprocessing
from typing import TYPE_CHECKING

from naived.backtest.columns import Checked
from naived.core.config import Config

if TYPE_CHECKING:
    from naived.backtest.report import Report

_shared: tuple[Checked, list[str], list[str] | None, bool] | None = None  # set before the fork, read by the children


def _one(chosen: Config) -> Report:
    from naived.backtest.engine import Backtest, drive

    assert _shared is not None
    trades, paths, symbols, every_trade = _shared
    bt = Backtest(chosen, symbols)
    drive(bt, trades, every_trade)
    return bt.report(paths, read=trades.summary)


def sweep(settings: list[tuple[dict[str, str], Config]], trades: Checked, paths: list[str], symbols: list[str] | None,
          every_trade: bool, jobs: int) -> list[tuple[dict[str, str], Report]]:
    """The report of each setting, in the settings' order."""
    global _shared
    _shared = (trades, paths, symbols, every_trade)
    try:
        with multiprocessing.get_context("fork").Pool(min(jobs, len(settings))) as pool:
            done = pool.map(_one, [chosen for _, chosen in settings], chunksize=1)
    finally:
        _shared = None
    return [(changes, report) for (changes, _), report in zip(settings, done, strict=True)]

"""The backtest's input: the trades of recorded files, merged by time."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator

from naived.backtest.errors import BacktestError
from naived.core.messages import TradeEvent
from naived.market.tape import NamelessCsv, Progress, ReadCounts, TapeError, check_files, read_file


def read_trades(paths: Iterable[str], stats: ReadCounts | None = None) -> tuple[Iterator[TradeEvent], Callable[[], float]]:
    """The trades of every file, merged by time as streamerd's replay merges them (the same
    reader: recorded `<ns> <json>` tapes and data.binance.vision CSVs, ms or µs), and a
    function giving the fraction of the input read so far (for the progress bar)."""
    try:
        files = check_files(list(paths))
    except NamelessCsv as exc:  # streamerd's replay (--through-tree) reads a CSV's symbol from its name only
        raise BacktestError(f"{exc}: rename it SYMBOL-trades-....csv (--symbol names it only without "
                            "--through-tree)") from None
    except TapeError as exc:
        raise BacktestError(str(exc)) from None
    stats = stats or ReadCounts()
    progress = Progress()
    streams = [read_file(p, i, stats, progress) for i, p in enumerate(files)]
    merged = streams[0] if len(streams) == 1 else heapq.merge(*streams)
    return (item[2] for item in merged), progress.ratio

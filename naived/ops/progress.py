"""A one-line progress bar on stderr, drawn only when stderr is a terminal (never into a pipe
or a log), at most five times a second."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

REDRAW_SECONDS = 0.2


class ProgressBar:
    """`label [#####     ]  40% 1,234 trades`: the fraction from `ratio`, the count from `update`."""

    def __init__(self, label: str, ratio: Callable[[], float]) -> None:
        self.label = label
        self.ratio = ratio
        self.enabled = sys.stderr.isatty()
        self.drawn_at = 0.0

    def update(self, trades: int) -> None:
        now = time.monotonic()
        if now - self.drawn_at < REDRAW_SECONDS:
            return
        self.drawn_at = now
        ratio = self.ratio()
        sys.stderr.write(f"\r{self.label} [{'#' * int(ratio * 30):<30}] {ratio:4.0%} {trades:,} trades")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

"""Warnings at a bounded rate: a peer that misbehaves a thousand times a second costs the log a
line now and then, never a line per event.

The first warning after a quiet spell is logged at once, in full. Later ones are counted by
reason and summed up in one line once `every` seconds have passed since the last line: by the
next warning, or by `flush()` from an owner whose loop also waits until `deadline()` (a trader
and the paper exchange's feed do, so the end of a burst is always told, not only the next one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

EVERY_SECONDS = 10.0


class RateLimitedLog:
    """One owner's warnings of one family (`what`, e.g. "market frames dropped"), by reason."""

    def __init__(self, logger: logging.Logger, who: str, what: str, every: float = EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.clock = clock
        self.who = who  # the line's subject: "XRPUSDT/0", "paper exchange", "metrics"
        self.what = what
        self.every = every
        self.pending: dict[str, int] = {}
        self.next_line = 0.0  # monotonic: the first warning is logged at once

    def warning(self, reason: str, message: str, *args: object) -> None:
        """`message % args`, prefixed by `who`, now if nothing was held back within `every`
        seconds; else counted under `reason` for the next summary."""
        now = self.clock()
        if now >= self.next_line and not self.pending:
            self.logger.warning(f"%s: {message} (more are summed up every %gs)", self.who, *args, self.every)
            self.next_line = now + self.every
            return
        self.pending[reason] = self.pending.get(reason, 0) + 1
        self.flush(now)

    def deadline(self) -> float | None:
        """When a pending summary is due (monotonic), or None."""
        return self.next_line if self.pending else None

    def flush(self, now: float | None = None) -> None:
        """Write the summary of what was held back, if it is due."""
        now = self.clock() if now is None else now
        if not self.pending or now < self.next_line:
            return
        total = sum(self.pending.values())
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.pending.items()))
        self.logger.warning("%s: %d more %s (%s)", self.who, total, self.what, reasons)
        self.pending.clear()
        self.next_line = now + self.every

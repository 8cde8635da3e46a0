"""Replay recorded trades (`naived.market.tape` reads them: data.binance.vision CSVs and raw
websocket tapes).

Several files are merged by time. The replay starts when something is wanted
(a subscriber, or symbols in the config), so a subscriber that starts it sees
the tape from its first trade; trades are published whatever their symbol (the
XPUB drops those nobody subscribed to). When it ends the daemon idles, so
subscribers stay connected.
"""

from __future__ import annotations

import heapq
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from naived.market.tape import Progress, Timed, read_file
from streamerd.daemon import Emit
from streamerd.publisher import Stats

log = logging.getLogger(__name__)

BATCH = 2000  # events per loop turn at full speed, so subscriptions and signals stay responsive


class ReplaySource:
    name = "replay"

    def __init__(self, emit: Emit, stats: Stats, files: list[Path], speed: float) -> None:
        self.emit = emit
        self.stats = stats
        self.files = files
        self.speed = speed
        self.progress = Progress()
        self.events: Iterator[Timed] | None = None
        self.pending: Timed | None = None
        self.start_wall = 0.0
        self.start_data = 0
        self.count = 0
        self.finished = False
        self.tty = sys.stderr.isatty()
        self._drawn_at = 0.0

    def set_wanted(self, symbols: set[str]) -> None:
        if symbols and self.events is None:
            log.info("replay: start (%s, speed %s)", ", ".join(map(str, self.files)),
                     "max" if self.speed == 0 else f"x{self.speed:g}")
            streams = [read_file(p, i, self.stats, self.progress) for i, p in enumerate(self.files)]
            self.events = heapq.merge(*streams)
            self.pending = next(self.events, None)
            self.start_wall = time.monotonic()
            self.start_data = self.pending[0] if self.pending else 0

    def fds(self) -> list[int]:
        return []

    def on_readable(self, fd: int) -> None:
        pass

    def _due(self, item: Timed) -> float:
        return self.start_wall + (item[0] - self.start_data) / 1e9 / self.speed

    def next_deadline(self) -> float | None:
        if self.pending is None:
            return None
        return 0.0 if self.speed == 0 else self._due(self.pending)

    def on_timer(self, now: float) -> None:
        assert self.events is not None
        for _ in range(BATCH):
            item = self.pending
            if item is None:
                break
            if self.speed and self._due(item) > now:
                break
            self.stats.events_in += 1
            self.count += 1
            self.emit(item[2], item[3])
            self.pending = next(self.events, None)
        if self.tty:
            self._draw(now)
        if self.pending is None and not self.finished:
            self.finished = True
            if self.tty:
                sys.stderr.write("\r\033[K")
            log.info("replay finished: %d trades", self.count)

    def _draw(self, now: float) -> None:
        if now - self._drawn_at < 0.2:
            return
        self._drawn_at = now
        ratio = self.progress.ratio()
        bar = "#" * int(ratio * 30)
        sys.stderr.write(f"\rreplay [{bar:<30}] {ratio:4.0%} {self.count} trades")
        sys.stderr.flush()

    def close(self) -> None:
        if self.events is not None and hasattr(self.events, "close"):
            self.events.close()

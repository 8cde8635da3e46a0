"""The main loop: one thread, one zmq Poller over the XPUB socket, the source's
file descriptors and a signal wake-up pipe; timers are deadlines, never sleeps.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Callable, Protocol

import zmq

from naived.messages import TradeEvent
from streamerd.publisher import Demand, Publisher, Stats

log = logging.getLogger(__name__)


class Source(Protocol):
    """Where trades come from. Everything runs on the main loop's thread."""

    name: str

    def set_wanted(self, symbols: set[str]) -> None:
        """The symbols subscribers (or the config) want right now."""

    def fds(self) -> list[int]:
        """File descriptors to watch for reading (may change between calls)."""

    def on_readable(self, fd: int) -> None: ...

    def next_deadline(self) -> float | None:
        """When (time.monotonic()) `on_timer` should run next; None = no timer."""

    def on_timer(self, now: float) -> None: ...

    def close(self) -> None: ...


Emit = Callable[[TradeEvent], None]


class Daemon:
    def __init__(self, endpoint: str, demand: Demand, make_source: Callable[[Emit, Stats], Source]) -> None:
        self.stats = Stats()
        self.ctx = zmq.Context()
        self.publisher = Publisher(self.ctx, endpoint, self.stats)
        self.demand = demand
        self.source = make_source(self.publisher.publish, self.stats)
        self._stop = False

    def run(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_fd = signal.set_wakeup_fd(wake_w)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        poller = zmq.Poller()
        poller.register(self.publisher.socket, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)
        watched: set[int] = set()
        try:
            self.source.set_wanted(self.demand.wanted)
            while not self._stop:
                watched = self._sync_fds(poller, watched)
                for item, _ in poller.poll(self._timeout_ms()):
                    if item is self.publisher.socket:
                        if self.demand.apply(self.publisher.subscription_changes()):
                            self.source.set_wanted(self.demand.wanted)
                    elif item == wake_r:
                        _drain(wake_r)
                    elif item in watched:
                        self.source.on_readable(item)
                now = time.monotonic()
                if self.demand.expire(now):
                    self.source.set_wanted(self.demand.wanted)
                deadline = self.source.next_deadline()
                if deadline is not None and deadline <= now:
                    self.source.on_timer(now)
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
            self.close()

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        self._stop = True

    def _timeout_ms(self) -> int | None:
        deadlines = [d for d in (self.demand.next_deadline(), self.source.next_deadline()) if d is not None]
        if not deadlines:
            return None
        return max(0, int((min(deadlines) - time.monotonic()) * 1000 + 0.999))

    def _sync_fds(self, poller: zmq.Poller, watched: set[int]) -> set[int]:
        current = set(self.source.fds())
        for fd in watched - current:
            poller.unregister(fd)
        for fd in current - watched:
            poller.register(fd, zmq.POLLIN)
        return current

    def close(self) -> None:
        self.source.close()
        self.publisher.close()
        self.ctx.term()
        log.info("stopped: %s", self.stats.line())


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass

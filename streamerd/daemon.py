"""The main loop: one thread, one zmq Poller over the XPUB socket, the source's
file descriptors and a signal wake-up pipe; timers are deadlines, never sleeps.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Protocol

import zmq

from naived.core.messages import TradeEvent
from naived.ops import sdnotify
from naived.ops.metrics import Metrics, MetricsEndpoint
from streamerd.publisher import Demand, Publisher, Stats
from streamerd.recorder import Recorder

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


class Emit(Protocol):
    """Publish a trade; `raw` is the frame as the exchange sent it, when the source has it
    (the recorder writes it as it came)."""

    def __call__(self, event: TradeEvent, raw: bytes | None = None) -> None: ...


class Daemon:
    def __init__(
        self, endpoint: str, demand: Demand, make_source: Callable[[Emit, Stats], Source], metrics_port: int = 0,
        recorder: Recorder | None = None,
    ) -> None:
        self.stats = Stats()
        self.ctx = zmq.Context()
        self.publisher = Publisher(self.ctx, endpoint, self.stats)
        self.demand = demand
        self.recorder = recorder
        self.source = make_source(self._emit(), self.stats)
        self._stop = False
        self.watchdog = sdnotify.Watchdog()
        self.metrics = MetricsEndpoint(metrics_port, self.collect_metrics) if metrics_port else None

    def _emit(self) -> Emit:
        publish = self.publisher.publish
        if self.recorder is None:
            return publish  # no extra call on the hot path when not recording
        record = self.recorder.record

        def publish_and_record(event: TradeEvent, raw: bytes | None = None) -> None:
            publish(event)
            record(event, raw)

        return publish_and_record

    def run(self) -> None:
        if self.recorder is not None:
            self.recorder.start()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_fd = signal.set_wakeup_fd(wake_w)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        poller = zmq.Poller()
        poller.register(self.publisher.socket, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)
        if self.metrics is not None:
            poller.register(self.metrics.fd, zmq.POLLIN)
        watched: set[int] = set()
        sdnotify.notify("READY=1", f"STATUS=publishing {self.source.name} on {self.publisher.endpoint}")
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
                    elif self.metrics is not None and item == self.metrics.fd:
                        self.metrics.serve()
                    elif item in watched:
                        self.source.on_readable(item)
                now = time.monotonic()
                if self.metrics is not None:
                    self.metrics.tick(now)
                if self.demand.expire(now):
                    self.source.set_wanted(self.demand.wanted)
                deadline = self.source.next_deadline()
                if deadline is not None and deadline <= now:
                    self.source.on_timer(now)
                if self.recorder is not None:
                    self.recorder.hand_over()  # once per turn: the writer thread takes it from here
                # Pinged here, between turns of this loop and nowhere else: a loop stuck in
                # a source call stops the pings, and systemd restarts streamerd.
                self.watchdog.tick()
        finally:
            sdnotify.notify("STOPPING=1")
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
        metrics = self.metrics.next_deadline() if self.metrics is not None else None
        candidates = (self.demand.next_deadline(), self.source.next_deadline(), self.watchdog.deadline(), metrics)
        deadlines = [d for d in candidates if d is not None]
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

    def collect_metrics(self) -> str:
        m = Metrics()
        for name, help_text in (
            ("events_in", "trades received from the source"),
            ("events_out", "trades published"),
            ("duplicates", "trades dropped as duplicates (connection handover)"),
            ("gaps", "gaps in trade ids"),
            ("missing", "trade ids skipped by gaps"),
            ("filled", "skipped trade ids fetched from the REST API into the tape"),
            ("unfilled", "skipped trade ids written into the tape as gap lines"),
            ("malformed", "frames that were not a trade and not expected"),
            ("refused", "trades refused: price or quantity not a positive decimal"),
            ("truncated", "replayed gzip files cut short (read up to the cut)"),
        ):
            m.add(f"naive_streamer_{name}_total", "counter", help_text, getattr(self.stats, name))
        now = time.monotonic()
        for symbol, at in sorted(self.publisher.last_trade.items()):
            m.add("naive_streamer_seconds_since_last_trade", "gauge", "age of the last trade published", round(now - at, 3),
                  symbol=symbol)
        for symbol in sorted(self.demand.wanted):
            m.add("naive_streamer_streaming", "gauge", "1 for each symbol being streamed", 1, symbol=symbol)
        if self.recorder is not None:
            r = self.recorder.stats
            m.add("naive_streamer_recording", "gauge", "1 while the recorder writes, 0 once an error stopped it",
                  int(self.recorder.active))
            for name, help_text in (
                ("recorded", "trades recorded (flushed to disk)"),
                ("bytes", "compressed bytes recorded"),
                ("dropped", "trades not recorded because the writer was too far behind"),
                ("errors", "write errors (each stops the recorder)"),
                ("deleted", "recorded files deleted to stay within the disk budget"),
            ):
                m.add(f"naive_streamer_record_{name}_total", "counter", help_text, getattr(r, name))
        return m.render()

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        self.source.close()
        if self.recorder is not None:
            self.recorder.close()
        self.publisher.close()
        self.ctx.term()
        log.info("stopped: %s", self.stats.line())


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass

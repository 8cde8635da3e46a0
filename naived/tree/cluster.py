"""What this host may trade in a cluster (the PostgreSQL store), as the root keeps it.

The lease keeper (naived/tree/lease_keeper.py) reports every round which symbols this host holds,
each with its fencing token, its deadline and the trading set's start requests; `Leased` turns each
report into what the root must do (start a symbol, stop one, shut one down, start one afresh: after
a stop-trading and a start-trading, or after a start-trading if it failed) and keeps the deadlines,
so that the root stops a symbol when its deadline passes even if no report comes (a keeper stuck on
an unreachable database). It makes no call and holds no socket: the root's loop owns it, the keeper
does the I/O.
"""

from __future__ import annotations

import time

import msgspec

from naived.core.messages import ClusterStatus, HeldLease, LeasesHeld


class Changes(msgspec.Struct, frozen=True):
    start: list[HeldLease]  # newly held, or held again under a new token (stop the old run first)
    stop: list[str]  # no longer held, or re-tokened
    shut_down: list[str]  # held, and the shared trading set now says shutting-down
    stop_by: dict[str, float] = {}  # each of `stop`: the deadline it was held to (its graceful stop ends by it)
    left: list[str] = []  # of `stop`: no longer in the shared trading set (a stop-trading), not lost or handed off
    # Held on under the same token, but a new run: a stop-trading and a start-trading both came since
    # the last report. As on one host, the old run stops and a new one starts afresh.
    restart: list[HeldLease] = []
    retry: list[HeldLease] = []  # held on, and a start-trading came for it: a failed run starts afresh


class Leased:
    def __init__(self, host_id: str, lease_seconds: float) -> None:
        self.host_id = host_id
        self.lease_seconds = lease_seconds
        self.held: dict[str, HeldLease] = {}
        self.last: LeasesHeld | None = None  # the last report, good or not
        self.last_good: float | None = None  # monotonic time of the last report without an error

    def on_report(self, report: LeasesHeld, now: float) -> Changes:
        """A keeper's round. A lease whose deadline already passed counts as not held: the report
        may have waited in a queue, and trading past the deadline is what the deadline forbids."""
        self.last = report
        if report.error is None:
            self.last_good = now
        new = {h.symbol: h for h in report.held if h.deadline > now}
        stop = sorted(s for s, h in self.held.items() if s not in new or new[s].token != h.token)
        start = [h for s, h in sorted(new.items()) if s not in self.held or self.held[s].token != h.token]
        kept = [(self.held[s], h) for s, h in sorted(new.items()) if s in self.held and self.held[s].token == h.token]
        restart = [h for old, h in kept if h.run != old.run]
        retry = [h for old, h in kept if h.run == old.run and h.generation != old.generation]
        shut_down = sorted(s for s, h in new.items() if h.mode == "shutting-down"
                           and (s not in self.held or self.held[s].mode != "shutting-down"))
        stop_by = {s: self.held[s].deadline for s in stop}
        trading = set(report.trading) if report.trading is not None else None
        left = [s for s in stop if trading is not None and s not in trading]
        self.held = new
        return Changes(start, stop, shut_down, stop_by, left, restart, retry)

    def forget(self, symbol: str) -> None:
        """Not started after all (its last run is still stopping): the next report starts it."""
        self.held.pop(symbol, None)

    def overdue(self, now: float) -> list[str]:
        """The symbols whose deadline has passed, forgotten here: stop them at once."""
        late = sorted(s for s, h in self.held.items() if h.deadline <= now)
        for symbol in late:
            del self.held[symbol]
        return late

    def next_deadline(self) -> float | None:
        return min((h.deadline for h in self.held.values()), default=None)

    def token(self, symbol: str) -> int | None:
        held = self.held.get(symbol)
        return held.token if held else None

    def status(self) -> ClusterStatus:
        last = self.last
        ago = None if self.last_good is None else round(time.monotonic() - self.last_good, 1)
        return ClusterStatus(host_id=self.host_id, hosts=last.hosts if last else [],
                             leases=last.leases if last else [], read_seconds_ago=ago,
                             error=last.error if last else None,
                             lease_seconds=self.lease_seconds)

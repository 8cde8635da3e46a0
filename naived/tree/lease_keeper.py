"""The lease keeper: this host's hold on its symbols in a cluster of hosts on one PostgreSQL.

(Issue 23, in progress: the keeper's rounds are built and tested against a real server; the root
does not start it yet, and no configuration selects the PostgreSQL store yet.)

A child of the root, because every step is a call to the database, which may hang or fail: the
root only supervises (the error kernel), and it learns what is held from the keeper's reports.
Each round, every `renew_seconds`:

1. say the host is alive (the hosts table);
2. renew every lease it holds; a lease it cannot renew is dropped from the report at once;
3. read the shared trading set, the hosts seen within `lease_seconds` and the live leases;
4. follow the placement (naived/core/placement.py): take the free leases of the symbols placed
   here; stop renewing the ones placed elsewhere (a hand-off: this host stops the symbol when it
   leaves the report, and its lease expires by the database's clock before the next holder can
   take it, so the old holder has stopped first);
5. report to the root every lease held, with its token and its *deadline*: `t0 + lease_seconds -
   stop_margin_seconds` on this host's monotonic clock, `t0` taken before the renewal was sent
   (naived/store/leases.py says why the lease cannot expire before `t0 + lease_seconds`).

The root stops a symbol whose deadline passes even if no report comes (a keeper stuck in a call to
an unreachable database): that, not the keeper, is what keeps a cut-off host from trading past its
lease.
"""

from __future__ import annotations

import logging
import time

import msgspec

from naived.core.messages import HeldLease, Holding, Host
from naived.core.placement import plan
from naived.store.leases import Lease, Leases

log = logging.getLogger(__name__)


class Round(msgspec.Struct, frozen=True):
    held: list[HeldLease]
    alive: list[str]  # hosts seen within the lease time, this one included
    hosts: list[Host]  # every registered host, as the database showed them this round
    leases: list[Holding]  # every symbol's lease as read this round (before this round's acquisitions)


class Keeper:
    def __init__(self, leases: Leases, host_id: str, pid: int, lease_seconds: float, stop_margin_seconds: float) -> None:
        self.leases = leases
        self.host_id = host_id
        self.ttl = lease_seconds
        self.margin = stop_margin_seconds
        self.held: dict[str, tuple[Lease, float]] = {}  # symbol -> (lease, deadline)
        leases.register_host(host_id, pid)

    def round(self, wanted: dict[str, str]) -> Round:
        """One round (see the module docstring). `wanted`: the trading set, symbol -> mode. Raises
        psycopg.Error when the database fails; what was held stays held until its deadline."""
        if not self.leases.heartbeat(self.host_id):
            self.leases.register_host(self.host_id, 0)
        for symbol, (lease, _) in list(self.held.items()):
            t0 = time.monotonic()
            if self.leases.renew(lease, self.ttl):
                self.held[symbol] = (lease, t0 + self.ttl - self.margin)
            else:
                log.warning("%s: lease token %d lost (taken over or expired); stopping it here", symbol, lease.token)
                del self.held[symbol]
        hosts, holdings = self.leases.hosts(), self.leases.holders()
        alive = {h.host_id for h in hosts if h.seen_seconds_ago < self.ttl} | {self.host_id}
        held_by = {h.symbol: h.holder for h in holdings if h.expires_in_seconds > 0}
        todo = plan(self.host_id, sorted(wanted), held_by, alive)
        for symbol in todo.release:
            if symbol in self.held:
                log.info("%s: placed on another host now (or no longer traded): handing it off", symbol)
                del self.held[symbol]  # not renewed again: it expires before anyone else takes it
        # Our own live leases this keeper does not know (it was restarted): taken again, with a new
        # token, which fences whatever the old one still writes.
        forgotten = [s for s, holder in held_by.items()
                     if holder == self.host_id and s not in self.held and s in wanted and s not in todo.release]
        for symbol in todo.acquire + sorted(forgotten):
            t0 = time.monotonic()
            granted = self.leases.acquire(symbol, self.host_id, self.ttl)
            if granted is not None:
                log.info("%s: lease acquired, token %d", symbol, granted.token)
                self.held[symbol] = (granted, t0 + self.ttl - self.margin)
        return Round([HeldLease(s, lease.token, deadline, wanted.get(s, "running"))
                      for s, (lease, deadline) in sorted(self.held.items())], sorted(alive), hosts, holdings)

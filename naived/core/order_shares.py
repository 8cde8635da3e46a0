"""The account's order limits shared by the hosts of a cluster: each host's allowance, computed.

Binance counts orders per *account* (50 per 10 s, 160,000 per day; `[exchange]
orders_budget_per_10s`/`_per_day` keep 45 and 150,000 of them), so hosts trading one account must
split them; the request weight is per IP and stays each host's own (naived/exchange/budget.py).
No database call is made per order: each host's lease keeper, once a round (`renew_seconds`),
publishes the host's counts and reservation, reads everyone's (naived/store/order_counts.py) and
sets the host's allowance in its budget file, which every trader of the host obeys at once.

**Per 10 s: a static split, reserved.** Counts a round old say nothing about a 10 s window, so a
host's share is `floor(limit / n_alive)`, whatever the others place. A plain split is not enough:
when a host joins, the others keep their larger share until their next round (2 hosts + a
newcomer: 22 + 22 + 15 = 59 > Binance's 50; the 45/50 margin covers such a round only from 9
hosts up). So each share is also a *reservation* in the database: a host takes
`min(floor(limit / n), limit - the shares the other alive hosts hold)`, and writes it only if no
other host wrote a share since it read them (a compare-and-set on one epoch row). Hence at every
moment the alive hosts' reserved shares add up to at most the limit, whatever each believes about
who is alive. Two rules make the reservations hold in every window, not just at every moment:

- a host's share in force is never above what the database reserves for it: a cut is put in force
  before it is written, a raise only once it is written (and if that write lost the race, not at
  all this round);
- a raise is in force only from the 10 s window that starts after the write (plus
  `RAISE_GUARD_SECONDS` for the hosts' clocks disagreeing), because the host that gave
  the room up may already have placed its old share in the current window.

**A host alone takes a raise at once.** When, as the publish read them, no other host held a
lease within the last 10 s + `RAISE_GUARD_SECONDS` (the database's clock; `hosts.leased_until`:
a host places orders only under a lease and stops before it expires, naived/store/leases.py), a
confirmed raise is in force in the current window: the room it takes was last usable by another
host before this window began. A host that takes a lease after that read orders only under its
share in force, never above what it reserves, and the epoch's compare-and-set orders its
reservation against this one (a newcomer holds 0 until its own confirm, which either fails or is
computed from the share this host now reserves). This host's own orders earlier in the window are
in its budget file's count, which the new share bounds. So a lone host's first orders wait for
its keeper's first round only, not for the next window.

Hosts not alive hold nothing: a host is alive while seen within `lease_seconds`, and one not seen
that long has stopped placing orders (its lease deadline, `t0 + lease - margin`, came first:
naived/store/leases.py), and the capacity it frees is used only in windows after its last orders
(from the next window on; at once only by a host alone, past its lease by 10 s + the guard). After a
join the shares settle in two rounds: the newcomer first gets what is left (45 - 22 - 22 = 1),
the others cut to 15 in their next round, then it takes its 15.

**Per day: counts, shared.** A host's allowance is `my_used + floor((limit - all hosts' used
today) / n_alive)`, never below `my_used`. Hosts not alive keep their counts in the total (their
orders count at Binance all day). If every host computed from one snapshot, the allowances would
add up to at most the limit (`sum(used) + n * floor(remaining / n) <= limit`). They compute from
counts published up to a round apart, and a dead host's last orders after its last round are
unpublished: the day can be passed by at most what the whole account places in that time. The
exact 10 s shares bound that by 45 orders a window (two or three windows: ~135 orders), against
the 10,000 between the configured 150,000 and Binance's 160,000, for any number of hosts.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

import msgspec

# A raised 10 s share is in force from the first window starting after the write plus this: the
# hosts' clocks (NTP) agree far better, so a window another host placed its old share in is never
# counted twice. The database's clock is held to the same when it tells a host alone.
RAISE_GUARD_SECONDS = 1.0


class OrderLimits(msgspec.Struct, frozen=True):
    """The account's order limits as configured (`[exchange]`), below Binance's."""

    per_10s: int
    per_day: int


class HostOrders(msgspec.Struct, frozen=True):
    """One host's orders as published in the database (table `order_counts`)."""

    host_id: str
    window_10s: int  # wall-clock 10 s window (epoch s // 10) of orders_10s
    orders_10s: int
    share_10s: int  # the share per 10 s it reserves (the most it may use in a window)
    day: int  # UTC day (epoch s // 86400) of orders_day
    orders_day: int
    share_day: int  # its allowance for that day, its count included (for status)


class OrderShare(msgspec.Struct, frozen=True):
    """A host's allowance: at most `per_10s` orders in a 10 s window, and `per_day` orders on UTC
    day `day` (its own count included), among `hosts` alive hosts."""

    hosts: int
    per_10s: int
    per_day: int
    day: int


class OrderCounts(msgspec.Struct, frozen=True):
    """A host's own counts and allowance as its budget file has them now."""

    window_10s: int
    orders_10s: int
    day: int
    orders_day: int
    hosts: int  # the hosts it shares with; 0: not shared, the configured limits hold (one host)
    per_10s: int  # in force in this window
    per_10s_most: int  # the most it may use in a window to come: per_10s or a raise waiting for its window
    per_day: int  # in force today


class OrderBudget(Protocol):
    """What the keeper needs of the host's rate budget (naived/exchange/budget.py's Budget)."""

    def order_limits(self) -> OrderLimits: ...

    def orders(self, wall: float | None = None) -> OrderCounts: ...

    def count_orders_day(self, day: int, count: int, wall: float | None = None) -> None: ...

    def hold_orders(self, hosts: int, wall: float | None = None) -> None: ...

    def set_order_share(self, share: OrderShare, confirmed: bool, wall: float | None = None,
                        at_once: bool = False) -> None: ...


def allowance(limits: OrderLimits, me: str, alive: Collection[str], hosts: Sequence[HostOrders]) -> OrderShare:
    """Host `me`'s allowance from every host's published orders (`hosts`, `me`'s row included: its
    day is today). `alive`: the hosts seen within the lease time (`me` always counts)."""
    mine = next((h for h in hosts if h.host_id == me), None)
    if mine is None:
        raise ValueError(f"{me}: no published orders of this host")
    alive_set = set(alive) | {me}
    n = len(alive_set)
    held_by_others = sum(h.share_10s for h in hosts if h.host_id in alive_set and h.host_id != me)
    per_10s = max(0, min(limits.per_10s // n, limits.per_10s - held_by_others))
    used = sum(h.orders_day for h in hosts if h.day == mine.day)  # alive or not: Binance counts them all day
    per_day = mine.orders_day + max(0, limits.per_day - used) // n
    return OrderShare(n, per_10s, per_day, mine.day)

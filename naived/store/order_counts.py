"""The account's order limits shared through PostgreSQL: each host's counts published, its share set.

Once a round the lease keeper calls `share_orders` (never a trader: no order waits on the
database, and a connection per trader would not fit PostgreSQL's). Two statements, each its own
transaction, so no lock outlives a statement (a host frozen between them holds nobody up):

1. publish: this host's counts in its current windows (`order_counts`, a row per kind; a day's
   count never goes down within the day, so a host whose budget file was made afresh takes back
   what it placed today) and the share it holds; read every host's rows, the share epoch, and
   whether this host is *alone*: no other host held a lease within the last 10 s +
   `RAISE_GUARD_SECONDS` by the database's clock (`hosts.leased_until`, naived/store/leases.py;
   a live or recent lease in `leases` counts too, for a host of an earlier naive that sets no
   `leased_until`);
2. confirm: write the share computed from them (naived/core/order_shares.py) only if the epoch
   is still the one read (bumped in the same statement): a share is always computed from the
   shares the others hold *now*.

The budget file gets a cut before the confirm and a raise only after it, so the share in force is
never above the one the database reserves: from the next window, or at once when this host was
alone (naived/core/order_shares.py says why that is safe). A confirm that lost the race keeps the
cut and tries again next round.

**When the database fails**, the host keeps the share it has: the database still reserves it
while the others see the host alive, and once they no longer do the host has passed its lease
deadlines and stopped its symbols. A host that never had a share (the root cleared it at start)
is held to no orders until a round gets one: it has no reservation anyone respects. Nothing here
raises a database's error: the keeper's leases do not depend on it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection

import psycopg

from naived.core.order_shares import RAISE_GUARD_SECONDS, HostOrders, OrderBudget, OrderCounts, allowance
from naived.store.pgschema import Conn

log = logging.getLogger(__name__)

_PUBLISH = """
WITH alone AS (
    SELECT NOT EXISTS (SELECT 1 FROM hosts WHERE host_id <> %(host)s AND leased_until > now() - %(quiet)s)
       AND NOT EXISTS (SELECT 1 FROM leases WHERE holder <> %(host)s AND expires_at > now() - %(quiet)s) AS alone
), mine AS (
    INSERT INTO order_counts AS c (host_id, kind, window_start, count, allowance, updated_at)
    VALUES (%(host)s, '10s', %(w10)s, %(n10)s, %(a10)s, now()), (%(host)s, 'day', %(day)s, %(nday)s, %(aday)s, now())
    ON CONFLICT (host_id, kind) DO UPDATE SET
        count = CASE WHEN c.window_start = excluded.window_start THEN greatest(c.count, excluded.count)
                     ELSE excluded.count END,
        window_start = excluded.window_start,
        -- the 10 s share reserved is never less than the host may use (a raise waiting included)
        allowance = CASE c.kind WHEN '10s' THEN greatest(c.allowance, excluded.allowance) ELSE excluded.allowance END,
        updated_at = now()
    RETURNING host_id, kind, window_start, count, allowance
)
SELECT host_id, kind, window_start, count, allowance, (SELECT epoch FROM order_share_epoch), (SELECT alone FROM alone) FROM mine
UNION ALL
SELECT host_id, kind, window_start, count, allowance, (SELECT epoch FROM order_share_epoch), (SELECT alone FROM alone)
FROM order_counts WHERE host_id <> %(host)s
"""
# How long since another host last held a lease before this one may take room at once: a window,
# and the guard for the hosts' clocks (the database's against this host's)
QUIET = dt.timedelta(seconds=10 + RAISE_GUARD_SECONDS)

# A concurrent confirm holds the epoch row: this one waits, then finds the epoch moved and writes nothing.
_CONFIRM = """
WITH bump AS (UPDATE order_share_epoch SET epoch = epoch + 1 WHERE epoch = %(seen)s RETURNING epoch)
UPDATE order_counts SET allowance = CASE kind WHEN '10s' THEN %(a10)s ELSE %(aday)s END, updated_at = now()
FROM bump WHERE host_id = %(host)s
"""


def _hosts(rows: list[tuple[str, str, int, int, int, int, bool]]) -> tuple[list[HostOrders], int, bool]:
    """Every host's orders from the rows read, the epoch they were read at and whether this host
    was alone then."""
    by_host: dict[str, dict[str, tuple[int, int, int]]] = {}
    for host_id, kind, start, count, held, _, _ in rows:
        by_host.setdefault(host_id, {})[kind] = (start, count, held)
    hosts = []
    for host_id, kinds in sorted(by_host.items()):
        w10, n10, a10 = kinds.get("10s", (0, 0, 0))
        day, nday, aday = kinds.get("day", (0, 0, 0))
        hosts.append(HostOrders(host_id, w10 // 10, n10, a10, day // 86400, nday, aday))
    return hosts, int(rows[0][5]) if rows else 0, bool(rows[0][6]) if rows else False


def share_orders(conn: Conn, host_id: str, alive: Collection[str], budget: OrderBudget,
                 wall: float | None = None) -> OrderCounts:
    """One round's share of the account's order limits for `host_id` among the `alive` hosts (seen
    within the lease time), set in `budget` (the host's budget file). Returns this host's counts and
    allowance in force after it. `conn`: in autocommit (the keeper's). Never raises psycopg.Error."""
    n = len(set(alive) | {host_id})
    before = budget.orders(wall)
    if not before.hosts:  # the first round since the root cleared the file: no reservation yet
        budget.hold_orders(n, wall)
        before = budget.orders(wall)
    try:
        rows = conn.execute(_PUBLISH, {"host": host_id, "w10": before.window_10s * 10, "n10": before.orders_10s,
                                       "a10": before.per_10s_most, "day": before.day * 86400,
                                       "nday": before.orders_day, "aday": before.per_day,
                                       "quiet": QUIET}).fetchall()
        hosts, epoch, alone = _hosts(rows)
        mine = next(h for h in hosts if h.host_id == host_id)
        budget.count_orders_day(mine.day, mine.orders_day, wall)
        share = allowance(budget.order_limits(), host_id, alive, hosts)
        budget.set_order_share(share, confirmed=False, wall=wall)  # a cut: in force before anyone counts on it
        held = budget.orders(wall).per_10s
        cur = conn.execute(_CONFIRM, {"seen": epoch, "host": host_id, "a10": share.per_10s, "aday": share.per_day})
        confirmed = cur.rowcount > 0
        if confirmed:
            budget.set_order_share(share, confirmed=True, wall=wall, at_once=alone)
        else:
            log.debug("order share %s: another host wrote its share meanwhile; again next round", host_id)
    except psycopg.Error as exc:
        log.warning("order share %s: database failed (%s); keeping %d orders per 10 s, %d today",
                    host_id, " ".join(str(exc).split())[:200], before.per_10s, before.per_day)
        return budget.orders(wall)
    after = budget.orders(wall)
    at_once = confirmed and alone and after.per_10s > held
    if at_once or (after.per_10s_most, after.hosts) != (before.per_10s_most, before.hosts):
        log.info("order share %s: %d orders per 10 s (%d in force%s), %d today (%d placed), among %d hosts",
                 host_id, after.per_10s_most, after.per_10s,
                 f" at once: no other host held a lease in the last {QUIET.total_seconds():g}s" if at_once else "",
                 after.per_day, after.orders_day, share.hosts)
    return after

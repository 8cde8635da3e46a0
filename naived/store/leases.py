"""Hosts and the symbols' leases in PostgreSQL: which host trades which symbol, fenced by a token.

A symbol is traded by one host at a time, the holder of its lease. A lease has an expiry and a
fencing token (`lease_tokens`, a sequence: a token only ever grows). Every write a host makes for
a symbol checks, in its own transaction, that it still holds the lease with its token
(naived/store/postgres.py, PgStore), so a host that was paused or cut off past its lease can never
overwrite the new holder's state.

**The database's clock, never a host's.** An expiry is the database's `now() + ttl`, and a lease
is free when the database's `now()` has passed it; no host clock is compared with another. The
holder keeps its own deadline on its monotonic clock: it takes `t0 = time.monotonic()` *before*
it sends `acquire` or `renew`, and when the answer says granted it must stop writing (stop the
symbol's traders) by `t0 + ttl - margin`. The database's `now()` is read after `t0` (the statement
arrived after it was sent), so the lease cannot expire before `t0 + ttl` in real time, however
long the request and its answer took. (This trusts the database's clock not to jump forward by
more than the margin; a lease's life is seconds, a clock slews far slower.) `Lease.ttl` is what
was asked for, for that computation; `expires_at` is the database's, for status.

**When a host last held a lease** (`hosts.leased_until`): every grant and renewal also pushes the
holder's `leased_until` to the new expiry, in the same statement (so neither is ever written
without the other). A host places orders only for symbols it holds a lease for, and stops before
the lease's expiry (its deadline `t0 + ttl - margin` comes first), so `leased_until` bounds the
last moment the host could have placed an order: the order shares read it to tell a host alone
(naived/store/order_counts.py).
"""

from __future__ import annotations

import datetime as dt

import msgspec

from naived.core.messages import Holding, Host
from naived.store.pgschema import Conn


class Lease(msgspec.Struct, frozen=True):
    """A granted lease: `token` fences every write made under it."""

    symbol: str
    holder: str  # host id
    token: int
    ttl: float  # seconds asked for; the caller's deadline is its t0 + ttl - margin
    expires_at: dt.datetime  # the database's clock


# The holder's leased_until, pushed to a lease's new expiry when (and only when) it was granted or
# renewed: a data-modifying CTE runs whether or not the outer query reads it, on what it returned.
_HELD = """
held AS (
    UPDATE hosts h SET leased_until = greatest(coalesce(h.leased_until, '-infinity'), g.expires_at)
    FROM granted g WHERE h.host_id = g.holder
)"""

_ACQUIRE = """
WITH granted AS (
    INSERT INTO leases AS l (symbol, holder, token, acquired_at, expires_at)
    VALUES (%(symbol)s, %(holder)s, nextval('lease_tokens'), now(), now() + make_interval(secs => %(ttl)s))
    ON CONFLICT (symbol) DO UPDATE
        SET holder = excluded.holder, token = excluded.token, acquired_at = excluded.acquired_at,
            expires_at = excluded.expires_at
        -- free (expired by the database's clock) or our own; and never a smaller token than the one
        -- there (two acquisitions by one host racing: the one that drew the older token loses)
        WHERE (l.expires_at <= now() OR l.holder = excluded.holder) AND l.token < excluded.token
    RETURNING holder, token, expires_at
),""" + _HELD + """
SELECT token, expires_at FROM granted
"""

_RENEW = """
WITH granted AS (
    UPDATE leases SET expires_at = now() + make_interval(secs => %(ttl)s)
    WHERE symbol = %(symbol)s AND holder = %(holder)s AND token = %(token)s AND expires_at > now()
    RETURNING holder, expires_at
),""" + _HELD + """
SELECT 1 FROM granted
"""


class Leases:
    """The hosts' registry and the symbols' leases, on one connection in autocommit (every call is
    one statement, its own transaction). Raises psycopg.Error when the database fails."""

    def __init__(self, conn: Conn) -> None:
        if not conn.autocommit:
            raise ValueError("Leases needs a connection in autocommit (naived.store.postgres.connect gives one)")
        self.conn = conn

    def register_host(self, host_id: str, pid: int) -> None:
        """Say this host is here (again): a restarted naived takes its host id over."""
        self.conn.execute(
            "INSERT INTO hosts (host_id, pid, started_at, last_seen) VALUES (%s, %s, now(), now()) "
            "ON CONFLICT (host_id) DO UPDATE SET pid = excluded.pid, started_at = now(), last_seen = now()",
            (host_id, pid))

    def heartbeat(self, host_id: str) -> bool:
        """Mark the host seen now; False if it is not registered (register it again)."""
        return self.conn.execute("UPDATE hosts SET last_seen = now() WHERE host_id = %s", (host_id,)).rowcount == 1

    def hosts(self) -> list[Host]:
        rows = self.conn.execute(
            "SELECT host_id, pid, started_at, extract(epoch FROM now() - last_seen)::float8 FROM hosts ORDER BY host_id")
        return [Host(*row) for row in rows]

    def acquire(self, symbol: str, host_id: str, ttl: float) -> Lease | None:
        """Take the symbol's lease if it is free, expired or ours, with a new (larger) token and an
        expiry of the database's now() + ttl (the host's `leased_until` too); None while another
        host holds it. Take t0 before."""
        row = self.conn.execute(_ACQUIRE, {"symbol": symbol, "holder": host_id, "ttl": ttl}).fetchone()
        return None if row is None else Lease(symbol, host_id, row[0], ttl, row[1])

    def renew(self, lease: Lease, ttl: float) -> bool:
        """Push the expiry (and the host's `leased_until`) to the database's now() + ttl, only while the
        lease is still held with this token and not expired. False: it is lost (stop the symbol's
        traders). Take t0 before."""
        row = self.conn.execute(_RENEW, {"ttl": ttl, "symbol": lease.symbol, "holder": lease.holder,
                                         "token": lease.token}).fetchone()
        return row is not None

    def release(self, lease: Lease) -> bool:
        """Give the lease up (the symbol stopped here): free at once for another host. False if it
        was no longer ours."""
        cur = self.conn.execute("DELETE FROM leases WHERE symbol = %s AND holder = %s AND token = %s",
                                (lease.symbol, lease.holder, lease.token))
        return cur.rowcount == 1

    def holders(self) -> list[Holding]:
        """Every symbol's lease, expired ones included (a dead host's, not yet taken over)."""
        rows = self.conn.execute(
            "SELECT symbol, holder, token, extract(epoch FROM now() - acquired_at)::float8, "
            "extract(epoch FROM expires_at - now())::float8 FROM leases ORDER BY symbol")
        return [Holding(*row) for row in rows]

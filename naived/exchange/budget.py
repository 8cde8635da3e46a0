"""One rate budget per host: Binance's request weight, order counts and bans, shared by every process.

Binance counts request weight per IP (rest-api.md, "LIMITS": `REQUEST_WEIGHT` 6000 per 1 MINUTE,
`X-MBX-USED-WEIGHT-1M` in every answer) and unfilled orders per account (`ORDERS` 50 per 10 s and
160,000 per day in the paper exchange's exchangeInfo, `X-MBX-ORDER-COUNT-10S`/`-1D`). A 429 says
"back off for `Retry-After` seconds"; requests sent anyway escalate into a 418 IP ban of 2 minutes
to 3 days. Every trader of a host shares that IP, so what one process learns (a header, a 429, a
418) must hold back all of them at once, before any of them sends again.

The shared state is one small file in the runtime directory, memory-mapped by each process:

    offset size  field
         0    8  magic b"NVBUDGT2" (layout version in the last byte; 2: the order shares at 136-183)
         8   16  boot id (/proc/sys/kernel/random/boot_id): a ban deadline from before a reboot is void
        24    8  banned_until_ns     CLOCK_MONOTONIC ns; nothing is sent before it
        32    8  ban_status          429 or 418 (the last refusal that set banned_until), 0 = none
        40    8  minute              wall-clock minute (epoch s // 60) the weight fields count
        48    8  weight_header       largest X-MBX-USED-WEIGHT-1M any process saw for that minute
        56    8  weight_spent        weight this host sent in that minute (our own count)
        64    8  window_10s          wall-clock 10 s window (epoch s // 10) of the next two
        72    8  orders_10s          orders this host placed in that window
        80    8  orders_10s_header   largest X-MBX-ORDER-COUNT-10S seen in it
        88    8  day                 UTC day (epoch s // 86400) of the next two
        96    8  orders_day          orders this host placed that day
       104    8  orders_day_header   largest X-MBX-ORDER-COUNT-1D seen that day
       112    8  limited_total       429/418 answers seen, since the file was made
       120    8  held_total          requests held back by this budget (never sent), since then
       128    8  weight_used         the minute's weight as best known: Binance's latest figure plus
                                     what this host sent after the request that carried it
       136    8  share_hosts         hosts sharing the account's order limits; 0 = not shared (the
                                     configured limits hold: one host, or a cluster host before its
                                     keeper's first round)
       144    8  share_10s           this host's orders per 10 s window, in force
       152    8  share_10s_next      ... and from window share_10s_from on (a raise waits for it)
       160    8  share_10s_from      wall-clock 10 s window (epoch s // 10)
       168    8  share_day           this host's orders on day share_day_of, its count included
       176    8  share_day_of        UTC day (epoch s // 86400); on another day: the day's limit / share_hosts

little-endian signed 64-bit integers, 184 bytes in all. A file of another layout (magic) or size
is made afresh when a process opens it (the root's `ensure`, before it forks), counts and all.

Clocks. Binance's windows are wall-clock aligned ("a request submitted at 00:01:23.456 counts
towards the 00:01:00 minute"), so the minute, 10 s and day fields use CLOCK_REALTIME (corrected
by the server-time offset when the caller knows it); a window only ever moves forward, so two
processes whose clocks disagree by a few ms count into the newer window rather than resetting
each other. A ban is a duration (`Retry-After` seconds), so its deadline is on CLOCK_MONOTONIC:
one clock for every process on Linux (time since boot), unmoved by NTP steps, which could
otherwise shorten a ban and escalate it. Monotonic time restarts at boot, hence the boot id.

Locking. Every read-modify-write holds `flock(LOCK_EX)` on the file for a few µs. A flock
belongs to the open file description, so each process opens the file itself (forked children
close inherited descriptors; `SharedBudget` reopens when it finds itself in another pid), and the
kernel drops the lock when its holder dies, kill -9 included: nobody waits on a dead process.
Readers that must never block (naived's root, for metrics) use `snapshot()`, which tries a shared
lock without waiting and otherwise reads the record as it is.

Pacing. Before a request `acquire()` refuses (with how long to wait) when the host is banned,
or when the request would take the minute's weight (the larger of Binance's figure and our own
count) past its share of `weight_budget_per_minute`: order placements and cancels may use all of
it, reads only `READ_SHARE` of it and only in proportion to the minute elapsed (plus a burst),
so reads give way before orders and spread over the minute instead of spending it in its first
seconds. Orders are held to `orders_budget_per_10s` and `orders_budget_per_day` (our own
count of every placement, which overcounts Binance's *unfilled* orders: on the safe side).
After the answer `record()` folds in the headers and any 429/418 `Retry-After`.

Shared orders. Binance counts orders per account: hosts of a cluster trading one account split
the order limits (naived/core/order_shares.py says how and why it is safe). The host's lease keeper
sets this host's share at run time (`set_order_share`, once a round) and every process obeys it
at its next `acquire`: this host's own count is held to its share, Binance's headers (the
account's count) to the configured limits. The weight stays per host: Binance counts it per IP.
`ensure` (the root, at start) clears the share: a single host then has the whole account again.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from naived.core.order_shares import RAISE_GUARD_SECONDS, OrderBudget, OrderCounts, OrderLimits, OrderShare

log = logging.getLogger(__name__)

MAGIC = b"NVBUDGT2"
LAYOUT = struct.Struct("<8s16s20q")
SIZE = LAYOUT.size  # 184
FIELDS = (
    "banned_until_ns", "ban_status", "minute", "weight_header", "weight_spent", "window_10s", "orders_10s",
    "orders_10s_header", "day", "orders_day", "orders_day_header", "limited_total", "held_total", "weight_used",
    "share_hosts", "share_10s", "share_10s_next", "share_10s_from", "share_day", "share_day_of",
)

BINANCE_WEIGHT_PER_MINUTE = 6000  # exchangeInfo REQUEST_WEIGHT, 1 MINUTE, per IP
READ_SHARE = 0.85  # reads stop here; the last 15% of the budget is kept for orders and cancels
READ_BURST_SECONDS = 10.0  # reads may spend (elapsed + this) / 60 of their share: a burst, then an even pace
RECHECK_MAX = 5.0  # seconds: the slowest a trader looks at an order its price has reached
MAX_BAN_SECONDS = 3 * 86400  # Binance's longest ban; a larger deadline is not ours (corrupt file)
# A placement held by this host's share of the day (the account has room): asked again after about
# one keeper round, which may give more.
SHARE_RECHECK_SECONDS = 5.0


def _boot_id() -> bytes:
    try:
        return bytes.fromhex(Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", ""))[:16]
    except (OSError, ValueError):
        return bytes(16)  # no boot id: a ban then survives a reboot, capped at MAX_BAN_SECONDS


BOOT_ID = _boot_id()


@dataclass
class Limits:
    """What this host allows itself (config `[exchange]`)."""

    weight_per_minute: int = 4800
    orders_per_10s: int = 45
    orders_per_day: int = 150_000


@dataclass
class State:
    """One decoded copy of the shared record."""

    banned_until_ns: int = 0
    ban_status: int = 0
    minute: int = 0
    weight_header: int = 0
    weight_spent: int = 0
    window_10s: int = 0
    orders_10s: int = 0
    orders_10s_header: int = 0
    day: int = 0
    orders_day: int = 0
    orders_day_header: int = 0
    limited_total: int = 0
    held_total: int = 0
    weight_used: int = 0
    share_hosts: int = 0
    share_10s: int = 0
    share_10s_next: int = 0
    share_10s_from: int = 0
    share_day: int = 0
    share_day_of: int = 0

    @property
    def weight(self) -> int:
        """The minute's weight as far as anyone on this host knows."""
        return max(self.weight_used, self.weight_header, self.weight_spent)

    @property
    def orders(self) -> int:
        return max(self.orders_10s, self.orders_10s_header)

    def ban_remaining(self, now_ns: int) -> float:
        return max(0.0, (self.banned_until_ns - now_ns) / 1e9)

    def roll(self, wall: float) -> None:
        """Start new windows when the wall clock has moved into them (never backwards)."""
        second = int(wall)
        if second // 60 > self.minute:
            self.minute, self.weight_header, self.weight_spent, self.weight_used = second // 60, 0, 0, 0
        if second // 10 > self.window_10s:
            self.window_10s, self.orders_10s, self.orders_10s_header = second // 10, 0, 0
        if second // 86400 > self.day:
            self.day, self.orders_day, self.orders_day_header = second // 86400, 0, 0
        if self.share_hosts and self.window_10s >= self.share_10s_from:
            self.share_10s = self.share_10s_next  # a raise's window has come

    def order_limits(self, limits: Limits) -> tuple[int, int]:
        """This host's order limits now (windows rolled): per 10 s window and today's."""
        if not self.share_hosts:
            return limits.orders_per_10s, limits.orders_per_day
        today = self.share_day if self.share_day_of == self.day else limits.orders_per_day // self.share_hosts
        return min(self.share_10s, limits.orders_per_10s), min(today, limits.orders_per_day)

    def pending_10s(self, limits: Limits) -> int:
        """The 10 s share of the windows to come: a raise waiting for its window, else the one in force."""
        now = self.order_limits(limits)[0]
        waiting = self.share_hosts and self.share_10s_from > self.window_10s
        return min(self.share_10s_next, limits.orders_per_10s) if waiting else now


def _decode(raw: bytes) -> State | None:
    magic, boot, *values = LAYOUT.unpack(raw[:SIZE])
    if magic != MAGIC:
        return None
    state = State(*values)
    if boot != BOOT_ID:  # written before this boot: its monotonic deadline means nothing now
        state.banned_until_ns, state.ban_status = 0, 0
    return state


def _encode(state: State) -> bytes:
    return LAYOUT.pack(MAGIC, BOOT_ID, *(getattr(state, f) for f in FIELDS))


class Refused(Exception):
    """Not sent: wait `retry_after` seconds. `banned`: a 429/418 holds the host, else our budget."""

    def __init__(self, retry_after: float, status: int) -> None:
        super().__init__(f"held back {retry_after:.2f}s")
        self.retry_after = retry_after
        self.status = status


class Budget:
    """The budget's rules over some storage: `_locked(change)` runs `change` on the current State
    under a lock and stores it. `LocalBudget` keeps it in this process; `SharedBudget` in the file."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def _locked(self, change: Callable[[State], int | None]) -> int | None:
        raise NotImplementedError

    def acquire(self, weight: int, kind: str = "read", wall: float | None = None) -> int:
        """Count a request about to be sent, or raise `Refused` (nothing counted, nothing to send).
        `kind`: "order" (a placement: counts against the order limits), "cancel" (priority like an
        order, not counted as one) or "read". Returns the host's count of weight sent this minute,
        this request included: `record` needs it with the answer."""
        wall = time.time() if wall is None else wall
        now_ns = time.monotonic_ns()
        limits = self.limits
        outcome: list[Refused] = []

        def change(s: State) -> int | None:
            s.roll(wall)
            banned = s.ban_remaining(now_ns)
            if banned > 0:
                outcome.append(Refused(banned, s.ban_status))
                return None  # a ban is not our pacing: held_total counts only budget refusals
            # Another process's clock may be a little ahead and have opened the window already.
            into_minute = min(60.0, max(0.0, wall - s.minute * 60))
            wait = 0.0
            if kind != "read":
                if s.weight + weight > limits.weight_per_minute:
                    wait = 60 - into_minute
                if kind == "order":
                    # Our own count against this host's share, Binance's (the account's) against the
                    # account's limit; one host's share is the whole limit, so that is max(both) + 1.
                    per_10s, per_day = s.order_limits(limits)
                    if s.orders_10s + 1 > per_10s or s.orders_10s_header + 1 > limits.orders_per_10s:
                        wait = max(wait, 10 - min(10.0, max(0.0, wall - s.window_10s * 10)))
                    day_left = 86400 - min(86400.0, max(0.0, wall - s.day * 86400))
                    if s.orders_day_header + 1 > limits.orders_per_day:
                        wait = max(wait, day_left)
                    elif s.orders_day + 1 > per_day:  # a share below the account's limit may grow next round
                        wait = max(wait, day_left if per_day >= limits.orders_per_day else
                                   min(day_left, SHARE_RECHECK_SECONDS))
            else:
                share = limits.weight_per_minute * READ_SHARE
                need = s.weight + weight
                if need > share:
                    wait = 60 - into_minute + 0.01
                elif need > share * min(1.0, (into_minute + READ_BURST_SECONDS) / 60):
                    wait = 60 * need / share - READ_BURST_SECONDS - into_minute + 0.01
            if wait > 0:
                s.held_total += 1
                outcome.append(Refused(wait, 0))
                return None
            s.weight_used = s.weight + weight
            s.weight_spent += weight
            if kind == "order":
                s.orders_10s += 1
                s.orders_day += 1
            return s.weight_spent

        spent = self._locked(change)
        if outcome:
            raise outcome[0]
        return int(spent or 0)

    def record(self, sent_wall: float, weight_1m: int | None, orders_10s: int | None, orders_1d: int | None,
               limited: int = 0, retry_after: float = 0.0, spent: int | None = None) -> None:
        """Fold in what an answer said: headers of the windows the request was counted in (those of
        `sent_wall`; a header for a minute that has ended says nothing about the new one), and a
        429/418's `Retry-After`, which holds every process of the host. `spent`: what `acquire`
        returned for the request; Binance's figure may not include what the host sent since."""
        now_ns = time.monotonic_ns()

        def change(s: State) -> int | None:
            s.roll(sent_wall)  # windows only move forward: a late answer cannot take one back
            second = int(sent_wall)
            if weight_1m is not None and second // 60 == s.minute:
                s.weight_header = max(s.weight_header, weight_1m)
                since = s.weight_spent - spent if spent is not None else 0
                s.weight_used = max(s.weight_used, weight_1m + max(0, since))
            if orders_10s is not None and second // 10 == s.window_10s:
                s.orders_10s_header = max(s.orders_10s_header, orders_10s)
            if orders_1d is not None and second // 86400 == s.day:
                s.orders_day_header = max(s.orders_day_header, orders_1d)
            if limited:
                s.limited_total += 1
                until = now_ns + int(min(retry_after, MAX_BAN_SECONDS) * 1e9)
                if until > s.banned_until_ns:
                    s.banned_until_ns = until
                    s.ban_status = limited
                elif limited == 418:
                    s.ban_status = 418  # a ban is worse news than a 429 ending later
            return None

        self._locked(change)

    def state(self, wall: float | None = None) -> State:
        """A consistent copy, windows rolled to now."""
        copy: list[State] = []

        def change(s: State) -> int | None:
            s.roll(time.time() if wall is None else wall)
            copy.append(State(**vars(s)))
            return None

        self._locked(change)
        return copy[0]

    # --- the account's order limits shared by the hosts (naived/core/order_shares.py) ----------

    def order_limits(self) -> OrderLimits:
        """The account's order limits as configured, for the hosts to share."""
        return OrderLimits(self.limits.orders_per_10s, self.limits.orders_per_day)

    def orders(self, wall: float | None = None) -> OrderCounts:
        """This host's order counts and its allowance, windows rolled to now (for the keeper to publish)."""
        s = self.state(wall)
        per_10s, per_day = s.order_limits(self.limits)
        return OrderCounts(s.window_10s, s.orders_10s, s.day, s.orders_day, s.share_hosts, per_10s,
                           max(per_10s, s.pending_10s(self.limits)), per_day)

    def count_orders_day(self, day: int, count: int, wall: float | None = None) -> None:
        """Take `count` as this host's orders on `day` if that is more than the file has: the database
        remembers what the host placed today; the file may not (a reboot empties the runtime directory)."""

        def change(s: State) -> int | None:
            s.roll(time.time() if wall is None else wall)
            if day == s.day and count > s.orders_day:
                s.orders_day = count
            return None

        self._locked(change)

    def hold_orders(self, hosts: int, wall: float | None = None) -> None:
        """No orders until `set_order_share` says otherwise: a cluster host before its first share."""

        def change(s: State) -> int | None:
            s.roll(time.time() if wall is None else wall)
            s.share_hosts = max(1, hosts)
            s.share_10s = s.share_10s_next = s.share_10s_from = 0
            s.share_day, s.share_day_of = 0, s.day
            return None

        self._locked(change)

    def set_order_share(self, share: OrderShare, confirmed: bool, wall: float | None = None,
                        at_once: bool = False) -> None:
        """Put this host's share in force. Unconfirmed (before the database has it): only what
        lowers the limits, at once. Confirmed (the database reserves it): a higher 10 s share
        from the window after `RAISE_GUARD_SECONDS` from now, a higher day's at once; with
        `at_once` (no other host can have placed an order in this window: order_shares.py) a
        higher 10 s share at once too. `at_once` without `confirmed` raises nothing."""
        wall = time.time() if wall is None else wall
        limits = self.limits

        def change(s: State) -> int | None:
            s.roll(wall)
            per_10s, per_day = s.order_limits(limits)
            coming = s.pending_10s(limits)
            # A raise already on its way to at least this much: every round confirms it again, and
            # setting its window again would push it back each round, so that it never came.
            waiting = bool(s.share_hosts) and s.share_10s_from > s.window_10s and s.share_10s_next >= share.per_10s
            s.share_hosts = max(1, share.hosts)
            s.share_10s = share.per_10s if confirmed and at_once else min(per_10s, share.per_10s)
            later = share.per_10s if confirmed else min(coming, share.per_10s)
            if later <= s.share_10s:
                s.share_10s_next, s.share_10s_from = s.share_10s, 0
            else:
                s.share_10s_next = later
                if confirmed and not waiting:  # a waiting raise keeps its window (confirmed again or not)
                    # (never the file's current window, which another process's clock may have opened)
                    s.share_10s_from = max(int(wall + RAISE_GUARD_SECONDS) // 10, s.window_10s) + 1
            today = share.per_day if confirmed else min(per_day, share.per_day)
            s.share_day, s.share_day_of = today, share.day
            return None

        self._locked(change)

    def unshare_orders(self) -> None:
        """The configured limits again, as on one host."""

        def change(s: State) -> int | None:
            s.share_hosts = s.share_10s = s.share_10s_next = s.share_10s_from = s.share_day = s.share_day_of = 0
            return None

        self._locked(change)

    def tightness(self, wall: float | None = None) -> float:
        """The minute's weight against what reads may use by now: 0 idle, 1 and over: reads are
        being held back."""
        wall = time.time() if wall is None else wall
        s = self.state(wall)
        into_minute = min(60.0, max(0.0, wall - s.minute * 60))
        allowance = self.limits.weight_per_minute * READ_SHARE * min(1.0, (into_minute + READ_BURST_SECONDS) / 60)
        return s.weight / allowance

    def recheck_interval(self, base: float, cap: float = RECHECK_MAX) -> float:
        """How long a trader waits between two looks at the same order: `base` while less than
        half of the reads' allowance is spent, then doubling every 5% more, up to `cap`. Polling
        slows down before the budget refuses anything, and spare weight goes to orders."""
        t = self.tightness()
        return base if t < 0.5 else min(cap, base * 2 ** ((t - 0.5) * 20))


class LocalBudget(Budget):
    """The same rules, this process only (a client built without a runtime directory, tests)."""

    def __init__(self, limits: Limits | None = None) -> None:
        super().__init__(limits or Limits())
        self._state = State()

    def _locked(self, change: Callable[[State], int | None]) -> int | None:
        return change(self._state)


if TYPE_CHECKING:  # the lease keeper's view of a budget (naived/store/order_counts.py), checked by mypy
    _AN_ORDER_BUDGET: type[OrderBudget] = Budget

_INHERITED: list[object] = []  # a forked child's copies of its parent's mappings, kept, never closed


class SharedBudget(Budget):
    """The budget in `path` (mode 0600), shared by every process that opens it."""

    def __init__(self, path: Path, limits: Limits | None = None) -> None:
        super().__init__(limits or Limits())
        self.path = path
        self._pid = -1
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._open()

    def _open(self) -> None:
        # O_NOFOLLOW: the runtime directory is ours (0700), but never write through a planted link.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)  # made by someone else's umask or hand: ours alone, as the sockets
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                raw = os.pread(fd, SIZE, 0)
                if len(raw) < SIZE or _decode(raw) is None:
                    if raw.strip(b"\0"):
                        log.warning("%s: not a rate budget (or an older layout); starting it afresh", self.path)
                    os.ftruncate(fd, SIZE)
                    os.pwrite(fd, _encode(State()), 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._pid = fd, os.getpid()

    def _locked(self, change: Callable[[State], int | None]) -> int | None:
        if self._pid != os.getpid():  # forked: the parent's descriptor would share its lock
            # Never let the parent's mmap be freed here: it would close the descriptor it holds,
            # whose number the child closed at fork and may have handed to someone else since
            # (libzmq's eventfd: epoll then aborts the process).
            _INHERITED.append(self._map)
            self._open()
        assert self._map is not None
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            state = _decode(self._map[:SIZE]) or State()  # overwritten behind our back: start afresh
            result = change(state)
            self._map[:SIZE] = _encode(state)
            return result
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._pid == os.getpid() and self._fd >= 0:
            if self._map is not None:
                self._map.close()
            os.close(self._fd)
        self._fd, self._map = -1, None


def ensure(path: Path) -> None:
    """Create (or repair) the budget file: naived's root does it before it forks anything. A file
    of an older layout is made afresh; an order share from an earlier run is cleared (the lease
    keeper of a cluster host sets it again before the host trades anything)."""
    budget = SharedBudget(path)
    try:
        budget.unshare_orders()
    finally:
        budget.close()


def snapshot(path: Path) -> State | None:
    """The shared state for a reader that must never block or fail (naived's root, metrics).
    None when there is no usable file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            pass  # a writer holds it for a few µs: read as it is, a gauge may be one update behind
        raw = os.pread(fd, SIZE, 0)
        if len(raw) < SIZE:
            return None
        state = _decode(raw)
        if state is not None:
            state.roll(time.time())
        return state
    except (OSError, struct.error):
        return None
    finally:
        os.close(fd)  # closing drops the shared lock

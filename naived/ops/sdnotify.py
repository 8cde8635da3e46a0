"""sd_notify(3) by hand: readiness, status and watchdog keep-alives for systemd.

    notify("READY=1", "STATUS=2 symbols trading")   # one datagram "READY=1\\nSTATUS=..."
    interval = watchdog_interval()                    # seconds between WATCHDOG=1, or None
    dog = Watchdog()                                  # paces WATCHDOG=1 inside a poll loop

`$NOTIFY_SOCKET` is an `AF_UNIX` datagram socket: a filesystem path, or an abstract
namespace name when it starts with `@`. Without it (not under systemd, or not
`Type=notify`) `notify` returns False and does nothing; a failed send is logged at
debug level and returns False, never raises: notification is best effort.

One socket per process, created on first use. A forked child must not use its
parent's socket object: the supervisor closes inherited descriptors after fork, so
that object's descriptor number may by then belong to another file. The socket is
therefore owned by the pid that created it; a child (or `reset_after_fork()`)
forgets it without closing it and creates its own on demand. Note that the units
say `NotifyAccess=main`: systemd ignores messages from any process but the main one.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS = 2.0  # never let a stuck notify socket stall the caller's loop for long

_sock: socket.socket | None = None
_sock_pid: int | None = None


def _address(value: str) -> bytes:
    raw = os.fsencode(value)
    return b"\0" + raw[1:] if raw.startswith(b"@") else raw


def _socket() -> socket.socket:
    global _sock, _sock_pid
    pid = os.getpid()
    if _sock is None or _sock_pid != pid:
        reset_after_fork()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.settimeout(SEND_TIMEOUT_SECONDS)
        _sock, _sock_pid = sock, pid
    return _sock


def reset_after_fork() -> None:
    """Forget an inherited socket without closing its (possibly reused) descriptor.

    Called automatically when the pid changed; call it explicitly in a forked child if
    you like. In the owning process it closes the socket (the next notify reopens one).
    """
    global _sock, _sock_pid
    sock, _sock, owner, _sock_pid = _sock, None, _sock_pid, None
    if sock is None:
        return
    if owner == os.getpid():
        sock.close()
    else:
        sock.detach()  # the descriptor number is not ours any more: drop it, do not close it


def notify(*fields: str) -> bool:
    """Send `fields` ("READY=1", "STATUS=...", "WATCHDOG=1", "STOPPING=1") as one datagram.

    Returns True when the datagram was sent, False when `$NOTIFY_SOCKET` is unset, there
    is nothing to send, or the send failed (logged at debug).
    """
    target = os.environ.get("NOTIFY_SOCKET")
    if not target or not fields:
        return False
    # A newline inside a field would start a new assignment: fold it into a space.
    payload = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
    try:
        _socket().sendto(payload, _address(target))
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", target, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """How often to send WATCHDOG=1, in seconds (half of `WatchdogSec=`), or None.

    None when `$WATCHDOG_USEC` is unset, not a positive integer, or when `$WATCHDOG_PID`
    is set to a pid other than ours (the watchdog is meant for another process).
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    wpid = os.environ.get("WATCHDOG_PID")
    if wpid:
        try:
            if int(wpid) != os.getpid():
                return None
        except ValueError:
            log.debug("ignoring invalid WATCHDOG_PID=%r", wpid)
            return None
    try:
        value = int(usec)
    except ValueError:
        log.debug("ignoring invalid WATCHDOG_USEC=%r", usec)
        return None
    if value <= 0:
        return None
    return value / 2 / 1_000_000


class Watchdog:
    """Paces WATCHDOG=1 from the caller's own poll loop, every `watchdog_interval()` seconds.

    Deliberately no thread: the keep-alive must stop when the loop stops turning, which is
    exactly what systemd's watchdog is there to notice. The loop folds `deadline()` or
    `timeout_ms()` into its poll timeout and calls `tick()` after every wake-up.
    """

    def __init__(self, interval: float | None = None) -> None:
        self.interval = watchdog_interval() if interval is None else interval
        self.next_ping = time.monotonic()  # first ping at once: READY=1 may have taken a while

    def deadline(self) -> float | None:
        """When (time.monotonic()) the next ping is due; None without a watchdog."""
        return self.next_ping if self.interval else None

    def timeout_ms(self) -> int | None:
        """A poll timeout (ms) that wakes in time for the next ping; None without a watchdog."""
        if not self.interval:
            return None
        return max(0, int((self.next_ping - time.monotonic()) * 1000 + 0.999))

    def tick(self, healthy: bool = True, status: Callable[[], str] | None = None) -> bool:
        """Send WATCHDOG=1 (with STATUS=`status()`, computed only then) when due and `healthy`.

        An unhealthy process skips the ping but still moves the deadline on, so its loop
        does not spin on a zero timeout while systemd's watchdog runs out. Returns True
        when a ping was sent.
        """
        if not self.interval:
            return False
        now = time.monotonic()
        if now < self.next_ping:
            return False
        self.next_ping = now + self.interval
        if not healthy:
            return False
        return notify("WATCHDOG=1", *([f"STATUS={status()}"] if status else []))

"""The XPUB side: publish trades and learn which symbols subscribers want.

Demand comes from the XPUB's own subscription reports. We deliberately leave
`XPUB_VERBOSE`/`XPUB_VERBOSER` off: a SUB socket forwards every duplicate
subscribe but only its last unsubscribe, so counting verbose messages drifts
upwards and a symbol would never stop. Without the verbose options libzmq
counts distinct subscriber connections per topic itself and reports exactly
"first subscriber arrived" (subscribe) and "last one left" (unsubscribe), also
when a subscriber process dies and its connection drops.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import msgspec
import zmq

from naived.core.config import check_symbol
from naived.core.messages import TRADE_TOPIC_PREFIX, TradeEvent
from naived.market.tape import ReadCounts

log = logging.getLogger(__name__)

# A subscriber that falls this far behind loses messages instead of stalling everyone.
SEND_HWM = 200_000


@dataclass
class Stats(ReadCounts):
    """Counters logged on exit (and read by tests through the log); a tape's reader counts
    `malformed` and `truncated`."""

    events_in: int = 0
    events_out: int = 0
    duplicates: int = 0
    gaps: int = 0
    missing: int = 0  # trade ids skipped by gaps
    refused: int = 0  # trades whose price or quantity is not a positive decimal (never published)
    filled: int = 0  # missing trade ids fetched from the REST API into the tape (not published)
    unfilled: int = 0  # missing trade ids written into the tape as gap lines

    def line(self) -> str:
        return " ".join(f"{k}={len(v) if isinstance(v, list) else v}" for k, v in self.__dict__.items())


class Publisher:
    """Owns the XPUB socket; only the thread that created it may call it."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, stats: Stats) -> None:
        self.socket = ctx.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.endpoint = endpoint
        path = endpoint[len("ipc://") :]
        is_file = endpoint.startswith("ipc://") and not path.startswith("@")  # "@" = abstract, no file
        if is_file:
            # the runtime dir may not exist yet when streamerd starts before naived
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        self.socket.bind(endpoint)
        if is_file:
            os.chmod(path, 0o600)  # only this user's processes may subscribe
        self.stats = stats
        self._topics: dict[str, bytes] = {}
        self.last_trade: dict[str, float] = {}  # symbol -> time.monotonic() of its last published trade
        self._encode = msgspec.msgpack.Encoder().encode

    def publish(self, event: TradeEvent, raw: bytes | None = None) -> None:
        """`raw` (the frame as received) is the recorder's business, accepted so that every
        source can call the same `Emit`."""
        topic = self._topics.get(event.s)
        if topic is None:
            topic = self._topics[event.s] = TRADE_TOPIC_PREFIX + event.s.encode()
        # Two send() calls cost a third of one send_multipart() on this hot path.
        self.socket.send(topic, zmq.SNDMORE)
        self.socket.send(self._encode(event))
        self.stats.events_out += 1
        self.last_trade[event.s] = time.monotonic()

    def subscription_changes(self) -> list[tuple[bool, bytes]]:
        """Drain pending (subscribed?, topic) reports without blocking."""
        changes: list[tuple[bool, bytes]] = []
        while True:
            try:
                frame = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return changes
            if frame:
                changes.append((frame[0] == 1, frame[1:]))

    def close(self) -> None:
        self.socket.close(linger=0)


def symbol_of_subscription(topic: bytes, quiet: bool = False) -> str | None:
    """The symbol a subscription names, or None (logged unless quiet) when it names no single symbol."""
    if not topic.startswith(TRADE_TOPIC_PREFIX) or len(topic) == len(TRADE_TOPIC_PREFIX):
        # An empty or "TRADE_EVENTS:" prefix matches whatever is streamed: it keeps
        # receiving, but it cannot ask for a symbol.
        if not quiet:
            log.info("subscription to prefix %r names no symbol: it receives what others request", topic)
        return None
    name = topic[len(TRADE_TOPIC_PREFIX) :].decode(errors="replace")
    try:
        symbol = check_symbol(name)
    except ValueError as exc:
        if not quiet:
            log.warning("ignoring subscription %r: %s", topic, exc)
        return None
    if symbol != name:
        if not quiet:
            log.warning("ignoring subscription %r: topics are upper case (%s)", topic, symbol)
        return None
    return symbol


@dataclass
class Demand:
    """Which symbols to stream: the always-on ones plus those with subscribers or in grace."""

    always: frozenset[str]
    grace_seconds: float
    subscribed: set[str] = field(default_factory=set)
    leaving: dict[str, float] = field(default_factory=dict)  # symbol -> stop deadline (monotonic)

    @property
    def wanted(self) -> set[str]:
        return set(self.always) | self.subscribed | set(self.leaving)

    def apply(self, changes: list[tuple[bool, bytes]], now: float | None = None) -> bool:
        """Apply XPUB reports; True when the wanted set changed."""
        now = time.monotonic() if now is None else now
        before = self.wanted
        for subscribed, topic in changes:
            symbol = symbol_of_subscription(topic, quiet=not subscribed)
            if symbol is None:
                continue
            if subscribed:
                self.subscribed.add(symbol)
                if self.leaving.pop(symbol, None) is not None:
                    log.info("%s: subscriber back within the grace period, keep streaming", symbol)
                else:
                    log.info("%s: first subscriber", symbol)
            elif symbol in self.subscribed:
                self.subscribed.discard(symbol)
                if symbol not in self.always:
                    self.leaving[symbol] = now + self.grace_seconds
                    log.info("%s: last subscriber left, stop in %gs", symbol, self.grace_seconds)
        self.expire(now)
        return self.wanted != before

    def expire(self, now: float | None = None) -> bool:
        """Drop symbols whose grace is over; True when the wanted set changed."""
        now = time.monotonic() if now is None else now
        done = [s for s, deadline in self.leaving.items() if deadline <= now]
        for symbol in done:
            del self.leaving[symbol]
            log.info("%s: grace period over, stop streaming", symbol)
        return bool(done)

    def next_deadline(self) -> float | None:
        return min(self.leaving.values(), default=None)

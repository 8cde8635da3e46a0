"""Request weight and unfilled orders, counted as Binance counts them.

Weight: per minute, every request to its paths, refused or not. The count is the
`X-MBX-USED-WEIGHT-1M` header of each answer and what GET /paper/usage reports (tests and
benchmarks read the exchange's own figures, not the client's). Unfilled orders (`OrderCount`):
the `X-MBX-ORDER-COUNT-10S`/`-1D` headers of an order's answer. Nothing is refused for either:
rate limits are injected faults (`faults.py`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from naived.paper.book import Change
from naived.paper.params import Params

USAGE_MINUTES = 60  # minutes of weight history /paper/usage keeps
# Distinct "METHOD /path status" keys /paper/usage counts: paths are the client's to choose (an
# unknown one is answered 404), so past this many every new key is counted under OTHER.
MAX_ANSWER_KEYS = 256
OTHER = "other"


def weight_of(method: str, path: str, params: Params, weight: int | Callable[[Params], int]) -> int:
    """A request's weight: the route's, or Binance's that depends on the parameters (rest-api.md):
    a route's own function of them (the market data's), or one of these."""
    if callable(weight):
        return weight(params)
    if (method, path) == ("GET", "/api/v3/openOrders") and not params.get("symbol"):
        return 80  # every symbol
    if (method, path) == ("GET", "/api/v3/myTrades") and params.get("orderId"):
        return 5
    return weight


class Usage:
    """Weight used in the current minute, and since start. Called from the HTTP threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._minute, self._weight = 0, 0
        self._requests, self._weight_total = 0, 0
        self._minutes: dict[int, int] = {}  # epoch minute -> weight counted in it (the last USAGE_MINUTES)
        # "GET /api/v3/klines 200" -> answers given: what a client (another bot) asked and what it
        # got, refusals included, read from /paper/usage instead of the client's own logs
        self._answers: dict[str, int] = {}

    def answered(self, method: str, path: str, status: int) -> None:
        """One answer sent: counted by method, path and status."""
        key = f"{method} {path} {status}"
        with self._lock:
            if key not in self._answers and len(self._answers) >= MAX_ANSWER_KEYS:
                key = OTHER
            self._answers[key] = self._answers.get(key, 0) + 1

    def count(self, weight: int) -> int:
        """One request of `weight`; the weight used in this minute, with it."""
        with self._lock:
            minute = int(time.time() // 60)
            if minute != self._minute:
                self._minute, self._weight = minute, 0
            self._weight += weight
            self._requests += 1
            self._weight_total += weight
            self._minutes[minute] = self._weight
            while len(self._minutes) > USAGE_MINUTES:
                del self._minutes[min(self._minutes)]
            return self._weight

    def used(self) -> int:
        """The weight used in this minute (for an answer to a request that weighs nothing)."""
        with self._lock:
            return self._weight if self._minute == int(time.time() // 60) else 0

    def counted(self) -> dict[str, object]:
        """Requests and weight since start, weight per minute (the last USAGE_MINUTES), answers
        given by method, path and status."""
        with self._lock:
            return {"requests": self._requests, "weight": self._weight_total,
                    "minutes": {str(m): w for m, w in sorted(self._minutes.items())},
                    "answers": dict(sorted(self._answers.items()))}


class OrderCount:
    """Binance's unfilled order count (faqs/order_count_decrement.md) in its two windows, the
    exchangeInfo `ORDERS` limits: the wall-clock 10 s window and the UTC day. +1 for each order
    placed (a cancelReplace counts its new order even when it was not placed); -1 in both when an
    order fills for the first time, now or later (Binance may take off more for one that first
    fills as a maker: one here, never kinder); never below 0. Kept in memory (a restart starts
    at 0); counted for the headers, never enforced. Called from the HTTP threads and, as the
    book's listener, from whichever thread commits a change."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._window, self._in_window = 0, 0  # epoch s // 10
        self._day, self._in_day = 0, 0  # epoch s // 86400

    def _roll(self) -> None:
        second = int(self._clock())
        if second // 10 != self._window:
            self._window, self._in_window = second // 10, 0
        if second // 86400 != self._day:
            self._day, self._in_day = second // 86400, 0

    def add(self, orders: int) -> None:
        """`orders` placed (negative: first filled)."""
        with self._lock:
            self._roll()
            self._in_window = max(0, self._in_window + orders)
            self._in_day = max(0, self._in_day + orders)

    def on_changes(self, changes: list[Change]) -> None:
        """The book's listener: NEW is an order placed (not a stop triggered: it was counted when
        placed), an order's first TRADE its first fill."""
        for change in changes:
            if change.execution == "NEW" and not change.triggered:
                self.add(1)
            elif change.execution == "TRADE" and len(change.order.fills) == 1:
                self.add(-1)

    def headers(self) -> dict[str, str]:
        """Binance's `X-MBX-ORDER-COUNT-(intervalNum)(intervalLetter)` headers, as counted now."""
        with self._lock:
            self._roll()
            return {"X-MBX-ORDER-COUNT-10S": str(self._in_window), "X-MBX-ORDER-COUNT-1D": str(self._in_day)}

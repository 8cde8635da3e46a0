"""Request weight, counted as Binance counts it: per minute, every request to its paths, refused
or not. The count is the `X-MBX-USED-WEIGHT-1M` header of each answer and what GET /paper/usage
reports (tests and benchmarks read the exchange's own figures, not the client's). Nothing is
refused for weight: rate limits are injected faults (`faults.py`)."""

from __future__ import annotations

import threading
import time

from naived.paper.params import Params

USAGE_MINUTES = 60  # minutes of weight history /paper/usage keeps


def weight_of(method: str, path: str, params: Params, weight: int) -> int:
    """A request's weight: the route's, or Binance's that depends on the parameters (rest-api.md)."""
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
        """Requests and weight since start, and weight per minute (the last USAGE_MINUTES)."""
        with self._lock:
            return {"requests": self._requests, "weight": self._weight_total,
                    "minutes": {str(m): w for m, w in sorted(self._minutes.items())}}

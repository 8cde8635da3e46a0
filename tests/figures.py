"""Percentiles of measured samples, as the benchmarks and the chaos report print them."""

from __future__ import annotations

import statistics


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 (the median), p90, p99 (nearest rank), max and the count of non-empty `samples`."""
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": statistics.median(ordered), "p90": rank(0.9), "p99": rank(0.99), "max": ordered[-1], "n": len(ordered)}

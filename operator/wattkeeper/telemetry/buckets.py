"""Histogram buckets as telemetry reads them: cumulative counts (or rates) per upper bound, +Inf last."""

from __future__ import annotations

import math

BucketRates = tuple[tuple[float, float], ...]


def bucket_rates(cumulative: dict[float, float]) -> BucketRates:
    """Cumulative bucket values as ServiceObservation keeps them: (le, value) by bound, +Inf last."""
    return tuple((le, float(cumulative[le])) for le in sorted(cumulative))


def over_threshold(threshold: float, rates: BucketRates, window_seconds: float) -> tuple[float, float] | None:
    """(observations over `threshold`, observations) over a window, from a histogram's cumulative bucket rates;
    None without buckets.

    Counted above the first bucket bound at or over the threshold: exact where the threshold is a bound (vLLM's
    request ITL buckets hold 0.1 s), a lower bound elsewhere. Linear within the bucket would overstate them:
    vLLM's TTFT buckets around a 2-s SLO are 1 and 2.5 s (vllm/v1/metrics/loggers.py, v0.11.1), and a fleet whose
    TTFTs sit at 1-1.5 s would read as missing a third of them (on the benchmark that cost 3% more energy than the
    bound, bench/README.md)."""
    if not rates:
        return None
    cumulative = dict(rates)
    total = cumulative[max(cumulative)]
    at = min((le for le in cumulative if le >= threshold * (1 - 1e-9)), default=math.inf)
    within = cumulative.get(at, total)
    return max(total - within, 0.0) * window_seconds, total * window_seconds

"""Arrival counts and token-length samples from Prometheus answers: the recent history the control core plans
bursts from (Signals.arrival_counts, prompt_tokens_sample, output_tokens_sample; issue 11 item 1).

vLLM has no arrival counter. The nearest is the TTFT histogram's `_count`: vLLM 0.11.1 observes
vllm:time_to_first_token_seconds once per request, in the step that gives its first token (v1/metrics/stats.py:251-255
IterationStats.update_from_output appends to time_to_first_tokens_iter while the request `is_prefilling`, which
v1/engine/output_processor.py:475 clears after its first output; loggers.py:1049-1050 PrometheusStatLogger.record
observes each). So the counts are requests *started* per bin: under a backlog they trail arrivals by the queueing
time, and the queue (vllm:num_requests_waiting) says how many more there were. The token histograms are observed once
per finished request (loggers.py:1074-1079, from FinishedRequestStats).

Pure functions over the JSON of /api/v1/query: no I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ..planner.load import HISTORY_SECONDS, MIN_TOKEN_SAMPLE, counts_on_grid, token_sample_from_histograms

# The chart's PodMonitor interval and the benchmark's scrape interval: finer bins than the scrape only spread one
# scrape's increase evenly over them.
DEFAULT_ARRIVAL_RESOLUTION_SECONDS = 15.0

# Raw samples of each pod's counter ({sel}: label matchers; {r}: the range). An instant query of a range vector
# returns every sample in the range, per series.
ARRIVALS_QUERY = "vllm:time_to_first_token_seconds_count{{{sel}}}[{r}]"
# Bucket counts over the history, summed over the service's pods.
PROMPT_TOKENS_QUERY = "sum by (le) (increase(vllm:request_prompt_tokens_bucket{{{sel}}}[{r}]))"
OUTPUT_TOKENS_QUERY = "sum by (le) (increase(vllm:request_generation_tokens_bucket{{{sel}}}[{r}]))"

FloatArray = npt.NDArray[np.float64]


class History(NamedTuple):
    """ServiceObservation's history fields; the empty default where Prometheus has no such series."""

    arrival_counts: tuple[float, ...] = ()
    arrival_resolution_seconds: float | None = None
    prompt_tokens_sample: tuple[float, ...] = ()
    output_tokens_sample: tuple[float, ...] = ()

    @classmethod
    def of(cls, counts: tuple[float, ...], resolution_s: float,
           tokens: tuple[tuple[float, ...], tuple[float, ...]]) -> History:
        return cls(counts, resolution_s if counts else None, *tokens)


def history_range(resolution_s: float, history_s: float = HISTORY_SECONDS) -> str:
    """The range to read raw counter samples over: the history plus two scrapes, so that the interval spanning the
    grid's first edge is there to be split (without it the oldest bin misses up to a scrape's worth)."""
    return f"{math.ceil(history_s + 2 * resolution_s)}s"


def _samples(series: dict[str, Any]) -> tuple[list[float], list[float]]:
    times: list[float] = []
    values: list[float] = []
    for stamp, text in series.get("values") or []:
        value = float(text)
        if math.isfinite(value):
            times.append(float(stamp))
            values.append(value)
    return times, values


def newest_sample(series: Iterable[dict[str, Any]]) -> float | None:
    stamps = [float(s["values"][-1][0]) for s in series if s.get("values")]
    return max(stamps) if stamps else None


def arrival_counts(series: Sequence[dict[str, Any]], query_time_s: float, resolution_s: float,
                   history_s: float = HISTORY_SECONDS) -> tuple[float, ...]:
    """Requests per bin over the history, summed over the series (a service's pods, each engine), oldest first;
    () when no series has two samples (no such metric, or nothing scraped twice yet).

    One grid for every series. It ends at the newest sample, not at the query time: the last scrape is up to an
    interval old, and a grid ending later would show the time since as a bin without requests (the benchmark's
    view ends at the last scrape too, bench/wattkeeper_policy.py recent_arrivals). A service whose pods all went
    silent longer than two scrapes ago gets a grid ending two scrapes before the query, its recent bins empty."""
    usable = [s for s in series if len(s.get("values") or []) >= 2]
    newest = newest_sample(usable)
    if newest is None:
        return ()
    end = max(min(newest, query_time_s), query_time_s - 2 * resolution_s)
    # Only the time the counters cover: a service younger than the history (or one whose counters Prometheus
    # holds for less) gets fewer bins, not bins of zeros before it existed. Read as arrivals, those zeros made a
    # 200-s-old service look idle for two thirds of the time and three times as busy for the rest (the demo's
    # rate levels 0.04 / 0.05 / 2.98 and clustering 15-28), and its plans asked 2-3x the watts it needed.
    samples = [_samples(s) for s in usable]
    first = min((times[0] for times, _ in samples if times), default=end)
    bins = max(1, min(round(history_s / resolution_s), int((end - first) // resolution_s)))
    total = np.zeros(bins)
    for times, values in samples:
        total += counts_on_grid(times, values, end, resolution_s, bins)
    return tuple(float(c) for c in total)


def histogram_buckets(series: Iterable[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(upper bounds, cumulative counts) of a `sum by (le)` answer, in rising order of `le` ("+Inf" included);
    buckets whose value is not a number are left out."""
    buckets: dict[float, float] = {}
    for s in series:
        le = (s.get("metric") or {}).get("le")
        if le is None:
            continue
        value = float(s["value"][1])
        if math.isfinite(value):
            bound = float(le)  # Python reads "+Inf" as inf
            buckets[bound] = buckets.get(bound, 0.0) + value
    bounds = sorted(buckets)
    return bounds, [buckets[b] for b in bounds]


def token_samples(prompt: tuple[Sequence[float], Sequence[float]], output: tuple[Sequence[float], Sequence[float]],
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Paired prompt and output lengths from the two histograms' (bounds, counts); () () when either counted fewer
    than MIN_TOKEN_SAMPLE requests: the expansion always gives its full size, and a distribution drawn from a
    handful of requests would pass the core's MIN_TOKEN_SAMPLE check as if it were well observed."""
    for _, counts in (prompt, output):
        if not counts or max(counts) < MIN_TOKEN_SAMPLE:
            return (), ()
    return token_sample_from_histograms(prompt, output)

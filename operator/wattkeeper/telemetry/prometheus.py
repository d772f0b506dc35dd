"""Telemetry from Prometheus: dcgm-exporter or our NVML exporter for power, vLLM's own metrics for load.

Queries are instant queries over a window (rate / avg_over_time), per service by namespace and pod name.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx

from .base import ServiceObservation, TelemetryUnavailable, pod_name_pattern
from .buckets import bucket_rates
from .history import (
    ARRIVALS_QUERY,
    DEFAULT_ARRIVAL_RESOLUTION_SECONDS,
    OUTPUT_TOKENS_QUERY,
    PROMPT_TOKENS_QUERY,
    History,
    arrival_counts,
    histogram_buckets,
    history_range,
    token_samples,
)
from .promql import service_total

# Power, in order of preference: the energy counter is exact over the window; the gauge is a 1 s sample. Each is
# a per-pod template ({sel}: label matchers) read under both exporter label conventions (see promql.py).
POWER_QUERIES = (
    ("dcgm-energy", "rate(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{sel}}}[{w}])", 1e-3),  # mJ/s -> W
    ("dcgm-power", "avg_over_time(DCGM_FI_DEV_POWER_USAGE{{{sel}}}[{w}])", 1.0),
    ("nvml-energy", "rate(wattkeeper_gpu_energy_joules_total{{{sel}}}[{w}])", 1.0),
    ("nvml-power", "avg_over_time(wattkeeper_gpu_power_watts{{{sel}}}[{w}])", 1.0),
)
LOAD_QUERIES = {
    "output_tokens_per_second": "sum(rate(vllm:generation_tokens_total{{{sel}}}[{w}]))",
    "prompt_tokens_per_second": "sum(rate(vllm:prompt_tokens_total{{{sel}}}[{w}]))",
    "requests_per_second": "sum(rate(vllm:request_success_total{{{sel}}}[{w}]))",
    "ttft_p95_seconds": "histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{{sel}}}[{w}])))",
    # vLLM 0.11 names it inter_token_latency; older releases time_per_output_token.
    "itl_p95_seconds": "histogram_quantile(0.95, sum by (le) (rate(vllm:inter_token_latency_seconds_bucket{{{sel}}}[{w}]) "
    "or rate(vllm:time_per_output_token_seconds_bucket{{{sel}}}[{w}])))",
    # Once per finished request, its mean ITL (vLLM 0.11.1 v1/metrics/loggers.py:802, observed at :1080). An older
    # vLLM has no such series: the empty result reads as None.
    "request_itl_p95_seconds": "histogram_quantile(0.95, sum by (le) "
    "(rate(vllm:request_time_per_output_token_seconds_bucket{{{sel}}}[{w}])))",
    "running_requests": "sum(avg_over_time(vllm:num_requests_running{{{sel}}}[{w}]))",
    "waiting_requests": "sum(avg_over_time(vllm:num_requests_waiting{{{sel}}}[{w}]))",
    # The queue's growth (ServiceObservation.waiting_growth_per_second); a pod with one sample in the window has
    # none, and no pod with two gives an empty result, None.
    "waiting_growth_per_second": "sum(deriv(vllm:num_requests_waiting{{{sel}}}[{w}]))",
    # Bursts: the p95 of 30-s rates sampled every 10 s over 10 minutes (a subquery; Prometheus >= 2.7).
    "burst_requests_per_second": "quantile_over_time(0.95, sum(rate(vllm:request_success_total{{{sel}}}[30s]))"
    "[10m:10s])",
}
PODS_QUERY = "count(count by (pod) (vllm:num_requests_running{{{sel}}}))"
# The buckets themselves (ServiceObservation.ttft_bucket_rates, request_itl_bucket_rates).
BUCKET_QUERIES = {
    "ttft_bucket_rates": "sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{{sel}}}[{w}]))",
    "request_itl_bucket_rates": "sum by (le) (rate(vllm:request_time_per_output_token_seconds_bucket{{{sel}}}[{w}]))",
}


class PrometheusSource:
    """TelemetrySource over the Prometheus HTTP API."""

    def __init__(self, url: str, timeout_seconds: float = 5.0, client: httpx.Client | None = None,
                 arrival_resolution_seconds: float = DEFAULT_ARRIVAL_RESOLUTION_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = url.rstrip("/")
        self._client = client or httpx.Client(timeout=timeout_seconds)
        self.arrival_resolution_seconds = arrival_resolution_seconds
        self.clock = clock

    def query_result(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """The `result` of an instant query (at `at`, else Prometheus' now): a vector's or a matrix's series."""
        params: dict[str, str] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            response = self._client.get(f"{self.url}/api/v1/query", params=params)
        except httpx.HTTPError as err:
            raise TelemetryUnavailable(f"Prometheus at {self.url} unreachable: {err}") from err
        if response.status_code != 200:
            raise TelemetryUnavailable(f"Prometheus answered {response.status_code}: {response.text[:200]}")
        try:
            return list(response.json().get("data", {}).get("result", []))
        except ValueError as err:
            raise TelemetryUnavailable(f"Prometheus answered something that is not JSON: {err}") from err

    def _query(self, promql: str) -> float | None:
        result = self.query_result(promql)
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) or math.isinf(value) else value

    def _buckets(self, promql: str) -> tuple[tuple[float, float], ...]:
        """A `sum by (le)` query's result as cumulative bucket rates; empty where it has no series."""
        cumulative: dict[float, float] = {}
        for row in self.query_result(promql):
            try:
                le = float(row["metric"]["le"])
                value = float(row["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if math.isfinite(value):
                cumulative[le] = value
        return bucket_rates(cumulative)

    def _history(self, sel: str) -> History:
        """Arrival counts and token samples over the last 10 minutes (telemetry/history.py); empty where
        Prometheus has no such series (an older vLLM, nothing scraped yet): the core then plans as before."""
        res = self.arrival_resolution_seconds
        now = self.clock()
        span = history_range(res)
        try:
            counts = arrival_counts(self.query_result(ARRIVALS_QUERY.format(sel=sel, r=span), at=now), now, res)
            tokens = token_samples(
                histogram_buckets(self.query_result(PROMPT_TOKENS_QUERY.format(sel=sel, r=span), at=now)),
                histogram_buckets(self.query_result(OUTPUT_TOKENS_QUERY.format(sel=sel, r=span), at=now)))
        except TelemetryUnavailable:  # e.g. a sample limit hit: the window figures still stand
            return History()
        return History.of(counts, res, tokens)

    def observe_service(self, namespace: str, service: str, window_seconds: float) -> ServiceObservation:
        sel = f'namespace="{namespace}",pod=~"{pod_name_pattern(service)}"'
        window = f"{max(int(window_seconds), 5)}s"
        watts, source = None, ""
        for name, template, scale in POWER_QUERIES:
            per_pod = template.replace("{w}", window)
            watts = self._query(service_total(per_pod, namespace, pod_name_pattern(service), scale))
            if watts is not None:
                source = name
                break
        if watts is None:
            raise TelemetryUnavailable(
                f"no GPU power series for pods {namespace}/{pod_name_pattern(service)} in Prometheus "
                "(DCGM_FI_DEV_* or wattkeeper_gpu_*) over the last " + window
            )
        load: dict[str, Any] = {key: self._query(template.format(sel=sel, w=window))
                                for key, template in LOAD_QUERIES.items()}
        pods = self._query(PODS_QUERY.format(sel=sel))
        for key, template in BUCKET_QUERIES.items():
            load[key] = self._buckets(template.format(sel=sel, w=window))
        observed = ServiceObservation(watts=watts, pods_reporting=int(pods or 0), power_source=source, **load)
        return replace(observed, **self._history(sel)._asdict())

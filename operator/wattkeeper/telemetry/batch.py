"""Telemetry for every service of a pass at once: one PromQL per metric, grouped `by (namespace, pod)`.

Per-service queries cost ~12 requests per service per pass (12,000 at 1,000 services); these cost ~12 per pass.
Pods are attributed to services by name, as `pod_name_pattern` does: a Deployment's pods are named
<service>-<replicaset hash>-<suffix>, so the service is the name without its last two dash-separated parts.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import httpx

from .base import ServiceObservation, TelemetrySource, TelemetryUnavailable, pod_name_pattern
from .buckets import bucket_rates
from .history import ARRIVALS_QUERY, History, arrival_counts, histogram_buckets, history_range, token_samples
from .prometheus import POWER_QUERIES, PrometheusSource
from .promql import pod_series
from .scrape import quantile_from_buckets

ServiceKey = tuple[str, str]  # (namespace, service)
# What observe_many returns per service: the observation, or why there is none (silence is not zero).
Outcome = ServiceObservation | TelemetryUnavailable

# GPU power per pod, read under both label conventions of GPU exporters (dcgm-exporter scraped without
# honorLabels names the pod in exported_namespace/exported_pod; see promql.py). Same templates as prometheus.py.
POWER_BY_POD = POWER_QUERIES
SUMS_BY_POD = {
    "output_tokens_per_second": "sum by (namespace, pod) (rate(vllm:generation_tokens_total{{{sel}}}[{w}]))",
    "prompt_tokens_per_second": "sum by (namespace, pod) (rate(vllm:prompt_tokens_total{{{sel}}}[{w}]))",
    "requests_per_second": "sum by (namespace, pod) (rate(vllm:request_success_total{{{sel}}}[{w}]))",
    "running_requests": "sum by (namespace, pod) (avg_over_time(vllm:num_requests_running{{{sel}}}[{w}]))",
    "waiting_requests": "sum by (namespace, pod) (avg_over_time(vllm:num_requests_waiting{{{sel}}}[{w}]))",
    "waiting_growth_per_second": "sum by (namespace, pod) (deriv(vllm:num_requests_waiting{{{sel}}}[{w}]))",
}
BUCKETS_BY_POD = {
    "ttft_p95_seconds": "sum by (namespace, pod, le) (rate(vllm:time_to_first_token_seconds_bucket{{{sel}}}[{w}]))",
    # vLLM 0.11 names it inter_token_latency; older releases time_per_output_token.
    "itl_p95_seconds": "sum by (namespace, pod, le) (rate(vllm:inter_token_latency_seconds_bucket{{{sel}}}[{w}]) "
    "or rate(vllm:time_per_output_token_seconds_bucket{{{sel}}}[{w}]))",
    # Once per finished request, its mean ITL (prometheus.py LOAD_QUERIES "request_itl_p95_seconds"); no series
    # (an older vLLM) leaves no buckets, hence None.
    "request_itl_p95_seconds": "sum by (namespace, pod, le) "
    "(rate(vllm:request_time_per_output_token_seconds_bucket{{{sel}}}[{w}]))",
}
# The histograms whose buckets are also kept as read (ServiceObservation): requests over an SLO are counted on them.
BUCKET_RATE_FIELDS = {"ttft_p95_seconds": "ttft_bucket_rates", "request_itl_p95_seconds": "request_itl_bucket_rates"}
PODS_BY_POD = "count by (namespace, pod) (vllm:num_requests_running{{{sel}}})"
# Bursts per service (prometheus.py LOAD_QUERIES "burst_requests_per_second"): the quantile of the service's
# summed rate, not a sum of per-pod quantiles, so pods are grouped into their service (the Deployment's name, as
# `service_of_pod` reads it) before the subquery.
BURST_BY_SERVICE = (
    'quantile_over_time(0.95, sum by (namespace, service) (label_replace('
    'rate(vllm:request_success_total{{{sel}}}[30s]), "service", "$1", "pod", "(.+)-[^-]+-[^-]+"))[10m:10s])'
)

# The arrival and token history (telemetry/history.py), one query per metric for every service of the pass. The
# counters' raw samples come per pod (label_replace takes no range vector) and are grouped here; the token
# histograms are summed per service in Prometheus, like BURST_BY_SERVICE.
ARRIVALS_BY_POD = ARRIVALS_QUERY
TOKENS_BY_SERVICE = (
    'sum by (namespace, service, le) (label_replace('
    'increase({metric}{{{sel}}}[{r}]), "service", "$1", "pod", "(.+)-[^-]+-[^-]+"))'
)


def service_of_pod(pod: str) -> str | None:
    """The Deployment (service) a pod belongs to, from its name; None for a name that is not a Deployment pod's."""
    parts = pod.rsplit("-", 2)
    return parts[0] if len(parts) == 3 and parts[0] else None


def _selector(namespaces: Iterable[str]) -> str:
    names = sorted(set(namespaces))
    # Namespaces are DNS labels: no regex metacharacters to escape.
    return f'namespace=~"{"|".join(names)}",pod!=""' if names else 'pod!=""'


class _Batch:
    def __init__(self, source: PrometheusSource, keys: set[ServiceKey], window_seconds: float) -> None:
        self.source = source
        self.keys = keys
        self.sel = _selector(ns for ns, _ in keys)
        names = sorted({ns for ns, _ in keys})
        self.namespace_regex = "|".join(names) if names else None
        self.window = f"{max(int(window_seconds), 5)}s"

    def power_query(self, template: str, scale: float) -> str:
        """A per-pod power template as one query for every pod of the pass, under both label conventions."""
        query = pod_series(template.replace("{w}", self.window), namespace_regex=self.namespace_regex)
        return query if scale == 1.0 else f"({query}) * {scale:g}"

    def vector(self, template: str) -> list[dict[str, Any]]:
        return self.query(template.format(sel=self.sel, w=self.window))

    def query(self, promql: str) -> list[dict[str, Any]]:
        try:
            response = self.source._client.get(f"{self.source.url}/api/v1/query", params={"query": promql})
        except httpx.HTTPError as err:
            raise TelemetryUnavailable(f"Prometheus at {self.source.url} unreachable: {err}") from err
        if response.status_code != 200:
            raise TelemetryUnavailable(f"Prometheus answered {response.status_code}: {response.text[:200]}")
        try:
            return list(response.json().get("data", {}).get("result", []))
        except ValueError as err:
            raise TelemetryUnavailable(f"Prometheus answered something that is not JSON: {err}") from err

    def per_service(self, template: str, promql: str | None = None) -> dict[ServiceKey, float]:
        """Sums per service of `template` (formatted with the pass's selector), or of a ready `promql`."""
        out: dict[ServiceKey, float] = defaultdict(float)
        for series in (self.query(promql) if promql is not None else self.vector(template)):
            labels = series.get("metric") or {}
            key = (str(labels.get("namespace")), service_of_pod(str(labels.get("pod") or "")) or "")
            if key not in self.keys:
                continue
            value = float(series["value"][1])
            if math.isfinite(value):
                out[key] += value
        return dict(out)

    def by_service(self, template: str) -> dict[ServiceKey, float]:
        """One value per (namespace, service) series of `template`, already grouped by service."""
        out: dict[ServiceKey, float] = {}
        for series in self.vector(template):
            labels = series.get("metric") or {}
            key = (str(labels.get("namespace")), str(labels.get("service") or ""))
            value = float(series["value"][1])
            if key in self.keys and math.isfinite(value):
                out[key] = value
        return out

    def history(self) -> dict[ServiceKey, History]:
        """Each service's arrival counts and token samples (ServiceObservation fields); a service without such
        series (an older vLLM, nothing scraped twice yet) has none, and the pass goes on without them when
        Prometheus refuses these queries (e.g. a sample limit at a large fleet)."""
        res = self.source.arrival_resolution_seconds
        now = self.source.clock()
        span = history_range(res)
        try:
            raw = self.source.query_result(ARRIVALS_BY_POD.format(sel=self.sel, r=span), at=now)
            tokens = {
                name: self.source.query_result(
                    TOKENS_BY_SERVICE.format(metric=metric, sel=self.sel, r=span), at=now)
                for name, metric in (("prompt", "vllm:request_prompt_tokens_bucket"),
                                     ("output", "vllm:request_generation_tokens_bucket"))
            }
        except TelemetryUnavailable:
            return {}
        pods: dict[ServiceKey, list[dict[str, Any]]] = defaultdict(list)
        for series in raw:
            labels = series.get("metric") or {}
            key = (str(labels.get("namespace")), service_of_pod(str(labels.get("pod") or "")) or "")
            if key in self.keys:
                pods[key].append(series)
        histograms: dict[str, dict[ServiceKey, list[dict[str, Any]]]] = {name: defaultdict(list) for name in tokens}
        for name, result in tokens.items():
            for series in result:
                labels = series.get("metric") or {}
                key = (str(labels.get("namespace")), str(labels.get("service") or ""))
                if key in self.keys:
                    histograms[name][key].append(series)
        out: dict[ServiceKey, History] = {}
        for key in self.keys:
            counts = arrival_counts(pods.get(key, []), now, res)
            sample = token_samples(histogram_buckets(histograms["prompt"].get(key, [])),
                                   histogram_buckets(histograms["output"].get(key, [])))
            out[key] = History.of(counts, res, sample)
        return out

    def buckets(self, template: str) -> dict[ServiceKey, dict[float, float]]:
        out: dict[ServiceKey, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for series in self.vector(template):
            labels = series.get("metric") or {}
            key = (str(labels.get("namespace")), service_of_pod(str(labels.get("pod") or "")) or "")
            if key not in self.keys:
                continue
            value = float(series["value"][1])
            if math.isfinite(value):
                out[key][float(labels.get("le", "inf"))] += value
        return {k: dict(v) for k, v in out.items()}


def observe_prometheus(source: PrometheusSource, keys: Iterable[ServiceKey],
                       window_seconds: float) -> dict[ServiceKey, Outcome]:
    wanted = set(keys)
    if not wanted:
        return {}
    batch = _Batch(source, wanted, window_seconds)
    try:
        power: dict[ServiceKey, tuple[float, str]] = {}
        for name, template, scale in POWER_BY_POD:
            for key, watts in batch.per_service(template, batch.power_query(template, scale)).items():
                power.setdefault(key, (watts, name))  # the first source in order of preference wins
        sums = {field: batch.per_service(template) for field, template in SUMS_BY_POD.items()}
        quantiles = {field: batch.buckets(template) for field, template in BUCKETS_BY_POD.items()}
        pods = batch.per_service(PODS_BY_POD)
        bursts = batch.by_service(BURST_BY_SERVICE)
        history = batch.history()
    except TelemetryUnavailable as err:
        return {key: err for key in wanted}
    out: dict[ServiceKey, Outcome] = {}
    for key in wanted:
        if key not in power:
            out[key] = TelemetryUnavailable(
                f"no GPU power series for pods {key[0]}/{pod_name_pattern(key[1])} in Prometheus "
                f"(DCGM_FI_DEV_* or wattkeeper_gpu_*) over the last {batch.window}")
            continue
        watts, source_name = power[key]
        fields: dict[str, Any] = {field: values.get(key) for field, values in sums.items()}
        for field, per_key in quantiles.items():
            fields[field] = quantile_from_buckets(0.95, per_key.get(key, {}))
        for field, bucket_field in BUCKET_RATE_FIELDS.items():
            fields[bucket_field] = bucket_rates(quantiles[field].get(key, {}))
        observed = ServiceObservation(watts=watts, pods_reporting=int(pods.get(key, 0)), power_source=source_name,
                                      burst_requests_per_second=bursts.get(key), **fields)
        out[key] = replace(observed, **history.get(key, History())._asdict())
    return out


def observe_many(source: TelemetrySource, keys: Iterable[ServiceKey], window_seconds: float) -> dict[ServiceKey, Outcome]:
    """Every service's observation: in one batch from Prometheus, else one service at a time."""
    if isinstance(source, PrometheusSource):
        return observe_prometheus(source, keys, window_seconds)
    out: dict[ServiceKey, Outcome] = {}
    for key in keys:
        try:
            out[key] = source.observe_service(key[0], key[1], window_seconds)
        except TelemetryUnavailable as err:
            out[key] = err
        except Exception as err:  # a source that breaks is a source that is silent, never a crashed pass
            out[key] = TelemetryUnavailable(f"telemetry failed: {type(err).__name__}: {err}")
    return out

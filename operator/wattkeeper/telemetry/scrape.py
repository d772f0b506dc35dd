"""Telemetry without Prometheus: scrape each pod's /metrics directly and difference the counters.

Tokens, requests, latency and queue come from vLLM's own port. vLLM exports no power: GPU power comes from the GPU
exporter of the pod's node (dcgm-exporter or the NVML exporter), whose series name the pod holding each GPU in
their `namespace` and `pod` labels (read raw here, so no exported_* renaming). A pod whose own port serves power
(the GPU-less simulator) needs no exporter.
The first scrape of a pod gives gauges only (power, queue); rates come from the second on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .base import ServiceObservation, TelemetryUnavailable
from .buckets import bucket_rates


@dataclass(frozen=True)
class ScrapeTarget:
    """A running pod of a service: its vLLM /metrics and the /metrics of its node's GPU exporters."""

    pod: str
    metrics_url: str
    exporter_urls: tuple[str, ...] = ()


# The scrape targets of a service's running pods; (pod name, metrics URL) pairs are accepted too.
PodLister = Callable[[str, str], Iterable[ScrapeTarget | tuple[str, str]]]

COUNTERS = {
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 1e-3,  # mJ -> J
    "wattkeeper_gpu_energy_joules_total": 1.0,
    "vllm:generation_tokens_total": 1.0,
    "vllm:prompt_tokens_total": 1.0,
    "vllm:request_success_total": 1.0,
}
POWER_GAUGES = ("DCGM_FI_DEV_POWER_USAGE", "wattkeeper_gpu_power_watts")
POWER_COUNTERS = ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "wattkeeper_gpu_energy_joules_total")
HISTOGRAMS = {
    "ttft": "vllm:time_to_first_token_seconds",
    "itl": "vllm:inter_token_latency_seconds",
    # Once per finished request, its mean ITL (vLLM 0.11.1 v1/metrics/loggers.py:802, observed at :1080).
    "request_itl": "vllm:request_time_per_output_token_seconds",
}


def _canonical(name: str) -> str:
    """prometheus_client's parser names the samples of a counter family <family>_total, also when the exposition
    has no such suffix (dcgm-exporter's DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION): map them back."""
    if name not in COUNTERS and name.endswith("_total") and name[: -len("_total")] in COUNTERS:
        return name[: -len("_total")]
    return name


@dataclass
class PodSample:
    at: float
    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)


def parse_sample(text: str, at: float) -> PodSample:
    """Sum each metric of interest over its series (GPUs of a pod, models of a server)."""
    sample = PodSample(at=at)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = _canonical(s.name)
            if name in COUNTERS:
                sample.counters[name] = sample.counters.get(name, 0.0) + s.value * COUNTERS[name]
            elif name in POWER_GAUGES or name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
                sample.gauges[name] = sample.gauges.get(name, 0.0) + s.value
            else:
                for key, hist in HISTOGRAMS.items():
                    if name in (f"{hist}_bucket", "vllm:time_per_output_token_seconds_bucket" if key == "itl" else ""):
                        le = float(s.labels.get("le", "inf"))
                        buckets = sample.buckets.setdefault(key, {})
                        buckets[le] = buckets.get(le, 0.0) + s.value
    return sample


def pod_power(text: str, namespace: str, pod: str) -> tuple[dict[str, float], dict[str, float]]:
    """From a GPU exporter's exposition, the power counters and gauges of the GPUs `namespace/pod` holds, summed.

    dcgm-exporter sets `namespace`/`pod` on the series of an allocated GPU (4.5.x internal/pkg/transformation
    kubernetes.go, PodMapper.Process; const.go:21-22); the NVML exporter does the same. With several containers
    or time-slicing, one GPU may appear once per pod: each series counts for the pod it names."""
    counters: dict[str, float] = {}
    gauges: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("namespace") != namespace or s.labels.get("pod") != pod:
                continue
            name = _canonical(s.name)
            if name in POWER_COUNTERS:
                counters[name] = counters.get(name, 0.0) + s.value * COUNTERS[name]
            elif name in POWER_GAUGES:
                gauges[name] = gauges.get(name, 0.0) + s.value
    return counters, gauges


EXPORTER_PORT_NAMES = ("metrics", "gpu-metrics")  # dcgm-exporter's chart and the GPU Operator name them so
EXPORTER_DEFAULT_PORT = 9400


def exporter_urls_by_node(pods: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """The /metrics URL of each Running GPU-exporter pod (Kubernetes JSON), by node name."""
    urls: dict[str, list[str]] = {}
    for pod in pods:
        status, spec = pod.get("status") or {}, pod.get("spec") or {}
        ip, node = status.get("podIP"), spec.get("nodeName")
        if status.get("phase") != "Running" or not ip or not node:
            continue
        ports = [p for c in spec.get("containers") or [] for p in c.get("ports") or []]
        port = next((p["containerPort"] for p in ports if p.get("name") in EXPORTER_PORT_NAMES), EXPORTER_DEFAULT_PORT)
        url = f"http://{ip}:{port}/metrics"
        if url not in urls.setdefault(node, []):
            urls[node].append(url)
    return {node: tuple(found) for node, found in urls.items()}


def quantile_from_buckets(q: float, cumulative: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket counts (linear within a bucket)."""
    if not cumulative:
        return None
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le in bounds:
        count = cumulative[le]
        if count >= rank:
            if le == float("inf"):
                return lower_bound
            width = count - lower_count
            return lower_bound + (le - lower_bound) * ((rank - lower_count) / width if width > 0 else 1.0)
        lower_bound, lower_count = le, count
    return bounds[-1]


class DirectScrapeSource:
    """TelemetrySource that scrapes pods itself, for clusters without Prometheus."""

    def __init__(self, list_pods: PodLister, timeout_seconds: float = 3.0, client: httpx.Client | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._list_pods = list_pods
        self._client = client or httpx.Client(timeout=timeout_seconds)
        self._clock = clock
        self._previous: dict[str, PodSample] = {}

    def _get(self, url: str) -> str | None:
        try:
            response = self._client.get(url)
        except httpx.HTTPError:
            return None
        return response.text if response.status_code == 200 else None

    def _scrape(self, url: str) -> PodSample | None:
        text = self._get(url)
        return parse_sample(text, self._clock()) if text is not None else None

    def _scrape_target(self, namespace: str, target: ScrapeTarget, exporters: dict[str, str | None]) -> PodSample | None:
        """vLLM's metrics, with the pod's GPU power from its node's exporters when they report it."""
        sample = self._scrape(target.metrics_url)
        if sample is None:
            return None
        for url in target.exporter_urls:
            if url not in exporters:  # one scrape per exporter per observation, shared by the pods of a node
                exporters[url] = self._get(url)
            text = exporters[url]
            if text is None:
                continue
            counters, gauges = pod_power(text, namespace, target.pod)
            if counters or gauges:
                # The exporter measures the GPUs; it replaces any power the pod's own port reports.
                for name in (*POWER_COUNTERS, *POWER_GAUGES):
                    sample.counters.pop(name, None)
                    sample.gauges.pop(name, None)
                sample.counters.update(counters)
                sample.gauges.update(gauges)
                break
        return sample

    def observe_service(self, namespace: str, service: str, window_seconds: float) -> ServiceObservation:
        pods = [p if isinstance(p, ScrapeTarget) else ScrapeTarget(*p) for p in self._list_pods(namespace, service)]
        if not pods:
            raise TelemetryUnavailable(f"no running pods of {namespace}/{service} to scrape")
        watts = 0.0
        have_power = False
        rates: dict[str, float] = {}
        gauges: dict[str, float] = {}
        deltas: dict[str, dict[float, float]] = {}
        bucket_per_second: dict[str, dict[float, float]] = {}
        reporting = 0
        growth: float | None = None  # the waiting gauge's change since the last scrape, pods seen at both
        exporters: dict[str, str | None] = {}
        for target in pods:
            key = f"{namespace}/{target.pod}"
            current = self._scrape_target(namespace, target, exporters)
            if current is None:
                continue
            reporting += 1
            previous = self._previous.get(key)
            self._previous[key] = current
            dt = current.at - previous.at if previous else 0.0
            energy_name = next((n for n in ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "wattkeeper_gpu_energy_joules_total")
                                if n in current.counters), None)
            if previous and dt > 0 and energy_name and energy_name in previous.counters \
                    and current.counters[energy_name] >= previous.counters[energy_name]:
                watts += (current.counters[energy_name] - previous.counters[energy_name]) / dt
                have_power = True
            else:
                gauge = next((current.gauges[n] for n in POWER_GAUGES if n in current.gauges), None)
                if gauge is not None:
                    watts += gauge
                    have_power = True
            for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
                gauges[name] = gauges.get(name, 0.0) + current.gauges.get(name, 0.0)
            if previous and dt > 0:
                waiting_before = previous.gauges.get("vllm:num_requests_waiting")
                waiting_now = current.gauges.get("vllm:num_requests_waiting")
                if waiting_before is not None and waiting_now is not None:
                    growth = (growth or 0.0) + (waiting_now - waiting_before) / dt
                for name, value in current.counters.items():
                    before = previous.counters.get(name)
                    if before is not None and value >= before:  # a restarted pod resets its counters
                        rates[name] = rates.get(name, 0.0) + (value - before) / dt
                for hist, buckets in current.buckets.items():
                    before_buckets = previous.buckets.get(hist, {})
                    acc = deltas.setdefault(hist, {})
                    per_second = bucket_per_second.setdefault(hist, {})
                    for le, count in buckets.items():
                        delta = max(0.0, count - before_buckets.get(le, 0.0))
                        acc[le] = acc.get(le, 0.0) + delta
                        per_second[le] = per_second.get(le, 0.0) + delta / dt
        if not have_power:
            raise TelemetryUnavailable(
                f"none of {len(pods)} pods of {namespace}/{service} reported GPU power: vLLM exports none, and no GPU "
                "exporter (dcgm-exporter or the NVML exporter) on their nodes named them"
            )
        return ServiceObservation(
            watts=watts,
            output_tokens_per_second=rates.get("vllm:generation_tokens_total"),
            prompt_tokens_per_second=rates.get("vllm:prompt_tokens_total"),
            requests_per_second=rates.get("vllm:request_success_total"),
            ttft_p95_seconds=quantile_from_buckets(0.95, deltas.get("ttft", {})),
            itl_p95_seconds=quantile_from_buckets(0.95, deltas.get("itl", {})),
            request_itl_p95_seconds=quantile_from_buckets(0.95, deltas.get("request_itl", {})),
            ttft_bucket_rates=bucket_rates(bucket_per_second.get("ttft", {})),
            request_itl_bucket_rates=bucket_rates(bucket_per_second.get("request_itl", {})),
            running_requests=gauges.get("vllm:num_requests_running"),
            waiting_requests=gauges.get("vllm:num_requests_waiting"),
            waiting_growth_per_second=growth,
            pods_reporting=reporting,
            power_source="scrape",
        )

"""Scrape mode: the GPU exporters by node, a pod's power out of an exporter's exposition, and the latency
histograms differenced between scrapes of the simulator's /metrics."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from wattkeeper.telemetry.buckets import over_threshold
from wattkeeper.telemetry.promql import pod_series, service_total
from wattkeeper.telemetry.scrape import DirectScrapeSource, exporter_urls_by_node, pod_power
from wattkeeper_runtime.engine import EngineRequest
from wattkeeper_runtime.simmetrics import VllmMetrics

EXPOSITION = """# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-a",namespace="team-a",pod="llama-1",container="vllm"} 400
DCGM_FI_DEV_POWER_USAGE{gpu="1",UUID="GPU-b",namespace="team-a",pod="llama-1",container="vllm"} 300
DCGM_FI_DEV_POWER_USAGE{gpu="2",UUID="GPU-c",namespace="team-b",pod="llama-1",container="vllm"} 200
DCGM_FI_DEV_POWER_USAGE{gpu="3",UUID="GPU-d"} 60
# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0",UUID="GPU-a",namespace="team-a",pod="llama-1"} 5000
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="1",UUID="GPU-b",namespace="team-a",pod="llama-1"} 3000
"""


def test_pod_power_sums_the_gpus_the_pod_holds_only() -> None:
    counters, gauges = pod_power(EXPOSITION, "team-a", "llama-1")
    assert gauges == {"DCGM_FI_DEV_POWER_USAGE": 700.0}
    assert counters == {"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 8.0}  # mJ -> J
    assert pod_power(EXPOSITION, "team-a", "llama-2") == ({}, {})


def _pod(name: str, node: str, ip: str | None, ports: list[dict[str, Any]], phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": phase, "podIP": ip}}


def test_exporters_by_node_use_the_named_metrics_port_else_9400() -> None:
    urls = exporter_urls_by_node([
        _pod("dcgm-exporter-a", "n1", "10.0.0.5", [{"name": "metrics", "containerPort": 9400}]),
        _pod("nvidia-dcgm-exporter-b", "n2", "10.0.1.5", [{"name": "gpu-metrics", "containerPort": 9401}]),
        _pod("nvml-exporter-c", "n2", "10.0.1.6", []),
        _pod("pending", "n3", None, []),
        _pod("gone", "n3", "10.0.2.5", [], phase="Succeeded"),
    ])
    assert urls == {"n1": ("http://10.0.0.5:9400/metrics",),
                    "n2": ("http://10.0.1.5:9401/metrics", "http://10.0.1.6:9400/metrics")}


def test_promql_reads_both_label_conventions() -> None:
    one = pod_series("rate(M{{{sel}}}[1m])", "ns", "svc-[a-z0-9]+-[a-z0-9]+")
    assert 'rate(M{namespace="ns",pod=~"svc-[a-z0-9]+-[a-z0-9]+",exported_pod=""}[1m])' in one
    assert 'rate(M{exported_namespace="ns",exported_pod=~"svc-[a-z0-9]+-[a-z0-9]+"}[1m])' in one
    assert '"namespace", "$1", "exported_namespace", "(.+)"' in one and " or " in one
    every = pod_series("M{{{sel}}}")
    assert 'M{pod!="",exported_pod=""}' in every and 'M{exported_pod!=""}' in every
    some = pod_series("M{{{sel}}}", namespace_regex="a|b")
    assert 'M{namespace=~"a|b",pod!="",exported_pod=""}' in some and 'M{exported_namespace=~"a|b",exported_pod!=""}' in some
    assert service_total("M{{{sel}}}", "ns", "p", 1e-3).endswith(" * 0.001")


def _vllm_exposition(mean_itls_s: list[float]) -> str:
    """The simulator's vLLM metrics after requests finished with the given mean ITLs (10 tokens each), plus power."""
    metrics = VllmMetrics("m", 4096)
    for i, itl in enumerate(mean_itls_s):
        request = EngineRequest(f"r{i}", 100, 10, output_tokens=10, first_token_s=1.0, last_token_s=1.0 + 9 * itl)
        request.finished_s = request.last_token_s
        metrics.record_finished(request, "stop")
    text = generate_latest(metrics.registry).decode()
    return text + '# TYPE DCGM_FI_DEV_POWER_USAGE gauge\nDCGM_FI_DEV_POWER_USAGE{gpu="0"} 350\n'


class _Pods:
    """Each pod's /metrics as the test sets it; a clock the test moves."""

    def __init__(self) -> None:
        self.text: dict[str, str] = {}
        self.now = 0.0

    def handler(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=self.text[request.url.host])


def test_scrape_reads_the_p95_of_requests_mean_itl_from_the_deltas_and_none_where_absent() -> None:
    pods = _Pods()
    source = DirectScrapeSource(lambda ns, svc: [(f"{svc}-1-a", f"http://{svc}/metrics")],
                                client=httpx.Client(transport=httpx.MockTransport(pods.handler)),
                                clock=lambda: pods.now)
    before = [0.5] * 20  # slow, but before the window: differenced away
    pods.text["new"] = _vllm_exposition(before)
    pods.text["old"] = '# TYPE DCGM_FI_DEV_POWER_USAGE gauge\nDCGM_FI_DEV_POWER_USAGE{gpu="0"} 350\n'
    assert source.observe_service("ns", "new", 10).request_itl_p95_seconds is None  # first scrape: no deltas
    pods.now = 10.0
    pods.text["new"] = _vllm_exposition(before + [0.02] * 19 + [0.3])
    obs = source.observe_service("ns", "new", 10)
    # 20 new requests, 19 in (0.01, 0.025] and 1 in (0.2, 0.3]: the 19th lies at the top of the first.
    assert obs.request_itl_p95_seconds == pytest.approx(0.025)
    # The buckets as read, per second over the window: one request of 20 over a 100-ms ITL SLO (control/tail.py).
    assert over_threshold(0.1, obs.request_itl_bucket_rates, 10.0) == pytest.approx((1.0, 20.0))
    source.observe_service("ns", "old", 10)
    pods.now = 20.0
    old = source.observe_service("ns", "old", 10)  # a vLLM without the histogram
    assert old.watts == 350 and old.request_itl_p95_seconds is None


def test_scrape_reads_the_queues_growth_between_scrapes() -> None:
    """The waiting gauge's change since the last scrape, per second: a standing queue grows by nothing."""
    pods = _Pods()
    source = DirectScrapeSource(lambda ns, svc: [(f"{svc}-1-a", f"http://{svc}/metrics")],
                                client=httpx.Client(transport=httpx.MockTransport(pods.handler)),
                                clock=lambda: pods.now)

    def exposition(waiting: int) -> str:
        return (f'# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name="m"}} {waiting}\n'
                '# TYPE DCGM_FI_DEV_POWER_USAGE gauge\nDCGM_FI_DEV_POWER_USAGE{gpu="0"} 350\n')

    pods.text["svc"] = exposition(2)
    first = source.observe_service("ns", "svc", 10)
    assert first.waiting_requests == 2 and first.waiting_growth_per_second is None  # one scrape: no change yet
    pods.now, pods.text["svc"] = 10.0, exposition(6)
    assert source.observe_service("ns", "svc", 10).waiting_growth_per_second == pytest.approx(0.4)
    pods.now = 20.0
    standing = source.observe_service("ns", "svc", 10)
    assert standing.waiting_requests == 6 and standing.waiting_growth_per_second == 0.0

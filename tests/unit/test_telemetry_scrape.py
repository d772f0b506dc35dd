"""Scrape mode's pure parts: the GPU exporters by node, and a pod's power out of an exporter's exposition."""

from __future__ import annotations

from typing import Any

from wattkeeper.telemetry.promql import pod_series, service_total
from wattkeeper.telemetry.scrape import exporter_urls_by_node, pod_power

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

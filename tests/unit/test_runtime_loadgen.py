"""The load generator's pure parts: traces, endpoint registry, balancing, summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from wattkeeper_runtime.loadgen import (
    Balancer,
    Endpoint,
    RequestResult,
    check_loopback,
    load_endpoints,
    read_azure_trace,
    summarise,
    synthetic_diurnal_trace,
)


def test_read_azure_trace(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
    )
    trace = read_azure_trace(path)
    assert [(round(r.offset_s, 4), r.prompt_tokens, r.output_tokens) for r in trace] == [
        (0.0, 374, 44),
        (4.3146, 396, 109),
    ]


def test_shared_azure_trace_when_present() -> None:
    from wattkeeper_runtime.loadgen import default_trace_path

    path = default_trace_path()
    if path is None:
        pytest.skip("shared data folder with the Azure trace is absent")
    trace = read_azure_trace(path)
    assert len(trace) > 10_000 and trace[0].offset_s == 0.0


def test_synthetic_trace_is_diurnal_and_deterministic() -> None:
    trace = synthetic_diurnal_trace(duration_s=3600, mean_rate_per_s=5, seed=1)
    assert trace == synthetic_diurnal_trace(duration_s=3600, mean_rate_per_s=5, seed=1)
    first = sum(1 for r in trace if r.offset_s < 600)
    middle = sum(1 for r in trace if 1500 <= r.offset_s < 2100)
    assert middle > 2 * first
    assert 0.8 * 5 * 3600 < len(trace) < 1.2 * 5 * 3600


def test_registry_and_loopback(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    entries = [
        {"namespace": "a", "pod": "p1", "url": "http://127.0.0.1:1", "model": "m"},
        {"namespace": "b", "pod": "p2", "url": "http://127.0.0.1:2", "model": "m"},
    ]
    path.write_text(json.dumps({"services": {"llama": entries}}))
    assert [e.pod for e in load_endpoints(path, "llama")] == ["p1", "p2"]
    assert [e.pod for e in load_endpoints(path, "b/llama")] == ["p2"]
    assert load_endpoints(path, "other") == []
    with pytest.raises(ValueError, match="loopback"):
        check_loopback([Endpoint("http://10.0.0.1:8000", "m")])


def test_balancers() -> None:
    endpoints = [Endpoint(f"http://127.0.0.1:{i}", "m") for i in range(3)]
    rr = Balancer(endpoints, "round-robin")
    assert [rr.acquire() for _ in range(4)] == [0, 1, 2, 0]
    lo = Balancer(endpoints, "least-outstanding")
    first, second, third = lo.acquire(), lo.acquire(), lo.acquire()
    assert sorted([first, second, third]) == [0, 1, 2]
    lo.release(second)
    assert lo.acquire() == second


def test_summary_percentiles_scaled_to_simulated_time() -> None:
    results = [RequestResult(ok=True, ttft_s=0.01 * i, itl_s=[0.001], output_tokens=2) for i in range(1, 11)]
    results.append(RequestResult(ok=False, error="HTTP 500"))
    summary = summarise(results, 1.0, {}, scale=10)
    assert (summary.sent, summary.ok, summary.errors, summary.output_tokens) == (11, 10, 1, 20)
    assert summary.ttft_p50_s == pytest.approx(0.55)
    assert summary.itl_p99_s == pytest.approx(0.01)
    assert summary.first_errors == ["HTTP 500"]

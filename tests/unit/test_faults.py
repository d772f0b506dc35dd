"""Faults and bad input, without a cluster: the loop survives anything, drift is seen, odd strings apply,
telemetry comes in one batch, physically absurd profile points are named."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from urllib3.exceptions import MaxRetryError
from wattkeeper.api import LLMService, ServingConfigSpec
from wattkeeper.controller.kube import apply_body
from wattkeeper.controller.loop import ControlLoop, backoff_seconds
from wattkeeper.controller.metrics import OperatorMetrics
from wattkeeper.controller.profiles import profile_status
from wattkeeper.controller.services import Dependencies, deployment_drift, planned_config, service_drift
from wattkeeper.controller.settings import OperatorSettings
from wattkeeper.energy.model import EnergyModel
from wattkeeper.render import render_deployment, render_service
from wattkeeper.telemetry import PrometheusSource, TelemetryUnavailable
from wattkeeper.telemetry.batch import observe_prometheus, service_of_pod

from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class FlakyKube:
    """Lists fail like a restarting apiserver for the first `failures` calls, then answer empty."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0
        self.lock = threading.Lock()

    def _list(self) -> list[dict[str, Any]]:
        with self.lock:
            self.calls += 1
            if self.calls <= self.failures:
                raise self.error
        return []

    def list_custom(self, plural: str, namespace: str | None,
                    label_selector: str | None = None) -> list[dict[str, Any]]:
        return self._list()

    def list_deployments(self, namespace: str | None, services: list[str] | None = None) -> list[dict[str, Any]]:
        return self._list()

    def list_services(self, namespace: str | None, services: list[str] | None = None) -> list[dict[str, Any]]:
        return self._list()


def _deps(kube: Any, **settings: Any) -> Dependencies:
    return Dependencies(kube=kube, telemetry=None, energy_model=EnergyModel.default(),  # type: ignore[arg-type]
                        settings=OperatorSettings(metrics_port=0, health_port=0, **settings),
                        metrics=OperatorMetrics())


def test_the_loop_survives_connection_errors_timeouts_and_decode_errors() -> None:
    for error in (MaxRetryError(None, "/apis", "Connection refused"), TimeoutError("read timed out"),  # type: ignore[arg-type]
                  json.JSONDecodeError("Expecting value", "<html>", 0)):
        kube = FlakyKube(failures=3, error=error)
        loop = ControlLoop(_deps(kube, interval_seconds=0.05, leadership_check_seconds=0.01,
                                 error_backoff_max_seconds=0.05))
        loop.start()
        try:
            wait_for(f"two passes after {error!r}", lambda lp=loop: lp.passes >= 2, timeout=10, every=0.02)
            assert loop.thread.is_alive() and loop.failures == 0 and loop.problem() is None
        finally:
            loop.close()


def test_liveness_fails_when_no_pass_finishes_in_several_intervals() -> None:
    clock = [1000.0]
    loop = ControlLoop(_deps(FlakyKube(0, RuntimeError()), interval_seconds=30), clock=lambda: clock[0])
    assert loop.problem() is None
    clock[0] += 5 * 30 + 1
    problem = loop.problem()
    assert problem is not None and "has not finished a pass" in problem


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_seconds(n, 30) for n in range(8)] == [0, 1, 2, 4, 8, 16, 30, 30]


def _service() -> LLMService:
    body = yaml.safe_load((ROOT / "examples" / "llmservice-llama-8b.yaml").read_text())
    body["metadata"].update(namespace="ns", uid="u1")
    return LLMService.model_validate(body)


def test_a_deployment_scaled_by_hand_is_drift() -> None:
    service = _service()
    config = ServingConfigSpec(precision="bf16", tensor_parallel=1, replicas=1).to_plan()
    desired = render_deployment(service, config)
    live = json.loads(json.dumps(desired))
    assert deployment_drift(desired, live) is None
    live["spec"]["replicas"] = 4
    assert deployment_drift(desired, live) == "replicas 4 instead of 1"
    live = json.loads(json.dumps(desired))
    live["spec"]["template"]["spec"]["containers"][0]["args"].append("--enforce-eager")
    assert deployment_drift(desired, live) == "container vllm args changed"
    assert service_drift(render_service(service), None) == "Service missing"


def test_the_plan_in_status_is_read_back() -> None:
    status = {"plan": {"precision": "fp8", "tensorParallel": 2, "maxNumSeqs": 64, "maxNumBatchedTokens": 4096,
                       "replicas": 3}}
    config = planned_config(status)
    assert config is not None
    assert (config.config.precision, config.config.tensor_parallel, config.replicas) == ("fp8", 2, 3)
    assert planned_config({}) is None


def test_apply_body_is_raw_utf8_json_that_yaml_reads_back() -> None:
    obj = {"metadata": {"name": "x"}, "env": "model \U0001F600 with a NUL \x00 and é"}
    body = apply_body(obj)
    assert "\U0001F600".encode() in body and b"\\ud83d" not in body  # no surrogate escapes
    assert b"\\u0000" in body  # control characters stay escaped
    assert yaml.safe_load(body.decode()) == obj == json.loads(body)


def _prometheus(answers: dict[str, list[dict[str, Any]]]) -> tuple[PrometheusSource, list[str]]:
    queries: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        query = request.url.params["query"]
        queries.append(query)
        for needle, result in answers.items():
            if needle in query:
                return httpx.Response(200, json={"status": "success", "data": {"result": result}})
        return httpx.Response(200, json={"status": "success", "data": {"result": []}})

    return PrometheusSource("http://prom", client=httpx.Client(transport=httpx.MockTransport(handler))), queries


def _series(ns: str, pod: str, value: float, **labels: str) -> dict[str, Any]:
    return {"metric": {"namespace": ns, "pod": pod, **labels}, "value": [0, str(value)]}


def test_telemetry_is_one_query_per_metric_for_all_services() -> None:
    source, queries = _prometheus({
        "DCGM_FI_DEV_POWER_USAGE": [_series("a", "llama-8b-5f6d7-abcde", 300), _series("a", "llama-8b-5f6d7-xyz12", 310),
                                    _series("b", "big-model-77c8d-q1w2e", 1200), _series("a", "stray", 50)],
        "generation_tokens": [_series("a", "llama-8b-5f6d7-abcde", 100)],
        "time_to_first_token": [_series("a", "llama-8b-5f6d7-abcde", 1.0, le="0.1"),
                                _series("a", "llama-8b-5f6d7-abcde", 2.0, le="+Inf")],
        # Two pods of one service, summed per bucket before the quantile; big-model's vLLM exports none.
        "request_time_per_output_token": [_series("a", "llama-8b-5f6d7-abcde", 10.0, le="0.05"),
                                          _series("a", "llama-8b-5f6d7-abcde", 20.0, le="0.1"),
                                          _series("a", "llama-8b-5f6d7-abcde", 20.0, le="+Inf"),
                                          _series("a", "llama-8b-5f6d7-xyz12", 0.0, le="0.05"),
                                          _series("a", "llama-8b-5f6d7-xyz12", 20.0, le="0.1"),
                                          _series("a", "llama-8b-5f6d7-xyz12", 20.0, le="+Inf")],
        "quantile_over_time": [{"metric": {"namespace": "a", "service": "llama-8b"}, "value": [0, "7.5"]}],
    })
    keys = [("a", "llama-8b"), ("b", "big-model"), ("a", "silent")]
    out = observe_prometheus(source, keys, 60)
    a = out[("a", "llama-8b")]
    assert not isinstance(a, TelemetryUnavailable)
    assert a.watts == 610 and a.power_source == "dcgm-power" and a.output_tokens_per_second == 100
    assert a.ttft_p95_seconds == 0.1  # in the +Inf bucket: its lower bound, as histogram_quantile says
    assert a.burst_requests_per_second == 7.5  # the service's p95 of 30-s rates (issue 11 item 1)
    # 40 requests, 10 within 50 ms: the 38th lies 28/30 of the way through (0.05, 0.1].
    assert a.request_itl_p95_seconds == pytest.approx(0.05 + 0.05 * 28 / 30)
    assert a.itl_p95_seconds is None  # no token-gap series answered: None, not an error
    b = out[("b", "big-model")]
    assert not isinstance(b, TelemetryUnavailable) and b.watts == 1200
    assert b.request_itl_p95_seconds is None  # an older vLLM exports no per-request mean ITL
    assert isinstance(out[("a", "silent")], TelemetryUnavailable)
    assert len(queries) == 4 + 6 + 3 + 1 + 1 + 3  # per metric, not per service
    # The arrival counter's raw samples come per series (a range vector): grouped into services here.
    raw = [q for q in queries if q.startswith("vllm:time_to_first_token_seconds_count{")]
    assert raw == ['vllm:time_to_first_token_seconds_count{namespace=~"a|b",pod!=""}[630s]']
    assert all("by (namespace, pod" in q or "by (namespace, service" in q for q in queries if q not in raw)
    assert a.arrival_counts == () and a.prompt_tokens_sample == ()  # no such series answered: empty, not an error
    assert service_of_pod("llama-8b-5f6d7-abcde") == "llama-8b" and service_of_pod("stray") is None


def test_one_service_reads_the_p95_of_requests_mean_itl_and_none_where_absent() -> None:
    power = [{"metric": {}, "value": [0, "400"]}]
    source, queries = _prometheus({"DCGM_FI_DEV_POWER_USAGE": power,
                                   "request_time_per_output_token": [{"metric": {}, "value": [0, "0.042"]}]})
    obs = source.observe_service("a", "llama-8b", 60)
    assert obs.request_itl_p95_seconds == 0.042 and obs.itl_p95_seconds is None
    asked = next(q for q in queries if "request_time_per_output_token" in q)
    assert asked.startswith("histogram_quantile(0.95, sum by (le) (rate(vllm:request_time_per_output_token_seconds_bucket{")
    assert 'pod=~"llama-8b-[a-z0-9]+-[a-z0-9]+"' in asked and "[60s]" in asked
    older, _ = _prometheus({"DCGM_FI_DEV_POWER_USAGE": power})  # vLLM before 0.11: no such histogram
    assert older.observe_service("a", "llama-8b", 60).request_itl_p95_seconds is None
    nan, _ = _prometheus({"DCGM_FI_DEV_POWER_USAGE": power,  # no request finished in the window
                          "request_time_per_output_token": [{"metric": {}, "value": [0, "NaN"]}]})
    assert nan.observe_service("a", "llama-8b", 60).request_itl_p95_seconds is None


def test_prometheus_down_is_silence_for_every_service() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused")

    source = PrometheusSource("http://prom", client=httpx.Client(transport=httpx.MockTransport(refuse)))
    out = observe_prometheus(source, [("a", "x"), ("a", "y")], 60)
    assert all(isinstance(v, TelemetryUnavailable) and "unreachable" in v.reason for v in out.values())


def _profile() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "energyprofile.yaml").read_text())
    body["metadata"]["generation"] = 1
    return body


def test_physically_absurd_points_are_named_and_not_counted() -> None:
    body = _profile()
    tiny = dict(body["spec"]["points"][0], watts=1e-6, joulesPerToken=1e-6 / 1060)
    huge_batch = dict(body["spec"]["points"][1], batchSize=4000)
    body["spec"]["points"] += [tiny, huge_batch]
    status = profile_status(body, NOW)
    assert status["pointCount"] == 2
    rejected = {r["index"]: r["reason"] for r in status["rejectedPoints"]}
    assert set(rejected) == {2, 3}
    assert "watts" in rejected[2] and "batchSize" in rejected[3]
    ready = status["conditions"][0]
    assert ready["reason"] == "PointsRejected" and "point 2" in ready["message"]


def test_a_profile_with_only_absurd_points_is_not_ready() -> None:
    body = _profile()
    for point in body["spec"]["points"]:
        point["watts"] = 19000
    status = profile_status(body, NOW)
    assert status["pointCount"] == 0 and status["conditions"][0]["reason"] == "NoUsablePoints"


def test_the_schema_rejects_the_absurd() -> None:
    body = _profile()
    body["spec"]["points"][0]["watts"] = 1e9
    body["spec"]["points"][1]["batchSize"] = 1e12
    status = profile_status(body, NOW)
    assert status["pointCount"] == 0 and status["conditions"][0]["reason"] == "InvalidSpec"

"""What the benchmark and the operator show the control core: finished requests, the window-mean queue, the scrape
lag, the p95 of requests' mean ITL."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from wattkeeper.api import LLMService
from wattkeeper.bench.fleet import FleetSimulator, FleetTarget, Observation
from wattkeeper.bench.groundtruth import GroundTruth, model_shape
from wattkeeper.bench.trace import synthetic_trace
from wattkeeper.bench.wattkeeper_policy import signals_of
from wattkeeper.controller.decide import (
    Allocation,
    DeploymentState,
    ServiceInputs,
    decide,
    signals_from_observation,
)
from wattkeeper.controller.settings import OperatorSettings
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import ServingConfig
from wattkeeper.telemetry import ServiceObservation


@dataclass
class Recorder:
    telemetry_lag_s: float = 0.0
    name: str = "recorder"
    interval_s: float = 30.0
    seen: list[Observation] = field(default_factory=list)

    def initial(self) -> FleetTarget:
        return FleetTarget(ServingConfig("bf16", 1, 256, 8192), 2)

    def decide(self, obs: Observation, current: FleetTarget) -> FleetTarget | None:
        self.seen.append(obs)
        return None


@pytest.fixture(scope="module")
def runs() -> tuple[Recorder, Recorder]:
    gt = GroundTruth.create(model_shape("meta-llama/Llama-3.1-8B-Instruct"), "H100", EnergyModel.default(),
                            use_measured=False)
    # 2 req/s for two minutes, then 8 req/s.
    trace = synthetic_trace([(120.0, 2.0), (120.0, 8.0)], input_tokens=300, output_tokens=80, seed=3)
    fresh, lagged = Recorder(), Recorder(telemetry_lag_s=15.0)
    FleetSimulator(trace, gt).run(fresh)
    FleetSimulator(trace, gt).run(lagged)
    return fresh, lagged


def test_the_policy_sees_finished_requests(runs: tuple[Recorder, Recorder]) -> None:
    fresh, _ = runs
    steady = next(o for o in fresh.seen if o.now_s == 90.0)
    assert steady.finished_requests_per_second == pytest.approx(steady.requests_per_second, rel=0.3)
    assert steady.mean_waiting_requests >= 0.0 and steady.window_s == 60.0


def test_a_scrape_lag_shows_the_window_that_ended_at_the_last_scrape(runs: tuple[Recorder, Recorder]) -> None:
    fresh, lagged = runs
    at = {o.now_s: o for o in fresh.seen}
    for o in lagged.seen:
        assert o.now_s in at
        assert o.window_s == min(60.0, o.now_s - 15.0)  # data up to the last scrape, 15 s ago
    # Just after the rise the lagged view has seen less of it.
    rise_fresh, rise_lagged = at[150.0], next(o for o in lagged.seen if o.now_s == 150.0)
    assert rise_lagged.requests_per_second < rise_fresh.requests_per_second
    # Before any change, the two views agree on the replicas (the Deployment's status is not lagged).
    assert rise_lagged.serving_replicas == rise_fresh.serving_replicas


def test_the_policy_sees_the_p95_of_requests_mean_itl(runs: tuple[Recorder, Recorder]) -> None:
    fresh, _ = runs
    steady = next(o for o in fresh.seen if o.now_s == 90.0)
    # Per finished request (vllm:request_time_per_output_token_seconds), beside the token-gap p95.
    assert steady.request_itl_p95_seconds is not None and steady.itl_p95_seconds is not None
    assert 0 < steady.request_itl_p95_seconds < 1.0
    signals = signals_of(steady)
    assert signals.request_itl_p95_seconds == steady.request_itl_p95_seconds
    assert signals.itl_p95_seconds == steady.itl_p95_seconds


def test_the_operator_hands_the_core_the_p95_of_requests_mean_itl() -> None:
    obs = ServiceObservation(watts=400.0, itl_p95_seconds=0.2, request_itl_p95_seconds=0.03)
    signals = signals_from_observation(obs, 60.0)
    assert signals is not None
    assert signals.request_itl_p95_seconds == 0.03 and signals.itl_p95_seconds == 0.2
    older = signals_from_observation(ServiceObservation(watts=400.0, itl_p95_seconds=0.2), 60.0)
    assert older is not None and older.request_itl_p95_seconds is None


def test_status_shows_the_p95_of_requests_mean_itl_where_measured() -> None:
    svc = LLMService.model_validate({
        "metadata": {"name": "chat", "namespace": "ns", "generation": 1},
        "spec": {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "parametersBillions": 8, "layers": 32,
                           "kvHeads": 8, "headDim": 128},
                 "slo": {"ttftP95Seconds": 2.0, "itlP95Seconds": 0.05}, "accelerator": {"type": "H100"}},
    })
    settings = OperatorSettings(telemetry_window_seconds=60.0, metrics_port=0, health_port=0)
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def observed(obs: ServiceObservation) -> dict[str, Any]:
        inputs = ServiceInputs(svc, {}, Allocation(), obs, None, DeploymentState(), now, telemetry_window_seconds=60.0)
        return dict(decide(inputs, EnergyModel.default(), settings).status["observed"])

    shown = observed(ServiceObservation(watts=400.0, itl_p95_seconds=0.2, request_itl_p95_seconds=0.031))
    assert shown["requestItlP95Seconds"] == 0.031 and shown["itlP95Seconds"] == 0.2
    assert "requestItlP95Seconds" not in observed(ServiceObservation(watts=400.0, itl_p95_seconds=0.2))

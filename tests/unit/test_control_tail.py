"""The model's tail learned online (control/tail.py): requests measured over the SLOs against the model's own."""

from __future__ import annotations

import math
from dataclasses import replace

import httpx
import numpy as np
import pytest
from wattkeeper.bench.groundtruth import model_shape
from wattkeeper.control import FleetState, Memory, Plan, ServiceIntent, Signals, TickInputs, decide_tick, tail
from wattkeeper.control.planning import evaluate_in
from wattkeeper.control.tick import tick_request
from wattkeeper.control.types import LoadEstimate
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import ServingConfig, Workload
from wattkeeper.telemetry.buckets import over_threshold
from wattkeeper.telemetry.prometheus import PrometheusSource

INTENT = ServiceIntent(
    model=model_shape("meta-llama/Llama-3.1-8B-Instruct"), accelerator="H100", allowed_precisions=("bf16",),
    slo_ttft_p95_seconds=2.0, slo_itl_p95_seconds=0.1, max_replicas=8,
    default_workload=Workload(4.0, 500.0, 150.0), cooldown_seconds=300.0,
)
EM = EnergyModel.default()


def counted(misses: float, observed: float = 300.0) -> Signals:
    return Signals(window_seconds=60.0, watts=500.0, finished_requests_per_second=observed / 60.0,
                   mean_input_tokens=500.0, mean_output_tokens=150.0, ttft_p95_seconds=0.3, itl_p95_seconds=0.03,
                   ttft_misses=0.0, ttft_observed=observed, itl_misses=misses, itl_observed=observed)


def test_requests_over_an_slo_are_counted_above_the_first_bucket_bound_at_or_over_it() -> None:
    rates = ((0.05, 1.0), (0.1, 3.0), (0.15, 3.5), (math.inf, 4.0))  # per second, cumulative
    assert over_threshold(0.1, rates, 10.0) == (10.0, 40.0)  # a bound: exact
    assert over_threshold(0.12, rates, 10.0) == (5.0, 40.0)  # between bounds: those over 0.15 s, a lower bound
    assert over_threshold(100.0, rates, 10.0) == (0.0, 40.0)
    assert over_threshold(0.1, (), 10.0) is None  # no histogram read


def test_the_tail_is_measured_over_predicted_misses_with_a_prior_decayed_and_bounded() -> None:
    assert tail.scale(Memory()) == 1.0  # nothing measured: the model as it is
    once = tail.learned(Memory(), counted(0.0), 0.99)  # 3 late requests predicted of 300, none measured
    assert (once.tail_measured_misses, once.tail_predicted_misses) == (0.0, 3.0)
    assert tail.scale(once) == pytest.approx(5.0 / 8.0)  # the prior keeps one window from moving it far
    twice = tail.learned(once, counted(0.0), 0.99)
    assert twice.tail_predicted_misses == pytest.approx(0.9 * 3.0 + 3.0)
    many = once
    for _ in range(30):
        many = tail.learned(many, counted(0.0), 0.99)
    assert tail.scale(many) == tail.TAIL_SCALE_BOUNDS[0]  # never below the floor: a third of the model's tail
    late = tail.learned(Memory(), counted(12.0), 0.99)
    assert tail.scale(late) == pytest.approx(17.0 / 8.0)  # more late than predicted: planned more carefully
    # What cannot tell the tail teaches nothing: no counts, or a plan the model finds short of capacity.
    assert tail.learned(Memory(), replace(counted(0.0), ttft_observed=None), 0.99) == Memory()
    assert tail.learned(Memory(), counted(0.0), 0.5) == Memory()


def test_a_plan_the_model_doubts_a_little_is_feasible_once_its_tail_is_measured_shorter() -> None:
    # Long prompts in 8192-token chunks: the late requests are those whose tokens fall in chunk-carrying steps.
    plan = Plan(ServingConfig("bf16", 1, 256, 8192), 1)
    load = LoadEstimate(Workload(1.0, 4000.0, 50.0), "measured", None, None)
    inputs = TickInputs(INTENT, Memory(), None, FleetState(), now_s=0.0)

    def share(rps: float, memory: Memory) -> tuple[float, bool]:
        at = replace(load, workload=replace(load.workload, requests_per_second=rps))
        c = evaluate_in(tick_request(inputs, memory, at, None), plan, EM)
        assert c is not None and c.predicted_within_share is not None
        return c.predicted_within_share, c.meets_slo

    # The load at which the model predicts 98-99% of requests within both: just short of what is planned for.
    rates = np.linspace(4.0, 6.0, 81)
    doubted = next(r for r in rates if 0.98 <= share(r, Memory())[0] < 0.99)
    assert not share(doubted, Memory())[1]
    shorter = Memory(tail_measured_misses=0.0, tail_predicted_misses=5.0)  # measured: none late of 5 predicted
    assert tail.scale(shorter) == 0.5
    within, meets = share(doubted, shorter)
    assert within >= 0.99 and meets


def test_a_settled_plan_learns_its_tail_from_the_windows_counts() -> None:
    tick = decide_tick(TickInputs(INTENT, Memory(), None, FleetState(), now_s=0.0), EM)
    assert tick.apply is not None
    plan, memory = tick.apply, tick.memory
    fleet = FleetState(exists=True, replicas=plan.replicas, ready_replicas=plan.replicas)
    for t in range(30, 330, 30):
        memory = decide_tick(TickInputs(INTENT, memory, counted(1.0, 240.0), fleet, now_s=float(t)), EM).memory
    assert memory.tail_measured_misses > 0 and memory.tail_predicted_misses >= 0
    # Not while the plan settles: the first ticks after the apply taught nothing.
    early = decide_tick(TickInputs(INTENT, tick.memory, counted(1.0, 240.0), fleet, now_s=30.0), EM).memory
    assert early.tail_measured_misses == 0.0


def test_prometheus_source_reads_a_histograms_buckets() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        rows = [{"metric": {"le": le}, "value": [0, v]} for le, v in (("0.1", "3"), ("+Inf", "4"), ("0.05", "1"))]
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": rows}})

    source = PrometheusSource("http://prom", client=httpx.Client(transport=httpx.MockTransport(answer)))
    assert source._buckets("sum by (le) (rate(x_bucket[60s]))") == ((0.05, 1.0), (0.1, 3.0), (math.inf, 4.0))


@pytest.mark.parametrize("miss_scale", [0.5, 0.8, 1.0, 1.7, 4.0])
def test_a_budget_prices_a_demand_with_the_services_own_tail(miss_scale: float) -> None:
    measured, predicted = tail.evidence_for(miss_scale)
    assert tail.scale(Memory(tail_measured_misses=measured, tail_predicted_misses=predicted)) == \
        pytest.approx(miss_scale)

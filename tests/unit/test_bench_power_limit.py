"""The GPU power limit in the benchmark (issue 13): set in place on running replicas, never a restart, and offered
to Wattkeeper exactly as the oracle has it."""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import pytest
from wattkeeper.bench import cli
from wattkeeper.bench.fleet import FleetSimulator, FleetTarget, Observation
from wattkeeper.bench.groundtruth import GroundTruth, model_shape
from wattkeeper.bench.oracle import ScheduledFleet, WindowChoice, shortlist
from wattkeeper.bench.policies import BenchSpec
from wattkeeper.bench.scoring import Thresholds, score
from wattkeeper.bench.standard import _lever_note
from wattkeeper.bench.trace import synthetic_trace
from wattkeeper.energy.catalog import get_accelerator
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.powerlimit import LIMIT_SETTLE_SECONDS, limit_options_watts
from wattkeeper.energy.types import ServingConfig
from wattkeeper_runtime.engine import BatchingEngine, EngineRequest

MODEL_8B = "meta-llama/Llama-3.1-8B-Instruct"
BASE = ServingConfig("bf16", 1, 256, 8192)
SWITCH_S = 150.0


@pytest.fixture(scope="module")
def gt8b() -> GroundTruth:
    return GroundTruth.create(model_shape(MODEL_8B), "H100", EnergyModel.default(), use_measured=False)


class SwitchAt:
    """Holds `first`, then asks for `then` once at `at_s`."""

    name = "switch"
    interval_s = 15.0

    def __init__(self, first: FleetTarget, then: FleetTarget, at_s: float) -> None:
        self.first, self.then, self.at_s = first, then, at_s

    def initial(self) -> FleetTarget:
        return self.first

    def decide(self, obs: Observation, current: FleetTarget) -> FleetTarget | None:
        return self.then if obs.now_s >= self.at_s and current != self.then else None


CASES = [
    # (name, next target, change kind, restarts, GPUs while switching)
    ("limit only", FleetTarget(replace(BASE, gpu_power_limit_watts=300.0), 2), "limit", 0, 2),
    ("limit back to the default", FleetTarget(BASE, 2), "limit", 0, 2),
    ("limit and one replica less", FleetTarget(replace(BASE, gpu_power_limit_watts=300.0), 1), "limit", 0, 1),
    ("another precision", FleetTarget(ServingConfig("fp8", 1, 256, 8192), 2), "restart", 1, 4),
]


@pytest.mark.parametrize(("name", "then", "kind", "restarts", "gpus"), CASES, ids=[c[0] for c in CASES])
def test_limit_change_restarts_nothing(
    gt8b: GroundTruth, name: str, then: FleetTarget, kind: str, restarts: int, gpus: int
) -> None:
    trace = synthetic_trace([(300.0, 12.0)], input_tokens=400, output_tokens=150, seed=7)
    first_config = BASE if then.config.gpu_power_limit_watts is not None else replace(
        BASE, gpu_power_limit_watts=300.0)
    first = FleetTarget(first_config, 2)
    run = FleetSimulator(trace, gt8b, tail_s=60.0).run(SwitchAt(first, then, SWITCH_S))
    assert [c.kind for c in run.changes] == [kind]
    assert score(run, trace.arrival_s, Thresholds(2.0, 0.1)).restarts == restarts
    i = round(SWITCH_S / run.sample_s)
    # GPUs provisioned right after the switch: a restart surges a new set beside the old one, a limit does not.
    assert run.gpus[i + 1] == pytest.approx(gpus)
    assert np.all(np.isfinite(run.ttft_s))  # every request served
    if kind == "limit":
        # No load gap: the replicas kept serving through the switch (their queues and KV cache stay).
        near = (trace.arrival_s > SWITCH_S - 10) & (trace.arrival_s < SWITCH_S + 30)
        assert float(np.max(run.ttft_s[near])) < 1.0
        watts = np.diff(run.energy_joules) / run.sample_s
        before = float(watts[i - 12: i].mean())
        after = float(watts[i + 1: i + 13].mean())
        per_gpu = then.config.gpu_power_limit_watts
        if per_gpu is not None:
            assert after < before
            assert watts[i + 1: round(trace.duration_s / run.sample_s)].max() <= per_gpu * then.replicas + 1e-6
        else:
            assert after > before


def test_engine_retime_keeps_queue_and_kv(gt8b: GroundTruth) -> None:
    limited = replace(BASE, gpu_power_limit_watts=300.0)
    engine = BatchingEngine(gt8b.timing(BASE), 256, 8192)
    for k in range(40):
        engine.submit(EngineRequest(str(k), 400, 200), 0.0)
    for _ in range(5):
        engine.step(engine.clock_s)
    running = [r.request_id for r in engine.running]
    blocks = [r.kv_blocks for r in engine.running]
    assert engine._last_step_power_watts > 300.0
    energy = engine.energy_joules_at(engine.clock_s)
    engine.retime(gt8b.timing(limited), engine.clock_s)
    assert [r.request_id for r in engine.running] == running and [r.kv_blocks for r in engine.running] == blocks
    assert engine.energy_joules_at(engine.clock_s) == pytest.approx(energy)
    assert engine.step(engine.clock_s).power_watts <= 300.0
    # Idle until the limit is set counts at the old idle power; a busy engine's clock is never moved.
    idle = BatchingEngine(gt8b.timing(BASE), 256, 8192)
    idle.retime(gt8b.timing(limited), 10.0)
    assert idle.clock_s == 10.0 and idle.energy_joules_at(10.0) == pytest.approx(10.0 * gt8b.idle_watts(BASE))


@pytest.mark.parametrize(
    ("power_limits", "expected"),
    [(False, (None,)), (True, (None, 490.0))],
)
def test_bench_spec_offers_the_oracles_limits(power_limits: bool, expected: tuple[float | None, ...]) -> None:
    spec = BenchSpec(model_shape("meta-llama/Llama-3.1-70B-Instruct"), "H100", 2.0, 0.1, power_limits=power_limits)
    assert spec.intent().gpu_power_limits_watts == expected
    if power_limits:
        assert expected == limit_options_watts(get_accelerator("H100"), (0.7,))
        # The very limits the oracle's shortlist plans with.
        trace = synthetic_trace([(300.0, 2.0)], input_tokens=400, output_tokens=150, seed=1)
        oracle = {c.gpu_power_limit_watts for _, c, _ in shortlist(spec, trace, EnergyModel.default(), 0.0, 300.0)}
        assert oracle <= set(expected) and 490.0 in oracle


def _obs(now_s: float) -> Observation:
    return Observation(now_s, 60.0, 1.0, None, None, 0.0, None, None, 0, 0, 1, 0, 0, 0.0)


@pytest.mark.parametrize(
    ("nxt", "due_s"),
    [
        (FleetTarget(replace(BASE, gpu_power_limit_watts=490.0), 2), 300.0),  # in place: at the window's start
        (FleetTarget(replace(BASE, gpu_power_limit_watts=490.0), 3), 200.0),  # a replica more loads: lead
        (FleetTarget(ServingConfig("fp8", 1, 256, 8192), 2), 200.0),  # a reload: lead
        (FleetTarget(BASE, 1), 300.0),  # scale down: at the window's start
    ],
)
def test_oracle_sets_a_limit_at_the_window_start(nxt: FleetTarget, due_s: float) -> None:
    windows = [WindowChoice(0.0, FleetTarget(BASE, 2), None, 0), WindowChoice(300.0, nxt, None, 0)]
    policy = ScheduledFleet(windows, lead_s=100.0)
    current = policy.initial()
    assert policy.decide(_obs(due_s - 15.0), current) is None
    assert policy.decide(_obs(due_s), current) is not None


def test_cli_lever_flags() -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["bench", "standard", "--out", "x"])
    assert (args.power_limits, args.no_plain_power_limits, args.no_cap_power_limits) == (False, False, False)
    args = parser.parse_args(["bench", "standard", "--out", "x", "--no-plain-power-limits"])
    assert args.no_plain_power_limits
    args = parser.parse_args(["bench", "standard", "--out", "x", "--power-limits", "--no-cap-power-limits"])
    assert (args.power_limits, args.no_cap_power_limits) == (True, True)
    args = parser.parse_args(["bench", "trace", "--model", "m", "--slo-ttft-p95", "2", "--slo-itl-p95", "0.1",
                              "--out", "x.json", "--power-limits"])
    assert args.power_limits
    assert "capped (-cap) scenarios" in _lever_note({"plain": False, "capped": True})
    assert "no scenario" in _lever_note({"plain": False, "capped": False})


def test_settle_delay_is_short() -> None:
    assert LIMIT_SETTLE_SECONDS <= 5.0  # within one power sample of the simulator

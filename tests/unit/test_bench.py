"""The trace-driven benchmark: trace handling, ground truth, fleet accounting, policies and the CLI's JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from wattkeeper.bench.fleet import FleetSimulator, FleetTarget, weighted_percentile
from wattkeeper.bench.groundtruth import GroundTruth, find_measured, model_shape, parse_params_b
from wattkeeper.bench.policies import (
    AutoscalerPolicy,
    BenchSpec,
    StaticPolicy,
    vllm_default_limits,
)
from wattkeeper.bench.report import max_window_average_watts, summarise
from wattkeeper.bench.trace import Trace, load_azure_trace, scale_rate, synthetic_trace
from wattkeeper.bench.wattkeeper_policy import WattkeeperPolicy
from wattkeeper.control import Tuning
from wattkeeper.energy.catalog import get_accelerator
from wattkeeper.energy.datasets import read_mlenergy
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import ServingConfig
from wattkeeper_runtime.engine import BatchingEngine, EngineRequest, run_to_completion

MODEL_8B = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def gt8b() -> GroundTruth:
    # The calibrated model only: these tests need no shared data.
    return GroundTruth.create(model_shape(MODEL_8B), "H100", EnergyModel.default(), use_measured=False)


def spec8b(cap: float | None = None) -> BenchSpec:
    return BenchSpec(model_shape(MODEL_8B), "H100", 2.0, 0.1, allocation_watts=cap, max_replicas=8)


class Fixed:
    """A policy that holds one target (for accounting tests)."""

    name = "fixed"
    interval_s = 30.0

    def __init__(self, target: FleetTarget) -> None:
        self.target = target

    def initial(self) -> FleetTarget:
        return self.target

    def decide(self, obs: object, current: FleetTarget) -> FleetTarget | None:
        return None


def test_parse_params_and_vllm_defaults() -> None:
    assert parse_params_b("meta-llama/Llama-3.1-70B-Instruct") == 70.0
    assert parse_params_b("Qwen3-30B-A3B") == 3.0 or parse_params_b("Qwen3-30B-A3B") == 30.0
    assert parse_params_b("no-size-here") is None
    assert vllm_default_limits(get_accelerator("H100")) == (1024, 8192)
    assert vllm_default_limits(get_accelerator("A100")) == (256, 2048)


def test_scale_rate_keeps_length_and_scales_minutes() -> None:
    trace = synthetic_trace([(300.0, 2.0), (300.0, 4.0)], seed=3)
    scaled = scale_rate(trace, 3.0)
    assert len(scaled) == 3 * len(trace)
    assert scaled.duration_s <= trace.duration_s + 1e-9
    assert np.all(np.diff(scaled.arrival_s) >= 0)
    ratio = scaled.per_minute_counts()[: trace.per_minute_counts().size] / np.maximum(trace.per_minute_counts(), 1)
    assert np.allclose(ratio, 3.0, rtol=0.02)  # clones near a minute boundary may land in the next one
    half = scale_rate(trace, 1.5)
    assert abs(len(half) / len(trace) - 1.5) < 0.1


def test_azure_trace_reader(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,0\n"
    )
    trace = load_azure_trace(path)
    assert len(trace) == 2
    assert trace.arrival_s[0] == 0.0 and trace.arrival_s[1] == pytest.approx(4.3145790, abs=1e-5)
    assert trace.output_tokens.tolist() == [44, 1]  # at least one output token


def test_energy_is_the_integral_of_power(gt8b: GroundTruth) -> None:
    """Fleet energy equals idle power between steps plus every step's power x duration, replayed independently."""
    config = ServingConfig("bf16", 1, 256, 8192)
    trace = synthetic_trace([(60.0, 1.0)], input_tokens=300, output_tokens=40, seed=5)
    run = FleetSimulator(trace, gt8b, tail_s=30.0).run(Fixed(FleetTarget(config, 1)))
    horizon = run.horizon_s
    # The same requests through a fresh engine with the same timing, stepping at arrivals like the fleet.
    engine = BatchingEngine(gt8b.timing(config), config.max_num_seqs, config.max_num_batched_tokens)
    steps_energy = 0.0
    busy = 0.0
    for i in range(len(trace)):
        t = float(trace.arrival_s[i])
        while engine.has_work() and engine.clock_s < t:
            r = engine.step(engine.clock_s)
            steps_energy += r.power_watts * r.duration_s
            busy += r.duration_s
        engine.submit(EngineRequest(str(i), int(trace.input_tokens[i]), int(trace.output_tokens[i])), t)
    for r in run_to_completion(engine):
        steps_energy += r.power_watts * r.duration_s
        busy += r.duration_s
    idle = gt8b.idle_watts(config)
    expected = steps_energy + idle * (horizon - busy)
    assert run.energy_joules[-1] == pytest.approx(expected, rel=1e-9)
    # The power series is the derivative of the energy counter: it integrates back to the total.
    watts = np.diff(run.energy_joules) / run.sample_s
    assert float(np.sum(watts * run.sample_s)) == pytest.approx(run.energy_joules[-1], rel=1e-12)
    assert watts.min() >= idle - 1e-6
    assert np.all(np.isfinite(run.ttft_s))


def test_idle_fleet_draws_idle_power_and_loading_counts(gt8b: GroundTruth) -> None:
    config = ServingConfig("bf16", 2, 256, 8192)
    empty = Trace(np.array([0.0]), np.array([10]), np.array([1]))
    run = FleetSimulator(empty, gt8b, tail_s=600.0).run(Fixed(FleetTarget(config, 3)))
    idle = gt8b.idle_watts(config) * 3
    assert run.energy_joules[-1] == pytest.approx(idle * run.horizon_s, rel=1e-3)
    assert run.gpus.mean() == pytest.approx(6.0)


def test_static_never_reconfigures(gt8b: GroundTruth) -> None:
    trace = synthetic_trace([(120.0, 1.0), (120.0, 6.0), (120.0, 0.5)], input_tokens=400, output_tokens=60)
    policy = StaticPolicy(spec8b(), trace, gt8b.energy_model)
    run = FleetSimulator(trace, gt8b).run(policy)
    assert run.changes == []
    assert len(run.configs_used) == 1
    assert run.configs_used[0].startswith("bf16")


def test_autoscaler_scales_with_load(gt8b: GroundTruth) -> None:
    trace = synthetic_trace([(200.0, 0.5), (400.0, 20.0), (500.0, 0.5)], input_tokens=400, output_tokens=150)
    policy = AutoscalerPolicy(spec8b(), trace, gt8b.energy_model, target_active_per_replica=16)
    run = FleetSimulator(trace, gt8b).run(policy)
    kinds = {c.kind for c in run.changes}
    assert kinds == {"scale"}  # a fixed configuration: it only ever changes the replica count
    assert max(run.gpus) > min(run.gpus)


def test_wattkeeper_respects_a_power_cap(gt8b: GroundTruth) -> None:
    """A tight ITL SLO makes the steady model's uncapped plan TP2; a cap at 75% of its power is feasible on one
    fp8 GPU, which the default (queued) model finds. (The queued model's own uncapped plan is already that GPU:
    no cheaper plan carries the load, so a cap under it could only be missed.)"""
    trace = synthetic_trace([(600.0, 20.0)], input_tokens=500, output_tokens=150, seed=11)

    def spec(cap: float | None) -> BenchSpec:
        return BenchSpec(model_shape(MODEL_8B), "H100", 2.0, 0.03, allocation_watts=cap, max_replicas=8)

    steady = Tuning(latency_model="steady")
    uncapped = FleetSimulator(trace, gt8b).run(WattkeeperPolicy(spec(None), trace, gt8b.energy_model, tuning=steady))
    cap = 0.75 * max_window_average_watts(uncapped)
    run = FleetSimulator(trace, gt8b).run(WattkeeperPolicy(spec(cap), trace, gt8b.energy_model))
    assert max_window_average_watts(run) <= cap * 1.02
    summary = summarise(run, 2.0, 0.03, cap)
    assert summary["withinCap"] is True
    assert summary["withinBothSlos"] >= 0.99


def test_weighted_percentile() -> None:
    values = np.array([0.01, 0.02, 0.5])
    counts = np.array([90, 5, 5], dtype=np.int64)
    assert weighted_percentile(values, counts, 50) == 0.01
    assert weighted_percentile(values, counts, 94) == 0.02
    assert weighted_percentile(values, counts, 99) == 0.5
    assert math.isnan(weighted_percentile(np.array([]), np.array([], dtype=np.int64), 95))


def test_cli_trace_writes_json_and_png(tmp_path: Path) -> None:
    from wattkeeper.cli import main

    trace = synthetic_trace([(240.0, 2.0)], input_tokens=300, output_tokens=60, seed=2)
    path = tmp_path / "trace.csv"
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for t, i, o in zip(trace.arrival_s, trace.input_tokens, trace.output_tokens, strict=True):
        stamp = np.datetime64("2023-11-16T18:00:00") + np.timedelta64(int(t * 1e6), "us")
        lines.append(f"{str(stamp).replace('T', ' ')},{i},{o}")
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "result.json"
    code = main(
        [
            "bench", "trace", "--trace", str(path), "--model", MODEL_8B, "--gpu", "H100",
            "--slo-ttft-p95", "2", "--slo-itl-p95", "0.1", "--power-cap", "2000", "--no-measured",
            "--seed", "3", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    doc = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000
    assert set(doc["policies"]) == {
        "static-peak", "static-right-sized", "autoscaler-tuned", "oracle-verified", "wattkeeper"
    }  # fmt: skip
    fields = {
        "energyKWh", "joulesPerOutputToken", "gpuHours", "withinTtftSlo", "withinItlSlo", "withinBothSlos",
        "ttftP95Seconds", "itlP95Seconds", "reconfigurations", "maxFiveMinuteWatts", "powerCapWatts",
        "maxFiveMinuteOverCap", "groundTruth", "worstFiveMinuteWithinBoth", "keepsTarget", "verdict",
        "restartsPerHour", "capHeld",
    }  # fmt: skip
    for summary in doc["policies"].values():
        assert fields <= set(summary)
        assert all(src.startswith("model, hidden bias seed 3") for src in summary["groundTruth"].values())
    assert doc["groundTruthSeed"] == 3
    assert {"energyVsRightSized", "energyVsPeak", "fromOracle"} <= set(doc["comparison"]["wattkeeper"])


def test_measured_ground_truth_reproduces_the_measurements(shared_data: Path) -> None:
    rows = read_mlenergy(shared_data / "mlenergy" / "configurations.csv")
    model = model_shape("meta-llama/Llama-3.1-70B-Instruct")
    gt = GroundTruth(model, get_accelerator("H100"), EnergyModel.default(), rows)
    config = ServingConfig("bf16", 4, 1024, 8192)
    assert gt.source(config).startswith("measured")
    assert gt.source(ServingConfig("fp8", 2, 256, 8192)).startswith("model")
    curve = find_measured(rows, model.name, "H100", "bf16", 4)
    assert curve is not None and curve.task == "lm-arena-chat"
    ratios = gt.corrections(config)
    assert ratios is not None
    _, step_ratio, power_ratio = ratios
    # At a measured batch, model x ratio is the measurement (the correction's definition); ratios stay sane.
    assert all(0.3 < r < 3.0 for r in step_ratio + power_ratio)
    timing = gt.timing(config)
    assert timing.kv_cache_tokens() > 0
    assert timing.power_watts(0, 0.0) == pytest.approx(4 * get_accelerator("H100").idle_watts)


def test_stabilised_rate_holds_the_peak_for_the_window() -> None:
    from wattkeeper.control import stabilised_rate

    assert stabilised_rate(5.0, None, None, 0.0, 300.0) == (5.0, 0.0)
    assert stabilised_rate(3.0, 5.0, 0.0, 120.0, 300.0) == (5.0, 0.0)  # a lull inside the window: hold
    assert stabilised_rate(6.0, 5.0, 0.0, 120.0, 300.0) == (6.0, 120.0)  # a new peak
    assert stabilised_rate(3.0, 5.0, 0.0, 301.0, 300.0) == (3.0, 301.0)  # the peak expired
    assert stabilised_rate(5.0, 5.0, 0.0, 100.0, 300.0) == (5.0, 0.0)  # steady: no new timestamp, no write
    assert stabilised_rate(5.0, 5.0, 0.0, 200.0, 300.0) == (5.0, 200.0)  # re-measured after half a window

"""Scenarios: one trace replay through every policy, the standard set of `make bench`, and planner timing."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..energy.catalog import model_from_name
from ..energy.model import EnergyModel
from ..energy.types import Workload
from ..planner import PlanRequest, plan
from .fleet import FleetRun, FleetSimulator, Policy
from .groundtruth import GroundTruth
from .policies import AutoscalerPolicy, BenchSpec, OraclePolicy, StaticPolicy
from .report import compare, plot_power, summarise
from .trace import Trace
from .wattkeeper_policy import WattkeeperPolicy

POLICY_NAMES = ("static", "autoscaler", "wattkeeper", "oracle")


@dataclass
class ScenarioResult:
    name: str
    document: dict[str, Any]
    runs: dict[str, FleetRun]


def make_policy(name: str, spec: BenchSpec, trace: Trace, energy_model: EnergyModel) -> Policy:
    if name == "static":
        return StaticPolicy(spec, trace, energy_model)
    if name == "autoscaler":
        return AutoscalerPolicy(spec, trace, energy_model)
    if name == "wattkeeper":
        return WattkeeperPolicy(spec, trace, energy_model)
    if name == "oracle":
        return OraclePolicy(spec, trace, energy_model)
    raise ValueError(f"unknown policy {name!r}: known ones are {', '.join(POLICY_NAMES)}")


def run_scenario(
    name: str,
    trace: Trace,
    spec: BenchSpec,
    ground_truth: GroundTruth,
    policies: tuple[str, ...] = POLICY_NAMES,
    reuse: dict[str, FleetRun] | None = None,
    png: Path | None = None,
    settings: dict[str, Any] | None = None,
    log: Any = None,
) -> ScenarioResult:
    """Replay `trace` through each policy. Runs in `reuse` (cap-blind baselines of the same trace) are not redone."""
    em = ground_truth.energy_model
    sim = FleetSimulator(trace, ground_truth)
    runs: dict[str, FleetRun] = {}
    summaries: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    for policy_name in policies:
        policy = make_policy(policy_name, spec, trace, em)
        if reuse and policy_name in reuse:
            run = reuse[policy_name]
            policy.initial()  # for its note
        else:
            run = sim.run(policy)
        runs[policy_name] = run
        note = getattr(policy, "note", "")
        if note:
            notes[policy_name] = note
        sources = {}
        for r in (run,):
            for cfg in r.configs_used:
                sources[cfg] = _source_of(ground_truth, cfg)
        summaries[policy_name] = summarise(
            run,
            spec.slo_ttft_p95_seconds,
            spec.slo_itl_p95_seconds,
            spec.power_cap_watts,
            sources,
            getattr(policy, "decisions", ()),
        )
        if log is not None:
            s = summaries[policy_name]
            log(
                f"  {name}/{policy_name}: {s['energyKWh']:.2f} kWh, {s['joulesPerOutputToken']:.3f} J/token, "
                f"both SLOs {s['withinBothSlos'] * 100:.2f}%, {s['reconfigurations']} changes "
                f"({run.wall_seconds:.1f} s, {run.steps} steps)"
            )
    rate, _, _ = trace.peak_minute()
    document: dict[str, Any] = {
        "scenario": name,
        "settings": settings or {},
        "trace": {
            "name": trace.name,
            "requests": len(trace),
            "durationSeconds": round(trace.duration_s, 1),
            "meanRequestsPerSecond": round(len(trace) / max(trace.duration_s, 1e-9), 3),
            "peakMinuteRequestsPerSecond": round(rate, 3),
            "meanInputTokens": round(float(trace.input_tokens.mean()), 1) if len(trace) else None,
            "meanOutputTokens": round(float(trace.output_tokens.mean()), 1) if len(trace) else None,
        },
        "model": spec.model.name,
        "gpu": spec.accelerator.name,
        "slo": {"ttftP95Seconds": spec.slo_ttft_p95_seconds, "itlP95Seconds": spec.slo_itl_p95_seconds},
        "wattkeeperAllowedPrecisions": list(spec.allowed_precisions),
        "powerCapWatts": spec.power_cap_watts,
        "policies": summaries,
        "notes": notes,
        "comparison": compare(summaries),
        "definitions": {
            "withinTtftSlo": "share of requests whose time to first token is within the TTFT SLO",
            "withinItlSlo": "share of requests whose mean inter-token latency (TPOT) is within the ITL SLO",
            "itlP95Seconds": "95th percentile over all inter-token gaps of all requests",
            "maxFiveMinuteWatts": "highest average GPU power over any 5-minute window (5 s steps)",
            "reconfigurations": "changes of the fleet's target (replica count or configuration); restarts in "
            "brackets in the table are configuration changes",
        },
    }
    if png is not None:
        plot_power(
            list(runs.values()), png, f"{name}: {spec.model.name} on {spec.accelerator.name}", spec.power_cap_watts
        )
        document["plot"] = str(png)
    return ScenarioResult(name, document, runs)


def _source_of(ground_truth: GroundTruth, short: str) -> str:
    from ..energy.types import ServingConfig

    parts = short.split()
    config = ServingConfig(
        precision=parts[0],
        tensor_parallel=int(parts[1].removeprefix("tp")),
        max_num_seqs=int(parts[2].removeprefix("seqs")),
        max_num_batched_tokens=int(parts[3].removeprefix("tok")),
    )
    return ground_truth.source(config)


def with_cap(spec: BenchSpec, watts: float | None) -> BenchSpec:
    return replace(spec, power_cap_watts=watts)


# --- planner timing ------------------------------------------------------------------------------------------------

PLANNER_TARGET_MS = 10.0


def planner_timing(energy_model: EnergyModel, gpu: str = "H100", repeats: int = 20) -> list[dict[str, Any]]:
    """Time per plan() decision (bf16 + fp8, the default search space) for 8B and 70B at 1, 10, 50 req/s."""
    models = [
        model_from_name("meta-llama/Llama-3.1-8B-Instruct", 8.0),
        model_from_name("meta-llama/Llama-3.1-70B-Instruct", 70.0),
    ]
    out = []
    for model in models:
        for rate in (1.0, 10.0, 50.0):
            request = PlanRequest(
                model=model,
                accelerator=gpu,
                workload=Workload(rate, 1024.0, 256.0),
                allowed_precisions=("bf16", "fp8"),
                max_replicas=64,
            )
            t0 = time.perf_counter()
            first = plan(request, energy_model)
            cold_ms = (time.perf_counter() - t0) * 1000.0
            samples = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                plan(request, energy_model)
                samples.append((time.perf_counter() - t0) * 1000.0)
            median = statistics.median(samples)
            out.append(
                {
                    "model": model.name,
                    "requestsPerSecond": rate,
                    "candidates": first.evaluated,
                    "coldMs": round(cold_ms, 3),
                    "medianMs": round(median, 3),
                    "p90Ms": round(sorted(samples)[int(0.9 * (len(samples) - 1))], 3),
                    "ratioToTarget": round(median / PLANNER_TARGET_MS, 3),
                    "chosen": first.chosen.describe() if first.chosen else None,
                }
            )
    return out

"""Plans from the queued latency model, replayed through the fleet: `wattkeeper bench plan-check --out FILE.json`.

For each workload family and rate scale (bench/workloads.py, seed 1): the first 10 minutes are the telemetry; a
plan is made from them three ways (the steady model at the busiest minute, as before issue 11; the queued model
with the 99% basis, verified by a replay of the last minute; the same with the relaxed replay) and the next
5 minutes are replayed through `FleetSimulator` with that fleet fixed (ground truth: ML.ENERGY-corrected where
measured). It checks the latency model and the planner, not the control loop, which re-plans every tick.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..energy.catalog import model_from_name
from ..energy.types import Workload
from ..planner import ArrivalSample, PlanRequest, estimate_load, plan
from .fleet import FleetSimulator, FleetTarget, Observation
from .groundtruth import GroundTruth
from .latency import counts_from_arrivals
from .trace import Trace
from .workloads import make_workload

CASES = (
    ("conversation", 1.0),
    ("conversation", 2.0),
    ("prefill-heavy", 1.0),
    ("prefill-heavy", 2.0),
    ("decode-heavy", 1.0),
    ("bursty", 1.0),
    ("bursty", 2.0),
)


class _Fixed:
    name = "fixed"
    interval_s = 1e9

    def __init__(self, target: FleetTarget) -> None:
        self.target = target

    def initial(self) -> FleetTarget:
        return self.target

    def decide(self, obs: Observation, current: FleetTarget) -> FleetTarget | None:
        return None


def requests_for(trace: Trace, model_name: str = "meta-llama/Llama-3.1-70B-Instruct") -> dict[str, PlanRequest]:
    model = model_from_name(model_name, 70.0)
    telemetry = trace.window(0.0, 600.0)
    load = estimate_load(
        counts_from_arrivals(telemetry.arrival_s), 1.0, telemetry.input_tokens, telemetry.output_tokens
    )
    peak = float(telemetry.per_minute_counts().max()) / 60.0
    steady = PlanRequest(
        model=model,
        accelerator="H100",
        workload=Workload(peak, float(telemetry.input_tokens.mean()), float(telemetry.output_tokens.mean())),
        allowed_precisions=("bf16", "fp8"),
    )
    recent = telemetry.window(540.0, 600.0)
    queued = replace(
        steady,
        workload=Workload(load.queued_rate, load.mean_prompt_tokens or 1024.0, load.mean_output_tokens or 256.0),
        latency_model="queued",
        tokens=load.tokens,
        rate_levels=load.rate_levels,
        arrival_dispersion=load.arrival_dispersion,
        slo_basis="requests",
        chunk_budget_within_itl=True,
        replay=ArrivalSample.from_arrays(recent.arrival_s, recent.input_tokens, recent.output_tokens),
        replay_rate_scale=load.growth_factor,
    )
    return {
        "steadyAtPeakMinute": steady,
        "queuedVerified": queued,
        "queuedRelaxedReplay": replace(queued, verify_relaxed_share=0.95),
    }


def run_case(family: str, scale: float, gt: GroundTruth) -> dict[str, Any]:
    # 30 minutes generated (the synthetic families swing once over the whole trace), minutes 10-15 replayed.
    trace = make_workload(family, 1, 1800.0, scale)
    test = trace.window(600.0, 900.0)
    test = Trace(test.arrival_s - 600.0, test.input_tokens, test.output_tokens, test.name)
    out: dict[str, Any] = {"family": family, "rateScale": scale}
    for name, request in requests_for(trace).items():
        result = plan(request)
        chosen = result.chosen
        assert chosen is not None
        run = FleetSimulator(test, gt).run(_Fixed(FleetTarget(chosen.config, chosen.replicas)))
        ttft_ok = np.nan_to_num(run.ttft_s, nan=np.inf) <= 2.0
        itl_ok = ~np.isnan(run.mean_itl_s) & (np.nan_to_num(run.mean_itl_s, nan=np.inf) <= 0.1)
        out[name] = {
            "plan": f"{chosen.config.short()} x{chosen.replicas}",
            "predictedWatts": round(chosen.total_watts),
            "withinBoth": round(float(np.mean(ttft_ok & itl_ok)), 4),
            "withinTtft": round(float(np.mean(ttft_ok)), 4),
            "withinItl": round(float(np.mean(itl_ok)), 4),
        }
    return out


def main(out: Path | None) -> list[dict[str, Any]]:
    gt = GroundTruth.create(model_from_name("meta-llama/Llama-3.1-70B-Instruct", 70.0), "H100")
    rows = []
    for family, scale in CASES:
        row = run_case(family, scale, gt)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1) + "\n")
    return rows

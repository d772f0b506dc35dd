"""How long one planning decision takes for a 70B service: `wattkeeper bench decision-time --out FILE.json`.

The decision is what the control core runs per tick with every opt-in of issue 11 on: the burst-aware load from
1-second arrival counts and the observed token lengths (planner/load.py), the queued latency model with the
request-share SLO basis and the chunk-budget rule over bf16/fp8 x TP 1-8 x 7 max-num-seqs x 6 chunk budgets x 6
replica counts, then verification by replay of the cheapest candidates on the last minute's arrivals
(planner/verify.py). Ten minutes of the Azure conversation trace (or a synthetic stand-in without the shared
data) supply the telemetry. CPU time is reported beside wall time: on a shared 2-core machine wall time measures
the neighbours too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..energy.catalog import get_accelerator, model_from_name
from ..energy.powerlimit import limit_options_watts
from ..energy.types import Workload
from ..planner.load import ArrivalSample, estimate_load, rate_levels
from ..planner.search import PlanRequest, clear_plan_cache, plan
from .latency import counts_from_arrivals
from .policies import ORACLE_LIMIT_FRACTION
from .trace import Trace, default_trace_path, load_azure_trace, synthetic_trace

MODEL = "meta-llama/Llama-3.1-70B-Instruct"


def _telemetry() -> Trace:
    path = default_trace_path()
    if path is not None:
        full = load_azure_trace(path).window(600.0, 1200.0)
        return Trace(full.arrival_s - 600.0, full.input_tokens, full.output_tokens, full.name)
    return synthetic_trace([(600.0, 5.5)], 1155, 211, seed=2, spread=1.0)


def decision_request(verify: bool = True, levels: int | None = None, power_limits: bool = False,
                     frontier: bool = False) -> PlanRequest:
    """The planning request of one tick: what telemetry of the last ten minutes says, every opt-in on. As the
    control core asks it, without the Pareto frontier (`frontier`: with it, every candidate is solved)."""
    trace = _telemetry()
    load = estimate_load(counts_from_arrivals(trace.arrival_s), 1.0, trace.input_tokens, trace.output_tokens)
    recent = trace.window(trace.duration_s - 60.0, trace.duration_s + 1.0)
    sample = ArrivalSample.from_arrays(recent.arrival_s, recent.input_tokens, recent.output_tokens)
    return PlanRequest(
        model=model_from_name(MODEL, 70.0),
        accelerator="H100",
        workload=Workload(
            load.queued_rate, load.mean_prompt_tokens or 1024.0, load.mean_output_tokens or 256.0
        ),
        allowed_precisions=("bf16", "fp8"),
        latency_model="queued",
        tokens=load.tokens,
        # More rate levels cost more: every candidate is solved per level (`levels` overrides the estimate's).
        rate_levels=(
            rate_levels(counts_from_arrivals(trace.arrival_s), 1.0, levels=levels, dispersion=load.arrival_dispersion)
            if levels
            else load.rate_levels
        ),
        arrival_dispersion=load.arrival_dispersion,
        slo_basis="requests",
        chunk_budget_within_itl=True,
        replay=sample if verify else None,
        # The benchmark's lever, as BenchSpec offers it: the card's default limit and the oracle's reduced one.
        gpu_power_limits_watts=limit_options_watts(get_accelerator("H100"), (ORACLE_LIMIT_FRACTION,)) if power_limits
        else (None,),
        replay_rate_scale=load.growth_factor,
        frontier=frontier,  # the control core asks without it (control/planning.py); the what-if CLI with it
    )


def measure(repeats: int = 21) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, verify, levels, limits, frontier in (
        ("planOnly", False, None, False, False),
        ("planAndVerify", True, None, False, False),
        ("planAndVerifySixRateLevels", True, 6, False, False),
        ("planAndVerifyWithPowerLimits", True, None, True, False),
        # The same decision solving every candidate (the frontier needs them all): the cost of the lazy search's
        # alternative, side by side in one run.
        ("planAndVerifyWithPowerLimitsEveryCandidate", True, None, True, True),
    ):
        request = decision_request(verify, levels, limits, frontier)
        plan(request)  # warm caches (features per configuration), as a running operator has them
        cpu, wall = [], []
        result = None
        for _ in range(repeats):
            # A new question each time: a memoised plan costs a dictionary lookup and would time nothing.
            clear_plan_cache()
            c0, w0 = time.process_time(), time.perf_counter()
            result = plan(request)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        assert result is not None
        out[name] = {
            "medianCpuMs": round(float(np.median(cpu)) * 1e3, 1),
            "medianWallMs": round(float(np.median(wall)) * 1e3, 1),
            "p90WallMs": round(float(np.percentile(wall, 90)) * 1e3, 1),
            "candidates": result.evaluated,
            "chosen": result.chosen.describe() if result.chosen else None,
            "replays": len(result.verification),
            "rateLevels": len(request.rate_levels),
            "arrivalDispersion": round(request.arrival_dispersion, 2),
        }
    return out


def main(out: Path | None, repeats: int = 21) -> dict[str, Any]:
    result = measure(repeats)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result




"""The latency model against simulation: predicted vs `BatchingEngine` TTFT p95 and ITL p95 per workload family.

`wattkeeper bench latency --out FILE.json` runs, for each workload family (conversation, prefill-heavy,
decode-heavy, bursty), configuration and load, one replica of the runtime's `BatchingEngine` (the engine the
fleet simulator is made of) on the energy model's own step timing, and compares its TTFT p95 and ITL p95 (over
every token gap) with `Evaluator.under_load_queued` (energy/latency.py). The step timing is the model's own so
that the comparison measures the queueing model, not the step-time model (the benchmark's ground truth adds its
hidden bias on top; the planner learns that online as a margin, planner/verify.py).

The prediction sees what an operator sees: the arrival rate for the plan (for the bursty family the burst-aware
rate of planner/load.py, from 1-second counts of the same arrivals) and the token distribution of the requests.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from wattkeeper_runtime.engine import BatchingEngine, EngineRequest

from ..control import Tuning
from ..energy.catalog import get_accelerator, model_from_name
from ..energy.latency import TokenDistribution
from ..energy.model import EnergyModel
from ..energy.types import ModelShape, ServingConfig
from ..planner.load import LoadEstimate, estimate_load, thinned_dispersion
from ..planner.search import within_both_share
from . import workloads
from .cli import STANDARD_SLO_ITL_S, STANDARD_SLO_TTFT_S
from .groundtruth import GroundTruth
from .trace import Trace, default_trace_path, load_azure_trace

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

FAMILIES = workloads.FAMILIES
# Requests arriving in this first share of a run are not scored: the engine starts empty.
WARMUP_SHARE = 0.1
# The standard benchmark's SLOs (bench/cli.py): the share of requests within both, predicted against simulated, is
# what the planner's feasibility rests on.
SCORED_THRESHOLDS = (STANDARD_SLO_TTFT_S, STANDARD_SLO_ITL_S)
# The share planned for: a case predicted on the other side of it than it was simulated is a plan the planner would
# wrongly reject or accept.
PLANNED_SHARE = Tuning().request_share


@dataclass(frozen=True)
class Case:
    family: str
    model: ModelShape
    config: ServingConfig
    load_share: float  # of the replica's predicted capacity
    duration_s: float = 300.0
    seed: int = 3
    # Replicas behind a least-outstanding-requests router (the fleet simulator's, bench/fleet.py `route`); the load
    # share is of each replica's capacity.
    replicas: int = 1

    def name(self) -> str:
        fleet = f" x{self.replicas}" if self.replicas > 1 else ""
        return f"{self.family} {self.model.name.split('/')[-1]} {self.config.short()}{fleet} {self.load_share:.0%}"


def _lognormal(rng: np.random.Generator, mean: float, sigma: float, n: int) -> IntArray:
    values = rng.lognormal(math.log(mean) - sigma**2 / 2, sigma, n)
    return np.maximum(np.round(values), 1).astype(np.int64)


def token_pairs(family: str, n: int, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
    """Prompt and output lengths of `n` requests of a family, with the shapes of bench/workloads.py."""
    if family in ("conversation", "bursty"):
        path = default_trace_path()
        if path is not None:
            trace = _conversation_trace(path)
            idx = rng.integers(0, len(trace), n)
            return trace.input_tokens[idx], trace.output_tokens[idx]
        return _lognormal(rng, 1155.0, 1.0, n), _lognormal(rng, 211.0, 0.8, n)
    if family == "prefill-heavy":
        return workloads.PREFILL_HEAVY.prompt.draw(rng, n), workloads.PREFILL_HEAVY.output.draw(rng, n)
    if family == "decode-heavy":
        return workloads.DECODE_HEAVY.prompt.draw(rng, n), workloads.DECODE_HEAVY.output.draw(rng, n)
    raise ValueError(f"unknown workload family {family!r}; known: {', '.join(FAMILIES)}")


_TRACE_CACHE: dict[Path, Trace] = {}


def _conversation_trace(path: Path) -> Trace:
    if path not in _TRACE_CACHE:
        _TRACE_CACHE[path] = load_azure_trace(path)
    return _TRACE_CACHE[path]


def arrivals(family: str, rate: float, duration_s: float, rng: np.random.Generator, seed: int = 0) -> FloatArray:
    """Poisson arrivals at `rate`; the bursty family regroups each minute's arrivals in clusters of ~8 within 2 s
    (bench/workloads.py `clustered`), keeping the minute's count."""
    n = rng.poisson(rate * duration_s)
    times = np.sort(rng.uniform(0.0, duration_s, n))
    if family != "bursty" or n == 0:
        return times
    ones = np.ones(n, dtype=np.int64)
    return workloads.clustered(Trace(times, ones, ones, "poisson"), seed).arrival_s


def simulate(
    timing: Any,
    config: ServingConfig,
    arrival_s: FloatArray,
    prompts: IntArray,
    outputs: IntArray,
    warmup_s: float = 0.0,
    replicas: int = 1,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(TTFT per request, every token gap, per-request mean ITL) of `replicas` engine replicas, each request sent
    to the one with the fewest outstanding (as the fleet simulator routes), for requests arriving after `warmup_s`
    (token gaps: of steps ending after it)."""
    engines = [BatchingEngine(timing, config.max_num_seqs, config.max_num_batched_tokens) for _ in range(replicas)]
    gaps: list[float] = []
    requests: list[EngineRequest] = []
    for i, t in enumerate(arrival_s):
        for engine in engines:
            while engine.has_work() and engine.clock_s < t:
                r = engine.step(engine.clock_s)
                if r.end_s >= warmup_s:
                    gaps += r.itl_samples_s
        req = EngineRequest(str(i), int(prompts[i]), int(outputs[i]))
        requests.append(req)
        min(engines, key=lambda e: len(e.running) + len(e.waiting)).submit(req, float(t))
    for engine in engines:
        while engine.has_work():
            r = engine.step(engine.clock_s)
            gaps += r.itl_samples_s
    scored = [r for r in requests if r.arrival_s >= warmup_s]
    ttft = [r.first_token_s - r.arrival_s for r in scored if r.first_token_s is not None]
    mean_itl = np.array(
        [
            (r.finished_s - r.first_token_s) / (r.output_tokens - 1) if r.output_tokens > 1 else 0.0
            for r in scored
            if r.finished_s is not None and r.first_token_s is not None
        ]
    )
    return np.asarray(ttft), np.asarray(gaps), mean_itl


def capacity_rps(em: EnergyModel, model: ModelShape, config: ServingConfig, tokens: TokenDistribution) -> float:
    f = em.features(model, get_accelerator("H100"), config)
    r = em.evaluator.under_load_queued(f, np.array([1.0]), tokens)
    return 1.0 / max(float(r["utilisation"][0]), 1e-9)


def run_case(case: Case, em: EnergyModel, gt: GroundTruth) -> dict[str, Any]:
    rng = np.random.default_rng(case.seed)
    # The token distribution the operator would observe (a large sample of the family) sets the capacity.
    sample_in, sample_out = token_pairs(case.family, 4000, rng)
    tokens = TokenDistribution.from_sample(sample_in, sample_out)
    cap = capacity_rps(em, case.model, case.config, tokens)
    mean_rate = case.load_share * cap * case.replicas
    arrival_s = arrivals(case.family, mean_rate, case.duration_s, rng, case.seed)
    prompts, outputs = token_pairs(case.family, arrival_s.size, rng)
    started = time.perf_counter()
    ttft, gaps, mean_itl = simulate(
        gt.timing(case.config), case.config, arrival_s, prompts, outputs, case.duration_s * WARMUP_SHARE,
        case.replicas,
    )
    sim_seconds = time.perf_counter() - started
    load: LoadEstimate = estimate_load(counts_from_arrivals(arrival_s), 1.0, prompts, outputs)
    # What telemetry shows: the mean rate, its 10-s rate levels and the clustering of arrivals within them
    # (planner/load.py, from 1-s counts), and the token lengths.
    levels = load.rate_levels
    plan_rate = load.mean_rate / case.replicas
    observed = TokenDistribution.from_sample(prompts, outputs)
    f = em.features(case.model, get_accelerator("H100"), case.config)
    # As the planner predicts a replica of a fleet by default: the service's clustering at each replica.
    r = em.evaluator.under_load_queued(
        f, np.array([plan_rate]), observed, rate_levels=levels, arrival_dispersion=load.arrival_dispersion,
        thresholds=SCORED_THRESHOLDS,
    )
    # And with per-request routing (PlanRequest.per_request_routing): each replica's random share of a cluster.
    shared = em.evaluator.under_load_queued(
        f, np.array([plan_rate]), observed, rate_levels=levels,
        arrival_dispersion=float(thinned_dispersion(load.arrival_dispersion, 1.0 / case.replicas)),
    ) if case.replicas > 1 else r
    # The steady model the planner used before (Poisson at the rate, mean lengths), for comparison.
    steady = em.evaluator.under_load(
        f, np.array([plan_rate]), np.array([observed.mean_prompt_tokens]), np.array([observed.mean_output_tokens])
    )
    pred_ttft = float(r["ttft_p95"][0])
    pred_itl = float(r["itl_p95"][0])
    sim_ttft = float(np.percentile(ttft, 95))
    sim_itl = float(np.percentile(gaps, 95)) if gaps.size else float("nan")
    # What is scored, as the planner judges it (its own rule) and as the engine served it.
    pred_within = float(within_both_share(r["ttft_miss_share"][0], r["itl_miss_share"][0]))
    # The engine runs until every request finished: TTFT and mean ITL are of the same requests, in order.
    sim_within = float(np.mean((ttft <= SCORED_THRESHOLDS[0]) & (mean_itl <= SCORED_THRESHOLDS[1]))) \
        if ttft.size and ttft.size == mean_itl.size else float("nan")
    return {
        "case": case.name(),
        "family": case.family,
        "model": case.model.name,
        "config": case.config.short(),
        "replicas": case.replicas,
        "loadShare": case.load_share,
        "meanRate": round(mean_rate, 4),
        "planRate": round(plan_rate, 4),
        "rateLevels": [list(level) for level in levels],
        "arrivalDispersion": round(load.arrival_dispersion, 3),
        "requests": int(arrival_s.size),
        "ttftP95": {"predicted": pred_ttft, "simulated": sim_ttft, "logError": _log_error(pred_ttft, sim_ttft)},
        "itlP95": {"predicted": pred_itl, "simulated": sim_itl, "logError": _log_error(pred_itl, sim_itl)},
        "steadyModel": {
            "ttftP95": float(steady["ttft_p95"][0]),
            "itlP95": float(steady["itl_p95"][0]),
            "ttftLogError": _log_error(float(steady["ttft_p95"][0]), sim_ttft),
            "itlLogError": _log_error(float(steady["itl_p95"][0]), sim_itl),
        },
        "ttftP99": {"predicted": float(r["ttft_q"][0]), "simulated": float(np.percentile(ttft, 99))},
        "requestMeanItlP99": {
            "predicted": float(r["request_mean_itl_q"][0]),
            "simulated": float(np.percentile(mean_itl, 99)) if mean_itl.size else float("nan"),
        },
        "withinBothSlos": {"predicted": pred_within, "simulated": sim_within},
        "perRequestRouting": {
            "ttftP95": float(shared["ttft_p95"][0]),
            "itlP95": float(shared["itl_p95"][0]),
            "ttftP99": float(shared["ttft_q"][0]),
            "requestMeanItlP99": float(shared["request_mean_itl_q"][0]),
        },
        "simulationSeconds": round(sim_seconds, 2),
    }


def counts_from_arrivals(arrival_s: FloatArray, resolution_s: float = 1.0) -> IntArray:
    if arrival_s.size == 0:
        return np.zeros(1, dtype=np.int64)
    return np.bincount((arrival_s // resolution_s).astype(np.int64))


def _log_error(predicted: float, simulated: float) -> float:
    if not (math.isfinite(predicted) and math.isfinite(simulated)) or predicted <= 0 or simulated <= 0:
        return math.inf
    return math.log(predicted / simulated)


def standard_cases(duration_s: float = 600.0) -> list[Case]:
    m70 = model_from_name("meta-llama/Llama-3.1-70B-Instruct", 70.0)
    m8 = model_from_name("meta-llama/Llama-3.1-8B-Instruct", 8.0)
    configs = [
        (m70, ServingConfig("bf16", 4, 256, 8192)),
        (m70, ServingConfig("fp8", 2, 128, 2048)),
        (m70, ServingConfig("fp8", 4, 256, 1024)),
        (m8, ServingConfig("bf16", 1, 256, 4096)),
    ]
    return [
        Case(family, model, config, share, duration_s)
        for family in FAMILIES
        for model, config in configs
        for share in (0.3, 0.6, 0.85)
    ]


def fleet_cases(duration_s: float = 400.0) -> list[Case]:
    """Fleets of two and four 70B replicas behind the least-outstanding router, on the bursty and conversation
    families at 50% and 80% of each replica's capacity: how a cluster of arrivals spreads over replicas."""
    m70 = model_from_name("meta-llama/Llama-3.1-70B-Instruct", 70.0)
    configs = [ServingConfig("bf16", 4, 512, 8192), ServingConfig("bf16", 8, 512, 8192)]
    return [
        Case(family, m70, config, share, duration_s, replicas=replicas)
        for family in ("bursty", "conversation")
        for config in configs
        for replicas in (2, 4)
        for share in (0.5, 0.8)
    ]


def fleet_table(rows: Sequence[dict[str, Any]]) -> str:
    """Predicted (as planned by default / with per-request routing) against simulated, per fleet case."""
    lines = [
        "| family | config | replicas | load | dispersion | TTFT p95 pred / per-request / sim (s) | "
        "TTFT p99 pred / per-request / sim (s) | request mean ITL p99 pred / per-request / sim (ms) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        t, q, m, s = row["ttftP95"], row["ttftP99"], row["requestMeanItlP99"], row["perRequestRouting"]
        lines.append(
            f"| {row['family']} | {row['config']} | {row['replicas']} | {row['loadShare']:.0%} | "
            f"{row['arrivalDispersion']:.1f} | {t['predicted']:.2f} / {s['ttftP95']:.2f} / {t['simulated']:.2f} | "
            f"{q['predicted']:.2f} / {s['ttftP99']:.2f} / {q['simulated']:.2f} | "
            f"{m['predicted'] * 1e3:.0f} / {s['requestMeanItlP99'] * 1e3:.0f} / {m['simulated'] * 1e3:.0f} |"
        )
    return "\n".join(lines)


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in ("ttftP95", "itlP95"):
        errors = np.array([row[metric]["logError"] for row in rows], dtype=float)
        finite = errors[np.isfinite(errors)]
        out[metric] = {
            "cases": len(rows),
            "medianAbsLogError": float(np.median(np.abs(errors))) if errors.size else None,
            "meanLogError": float(finite.mean()) if finite.size else None,
            "worstRatio": float(np.exp(np.max(np.abs(errors)))) if errors.size else None,
            "within2x": int(np.sum(np.abs(errors) <= math.log(2.0))),
        }
    within = [(row["withinBothSlos"]["predicted"], row["withinBothSlos"]["simulated"]) for row in rows
              if "withinBothSlos" in row]
    out["withinBothSlos"] = {
        "thresholdsSeconds": list(SCORED_THRESHOLDS),
        "plannedShare": PLANNED_SHARE,
        "agree": sum((p >= PLANNED_SHARE) == (s >= PLANNED_SHARE) for p, s in within),
        # Predicted short of the planned share where the engine kept it: a plan rejected that would have served.
        "predictedShortSimulatedKept": sum(p < PLANNED_SHARE <= s for p, s in within),
        # Predicted to keep it where the engine did not: a plan accepted that misses.
        "predictedKeptSimulatedShort": sum(s < PLANNED_SHARE <= p for p, s in within),
    }
    for metric, key in (("ttftP95", "ttftLogError"), ("itlP95", "itlLogError")):
        errors = np.array([row["steadyModel"][key] for row in rows], dtype=float)
        out[f"steadyModel{metric[0].upper()}{metric[1:]}"] = {
            "medianAbsLogError": float(np.median(np.abs(errors))) if errors.size else None,
            "worstRatio": float(np.exp(np.max(np.abs(errors)))) if errors.size else None,
            "within2x": int(np.sum(np.abs(errors) <= math.log(2.0))),
        }
    return out


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| family | model | config | load | TTFT p95 pred / sim (s) | ITL p95 pred / sim (ms) "
        "| within both SLOs pred / sim |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        t, i = row["ttftP95"], row["itlP95"]
        lines.append(
            f"| {row['family']} | {row['model'].split('/')[-1]} | {row['config']} | {row['loadShare']:.0%} | "
            f"{t['predicted']:.2f} / {t['simulated']:.2f} | {i['predicted'] * 1e3:.0f} / {i['simulated'] * 1e3:.0f} | "
            f"{row['withinBothSlos']['predicted']:.2%} / {row['withinBothSlos']['simulated']:.2%} |"
        )
    return "\n".join(lines)


def run(cases: Sequence[Case], em: EnergyModel | None = None, verbose: bool = False) -> dict[str, Any]:
    em = em or EnergyModel.default()
    rows = []
    truths: dict[str, GroundTruth] = {}
    for case in cases:
        gt = truths.get(case.model.name)
        if gt is None:
            # The model's own step timing, no measured correction: the comparison isolates the queueing model.
            gt = truths[case.model.name] = GroundTruth(case.model, get_accelerator("H100"), em, ())
        row = run_case(case, em, gt)
        rows.append(row)
        if verbose:
            t, i = row["ttftP95"], row["itlP95"]
            print(
                f"{row['case']}: TTFT p95 {t['predicted']:.2f}/{t['simulated']:.2f} s, ITL p95 "
                f"{i['predicted'] * 1e3:.0f}/{i['simulated'] * 1e3:.0f} ms (pred/sim)",
                flush=True,
            )
    return {"cases": rows, "summary": summarise(rows)}


def main(out: Path | None, duration_s: float = 300.0, verbose: bool = True, fleets: bool = False) -> dict[str, Any]:
    result = run(fleet_cases(duration_s) if fleets else standard_cases(duration_s), verbose=verbose)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    print(fleet_table(result["cases"]) if fleets else table(result["cases"]))
    print(json.dumps(result["summary"], indent=1))
    return result

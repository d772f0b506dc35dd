"""Scenarios: one trace replay through every policy, the standard set of `make bench`, and planner timing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .baselines import autoscaler_tuned, peak_replicas, static_peak, static_right_sized
from .fleet import FleetRun, FleetSimulator
from .groundtruth import GroundTruth
from .oracle import oracle_verified
from .policies import BenchSpec
from .report import compare, plot_power, summarise
from .scoring import TARGET_SHARE, Thresholds, score
from .trace import Trace
from .wattkeeper_policy import WattkeeperPolicy

POLICY_NAMES = ("static-peak", "static-right-sized", "autoscaler-tuned", "oracle-verified", "wattkeeper")
CAP_BLIND = ("static-peak", "static-right-sized", "autoscaler-tuned")  # the same run with or without a cap
Log = Callable[[str], None]


@dataclass
class ScenarioResult:
    name: str
    document: dict[str, Any]
    runs: dict[str, FleetRun]
    notes: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # what the tuning tried, the oracle's windows


def _run_policies(
    trace: Trace,
    spec: BenchSpec,
    gt: GroundTruth,
    policies: tuple[str, ...],
    reuse: ScenarioResult | None,
    log: Log | None,
) -> tuple[dict[str, FleetRun], dict[str, str], dict[str, Any], dict[str, Any]]:
    """Runs per policy name, their notes, tuning details, and the policies (for their decisions)."""
    em = gt.energy_model
    sim = FleetSimulator(trace, gt)
    runs: dict[str, FleetRun] = {}
    notes: dict[str, str] = {}
    extras: dict[str, Any] = {}
    objects: dict[str, Any] = {}
    unknown = set(policies) - set(POLICY_NAMES)
    if unknown:
        raise ValueError(f"unknown policies {sorted(unknown)}: known ones are {', '.join(POLICY_NAMES)}")
    for name in (*CAP_BLIND, "oracle-verified"):
        if reuse is not None and name in reuse.runs and name in policies:
            runs[name] = reuse.runs[name]
            notes[name] = reuse.notes.get(name, "")
            if name in reuse.extras:
                extras[name] = reuse.extras[name]
    need_peak = any(p in policies for p in CAP_BLIND)
    if need_peak and "static-peak" not in runs:
        tuned = static_peak(spec, trace, sim, em)
        runs["static-peak"], notes["static-peak"] = tuned.run, tuned.note
    peak_n = peak_replicas(runs["static-peak"]) if "static-peak" in runs else 1
    if any(p in policies for p in ("static-right-sized", "autoscaler-tuned")) and "static-right-sized" not in runs:
        tuned = static_right_sized(spec, trace, sim, em, peak_n, log)
        runs["static-right-sized"], notes["static-right-sized"] = tuned.run, tuned.note
        extras["static-right-sized"] = tuned.tried
    if "autoscaler-tuned" in policies and "autoscaler-tuned" not in runs:
        right_n = peak_replicas(runs["static-right-sized"])
        tuned = autoscaler_tuned(spec, trace, sim, em, right_n, peak_n, log)
        runs["autoscaler-tuned"], notes["autoscaler-tuned"] = tuned.run, tuned.note
        extras["autoscaler-tuned"] = tuned.tried
    if "oracle-verified" in policies and "oracle-verified" not in runs:
        oracle = oracle_verified(spec, trace, gt, sim, log)
        runs["oracle-verified"], notes["oracle-verified"] = oracle.run, oracle.policy.note
        extras["oracle-verified"] = {
            "verified": oracle.verified,
            "windowReplays": oracle.replays,
            "repairRounds": oracle.rounds,
            "wallSeconds": round(oracle.wall_seconds, 1),
            "windows": oracle.windows,
        }
    if "wattkeeper" in policies:
        policy = WattkeeperPolicy(spec, trace, em)
        runs["wattkeeper"] = sim.run(policy)
        objects["wattkeeper"] = policy
    return {k: runs[k] for k in POLICY_NAMES if k in runs and k in policies}, notes, extras, objects


def run_scenario(
    name: str,
    trace: Trace,
    spec: BenchSpec,
    ground_truth: GroundTruth,
    policies: tuple[str, ...] = POLICY_NAMES,
    reuse: ScenarioResult | None = None,
    png: Path | None = None,
    settings: dict[str, Any] | None = None,
    log: Any = None,
) -> ScenarioResult:
    """Replay `trace` through each policy and score it. `reuse`: the same trace's plain scenario, whose cap-blind
    baselines (and oracle) are not redone."""
    runs, notes, extras, objects = _run_policies(trace, spec, ground_truth, policies, reuse, log)
    thresholds = Thresholds(spec.slo_ttft_p95_seconds, spec.slo_itl_p95_seconds)
    summaries: dict[str, dict[str, Any]] = {}
    for policy_name, run in runs.items():
        sources = {cfg: _source_of(ground_truth, cfg) for cfg in run.configs_used}
        summary = summarise(
            run,
            spec.slo_ttft_p95_seconds,
            spec.slo_itl_p95_seconds,
            spec.allocation_watts,
            sources,
            getattr(objects.get(policy_name), "decisions", ()),
        )
        summary.update(score(run, trace.arrival_s, thresholds, spec.allocation_watts, trace.duration_s).to_dict())
        summary["policy"] = policy_name
        summaries[policy_name] = summary
        if log is not None:
            s = summaries[policy_name]
            log(
                f"  {name}/{policy_name}: {s['energyKWh']:.2f} kWh, both SLOs {s['withinBothSlos'] * 100:.2f}% "
                f"(worst 5 min {s['worstFiveMinuteWithinBoth'] * 100:.1f}%), {s['restarts']} restarts, "
                f"{s['verdict']} ({run.wall_seconds:.1f} s, {run.steps} steps)"
            )
    rate, _, _ = trace.peak_minute() if len(trace) else (0.0, 0.0, 0.0)
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
        "slo": {"ttftSeconds": spec.slo_ttft_p95_seconds, "meanItlSeconds": spec.slo_itl_p95_seconds,
                "targetShare": TARGET_SHARE},
        "groundTruthSeed": ground_truth.seed,
        "wattkeeperAllowedPrecisions": list(spec.allowed_precisions),
        # GPU power limits Wattkeeper may set (null: the card's default); oracle-verified tries the default and 70%.
        "wattkeeperGpuPowerLimitsWatts": list(spec.gpu_power_limits_watts),
        "powerCapWatts": spec.allocation_watts,
        "policies": summaries,
        "notes": notes,
        "tuning": extras,
        "comparison": compare(summaries),
        "definitions": {
            "withinBothSlos": "share of requests with TTFT <= the TTFT threshold and their own mean inter-token "
            "latency <= the ITL threshold; unfinished requests count as misses",
            "keepsTarget": f"withinBothSlos >= {TARGET_SHARE}",
            "worstFiveMinuteWithinBoth": "the lowest share within both over 5-minute windows of arrivals",
            "capHeld": "every 5-minute average of the fleet's power within 2% of the cap",
            "maxFiveMinuteWatts": "highest average GPU power over any 5-minute window (5 s steps)",
            "restarts": "configuration changes (each reloads the model); a GPU power limit set in place (change "
            "kind 'limit') is not one",
        },
    }
    if png is not None:
        plot_power(
            list(runs.values()), png, f"{name}: {spec.model.name} on {spec.accelerator.name}", spec.allocation_watts
        )
        document["plot"] = str(png)
    return ScenarioResult(name, document, runs, notes, extras)


def _source_of(ground_truth: GroundTruth, short: str) -> str:
    from ..energy.types import ServingConfig

    parts = short.split()
    limit = next((p for p in parts[4:] if p.startswith("gpu-limit")), None)
    config = ServingConfig(
        precision=parts[0],
        tensor_parallel=int(parts[1].removeprefix("tp")),
        max_num_seqs=int(parts[2].removeprefix("seqs")),
        max_num_batched_tokens=int(parts[3].removeprefix("tok")),
        gpu_power_limit_watts=float(limit.removeprefix("gpu-limit").removesuffix("W")) if limit else None,
    )
    return ground_truth.source(config)


def with_cap(spec: BenchSpec, watts: float | None) -> BenchSpec:
    return replace(spec, allocation_watts=watts)

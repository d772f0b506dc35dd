"""Baselines a practitioner would run, tuned in the same simulator against the same ground truth (issue 10 item 3).

- `static-peak`: today's static fleet: vLLM's defaults for the GPU (`policies.baseline_config`), as many replicas
  as the planner predicts for the trace's busiest minute (`policies.StaticPolicy`).
- `static-right-sized`: the same configuration, the fewest replicas whose replay of the whole trace keeps the SLO
  target, found by bisection over replays (the share within both SLOs only grows with replicas, up to noise).
- `autoscaler-tuned`: HPA/KEDA on running + waiting requests per replica (`policies.AutoscalerPolicy`) with its
  target concurrency, min and max replicas chosen by grid search over replays: the cheapest setting that keeps the
  target (or, when none does, the one that comes closest).

Tuning replays the trace it is scored on: the baselines get to see the future, a bound in their favour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..energy.model import EnergyModel
from .fleet import Cutoff, FleetRun, FleetSimulator, FleetTarget, Observation, Policy
from .policies import AutoscalerPolicy, BenchSpec, StaticPolicy, baseline_config
from .scoring import TARGET_SHARE, Thresholds, score
from .trace import Trace

Log = Callable[[str], None]


@dataclass
class FixedFleet:
    """A policy that holds one target: a static fleet of any configuration."""

    target: FleetTarget
    name: str = "fixed"
    interval_s: float = 3600.0 * 24
    note: str = ""

    def initial(self) -> FleetTarget:
        return self.target

    def decide(self, obs: Observation, current: FleetTarget) -> FleetTarget | None:
        return None


@dataclass
class Tuned:
    """A baseline's chosen run, with what its tuning tried."""

    policy: Policy
    run: FleetRun
    note: str
    tried: list[dict[str, Any]] = field(default_factory=list)


def _keeps(run: FleetRun, trace: Trace, thresholds: Thresholds) -> tuple[bool, float]:
    if run.aborted:
        return False, float("nan")
    s = score(run, trace.arrival_s, thresholds)
    return s.keeps_target, s.within_share


def cutoff_for(trace: Trace, thresholds: Thresholds, max_joules: float = float("inf")) -> Cutoff:
    """Stop a tuning replay once it has missed too many requests to keep the target, or spent too much."""
    return Cutoff(
        thresholds.ttft_seconds,
        thresholds.itl_seconds,
        Cutoff.misses_allowed(len(trace), TARGET_SHARE),
        max_joules,
    )


def static_peak(spec: BenchSpec, trace: Trace, sim: FleetSimulator, em: EnergyModel) -> Tuned:
    policy = StaticPolicy(spec, trace, em, name="static-peak")
    run = sim.run(policy)
    return Tuned(policy, run, policy.note)


def right_sized_replicas(
    keeps: Callable[[int], bool], start: int, max_replicas: int
) -> tuple[int | None, dict[int, bool]]:
    """The fewest n in [1, max_replicas] with keeps(n), by doubling up from `start` and bisection (None: none)."""
    seen: dict[int, bool] = {}

    def test(n: int) -> bool:
        if n not in seen:
            seen[n] = keeps(n)
        return seen[n]

    hi = max(1, min(start, max_replicas))
    while not test(hi):
        if hi >= max_replicas:
            return None, seen
        hi = min(max_replicas, hi * 2)
    lo = 0  # keeps(lo) is False or lo is 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if test(mid):
            hi = mid
        else:
            lo = mid
    return hi, seen


def static_right_sized(
    spec: BenchSpec, trace: Trace, sim: FleetSimulator, em: EnergyModel, peak_replicas: int, log: Log | None = None
) -> Tuned:
    config = baseline_config(spec, trace, em)
    thresholds = Thresholds(spec.slo_ttft_p95_seconds, spec.slo_itl_p95_seconds)
    runs: dict[int, FleetRun] = {}
    tried: list[dict[str, Any]] = []

    def keeps(n: int) -> bool:
        target = FleetTarget(config, n, "right-sized")
        run = sim.run(FixedFleet(target, name="static-right-sized"), cutoff_for(trace, thresholds))
        runs[n] = run
        ok, share = _keeps(run, trace, thresholds)
        tried.append({"replicas": n, "keepsTarget": ok, "aborted": run.aborted, "energyKWh": _kwh(run)})
        if log:
            what = "stopped: misses over 1%" if run.aborted else f"{share * 100:.2f}% within both"
            log(f"    right-sized: {n} x {config.short()}: {what}")
        return ok

    n, seen = right_sized_replicas(keeps, max(1, peak_replicas // 2), spec.max_replicas)
    if n is None:
        n = max(seen)
        runs[n] = sim.run(FixedFleet(FleetTarget(config, n, "right-sized"), name="static-right-sized"))
        note = f"no replica count up to {spec.max_replicas} keeps the target; shown at {n}"
    else:
        note = f"fewest replicas of the default configuration that keep the target over the trace: {n}"
    policy = FixedFleet(FleetTarget(config, n, note), name="static-right-sized", note=note)
    return Tuned(policy, runs[n], note, tried)


def autoscaler_grid(right_sized: int, peak: int, tuned_target: float) -> list[tuple[float, int, int]]:
    """(target concurrency, min replicas, max replicas) to try: around the planner-tuned target, a floor of one
    or half the right-sized fleet, a ceiling of the right-sized or the peak fleet (whichever is larger, doubled)."""
    targets = sorted({max(4.0, round(tuned_target * f)) for f in (0.5, 1.0, 2.0)}, reverse=True)
    mins = sorted({1, max(1, right_sized // 2)})
    maxes = sorted({max(right_sized, 1), max(2 * right_sized, peak)})
    # Likely cheapest first (low ceiling, high target), so that later settings can stop on the energy bound.
    return [(t, lo, hi) for hi in maxes for t in targets for lo in mins if lo <= hi]


def autoscaler_tuned(
    spec: BenchSpec,
    trace: Trace,
    sim: FleetSimulator,
    em: EnergyModel,
    right_sized: int,
    peak: int,
    log: Log | None = None,
) -> Tuned:
    thresholds = Thresholds(spec.slo_ttft_p95_seconds, spec.slo_itl_p95_seconds)
    probe = AutoscalerPolicy(spec, trace, em)
    probe.initial()
    tuned = float(probe.target_active_per_replica or 32.0)
    best: tuple[float, AutoscalerPolicy, FleetRun] | None = None
    latest: tuple[float, tuple[float, int, int]] | None = None  # the failing setting that lasted longest
    tried: list[dict[str, Any]] = []

    def make(target: float, lo: int, hi: int) -> AutoscalerPolicy:
        return AutoscalerPolicy(spec, trace, em, target_active_per_replica=target, min_replicas=lo, max_replicas=hi,
                                name="autoscaler-tuned")  # fmt: skip

    lowest: dict[tuple[float, int], int] = {}  # (target, max) -> fewest replicas its min-1 run ever asked for
    for target, lo, hi in autoscaler_grid(right_sized, peak, tuned):
        if lo > 1 and lowest.get((target, hi), 0) >= lo:
            # The floor never bound in the same setting with a floor of 1: the run would be the same, step by step
            # (up to where that one stopped, which this one would too).
            tried.append({"target": target, "minReplicas": lo, "maxReplicas": hi, "sameAsMinReplicas": 1})
            continue
        policy = make(target, lo, hi)
        # A setting that misses too many requests, or has spent more than the best so far, is decided: stop it.
        run = sim.run(policy, cutoff_for(trace, thresholds, best[0] if best else float("inf")))
        ok, share = _keeps(run, trace, thresholds)
        if lo == 1:
            lowest[(target, hi)] = min([replicas_of(run.initial), *(replicas_of(c.target) for c in run.changes)])
        joules = float(run.energy_joules[-1])
        tried.append({"target": target, "minReplicas": lo, "maxReplicas": hi, "keepsTarget": ok,
                      "aborted": run.aborted, "energyKWh": _kwh(run)})  # fmt: skip
        if log:
            what = "stopped early" if run.aborted else f"{share * 100:.2f}% within both, {_kwh(run):.2f} kWh"
            log(f"    autoscaler: target {target:g}, replicas {lo}-{hi}: {what}")
        if ok and (best is None or joules < best[0]):
            best = (joules, policy, run)
        elif not ok and (latest is None or run.horizon_s > latest[0]):
            latest = (run.horizon_s, (target, lo, hi))
    kept = best is not None
    if best is None:
        assert latest is not None
        policy = make(*latest[1])  # none keeps the target: shown is the setting that held out longest
        run = sim.run(policy)
    else:
        _, policy, run = best
    policy.note = (
        f"target {policy.target_active_per_replica:g} active requests per replica, replicas "
        f"{policy.min_replicas}-{policy.max_replicas}: "
        + ("the cheapest of the grid that keeps the target" if kept else "no setting of the grid keeps the target")
    )
    return Tuned(policy, run, policy.note, tried)


def _kwh(run: FleetRun) -> float:
    return round(float(run.energy_joules[-1]) / 3.6e6, 4)


def replicas_of(described: str) -> int:
    """Replicas of a target printed by `Plan.describe` (`... xN`)."""
    return max(1, int(described.rsplit("x", 1)[-1])) if described else 1


def peak_replicas(run: FleetRun) -> int:
    """Replicas of a static run (its initial target)."""
    return replicas_of(run.initial)

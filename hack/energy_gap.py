#!/usr/bin/env python3
"""Where Wattkeeper's energy above oracle-verified goes, run by run (the standard benchmark's plain scenarios).

Replays each scenario twice on the hidden ground truth of `wattkeeper bench standard`, as hack/bench_ticks.py
does: Wattkeeper (the control core, power limits allowed) and oracle-verified's schedule as a standard run
recorded it (`tuning.oracle-verified.windows` in the scenario JSONs; the oracle does not depend on the core, so
its schedule is replayed with `oracle.ScheduledFleet`, not searched again: the replay must give the recorded
energy, and the script prints both). Every 5-s sample of both runs is read per replica (its energy, its state, its
configuration at the time), and the difference is split into buckets:

- cold start: everything before Wattkeeper's first tick with a full telemetry window (`--cold-s`, 90 s);
- transitions: replicas loading (a restart or a scale-up) or draining, Wattkeeper's less the oracle's;
- after the last arrival: both fleets finishing and idling to the end of the run;
- the serving replicas' energy, per oracle window (300 s), against a counterfactual: each configuration Wattkeeper
  served in the window, right-sized on the ground truth (the fewest replicas of it that keep 99% of the window's
  requests within both SLOs, found by replay as the oracle finds its own; `right_sized`).
  Wattkeeper's serving energy less that of the right-sized fleet is "more replicas than its configuration needs"
  (before and after `EARLY_S`); the right-sized fleet's less the oracle's is "configuration", put on the knobs
  that differ between the two configurations serving at that time (precision, tp, tok, seqs, limit; in the table
  on the first of them in `KNOB_ORDER`).

    python hack/energy_gap.py --bench out/bench                 # the ten plain scenarios, about 8 minutes
    python hack/energy_gap.py --bench out/bench --workloads conv-x4 --seeds 1 --timeline
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from wattkeeper.bench import fleet as fleet_module
from wattkeeper.bench import standard
from wattkeeper.bench.cli import STANDARD_GPU, STANDARD_MODEL, STANDARD_SLO_ITL_S, STANDARD_SLO_TTFT_S
from wattkeeper.bench.fleet import FleetRun, FleetSimulator, FleetTarget, Policy, State
from wattkeeper.bench.groundtruth import GroundTruth, model_shape
from wattkeeper.bench.oracle import WINDOW_S, ScheduledFleet, WindowChoice, WindowReplay, replay_window
from wattkeeper.bench.policies import BenchSpec
from wattkeeper.bench.scoring import Thresholds
from wattkeeper.bench.trace import Trace
from wattkeeper.bench.wattkeeper_policy import WattkeeperPolicy
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import ServingConfig
from wattkeeper.planner import model_load_seconds

KWH = 3.6e6
KNOBS = ("precision", "tp", "seqs", "tok", "limit")
BUCKETS = ("cold start", "transitions", "more replicas early", "more replicas", "tail", "other")
# Replicas beyond what a configuration needs before this time are the start-up's (the first forecasts and the
# peak they hold for a cooldown), after it the steady state's.
EARLY_S = 600.0
# A configuration that differs in several knobs is put on the first of them in this order (the others follow it:
# fp8 fits in fewer GPUs, a TP has its own best chunk budget).
KNOB_ORDER = ("precision", "tp", "tok", "seqs", "limit")


@dataclass(eq=False)
class RecordingReplica(fleet_module.Replica):
    """A replica that keeps, at every sample the simulator reads its energy, (time, joules, state, configuration)."""

    series: list[tuple[float, float, State, ServingConfig]] = field(default_factory=list)
    made: ClassVar[list[RecordingReplica]] = []

    def __post_init__(self) -> None:
        RecordingReplica.made.append(self)

    def energy_joules_at(self, t_s: float) -> float:
        joules = super().energy_joules_at(t_s)
        self.series.append((t_s, joules, self.state, self.config))
        return joules


@contextmanager
def recording() -> Iterator[list[RecordingReplica]]:
    """While inside, the fleet simulator makes `RecordingReplica`s; yields the list they are kept in."""
    original = fleet_module.Replica
    RecordingReplica.made = []
    fleet_module.Replica = RecordingReplica
    try:
        yield RecordingReplica.made
    finally:
        fleet_module.Replica = original


@dataclass
class Sample:
    """One sample interval of one run: energy by role, and the serving fleet."""

    loading: float = 0.0
    draining: float = 0.0
    serving: float = 0.0
    fleet: Counter[ServingConfig] = field(default_factory=Counter)

    @property
    def total(self) -> float:
        return self.loading + self.draining + self.serving

    @property
    def gpus(self) -> int:
        return sum(c.tensor_parallel * n for c, n in self.fleet.items())

    def describe(self) -> str:
        return " + ".join(f"{c.short()} x{n}" for c, n in sorted(self.fleet.items(), key=lambda x: -x[1])) or "-"


def samples_of(replicas: list[RecordingReplica], sample_s: float) -> list[Sample]:
    """Per sample interval (index k: from (k-1) * sample_s to k * sample_s), the energy by role and who serves."""
    out: defaultdict[int, Sample] = defaultdict(Sample)
    for r in replicas:
        last = 0.0
        for t, joules, state, config in r.series:
            k = round(t / sample_s)
            delta, last = joules - last, joules
            s = out[k]
            t0 = t - sample_s
            loading = r.loading_watts * max(0.0, min(t, r.ready_s) - max(t0, r.provisioned_s))
            loading = min(loading, delta)
            if state is State.LOADING or (state is State.STOPPED and r.stopped_s is not None
                                          and r.stopped_s <= r.ready_s):
                s.loading += delta
            elif state is State.DRAINING or state is State.STOPPED:
                s.loading += loading
                s.draining += delta - loading
            else:
                s.loading += loading
                s.serving += delta - loading
                s.fleet[config] += 1
    n = max(out) if out else 0
    return [out[k] for k in range(1, n + 1)]


def knobs_between(a: ServingConfig, b: ServingConfig) -> list[str]:
    pairs = {
        "precision": (a.precision, b.precision),
        "tp": (a.tensor_parallel, b.tensor_parallel),
        "seqs": (a.max_num_seqs, b.max_num_seqs),
        "tok": (a.max_num_batched_tokens, b.max_num_batched_tokens),
        "limit": (a.gpu_power_limit_watts, b.gpu_power_limit_watts),
    }
    return [k for k, (x, y) in pairs.items() if x != y]


def main_of(sample: Sample) -> ServingConfig | None:
    """The configuration most of a sample's serving replicas run (one, except in a rollout)."""
    return sample.fleet.most_common(1)[0][0] if sample.fleet else None


@dataclass
class RightSized:
    """The fewest replicas of one configuration that keep a window on the ground truth (the oracle's replay)."""

    replicas: int
    joules: float
    share: float


def right_sized(trace: Trace, gt: GroundTruth, config: ServingConfig, start_n: int, start_s: float, end_s: float,
                max_replicas: int) -> RightSized | None:
    """Bisection as oracle.choose_window does, for one configuration: from `start_n` down and up."""
    thresholds = Thresholds(STANDARD_SLO_TTFT_S, STANDARD_SLO_ITL_S)
    cache: dict[int, WindowReplay] = {}

    def run(n: int) -> WindowReplay:
        if n not in cache:
            cache[n] = replay_window(trace, gt, thresholds, config, n, start_s, end_s)
        return cache[n]

    lo, hi = 0, None
    n = max(1, start_n)
    while hi is None:
        if run(n).keeps:
            hi = n
        elif n >= max_replicas:
            return None
        else:
            lo, n = n, min(max_replicas, 2 * n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run(mid).keeps:
            hi = mid
        else:
            lo = mid
    r = cache[hi]
    return RightSized(hi, r.joules, r.within_share)


@dataclass
class Attribution:
    name: str
    wattkeeper_kwh: float
    oracle_kwh: float
    oracle_recorded_kwh: float
    buckets: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BUCKETS, 0.0))
    knobs: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    windows: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)

    @property
    def excess_kwh(self) -> float:
        return self.wattkeeper_kwh - self.oracle_kwh


def attribute(wk: list[Sample], orc: list[Sample], sample_s: float, cold_s: float, trace: Trace, gt: GroundTruth,
              name: str, wattkeeper_kwh: float, oracle_kwh: float, recorded_kwh: float,
              max_replicas: int) -> Attribution:
    out = Attribution(name, wattkeeper_kwh, oracle_kwh, recorded_kwh)
    n = max(len(wk), len(orc))
    wk = wk + [Sample() for _ in range(n - len(wk))]
    orc = orc + [Sample() for _ in range(n - len(orc))]
    b = out.buckets
    previous = ""
    for k, (w, o) in enumerate(zip(wk, orc, strict=True), start=1):
        t = k * sample_s
        line = f"{w.describe()} | {o.describe()}"
        if line != previous:
            out.timeline.append(f"t={t - sample_s:6.0f}  wattkeeper {w.describe():50s} | oracle {o.describe()}")
            previous = line
    end_s = trace.duration_s
    cold = round(cold_s / sample_s)
    b["cold start"] = sum(w.total - o.total for w, o in zip(wk[:cold], orc[:cold], strict=True)) / KWH
    # After the last arrival: what the two fleets draw while they finish and idle to the end of the run.
    last = min(n, math.ceil(end_s / sample_s))
    b["tail"] = sum(w.total - o.total for w, o in zip(wk[last:], orc[last:], strict=True)) / KWH
    windows = math.ceil(end_s / WINDOW_S)
    for j in range(windows):
        t0, t1 = j * WINDOW_S, min((j + 1) * WINDOW_S, end_s)
        i0, i1 = max(cold, round(t0 / sample_s)), min(last, round(t1 / sample_s))
        if i1 <= i0:
            continue
        ws, os_ = wk[i0:i1], orc[i0:i1]
        b["transitions"] += sum((w.loading + w.draining) - (o.loading + o.draining)
                                for w, o in zip(ws, os_, strict=True)) / KWH
        # Each configuration Wattkeeper served in the window, right-sized on the ground truth over the whole
        # window; a sample's counterfactual is that fleet's energy per sample.
        mains = [main_of(w) for w in ws]
        counts: dict[ServingConfig, int] = {}
        for w, c in zip(ws, mains, strict=True):
            if c is not None:
                counts[c] = max(counts.get(c, 0), w.fleet[c])
        per_sample: dict[ServingConfig, float] = {}
        notes = []
        for c, count in counts.items():
            rs = right_sized(trace, gt, c, count, t0, t1, max_replicas)
            if rs is not None:
                per_sample[c] = rs.joules / ((t1 - t0) / sample_s)
                notes.append(f"{c.short()} up to x{count}, right-sized x{rs.replicas} ({rs.share:.2%})")
        for i, (w, o, c) in enumerate(zip(ws, os_, mains, strict=True), start=i0 + 1):
            co = main_of(o)
            if c is None or co is None or c not in per_sample:
                b["other"] += (w.serving - o.serving) / KWH
                continue
            need = per_sample[c]
            b["more replicas early" if i * sample_s <= EARLY_S else "more replicas"] += (w.serving - need) / KWH
            knobs = knobs_between(c, co)
            out.knobs["+".join(knobs) if knobs else "same config"] += (need - o.serving) / KWH
        serving_w = sum(w.serving for w in ws) / KWH
        serving_o = sum(o.serving for o in os_) / KWH
        oracle = sorted({x.short() for x in (main_of(o) for o in os_) if x is not None})
        out.windows.append(f"{t0:5.0f}-{t1:5.0f} s: Wattkeeper {serving_w:.3f} kWh serving: {'; '.join(notes)}; "
                           f"right-sized {sum(per_sample.get(c, 0.0) for c in mains if c) / KWH:.3f} kWh; "
                           f"oracle {serving_o:.3f} kWh serving: {', '.join(oracle)}")
    return out


CONFIG = re.compile(r"^(?P<precision>\S+) tp(?P<tp>\d+) seqs(?P<seqs>\d+) tok(?P<tok>\d+)"
                    r"(?: kv-(?P<kv>\S+))?(?: gpu-limit(?P<limit>\d+)W)? x(?P<replicas>\d+)$")


def parse_plan(text: str) -> FleetTarget:
    """A plan as `Plan.describe` prints it ("bf16 tp4 seqs512 tok2048 gpu-limit490W x1")."""
    m = CONFIG.match(text.strip())
    if m is None:
        raise ValueError(f"not a plan: {text!r}")
    config = ServingConfig(m["precision"], int(m["tp"]), int(m["seqs"]), int(m["tok"]), m["kv"],
                           float(m["limit"]) if m["limit"] else None)
    return FleetTarget(config, int(m["replicas"]), "verified window plan")


def oracle_schedule(doc: dict[str, object], spec: BenchSpec) -> ScheduledFleet:
    windows = doc["tuning"]["oracle-verified"]["windows"]  # type: ignore[index]
    choices = [WindowChoice(float(w["startSeconds"]), parse_plan(w["plan"]), None, 0) for w in windows]
    lead = max(model_load_seconds(spec.model, spec.accelerator, p, tp)
               for p in spec.allowed_precisions for tp in (1, 2, 4, 8) if tp <= spec.max_tensor_parallel)
    assert all(abs(c.start_s - k * WINDOW_S) < 1e-6 for k, c in enumerate(choices))
    return ScheduledFleet(choices, lead)


def replay(trace: Trace, gt: GroundTruth, policy: Policy) -> tuple[FleetRun, list[Sample]]:
    with recording() as replicas:
        run = FleetSimulator(trace, gt).run(policy)
    return run, samples_of(replicas, run.sample_s)


def run_one(workload: tuple[str, str, float], seed: int, bench: Path, cold_s: float) -> Attribution:
    name, family, scale = workload
    doc = json.loads((bench / f"{name}-s{seed}.json").read_text())
    em = EnergyModel.default()
    gt = GroundTruth.create(model_shape(STANDARD_MODEL, None), STANDARD_GPU, em, seed=seed)
    spec = BenchSpec(model_shape(STANDARD_MODEL), STANDARD_GPU, STANDARD_SLO_TTFT_S, STANDARD_SLO_ITL_S,
                     power_limits=True)
    trace = standard.workload_trace(family, scale, seed, standard.DURATION_S, None)
    wk_run, wk = replay(trace, gt, WattkeeperPolicy(spec, trace, gt.energy_model))
    orc_run, orc = replay(trace, gt, oracle_schedule(doc, spec))
    recorded = float(doc["policies"]["oracle-verified"]["energyKWh"])
    return attribute(wk, orc, wk_run.sample_s, cold_s, trace, gt, f"{name} s{seed}",
                     float(wk_run.energy_joules[-1]) / KWH, float(orc_run.energy_joules[-1]) / KWH, recorded,
                     spec.max_replicas)


def knob_column(key: str) -> str:
    """The column a set of differing knobs ("precision+tp+tok") is put in: its first in `KNOB_ORDER`."""
    knobs = key.split("+")
    return next((k for k in KNOB_ORDER if k in knobs), key)


def table(rows: list[Attribution]) -> str:
    columns = [*KNOB_ORDER, "same config"]
    head = ["run", "Wattkeeper", "oracle", "excess", "cold start (0-90 s)", "transitions (load, drain)",
            "more replicas than its configuration needs, 90-600 s", "the same, 600 s-end",
            *(f"configuration: {k}" for k in columns), "after the last arrival",
            *(["other"] if any(r.buckets["other"] for r in rows) else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    total = [0.0] * (len(head) - 1)
    for r in rows:
        b = r.buckets
        by_column = dict.fromkeys(columns, 0.0)
        for key, kwh in r.knobs.items():
            by_column[knob_column(key)] += kwh
        values = [r.wattkeeper_kwh, r.oracle_kwh, r.excess_kwh, b["cold start"], b["transitions"],
                  b["more replicas early"], b["more replicas"], *by_column.values(), b["tail"],
                  *([b["other"]] if len(head) > len(columns) + 9 else [])]
        total = [a + v for a, v in zip(total, values, strict=True)]
        lines.append("| " + " | ".join([r.name, *(f"{v:.3f}" for v in values[:2]), *(f"{v:+.3f}" for v in values[2:])])
                     + " |")
    lines.append("| " + " | ".join(["**total**", *(f"**{v:.3f}**" for v in total[:2]),
                                    *(f"**{v:+.3f}**" for v in total[2:])]) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(w[0] for w in standard.WORKLOADS))
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--bench", type=Path, default=Path("out/bench"), help="a standard run's output folder")
    parser.add_argument("--cold-s", type=float, default=90.0, help="the cold start: before the first full window")
    parser.add_argument("--timeline", action="store_true", help="print each run's serving fleets as they change")
    args = parser.parse_args()
    wanted = {w.strip() for w in args.workloads.split(",") if w.strip()}
    rows = []
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        for workload in standard.WORKLOADS:
            if workload[0] not in wanted:
                continue
            r = run_one(workload, seed, args.bench, args.cold_s)
            rows.append(r)
            split = sum(r.buckets.values()) + sum(r.knobs.values())
            print(f"{r.name}: Wattkeeper {r.wattkeeper_kwh:.3f} kWh, oracle replayed {r.oracle_kwh:.3f} "
                  f"(recorded {r.oracle_recorded_kwh:.3f}), excess {r.excess_kwh:+.3f}, attributed {split:+.3f}: "
                  + ", ".join(f"{k} {v:+.3f}" for k, v in r.buckets.items())
                  + "; " + ", ".join(f"{k} {v:+.3f}" for k, v in sorted(r.knobs.items())), flush=True)
            print("\n".join("    " + line for line in r.windows))
            if args.timeline:
                print("\n".join("    " + line for line in r.timeline))
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Wattkeeper alone on standard scenarios, with every decision of the control core: for A/B work on the core.

Replays the standard benchmark's workloads through the fleet simulator with only the `wattkeeper` policy (no
baselines, no oracle: about 6 s a scenario instead of 90) on the same hidden ground truth as
`wattkeeper bench standard`, and prints one line per scenario (energy, share within both SLOs, restarts, the cap)
and, with --ticks, each tick's load estimate, measurements, learned margins and verdict.

    python hack/bench_ticks.py                                   # the ten plain scenarios
    python hack/bench_ticks.py --workloads bursty --seeds 2 --ticks
    python hack/bench_ticks.py --power-limits                    # Wattkeeper may set GPU power limits
    python hack/bench_ticks.py --caps out/bench                  # under the caps of an earlier standard run
    python hack/bench_ticks.py --power-limits --canaries         # with canaries (control/canary.py)
    python hack/bench_ticks.py --power-limits --per-request-routing  # each replica planned for its share of a burst

Energy ratios against the baselines need their runs: compare against `policies.<name>.energyKWh` in the
scenario JSONs of a `wattkeeper bench standard` run on the same commit (the baselines do not depend on the core).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from wattkeeper.bench import standard
from wattkeeper.bench.cli import STANDARD_GPU, STANDARD_MODEL, STANDARD_SLO_ITL_S, STANDARD_SLO_TTFT_S
from wattkeeper.bench.fleet import FleetSimulator
from wattkeeper.bench.groundtruth import GroundTruth, model_shape
from wattkeeper.bench.policies import BenchSpec
from wattkeeper.bench.scoring import Thresholds, score
from wattkeeper.bench.wattkeeper_policy import WattkeeperPolicy
from wattkeeper.control import TickDecision, Tuning
from wattkeeper.energy.model import EnergyModel


def tick_line(tick: TickDecision, now_s: float) -> str:
    load, memory = tick.load, tick.memory
    w = load.workload
    margins = ", ".join(f"{m.configuration} {m.ttft:.2f}/{m.itl:.2f}" for m in memory.margins)
    proposed = tick.proposed.describe() if tick.proposed is not None else "-"
    line = (f"t={now_s:6.0f} {tick.cause:18s} {tick.action:9s} load {w.requests_per_second:.2f} req/s "
            f"(in {w.input_tokens:.0f}, out {w.output_tokens:.0f}) proposed {proposed} margins [{margins}]")
    if tick.apply is not None:
        line += f"\n         -> {tick.apply.describe()}: {tick.reason[:240]}"
    if tick.canary_reason:
        line += f"\n         canary: {tick.canary_reason[:240]}"
    return line


def run(workload: tuple[str, str, float], seed: int, args: argparse.Namespace) -> None:
    name, family, scale = workload
    em = EnergyModel.default()
    gt = GroundTruth.create(model_shape(STANDARD_MODEL, None), STANDARD_GPU, em, seed=seed)
    spec = BenchSpec(model_shape(STANDARD_MODEL), STANDARD_GPU, STANDARD_SLO_TTFT_S, STANDARD_SLO_ITL_S,
                     power_limits=args.power_limits)
    if args.caps is not None:
        cap = json.loads((args.caps / f"{name}-cap-s{seed}.json").read_text())["powerCapWatts"]
        spec = replace(spec, allocation_watts=float(cap), power_limits=True)
    trace = standard.workload_trace(family, scale, seed, standard.DURATION_S, None)
    policy = WattkeeperPolicy(spec, trace, gt.energy_model,
                              tuning=Tuning(canaries=args.canaries, per_request_routing=args.per_request_routing))
    fleet_run = FleetSimulator(trace, gt).run(policy)
    scored = score(fleet_run, trace.arrival_s, Thresholds(STANDARD_SLO_TTFT_S, STANDARD_SLO_ITL_S),
                   spec.allocation_watts, trace.duration_s).to_dict()
    ttft_ok = float(np.mean(np.nan_to_num(fleet_run.ttft_s, nan=np.inf) <= STANDARD_SLO_TTFT_S))
    itl_ok = float(np.mean(np.nan_to_num(fleet_run.mean_itl_s, nan=np.inf) <= STANDARD_SLO_ITL_S))
    restarts = sum(1 for c in fleet_run.changes if c.kind == "restart")
    canaries = sum(1 for c in fleet_run.changes if c.kind == "canary")
    kwh = float(fleet_run.energy_joules[-1]) / 3.6e6
    cap = f", cap held {scored.get('capHeld')}" if spec.allocation_watts is not None else ""
    # The control core's time per tick (wall clock of `decide_tick`; run one process on a quiet machine to read it
    # as CPU time): every search of the tick, memo hits included, as the operator pays it per service.
    tick_ms = float(np.median([d.plan_ms for d in policy.decisions])) if policy.decisions else 0.0
    print(f"{name}{'-cap' if args.caps else ''} s{seed}: {kwh:.3f} kWh, within both {scored['withinBothSlos']:.2%} "
          f"(TTFT {ttft_ok:.2%}, ITL {itl_ok:.2%}), {restarts} restarts{cap}, {canaries} canaries, "
          f"tick {tick_ms:.1f} ms median", flush=True)
    if args.ticks:
        # The policy records each tick's decision (with its time) beside the core's full answer.
        for decision, tick in zip(policy.decisions, policy.ticks, strict=True):
            if args.all_ticks or tick.apply is not None or tick.canary_reason:
                print(tick_line(tick, decision.time_s))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(w[0] for w in standard.WORKLOADS))
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--power-limits", action="store_true", help="Wattkeeper may set GPU power limits")
    parser.add_argument("--caps", type=Path, help="a standard run's output folder: replay under its caps")
    parser.add_argument("--ticks", action="store_true", help="print the ticks that applied a change")
    parser.add_argument("--all-ticks", action="store_true", help="with --ticks: every tick")
    parser.add_argument("--per-request-routing", action="store_true",
                        help="plan each replica for its share of a burst (Tuning.per_request_routing; the fleet "
                             "simulator routes per request)")
    parser.add_argument("--canaries", action="store_true",
                        help="canaries on (control/canary.py; off by default, Tuning.canaries)")
    args = parser.parse_args()
    wanted = {w.strip() for w in args.workloads.split(",") if w.strip()}
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        for workload in standard.WORKLOADS:
            if workload[0] in wanted:
                run(workload, seed, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

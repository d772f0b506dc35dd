"""`wattkeeper bench`: trace-driven energy benchmark against the baselines, and the planner timing."""

from __future__ import annotations

import argparse
import functools
import os
import time
from pathlib import Path
from typing import Any

from ..energy.model import EnergyModel
from .groundtruth import GroundTruth, model_shape
from .policies import BenchSpec
from .report import print_table, table_rows, write_json
from .runner import POLICY_NAMES, run_scenario
from .trace import Trace, default_trace_path, load_azure_trace, scale_rate

STANDARD_MODEL = "meta-llama/Llama-3.1-70B-Instruct"
STANDARD_GPU = "H100"
STANDARD_SLO_TTFT_S = 2.0
STANDARD_SLO_ITL_S = 0.1


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser("bench", help="trace-driven energy benchmark against the baselines")
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--trace", type=Path, default=None, help="Azure-format trace (default: the shared one)")
        p.add_argument("--mlenergy", type=Path, default=None, help="ML.ENERGY configurations.csv (ground truth)")
        p.add_argument("--no-measured", action="store_true", help="ground truth from the calibrated model only")
        p.add_argument("--precisions", default="bf16,fp8", help="precisions Wattkeeper may choose")
        p.add_argument("--duration-s", type=float, default=None, help="replay only the first N seconds")
        p.add_argument("--fp8-prefill-factor", type=float, default=None,
                       help="override the measured fp8 prefill factor of the ground truth (1: the model's)")
        p.add_argument("--power-limits", action="store_true",
                       help="Wattkeeper may set GPU power limits (the default or 70%% of it, as oracle-verified; "
                       "the operator's --power-limits)")

    t = sub.add_parser("trace", help="replay one trace through the policies")
    common(t)
    t.add_argument("--model", required=True, help="model name, e.g. meta-llama/Llama-3.1-70B-Instruct")
    t.add_argument("--params-b", type=float, default=None, help="parameters in billions (default: from the name)")
    t.add_argument("--gpu", default="H100")
    t.add_argument("--slo-ttft-p95", type=float, required=True, help="seconds")
    t.add_argument("--slo-itl-p95", type=float, required=True, help="seconds")
    t.add_argument("--rate-scale", type=float, default=1.0)
    t.add_argument("--power-cap", type=float, default=None, help="watts; Wattkeeper's power allocation")
    t.add_argument("--seed", type=int, default=1, help="seed of the ground truth's hidden biases")
    t.add_argument("--policies", default=",".join(POLICY_NAMES))
    t.add_argument("--out", type=Path, required=True, help="JSON file; the power plot goes beside it (.png)")
    t.set_defaults(func=_trace_command)

    s = sub.add_parser("standard", help="the standard set: 70B on H100, five workloads x seeds x (plain, capped)")
    common(s)
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--seeds", default="1,2", help="ground-truth seeds")
    s.add_argument("--readme", type=Path, default=None, help="README whose marked table to rewrite "
                   "(default: bench/README.md of this checkout)")
    s.add_argument("--no-readme", action="store_true", help="do not rewrite the README")
    s.add_argument("--workloads", default=None, help="only these workloads (default: all five)")
    s.add_argument("--policies", default=",".join(POLICY_NAMES))
    s.add_argument("--no-cap", action="store_true", help="skip the capped scenarios")
    s.add_argument("--no-plain-power-limits", action="store_true",
                   help="no GPU power limits for Wattkeeper in the plain scenarios (default: it may set them, as "
                   "oracle-verified does everywhere; the operator with its node agent, --power-limits)")
    s.add_argument("--no-cap-power-limits", action="store_true",
                   help="no GPU power limits for Wattkeeper in the capped scenarios either (default: it may set "
                   "them there, as the oracle that sets the cap does)")
    s.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="workload x seed units run at once in worker processes (default: 2, or 1 on one CPU)")
    s.set_defaults(func=_standard_command)

    lat = sub.add_parser("latency", help="latency model against BatchingEngine runs per workload family (issue 11)")
    lat.add_argument("--out", type=Path, default=None, help="JSON file")
    lat.add_argument("--duration-s", type=float, default=600.0, help="simulated seconds per case")
    lat.add_argument("--fleets", action="store_true",
                     help="fleets of 2 and 4 replicas behind the router instead of the 48 one-replica cases")
    lat.set_defaults(func=lambda a: _latency_command(a))

    dt = sub.add_parser("decision-time", help="time one planning decision for a 70B service (issue 11)")
    dt.add_argument("--out", type=Path, default=None, help="JSON file")
    dt.add_argument("--repeats", type=int, default=21)
    dt.set_defaults(func=lambda a: _decision_command(a))

    pc = sub.add_parser("plan-check", help="plans of the queued latency model replayed through the fleet (issue 11)")
    pc.add_argument("--out", type=Path, default=None, help="JSON file")
    pc.set_defaults(func=lambda a: _plan_check_command(a))


def _latency_command(args: argparse.Namespace) -> int:
    from . import latency

    latency.main(args.out, args.duration_s, fleets=args.fleets)
    return 0


def _plan_check_command(args: argparse.Namespace) -> int:
    from . import plancheck

    plancheck.main(args.out)
    return 0


def _decision_command(args: argparse.Namespace) -> int:
    from . import decision

    decision.main(args.out, args.repeats)
    return 0


def _load_trace(args: argparse.Namespace) -> Trace:
    path = args.trace or default_trace_path()
    if path is None or not Path(path).is_file():
        raise SystemExit(
            "no trace: pass --trace PATH (Azure LLM format) or place the shared data in ../shared/data "
            "(or set WATTKEEPER_DATA_DIR)"
        )
    trace = load_azure_trace(Path(path))
    return trace.truncate(args.duration_s) if args.duration_s else trace


def _ground_truth(
    args: argparse.Namespace, model_name: str, params_b: float | None, gpu: str, seed: int
) -> GroundTruth:
    em = EnergyModel.default()
    gt = GroundTruth.create(
        model_shape(model_name, params_b), gpu, em, mlenergy_path=args.mlenergy, use_measured=not args.no_measured,
        seed=seed,
    )  # fmt: skip
    if args.fp8_prefill_factor is not None:
        gt.fp8_prefill = args.fp8_prefill_factor
    return gt


def _precisions(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _trace_command(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    trace = scale_rate(_load_trace(args), args.rate_scale)
    gt = _ground_truth(args, args.model, args.params_b, args.gpu, args.seed)
    spec = BenchSpec(
        gt.model,
        args.gpu,
        args.slo_ttft_p95,
        args.slo_itl_p95,
        allowed_precisions=_precisions(args.precisions),
        allocation_watts=args.power_cap,
        power_limits=args.power_limits,
    )
    name = f"{trace.name}"
    out: Path = args.out
    result = run_scenario(
        name,
        trace,
        spec,
        gt,
        policies=_precisions(args.policies),
        png=out.with_suffix(".png"),
        settings=vars_for_json(args),
        log=print,
    )
    result.document["runSeconds"] = round(time.perf_counter() - t0, 1)
    write_json(result.document, out)
    print_table(
        table_rows(name, result.document["policies"], result.document["comparison"]), f"wattkeeper bench trace ({name})"
    )
    print(f"wrote {out} and {out.with_suffix('.png')} in {time.perf_counter() - t0:.0f} s")
    return 0


def vars_for_json(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}


def _standard_command(args: argparse.Namespace) -> int:
    from . import standard

    spec = BenchSpec(
        model_shape(STANDARD_MODEL),
        STANDARD_GPU,
        STANDARD_SLO_TTFT_S,
        STANDARD_SLO_ITL_S,
        allowed_precisions=_precisions(args.precisions),
        # The same levers as the oracle it is compared with: a gap to oracle-verified is then the control loop's.
        power_limits=args.power_limits or not args.no_plain_power_limits,
    )
    seeds = tuple(int(x) for x in args.seeds.split(",") if x.strip())
    wanted = _precisions(args.workloads) if args.workloads else None
    workloads = tuple(w for w in standard.WORKLOADS if wanted is None or w[0] in wanted)
    summary = standard.run_standard(
        spec,
        functools.partial(_ground_truth, args, STANDARD_MODEL, None, STANDARD_GPU),
        args.out,
        duration_s=args.duration_s or standard.DURATION_S,
        seeds=seeds,
        workloads=workloads,
        trace_path=args.trace,
        settings=vars_for_json(args),
        policies=_precisions(args.policies),
        capped=not args.no_cap,
        jobs=max(1, args.jobs),
        cap_power_limits=not args.no_cap_power_limits,
    )
    print(summary["table"])
    for line in summary["headlines"]:
        print(line)
    if not args.no_readme:
        readme = args.readme or Path(__file__).resolve().parents[3] / "bench" / "README.md"
        command = "wattkeeper bench standard --out " + str(args.out)
        changed = standard.rewrite_readme(readme, standard.readme_body(summary, command))
        print(f"{'rewrote' if changed else 'left unchanged'} the table in {readme}")
    print(f"wrote {args.out}/ in {summary['runSeconds']:.0f} s")
    return 0

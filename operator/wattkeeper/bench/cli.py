"""`wattkeeper bench`: trace-driven energy benchmark against the baselines, and the planner timing."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..energy.model import EnergyModel
from .groundtruth import GroundTruth, model_shape
from .policies import BenchSpec
from .report import print_table, table_rows, write_json
from .runner import PLANNER_TARGET_MS, POLICY_NAMES, planner_timing, run_scenario, with_cap
from .trace import Trace, default_trace_path, load_azure_trace, scale_rate

STANDARD_MODEL = "meta-llama/Llama-3.1-70B-Instruct"
STANDARD_GPU = "H100"
STANDARD_SLO_TTFT_S = 2.0
STANDARD_SLO_ITL_S = 0.1
STANDARD_RATE_SCALES = (1.0, 4.0)
STANDARD_CAP_FRACTION = 0.6


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser("bench", help="trace-driven energy benchmark against the baselines")
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--trace", type=Path, default=None, help="Azure-format trace (default: the shared one)")
        p.add_argument("--mlenergy", type=Path, default=None, help="ML.ENERGY configurations.csv (ground truth)")
        p.add_argument("--no-measured", action="store_true", help="ground truth from the calibrated model only")
        p.add_argument("--precisions", default="bf16,fp8", help="precisions Wattkeeper may choose")
        p.add_argument("--duration-s", type=float, default=None, help="replay only the first N seconds")

    t = sub.add_parser("trace", help="replay one trace through the policies")
    common(t)
    t.add_argument("--model", required=True, help="model name, e.g. meta-llama/Llama-3.1-70B-Instruct")
    t.add_argument("--params-b", type=float, default=None, help="parameters in billions (default: from the name)")
    t.add_argument("--gpu", default="H100")
    t.add_argument("--slo-ttft-p95", type=float, required=True, help="seconds")
    t.add_argument("--slo-itl-p95", type=float, required=True, help="seconds")
    t.add_argument("--rate-scale", type=float, default=1.0)
    t.add_argument("--power-cap", type=float, default=None, help="watts; Wattkeeper's power allocation")
    t.add_argument("--policies", default=",".join(POLICY_NAMES))
    t.add_argument("--out", type=Path, required=True, help="JSON file; the power plot goes beside it (.png)")
    t.set_defaults(func=_trace_command)

    s = sub.add_parser("standard", help="the standard set: 70B on H100, conversation trace x1 and x4, +cap")
    common(s)
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--skip-timing", action="store_true", help="skip the planner timing micro-benchmark")
    s.set_defaults(func=_standard_command)

    lat = sub.add_parser("latency", help="latency model against BatchingEngine runs per workload family (issue 11)")
    lat.add_argument("--out", type=Path, default=None, help="JSON file")
    lat.add_argument("--duration-s", type=float, default=600.0, help="simulated seconds per case")
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

    latency.main(args.out, args.duration_s)
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


def _ground_truth(args: argparse.Namespace, model_name: str, params_b: float | None, gpu: str) -> GroundTruth:
    em = EnergyModel.default()
    return GroundTruth.create(
        model_shape(model_name, params_b), gpu, em, mlenergy_path=args.mlenergy, use_measured=not args.no_measured
    )


def _precisions(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _trace_command(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    trace = scale_rate(_load_trace(args), args.rate_scale)
    gt = _ground_truth(args, args.model, args.params_b, args.gpu)
    spec = BenchSpec(
        gt.model,
        args.gpu,
        args.slo_ttft_p95,
        args.slo_itl_p95,
        allowed_precisions=_precisions(args.precisions),
        power_cap_watts=args.power_cap,
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
    print_table(table_rows(name, result.document["policies"]), f"wattkeeper bench trace ({name})")
    print(f"wrote {out} and {out.with_suffix('.png')} in {time.perf_counter() - t0:.0f} s")
    return 0


def vars_for_json(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}


def _standard_command(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    base = _load_trace(args)
    gt = _ground_truth(args, STANDARD_MODEL, None, STANDARD_GPU)
    spec = BenchSpec(
        gt.model,
        STANDARD_GPU,
        STANDARD_SLO_TTFT_S,
        STANDARD_SLO_ITL_S,
        allowed_precisions=_precisions(args.precisions),
    )
    rows: list[list[str]] = []
    documents: dict[str, Any] = {}
    settings = vars_for_json(args)
    for scale in STANDARD_RATE_SCALES:
        trace = scale_rate(base, scale)
        name = f"conv-x{scale:g}"
        print(f"{name}: {len(trace)} requests over {trace.duration_s:.0f} s")
        plain = run_scenario(name, trace, spec, gt, png=out / f"{name}.png", settings=settings, log=print)
        write_json(plain.document, out / f"{name}.json")
        documents[name] = plain.document
        rows += table_rows(name, plain.document["policies"])
        cap = STANDARD_CAP_FRACTION * plain.document["policies"]["static"]["averageWatts"]
        cap_name = f"{name}-cap{cap / 1000:.1f}kW"
        print(f"{cap_name}: power cap {cap:.0f} W (60% of the static fleet's average)")
        capped = run_scenario(
            cap_name,
            trace,
            with_cap(spec, cap),
            gt,
            reuse={k: plain.runs[k] for k in ("static", "autoscaler")},  # they ignore the cap
            png=out / f"{name}-cap.png",
            settings=settings,
            log=print,
        )
        write_json(capped.document, out / f"{name}-cap.json")
        documents[cap_name] = capped.document
        rows += table_rows(cap_name, capped.document["policies"])
    text = print_table(rows, "wattkeeper bench standard: Llama-3.1-70B on H100, TTFT p95 <= 2 s, ITL p95 <= 100 ms")
    timing: list[dict[str, Any]] = []
    if not args.skip_timing:
        timing = planner_timing(gt.energy_model)
        write_json({"targetMs": PLANNER_TARGET_MS, "results": timing}, out / "planner_timing.json")
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"planner: time per plan() decision (target {PLANNER_TARGET_MS:g} ms)")
        for h in ("model", "req/s", "candidates", "cold ms", "median ms", "p90 ms", "median / target"):
            table.add_column(h, justify="left" if h == "model" else "right")
        for r in timing:
            table.add_row(
                r["model"].split("/")[-1],
                f"{r['requestsPerSecond']:g}",
                str(r["candidates"]),
                f"{r['coldMs']:.1f}",
                f"{r['medianMs']:.2f}",
                f"{r['p90Ms']:.2f}",
                f"{r['ratioToTarget']:.2f}x",
            )
        Console().print(table)
    elapsed = time.perf_counter() - t0
    summary = {
        "scenarios": {k: {"policies": v["policies"], "comparison": v["comparison"]} for k, v in documents.items()},
        "groundTruth": {
            cfg: src
            for d in documents.values()
            for s in d["policies"].values()
            for cfg, src in s.get("groundTruth", {}).items()
        },
        "plannerTiming": timing,
        "table": text,
        "runSeconds": round(elapsed, 1),
    }
    write_json(summary, out / "summary.json")
    (out / "table.txt").write_text(text + "\n")
    print(f"wrote {out}/ (JSON per scenario, PNG per scenario, summary.json, table.txt) in {elapsed:.0f} s")
    return 0

"""`wattkeeper plan`: the least-energy plan for a model, GPU, load and SLO, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..energy.catalog import model_from_name
from ..energy.types import Workload
from .search import PlanRequest, PlanResult, plan


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("plan", help="the least-energy serving plan meeting the SLOs")
    p.add_argument("--model-params-b", type=float, required=True, help="total parameters, billions")
    p.add_argument("--active-params-b", type=float, help="active parameters per token (MoE), billions")
    p.add_argument("--model-name", default="", help="model name (known names fill in layers and KV heads)")
    p.add_argument("--gpu", default="H100", help="accelerator: H100, H200, B200, A100, L40S")
    p.add_argument("--rps", type=float, required=True, help="offered requests per second")
    p.add_argument("--input-tokens", type=float, default=1024.0, help="mean prompt tokens")
    p.add_argument("--output-tokens", type=float, default=256.0, help="mean output tokens")
    p.add_argument("--slo-ttft-p95", type=float, default=2.0, help="TTFT p95 SLO, seconds")
    p.add_argument("--slo-itl-p95", type=float, default=0.1, help="inter-token latency p95 SLO, seconds")
    p.add_argument("--precisions", default="bf16", help="allowed precisions, comma-separated (e.g. bf16,fp8)")
    p.add_argument("--power-cap", type=float, help="power allocation, watts")
    p.add_argument("--fallback", choices=["ProtectSLO", "ProtectBudget"], default="ProtectSLO")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=64)
    p.add_argument("--max-tp", type=int, default=8)
    p.add_argument("--max-gpus", type=int)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--frontier", action="store_true", help="also show the Pareto frontier (J/token vs ITL p95)")
    p.add_argument("--plot", type=Path, help="with --frontier: draw the frontier to this PNG")
    p.set_defaults(func=run_plan)


def request_from_args(args: argparse.Namespace) -> PlanRequest:
    architecture = "moe" if args.active_params_b and args.active_params_b < args.model_params_b else "dense"
    model = model_from_name(
        args.model_name or f"{args.model_params_b:g}b", args.model_params_b, args.active_params_b, architecture
    )
    return PlanRequest(
        model=model,
        accelerator=args.gpu,
        workload=Workload(args.rps, args.input_tokens, args.output_tokens),
        allowed_precisions=tuple(p.strip() for p in args.precisions.split(",") if p.strip()),
        slo_ttft_p95_seconds=args.slo_ttft_p95,
        slo_itl_p95_seconds=args.slo_itl_p95,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        max_tensor_parallel=args.max_tp,
        max_gpus=args.max_gpus,
        allocation_watts=args.power_cap,
        fallback=args.fallback,
    )


def run_plan(args: argparse.Namespace) -> int:
    request = request_from_args(args)
    started = time.perf_counter()
    result = plan(request)
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    if args.json:
        payload = result.to_dict()
        payload["planningMilliseconds"] = round(elapsed_ms, 2)
        print(json.dumps(payload, indent=2))
    else:
        _print_table(result, args.frontier, elapsed_ms)
    if args.plot is not None:
        plot_frontier(result, args.plot)
        if not args.json:
            print(f"frontier plot written to {args.plot}")
    return 0 if result.feasible else 1


def _print_table(result: PlanResult, frontier: bool, elapsed_ms: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    table = Table(title="Wattkeeper plan", show_lines=False)
    for column in (
        "",
        "precision",
        "TP",
        "max seqs",
        "batched tok",
        "replicas",
        "GPUs",
        "watts",
        "J/token",
        "TTFT p95 s",
        "ITL p95 ms",
        "batch",
    ):
        table.add_column(column, justify="right" if column not in ("", "precision") else "left")
    rows = [("chosen", result.chosen), ("runner-up", result.runner_up)]
    if frontier:
        rows += [("frontier", c) for c in result.candidates]
    for label, c in rows:
        if c is None:
            continue
        table.add_row(
            label,
            c.config.precision,
            str(c.config.tensor_parallel),
            str(c.config.max_num_seqs),
            str(c.config.max_num_batched_tokens),
            str(c.replicas),
            str(c.gpus),
            f"{c.total_watts:.0f}",
            f"{c.joules_per_token:.3f}",
            f"{c.ttft_p95_seconds:.2f}",
            f"{c.itl_p95_seconds * 1000:.0f}",
            f"{c.prediction.batch_size:.1f}",
        )
    console.print(table)
    console.print(
        f"feasible: {result.feasible}   binding: {result.binding}   "
        f"({result.evaluated} candidates in {elapsed_ms:.1f} ms)"
    )
    console.print(result.reason)


def plot_frontier(result: PlanResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = sorted(result.candidates, key=lambda c: c.itl_p95_seconds)
    ax.plot([c.itl_p95_seconds * 1000 for c in pts], [c.joules_per_token for c in pts], "o-", label="Pareto frontier")
    for c in pts:
        ax.annotate(
            f"{c.config.precision} tp{c.config.tensor_parallel} x{c.replicas}",
            (c.itl_p95_seconds * 1000, c.joules_per_token),
            fontsize=6,
            alpha=0.7,
        )
    if result.chosen is not None:
        ax.plot(
            [result.chosen.itl_p95_seconds * 1000],
            [result.chosen.joules_per_token],
            "r*",
            markersize=16,
            label="chosen",
        )
    ax.set_xlabel("ITL p95 (ms)")
    ax.set_ylabel("energy per output token (J)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(result.reason.split(".")[0][:90], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""Measured points first: where a model was measured in bf16 and fp8, the planner's precision choice follows the
measurements (the shared ML.ENERGY pairs of one model in both precisions), and status.plan says so."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from wattkeeper.api import ProfilePoint
from wattkeeper.energy.catalog import model_from_name
from wattkeeper.energy.types import Workload
from wattkeeper.planner import PlanRequest, plan

PRECISION = {"bfloat16": "bf16", "fp8": "fp8"}


def family(model_id: str) -> str:
    return model_id.removesuffix("-FP8").removesuffix("-fp8")


def read_pairs(path: Path) -> tuple[dict[tuple[str, ...], list[dict[str, Any]]], list[tuple[tuple[str, ...], int]]]:
    """Rows by (family, task, GPU, GPUs per replica), and the (group, max_num_seqs) where both precisions ran."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    with (path / "mlenergy" / "configurations.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["weight_precision"] not in PRECISION:
                continue
            groups[(family(row["model_id"]), row["task"], row["gpu_model"], row["num_gpus"])].append(row)
    pairs = []
    for key, rows in groups.items():
        by_seqs: dict[int, set[str]] = defaultdict(set)
        for row in rows:
            by_seqs[int(row["max_num_seqs"])].add(row["weight_precision"])
        pairs += [(key, seqs) for seqs, precisions in sorted(by_seqs.items()) if len(precisions) == 2]
    return groups, pairs


def points(rows: list[dict[str, Any]], gpus: int, swap: bool = False) -> list[ProfilePoint]:
    # The planner has no expert-parallel axis: a replica of N GPUs is keyed as TP N here, in the profile and in
    # the request alike, so the measured points cover exactly the configurations that were measured.
    names = {"bfloat16": "fp8", "fp8": "bf16"} if swap else PRECISION
    return [ProfilePoint(
        precision=names[r["weight_precision"]], tensor_parallel=gpus, max_num_seqs=int(r["max_num_seqs"]),
        batch_size=float(r["avg_batch_size"]), output_tokens_per_second=float(r["output_tok_per_s"]),
        watts=float(r["avg_power_watts"]), joules_per_token=float(r["energy_per_token_j"]),
        itl_p50_seconds=float(r["median_itl_ms"]) / 1000, itl_p90_seconds=float(r["p90_itl_ms"]) / 1000,
        mean_output_tokens=float(r["avg_output_len"]),
    ) for r in rows]


def measured_watts_at(pts: list[ProfilePoint], precision: str, seqs: int, tokens_per_second: float) -> float:
    """The measured power at a throughput, straight from the points (interpolated in log tokens/s)."""
    usable = sorted((p for p in pts if p.precision == precision and p.max_num_seqs <= seqs),
                    key=lambda p: p.output_tokens_per_second)
    tps = np.log([p.output_tokens_per_second for p in usable])
    return float(np.exp(np.interp(np.log(tokens_per_second), tps, np.log([p.watts for p in usable]))))


@pytest.mark.parametrize("swap", [False, True], ids=["as-measured", "labels-swapped"])
def test_precision_choice_follows_the_measured_pairs(shared_data: Path, swap: bool) -> None:
    """At equal load, the measured cheaper precision of these pairs is bf16 throughout (fp8 is cheaper per token
    at equal max-num-seqs in 3 of them, but it is slower, so at the same load bf16 runs a smaller batch for less).
    The same test with the precision labels of the points swapped checks that the choice follows the measurement,
    not a preference of the model: then fp8 must win everywhere."""
    groups, pairs = read_pairs(shared_data)
    assert len(pairs) >= 18
    agree, same_sign, cases, fp8_cheaper, lines = 0, 0, 0, 0, []
    for key, seqs in pairs:
        name, task, gpu, gpus_text = key
        gpus = int(gpus_text)
        rows = groups[key]
        pts = points(rows, gpus, swap)
        at_seqs = {p.precision: p for p in pts if p.max_num_seqs == seqs}
        output = float(np.mean([p.mean_output_tokens or 256.0 for p in at_seqs.values()]))
        # Loads both can carry: just under the slower one's measured throughput at this max-num-seqs, and every
        # measured throughput of either precision below it (measured points of both precisions cover them).
        top = 0.98 * min(p.output_tokens_per_second for p in at_seqs.values())
        floor = max(min(p.output_tokens_per_second / p.batch_size for p in pts if p.precision == q)
                    for q in at_seqs)
        loads = sorted({top, *(p.output_tokens_per_second for p in pts
                               if p.max_num_seqs <= seqs and floor <= p.output_tokens_per_second < top)})
        row = rows[0]
        moe = "moe" in row["architecture"].lower() or "mixture" in row["architecture"].lower()
        model = model_from_name(name, float(row["total_params_b"]), float(row["active_params_b"]),
                                "moe" if moe else "dense")
        chosen_here, truths = [], []
        for load in loads:
            request = PlanRequest(
                model=model, accelerator=gpu, workload=Workload(load / output, 1000.0, output),
                allowed_precisions=("bf16", "fp8"), slo_ttft_p95_seconds=1e4, slo_itl_p95_seconds=10.0,
                min_replicas=1, max_replicas=1, max_tensor_parallel=gpus, tensor_parallel_options=(gpus,),
                max_num_seqs_options=(seqs,), profile=tuple(pts),
            )
            result = plan(request)
            assert result.chosen is not None, (key, seqs, load, result.reason)
            assert result.chosen.prediction.source == "profile", (key, seqs, load, result.reason)
            assert "the chosen plan's figures are measured" in result.reason
            truth = min(("bf16", "fp8"), key=lambda p, load=load: measured_watts_at(pts, p, seqs, load))
            cases += 1
            agree += result.chosen.config.precision == truth
            fp8_cheaper += truth == "fp8"
            chosen_here.append(result.chosen.config.precision)
            truths.append(truth)
        same_seqs = min(at_seqs, key=lambda p: at_seqs[p].joules_per_token)
        same_sign += truths[-1] == same_seqs
        lines.append(f"{name} {task} {gpu}x{gpus} seqs {seqs}: {len(loads)} loads, chose {chosen_here}, "
                     f"measured cheaper {truths} (at equal max-num-seqs: {same_seqs})")
    print(f"[{'labels swapped' if swap else 'as measured'}]")
    print("\n".join(lines))
    print(f"precision choice agrees with the measured cheaper one in {agree} of {cases} cases ({len(pairs)} pairs, "
          f"fp8 measured cheaper in {fp8_cheaper}); at the top load the measured cheaper is the cheaper at equal "
          f"max-num-seqs in {same_sign} of {len(pairs)} pairs")
    assert agree == cases


def test_unmeasured_configurations_stay_with_the_model() -> None:
    llama = model_from_name("meta-llama/Llama-3.1-8B-Instruct", 8.0)
    pts = (ProfilePoint(precision="fp8", tensor_parallel=1, max_num_seqs=64, batch_size=60,
                        output_tokens_per_second=3000, watts=500, joules_per_token=500 / 3000),)
    request = PlanRequest(model=llama, accelerator="H100", workload=Workload(2.0, 1024, 256),
                          allowed_precisions=("bf16",), profile=pts)
    result = plan(request)
    assert result.chosen is not None and result.chosen.prediction.source == "model"
    assert "Measured" not in result.reason


def test_measured_points_at_a_power_limit_drive_the_limit_under_a_cap() -> None:
    """Points measured at the default limit and at 490 W (as the profiler's sweep writes them): under a cap the
    default cannot meet, the planner picks the measured 490 W configuration, from the measurements."""
    llama = model_from_name("meta-llama/Llama-3.1-8B-Instruct", 8.0)

    def point(tps: float, watts: float, batch: float, limit: float | None) -> ProfilePoint:
        return ProfilePoint(precision="bf16", tensor_parallel=1, max_num_seqs=256, batch_size=batch,
                            output_tokens_per_second=tps, watts=watts, joules_per_token=watts / tps,
                            itl_p50_seconds=batch / tps, itl_p90_seconds=1.3 * batch / tps,
                            gpu_power_limit_watts=limit)

    pts = (point(400, 360, 3, None), point(1500, 650, 20, None), point(3000, 690, 60, None),
           point(380, 350, 3, 490.0), point(1400, 480, 20, 490.0), point(2700, 488, 60, 490.0))
    base = PlanRequest(model=llama, accelerator="H100", workload=Workload(1400 / 256, 1024, 256),
                       allowed_precisions=("bf16",), slo_ttft_p95_seconds=10.0, slo_itl_p95_seconds=0.2,
                       min_replicas=1, max_replicas=1, tensor_parallel_options=(1,), max_num_seqs_options=(256,),
                       gpu_power_limits_watts=(None, 490.0), profile=pts, fallback="ProtectBudget")
    free = plan(base)
    assert free.chosen is not None and free.chosen.prediction.source == "profile"
    capped = plan(PlanRequest(**{**base.__dict__, "allocation_watts": 520.0}))
    assert capped.chosen is not None and capped.feasible
    assert capped.chosen.config.gpu_power_limit_watts == 490.0 and capped.chosen.prediction.source == "profile"
    assert capped.chosen.total_watts == pytest.approx(480, rel=0.05)

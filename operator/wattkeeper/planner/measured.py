"""Measured points first: replace the model's figures by measured ones for every candidate a profile covers.

A candidate (precision, TP, GPU power limit, max-num-seqs, replicas) is covered when the profile holds points of
the same precision, TP and power limit, measured with a max-num-seqs no larger than the candidate's, and the load
one replica must carry lies within what those points measured (up to the highest throughput, which is the measured
capacity; down to the load of a single sequence at the lowest point's pace). For a covered candidate, at the
replica's offered output tokens/s L:
- power, running batch and latency percentiles are interpolated in log(tokens/s) between measured points (the
  measured curve *is* the steady state at that throughput: b = L x step(b) holds at every point); below the
  lowest point the batch shrinks (b = L x step) at that point's step time and power: small-batch decode is
  memory-bound, its step time and power nearly flat in the batch, so this overstates power a little (safe side);
- utilisation is L over the measured capacity, so a load beyond what was measured is infeasible, as measured;
- memory fits (it ran).
What no point measured (TTFT without a measured TTFT) keeps the model's value, scaled by measured over modelled
step time. The choice between precisions therefore follows the measurements wherever both were measured; the
model decides elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..energy.model import ProfilePointLike

FloatArray = npt.NDArray[np.float64]
# p95 from p50 and p90 of a right-skewed latency spread (the same extension energy/model.py uses for profiles).
P95_OVER_P90_SPREAD = 1.3


def _name(value: Any) -> str:
    return str(getattr(value, "value", value))


def _same_limit(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(float(a) - float(b)) < 1.0


def points_for(profile: Sequence[ProfilePointLike], precision: str, tensor_parallel: int,
               limit_watts: float | None) -> list[ProfilePointLike]:
    return [p for p in profile
            if _name(p.precision) == precision and int(p.tensor_parallel) == tensor_parallel
            and _same_limit(getattr(p, "gpu_power_limit_watts", None), limit_watts)]


def _interp_log(x: FloatArray, xs: FloatArray, ys: FloatArray) -> FloatArray:
    return np.exp(np.interp(np.log(np.maximum(x, 1e-12)), np.log(xs), np.log(np.maximum(ys, 1e-12))))


def apply_measured(
    profile: Sequence[ProfilePointLike] | None,
    keys: Sequence[tuple[str, int, float | None]],
    base_index: npt.NDArray[np.int64],
    max_num_seqs: FloatArray,
    max_num_batched_tokens: FloatArray,
    tokens_per_replica: FloatArray,
    input_tokens: float,
    output_tokens: float,
    result: dict[str, FloatArray],
) -> npt.NDArray[np.bool_]:
    """Overwrite `result` (the evaluator's under_load arrays) in place where measured; return the covered mask."""
    covered = np.zeros(len(base_index), dtype=bool)
    if not profile:
        return covered
    for k, (precision, tp, limit) in enumerate(keys):
        pts = points_for(profile, precision, tp, limit)
        if not pts:
            continue
        rows_k = np.flatnonzero(base_index == k)
        for seqs in np.unique(max_num_seqs[rows_k]):
            usable = sorted((p for p in pts if p.max_num_seqs <= seqs), key=lambda p: p.output_tokens_per_second)
            if not usable:
                continue
            rows = rows_k[max_num_seqs[rows_k] == seqs]
            tps = np.array([p.output_tokens_per_second for p in usable], dtype=float)
            load = tokens_per_replica[rows]
            capacity = float(tps.max())
            lowest_batch = max(float(usable[0].batch_size), 1.0)
            inside = load >= tps[0] / lowest_batch  # at least one sequence at the lowest point's pace
            rows, load = rows[inside], load[inside]
            if rows.size == 0:
                continue
            covered[rows] = True
            at = np.minimum(load, capacity)
            watts = _interp_log(at, tps, np.array([p.watts for p in usable], dtype=float))
            batch = _interp_log(at, tps, np.array([p.batch_size for p in usable], dtype=float))
            batch = np.where(at < tps[0], at * usable[0].batch_size / tps[0], batch)
            step = batch / np.maximum(at, 1e-12)
            ratio = step / np.maximum(result["step_seconds"][rows], 1e-12)
            for name in ("itl_p50", "itl_p90", "itl_p95", "step_seconds"):
                result[name][rows] = result[name][rows] * ratio
            p50s = [p.itl_p50_seconds for p in usable]
            p90s = [p.itl_p90_seconds for p in usable]
            if all(v is not None for v in p50s) and all(v is not None for v in p90s):
                p50 = _interp_log(at, tps, np.array(p50s, dtype=float))
                p90 = np.maximum(_interp_log(at, tps, np.array(p90s, dtype=float)), p50)
                result["itl_p50"][rows], result["itl_p90"][rows] = p50, p90
                result["itl_p95"][rows] = p50 + (p90 - p50) * P95_OVER_P90_SPREAD
            ttfts = [getattr(p, "ttft_p95_seconds", None) for p in usable]
            utilisation = load / capacity
            if all(v is not None for v in ttfts):
                ttft = _interp_log(at, tps, np.array(ttfts, dtype=float))
            else:
                # No measured TTFT: the model's, at the measured pace; where the model thinks the replica saturated
                # (and measurement says not), the p95 prompt (3x the mean, as the model assumes) prefilled in
                # chunks beside the running batch at the measured step time, plus one step.
                model_ttft = result["ttft_p95"][rows]
                room = np.maximum(max_num_batched_tokens[rows] - batch, 16.0)
                chunked = (np.ceil(3.0 * input_tokens / room) + 1.0) * step
                ttft = np.where(np.isfinite(model_ttft), model_ttft * ratio, chunked)
            result["ttft_p95"][rows] = np.where(utilisation >= 1.0, math.inf, ttft)
            result["batch"][rows] = batch
            result["busy_fraction"][rows] = 1.0
            result["watts"][rows] = watts
            result["tokens_per_second"][rows] = np.maximum(at, 1e-12)
            result["joules_per_token"][rows] = watts / np.maximum(at, 1e-12)
            result["utilisation"][rows] = utilisation
            result["capacity_rps"][rows] = capacity / max(output_tokens, 1e-9)
            result["max_batch"][rows] = np.maximum(result["max_batch"][rows], 1.0)
    return covered

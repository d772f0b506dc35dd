"""Fit the energy model's coefficients to ML.ENERGY-format measurements, and cross-validate them.

Deterministic: a fixed starting point, a bounded trust-region least squares on log errors (scipy), no randomness,
so re-running on the same CSV reproduces the committed coefficients up to floating-point noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.optimize import least_squares

from .catalog import get_accelerator, known_shape, model_from_name
from .datasets import MeasuredRow, read_mlenergy
from .model import (
    FITTED_PARAMETERS,
    PRIOR_PARAMETERS,
    SCHEMA_VERSION,
    TASK_INPUT_PARAMETER,
    Coefficients,
    Evaluator,
    Features,
    build_features,
)
from .network import load_vidur_tables
from .types import ServingConfig

FloatArray = npt.NDArray[np.float64]
DEFAULT_TASK = "lm-arena-chat"  # the prompt length assumed for rows that name no task: a chat service
METRICS = ("energy_per_token_j", "avg_power_watts", "output_tok_per_s", "median_itl_ms")
# Residual weights: p90 ITL matters less than the four headline figures and is noisier.
_P90_WEIGHT = 0.5


def input_tokens_for(row: MeasuredRow, coefficients: Coefficients) -> float:
    if row.avg_input_len:
        return row.avg_input_len
    parameter = TASK_INPUT_PARAMETER.get(row.task or DEFAULT_TASK, TASK_INPUT_PARAMETER[DEFAULT_TASK])
    return coefficients[parameter]


def row_features(rows: Sequence[MeasuredRow], coefficients: Coefficients) -> Features:
    triples = []
    for row in rows:
        model = model_from_name(row.model_id, row.total_params_b, row.active_params_b, row.architecture)
        config = ServingConfig(precision=row.precision, tensor_parallel=row.tp, max_num_seqs=row.max_num_seqs)
        triples.append((model, get_accelerator(row.gpu_model), config))
    return build_features(triples, coefficients, [max(r.num_gpus, r.tp) for r in rows])


def predict_rows(rows: Sequence[MeasuredRow], coefficients: Coefficients) -> dict[str, FloatArray]:
    """ML.ENERGY regime predictions (batch full at max_num_seqs) from the input columns only."""
    f = row_features(rows, coefficients)
    inputs = np.array([input_tokens_for(r, coefficients) for r in rows])
    outputs = np.array([r.avg_output_len for r in rows])
    out = Evaluator(coefficients).saturated(f, inputs, outputs)
    return {
        "energy_per_token_j": out["joules_per_token"],
        "avg_power_watts": out["watts"],
        "output_tok_per_s": out["tokens_per_second"],
        "median_itl_ms": out["itl_p50"] * 1000.0,
        "p90_itl_ms": out["itl_p90"] * 1000.0,
        "avg_batch_size": out["batch"],
    }


def _measured(rows: Sequence[MeasuredRow], name: str) -> FloatArray:
    return np.array([getattr(r, name) if getattr(r, name) is not None else np.nan for r in rows], dtype=float)


@dataclass
class _Problem:
    rows: list[MeasuredRow]
    names: list[str]
    base: Coefficients
    measured: dict[str, FloatArray]
    task_index: dict[str, npt.NDArray[np.int64]]

    def coefficients(self, x: FloatArray) -> Coefficients:
        return self.base.with_values({n: float(math.exp(v)) for n, v in zip(self.names, x, strict=True)})

    def residuals(self, x: FloatArray) -> FloatArray:
        pred = predict_rows(self.rows, self.coefficients(x))
        parts = []
        for metric in (*METRICS, "p90_itl_ms"):
            err = np.log(pred[metric] / self.measured[metric])
            err = np.where(np.isfinite(err), err, 0.0)
            parts.append(err * (_P90_WEIGHT if metric == "p90_itl_ms" else 1.0))
        return np.concatenate(parts)


def fit(
    rows: Sequence[MeasuredRow],
    all_reduce_tables: dict[str, dict[str, list[list[float]]]],
    start: Coefficients | None = None,
    max_nfev: int = 400,
) -> Coefficients:
    """Least squares on the log errors of J/token, power, tokens/s and ITL (median, p90) over all rows."""
    base = start or Coefficients.initial(all_reduce_tables)
    base = Coefficients(values={**base.values}, all_reduce_tables=all_reduce_tables)
    tasks = {r.task for r in rows}
    names = [
        n
        for n in FITTED_PARAMETERS
        if not n.startswith("input_tokens_") or any(TASK_INPUT_PARAMETER.get(t) == n for t in tasks)
    ]
    measured = {m: _measured(rows, m) for m in (*METRICS, "p90_itl_ms")}
    problem = _Problem(list(rows), names, base, measured, {})
    x0 = np.array([math.log(base[n]) for n in names])
    lower = np.array([math.log(FITTED_PARAMETERS[n][1]) for n in names])
    upper = np.array([math.log(FITTED_PARAMETERS[n][2]) for n in names])
    x0 = np.clip(x0, lower + 1e-9, upper - 1e-9)
    result = least_squares(
        problem.residuals,
        x0,
        bounds=(lower, upper),
        method="trf",
        x_scale=1.0,
        diff_step=1e-4,
        max_nfev=max_nfev,
        loss="soft_l1",
        f_scale=0.3,
    )
    return problem.coefficients(result.x)


def model_group(row: MeasuredRow) -> str:
    """Variants of one base model (Instruct/Thinking/FP8, Llama 3.1/3.3 70B) form one group for cross-validation."""
    shape = known_shape(row.model_id)
    if shape is None:
        return row.model_id
    return f"{shape}-{row.total_params_b:g}"


@dataclass(frozen=True)
class ErrorSummary:
    metric: str
    median_ape: float
    p90_ape: float
    count: int


def error_summary(rows: Sequence[MeasuredRow], predicted: dict[str, FloatArray]) -> list[ErrorSummary]:
    out = []
    for metric in METRICS:
        measured = _measured(rows, metric)
        ape = np.abs(predicted[metric] / measured - 1.0) * 100.0
        ape = ape[np.isfinite(ape)]
        out.append(ErrorSummary(metric, float(np.median(ape)), float(np.percentile(ape, 90)), int(ape.size)))
    return out


def cross_validate(
    rows: Sequence[MeasuredRow],
    all_reduce_tables: dict[str, dict[str, list[list[float]]]],
    max_nfev: int = 200,
) -> tuple[list[ErrorSummary], dict[str, FloatArray]]:
    """Leave one model group out: fit on the rest (from the fixed initial point), predict the held-out group."""
    groups = sorted({model_group(r) for r in rows})
    predicted = {m: np.full(len(rows), np.nan) for m in METRICS}
    for group in groups:
        held = [i for i, r in enumerate(rows) if model_group(r) == group]
        train = [r for r in rows if model_group(r) != group]
        coefficients = fit(train, all_reduce_tables, max_nfev=max_nfev)
        pred = predict_rows([rows[i] for i in held], coefficients)
        for metric in METRICS:
            predicted[metric][held] = pred[metric]
    return error_summary(rows, predicted), predicted


def calibrate(
    mlenergy_csv: Path, vidur_dir: Path | None, max_nfev: int = 400
) -> tuple[Coefficients, list[MeasuredRow]]:
    rows = read_mlenergy(mlenergy_csv)
    tables = load_vidur_tables(vidur_dir) if vidur_dir is not None else Coefficients.initial().all_reduce_tables
    coefficients = fit(rows, tables, max_nfev=max_nfev)
    metadata = {
        "source": "ML.ENERGY leaderboard v3 configurations.csv; Vidur NCCL all-reduce profiles",
        "rows": len(rows),
        "fitted": sorted(n for n in coefficients.values if n in FITTED_PARAMETERS),
        "priors": sorted(PRIOR_PARAMETERS),
        "in_sample": {
            s.metric: {"median_ape_percent": round(s.median_ape, 2), "p90_ape_percent": round(s.p90_ape, 2)}
            for s in error_summary(rows, predict_rows(rows, coefficients))
        },
    }
    final = Coefficients(
        values=coefficients.values,
        all_reduce_tables=tables,
        schema_version=SCHEMA_VERSION,
        metadata=metadata,
    )
    return final, rows

"""Where the shared reference data lives, and readers for its formats.

The data stays outside the repository (`../shared/data` beside the checkout, or WATTKEEPER_DATA_DIR); nothing at
run time needs it, because calibration writes what it learns into the package.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from .catalog import get_precision, normalise_architecture

DATA_DIR_ENV = "WATTKEEPER_DATA_DIR"


def shared_data_dir() -> Path | None:
    """WATTKEEPER_DATA_DIR if set, else the first `shared/data` beside a parent of this checkout; None if absent."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        path = Path(configured).expanduser()
        return path if path.is_dir() else None
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def mlenergy_csv(data_dir: Path | None = None) -> Path | None:
    base = data_dir or shared_data_dir()
    if base is None:
        return None
    path = base / "mlenergy" / "configurations.csv"
    return path if path.is_file() else None


def vidur_network_dir(data_dir: Path | None = None) -> Path | None:
    base = data_dir or shared_data_dir()
    if base is None:
        return None
    path = base / "vidur_network"
    return path if path.is_dir() else None


@dataclass(frozen=True)
class MeasuredRow:
    """One ML.ENERGY configuration: the inputs the model may see, then the measurements (None where absent)."""

    model_id: str
    task: str
    architecture: str  # dense, moe, hybrid
    precision: str
    total_params_b: float
    active_params_b: float
    gpu_model: str
    num_gpus: int
    tp: int
    max_num_seqs: int
    avg_output_len: float
    avg_input_len: float | None = None
    avg_batch_size: float | None = None
    avg_power_watts: float | None = None
    energy_per_token_j: float | None = None
    output_tok_per_s: float | None = None
    median_itl_ms: float | None = None
    p90_itl_ms: float | None = None


def _opt_float(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    return float(value)


def row_from_dict(raw: dict[str, str]) -> MeasuredRow:
    """Parse one CSV row in ML.ENERGY's column format; raises KeyError/ValueError on a missing input column."""
    total = float(raw["total_params_b"])
    active = _opt_float(raw.get("active_params_b")) or total
    return MeasuredRow(
        model_id=raw["model_id"],
        task=(raw.get("task") or "").strip(),
        architecture=normalise_architecture(raw["architecture"]),
        precision=get_precision(raw["weight_precision"]).name,
        total_params_b=total,
        active_params_b=active,
        gpu_model=raw["gpu_model"].strip(),
        num_gpus=int(float(raw["num_gpus"])),
        tp=int(float(raw["tp"])),
        max_num_seqs=int(float(raw["max_num_seqs"])),
        avg_output_len=float(raw["avg_output_len"]),
        avg_input_len=_opt_float(raw.get("avg_input_len")),
        avg_batch_size=_opt_float(raw.get("avg_batch_size")),
        avg_power_watts=_opt_float(raw.get("avg_power_watts")),
        energy_per_token_j=_opt_float(raw.get("energy_per_token_j")),
        output_tok_per_s=_opt_float(raw.get("output_tok_per_s")),
        median_itl_ms=_opt_float(raw.get("median_itl_ms")),
        p90_itl_ms=_opt_float(raw.get("p90_itl_ms")),
    )


def read_mlenergy(path: Path) -> list[MeasuredRow]:
    with path.open(newline="") as handle:
        return [row_from_dict(raw) for raw in csv.DictReader(handle)]


def read_all_reduce_csv(path: Path) -> dict[int, list[tuple[float, float]]]:
    """Vidur's NCCL all-reduce profile: {GPUs on one node: [(bytes, median seconds)]}, rank 0, single node only."""
    curves: dict[int, list[tuple[float, float]]] = {}
    with path.open(newline="") as handle:
        for raw in csv.DictReader(handle):
            workers = int(raw["num_workers"])
            if raw.get("rank", "0") != "0" or int(raw.get("devices_per_node", workers)) != workers:
                continue  # multi-node rings cross InfiniBand; a replica sits on one node
            seconds = float(raw["time_stats.all_reduce.median"]) / 1000.0  # the file is in milliseconds
            curves.setdefault(workers, []).append((float(raw["size"]), seconds))
    for points in curves.values():
        points.sort()
    return curves

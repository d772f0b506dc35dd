"""All-reduce cost of tensor parallelism, from Vidur's measured NCCL curves (8xH100 and 8xA100 DGX nodes).

The curves are compacted into the coefficients file by calibration, so nothing reads ../shared at run time.
Accelerators without a measured curve borrow the nearest one, with the message size scaled by the ratio of
NVLink bandwidths: bandwidth-bound messages then take the time the link speed implies, while the latency floor of
small messages stays as measured.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .datasets import read_all_reduce_csv

FloatArray = npt.NDArray[np.float64]
# {table: {gpus: [[bytes, seconds], ...]}} with string keys, as JSON stores it.
AllReduceTables = Mapping[str, Mapping[str, Sequence[Sequence[float]]]]
TABLE_NVLINK_BYTES_PER_SECOND = {"h100": 450e9, "a100": 300e9}


def compact_curve(points: Sequence[tuple[float, float]], bins: int = 28) -> list[list[float]]:
    """Median time in log-spaced size bins, made non-decreasing: a bigger message never costs less."""
    sizes = np.array([p[0] for p in points])
    times = np.array([p[1] for p in points])
    edges = np.geomspace(sizes.min(), sizes.max() * 1.0001, bins + 1)
    out: list[list[float]] = []
    running = 0.0
    for low, high in itertools.pairwise(edges):
        mask = (sizes >= low) & (sizes < high)
        if not mask.any():
            continue
        running = max(running, float(np.median(times[mask])))
        out.append([float(np.exp(np.mean(np.log(sizes[mask])))), running])
    return out


def load_vidur_tables(network_dir: Path) -> dict[str, dict[str, list[list[float]]]]:
    tables: dict[str, dict[str, list[list[float]]]] = {}
    for name in ("h100", "a100"):
        path = network_dir / f"{name}_dgx_all_reduce.csv"
        if not path.is_file():
            continue
        curves = read_all_reduce_csv(path)
        tables[name] = {str(n): compact_curve(points) for n, points in sorted(curves.items())}
    return tables


class AllReduceModel:
    """Seconds for one all-reduce of `bytes` across `gpus` GPUs of one node."""

    def __init__(self, tables: AllReduceTables) -> None:
        self._curves: dict[tuple[str, int], tuple[FloatArray, FloatArray]] = {}
        self._chosen: dict[tuple[str, int], tuple[FloatArray, FloatArray, float]] = {}  # _curve's answers
        for table, by_gpus in tables.items():
            for gpus, points in by_gpus.items():
                arr = np.asarray(points, dtype=float)
                self._curves[(table, int(gpus))] = (np.log(arr[:, 0]), arr[:, 1])

    def _curve(self, table: str, gpus: int) -> tuple[FloatArray, FloatArray, float]:
        """The curve and a time multiplier for GPU counts that were not measured (ring cost 2(n-1)/n)."""
        chosen = self._chosen.get((table, gpus))
        if chosen is None:  # the planner asks for the same few curves hundreds of times per decision
            chosen = self._chosen[(table, gpus)] = self._find_curve(table, gpus)
        return chosen

    def _find_curve(self, table: str, gpus: int) -> tuple[FloatArray, FloatArray, float]:
        known = sorted(n for t, n in self._curves if t == table) or sorted(n for t, n in self._curves if t == "h100")
        if not known:
            raise ValueError("no all-reduce curves loaded")
        use_table = table if any(t == table for t, _ in self._curves) else "h100"
        nearest = min(known, key=lambda n: (abs(math.log(n) - math.log(gpus)), n))
        factor = (2.0 * (gpus - 1) / gpus) / (2.0 * (nearest - 1) / nearest)
        log_sizes, times = self._curves[(use_table, nearest)]
        return log_sizes, times, factor

    def seconds(
        self, message_bytes: FloatArray | float, gpus: int, table: str = "h100", nvlink_bytes_per_second: float = 0.0
    ) -> FloatArray:
        size = np.asarray(message_bytes, dtype=float)
        if gpus <= 1:
            return np.zeros_like(size)
        log_sizes, times, factor = self._curve(table, gpus)
        scale = 1.0
        if nvlink_bytes_per_second > 0:
            scale = TABLE_NVLINK_BYTES_PER_SECOND.get(table, 450e9) / nvlink_bytes_per_second
        log_size = np.log(np.maximum(size * scale, 1.0))
        inside = np.interp(log_size, log_sizes, times)
        # Beyond the largest measured message the time grows linearly with size (bandwidth-bound).
        beyond = times[-1] * np.exp(log_size - log_sizes[-1])
        return np.where(log_size > log_sizes[-1], beyond, inside) * factor

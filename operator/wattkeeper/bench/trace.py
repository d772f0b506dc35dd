"""Request traces in the Azure LLM inference format (`TIMESTAMP,ContextTokens,GeneratedTokens`).

A trace is three aligned numpy arrays; arrival times are seconds from the first request. Rate scaling clones
requests (see `scale_rate`) rather than compressing time, so that the trace keeps its length and its minute-by-
minute shape, only k times as loud.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..energy.datasets import shared_data_dir

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

CONVERSATION_TRACE = Path("traces") / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"


def default_trace_path() -> Path | None:
    """The Azure conversation trace under the shared data folder, or None when the folder is absent."""
    base = shared_data_dir()
    if base is None:
        return None
    path = base / CONVERSATION_TRACE
    return path if path.is_file() else None


@dataclass(frozen=True)
class Trace:
    arrival_s: FloatArray  # sorted, seconds from the first request
    input_tokens: IntArray
    output_tokens: IntArray
    name: str = "trace"

    def __post_init__(self) -> None:
        if not (len(self.arrival_s) == len(self.input_tokens) == len(self.output_tokens)):
            raise ValueError("trace arrays differ in length")

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0

    def window(self, start_s: float, end_s: float) -> Trace:
        lo, hi = np.searchsorted(self.arrival_s, [start_s, end_s], side="left")
        return Trace(self.arrival_s[lo:hi], self.input_tokens[lo:hi], self.output_tokens[lo:hi], self.name)

    def truncate(self, duration_s: float) -> Trace:
        return self.window(0.0, duration_s)

    def per_minute_counts(self) -> IntArray:
        if not len(self):
            return np.zeros(0, dtype=np.int64)
        return np.bincount((self.arrival_s // 60.0).astype(np.int64))

    def peak_minute(self) -> tuple[float, float, float]:
        """(requests per second, mean input tokens, mean output tokens) of the busiest whole minute."""
        counts = self.per_minute_counts()
        minute = int(np.argmax(counts))
        w = self.window(minute * 60.0, minute * 60.0 + 60.0)
        return float(counts[minute]) / 60.0, float(w.input_tokens.mean()), float(w.output_tokens.mean())


def _parse_timestamps(values: list[str]) -> FloatArray:
    # Azure writes 7 fractional digits (100 ns); datetime takes at most 6.
    stamps = [datetime.fromisoformat(v.strip()[:26]).timestamp() for v in values]
    out = np.asarray(stamps, dtype=float)
    return out - out.min() if out.size else out


def load_azure_trace(path: Path) -> Trace:
    """Read an Azure LLM inference trace; rows are sorted by arrival (the published files already are)."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: not an Azure LLM trace, missing columns {sorted(missing)}")
        stamps, inputs, outputs = [], [], []
        for row in reader:
            stamps.append(row["TIMESTAMP"])
            inputs.append(int(row["ContextTokens"]))
            outputs.append(int(row["GeneratedTokens"]))
    arrival = _parse_timestamps(stamps)
    order = np.argsort(arrival, kind="stable")
    return Trace(
        arrival_s=arrival[order],
        # vLLM needs one prompt token and one output token at least; a few trace rows say 0.
        input_tokens=np.maximum(np.asarray(inputs, dtype=np.int64)[order], 1),
        output_tokens=np.maximum(np.asarray(outputs, dtype=np.int64)[order], 1),
        name=path.stem,
    )


def scale_rate(trace: Trace, factor: float, seed: int = 7) -> Trace:
    """The trace k times as loud with the same length and minute-level shape.

    Each request is cloned floor(k) times, plus once more with probability frac(k); a clone keeps the original's
    token counts and arrives uniformly between the original's arrival and the next original arrival, so bursts
    stay bursts and the per-minute counts scale by k. Deterministic for a seed.
    """
    if factor <= 0:
        raise ValueError("rate scale must be > 0")
    if math.isclose(factor, 1.0):
        return trace
    rng = np.random.default_rng(seed)
    n = len(trace)
    gaps = np.diff(trace.arrival_s, append=trace.arrival_s[-1] if n else 0.0)
    whole = math.floor(factor)
    copies = np.full(n, whole, dtype=np.int64) + (rng.random(n) < factor - whole)
    index = np.repeat(np.arange(n), copies)
    first = np.concatenate(([0], np.cumsum(copies)[:-1]))[index] if n else index
    is_original = np.arange(index.size) == first  # the first clone keeps the original arrival
    offsets = np.where(is_original, 0.0, rng.random(index.size) * gaps[index])
    arrival = trace.arrival_s[index] + offsets
    order = np.argsort(arrival, kind="stable")
    return Trace(
        arrival_s=arrival[order],
        input_tokens=trace.input_tokens[index][order],
        output_tokens=trace.output_tokens[index][order],
        name=f"{trace.name}x{factor:g}",
    )


def synthetic_trace(
    rates_per_second: list[tuple[float, float]],
    input_tokens: int = 512,
    output_tokens: int = 128,
    seed: int = 1,
    spread: float = 0.5,
) -> Trace:
    """Poisson arrivals in phases of (duration s, requests/s), log-normal token counts around the means (tests)."""
    rng = np.random.default_rng(seed)
    times: list[float] = []
    start = 0.0
    for duration_s, rate in rates_per_second:
        if rate > 0:
            t = start + rng.exponential(1.0 / rate)
            while t < start + duration_s:
                times.append(t)
                t += rng.exponential(1.0 / rate)
        start += duration_s
    n = len(times)
    sigma = spread

    def lognormal(mean: int) -> IntArray:
        values = rng.lognormal(math.log(mean) - sigma**2 / 2, sigma, n)
        return np.maximum(np.round(values), 1).astype(np.int64)

    return Trace(np.asarray(times, dtype=float), lognormal(input_tokens), lognormal(output_tokens), "synthetic")

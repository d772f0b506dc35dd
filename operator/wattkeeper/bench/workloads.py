"""Workload families of the benchmark: the shared Azure conversation trace and seeded synthetic families.

Every generator is pure and deterministic for its seed, returns a `Trace`, and is reusable outside the benchmark
(e.g. to check a latency model on the same shapes): `make_workload("prefill-heavy", seed=1, duration_s=1800)`.

Families (token shapes from published statistics, cited per family):
- `conversation`: the Azure LLM inference conversation trace of 2023-11-16 (shared data), optionally k times as loud
  (`trace.scale_rate`: clones, the minute shape kept).
- `prefill-heavy`: code completion. Splitwise (Patel et al., ISCA 2024, section III, Fig. 3, on the Azure code
  trace of the same 2023 dataset, not in the shared data here): median prompt ~1500 tokens, median output ~13
  tokens. ML.ENERGY's sourcegraph-fim task agrees on the prompt (calibrated mean input 1500 tokens,
  energy/model.py `input_tokens_sourcegraph_fim`). Log-normal around those medians.
- `decode-heavy`: short prompts, long outputs. Prompts like ML.ENERGY's gpqa task (calibrated mean input 300
  tokens); outputs like the long half of ML.ENERGY's lm-arena-chat rows (mean output 346-1464 tokens per
  configuration in the shared configurations.csv, median 634): median 1000 tokens, capped at 4096 (gpqa's reasoning
  outputs of 1.5k-12k tokens would outlast the replay's 5-minute windows).
- `bursty`: the conversation trace's requests and per-minute counts, with arrivals re-drawn in clusters: each
  minute's requests arrive in bursts of geometric size (mean 8) that each land within 2 s, so the minute rate is
  unchanged while the second-level rate peaks at several times the mean (BurstGPT, Wang et al. 2024, reports such
  clustering in production LLM serving).

The two synthetic families draw a per-minute rate: the family's mean rate times a slow swing (one period over the
trace, +-50%, random phase) times log-normal minute noise (sigma 0.15), Poisson within the minute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .trace import Trace, default_trace_path, load_azure_trace, scale_rate

IntArray = npt.NDArray[np.int64]

FAMILIES = ("conversation", "prefill-heavy", "decode-heavy", "bursty")


@dataclass(frozen=True)
class TokenShape:
    """Log-normal token counts around a median, clipped to [1, cap]."""

    median: float
    sigma: float
    cap: int

    def draw(self, rng: np.random.Generator, n: int) -> IntArray:
        values = rng.lognormal(math.log(self.median), self.sigma, n)
        return np.clip(np.round(values), 1, self.cap).astype(np.int64)


@dataclass(frozen=True)
class SyntheticFamily:
    name: str
    mean_requests_per_second: float
    prompt: TokenShape
    output: TokenShape
    source: str


PREFILL_HEAVY = SyntheticFamily(
    "prefill-heavy",
    mean_requests_per_second=4.0,
    prompt=TokenShape(1500.0, 0.7, 8192),
    output=TokenShape(13.0, 1.0, 512),
    source="Splitwise (Patel et al., ISCA 2024) Azure code trace: median prompt 1500, median output 13 tokens",
)
DECODE_HEAVY = SyntheticFamily(
    "decode-heavy",
    mean_requests_per_second=1.5,
    prompt=TokenShape(300.0, 0.8, 4096),
    output=TokenShape(1000.0, 0.5, 4096),
    source="ML.ENERGY v3: gpqa-like prompts (mean 300 tokens), long lm-arena-chat outputs (median 1000 here)",
)


def minute_rates(mean_rps: float, minutes: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    phase = rng.uniform(0.0, 2.0 * math.pi)
    m = np.arange(minutes, dtype=float)
    swing = 1.0 + 0.5 * np.sin(2.0 * math.pi * m / max(minutes, 1) + phase)
    noise = rng.lognormal(-0.15**2 / 2, 0.15, minutes)
    return np.asarray(mean_rps * swing * noise, dtype=float)


def synthetic(family: SyntheticFamily, seed: int, duration_s: float, rate_scale: float = 1.0) -> Trace:
    """Poisson arrivals at the family's per-minute rates, token counts from its shapes."""
    if duration_s <= 0:
        raise ValueError("duration_s must be > 0")
    rng = np.random.default_rng([seed, 0x5EED, len(family.name)])
    minutes = max(1, math.ceil(duration_s / 60.0))
    rates = minute_rates(family.mean_requests_per_second * rate_scale, minutes, rng)
    times: list[npt.NDArray[np.float64]] = []
    for k, rate in enumerate(rates):
        n = int(rng.poisson(rate * 60.0))
        times.append(np.sort(k * 60.0 + rng.uniform(0.0, 60.0, n)))
    arrival = np.concatenate(times) if times else np.zeros(0)
    arrival = arrival[arrival < duration_s]
    n = arrival.size
    return Trace(arrival, family.prompt.draw(rng, n), family.output.draw(rng, n), f"{family.name}-s{seed}")


def clustered(trace: Trace, seed: int, burst_mean: float = 8.0, burst_span_s: float = 2.0) -> Trace:
    """The same requests and per-minute counts, arrivals clustered in bursts of ~`burst_mean` within `burst_span_s`."""
    if not len(trace):
        return trace
    rng = np.random.default_rng([seed, 0xB0B])
    minute = (trace.arrival_s // 60.0).astype(np.int64)
    out = np.empty(len(trace), dtype=float)
    start = 0
    for m, count in zip(*np.unique(minute, return_counts=True), strict=True):
        times = np.empty(count, dtype=float)
        i = 0
        while i < count:
            size = min(int(rng.geometric(1.0 / burst_mean)), count - i)
            t0 = m * 60.0 + rng.uniform(0.0, 60.0 - burst_span_s)
            times[i : i + size] = t0 + rng.uniform(0.0, burst_span_s, size)
            i += size
        out[start : start + count] = np.sort(times)
        start += count
    order = np.argsort(out, kind="stable")
    return Trace(out[order], trace.input_tokens[order], trace.output_tokens[order], f"{trace.name}-bursty-s{seed}")


def conversation(
    rate_scale: float = 1.0, seed: int = 0, duration_s: float | None = None, path: Path | None = None
) -> Trace:
    """The shared Azure conversation trace (first `duration_s`), `rate_scale` times as loud (clones seeded)."""
    source = path or default_trace_path()
    if source is None or not Path(source).is_file():
        raise FileNotFoundError(
            "the Azure conversation trace is not in the shared data (../shared/data or WATTKEEPER_DATA_DIR)"
        )
    trace = load_azure_trace(Path(source))
    if duration_s:
        trace = trace.truncate(duration_s)
    return scale_rate(trace, rate_scale, seed=7 + seed) if rate_scale != 1.0 else trace


def make_workload(
    family: str, seed: int, duration_s: float, rate_scale: float = 1.0, trace_path: Path | None = None
) -> Trace:
    """One trace of a family (see module doc); `rate_scale` multiplies the arrival rate of every family."""
    if family == "conversation":
        return conversation(rate_scale, seed, duration_s, trace_path)
    if family == "prefill-heavy":
        return synthetic(PREFILL_HEAVY, seed, duration_s, rate_scale)
    if family == "decode-heavy":
        return synthetic(DECODE_HEAVY, seed, duration_s, rate_scale)
    if family == "bursty":
        return clustered(conversation(rate_scale, seed, duration_s, trace_path), seed)
    raise ValueError(f"unknown workload family {family!r}: known ones are {', '.join(FAMILIES)}")

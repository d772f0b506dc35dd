"""Verify before rollout, and the latency margin learned online.

`choose_verified` replays the planner's best few candidates (cheapest first) through the runtime's
`BatchingEngine` on a sample of recent arrivals (times and token lengths) and keeps the cheapest one under which
at least `request_share` of the requests are within both thresholds: TTFT and the request's mean ITL, which is
what the benchmark scores. The replay runs one replica with its round-robin share of the arrivals (the router
spreads requests evenly) on the planner's own step timing, corrected by the measured throughput and the learned
latency margins, so it checks what the analytical model approximates (queues, chunked prefill, the KV cache and
max-num-seqs admission) on the load as it really arrived, bursts included.

`LatencyMargin` learns how far measured latency runs from predicted (mean and spread of the log ratio, EWMA); its
factors multiply predicted latencies before they are compared with the SLO, in the search (PlanRequest
`ttft_margin` / `itl_margin`) and here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from wattkeeper_runtime.engine import BatchingEngine, EngineRequest

from ..energy.catalog import get_accelerator
from ..energy.grid import StepGrid, Table
from ..energy.model import EnergyModel, kv_capacity_tokens
from ..energy.types import ModelShape, ServingConfig
from .load import ArrivalSample

if TYPE_CHECKING:
    from .search import Candidate, PlanRequest

MARGIN_MIN = 0.8
MARGIN_MAX = 4.0
# Replays longer than this many engine steps stop early and judge what they saw (the decision must stay within
# ~100 ms; long outputs would otherwise replay minutes of decoding after the last arrival).
MAX_REPLAY_STEPS = 1500
# At most this many of the most recent requests per replica are replayed (the same budget).
MAX_REPLAY_REQUESTS_PER_REPLICA = 200


# --- the learned margin ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyMargin:
    """Measured over predicted latency, as the EWMA mean and variance of the log ratio per metric."""

    ttft_log_ratio: float = 0.0
    ttft_log_variance: float = 0.0
    ttft_samples: int = 0
    itl_log_ratio: float = 0.0
    itl_log_variance: float = 0.0
    itl_samples: int = 0

    def ttft_factor(self, spread: float = 1.0) -> float:
        """Multiply predicted TTFT by this: the mean ratio plus `spread` standard deviations, bounded."""
        return _factor(self.ttft_log_ratio, self.ttft_log_variance, self.ttft_samples, spread)

    def itl_factor(self, spread: float = 1.0) -> float:
        return _factor(self.itl_log_ratio, self.itl_log_variance, self.itl_samples, spread)


def _factor(mean: float, variance: float, samples: int, spread: float) -> float:
    if samples == 0:
        return 1.0
    value = math.exp(mean + spread * math.sqrt(max(variance, 0.0)))
    return min(max(value, MARGIN_MIN), MARGIN_MAX)


def _ewma(mean: float, variance: float, samples: int, x: float, weight: float) -> tuple[float, float, int]:
    # Until 1/weight samples are in, a plain running mean (an EWMA from 0 would pull the first values to 0).
    w = max(weight, 1.0 / (samples + 1))
    delta = x - mean
    mean += w * delta
    variance = (1.0 - w) * (variance + w * delta * delta)
    return mean, variance, samples + 1


def _usable(predicted: float | None, measured: float | None) -> bool:
    return (
        predicted is not None
        and measured is not None
        and math.isfinite(predicted)
        and math.isfinite(measured)
        and predicted > 0
        and measured > 0
    )


def update_margin(
    margin: LatencyMargin,
    predicted_ttft_seconds: float | None,
    measured_ttft_seconds: float | None,
    predicted_itl_seconds: float | None,
    measured_itl_seconds: float | None,
    weight: float = 0.2,
) -> LatencyMargin:
    """Fold one measurement (e.g. p95s of the last window: vLLM's histograms against the plan's predictions) into
    the margin. A metric with a missing, zero or non-finite figure is left as it was."""
    if not 0.0 < weight <= 1.0:
        raise ValueError("weight must be in (0, 1]")
    out = margin
    if _usable(predicted_ttft_seconds, measured_ttft_seconds):
        assert predicted_ttft_seconds is not None and measured_ttft_seconds is not None
        m, v, n = _ewma(
            margin.ttft_log_ratio,
            margin.ttft_log_variance,
            margin.ttft_samples,
            math.log(measured_ttft_seconds / predicted_ttft_seconds),
            weight,
        )
        out = replace(out, ttft_log_ratio=m, ttft_log_variance=v, ttft_samples=n)
    if _usable(predicted_itl_seconds, measured_itl_seconds):
        assert predicted_itl_seconds is not None and measured_itl_seconds is not None
        m, v, n = _ewma(
            margin.itl_log_ratio,
            margin.itl_log_variance,
            margin.itl_samples,
            math.log(measured_itl_seconds / predicted_itl_seconds),
            weight,
        )
        out = replace(out, itl_log_ratio=m, itl_log_variance=v, itl_samples=n)
    return out


# --- replay ---------------------------------------------------------------------------------------------------


class _TableTiming:
    """`StepTiming` from the evaluator on a small grid (batch x context x prefill tokens), linear in between:
    one vectorised evaluation per configuration instead of one per step."""

    def __init__(
        self, em: EnergyModel, model: ModelShape, accelerator: str, config: ServingConfig
    ) -> None:
        acc = get_accelerator(accelerator)
        base = em.features(model, acc, config)
        top = max(config.max_num_seqs, 1)
        batch_nodes = sorted({x for x in (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if x < top} | {top})
        context_nodes = [128, 512, 1024, 2048, 4096, 8192, 16384, 32768]
        budget = config.max_num_batched_tokens
        prompt_nodes = sorted({x for x in (0, 64, 256, 1024, 4096, 16384) if x < budget} | {budget})
        self._grid = StepGrid(batch_nodes, context_nodes, prompt_nodes)
        bb, cc, pp = np.meshgrid(batch_nodes, context_nodes, prompt_nodes, indexing="ij")
        f = base.take(np.zeros(bb.size, dtype=np.int64))
        s = em.evaluator.step(f, bb.ravel().astype(float), cc.ravel().astype(float), pp.ravel().astype(float),
                              np.maximum(pp.ravel(), 1).astype(float))
        self._t: Table = np.asarray(s.step_seconds).reshape(bb.shape).tolist()
        self._idle = acc.idle_watts * config.tensor_parallel
        self._kv = int(kv_capacity_tokens(base, em.coefficients)[0])

    def decode_step_seconds(self, batch_size: int, context_tokens: int, prompt_tokens: int = 0) -> float:
        return self._grid.read(self._t, self._grid.position(batch_size, context_tokens, prompt_tokens))

    def prefill_seconds(self, prompt_tokens: int) -> float:
        return self._grid.read(self._t, self._grid.position(0, self._grid.context_nodes[0], prompt_tokens))

    def power_watts(self, batch_size: int, busy_fraction: float, context_tokens: int = 1024) -> float:
        return self._idle  # the replay judges latency only

    def kv_cache_tokens(self) -> int:
        return self._kv


@dataclass(frozen=True)
class ReplayOutcome:
    """What one candidate did on the replayed arrivals (one replica's round-robin share)."""

    config: ServingConfig
    replicas: int
    requests: int
    within_share: float  # within both thresholds (unfinished requests count as misses)
    ttft_share: float
    itl_share: float
    complete: bool  # False when the replay hit MAX_REPLAY_STEPS
    cpu_seconds: float

    def describe(self) -> str:
        return (
            f"{self.config.short()} x{self.replicas}: {self.within_share * 100:.1f}% of {self.requests} replayed "
            f"requests within both thresholds"
        )


def replay(
    model: ModelShape,
    accelerator: str,
    config: ServingConfig,
    replicas: int,
    sample: ArrivalSample,
    slo_ttft_seconds: float,
    slo_itl_seconds: float,
    energy_model: EnergyModel | None = None,
    ttft_margin: float = 1.0,
    itl_margin: float = 1.0,
    rate_scale: float = 1.0,
    max_steps: int = MAX_REPLAY_STEPS,
    max_requests_per_replica: int = MAX_REPLAY_REQUESTS_PER_REPLICA,
) -> ReplayOutcome:
    """Replay one replica's share of `sample` (every `replicas`-th request of the most recent
    `max_requests_per_replica` x `replicas`) through a `BatchingEngine`.

    `rate_scale` > 1 replays the arrivals that much faster (a forecast rise). A request is within when its TTFT
    times `ttft_margin` and its mean ITL times `itl_margin` are within the thresholds.
    """
    if replicas < 1:
        raise ValueError("replicas must be >= 1")
    if rate_scale <= 0:
        raise ValueError("rate scale must be > 0")
    started = time.perf_counter()
    em = energy_model or EnergyModel.default()
    timing = _TableTiming(em, model, accelerator, config)
    engine = BatchingEngine(timing, config.max_num_seqs, config.max_num_batched_tokens, record_tokens=False)
    first = max(0, len(sample) - max_requests_per_replica * replicas)
    t0 = sample.arrival_s[first] if len(sample) else 0.0
    requests: list[EngineRequest] = []
    steps = 0
    complete = True
    for i in range(first, len(sample), replicas):
        t = (sample.arrival_s[i] - t0) / rate_scale
        steps += engine.run_until(t, max_steps - steps)
        req = EngineRequest(str(i), max(int(sample.prompt_tokens[i]), 1), max(int(sample.output_tokens[i]), 1))
        requests.append(req)
        engine.submit(req, t)
    steps += engine.run_until(math.inf, max_steps - steps)
    if engine.has_work():
        complete = False
    ttft_ok = itl_ok = both = 0
    now = engine.clock_s
    for r in requests:
        # A replay cut short by the step budget judges what it saw: a request still waiting for its first token
        # misses only once it has waited longer than the threshold; a decoding one by its gaps so far.
        if r.first_token_s is not None:
            t_ok = (r.first_token_s - r.arrival_s) * ttft_margin <= slo_ttft_seconds
        else:
            t_ok = not complete and (now - r.arrival_s) * ttft_margin <= slo_ttft_seconds
        last = r.finished_s if r.finished_s is not None else r.last_token_s
        if r.first_token_s is not None and last is not None and r.output_tokens > 1:
            i_ok = (last - r.first_token_s) / (r.output_tokens - 1) * itl_margin <= slo_itl_seconds
        else:
            i_ok = r.first_token_s is not None or not complete
        ttft_ok += t_ok
        itl_ok += i_ok
        both += t_ok and i_ok
    n = max(len(requests), 1)
    return ReplayOutcome(
        config=config,
        replicas=replicas,
        requests=len(requests),
        within_share=both / n,
        ttft_share=ttft_ok / n,
        itl_share=itl_ok / n,
        complete=complete,
        cpu_seconds=time.perf_counter() - started,
    )


def choose_verified(
    candidates: Sequence[Candidate],
    request: PlanRequest,
    energy_model: EnergyModel | None = None,
    prefer: Candidate | None = None,
    tie: float = 0.005,
) -> tuple[Candidate | None, list[ReplayOutcome]]:
    """The cheapest candidate whose replay keeps `request.request_share` of requests within both thresholds.

    Candidates are tried by total watts, cheapest first (`prefer` first when within `tie` of the cheapest), and
    the search stops at the first that passes; when none does, the one with the largest share within (then the
    cheapest) is returned. (None, []) without a sample.
    """
    sample = request.replay
    if sample is None or not candidates:
        return None, []
    if len(sample) == 0:
        return min(candidates, key=lambda c: c.total_watts), []
    outcomes: list[tuple[Candidate, ReplayOutcome]] = []
    ordered = sorted(candidates, key=lambda c: c.total_watts)
    if prefer is not None and prefer in ordered and prefer.total_watts <= ordered[0].total_watts * (1 + tie):
        # The planner's own choice among near ties (its tie-break: fewer GPUs, headroom) goes first.
        ordered.remove(prefer)
        ordered.insert(0, prefer)
    for c in ordered:
        outcome = replay(
            request.model,
            request.accelerator,
            c.config,
            c.replicas,
            sample,
            request.slo_ttft_p95_seconds,
            request.slo_itl_p95_seconds,
            energy_model,
            request.ttft_margin,
            request.itl_margin,
            request.replay_rate_scale,
        )
        outcomes.append((c, outcome))
        if outcome.within_share >= request.request_share:
            return c, [o for _, o in outcomes]
    best = max(outcomes, key=lambda pair: (pair[1].within_share, -pair[0].total_watts))
    return best[0], [o for _, o in outcomes]

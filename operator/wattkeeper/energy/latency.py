"""Latency of one loaded vLLM replica with chunked prefill: a prefill queue for TTFT, a step mixture for ITL.

What vLLM 0.11.1's V1 scheduler does in one step (vllm/v1/core/sched/scheduler.py):
- the token budget is `max_num_scheduled_tokens` (= --max-num-batched-tokens; :208);
- RUNNING requests go first, in order, each taking min(tokens it still needs, budget) (:220-230): a decoding
  sequence takes 1, a partially prefilled prompt takes the next chunk;
- then WAITING requests are admitted first come first served while budget remains and fewer than max-num-seqs
  run (:397-398), each with a first chunk of min(prompt, budget) (:495-510; `long_prefill_token_threshold` is 0
  by default, vllm/config/scheduler.py:61, so one prompt may take the whole budget).
So every step carries all decoding sequences plus at most `budget - decoders` prompt tokens, and prompts are
prefilled in arrival order: one prefill stream per replica, served one chunk budget per step. The runtime's
`BatchingEngine` (runtime/wattkeeper_runtime/engine.py) schedules the same way.

TTFT is modelled as that stream: an M/G/1 queue whose work is prompt tokens, served at C tokens per full-chunk step
(C = budget - decoders) when it has a backlog, so a prompt of I tokens waits behind the work ahead of it and is
then served in ceil(I / C) steps, the last one carrying its remainder plus what else arrived meanwhile. The
waiting time has an atom at zero (1 - rho) and an exponential tail of mean E[W] / rho (Pollaczek-Khinchine gives
E[W]); the TTFT quantile mixes that over the observed prompt-length distribution and is found by bisection.

The ITL distribution is over token gaps: each step gives every decoding sequence one gap of the step's length.
Steps are decode-only, full-chunk (a long prompt's inner chunks, or any step while the prefill stream has a
backlog) or carry a prompt's last chunk (plus the other prompts that arrived during the step before). A prompt of
n chunks makes n long steps, which is what puts long prompts' chunk steps into the ITL tail: the share of token
gaps in chunk-carrying steps, not the chance that a step sees an arrival. Gaps are counted, not steps: the requests
fix how many come a second (output - 1 each), a chunk step gives one to every sequence decoding then (the time-mean
batch), and decode-only steps, which run only while someone decodes, give the rest. The per-request mean ITL (what the
benchmark scores) averages a request's gaps over its output length.

Everything is vectorised over the rows of `Features` (the planner evaluates thousands of candidates at once); the
token distributions are shared by all rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from .model import Evaluator, Features

FloatArray = npt.NDArray[np.float64]

# Quantile bins kept of each token distribution: finer in the tail, where long prompts make the long steps and
# the queue (each bin is represented by the quantile at its middle and weighs its width).
DISTRIBUTION_EDGES = (0.0, 0.2, 0.4, 0.6, 0.75, 0.875, 0.95, 0.99, 1.0)
# Chunk budgets the planner may choose from (vLLM needs >= max_model_len without chunked prefill; with it any).
CHUNK_BUDGET_OPTIONS = (512, 1024, 2048, 4096, 8192, 16384)
# How long a rate level lasts at a time: the window of the counts the levels come from (planner/load.py
# BURST_WINDOW_SECONDS).
LEVEL_WINDOW_SECONDS = 10.0
_BISECTION_ROUNDS = 14  # hi / 2**14: about a millisecond for a 10-s bound
# A threshold on the request's mean ITL this far above the longest step has no request over it (`latency_under_load`).
# Not at the step itself: the threshold arrives divided by a learned margin, a ratio of p95 token gaps that the
# longest steps need not share; a margin learned at full power, carried to a 490 W limit on the same arguments,
# ran 1.6-2.6x there (prefill-heavy s7: with 1.1, 98.55% within both SLOs; with 1.2, 99.39%; bench/README.md).
LONGEST_STEP_SLACK = 1.2


@dataclass(frozen=True)
class TokenDistribution:
    """Prompt and output lengths as weighted quantile points (what the latency model needs of a sample).

    Built from observed lengths (`from_sample`) or, when only means are known, from a log-normal shape around
    them (`from_means`). Hashable so that plans can be cached on it.
    """

    prompt_tokens: tuple[float, ...]
    output_tokens: tuple[float, ...]
    weights: tuple[float, ...]  # of each point (the width of its quantile bin), summing to 1
    mean_prompt_tokens: float
    mean_output_tokens: float
    prompt_second_moment: float  # E[I^2]
    # Mean context (prompt + tokens generated so far) over decode steps: each request weighs by its output length.
    decode_context_tokens: float

    @classmethod
    def from_sample(
        cls,
        prompt_tokens: npt.ArrayLike,
        output_tokens: npt.ArrayLike,
        edges: Sequence[float] = DISTRIBUTION_EDGES,
    ) -> TokenDistribution:
        inp = np.maximum(np.asarray(prompt_tokens, dtype=float), 1.0)
        out = np.maximum(np.asarray(output_tokens, dtype=float), 1.0)
        if inp.size == 0 or inp.size != out.size:
            raise ValueError("token sample must be non-empty, with one output length per prompt length")
        if not (np.all(np.isfinite(inp)) and np.all(np.isfinite(out))):
            raise ValueError("token sample has non-finite lengths")
        e = np.asarray(edges, dtype=float)
        if e.size < 2 or e[0] != 0.0 or e[-1] != 1.0 or np.any(np.diff(e) <= 0):
            raise ValueError("quantile edges must rise from 0 to 1")
        q = 0.5 * (e[1:] + e[:-1])
        return cls(
            prompt_tokens=tuple(float(v) for v in np.quantile(inp, q)),
            output_tokens=tuple(float(v) for v in np.quantile(out, q)),
            weights=tuple(float(v) for v in np.diff(e)),
            mean_prompt_tokens=float(inp.mean()),
            mean_output_tokens=float(out.mean()),
            prompt_second_moment=float(np.mean(inp**2)),
            decode_context_tokens=float(np.sum(out * inp + 0.5 * out**2) / np.sum(out)),
        )

    @classmethod
    def from_means(
        cls, prompt_tokens: float, output_tokens: float, sigma: float = 1.0
    ) -> TokenDistribution:
        """Log-normal lengths of these means (sigma 1 is close to the Azure conversation trace's spread)."""
        if prompt_tokens <= 0 or output_tokens <= 0:
            raise ValueError("mean token counts must be > 0")
        # Quantiles of the log-normal at many points, so the moments are those of the shape, not of 16 points.
        q = (np.arange(400) + 0.5) / 400
        z = np.sqrt(2.0) * _erfinv(2.0 * q - 1.0)
        inp = np.exp(math.log(prompt_tokens) - sigma**2 / 2 + sigma * z)
        out = np.exp(math.log(output_tokens) - sigma**2 / 2 + sigma * z[::-1])  # independent-ish: anti-sorted pairs
        rng = np.random.default_rng(0)
        return cls.from_sample(np.maximum(inp, 1.0), rng.permutation(np.maximum(out, 1.0)))


def _erfinv(y: FloatArray) -> FloatArray:
    from scipy.special import erfinv

    return np.asarray(erfinv(y), dtype=float)


def _weighted_quantile(values: FloatArray, weights: FloatArray, q: float) -> FloatArray:
    """Per row: the smallest value with at least q of the row's weight at or below it."""
    return _weighted_quantiles(values, weights, (q,))[0]


def _weighted_quantiles(values: FloatArray, weights: FloatArray, qs: Sequence[float]) -> list[FloatArray]:
    """`_weighted_quantile` at each of `qs`, sorting once."""
    order = np.argsort(values, axis=1)
    v = np.take_along_axis(values, order, axis=1)
    w = np.take_along_axis(weights, order, axis=1)
    cum = np.cumsum(w, axis=1)
    total = np.maximum(cum[:, -1:], 1e-300)
    rows = np.arange(v.shape[0])
    return [v[rows, np.argmax(cum >= q * total - 1e-12, axis=1)] for q in qs]


def _bisect(tail: object, lo: FloatArray, hi: FloatArray, target: float) -> FloatArray:
    """Per row: t with tail(t) = target, tail decreasing in t, between lo and hi."""
    fn = tail  # a callable FloatArray -> FloatArray
    for _ in range(_BISECTION_ROUNDS):
        mid = 0.5 * (lo + hi)
        above = fn(mid) > target  # type: ignore[operator]
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    return hi


@dataclass
class LoadedLatency:
    """Per row: the figures `latency_under_load` returns (seconds unless named otherwise)."""

    batch: FloatArray  # mean decoding sequences
    busy_fraction: FloatArray
    mean_gap_seconds: FloatArray  # mean step over token gaps
    decode_step_seconds: FloatArray  # a decode-only step at the busy batch
    full_chunk_step_seconds: FloatArray  # one step carrying a full chunk beside the busy batch
    chunk_tokens: FloatArray  # prompt tokens a full chunk carries (budget - decoders)
    prefill_utilisation: FloatArray  # load of the prefill stream (>= 1: prompts queue without bound)
    chunk_gap_share: FloatArray  # share of token gaps that fall in chunk-carrying steps
    itl_p50: FloatArray
    itl_p90: FloatArray
    itl_p95: FloatArray
    ttft_p95: FloatArray
    ttft_quantile: FloatArray  # at `quantile`
    request_mean_itl_quantile: FloatArray  # per-request mean ITL at `quantile`
    quantile: float
    ttft_miss_share: FloatArray | None = None  # share of requests over the TTFT threshold (when asked)
    request_itl_miss_share: FloatArray | None = None  # share of requests whose mean ITL is over its threshold


def level_persistence(residence_seconds: FloatArray, level_window_s: float = LEVEL_WINDOW_SECONDS) -> FloatArray:
    """How much of a rate level's own steady batch its decoders reach: a level lasts `level_window_s`, a request
    holds its batch slot `residence_seconds`, and the decoders of a burst are partly those of the calm before it."""
    residence = np.maximum(np.asarray(residence_seconds, dtype=float), 0.0)
    return level_window_s / (level_window_s + residence)


def slot_peak(peak: float, residence_seconds: FloatArray,
              level_window_s: float = LEVEL_WINDOW_SECONDS) -> FloatArray:
    """The factor on the mean rate that the busiest rate level `peak` puts on the decode batch, by the blend of
    `level_persistence`. Where requests hold their slot for a minute (long outputs) a 10-s burst barely fills the
    batch more than the mean does; where they hold it for a second it fills it by the whole factor. (The prefill
    stream serves each prompt in a few steps: its load takes the whole factor.)"""
    return 1.0 + (max(peak, 1.0) - 1.0) * level_persistence(residence_seconds, level_window_s)


def latency_under_load(
    ev: Evaluator,
    f: Features,
    rate_per_replica: FloatArray,
    tokens: TokenDistribution,
    max_batch: FloatArray,
    slot_wait_mean_seconds: FloatArray,
    slot_wait_probability: FloatArray,
    quantile: float = 0.99,
    rate_levels: Sequence[tuple[float, float]] = ((1.0, 1.0),),
    level_window_s: float = LEVEL_WINDOW_SECONDS,
    request_quantiles: bool = True,
    thresholds: tuple[float | FloatArray, float | FloatArray] | None = None,
    iterations: int = 3,
    arrival_dispersion: float | FloatArray = 1.0,
) -> LoadedLatency:
    """TTFT and ITL percentiles of replicas under `rate_per_replica` Poisson arrivals (see module doc).

    `max_batch` bounds the decoding batch; the slot wait (max-num-seqs or KV cache full) comes from the caller's
    multi-server approximation as a probability of waiting and a conditional mean. `rate_levels` describes bursty
    arrivals as (factor on the rate, share of time) pairs: each level is solved as its own steady state and the
    token gaps (by gaps per second) and requests (by arrivals) of the levels are mixed; the factors should average
    to 1 over the time shares for the rate to stay the mean; a level lasts about `level_window_s` at a time.
    With `thresholds` (TTFT seconds, mean-ITL seconds; each a number or one per row) the shares of requests over each are returned too: one
    tail evaluation each, what the planner needs (the quantiles take a bisection; `request_quantiles=False` skips
    the per-request mean ITL one). `arrival_dispersion` (>= 1; a number or one per row) is the clustering of
    arrivals at each replica within a level (planner/load.py `arrival_dispersion`, a replica's share under
    per-request routing: `thinned_dispersion`).
    """
    levels = [(float(a), float(w)) for a, w in rate_levels if w > 0]
    if not levels or any(a < 0 for a, _ in levels):
        raise ValueError("rate levels need a positive time share and a factor >= 0")
    n0 = len(f)
    n_levels = len(levels)
    factors = np.array([a for a, _ in levels])
    shares = np.array([w for _, w in levels])
    shares = shares / shares.sum()
    if n_levels > 1:
        rows = np.repeat(np.arange(n0), n_levels)
        f = f.take(rows)
        rate_per_replica = np.asarray(rate_per_replica, dtype=float)[rows] * np.tile(factors, n0)
        max_batch = np.asarray(max_batch, dtype=float)[rows]
        slot_wait_mean_seconds = np.asarray(slot_wait_mean_seconds, dtype=float)[rows]
        slot_wait_probability = np.asarray(slot_wait_probability, dtype=float)[rows]
        if np.ndim(arrival_dispersion):
            arrival_dispersion = np.asarray(arrival_dispersion, dtype=float)[rows]
    n = len(f)
    dispersion = np.maximum(np.broadcast_to(np.asarray(arrival_dispersion, dtype=float), (n,)), 1.0)
    lam = np.maximum(np.asarray(rate_per_replica, dtype=float), 0.0)
    inp = np.asarray(tokens.prompt_tokens, dtype=float)[None, :]  # 1 x K
    out = np.asarray(tokens.output_tokens, dtype=float)[None, :]
    k = inp.shape[1]
    point_w = np.asarray(tokens.weights, dtype=float)  # K
    mean_in = tokens.mean_prompt_tokens
    mean_out = tokens.mean_output_tokens
    context = np.full(n, tokens.decode_context_tokens)
    budget = f.max_num_batched_tokens
    expanded: dict[int, Features] = {}

    def step(batch: FloatArray, prompt: FloatArray) -> FloatArray:
        """Step seconds with `batch` decoders and `prompt` prefill tokens; shapes broadcast over rows."""
        shape = np.broadcast_shapes(batch.shape, prompt.shape)
        b = np.broadcast_to(batch, shape)
        p = np.broadcast_to(prompt, shape)
        if len(shape) == 1:
            return np.asarray(ev.step_seconds(f, b, context, p, np.maximum(p, 1.0)), dtype=float)
        cols = shape[1]
        g = expanded.get(cols)
        if g is None:  # expanding once per width keeps the all-reduce grouping (a Python loop) cached
            g = expanded[cols] = f.take(np.repeat(np.arange(n), cols))
        s = ev.step_seconds(g, b.ravel(), np.repeat(context, cols), p.ravel(), np.maximum(p.ravel(), 1.0))
        return np.asarray(s, dtype=float).reshape(shape)

    def gap_rate(batch: FloatArray, gap: FloatArray) -> FloatArray:
        # Token gaps per second: each request gives output - 1 (its first token ends its prefill); the batch, by
        # Little, is rate x output x gap, and bounded by max-num-seqs.
        return batch / np.maximum(gap, 1e-12) * max(mean_out - 1.0, 0.0) / max(mean_out, 1.0)

    # Fixed point on the decoding batch: b = rate x mean output x mean gap (Little), the gap mixing step types.
    t_decode0 = step(np.ones(n), np.zeros(n))
    batch = np.clip(lam * mean_out * t_decode0, 0.0, max_batch)
    gap = t_decode0
    for _ in range(iterations):
        occupied = np.maximum(batch, 1e-9)
        busy = 1.0 - np.exp(-occupied)
        b_busy = np.clip(occupied / busy, 1.0, np.maximum(max_batch, 1.0))
        mix = _step_mixture(
            step, b_busy, lam, inp, point_w, mean_in, budget, gap, batch, gap_rate(batch, gap), dispersion
        )
        batch = np.clip(lam * mean_out * mix.mean_gap, 0.0, max_batch)
        gap = mix.mean_gap
    occupied = np.maximum(batch, 1e-9)
    busy = 1.0 - np.exp(-occupied)
    b_busy = np.clip(occupied / busy, 1.0, np.maximum(max_batch, 1.0))
    mix = _step_mixture(
        step, b_busy, lam, inp, point_w, mean_in, budget, gap, batch, gap_rate(batch, gap), dispersion
    )
    saturated = mix.rho >= 1.0

    # --- TTFT: residual of the step in progress + wait behind the prefill backlog + own chunks + slot wait.
    rho = np.clip(mix.rho, 0.0, 0.999)
    tau = mix.t_full / mix.chunk  # seconds per prompt token while the stream has a backlog
    group_term = (dispersion - 1.0) * mean_in**2

    def waiting(rate: FloatArray, load: FloatArray) -> FloatArray:
        # Pollaczek-Khinchine; arrivals in groups (index of dispersion D = E[X^2]/E[X] for group sizes X) add,
        # M^X/G/1, the wait behind the group-mates ahead: lambda E[S]^2 (D - 1) / (2 (1 - rho)).
        return rate * tau**2 * (tokens.prompt_second_moment + group_term) / (2.0 * (1.0 - load))

    mean_wait = waiting(lam, rho)
    if n_levels > 1:
        # A level lasts about `level_window_s`: its queue moves from the mean rate's toward its own steady one
        # only as far as that time allows against the relaxation time, ~ E[S] / (1 - sqrt(rho))^2 (M/M/1's, as
        # an order of magnitude).
        level_factor = np.tile(factors, n0)
        lam_mean = lam / np.maximum(level_factor, 1e-9)
        rho_mean = np.clip(rho / np.maximum(level_factor, 1e-9), 0.0, 0.999)
        base_wait = waiting(lam_mean, rho_mean)
        relaxation = tau * mean_in / np.maximum((1.0 - np.sqrt(np.maximum(rho, rho_mean))) ** 2, 1e-9)
        reach = 1.0 - np.exp(-level_window_s / np.maximum(relaxation, 1e-9))
        mean_wait = base_wait + (mean_wait - base_wait) * reach
    tail_mean = np.maximum(mean_wait / np.maximum(rho, 1e-9), 1e-12)  # mean of the wait given that there is one
    t = mix.durations
    time_w = mix.weights * t
    residual = busy * np.sum(time_w * t, axis=1) / np.maximum(2.0 * np.sum(time_w, axis=1), 1e-300)
    base = residual[:, None] + mix.own_service  # rows x K: own chunks of each prompt quantile point
    pw = np.clip(slot_wait_probability, 0.0, 1.0)
    slot_mean = np.maximum(slot_wait_mean_seconds, 1e-12)

    # Per original row: levels side by side. Token gaps weigh by gaps per second (steps x decoders), requests by
    # arrivals per second.
    def by_row(x: FloatArray) -> FloatArray:
        return x.reshape(n0, n_levels * x.shape[1]) if x.ndim == 2 else x.reshape(n0, n_levels)

    # A level shorter than a request's residence does not build its own steady batch: the decoders of a burst
    # are partly those of the calm before it. Blend the level's batch with the time-mean batch by how long the
    # level lasts against the residence.
    share_rows = np.tile(shares, n0)
    mean_batch = np.repeat(np.sum(batch.reshape(n0, n_levels) * shares[None, :], axis=1), n_levels)
    residence = mean_out * mix.mean_gap
    persist = level_persistence(residence, level_window_s)
    decoders = persist * batch + (1.0 - persist) * mean_batch if n_levels > 1 else batch
    gap_w = mix.gap_fraction * (decoders / np.maximum(mix.mean_gap, 1e-12) * share_rows)[:, None]
    durations = by_row(t)
    gap_weights = by_row(gap_w)
    arrivals_w = by_row((lam * share_rows)[:, None])  # n0 x L
    arrivals_w = arrivals_w / np.maximum(arrivals_w.sum(axis=1, keepdims=True), 1e-300)
    if not np.any(lam > 0):
        arrivals_w = np.full((n0, n_levels), 1.0 / n_levels)

    itl_p50, itl_p90, itl_p95 = _weighted_quantiles(durations, gap_weights, (0.50, 0.90, 0.95))

    base_l = base.reshape(n0, n_levels, k)
    rho_l = rho.reshape(n0, n_levels, 1)
    tail_l = tail_mean.reshape(n0, n_levels, 1)
    sat_l = saturated.reshape(n0, n_levels, 1)
    pw_l = pw.reshape(n0, n_levels, 1)
    slot_l = slot_mean.reshape(n0, n_levels, 1)
    a_l = arrivals_w[:, :, None]

    def ttft_tail(x: FloatArray) -> FloatArray:
        # The prefill wait and the slot wait add; their tails are taken as independent exponentials, the slot
        # wait's folded in as a shift by its own conditional quantile (it is small unless batches are full).
        over = x[:, None, None] - base_l
        neg = -np.maximum(over, 0.0)
        prefill = np.where(over <= 0.0, 1.0, rho_l * np.exp(neg / tail_l))
        slots = pw_l * np.exp(neg / slot_l)
        p = np.minimum(prefill + slots, 1.0)
        p = np.where(sat_l, 1.0, p)
        return np.asarray(np.sum(a_l * np.sum(p * point_w, axis=2, keepdims=True), axis=(1, 2)), dtype=float)

    def ttft_at(q: float) -> FloatArray:
        finite_tail = np.where(saturated, 0.0, tail_mean + slot_mean)
        hi = (
            np.max(by_row(base), axis=1)
            + np.max(by_row(finite_tail[:, None]), axis=1) * math.log(1.0 / (1.0 - q))
            + 1e-6
        )
        value = _bisect(ttft_tail, np.zeros(n0), hi, 1.0 - q)
        # Where saturated levels alone hold more than 1 - q of the arrivals the quantile is unbounded.
        stuck = np.sum(arrivals_w * saturated.reshape(n0, n_levels), axis=1) > 1.0 - q
        return np.where(stuck, np.inf, value)

    ttft_p95 = ttft_at(0.95)
    ttft_q = ttft_at(quantile) if request_quantiles else ttft_p95

    # --- Per-request mean ITL at `quantile`: a request of output O averages O - 1 gaps drawn from its level's mix.
    w = mix.gap_fraction
    g_mean = np.sum(w * t, axis=1)
    g_var = np.maximum(np.sum(w * t**2, axis=1) - g_mean**2, 0.0)
    gaps = np.maximum(out - 1.0, 1.0)  # 1 x K

    # Long steps come in runs: a prompt's chunks follow one another, and while the prefill stream has a backlog
    # its busy period strings prompts together (~ chunks per prompt / (1 - rho) steps). A request's gaps are
    # therefore not independent draws: its mean averages only about gaps / run independent ones.
    # Grouped arrivals (dispersion D: groups of about m = (D + 1) / 2) put a group's prompts one after another,
    # and every member but the last starts decoding inside that run.
    group = np.minimum((dispersion + 1.0) / 2.0, 32.0)
    run = np.maximum(group * mix.chunks_per_prompt / np.maximum(1.0 - np.minimum(mix.rho, 0.95), 0.05), 1.0)
    independent = np.maximum(gaps / run[:, None], 1.0)
    t_dec = mix.t_decode
    share = np.clip(mix.chunk_share, 0.0, 1.0)
    chunk_w = w[:, DECODE_COLUMNS:]  # the chunk-carrying kinds (the first columns are decode-only)
    excess = np.maximum(
        np.sum(chunk_w * t[:, DECODE_COLUMNS:], axis=1) / np.maximum(chunk_w.sum(axis=1), 1e-300) - t_dec, 0.0
    )
    run_len = np.minimum(run[:, None], gaps)
    runs_mean = gaps * share[:, None] / run_len
    rho_c = np.maximum(np.clip(mix.rho, 0.0, 1.0), 1.0 - 1.0 / group)
    # A request's mean ITL averages its token gaps, each one step: it cannot exceed the longest step, a full chunk
    # beside the largest decoding batch of the mix (the engine's longest gap is within 2% of it). The run count
    # above is Poisson, unbounded, and the normal approximation has no end either: both put requests over a
    # threshold no step reaches (prefill-heavy, bf16 tp8 tok2048 at 490 W: steps of at most 76 ms, 2.4% of
    # requests predicted over 100 ms; the engine on the model's own step timing, on the same arrivals, 0 of 1,998).
    # The threshold must clear it by `LONGEST_STEP_SLACK` (see there).
    longest = mix.t_full + np.maximum(np.max(t[:, :DECODE_COLUMNS], axis=1) - t_dec, 0.0)

    def mean_itl_tail(x: FloatArray) -> FloatArray:
        xe = np.repeat(x, n_levels)[:, None]
        sd = np.sqrt(g_var[:, None] / independent)
        z = (xe - g_mean[:, None]) / np.maximum(sd, 1e-12)
        normal = 0.5 * _erfc(z / math.sqrt(2.0))
        # The long steps a request sees arrive in runs: N ~ Poisson(gaps x share / run) runs of `run` chunk steps
        # (at most its gaps), each adding the chunk step's excess over a decode step; its mean ITL is over x when
        # N reaches (x - decode step) x gaps / (run x excess).
        # A request leaves its own prefill while the stream still has a backlog with the stream's load (an
        # M/G/1 departure finds work behind it with probability rho): then its first gaps already sit in a run.
        k_needed = np.ceil((xe - t_dec[:, None]) * gaps / np.maximum(run_len * excess[:, None], 1e-12) - 1e-9)
        after_busy = _poisson_at_least(k_needed - 1.0, runs_mean)
        after_idle = _poisson_at_least(k_needed, runs_mean)
        clumped = rho_c[:, None] * after_busy + (1.0 - rho_c[:, None]) * after_idle
        p = np.sum(np.maximum(normal, clumped) * point_w, axis=1)
        p = np.where(xe[:, 0] >= longest * LONGEST_STEP_SLACK, 0.0, p)
        return np.asarray(np.sum(arrivals_w * p.reshape(n0, n_levels), axis=1), dtype=float)

    if request_quantiles:
        hi = np.max(by_row(t), axis=1) + 1e-6
        mean_itl_q = _bisect(mean_itl_tail, np.zeros(n0), hi, 1.0 - quantile)
    else:
        mean_itl_q = itl_p95
    ttft_miss: FloatArray | None = None
    itl_miss: FloatArray | None = None
    if thresholds is not None:
        stuck_share = np.sum(arrivals_w * saturated.reshape(n0, n_levels), axis=1)
        # A threshold per row (each row's own latency margin) or one for all.
        ttft_miss = np.maximum(ttft_tail(np.broadcast_to(np.asarray(thresholds[0], dtype=float), (n0,))), stuck_share)
        itl_miss = mean_itl_tail(np.broadcast_to(np.asarray(thresholds[1], dtype=float), (n0,)))

    def time_mean(x: FloatArray) -> FloatArray:
        return np.asarray(np.sum(x.reshape(n0, n_levels) * shares[None, :], axis=1), dtype=float)

    def worst(x: FloatArray) -> FloatArray:
        return np.asarray(np.max(x.reshape(n0, n_levels), axis=1), dtype=float)

    return LoadedLatency(
        batch=time_mean(batch),
        busy_fraction=time_mean(busy),
        mean_gap_seconds=time_mean(mix.mean_gap),
        decode_step_seconds=worst(mix.t_decode),
        full_chunk_step_seconds=worst(mix.t_full),
        chunk_tokens=worst(mix.chunk),
        prefill_utilisation=worst(mix.rho),
        chunk_gap_share=time_mean(mix.chunk_share),
        itl_p50=itl_p50,
        itl_p90=itl_p90,
        itl_p95=itl_p95,
        ttft_p95=ttft_p95,
        ttft_quantile=ttft_q,
        request_mean_itl_quantile=mean_itl_q,
        quantile=quantile,
        ttft_miss_share=ttft_miss,
        request_itl_miss_share=itl_miss,
    )


def _erfc(x: FloatArray) -> FloatArray:
    from scipy.special import erfc

    return np.asarray(erfc(x), dtype=float)


def _poisson_at_least(k: FloatArray, mean: FloatArray) -> FloatArray:
    """P(N >= k) for N ~ Poisson(mean) (1 where k <= 0)."""
    from scipy.special import pdtrc

    p = np.asarray(pdtrc(np.maximum(k - 1.0, 0.0), np.maximum(mean, 0.0)), dtype=float)
    return np.where(k <= 0, 1.0, p)


# (z, probability): three-point Gauss-Hermite rule for a normal spread of the decoding batch.
_BATCH_POINTS = ((-math.sqrt(3.0), 1.0 / 6.0), (0.0, 2.0 / 3.0), (math.sqrt(3.0), 1.0 / 6.0))
DECODE_COLUMNS = len(_BATCH_POINTS)
_CHUNK_NODES = (0.0, 1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0 / 2, 1.0)  # from none to a full chunk
# Up to this many step evaluations, a mixture's step kinds are evaluated in one call (`_step_mixture`).
_ONE_CALL_ROWS = 4096


def _interp_rows(x: FloatArray, xp: FloatArray, fp: FloatArray) -> FloatArray:
    """Row-wise linear interpolation: x rows x K, xp and fp rows x N with xp increasing along each row."""
    # The cell below each x: how many inner nodes lie under it (a count per node, not a rows x K x N array).
    idx = np.zeros(x.shape, dtype=np.intp)
    for j in range(1, xp.shape[1] - 1):
        idx += xp[:, j : j + 1] < x
    flat = idx + (np.arange(x.shape[0]) * xp.shape[1])[:, None]  # into the rows laid end to end
    upper = flat + 1
    lo_x = np.take(xp, flat)
    hi_x = np.take(xp, upper)
    lo_f = np.take(fp, flat)
    hi_f = np.take(fp, upper)
    w = np.clip((x - lo_x) / np.maximum(hi_x - lo_x, 1e-12), 0.0, 1.0)
    return lo_f + w * (hi_f - lo_f)


@dataclass
class _Mixture:
    durations: FloatArray  # rows x M step durations
    weights: FloatArray  # rows x M steps per second of each kind
    gap_fraction: FloatArray  # rows x M share of token gaps that fall in each kind
    mean_gap: FloatArray  # over token gaps
    t_decode: FloatArray
    t_full: FloatArray
    chunk: FloatArray
    rho: FloatArray
    chunk_share: FloatArray
    own_service: FloatArray  # rows x K
    chunks_per_prompt: FloatArray  # mean over prompts


def _step_mixture(
    step: object,
    b: FloatArray,
    lam: FloatArray,
    inp: FloatArray,
    point_w: FloatArray,
    mean_in: float,
    budget: FloatArray,
    prev_gap: FloatArray,
    occupied: FloatArray,
    gap_rate: FloatArray,
    arrival_dispersion: FloatArray,
) -> _Mixture:
    """The kinds of steps a loaded replica runs, their durations and how often each comes (see module doc)."""
    fn = step  # callable (batch, prompt) -> seconds
    n = b.shape[0]
    chunk = np.maximum(budget - b, 16.0)
    # Step time against the prefill tokens, at a few fractions of the chunk and linear in between (the step is a
    # smooth roofline in the tokens): evaluating every prompt point of every row would dominate the planner.
    nodes = np.asarray(_CHUNK_NODES)[None, :] * chunk[:, None]
    # The decoding batch itself varies (occupancy: variance ~ D x mean), and a step at a larger batch gives more
    # token gaps: decode-only steps at three batch points (Gauss-Hermite), weighted by probability x batch.
    spread = np.sqrt(np.maximum(arrival_dispersion, 1.0) / np.maximum(b, 1.0))
    dec_b = [np.clip(b * (1.0 + z * spread), 1.0, None) for z, _ in _BATCH_POINTS]
    others_b = [bj for (z, _), bj in zip(_BATCH_POINTS, dec_b, strict=True) if z != 0.0]
    inner = nodes[:, 1:-1]
    zeros = np.zeros(n)
    if n * (2 + len(others_b) + inner.shape[1]) <= _ONE_CALL_ROWS:
        # Every kind of step in one evaluation, element by element the same figures as one call per kind: a call
        # costs ~0.2 ms whatever its rows, and a tick's few-row evaluations are mostly that (a tick 0-12% faster).
        batches = np.column_stack([b, b, *others_b, np.broadcast_to(b[:, None], inner.shape)])
        prompts = np.column_stack([zeros, chunk, *([zeros] * len(others_b)), inner])
        t_all = fn(batches, prompts)  # type: ignore[operator]
        t_decode, t_full = t_all[:, 0], t_all[:, 1]
        t_others = [t_all[:, 2 + j] for j in range(len(others_b))]
        t_inner = t_all[:, 2 + len(others_b):]
    else:  # many rows: the copies of one wide call cost more than the calls it saves
        t_decode = fn(b, zeros)  # type: ignore[operator]
        t_full = fn(b, chunk)  # type: ignore[operator]
        t_others = [fn(bj, zeros) for bj in others_b]  # type: ignore[operator]
        t_inner = fn(b[:, None], inner)  # type: ignore[operator]
    later = iter(t_others)
    # Prefill stream load: prompt tokens per second over what full-chunk steps serve.
    rho = lam * mean_in * t_full / chunk
    # Prompts arriving during one step ride in the next one together: beside a prompt's last chunk come the
    # tokens of the others that arrived during the step before (of mean length `prev_gap`).
    per_step = lam * prev_gap
    others = per_step * mean_in
    merge = np.where(per_step > 1e-9, (1.0 - np.exp(-per_step)) / np.maximum(per_step, 1e-9), 1.0)
    chunks = np.ceil(inp / chunk[:, None])  # rows x K
    remainder = inp - (chunks - 1.0) * chunk[:, None]
    last_tokens = np.minimum(remainder + others[:, None], chunk[:, None])
    # The end nodes (no prompt tokens, a full chunk) are the decode-only and full-chunk steps.
    t_nodes = np.concatenate([t_decode[:, None], t_inner, t_full[:, None]], axis=1)
    t_last = _interp_rows(last_tokens, nodes, t_nodes)
    lam_k = lam[:, None] * point_w[None, :]
    # Grouped arrivals (dispersion > 1) are not merged into shared steps here: groups spread over a second or
    # two, tens of steps, so each prompt still gets its own last-chunk step (checked against the bursty family).
    rate_full = lam_k * (chunks - 1.0)
    rate_last = np.broadcast_to(lam_k * merge[:, None], t_last.shape)
    chunk_time = np.sum(rate_full, axis=1) * t_full + np.sum(rate_last * t_last, axis=1)
    rate_decode = np.maximum(1.0 - chunk_time, 0.0) / t_decode
    dec_t = [t_decode if z == 0.0 else next(later) for z, _ in _BATCH_POINTS]
    dec_w = [rate_decode * p * bj / b for (_, p), bj in zip(_BATCH_POINTS, dec_b, strict=True)]
    durations = np.concatenate([np.stack(dec_t, axis=1), t_full[:, None], t_last], axis=1)
    weights = np.concatenate([np.stack(dec_w, axis=1), np.sum(rate_full, axis=1)[:, None], rate_last], axis=1)
    # Token gaps, not steps: the gaps per second are fixed by the requests (each gives its output - 1), and a
    # chunk step gives one to every sequence decoding then. The decode-only steps take the rest; they run only
    # while someone decodes, so filling the time between chunk steps with them (a replica stepping without
    # pause) would dilute the chunk steps' share (prefill-heavy fp8 TP2 at 30%: 4.4% of gaps against 7.4%).
    chunk_steps = np.sum(weights[:, DECODE_COLUMNS:], axis=1)
    chunk_gaps = chunk_steps * occupied
    decode_gaps = np.clip(gap_rate - chunk_gaps, 0.0, rate_decode * b)
    dec_steps = weights[:, :DECODE_COLUMNS]
    dec_share = dec_steps / np.maximum(dec_steps.sum(axis=1, keepdims=True), 1e-300)
    gap_weights = np.concatenate([dec_share * decode_gaps[:, None], weights[:, DECODE_COLUMNS:] * occupied[:, None]],
                                 axis=1)
    gap_total = gap_weights.sum(axis=1)
    gap_fraction = np.where(
        gap_total[:, None] > 0, gap_weights / np.maximum(gap_total, 1e-300)[:, None], np.eye(1, weights.shape[1], 1)
    )
    mean_gap = np.sum(gap_fraction * durations, axis=1)
    chunk_share = 1.0 - np.sum(gap_fraction[:, :DECODE_COLUMNS], axis=1)
    # A prompt's own prefill: its inner chunks at full steps, its last chunk beside whatever else arrived.
    own = (chunks - 1.0) * t_full[:, None] + t_last
    chunks_per_prompt = np.sum(chunks * point_w[None, :], axis=1)
    return _Mixture(
        durations, weights, gap_fraction, mean_gap, t_decode, t_full, chunk, rho, chunk_share, own, chunks_per_prompt
    )

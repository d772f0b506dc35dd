"""Configuration search: the least-energy serving plan that meets the SLOs and the power allocation.

The search space is precision x TP x max-num-seqs x max-num-batched-tokens (x GPU power limit) x replicas. All
candidates are evaluated at once by the energy model's vectorised evaluator, so a decision takes milliseconds.
At a fixed offered load every candidate serves the same tokens, so least power is least energy per token.
The queued latency model, the costly part, is solved for every candidate only when the Pareto frontier is asked
for; without it (`PlanRequest.frontier`, as the control core asks) it is solved cheapest first until no
unsolved candidate can change the answer (`_plan_once`).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from ..energy.catalog import get_accelerator, get_precision
from ..energy.latency import CHUNK_BUDGET_OPTIONS, TokenDistribution, slot_peak
from ..energy.model import EnergyModel, Features, ProfilePointLike, build_features, slot_residence_seconds
from ..energy.types import ModelShape, ReplicaPrediction, ServingConfig, Workload
from .load import ArrivalSample, LoadEstimate, thinned_dispersion

if TYPE_CHECKING:
    from .verify import LatencyMargin
from .measured import apply_measured

FloatArray = npt.NDArray[np.float64]
Binding = Literal["slo-ttft", "slo-itl", "power", "memory", "none"]
Fallback = Literal["ProtectBudget", "ProtectSLO"]
LatencyModel = Literal["steady", "queued"]
SloBasis = Literal["p95", "requests"]

TENSOR_PARALLEL_OPTIONS = (1, 2, 4, 8)
MAX_NUM_SEQS_OPTIONS = (8, 16, 32, 64, 128, 256, 512)
MAX_NUM_BATCHED_TOKENS_OPTIONS = (2048, 8192)
# Candidates within this share of the least power are ties (the model is not that precise).
TIE_TOLERANCE = 0.005
# In the fallback, misses within this factor of the least are ties, settled by watts.
FALLBACK_TIE = 1.1


@dataclass(frozen=True)
class PlanRequest:
    """What the service asks for and under what load and power allocation."""

    model: ModelShape
    accelerator: str
    workload: Workload
    allowed_precisions: tuple[str, ...] = ("bf16",)
    slo_ttft_p95_seconds: float = 2.0
    slo_itl_p95_seconds: float = 0.1
    min_replicas: int = 1
    max_replicas: int = 64
    max_tensor_parallel: int = 8
    # Restrict the search to these TP degrees (the operator pins the running one when disruptive changes are off).
    tensor_parallel_options: tuple[int, ...] = TENSOR_PARALLEL_OPTIONS
    max_gpus: int | None = None
    allocation_watts: float | None = None
    fallback: Fallback = "ProtectSLO"
    power_correction: float = 1.0  # measured / predicted watts of the running plan, applied to predictions
    profile: Sequence[ProfilePointLike] | None = None
    gpu_memory_utilization: float = 0.9
    max_num_seqs_options: tuple[int, ...] = MAX_NUM_SEQS_OPTIONS
    max_num_batched_tokens_options: tuple[int, ...] = MAX_NUM_BATCHED_TOKENS_OPTIONS
    # GPU power limits to try besides the default (None); e.g. (None, 500.0) on H100.
    gpu_power_limits_watts: tuple[float | None, ...] = (None,)
    # Plan replicas so that each runs at most this fraction of its capacity: headroom for bursts.
    target_utilisation: float = 0.85
    # --- opt-in: the latency model under load, what is scored, verification (defaults keep the old behaviour) ---
    # "queued": TTFT with the prefill queue, ITL from the token gaps in chunk-carrying steps (energy/latency.py).
    latency_model: LatencyModel = "steady"
    # Observed prompt/output lengths for the queued model; None: log-normal around the workload's means.
    tokens: TokenDistribution | None = None
    # Bursts for the queued model: (factor on the request rate, share of time) pairs (planner/load.py).
    rate_levels: tuple[tuple[float, float], ...] = ((1.0, 1.0),)
    # Clustering of arrivals within those levels (LoadEstimate.arrival_dispersion; 1 = Poisson).
    arrival_dispersion: float = 1.0
    # How requests reach the replicas. True: routed one by one (an endpoint picker such as vLLM's router or the
    # Gateway API inference extension), so a cluster of arrivals spreads over them and each replica is planned for
    # its random share (planner/load.py `thinned_dispersion`). False: balanced per connection (a Kubernetes
    # Service; a client's burst rides one keep-alive connection), so each replica may see a whole cluster.
    per_request_routing: bool = False
    # "p95": TTFT p95 and ITL p95 (every token gap) against the SLOs. "requests" (queued model): at least
    # `request_share` of requests within both thresholds, TTFT and the request's mean ITL (what is scored).
    slo_basis: SloBasis = "p95"
    request_share: float = 0.99
    # Learned measured/predicted latency (planner/verify.py LatencyMargin): predictions are multiplied by these.
    ttft_margin: float = 1.0
    itl_margin: float = 1.0
    # With slo_basis "requests": measured over predicted requests over the SLOs (control/tail.py), on the
    # predicted shares of misses.
    miss_scale: float = 1.0
    # Queued model: max-num-batched-tokens from 512 up (CHUNK_BUDGET_OPTIONS), keeping only budgets whose step
    # with a full chunk beside the planned batch stays within the ITL SLO; ties prefer the largest.
    chunk_budget_within_itl: bool = False
    # The budgets that rule chooses among (the control core narrows them: a learned latency margin is per budget).
    chunk_budget_options: tuple[int, ...] = CHUNK_BUDGET_OPTIONS
    # Verify before rollout (planner/verify.py): replay the cheapest few feasible candidates on these recent
    # arrivals and keep the cheapest that keeps `request_share` of requests within both thresholds.
    replay: ArrivalSample | None = None
    verify_candidates: int = 4
    replay_rate_scale: float = 1.0  # replay the arrivals this much faster (LoadEstimate.growth_factor)
    # With slo_basis "requests": also replay cheaper candidates whose predicted share within both is at least
    # this (None: only candidates the model finds feasible).
    verify_relaxed_share: float | None = None
    # The Pareto frontier (J/token against ITL p95) in `PlanResult.candidates`: it needs the latency of every
    # candidate. Without it the queued model solves candidates cheapest first, only as far as the answer needs
    # (`_plan_once`): the same chosen plan, runner-up, binding and alternatives at a fraction of the cost. The
    # control core never reads the frontier; the what-if CLI does.
    frontier: bool = True

    def token_distribution(self) -> TokenDistribution:
        wl = self.workload
        return self.tokens or TokenDistribution.from_means(max(wl.input_tokens, 1.0), max(wl.output_tokens, 1.0))


@dataclass(frozen=True)
class Candidate:
    config: ServingConfig
    replicas: int
    prediction: ReplicaPrediction  # per replica
    total_watts: float
    joules_per_token: float
    ttft_p95_seconds: float
    itl_p95_seconds: float
    meets_ttft: bool
    meets_itl: bool
    fits_memory: bool
    within_power: bool
    within_gpus: bool
    # With slo_basis "requests": the predicted share of requests within both thresholds (margins applied).
    predicted_within_share: float | None = None

    @property
    def gpus(self) -> int:
        return self.replicas * self.config.tensor_parallel

    @property
    def meets_slo(self) -> bool:
        return self.meets_ttft and self.meets_itl

    @property
    def feasible(self) -> bool:
        return self.meets_slo and self.fits_memory and self.within_power and self.within_gpus

    def describe(self) -> str:
        return (
            f"{self.config.short()} x{self.replicas} ({self.gpus} GPUs): {self.total_watts:.0f} W, "
            f"{self.joules_per_token:.3f} J/token, TTFT p95 {self.ttft_p95_seconds:.2f} s, "
            f"ITL p95 {self.itl_p95_seconds * 1000:.0f} ms"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.config.precision,
            "tensorParallel": self.config.tensor_parallel,
            "maxNumSeqs": self.config.max_num_seqs,
            "maxNumBatchedTokens": self.config.max_num_batched_tokens,
            "gpuPowerLimitWatts": self.config.gpu_power_limit_watts,
            "replicas": self.replicas,
            "gpus": self.gpus,
            "totalWatts": round(self.total_watts, 1),
            "joulesPerToken": round(self.joules_per_token, 5),
            "ttftP95Seconds": _finite_or_none(self.ttft_p95_seconds, 4),
            "itlP95Seconds": _finite_or_none(self.itl_p95_seconds, 5),
            "batchSize": round(self.prediction.batch_size, 2),
            "utilisation": round(self.prediction.utilisation, 3),
            "feasible": self.feasible,
        }


def _finite_or_none(value: float, digits: int) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


@dataclass(frozen=True)
class PlanResult:
    chosen: Candidate | None
    runner_up: Candidate | None
    binding: Binding
    feasible: bool
    reason: str
    candidates: tuple[Candidate, ...] = field(default_factory=tuple)  # the Pareto frontier (J/token vs ITL p95)
    evaluated: int = 0
    # The cheapest feasible candidates, distinct in configuration or replicas (filled when a replay is asked for).
    alternatives: tuple[Candidate, ...] = field(default_factory=tuple)
    # Replays of the verification (planner/verify.py ReplayOutcome), cheapest first; empty without one.
    verification: tuple[Any, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feasible": self.feasible,
            "binding": self.binding,
            "reason": self.reason,
            "chosen": self.chosen.to_dict() if self.chosen else None,
            "runnerUp": self.runner_up.to_dict() if self.runner_up else None,
            "frontier": [c.to_dict() for c in self.candidates],
            "evaluated": self.evaluated,
            "verification": [
                {
                    "config": o.config.short(),
                    "replicas": o.replicas,
                    "requests": o.requests,
                    "withinShare": round(o.within_share, 4),
                }
                for o in self.verification
            ],
        }


@lru_cache(maxsize=64)
def _base_features(
    model: ModelShape,
    accelerator_name: str,
    keys: tuple[tuple[str, int, float | None], ...],
    gpu_memory_utilization: float,
    energy_model: EnergyModel,
) -> Features:
    accelerator = get_accelerator(accelerator_name)
    rows = [
        (model, accelerator, ServingConfig(precision=p, tensor_parallel=tp, gpu_power_limit_watts=limit))
        for p, tp, limit in keys
    ]
    return build_features(rows, energy_model.coefficients, None, gpu_memory_utilization)


@dataclass
class _Grid:
    """All candidates as parallel arrays."""

    base_index: npt.NDArray[np.int64]
    seqs: FloatArray
    batched: FloatArray
    replicas: FloatArray
    features: Features
    result: dict[str, FloatArray]
    measured: npt.NDArray[np.bool_]  # figures from measured profile points (planner/measured.py), not the model
    # The queued model's figures, when solved only as far as needed (`_QueuedFigures`); None: all are in `result`.
    queued: _QueuedFigures | None = None
    # With `_evaluate(groups=...)`: the request each candidate belongs to (its index in `groups`).
    group: npt.NDArray[np.int64] | None = None


def _evaluate(request: PlanRequest, energy_model: EnergyModel, lazy: bool = False,
              groups: Sequence[PlanRequest] | None = None) -> tuple[_Grid, list[tuple[str, int, float | None]]]:
    """Every candidate and its figures. `lazy` (with the queued model, without the frontier or profile points):
    the queued model's figures are left to `_Grid.queued` to solve, cheapest first. `groups` (`_plan_grouped`):
    only the candidates of these requests, each judged against the SLO with its own request's latency margins
    (`request` is then their union)."""
    accelerator = get_accelerator(request.accelerator)
    precisions = _request_precisions(request)  # raises ValueError for an unknown precision
    tps = _request_tps(request)
    keys = tuple((p, tp, limit) for p in precisions for tp in tps for limit in request.gpu_power_limits_watts)
    base = _base_features(request.model, accelerator.name, keys, request.gpu_memory_utilization, energy_model)
    wl = request.workload

    # Expand each base row over max-num-seqs x max-num-batched-tokens.
    seqs_opts = np.asarray(request.max_num_seqs_options, dtype=float)
    tok_opts = np.asarray(_request_budgets(request), dtype=float)
    n_base, n_seq, n_tok = len(keys), seqs_opts.size, tok_opts.size
    base_index = np.repeat(np.arange(n_base), n_seq * n_tok)
    seqs = np.tile(np.repeat(seqs_opts, n_tok), n_base)
    batched = np.tile(tok_opts, n_base * n_seq)
    group_of: npt.NDArray[np.int64] | None = None
    if groups is not None:
        owner = {triple: i for i, g in enumerate(groups) for triple in _triples(g)}
        group_of = np.array([owner.get((keys[b][0], keys[b][1], int(t)), -1)
                             for b, t in zip(base_index.tolist(), batched.tolist(), strict=True)], dtype=np.int64)
        keep = group_of >= 0
        base_index, seqs, batched, group_of = base_index[keep], seqs[keep], batched[keep], group_of[keep]
    f = base.take(base_index)
    f.max_num_seqs = seqs
    f.max_num_batched_tokens = batched
    evaluator = energy_model.evaluator
    n = len(f)
    inp = np.full(n, wl.input_tokens)
    out = np.full(n, wl.output_tokens)

    # Replicas: the fewest that keep each under the target utilisation, and a few more (fewer, fuller replicas
    # usually win, but a smaller batch per replica can be what meets the ITL SLO).
    sat = evaluator.saturated(f, inp, out)
    capacity_rps = sat["tokens_per_second"] / out
    peak = 1.0
    tokens: TokenDistribution | None = None
    if request.latency_model == "queued":
        # Long prompts saturate the one prefill stream per replica before the batch fills: a full chunk beside
        # half the batch budget serves (budget - batch) prompt tokens per step.
        tokens = request.token_distribution()
        b = np.minimum(sat["batch"], 0.5 * f.max_num_batched_tokens)
        chunk = np.maximum(f.max_num_batched_tokens - b, 16.0)
        full = evaluator.step_seconds(f, b, np.full(n, tokens.decode_context_tokens), chunk, chunk)
        prefill_rps = chunk / (full * tokens.mean_prompt_tokens)
        peak = max((a for a, w in request.rate_levels if w > 0), default=1.0)
        # The busiest level fills the prefill stream by its whole factor, the decode batch by `slot_peak`'s.
        decode_peak = slot_peak(peak, sat["batch"] / np.maximum(capacity_rps, 1e-12))
        whole = np.minimum(capacity_rps, prefill_rps)
        capacity_rps = np.minimum(capacity_rps * peak / decode_peak, prefill_rps)
    else:
        whole = capacity_rps
    # The queued model judges queueing itself, so its smallest fleet only needs room for the busiest level; the
    # steady model keeps target_utilisation as headroom for the bursts it does not see.
    target = 1.0 if tokens is not None else request.target_utilisation
    needed = np.ceil(wl.requests_per_second * peak / np.maximum(capacity_rps * target, 1e-12))
    needed = np.clip(needed, request.min_replicas, request.max_replicas)
    # The steps above the bound with the busiest level taken whole on the decode batch too: where the ITL SLO
    # binds, fleets that size are what meets it (conv-x4 s8: tp4 x10 at 490 W).
    coarse = np.ceil(wl.requests_per_second * peak / np.maximum(whole * target, 1e-12))
    coarse = np.clip(coarse, request.min_replicas, request.max_replicas)
    options = [needed, coarse, coarse + 1, coarse + 2, np.ceil(coarse * 1.5), coarse * 2, coarse * 4]
    replicas = np.clip(np.concatenate(options), request.min_replicas, request.max_replicas)
    expand = np.tile(np.arange(n), len(options))
    g = f.take(expand)
    rate = wl.requests_per_second / replicas
    queued: _QueuedFigures | None = None
    row_group = group_of[expand] if group_of is not None else None
    if tokens is not None:
        thresholds = None
        if groups is not None and row_group is not None:
            # Each candidate against the SLOs over its own request's margins (predicted x margin <= SLO).
            thresholds = (np.array([g.slo_ttft_p95_seconds / g.ttft_margin for g in groups])[row_group],
                          np.array([g.slo_itl_p95_seconds / g.itl_margin for g in groups])[row_group])
        queued = _QueuedFigures(evaluator, g, rate, inp[expand], out[expand], tokens, peak, request,
                                base_index[expand], thresholds, replicas)
        result = queued.full
        # Measured profile points replace figures of some candidates after the model: those need every figure.
        if request.frontier or request.profile or not lazy:
            queued.solve_all()
            queued = None
    else:
        result = evaluator.under_load(g, rate, inp[expand], out[expand])
    measured = apply_measured(request.profile, keys, base_index[expand], seqs[expand], batched[expand],
                              rate * wl.output_tokens, wl.input_tokens, wl.output_tokens, result)
    grid = _Grid(base_index[expand], seqs[expand], batched[expand], replicas, g, result, measured, queued, row_group)
    return grid, list(keys)


def _request_tps(request: PlanRequest) -> list[int]:
    tps = [tp for tp in request.tensor_parallel_options if tp <= request.max_tensor_parallel]
    if request.max_gpus is not None:
        tps = [tp for tp in tps if tp <= request.max_gpus] or [1]
    return tps


def _request_budgets(request: PlanRequest) -> tuple[int, ...]:
    if request.latency_model == "queued" and request.chunk_budget_within_itl:
        return request.chunk_budget_options
    return request.max_num_batched_tokens_options


def _request_precisions(request: PlanRequest) -> list[str]:
    out: list[str] = []
    for name in request.allowed_precisions:
        spec = get_precision(name)
        if spec.name not in out:
            out.append(spec.name)
    return out


def _triples(request: PlanRequest) -> list[tuple[str, int, int]]:
    """The (precision, TP, chunk budget) a request's candidates are made of."""
    return [(p, tp, int(b)) for p in _request_precisions(request) for tp in _request_tps(request)
            for b in _request_budgets(request)]


class _QueuedFigures:
    """The queued latency model's figures of a grid's candidates, solved all at once or a set of questions at a
    time, cheapest first (`_plan_once`). Evaluated only where the steady model leaves room for the load at its
    busiest level and the weights fit (the rest cannot be feasible: the queued utilisation is never lower).

    Each distinct question is solved once: candidates that differ only in a max-num-seqs above what the KV cache
    holds, or in replica options that coincide (needed + 1 = 1.5 x needed for 2), are the same row to the model,
    whose every figure is per row. `base_index` is the row of each candidate's (precision, TP, power limit). A
    question is solved on its first candidate with all its candidates at once, so a figure does not depend on
    which questions were solved before it. Until solved, a candidate holds the figures of one the model skips
    (no capacity, every request missed), so it can be neither chosen nor counted as binding."""

    def __init__(
        self,
        evaluator: Any,
        g: Features,
        rate: FloatArray,
        inp: FloatArray,
        out: FloatArray,
        tokens: TokenDistribution,
        peak: float,
        request: PlanRequest,
        base_index: npt.NDArray[np.int64],
        thresholds: tuple[FloatArray, FloatArray] | None = None,
        replicas: FloatArray | None = None,
    ) -> None:
        steady = evaluator.under_load(g, rate, inp, out)
        # Routed per request, each replica sees its random share of the service's clustered arrivals
        # (`thinned_dispersion`); else each is planned for the service's clustering (`per_request_routing`).
        self._dispersion = (thinned_dispersion(request.arrival_dispersion, 1.0 / np.maximum(replicas, 1.0))
                            if replicas is not None and request.per_request_routing
                            else np.full(len(g), max(request.arrival_dispersion, 1.0)))
        self._thresholds = thresholds  # per candidate (TTFT s, mean ITL s); None: the request's
        busiest = steady["utilisation"] * slot_peak(peak, slot_residence_seconds(steady))
        alive = np.flatnonzero((busiest < 1.0) & (steady["max_batch"] >= 1.0))
        n = len(g)
        full: dict[str, FloatArray] = {k: np.array(v, dtype=float, copy=True) for k, v in steady.items()}
        full["utilisation"] = np.maximum(busiest, 1.0)
        for key, default in (("ttft_p95", np.inf), ("itl_p95", np.inf), ("ttft_q", np.inf),
                             ("request_mean_itl_q", np.inf), ("chunk_step_seconds", np.inf),
                             ("ttft_miss_share", 1.0), ("itl_miss_share", 1.0), ("prefill_utilisation", np.inf)):
            full[key] = np.full(n, default)
        self.full = full
        self._evaluator, self._g, self._rate, self._tokens, self._request = evaluator, g, rate, tokens, request
        self._steady = steady
        # The steady figures are the queued model's own where the workload's means are the distribution's.
        self._steady_is_queued = (inp.dtype == np.float64 and out.dtype == np.float64
                                  and request.workload.input_tokens == tokens.mean_prompt_tokens
                                  and request.workload.output_tokens == tokens.mean_output_tokens)
        self._alive = alive
        if alive.size == 0:
            self._first = self._of = np.zeros(0, dtype=np.int64)
        else:
            # What a row's figures depend on: its base features, chunk budget, rate and decode slots. The queued
            # model reads max-num-seqs only through the slots (Evaluator.under_load's max_batch at the means).
            slots = np.minimum(g.max_num_seqs[alive], np.maximum(np.floor(
                steady["kv_capacity_tokens"][alive] / (tokens.mean_prompt_tokens + tokens.mean_output_tokens)), 0.0))
            # (With per-candidate thresholds, `_plan_grouped`, a request's own (precision, TP, budget) set them.)
            question = np.stack([base_index[alive].astype(float), g.max_num_batched_tokens[alive], slots,
                                 rate[alive]], axis=1)
            _, first, inverse = np.unique(question, axis=0, return_index=True, return_inverse=True)
            self._first = alive[first]  # the candidate each question is solved on
            self._of = inverse.reshape(-1)  # the question of each alive candidate
        self.solved = np.zeros(self._first.size, dtype=bool)
        # Elsewhere (the workload's means rounded, as the control core plans them) the queued model starts from
        # the steady figures at the distribution's means, power included: worked out for every question at once,
        # so that the power of a candidate not solved yet is known (`final_watts`).
        self._steady_per_question: dict[str, FloatArray] | None = None
        if not self._steady_is_queued and self._first.size:
            m = self._first.size
            self._steady_per_question = evaluator.under_load(
                g.take(self._first), rate[self._first], np.full(m, tokens.mean_prompt_tokens),
                np.full(m, tokens.mean_output_tokens))

    def final_watts(self) -> FloatArray:
        """Each candidate's power per replica as it stands once solved."""
        if self._steady_per_question is None:
            return self.full["watts"]
        watts = np.array(self.full["watts"], copy=True)
        watts[self._alive] = self._steady_per_question["watts"][self._of]
        return watts

    @property
    def questions(self) -> int:
        return int(self._first.size)

    def pending_rows(self) -> npt.NDArray[np.int64]:
        """The candidates whose question is not solved yet."""
        return self._alive[~self.solved[self._of]] if self._alive.size else self._alive

    def question_order(self, key: FloatArray) -> npt.NDArray[np.int64]:
        """The questions by the least `key` (e.g. a candidate's total watts) among their candidates."""
        least = np.full(self.questions, np.inf)
        np.minimum.at(least, self._of, key[self._alive])
        return np.argsort(least, kind="stable")

    def solve_all(self) -> None:
        self.solve(np.flatnonzero(~self.solved))

    def solve(self, questions: npt.NDArray[np.int64]) -> None:
        questions = np.sort(np.asarray(questions, dtype=np.int64))
        questions = questions[~self.solved[questions]]
        if questions.size == 0:
            return
        request, solve = self._request, self._first[questions]
        part = self._evaluator.under_load_queued(
            self._g.take(solve),
            self._rate[solve],
            self._tokens,
            quantile=request.request_share,
            rate_levels=request.rate_levels,
            request_quantiles=False,
            arrival_dispersion=self._dispersion[solve],
            # Predicted x margin <= SLO  <=>  predicted <= SLO / margin.
            thresholds=(
                (self._thresholds[0][solve], self._thresholds[1][solve]) if self._thresholds is not None else
                (request.slo_ttft_p95_seconds / request.ttft_margin, request.slo_itl_p95_seconds / request.itl_margin)
            )
            if request.slo_basis == "requests"
            else None,
            steady={k: v[solve] for k, v in self._steady.items()} if self._steady_per_question is None
            else {k: v[questions] for k, v in self._steady_per_question.items()},
        )
        position = np.full(self.questions, -1, dtype=np.int64)
        position[questions] = np.arange(questions.size)
        members = position[self._of] >= 0
        rows, at = self._alive[members], position[self._of[members]]
        n = len(self._g)
        for name, value in part.items():
            if name not in self.full:
                self.full[name] = np.full(n, np.nan)
            self.full[name][rows] = value[at]
        self.solved[questions] = True


def _pareto(indices: Sequence[int], energy: FloatArray, latency: FloatArray) -> list[int]:
    at = np.asarray(indices, dtype=np.int64)
    if np.isnan(latency[at]).any() or np.isnan(energy[at]).any():
        ordered = sorted(indices, key=lambda i: (latency[i], energy[i]))
    else:  # the same stable order by (latency, energy), sorted in numpy (NaN would order differently there)
        ordered = at[np.lexsort((energy[at], latency[at]))].tolist()
    front: list[int] = []
    best = math.inf
    for i in ordered:
        if energy[i] < best - 1e-12:
            front.append(i)
            best = energy[i]
    return front


# Planning is a pure function of the request and the model, and an operator asks the same question many times: every
# idle tick of a service whose load has not moved, every service of a fleet stamped from one spec, the budget's
# demand and the service's own plan. Results are immutable, so one answer serves them all.
PLAN_CACHE_SIZE = 512
_plan_cache: OrderedDict[PlanRequest, tuple[EnergyModel, PlanResult]] = OrderedDict()
_plan_cache_lock = threading.Lock()


def clear_plan_cache() -> None:
    """Forget every memoised plan (the per-configuration features stay): what a decision costs when its question
    is new, as `wattkeeper bench decision-time` measures it."""
    with _plan_cache_lock:
        _plan_cache.clear()


def plan(request: PlanRequest, energy_model: EnergyModel | None = None) -> PlanResult:
    """The least-energy candidate meeting the SLOs within the allocation; the fallback when none does."""
    em = energy_model or EnergyModel.default()
    try:
        hash(request)
    except TypeError:  # a request carrying something unhashable (a replay sample) is planned afresh
        return _plan(request, em)
    hit = _memo_get(request, em)
    if hit is not None:
        return hit
    result = _plan(request, em)
    _memo_put(request, em, result)
    return result


def _memo_get(request: PlanRequest, em: EnergyModel) -> PlanResult | None:
    with _plan_cache_lock:
        hit = _plan_cache.get(request)
        if hit is None or hit[0] is not em:  # the model is held by the entry, so `is` cannot see a reused id
            return None
        _plan_cache.move_to_end(request)
        return hit[1]


def _memo_put(request: PlanRequest, em: EnergyModel, result: PlanResult) -> None:
    with _plan_cache_lock:
        _plan_cache[request] = (em, result)
        _plan_cache.move_to_end(request)
        while len(_plan_cache) > PLAN_CACHE_SIZE:
            _plan_cache.popitem(last=False)


def plan_groups(requests: Sequence[PlanRequest], energy_model: EnergyModel | None = None) -> list[PlanResult]:
    """`[plan(r) for r in requests]`, the same answers, memoised alike. Requests that differ only in the
    candidates they allow (precision, TP, chunk budgets) and their latency margins, as the control core asks one
    per learned margin, are evaluated together: one pass of the queued model over all their candidates, each
    judged with its own request's margins, then each request's answer chosen among its own (`_plan_grouped`).
    A tick asks five to eight such searches of a few dozen candidates each, where the queued model's cost is
    mostly per call, not per candidate."""
    em = energy_model or EnergyModel.default()
    try:
        for r in requests:
            hash(r)
    except TypeError:  # a request carrying something unhashable (profile points, a replay): as `plan` answers it
        return [plan(r, em) for r in requests]
    answers = [_memo_get(r, em) for r in requests]
    todo = [i for i, a in enumerate(answers) if a is None]
    asked = [requests[i] for i in todo]
    if len(asked) >= 2 and _groupable(asked):
        for i, result in zip(todo, _plan_grouped(asked, em), strict=True):
            answers[i] = result
            _memo_put(requests[i], em, result)
    else:
        for i in todo:
            answers[i] = plan(requests[i], em)
    return [a for a in answers if a is not None]


def _groupable(requests: Sequence[PlanRequest]) -> bool:
    """Whether `_plan_grouped` answers these as `_plan` would: the queued model with the requests' basis (margins
    only move the thresholds), nothing replayed or measured, no frontier, the same question but for the
    candidates and margins, each request's candidates its own, in an order the union keeps."""
    first = requests[0]

    def bare(r: PlanRequest) -> PlanRequest:
        return replace(r, allowed_precisions=(), tensor_parallel_options=(), max_num_batched_tokens_options=(),
                       chunk_budget_options=(), ttft_margin=1.0, itl_margin=1.0)

    if any(r.latency_model != "queued" or r.slo_basis != "requests" or r.replay is not None or r.profile
           or r.frontier or bare(r) != bare(first) for r in requests):
        return False
    try:
        triples = [t for r in requests for t in _triples(r)]
    except ValueError:
        return False
    if len(triples) != len(set(triples)):
        return False
    union = _union(requests)

    def kept(mine: Sequence[object], theirs: Sequence[object]) -> bool:  # in the union, in the same order
        at = [theirs.index(x) for x in mine if x in theirs]
        return len(at) == len(mine) and at == sorted(at)

    return all(kept(_request_precisions(r), _request_precisions(union)) and kept(_request_tps(r), _request_tps(union))
               and kept(_request_budgets(r), _request_budgets(union)) for r in requests)


def _union(requests: Sequence[PlanRequest]) -> PlanRequest:
    precisions: list[str] = []
    for r in requests:
        precisions += [p for p in _request_precisions(r) if p not in precisions]
    tps = sorted({tp for r in requests for tp in r.tensor_parallel_options})
    budgets = tuple(sorted({int(b) for r in requests for b in _request_budgets(r)}))
    return replace(requests[0], allowed_precisions=tuple(precisions), tensor_parallel_options=tuple(tps),
                   max_num_batched_tokens_options=budgets, chunk_budget_options=budgets, ttft_margin=1.0,
                   itl_margin=1.0)


def _plan_grouped(requests: Sequence[PlanRequest], em: EnergyModel) -> list[PlanResult]:
    """`_plan` for each request (see `plan_groups`), from one evaluation of all their candidates."""
    for r in requests:
        _check(r)
        if r.workload.requests_per_second < 0:
            raise ValueError("request rate must be >= 0")
    # Eagerly: a tick's groups hold a few hundred questions together, and one pass of the queued model over
    # them costs less than the rounds of a lazy search (each pass costs mostly per call).
    grid, keys = _evaluate(_union(requests), em, groups=requests)
    group = grid.group
    assert group is not None
    answers = [_select(r, em, grid, keys, math.inf, rows=group == i)[0] for i, r in enumerate(requests)]
    # ProtectBudget's smaller fleets are searched one by one, as `_plan` searches them.
    return [a if _stands(r, a) else _plan(r, em) for r, a in zip(requests, answers, strict=True)]


def _plan(request: PlanRequest, em: EnergyModel) -> PlanResult:
    _check(request)
    # Without the frontier the chosen plan is replayed first on its own: the replay tries it first anyway (the
    # cheapest feasible, its own tie-break), and where it passes, as it mostly does, the alternatives it would
    # have tried next are never needed, nor solved (`PlanResult.alternatives` then holds the chosen plan only).
    chosen_first = request.replay is not None and not request.frontier and request.verify_candidates > 0 \
        and request.verify_relaxed_share is None and not request.profile
    result = _plan_once(request, em, alternatives=not chosen_first)
    if chosen_first and result.feasible and result.chosen is not None:
        alone = _verified(request, replace(result, alternatives=(result.chosen,)), em, chosen_only=True)
        result = alone if alone is not None else _verified_or_same(request, _plan_once(request, em), em)
    elif request.replay is not None and result.feasible and result.alternatives:
        result = _verified_or_same(request, result, em)
    allocation = request.allocation_watts
    if _stands(request, result) or allocation is None:
        return result
    # Protecting the budget when no fleet sized for the whole load fits the watts: the search sizes replicas for
    # the load, so try smaller fleets (more replicas draw more power: stop at the first that does not fit) and
    # serve what fits; the rest of the load queues. Among the fleets within the watts the one with the most
    # capacity wins (at one load, the lowest utilisation), so a config with worse J/token is never taken only to
    # lower watts when fewer replicas of a better one fit the same watts (issue 11 item 6).
    largest = result.chosen.replicas if result.chosen is not None else request.max_replicas
    within: list[PlanResult] = [result] if result.chosen is not None and result.chosen.total_watts <= allocation else []
    smallest: PlanResult | None = None
    for replicas in range(max(request.min_replicas, 1), max(largest, request.min_replicas + 1)):
        smaller = _plan_once(replace(request, max_replicas=replicas), em)
        smallest = smallest or smaller
        if smaller.chosen is None or smaller.chosen.total_watts > allocation:
            break
        within.append(smaller)
    if within:
        return min(within, key=lambda r: (_utilisation(r.chosen), r.chosen.total_watts if r.chosen else 0.0))
    return smallest or result


def _stands(request: PlanRequest, result: PlanResult) -> bool:
    """Whether one search's answer is the plan; else ProtectBudget tries smaller fleets (`_plan`)."""
    allocation = request.allocation_watts
    return request.fallback != "ProtectBudget" or allocation is None or result.feasible or (
        result.chosen is not None and result.chosen.total_watts <= allocation and _has_capacity(result.chosen))


def _utilisation(c: Candidate | None) -> float:
    return c.prediction.utilisation if c is not None else math.inf


def _has_capacity(c: Candidate) -> bool:
    return c.prediction.utilisation < 1.0


def _check(request: PlanRequest) -> None:
    if not 0.5 <= request.request_share < 1.0:
        raise ValueError("request share must be in [0.5, 1)")
    if request.ttft_margin <= 0 or request.itl_margin <= 0:
        raise ValueError("latency margins must be > 0")
    if request.slo_basis == "requests" and request.latency_model != "queued":
        raise ValueError('slo_basis "requests" needs latency_model "queued"')
    if request.replay_rate_scale <= 0:
        raise ValueError("replay rate scale must be > 0")


def _verified_or_same(request: PlanRequest, result: PlanResult, em: EnergyModel) -> PlanResult:
    verified = _verified(request, result, em)
    assert verified is not None
    return verified


def _verified(request: PlanRequest, result: PlanResult, em: EnergyModel, chosen_only: bool = False,
              ) -> PlanResult | None:
    """Replay the cheapest feasible candidates on the recent arrivals; the cheapest that passes wins. With
    `chosen_only`, only `result.alternatives` (the chosen plan) are replayed, and None says that none passed."""
    from .verify import choose_verified  # verify imports this module's types

    pool = list(result.alternatives)
    chosen = result.chosen
    if chosen is not None and not chosen_only:
        # The chosen plan with one and two more replicas, for when the model was optimistic; their power is
        # bounded by scaling the chosen total (each replica then carries less).
        pool += [
            replace(chosen, replicas=chosen.replicas + k, total_watts=chosen.total_watts * (chosen.replicas + k)
                    / chosen.replicas)
            for k in (1, 2)
            if chosen.replicas + k <= request.max_replicas
        ]
    winner, outcomes = choose_verified(pool, request, em, prefer=chosen, tie=TIE_TOLERANCE)
    if winner is None:
        return result
    passed = bool(outcomes) and outcomes[-1].within_share >= request.request_share
    if chosen_only and not passed:
        return None
    if passed:
        verdict = f" Verified by replay: {outcomes[-1].describe()}."
    else:
        verdict = (
            f" No candidate kept {request.request_share:.0%} of the replayed requests within both thresholds; "
            f"chosen: the one with the most within ({winner.config.short()} x{winner.replicas})."
        )
    if chosen is not None and (winner.config != chosen.config or winner.replicas != chosen.replicas):
        verdict += f" The model alone would have chosen {chosen.describe()}."
    return replace(result, chosen=winner, reason=result.reason + verdict, verification=tuple(outcomes))


# Without the frontier, the queued model first solves the questions of the cheapest candidates, then twice as many
# each round, until no unsolved candidate could change the answer.
LAZY_FIRST_QUESTIONS = 64


def _plan_once(request: PlanRequest, em: EnergyModel, alternatives: bool = True) -> PlanResult:
    """One search. `alternatives`: fill `PlanResult.alternatives` for the replay (when the request has one)."""
    if request.workload.requests_per_second < 0:
        raise ValueError("request rate must be >= 0")
    grid, keys = _evaluate(request, em, lazy=True)
    queued = grid.queued
    if queued is None:
        return _select(request, em, grid, keys, math.inf, alternatives)[0]
    # Every answer is the least-power candidate of some set (`best`), so once the least power of the unsolved is
    # above an answer's tie band, no unsolved candidate can change it.
    watts = queued.final_watts() * grid.replicas * request.power_correction
    order = queued.question_order(watts)
    done, size = 0, LAZY_FIRST_QUESTIONS
    while True:
        queued.solve(order[done : done + size])
        done, size = done + size, size * 2
        pending = queued.pending_rows()
        next_watts = float(np.min(watts[pending])) if pending.size else math.inf
        result, certain = _select(request, em, grid, keys, next_watts, alternatives)
        if certain or pending.size == 0:
            return result


def within_both_share(ttft_miss_share: npt.ArrayLike, itl_miss_share: npt.ArrayLike) -> FloatArray:
    """The share of requests within both thresholds as the planner judges it: the two misses add (a union bound)."""
    return np.asarray(1.0 - np.minimum(np.asarray(ttft_miss_share) + np.asarray(itl_miss_share), 1.0), dtype=float)


def _select(request: PlanRequest, em: EnergyModel, grid: _Grid, keys: list[tuple[str, int, float | None]],
            unsolved_watts: float, with_alternatives: bool = True,
            rows: npt.NDArray[np.bool_] | None = None) -> tuple[PlanResult, bool]:
    """The plan from the grid's figures, and whether it is certain: False when a candidate not solved yet, the
    cheapest of them at `unsolved_watts`, could be the answer to one of its choices. `rows`: only these
    candidates are the request's (a grid evaluated for several, `_plan_grouped`)."""
    r = grid.result
    replicas = grid.replicas
    watts = r["watts"] * replicas * request.power_correction
    offered_tokens = max(request.workload.requests_per_second * request.workload.output_tokens, 1e-9)
    jpt = watts / offered_tokens
    itl = r["itl_p95"]
    ttft = r["ttft_p95"]
    queued = request.latency_model == "queued"
    tp = grid.features.tensor_parallel
    fits = r["max_batch"] >= 1.0
    # A replica set that cannot carry the load queues without bound: count it as a TTFT miss.
    has_capacity = r["utilisation"] < 1.0
    within_share: FloatArray | None = None
    if queued and request.slo_basis == "requests":
        # What is scored: at least request_share of requests within both thresholds. The misses of the two add
        # (a union bound); each threshold is charged with its own misses so that `binding` can tell them apart.
        allowed = 1.0 - request.request_share
        ttft_miss = r["ttft_miss_share"]
        itl_miss = r["itl_miss_share"]
        if request.miss_scale != 1.0:
            # A fleet that cannot carry the load misses all its requests, whatever the tail.
            ttft_miss = np.minimum(ttft_miss * np.where(has_capacity, request.miss_scale, 1.0), 1.0)
            itl_miss = np.minimum(itl_miss * request.miss_scale, 1.0)
        within_share = within_both_share(ttft_miss, itl_miss)
        meets_ttft = (ttft_miss <= allowed) & (ttft_miss + itl_miss <= allowed) & has_capacity
        meets_itl = itl_miss <= allowed
    else:
        meets_ttft = (ttft * request.ttft_margin <= request.slo_ttft_p95_seconds) & has_capacity
        meets_itl = itl * request.itl_margin <= request.slo_itl_p95_seconds
    chunk_ok = np.ones_like(fits)
    if queued and request.chunk_budget_within_itl:
        # One step carrying a full chunk beside the planned batch must itself stay within the ITL SLO.
        chunk_ok = r["chunk_step_seconds"] * request.itl_margin <= request.slo_itl_p95_seconds
        meets_itl &= chunk_ok
    within_gpus = np.ones_like(fits) if request.max_gpus is None else (replicas * tp <= request.max_gpus)
    if rows is not None:
        # Every choice below is among candidates within the GPUs (fits, capacity and SLO are each ANDed with it):
        # another request's candidates are simply outside.
        within_gpus = within_gpus & rows
    within_power = np.ones_like(fits) if request.allocation_watts is None else (watts <= request.allocation_watts)
    base_ok = fits & within_gpus & has_capacity
    slo_ok = meets_ttft & meets_itl
    feasible = base_ok & slo_ok & within_power

    # Ties (max-num-seqs above the steady batch changes nothing at the planned load): within 0.5% of the least
    # power, prefer fewer GPUs, then the largest max-num-seqs (headroom: a burst queues behind a small limit, and
    # a queue forces a restart), then lower latency.

    uncertain = False

    def best(mask: npt.NDArray[np.bool_]) -> int | None:
        nonlocal uncertain
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            uncertain = uncertain or unsolved_watts < math.inf
            return None
        least = float(np.min(watts[idx]))
        uncertain = uncertain or unsolved_watts <= least * (1.0 + TIE_TOLERANCE)
        near = idx[watts[idx] <= least * (1.0 + TIE_TOLERANCE)]
        # The chunk rule already bounds the ITL: among ties the largest budget prefills fastest (TTFT headroom).
        chunk_rule = queued and request.chunk_budget_within_itl
        # Python's min keeps the first of equal keys, as a stable sort would; `near` holds a few dozen at most.
        return int(min(near, key=lambda i: _tie_key(float(replicas[i] * tp[i]), float(grid.seqs[i]),
                                                    float(grid.batched[i]), float(itl[i]), chunk_rule)))

    def candidate(i: int) -> Candidate:
        p, tpi, limit = keys[int(grid.base_index[i])]
        config = ServingConfig(
            precision=p,
            tensor_parallel=tpi,
            max_num_seqs=int(grid.seqs[i]),
            max_num_batched_tokens=int(grid.batched[i]),
            gpu_power_limit_watts=limit,
        )
        return Candidate(
            config=config,
            replicas=int(replicas[i]),
            prediction=_prediction(grid, i, request),
            total_watts=float(watts[i]),
            joules_per_token=float(jpt[i]),
            ttft_p95_seconds=float(ttft[i]),
            itl_p95_seconds=float(itl[i]),
            meets_ttft=bool(meets_ttft[i]),
            meets_itl=bool(meets_itl[i]),
            fits_memory=bool(fits[i]),
            within_power=bool(within_power[i]),
            within_gpus=bool(within_gpus[i]),
            predicted_within_share=float(within_share[i]) if within_share is not None else None,
        )

    chosen_i = best(feasible)
    if uncertain:  # an unsolved candidate may be cheaper, or the only feasible one
        return PlanResult(None, None, "none", False, "", evaluated=len(replicas)), False
    binding: Binding
    chosen: Candidate | None
    runner: Candidate | None
    if chosen_i is not None:
        binding = _binding(best, chosen_i, fits, within_gpus, has_capacity, slo_ok, meets_itl, within_power)
        chosen = candidate(chosen_i)
        if request.profile and not grid.measured[chosen_i]:
            chosen = _with_profile(chosen, request, em)
        runner_i = _runner_up(best, feasible, grid, chosen_i, keys, replicas)
        runner = candidate(runner_i) if runner_i is not None else None
        reason = _explain(chosen, runner, binding, request) + _measured_note(grid, chosen_i, runner_i)
        is_feasible = True
    else:
        chosen_i, binding, reason = _fallback(request, best, base_ok, slo_ok, within_power, meets_itl, ttft, itl,
                                              fits & within_gpus, r["utilisation"], within_share, watts)
        chosen = candidate(chosen_i) if chosen_i is not None else None
        runner = None
        is_feasible = False
        if chosen is not None:
            reason += f" Chosen instead: {chosen.describe()}."
    frontier: tuple[Candidate, ...] = ()
    if request.frontier:
        front_pool = [int(i) for i in np.flatnonzero(base_ok & meets_ttft)]
        frontier = tuple(candidate(i) for i in _pareto(front_pool, jpt, itl))
    alternatives: tuple[Candidate, ...] = ()
    if with_alternatives and request.replay is not None and is_feasible and request.verify_candidates > 0:
        pool_mask = feasible
        if request.verify_relaxed_share is not None and within_share is not None and chosen_i is not None:
            # Let the replay judge cheaper plans the model doubts a little (predicted share within both at least
            # verify_relaxed_share): the model is conservative on grouped arrivals, the replay sees them as they
            # came.
            doubted = base_ok & within_power & chunk_ok & (within_share >= request.verify_relaxed_share)
            pool_mask = feasible | (doubted & (watts < watts[chosen_i]))
        alternatives = tuple(candidate(i) for i in _cheapest_distinct(pool_mask, watts, grid, keys,
                                                                      request.verify_candidates, best))
    return PlanResult(
        chosen=chosen,
        runner_up=runner,
        binding=binding,
        feasible=is_feasible,
        reason=reason,
        candidates=frontier,
        evaluated=len(replicas) if rows is None else int(np.count_nonzero(rows)),
        alternatives=alternatives,
    ), not uncertain


def _tie_key(gpus: float, max_num_seqs: float, max_num_batched_tokens: float, itl_p95_seconds: float,
             chunk_rule: bool) -> tuple[float, float, float, float]:
    """The order among plans within TIE_TOLERANCE of the least power: fewer GPUs, the largest max-num-seqs, with
    the chunk rule the largest chunk budget, then the lowest ITL p95. One rule for the planner's own ties (`best`
    in `_plan_once`) and for the control core's ties across searches (`tie_order`)."""
    return gpus, -max_num_seqs, -max_num_batched_tokens if chunk_rule else 0.0, itl_p95_seconds


def tie_order(c: Candidate, chunk_rule: bool) -> tuple[float, ...]:
    """`_tie_key` of a candidate: the order among plans within TIE_TOLERANCE of the least power, as `plan` breaks
    its ties."""
    return _tie_key(float(c.gpus), float(c.config.max_num_seqs), float(c.config.max_num_batched_tokens),
                    c.itl_p95_seconds, chunk_rule)


def _cheapest_distinct(
    feasible: npt.NDArray[np.bool_],
    watts: FloatArray,
    grid: _Grid,
    keys: list[tuple[str, int, float | None]],
    count: int,
    best: Any,
) -> list[int]:
    """Up to `count` feasible candidates by power, each the tie-broken best of its (precision, TP, GPU power limit,
    replicas): max-num-seqs and the chunk budget alone rarely change what a replay shows."""
    mask = feasible.copy()
    out: list[int] = []
    while len(out) < count:
        i = best(mask)  # None when none is left (`best` then tells `_select` whether an unsolved one could be)
        if i is None:
            break
        out.append(i)
        same = (grid.base_index == grid.base_index[i]) & (grid.replicas == grid.replicas[i])
        mask &= ~same
    return out


def _prediction(grid: _Grid, i: int, request: PlanRequest) -> ReplicaPrediction:
    r = grid.result
    wl = request.workload
    tokens = float(r["tokens_per_second"][i])
    w = float(r["watts"][i]) * request.power_correction
    return ReplicaPrediction(
        batch_size=float(r["batch"][i]),
        output_tokens_per_second=tokens,
        watts=w,
        joules_per_token=w / max(tokens, 1e-12),
        joules_per_request=w / max(tokens, 1e-12) * wl.output_tokens,
        itl_p50_seconds=float(r["itl_p50"][i]),
        itl_p90_seconds=float(r["itl_p90"][i]),
        itl_p95_seconds=float(r["itl_p95"][i]),
        ttft_p95_seconds=float(r["ttft_p95"][i]),
        fits_memory=bool(r["max_batch"][i] >= 1.0),
        kv_cache_tokens=int(r["kv_capacity_tokens"][i]),
        utilisation=float(r["utilisation"][i]),
        source="profile" if grid.measured[i] else "model",
    )


def _measured_note(grid: _Grid, chosen_i: int, runner_i: int | None) -> str:
    """Say in the plan's reason where its figures come from (status.plan.reason)."""
    if not grid.measured.any():
        return ""
    covered = int(grid.measured.sum())
    text = f" Measured profile points cover {covered} of {grid.measured.size} candidates"
    text += "; the chosen plan's figures are measured" if grid.measured[chosen_i] else \
        "; the chosen plan's figures are modelled (no measured point covers it)"
    if runner_i is not None:
        text += ", the runner-up's " + ("measured" if grid.measured[runner_i] else "modelled")
    return text + "."


def _with_profile(c: Candidate, request: PlanRequest, em: EnergyModel) -> Candidate:
    """Re-predict the chosen plan with measured profile points where they cover it."""
    accelerator = get_accelerator(request.accelerator)
    wl = request.workload
    rate = Workload(wl.requests_per_second / c.replicas, wl.input_tokens, wl.output_tokens)
    pred = em.predict(request.model, accelerator, c.config, rate, profile=request.profile)
    if pred.source != "profile":
        return c
    total = pred.watts * c.replicas * request.power_correction
    return Candidate(
        config=c.config,
        replicas=c.replicas,
        prediction=pred,
        total_watts=total,
        joules_per_token=total / max(wl.requests_per_second * wl.output_tokens, 1e-9),
        ttft_p95_seconds=c.ttft_p95_seconds,
        itl_p95_seconds=pred.itl_p95_seconds,
        meets_ttft=c.meets_ttft,
        meets_itl=pred.itl_p95_seconds <= request.slo_itl_p95_seconds,
        fits_memory=c.fits_memory,
        within_power=c.within_power,
        within_gpus=c.within_gpus,
    )


def _binding(
    best: Any,
    chosen_i: int,
    fits: npt.NDArray[np.bool_],
    within_gpus: npt.NDArray[np.bool_],
    has_capacity: npt.NDArray[np.bool_],
    slo_ok: npt.NDArray[np.bool_],
    meets_itl: npt.NDArray[np.bool_],
    within_power: npt.NDArray[np.bool_],
) -> Binding:
    """Which constraint moved the optimum: compare the best plan as constraints are added one by one."""
    any_size = best(has_capacity & within_gpus)
    with_memory = best(has_capacity & within_gpus & fits)
    with_slo = best(has_capacity & within_gpus & fits & slo_ok)
    if with_slo is not None and with_slo != chosen_i and not within_power[with_slo]:
        return "power"
    if with_memory is not None and with_memory != with_slo and not slo_ok[with_memory]:
        return "slo-itl" if not meets_itl[with_memory] else "slo-ttft"
    if any_size is not None and any_size != with_memory and not fits[any_size]:
        return "memory"
    return "none"


def _runner_up(
    best: Any,
    feasible: npt.NDArray[np.bool_],
    grid: _Grid,
    chosen_i: int,
    keys: list[tuple[str, int, float | None]],
    replicas: FloatArray,
) -> int | None:
    """The best feasible plan that differs in precision, TP or replicas (max-num-seqs alone often ties)."""
    p, tp, limit = keys[int(grid.base_index[chosen_i])]
    # Per base row, then spread over the candidates (keys may repeat, so compare them, not the indices).
    same_key = np.array([k[0] == p and k[1] == tp and k[2] == limit for k in keys], dtype=bool)
    same = same_key[grid.base_index]
    other = feasible & ~(same & (replicas == replicas[chosen_i]))
    return best(other)


def _explain(chosen: Candidate, runner: Candidate | None, binding: Binding, request: PlanRequest) -> str:
    text = f"Least energy meeting the SLOs: {chosen.describe()}."
    limits = {
        "slo-ttft": f"the TTFT SLO ({request.slo_ttft_p95_seconds:g} s p95) rules out cheaper plans",
        "slo-itl": f"the ITL SLO ({request.slo_itl_p95_seconds * 1000:g} ms p95) rules out cheaper plans",
        "power": f"the power allocation ({request.allocation_watts or 0:.0f} W) rules out cheaper-per-token plans",
        "memory": "GPU memory rules out plans on fewer GPUs",
        "none": "no constraint binds",
    }
    text += f" Binding: {limits[binding]}."
    if runner is not None:
        extra = runner.total_watts - chosen.total_watts
        pct = extra / max(chosen.total_watts, 1e-9) * 100
        text += f" Runner-up: {runner.describe()} (+{extra:.0f} W, +{pct:.1f}%)."
    return text


def _fallback(
    request: PlanRequest,
    best: Any,
    base_ok: npt.NDArray[np.bool_],
    slo_ok: npt.NDArray[np.bool_],
    within_power: npt.NDArray[np.bool_],
    meets_itl: npt.NDArray[np.bool_],
    ttft: FloatArray,
    itl: FloatArray,
    placeable: npt.NDArray[np.bool_] | None = None,
    utilisation: FloatArray | None = None,
    within_share: FloatArray | None = None,
    watts: FloatArray | None = None,
) -> tuple[int | None, Binding, str]:
    """Nothing meets everything: protect the SLO (exceed the allocation) or the budget (miss the SLO), as declared."""
    violation = np.maximum(ttft * request.ttft_margin / request.slo_ttft_p95_seconds,
                           itl * request.itl_margin / request.slo_itl_p95_seconds)
    if within_share is not None:
        # What is scored: the share of requests missed, in multiples of the share allowed to miss.
        violation = (1.0 - within_share) / max(1.0 - request.request_share, 1e-9)
    slo_possible = base_ok & slo_ok
    if request.fallback == "ProtectSLO" and slo_possible.any():
        i = best(slo_possible)
        return (
            i,
            "power",
            (
                f"No plan meets the SLOs within {request.allocation_watts or 0:.0f} W; fallback ProtectSLO exceeds the "
                "power allocation with the least-energy plan that meets the SLOs."
            ),
        )
    # ProtectBudget serves what fits even when no fleet within max replicas carries the whole load (above ~20
    # req/s for a 70B on 8 replicas): returning no plan there left the service unplanned and its budget floor 0 W.
    serve_what_fits = request.fallback == "ProtectBudget" and placeable is not None and bool(placeable.any())
    if not base_ok.any() and not serve_what_fits:
        return (
            None,
            "memory",
            (
                "No plan fits: the model does not fit in GPU memory, or the load exceeds what the allowed GPUs and "
                "replicas can carry."
            ),
        )
    if request.fallback == "ProtectBudget" and not (base_ok & within_power).any() and placeable is not None \
            and utilisation is not None and (placeable & within_power).any():
        # No plan with room for the whole load fits the watts. Protecting the budget means serving what fits:
        # among the plans within the watts, the one with the most capacity (the rest of the load queues).
        idx = np.flatnonzero(placeable & within_power)
        i = int(idx[np.argmin(utilisation[idx])])
        return (
            i,
            "power",
            (
                f"No plan carries the load within {request.allocation_watts or 0:.0f} W; fallback ProtectBudget serves "
                f"what fits (the load planned for, at its busiest burst level, asks {utilisation[i] * 100:.0f}% of "
                "its capacity) and is predicted to miss the SLO."
            ),
        )
    if request.fallback == "ProtectBudget" and not (base_ok & within_power).any():
        # Even the cheapest plan exceeds the cap: come as close to the budget as possible, with room for the load
        # or without (the smallest fleet that fits in memory draws the least).
        i = best(placeable) if placeable is not None and placeable.any() else best(base_ok)
        return (
            i,
            "power",
            (
                f"No plan fits within {request.allocation_watts or 0:.0f} W; fallback ProtectBudget runs the plan with "
                "the least power."
            ),
        )
    pool = base_ok & within_power if request.fallback == "ProtectBudget" else base_ok
    idx = np.flatnonzero(pool)
    i = int(idx[np.argmin(violation[idx])])
    if watts is not None:
        # Misses within 10% of the least are ties: the least watts among them, not a fleet many times larger
        # for a sliver less (a model that misses everywhere would otherwise buy the largest fleet it may).
        near = idx[violation[idx] <= violation[i] * FALLBACK_TIE + 1e-9]
        i = int(near[np.argmin(watts[near])])
    binding: Binding = "slo-itl" if not meets_itl[i] else "slo-ttft"
    if request.fallback == "ProtectBudget" and request.allocation_watts is not None and slo_possible.any():
        binding = "power"
        why = f"No plan meets the SLOs within {request.allocation_watts:.0f} W; fallback ProtectBudget keeps the cap"
    else:
        why = "No plan meets the SLOs with the allowed precisions, GPUs and replicas"
    return i, binding, why + f" and misses the SLO by the least ({violation[i]:.2f}x the target)."


def observed_request(
    request: PlanRequest,
    load: LoadEstimate,
    margin: LatencyMargin | None = None,
    sample: ArrivalSample | None = None,
    request_share: float = 0.99,
) -> PlanRequest:
    """`request` with issue 11's opt-ins filled from telemetry: the queued latency model at the load estimate
    (`queued_rate`, token distribution, dispersion, rate levels), at least `request_share` of requests within
    both thresholds, the chunk-budget rule, the learned margin's factors, and verification on `sample`."""
    wl = request.workload
    return replace(
        request,
        workload=Workload(
            load.queued_rate,
            load.mean_prompt_tokens if load.mean_prompt_tokens is not None else wl.input_tokens,
            load.mean_output_tokens if load.mean_output_tokens is not None else wl.output_tokens,
        ),
        latency_model="queued",
        tokens=load.tokens,
        rate_levels=load.rate_levels,
        arrival_dispersion=load.arrival_dispersion,
        slo_basis="requests",
        request_share=request_share,
        chunk_budget_within_itl=True,
        ttft_margin=margin.ttft_factor() if margin is not None else request.ttft_margin,
        itl_margin=margin.itl_factor() if margin is not None else request.itl_margin,
        replay=sample,
        replay_rate_scale=load.growth_factor,
    )


def minimum_watts_for_slo(request: PlanRequest, energy_model: EnergyModel | None = None) -> float | None:
    """The least watts with which the service meets its SLOs (no power cap); None when no plan meets them."""
    uncapped = PlanRequest(**{**request.__dict__, "allocation_watts": None})
    result = plan(uncapped, energy_model)
    return result.chosen.total_watts if result.feasible and result.chosen else None

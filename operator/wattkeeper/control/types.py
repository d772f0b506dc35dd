"""The core's value types: what one tick of the control loop reads and what it decides.

Plain frozen dataclasses in the planner's units. The operator maps its Kubernetes objects onto them
(`controller/`), the benchmark maps its simulated fleet onto them (`bench/wattkeeper_policy.py`); the core itself
knows neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..energy.model import ProfilePointLike
from ..energy.types import ModelShape, Plan, Workload
from ..planner import Candidate, PlanResult
from ..planner import LoadEstimate as PlannerLoad

__all__ = ["Plan"]  # re-exported: the core's plans are energy.types.Plan

Fallback = Literal["ProtectBudget", "ProtectSLO"]
Action = Literal["Applied", "Held", "Unchanged", "Rejected"]
LoadSource = Literal["measured", "held", "spec"]


@dataclass(frozen=True)
class ServiceIntent:
    """What the user asked of one service (an LLMService's spec, or the benchmark's)."""

    model: ModelShape
    accelerator: str
    allowed_precisions: tuple[str, ...]
    slo_ttft_p95_seconds: float
    slo_itl_p95_seconds: float
    min_replicas: int = 1
    max_replicas: int = 64
    max_tensor_parallel: int = 8
    max_gpus: int | None = None
    fallback: Fallback = "ProtectBudget"
    gpu_memory_utilization: float = 0.9
    default_workload: Workload = field(default_factory=lambda: Workload(1.0))  # until load is measured
    cooldown_seconds: float = 300.0
    horizon_seconds: float = 3600.0
    allow_disruptive: bool = True  # precision and TP may change
    pinned: Plan | None = None  # Pinned mode: serve this as written, only measure
    profile: Sequence[ProfilePointLike] = ()
    # GPU power limits the planner may choose (None: the card's default); more than the default only where the
    # node agent applies them (operator --power-limits; energy/powerlimit.py `limit_options_watts`).
    gpu_power_limits_watts: tuple[float | None, ...] = (None,)


@dataclass(frozen=True)
class Signals:
    """What telemetry showed over the trailing window, summed over the service's pods.

    `finished_requests_per_second` counts requests that completed (vllm:request_success_total), not arrivals: a
    saturated fleet finishes fewer than arrive, and the queue (`waiting_requests`, averaged over the window) says
    how many more there were."""

    window_seconds: float
    watts: float
    finished_requests_per_second: float | None = None
    waiting_requests: float | None = None
    running_requests: float | None = None
    # The queue's growth over the window (requests/s; the waiting gauge's slope), where telemetry has it: what
    # arrived beyond what finished. None: `offered_rate` counts the mean queue as grown within the window.
    waiting_growth_per_second: float | None = None
    mean_input_tokens: float | None = None
    mean_output_tokens: float | None = None
    ttft_p95_seconds: float | None = None
    itl_p95_seconds: float | None = None  # over token gaps (vllm:inter_token_latency_seconds)
    # Over requests: the p95 of each finished request's mean inter-token latency
    # (vllm:request_time_per_output_token_seconds, vLLM 0.11.1 v1/metrics/loggers.py:802, observed once per
    # finished request with its mean_time_per_output_token at :1080). What a user feels and what the ITL SLO is
    # scored on; a gap p95 jumps to the length of a chunk-carrying step as soon as 5% of gaps fall in one.
    # Shown in status (observed.requestItlP95Seconds); the tick still judges misses and learns margins on the gap
    # p95: a request's mean is known only when it finishes, so under a backlog the finished ones look fine while
    # the queue grows (tried as the control signal, bench/README.md "Run of 2026-12-05").
    request_itl_p95_seconds: float | None = None
    # Bursts and token distributions (issue 11 item 1), where telemetry carries them; absent, the load planned for
    # is the stabilised window rate, as before. `arrival_counts`: requests per `arrival_resolution_seconds` bin
    # over the recent history, oldest first (a counter read at fine resolution); `burst_requests_per_second`: the
    # 95th percentile of short-window rates over that history (PromQL quantile_over_time), used when no counts
    # come; the token samples: observed prompt and output lengths (a sample, or a histogram's quantiles).
    arrival_counts: tuple[float, ...] = ()
    arrival_resolution_seconds: float | None = None
    burst_requests_per_second: float | None = None
    prompt_tokens_sample: tuple[float, ...] = ()
    output_tokens_sample: tuple[float, ...] = ()
    # Requests over each SLO over the window, and how many were measured: TTFTs observed over the TTFT SLO
    # (vllm:time_to_first_token_seconds buckets) and finished requests whose mean ITL exceeded the ITL SLO
    # (vllm:request_time_per_output_token_seconds buckets). `control/tail.py` learns the model's tail from them.
    ttft_misses: float | None = None
    ttft_observed: float | None = None
    itl_misses: float | None = None
    itl_observed: float | None = None


@dataclass(frozen=True)
class FleetState:
    """What runs: the rollout of the service's pods as the orchestrator reports it."""

    exists: bool = False
    matches_plan: bool = True  # the running pods are the remembered plan (no drift by hand)
    replicas: int = 0
    ready_replicas: int = 0
    rolling: bool = False  # a roll in progress, or old pods still draining


@dataclass(frozen=True)
class RecentConfiguration:
    """A configuration the service left (restarted away from): returning to it within `RECENT_SECONDS` is a flap
    (A -> B -> A) unless the budget or the spec changed since (issue 11 item 5), or the load moved by a capacity
    step (what was left for a load that is gone can be the best plan for the one that came); a capacity restart
    into a cap's fallback (predicted to miss the SLO) never returns within `RECENT_SECONDS` (switching.py)."""

    configuration: str  # switching.configuration_key: precision, TP, KV-cache dtype
    left_at_s: float
    allocation_watts: float | None = None  # the enforced allocation when it was left
    load_rps: float | None = None  # the load planned for when it was left
    # In Memory.canaries_ended: the canary failed (its requests missed the SLO, or its margin exceeded the untried
    # prior); its configuration is not planned for within the service's horizon (`control/canary.py failed`).
    failed: bool = False


@dataclass(frozen=True)
class ConfigMargin:
    """The learned latency margin of one configuration (measured over the queued model's prediction, while it ran):
    the model's error differs by precision and TP (a prefill slower than modelled on one, say) and by chunk budget
    (the long chunk-carrying steps), so a margin learned on one configuration is not applied to another as it is
    (control/tick.py `margin_of`)."""

    configuration: str  # tick.margin_key: precision, TP, KV-cache dtype, chunk budget (older keys: no budget)
    ttft: float
    itl: float
    # The most requests a second per replica it was learned at (the rate served over its windows): queueing error
    # grows with utilisation, so beyond that the margin is an extrapolation (tick.beyond_learned_load).
    rps_per_replica: float | None = None


@dataclass(frozen=True)
class Canary:
    """One replica of an untried configuration serving beside the fleet, its share of the traffic measured on its
    own pods, so that its latency margin is learned before any restart trusts it (`control/canary.py`)."""

    plan: Plan  # one replica
    started_s: float
    ready_s: float | None = None  # when a tick first saw it serve
    windows: int = 0  # telemetry windows measured so far


@dataclass(frozen=True)
class ShortFleet:
    """A fleet measured short: the running plan (its vLLM arguments, `short_key`, and replicas) was settled, under
    pressure as measured, and a capacity move left it. Within `RECENT_SECONDS` no saving goes back to as few
    replicas of those arguments while the rate served is not a capacity step below the rate it served then
    (`control/restart_free.py measured_short`): a measurement of it outweighs the model that plans it again."""

    configuration: str  # restart_free.short_key: the vLLM arguments, without the GPU power limit
    replicas: int
    at_s: float
    load_rps: float  # the rate it served over the window it was measured short in (tick.window_rate)
    allocation_watts: float | None = None


@dataclass(frozen=True)
class Memory:
    """What the core remembers between ticks (the operator keeps it in status, the benchmark in the policy).

    Figures are rounded to what status keeps, so a round trip through the API server changes nothing."""

    running: Plan | None = None
    last_applied_s: float | None = None
    planned_load: Workload | None = None
    peak_load_rps: float | None = None
    peak_load_at_s: float | None = None
    # The part of `peak_load_rps` a trend forecast rather than measured: dropped once the time it forecast has come
    # and the rate did not follow (`control/load.py estimate_load`).
    peak_forecast_rps: float = 0.0
    power_correction: float = 1.0
    ttft_correction: float = 1.0
    itl_correction: float = 1.0
    recent_configurations: tuple[RecentConfiguration, ...] = ()
    # Learned margins per configuration, most recent last; `ttft_correction`/`itl_correction` are the running one's.
    margins: tuple[ConfigMargin, ...] = ()
    # The last change's rollout: awaited from the apply until a tick sees the fleet no longer rolling, at
    # `rolled_out_s`; the running plan is judged one settle time after that (`control/tick.py running_settled`).
    awaiting_rollout: bool = False
    rolled_out_s: float | None = None
    # The running plan's GPU power limit while it is lifted on the running pods to bridge a scale-up
    # (`control/tick.py bridge`); None when the plan's own limit applies.
    bridged_limit_watts: float | None = None
    # When the running streak of SLO misses measured with a queue began (`control/tick.py missed_since`).
    missed_since_s: float | None = None
    # The canary running beside the fleet (`control/canary.py`), and the configurations canaried lately
    # (`configuration`: tick.margin_key; `left_at_s`: when the canary ended): not canaried again within the
    # service's horizon.
    canary: Canary | None = None
    canaries_ended: tuple[RecentConfiguration, ...] = ()
    # The model's tail (`control/tail.py`): requests measured over an SLO and those the model predicted for the
    # same windows, both decayed; their ratio scales the predicted shares of misses.
    tail_measured_misses: float = 0.0
    tail_predicted_misses: float = 0.0
    # Fleets measured short lately (`ShortFleet`), most recent last.
    measured_short: tuple[ShortFleet, ...] = ()
    # The most rate the running plan was measured to carry, settled, with room (`control/tick.py carried_rps`);
    # None until it was, and again after every change.
    carried_rps: float | None = None


@dataclass(frozen=True)
class Tuning:
    """How the online corrections move, and what the plans aim at (operator settings)."""

    power_correction_smoothing: float = 0.3
    power_correction_bounds: tuple[float, float] = (0.5, 2.0)
    latency_correction_bounds: tuple[float, float] = (0.5, 5.0)
    # What is scored (issue 11 item 4): the queued latency model, and at least `request_share` of requests within
    # both thresholds; "steady" plans p95 latencies with the steady model, as before.
    latency_model: Literal["queued", "steady"] = "queued"
    request_share: float = 0.99
    # The learned margin's range with the queued model: it multiplies predictions (1 = the model as it is); the
    # model is within 2x of the simulation on every family (bench/README.md, "Latency model vs simulation").
    latency_margin_bounds: tuple[float, float] = (0.8, 5.0)
    # The margin of a precision nothing was measured of yet (a cold start, or a precision not run before): the
    # calibrated model's own error, not a learned one. Its step-time p90 error is 55% in sample
    # (bench/groundtruth.py `hidden_sigmas`: log-normal sigma 0.27), so at the 99% planned for a prediction may be
    # e^(2.33 x 0.27) = 1.9x short: plan with 2x until the running plan has been measured. 1.0 trusts the model.
    unmeasured_margin: float = 2.0
    # Verify before rollout (issue 11 item 3): where telemetry carries arrival counts and token lengths, the
    # tick's search replays its cheapest candidates on arrivals synthesised from them (planner/load.py
    # `synthesised_sample`), and the cheapest verified one wins. Off by default: on the benchmark it cost energy
    # (plain 23.60 -> 23.98 kWh, capped 20.49 -> 20.71 kWh) for no criterion met (bench/README.md).
    verify_by_replay: bool = False
    # Learn the model's tail from the requests measured over the SLOs (`control/tail.py`).
    learn_tail: bool = True
    # With it, the replay also judges cheaper plans the model doubts a little (predicted share within both at
    # least this; None: only plans the model finds feasible). 0.95 cost more still (24.09 / 20.69 kWh).
    verify_relaxed_share: float | None = None
    # Canaries (`control/canary.py`): where the model says an untried configuration would save enough, one replica
    # of it serves beside the fleet until its own margin is learned. Off by default: on the benchmark's one-hour
    # traces a canary cost more than it found (plain 23.205 -> 23.529 kWh, bench/README.md "Canaries"); without
    # one an untried configuration carries the prior until the fleet itself restarts into it.
    canaries: bool = False
    # Per-request routing (planner/search.py PlanRequest.per_request_routing): each replica is planned for its
    # random share of a cluster of arrivals, not the whole cluster. Off by default: the Service the operator
    # renders balances connections, and on the benchmark's bursty family it kept two seeds below 99% (bench/README.md,
    # "Per-request routing").
    per_request_routing: bool = False


@dataclass(frozen=True)
class TickInputs:
    intent: ServiceIntent
    memory: Memory
    signals: Signals | None  # None: telemetry showed nothing usable (silence is not zero)
    fleet: FleetState
    now_s: float
    spec_changed: bool = False
    allocation_watts: float | None = None  # enforced: the tightest Enforce budget's share for this service
    advised_allocation_watts: float | None = None  # from an Advise budget: recorded, never enforced
    settle_seconds: float = 90.0  # see `settle_seconds()`
    tuning: Tuning = field(default_factory=Tuning)
    # The canary's own pods (`control/canary.py`): what telemetry showed of them over the window, and their rollout.
    # `signals` and `fleet` are the fleet's pods only.
    canary_signals: Signals | None = None
    canary_fleet: FleetState = field(default_factory=FleetState)


@dataclass(frozen=True)
class LoadEstimate:
    workload: Workload
    source: LoadSource
    peak_load_rps: float | None
    peak_load_at_s: float | None
    # The planner's view of the bursts (rate levels, clustering, token distribution, trend) when telemetry carried
    # them; None plans for `workload` as Poisson.
    bursts: PlannerLoad | None = None
    peak_forecast_rps: float = 0.0  # Memory.peak_forecast_rps


@dataclass(frozen=True)
class Verdict:
    """The switching rule's answer: what to do, which branch said so (`cause`), and why, in words."""

    action: Action
    cause: str
    reason: str
    apply: Plan | None = None


@dataclass(frozen=True)
class TickDecision:
    action: Action
    cause: str  # the branch of the switching rule (see control/switching.py), or "no-plan"
    reason: str
    apply: Plan | None  # what to roll out now; None leaves the fleet as it is
    proposed: Plan | None  # what the planner proposed at this load
    candidate: Candidate | None  # the planner's figures for the proposal
    result: PlanResult | None  # the whole search (None in Pinned mode)
    load: LoadEstimate
    memory: Memory  # to remember for the next tick
    surge: bool  # roll with one extra replica (only when it fits under the allocation)
    advised: Plan | None = None  # what an Advise budget would move to (never applied)
    canary: Plan | None = None  # what runs beside the fleet (one replica), None: no canary (remove one that runs)
    canary_reason: str = ""  # why the canary started, runs or ended this tick ("" when nothing changed)

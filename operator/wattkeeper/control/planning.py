"""The planner's question for a service, and the planner's figures for one plan."""

from __future__ import annotations

import math
from dataclasses import replace

from ..energy.model import EnergyModel
from ..energy.types import Workload
from ..planner import Candidate, PlanRequest, plan
from ..planner import LoadEstimate as PlannerLoad
from .types import Plan, ServiceIntent, Tuning

# Plans aim this far under an allocation: the power correction moves by a few percent when a new configuration
# is first measured, and a plan right at the allocation is then cut again (a restart per swing).
POWER_HEADROOM = 0.04


def planned_watts(allocation_watts: float | None) -> float | None:
    """What a service's tick lets its plan draw under an allocation."""
    return allocation_watts * (1.0 - POWER_HEADROOM) if allocation_watts is not None else None


def allocation_for(plan_watts: float) -> float:
    """The allocation under which a tick can run a plan of `plan_watts` (the inverse of `planned_watts`): what a
    budget must hand a service for the plan it counts on."""
    return plan_watts / (1.0 - POWER_HEADROOM)


def significant(value: float | None, digits: int = 3) -> float | None:
    """Round to significant digits, so that measurement noise neither looks like a new load nor rewrites status."""
    if value is None or not math.isfinite(value):
        return None
    if value == 0:
        return 0.0
    return round(value, -math.floor(math.log10(abs(value))) + (digits - 1))


def plan_request(
    intent: ServiceIntent,
    workload: Workload,
    allocation_watts: float | None,
    power_correction: float = 1.0,
    latency_correction: tuple[float, float] = (1.0, 1.0),
    only: Plan | None = None,
) -> PlanRequest:
    """The planner's question. `only` keeps the precision and TP of a running plan (disruptive changes off).
    `latency_correction` (TTFT, ITL) is measured over predicted p95 latency: the planner aims at the SLO divided
    by it, so a model that proved optimistic plans more headroom."""
    allowed = intent.allowed_precisions
    request = PlanRequest(
        model=intent.model,
        accelerator=intent.accelerator,
        allowed_precisions=tuple(allowed),
        slo_ttft_p95_seconds=intent.slo_ttft_p95_seconds / latency_correction[0],
        slo_itl_p95_seconds=intent.slo_itl_p95_seconds / latency_correction[1],
        min_replicas=intent.min_replicas,
        max_replicas=intent.max_replicas,
        max_tensor_parallel=intent.max_tensor_parallel,
        max_gpus=intent.max_gpus,
        workload=workload,
        allocation_watts=allocation_watts,
        fallback=intent.fallback,
        power_correction=power_correction,
        profile=tuple(intent.profile) if intent.profile else None,
        gpu_memory_utilization=intent.gpu_memory_utilization,
        gpu_power_limits_watts=intent.gpu_power_limits_watts,
        frontier=False,  # never read by the control core; without it the queued model is solved lazily
    )
    if only is not None:
        request = replace(request, allowed_precisions=(only.config.precision,),
                          tensor_parallel_options=(only.config.tensor_parallel,))
    return request


# Below this ITL SLO the plans keep every full-chunk step within it (PlanRequest.chunk_budget_within_itl).
TIGHT_ITL_SECONDS = 0.05


def scored(request: PlanRequest, intent: ServiceIntent, tuning: Tuning, load: PlannerLoad | None = None,
           margin: tuple[float, float] = (1.0, 1.0)) -> PlanRequest:
    """`request` asked as the tick asks it (Tuning.latency_model "queued", issue 11 items 1 and 4): what is scored,
    the queued latency model at the load's bursts and token distribution (`load`; None: Poisson arrivals at the
    mean lengths), at least `request_share` of requests within both thresholds, with the latency `margin` (TTFT,
    ITL) on the predictions. With the "steady" model the request is returned as it is. The budget asks its
    services' demands the same way, so that the least watts it hands a service are what the service's own tick
    needs for its SLO."""
    if tuning.latency_model != "queued":
        return request
    return replace(
        request,
        latency_model="queued",
        slo_basis="requests",
        request_share=tuning.request_share,
        # The chunk-budget rule (every full-chunk step within the ITL SLO) only for tight ITL SLOs: what is scored
        # is a request's mean ITL, which the queued model judges, and at 100 ms the rule cost 1.7-2.4x the energy
        # on the benchmark (conversation x1, x4) for no share within both; at 30 ms (8B, tests/unit/test_bench.py)
        # a few long steps already break a request's mean, and the model's per-request mean ITL is optimistic.
        chunk_budget_within_itl=intent.slo_itl_p95_seconds < TIGHT_ITL_SECONDS,
        tokens=load.tokens if load is not None else None,
        rate_levels=load.rate_levels if load is not None else ((1.0, 1.0),),
        arrival_dispersion=load.arrival_dispersion if load is not None else 1.0,
        per_request_routing=tuning.per_request_routing,
        ttft_margin=margin[0],
        itl_margin=margin[1],
    )


def evaluate(
    intent: ServiceIntent,
    running: Plan,
    workload: Workload,
    energy_model: EnergyModel,
    power_correction: float = 1.0,
) -> Candidate | None:
    """The planner's figures for exactly one plan (the running or the pinned one) under a load."""
    return evaluate_in(plan_request(intent, workload, None, power_correction, only=running), running, energy_model)


def restricted(request: PlanRequest, running: Plan,
               limits_watts: tuple[float | None, ...] | None = None) -> PlanRequest:
    """`request` narrowed to the running configuration (its batch limits too), replicas still free: the search
    of the moves that restart nothing (replicas; GPU power limits `limits_watts`, set in place)."""
    config = running.config
    return replace(
        request,
        allowed_precisions=(config.precision,),
        tensor_parallel_options=(config.tensor_parallel,),
        max_tensor_parallel=max(request.max_tensor_parallel, config.tensor_parallel),
        max_num_seqs_options=(config.max_num_seqs,),
        max_num_batched_tokens_options=(config.max_num_batched_tokens,),
        # The chunk-budget rule chooses budgets; here the running one is given.
        chunk_budget_within_itl=False,
        gpu_power_limits_watts=limits_watts or (config.gpu_power_limit_watts,),
        replay=None,
    )


def evaluate_in(request: PlanRequest, running: Plan, energy_model: EnergyModel) -> Candidate | None:
    """The figures of exactly `running` under `request`'s load, model and corrections (no allocation)."""
    one = replace(restricted(request, running), min_replicas=running.replicas,
                  max_replicas=max(running.replicas, 1), allocation_watts=None)
    return plan(one, energy_model).chosen


def plan_of(candidate: Candidate) -> Plan:
    return Plan(candidate.config, candidate.replicas)


def surge_fits(candidate: Candidate | None, allocation_watts: float | None, running_watts: float | None = None,
               loading_watts: float = 0.0) -> bool:
    """Roll with surge only when the fleet during the roll fits under the allocation: the new fleet with one more
    replica serving, or the running fleet (`running_watts`, what it draws at this load) serving while the new
    replicas load (`loading_watts`: their GPUs idle; they serve nothing until loaded, and the old set only drains
    its queue once they serve). Without surge the roll takes old replicas down before new ones serve: a restart
    into one replica (tp4 x2 -> tp8 x1) then leaves nothing serving for a model load (issue 13, conv-x1-cap)."""
    if allocation_watts is None or candidate is None or candidate.replicas <= 0:
        return True
    per_replica = candidate.total_watts / candidate.replicas
    if candidate.total_watts + per_replica <= allocation_watts:
        return True
    return running_watts is not None and running_watts + loading_watts <= allocation_watts


def allocation_changed(before: float | None, after: float | None) -> bool:
    """Whether a service's share moved enough to re-plan it now (more than 1 W and 1%)."""
    if before is None or after is None:
        return before != after
    return abs(before - after) > max(1.0, 0.01 * max(before, after))

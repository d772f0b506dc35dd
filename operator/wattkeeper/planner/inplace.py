"""The in-place lever: the GPU power limit to set on the running configuration, no restart (pure).

For the switching rule (control/): under a cap, a limit acts within seconds (the node agent applies it, see
energy/powerlimit.py) while a new configuration costs a reload of minutes; so the rule should first ask
`in_place_limit` whether a limit on the running configuration meets the allocation, and restart only when none
does or when the planner's best plan saves more than the change costs. A limit change never restarts a pod: the
render leaves it out of the pod template and its hash.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..energy.catalog import get_accelerator
from ..energy.model import EnergyModel
from ..energy.powerlimit import limit_options_watts
from ..energy.types import ServingConfig
from .search import Candidate, PlanRequest, plan


@dataclass(frozen=True)
class InPlaceLimit:
    """The answer: the limit to set (None: the card's default) and what the running fleet does under it."""

    gpu_power_limit_watts: float | None
    candidate: Candidate | None  # the running configuration under that limit; None when it cannot be evaluated
    within_power: bool  # the fleet's predicted watts fit the allocation
    meets_slo: bool
    reason: str
    options: tuple[Candidate, ...] = ()  # every limit tried, highest first


def in_place_limit(
    request: PlanRequest,
    running: ServingConfig,
    replicas: int,
    energy_model: EnergyModel | None = None,
    limits_watts: tuple[float | None, ...] | None = None,
) -> InPlaceLimit:
    """The least-energy limit for `running` x `replicas` that fits `request.allocation_watts` and meets the SLOs;
    when none meets both, the highest limit within the watts (ProtectBudget) or the one meeting the SLOs
    (ProtectSLO, as the request's fallback says); `within_power` False when even the lowest limit exceeds them.

    `request` is the planner's question for the service (its load, SLOs, corrections, profile, allocation); only the
    precision, TP, batch limits and replicas of the running configuration are evaluated."""
    limits = limits_watts or limit_options_watts(get_accelerator(request.accelerator))
    evaluated: list[Candidate] = []
    for limit in limits:
        one = replace(
            request,
            allowed_precisions=(running.precision,),
            tensor_parallel_options=(running.tensor_parallel,),
            max_tensor_parallel=max(request.max_tensor_parallel, running.tensor_parallel),
            max_num_seqs_options=(running.max_num_seqs,),
            max_num_batched_tokens_options=(running.max_num_batched_tokens,),
            gpu_power_limits_watts=(limit,),
            min_replicas=replicas,
            max_replicas=max(replicas, 1),
            fallback="ProtectSLO",
            allocation_watts=None,
        )
        chosen = plan(one, energy_model).chosen
        if chosen is not None:
            evaluated.append(chosen)
    if not evaluated:
        return InPlaceLimit(None, None, False, False, "the running configuration cannot be evaluated")
    allocation = request.allocation_watts
    fits = [c for c in evaluated if allocation is None or c.total_watts <= allocation]
    good = [c for c in fits if c.meets_slo]
    if good:
        best = min(good, key=lambda c: c.total_watts)
        why = "least energy within the watts and the SLOs"
    elif fits and request.fallback == "ProtectBudget":
        best = max(fits, key=lambda c: c.total_watts)  # the mildest limit that fits: closest to the SLOs
        why = "no limit meets the SLOs within the watts; the mildest limit that fits (ProtectBudget)"
    elif fits:
        best = evaluated[0]
        why = "no limit meets the SLOs within the watts; no limit (ProtectSLO)"
    else:
        best = min(evaluated, key=lambda c: c.total_watts)
        why = "even the lowest limit exceeds the watts: a smaller configuration is needed"
    limit = best.config.gpu_power_limit_watts
    return InPlaceLimit(
        gpu_power_limit_watts=limit,
        candidate=best,
        within_power=allocation is None or best.total_watts <= allocation,
        meets_slo=best.meets_slo,
        reason=f"{why}: {best.describe()}",
        options=tuple(evaluated),
    )


def is_in_place_change(running: ServingConfig, proposed: ServingConfig) -> bool:
    """Whether going from `running` to `proposed` changes only the GPU power limit: no restart, no reload, no
    outage (the render leaves the limit out of the pod template; the node agent applies it within seconds).
    For the switching rule: such a move costs nothing to make, so neither the reload cost of should_switch nor the
    outage of an in-place restart applies to it."""
    return (running != proposed
            and replace(running, gpu_power_limit_watts=None) == replace(proposed, gpu_power_limit_watts=None))

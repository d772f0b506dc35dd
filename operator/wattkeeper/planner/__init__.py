"""Planner: configuration search, switching rule and budget allocation. Pure functions, no Kubernetes."""

from .allocation import ServiceAllocation, ServiceDemand, allocate_watts
from .load import ArrivalSample, LoadEstimate, counts_from_counter, estimate_load
from .search import Candidate, PlanRequest, PlanResult, minimum_watts_for_slo, observed_request, plan, plan_groups
from .switching import SwitchDecision, model_load_seconds, should_switch

__all__ = [
    "ArrivalSample",
    "Candidate",
    "LoadEstimate",
    "PlanRequest",
    "PlanResult",
    "ServiceAllocation",
    "ServiceDemand",
    "SwitchDecision",
    "allocate_watts",
    "counts_from_counter",
    "estimate_load",
    "minimum_watts_for_slo",
    "model_load_seconds",
    "observed_request",
    "plan",
    "plan_groups",
    "should_switch",
]

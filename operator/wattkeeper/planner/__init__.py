"""Planner: configuration search, switching rule and budget allocation. Pure functions, no Kubernetes."""

from .allocation import ServiceAllocation, ServiceDemand, allocate_watts
from .search import Candidate, PlanRequest, PlanResult, minimum_watts_for_slo, plan
from .switching import SwitchDecision, model_load_seconds, should_switch

__all__ = [
    "Candidate",
    "PlanRequest",
    "PlanResult",
    "ServiceAllocation",
    "ServiceDemand",
    "SwitchDecision",
    "allocate_watts",
    "minimum_watts_for_slo",
    "model_load_seconds",
    "plan",
    "should_switch",
]

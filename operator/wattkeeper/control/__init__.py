"""One control core: the decision of one tick of the control loop, pure, shared by the operator and the benchmark.

Imports neither kopf, nor kubernetes, nor the controller, nor telemetry (enforced by import-linter). The rule that
decides a reconfiguration is in `switching.py`; the steps of a tick are in `tick.py`; a budget's accounting and
allocation are in `budget.py`.
"""

from .budget import (
    BudgetDecision,
    BudgetIntent,
    BudgetMemory,
    BudgetShare,
    ServiceLoad,
    decide_budget,
    shares_to_allocation,
)
from .load import estimate_load, offered_rate, stabilised_rate
from .planning import allocation_changed, evaluate, plan_of, plan_request, significant, surge_fits
from .switching import OVERSHOOT_TOLERANCE, SwitchFacts, switching_rule
from .tick import decide_tick, more_capacity, settle_seconds, settled
from .types import (
    Canary,
    ConfigMargin,
    FleetState,
    LoadEstimate,
    Memory,
    Plan,
    RecentConfiguration,
    ServiceIntent,
    ShortFleet,
    Signals,
    TickDecision,
    TickInputs,
    Tuning,
    Verdict,
)

__all__ = [
    "OVERSHOOT_TOLERANCE",
    "BudgetDecision",
    "BudgetIntent",
    "BudgetMemory",
    "BudgetShare",
    "Canary",
    "ConfigMargin",
    "FleetState",
    "LoadEstimate",
    "Memory",
    "Plan",
    "RecentConfiguration",
    "ServiceIntent",
    "ServiceLoad",
    "ShortFleet",
    "Signals",
    "SwitchFacts",
    "TickDecision",
    "TickInputs",
    "Tuning",
    "Verdict",
    "allocation_changed",
    "decide_budget",
    "decide_tick",
    "estimate_load",
    "evaluate",
    "more_capacity",
    "offered_rate",
    "plan_of",
    "plan_request",
    "settle_seconds",
    "settled",
    "shares_to_allocation",
    "significant",
    "stabilised_rate",
    "surge_fits",
    "switching_rule",
]

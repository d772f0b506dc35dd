"""Split an energy budget's watts among its services by priority and marginal energy efficiency.

Every service first gets its floor (what its minimum replicas draw idle). Then, from the highest priority down,
each gets what it needs to meet its SLO; when the budget runs out, the lower priorities are the ones degraded.
What is left goes towards each service's unconstrained plan, most energy-efficient (least J/token) first within a
priority, because a watt there buys the most tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceDemand:
    name: str
    priority: int  # higher is more important
    minimum_watts: float | None  # least watts meeting its SLO; None when no plan meets it
    desired_watts: float  # its unconstrained least-energy plan's watts
    floor_watts: float = 0.0  # what it draws at its minimum replicas, idle
    joules_per_token: float = math.inf  # marginal efficiency of its plan: lower gets spare watts first


@dataclass(frozen=True)
class ServiceAllocation:
    name: str
    watts: float
    degraded: bool
    reason: str


def allocate_watts(total_watts: float, demands: list[ServiceDemand]) -> list[ServiceAllocation]:
    if total_watts < 0:
        raise ValueError("total_watts must be >= 0")
    order = sorted(
        range(len(demands)), key=lambda i: (-demands[i].priority, demands[i].joules_per_token, demands[i].name)
    )
    given = [0.0] * len(demands)
    reasons = [""] * len(demands)
    floors = sum(d.floor_watts for d in demands)
    if floors > total_watts:
        # Not even the idle floors fit: scale them, everyone is degraded.
        scale = total_watts / floors if floors > 0 else 0.0
        return [
            ServiceAllocation(
                d.name,
                d.floor_watts * scale,
                True,
                f"budget {total_watts:.0f} W is below the idle floor of all services ({floors:.0f} W)",
            )
            for d in demands
        ]
    for i, d in enumerate(demands):
        given[i] = d.floor_watts
    left = total_watts - floors
    # SLO needs, highest priority first.
    short_of: int | None = None
    for i in order:
        d = demands[i]
        need = max((d.minimum_watts if d.minimum_watts is not None else d.desired_watts) - given[i], 0.0)
        if need <= left:
            given[i] += need
            left -= need
        else:
            given[i] += left
            left = 0.0
            short_of = i if short_of is None else short_of
    # Spare watts towards the unconstrained plans.
    for i in order:
        d = demands[i]
        extra = min(max(d.desired_watts - given[i], 0.0), left)
        given[i] += extra
        left -= extra
    # What is still left is headroom, shared in proportion to need: an allocation is a ceiling, not a target, so
    # a service whose load grows between two budget ticks re-plans within its share instead of being capped at
    # exactly the plan it had.
    if left > 0 and demands:
        weights = [max(d.desired_watts, d.minimum_watts or 0.0, 1.0) for d in demands]
        total_weight = sum(weights)
        for i in range(len(demands)):
            given[i] += left * weights[i] / total_weight
        left = 0.0
    out = []
    for i, d in enumerate(demands):
        if d.minimum_watts is None:
            degraded, reasons[i] = True, "no plan meets its SLO at any power"
        elif given[i] + 1e-6 < d.minimum_watts:
            degraded = True
            higher = [x.name for x in demands if x.priority > d.priority]
            reasons[i] = f"needs {d.minimum_watts:.0f} W for its SLO, the budget leaves {given[i]:.0f} W" + (
                f" after higher-priority {', '.join(higher)}" if higher else ""
            )
        else:
            degraded = False
            reasons[i] = "meets its SLO" + (
                ""
                if given[i] + 1e-6 >= d.desired_watts
                else f"; {d.desired_watts - given[i]:.0f} W short of its least-energy plan"
            )
        out.append(ServiceAllocation(d.name, given[i], degraded, reasons[i]))
    return out

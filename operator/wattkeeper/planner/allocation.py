"""Split an energy budget's watts among its services: by priority, then by SLO-meeting tokens per watt.

1. Every service gets its floor (what its smallest fleet draws at its load) while the budget covers the floors:
   below it no plan exists, so a smaller share would only be missed. When the floors exceed the budget, each
   gets the budget's share of its floor: the sum never exceeds the budget, which is a promise about watts.
2. Priority by priority, highest first, each service that fits gets what it needs to meet its SLO. Within a
   priority the services that buy the most SLO-meeting tokens per watt above their floor go first, and one whose
   need does not fit is skipped for the next that does (a knapsack filled greedily: a short budget serves the most
   tokens within the SLO). What is left then goes to the priority's services that fell short; a lower priority
   gets more than its floor only when every higher one meets its SLO, with one exception: before a service that
   falls short takes what is left, each service held at its floor is lifted to its smallest fleet at a full batch
   where that fits, so that no service is cut to a shrunken batch (worse J/token) only to lower watts when one
   full replica of a better configuration fits (issue 11 item 6). The short service could not meet its SLO with
   those watts either; they buy the most tokens where they go.
3. Spare watts go towards each service's unconstrained plan (which keeps burst headroom), in the same order.
4. The rest is headroom, shared in proportion to need: an allocation is a ceiling, not a target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import groupby

EPSILON_WATTS = 1e-6


@dataclass(frozen=True)
class ServiceDemand:
    name: str
    priority: int  # higher is more important
    minimum_watts: float | None  # least watts meeting its SLO; None when no plan meets it
    desired_watts: float  # its unconstrained least-energy plan's watts
    floor_watts: float = 0.0  # what its smallest fleet draws at its load
    joules_per_token: float = math.inf  # of its unconstrained plan
    slo_tokens_per_second: float = 0.0  # output tokens/s it serves within its SLO at `minimum_watts`
    # Its smallest fleet at a full batch (the most tokens per watt there): between the floor and this, only a
    # shrunken batch fits, at several times the J/token. None: the floor already is.
    full_batch_watts: float | None = None

    def slo_tokens_per_watt(self) -> float:
        """SLO-meeting tokens bought per watt above the floor (the floor is spent anyway)."""
        if self.minimum_watts is None:
            return 0.0
        return self.slo_tokens_per_second / max(self.minimum_watts - self.floor_watts, EPSILON_WATTS)


@dataclass(frozen=True)
class ServiceAllocation:
    name: str
    watts: float
    degraded: bool
    reason: str


def allocation_order(demands: list[ServiceDemand]) -> list[int]:
    """Indices by priority (highest first), then SLO-meeting tokens per watt, then J/token, then name."""
    return sorted(
        range(len(demands)),
        key=lambda i: (-demands[i].priority, -demands[i].slo_tokens_per_watt(), demands[i].joules_per_token,
                       demands[i].name),
    )


def allocate_watts(total_watts: float, demands: list[ServiceDemand]) -> list[ServiceAllocation]:
    if total_watts < 0:
        raise ValueError("total_watts must be >= 0")
    if not demands:
        return []
    floors = sum(d.floor_watts for d in demands)
    if floors > total_watts + EPSILON_WATTS:
        # A budget is a promise about watts: never allocate past it. Each service gets the budget's share of its
        # floor and reports why; its controller then runs the least-power plan it has (and, with the power-limit
        # agent on, caps it) rather than hold a fleet the budget cannot pay for.
        return [
            ServiceAllocation(
                d.name, total_watts * d.floor_watts / floors, True,
                f"priority {d.priority}: the budget ({total_watts:.0f} W) is below the floors of its services "
                f"({floors:.0f} W, {d.floor_watts:.0f} W its own): each gets its share of the budget in proportion to "
                f"its floor; only fewer running services, or a larger budget, would meet the SLOs",
            )
            for d in demands
        ]
    order = allocation_order(demands)
    given = [d.floor_watts for d in demands]
    left = total_watts - floors
    short: set[int] = set()
    lifted = False
    for _, group in groupby(order, key=lambda i: demands[i].priority):
        members = list(group)
        for i in members:  # SLO needs that fit, best tokens per watt first
            d = demands[i]
            need = max((d.minimum_watts or 0.0) - given[i], 0.0)
            if d.minimum_watts is not None and need <= left + EPSILON_WATTS:
                given[i] += min(need, left)
                left = max(left - need, 0.0)
            else:
                short.add(i)
        if short & set(members) and not lifted:
            lifted = True
            for i in order:  # whole full-batch replicas only: a partial lift still fits only a shrunken batch
                lift = max((demands[i].full_batch_watts or 0.0) - given[i], 0.0)
                if 0.0 < lift <= left + EPSILON_WATTS:
                    given[i] += min(lift, left)
                    left = max(left - lift, 0.0)
        for i in members:  # the priority's short services take what is left before any lower priority
            if i in short:
                extra = min(max(demands[i].desired_watts - given[i], 0.0), left)
                given[i] += extra
                left -= extra
    for i in order:  # spare watts towards the unconstrained plans (burst headroom)
        extra = min(max(demands[i].desired_watts - given[i], 0.0), left)
        given[i] += extra
        left -= extra
    if left > 0:
        weights = [max(d.desired_watts, d.minimum_watts or 0.0, 1.0) for d in demands]
        total_weight = sum(weights)
        for i in range(len(demands)):
            given[i] += left * weights[i] / total_weight
    return [ServiceAllocation(d.name, given[i], *_verdict(i, demands, given, order)) for i, d in enumerate(demands)]


def _verdict(i: int, demands: list[ServiceDemand], given: list[float], order: list[int]) -> tuple[bool, str]:
    """Whether service i is degraded, and why it got what it got (for the budget's status)."""
    d = demands[i]
    head = f"priority {d.priority}: "
    if d.minimum_watts is None:
        return True, head + f"no plan meets its SLO at any power; {given[i]:.0f} W serve what they can"
    if given[i] + EPSILON_WATTS >= d.minimum_watts:
        text = head + f"meets its SLO ({d.minimum_watts:.0f} W least for it"
        if d.minimum_watts <= d.floor_watts + EPSILON_WATTS:
            text += ", its floor"
        elif d.slo_tokens_per_second > 0:
            text += f", {d.slo_tokens_per_watt():.2f} SLO-meeting tokens/s per W above its {d.floor_watts:.0f} W floor"
        text += ")"
        if given[i] + EPSILON_WATTS < d.desired_watts:
            text += f"; {d.desired_watts - given[i]:.0f} W short of its plan with burst headroom"
        return False, text
    text = head + f"needs {d.minimum_watts:.0f} W for its SLO, the budget leaves {given[i]:.0f} W"
    if d.full_batch_watts is not None and d.full_batch_watts > d.floor_watts + EPSILON_WATTS and \
            abs(given[i] - d.full_batch_watts) <= EPSILON_WATTS:
        text += " (its smallest fleet at a full batch)"
    served = [demands[j] for j in order if j != i and given[j] + EPSILON_WATTS >= (demands[j].minimum_watts or math.inf)]
    higher = [x.name for x in served if x.priority > d.priority]
    same = [x.name for x in served if x.priority == d.priority]
    if higher:
        text += f" after higher-priority {', '.join(higher)}"
    if same:
        text += f"; at its priority {', '.join(same)} buy more SLO-meeting tokens per watt or fit what was left"
    return True, text

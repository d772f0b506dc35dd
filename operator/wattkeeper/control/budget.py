"""A budget's decision, pure: (budget, services, measured watts, time) -> accounting and allocations.

    accounting = account(...)        energy used this period, the window's average power, what is left to allocate
    demands    = service_demand(...) per service: the least watts meeting its SLO, its unconstrained plan, its floor,
                                     the tokens it serves within its SLO
    decision   = decide_budget(...)  the allocation of watts to services (planner.allocate_watts: by priority, then
                                     SLO-meeting tokens per watt) and the verdict

The operator's adapter (controller/budgets.py) maps status to `BudgetMemory` and back and hands each service its
`allocation_watts`; `shares_to_allocation` combines the shares of several budgets that select one service.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from ..energy.model import EnergyModel
from ..energy.types import Workload
from ..planner import Candidate, PlanRequest, ServiceDemand, allocate_watts, plan
from . import tail
from .planning import allocation_for, plan_request, scored
from .switching import OVERSHOOT_TOLERANCE
from .tick import search
from .types import ConfigMargin, FleetState, LoadEstimate, Memory, ServiceIntent, TickInputs

MAX_SAMPLES = 120
DEMAND_CACHE_SIZE = 4096


@dataclass(frozen=True)
class BudgetIntent:
    """What an EnergyBudget's spec asks: an average power limit over a window and/or an energy allowance."""

    power_limit_watts: float | None = None
    power_window_seconds: float = 300.0
    energy_limit_kwh: float | None = None
    energy_period_seconds: float | None = None


@dataclass(frozen=True)
class BudgetMemory:
    """What accounting carries from one pass to the next (the operator keeps it in the budget's status)."""

    power_samples: tuple[tuple[float, float], ...] = ()  # (time s, watts), rounded as status keeps them
    period_start_s: float | None = None
    energy_used_kwh: float = 0.0
    last_accounted_s: float | None = None


@dataclass(frozen=True)
class BudgetAccounting:
    memory: BudgetMemory
    measured_watts: float | None
    window_average_watts: float | None
    remaining_kwh: float | None
    forecast_exhaustion_s: float | None  # None: not within this period
    allocatable_watts: float | None  # the power limit, tightened by what the energy allowance leaves


@dataclass(frozen=True)
class ServiceLoad:
    """One service a budget selects, as the allocation sees it."""

    name: str
    priority: int
    intent: ServiceIntent
    load: Workload  # the measured load, else the planned-for one, else the spec's
    power_correction: float = 1.0
    margins: tuple[ConfigMargin, ...] = ()  # its tick's learned latency margins, as its status keeps them
    miss_scale: float = 1.0  # its tick's learned tail (control/tail.py), as its status keeps it


@dataclass(frozen=True)
class Allocated:
    name: str
    priority: int
    allocation_watts: float
    minimum_watts: float | None  # least watts meeting its SLO; None when no plan meets it
    degraded: bool
    reason: str
    floor_watts: float = 0.0  # what its smallest fleet draws at its load: never allocated less


@dataclass(frozen=True)
class BudgetDecision:
    accounting: BudgetAccounting
    allocations: tuple[Allocated, ...]
    projected_watts: float
    within: bool | None  # the window's average against the limit; None before anything is measured
    within_reason: str
    within_message: str

    @property
    def degraded(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.allocations if a.degraded)

    def allocation_watts(self) -> dict[str, float]:
        """Each service's share, to hand to the services (in memory, or through status)."""
        return {a.name: a.allocation_watts for a in self.allocations}


def account(budget: BudgetIntent, memory: BudgetMemory, measured_watts: float | None, now_s: float,
            interval_s: float) -> BudgetAccounting:
    """Integrate measured power into the period's energy, keep the window's samples, forecast exhaustion.
    `measured_watts` None (telemetry missing for some service) accounts nothing: a partial sum would read as a
    saving."""
    allocatable = budget.power_limit_watts
    samples = memory.power_samples
    average: float | None = None
    if samples:
        average = round(sum(w for _, w in samples) / len(samples), 1)
    if measured_watts is not None:
        window = budget.power_window_seconds
        kept = [*samples, (round(now_s, 1), round(measured_watts, 1))]
        samples = tuple(s for s in kept if s[0] >= now_s - window)[-MAX_SAMPLES:]
        average = round(sum(w for _, w in samples) / len(samples), 1)
    used = memory.energy_used_kwh
    start = memory.period_start_s
    remaining: float | None = None
    exhaustion: float | None = None
    if budget.energy_limit_kwh is not None and budget.energy_period_seconds:
        period = budget.energy_period_seconds
        start = start if start is not None else now_s
        if now_s - start >= period:  # a new period: usage resets, the start stays aligned to the first one
            start += period * int((now_s - start) // period)
            used = 0.0
        if measured_watts is not None and memory.last_accounted_s is not None:
            # A gap (operator down) is charged at the power measured now: an estimate beats losing it.
            dt = max(0.0, min(now_s - memory.last_accounted_s, period))
            used += measured_watts * dt / 3.6e6
        used = round(used, 6)
        remaining = round(max(budget.energy_limit_kwh - used, 0.0), 6)
        left_s = max(start + period - now_s, interval_s)
        if average and average > 0:
            at = now_s + remaining * 3.6e6 / average
            exhaustion = at if at < start + period else None
        # What the allowance leaves, spread evenly over the rest of the period, caps the power too.
        energy_watts = remaining * 3.6e6 / left_s
        allocatable = energy_watts if allocatable is None else min(allocatable, energy_watts)
    new_memory = BudgetMemory(
        power_samples=samples, period_start_s=start, energy_used_kwh=used,
        last_accounted_s=now_s if measured_watts is not None else memory.last_accounted_s,
    )
    return BudgetAccounting(new_memory, measured_watts, average, remaining, exhaustion, allocatable)


def service_demand(service: ServiceLoad, energy_model: EnergyModel) -> ServiceDemand:
    """What one service asks of a budget: its plans as its own tick would choose them (`tick.search`: the queued
    latency model, 99% of requests within both thresholds, its learned latency margins, the untried prior where
    nothing was measured), in allocation watts (each plan's watts grossed up by the headroom the tick keeps under
    an allocation, `allocation_for`). A demand priced otherwise is a share under which the service's tick cannot
    run the plan counted on: with the steady p95 model and no margins the demo's chat was told it met its SLO at a
    share the tick could not meet it under, and at the bare full-batch watts the assistant ran one replica of
    max-num-seqs 8 at 2.4x the J/token instead of one at a full batch. Memoised per (service, model): a budget
    pass at an unchanged load asks nothing again."""
    return _service_demand(service, energy_model)


@lru_cache(maxsize=DEMAND_CACHE_SIZE)
def _service_demand(service: ServiceLoad, energy_model: EnergyModel) -> ServiceDemand:
    measured, predicted = tail.evidence_for(service.miss_scale)
    memory = Memory(power_correction=service.power_correction, margins=service.margins,
                    tail_measured_misses=measured, tail_predicted_misses=predicted)
    inputs = TickInputs(intent=service.intent, memory=memory, signals=None, fleet=FleetState(), now_s=0.0)
    load = LoadEstimate(service.load, "measured", service.load.requests_per_second, 0.0)

    def tick_plan(intent: ServiceIntent, allocation_watts: float | None = None) -> tuple[Candidate | None, bool]:
        _, candidate, result = search(replace(inputs, intent=intent), memory, load, allocation_watts, energy_model)
        return candidate, bool(result is not None and result.feasible)

    chosen, feasible = tick_plan(service.intent)
    desired = allocation_for(chosen.total_watts) if chosen else 0.0
    least: Candidate | None = None
    if feasible and chosen is not None:
        # The unconstrained plan sizes each replica below the target utilisation (burst headroom); a smaller
        # fleet, often of another configuration with better J/token, may meet the SLOs for less, and it is what
        # the tick runs under a share between the two (search.py `plan`, the ProtectBudget fleet loop).
        least = chosen
        intent = service.intent
        for replicas in fleet_sizes(intent.min_replicas, min(chosen.replicas, intent.max_replicas)):
            smaller, ok = tick_plan(replace(intent, max_replicas=replicas))
            if ok and smaller is not None and smaller.total_watts < least.total_watts:
                least = smaller
    minimum = allocation_for(least.total_watts) if least is not None else None
    # The floor: what the smallest fleet draws at this load (min replicas, serving what it can). Below it a
    # service cannot go, so the allocator hands floors out first instead of leaving a service 0 W.
    smallest, _ = tick_plan(replace(service.intent, fallback="ProtectBudget"), 1e-6)
    smallest_watts = allocation_for(smallest.total_watts) if smallest else 0.0
    floor = min(smallest_watts, desired) if smallest and chosen else smallest_watts
    request = scored(plan_request(service.intent, service.load, None, service.power_correction), service.intent,
                     inputs.tuning)
    full_plan = full_batch_floor(request, energy_model)
    full = allocation_for(full_plan) if full_plan is not None else None
    return ServiceDemand(name=service.name, priority=service.priority, minimum_watts=minimum,
                         desired_watts=desired, floor_watts=floor,
                         joules_per_token=chosen.joules_per_token if chosen else float("inf"),
                         slo_tokens_per_second=service.load.requests_per_second * service.load.output_tokens
                         if least is not None else 0.0,
                         full_batch_watts=min(full, desired) if full is not None and chosen else None)


def full_batch_floor(request: PlanRequest, energy_model: EnergyModel) -> float | None:
    """Watts of the smallest fleet (min replicas) that serves the most tokens per watt at this load: the floor
    plan shrinks the batch to draw the least, which at a load beyond it costs several times the J/token. Each
    tensor-parallel degree's fleet with the most capacity (ProtectBudget, search.py `_fallback`), the best
    served tokens per watt among them."""
    offered = max(request.workload.requests_per_second * request.workload.output_tokens, 1e-9)
    best: tuple[float, float] | None = None  # (served tokens per watt, watts)
    for tp in request.tensor_parallel_options:
        if tp > request.max_tensor_parallel:
            continue
        smallest = replace(request, max_replicas=max(request.min_replicas, 1), tensor_parallel_options=(tp,),
                           fallback="ProtectBudget", allocation_watts=None)
        c = plan(smallest, energy_model).chosen
        if c is None or c.total_watts <= 0:
            continue
        served = offered / max(c.prediction.utilisation, 1.0)
        if best is None or served / c.total_watts > best[0]:
            best = (served / c.total_watts, c.total_watts)
    return best[1] if best is not None else None


def fleet_sizes(min_replicas: int, replicas: int, most: int = 8) -> list[int]:
    """Fleet sizes to search below a plan of `replicas`: all up to `most`, else `most` of them spread over the
    upper half (a fleet under half the size would run a replica at over twice the planned utilisation)."""
    low = max(min_replicas, 1)
    if replicas - low + 1 <= most:
        return list(range(low, replicas + 1))
    low = max(low, replicas // 2)
    step = (replicas - low) / (most - 1)
    return sorted({round(low + k * step) for k in range(most)})


def decide_budget(budget: BudgetIntent, memory: BudgetMemory, services: list[ServiceLoad],
                  measured_watts: float | None, now_s: float, interval_s: float,
                  energy_model: EnergyModel) -> BudgetDecision:
    acc = account(budget, memory, measured_watts, now_s, interval_s)
    demands = [service_demand(s, energy_model) for s in services]
    projected = sum(d.desired_watts for d in demands)
    allocations: list[Allocated] = []
    if acc.allocatable_watts is not None and demands:
        by_name = {d.name: d for d in demands}
        for a in allocate_watts(acc.allocatable_watts, demands):
            d = by_name[a.name]
            allocations.append(Allocated(a.name, d.priority, round(a.watts, 1),
                                         round(d.minimum_watts, 1) if d.minimum_watts is not None else None,
                                         a.degraded, a.reason, round(d.floor_watts, 1)))
        projected = sum(min(a.allocation_watts, by_name[a.name].desired_watts) for a in allocations)
    limit = acc.allocatable_watts
    within: bool | None
    if limit is None:
        within, reason, message = True, "NoLimit", "no power or energy limit"
    elif acc.window_average_watts is None:
        within, reason, message = None, "NoMeasurement", f"limit {limit:.0f} W; nothing measured yet"
    else:
        within = acc.window_average_watts <= limit * OVERSHOOT_TOLERANCE
        reason = "WithinLimit" if within else "OverLimit"
        message = f"window average {acc.window_average_watts:.0f} W against {limit:.0f} W"
    return BudgetDecision(acc, tuple(allocations), round(projected, 1), within, reason, message)


@dataclass(frozen=True)
class BudgetShare:
    """One budget's share for one service."""

    budget: str
    enforced: bool
    watts: float | None  # None: the budget has not allocated yet


@dataclass(frozen=True)
class CombinedAllocation:
    allocation_watts: float | None  # the tightest enforced share
    budget: str | None
    advised_watts: float | None  # the tightest Advise share, only when no budget enforces one
    advised_budget: str | None
    budgets: tuple[str, ...]


def shares_to_allocation(shares: list[BudgetShare]) -> CombinedAllocation:
    """A service selected by several budgets may draw the tightest enforced share; Advise budgets only advise."""
    enforced = [(s.watts, s.budget) for s in shares if s.enforced and s.watts is not None]
    advised = [(s.watts, s.budget) for s in shares if not s.enforced and s.watts is not None]
    tight = min(enforced) if enforced else None
    advice = min(advised) if advised and not enforced else None
    return CombinedAllocation(
        allocation_watts=tight[0] if tight else None, budget=tight[1] if tight else None,
        advised_watts=advice[0] if advice else None, advised_budget=advice[1] if advice else None,
        budgets=tuple(sorted({s.budget for s in shares})),
    )

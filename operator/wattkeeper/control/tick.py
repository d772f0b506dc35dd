"""One tick of the control loop for one service, as named steps:

    load       = estimate_load(...)            what telemetry shows, stabilised over the cooldown
    memory     = corrections(...)              measured over predicted power and latency of the running plan
    proposal   = propose(...)                  the planner at that load, within the enforced allocation
    verdict    = switching_rule(facts(...))    control/switching.py: THE rule that decides a reconfiguration
    advised    = advise(...)                   what an Advise budget would move to (never applied)

The operator (controller/decide.py) and the benchmark (bench/wattkeeper_policy.py) both call `decide_tick`.
"""

from __future__ import annotations

from dataclasses import replace

from ..energy.catalog import get_accelerator
from ..energy.model import EnergyModel
from ..energy.types import ServingConfig, Workload
from ..planner import Candidate, PlanRequest, PlanResult, SwitchDecision, plan, should_switch
from .corrections import latency_correction, power_correction
from .load import estimate_load
from .planning import evaluate, evaluate_in, plan_of, plan_request, restricted, significant, surge_fits
from .restart_free import (
    blocked,
    capacity_ratio,
    more_capacity,
    recently_left,
    remember_left,
    scale_only_suffices,
)
from .switching import OVERSHOOT_TOLERANCE, SwitchFacts, configuration_key, restarts, switching_rule
from .types import LoadEstimate, Memory, Plan, ServiceIntent, TickDecision, TickInputs

__all__ = ["decide_tick", "more_capacity", "settle_seconds", "settled"]

# When a reconfiguration is judged: the roll is done, the old pods have drained (at most their termination grace
# in the operator, which cannot see terminating pods), and one telemetry window has passed since the change.


def settle_seconds(telemetry_window_seconds: float, drain_seconds: float) -> float:
    return telemetry_window_seconds + drain_seconds


def settled(since_last_change_s: float | None, settle_s: float, rolling: bool) -> bool:
    """Whether the running plan has been measured long enough to be judged."""
    if rolling:
        return False
    return since_last_change_s is None or since_last_change_s >= settle_s


def slo_missed(inputs: TickInputs) -> bool:
    s, intent = inputs.signals, inputs.intent
    if s is None:
        return False
    return bool((s.ttft_p95_seconds and s.ttft_p95_seconds > intent.slo_ttft_p95_seconds)
                or (s.itl_p95_seconds and s.itl_p95_seconds > intent.slo_itl_p95_seconds))


def under_pressure(inputs: TickInputs) -> bool:
    """Requests wait or an SLO is missed; with nothing measured yet, a proposal with more capacity is taken."""
    s = inputs.signals
    return s is None or (s.waiting_requests or 0.0) > 0 or slo_missed(inputs)


def corrections(inputs: TickInputs, load: LoadEstimate, energy_model: EnergyModel) -> Memory:
    m = inputs.memory
    args = (inputs.intent, m.running, inputs.signals, inputs.fleet, load.workload, energy_model, inputs.tuning)
    power = power_correction(m.power_correction, *args)
    ttft, itl = latency_correction((m.ttft_correction, m.itl_correction), *args)
    return replace(m, power_correction=power, ttft_correction=ttft, itl_correction=itl,
                   peak_load_rps=load.peak_load_rps, peak_load_at_s=load.peak_load_at_s)


# Plans aim this far under an allocation: the power correction moves by a few percent when a new configuration
# is first measured, and a plan right at the allocation is then cut again (a restart per swing).
POWER_HEADROOM = 0.04


def planned_watts(allocation_watts: float | None) -> float | None:
    return allocation_watts * (1.0 - POWER_HEADROOM) if allocation_watts is not None else None


def tick_request(inputs: TickInputs, memory: Memory, load: LoadEstimate, allocation_watts: float | None,
                 only: Plan | None = None) -> PlanRequest:
    """The planner's question this tick: the load, the corrections, the allocation. Every plan of a tick (the
    proposal, the running plan, the rescale) is judged by this one question, so their figures compare."""
    return plan_request(inputs.intent, load.workload, planned_watts(allocation_watts), memory.power_correction,
                        (memory.ttft_correction, memory.itl_correction), only=only)


def propose(inputs: TickInputs, memory: Memory, load: LoadEstimate,
            energy_model: EnergyModel) -> tuple[Plan | None, Candidate | None, PlanResult | None]:
    """The planner's proposal (or the pinned plan, evaluated). Raises ValueError for a spec it cannot plan."""
    intent = inputs.intent
    if intent.pinned is not None:
        return intent.pinned, evaluate(intent, intent.pinned, load.workload, energy_model,
                                       memory.power_correction), None
    only = memory.running if (memory.running is not None and not intent.allow_disruptive) else None
    result = plan(tick_request(inputs, memory, load, inputs.allocation_watts, only), energy_model)
    if result.chosen is None:
        return None, None, result
    return plan_of(result.chosen), result.chosen, result


def propose_elsewhere(inputs: TickInputs, memory: Memory, load: LoadEstimate, avoid: set[str],
                      energy_model: EnergyModel) -> tuple[Plan | None, Candidate | None, PlanResult | None]:
    """The best proposal among configurations not in `avoid` (the ones left recently: no A -> B -> A): one search
    per precision over the TP degrees still allowed; a feasible plan by least watts, else the fallback with the
    most capacity within the allocation."""
    base = tick_request(inputs, memory, load, inputs.allocation_watts)
    results: list[PlanResult] = []
    for precision in base.allowed_precisions:
        tps = tuple(tp for tp in base.tensor_parallel_options
                    if configuration_key(ServingConfig(precision, tp)) not in avoid)
        if tps:
            result = plan(replace(base, allowed_precisions=(precision,), tensor_parallel_options=tps), energy_model)
            if result.chosen is not None:
                results.append(result)
    if not results:
        return None, None, None
    allocation = inputs.allocation_watts

    def rank(r: PlanResult) -> tuple[int, float]:
        c = r.chosen
        assert c is not None
        if r.feasible:
            return 0, c.total_watts
        within = allocation is None or c.total_watts <= allocation * OVERSHOOT_TOLERANCE
        return (1 if within else 2), c.prediction.utilisation

    best = min(results, key=rank)
    assert best.chosen is not None
    return plan_of(best.chosen), best.chosen, best


def rescale(inputs: TickInputs, memory: Memory, load: LoadEstimate, energy_model: EnergyModel) -> Candidate | None:
    """The running configuration with its replicas (and GPU power limit, where the node agent sets one) planned
    within the allocation: the move that restarts nothing."""
    running = memory.running
    if running is None or inputs.intent.pinned is not None:
        return None
    limits = tuple(dict.fromkeys((running.config.gpu_power_limit_watts, *inputs.intent.gpu_power_limits_watts)))
    request = restricted(tick_request(inputs, memory, load, inputs.allocation_watts), running, limits)
    chosen = plan(request, energy_model).chosen
    allocation = inputs.allocation_watts
    if chosen is None or (allocation is not None and chosen.total_watts > allocation * OVERSHOOT_TOLERANCE):
        return None
    return chosen


def facts(inputs: TickInputs, memory: Memory, load: LoadEstimate, proposed: Plan, candidate: Candidate | None,
          result: PlanResult | None, energy_model: EnergyModel,
          in_place: Candidate | None = None) -> SwitchFacts:
    intent, fleet, running = inputs.intent, inputs.fleet, memory.running
    accelerator = get_accelerator(intent.accelerator)
    running_candidate: Candidate | None = None
    if running is not None and fleet.exists and proposed != running:
        running_candidate = evaluate_in(tick_request(inputs, memory, load, None), running, energy_model)

    def worth_it() -> SwitchDecision:
        assert candidate is not None
        return should_switch(running_candidate, candidate, intent.horizon_seconds, intent.model, accelerator)

    def in_place_worth_it() -> SwitchDecision:
        assert in_place is not None
        return should_switch(running_candidate, in_place, intent.horizon_seconds, intent.model, accelerator)

    running_watts: float | None = None
    if running_candidate is not None:
        running_watts = running_candidate.total_watts
    elif running is not None and fleet.exists and proposed != running:
        running_watts = predicted_watts(intent, running, load.workload, energy_model, memory.power_correction)
    last = memory.last_applied_s
    since = inputs.now_s - last if last is not None else None
    surge = surge_fits(candidate, inputs.allocation_watts)
    outage = (running is not None and running.replicas <= 1 and proposed.config != running.config
              and not surge)
    alt = plan_of(in_place) if in_place is not None else None
    return SwitchFacts(
        running=running,
        proposed=proposed,
        now_s=inputs.now_s,
        plan_reason=result.reason if result is not None else "pinned in spec; the operator only measures",
        fleet_exists=fleet.exists,
        fleet_matches_plan=fleet.matches_plan,
        spec_changed=inputs.spec_changed,
        telemetry=inputs.signals is not None,
        load_source=load.source,
        allocation_watts=inputs.allocation_watts,
        running_predicted_watts=running_watts,
        # A running plan the planner cannot even place at this load (it cannot carry it) misses its SLO too.
        running_meets_slo=(running_candidate.meets_slo if running_candidate is not None
                           else (False if running is not None and proposed != running else None)),
        proposed_meets_slo=candidate.meets_slo if candidate is not None else None,
        measured_watts=inputs.signals.watts if inputs.signals is not None else None,
        more_capacity=running is not None and more_capacity(running, proposed, running_candidate, candidate),
        under_pressure=under_pressure(inputs),
        slo_missed=slo_missed(inputs),
        settled=settled(since, inputs.settle_seconds, fleet.rolling),
        outage=outage,
        cooldown_until_s=last + intent.cooldown_seconds if last is not None else None,
        pinned=intent.pinned is not None,
        worth_it=worth_it if (candidate is not None and result is not None) else None,
        in_place=alt,
        in_place_suffices=in_place is not None and scale_only_suffices(in_place, candidate),
        in_place_more_capacity=(running is not None and alt is not None
                                and more_capacity(running, alt, running_candidate, in_place)),
        in_place_worth_it=in_place_worth_it if in_place is not None else None,
        recently_left=recently_left(memory, proposed, inputs.now_s, inputs.allocation_watts),
        proposed_capacity_ratio=capacity_ratio(candidate, running_candidate),
        in_place_capacity_ratio=capacity_ratio(in_place, candidate),
    )


def predicted_watts(intent: ServiceIntent, running: Plan, workload: Workload, energy_model: EnergyModel,
                    power_correction: float) -> float:
    """The model's watts for a plan at a load it may not carry (each replica then runs its full batch)."""
    n = max(running.replicas, 1)
    per_replica = Workload(workload.requests_per_second / n, workload.input_tokens, workload.output_tokens)
    watts = energy_model.predict(intent.model, get_accelerator(intent.accelerator), running.config, per_replica).watts
    return watts * running.replicas * power_correction


def advise(inputs: TickInputs, memory: Memory, load: LoadEstimate, keeping: Plan | None,
           energy_model: EnergyModel) -> Plan | None:
    """What an Advise budget's allocation would move the service to; None when it would change nothing."""
    if inputs.advised_allocation_watts is None or inputs.intent.pinned is not None or keeping is None:
        return None
    request = plan_request(inputs.intent, load.workload, inputs.advised_allocation_watts, memory.power_correction,
                           (memory.ttft_correction, memory.itl_correction))
    chosen = plan(request, energy_model).chosen
    if chosen is None or plan_of(chosen) == keeping:
        return None
    return plan_of(chosen)


def remember_applied(memory: Memory, applied: Plan, load: LoadEstimate, now_s: float) -> Memory:
    w = load.workload
    planned = replace(w, requests_per_second=significant(w.requests_per_second) or 0.0,
                      input_tokens=significant(w.input_tokens) or w.input_tokens,
                      output_tokens=significant(w.output_tokens) or w.output_tokens)
    return replace(memory, running=applied, last_applied_s=now_s, planned_load=planned)


def decide_tick(inputs: TickInputs, energy_model: EnergyModel) -> TickDecision:
    """The decision of one tick. Pure: the same inputs give the same decision."""
    load = estimate_load(inputs.intent, inputs.memory, inputs.signals, inputs.now_s)
    memory = corrections(inputs, load, energy_model)
    if inputs.spec_changed:
        memory = replace(memory, recent_configurations=())  # a new spec: nothing left before counts
    proposed, candidate, result = propose(inputs, memory, load, energy_model)
    if proposed is None:
        reason = result.reason if result is not None else "no plan"
        return TickDecision("Rejected", "no-plan", reason, None, None, None, result, load, memory,
                            surge=True)
    running = memory.running
    if running is not None and inputs.fleet.exists and not inputs.spec_changed and inputs.intent.allow_disruptive \
            and restarts(running, proposed) and recently_left(memory, proposed, inputs.now_s, inputs.allocation_watts):
        # No A -> B -> A within RECENT_SECONDS under the same allocation: the best plan elsewhere instead.
        avoid = blocked(memory, inputs.now_s, inputs.allocation_watts) - {configuration_key(running.config)}
        other, other_candidate, other_result = propose_elsewhere(inputs, memory, load, avoid, energy_model)
        if other is not None:
            proposed, candidate, result = other, other_candidate, other_result
    in_place: Candidate | None = None
    if running is not None and inputs.fleet.exists and proposed != running and restarts(running, proposed):
        in_place = rescale(inputs, memory, load, energy_model)
    verdict = switching_rule(facts(inputs, memory, load, proposed, candidate, result, energy_model, in_place))
    if in_place is not None and verdict.apply == plan_of(in_place) and verdict.cause != "drift":
        proposed, candidate = verdict.apply, in_place  # what is applied is what status shows
    if verdict.apply is not None and verdict.cause != "drift":
        if running is not None and restarts(running, verdict.apply):
            memory = remember_left(memory, running, inputs.now_s, inputs.allocation_watts)
        memory = remember_applied(memory, verdict.apply, load, inputs.now_s)
    advised = advise(inputs, memory, load, verdict.apply or memory.running, energy_model)
    surge = surge_fits(candidate, inputs.allocation_watts)
    return TickDecision(verdict.action, verdict.cause, verdict.reason, verdict.apply, proposed, candidate, result,
                        load, memory, surge, advised)

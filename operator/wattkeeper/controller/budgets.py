"""Reconcile one EnergyBudget: measure, account energy over the period, forecast, allocate watts.

`account` is pure; `reconcile_budget` reads, calls it, writes the status and re-reconciles the services whose
allocation changed, so that a budget change reaches the Deployments at once rather than at the next tick.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from wattkeeper.api import EnergyBudget, LLMService, duration_seconds
from wattkeeper.energy.types import Workload
from wattkeeper.planner import ServiceDemand, allocate_watts, plan
from wattkeeper.telemetry import TelemetryUnavailable
from wattkeeper.telemetry.batch import observe_many

from .conditions import set_condition
from .planning import plan_request
from .services import Dependencies, reconcile_service, services_selected
from .snapshot import Snapshot

log = logging.getLogger("wattkeeper.budgets")
MAX_SAMPLES = 120


@dataclass(frozen=True)
class Accounting:
    status: dict[str, Any]
    cap_watts: float | None  # watts to allocate: the power limit, tightened by what the energy allowance leaves


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def account(budget: EnergyBudget, old: dict[str, Any], measured_watts: float | None, now: datetime,
            interval_seconds: float) -> Accounting:
    """Integrate measured power into the period's energy, keep the window's samples, forecast exhaustion."""
    status = dict(old)
    spec = budget.spec
    cap: float | None = spec.power.limit_watts if spec.power else None
    last = _parse(old.get("lastAccountedAt"))
    if measured_watts is not None:
        samples = [s for s in (old.get("powerSamples") or []) if len(s) == 2]
        window = duration_seconds(spec.power.window) if spec.power else 300.0
        samples.append([round(now.timestamp(), 1), round(measured_watts, 1)])
        samples = [s for s in samples if s[0] >= now.timestamp() - window][-MAX_SAMPLES:]
        status["powerSamples"] = samples
        average = sum(s[1] for s in samples) / len(samples)
        status["measuredWatts"] = round(measured_watts, 1)
        status["windowAverageWatts"] = round(average, 1)
        status["burnRateWatts"] = round(average, 1)
    if spec.energy:
        period = timedelta(seconds=duration_seconds(spec.energy.period))
        start = _parse(old.get("periodStart")) or now
        used_kwh = float(old.get("energyUsedKilowattHours") or 0.0)
        if now - start >= period:  # a new period: usage resets, the start stays aligned to the first one
            start += period * int((now - start) / period)
            used_kwh = 0.0
        if measured_watts is not None and last is not None:
            # A gap (operator down) is charged at the power measured now: an estimate beats losing it.
            dt = max(0.0, min((now - last).total_seconds(), period.total_seconds()))
            used_kwh += measured_watts * dt / 3.6e6
        limit = spec.energy.limit_kilowatt_hours
        remaining = max(limit - used_kwh, 0.0)
        status["periodStart"] = _iso(start)
        status["energyUsedKilowattHours"] = round(used_kwh, 6)
        status["remainingKilowattHours"] = round(remaining, 6)
        burn = status.get("burnRateWatts")
        period_end = start + period
        left_s = max((period_end - now).total_seconds(), interval_seconds)
        if burn and burn > 0:
            exhaustion = now + timedelta(seconds=remaining * 3.6e6 / burn)
            status["forecastExhaustion"] = _iso(exhaustion) if exhaustion < period_end else None
        # What the allowance leaves, spread evenly over the rest of the period, caps the power too.
        energy_cap = remaining * 3.6e6 / left_s
        cap = energy_cap if cap is None else min(cap, energy_cap)
    if measured_watts is not None:
        status["lastAccountedAt"] = _iso(now)
    return Accounting({k: v for k, v in status.items() if v is not None}, cap)


def _service_load(service: LLMService, status: dict[str, Any]) -> Workload:
    observed = status.get("observed") or {}
    plan_status = status.get("plan") or {}
    rps = observed.get("requestsPerSecond", plan_status.get("plannedLoadRps"))
    return Workload(
        requests_per_second=float(rps if rps is not None else service.spec.workload.requests_per_second),
        input_tokens=float(plan_status.get("plannedInputTokens") or service.spec.workload.input_tokens),
        output_tokens=float(plan_status.get("plannedOutputTokens") or service.spec.workload.output_tokens),
    )


def demands(deps: Dependencies, raws: list[dict[str, Any]]) -> list[ServiceDemand]:
    out = []
    for raw in raws:
        try:
            service = LLMService.model_validate(raw)
        except ValidationError:
            continue
        status = raw.get("status") or {}
        correction = float((status.get("observed") or {}).get("powerCorrection") or 1.0)
        request = plan_request(service, _service_load(service, status), None, correction)
        unconstrained = plan(request, deps.energy_model)
        chosen = unconstrained.chosen
        desired = chosen.total_watts if chosen else 0.0
        # The request has no cap, so the unconstrained plan is also the least watts that meet the SLOs.
        minimum = desired if unconstrained.feasible and chosen else None
        # The floor: what the smallest fleet draws at this load (min replicas, serving what it can). Below it a
        # service cannot go, so the allocator hands floors out first instead of leaving a service 0 W.
        smallest = plan(replace(request, power_cap_watts=1e-6, fallback="ProtectBudget"), deps.energy_model).chosen
        floor = min(smallest.total_watts, desired) if smallest and chosen else (smallest.total_watts if smallest else 0.0)
        out.append(ServiceDemand(name=service.metadata.name, priority=service.spec.priority,
                                 minimum_watts=minimum, desired_watts=desired, floor_watts=floor,
                                 joules_per_token=chosen.joules_per_token if chosen else float("inf")))
    return out


def reconcile_budget(deps: Dependencies, body: dict[str, Any], trigger: str, snapshot: Snapshot | None = None) -> None:
    """`snapshot`: the control loop's reads of this pass; None (a handler) reads for itself."""
    kube, metrics = deps.kube, deps.metrics
    metrics.reconciles.labels("EnergyBudget", trigger).inc()
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    old = dict(body.get("status") or {})
    now = datetime.now(UTC)
    generation = meta.get("generation")
    try:
        budget = EnergyBudget.model_validate(body)
    except ValidationError as err:
        message = f"spec does not validate: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}"
        new = {**old, "conditions": set_condition(list(old.get("conditions") or []), "Ready", False, "InvalidSpec",
                                                  message, now, generation)}
        if kube.patch_status("energybudgets", namespace, name, old, new):
            kube.event(body, "Warning", "InvalidSpec", message)
        return
    candidates = snapshot.services_in(namespace) if snapshot is not None else \
        deps.lists.get(kube, "llmservices", namespace)
    selected = services_selected(budget, candidates)
    conditions = list(old.get("conditions") or [])
    # None until something is measured: a budget whose services draw nothing measurable accounts nothing and
    # so writes nothing, where 0.0 appended a sample (a write) every pass.
    measured: float | None = None
    missing: list[str] = []
    running = [raw["metadata"]["name"] for raw in selected if (raw.get("status") or {}).get("readyReplicas")]
    batch = snapshot.observations if snapshot is not None else \
        observe_many(deps.telemetry, [(namespace, n) for n in running], deps.settings.telemetry_window_seconds)
    outcomes = {n: batch.get((namespace, n)) for n in running}
    for service_name in running:
        outcome = outcomes.get(service_name)
        if outcome is None:
            missing.append(f"{service_name}: not measured in this pass")
        elif isinstance(outcome, TelemetryUnavailable):
            missing.append(f"{service_name}: {outcome.reason}")
        else:
            measured = (measured or 0.0) + outcome.watts
    if missing:
        measured = None  # a partial sum would read as a saving; account nothing rather than too little
        conditions = set_condition(conditions, "TelemetryAvailable", False, "TelemetryUnavailable",
                                   "; ".join(missing), now, generation)
    else:
        conditions = set_condition(conditions, "TelemetryAvailable", True, "Measured",
                                   f"{len(selected)} services measured", now, generation)
    acc = account(budget, old, measured, now, deps.settings.interval_seconds)
    status = dict(acc.status)
    status["services"] = sorted(r["metadata"]["name"] for r in selected)
    service_demands = demands(deps, selected)
    projected = sum(d.desired_watts for d in service_demands)
    allocations: list[dict[str, Any]] = []
    if acc.cap_watts is not None and service_demands:
        by_name = {d.name: d for d in service_demands}
        for a in allocate_watts(acc.cap_watts, service_demands):
            demand = by_name[a.name]
            entry = {"service": a.name, "priority": demand.priority, "watts": round(a.watts, 1),
                     "degraded": a.degraded, "reason": a.reason}
            if demand.minimum_watts is not None:
                entry["minimumWatts"] = round(demand.minimum_watts, 1)
            allocations.append(entry)
        projected = sum(min(a["watts"], d.desired_watts) for a, d in zip(allocations, service_demands, strict=False))
    status["allocations"] = allocations
    status["projectedWatts"] = round(projected, 1)
    limit = acc.cap_watts
    window_avg = status.get("windowAverageWatts")
    if limit is None:
        conditions = set_condition(conditions, "WithinBudget", True, "NoLimit", "no power or energy limit", now,
                                   generation)
    elif window_avg is None:
        conditions = set_condition(conditions, "WithinBudget", None, "NoMeasurement",
                                   f"limit {limit:.0f} W; nothing measured yet", now, generation)
    else:
        ok = window_avg <= limit * 1.02
        conditions = set_condition(conditions, "WithinBudget", ok, "WithinLimit" if ok else "OverLimit",
                                   f"window average {window_avg:.0f} W against {limit:.0f} W", now, generation)
    degraded = [a["service"] for a in allocations if a["degraded"]]
    conditions = set_condition(conditions, "Ready", True, "Allocated" if not degraded else "Degraded",
                               (f"{len(allocations)} services allocated" if not degraded else
                                f"the budget cannot cover every SLO; degraded (lowest priority first): "
                                f"{', '.join(degraded)}"), now, generation)
    status["conditions"] = conditions
    status["observedGeneration"] = generation
    old_allocations = {a.get("service"): a.get("watts") for a in old.get("allocations") or []}
    new_allocations = {a["service"]: a["watts"] for a in allocations}
    wrote = kube.patch_status("energybudgets", namespace, name, old, status)
    # The new allocations reach the services in memory: the pass's snapshot and the handlers' list cache.
    deps.lists.update_status("energybudgets", namespace, name, status)
    if snapshot is not None:
        snapshot.set_budget_status(namespace, name, status)
    if wrote:
        newly_degraded = set(degraded) - {a.get("service") for a in old.get("allocations") or [] if a.get("degraded")}
        if newly_degraded:
            kube.event(body, "Warning", "Degraded",
                       f"{limit:.0f} W cannot cover every SLO: degrading {', '.join(sorted(newly_degraded))} first")
    if measured is not None:
        metrics.budget_watts.labels(namespace, name).set(measured)
    if limit is not None:
        metrics.budget_limit_watts.labels(namespace, name).set(limit)
    # Services whose allocation changed re-plan now, not at their next tick.
    changed = {s for s in set(old_allocations) | set(new_allocations)
               if _changed(old_allocations.get(s), new_allocations.get(s))}
    if changed or trigger in ("create", "update", "delete"):
        targets = [raw for raw in selected
                   if trigger in ("create", "update", "delete") or raw["metadata"]["name"] in changed]
        reconcile_many(deps, targets, "budget", snapshot)


def reconcile_many(deps: Dependencies, bodies: list[dict[str, Any]], trigger: str,
                   snapshot: Snapshot | None = None) -> int:
    """Reconcile services concurrently on a bounded pool; one that fails is logged and counted, never stops the
    others. Returns how many failed."""
    def one(raw: dict[str, Any]) -> bool:
        meta = raw["metadata"]
        try:
            reads = None
            if snapshot is not None:
                reads = snapshot.reads(meta["namespace"], meta["name"])
                with snapshot.lock:
                    snapshot.reconciled.add((meta["namespace"], meta["name"]))
            reconcile_service(deps, raw, trigger, reads)
            return True
        except Exception as err:  # one service's failure must not stop the others
            deps.metrics.errors.labels("llmservices").inc()
            log.warning("reconcile of LLMService %s/%s (%s) failed: %s: %s", meta.get("namespace"),
                        meta.get("name"), trigger, type(err).__name__, err)
            return False
    if len(bodies) <= 1:
        return sum(not one(b) for b in bodies)
    workers = min(deps.settings.reconcile_workers, len(bodies))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"wattkeeper-{trigger}") as pool:
        return sum(not ok for ok in pool.map(one, bodies))


def _changed(before: float | None, after: float | None) -> bool:
    if before is None or after is None:
        return before != after
    return abs(before - after) > max(1.0, 0.01 * max(before, after))


def release_services(deps: Dependencies, body: dict[str, Any]) -> None:
    """A budget went away: its services re-plan without its allocation."""
    namespace = body["metadata"]["namespace"]
    try:
        budget = EnergyBudget.model_validate(body)
    except ValidationError:
        return
    deps.lists.invalidate("energybudgets", namespace)
    reconcile_many(deps, services_selected(budget, deps.kube.list_custom("llmservices", namespace)),
                   "budget-deleted")

"""Reconcile one EnergyBudget: the adapter around the pure budget decision (`wattkeeper.control.budget`).

`reconcile_budget` reads the budget and its services and their power, maps them to the core's inputs, calls
`decide_budget`, writes the status and re-reconciles the services whose allocation changed, so that a budget
change reaches the Deployments at once rather than at the next tick.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from wattkeeper.api import EnergyBudget, LLMService, duration_seconds
from wattkeeper.control.budget import (
    BudgetAccounting,
    BudgetIntent,
    BudgetMemory,
    ServiceLoad,
    decide_budget,
)
from wattkeeper.control.planning import allocation_changed
from wattkeeper.energy.types import Workload
from wattkeeper.render import canary_name
from wattkeeper.telemetry import ServiceObservation, TelemetryUnavailable
from wattkeeper.telemetry.batch import observe_many

from .conditions import set_condition
from .decide import measured_watts, memory_from_status
from .planning import intent_from_service
from .services import DeferredEvents, Dependencies, canary_expected, reconcile_service, services_selected
from .snapshot import Snapshot

log = logging.getLogger("wattkeeper.budgets")
SNAPSHOT_ABOVE = 20  # services to re-reconcile after a budget change above which one LIST per kind is cheaper


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _iso_s(seconds: float | None) -> str | None:
    return _iso(datetime.fromtimestamp(seconds, tz=UTC)) if seconds is not None else None


def _seconds(text: str | None) -> float | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def budget_intent(budget: EnergyBudget) -> BudgetIntent:
    spec = budget.spec
    return BudgetIntent(
        power_limit_watts=spec.power.limit_watts if spec.power else None,
        power_window_seconds=duration_seconds(spec.power.window) if spec.power else 300.0,
        energy_limit_kwh=spec.energy.limit_kilowatt_hours if spec.energy else None,
        energy_period_seconds=duration_seconds(spec.energy.period) if spec.energy else None,
    )


def budget_memory(status: dict[str, Any]) -> BudgetMemory:
    """What accounting carries over, as the budget's status keeps it."""
    return BudgetMemory(
        power_samples=tuple((float(s[0]), float(s[1])) for s in status.get("powerSamples") or [] if len(s) == 2),
        period_start_s=_seconds(status.get("periodStart")),
        energy_used_kwh=float(status.get("energyUsedKilowattHours") or 0.0),
        last_accounted_s=_seconds(status.get("lastAccountedAt")),
    )


def accounting_status(budget: EnergyBudget, old: dict[str, Any], acc: BudgetAccounting) -> dict[str, Any]:
    status = dict(old)
    m = acc.memory
    if acc.measured_watts is not None:
        status["powerSamples"] = [list(s) for s in m.power_samples]
        status["measuredWatts"] = round(acc.measured_watts, 1)
        status["windowAverageWatts"] = acc.window_average_watts
        status["burnRateWatts"] = acc.window_average_watts
        status["lastAccountedAt"] = _iso_s(m.last_accounted_s)
    if budget.spec.energy:
        status["periodStart"] = _iso_s(m.period_start_s)
        status["energyUsedKilowattHours"] = m.energy_used_kwh
        status["remainingKilowattHours"] = acc.remaining_kwh
        status["forecastExhaustion"] = _iso_s(acc.forecast_exhaustion_s)
    return {k: v for k, v in status.items() if v is not None}


def service_load(service: LLMService, status: dict[str, Any]) -> ServiceLoad:
    """A selected service for the allocation: the load the service itself plans for (its stabilised offered rate,
    `peakLoadRps`: finished requests plus the queue), else the finished rate, else the planned-for load, else the
    spec's. The finished rate alone is what a saturated fleet manages, not what arrives: a budget sized on it
    shrinks with each cut (less served, less "needed") until every service runs its smallest batch."""
    observed = status.get("observed") or {}
    plan_status = status.get("plan") or {}
    rps = observed.get("peakLoadRps", observed.get("requestsPerSecond", plan_status.get("plannedLoadRps")))
    load = Workload(
        requests_per_second=float(rps if rps is not None else service.spec.workload.requests_per_second),
        input_tokens=float(plan_status.get("plannedInputTokens") or service.spec.workload.input_tokens),
        output_tokens=float(plan_status.get("plannedOutputTokens") or service.spec.workload.output_tokens),
    )
    intent = intent_from_service(service)
    return ServiceLoad(name=service.metadata.name, priority=service.spec.priority,
                       intent=intent, load=load,
                       power_correction=float(observed.get("powerCorrection") or 1.0),
                       # Its learned latency margins: the budget prices its demand as its tick plans.
                       margins=memory_from_status(status, intent.default_workload).margins,
                       miss_scale=float(observed.get("missScale") or 1.0))


def service_loads(raws: list[dict[str, Any]]) -> list[ServiceLoad]:
    out = []
    for raw in raws:
        try:
            service = LLMService.model_validate(raw)
        except ValidationError:
            continue
        out.append(service_load(service, raw.get("status") or {}))
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
    started = time.monotonic()
    if snapshot is None and trigger in ("create", "update", "delete"):
        # A change re-reconciles every selected service: take one pass's reads now and plan the budget on them
        # too (listing the services twice cost a second at 1,000 of them before the first write).
        snapshot = Snapshot.take(kube, namespace, only=lambda services: services_selected(budget, services),
                                 selector=budget.spec.selector.as_query())
        snapshot.measure(deps)
    candidates = snapshot.services_in(namespace) if snapshot is not None else \
        deps.lists.get(kube, "llmservices", namespace)
    selected = services_selected(budget, candidates)
    conditions = list(old.get("conditions") or [])
    # None until something is measured: a budget whose services draw nothing measurable accounts nothing and
    # so writes nothing, where 0.0 appended a sample (a write) every pass.
    measured: float | None = None
    missing: list[str] = []
    running = [raw["metadata"]["name"] for raw in selected if (raw.get("status") or {}).get("readyReplicas")]
    # A canary's watts belong to its service (it serves the service's traffic from the service's allocation):
    # added where this pass measured them. A canary not measured (not ready yet, or silent) adds nothing rather
    # than making the whole sum unknown: one replica beside the fleet, for a few windows.
    # (Not where an LLMService bears the canary's name: that Deployment is its own, and counted as such.)
    known = {raw["metadata"]["name"] for raw in candidates}
    canaries = {raw["metadata"]["name"] for raw in selected
                if canary_expected(raw.get("status") or {}) and canary_name(raw["metadata"]["name"]) not in known}
    if snapshot is not None:
        batch = snapshot.observations
    else:
        batch = observe_many(deps.telemetry, [(namespace, n) for n in running]
                             + [(namespace, canary_name(n)) for n in running if n in canaries],
                             deps.settings.telemetry_window_seconds)
    outcomes = {n: batch.get((namespace, n)) for n in running}
    for service_name in running:
        outcome = outcomes.get(service_name)
        if outcome is None:
            missing.append(f"{service_name}: not measured in this pass")
        elif isinstance(outcome, TelemetryUnavailable):
            missing.append(f"{service_name}: {outcome.reason}")
        else:
            canary = batch.get((namespace, canary_name(service_name))) if service_name in canaries else None
            measured = (measured or 0.0) + measured_watts(
                outcome, canary if isinstance(canary, ServiceObservation) else None)
    if missing:
        measured = None  # a partial sum would read as a saving; account nothing rather than too little
        conditions = set_condition(conditions, "TelemetryAvailable", False, "TelemetryUnavailable",
                                   "; ".join(missing), now, generation)
    else:
        conditions = set_condition(conditions, "TelemetryAvailable", True, "Measured",
                                   f"{len(selected)} services measured", now, generation)
    read_s = time.monotonic() - started
    decision = decide_budget(budget_intent(budget), budget_memory(old), service_loads(selected), measured,
                             now.timestamp(), deps.settings.interval_seconds, deps.energy_model)
    decided_s = time.monotonic() - started
    status = accounting_status(budget, old, decision.accounting)
    status["services"] = sorted(r["metadata"]["name"] for r in selected)
    allocations: list[dict[str, Any]] = []
    for a in decision.allocations:
        entry: dict[str, Any] = {"service": a.name, "priority": a.priority, "watts": a.allocation_watts,
                                 "floorWatts": a.floor_watts, "degraded": a.degraded, "reason": a.reason}
        if a.minimum_watts is not None:
            entry["minimumWatts"] = a.minimum_watts
        allocations.append(entry)
    status["allocations"] = allocations
    status["projectedWatts"] = decision.projected_watts
    limit = decision.accounting.allocatable_watts
    conditions = set_condition(conditions, "WithinBudget", decision.within, decision.within_reason,
                               decision.within_message, now, generation)
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
               if allocation_changed(old_allocations.get(s), new_allocations.get(s))}
    if changed or trigger in ("create", "update", "delete"):
        targets = [raw for raw in selected
                   if trigger in ("create", "update", "delete") or raw["metadata"]["name"] in changed]
        if snapshot is None and len(targets) > SNAPSHOT_ABOVE:
            # Many services at once (a budget change over 100 of them): five LISTs beat three GETs per service.
            snapshot = Snapshot.take(kube, namespace)
            snapshot.set_budget_status(namespace, name, status)
            targets = [snapshot.services.get((namespace, raw["metadata"]["name"]), raw) for raw in targets]
        written_s = time.monotonic() - started
        reconcile_many(deps, targets, "budget", snapshot, events_last=True)
        # Where a change's time goes (issue 14: a cut should reach 100 Deployments within 5 s).
        log.info("EnergyBudget %s/%s (%s): %d services read in %.2f s, allocated by %.2f s, status by %.2f s, "
                 "%d re-reconciled by %.2f s", namespace, name, trigger, len(selected), read_s, decided_s, written_s,
                 len(targets), time.monotonic() - started)


def reconcile_many(deps: Dependencies, bodies: list[dict[str, Any]], trigger: str,
                   snapshot: Snapshot | None = None, events_last: bool = False) -> int:
    """Reconcile services concurrently on a bounded pool; one that fails is logged and counted, never stops the
    others. Returns how many failed. `events_last`: post the services' Events after every service's objects and
    status are written (a budget change: its Deployments first, the Events saying so after)."""
    deferred: DeferredEvents | None = [] if events_last else None

    def one(raw: dict[str, Any]) -> bool:
        meta = raw["metadata"]
        try:
            reads = None
            if snapshot is not None:
                reads = snapshot.reads(meta["namespace"], meta["name"])
                with snapshot.lock:
                    snapshot.reconciled.add((meta["namespace"], meta["name"]))
            reconcile_service(deps, raw, trigger, reads, deferred)
            return True
        except Exception as err:  # one service's failure must not stop the others
            deps.metrics.errors.labels("llmservices").inc()
            log.warning("reconcile of LLMService %s/%s (%s) failed: %s: %s", meta.get("namespace"),
                        meta.get("name"), trigger, type(err).__name__, err)
            return False
    if len(bodies) <= 1:
        failed = sum(not one(b) for b in bodies)
        _post(deps, deferred or [], None)
        return failed
    workers = min(deps.settings.reconcile_workers, len(bodies))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"wattkeeper-{trigger}") as pool:
        failed = sum(not ok for ok in pool.map(one, bodies))
        _post(deps, deferred or [], pool)
    return failed


def _post(deps: Dependencies, events: DeferredEvents, pool: ThreadPoolExecutor | None) -> None:
    """Post deferred Events (best effort, as `Kube.event` always is), on the fan-out's pool when there is one."""
    def post(event: tuple[dict[str, Any], str, str, str]) -> None:
        deps.kube.event(*event)
    if pool is None:
        for event in events:
            post(event)
    else:
        list(pool.map(post, events))


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

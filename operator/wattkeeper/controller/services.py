"""Reconcile one LLMService: read what the decision needs, decide (pure), write only what changed."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from wattkeeper.api import EnergyBudget, EnergyProfile, Enforcement, LLMService
from wattkeeper.control.budget import BudgetShare, shares_to_allocation
from wattkeeper.energy.model import EnergyModel
from wattkeeper.render import LABEL_SERVICE, render_deployment, render_service
from wattkeeper.render.objects import ANNOTATION_CONFIG_HASH
from wattkeeper.telemetry import TelemetrySource, TelemetryUnavailable

from .conditions import set_condition
from .decide import Allocation, DeploymentState, ServiceDecision, ServiceInputs, decide
from .kube import Kube
from .metrics import OperatorMetrics
from .settings import OperatorSettings

log = logging.getLogger("wattkeeper.services")


@dataclass
class Dependencies:
    """Everything a handler needs, injected through kopf's memo: no module-global clients."""

    kube: Kube
    telemetry: TelemetrySource
    energy_model: EnergyModel
    settings: OperatorSettings
    metrics: OperatorMetrics
    # One reconcile at a time per service: the timer, a spec change and a budget change may race.
    locks: defaultdict[str, threading.Lock] = field(default_factory=lambda: defaultdict(threading.Lock))
    # This instance's kopf peering priority, set when kopf starts; the control loop runs only while it is highest.
    peering_priority: int | None = None


def allocation_for(service: LLMService, budgets: list[dict[str, Any]]) -> Allocation:
    """The tightest enforced allocation over the budgets that select the service; Advise budgets advise."""
    shares: list[BudgetShare] = []
    for raw in budgets:
        try:
            budget = EnergyBudget.model_validate(raw)
        except ValidationError:
            continue
        if raw.get("metadata", {}).get("deletionTimestamp"):
            continue
        if not budget.spec.selector.matches(service.metadata.labels):
            continue
        enforced = budget.spec.enforcement == Enforcement.ENFORCE
        watts = next((e.watts for e in budget.status.allocations if e.service == service.metadata.name), None)
        shares.append(BudgetShare(budget.metadata.name, enforced, watts))
    return allocation_from_shares(shares)


def allocation_from_shares(shares: list[BudgetShare]) -> Allocation:
    """The Allocation of the decision's adapter from each selecting budget's share (from status, or handed over
    in memory by the budget reconcile)."""
    combined = shares_to_allocation(shares)
    return Allocation(
        watts=combined.allocation_watts, budget=combined.budget, budgets=combined.budgets,
        enforced=combined.allocation_watts is not None or combined.advised_watts is None,
        advised_watts=combined.advised_watts, advised_budget=combined.advised_budget,
    )


def deployment_state(deployment: dict[str, Any] | None) -> DeploymentState:
    if deployment is None:
        return DeploymentState()
    status = deployment.get("status") or {}
    return DeploymentState(
        exists=True,
        config_hash=(deployment.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_CONFIG_HASH),
        replicas=int(deployment.get("spec", {}).get("replicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        updated_replicas=int(status.get("updatedReplicas") or 0),
    )


def profile_points(service: LLMService, profiles: list[dict[str, Any]]) -> list[Any]:
    points: list[Any] = []
    for raw in profiles:
        try:
            profile = EnergyProfile.model_validate(raw)
        except ValidationError:
            continue
        if profile.spec.model_name == service.spec.model.name and profile.spec.accelerator == service.spec.accelerator.type:
            points.extend(profile.spec.points)
    return points


def reconcile_service(deps: Dependencies, body: dict[str, Any], trigger: str) -> ServiceDecision | None:
    """One pass of the control loop for one service. Never raises for bad input: it reports it in status."""
    meta = body["metadata"]
    with deps.locks[f"{meta['namespace']}/{meta['name']}"]:
        # Re-read under the lock: the body a handler got may predate another reconcile's status write.
        fresh = deps.kube.get_custom("llmservices", meta["namespace"], meta["name"])
        if fresh is None:
            return None
        return _reconcile_service(deps, fresh, trigger)


def _reconcile_service(deps: Dependencies, body: dict[str, Any], trigger: str) -> ServiceDecision | None:
    kube, metrics = deps.kube, deps.metrics
    metrics.reconciles.labels("LLMService", trigger).inc()
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if meta.get("deletionTimestamp"):
        return None
    old_status = dict(body.get("status") or {})
    try:
        service = LLMService.model_validate(body)
    except ValidationError as err:
        # The schema rejects nearly everything; what slips through (say an old object stored before a schema
        # change) is reported, and nothing that runs is touched.
        message = f"spec does not validate: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}"
        now = datetime.now(UTC)
        new_status = {**old_status, "conditions": set_condition(list(old_status.get("conditions") or []), "Degraded",
                                                                True, "InvalidSpec", message, now)}
        if kube.patch_status("llmservices", namespace, name, old_status, new_status):
            kube.event(body, "Warning", "InvalidSpec", message)
        return None

    budgets = kube.list_custom("energybudgets", namespace)
    profiles = kube.list_custom("energyprofiles", namespace)
    deployment = kube.get_deployment(namespace, name)
    state = deployment_state(deployment)
    observation, telemetry_error = None, None
    if state.exists and state.ready_replicas > 0:
        try:
            observation = deps.telemetry.observe_service(namespace, name, deps.settings.telemetry_window_seconds)
        except TelemetryUnavailable as err:
            telemetry_error = err.reason
    inputs = ServiceInputs(
        service=service, status=old_status, allocation=allocation_for(service, budgets), observation=observation,
        telemetry_error=telemetry_error, deployment=state, now=datetime.now(UTC),
        profile=profile_points(service, profiles), trigger=trigger,
        telemetry_window_seconds=deps.settings.telemetry_window_seconds,
    )
    started = time.perf_counter()
    decision = decide(inputs, deps.energy_model, deps.settings)
    metrics.plan_seconds.observe(time.perf_counter() - started)
    metrics.decisions.labels(decision.action).inc()

    if decision.apply is not None:
        kube.apply(render_deployment(service, decision.apply, surge=decision.surge))
        kube.apply(render_service(service))
    elif state.exists and deployment is not None and not _service_exists(kube, namespace, name):
        kube.apply(render_service(service))
    kube.patch_status("llmservices", namespace, name, old_status, decision.status)
    for type_, reason, message in decision.events:
        kube.event(body, type_, reason, message)
    predicted = ((decision.status.get("plan") or {}).get("predicted") or {}).get("watts")
    if predicted is not None:
        metrics.predicted_watts.labels(namespace, name).set(predicted)
    if observation is not None:
        metrics.measured_watts.labels(namespace, name).set(observation.watts)
    return decision


def _service_exists(kube: Kube, namespace: str, name: str) -> bool:
    try:
        kube.core.read_namespaced_service(name, namespace)
    except ApiException as err:
        if err.status != 404:
            log.warning("cannot read Service %s/%s: %s %s", namespace, name, err.status, err.reason)
        return False
    return True


def services_selected(kube: Kube, budget: EnergyBudget, namespace: str) -> list[dict[str, Any]]:
    return [raw for raw in kube.list_custom("llmservices", namespace)
            if budget.spec.selector.matches((raw.get("metadata") or {}).get("labels") or {})]


def pods_selector(service_name: str) -> str:
    return f"{LABEL_SERVICE}={service_name}"

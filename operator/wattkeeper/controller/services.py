"""Reconcile one LLMService: read what the decision needs, decide (pure), write only what changed."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from wattkeeper.api import EnergyBudget, EnergyProfile, Enforcement, LLMService
from wattkeeper.control.budget import BudgetShare, shares_to_allocation
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import Plan
from wattkeeper.render import (
    CANARY_SUFFIX,
    LABEL_ROLE,
    LABEL_SERVICE,
    ROLE_CANARY,
    RenderError,
    canary_name,
    render_canary_deployment,
    render_deployment,
    render_service,
)
from wattkeeper.render.objects import ANNOTATION_CONFIG_HASH, GPU_RESOURCE
from wattkeeper.telemetry import ServiceObservation, TelemetrySource, TelemetryUnavailable

from .conditions import set_condition
from .decide import (
    Allocation,
    DeploymentState,
    ServiceDecision,
    ServiceInputs,
    canary_plan,
    decide,
    measured_watts,
    running_plan,
)
from .kube import Kube
from .metrics import OperatorMetrics, set_if_changed
from .powerlimits import pod_limit_patches
from .profile_check import rejected_points
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
    # Budgets and profiles per namespace for handler-driven reconciles: one LIST per kind shared by a burst.
    lists: ListCache = field(default_factory=lambda: ListCache())
    # When each service was last reconciled (monotonic): one written since a pass listed it is re-read.
    written_at: dict[str, float] = field(default_factory=dict)
    # The control loop's health for the liveness probe: why it is unhealthy, or None.
    liveness: Callable[[], str | None] | None = None


class ListCache:
    """LISTs of a kind in a namespace, shared for `ttl_seconds` and written through by our own status writes,
    so a burst of handler reconciles (1,000 services created at once) lists budgets and profiles once, not
    once per service. Budget and profile handlers invalidate their namespace."""

    def __init__(self, ttl_seconds: float = 2.0) -> None:
        self.ttl_seconds = ttl_seconds
        self._entries: dict[tuple[str, str], tuple[float, list[dict[str, Any]]]] = {}
        self._lock = threading.Lock()

    def get(self, kube: Kube, plural: str, namespace: str) -> list[dict[str, Any]]:
        key = (plural, namespace)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and time.monotonic() - entry[0] < self.ttl_seconds:
                return entry[1]
        items = kube.list_custom(plural, namespace)
        self.put(plural, namespace, items)
        return items

    def put(self, plural: str, namespace: str, items: list[dict[str, Any]]) -> None:
        with self._lock:
            self._entries[(plural, namespace)] = (time.monotonic(), items)

    def update_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Our own status write, seen at once by the next reader (an allocation reaches services in memory)."""
        with self._lock:
            entry = self._entries.get((plural, namespace))
            if entry is None:
                return
            items = [({**item, "status": status} if item["metadata"]["name"] == name else item) for item in entry[1]]
            self._entries[(plural, namespace)] = (entry[0], items)

    def invalidate(self, plural: str, namespace: str) -> None:
        with self._lock:
            self._entries.pop((plural, namespace), None)

    def prune(self) -> None:
        """Drop expired LISTs: a stale one is never read again, and 1,000 services' bodies held between bursts
        are tens of megabytes of the operator's memory."""
        now = time.monotonic()
        with self._lock:
            self._entries = {k: e for k, e in self._entries.items() if now - e[0] < self.ttl_seconds}


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
            rejected = rejected_points(profile)  # the status names them; the planner never sees them
            points.extend(p for i, p in enumerate(profile.spec.points) if i not in rejected)
            points.extend(profile.status.points)  # measured by the profiler Job (spec.sweep)
    return points


@dataclass
class Reads:
    """What one service's reconcile reads. The control loop fills it from one LIST per kind per pass and one
    telemetry batch; a handler (one service changed) leaves it None and the reconcile reads for itself."""

    budgets: list[dict[str, Any]]
    profiles: list[dict[str, Any]]
    deployment: dict[str, Any] | None
    service: dict[str, Any] | None
    observation: ServiceObservation | TelemetryUnavailable | None = None  # None: not measured in the batch
    listed_at: float = 0.0  # monotonic time of the LISTs these reads come from
    # The Deployment named `<name>-canary` (the service's canary, or a conflict: see `canary_conflict`), and its
    # pods' observation (None: not measured in the batch).
    canary_deployment: dict[str, Any] | None = None
    canary_observation: ServiceObservation | TelemetryUnavailable | None = None


def canary_expected(status: dict[str, Any]) -> bool:
    """Whether status says a canary runs: only then are its Deployment read and its pods measured, so a service
    without one costs no extra request or query."""
    return canary_plan(status) is not None


def _owned_by(service: LLMService, obj: dict[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    uid = service.metadata.uid
    owners = meta.get("ownerReferences") or []
    if uid and owners:
        return any(o.get("uid") == uid and o.get("kind") == "LLMService" for o in owners)
    return (meta.get("labels") or {}).get(LABEL_SERVICE) == service.metadata.name  # no uid to compare: the label


def is_canary_of(service: LLMService, deployment: dict[str, Any] | None) -> bool:
    """Whether a Deployment is this service's canary (labelled so and owned by it)."""
    if deployment is None:
        return False
    labels = (deployment.get("metadata") or {}).get("labels") or {}
    return labels.get(LABEL_ROLE) == ROLE_CANARY and labels.get(LABEL_SERVICE) == service.metadata.name \
        and _owned_by(service, deployment)


def canary_conflict(service: LLMService, deployment: dict[str, Any] | None,
                    canary_deployment: dict[str, Any] | None) -> str | None:
    """Why this service may not run a canary, where a name is taken (None: no conflict). Canaries are Deployments
    named `<service>-canary`, so an LLMService named `foo-canary` shares its Deployment's name with the canary of
    `foo`: `foo` runs no canary while a Deployment `foo-canary` it does not own exists, and `foo-canary` reports a
    Deployment of its name that is another service's canary (and leaves it alone: it is not its own)."""
    name = service.metadata.name
    if canary_deployment is not None and not is_canary_of(service, canary_deployment):
        return (f"Deployment {canary_name(name)} exists and is not this service's canary (another LLMService's "
                "Deployment?): no canary runs for this service")
    if deployment is not None and _is_foreign_canary(service, deployment):
        owner = ((deployment.get("metadata") or {}).get("labels") or {}).get(LABEL_SERVICE)
        return (f"Deployment {name} is the canary of LLMService {owner}: this service's "
                "Deployment is not applied until it ends; a name that does not end in -canary avoids this")
    return None


def canary_write(desired: dict[str, Any] | None, live: dict[str, Any] | None, owned: bool) -> str | None:
    """What to do with the canary Deployment (pure): "apply" (missing, or drifted from `desired`), "delete" (no
    canary is decided and ours runs), or None (as it should be). A Deployment of that name that is not ours is
    never touched."""
    if live is not None and not owned:
        return None
    if desired is None:
        return "delete" if live is not None else None
    if live is None or deployment_drift(desired, live) is not None:
        return "apply"
    return None


def planned_config(status: dict[str, Any]) -> Plan | None:
    """The plan the status says is applied (and so should be running); None when there is none or it is garbled."""
    try:
        return running_plan(status)
    except (ValidationError, TypeError, ValueError):
        return None


def _containers(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pod = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    return {c.get("name"): c for c in pod.get("containers") or []}


def deployment_drift(desired: dict[str, Any], live: dict[str, Any]) -> str | None:
    """What differs between the rendered Deployment and the live one, in the fields that make the plan
    (replicas, configuration, command line, image, env, GPUs); None when the live one follows the plan.
    Pure. Fields the apiserver defaults or normalises (quantities, probes) are left out on purpose."""
    want_replicas = (desired.get("spec") or {}).get("replicas")
    have_replicas = (live.get("spec") or {}).get("replicas")
    if want_replicas != have_replicas:
        return f"replicas {have_replicas} instead of {want_replicas}"
    want_hash = ((desired.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_CONFIG_HASH)
    have_hash = ((live.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_CONFIG_HASH)
    if want_hash != have_hash:
        return f"configuration {have_hash} instead of {want_hash}"
    have = _containers(live)
    for name, want in _containers(desired).items():
        got = have.get(name)
        if got is None:
            return f"container {name} missing"
        for key in ("image", "command", "args"):
            if want.get(key) != got.get(key):
                return f"container {name} {key} changed"
        if [(e.get("name"), e.get("value")) for e in want.get("env") or []] != \
                [(e.get("name"), e.get("value")) for e in got.get("env") or []]:
            return f"container {name} env changed"
        want_gpus = ((want.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE)
        got_gpus = ((got.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE)
        if str(want_gpus) != str(got_gpus):
            return f"container {name} GPUs {got_gpus} instead of {want_gpus}"
    return None


def service_drift(desired: dict[str, Any], live: dict[str, Any] | None) -> str | None:
    if live is None:
        return "Service missing"
    want, got = desired.get("spec") or {}, live.get("spec") or {}
    if want.get("selector") != got.get("selector"):
        return "Service selector changed"
    def ports(spec: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(p.get("name"), p.get("port"), str(p.get("targetPort"))) for p in spec.get("ports") or []]
    if ports(want) != ports(got):
        return "Service ports changed"
    return None


# Events a fan-out posts once every service's objects are written: (object, type, reason, message).
DeferredEvents = list[tuple[dict[str, Any], str, str, str]]


def reconcile_service(deps: Dependencies, body: dict[str, Any], trigger: str,
                      reads: Reads | None = None, deferred: DeferredEvents | None = None) -> ServiceDecision | None:
    """One pass of the control loop for one service. Never raises for bad input: it reports it in status.
    `deferred`: where to leave the service's Events instead of posting them (a fan-out posts them last)."""
    meta = body["metadata"]
    key = f"{meta['namespace']}/{meta['name']}"
    with deps.locks[key]:
        writes = deps.kube.writes_in_thread()
        fresh: dict[str, Any] | None = body
        if reads is None or deps.written_at.get(key, 0.0) > reads.listed_at:
            # Re-read under the lock: the body a handler got (or the pass listed) may predate another
            # reconcile's writes; so may everything else the pass listed for it.
            reads = None
            fresh = deps.kube.get_custom("llmservices", meta["namespace"], meta["name"])
        if fresh is None:
            return None
        try:
            return _reconcile_service(deps, fresh, trigger, reads, deferred)
        finally:
            # Only a reconcile that wrote makes a listed body stale. (An idle pass writes nothing, and a new float
            # per service per pass would be left among the pass's garbage, pinning the heap: issue 14, RSS.)
            if deps.kube.writes_in_thread() != writes:
                deps.written_at[key] = time.monotonic()


def _reads_for(deps: Dependencies, namespace: str, name: str, canary: bool) -> Reads:
    """`canary`: status says one runs, so its Deployment is read too (a stray one without status is found by the
    next pass's LIST, which lists every Deployment of the operator's)."""
    return Reads(
        budgets=deps.lists.get(deps.kube, "energybudgets", namespace),
        profiles=deps.lists.get(deps.kube, "energyprofiles", namespace),
        deployment=deps.kube.get_deployment(namespace, name),
        service=deps.kube.get_service(namespace, name),
        canary_deployment=deps.kube.get_deployment(namespace, canary_name(name)) if canary else None,
    )


def _reconcile_service(deps: Dependencies, body: dict[str, Any], trigger: str,
                       reads: Reads | None, deferred: DeferredEvents | None = None) -> ServiceDecision | None:
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

    if reads is None:
        reads = _reads_for(deps, namespace, name, canary_expected(old_status))
    deployment = reads.deployment
    state = deployment_state(deployment)
    observation: ServiceObservation | None = None
    telemetry_error: str | None = None
    if state.exists and state.ready_replicas > 0:
        outcome = _observe_pods(deps, namespace, name, reads.observation)
        if isinstance(outcome, TelemetryUnavailable):
            telemetry_error = outcome.reason
        else:
            observation = outcome
    # The canary: its Deployment only where it is ours, its pods measured only while status says it runs and a
    # replica is ready; its telemetry failing leaves its signals None, never the service's tick.
    conflict = canary_conflict(service, deployment, reads.canary_deployment)
    live_canary = reads.canary_deployment if is_canary_of(service, reads.canary_deployment) else None
    canary_state = deployment_state(live_canary)
    canary_observation: ServiceObservation | None = None
    if canary_expected(old_status) and canary_state.ready_replicas > 0:
        canary_outcome = _observe_pods(deps, namespace, canary_name(name), reads.canary_observation)
        if not isinstance(canary_outcome, TelemetryUnavailable):
            canary_observation = canary_outcome
    inputs = ServiceInputs(
        service=service, status=old_status, allocation=allocation_for(service, reads.budgets),
        observation=observation, telemetry_error=telemetry_error, deployment=state, now=datetime.now(UTC),
        profile=profile_points(service, reads.profiles), trigger=trigger,
        telemetry_window_seconds=deps.settings.telemetry_window_seconds,
        power_limits=deps.settings.power_limits,
        canary_deployment=canary_state, canary_observation=canary_observation, canary_conflict=conflict,
    )
    started = time.perf_counter()
    decision = decide(inputs, deps.energy_model, deps.settings)
    canary_live = reads.canary_deployment
    if decision.canary is not None and canary_live is None:
        # Not read (a handler's reconcile reads it only while status says one runs; a pass lists only the
        # operator's Deployments): read it before a canary is started, and where the name is taken decide again
        # with the conflict, so that status never records (nor an Event announces) a canary that cannot run.
        canary_live = kube.get_deployment(namespace, canary_name(name))
        conflict = canary_conflict(service, deployment, canary_live)
        if conflict is not None:
            inputs = replace(inputs, canary_conflict=conflict)
            decision = decide(inputs, deps.energy_model, deps.settings)
        elif is_canary_of(service, canary_live):
            live_canary = canary_live
    metrics.plan_seconds.observe(time.perf_counter() - started)
    metrics.decisions.labels(decision.action).inc()

    status = decision.status
    events = list(decision.events)
    try:
        _write_objects(deps, service, decision, deployment, reads.service, events)
        _write_canary(deps, service, decision, canary_live)
    except ApiException as err:
        if not _rejected_input(err):
            raise  # the apiserver or the network: the caller retries with backoff
        # The apiserver refuses what was rendered: say so on this service, and hold; others carry on.
        reason = _api_reason(err)
        message = f"the apiserver rejected the rendered objects ({err.status}): {reason}"
        status = {**status, "conditions": set_condition(list(status.get("conditions") or []), "Degraded", True,
                                                        "ApplyFailed", message, datetime.now(UTC),
                                                        service.metadata.generation)}
        if not any(c.get("reason") == "ApplyFailed" for c in old_status.get("conditions") or []):
            events.append(("Warning", "ApplyFailed", message))
    kube.patch_status("llmservices", namespace, name, old_status, status)
    limit = (status.get("plan") or {}).get("gpuPowerLimitWatts")
    if deps.settings.power_limits:
        # While a scale-up is bridged the running pods go without the plan's limit (control/tick.py `bridge`).
        _sync_power_limits(kube, namespace, pods_selector(name),
                           None if status.get("powerLimitLiftedFromWatts") else limit)
        if decision.canary is not None and live_canary is not None:  # the canary's pods: its own plan's limit
            _sync_power_limits(kube, namespace, canary_pods_selector(name),
                               decision.canary.config.gpu_power_limit_watts)
    elif limit is not None and decision.apply is not None:
        # A pinned limit without the node agent: say that nothing applies it rather than pretend.
        kube.event(body, "Warning", "PowerLimitNotApplied",
                   f"gpuPowerLimitWatts={limit:g} is not applied: the operator runs without --power-limits "
                   "(chart: agent.enabled), so no node agent sets GPU power limits")
    for type_, reason_, message_ in events:
        if deferred is not None:
            deferred.append((body, type_, reason_, message_))
        else:
            kube.event(body, type_, reason_, message_)
    predicted = ((status.get("plan") or {}).get("predicted") or {}).get("watts")
    if predicted is not None:
        set_if_changed(metrics.predicted_watts.labels(namespace, name), predicted)
    if observation is not None:
        set_if_changed(metrics.measured_watts.labels(namespace, name), measured_watts(observation, canary_observation))
    return decision


def _observe_pods(deps: Dependencies, namespace: str, name: str,
             outcome: ServiceObservation | TelemetryUnavailable | None) -> ServiceObservation | TelemetryUnavailable:
    """The batch's outcome for the pods of Deployment `name`, or one observation of them now."""
    if outcome is not None:
        return outcome
    try:
        return deps.telemetry.observe_service(namespace, name, deps.settings.telemetry_window_seconds)
    except TelemetryUnavailable as err:
        return err
    except Exception as err:  # a broken source is a silent one: hold, never crash or scale down
        return TelemetryUnavailable(f"telemetry failed: {type(err).__name__}: {err}")


def _sync_power_limits(kube: Kube, namespace: str, selector: str, watts: float | None) -> None:
    """The planned limit onto the pods `selector` selects, for the node agent (a metadata patch: nothing
    restarts)."""
    try:
        for pod, patch in pod_limit_patches(kube.service_pods(namespace, selector), watts):
            kube.patch_pod(namespace, pod, patch)
    except ApiException as err:  # a pod that went away meanwhile; the next tick catches up
        log.warning("cannot annotate pods %s in %s with the power limit: %s %s", selector, namespace, err.status,
                    err.reason)


def _rejected_input(err: ApiException) -> bool:
    """Whether the apiserver refused what was rendered (retrying the same body cannot help), as opposed to being
    unavailable. Server-side apply answers 500 for a body it cannot turn into a typed patch (duplicate map keys)."""
    if err.status is not None and 400 <= err.status < 500 and err.status not in (404, 408, 409, 429):
        return True
    return err.status == 500 and "failed to create typed patch object" in (err.body or "")


def _api_reason(err: ApiException) -> str:
    try:
        return str(json.loads(err.body or "{}").get("message") or err.reason)[:600]
    except ValueError:
        return str(err.reason)


def _write_canary(deps: Dependencies, service: LLMService, decision: ServiceDecision,
                  live: dict[str, Any] | None) -> None:
    """The canary Deployment as decided: applied (created, or repaired where it drifted), or deleted when the
    decision has none. The core decides; this only renders."""
    kube = deps.kube
    namespace, name = service.metadata.namespace or "", canary_name(service.metadata.name)
    desired: dict[str, Any] | None = None
    if decision.canary is not None:
        try:
            desired = render_canary_deployment(service, decision.canary)
        except RenderError as err:
            log.warning("cannot render the canary of %s/%s: %s", namespace, service.metadata.name, err)
            desired = None
    # `live`: read by the reconcile wherever a canary is decided (`_reconcile_service`), so a Deployment of that
    # name that is not ours is never applied over.
    action = canary_write(desired, live, is_canary_of(service, live))
    if action == "apply" and desired is not None:
        kube.apply(desired)
    elif action == "delete":
        kube.delete_deployment(namespace, name)
    elif live is not None and desired is not None:
        kube.remember({**live, "kind": "Deployment"})


def _write_objects(deps: Dependencies, service: LLMService, decision: ServiceDecision,
                   deployment: dict[str, Any] | None, live_service: dict[str, Any] | None,
                   events: list[tuple[str, str, str]]) -> None:
    """Apply what the decision changed; else hold the plan by re-applying it where the live objects drifted
    (scaled by hand, edited by another tool, deleted). Level-triggered: the plan in status is the truth."""
    kube = deps.kube
    if deployment is not None and _is_foreign_canary(service, deployment):
        return  # another service's canary has this name (`canary_conflict` says so in a condition): not ours
    if decision.apply is not None:
        kube.apply(render_deployment(service, decision.apply, surge=decision.surge))
        # The Service does not depend on the plan: a new plan re-applies it only when it is missing or drifted
        # (one write per service less when a budget change re-plans 100 of them).
        _hold_service(kube, render_service(service), live_service, None)
        return
    if deployment is None:
        return
    _hold_service(kube, render_service(service), live_service, events)
    config = planned_config(decision.status)
    if config is None:
        return
    try:
        desired = render_deployment(service, config, surge=decision.surge)
    except RenderError:
        return  # decide() has said why in a condition
    drift = deployment_drift(desired, deployment)
    if drift is None:
        kube.remember({**deployment, "kind": "Deployment"})
        return
    log.info("Deployment %s/%s drifted (%s); re-applying the plan", service.metadata.namespace,
             service.metadata.name, drift)
    deps.metrics.decisions.labels("Repaired").inc()
    kube.apply(desired)
    events.append(("Normal", "DriftRepaired", f"Deployment {drift}; re-applied the plan"))


def _hold_service(kube: Kube, desired: dict[str, Any], live: dict[str, Any] | None,
                  events: list[tuple[str, str, str]] | None) -> bool:
    """Apply the rendered Service where the live one is missing or drifted; `events`: where to say it was a
    repair (None: a first apply or a re-plan, nothing to report). Returns whether it wrote."""
    drift = service_drift(desired, live)
    if drift is not None:
        kube.apply(desired)
        if events is not None:
            events.append(("Normal", "DriftRepaired", f"{drift}; re-applied"))
        return True
    if live is not None:
        kube.remember({**live, "kind": "Service"})
    return False


def services_selected(budget: EnergyBudget, services: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [raw for raw in services
            if budget.spec.selector.matches((raw.get("metadata") or {}).get("labels") or {})]


def _is_foreign_canary(service: LLMService, deployment: dict[str, Any]) -> bool:
    labels = (deployment.get("metadata") or {}).get("labels") or {}
    return labels.get(LABEL_ROLE) == ROLE_CANARY and labels.get(LABEL_SERVICE) != service.metadata.name


def pods_selector(service_name: str) -> str:
    """The pods of the service's own Deployment: its canary's pods carry the same service label (the Service sends
    them traffic) and are left out by their role."""
    return f"{LABEL_SERVICE}={service_name},{LABEL_ROLE}!={ROLE_CANARY}"


def canary_pods_selector(service_name: str) -> str:
    """The pods of the service's canary Deployment."""
    return f"{LABEL_SERVICE}={service_name},{LABEL_ROLE}={ROLE_CANARY}"


def scrape_selectors(deployment_name: str) -> list[str]:
    """The label selectors that may find the pods of the Deployment `deployment_name` (direct scraping, which is
    asked by Deployment name like Prometheus): the service's own pods, and for `<service>-canary` the canary's
    pods of `<service>` (tried second: an LLMService may itself be named so, see `canary_conflict`)."""
    out = [pods_selector(deployment_name)]
    if deployment_name.endswith(CANARY_SUFFIX) and len(deployment_name) > len(CANARY_SUFFIX):
        out.append(canary_pods_selector(deployment_name[: -len(CANARY_SUFFIX)]))
    return out

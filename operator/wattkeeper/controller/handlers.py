"""kopf handlers: each a few lines that hand the object to a reconciler with the injected dependencies."""

from __future__ import annotations

import logging
import random
from typing import Any

import kopf

from wattkeeper.api import GROUP, VERSION
from wattkeeper.render import LABEL_SERVICE
from wattkeeper.render.objects import LABEL_MANAGED_BY

from .budgets import reconcile_budget, release_services
from .kube import LIST_PAGE
from .profiles import reconcile_profile
from .services import Dependencies, reconcile_service
from .settings import OperatorSettings

SERVICES = (GROUP, VERSION, "llmservices")
BUDGETS = (GROUP, VERSION, "energybudgets")
PROFILES = (GROUP, VERSION, "energyprofiles")


def connection_info(cfg: Any) -> kopf.ConnectionInfo:
    """kopf's connection from a kubernetes.client.Configuration (kubeconfig or in-cluster)."""
    if cfg.refresh_api_key_hook is not None:  # in-cluster: the projected token rotates; read the current one
        cfg.refresh_api_key_hook(cfg)
    keys = cfg.api_key or {}
    auth = keys.get("BearerToken") or keys.get("authorization")
    token = auth.removeprefix("Bearer ").strip() if auth else None
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        default_namespace=None,
    )


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """A fresh registry, so tests can run an operator without global state."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
        # kopf watches with exactly the credentials of the injected client, so both act as one identity.
        return connection_info(deps(memo).kube.api_client.configuration)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        # The CRD status schemas have no `kopf` field: keep kopf's bookkeeping in annotations.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="wattkeeper.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="wattkeeper.io", key="last-handled-configuration")
        # Our own events say what was decided and why; kopf's per-handler ones would be noise on every tick.
        settings.posting.level = logging.WARNING
        settings.execution.max_workers = deps(memo).settings.reconcile_workers + 4  # + the drift watch
        settings.watching.server_timeout = 300
        # kopf's initial LISTs (at every start and after a watch expires) a page at a time, as the operator's own:
        # 1,000 Deployments in one response are 11 MB of JSON decoded at once, and the heap keeps its peak.
        settings.watching.chunk_size = LIST_PAGE
        settings.networking.request_timeout = 30
        # Two replicas with peering: the one with the higher priority runs, the other waits.
        settings.peering.priority = random.randint(1, 10_000)
        deps(memo).peering_priority = settings.peering.priority
        settings.peering.stealth = True
        # A peer silent this long is dead: the standby resumes within it (kopf's default is 60 s). kopf refreshes
        # its own record every lifetime minus 5-10 s, at least every second (kopf/_core/engines/peering.py).
        settings.peering.lifetime = deps(memo).settings.peering_lifetime_seconds

    def deps(memo: kopf.Memo) -> Dependencies:
        return memo["deps"]

    @kopf.on.probe(id="controlLoop", registry=registry)
    def control_loop_alive(memo: kopf.Memo, **_: Any) -> str:
        # The liveness endpoint answers 500 when a probe fails: a dead or stuck control loop restarts the pod.
        liveness = deps(memo).liveness
        problem = liveness() if liveness is not None else None
        if problem:
            raise kopf.PermanentError(problem)
        return "ok"

    # Level-triggered: the operator's Deployments and Services changed or deleted by anyone else (kubectl scale,
    # another tool) go back to the plan within seconds, telemetry or not. Our own applies and the Deployment
    # controller's status updates carry the generation (resourceVersion for a Service) we recorded: no reconcile.
    # `when` sorts the events in kopf's event loop: only someone else's change costs a worker thread and a log line
    # (a budget change rolling 100 Deployments brings about five status events each, all of them ours).
    def deployment_foreign(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
        return owned_event_matters(deps(memo), "Deployment", event, body, deployment_marker(body))

    def service_foreign(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
        return owned_event_matters(deps(memo), "Service", event, body, service_marker(body))

    @kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: "wattkeeper"}, when=deployment_foreign,
                   registry=registry)
    def deployment_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        owned_changed(deps(memo), "Deployment", event, body, deployment_marker(body))

    @kopf.on.event("", "v1", "services", labels={LABEL_MANAGED_BY: "wattkeeper"}, when=service_foreign,
                   registry=registry)
    def service_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        owned_changed(deps(memo), "Service", event, body, service_marker(body))

    @kopf.on.resume(*SERVICES, registry=registry)
    @kopf.on.create(*SERVICES, registry=registry, backoff=10)
    @kopf.on.update(*SERVICES, field="spec", registry=registry, backoff=10)
    def service_changed(body: kopf.Body, memo: kopf.Memo, reason: str, **_: Any) -> None:
        reconcile_service(deps(memo), dict(body), str(reason))

    @kopf.on.resume(*BUDGETS, registry=registry)
    @kopf.on.create(*BUDGETS, registry=registry, backoff=10)
    @kopf.on.update(*BUDGETS, field="spec", registry=registry, backoff=10)
    def budget_changed(body: kopf.Body, memo: kopf.Memo, reason: str, **_: Any) -> None:
        deps(memo).lists.invalidate("energybudgets", body.metadata.namespace or "")
        reconcile_budget(deps(memo), dict(body), str(reason))

    # optional=True: no finalizer. Services re-read budgets every tick anyway; this only makes it immediate.
    @kopf.on.delete(*BUDGETS, registry=registry, optional=True)
    def budget_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        release_services(deps(memo), dict(body))

    @kopf.on.resume(*PROFILES, registry=registry)
    @kopf.on.create(*PROFILES, registry=registry, backoff=10)
    @kopf.on.update(*PROFILES, field="spec", registry=registry, backoff=10)
    def profile_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        deps(memo).lists.invalidate("energyprofiles", body.metadata.namespace or "")
        reconcile_profile(deps(memo), dict(body))

    return registry


def deployment_marker(body: Any) -> str:
    return str(body.metadata.get("generation"))


def service_marker(body: Any) -> str:
    return str(body.metadata.get("resourceVersion"))


def owned_event_matters(deps: Dependencies, kind: str, event: Any, body: Any, marker: str) -> bool:
    """Whether an event on an owned Deployment or Service needs its LLMService reconciled: a deletion, or a
    version other than the one our apply produced (our own echo, or the Deployment controller's status update)."""
    type_ = event.get("type")
    if type_ is None:
        return False  # kopf's initial listing: the resume handlers and the loop's first pass cover those
    namespace = body.metadata.namespace
    name = (body.metadata.labels or {}).get(LABEL_SERVICE)
    if not namespace or not name:
        return False
    # The object's own name: a service's canary Deployment (`<name>-canary`) carries the service's label too.
    own = body.metadata.name or name
    return bool(type_ == "DELETED" or deps.kube.applied_marker(kind, namespace, own) != marker)


def owned_changed(deps: Dependencies, kind: str, event: Any, body: Any, marker: str) -> None:
    """An owned Deployment or Service changed: reconcile its LLMService unless the change is ours. Asked again
    after kopf's `when` filter: our apply may have recorded this very version while the event waited for a thread."""
    if not owned_event_matters(deps, kind, event, body, marker):
        return
    namespace, name = body.metadata.namespace, body.metadata.labels[LABEL_SERVICE]
    if event.get("type") == "DELETED":
        deps.kube.forget(kind, namespace, body.metadata.name or name)
    reconcile_service(deps, {"metadata": {"namespace": namespace, "name": name}}, "drift")

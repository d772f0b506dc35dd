"""The periodic control loop: every interval, re-reconcile every budget, then every service.

Not kopf timers: kopf puts a finalizer on every object that has a timer, and such finalizers block the deletion of
services and budgets (and of their namespaces) whenever the operator is not running. Nothing here needs cleanup
on deletion (owner references garbage-collect the Deployments), so the loop runs beside kopf instead, and only in
the instance that kopf's peering has made active.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from wattkeeper.api import GROUP, VERSION

from .budgets import reconcile_budget
from .services import Dependencies, reconcile_service

log = logging.getLogger("wattkeeper.loop")


def peering_active(peers: dict[str, Any], my_priority: int, now: datetime) -> bool:
    """kopf's rule: an instance runs while no live peer has a higher priority (equal ones all pause)."""
    others = 0
    for entry in peers.values():
        if not isinstance(entry, dict):
            continue
        lastseen = entry.get("lastseen")
        lifetime = float(entry.get("lifetime") or 60)
        if lastseen is None:
            continue
        seen = datetime.fromisoformat(str(lastseen).replace("Z", "+00:00"))
        if (now - seen).total_seconds() > lifetime:
            continue  # dead
        priority = int(entry.get("priority") or 0)
        if priority > my_priority:
            return False
        if priority == my_priority:
            others += 1
    return others <= 1  # ourselves, and no live twin of the same priority


class ControlLoop:
    def __init__(self, deps: Dependencies) -> None:
        self.deps = deps
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="wattkeeper-control-loop", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)

    def _active(self, namespace: str | None) -> bool:
        settings = self.deps.settings
        if settings.peering is None:
            return True
        if self.deps.peering_priority is None:
            return False  # kopf has not started yet
        custom = self.deps.kube.custom
        obj: Any
        try:
            if namespace is None:
                obj = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", settings.peering)
            else:
                obj = custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings",
                                                          settings.peering)
        except ApiException as err:
            log.warning("cannot read the peering %s: %s %s; not running the loop", settings.peering, err.status,
                        err.reason)
            return False
        return peering_active(dict(obj.get("status") or {}), self.deps.peering_priority, datetime.now(UTC))

    def tick(self) -> None:
        """One pass over every watched namespace (or the whole cluster)."""
        settings = self.deps.settings
        scopes: list[str | None] = list(settings.namespaces) or [None]
        for namespace in scopes:
            if not self._active(namespace):
                continue
            for plural, reconcile in (("energybudgets", reconcile_budget), ("llmservices", reconcile_service)):
                for body in self._list(plural, namespace):
                    if self.stop.is_set():
                        return
                    try:
                        reconcile(self.deps, body, "tick")
                    except Exception:  # one broken object must not stop the loop for the others
                        self.deps.metrics.errors.labels(plural).inc()
                        log.exception("reconcile of %s %s/%s failed", plural, body["metadata"].get("namespace"),
                                      body["metadata"].get("name"))

    def _list(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        custom = self.deps.kube.custom
        try:
            if namespace is None:
                listing: Any = custom.list_cluster_custom_object(GROUP, VERSION, plural)
            else:
                listing = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
        except ApiException as err:
            log.warning("cannot list %s: %s %s", plural, err.status, err.reason)
            return []
        return [item for item in listing.get("items", []) if not item["metadata"].get("deletionTimestamp")]

    def _run(self) -> None:
        interval = self.deps.settings.interval_seconds
        # The first pass waits an interval: kopf's create/resume handlers reconcile everything at start.
        while not self.stop.wait(interval):
            self.tick()

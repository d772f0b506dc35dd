"""The periodic control loop: every interval, re-reconcile every budget, then every service.

Not kopf timers: kopf puts a finalizer on every object that has a timer, and such finalizers block the deletion of
services and budgets (and of their namespaces) whenever the operator is not running. Nothing here needs cleanup
on deletion (owner references garbage-collect the Deployments), so the loop runs beside kopf instead, and only in
the instance that kopf's peering has made active.

Nothing kills it: any exception in a pass (connection refused while the apiserver restarts, a timeout, a body that
does not decode) is logged and retried with backoff, and every finished pass is a heartbeat that the liveness
probe checks. A pass reads through one `Snapshot` (a LIST per kind, one telemetry batch) and reconciles services
on a bounded pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .budgets import reconcile_budget, reconcile_many
from .services import Dependencies
from .snapshot import Snapshot

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


def release_memory() -> None:
    """Hand the heap a pass freed back to the OS (glibc keeps it otherwise): a pass over 1,000 services parses
    megabytes of LISTs that are garbage a moment later."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def backoff_seconds(failures: int, cap_seconds: float) -> float:
    """1, 2, 4, ... seconds after consecutive failed passes, capped."""
    return float(min(2 ** max(failures - 1, 0), cap_seconds)) if failures > 0 else 0.0


class ControlLoop:
    def __init__(self, deps: Dependencies, clock: Callable[[], float] = time.monotonic) -> None:
        self.deps = deps
        self.clock = clock
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="wattkeeper-control-loop", daemon=True)
        self.heartbeat = clock()  # the last time a pass (or a standby's leadership check) finished
        self.passes = 0
        self.failures = 0  # consecutive failed passes
        self.active: dict[str | None, bool] = {}

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)

    def problem(self) -> str | None:
        """Why the loop is not healthy, or None: the liveness probe's answer."""
        settings = self.deps.settings
        if not self.thread.is_alive() and not self.stop.is_set() and self.thread.ident is not None:
            return "the control-loop thread has died"
        stale_after = max(settings.liveness_intervals * settings.interval_seconds, 60.0)
        age = self.clock() - self.heartbeat
        if age > stale_after:
            return f"the control loop has not finished a pass in {age:.0f}s (limit {stale_after:.0f}s)"
        return None

    def _active(self, namespace: str | None) -> bool:
        settings = self.deps.settings
        if settings.peering is None:
            return True
        if self.deps.peering_priority is None:
            return False  # kopf has not started yet
        kube = self.deps.kube
        try:
            if namespace is None:
                obj = kube.get_cluster_custom("kopf.dev", "v1", "clusterkopfpeerings", settings.peering)
            else:
                obj = kube.get_namespaced_custom("kopf.dev", "v1", namespace, "kopfpeerings", settings.peering)
        except Exception as err:  # unknown leadership: do nothing rather than run twice
            log.warning("cannot read the peering %s: %s: %s; not running the loop", settings.peering,
                        type(err).__name__, err)
            return False
        return peering_active(dict(obj.get("status") or {}), self.deps.peering_priority, datetime.now(UTC))

    def scopes(self) -> list[str | None]:
        return list(self.deps.settings.namespaces) or [None]

    def check_leadership(self) -> list[str | None]:
        """The scopes this instance has just become active in (a failover: act now, not at the next interval)."""
        gained = []
        for scope in self.scopes():
            now_active = self._active(scope)
            if now_active and self.active.get(scope) is False:  # not at start: kopf's resume handlers run then
                gained.append(scope)
            self.active[scope] = now_active
        return gained

    def tick(self, scopes: list[str | None] | None = None) -> None:
        """One pass over every active scope (watched namespace, or the whole cluster). Raises when the reads of
        a scope fail (the caller backs off); a failure of one object is logged and never stops the others."""
        for namespace in scopes if scopes is not None else self.scopes():
            if scopes is None:
                if namespace not in self.active:
                    self.active[namespace] = self._active(namespace)
                if not self.active[namespace]:
                    continue
            self._pass(namespace)

    def _pass(self, namespace: str | None) -> None:
        deps = self.deps
        snapshot = Snapshot.take(deps.kube, namespace)
        snapshot.measure(deps)
        for (ns, _), budgets in sorted(((ns, ""), b) for ns, b in snapshot.budgets.items()):
            for body in list(budgets):
                if self.stop.is_set():
                    return
                try:
                    reconcile_budget(deps, body, "tick", snapshot)
                except Exception as err:  # one broken budget must not stop the others
                    deps.metrics.errors.labels("energybudgets").inc()
                    log.warning("reconcile of EnergyBudget %s/%s failed: %s: %s", ns, body["metadata"].get("name"),
                                type(err).__name__, err)
        if self.stop.is_set():
            return
        pending = [body for key, body in snapshot.services.items() if key not in snapshot.reconciled]
        reconcile_many(deps, pending, "tick", snapshot)

    def _run(self) -> None:
        settings = self.deps.settings
        interval = settings.interval_seconds
        check = min(settings.leadership_check_seconds, interval)
        # The first pass waits an interval: kopf's create/resume handlers reconcile everything at start.
        next_pass = self.clock() + interval
        while not self.stop.wait(check if self.failures == 0 else
                                 min(backoff_seconds(self.failures, settings.error_backoff_max_seconds), interval)):
            try:
                gained = self.check_leadership()
                if gained:
                    log.info("now active in %s: running a pass at once", ", ".join(s or "the cluster" for s in gained))
                    self.tick(gained)
                if self.failures > 0 or self.clock() >= next_pass:
                    started = time.monotonic()
                    self.tick()
                    next_pass = self.clock() + interval
                    self.passes += 1
                    self.deps.metrics.loop_pass_seconds.set(time.monotonic() - started)
                    self.deps.metrics.loop_passes.labels("ok").inc()
                    self.deps.lists.prune()
                    release_memory()
                if self.failures:
                    log.info("control loop recovered after %d failed passes", self.failures)
                self.failures = 0
            except Exception as err:  # nothing may end the loop: it says why and retries
                self.failures += 1
                self.deps.metrics.errors.labels("loop").inc()
                self.deps.metrics.loop_passes.labels("failed").inc()
                log.warning("control-loop pass failed (%d in a row, retrying in %.0fs): %s: %s", self.failures,
                            min(backoff_seconds(self.failures, settings.error_backoff_max_seconds), interval),
                            type(err).__name__, err)
            self.heartbeat = self.clock()
            self.deps.metrics.loop_heartbeat.set(time.time())

"""What one control-loop pass reads: one LIST per kind per scope and one telemetry batch, shared by every
reconcile of the pass instead of a GET and two LISTs per service."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wattkeeper.render import canary_name
from wattkeeper.telemetry import ServiceObservation, TelemetryUnavailable
from wattkeeper.telemetry.batch import observe_many

from .kube import Kube
from .services import Dependencies, Reads, canary_expected

Key = tuple[str, str]  # (namespace, name)


def _by_key(items: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    return {(i["metadata"]["namespace"], i["metadata"]["name"]): i for i in items}


def _ready(deployment: dict[str, Any]) -> bool:
    return int((deployment.get("status") or {}).get("readyReplicas") or 0) > 0


def _by_namespace(items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        out.setdefault(item["metadata"]["namespace"], []).append(item)
    return out


@dataclass
class Snapshot:
    services: dict[Key, dict[str, Any]]
    budgets: dict[str, list[dict[str, Any]]]
    profiles: dict[str, list[dict[str, Any]]]
    deployments: dict[Key, dict[str, Any]]
    core_services: dict[Key, dict[str, Any]]
    observations: dict[Key, ServiceObservation | TelemetryUnavailable] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reconciled: set[Key] = field(default_factory=set)  # services already reconciled in this pass
    listed_at: float = 0.0  # monotonic, taken before the LISTs

    @classmethod
    def take(cls, kube: Kube, namespace: str | None,
             only: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
             selector: str | None = None) -> Snapshot:
        """Five LISTs: services, budgets, profiles, and the operator's Deployments and Services (by label).
        `only`: the services that matter (a budget's), whose Deployments and Services alone are listed: at 1,000
        services the Deployments are most of what a LIST carries (11 MB), and a budget over 100 needs a tenth.
        `selector`: the label selector of those services, so that the apiserver sends only them (a budget's
        100 of 1,000: 0.7 MB instead of 7 MB of JSON to decode before the first write)."""
        listed_at = time.monotonic()
        services = kube.list_custom("llmservices", namespace, label_selector=selector) if selector else \
            kube.list_custom("llmservices", namespace)
        names: list[str] | None = None
        if only is not None:
            services = only(services)
            names = [s["metadata"]["name"] for s in services]
        return cls(
            listed_at=listed_at,
            services=_by_key(services),
            budgets=_by_namespace(kube.list_custom("energybudgets", namespace)),
            profiles=_by_namespace(kube.list_custom("energyprofiles", namespace)),
            deployments=_by_key(kube.list_deployments(namespace, names)),
            core_services=_by_key(kube.list_services(namespace, names)),
        )

    def measure(self, deps: Dependencies) -> None:
        """One telemetry batch for every service with ready replicas, and for the canary of each service whose
        status says one runs (`<name>-canary`: its pods are told apart by name, telemetry/base.py
        `pod_name_pattern`; in the Prometheus batch they cost no query more). A service without a canary adds
        nothing."""
        keys = [key for key, dep in self.deployments.items()
                if key in self.services and _ready(dep)]
        keys += [canary for canary in self.canary_keys() if canary not in self.services
                 and (dep := self.deployments.get(canary)) is not None and _ready(dep)]
        self.observations = observe_many(deps.telemetry, keys, deps.settings.telemetry_window_seconds)

    def canary_keys(self) -> list[Key]:
        """The canary Deployments' keys of the services whose status says a canary runs."""
        return [(ns, canary_name(name)) for (ns, name), body in self.services.items()
                if canary_expected(body.get("status") or {})]

    def reads(self, namespace: str, name: str) -> Reads:
        key = (namespace, name)
        with self.lock:
            budgets = list(self.budgets.get(namespace, []))
        canary = (namespace, canary_name(name))
        return Reads(budgets=budgets, profiles=self.profiles.get(namespace, []),
                     deployment=self.deployments.get(key), service=self.core_services.get(key),
                     observation=self.observations.get(key), listed_at=self.listed_at,
                     canary_deployment=self.deployments.get(canary),
                     canary_observation=self.observations.get(canary) if canary not in self.services else None)

    def services_in(self, namespace: str) -> list[dict[str, Any]]:
        return [body for (ns, _), body in self.services.items() if ns == namespace]

    def set_budget_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """A budget's new allocations, handed to its services in memory (no round trip through the apiserver)."""
        with self.lock:
            self.budgets[namespace] = [({**b, "status": status} if b["metadata"]["name"] == name else b)
                                       for b in self.budgets.get(namespace, [])]

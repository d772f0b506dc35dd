"""A budget change's fan-out and the operator's LISTs, without a cluster: a change lists only its services'
objects, re-plans without re-applying an unchanged Service and posts its Events after every service's writes; a
listed Deployment kept as a slim record reads as the full one."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import yaml
from wattkeeper.api import LLMService, ServingConfigSpec
from wattkeeper.controller import budgets
from wattkeeper.controller.kube import MANAGED_SELECTOR, owned_selector, slim_custom, slim_deployment, slim_service
from wattkeeper.controller.metrics import OperatorMetrics
from wattkeeper.controller.services import (
    Dependencies,
    _hold_service,
    deployment_drift,
    deployment_state,
    service_drift,
)
from wattkeeper.controller.settings import OperatorSettings
from wattkeeper.controller.snapshot import Snapshot
from wattkeeper.energy.model import EnergyModel
from wattkeeper.render import render_deployment, render_service

ROOT = Path(__file__).resolve().parents[2]


def _service(name: str = "svc") -> LLMService:
    body = yaml.safe_load((ROOT / "examples" / "llmservice-llama-8b.yaml").read_text())
    body["metadata"].update(namespace="ns", name=name, uid="u1")
    return LLMService.model_validate(body)


class RecordingKube:
    """Records writes and what the LISTs asked for; lists `services` LLMServices."""

    def __init__(self, services: list[dict[str, Any]] | None = None) -> None:
        self.services = services or []
        self.calls: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def _record(self, *call: Any) -> None:
        with self.lock:
            self.calls.append(call)

    def list_custom(self, plural: str, namespace: str | None,
                    label_selector: str | None = None) -> list[dict[str, Any]]:
        return self.services if plural == "llmservices" else []

    def list_deployments(self, namespace: str | None, services: list[str] | None = None) -> list[dict[str, Any]]:
        self._record("list-deployments", services)
        return []

    def list_services(self, namespace: str | None, services: list[str] | None = None) -> list[dict[str, Any]]:
        self._record("list-services", services)
        return []

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._record("apply", obj["kind"])
        return obj

    def remember(self, obj: dict[str, Any]) -> None:
        self._record("remember", obj["kind"])

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self._record("event", reason)


def test_a_list_names_the_services_only_when_few_and_valid() -> None:
    assert owned_selector(None) == MANAGED_SELECTOR
    assert owned_selector([]) is None  # nothing to list
    assert owned_selector(["b", "a"]) == f"{MANAGED_SELECTOR},wattkeeper.io/service in (a,b)"
    assert owned_selector(["x" * 64]) == MANAGED_SELECTOR  # not a label value: list them all
    assert owned_selector([f"s{i}" for i in range(1000)]) == MANAGED_SELECTOR


def test_a_snapshot_for_some_services_lists_only_their_objects() -> None:
    raws = [{"metadata": {"namespace": "ns", "name": n, "labels": {"tier": t}}}
            for n, t in (("a", "budgeted"), ("b", "free"), ("c", "budgeted"))]
    kube = RecordingKube(raws)
    snap = Snapshot.take(kube, "ns", only=lambda items: [i for i in items if i["metadata"]["labels"]["tier"]
                                                         == "budgeted"])  # type: ignore[arg-type]
    assert sorted(snap.services) == [("ns", "a"), ("ns", "c")]
    assert ("list-deployments", ["a", "c"]) in kube.calls and ("list-services", ["a", "c"]) in kube.calls
    everything = RecordingKube(raws)
    Snapshot.take(everything, "ns")  # type: ignore[arg-type]
    assert ("list-deployments", None) in everything.calls


def test_an_unchanged_service_is_not_reapplied() -> None:
    service = _service()
    desired = render_service(service)
    kube = RecordingKube()
    live = {**desired, "metadata": {**desired["metadata"], "resourceVersion": "7"}}
    assert not _hold_service(kube, desired, live, None)  # type: ignore[arg-type]
    assert kube.calls == [("remember", "Service")]
    events: list[tuple[str, str, str]] = []
    assert _hold_service(kube, desired, None, events)  # type: ignore[arg-type]
    assert ("apply", "Service") in kube.calls and events[0][1] == "DriftRepaired"


def test_a_fanout_posts_its_events_after_every_service(monkeypatch: Any) -> None:
    kube = RecordingKube()
    deps = Dependencies(kube=kube, telemetry=None, energy_model=EnergyModel.default(),  # type: ignore[arg-type]
                        settings=OperatorSettings(metrics_port=0, health_port=0, reconcile_workers=4),
                        metrics=OperatorMetrics())

    def reconcile(deps: Dependencies, raw: dict[str, Any], trigger: str, reads: Any = None,
                  deferred: Any = None) -> None:
        kube.apply({"kind": "Deployment"})
        event = (raw, "Normal", "Reconfigured", "m")
        if deferred is not None:
            deferred.append(event)
        else:
            kube.event(*event)
    monkeypatch.setattr(budgets, "reconcile_service", reconcile)
    bodies = [{"metadata": {"namespace": "ns", "name": f"s{i}"}} for i in range(10)]
    assert budgets.reconcile_many(deps, bodies, "budget", events_last=True) == 0
    kinds = [c[0] for c in kube.calls]
    assert kinds == ["apply"] * 10 + ["event"] * 10
    kube.calls.clear()
    budgets.reconcile_many(deps, bodies[:1], "budget", events_last=True)
    assert [c[0] for c in kube.calls] == ["apply", "event"]


def test_a_slim_deployment_reads_as_the_full_one() -> None:
    service = _service()
    desired = render_deployment(service, ServingConfigSpec(precision="bf16").to_plan())
    live = {**desired, "metadata": {**desired["metadata"], "generation": 3, "resourceVersion": "9",
                                    "managedFields": [{"manager": "wattkeeper"}] * 5},
            "status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}}
    slim = slim_deployment(live)
    assert "managedFields" not in slim["metadata"] and slim["metadata"]["generation"] == 3
    assert deployment_drift(desired, slim) is None and deployment_state(slim) == deployment_state(live)
    scaled = slim_deployment({**live, "spec": {**live["spec"], "replicas": 7}})
    assert deployment_drift(desired, scaled) == f"replicas 7 instead of {desired['spec']['replicas']}"
    svc = render_service(service)
    assert service_drift(svc, slim_service({**svc, "metadata": {**svc["metadata"], "resourceVersion": "4"}})) is None


def test_a_budget_selector_becomes_a_list_query_only_where_the_syntax_carries_it() -> None:
    from wattkeeper.api.common import LabelSelector

    def query(raw: dict[str, Any]) -> str | None:
        return LabelSelector.model_validate(raw).as_query()
    assert query({"matchLabels": {"tier": "budgeted", "team": "chat"}}) == "team=chat,tier=budgeted"
    assert query({"matchExpressions": [{"key": "example.com/tier", "operator": "In", "values": ["b", "a"]},
                                       {"key": "gone", "operator": "DoesNotExist"},
                                       {"key": "x", "operator": "NotIn", "values": ["y"]},
                                       {"key": "here", "operator": "Exists"}]}) \
        == "example.com/tier in (a,b),!gone,x notin (y),here"
    assert query({}) is None  # everything: no query
    assert query({"matchLabels": {"tier": "a b"}}) is None  # not a label value: list all, `matches` decides
    assert query({"matchLabels": {"tier": "a,b"}}) is None
    assert query({"matchExpressions": [{"key": "k", "operator": "In", "values": []}]}) is None


def test_a_listed_custom_object_drops_what_only_the_apiserver_and_kopf_read() -> None:
    raw = {"metadata": {"name": "s", "managedFields": [{"manager": "m"}],
                        "annotations": {"wattkeeper.io/last-handled-configuration": "{}", "keep": "me"}},
           "spec": {"a": 1}, "status": {"b": 2}}
    assert slim_custom(raw) == {"metadata": {"name": "s", "annotations": {"keep": "me"}}, "spec": {"a": 1},
                                "status": {"b": 2}}


def test_a_budget_change_lists_only_its_services() -> None:
    seen: list[str | None] = []

    class SelectingKube(RecordingKube):
        def list_custom(self, plural: str, namespace: str | None,
                        label_selector: str | None = None) -> list[dict[str, Any]]:
            if plural == "llmservices":
                seen.append(label_selector)
            return []

        def patch_status(self, *args: Any) -> bool:
            return True

    class NoTelemetry:
        def observe_many(self, keys: Any, window_seconds: float) -> dict[Any, Any]:
            return {}
    deps = Dependencies(kube=SelectingKube(), telemetry=NoTelemetry(),  # type: ignore[arg-type]
                        energy_model=EnergyModel.default(),
                        settings=OperatorSettings(metrics_port=0, health_port=0), metrics=OperatorMetrics())
    budget = {"apiVersion": "wattkeeper.io/v1alpha1", "kind": "EnergyBudget",
              "metadata": {"namespace": "ns", "name": "b", "generation": 1},
              "spec": {"selector": {"matchLabels": {"tier": "budgeted"}}, "enforcement": "Enforce",
                       "power": {"limitWatts": 1000.0, "window": "60s"}}}
    budgets.reconcile_budget(deps, budget, "update")
    assert seen == ["tier=budgeted"]

"""A budget change says where its time goes (issue 14: a cut should reach 100 Deployments within 5 s)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from wattkeeper.controller.budgets import reconcile_budget
from wattkeeper.controller.metrics import OperatorMetrics
from wattkeeper.controller.services import Dependencies
from wattkeeper.controller.settings import OperatorSettings
from wattkeeper.energy.model import EnergyModel


class EmptyKube:
    """A namespace with the budget and nothing else; records status patches."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    def list_custom(self, plural: str, namespace: str | None,
                    label_selector: str | None = None) -> list[dict[str, Any]]:
        return []

    def list_deployments(self, namespace: str | None, services: list[str] | None = None) -> list[dict[str, Any]]:
        return []

    def list_services(self, namespace: str | None, services: list[str] | None = None) -> list[dict[str, Any]]:
        return []

    def patch_status(self, plural: str, namespace: str, name: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
        self.patches.append(new)
        return True

    def event(self, *args: Any) -> None:
        pass


class NoTelemetry:
    def observe_many(self, keys: Any, window_seconds: float) -> dict[Any, Any]:
        return {}


def test_a_budget_change_logs_its_phases(caplog: pytest.LogCaptureFixture) -> None:
    kube = EmptyKube()
    deps = Dependencies(kube=kube, telemetry=NoTelemetry(), energy_model=EnergyModel.default(),  # type: ignore[arg-type]
                        settings=OperatorSettings(metrics_port=0, health_port=0), metrics=OperatorMetrics())
    budget = {"apiVersion": "wattkeeper.io/v1alpha1", "kind": "EnergyBudget",
              "metadata": {"namespace": "ns", "name": "b", "generation": 2},
              "spec": {"selector": {"matchLabels": {"tier": "x"}}, "enforcement": "Enforce",
                       "power": {"limitWatts": 1000.0, "window": "60s"}}}
    with caplog.at_level(logging.INFO, logger="wattkeeper.budgets"):
        reconcile_budget(deps, budget, "update")
    assert kube.patches and kube.patches[-1]["observedGeneration"] == 2
    assert any("EnergyBudget ns/b (update): 0 services read in" in r.getMessage() for r in caplog.records)

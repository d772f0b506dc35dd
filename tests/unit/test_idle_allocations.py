"""An idle pass leaves no new long-lived object behind (issue 14: RSS). A pass decodes megabytes of LISTs that are
garbage a moment later; any object it creates that outlives it (a marker, a timestamp, a gauge's value) sits among
that garbage and keeps the allocator's pages from going back, so idle RSS followed the peak."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge
from wattkeeper.controller import services
from wattkeeper.controller.kube import Kube
from wattkeeper.controller.metrics import OperatorMetrics, set_if_changed
from wattkeeper.controller.services import Dependencies, Reads, reconcile_service
from wattkeeper.controller.settings import OperatorSettings
from wattkeeper.energy.model import EnergyModel


def test_an_unchanged_gauge_keeps_its_value_object() -> None:
    gauge = Gauge("g", "g", ["service"], registry=CollectorRegistry()).labels("a")
    first = float("1280.5")
    set_if_changed(gauge, first)
    set_if_changed(gauge, float("1280.5"))  # an equal float, parsed anew by the next pass
    assert gauge._value.get() is first
    set_if_changed(gauge, 900.0)
    assert gauge._value.get() == 900.0


def test_a_confirmed_object_keeps_its_marker_object() -> None:
    kube = Kube(None, "wattkeeper", OperatorMetrics())  # type: ignore[arg-type]
    service = {"kind": "Service", "metadata": {"namespace": "ns", "name": "a", "resourceVersion": "81830"}}
    kube.remember(service)
    first = kube.applied_marker("Service", "ns", "a")
    kube.remember({**service, "metadata": {**service["metadata"], "resourceVersion": "".join(["8183", "0"])}})
    assert kube.applied_marker("Service", "ns", "a") is first
    kube.remember({**service, "metadata": {**service["metadata"], "resourceVersion": "90000"}})
    assert kube.applied_marker("Service", "ns", "a") == "90000"


def test_a_reconcile_marks_its_service_written_only_when_it_wrote(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = Kube(None, "wattkeeper", OperatorMetrics())  # type: ignore[arg-type]
    deps = Dependencies(kube=kube, telemetry=None, energy_model=EnergyModel.default(),  # type: ignore[arg-type]
                        settings=OperatorSettings(metrics_port=0, health_port=0), metrics=OperatorMetrics())

    def reconcile(deps: Dependencies, body: dict[str, Any], *args: Any) -> None:
        if body["write"]:
            kube._count_write("patch-status", "llmservices")
    monkeypatch.setattr(services, "_reconcile_service", reconcile)
    reads = Reads(budgets=[], profiles=[], deployment=None, service=None, listed_at=1.0)
    reconcile_service(deps, {"metadata": {"namespace": "ns", "name": "a"}, "write": False}, "tick", reads)
    assert "ns/a" not in deps.written_at
    reconcile_service(deps, {"metadata": {"namespace": "ns", "name": "a"}, "write": True}, "tick", reads)
    assert deps.written_at["ns/a"] > 1.0

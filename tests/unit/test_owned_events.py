"""Events on the operator's Deployments and Services: only someone else's change reaches a reconcile (kopf asks
`owned_event_matters` in its event loop, before it hands an event to a worker thread)."""

from __future__ import annotations

from typing import Any

import kopf
from kopf._core.intents.causes import Activity
from wattkeeper.controller.handlers import deployment_marker, owned_event_matters


class Markers:
    def __init__(self, applied: dict[tuple[str, str, str], str]) -> None:
        self.applied = applied

    def applied_marker(self, kind: str, namespace: str, name: str) -> str | None:
        return self.applied.get((kind, namespace, name))


class Deps:
    def __init__(self, applied: dict[tuple[str, str, str], str]) -> None:
        self.kube = Markers(applied)


def _deployment(generation: int, labels: dict[str, str] | None = None) -> kopf.Body:
    return kopf.Body({"metadata": {"namespace": "ns", "name": "svc", "generation": generation,
                                   "labels": {"wattkeeper.io/service": "svc"} if labels is None else labels}})


def test_only_someone_elses_change_matters() -> None:
    deps: Any = Deps({("Deployment", "ns", "svc"): "3"})

    def matters(type_: str | None, body: kopf.Body) -> bool:
        return owned_event_matters(deps, "Deployment", {"type": type_}, body, deployment_marker(body))
    assert not matters("MODIFIED", _deployment(3))  # our apply's echo, or the controller's status update
    assert matters("MODIFIED", _deployment(4))  # scaled or edited by hand
    assert matters("DELETED", _deployment(3))
    assert not matters(None, _deployment(4))  # kopf's initial listing: the resume handlers cover it
    assert not matters("MODIFIED", _deployment(4, labels={}))  # no service to reconcile


def test_kopf_lists_a_page_at_a_time() -> None:
    from wattkeeper.controller.handlers import build_registry
    from wattkeeper.controller.kube import LIST_PAGE
    from wattkeeper.controller.settings import OperatorSettings

    registry = build_registry(OperatorSettings(metrics_port=0, health_port=0))
    configure = next(h for h in registry._activities.get_handlers(activity=Activity.STARTUP)
                     if h.id == "build_registry.<locals>.configure")
    settings = kopf.OperatorSettings()

    class Deps:
        settings = OperatorSettings(metrics_port=0, health_port=0)
        peering_priority = None
    configure.fn(settings=settings, memo=kopf.Memo(deps=Deps()))
    assert settings.watching.chunk_size == LIST_PAGE  # kopf's initial LISTs: not 11 MB of JSON at once

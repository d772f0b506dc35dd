"""The canary against a real API server: with canaries switched on and the core's decision faked to run one (its
own rule is the core's, tested there), the operator creates `<svc>-canary` (one replica of the canary's
configuration, its own selector, owned by the LLMService), the Service selects its pods, status and Events say
so; when the decision drops it the Deployment goes and status.canariesEnded lists it. A Deployment of that name the
service does not own is never touched, and a NameConflict condition says why no canary runs."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from wattkeeper.control import Plan
from wattkeeper.control.tick import margin_key
from wattkeeper.controller.decide import running_plan
from wattkeeper.controller.loop import ControlLoop
from wattkeeper.controller.runner import build_dependencies
from wattkeeper.controller.services import reconcile_service
from wattkeeper.controller.settings import OperatorSettings
from wattkeeper.energy.types import ServingConfig
from wattkeeper.render import LABEL_ROLE, LABEL_SERVICE, ROLE_CANARY, canary_name

from tests.support.canary import fake_canary

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "wattkeeper.io", "v1alpha1", "llmservices"
CANARY = Plan(ServingConfig("fp8", 1, 128, 4096), 1)


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMService", "metadata": {"name": name},
        "spec": {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "parametersBillions": 8},
                 "quality": {"allowedPrecisions": ["bf16", "fp8"]},
                 "slo": {"ttftP95Seconds": 2, "itlP95Seconds": 0.1}, "accelerator": {"type": "H100"},
                 "scaling": {"minReplicas": 1, "maxReplicas": 2}},
    }


def reasons(core: client.CoreV1Api, namespace: str, name: str) -> list[str]:
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [e.reason for e in events]


def test_a_canary_runs_beside_the_fleet_and_ends(api_client, namespace, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    custom, apps, core = client.CustomObjectsApi(api_client), client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    deps = build_dependencies(OperatorSettings(telemetry="scrape", canaries=True, metrics_port=0, health_port=0),
                              api_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, service("chat"))

    def body() -> dict[str, Any]:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chat")

    fake_canary(monkeypatch, CANARY, "fp8 tp1 would save 20%: measured beside the fleet first")
    reconcile_service(deps, body(), "test")  # a handler's reconcile: the plan and the canary at once

    # 1. The canary's Deployment: one replica of its own configuration, its own selector, owned by the service.
    uid = body()["metadata"]["uid"]
    main = apps.read_namespaced_deployment("chat", namespace)
    canary = apps.read_namespaced_deployment(canary_name("chat"), namespace)
    assert canary.metadata.name == "chat-canary" and canary.spec.replicas == 1
    assert canary.metadata.labels[LABEL_ROLE] == ROLE_CANARY
    assert [(o.kind, o.name, o.uid) for o in canary.metadata.owner_references] == [("LLMService", "chat", uid)]
    assert canary.spec.selector.match_labels == {LABEL_SERVICE: "chat", LABEL_ROLE: ROLE_CANARY}
    args = canary.spec.template.spec.containers[0].args
    assert args[args.index("--tensor-parallel-size") + 1] == "1"
    assert args[args.index("--max-num-seqs") + 1] == "128"
    assert args[args.index("--max-num-batched-tokens") + 1] == "4096"
    assert args[args.index("--quantization") + 1] == "fp8"
    assert canary.spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert main.spec.template.spec.containers[0].args != args  # another configuration than the fleet's

    # 2. The Service selects the canary's pods (they take their share of the traffic); the canary's selector, which
    # carries the role label, does not select the fleet's.
    canary_pod_labels = canary.spec.template.metadata.labels
    service_selector = core.read_namespaced_service("chat", namespace).spec.selector
    assert service_selector.items() <= canary_pod_labels.items()
    assert service_selector.items() <= main.spec.template.metadata.labels.items()
    assert not canary.spec.selector.match_labels.items() <= main.spec.template.metadata.labels.items()

    # 3. Status and an Event say a canary runs.
    status = body()["status"]
    assert status["canary"]["configuration"] == CANARY.describe()
    assert status["canary"]["precision"] == "fp8" and status["canary"]["replicas"] == 1
    assert running_plan(status).config != CANARY.config  # the fleet runs another configuration
    assert "CanaryStarted" in reasons(core, namespace, "chat")

    # A pass of the control loop (one LIST per kind) finds it as it should be: nothing rewritten, nothing started.
    ControlLoop(deps).tick([namespace])
    again = apps.read_namespaced_deployment(canary_name("chat"), namespace)
    assert again.metadata.generation == canary.metadata.generation and again.metadata.uid == canary.metadata.uid
    assert reasons(core, namespace, "chat").count("CanaryStarted") == 1
    assert body()["status"]["canary"] == status["canary"]

    # 4. The decision drops the canary: its Deployment is deleted, status.canariesEnded lists it.
    fake_canary(monkeypatch, None, "fp8 tp1 learned: margin 1.1")
    ControlLoop(deps).tick([namespace])
    with pytest.raises(ApiException) as gone:
        apps.read_namespaced_deployment(canary_name("chat"), namespace)
    assert gone.value.status == 404
    status = body()["status"]
    assert "canary" not in status
    assert [e["configuration"] for e in status["canariesEnded"]] == [margin_key(CANARY.config)]
    assert "CanaryEnded" in reasons(core, namespace, "chat")
    assert apps.read_namespaced_deployment("chat", namespace).metadata.uid == main.metadata.uid  # the fleet stays


def test_a_deployment_named_like_the_canary_is_never_touched(api_client, namespace, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    custom, apps, core = client.CustomObjectsApi(api_client), client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    deps = build_dependencies(OperatorSettings(telemetry="scrape", canaries=True, metrics_port=0, health_port=0),
                              api_client)
    labels = {"app": "someone-elses"}
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "chat-canary", "labels": labels},
        "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}}},
    })
    before = apps.read_namespaced_deployment("chat-canary", namespace)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, service("chat"))

    def body() -> dict[str, Any]:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chat")

    fake_canary(monkeypatch, CANARY, "fp8 tp1 would save 20%")
    # A handler's reconcile (status says no canary runs yet), then passes of the control loop (one LIST of the
    # operator's own Deployments, which leaves this one out): each finds the name taken.
    for reconcile in (lambda: reconcile_service(deps, body(), "test"), lambda: ControlLoop(deps).tick([namespace]),
                      lambda: ControlLoop(deps).tick([namespace])):
        reconcile()
        after = apps.read_namespaced_deployment("chat-canary", namespace)
        assert after.metadata.generation == before.metadata.generation  # never written (status: the controller's)
        assert after.metadata.labels == labels and not after.metadata.owner_references
        assert deps.settings.field_manager not in {f.manager for f in after.metadata.managed_fields}
        status = body()["status"]
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["NameConflict"]["status"] == "True"
        assert "chat-canary" in conditions["NameConflict"]["message"]
        assert "canary" not in status and not status.get("canariesEnded")  # no canary ran, and none is said to
        assert not [r for r in reasons(core, namespace, "chat") if r.startswith("Canary")]
    assert apps.read_namespaced_deployment("chat", namespace)  # the service itself is served

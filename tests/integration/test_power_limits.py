"""The power-limit lever against a real API server: a planned limit reaches the running pods as an annotation and
changing it restarts nothing (the Deployment's pod template stays the same); the node agent reads the pods on its
node through the API, applies the limit (fake NVML) and reports it on the pod (annotation and Event)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from wattkeeper.controller.runner import build_dependencies
from wattkeeper.controller.services import reconcile_service
from wattkeeper.controller.settings import OperatorSettings
from wattkeeper_runtime.agent import ANNOTATION_APPLIED, ANNOTATION_REQUEST, KubernetesPodDirectory, PowerLimitAgent
from wattkeeper_runtime.podresources import PodRef
from wattkeeper_runtime.powercontrol import FakePowerLimitControl

from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


def service(limit: float) -> dict[str, Any]:
    return {
        "apiVersion": "wattkeeper.io/v1alpha1", "kind": "LLMService", "metadata": {"name": "llm"},
        "spec": {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "parametersBillions": 8},
                 "slo": {"ttftP95Seconds": 2, "itlP95Seconds": 0.1}, "accelerator": {"type": "H100"},
                 "scaling": {"minReplicas": 1, "maxReplicas": 2}, "mode": "Pinned",
                 "pinned": {"precision": "bf16", "replicas": 2, "gpuPowerLimitWatts": limit}},
    }


def test_a_limit_change_annotates_pods_and_restarts_nothing(api_client, namespace) -> None:  # type: ignore[no-untyped-def]
    custom, apps, core = client.CustomObjectsApi(api_client), client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    deps = build_dependencies(OperatorSettings(telemetry="scrape", power_limits=True), api_client)
    custom.create_namespaced_custom_object("wattkeeper.io", "v1alpha1", namespace, "llmservices", service(450))
    body = custom.get_namespaced_custom_object("wattkeeper.io", "v1alpha1", namespace, "llmservices", "llm")
    reconcile_service(deps, body, "test")
    pods = wait_for("the two pods", lambda: len(core.list_namespaced_pod(namespace).items) == 2
                    and core.list_namespaced_pod(namespace).items)  # the ReplicaSet controller made them
    reconcile_service(deps, body, "test")  # the next tick annotates the pods it finds
    names = sorted(p.metadata.name for p in pods)
    template = apps.read_namespaced_deployment("llm", namespace).spec.template.to_dict()
    assert all((p.metadata.annotations or {}).get(ANNOTATION_REQUEST) == "450"
               for p in core.list_namespaced_pod(namespace).items)
    assert ANNOTATION_REQUEST not in (template["metadata"]["annotations"] or {})

    custom.patch_namespaced_custom_object("wattkeeper.io", "v1alpha1", namespace, "llmservices", "llm",
                                          {"spec": service(350)["spec"]})
    body = custom.get_namespaced_custom_object("wattkeeper.io", "v1alpha1", namespace, "llmservices", "llm")
    reconcile_service(deps, body, "test")
    after = core.list_namespaced_pod(namespace).items
    assert sorted(p.metadata.name for p in after) == names  # the same pods: nothing restarted
    assert all((p.metadata.annotations or {}).get(ANNOTATION_REQUEST) == "350" for p in after)
    assert apps.read_namespaced_deployment("llm", namespace).spec.template.to_dict() == template
    status = custom.get_namespaced_custom_object("wattkeeper.io", "v1alpha1", namespace, "llmservices", "llm")
    assert status["status"]["plan"]["gpuPowerLimitWatts"] == 350


def test_the_agent_reads_its_nodes_pods_and_reports_on_them(api_client, namespace) -> None:  # type: ignore[no-untyped-def]
    core = client.CoreV1Api(api_client)
    node = f"node-{namespace}"
    for name, managed in (("llm-0", True), ("other-0", False)):
        core.create_namespaced_pod(namespace, {
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "wattkeeper" if managed else "x"},
                         "annotations": {ANNOTATION_REQUEST: "400"}},
            "spec": {"nodeName": node, "containers": [{"name": "vllm", "image": "vllm"}]},
        })
    gpus = FakePowerLimitControl.h100s(2)
    owners = {gpus.uuid(0): [PodRef(namespace, "llm-0", "vllm")], gpus.uuid(1): [PodRef(namespace, "other-0", "c")]}
    directory = KubernetesPodDirectory(node, api_client=api_client)
    agent = PowerLimitAgent(gpus, lambda: owners, directory)
    decisions = {d.uuid: d.state for d in agent.cycle()}
    assert decisions == {gpus.uuid(0): "limited", gpus.uuid(1): "refused"}
    assert [g.limit_milliwatts for g in gpus.gpus] == [400_000, 700_000]
    pod = core.read_namespaced_pod("llm-0", namespace)
    assert pod.metadata.annotations[ANNOTATION_APPLIED] == f'{{"{gpus.uuid(0)}":400.0}}'
    assert ANNOTATION_APPLIED not in (core.read_namespaced_pod("other-0", namespace).metadata.annotations or {})
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=llm-0").items
    assert any(e.reason == "GpuPowerLimit" for e in events)

"""The Deployment and Service of one LLMService under one serving configuration.

The Deployment runs `vllm serve` with the planned flags (built by the runtime launcher's pure `plan_argv`, so the
pod's command line and the launcher's never disagree) and requests `nvidia.com/gpu` equal to the TP degree.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from wattkeeper_runtime.launcher import LaunchError, LaunchPlan, plan_argv

from wattkeeper.api import API_VERSION, LLMService, ServingConfigSpec
from wattkeeper.energy.types import Plan, ServingConfig

LABEL_SERVICE = "wattkeeper.io/service"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_CONFIG = "wattkeeper.io/config"
ANNOTATION_CONFIG_HASH = "wattkeeper.io/config-hash"
ANNOTATION_PARAMS = "wattkeeper.io/model-params-b"
ANNOTATION_ACTIVE_PARAMS = "wattkeeper.io/active-params-b"
LABEL_ACCELERATOR = "wattkeeper.io/accelerator"
GPU_RESOURCE = "nvidia.com/gpu"
# Old pods finish their requests in flight, and draw power, for up to this long after a change.
TERMINATION_GRACE_SECONDS = 30
CONTAINER_NAME = "vllm"


class RenderError(ValueError):
    """The spec and plan cannot be rendered (for example extra args that override planned flags)."""


def selector_labels(service_name: str) -> dict[str, str]:
    return {LABEL_SERVICE: service_name}


def _labels(service: LLMService) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": service.metadata.name,
        "app.kubernetes.io/component": "llm-server",
        LABEL_MANAGED_BY: "wattkeeper",
        **selector_labels(service.metadata.name),
    }


def _owner_reference(service: LLMService) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "LLMService",
        "name": service.metadata.name,
        "uid": service.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def config_hash(service: LLMService, plan: Plan) -> str:
    """A short digest of everything that shapes the pods; a change rolls them."""
    spec = service.spec
    payload = {
        "config": ServingConfigSpec.from_plan(plan).to_wire(),
        "model": spec.model.to_wire(),
        "engine": spec.engine.to_wire(),
        "accelerator": spec.accelerator.to_wire(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def vllm_argv(service: LLMService, plan: Plan) -> list[str]:
    spec = service.spec
    config = plan.config
    has_variant = any(v.precision == config.precision for v in spec.model.variants)
    # A variant is a pre-quantized checkpoint; fp8 without one quantizes the base weights on load; other
    # formats without one are left to the launcher, which reads the checkpoint's name.
    prequantized: bool | None = True if has_variant else (False if config.precision == "fp8" else None)
    launch = LaunchPlan(
        model_source=spec.model.source_for(config.precision),
        precision=str(config.precision),
        tensor_parallel=config.tensor_parallel,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        kv_cache_dtype=config.kv_cache_dtype,
        gpu_memory_utilization=spec.engine.gpu_memory_utilization,
        served_model_name=spec.model.name,
        port=spec.engine.port,
        prequantized=prequantized,
        extra_args=tuple(spec.engine.extra_args),
    )
    try:
        return plan_argv(launch)
    except LaunchError as err:
        raise RenderError(str(err)) from err


def _resources(service: LLMService, config: ServingConfig) -> dict[str, Any]:
    res = service.spec.engine.resources
    requests = {k: v for k, v in res.requests.to_wire().items()}
    limits = {k: v for k, v in res.limits.to_wire().items()}
    requests[GPU_RESOURCE] = str(config.tensor_parallel)
    limits[GPU_RESOURCE] = str(config.tensor_parallel)
    return {"requests": requests, "limits": limits}


def render_deployment(
    service: LLMService, plan: Plan, *, surge: bool = True
) -> dict[str, Any]:
    """The Deployment for a configuration. `surge` rolls with an extra replica (budget has headroom) or,
    when False, in place (one replica down at a time, so power never rises above the current fleet's)."""
    name = service.metadata.name
    spec = service.spec
    config = plan.config
    argv = vllm_argv(service, plan)
    digest = config_hash(service, plan)
    labels = _labels(service)
    pod_env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    pod_env += [{"name": e.name, "value": e.value} for e in spec.engine.env]
    # The model's size and GPU type travel with the pod: the NVML exporter and the GPU-less simulator read them.
    sizing = {ANNOTATION_PARAMS: f"{spec.model.parameters_billions:g}"}
    if spec.model.active_parameters_billions:
        sizing[ANNOTATION_ACTIVE_PARAMS] = f"{spec.model.active_parameters_billions:g}"
    strategy = (
        {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        if surge
        else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    )
    short = config.short()
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": service.metadata.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_CONFIG: short, ANNOTATION_CONFIG_HASH: digest},
            "ownerReferences": [_owner_reference(service)],
        },
        "spec": {
            "replicas": plan.replicas,
            "selector": {"matchLabels": selector_labels(name)},
            "strategy": strategy,
            "template": {
                "metadata": {
                    "labels": {**labels, LABEL_ACCELERATOR: str(spec.accelerator.type)},
                    "annotations": {
                        **sizing,
                        ANNOTATION_CONFIG: short,
                        ANNOTATION_CONFIG_HASH: digest,
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(spec.engine.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "nodeSelector": dict(spec.accelerator.node_selector),
                    "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                    "containers": [
                        {
                            "name": CONTAINER_NAME,
                            "image": spec.engine.image,
                            "command": argv[:2],
                            "args": argv[2:],
                            "env": pod_env,
                            "ports": [{"name": "http", "containerPort": spec.engine.port, "protocol": "TCP"}],
                            "resources": _resources(service, config),
                            "readinessProbe": {
                                "httpGet": {"path": "/health", "port": "http"},
                                "periodSeconds": 5,
                                "failureThreshold": 3,
                            },
                            "startupProbe": {
                                "httpGet": {"path": "/health", "port": "http"},
                                "periodSeconds": 10,
                                "failureThreshold": 90,
                            },
                            "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                        }
                    ],
                    # Tensor parallelism exchanges activations through shared memory.
                    "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}],
                },
            },
        },
    }


def render_service(service: LLMService) -> dict[str, Any]:
    """A ClusterIP Service in front of the replicas, on the OpenAI-compatible port."""
    name = service.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": service.metadata.namespace,
            "labels": _labels(service),
            "ownerReferences": [_owner_reference(service)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [{"name": "http", "port": service.spec.engine.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }

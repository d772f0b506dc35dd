"""The Deployment and Service of one LLMService under one serving configuration.

The Deployment runs `vllm serve` with the planned flags (built by the runtime launcher's pure `plan_argv`, so the
pod's command line and the launcher's never disagree) and requests `nvidia.com/gpu` equal to the TP degree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from wattkeeper_runtime.drain import script_source
from wattkeeper_runtime.launcher import LaunchError, LaunchPlan, plan_argv, plan_env

from wattkeeper.api import API_VERSION, LLMService, ServingConfigSpec
from wattkeeper.energy.types import Plan, ServingConfig

LABEL_SERVICE = "wattkeeper.io/service"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_CONFIG = "wattkeeper.io/config"
ANNOTATION_CONFIG_HASH = "wattkeeper.io/config-hash"
# Same key as the node agent reads on pods (wattkeeper_runtime.agent.ANNOTATION_REQUEST).
ANNOTATION_POWER_LIMIT = "wattkeeper.io/gpu-power-limit-watts"
ANNOTATION_PARAMS = "wattkeeper.io/model-params-b"
ANNOTATION_ACTIVE_PARAMS = "wattkeeper.io/active-params-b"
LABEL_ACCELERATOR = "wattkeeper.io/accelerator"
GPU_RESOURCE = "nvidia.com/gpu"
# The canary (control/types.py Canary): one replica of an untried configuration beside the service's Deployment,
# in its own Deployment `<service>-canary`, its pods marked with this label.
LABEL_ROLE = "wattkeeper.io/role"
ROLE_CANARY = "canary"
CANARY_SUFFIX = "-canary"
# Old pods finish their requests in flight, and draw power, for up to this long after a change: the preStop drain
# waits for them (bounded DRAIN_MARGIN_SECONDS short of it, so vLLM still gets SIGTERM before SIGKILL).
TERMINATION_GRACE_SECONDS = 30
DRAIN_MARGIN_SECONDS = 5
CONTAINER_NAME = "vllm"


class RenderError(ValueError):
    """The spec and plan cannot be rendered (for example extra args that override planned flags)."""


def selector_labels(service_name: str) -> dict[str, str]:
    return {LABEL_SERVICE: service_name}


def canary_name(service_name: str) -> str:
    """The name of a service's canary Deployment; its pods are `<service>-canary-<hash>-<suffix>`, which the
    service's own pod-name pattern (telemetry/base.py `pod_name_pattern`, anchored) does not match."""
    return f"{service_name}{CANARY_SUFFIX}"


def canary_selector_labels(service_name: str) -> dict[str, str]:
    """The canary Deployment's selector: the service's pods that are canaries, and only those."""
    return {**selector_labels(service_name), LABEL_ROLE: ROLE_CANARY}


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
    """A short digest of everything that shapes the pods; a change rolls them.

    The replica count and the GPU power limit are left out: both change in place (the Deployment's scale; a pod
    annotation the node agent applies, see controller/powerlimits.py), never by a restart. The digest sits in the
    pod template, so anything in it that is not the pod's own shape would roll every pod on a mere rescale."""
    spec = service.spec
    in_place = {"gpuPowerLimitWatts", "replicas"}
    payload = {
        "config": {k: v for k, v in ServingConfigSpec.from_plan(plan).to_wire().items() if k not in in_place},
        "model": spec.model.to_wire(),
        "engine": spec.engine.to_wire(),
        "accelerator": spec.accelerator.to_wire(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def launch_plan(service: LLMService, config: ServingConfig) -> LaunchPlan:
    """The launcher's plan for a configuration: a variant (or a source marked quantized) is a pre-quantized
    checkpoint, served without `--quantization`; unquantized source weights are quantized on load (fp8, int8)."""
    spec = service.spec
    source, prequantized = spec.model.checkpoint_for(config.precision)
    return LaunchPlan(
        model_source=source,
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


def vllm_argv(service: LLMService, plan: Plan) -> list[str]:
    """The engine's argv; RenderError for a plan vLLM would refuse (checked before applying, too)."""
    config = plan.config
    planned_env(service, config)
    try:
        return plan_argv(launch_plan(service, config))
    except LaunchError as err:
        raise RenderError(str(err)) from err


def planned_env(service: LLMService, config: ServingConfig) -> dict[str, str]:
    """Settings vLLM reads from its environment only (RTN's bit width): the plan owns them, as it owns its flags."""
    planned = plan_env(launch_plan(service, config))
    clashes = sorted(e.name for e in service.spec.engine.env if e.name in planned and e.value != planned[e.name])
    if clashes:
        raise RenderError(f"engine.env sets {', '.join(clashes)}, which the {config.precision} plan sets itself")
    return planned


def prestop_drain_command(port: int, timeout_s: float) -> list[str]:
    """The preStop hook: `wattkeeper-runtime drain` as a standard-library script, so that it runs in the stock
    vLLM image (python3, no Wattkeeper). It returns when vLLM has no request running or waiting."""
    return ["python3", "-c", script_source(), "--port", str(port), "--timeout", f"{timeout_s:g}"]


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
    planned = planned_env(service, config)
    pod_env += [{"name": k, "value": v} for k, v in sorted(planned.items())]
    pod_env += [{"name": e.name, "value": e.value} for e in spec.engine.env if e.name not in planned]
    # The model's size and GPU type travel with the pod: the NVML exporter and the GPU-less simulator read them.
    sizing = {ANNOTATION_PARAMS: f"{spec.model.parameters_billions:g}"}
    if spec.model.active_parameters_billions:
        sizing[ANNOTATION_ACTIVE_PARAMS] = f"{spec.model.active_parameters_billions:g}"
    strategy = (
        {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        if surge
        else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    )
    # Without the power limit: the template must not change when only the limit does (no restart).
    short = dataclasses.replace(config, gpu_power_limit_watts=None).short()
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": service.metadata.namespace,
            "labels": labels,
            # The planned power limit, for the record only: on the Deployment's own metadata, which rolls nothing.
            "annotations": {ANNOTATION_CONFIG: short, ANNOTATION_CONFIG_HASH: digest,
                            ANNOTATION_POWER_LIMIT: "" if config.gpu_power_limit_watts is None
                            else f"{config.gpu_power_limit_watts:g}"},
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
                            # vLLM 0.11.1's /health answers 200 while the engine lives and 503 once it is dead
                            # (api_server.py:367-374, async_llm.py:654-657); the port opens only after the
                            # model has loaded (api_server.py:2043-2057), which the startup probe waits for
                            # (up to 15 min) before liveness and readiness start.
                            "startupProbe": {
                                "httpGet": {"path": "/health", "port": "http"},
                                "periodSeconds": 10,
                                "failureThreshold": 90,
                            },
                            "readinessProbe": {
                                "httpGet": {"path": "/health", "port": "http"},
                                "periodSeconds": 5,
                                "timeoutSeconds": 3,
                                "failureThreshold": 3,
                            },
                            # A dead or hung engine: restart the container. A long timeout and three misses, so a
                            # busy event loop under load is not mistaken for a hang.
                            "livenessProbe": {
                                "httpGet": {"path": "/health", "port": "http"},
                                "periodSeconds": 10,
                                "timeoutSeconds": 5,
                                "failureThreshold": 3,
                            },
                            # On deletion the pod leaves the Service's ready endpoints at once; this hook then
                            # holds SIGTERM back until the requests in flight are done (vLLM cancels them on
                            # SIGTERM, see wattkeeper_runtime.drain).
                            "lifecycle": {
                                "preStop": {
                                    "exec": {
                                        "command": prestop_drain_command(
                                            spec.engine.port, TERMINATION_GRACE_SECONDS - DRAIN_MARGIN_SECONDS
                                        )
                                    }
                                }
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


def render_canary_deployment(service: LLMService, plan: Plan) -> dict[str, Any]:
    """The canary's Deployment: one replica of `plan`'s configuration, named `<service>-canary`, beside the
    service's own Deployment (the main one is never touched by it).

    Its pods carry the labels the Service selects (`selector_labels`), so they take their share of the traffic,
    plus `wattkeeper.io/role: canary`, which the canary Deployment's own selector includes: it selects canary pods
    only. The main Deployment's selector (`selector_labels`, immutable once created) does match canary pods, but
    neither it nor its ReplicaSets adopt them: the Deployment controller adopts only ReplicaSets without a
    controller (the canary's ReplicaSet is the canary Deployment's), and a ReplicaSet's selector carries its own
    `pod-template-hash`, which the canary's pods (another template) do not share. Telemetry tells the pods apart by
    name (telemetry/base.py `pod_name_pattern`), direct scraping by the role label (controller/services.py
    `pods_selector`, `canary_pods_selector`)."""
    name = canary_name(service.metadata.name)
    out = render_deployment(service, Plan(plan.config, 1), surge=True)
    meta = out["metadata"]
    meta["name"] = name
    meta["labels"] = {**meta["labels"], LABEL_ROLE: ROLE_CANARY}
    spec = out["spec"]
    spec["selector"] = {"matchLabels": canary_selector_labels(service.metadata.name)}
    template_meta = spec["template"]["metadata"]
    template_meta["labels"] = {**template_meta["labels"], LABEL_ROLE: ROLE_CANARY}
    return out


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

"""The profiler Job of one EnergyProfile's sweep (pure): `wattkeeper-runtime profile --profile NAME`.

The Job's pod is a managed pod (label app.kubernetes.io/managed-by=wattkeeper), so that the node agent applies the
GPU power limits the sweep asks for (the profiler annotates its own pod, as the operator does for servers); it
requests as many GPUs as the sweep's largest TP degree, none when it drives the simulator.
"""

from __future__ import annotations

from typing import Any

from wattkeeper import __version__
from wattkeeper.api import API_VERSION, EnergyProfile

from .objects import GPU_RESOURCE, LABEL_MANAGED_BY

LABEL_COMPONENT = "app.kubernetes.io/component"
COMPONENT_PROFILER = "profiler"
LABEL_PROFILE = "wattkeeper.io/profile"
DEFAULT_IMAGE = f"ghcr.io/wattkeeper/runtime:{__version__}"
DEFAULT_SERVICE_ACCOUNT = "wattkeeper-profiler"


def profiler_job_name(profile: EnergyProfile) -> str:
    """One Job per spec generation: a new sweep measures again, an unchanged one never twice."""
    return f"{profile.metadata.name}-profile-{profile.metadata.generation or 1}"[:63]


def render_profiler_job(profile: EnergyProfile, image: str = DEFAULT_IMAGE,
                        service_account: str = DEFAULT_SERVICE_ACCOUNT) -> dict[str, Any]:
    sweep = profile.spec.sweep
    if sweep is None:
        raise ValueError(f"EnergyProfile {profile.metadata.name} has no spec.sweep")
    name = profiler_job_name(profile)
    labels = {
        "app.kubernetes.io/name": "wattkeeper-profiler",
        "app.kubernetes.io/instance": profile.metadata.name,
        LABEL_COMPONENT: COMPONENT_PROFILER,
        LABEL_MANAGED_BY: "wattkeeper",
        LABEL_PROFILE: profile.metadata.name,
    }
    args = ["profile", "--profile", profile.metadata.name]
    resources: dict[str, Any] = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}
    if sweep.simulate:
        args.append("--simulate")
    else:
        gpus = str(max(sweep.tensor_parallel))
        resources["requests"][GPU_RESOURCE] = gpus
        resources["limits"][GPU_RESOURCE] = gpus
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "JOB_NAME", "value": name},
        # Not root: vLLM's and Hugging Face's caches go where any user may write.
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
    ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": profile.metadata.namespace,
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": API_VERSION, "kind": "EnergyProfile", "name": profile.metadata.name,
                "uid": profile.metadata.uid or "", "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            "backoffLimit": 1,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": service_account,
                    "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65534,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "profiler",
                        "image": sweep.image or image,
                        "command": ["wattkeeper-runtime"],
                        "args": args,
                        "env": env,
                        "resources": resources,
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                    }],
                    "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}],
                },
            },
        },
    }

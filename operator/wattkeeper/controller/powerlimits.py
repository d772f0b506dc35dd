"""The power-limit lever's edge: write the planned GPU power limit onto the service's running pods.

The limit travels as the pod annotation `wattkeeper.io/gpu-power-limit-watts`, read by the node agent
(`wattkeeper-runtime agent`), which applies it to the pod's GPUs through NVML. It is written on the Pods themselves
and never on the Deployment's pod template: any template change makes a new ReplicaSet and restarts every pod,
while a Pod metadata patch restarts nothing. Pods that a rollout creates later get it on the next tick.
"""

from __future__ import annotations

from typing import Any

from wattkeeper_runtime.agent import ANNOTATION_REQUEST


def limit_annotation(watts: float | None) -> str | None:
    return None if watts is None else f"{watts:g}"


def pod_limit_patches(pods: list[dict[str, Any]], watts: float | None) -> list[tuple[str, dict[str, Any]]]:
    """(pod name, merge patch) for every pod whose annotation differs from the plan (None removes it). Pure."""
    wanted = limit_annotation(watts)
    patches = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue  # going away: the agent restores its GPUs' default
        if (meta.get("annotations") or {}).get(ANNOTATION_REQUEST) != wanted:
            patches.append((meta["name"], {"metadata": {"annotations": {ANNOTATION_REQUEST: wanted}}}))
    return patches

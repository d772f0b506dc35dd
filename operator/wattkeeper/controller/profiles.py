"""Check an EnergyProfile and say in its status how many points the planner will use."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from wattkeeper.api import EnergyProfile

from .conditions import set_condition
from .services import Dependencies


def profile_status(body: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Pure: the status for a profile (accepted point count, Ready with what is wrong)."""
    old = dict(body.get("status") or {})
    generation = (body.get("metadata") or {}).get("generation")
    conditions = list(old.get("conditions") or [])
    try:
        profile = EnergyProfile.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        conditions = set_condition(conditions, "Ready", False, "InvalidSpec", f"{first['loc']}: {first['msg']}", now,
                                   generation)
        return {**old, "conditions": conditions, "observedGeneration": generation, "pointCount": 0}
    points = [*profile.spec.points, *profile.status.points]
    keys = Counter((p.precision, p.tensor_parallel, p.max_num_seqs, p.max_num_batched_tokens, p.gpu_power_limit_watts,
                    p.concurrency, p.mean_input_tokens, p.mean_output_tokens) for p in points)
    duplicates = [k for k, n in keys.items() if n > 1]
    if duplicates:
        message = (f"{len(points)} points; {len(duplicates)} configurations measured more than once (the planner "
                   f"interpolates over all of them): {duplicates[:3]}")
    else:
        message = f"{len(points)} points for {profile.spec.model_name} on {profile.spec.accelerator}"
    conditions = set_condition(conditions, "Ready", True, "Accepted", message, now, generation)
    return {**old, "conditions": conditions, "observedGeneration": generation, "pointCount": len(points)}


def reconcile_profile(deps: Dependencies, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    deps.metrics.reconciles.labels("EnergyProfile", "change").inc()
    new = profile_status(body, datetime.now(UTC))
    deps.kube.patch_status("energyprofiles", meta["namespace"], meta["name"], dict(body.get("status") or {}), new)

"""Check an EnergyProfile and say in its status how many points the planner will use; run its sweep's Job."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from wattkeeper.api import EnergyProfile
from wattkeeper.render.profiler import profiler_job_name, render_profiler_job

from .conditions import set_condition
from .profile_check import rejected_points
from .services import Dependencies

MAX_REJECTED_LISTED = 100  # status stays small; the condition says how many in all


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
    points = profile.spec.points
    rejected = rejected_points(profile)
    # Points the profiler Job measured (status.points) count with the user's accepted ones.
    accepted = [*(p for i, p in enumerate(points) if i not in rejected), *profile.status.points]
    keys = Counter((p.precision, p.tensor_parallel, p.max_num_seqs, p.max_num_batched_tokens, p.gpu_power_limit_watts,
                    p.concurrency, p.mean_input_tokens, p.mean_output_tokens) for p in accepted)
    duplicates = [k for k, n in keys.items() if n > 1]
    rejected_status = [{"index": i, "reason": reason} for i, reason in sorted(rejected.items())]
    if not accepted and profile.spec.sweep is not None and not rejected:
        conditions = set_condition(conditions, "Ready", False, "Measuring",
                                   "no points yet: the profiler Job measures spec.sweep", now, generation)
        return {**old, "conditions": conditions, "observedGeneration": generation, "pointCount": 0}
    if not accepted:
        conditions = set_condition(conditions, "Ready", False, "NoUsablePoints",
                                   f"all {len(points)} points rejected; first: point {rejected_status[0]['index']}: "
                                   f"{rejected_status[0]['reason']}"[:1000], now, generation)
        return {**old, "conditions": conditions, "observedGeneration": generation, "pointCount": 0,
                "rejectedPoints": rejected_status[:MAX_REJECTED_LISTED]}
    message = f"{len(accepted)} points for {profile.spec.model_name} on {profile.spec.accelerator}"
    if rejected:
        named = "; ".join(f"point {r['index']}: {r['reason']}" for r in rejected_status[:3])
        message = f"{message}; {len(rejected)} rejected (the planner ignores them): {named}"
    if duplicates:
        message = (f"{message}; {len(duplicates)} configurations measured more than once (the planner "
                   f"interpolates over all of them): {duplicates[:3]}")
    conditions = set_condition(conditions, "Ready", True, "PointsRejected" if rejected else "Accepted",
                               message[:1000], now, generation)
    out = {**old, "conditions": conditions, "observedGeneration": generation, "pointCount": len(accepted),
           "rejectedPoints": rejected_status[:MAX_REJECTED_LISTED]}
    if not rejected:
        out.pop("rejectedPoints")
    return out


def sweep_job(body: dict[str, Any], image: str, service_account: str) -> dict[str, Any] | None:
    """Pure: the profiler Job this profile's spec asks for and does not have yet (None: nothing to run)."""
    try:
        profile = EnergyProfile.model_validate(body)
    except ValidationError:
        return None
    if profile.spec.sweep is None or profile.status.job == profiler_job_name(profile):
        return None
    return render_profiler_job(profile, image, service_account)


def reconcile_profile(deps: Dependencies, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    deps.metrics.reconciles.labels("EnergyProfile", "change").inc()
    new = profile_status(body, datetime.now(UTC))
    job = sweep_job(body, deps.settings.profiler_image, deps.settings.profiler_service_account)
    if job is not None:
        created = deps.kube.create_job(job)
        new = {**new, "job": job["metadata"]["name"], "phase": "Pending",
               "message": f"profiler Job {job['metadata']['name']} {'created' if created else 'exists'}"}
        if created:
            deps.kube.event(body, "Normal", "ProfilerStarted",
                            f"Job {job['metadata']['name']} measures the sweep and writes status.points")
    deps.kube.patch_status("energyprofiles", meta["namespace"], meta["name"], dict(body.get("status") or {}), new)

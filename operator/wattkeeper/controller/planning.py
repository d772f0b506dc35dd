"""The edge between the API and the control core: LLMService spec -> ServiceIntent, Candidate -> status figures.
(The API's configuration converts to the core's Plan by `ServingConfigSpec.to_plan` / `from_plan`.)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wattkeeper.api import LLMService, ProfilePoint, ServiceMode
from wattkeeper.control import ServiceIntent, significant
from wattkeeper.energy.catalog import get_accelerator
from wattkeeper.energy.powerlimit import limit_options_watts
from wattkeeper.energy.types import ModelShape, Workload
from wattkeeper.planner import Candidate


def model_shape(service: LLMService) -> ModelShape:
    m = service.spec.model
    return ModelShape(
        name=m.name, total_params_b=m.parameters_billions, active_params_b=m.active_parameters_billions,
        architecture=str(m.architecture), layers=m.layers, kv_heads=m.kv_heads, head_dim=m.head_dim,
    )


def intent_from_service(service: LLMService, profile: Sequence[ProfilePoint] = (),
                        power_limits: bool = False) -> ServiceIntent:
    """`power_limits`: the operator runs with the node agent (--power-limits), so plans may set GPU limits."""
    spec = service.spec
    pinned = spec.pinned.to_plan() if spec.mode == ServiceMode.PINNED and spec.pinned is not None else None
    return ServiceIntent(
        model=model_shape(service),
        accelerator=str(spec.accelerator.type),
        allowed_precisions=tuple(str(p) for p in spec.quality.allowed_precisions),
        slo_ttft_p95_seconds=spec.slo.ttft_p95_seconds,
        slo_itl_p95_seconds=spec.slo.itl_p95_seconds,
        min_replicas=spec.scaling.min_replicas,
        max_replicas=spec.scaling.max_replicas,
        max_tensor_parallel=spec.accelerator.max_tensor_parallel,
        max_gpus=spec.accelerator.max_gpus,
        fallback="ProtectSLO" if spec.fallback == "ProtectSLO" else "ProtectBudget",
        gpu_memory_utilization=spec.engine.gpu_memory_utilization,
        default_workload=Workload(spec.workload.requests_per_second, float(spec.workload.input_tokens),
                                  float(spec.workload.output_tokens)),
        cooldown_seconds=float(spec.reconfiguration.cooldown_seconds),
        horizon_seconds=float(spec.reconfiguration.horizon_seconds),
        allow_disruptive=spec.reconfiguration.allow_disruptive,
        pinned=pinned,
        profile=tuple(profile),
        gpu_power_limits_watts=limit_options_watts(get_accelerator(str(spec.accelerator.type))) if power_limits
        else (None,),
    )


def predicted_figures(candidate: Candidate) -> dict[str, Any]:
    return {
        "joulesPerToken": significant(candidate.joules_per_token),
        "watts": significant(candidate.total_watts),
        "tokensPerSecond": significant(candidate.prediction.output_tokens_per_second * candidate.replicas),
        "ttftP95Seconds": significant(candidate.ttft_p95_seconds),
        "itlP95Seconds": significant(candidate.itl_p95_seconds),
        "source": candidate.prediction.source,
    }

"""The edge between the API and the planner: LLMService spec -> PlanRequest, Candidate -> status figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from wattkeeper.api import LLMService, ProfilePoint, ServingConfig
from wattkeeper.energy.catalog import get_accelerator
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.powerlimit import limit_options_watts
from wattkeeper.energy.types import ModelShape, Workload
from wattkeeper.energy.types import ServingConfig as EngineConfig
from wattkeeper.planner import Candidate, PlanRequest, plan


def model_shape(service: LLMService) -> ModelShape:
    m = service.spec.model
    return ModelShape(
        name=m.name, total_params_b=m.parameters_billions, active_params_b=m.active_parameters_billions,
        architecture=str(m.architecture), layers=m.layers, kv_heads=m.kv_heads, head_dim=m.head_dim,
    )


def plan_request(
    service: LLMService,
    workload: Workload,
    power_cap_watts: float | None,
    power_correction: float = 1.0,
    profile: Sequence[ProfilePoint] | None = None,
    only: ServingConfig | None = None,
    latency_correction: tuple[float, float] = (1.0, 1.0),
    power_limits: bool = False,
) -> PlanRequest:
    """The planner's question for this service. `only` restricts precision and TP to a running configuration
    (when the spec forbids disruptive changes). `latency_correction` (TTFT, ITL) is measured over predicted p95
    latency: the planner aims at the SLO divided by it, so a model that proved optimistic plans more headroom."""
    spec = service.spec
    allowed = [str(p) for p in spec.quality.allowed_precisions]
    max_tp = spec.accelerator.max_tensor_parallel
    kwargs: dict[str, Any] = {}
    if only is not None:
        allowed = [str(only.precision)]
        kwargs["tensor_parallel_options"] = (only.tensor_parallel,)
    if power_limits:  # only where the node agent applies them (--power-limits); see energy/powerlimit.py
        kwargs["gpu_power_limits_watts"] = limit_options_watts(get_accelerator(str(spec.accelerator.type)))
    return PlanRequest(
        model=model_shape(service),
        accelerator=str(spec.accelerator.type),
        allowed_precisions=tuple(allowed),
        slo_ttft_p95_seconds=spec.slo.ttft_p95_seconds / latency_correction[0],
        slo_itl_p95_seconds=spec.slo.itl_p95_seconds / latency_correction[1],
        min_replicas=spec.scaling.min_replicas,
        max_replicas=spec.scaling.max_replicas,
        max_tensor_parallel=max_tp,
        max_gpus=spec.accelerator.max_gpus,
        workload=workload,
        power_cap_watts=power_cap_watts,
        fallback="ProtectSLO" if spec.fallback == "ProtectSLO" else "ProtectBudget",
        power_correction=power_correction,
        profile=tuple(profile) if profile else None,
        gpu_memory_utilization=spec.engine.gpu_memory_utilization,
        **kwargs,
    )


def evaluate_config(
    service: LLMService,
    config: ServingConfig,
    workload: Workload,
    power_correction: float = 1.0,
    profile: Sequence[ProfilePoint] | None = None,
    energy_model: EnergyModel | None = None,
) -> Candidate | None:
    """The planner's figures for exactly one configuration (the running or the pinned one) under a load."""
    base = plan_request(service, workload, None, power_correction, profile, only=config)
    request = PlanRequest(**{
        **base.__dict__,
        "max_num_seqs_options": (config.max_num_seqs,),
        "max_num_batched_tokens_options": (config.max_num_batched_tokens,),
        "gpu_power_limits_watts": (config.gpu_power_limit_watts,),
        "min_replicas": config.replicas,
        "max_replicas": max(config.replicas, 1),
    })
    return plan(request, energy_model).chosen


def to_api_config(candidate: Candidate) -> ServingConfig:
    c = candidate.config
    return ServingConfig(
        precision=c.precision, tensor_parallel=c.tensor_parallel, max_num_seqs=c.max_num_seqs,
        max_num_batched_tokens=c.max_num_batched_tokens, replicas=candidate.replicas,
        kv_cache_dtype=c.kv_cache_dtype, gpu_power_limit_watts=c.gpu_power_limit_watts,
    )


def to_engine_config(config: ServingConfig) -> EngineConfig:
    return EngineConfig(
        precision=str(config.precision), tensor_parallel=config.tensor_parallel, max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens, kv_cache_dtype=config.kv_cache_dtype,
        gpu_power_limit_watts=config.gpu_power_limit_watts,
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


def significant(value: float | None, digits: int = 3) -> float | None:
    """Round to significant digits, so that measurement noise does not rewrite the status every interval."""
    if value is None or not math.isfinite(value):
        return None
    if value == 0:
        return 0.0
    return round(value, -math.floor(math.log10(abs(value))) + (digits - 1))

"""The edge between the API and the control core: LLMService spec -> ServiceIntent, API configuration <-> Plan,
Candidate -> status figures. The explicit converters between the API's ServingConfig (the CRD's shape, with
replicas) and the core's Plan (the engine's ServingConfig and a replica count) live here and only here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wattkeeper.api import LLMService, ProfilePoint, ServiceMode
from wattkeeper.api import ServingConfig as ApiServingConfig
from wattkeeper.control import Plan, ServiceIntent, significant
from wattkeeper.energy.types import ModelShape, ServingConfig, Workload
from wattkeeper.planner import Candidate


def model_shape(service: LLMService) -> ModelShape:
    m = service.spec.model
    return ModelShape(
        name=m.name, total_params_b=m.parameters_billions, active_params_b=m.active_parameters_billions,
        architecture=str(m.architecture), layers=m.layers, kv_heads=m.kv_heads, head_dim=m.head_dim,
    )


def plan_from_api(config: ApiServingConfig) -> Plan:
    return Plan(
        ServingConfig(
            precision=str(config.precision), tensor_parallel=config.tensor_parallel,
            max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens,
            kv_cache_dtype=config.kv_cache_dtype, gpu_power_limit_watts=config.gpu_power_limit_watts,
        ),
        config.replicas,
    )


def api_from_plan(plan: Plan) -> ApiServingConfig:
    c = plan.config
    return ApiServingConfig.model_validate({
        "precision": c.precision, "tensorParallel": c.tensor_parallel, "maxNumSeqs": c.max_num_seqs,
        "maxNumBatchedTokens": c.max_num_batched_tokens, "replicas": plan.replicas,
        "kvCacheDtype": c.kv_cache_dtype, "gpuPowerLimitWatts": c.gpu_power_limit_watts,
    })


def intent_from_service(service: LLMService, profile: Sequence[ProfilePoint] = ()) -> ServiceIntent:
    spec = service.spec
    pinned = plan_from_api(spec.pinned) if spec.mode == ServiceMode.PINNED and spec.pinned is not None else None
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

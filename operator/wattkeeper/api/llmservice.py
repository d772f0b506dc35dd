"""LLMService: what to serve (model, quality floor, latency SLOs) and the levers the operator may pull."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import Field, model_validator

from ..energy.types import Plan, ServingConfig
from .common import (
    CONDITIONS_FIELD_EXTRA,
    AcceleratorType,
    ApiModel,
    Architecture,
    Condition,
    ObjectMeta,
    Precision,
    Quantity,
    StatusModel,
)

# Weights vLLM loads as they are or casts (no quantization method).
UNQUANTIZED_PRECISIONS = frozenset({Precision.BF16, Precision.FP16})
# What vLLM 0.11.1 can quantize unquantized weights to on load (fp8: `--quantization fp8`; int8: weight-only
# `--quantization rtn`); the rest needs a pre-quantized checkpoint. See wattkeeper_runtime.launcher.
ON_THE_FLY_PRECISIONS = frozenset({Precision.FP8, Precision.INT8})


class ModelVariant(ApiModel):
    """A pre-quantized copy of the model (config.json names its method), served as it is for its precision."""

    precision: Precision = Field(description="Precision of this copy's weights.")
    source: str = Field(
        description="Where the copy's weights live: a Hugging Face id (org/name) or a URI (hf://, s3://, pvc://).",
        min_length=1,
        max_length=512,
    )


class ModelSpec(ApiModel):
    """The model to serve."""

    name: str = Field(
        description="Served model name, as clients pass it in the OpenAI API `model` field.",
        min_length=1,
        max_length=253,
    )
    source: str | None = Field(
        default=None,
        description="Where the weights live (Hugging Face id or hf://, s3://, pvc:// URI). Defaults to `name`.",
        max_length=512,
    )
    parameters_billions: float = Field(
        description="Total parameters, in billions (8 for an 8B model). Sizes the weights in GPU memory.",
        gt=0,
        le=10000,
    )
    active_parameters_billions: float | None = Field(
        default=None,
        description="Parameters active per token, in billions, for mixture-of-experts models. Defaults to total.",
        gt=0,
        le=10000,
    )
    architecture: Architecture = Field(default=Architecture.DENSE, description="dense or moe (mixture of experts).")
    layers: int | None = Field(default=None, description="Transformer layers, where known.", ge=1, le=1000)
    kv_heads: int | None = Field(default=None, description="Key/value heads per layer, where known.", ge=1, le=1024)
    head_dim: int | None = Field(default=None, description="Dimension of one attention head, where known.", ge=1, le=4096)
    source_precision: Precision | None = Field(
        default=None,
        description="Precision of the weights at `source`. Unset: unquantized (bf16/fp16) weights, which vLLM can "
        "also quantize on load to fp8 and int8. Set it to a quantized precision when `source` is itself a "
        "pre-quantized checkpoint (mxfp4 for gpt-oss, an FP8 or AWQ checkpoint): it is then served as it is and "
        "every other precision needs a variant.",
    )
    variants: list[ModelVariant] = Field(
        default_factory=list,
        description="Pre-quantized copies of the model, at most one per precision. Precisions without a copy are "
        "quantized on load by vLLM where it can (fp8, weight-only int8) from unquantized `source` weights.",
        max_length=16,
        # A map keyed by precision: the apiserver itself rejects two variants of one precision.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["precision"]},
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "!has(self.sourcePrecision) || self.sourcePrecision in ['bf16', 'fp16'] || "
                         "!has(self.variants) || !self.variants.exists(v, v.precision == self.sourcePrecision)",
                 "message": "a variant repeats sourcePrecision: `source` already is that checkpoint",
                 "fieldPath": ".variants", "reason": "FieldValueInvalid"},
            ]
        }
    }

    @model_validator(mode="after")
    def _one_checkpoint_per_precision(self) -> ModelSpec:
        seen: set[str] = set()
        for variant in self.variants:
            if variant.precision in seen:
                raise ValueError(f"model.variants: more than one variant for precision {variant.precision}")
            seen.add(variant.precision)
        quantized_source = self.source_precision is not None and self.source_precision not in UNQUANTIZED_PRECISIONS
        if quantized_source and self.source_precision in seen:
            raise ValueError(
                f"model.variants repeats sourcePrecision {self.source_precision}: `source` already is that checkpoint"
            )
        return self

    def _source_is_quantized(self) -> bool:
        return self.source_precision is not None and self.source_precision not in UNQUANTIZED_PRECISIONS

    def checkpoint_for(self, precision: str) -> tuple[str, bool]:
        """(weights to load, whether they are a pre-quantized checkpoint) for a precision."""
        for variant in self.variants:
            if variant.precision == precision:
                return variant.source, True
        source = self.source or self.name
        return source, self._source_is_quantized() and precision == self.source_precision

    def can_serve(self, precision: str) -> bool:
        """Whether some checkpoint serves `precision`: a variant, the source as it is, or the unquantized source
        quantized on load."""
        if any(v.precision == precision for v in self.variants) or precision == self.source_precision:
            return True
        if self._source_is_quantized():
            return False
        return precision in UNQUANTIZED_PRECISIONS or precision in ON_THE_FLY_PRECISIONS


class QualitySpec(ApiModel):
    """The quality floor."""

    allowed_precisions: list[Precision] = Field(
        default_factory=lambda: [Precision.BF16],
        description="Precisions the operator may serve. It never picks one outside this list.",
        min_length=1,
        max_length=7,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class SLOSpec(ApiModel):
    """Latency objectives, at the 95th percentile."""

    ttft_p95_seconds: float = Field(
        description="Time to first token, 95th percentile, in seconds.", gt=0, le=3600
    )
    itl_p95_seconds: float = Field(
        description="Inter-token latency (time per output token after the first), 95th percentile, in seconds.",
        gt=0,
        le=60,
    )


class ScalingSpec(ApiModel):
    """Bounds on the replica count."""

    min_replicas: int = Field(default=1, description="Fewest replicas, also when idle.", ge=0, le=1000)
    max_replicas: int = Field(default=4, description="Most replicas.", ge=1, le=1000)

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "self.minReplicas <= self.maxReplicas",
                 "message": "minReplicas must be less than or equal to maxReplicas",
                 "fieldPath": ".minReplicas", "reason": "FieldValueInvalid"},
            ]
        }
    }


class AcceleratorSpec(ApiModel):
    """Where the replicas run."""

    type: AcceleratorType = Field(default=AcceleratorType.H100, description="GPU model of the nodes.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods must match, on top of the GPU request."
    )
    max_tensor_parallel: int = Field(
        default=8,
        description="Highest tensor-parallel degree (GPUs per replica) the operator may choose.",
        json_schema_extra={"enum": [1, 2, 4, 8]},
    )
    memory: Quantity | None = Field(
        default=None,
        description="Memory of one GPU, as a quantity (80Gi). Defaults to the catalog's figure for the type.",
    )
    max_gpus: int | None = Field(
        default=None, description="Most GPUs the service may use in all, over all replicas.", ge=1, le=100000
    )


class EnvVar(ApiModel):
    """An environment variable of the engine container."""

    # What a Deployment admits (printable ASCII but '=', Kubernetes' relaxed env-name rule), so a name the
    # apiserver would refuse is refused here, on the LLMService, with its field named.
    name: str = Field(description="Variable name: printable ASCII, no '='.", min_length=1, max_length=256,
                      pattern=r"^[ -<>-~]+$")
    value: str = Field(default="", description="Variable value.", max_length=32768)


class ResourceList(ApiModel):
    """CPU and memory of the engine container (the GPU count comes from the plan)."""

    cpu: Quantity | None = Field(default=None, description="CPU, as a quantity (8, 500m).")
    memory: Quantity | None = Field(default=None, description="Memory, as a quantity (64Gi).")


class EngineResources(ApiModel):
    requests: ResourceList = Field(default_factory=ResourceList, description="Requested CPU and memory.")
    limits: ResourceList = Field(default_factory=ResourceList, description="CPU and memory limits.")


DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.11.1"


class EngineSpec(ApiModel):
    """The vLLM engine."""

    image: str = Field(default=DEFAULT_VLLM_IMAGE, description="vLLM OpenAI server image.", min_length=1)
    extra_args: list[str] = Field(
        default_factory=list,
        description="Arguments appended to `vllm serve`. Flags that the plan sets are rejected by the operator.",
        max_length=64,
    )
    # A map keyed by name: duplicate names cannot be server-side applied into the Deployment (its env is a map
    # by name there), so the CRD rejects them at admission.
    env: list[EnvVar] = Field(default_factory=list, description="Environment of the engine container.",
                              max_length=128,
                              json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    resources: EngineResources = Field(default_factory=EngineResources, description="CPU and memory.")
    gpu_memory_utilization: float = Field(
        default=0.9, description="Share of GPU memory vLLM may take (--gpu-memory-utilization).", gt=0.1, le=0.98
    )
    port: int = Field(default=8000, description="Port of the OpenAI-compatible server.", ge=1, le=65535)


class ReconfigurationSpec(ApiModel):
    """How eagerly the operator changes a running configuration."""

    cooldown_seconds: int = Field(
        default=300, ge=0, le=86400,
        description="Least time between two optional changes of the configuration, in seconds. Not held: a budget "
        "cut, a measured overshoot or SLO miss, and giving up replicas without a restart while the service has "
        "room to spare, by its p95s or by its requests within both SLOs (the load is already held at its recent "
        "peak).",
    )
    allow_disruptive: bool = Field(
        default=True,
        description="Whether precision and tensor-parallel degree may change while serving (a model reload).",
    )
    horizon_seconds: int = Field(
        default=3600,
        description="Time over which a change must pay back its cost (reload energy, lost capacity), in seconds.",
        ge=60,
        le=604800,
    )


class ServiceMode(StrEnum):
    AUTO = "Auto"
    PINNED = "Pinned"


class Fallback(StrEnum):
    PROTECT_BUDGET = "ProtectBudget"
    PROTECT_SLO = "ProtectSLO"


class ServingConfigSpec(ApiModel):
    """A serving configuration as the API writes it (the shape of `spec.pinned`): what a user pins. The operator
    works with `energy.types.Plan`; `to_plan` and `from_plan` are the only converters."""

    precision: Precision = Field(description="Precision to serve.")
    tensor_parallel: int = Field(
        default=1, description="Tensor-parallel degree: GPUs per replica.", json_schema_extra={"enum": [1, 2, 4, 8]}
    )
    max_num_seqs: int = Field(
        default=256, description="vLLM --max-num-seqs: most sequences in one batch.", ge=1, le=4096
    )
    max_num_batched_tokens: int = Field(
        default=8192, description="vLLM --max-num-batched-tokens: most tokens in one scheduler step.",
        ge=16, le=1048576,
    )
    replicas: int = Field(default=1, description="Replica count.", ge=0, le=1000)
    kv_cache_dtype: str | None = Field(
        default=None, description="vLLM --kv-cache-dtype, for example fp8; engine default when unset.",
        json_schema_extra={"enum": ["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]},
    )
    gpu_power_limit_watts: float | None = Field(
        default=None, description="Power limit to set on each GPU, in watts. Not set when unset.", gt=0, le=2000
    )

    def to_plan(self) -> Plan:
        return Plan(
            ServingConfig(
                precision=str(self.precision), tensor_parallel=self.tensor_parallel, max_num_seqs=self.max_num_seqs,
                max_num_batched_tokens=self.max_num_batched_tokens, kv_cache_dtype=self.kv_cache_dtype,
                gpu_power_limit_watts=self.gpu_power_limit_watts,
            ),
            self.replicas,
        )

    @classmethod
    def from_plan(cls, plan: Plan) -> ServingConfigSpec:
        c = plan.config
        return cls(
            precision=Precision(c.precision), tensor_parallel=c.tensor_parallel, max_num_seqs=c.max_num_seqs,
            max_num_batched_tokens=c.max_num_batched_tokens, replicas=plan.replicas,
            kv_cache_dtype=c.kv_cache_dtype, gpu_power_limit_watts=c.gpu_power_limit_watts,
        )


class WorkloadSpec(ApiModel):
    """The load to plan for before any is measured."""

    requests_per_second: float = Field(default=1.0, description="Expected request rate.", ge=0, le=1e6)
    input_tokens: int = Field(default=1024, description="Mean prompt length, in tokens.", ge=1, le=10_000_000)
    output_tokens: int = Field(default=256, description="Mean completion length, in tokens.", ge=1, le=10_000_000)


class LLMServiceSpec(ApiModel):
    """The user's intent for one served model. The operator never writes it."""

    model: ModelSpec = Field(description="The model to serve.")
    quality: QualitySpec = Field(default_factory=QualitySpec, description="The quality floor.")
    slo: SLOSpec = Field(description="Latency objectives.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Replica bounds.")
    accelerator: AcceleratorSpec = Field(default_factory=AcceleratorSpec, description="GPU type and placement.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="The vLLM engine.")
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec, description="Load to plan for until load is measured.")
    priority: int = Field(
        default=100, description="Priority under a budget: higher keeps its SLO longer when watts run short.",
        ge=0, le=1000,
    )
    reconfiguration: ReconfigurationSpec = Field(
        default_factory=ReconfigurationSpec, description="How eagerly the configuration may change."
    )
    fallback: Fallback = Field(
        default=Fallback.PROTECT_BUDGET,
        description="When no configuration meets both the SLOs and the power allocation: ProtectBudget stays "
        "within the watts and misses the SLO; ProtectSLO meets the SLO and exceeds the watts.",
    )
    mode: ServiceMode = Field(
        default=ServiceMode.AUTO,
        description="Auto: the operator plans and re-plans. Pinned: serve `pinned` as written and only measure.",
    )
    pinned: ServingConfigSpec | None = Field(default=None, description="The configuration to serve in Pinned mode.")

    @model_validator(mode="after")
    def _allowed_precisions_have_checkpoints(self) -> LLMServiceSpec:
        missing = [str(p) for p in self.quality.allowed_precisions if not self.model.can_serve(p)]
        if missing:
            raise ValueError(
                f"quality.allowedPrecisions {', '.join(missing)} have no checkpoint: add a model.variants entry "
                "(a pre-quantized copy) for each; vLLM 0.11.1 quantizes on load only to fp8 and int8, and only "
                "from unquantized source weights"
            )
        return self

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "self.mode != 'Pinned' || has(self.pinned)",
                 "message": "mode Pinned needs spec.pinned", "fieldPath": ".pinned", "reason": "FieldValueRequired"},
                {"rule": "!has(self.pinned) || self.pinned.precision in self.quality.allowedPrecisions",
                 "message": "pinned.precision must be one of quality.allowedPrecisions",
                 "fieldPath": ".pinned.precision", "reason": "FieldValueInvalid"},
                {"rule": "self.quality.allowedPrecisions.all(p, "
                         "(has(self.model.variants) && self.model.variants.exists(v, v.precision == p)) || "
                         "(has(self.model.sourcePrecision) && self.model.sourcePrecision == p) || "
                         "((!has(self.model.sourcePrecision) || self.model.sourcePrecision in ['bf16', 'fp16']) && "
                         "p in ['bf16', 'fp16', 'fp8', 'int8']))",
                 "message": "every allowed precision needs a checkpoint: int4-awq, int4-gptq and mxfp4 (and any "
                            "precision when the source is itself quantized) need a model.variants entry",
                 "fieldPath": ".quality.allowedPrecisions", "reason": "FieldValueInvalid"},
                {"rule": "!has(self.pinned) || self.pinned.tensorParallel <= self.accelerator.maxTensorParallel",
                 "message": "pinned.tensorParallel must not exceed accelerator.maxTensorParallel",
                 "fieldPath": ".pinned.tensorParallel", "reason": "FieldValueInvalid"},
                {"rule": "!has(self.pinned) || (self.pinned.replicas >= self.scaling.minReplicas && "
                         "self.pinned.replicas <= self.scaling.maxReplicas)",
                 "message": "pinned.replicas must lie within scaling.minReplicas and scaling.maxReplicas",
                 "fieldPath": ".pinned.replicas", "reason": "FieldValueInvalid"},
            ]
        }
    }


class PredictedFigures(StatusModel):
    """What the energy model predicts for a plan at the planned-for load."""

    joules_per_token: float | None = Field(default=None, description="Energy per output token, J.")
    watts: float | None = Field(default=None, description="GPU power of all replicas together, W.")
    tokens_per_second: float | None = Field(default=None, description="Output tokens per second, all replicas.")
    ttft_p95_seconds: float | None = Field(default=None, description="Time to first token, p95, s.")
    itl_p95_seconds: float | None = Field(default=None, description="Inter-token latency, p95, s.")
    source: str | None = Field(default=None, description="profile (measured points) or model (analytical).")


class RecentConfigurationStatus(StatusModel):
    """A configuration the operator restarted away from: it is not returned to within 30 minutes unless the budget,
    the spec or the load (by 25%) changed (no A -> B -> A)."""

    configuration: str = Field(description="The configuration left: precision and tensor-parallel degree.")
    left_at: datetime = Field(description="When it was left.")
    allocation_watts: float | None = Field(default=None, description="The enforced allocation when it was left, W.")
    load_rps: float | None = Field(
        default=None, description="The request rate planned for when it was left; a load 25% away lifts the ban."
    )


class MeasuredShortStatus(StatusModel):
    """A fleet measured short (settled, under pressure, and left by a capacity move): for 30 minutes no saving goes
    back to as few replicas of its arguments unless the rate served falls 25% below what it served or the budget changed."""

    configuration: str = Field(description="Its vLLM arguments (precision, TP, batch limits), without a power limit.")
    replicas: int = Field(description="Its replica count.")
    measured_at: datetime = Field(description="When it was measured short.")
    load_rps: float = Field(description="The request rate it served then.")
    allocation_watts: float | None = Field(default=None, description="The enforced allocation then, W.")


class PlanStatus(StatusModel):
    """The configuration the operator chose and why."""

    precision: str | None = Field(default=None, description="Chosen precision.")
    tensor_parallel: int | None = Field(default=None, description="Chosen tensor-parallel degree.")
    max_num_seqs: int | None = Field(default=None, description="Chosen --max-num-seqs.")
    max_num_batched_tokens: int | None = Field(default=None, description="Chosen --max-num-batched-tokens.")
    replicas: int | None = Field(default=None, description="Chosen replica count.")
    kv_cache_dtype: str | None = Field(default=None, description="Chosen --kv-cache-dtype.")
    gpu_power_limit_watts: float | None = Field(default=None, description="Chosen GPU power limit, W.")
    reason: str | None = Field(default=None, description="Why this configuration: what binds and the runner-up.")
    binding: str | None = Field(default=None, description="What limits the choice: slo-ttft, slo-itl, power, memory.")
    feasible: bool | None = Field(default=None, description="Whether the plan meets both SLOs within the watts.")
    predicted: PredictedFigures = Field(default_factory=PredictedFigures, description="Predicted figures.")
    runner_up: str | None = Field(default=None, description="The next best configuration and its J/token.")
    planned_load_rps: float | None = Field(default=None, description="Request rate the plan was made for.")
    planned_input_tokens: float | None = Field(default=None, description="Mean prompt length the plan was made for.")
    planned_output_tokens: float | None = Field(
        default=None, description="Mean completion length the plan was made for."
    )
    decided_at: datetime | None = Field(default=None, description="When the plan was decided.")
    recent_configurations: list[RecentConfigurationStatus] = Field(
        default_factory=list, max_length=8,
        description="Configurations left within the last 30 minutes, oldest first (the anti-flap history).",
    )
    measured_short: list[MeasuredShortStatus] = Field(
        default_factory=list, max_length=8,
        description="Fleets measured short within the last 30 minutes, oldest first: no saving goes back to them.",
    )


class LatencyMarginStatus(StatusModel):
    """The learned latency margin of one configuration: measured over predicted latency while it ran."""

    configuration: str = Field(description="Precision, tensor-parallel degree and chunk budget (e.g. bf16 tp4 "
                               "tok8192); without a budget, for every budget of that precision and degree.")
    ttft: float = Field(description="Measured over predicted TTFT; multiplies the prediction.")
    itl: float = Field(description="Measured over predicted inter-token latency; multiplies the prediction.")
    rps_per_replica: float | None = Field(
        default=None, ge=0,
        description="The most requests a second per replica it was measured at. Fewer replicas loaded more than "
        "25% beyond that are judged with the untried prior on their late requests before a saving goes there.",
    )


class ObservedFigures(StatusModel):
    """What telemetry measured over the last interval."""

    watts: float | None = Field(default=None, description="Measured GPU power of all replicas, W.")
    joules_per_token: float | None = Field(default=None, description="Measured energy per output token, J.")
    tokens_per_second: float | None = Field(default=None, description="Measured output tokens per second.")
    requests_per_second: float | None = Field(default=None, description="Measured finished requests per second.")
    ttft_p95_seconds: float | None = Field(default=None, description="Measured time to first token, p95, s.")
    itl_p95_seconds: float | None = Field(default=None, description="Measured inter-token latency, p95, s.")
    request_itl_p95_seconds: float | None = Field(
        default=None,
        description="Measured p95 over finished requests of each one's mean inter-token latency, s "
        "(vllm:request_time_per_output_token_seconds; absent where vLLM exports no such histogram).",
    )
    within_slo_share: float | None = Field(
        default=None, ge=0, le=1,
        description="Share of the window's requests within both SLOs, at least: one minus the shares over the TTFT "
        "SLO (vllm:time_to_first_token_seconds) and over the ITL SLO by their mean inter-token latency "
        "(vllm:request_time_per_output_token_seconds), counted above the first histogram bucket at or over each "
        "SLO.",
    )
    running_requests: float | None = Field(default=None, description="Requests in the running batch, all replicas.")
    waiting_requests: float | None = Field(default=None, description="Requests queued, all replicas.")
    power_correction: float | None = Field(default=None, description="Measured over predicted power, smoothed.")
    ttft_correction: float | None = Field(default=None, description="Measured over predicted TTFT p95, smoothed.")
    itl_correction: float | None = Field(default=None, description="Measured over predicted ITL p95, smoothed.")
    peak_load_rps: float | None = Field(
        default=None,
        description="Highest request rate measured within the last cooldown period: the load the operator plans "
        "for (a lull shorter than the cooldown does not shrink the fleet).",
    )
    peak_load_at: datetime | None = Field(default=None, description="When peakLoadRps was measured.")
    peak_forecast_rps: float | None = Field(
        default=None, ge=0,
        description="The part of peakLoadRps a trend forecast one model load ahead rather than measured; dropped "
        "once that time has come and the measured rate has not risen.",
    )
    carried_rps: float | None = Field(
        default=None, ge=0,
        description="The most request rate the running plan was measured to carry, settled and with room (both p95s "
        "at most 60% of their SLOs, or nearly every request within both with a short queue): a prediction that it "
        "misses at a load it carried adds no capacity. Cleared at every change of plan.",
    )
    slo_misses_measured: float | None = Field(
        default=None, ge=0,
        description="Requests measured over an SLO in the recent windows, each window counting 0.9x the one after "
        "it: the evidence the planner's tail is learned from (missScale).",
    )
    slo_misses_predicted: float | None = Field(
        default=None, ge=0,
        description="Requests the model predicted over an SLO for the same windows, at their load, as planned.",
    )
    miss_scale: float | None = Field(
        default=None, gt=0,
        description="What the planner multiplies its predicted shares of late requests by: measured over predicted "
        "misses, each with a prior of 5, within 0.35-4.",
    )
    latency_margins: list[LatencyMarginStatus] = Field(
        default_factory=list, max_length=8,
        description="Learned latency margins per configuration (the running one's are ttftCorrection and "
        "itlCorrection).",
    )
    at: datetime | None = Field(default=None, description="When these were measured.")


class AllocationStatus(StatusModel):
    """The watts this service may draw, from the budgets that select it."""

    watts: float | None = Field(default=None, description="Allocated watts (the tightest over budgets).")
    budget: str | None = Field(default=None, description="The budget whose allocation binds.")
    budgets: list[str] = Field(default_factory=list, description="Every budget that selects this service.")
    enforced: bool | None = Field(default=None, description="False when the binding budget only advises.")


class Decision(StatusModel):
    """One decision of the control loop."""

    time: datetime = Field(description="When it was decided.")
    action: str = Field(description="Applied, Held, Advised or Rejected.")
    reason: str = Field(description="Why.")
    configuration: str | None = Field(default=None, description="The configuration decided on, in short.")


class CanaryStatus(StatusModel):
    """The canary: one replica of an untried configuration serving beside the service's Deployment, in the
    Deployment `<name>-canary`, taking its share of the traffic, so that its own latency is measured before the
    service restarts into it."""

    configuration: str | None = Field(default=None, description="The canary's configuration, in short.")
    precision: str | None = Field(default=None, description="The canary's precision.")
    tensor_parallel: int | None = Field(default=None, description="The canary's tensor-parallel degree.")
    max_num_seqs: int | None = Field(default=None, description="The canary's --max-num-seqs.")
    max_num_batched_tokens: int | None = Field(default=None, description="The canary's --max-num-batched-tokens.")
    replicas: int | None = Field(default=None, description="The canary's replica count (always 1).")
    kv_cache_dtype: str | None = Field(default=None, description="The canary's --kv-cache-dtype.")
    gpu_power_limit_watts: float | None = Field(default=None, description="The canary's GPU power limit, W.")
    started_at: datetime | None = Field(default=None, description="When the canary was started.")
    ready_at: datetime | None = Field(default=None, description="When the canary was first seen serving.")
    measured_windows: int | None = Field(
        default=None, ge=0, description="Telemetry windows of the canary's own pods measured so far."
    )


class CanaryEndedStatus(StatusModel):
    """A configuration canaried lately: not canaried again within the service's horizon."""

    configuration: str = Field(description="The configuration canaried: precision, tensor-parallel degree, chunk "
                               "budget (e.g. bf16 tp8 tok8192).")
    ended_at: datetime = Field(description="When its canary ended.")
    allocation_watts: float | None = Field(default=None, description="The enforced allocation when it ended, W.")
    load_rps: float | None = Field(default=None, description="The request rate planned for when it ended.")
    failed: bool | None = Field(default=None, description="It failed: its requests missed the SLO, or its latency "
                                "was further from the model than an untried configuration's margin allows. The "
                                "configuration is not planned for within the service's horizon.")


class LLMServiceStatus(StatusModel):
    """What the operator decided and measured. Written only by the operator."""

    observed_generation: int | None = Field(default=None, description="The spec generation last acted on.")
    plan: PlanStatus | None = Field(default=None, description="The current plan.")
    observed: ObservedFigures | None = Field(default=None, description="Measured figures.")
    allocation: AllocationStatus | None = Field(default=None, description="Power allocation from budgets.")
    replicas: int | None = Field(default=None, description="Replicas the Deployment has.")
    ready_replicas: int | None = Field(default=None, description="Replicas ready to serve.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing, SLOMet, WithinBudget, TelemetryAvailable, Degraded; NameConflict while "
                    "the name of the service's canary Deployment (<name>-canary) is taken.",
        json_schema_extra=CONDITIONS_FIELD_EXTRA,
    )
    decisions: list[Decision] = Field(default_factory=list, description="The last decisions, newest last.")
    last_applied_at: datetime | None = Field(default=None, description="When a configuration was last applied.")
    rolled_out_at: datetime | None = Field(
        default=None,
        description="When the last applied configuration was seen rolled out (earlier than lastAppliedAt while it "
                    "rolls out); the running plan is judged one telemetry window and the pods' drain after it.",
    )
    power_limit_lifted_from_watts: float | None = Field(
        default=None,
        description="The plan's GPU power limit while it is lifted on the running pods to bridge a scale-up: "
                    "replicas added for a measured SLO miss are loading; set back when they serve.",
    )
    slo_missed_since: datetime | None = Field(
        default=None,
        description="Since when the service's SLO has been measured missed with requests queueing (absent while "
                    "it is not): still missed a tick later where the plan predicts it met, one replica is added.",
    )
    canary: CanaryStatus | None = Field(
        default=None,
        description="The canary running beside the service's Deployment (absent when none runs): one replica of an "
                    "untried configuration whose latency is measured before the service restarts into it.",
    )
    canaries_ended: list[CanaryEndedStatus] = Field(
        default_factory=list, max_length=16,
        description="Configurations canaried lately, oldest first: not canaried again within the service's "
                    "horizon.",
    )


class LLMService(ApiModel):
    """An LLM served by vLLM within its SLOs with the least energy, inside any budget that selects it."""

    kind: ClassVar[str] = "LLMService"
    plural: ClassVar[str] = "llmservices"
    singular: ClassVar[str] = "llmservice"
    short_names: ClassVar[list[str]] = ["llms", "llmsvc"]
    printer_columns: ClassVar[list[dict[str, Any]]] = [
        {"name": "Precision", "type": "string", "jsonPath": ".status.plan.precision"},
        {"name": "TP", "type": "integer", "jsonPath": ".status.plan.tensorParallel"},
        {"name": "MaxSeqs", "type": "integer", "jsonPath": ".status.plan.maxNumSeqs"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.plan.replicas"},
        {"name": "Watts", "type": "number", "jsonPath": ".status.observed.watts"},
        {"name": "J/token", "type": "number", "jsonPath": ".status.observed.joulesPerToken"},
        {"name": "SLO", "type": "string", "jsonPath": '.status.conditions[?(@.type=="SLOMet")].status'},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]

    api_version: str = Field(default="wattkeeper.io/v1alpha1", alias="apiVersion")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: LLMServiceSpec
    status: LLMServiceStatus = Field(default_factory=LLMServiceStatus)

    model_config = ApiModel.model_config | {"extra": "ignore"}

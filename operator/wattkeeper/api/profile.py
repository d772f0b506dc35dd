"""EnergyProfile: measured serving points of one model on one accelerator (namespaced).

Two ways to fill it: points written into `spec.points` by a user (imported from ML.ENERGY-format data, say), or a
`spec.sweep` that asks the operator to measure them: it runs the profiler Job (`wattkeeper-runtime profile`), which
writes what it measured into `status.points` with its provenance. The planner reads both and prefers measured
points to the analytical model wherever they cover a configuration (planner/measured.py).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from .common import CONDITIONS_FIELD_EXTRA, AcceleratorType, ApiModel, Condition, ObjectMeta, Precision, StatusModel


class ProfilePoint(ApiModel):
    """One measured configuration in the steady state."""

    precision: Precision = Field(description="Served precision.")
    tensor_parallel: int = Field(default=1, description="Tensor-parallel degree.", json_schema_extra={"enum": [1, 2, 4, 8]})
    max_num_seqs: int = Field(description="vLLM --max-num-seqs of the run.", ge=1, le=4096)
    max_num_batched_tokens: int | None = Field(default=None, description="vLLM --max-num-batched-tokens.", ge=16)
    # Schema bounds reject the absurd at admission (no GPU draws 20 kW, no batch exceeds vLLM's 4,096 sequences);
    # `point_problems` then checks each point against the GPU it was measured on.
    batch_size: float = Field(description="Average running batch measured.", gt=0, le=4096)
    output_tokens_per_second: float = Field(description="Output tokens per second of the replica.", gt=0, le=1e7)
    watts: float = Field(description="Average GPU power, summed over the replica's GPUs, W.", gt=0, le=20000)
    joules_per_token: float = Field(description="GPU energy per output token, J.", gt=0, le=1e4)
    itl_p50_seconds: float | None = Field(default=None, description="Median inter-token latency, s.", gt=0, le=3600)
    itl_p90_seconds: float | None = Field(default=None, description="p90 inter-token latency, s.", gt=0, le=3600)
    ttft_p95_seconds: float | None = Field(default=None, description="p95 time to first token, s.", gt=0, le=3600)
    mean_output_tokens: float | None = Field(default=None, description="Mean completion length, tokens.", gt=0,
                                             le=1e7)
    mean_input_tokens: float | None = Field(default=None, description="Mean prompt length, tokens.", gt=0, le=1e7)
    gpu_power_limit_watts: float | None = Field(
        default=None, description="GPU power limit during the run, W per GPU; unset: the card's default.", gt=0,
        le=2000)
    concurrency: int | None = Field(default=None, description="Requests kept in flight by the load generator.",
                                    ge=1)
    duration_seconds: float | None = Field(default=None, description="Length of the measured window, s.", gt=0)


class PromptShape(ApiModel):
    """One request shape of a sweep."""

    input_tokens: int = Field(description="Prompt length, tokens.", ge=1, le=1_000_000)
    output_tokens: int = Field(description="Completion length, tokens.", ge=1, le=1_000_000)


class ProfileSweep(ApiModel):
    """What to measure: every combination of the lists below, each driven at every concurrency and shape."""

    precisions: list[Precision] = Field(description="Precisions to serve.", min_length=1, max_length=8)
    tensor_parallel: list[int] = Field(default_factory=lambda: [1], description="Tensor-parallel degrees.",
                                       min_length=1, max_length=4)
    max_num_seqs: list[int] = Field(default_factory=lambda: [256], description="vLLM --max-num-seqs values.",
                                    min_length=1, max_length=16)
    gpu_power_limits_watts: list[float] = Field(
        default_factory=list, description="GPU power limits, W per GPU; the card's default is always measured.",
        max_length=8)
    concurrencies: list[int] = Field(default_factory=lambda: [1, 8, 32, 128],
                                     description="Requests kept in flight.", min_length=1, max_length=16)
    shapes: list[PromptShape] = Field(
        default_factory=lambda: [PromptShape(input_tokens=1024, output_tokens=256)],
        description="Prompt and completion lengths.", min_length=1, max_length=8)
    seconds_per_point: float = Field(default=60.0, description="Measured window per point, after warm-up.",
                                     gt=0, le=3600)
    model_source: str | None = Field(default=None, description="Checkpoint to serve; default: the model name.")
    parameters_billions: float | None = Field(default=None, description="Model size, for the simulator.", gt=0)
    image: str | None = Field(
        default=None, description="Profiler image. Default: the runtime image, which has no vLLM, so it serves "
        "only simulate: true; on GPUs give an image with vLLM 0.11.1 and wattkeeper-runtime (for example built "
        "FROM vllm/vllm-openai:v0.11.1 with pip install wattkeeper[runtime]).")
    simulate: bool = Field(
        default=False, description="Drive the GPU-less simulator instead of vLLM (tests, demos): points are "
        "then the energy model's, marked simulated in the provenance.")


class Provenance(StatusModel):
    """Where measured points come from."""

    gpu_model: str | None = Field(default=None, description="GPU model as NVML names it.")
    driver_version: str | None = Field(default=None, description="NVIDIA driver version.")
    engine_version: str | None = Field(default=None, description="vLLM version measured.")
    measured_at: str | None = Field(default=None, description="When the sweep finished (RFC 3339).")
    energy_source: str | None = Field(
        default=None, description="nvml-energy-counter (nvmlDeviceGetTotalEnergyConsumption) or simulated.")
    job: str | None = Field(default=None, description="The profiler Job that measured them.")


# No LLM decodes a token of one sequence in under a millisecond: a replica's tokens per second are at most
# its batch times 1,000.
MIN_INTER_TOKEN_SECONDS = 1e-3
# A point's J/token is its watts over its tokens per second; measured separately, they agree within this factor.
JOULES_PER_TOKEN_TOLERANCE = 1.5


def point_problems(point: ProfilePoint, idle_watts: float, power_limit_watts: float) -> list[str]:
    """Why a point makes no physical sense on a GPU with these per-GPU figures (empty: it does). Pure."""
    problems: list[str] = []
    gpus = point.tensor_parallel
    low, high = 0.5 * idle_watts * gpus, 1.1 * power_limit_watts * gpus
    if not low <= point.watts <= high:
        problems.append(f"watts {point.watts:g} outside {low:g}-{high:g} W for {gpus} GPU(s)")
    if point.batch_size > point.max_num_seqs * 1.05:
        problems.append(f"batchSize {point.batch_size:g} above maxNumSeqs {point.max_num_seqs}")
    ceiling = point.batch_size / MIN_INTER_TOKEN_SECONDS
    if point.output_tokens_per_second > ceiling:
        problems.append(f"outputTokensPerSecond {point.output_tokens_per_second:g} above {ceiling:g} "
                        f"(batch {point.batch_size:g} at 1 ms per token)")
    implied = point.watts / point.output_tokens_per_second
    ratio = point.joules_per_token / implied
    if not 1 / JOULES_PER_TOKEN_TOLERANCE <= ratio <= JOULES_PER_TOKEN_TOLERANCE:
        problems.append(f"joulesPerToken {point.joules_per_token:g} disagrees with watts / outputTokensPerSecond "
                        f"= {implied:.3g}")
    return problems


class EnergyProfileSpec(ApiModel):
    """Measured points for one model on one accelerator."""

    model_name: str = Field(description="The model, as LLMService.spec.model.name names it.", min_length=1)
    accelerator: AcceleratorType = Field(description="GPU model the points were measured on.")
    source: str = Field(
        default="profiler",
        description="Where the points come from: profiler, mlenergy or manual.",
        json_schema_extra={"enum": ["profiler", "mlenergy", "manual"]},
    )
    engine_version: str | None = Field(default=None, description="vLLM version measured, for example 0.11.1.")
    points: list[ProfilePoint] = Field(default_factory=list, description="Measured points given by a user.",
                                       max_length=2000)
    sweep: ProfileSweep | None = Field(
        default=None, description="Ask the operator to measure: it runs the profiler Job, which writes status.points.")

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "size(self.points) > 0 || has(self.sweep)",
                 "message": "a profile needs points or a sweep", "reason": "FieldValueRequired"},
            ]
        }
    }


class RejectedPoint(StatusModel):
    """A point that makes no physical sense on its GPU; the planner ignores it."""

    index: int = Field(description="Index in spec.points.")
    reason: str = Field(description="What is wrong with it.")


class EnergyProfileStatus(StatusModel):
    """What the operator read of the profile. Written only by the operator."""

    observed_generation: int | None = Field(default=None, description="The spec generation last read.")
    point_count: int | None = Field(default=None, description="Points accepted by the planner.")
    rejected_points: list[RejectedPoint] = Field(
        default_factory=list, description="Points the planner ignores, by index, and why.", max_length=2000)
    points: list[ProfilePoint] = Field(default_factory=list, description="Points the profiler Job measured.",
                                       max_length=2000)
    provenance: Provenance | None = Field(default=None, description="Where status.points come from.")
    job: str | None = Field(default=None, description="The profiler Job for the current spec.sweep.")
    phase: str | None = Field(default=None, description="Sweep: Pending, Running, Measured or Failed.")
    message: str | None = Field(default=None, description="What the profiler says: progress or failures.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready.", json_schema_extra=CONDITIONS_FIELD_EXTRA
    )


class EnergyProfile(ApiModel):
    """Measured energy and latency of one model on one accelerator, by serving configuration."""

    kind: ClassVar[str] = "EnergyProfile"
    plural: ClassVar[str] = "energyprofiles"
    singular: ClassVar[str] = "energyprofile"
    short_names: ClassVar[list[str]] = ["eprofile", "ep"]
    printer_columns: ClassVar[list[dict[str, Any]]] = [
        {"name": "Model", "type": "string", "jsonPath": ".spec.modelName"},
        {"name": "GPU", "type": "string", "jsonPath": ".spec.accelerator"},
        {"name": "Source", "type": "string", "jsonPath": ".spec.source"},
        {"name": "Points", "type": "integer", "jsonPath": ".status.pointCount"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]

    api_version: str = Field(default="wattkeeper.io/v1alpha1", alias="apiVersion")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: EnergyProfileSpec
    status: EnergyProfileStatus = Field(default_factory=EnergyProfileStatus)

    model_config = ApiModel.model_config | {"extra": "ignore"}

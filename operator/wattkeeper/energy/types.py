"""Plain value types shared by the energy model, the planner, the simulators and the operator.

Frozen dataclasses, no Kubernetes: the operator maps its API objects onto these at its edge.
Units are in the names: _watts, _seconds, _bytes, _b (billions of parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelShape:
    """What the energy model needs to know of an LLM."""

    name: str
    total_params_b: float
    active_params_b: float | None = None  # MoE: parameters touched per token; None means dense (= total)
    architecture: str = "dense"  # "dense" or "moe"
    layers: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    hidden_size: int | None = None
    # KV bytes relative to full attention in every layer (sliding-window or Mamba layers hold less); None = guess.
    kv_fraction: float | None = None

    @property
    def active_b(self) -> float:
        return self.active_params_b if self.active_params_b else self.total_params_b


@dataclass(frozen=True)
class ServingConfig:
    """One vLLM serving configuration of one replica."""

    precision: str  # bf16, fp16, fp8, int8, int4-awq, int4-gptq, mxfp4
    tensor_parallel: int = 1
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    kv_cache_dtype: str | None = None
    gpu_power_limit_watts: float | None = None

    def short(self) -> str:
        text = f"{self.precision} tp{self.tensor_parallel} seqs{self.max_num_seqs} tok{self.max_num_batched_tokens}"
        if self.kv_cache_dtype:
            text += f" kv-{self.kv_cache_dtype}"
        if self.gpu_power_limit_watts:
            text += f" gpu-limit{self.gpu_power_limit_watts:.0f}W"
        return text


@dataclass(frozen=True)
class Plan:
    """A fleet: one serving configuration per replica, and how many replicas. The API's `ServingConfigSpec`
    converts to and from it (`to_plan`, `from_plan`); nothing else stands for a served configuration."""

    config: ServingConfig
    replicas: int

    def describe(self) -> str:
        """The one way a plan is printed, in status, events, logs and benchmark reports."""
        return f"{self.config.short()} x{self.replicas}"


@dataclass(frozen=True)
class Workload:
    """Offered load: request rate and mean token counts (distributions are summarised by their means)."""

    requests_per_second: float
    input_tokens: float = 1024.0
    output_tokens: float = 256.0


@dataclass(frozen=True)
class ReplicaPrediction:
    """What one replica does under a configuration and a load (or with a full batch when load is None)."""

    batch_size: float  # steady running batch
    output_tokens_per_second: float
    watts: float  # GPU power summed over the replica's GPUs
    joules_per_token: float  # per output token
    joules_per_request: float
    itl_p50_seconds: float
    itl_p90_seconds: float
    itl_p95_seconds: float
    ttft_p95_seconds: float
    fits_memory: bool
    kv_cache_tokens: int  # KV-cache capacity in tokens, 0 when the weights alone do not fit
    utilisation: float = 1.0  # offered load over the replica's capacity at max_num_seqs
    source: str = "model"  # "profile" (interpolated measured points) or "model" (calibrated analytical)
    notes: tuple[str, ...] = field(default_factory=tuple)

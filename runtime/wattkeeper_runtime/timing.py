"""How long an engine step takes and how much power it draws: the seam between the batching engine and a model.

`StepTiming` is what `BatchingEngine` needs. Two implementations:
- `EnergyModelTiming`: the project's energy model (`wattkeeper.energy.model.EnergyModel`), the same one the
  planner and the benchmarks use, so simulated pods behave as the planner predicts.
- `LinearStubTiming`: a tiny deterministic roofline-shaped stub, for unit tests and as a fallback where the energy
  model cannot be imported.
`make_timing` picks the first that works.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


class StepTiming(Protocol):
    """Step durations and power of one replica (all of its GPUs together)."""

    def decode_step_seconds(self, batch_size: int, context_tokens: int, prompt_tokens: int = 0) -> float:
        """One iteration of `batch_size` decoding sequences of mean context `context_tokens`, plus
        `prompt_tokens` of prefill riding in the same iteration (chunked prefill mixes the two)."""
        ...

    def prefill_seconds(self, prompt_tokens: int) -> float:
        """An iteration that only prefills `prompt_tokens` tokens (one or several prompts, or a chunk)."""
        ...

    def power_watts(self, batch_size: int, busy_fraction: float, context_tokens: int = 1024) -> float:
        """Power of the replica, summed over its GPUs, with `batch_size` running sequences."""
        ...

    def kv_cache_tokens(self) -> int:
        """KV-cache capacity in tokens (0 or less: unlimited)."""
        ...


# Weight bytes per parameter by precision, including scales; mirrors the energy model's catalog.
_WEIGHT_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.03, "int8": 1.03, "int4-awq": 0.5625, "int4-gptq": 0.5625}


@dataclass(frozen=True)
class LinearStubTiming:
    """A deterministic stand-in shaped like an H100 serving a dense model.

    decode step = fixed overhead + weight read + KV read + a compute term growing with the batch;
    prefill = overhead + tokens * 2 * active params / effective FLOP/s; power rises from idle towards the
    limit as the batch fills. Only the shape matters to tests: more batch -> longer steps and more watts.
    """

    params_b: float = 8.0
    active_params_b: float | None = None
    precision: str = "bf16"
    tensor_parallel: int = 1
    memory_bandwidth_bytes_per_second: float = 3.35e12
    flops_per_second: float = 989e12
    idle_watts_per_gpu: float = 75.0
    limit_watts_per_gpu: float = 700.0
    memory_bytes_per_gpu: float = 80 * 2.0**30
    gpu_memory_utilization: float = 0.9
    kv_bytes_per_token: float = 131072.0  # Llama-3.1-8B in bf16: 32 layers * 8 heads * 128 dims * 2 (K, V) * 2 B
    overhead_seconds: float = 0.002

    @property
    def _weight_bytes(self) -> float:
        return self.params_b * 1e9 * _WEIGHT_BYTES.get(self.precision, 0.53)

    @property
    def _active_b(self) -> float:
        return self.active_params_b or self.params_b

    def decode_step_seconds(self, batch_size: int, context_tokens: int, prompt_tokens: int = 0) -> float:
        bandwidth = self.memory_bandwidth_bytes_per_second * 0.8 * self.tensor_parallel
        flops = self.flops_per_second * 0.4 * self.tensor_parallel
        weights = self._weight_bytes / bandwidth
        kv = batch_size * context_tokens * self.kv_bytes_per_token / bandwidth
        compute = (batch_size + prompt_tokens) * 2 * self._active_b * 1e9 / flops
        return self.overhead_seconds + weights + kv + compute

    def prefill_seconds(self, prompt_tokens: int) -> float:
        flops = self.flops_per_second * 0.5 * self.tensor_parallel
        return self.overhead_seconds + prompt_tokens * 2 * self._active_b * 1e9 / flops

    def power_watts(self, batch_size: int, busy_fraction: float, context_tokens: int = 1024) -> float:
        fill = 0.65 + 0.35 * (1.0 - math.exp(-batch_size / 64.0)) if batch_size > 0 else 0.0
        per_gpu = self.idle_watts_per_gpu + (self.limit_watts_per_gpu - self.idle_watts_per_gpu) * fill * busy_fraction
        return per_gpu * self.tensor_parallel

    def kv_cache_tokens(self) -> int:
        free = self.memory_bytes_per_gpu * self.gpu_memory_utilization * self.tensor_parallel - self._weight_bytes
        return max(0, int(free / self.kv_bytes_per_token))


@dataclass(frozen=True)
class SimSpec:
    """What a simulated replica serves: enough to build a timing from either implementation."""

    model_name: str
    params_b: float
    active_params_b: float | None
    precision: str
    gpu_type: str
    tensor_parallel: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_dtype: str | None
    gpu_memory_utilization: float
    gpu_power_limit_watts: float | None = None  # per GPU; the energy model's power-limit effect (powerlimit.py)


class EnergyModelTiming:
    """`StepTiming` over `wattkeeper.energy.model.EnergyModel` (the planner's model, default coefficients).

    Answers are cached with the context rounded to 64 tokens: an engine asks the same questions step after step,
    and one model evaluation costs about 0.1 ms, which adds up over a long replay.
    """

    _CONTEXT_ROUNDING = 64

    def __init__(self, spec: SimSpec) -> None:
        from wattkeeper.energy import catalog
        from wattkeeper.energy.model import EnergyModel
        from wattkeeper.energy.types import ServingConfig

        default = EnergyModel.default()
        self._energy: Any = EnergyModel(default.coefficients, gpu_memory_utilization=spec.gpu_memory_utilization)
        self._accelerator = catalog.get_accelerator(spec.gpu_type)
        architecture = "moe" if spec.active_params_b and spec.active_params_b < spec.params_b else "dense"
        self._model = catalog.model_from_name(spec.model_name, spec.params_b, spec.active_params_b, architecture)
        self._config = ServingConfig(
            precision=spec.precision,
            tensor_parallel=spec.tensor_parallel,
            max_num_seqs=spec.max_num_seqs,
            max_num_batched_tokens=spec.max_num_batched_tokens,
            kv_cache_dtype=spec.kv_cache_dtype,
            gpu_power_limit_watts=spec.gpu_power_limit_watts,
        )
        self._kv_tokens = int(self._energy.kv_cache_capacity_tokens(self._model, self._accelerator, self._config))
        self._cache: dict[tuple[str, int, int, int], float] = {}
        # Fail now, not on the first request, if the model's signatures differ from what this adapter expects.
        self.decode_step_seconds(1, 512, 0)
        self.prefill_seconds(512)
        self.power_watts(1, 1.0)

    def _round(self, context_tokens: int) -> int:
        step = self._CONTEXT_ROUNDING
        return max(step, round(context_tokens / step) * step)

    def _cached(self, key: tuple[str, int, int, int], compute: Any) -> float:
        value = self._cache.get(key)
        if value is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            value = self._cache[key] = float(compute())
        return value

    def decode_step_seconds(self, batch_size: int, context_tokens: int, prompt_tokens: int = 0) -> float:
        context = self._round(context_tokens)
        m, a, c = self._model, self._accelerator, self._config
        return self._cached(
            ("decode", batch_size, context, prompt_tokens),
            lambda: self._energy.decode_step_seconds(m, a, c, batch_size, context, prompt_tokens),
        )

    def prefill_seconds(self, prompt_tokens: int) -> float:
        m, a, c = self._model, self._accelerator, self._config
        return self._cached(
            ("prefill", prompt_tokens, 0, 0), lambda: self._energy.prefill_seconds(m, a, c, prompt_tokens)
        )

    def power_watts(self, batch_size: int, busy_fraction: float, context_tokens: int = 1024) -> float:
        context = self._round(context_tokens)
        m, a, c = self._model, self._accelerator, self._config
        busy = round(busy_fraction * 1000)
        return self._cached(
            ("power", batch_size, context, busy),
            lambda: self._energy.power_watts(m, a, c, batch_size, busy / 1000, context),
        )

    def kv_cache_tokens(self) -> int:
        return self._kv_tokens

    def set_power_limit(self, watts: float | None) -> float | None:
        """Change the GPU power limit in place, as the node agent does on a real card (within [card minimum,
        default]; None or at/above the default: the default). Returns the limit now in force (None: default)."""
        from dataclasses import replace

        acc = self._accelerator
        limit = None if watts is None or watts >= acc.power_limit_watts else max(float(watts),
                                                                                acc.min_power_limit_watts)
        self._config = replace(self._config, gpu_power_limit_watts=limit)
        self._cache.clear()
        return limit


def stub_timing(spec: SimSpec) -> LinearStubTiming:
    accel = {
        "H100": (3.35e12, 989e12, 75.0, 700.0, 80 * 2.0**30),
        "H200": (4.8e12, 989e12, 80.0, 700.0, 141e9),
        "B200": (8.0e12, 2250e12, 140.0, 1000.0, 180e9),
        "A100": (2.039e12, 312e12, 55.0, 400.0, 80 * 2.0**30),
        "L40S": (864e9, 362e12, 35.0, 350.0, 48 * 2.0**30),
    }.get(spec.gpu_type.upper(), (3.35e12, 989e12, 75.0, 700.0, 80 * 2.0**30))
    # KV bytes per token scale roughly with model size (8B: 128 KiB in bf16); fp8 KV halves them.
    kv_bytes = 131072.0 * max(spec.params_b, 0.5) / 8.0
    if spec.kv_cache_dtype and spec.kv_cache_dtype.startswith("fp8"):
        kv_bytes /= 2
    return LinearStubTiming(
        params_b=spec.params_b,
        active_params_b=spec.active_params_b,
        precision=spec.precision,
        tensor_parallel=spec.tensor_parallel,
        memory_bandwidth_bytes_per_second=accel[0],
        flops_per_second=accel[1] * (2.0 if spec.precision == "fp8" else 1.0),
        idle_watts_per_gpu=accel[2],
        limit_watts_per_gpu=accel[3],
        memory_bytes_per_gpu=accel[4],
        gpu_memory_utilization=spec.gpu_memory_utilization,
        kv_bytes_per_token=kv_bytes,
    )


def make_timing(spec: SimSpec, prefer_energy_model: bool = True) -> StepTiming:
    """The energy model's timing when it imports and answers, else the stub (with a warning saying why)."""
    if prefer_energy_model:
        try:
            return EnergyModelTiming(spec)
        except Exception as error:  # ImportError while the model is absent, or an API mismatch
            log.warning(
                "energy model unavailable (%s: %s); simulating with the stub timing", type(error).__name__, error
            )
    return stub_timing(spec)

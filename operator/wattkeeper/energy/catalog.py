"""Hardware catalog and known model shapes.

Datasheet figures (dense, no sparsity). Idle watts are what a GPU with a model loaded draws between requests,
not the bare board minimum; the energy model's power curve runs between idle and the power limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .types import ModelShape


@dataclass(frozen=True)
class Accelerator:
    """One GPU model. Every figure is per GPU."""

    name: str
    memory_bytes: float
    memory_bandwidth_bytes_per_second: float
    # Tensor-core peak by compute format: "bf16" (also fp16), "fp8", "int8", "fp4". A format missing here is not
    # native: the model computes in bf16 and pays for dequantising the weights.
    peak_flops_per_second: dict[str, float]
    power_limit_watts: float
    idle_watts: float
    nvlink_bandwidth_bytes_per_second: float  # per GPU, one direction; PCIe figure when there is no NVLink
    cuda_core_flops_per_second: float = 0.0  # non-tensor FP32, where dequantisation runs
    min_power_limit_watts: float = 0.0
    all_reduce_table: str = "h100"  # which measured all-reduce curve to scale from (see network.py)

    def peak_flops(self, compute_format: str) -> float:
        return self.peak_flops_per_second.get(compute_format, self.peak_flops_per_second["bf16"])

    def supports(self, compute_format: str) -> bool:
        return compute_format in self.peak_flops_per_second


_GIB = float(2**30)

ACCELERATORS: dict[str, Accelerator] = {
    "H100": Accelerator(
        name="H100",  # SXM5 80 GB
        memory_bytes=80 * _GIB,
        memory_bandwidth_bytes_per_second=3.35e12,
        peak_flops_per_second={"bf16": 989e12, "fp8": 1979e12, "int8": 1979e12},
        power_limit_watts=700.0,
        idle_watts=75.0,
        nvlink_bandwidth_bytes_per_second=450e9,
        cuda_core_flops_per_second=67e12,
        min_power_limit_watts=200.0,
        all_reduce_table="h100",
    ),
    "H200": Accelerator(
        name="H200",  # SXM 141 GB
        memory_bytes=141e9,
        memory_bandwidth_bytes_per_second=4.8e12,
        peak_flops_per_second={"bf16": 989e12, "fp8": 1979e12, "int8": 1979e12},
        power_limit_watts=700.0,
        idle_watts=80.0,
        nvlink_bandwidth_bytes_per_second=450e9,
        cuda_core_flops_per_second=67e12,
        min_power_limit_watts=200.0,
        all_reduce_table="h100",
    ),
    "B200": Accelerator(
        name="B200",  # HGX B200, 180 GB usable
        memory_bytes=180e9,
        memory_bandwidth_bytes_per_second=8.0e12,
        peak_flops_per_second={"bf16": 2250e12, "fp8": 4500e12, "int8": 4500e12, "fp4": 9000e12},
        power_limit_watts=1000.0,
        idle_watts=140.0,
        nvlink_bandwidth_bytes_per_second=900e9,
        cuda_core_flops_per_second=80e12,
        min_power_limit_watts=200.0,
        all_reduce_table="h100",
    ),
    "A100": Accelerator(
        name="A100",  # SXM4 80 GB; no fp8 tensor cores
        memory_bytes=80 * _GIB,
        memory_bandwidth_bytes_per_second=2.039e12,
        peak_flops_per_second={"bf16": 312e12, "int8": 624e12},
        power_limit_watts=400.0,
        idle_watts=55.0,
        nvlink_bandwidth_bytes_per_second=300e9,
        cuda_core_flops_per_second=19.5e12,
        min_power_limit_watts=150.0,
        all_reduce_table="a100",
    ),
    "L40S": Accelerator(
        name="L40S",  # PCIe, no NVLink
        memory_bytes=48 * _GIB,
        memory_bandwidth_bytes_per_second=864e9,
        peak_flops_per_second={"bf16": 362e12, "fp8": 733e12, "int8": 733e12},
        power_limit_watts=350.0,
        idle_watts=35.0,
        nvlink_bandwidth_bytes_per_second=32e9,
        cuda_core_flops_per_second=91.6e12,
        min_power_limit_watts=150.0,
        all_reduce_table="h100",
    ),
}

_ACCELERATOR_ALIASES = {"H100-SXM": "H100", "H100-80GB": "H100", "H200-SXM": "H200", "A100-80GB": "A100"}


def get_accelerator(name: str) -> Accelerator:
    key = name.strip().upper()
    key = _ACCELERATOR_ALIASES.get(key, key)
    if key not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {name!r}: known ones are {', '.join(sorted(ACCELERATORS))}")
    return ACCELERATORS[key]


@dataclass(frozen=True)
class PrecisionSpec:
    """How a serving precision stores weights and which tensor-core format does the maths."""

    name: str
    weight_bytes_per_param: float  # including scales
    compute_format: str  # "bf16", "fp8", "fp4": the format of the GEMMs when the accelerator supports it
    weight_only: bool  # weights dequantised to bf16 inside the kernel (W8A16, W4A16)
    kv_bytes_per_element: float = 2.0
    aliases: tuple[str, ...] = field(default_factory=tuple)


PRECISIONS: dict[str, PrecisionSpec] = {
    "bf16": PrecisionSpec("bf16", 2.0, "bf16", False, aliases=("bfloat16",)),
    "fp16": PrecisionSpec("fp16", 2.0, "bf16", False, aliases=("float16", "half")),
    "fp8": PrecisionSpec("fp8", 1.03, "fp8", False, aliases=("float8", "fp8_e4m3")),
    "int8": PrecisionSpec("int8", 1.03, "bf16", True, aliases=("w8a16",)),
    "int4-awq": PrecisionSpec("int4-awq", 0.5625, "bf16", True, aliases=("awq",)),
    "int4-gptq": PrecisionSpec("int4-gptq", 0.5625, "bf16", True, aliases=("gptq",)),
    "mxfp4": PrecisionSpec("mxfp4", 0.53, "fp4", True, aliases=("fp4",)),
}


def get_precision(name: str) -> PrecisionSpec:
    key = name.strip().lower()
    for spec in PRECISIONS.values():
        if key == spec.name or key in spec.aliases:
            return spec
    raise ValueError(f"unknown precision {name!r}: known ones are {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class KnownShape:
    layers: int
    hidden_size: int
    kv_heads: int
    head_dim: int
    # KV bytes relative to full attention in every layer: sliding-window or Mamba layers hold less, MLA compresses.
    kv_fraction: float = 1.0


# Public architecture facts (model cards / config.json) of the models people serve and ML.ENERGY measured. Keys are
# lower-case fragments of the model name, most specific first.
KNOWN_SHAPES: list[tuple[str, KnownShape]] = [
    ("llama-3.1-405b", KnownShape(126, 16384, 8, 128)),
    ("llama-3.1-70b", KnownShape(80, 8192, 8, 128)),
    ("llama-3.3-70b", KnownShape(80, 8192, 8, 128)),
    ("llama-3.1-8b", KnownShape(32, 4096, 8, 128)),
    ("llama-4-maverick", KnownShape(48, 5120, 8, 128)),
    ("llama-4-scout", KnownShape(48, 5120, 8, 128)),
    ("qwen3-coder-480b", KnownShape(62, 6144, 8, 128)),
    ("qwen3-235b", KnownShape(94, 4096, 4, 128)),
    ("qwen3-coder-30b", KnownShape(48, 2048, 4, 128)),
    ("qwen3-30b", KnownShape(48, 2048, 4, 128)),
    ("qwen3-32b", KnownShape(64, 5120, 8, 128)),
    ("qwen3-14b", KnownShape(40, 5120, 8, 128)),
    ("qwen3-8b", KnownShape(36, 4096, 8, 128)),
    ("gemma-3-27b", KnownShape(62, 5376, 16, 128, kv_fraction=0.3)),  # 5 of 6 layers slide over 1024 tokens
    ("gemma-3-12b", KnownShape(48, 3840, 8, 256, kv_fraction=0.3)),
    ("gpt-oss-120b", KnownShape(36, 2880, 8, 64, kv_fraction=0.55)),  # half the layers slide over 128 tokens
    ("gpt-oss-20b", KnownShape(24, 2880, 8, 64, kv_fraction=0.55)),
    ("deepseek", KnownShape(61, 7168, 1, 576, kv_fraction=0.5)),  # MLA: one 576-wide latent, not K and V
    ("nemotron-nano-12b", KnownShape(62, 5120, 8, 128, kv_fraction=6 / 62)),  # 6 attention layers, rest Mamba
    ("nemotron-nano-9b", KnownShape(56, 4480, 8, 128, kv_fraction=4 / 56)),
]


def known_shape(name: str) -> KnownShape | None:
    key = name.lower()
    for fragment, shape in KNOWN_SHAPES:
        if fragment in key:
            return shape
    return None


def normalise_architecture(text: str) -> str:
    """ML.ENERGY says "Dense Transformer", "MoE", "Mamba-Transformer Hybrid"; the model says dense/moe/hybrid."""
    low = text.strip().lower()
    if "moe" in low or "mixture" in low:
        return "moe"
    if "hybrid" in low or "mamba" in low:
        return "hybrid"
    return "dense"


def model_from_name(
    name: str, total_params_b: float, active_params_b: float | None = None, architecture: str = "dense"
) -> ModelShape:
    """A ModelShape with layers and KV heads filled in from KNOWN_SHAPES where the name is known."""
    shape = known_shape(name)
    arch = normalise_architecture(architecture)
    active = active_params_b if active_params_b and active_params_b < total_params_b else None
    if shape is None:
        return ModelShape(name=name, total_params_b=total_params_b, active_params_b=active, architecture=arch)
    return ModelShape(
        name=name,
        total_params_b=total_params_b,
        active_params_b=active,
        architecture=arch,
        layers=shape.layers,
        kv_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        hidden_size=shape.hidden_size,
        kv_fraction=shape.kv_fraction,
    )


@dataclass(frozen=True)
class ResolvedShape:
    """The figures the energy model computes with, guessed from the parameter count where unknown."""

    layers: int
    hidden_size: int
    kv_bytes_per_token_bf16: float  # whole model, K and V, 2-byte elements


def resolve_shape(model: ModelShape) -> ResolvedShape:
    known = known_shape(model.name)
    layers = model.layers or (known.layers if known else None)
    hidden = model.hidden_size or (known.hidden_size if known else None)
    kv_heads = model.kv_heads or (known.kv_heads if known else None)
    head_dim = model.head_dim or (known.head_dim if known else None)
    fraction = model.kv_fraction if model.kv_fraction is not None else (known.kv_fraction if known else None)
    # Dense transformers hold about 12 * layers * hidden^2 parameters; layer counts grow slowly with size
    # (32 at 8B, 80 at 70B, 126 at 405B), which this power law follows within about 20%.
    sized_b = model.active_b if model.architecture == "moe" else model.total_params_b
    if layers is None:
        layers = max(8, round(32 * (max(sized_b, 0.5) / 8.0) ** 0.33))
    if hidden is None:
        hidden = max(1024, int(64 * round(math.sqrt(sized_b * 1e9 / (12 * layers)) / 64)))
    if kv_heads is None:
        kv_heads = 8  # grouped-query attention with 8 KV heads is the norm from 7B up
    if head_dim is None:
        head_dim = 128
    if fraction is None:
        fraction = 0.1 if model.architecture == "hybrid" else 1.0
    kv = 2.0 * layers * kv_heads * head_dim * 2.0 * fraction
    return ResolvedShape(layers=int(layers), hidden_size=int(hidden), kv_bytes_per_token_bf16=kv)

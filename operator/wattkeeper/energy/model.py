"""The calibrated analytical energy model of one vLLM replica.

A decode step reads the weights it touches and the KV cache of its batch from HBM, does 2 x active-parameters
FLOPs per token on tensor cores, all-reduces activations across tensor-parallel GPUs twice per layer, and pays a
fixed and a per-sequence scheduling overhead. Steady-state prefill is mixed into decode steps (chunked prefill), so
a step also carries its share of prompt tokens. Memory and compute overlap imperfectly (a smooth maximum).
Quantization acts only through these mechanisms: fewer weight bytes, faster tensor-core formats where the GPU has
them, per-layer activation-quantisation kernels (fp8) and dequantisation work on CUDA cores (weight-only int8/int4,
mxfp4 without fp4 tensor cores). Whether it saves energy therefore depends on the batch, as measured.

Power per GPU runs from idle to the power limit and saturates: idle + (limit - idle) * (1 - exp(-x)), with x rising
with the share of the step spent streaming memory and computing.

Every function here is vectorised over rows of `Features` so that calibration (485 measured rows) and the planner
(thousands of candidates) share one code path with the scalar methods the simulators call.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .catalog import Accelerator, get_precision, resolve_shape
from .latency import TokenDistribution, latency_under_load, slot_peak
from .network import AllReduceModel
from .powerlimit import POWER_CAP_EXPONENT
from .types import ModelShape, ReplicaPrediction, ServingConfig, Workload

FloatArray = npt.NDArray[np.float64]

COEFFICIENTS_RESOURCE = "coefficients.json"
SCHEMA_VERSION = 1
_GIB = float(2**30)
# z-score of the 95th percentile of a log-normal-ish latency spread relative to the 90th, used to extend p90 to p95.
_P95_OVER_P90_SPREAD = 1.3
# Under-load latency percentiles (Evaluator.under_load), checked against short BatchingEngine runs on synthetic
# Poisson traces with log-normal token counts (not the benchmark's trace): `python -m
# wattkeeper.bench.latency_check` reproduces the comparison (ITL p95: mean log error -1%, mean absolute 7%).
_ITL_TAIL_SCALE = 1.0
_TTFT_TAIL_PROMPTS = 3.0

# Parameters fitted by calibration: name -> (initial value, lower bound, upper bound).
FITTED_PARAMETERS: dict[str, tuple[float, float, float]] = {
    "bandwidth_efficiency": (0.75, 0.3, 1.0),
    "kv_bandwidth_efficiency": (0.5, 0.05, 1.0),
    "moe_weight_read_factor": (1.5, 1.0, 6.0),
    "compute_efficiency_bf16": (0.5, 0.05, 1.0),
    # fp8 GEMMs reach this fraction of bf16's efficiency against a peak twice as high: bounded so that fp8 tensor
    # cores are never slower than bf16 ones (physics); fp8's small-batch penalty comes from its per-layer
    # activation-quantisation kernels instead (fp8_layer_overhead_seconds).
    "fp8_relative_efficiency": (0.8, 0.5, 1.0),
    "compute_efficiency_fp4": (0.3, 0.02, 1.0),
    "roofline_sharpness": (2.5, 1.0, 8.0),
    "step_overhead_seconds": (1e-3, 1e-5, 0.02),
    "layer_overhead_seconds": (1e-5, 1e-8, 5e-4),
    "sequence_overhead_seconds": (2e-5, 1e-8, 5e-4),
    "fp8_layer_overhead_seconds": (3e-5, 1e-8, 1e-3),
    "all_reduce_factor": (1.0, 0.02, 5.0),
    "expert_parallel_factor": (1.0, 0.02, 20.0),
    "power_base": (0.6, 1e-3, 5.0),
    "power_memory": (0.6, 1e-3, 10.0),
    "power_compute": (2.0, 1e-3, 10.0),
    "itl_median_ratio": (0.95, 0.6, 1.3),
    "itl_p90_base": (0.05, 1e-4, 1.0),
    "itl_p90_prefill": (0.5, 1e-4, 5.0),
    "kv_fill": (0.9, 0.4, 1.5),
    # gpt-oss on H100 measures what dequantising mxfp4 without fp4 tensor cores costs.
    "dequant_ops_mxfp4": (2.0, 0.01, 20.0),
    "input_tokens_lm_arena_chat": (800.0, 30.0, 8000.0),
    "input_tokens_gpqa": (300.0, 30.0, 8000.0),
    "input_tokens_sourcegraph_fim": (1500.0, 30.0, 16000.0),
}

# Priors that the measured data cannot pin down (no weight-only int8/int4 rows): CUDA-core operations per weight
# to dequantise it, repeated for every tile of this many batched tokens (Marlin-style kernels re-expand weights per
# tile). From Delavande et al. 2026: weight-only int8/int4 decode can cost more energy per token than bf16.
PRIOR_PARAMETERS: dict[str, float] = {
    "dequant_ops_int8": 4.0,
    "dequant_ops_int4": 8.0,
    "dequant_ops_fp8": 4.0,
    "dequant_tile_tokens": 16.0,
    "dequant_power_weight": 1.5,
    "activation_reserve_bytes": 1.5 * _GIB,
    "power_cap_exponent": POWER_CAP_EXPONENT,  # from published power-capping measurements, see powerlimit.py
}

TASK_INPUT_PARAMETER = {
    "lm-arena-chat": "input_tokens_lm_arena_chat",
    "gpqa": "input_tokens_gpqa",
    "sourcegraph-fim": "input_tokens_sourcegraph_fim",
}


class ProfilePointLike(Protocol):
    precision: Any
    tensor_parallel: int
    max_num_seqs: int
    batch_size: float
    output_tokens_per_second: float
    watts: float
    joules_per_token: float
    itl_p50_seconds: float | None
    itl_p90_seconds: float | None


@dataclass(frozen=True)
class Coefficients:
    """The versioned contents of energy/data/coefficients.json."""

    values: dict[str, float]
    all_reduce_tables: dict[str, dict[str, list[list[float]]]]
    schema_version: int = SCHEMA_VERSION
    metadata: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> float:
        if name in self.values:
            return self.values[name]
        if name in PRIOR_PARAMETERS:
            return PRIOR_PARAMETERS[name]
        return FITTED_PARAMETERS[name][0]

    def with_values(self, values: dict[str, float]) -> Coefficients:
        return replace(self, values={**self.values, **values})

    def to_json(self) -> str:
        payload = {
            "schema_version": self.schema_version,
            "metadata": self.metadata,
            "values": {k: float(f"{v:.10g}") for k, v in sorted(self.values.items())},
            "all_reduce_tables": self.all_reduce_tables,
        }
        return json.dumps(payload, indent=1, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Coefficients:
        payload = json.loads(text)
        version = int(payload.get("schema_version", 0))
        if version != SCHEMA_VERSION:
            raise ValueError(f"coefficients schema {version} is not the supported {SCHEMA_VERSION}")
        return cls(
            values={k: float(v) for k, v in payload["values"].items()},
            all_reduce_tables=payload["all_reduce_tables"],
            schema_version=version,
            metadata=payload.get("metadata", {}),
        )

    @classmethod
    def initial(cls, all_reduce_tables: dict[str, dict[str, list[list[float]]]] | None = None) -> Coefficients:
        values = {name: spec[0] for name, spec in FITTED_PARAMETERS.items()}
        values.update(PRIOR_PARAMETERS)
        return cls(values=values, all_reduce_tables=all_reduce_tables or _FALLBACK_ALL_REDUCE)


# Used only before the first calibration: a latency floor plus the NVLink bandwidth, roughly Vidur's H100 curve.
_FALLBACK_ALL_REDUCE: dict[str, dict[str, list[list[float]]]] = {
    "h100": {str(n): [[2048.0, 2e-5], [1e6, 3.5e-5], [6.7e7, 3.2e-4]] for n in (2, 4, 8)},
}


def load_default_coefficients() -> Coefficients:
    text = resources.files("wattkeeper.energy").joinpath("data").joinpath(COEFFICIENTS_RESOURCE).read_text()
    return Coefficients.from_json(text)


def coefficients_path() -> Path:
    """Where calibration writes the committed coefficients (inside the package source tree)."""
    return Path(__file__).resolve().parent / "data" / COEFFICIENTS_RESOURCE


@dataclass
class Features:
    """Static inputs of the model, one entry per row (a model x accelerator x configuration)."""

    gpus: FloatArray
    tensor_parallel: FloatArray
    total_weight_bytes: FloatArray
    active_weight_bytes: FloatArray
    total_params: FloatArray
    active_params: FloatArray
    expert_fraction: FloatArray  # active/total for MoE, 1 for dense: the chance a token touches a given expert
    is_moe: FloatArray
    kv_bytes_per_token: FloatArray
    layers: FloatArray
    hidden_size: FloatArray
    bandwidth: FloatArray  # per GPU, bytes/s
    memory_bytes: FloatArray  # per GPU
    peak_flops: FloatArray  # per GPU, of the format the GEMMs run in
    compute_format: npt.NDArray[np.int64]  # 0 bf16, 1 fp8, 2 fp4
    fp8_activations: FloatArray  # 1 where activations are quantised to fp8 on the fly
    dequant_ops: FloatArray  # CUDA-core operations per weight per tile; 0 where weights are used as stored
    cuda_core_flops: FloatArray
    idle_watts: FloatArray  # per GPU
    limit_watts: FloatArray  # per GPU
    gpu_power_limit_watts: FloatArray  # per GPU, the configured power limit (inf where none)
    max_num_seqs: FloatArray
    max_num_batched_tokens: FloatArray
    gpu_memory_utilization: FloatArray
    ar_table: list[str]
    nvlink: FloatArray
    # Row indices by (all-reduce table, GPUs, NVLink): the all-reduce curves are looked up per group. Cached.
    _groups: dict[str, list[tuple[str, int, float, npt.NDArray[np.int64]]]] | None = None
    # Evaluator.step's row-only parts, for the evaluator that made them. Cached; the arrays are never mutated.
    _static: tuple[Evaluator, _StepStatic] | None = field(default=None, compare=False, repr=False)

    def comm_groups(self) -> dict[str, list[tuple[str, int, float, npt.NDArray[np.int64]]]]:
        if self._groups is None:
            tp: dict[tuple[str, int, float], list[int]] = {}
            ep: dict[tuple[str, int, float], list[int]] = {}
            for i in range(len(self)):
                if self.tensor_parallel[i] > 1:
                    tp.setdefault((self.ar_table[i], int(self.tensor_parallel[i]), float(self.nvlink[i])), []).append(i)
                if self.is_moe[i] > 0 and self.gpus[i] > self.tensor_parallel[i]:
                    ep.setdefault((self.ar_table[i], int(self.gpus[i]), float(self.nvlink[i])), []).append(i)
            self._groups = {
                "tp": [(k[0], k[1], k[2], np.asarray(v)) for k, v in tp.items()],
                "ep": [(k[0], k[1], k[2], np.asarray(v)) for k, v in ep.items()],
            }
        return self._groups

    def __len__(self) -> int:
        return int(self.gpus.shape[0])

    def take(self, index: npt.NDArray[np.int64]) -> Features:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            if name.startswith("_"):
                continue
            value = getattr(self, name)
            out[name] = [value[i] for i in np.asarray(index).tolist()] if isinstance(value, list) else value[index]
        taken = Features(**out)
        # Carry the all-reduce grouping over by row mapping (vectorised) instead of regrouping row by row: the
        # latency model expands thousands of candidates by the token-distribution points.
        groups = self.comm_groups()
        index = np.asarray(index, dtype=np.int64)
        mapped: dict[str, list[tuple[str, int, float, npt.NDArray[np.int64]]]] = {}
        for kind, entries in groups.items():
            ids = np.full(len(self), -1, dtype=np.int64)
            for g, (_, _, _, rows) in enumerate(entries):
                ids[rows] = g
            child = ids[index] if index.size else np.zeros(0, dtype=np.int64)
            members = [(e, np.flatnonzero(child == g)) for g, e in enumerate(entries)]
            mapped[kind] = [(e[0], e[1], e[2], at) for e, at in members if at.size]
        taken._groups = mapped
        return taken


_FORMAT_CODES = {"bf16": 0, "fp8": 1, "fp4": 2}


def build_features(
    rows: Sequence[tuple[ModelShape, Accelerator, ServingConfig]],
    coefficients: Coefficients,
    gpus_per_replica: Sequence[int] | None = None,
    gpu_memory_utilization: float = 0.9,
) -> Features:
    """Turn (model, accelerator, config) triples into arrays. gpus_per_replica overrides TP (expert parallelism)."""
    cols: dict[str, list[Any]] = {name: [] for name in Features.__dataclass_fields__}
    for i, (model, acc, cfg) in enumerate(rows):
        spec = get_precision(cfg.precision)
        shape = resolve_shape(model)
        gpus = gpus_per_replica[i] if gpus_per_replica is not None else cfg.tensor_parallel
        native = acc.supports(spec.compute_format)
        fmt = spec.compute_format if native else "bf16"
        dequant = 0.0
        if spec.weight_only or not native:
            if spec.name == "int8":
                dequant = coefficients["dequant_ops_int8"]
            elif spec.name.startswith("int4"):
                dequant = coefficients["dequant_ops_int4"]
            elif spec.name == "fp8":
                dequant = coefficients["dequant_ops_fp8"]
            elif spec.name == "mxfp4" and not native:
                dequant = coefficients["dequant_ops_mxfp4"]
        total = model.total_params_b * 1e9
        active = model.active_b * 1e9
        kv_element = 1.0 if (cfg.kv_cache_dtype or "").startswith("fp8") else 2.0
        cols["gpus"].append(float(gpus))
        cols["tensor_parallel"].append(float(cfg.tensor_parallel))
        cols["total_weight_bytes"].append(total * spec.weight_bytes_per_param)
        cols["active_weight_bytes"].append(active * spec.weight_bytes_per_param)
        cols["total_params"].append(total)
        cols["active_params"].append(active)
        cols["expert_fraction"].append(active / total if model.architecture == "moe" else 1.0)
        cols["is_moe"].append(1.0 if model.architecture == "moe" else 0.0)
        cols["kv_bytes_per_token"].append(shape.kv_bytes_per_token_bf16 * kv_element / 2.0)
        cols["layers"].append(float(shape.layers))
        cols["hidden_size"].append(float(shape.hidden_size))
        cols["bandwidth"].append(acc.memory_bandwidth_bytes_per_second)
        cols["memory_bytes"].append(acc.memory_bytes)
        cols["peak_flops"].append(acc.peak_flops(fmt))
        cols["compute_format"].append(_FORMAT_CODES[fmt])
        cols["fp8_activations"].append(1.0 if fmt == "fp8" else 0.0)
        cols["dequant_ops"].append(dequant)
        cols["cuda_core_flops"].append(acc.cuda_core_flops_per_second or acc.peak_flops("bf16") / 15.0)
        cols["idle_watts"].append(acc.idle_watts)
        cols["limit_watts"].append(acc.power_limit_watts)
        limit = cfg.gpu_power_limit_watts
        cols["gpu_power_limit_watts"].append(min(limit, acc.power_limit_watts) if limit else math.inf)
        cols["max_num_seqs"].append(float(cfg.max_num_seqs))
        cols["max_num_batched_tokens"].append(float(cfg.max_num_batched_tokens))
        cols["gpu_memory_utilization"].append(gpu_memory_utilization)
        cols["ar_table"].append(acc.all_reduce_table)
        cols["nvlink"].append(acc.nvlink_bandwidth_bytes_per_second)
    arrays: dict[str, Any] = {}
    for name, values in cols.items():
        if name.startswith("_"):
            continue
        if name == "ar_table":
            arrays[name] = values
        elif name == "compute_format":
            arrays[name] = np.asarray(values, dtype=np.int64)
        else:
            arrays[name] = np.asarray(values, dtype=float)
    return Features(**arrays)


def weights_bytes_per_gpu(f: Features) -> FloatArray:
    return f.total_weight_bytes / f.gpus


def kv_capacity_tokens(f: Features, coefficients: Coefficients) -> FloatArray:
    """KV-cache tokens the replica holds: what vLLM's memory fraction leaves after weights and activations."""
    activations = coefficients["activation_reserve_bytes"] + f.max_num_batched_tokens * f.hidden_size * 2.0 * 8.0
    free = f.memory_bytes * f.gpu_memory_utilization - weights_bytes_per_gpu(f) - activations
    return np.maximum(free, 0.0) * f.gpus / f.kv_bytes_per_token


@dataclass(frozen=True)
class _StepStatic:
    """Evaluator.step's row-only parts (see Evaluator._static)."""

    has_moe: bool
    moe_factor: FloatArray
    weights_denominator: FloatArray
    kv_denominator: FloatArray
    t_weights: FloatArray | None  # dense rows only (MoE's depend on the step's tokens)
    dequant_per_tile: FloatArray | None  # likewise
    two_active: FloatArray
    two_layers_hidden: FloatArray
    compute_denominator: FloatArray
    t_fp8: FloatArray
    overhead: FloatArray
    watts_span: FloatArray
    limited: npt.NDArray[np.int64]


@dataclass
class StepBreakdown:
    step_seconds: FloatArray
    decode_only_seconds: FloatArray
    memory_seconds: FloatArray
    compute_seconds: FloatArray
    comm_seconds: FloatArray
    watts_per_gpu: FloatArray


class Evaluator:
    """The vectorised model for one set of coefficients."""

    def __init__(self, coefficients: Coefficients) -> None:
        self.c = coefficients
        self.all_reduce = AllReduceModel(coefficients.all_reduce_tables)
        self._cv = {name: coefficients[name] for name in (*FITTED_PARAMETERS, *PRIOR_PARAMETERS)}

    def _comm_seconds(self, f: Features, tokens: FloatArray) -> FloatArray:
        """Two all-reduces per layer across TP GPUs; MoE over more GPUs than TP adds expert all-to-all traffic."""
        out = np.zeros_like(tokens)
        message = tokens * f.hidden_size * 2.0
        groups = f.comm_groups()
        for table, tp, nvlink, idx in groups["tp"]:
            out[idx] += (
                self._cv["all_reduce_factor"]
                * 2.0
                * f.layers[idx]
                * self.all_reduce.seconds(message[idx], tp, table, nvlink)
            )
        for table, gpus, nvlink, idx in groups["ep"]:
            out[idx] += (
                self._cv["expert_parallel_factor"]
                * 2.0
                * f.layers[idx]
                * self.all_reduce.seconds(message[idx], gpus, table, nvlink)
            )
        return out

    def _static(self, f: Features) -> _StepStatic:
        """The parts of a step that depend on the rows alone, computed once per Features and evaluator: the
        latency model steps the same rows some forty times per plan."""
        held = f._static
        if held is not None and held[0] is self:
            return held[1]
        cv = self._cv
        moe = f.is_moe > 0
        has_moe = bool(np.any(moe))
        moe_factor = np.where(moe, cv["moe_weight_read_factor"], 1.0)
        lane_bandwidth = f.gpus * f.bandwidth
        weights_denominator = lane_bandwidth * cv["bandwidth_efficiency"]
        t_weights: FloatArray | None = None
        dequant_per_tile: FloatArray | None = None
        if not has_moe:
            # Dense rows only: their touched fraction is 1.0 whatever the tokens (the MoE formula is in _step).
            weight_bytes = f.active_weight_bytes + (f.total_weight_bytes - f.active_weight_bytes) * 1.0
            t_weights = weight_bytes * moe_factor / weights_denominator
            touched_params = weight_bytes / np.maximum(f.total_weight_bytes, 1.0) * f.total_params
            dequant_per_tile = f.dequant_ops * touched_params / f.gpus
        efficiency = np.choose(
            f.compute_format,
            [
                cv["compute_efficiency_bf16"],
                cv["compute_efficiency_bf16"] * cv["fp8_relative_efficiency"],
                cv["compute_efficiency_fp4"],
            ],
        )
        static = _StepStatic(
            has_moe=has_moe,
            moe_factor=moe_factor,
            weights_denominator=weights_denominator,
            kv_denominator=lane_bandwidth * cv["kv_bandwidth_efficiency"],
            t_weights=t_weights,
            dequant_per_tile=dequant_per_tile,
            two_active=2.0 * f.active_params,
            two_layers_hidden=2.0 * f.layers * f.hidden_size,
            compute_denominator=f.gpus * f.peak_flops * efficiency,
            t_fp8=f.fp8_activations * f.layers * cv["fp8_layer_overhead_seconds"],
            overhead=cv["step_overhead_seconds"] + cv["layer_overhead_seconds"] * f.layers,
            watts_span=f.limit_watts - f.idle_watts,
            # Rows with a configured power limit: only they can be capped (a watt figure never exceeds inf).
            limited=np.flatnonzero(f.gpu_power_limit_watts < np.inf),
        )
        f._static = (self, static)
        return static

    def step(
        self,
        f: Features,
        batch: FloatArray,
        context_tokens: FloatArray,
        prompt_tokens_per_step: FloatArray,
        prompt_length: FloatArray,
    ) -> StepBreakdown:
        """One engine step carrying `batch` decoding sequences and `prompt_tokens_per_step` prefill tokens."""
        out = self._step(f, batch, context_tokens, prompt_tokens_per_step, prompt_length, True)
        assert isinstance(out, StepBreakdown)
        return out

    def step_seconds(
        self,
        f: Features,
        batch: FloatArray,
        context_tokens: FloatArray,
        prompt_tokens_per_step: FloatArray,
        prompt_length: FloatArray,
    ) -> FloatArray:
        """`step(...).step_seconds` alone, the same figures: the watts are worked out only where a power limit
        may slow the step, and the decode-only part not at all."""
        shape = np.broadcast_shapes(np.shape(batch), np.shape(context_tokens), np.shape(prompt_tokens_per_step),
                                    np.shape(prompt_length), (len(f),))
        if shape != (len(f),):  # inputs broadcast over the rows: the plain path
            return self.step(f, batch, context_tokens, prompt_tokens_per_step, prompt_length).step_seconds
        out = self._step(f, batch, context_tokens, prompt_tokens_per_step, prompt_length, False)
        assert not isinstance(out, StepBreakdown)
        return out

    def _step(
        self,
        f: Features,
        batch: FloatArray,
        context_tokens: FloatArray,
        prompt_tokens_per_step: FloatArray,
        prompt_length: FloatArray,
        breakdown: bool,
    ) -> StepBreakdown | FloatArray:
        # Every expression keeps the plain formula's order of operations, so the cached row-only parts give
        # bit-identical figures; row subsets are taken only of element-wise results.
        cv = self._cv
        st = self._static(f)
        batch = np.maximum(batch, 0.0)
        tokens = batch + prompt_tokens_per_step
        if st.has_moe:
            # MoE: the chance an expert is touched by none of the step's tokens falls geometrically with the tokens.
            touched_fraction = 1.0 - np.power(1.0 - f.expert_fraction, np.maximum(tokens, 1.0))
            touched_fraction = np.where(f.is_moe > 0, touched_fraction, 1.0)
            expert_bytes = (f.total_weight_bytes - f.active_weight_bytes) * touched_fraction
            weight_bytes = f.active_weight_bytes + expert_bytes
            t_weights = weight_bytes * st.moe_factor / st.weights_denominator
            touched_params = weight_bytes / np.maximum(f.total_weight_bytes, 1.0) * f.total_params
            dequant_per_tile = f.dequant_ops * touched_params / f.gpus
        else:
            assert st.t_weights is not None and st.dequant_per_tile is not None
            t_weights, dequant_per_tile = st.t_weights, st.dequant_per_tile
        t_kv = batch * context_tokens * f.kv_bytes_per_token / st.kv_denominator
        t_memory = t_weights + t_kv
        flops = st.two_active * tokens + st.two_layers_hidden * prompt_tokens_per_step * prompt_length
        t_compute = flops / st.compute_denominator
        n = cv["roofline_sharpness"]
        memory_n = _power(t_memory, n)
        t_roof = _power(memory_n + _power(t_compute, n), 1.0 / n)
        tiles = 1.0 + tokens / cv["dequant_tile_tokens"]
        t_dequant = dequant_per_tile * tiles / f.cuda_core_flops
        t_fp8 = st.t_fp8
        t_comm = self._comm_seconds(f, tokens)
        t_overhead = st.overhead + cv["sequence_overhead_seconds"] * batch
        step = t_roof + t_dequant + t_fp8 + t_comm + t_overhead
        shape = step.shape

        def rows(x: FloatArray, at: npt.NDArray[np.int64] | npt.NDArray[np.bool_]) -> FloatArray:
            return np.asarray(x[at] if np.shape(x) == shape else np.broadcast_to(x, shape)[at])

        # Power: the share of the step streaming HBM and the share on tensor/CUDA cores drive the board's draw.
        watts: FloatArray | None = None
        capped: npt.NDArray[np.int64] | npt.NDArray[np.bool_]
        if breakdown:
            u_memory = t_memory / step
            u_compute = (t_compute + cv["dequant_power_weight"] * t_dequant + t_fp8) / step
            drive = cv["power_base"] + cv["power_memory"] * u_memory + cv["power_compute"] * u_compute
            watts = f.idle_watts + st.watts_span * (1.0 - np.exp(-drive))
            capped = watts > f.gpu_power_limit_watts
            any_capped = bool(capped.any())
            watts_capped = rows(watts, capped) if any_capped else watts
        else:
            # Only the rows with a power limit: the rest cannot be capped, and their watts are not asked for.
            sub = st.limited
            step_s = step[sub]
            u_memory = t_memory[sub] / step_s
            u_compute = (t_compute[sub] + cv["dequant_power_weight"] * t_dequant[sub] + rows(t_fp8, sub)) / step_s
            drive = cv["power_base"] + cv["power_memory"] * u_memory + cv["power_compute"] * u_compute
            w_sub = f.idle_watts[sub] + st.watts_span[sub] * (1.0 - np.exp(-drive))
            over = w_sub > f.gpu_power_limit_watts[sub]
            capped = sub[over]
            any_capped = capped.size > 0
            watts_capped = w_sub[over]
        if any_capped:
            # A power limit lowers clocks: the compute-bound parts slow down, HBM streaming does not.
            idle_c = rows(f.idle_watts, capped)
            limit_c = rows(f.gpu_power_limit_watts, capped)
            slow = np.power(
                np.maximum(watts_capped - idle_c, 1e-9) / np.maximum(limit_c - idle_c, 1e-9),
                1.0 / cv["power_cap_exponent"],
            )
            t_roof_c = _power(rows(memory_n, capped) + _power(rows(t_compute, capped) * slow, n), 1.0 / n)
            step = np.array(step, dtype=float, copy=True)
            step[capped] = t_roof_c + (rows(t_dequant, capped) + rows(t_fp8, capped) + rows(t_overhead, capped)) \
                * slow + rows(t_comm, capped)
        if not breakdown:
            return step
        assert watts is not None
        watts = np.minimum(watts, f.gpu_power_limit_watts)

        # The same step without its prefill share, for ITL percentiles (steps with and without a prompt chunk).
        decode_tokens = np.maximum(batch, 1.0)
        decode_compute = st.two_active * decode_tokens / st.compute_denominator
        decode_only = (
            _power(memory_n + _power(decode_compute, n), 1.0 / n)
            + t_dequant * (1.0 + decode_tokens / cv["dequant_tile_tokens"]) / tiles
            + t_fp8
            + t_comm
            + t_overhead
        )
        decode_only = np.minimum(decode_only, step)
        return StepBreakdown(
            step_seconds=step,
            decode_only_seconds=decode_only,
            memory_seconds=t_memory,
            compute_seconds=t_compute,
            comm_seconds=t_comm,
            watts_per_gpu=watts,
        )

    def itl_percentiles(self, s: StepBreakdown) -> tuple[FloatArray, FloatArray, FloatArray]:
        cv = self._cv
        p50 = s.step_seconds * cv["itl_median_ratio"]
        prefill_share = 1.0 - s.decode_only_seconds / s.step_seconds
        spread = cv["itl_p90_base"] + cv["itl_p90_prefill"] * prefill_share
        p90 = p50 * (1.0 + spread)
        p95 = p50 * (1.0 + _P95_OVER_P90_SPREAD * spread)
        return p50, p90, p95

    def saturated(self, f: Features, input_tokens: FloatArray, output_tokens: FloatArray) -> dict[str, FloatArray]:
        """ML.ENERGY's regime: the batch full at max_num_seqs (or what the KV cache holds), prompts streaming in."""
        cap = kv_capacity_tokens(f, self.c)
        context = input_tokens + 0.5 * output_tokens
        batch = np.minimum(f.max_num_seqs, np.maximum(cap * self._cv["kv_fill"] / context, 1.0))
        prompt_per_step = batch * input_tokens / output_tokens
        s = self.step(f, batch, context, prompt_per_step, input_tokens)
        p50, p90, p95 = self.itl_percentiles(s)
        tokens_per_second = batch / s.step_seconds
        watts = s.watts_per_gpu * f.gpus
        return {
            "batch": batch,
            "step_seconds": s.step_seconds,
            "tokens_per_second": tokens_per_second,
            "watts": watts,
            "joules_per_token": watts / tokens_per_second,
            "itl_p50": p50,
            "itl_p90": p90,
            "itl_p95": p95,
            "kv_capacity_tokens": cap,
        }

    def prefill_seconds(self, f: Features, prompt_tokens: FloatArray, batch: FloatArray | None = None) -> FloatArray:
        """A prompt processed in chunks of max_num_batched_tokens, each chunk sharing its step with the decodes."""
        running = np.zeros(len(f)) if batch is None else batch
        chunk = np.maximum(np.minimum(prompt_tokens, f.max_num_batched_tokens - running), 16.0)
        chunks = np.ceil(prompt_tokens / chunk)
        return chunks * self.step_seconds(f, running, prompt_tokens * 0.5 + running * 0.0, chunk, prompt_tokens)

    def _tail_step(
        self,
        f: Features,
        rate_per_replica: FloatArray,
        batch: FloatArray,
        context: FloatArray,
        input_tokens: FloatArray,
        mean_step: StepBreakdown,
        share: float,
    ) -> FloatArray:
        """The step duration that `share` of a loaded replica's token gaps exceed (see under_load)."""
        arrivals = rate_per_replica * mean_step.step_seconds
        with_prompt = 1.0 - np.exp(-arrivals)
        budget = np.maximum(f.max_num_batched_tokens - batch, 16.0)
        chunk = input_tokens * (np.log(np.maximum(with_prompt / share, 1.0)) + arrivals)
        chunk = np.where(with_prompt > share, np.minimum(budget, chunk), 0.0)
        return self.step_seconds(f, batch, context, chunk, np.maximum(input_tokens, 1.0)) * _ITL_TAIL_SCALE

    def under_load(
        self, f: Features, rate_per_replica: FloatArray, input_tokens: FloatArray, output_tokens: FloatArray
    ) -> dict[str, FloatArray]:
        """Steady state at an offered request rate: Little's law gives the batch, b = rate * output * step(b)."""
        cap = kv_capacity_tokens(f, self.c)
        context = input_tokens + 0.5 * output_tokens
        max_batch = np.minimum(f.max_num_seqs, np.maximum(np.floor(cap / (input_tokens + output_tokens)), 0.0))
        max_batch_f = np.maximum(max_batch, 1.0)
        # Capacity: the full batch's throughput, in requests per second.
        # Only the last step below needs more than the step's duration (its ITL spread and watts).
        full_step = self.step_seconds(f, max_batch_f, context, max_batch_f * input_tokens / output_tokens, input_tokens)
        capacity_rps = max_batch_f / (full_step * output_tokens)
        utilisation = rate_per_replica / capacity_rps
        # Fixed point on the busy-period batch with a secant-free damped iteration: the step time is nearly linear
        # in the batch, so a few rounds of b <- rate*O*T(b) from the linearised solution converge.
        lo = self.step_seconds(f, np.ones(len(f)), context, input_tokens / output_tokens, input_tokens)
        slope = np.maximum((full_step - lo) / np.maximum(max_batch_f - 1.0, 1.0), 0.0)
        demand = rate_per_replica * output_tokens
        denom = np.maximum(1.0 - demand * slope, 1e-3)
        batch = np.clip(demand * (lo - slope) / denom, 0.0, max_batch_f)
        for _ in range(3):
            occupied = np.maximum(batch, 1e-9)
            busy = 1.0 - np.exp(-occupied)
            b_busy = np.maximum(occupied / busy, 1.0)
            step_s = self.step_seconds(f, b_busy, context, b_busy * input_tokens / output_tokens, input_tokens)
            batch = np.clip(demand * step_s, 0.0, max_batch_f)
        occupied = np.maximum(batch, 1e-9)
        busy = 1.0 - np.exp(-occupied)
        b_busy = np.maximum(occupied / busy, 1.0)
        s = self.step(f, b_busy, context, b_busy * input_tokens / output_tokens, input_tokens)
        p50, p90, p95 = self.itl_percentiles(s)
        # Under load the ITL tail is not the mean step's spread (fitted in the saturated regime, where every step
        # carries prefill) but the steps that carry a prompt chunk: a share q = 1 - exp(-rate * step) of steps do;
        # the q-th quantile above the 95th of all steps is the step carrying the prompt whose size is that
        # quantile (exponential prompt sizes of the mean), plus the mean of the other arrivals of that step.
        p90 = np.maximum(self._tail_step(f, rate_per_replica, b_busy, context, input_tokens, s, 0.10), p50)
        p95 = np.maximum(self._tail_step(f, rate_per_replica, b_busy, context, input_tokens, s, 0.05), p90)
        idle_total = f.idle_watts * f.gpus
        watts = busy * s.watts_per_gpu * f.gpus + (1.0 - busy) * idle_total
        served = np.minimum(rate_per_replica, capacity_rps) * output_tokens
        tokens_per_second = np.maximum(served, 1e-12)
        # TTFT: prefill in chunks beside the running batch, plus the wait for a batch slot (Sakasegawa's M/M/c
        # approximation with c = max batch, service = one request's residence time), p95 ~ 3x the mean wait.
        # The p95 prompt (ln 20 ~ 3x the mean for exponential sizes) plus the mean of the others arriving with it.
        arrivals = rate_per_replica * s.step_seconds
        prefill = self.prefill_seconds(f, input_tokens * (_TTFT_TAIL_PROMPTS + arrivals), b_busy)
        rho = np.clip(utilisation, 0.0, 0.999)
        slots = max_batch_f
        residence = output_tokens * full_step
        wait = np.power(rho, np.sqrt(2.0 * (slots + 1.0)) - 1.0) / (slots * (1.0 - rho)) * residence
        ttft_p95 = prefill + s.step_seconds + 3.0 * wait
        ttft_p95 = np.where(utilisation >= 1.0, np.inf, ttft_p95)
        return {
            "batch": batch,
            "busy_fraction": busy,
            "step_seconds": s.step_seconds,
            "tokens_per_second": tokens_per_second,
            "watts": watts,
            "joules_per_token": watts / tokens_per_second,
            "itl_p50": p50,
            "itl_p90": p90,
            "itl_p95": p95,
            "ttft_p95": ttft_p95,
            "utilisation": utilisation,
            "capacity_rps": capacity_rps,
            "max_batch": max_batch,
            "kv_capacity_tokens": cap,
            "idle_watts": idle_total,
        }

    def under_load_queued(
        self,
        f: Features,
        rate_per_replica: FloatArray,
        tokens: TokenDistribution,
        quantile: float = 0.99,
        rate_levels: Sequence[tuple[float, float]] = ((1.0, 1.0),),
        request_quantiles: bool = True,
        thresholds: tuple[float | FloatArray, float | FloatArray] | None = None,
        arrival_dispersion: float | FloatArray = 1.0,
        steady: dict[str, FloatArray] | None = None,
    ) -> dict[str, FloatArray]:
        """`under_load` with latencies from the prefill-queue and step-mixture model (energy/latency.py).

        Power, throughput and the decode capacity are `under_load`'s at the distribution's mean lengths; the
        utilisation is the larger of the decode batch's and the prefill stream's (long prompts saturate the one
        prefill stream per replica before the batch fills). Adds `ttft_q` and `request_mean_itl_q` (per-request
        mean ITL) at `quantile`, the full-chunk step (`chunk_step_seconds`) and the prefill stream's load.
        `rate_levels` ((factor, time share) pairs) describes bursts; the busiest level sets the utilisation.
        Without `request_quantiles` the per-request mean ITL quantile is not computed (it is the costliest part)
        and `request_mean_itl_q` holds the ITL p95 instead. With `thresholds` (TTFT s, mean ITL s) it adds
        `ttft_miss_share` and `itl_miss_share`: the predicted shares of requests over each. `steady`: `under_load`'s
        figures for these rows at the distribution's mean lengths, where the caller has them already.
        """
        n = len(f)
        inp = np.full(n, tokens.mean_prompt_tokens)
        out = np.full(n, tokens.mean_output_tokens)
        r = steady if steady is not None else self.under_load(f, rate_per_replica, inp, out)
        rate = np.asarray(rate_per_replica, dtype=float)
        # Waiting for a batch slot (max-num-seqs, or KV cache for prompt plus maximum output): c = slots servers
        # whose service is a request's residence, offered load = the running batch (Sakasegawa's approximation).
        slots = np.maximum(r["max_batch"], 1.0)
        rho = np.clip(r["batch"] / slots, 0.0, 0.999)
        residence = r["batch"] / np.maximum(rate, 1e-12)  # Little: mean time a request holds a slot
        residence = np.where(rate > 0, residence, out * r["step_seconds"])
        wait_probability = np.power(rho, np.sqrt(2.0 * (slots + 1.0)) - 1.0)
        wait_mean = residence / (slots * (1.0 - rho))
        lat = latency_under_load(
            self, f, rate, tokens, slots, wait_mean, wait_probability, quantile, rate_levels,
            request_quantiles=request_quantiles,
            thresholds=thresholds,
            arrival_dispersion=arrival_dispersion,
        )
        peak = max((a for a, w in rate_levels if w > 0), default=1.0)
        # The decode batch's load at the busiest level, as long as a request holds its slot at a full batch.
        utilisation = np.maximum(r["utilisation"] * slot_peak(peak, slot_residence_seconds(r)),
                                 lat.prefill_utilisation)
        over = utilisation >= 1.0
        capacity = np.where(utilisation > 0, rate / np.maximum(utilisation, 1e-12), r["capacity_rps"])
        served = np.minimum(rate, capacity) * out
        tokens_per_second = np.maximum(served, 1e-12)
        return {
            **r,
            "itl_p50": lat.itl_p50,
            "itl_p90": lat.itl_p90,
            "itl_p95": lat.itl_p95,
            "ttft_p95": np.where(over, np.inf, lat.ttft_p95),
            "ttft_q": np.where(over, np.inf, lat.ttft_quantile),
            "request_mean_itl_q": lat.request_mean_itl_quantile,
            "mean_gap_seconds": lat.mean_gap_seconds,
            "chunk_step_seconds": lat.full_chunk_step_seconds,
            "prefill_utilisation": lat.prefill_utilisation,
            "chunk_gap_share": lat.chunk_gap_share,
            **(
                {
                    "ttft_miss_share": np.where(over, 1.0, lat.ttft_miss_share),
                    "itl_miss_share": lat.request_itl_miss_share,
                }
                if lat.ttft_miss_share is not None and lat.request_itl_miss_share is not None
                else {}
            ),
            "utilisation": utilisation,
            "capacity_rps": capacity,
            "tokens_per_second": tokens_per_second,
            "joules_per_token": r["watts"] / tokens_per_second,
        }


def slot_residence_seconds(steady: dict[str, FloatArray]) -> FloatArray:
    """How long a request holds its decode slot in a full batch (`Evaluator.under_load`'s figures): its output
    at the full batch's step."""
    return np.maximum(steady["max_batch"], 1.0) / np.maximum(steady["capacity_rps"], 1e-12)


def _power(x: FloatArray, exponent: float) -> FloatArray:
    """np.power, skipped at exponent 1 (the fitted roofline sharpness): x ** 1 is x exactly (C99 pow), and a
    power is the costliest operation of a step, evaluated some 200,000 times a plan."""
    return x if exponent == 1.0 else np.power(x, exponent)


def _scalar(value: FloatArray) -> float:
    return float(np.asarray(value).reshape(-1)[0])


class EnergyModel:
    """Predictions for one replica; the default instance uses the coefficients committed in the package."""

    def __init__(self, coefficients: Coefficients, gpu_memory_utilization: float = 0.9) -> None:
        self.coefficients = coefficients
        self.evaluator = Evaluator(coefficients)
        self.gpu_memory_utilization = gpu_memory_utilization

    @classmethod
    def default(cls) -> EnergyModel:
        global _DEFAULT_MODEL
        if _DEFAULT_MODEL is None:
            try:
                _DEFAULT_MODEL = cls(load_default_coefficients())
            except FileNotFoundError:  # before the first calibration
                _DEFAULT_MODEL = cls(Coefficients.initial())
        return _DEFAULT_MODEL

    # --- features -------------------------------------------------------------------------------------------
    def features(
        self,
        model: ModelShape,
        accelerator: Accelerator,
        config: ServingConfig,
        gpus: int | None = None,
    ) -> Features:
        return build_features(
            [(model, accelerator, config)],
            self.coefficients,
            None if gpus is None else [gpus],
            self.gpu_memory_utilization,
        )

    # --- step-level methods (used by the simulators) ---------------------------------------------------------
    def decode_step_seconds(
        self,
        model: ModelShape,
        accelerator: Accelerator,
        config: ServingConfig,
        batch_size: float,
        context_tokens: float,
        prompt_tokens: float = 0.0,
        prompt_length: float | None = None,
    ) -> float:
        """One engine step with `batch_size` decoding sequences of mean context `context_tokens`.

        `prompt_tokens` prefill tokens ride along in the step (chunked prefill); `prompt_length` is the length of
        the prompts they belong to (attention cost), by default the chunk itself.
        """
        f = self.features(model, accelerator, config)
        length = prompt_length if prompt_length is not None else max(prompt_tokens, 1.0)
        s = self.evaluator.step(
            f, np.array([batch_size]), np.array([context_tokens]), np.array([prompt_tokens]), np.array([length])
        )
        return _scalar(s.step_seconds)

    def prefill_seconds(
        self, model: ModelShape, accelerator: Accelerator, config: ServingConfig, prompt_tokens: float
    ) -> float:
        """Time to prefill one prompt alone (chunked by max_num_batched_tokens)."""
        f = self.features(model, accelerator, config)
        return _scalar(self.evaluator.prefill_seconds(f, np.array([float(prompt_tokens)])))

    def power_watts(
        self,
        model: ModelShape,
        accelerator: Accelerator,
        config: ServingConfig,
        batch_size: float,
        busy_fraction: float = 1.0,
        context_tokens: float = 1024.0,
    ) -> float:
        """GPU power summed over the replica's GPUs; idle power when the batch is empty."""
        f = self.features(model, accelerator, config)
        idle = float(f.idle_watts[0] * f.gpus[0])
        if batch_size <= 0:
            return idle
        s = self.evaluator.step(f, np.array([batch_size]), np.array([context_tokens]), np.zeros(1), np.ones(1))
        busy = min(max(busy_fraction, 0.0), 1.0)
        return busy * float(s.watts_per_gpu[0] * f.gpus[0]) + (1.0 - busy) * idle

    def idle_watts(self, accelerator: Accelerator, config: ServingConfig) -> float:
        return accelerator.idle_watts * config.tensor_parallel

    def weights_bytes(self, model: ModelShape, config: ServingConfig) -> float:
        return model.total_params_b * 1e9 * get_precision(config.precision).weight_bytes_per_param

    def kv_cache_capacity_tokens(self, model: ModelShape, accelerator: Accelerator, config: ServingConfig) -> int:
        f = self.features(model, accelerator, config)
        return int(_scalar(kv_capacity_tokens(f, self.coefficients)))

    def fits(
        self, model: ModelShape, accelerator: Accelerator, config: ServingConfig, sequence_tokens: float = 2048.0
    ) -> bool:
        """Weights fit and the KV cache holds at least one full sequence."""
        return self.kv_cache_capacity_tokens(model, accelerator, config) >= sequence_tokens

    # --- replica prediction ---------------------------------------------------------------------------------
    def predict(
        self,
        model: ModelShape,
        accelerator: Accelerator,
        config: ServingConfig,
        workload: Workload | None = None,
        profile: Sequence[ProfilePointLike] | None = None,
        gpus: int | None = None,
    ) -> ReplicaPrediction:
        """One replica under `workload`, or with the batch full at max_num_seqs (ML.ENERGY's regime) when None.

        A workload with an infinite request rate also means the saturated regime, with its token lengths.
        """
        f = self.features(model, accelerator, config, gpus)
        wl = workload or Workload(requests_per_second=0.0)
        inp = np.array([wl.input_tokens])
        out = np.array([wl.output_tokens])
        cap_tokens = _scalar(kv_capacity_tokens(f, self.coefficients))
        fits = cap_tokens >= wl.input_tokens + wl.output_tokens
        notes: list[str] = []
        if workload is None or math.isinf(workload.requests_per_second):
            r = self.evaluator.saturated(f, inp, out)
            ttft = _scalar(self.evaluator.prefill_seconds(f, inp, r["batch"])) + _scalar(r["step_seconds"])
            r["ttft_p95"] = np.array([ttft])
            r["utilisation"] = np.ones(1)
        else:
            r = self.evaluator.under_load(f, np.array([workload.requests_per_second]), inp, out)
        source = "model"
        if profile:
            corrected = apply_profile(r, profile, config)
            if corrected is not None:
                r = corrected
                source = "profile"
                notes.append("corrected by measured profile points")
        if not fits:
            notes.append("weights plus one sequence's KV cache do not fit in GPU memory")
        tps = _scalar(r["tokens_per_second"])
        jpt = _scalar(r["joules_per_token"])
        return ReplicaPrediction(
            batch_size=_scalar(r["batch"]),
            output_tokens_per_second=tps,
            watts=_scalar(r["watts"]),
            joules_per_token=jpt,
            joules_per_request=jpt * wl.output_tokens,
            itl_p50_seconds=_scalar(r["itl_p50"]),
            itl_p90_seconds=_scalar(r["itl_p90"]),
            itl_p95_seconds=_scalar(r["itl_p95"]),
            ttft_p95_seconds=_scalar(r["ttft_p95"]),
            fits_memory=bool(fits),
            kv_cache_tokens=int(cap_tokens) if fits else 0,
            utilisation=_scalar(r["utilisation"]),
            source=source,
            notes=tuple(notes),
        )


_DEFAULT_MODEL: EnergyModel | None = None


def _precision_name(value: Any) -> str:
    return str(getattr(value, "value", value))


def apply_profile(
    r: dict[str, FloatArray], profile: Sequence[ProfilePointLike], config: ServingConfig
) -> dict[str, FloatArray] | None:
    """Replace the model's step time and power by measured ones interpolated in log(batch), where measured.

    Only points of the same precision and TP count. Between measured batches, the measured step time
    (batch / tokens per second) and power are interpolated; outside them the nearest point's measured/model ratio
    would be needed, so the model is used unchanged beyond the measured range.
    """
    pts = [
        p
        for p in profile
        if _precision_name(p.precision) == config.precision and int(p.tensor_parallel) == config.tensor_parallel
    ]
    if not pts:
        return None
    pts.sort(key=lambda p: p.batch_size)
    batches = np.array([p.batch_size for p in pts], dtype=float)
    step = batches / np.array([p.output_tokens_per_second for p in pts], dtype=float)
    watts = np.array([p.watts for p in pts], dtype=float)
    b = float(np.asarray(r["batch"]).reshape(-1)[0])
    busy = float(np.asarray(r.get("busy_fraction", np.ones(1))).reshape(-1)[0])
    b_busy = max(b / max(busy, 1e-9), 1.0) if "busy_fraction" in r else b
    if b_busy < batches[0] * 0.5 or b_busy > batches[-1] * 1.5:
        return None
    lb = math.log(max(b_busy, 1e-9))
    logs = np.log(batches)
    step_at = float(np.exp(np.interp(lb, logs, np.log(step))))
    watts_at = float(np.exp(np.interp(lb, logs, np.log(watts))))
    model_step = float(np.asarray(r["step_seconds"]).reshape(-1)[0])
    ratio = step_at / model_step
    out = {k: np.array(v, dtype=float, copy=True) for k, v in r.items()}
    for key in ("itl_p50", "itl_p90", "itl_p95", "step_seconds"):
        out[key] = out[key] * ratio
    p50s = [p.itl_p50_seconds for p in pts]
    if all(v is not None for v in p50s):
        out["itl_p50"] = np.array([float(np.interp(lb, logs, np.array(p50s, dtype=float)))])
    p90s = [p.itl_p90_seconds for p in pts]
    if all(v is not None for v in p90s):
        out["itl_p90"] = np.array([float(np.interp(lb, logs, np.array(p90s, dtype=float)))])
        out["itl_p95"] = out["itl_p50"] + (out["itl_p90"] - out["itl_p50"]) * _P95_OVER_P90_SPREAD
    if "busy_fraction" in r:
        # Under load, tokens/s is the offered load; power mixes measured busy power and idle.
        idle = float(np.asarray(r["idle_watts"]).reshape(-1)[0])
        out["watts"] = np.array([busy * watts_at + (1.0 - busy) * idle])
    else:
        out["watts"] = np.array([watts_at])
        out["tokens_per_second"] = np.array([b / step_at])
    out["joules_per_token"] = out["watts"] / out["tokens_per_second"]
    return out

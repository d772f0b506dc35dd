"""The vLLM launcher: a serving plan in, the `vllm serve` command line for vLLM 0.11.1 out.

The Deployment hands the plan to the pod as environment variables (`WATTKEEPER_*`, see `ENV_*` below) or as
`wattkeeper-runtime launch` options; `plan_argv` is a pure function so that the command line can be checked
without a GPU, and `wattkeeper-runtime launch` only execs what it returns.

Precision -> flags, checked against vLLM 0.11.1's source (README "Quantization" has the same table):
- The rule: a pre-quantized checkpoint gets NO `--quantization`. vLLM reads the method from the checkpoint's
  config.json and raises when a given `--quantization` differs (vllm/config/model.py:1043-1052); AWQ and GPTQ
  switch to their Marlin kernels only when vLLM detects the method itself (awq_marlin.py:149-172,
  gptq_marlin.py:214-238: forcing `awq`/`gptq` keeps the slow kernel, forcing `awq_marlin` on a checkpoint Marlin
  cannot run is a mismatch error), and GPTQ-style checkpoints stored as compressed-tensors are another method again.
- bf16 / fp16: unquantized weights, `--dtype bfloat16` / `--dtype float16`.
- fp8 on the fly: `--quantization fp8` on unquantized weights (Fp8Config reads no file, fp8.py:234, and quantizes
  on load when the checkpoint is not fp8-serialized, fp8.py:242-244). Pre-quantized FP8 (`fp8`,
  `compressed-tensors` or `modelopt` checkpoints): `--dtype auto`, no `--quantization`.
- int8 on the fly: weight-only round-to-nearest, `--quantization rtn` (rtn.py; 8 bits and group size 128 unless
  the RTN_NUM_BITS / RTN_GROUP_SIZE variables say otherwise, rtn.py:38-45, so `plan_env` pins RTN_NUM_BITS=8;
  RTNConfig reads no file, rtn.py:90, weight_utils.py:301-305). Pre-quantized INT8 W8A8 or W8A16: LLM
  Compressor's compressed-tensors checkpoints, detected from config.json, no `--quantization`.
- int4-awq / int4-gptq / mxfp4: pre-quantized only (vLLM cannot produce them on load: Mxfp4Config allocates packed
  uint8 weights, mxfp4.py:241); no `--quantization`, vLLM picks awq_marlin / gptq_marlin / mxfp4 itself.
Quantized checkpoints keep their activation dtype from config.json (`--dtype auto`).
`WATTKEEPER_QUANTIZATION` sets an explicit method anyway (for a checkpoint without quantization_config).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

VLLM_VERSION = "0.11.1"

ENV_PRECISION = "WATTKEEPER_PRECISION"
ENV_TENSOR_PARALLEL = "WATTKEEPER_TENSOR_PARALLEL"
ENV_MAX_NUM_SEQS = "WATTKEEPER_MAX_NUM_SEQS"
ENV_MAX_NUM_BATCHED_TOKENS = "WATTKEEPER_MAX_NUM_BATCHED_TOKENS"
ENV_KV_CACHE_DTYPE = "WATTKEEPER_KV_CACHE_DTYPE"
ENV_GPU_MEMORY_UTILIZATION = "WATTKEEPER_GPU_MEMORY_UTILIZATION"
ENV_MODEL_SOURCE = "WATTKEEPER_MODEL_SOURCE"
ENV_SERVED_MODEL_NAME = "WATTKEEPER_SERVED_MODEL_NAME"
ENV_PORT = "WATTKEEPER_PORT"
ENV_PREQUANTIZED = "WATTKEEPER_PREQUANTIZED"  # "true"/"false": is the source a pre-quantized checkpoint?
ENV_QUANTIZATION = "WATTKEEPER_QUANTIZATION"  # explicit vLLM --quantization method, overrides the mapping
ENV_EXTRA_ARGS = "WATTKEEPER_EXTRA_ARGS"  # shell-quoted extra `vllm serve` arguments

PRECISIONS = ("bf16", "fp16", "fp8", "int8", "int4-awq", "int4-gptq", "mxfp4")
# vLLM 0.11 CacheConfig.cache_dtype choices.
KV_CACHE_DTYPES = ("auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc")
# Precisions vLLM 0.11.1 can quantize to on load, and the method that does it.
ON_THE_FLY_METHODS = {"fp8": "fp8", "int8": "rtn"}
# Precisions that only exist as a pre-quantized checkpoint.
PREQUANTIZED_ONLY = ("int4-awq", "int4-gptq", "mxfp4")
RTN_BITS_ENV = "RTN_NUM_BITS"  # read by vllm/model_executor/layers/quantization/rtn.py:41

# Flags the plan owns; extra args must not set them again (vLLM would take the last one silently).
PLANNED_FLAGS = frozenset(
    {
        "--model",
        "--tensor-parallel-size",
        "-tp",
        "--max-num-seqs",
        "--max-num-batched-tokens",
        "--quantization",
        "-q",
        "--dtype",
        "--kv-cache-dtype",
        "--gpu-memory-utilization",
        "--port",
        "--served-model-name",
    }
)

# Sources whose name says they are already quantized (e.g. RedHatAI/Llama-3.1-8B-Instruct-FP8-dynamic).
_PREQUANTIZED_NAME = re.compile(r"(fp8|int8|w8a8|w8a16|w4a16|awq|gptq|mxfp4|int4|nvfp4)", re.IGNORECASE)


class LaunchError(ValueError):
    """The plan cannot be turned into a valid `vllm serve` command."""


@dataclass(frozen=True)
class LaunchPlan:
    """What the operator decided for one replica, as the launcher receives it."""

    model_source: str
    precision: str = "bf16"
    tensor_parallel: int = 1
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kv_cache_dtype: str | None = None
    gpu_memory_utilization: float | None = None
    served_model_name: str | None = None
    port: int = 8000
    prequantized: bool | None = None  # None: guess from the source's name (and the precision)
    quantization: str | None = None  # explicit override of the precision mapping
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def is_prequantized(self) -> bool:
        if self.prequantized is not None:
            return self.prequantized
        if self.precision in PREQUANTIZED_ONLY:
            return True  # no other kind of checkpoint can serve it
        return bool(_PREQUANTIZED_NAME.search(self.model_source))


def _precision_flags(plan: LaunchPlan) -> list[str]:
    precision = plan.precision
    if plan.quantization:
        return ["--dtype", "auto", "--quantization", plan.quantization]
    if precision == "bf16":
        return ["--dtype", "bfloat16"]
    if precision == "fp16":
        return ["--dtype", "float16"]
    if plan.is_prequantized():
        # config.json names the method; vLLM detects it and picks its fastest kernel (model.py:1018-1040).
        return ["--dtype", "auto"]
    if precision in ON_THE_FLY_METHODS:
        return ["--dtype", "bfloat16", "--quantization", ON_THE_FLY_METHODS[precision]]
    raise LaunchError(
        f"precision {precision} needs a pre-quantized checkpoint (a model variant); "
        f"{plan.model_source!r} is marked as not quantized and vLLM cannot quantize to {precision} on load"
    )


def plan_env(plan: LaunchPlan) -> dict[str, str]:
    """Environment the `vllm serve` process needs besides its argv: RTN's bit width, which vLLM reads from the
    environment only (rtn.py:41) and would otherwise take from whatever the pod happens to set."""
    if plan.quantization is None and plan.precision == "int8" and not plan.is_prequantized():
        return {RTN_BITS_ENV: "8"}
    return {}


def _flag_name(arg: str) -> str:
    return arg.split("=", 1)[0]


def plan_argv(plan: LaunchPlan, executable: str = "vllm") -> list[str]:
    """The `vllm serve` argv for a plan. Raises LaunchError for an invalid plan."""
    if not plan.model_source:
        raise LaunchError("no model source: set WATTKEEPER_MODEL_SOURCE or --model-source")
    if plan.precision not in PRECISIONS:
        raise LaunchError(f"unknown precision {plan.precision!r}; expected one of {', '.join(PRECISIONS)}")
    if plan.tensor_parallel < 1:
        raise LaunchError(f"tensor parallel degree must be >= 1, got {plan.tensor_parallel}")
    if plan.max_num_seqs is not None and plan.max_num_seqs < 1:
        raise LaunchError(f"max-num-seqs must be >= 1, got {plan.max_num_seqs}")
    if plan.max_num_batched_tokens is not None and plan.max_num_batched_tokens < 1:
        raise LaunchError(f"max-num-batched-tokens must be >= 1, got {plan.max_num_batched_tokens}")
    if plan.kv_cache_dtype is not None and plan.kv_cache_dtype not in KV_CACHE_DTYPES:
        raise LaunchError(f"unknown kv-cache dtype {plan.kv_cache_dtype!r}; expected one of {KV_CACHE_DTYPES}")
    if plan.gpu_memory_utilization is not None and not 0.0 < plan.gpu_memory_utilization <= 1.0:
        raise LaunchError(f"gpu-memory-utilization must be in (0, 1], got {plan.gpu_memory_utilization}")
    if not 1 <= plan.port <= 65535:
        raise LaunchError(f"port out of range: {plan.port}")
    duplicated = sorted({_flag_name(a) for a in plan.extra_args if _flag_name(a) in PLANNED_FLAGS})
    if duplicated:
        raise LaunchError(f"extra args set flags that the plan owns: {', '.join(duplicated)}")

    argv = [executable, "serve", plan.model_source]
    argv += _precision_flags(plan)
    argv += ["--tensor-parallel-size", str(plan.tensor_parallel)]
    if plan.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(plan.max_num_seqs)]
    if plan.max_num_batched_tokens is not None:
        argv += ["--max-num-batched-tokens", str(plan.max_num_batched_tokens)]
    if plan.kv_cache_dtype is not None:
        argv += ["--kv-cache-dtype", plan.kv_cache_dtype]
    if plan.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", f"{plan.gpu_memory_utilization:g}"]
    argv += ["--port", str(plan.port)]
    if plan.served_model_name:
        argv += ["--served-model-name", plan.served_model_name]
    argv += list(plan.extra_args)
    return argv


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise LaunchError(f"not a boolean: {text!r}")


def _parse_int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError as error:
        raise LaunchError(f"{name} is not an integer: {text!r}") from error


def _parse_float(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError as error:
        raise LaunchError(f"{name} is not a number: {text!r}") from error


def plan_from_env(env: Mapping[str, str], extra_args: Sequence[str] = ()) -> LaunchPlan:
    """Read a plan from `WATTKEEPER_*` variables (empty values count as unset)."""

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    source = get(ENV_MODEL_SOURCE)
    if source is None:
        raise LaunchError(f"{ENV_MODEL_SOURCE} is not set")
    text_tp, text_seqs, text_tokens = get(ENV_TENSOR_PARALLEL), get(ENV_MAX_NUM_SEQS), get(ENV_MAX_NUM_BATCHED_TOKENS)
    text_util, text_port, text_preq = get(ENV_GPU_MEMORY_UTILIZATION), get(ENV_PORT), get(ENV_PREQUANTIZED)
    env_extra = tuple(shlex.split(get(ENV_EXTRA_ARGS) or ""))
    return LaunchPlan(
        model_source=source,
        precision=get(ENV_PRECISION) or "bf16",
        tensor_parallel=_parse_int(ENV_TENSOR_PARALLEL, text_tp) if text_tp else 1,
        max_num_seqs=_parse_int(ENV_MAX_NUM_SEQS, text_seqs) if text_seqs else None,
        max_num_batched_tokens=_parse_int(ENV_MAX_NUM_BATCHED_TOKENS, text_tokens) if text_tokens else None,
        kv_cache_dtype=get(ENV_KV_CACHE_DTYPE),
        gpu_memory_utilization=_parse_float(ENV_GPU_MEMORY_UTILIZATION, text_util) if text_util else None,
        served_model_name=get(ENV_SERVED_MODEL_NAME),
        port=_parse_int(ENV_PORT, text_port) if text_port else 8000,
        prequantized=_parse_bool(text_preq) if text_preq else None,
        quantization=get(ENV_QUANTIZATION),
        extra_args=env_extra + tuple(extra_args),
    )


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `wattkeeper-runtime launch`; each one overrides its environment variable."""
    parser.add_argument("--model-source", help=f"weights to load (env {ENV_MODEL_SOURCE})")
    parser.add_argument("--precision", choices=PRECISIONS, help=f"env {ENV_PRECISION}")
    parser.add_argument("--tensor-parallel", type=int, help=f"env {ENV_TENSOR_PARALLEL}")
    parser.add_argument("--max-num-seqs", type=int, help=f"env {ENV_MAX_NUM_SEQS}")
    parser.add_argument("--max-num-batched-tokens", type=int, help=f"env {ENV_MAX_NUM_BATCHED_TOKENS}")
    parser.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, help=f"env {ENV_KV_CACHE_DTYPE}")
    parser.add_argument("--gpu-memory-utilization", type=float, help=f"env {ENV_GPU_MEMORY_UTILIZATION}")
    parser.add_argument("--served-model-name", help=f"env {ENV_SERVED_MODEL_NAME}")
    parser.add_argument("--port", type=int, help=f"env {ENV_PORT}")
    parser.add_argument("--prequantized", choices=("true", "false"), help=f"env {ENV_PREQUANTIZED}")
    parser.add_argument("--quantization", help=f"explicit vLLM method (env {ENV_QUANTIZATION})")
    parser.add_argument("--executable", default="vllm", help="the vLLM command (default: vllm)")
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    parser.add_argument("extra_args", nargs=argparse.REMAINDER, help="after `--`: extra `vllm serve` arguments")


_OPTION_TO_ENV = {
    "model_source": ENV_MODEL_SOURCE,
    "precision": ENV_PRECISION,
    "tensor_parallel": ENV_TENSOR_PARALLEL,
    "max_num_seqs": ENV_MAX_NUM_SEQS,
    "max_num_batched_tokens": ENV_MAX_NUM_BATCHED_TOKENS,
    "kv_cache_dtype": ENV_KV_CACHE_DTYPE,
    "gpu_memory_utilization": ENV_GPU_MEMORY_UTILIZATION,
    "served_model_name": ENV_SERVED_MODEL_NAME,
    "port": ENV_PORT,
    "prequantized": ENV_PREQUANTIZED,
    "quantization": ENV_QUANTIZATION,
}


def plan_from_options(options: argparse.Namespace, env: Mapping[str, str]) -> LaunchPlan:
    """Merge command-line options over the environment, then read the plan."""
    merged = dict(env)
    for option, variable in _OPTION_TO_ENV.items():
        value = getattr(options, option, None)
        if value is not None:
            merged[variable] = str(value)
    extra = [a for a in (options.extra_args or []) if a != "--"]
    return plan_from_env(merged, extra)


def launch(options: argparse.Namespace) -> int:
    """Entry point of `wattkeeper-runtime launch`: exec vLLM (or print its command with --dry-run)."""
    plan = plan_from_options(options, os.environ)
    argv = plan_argv(plan, executable=options.executable)
    if options.dry_run:
        print(shlex.join(argv))
        return 0
    os.environ.update(plan_env(plan))
    # exec, not a child: vLLM becomes the container's main process and receives the kubelet's SIGTERM itself.
    os.execvp(argv[0], argv)
    return 0  # not reached

"""The vLLM launcher: plan -> `vllm serve` argv for vLLM 0.11.1's documented flags."""

from __future__ import annotations

import argparse

import pytest
from wattkeeper_runtime.launcher import (
    LaunchError,
    LaunchPlan,
    add_launch_arguments,
    plan_argv,
    plan_from_env,
    plan_from_options,
)

BASE = "meta-llama/Llama-3.1-8B-Instruct"


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.parametrize(
    ("precision", "source", "dtype", "quantization"),
    [
        ("bf16", BASE, "bfloat16", None),
        ("fp16", BASE, "float16", None),
        ("fp8", BASE, "bfloat16", "fp8"),  # on-the-fly dynamic FP8
        ("fp8", "RedHatAI/Llama-3.1-8B-Instruct-FP8-dynamic", "auto", None),  # the checkpoint names its method
        # Pre-quantized checkpoints: vLLM reads the method from config.json (see test_quantization_flags.py).
        ("int8", "RedHatAI/Llama-3.1-8B-Instruct-quantized.w8a8", "auto", None),
        ("int8", BASE, "bfloat16", "rtn"),  # weight-only int8 on load
        ("int4-awq", "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4", "auto", None),
        ("int4-gptq", "hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4", "auto", None),
        ("mxfp4", "openai/gpt-oss-20b", "auto", None),
    ],
)
def test_precision_flags(precision: str, source: str, dtype: str, quantization: str | None) -> None:
    argv = plan_argv(LaunchPlan(model_source=source, precision=precision))
    assert argv[:3] == ["vllm", "serve", source]
    assert flag(argv, "--dtype") == dtype
    assert flag(argv, "--quantization") == quantization


def test_full_plan_command_line() -> None:
    plan = LaunchPlan(
        model_source=BASE,
        precision="fp8",
        tensor_parallel=2,
        max_num_seqs=128,
        max_num_batched_tokens=4096,
        kv_cache_dtype="fp8",
        gpu_memory_utilization=0.92,
        served_model_name="llama-8b",
        port=8001,
        extra_args=("--enable-prefix-caching",),
    )
    assert plan_argv(plan) == [
        "vllm", "serve", BASE,
        "--dtype", "bfloat16", "--quantization", "fp8",
        "--tensor-parallel-size", "2",
        "--max-num-seqs", "128",
        "--max-num-batched-tokens", "4096",
        "--kv-cache-dtype", "fp8",
        "--gpu-memory-utilization", "0.92",
        "--port", "8001",
        "--served-model-name", "llama-8b",
        "--enable-prefix-caching",
    ]  # fmt: skip


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize(("seqs", "tokens"), [(8, 2048), (256, 8192), (512, 16384)])
def test_tp_and_batch(tp: int, seqs: int, tokens: int) -> None:
    argv = plan_argv(
        LaunchPlan(model_source=BASE, tensor_parallel=tp, max_num_seqs=seqs, max_num_batched_tokens=tokens)
    )
    assert flag(argv, "--tensor-parallel-size") == str(tp)
    assert flag(argv, "--max-num-seqs") == str(seqs)
    assert flag(argv, "--max-num-batched-tokens") == str(tokens)


def test_unset_batch_limits_leave_vllm_defaults() -> None:
    argv = plan_argv(LaunchPlan(model_source=BASE))
    assert "--max-num-seqs" not in argv and "--max-num-batched-tokens" not in argv and "--kv-cache-dtype" not in argv


@pytest.mark.parametrize(
    "extra", [["--max-num-seqs", "4"], ["--tensor-parallel-size=2"], ["-tp", "2"], ["--quantization", "awq"]]
)
def test_extra_args_that_duplicate_the_plan_are_rejected(extra: list[str]) -> None:
    with pytest.raises(LaunchError, match="plan owns"):
        plan_argv(LaunchPlan(model_source=BASE, extra_args=tuple(extra)))


@pytest.mark.parametrize(
    "plan",
    [
        LaunchPlan(model_source=BASE, precision="int3"),
        LaunchPlan(model_source=BASE, tensor_parallel=0),
        LaunchPlan(model_source=BASE, max_num_seqs=0),
        LaunchPlan(model_source=BASE, kv_cache_dtype="int2"),
        LaunchPlan(model_source=BASE, gpu_memory_utilization=1.5),
        LaunchPlan(model_source=BASE, precision="int4-awq", prequantized=False),
        LaunchPlan(model_source=""),
    ],
)
def test_invalid_plans(plan: LaunchPlan) -> None:
    with pytest.raises(LaunchError):
        plan_argv(plan)


def test_explicit_quantization_override() -> None:
    argv = plan_argv(
        LaunchPlan(model_source="org/model-w4a16", precision="int4-gptq", quantization="compressed-tensors")
    )
    assert flag(argv, "--quantization") == "compressed-tensors"


def test_plan_from_env() -> None:
    env = {
        "WATTKEEPER_PRECISION": "int4-awq",
        "WATTKEEPER_TENSOR_PARALLEL": "2",
        "WATTKEEPER_MAX_NUM_SEQS": "64",
        "WATTKEEPER_MAX_NUM_BATCHED_TOKENS": "2048",
        "WATTKEEPER_KV_CACHE_DTYPE": "fp8_e4m3",
        "WATTKEEPER_GPU_MEMORY_UTILIZATION": "0.85",
        "WATTKEEPER_MODEL_SOURCE": "org/llama-awq",
        "WATTKEEPER_SERVED_MODEL_NAME": "llama",
        "WATTKEEPER_PORT": "9000",
        "WATTKEEPER_EXTRA_ARGS": "--enable-prefix-caching --max-model-len 8192",
        "WATTKEEPER_KV_UNRELATED": "ignored",
    }
    argv = plan_argv(plan_from_env(env))
    assert argv[:3] == ["vllm", "serve", "org/llama-awq"]
    assert flag(argv, "--quantization") is None  # vLLM detects AWQ and picks awq_marlin itself
    assert flag(argv, "--tensor-parallel-size") == "2"
    assert flag(argv, "--kv-cache-dtype") == "fp8_e4m3"
    assert flag(argv, "--gpu-memory-utilization") == "0.85"
    assert flag(argv, "--port") == "9000"
    assert argv[-3:] == ["--enable-prefix-caching", "--max-model-len", "8192"]


def test_env_errors_are_launch_errors() -> None:
    with pytest.raises(LaunchError, match="WATTKEEPER_MODEL_SOURCE"):
        plan_from_env({})
    with pytest.raises(LaunchError, match="not an integer"):
        plan_from_env({"WATTKEEPER_MODEL_SOURCE": BASE, "WATTKEEPER_MAX_NUM_SEQS": "many"})


def test_options_override_env() -> None:
    parser = argparse.ArgumentParser()
    add_launch_arguments(parser)
    options = parser.parse_args(["--precision", "fp16", "--max-num-seqs", "32", "--", "--enforce-eager"])
    plan = plan_from_options(options, {"WATTKEEPER_MODEL_SOURCE": BASE, "WATTKEEPER_PRECISION": "bf16"})
    argv = plan_argv(plan)
    assert flag(argv, "--dtype") == "float16"
    assert flag(argv, "--max-num-seqs") == "32"
    assert argv[-1] == "--enforce-eager"


def test_cli_dry_run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from wattkeeper_runtime.cli import main

    monkeypatch.setenv("WATTKEEPER_MODEL_SOURCE", BASE)
    monkeypatch.setenv("WATTKEEPER_TENSOR_PARALLEL", "4")
    assert main(["launch", "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"vllm serve {BASE} --dtype bfloat16 --tensor-parallel-size 4 --port 8000"
    )
    monkeypatch.setenv("WATTKEEPER_PRECISION", "int9")
    assert main(["launch", "--dry-run"]) == 2

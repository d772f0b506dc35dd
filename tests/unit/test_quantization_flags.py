"""Quantization as vLLM 0.11.1 accepts it: one test per row of the README's table (precision -> checkpoint ->
flags), each checked against a model of vLLM's own start-up check.

`vllm_resolves` follows vllm/config/model.py:968-1062 (`_verify_quantization`) for the methods the table uses:
the checkpoint's `quantization_config.quant_method` is read; AWQ and GPTQ checkpoints that Marlin can run are
promoted to awq_marlin / gptq_marlin only when `--quantization` is unset or names the Marlin method
(awq_marlin.py:149-172, gptq_marlin.py:214-238); any other `--quantization` that differs from the checkpoint's
method raises (model.py:1043-1052). Without a checkpoint method the flag is used as it is.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from wattkeeper.api import LLMService, ServingConfigSpec
from wattkeeper.render.objects import RenderError, render_deployment
from wattkeeper_runtime.launcher import LaunchError, LaunchPlan, plan_argv, plan_env

BASE = "meta-llama/Llama-3.1-8B-Instruct"
_MARLIN = {"awq": "awq_marlin", "gptq": "gptq_marlin"}


def vllm_resolves(checkpoint_method: str | None, flag: str | None) -> str | None:
    """The method vLLM 0.11.1 ends up with, or ValueError where it refuses to start."""
    if checkpoint_method is None:
        return flag
    detected = checkpoint_method
    if checkpoint_method in _MARLIN and flag in (None, "marlin", _MARLIN[checkpoint_method]):
        detected = _MARLIN[checkpoint_method]  # override_quantization_method picked the Marlin kernel
    if flag is None:
        return detected
    if flag != detected:
        raise ValueError(
            f"Quantization method specified in the model config ({detected}) does not match the quantization "
            f"method specified in the `quantization` argument ({flag})."
        )
    return flag


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


# (precision, checkpoint kind, source, prequantized, checkpoint quant_method, --dtype, --quantization, vLLM's method)
ROWS = [
    ("bf16", "unquantized", BASE, False, None, "bfloat16", None, None),
    ("fp16", "unquantized", BASE, False, None, "float16", None, None),
    ("fp8", "unquantized, quantized on load", BASE, False, None, "bfloat16", "fp8", "fp8"),
    ("fp8", "pre-quantized fp8", "RedHatAI/Llama-3.1-8B-Instruct-FP8-dynamic", True, "compressed-tensors", "auto",
     None, "compressed-tensors"),
    ("fp8", "pre-quantized modelopt", "nvidia/Llama-3.1-8B-Instruct-FP8", True, "modelopt", "auto", None,
     "modelopt"),
    ("int8", "unquantized, weight-only RTN on load", BASE, False, None, "bfloat16", "rtn", "rtn"),
    ("int8", "pre-quantized W8A8 (compressed-tensors)", "RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w8a8", True,
     "compressed-tensors", "auto", None, "compressed-tensors"),
    ("int8", "pre-quantized W8A16 (compressed-tensors)", "RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w8a16",
     True, "compressed-tensors", "auto", None, "compressed-tensors"),
    ("int4-awq", "pre-quantized AWQ", "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4", True, "awq", "auto",
     None, "awq_marlin"),
    ("int4-gptq", "pre-quantized GPTQ", "hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4", True, "gptq",
     "auto", None, "gptq_marlin"),
    ("mxfp4", "pre-quantized MXFP4", "openai/gpt-oss-20b", True, "mxfp4", "auto", None, "mxfp4"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("precision", "kind", "source", "prequantized", "checkpoint", "dtype", "quantization", "method"),
    ROWS,
    ids=[f"{r[0]}:{r[1]}" for r in ROWS],
)
def test_table_row(
    precision: str,
    kind: str,
    source: str,
    prequantized: bool,
    checkpoint: str | None,
    dtype: str,
    quantization: str | None,
    method: str | None,
) -> None:
    argv = plan_argv(LaunchPlan(model_source=source, precision=precision, prequantized=prequantized))
    assert argv[:3] == ["vllm", "serve", source]
    assert flag(argv, "--dtype") == dtype
    assert flag(argv, "--quantization") == quantization
    # vLLM starts, with the expected method (the Marlin kernels for AWQ and GPTQ).
    assert vllm_resolves(checkpoint, quantization) == method
    # The name guess (no explicit prequantized) lands on the same flags for every row's example name.
    guessed = plan_argv(LaunchPlan(model_source=source, precision=precision))
    assert flag(guessed, "--quantization") == quantization


@pytest.mark.parametrize(("checkpoint", "forced"), [("awq", "awq_marlin"), ("gptq", "gptq_marlin"),
                                                    ("compressed-tensors", "gptq_marlin"), ("fp8", "compressed-tensors"),
                                                    ("mxfp4", "fp8")])  # fmt: skip
def test_the_old_forced_flags_would_not_start(checkpoint: str, forced: str) -> None:
    """Why the table never forces a method: either vLLM raises, or (awq -> awq) it keeps the slow kernel."""
    if checkpoint in _MARLIN and forced == _MARLIN[checkpoint]:
        # Accepted only while Marlin can run the checkpoint; on a group size Marlin lacks it raises instead.
        assert vllm_resolves(checkpoint, forced) == forced
        assert vllm_resolves(checkpoint, checkpoint) == checkpoint  # forcing plain awq/gptq: no Marlin
        return
    with pytest.raises(ValueError, match="does not match"):
        vllm_resolves(checkpoint, forced)


def test_rtn_bit_width_is_pinned() -> None:
    """rtn reads its bit width from RTN_NUM_BITS only (rtn.py:41): int8 on load pins 8, nothing else sets it."""
    assert plan_env(LaunchPlan(model_source=BASE, precision="int8", prequantized=False)) == {"RTN_NUM_BITS": "8"}
    for precision, prequantized in (("int8", True), ("fp8", False), ("bf16", False)):
        assert plan_env(LaunchPlan(model_source=BASE, precision=precision, prequantized=prequantized)) == {}


@pytest.mark.parametrize("precision", ["int4-awq", "int4-gptq", "mxfp4"])
def test_precisions_vllm_cannot_make_on_load_need_a_checkpoint(precision: str) -> None:
    with pytest.raises(LaunchError, match="needs a pre-quantized checkpoint"):
        plan_argv(LaunchPlan(model_source=BASE, precision=precision, prequantized=False))


# --- the API and the rendered pod --------------------------------------------------------------------------------


def service(model: dict[str, Any], precisions: list[str], env: list[dict[str, str]] | None = None) -> LLMService:
    return LLMService.model_validate(
        {
            "apiVersion": "wattkeeper.io/v1alpha1",
            "kind": "LLMService",
            "metadata": {"name": "chat", "namespace": "default", "uid": "u1"},
            "spec": {
                "model": {"name": "chat", "source": BASE, "parametersBillions": 8, **model},
                "quality": {"allowedPrecisions": precisions},
                "slo": {"ttftP95Seconds": 1.0, "itlP95Seconds": 0.05},
                "engine": {"env": env or []},
            },
        }
    )


def container(svc: LLMService, precision: str) -> dict[str, Any]:
    config = ServingConfigSpec(precision=precision, tensor_parallel=1, replicas=1, max_num_seqs=64).to_plan()
    result: dict[str, Any] = render_deployment(svc, config)["spec"]["template"]["spec"]["containers"][0]
    return result


VARIANTS = [
    {"precision": "fp8", "source": "RedHatAI/Llama-3.1-8B-Instruct-FP8-dynamic"},
    {"precision": "int4-awq", "source": "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"},
]


def test_rendered_variant_gets_no_quantization_flag() -> None:
    svc = service({"variants": VARIANTS}, ["bf16", "fp8", "int8", "int4-awq"])
    awq = container(svc, "int4-awq")
    assert awq["args"][0] == VARIANTS[1]["source"] and "--quantization" not in awq["args"]
    fp8 = container(svc, "fp8")
    assert fp8["args"][0] == VARIANTS[0]["source"] and "--quantization" not in fp8["args"]
    # No int8 variant: the base weights, quantized on load with RTN at 8 bits.
    int8 = container(svc, "int8")
    assert int8["args"][0] == BASE and flag(int8["args"], "--quantization") == "rtn"
    assert {"name": "RTN_NUM_BITS", "value": "8"} in int8["env"]


def test_rendered_fp8_without_variant_quantizes_on_load() -> None:
    args = container(service({}, ["bf16", "fp8"]), "fp8")["args"]
    assert args[0] == BASE and flag(args, "--quantization") == "fp8"


def test_quantized_source_is_served_as_it_is() -> None:
    svc = service({"source": "openai/gpt-oss-20b", "sourcePrecision": "mxfp4"}, ["mxfp4"])
    args = container(svc, "mxfp4")["args"]
    assert args[0] == "openai/gpt-oss-20b" and "--quantization" not in args and flag(args, "--dtype") == "auto"


def test_clashing_rtn_env_is_an_error() -> None:
    svc = service({}, ["int8"], env=[{"name": "RTN_NUM_BITS", "value": "4"}])
    with pytest.raises(RenderError, match="RTN_NUM_BITS"):
        container(svc, "int8")


@pytest.mark.parametrize(
    ("model", "precisions", "message"),
    [
        ({}, ["bf16", "int4-awq"], "int4-awq have no checkpoint"),
        ({}, ["mxfp4"], "mxfp4 have no checkpoint"),
        ({"sourcePrecision": "mxfp4"}, ["mxfp4", "bf16"], "bf16 have no checkpoint"),
        ({"sourcePrecision": "fp8"}, ["int8"], "int8 have no checkpoint"),
        ({"variants": [VARIANTS[0], {**VARIANTS[0], "source": "other/fp8"}]}, ["fp8"], "more than one variant"),
        ({"sourcePrecision": "fp8", "variants": [VARIANTS[0]]}, ["fp8"], "repeats sourcePrecision"),
    ],
)
def test_api_rejects_precisions_without_a_checkpoint(model: dict[str, Any], precisions: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        service(model, precisions)

#!/usr/bin/env python3
"""Energy of a real 8B decoder on a real GPU, against the energy model's prediction for the same steps.

Where a GPU is lent there is no vLLM and no model weights (nothing can be downloaded there), so this measures the
next best thing: a Llama-3.1-8B-shaped decoder (32 layers, hidden 4096, 32 query / 8 KV heads of 128, MLP 14336,
vocabulary 128,256) with random bf16 weights, each decode step captured in a CUDA graph as vLLM does, attention
over a KV cache of `--context` tokens per sequence. Random weights cost the same FLOPs and bytes as trained ones;
RoPE and sampling are left out (elementwise, well under 1% of a step). Energy comes from the NVML energy counter
(nvmlDeviceGetTotalEnergyConsumption, mJ) over each timed window; nothing on the card is changed (no
nvmlDeviceSet* call), its clocks and power limit stay as they are.

    measure (on the GPU machine):  python3 hack/gpu-decode-energy.py measure --out OUT/gpu-energy.json
    compare (here, no GPU):        python hack/gpu-decode-energy.py compare OUT/gpu-energy.json

`measure` needs torch and nvidia-ml-py only; `compare` needs the operator package (the energy model).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB = 32, 4096, 32, 8, 128, 14336, 128256
MODEL_NAME = "meta-llama/Llama-3.1-8B-Instruct"


# --- measure ------------------------------------------------------------------------------------------------
def _measure(options: argparse.Namespace) -> int:
    import pynvml
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    dev = torch.device("cuda")
    bf16 = torch.bfloat16
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)

    def text(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    report: dict[str, Any] = {
        "gpu": text(pynvml.nvmlDeviceGetName(handle)),
        "driver": text(pynvml.nvmlSystemGetDriverVersion()),
        "torch": torch.__version__,
        "power_limit_watts": pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
        "model_shape": MODEL_NAME,
        "context_tokens": options.context,
        "decode": [],
        "prefill": [],
        "errors": [],
    }
    out = Path(options.out)

    def save() -> None:
        out.write_text(json.dumps(report, indent=1))

    def energy_window(step: Any, seconds: float) -> dict[str, float]:
        """Run `step` repeatedly for about `seconds`; time and NVML energy over whole steps only."""
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        # Time a few steps to size the window, then measure it with the counter read on both sides of a sync.
        t = time.perf_counter()
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        per = max((time.perf_counter() - t) / 5, 1e-5)
        n = max(10, int(seconds / per))
        e0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        e1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        power_now = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000
        wall = t1 - t0
        return {
            "steps": n,
            "step_seconds": wall / n,
            "watts": (e1 - e0) / 1000 / wall,
            "power_usage_watts_at_end": power_now,
            "sm_clock_mhz_at_end": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        }

    def rand(*shape: int, dtype: Any = bf16) -> Any:
        return (torch.randn(*shape, device=dev, dtype=bf16) * 0.02).to(dtype)

    def weights(precision: str) -> list[dict[str, Any]]:
        # fp8: e4m3 weights stored column-major for torch._scaled_mm (as vLLM's per-tensor fp8 linear does).
        layers = []
        for _ in range(LAYERS):
            mats = {
                "qkv": (HIDDEN, (HEADS + 2 * KV_HEADS) * HEAD_DIM),
                "o": (HIDDEN, HIDDEN),
                "gate_up": (HIDDEN, 2 * MLP),
                "down": (MLP, HIDDEN),
            }
            layer: dict[str, Any] = {
                "norm1": torch.ones(HIDDEN, device=dev, dtype=bf16),
                "norm2": torch.ones(HIDDEN, device=dev, dtype=bf16),
            }
            for name, (k, n) in mats.items():
                w = rand(n, k)  # (out, in)
                layer[name] = w.to(torch.float8_e4m3fn).t() if precision == "fp8" else w.t()
            layers.append(layer)
        return layers

    one = torch.ones((), device=dev, dtype=torch.float32)

    def linear(x: Any, w: Any, precision: str) -> Any:
        if precision == "fp8":
            return torch._scaled_mm(x.to(torch.float8_e4m3fn), w, scale_a=one, scale_b=one, out_dtype=bf16)
        return x @ w

    def rms(x: Any, w: Any) -> Any:
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5).to(bf16) * w

    def decode(
        layers: list[dict[str, Any]], precision: str, tokens: Any, k_cache: list[Any], v_cache: list[Any]
    ) -> Any:
        batch = tokens.shape[0]
        x = embed[tokens]
        for i, layer in enumerate(layers):
            h = rms(x, layer["norm1"])
            qkv = linear(h, layer["qkv"], precision)
            q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], -1)
            # the new token's K/V go into the last slot (vLLM writes into its paged cache)
            k_cache[i][:, :, -1, :] = k.view(batch, KV_HEADS, HEAD_DIM)
            v_cache[i][:, :, -1, :] = v.view(batch, KV_HEADS, HEAD_DIM)
            a = F.scaled_dot_product_attention(
                q.view(batch, HEADS, 1, HEAD_DIM), k_cache[i], v_cache[i], enable_gqa=True
            )
            x = x + linear(a.reshape(batch, HIDDEN), layer["o"], precision)
            h = rms(x, layer["norm2"])
            gate, up = linear(h, layer["gate_up"], precision).chunk(2, -1)
            x = x + linear(F.silu(gate) * up, layer["down"], precision)
        return (rms(x, final_norm) @ lm_head).argmax(-1)

    def prefill(layers: list[dict[str, Any]], precision: str, ids: Any) -> Any:
        prompt = ids.shape[0]
        x = embed[ids]
        for layer in layers:
            h = rms(x, layer["norm1"])
            qkv = linear(h, layer["qkv"], precision)
            q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], -1)
            a = F.scaled_dot_product_attention(
                q.view(prompt, HEADS, HEAD_DIM).transpose(0, 1)[None],
                k.view(prompt, KV_HEADS, HEAD_DIM).transpose(0, 1)[None],
                v.view(prompt, KV_HEADS, HEAD_DIM).transpose(0, 1)[None],
                is_causal=True,
                enable_gqa=True,
            )
            x = x + linear(a[0].transpose(0, 1).reshape(prompt, HIDDEN), layer["o"], precision)
            h = rms(x, layer["norm2"])
            gate, up = linear(h, layer["gate_up"], precision).chunk(2, -1)
            x = x + linear(F.silu(gate) * up, layer["down"], precision)
        return (rms(x[-1:], final_norm) @ lm_head).argmax(-1)

    embed = rand(VOCAB, HIDDEN)
    lm_head = rand(HIDDEN, VOCAB)
    final_norm = torch.ones(HIDDEN, device=dev, dtype=bf16)

    for precision in options.precisions.split(","):
        try:
            layers = weights(precision)
        except Exception as exc:  # a failed precision must not lose the others' figures
            report["errors"].append(f"{precision} weights: {exc!r}")
            continue
        for batch in [int(b) for b in options.batches.split(",")]:
            try:
                k_cache = [rand(batch, KV_HEADS, options.context, HEAD_DIM) for _ in range(LAYERS)]
                v_cache = [rand(batch, KV_HEADS, options.context, HEAD_DIM) for _ in range(LAYERS)]
                tokens = torch.randint(0, VOCAB, (batch,), device=dev)

                decode_step = functools.partial(decode, layers, precision, tokens, k_cache, v_cache)

                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(2):
                        decode_step()
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    decode_step()
                row = {"precision": precision, "batch": batch, **energy_window(graph.replay, options.seconds)}
                row["tokens_per_second"] = batch / row["step_seconds"]
                row["joules_per_token"] = row["watts"] / row["tokens_per_second"]
                report["decode"].append(row)
                print(json.dumps(row), flush=True)
                del graph, k_cache, v_cache
            except Exception as exc:
                report["errors"].append(f"{precision} decode batch {batch}: {exc!r}")
                print(report["errors"][-1], flush=True)
            torch.cuda.empty_cache()
            save()
        for prompt in [int(p) for p in options.prompts.split(",")]:
            try:
                ids = torch.randint(0, VOCAB, (prompt,), device=dev)

                prefill_step = functools.partial(prefill, layers, precision, ids)

                with torch.no_grad():
                    row = {
                        "precision": precision,
                        "prompt_tokens": prompt,
                        **energy_window(prefill_step, options.seconds),
                    }
                row["prompt_tokens_per_second"] = prompt / row["step_seconds"]
                row["joules_per_prompt_token"] = row["watts"] / row["prompt_tokens_per_second"]
                report["prefill"].append(row)
                print(json.dumps(row), flush=True)
            except Exception as exc:
                report["errors"].append(f"{precision} prefill {prompt}: {exc!r}")
                print(report["errors"][-1], flush=True)
            save()
        layers = []
        torch.cuda.empty_cache()
    idle_e0, idle_t0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle), time.perf_counter()
    time.sleep(3.0)
    report["idle_watts_after"] = (
        (pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) - idle_e0) / 1000 / (time.perf_counter() - idle_t0)
    )
    save()
    pynvml.nvmlShutdown()
    return 0


# --- compare ------------------------------------------------------------------------------------------------
def _compare(options: argparse.Namespace) -> int:
    from wattkeeper.energy.catalog import get_accelerator, model_from_name
    from wattkeeper.energy.model import EnergyModel
    from wattkeeper.energy.types import ServingConfig

    report = json.loads(Path(options.report).read_text())
    model = EnergyModel.default()
    shape = model_from_name(MODEL_NAME, 8.0)
    gpu = "H200" if "H200" in report["gpu"] else "H100" if "H100" in report["gpu"] else report["gpu"]
    acc = get_accelerator(gpu)
    context = float(report["context_tokens"])
    print(
        f"{report['gpu']} (driver {report['driver']}, torch {report['torch']}), enforced limit "
        f"{report['power_limit_watts']:.0f} W; model for {gpu}, {MODEL_NAME}, context {context:.0f}"
    )
    print(
        f"{'decode':8} {'batch':>5} {'step ms':>8} {'model':>8} {'W':>6} {'model':>6} {'mJ/tok':>7} "
        f"{'model':>7} {'J ratio':>7}"
    )
    log_errors: dict[str, list[float]] = {"step": [], "watts": [], "jpt": []}
    for row in report["decode"]:
        config = ServingConfig(row["precision"], 1, max(row["batch"], 1), 8192)
        step = model.decode_step_seconds(shape, acc, config, row["batch"], context)
        watts = model.power_watts(shape, acc, config, row["batch"], 1.0, context)
        jpt = watts * step / row["batch"]
        for key, measured, predicted in (
            ("step", row["step_seconds"], step),
            ("watts", row["watts"], watts),
            ("jpt", row["joules_per_token"], jpt),
        ):
            log_errors[key].append(math.log(predicted / measured))
        print(
            f"{row['precision']:8} {row['batch']:5d} {row['step_seconds'] * 1e3:8.2f} {step * 1e3:8.2f} "
            f"{row['watts']:6.0f} {watts:6.0f} {row['joules_per_token'] * 1e3:7.2f} {jpt * 1e3:7.2f} "
            f"{jpt / row['joules_per_token']:7.2f}"
        )
    for name, values in log_errors.items():
        if values:
            ordered = sorted(abs(v) for v in values)
            print(
                f"decode {name}: median |log(model/measured)| {ordered[len(ordered) // 2]:.2f}, "
                f"max {ordered[-1]:.2f} over {len(values)} points"
            )
    print(f"{'prefill':8} {'tokens':>6} {'ms':>8} {'model':>8} {'W':>6} {'mJ/tok':>7}")
    for row in report["prefill"]:
        config = ServingConfig(row["precision"], 1, 256, max(row["prompt_tokens"], 8192))
        seconds = model.prefill_seconds(shape, acc, config, row["prompt_tokens"])
        print(
            f"{row['precision']:8} {row['prompt_tokens']:6d} {row['step_seconds'] * 1e3:8.2f} {seconds * 1e3:8.2f} "
            f"{row['watts']:6.0f} {row['joules_per_prompt_token'] * 1e3:7.3f}"
        )
    by_batch: dict[int, dict[str, float]] = {}
    for row in report["decode"]:
        by_batch.setdefault(row["batch"], {})[row["precision"]] = row["joules_per_token"]
    pairs = {b: v for b, v in by_batch.items() if {"bf16", "fp8"} <= v.keys()}
    if pairs:
        print(
            "fp8 / bf16 J/token, measured:",
            ", ".join(f"b{b} {v['fp8'] / v['bf16']:.2f}" for b, v in sorted(pairs.items())),
        )
    if report.get("errors"):
        print("errors:", *report["errors"], sep="\n  ")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--out", required=True)
    m.add_argument("--precisions", default="bf16,fp8")
    m.add_argument("--batches", default="1,8,32,64,128,256")
    m.add_argument("--prompts", default="512,2048,8192")
    m.add_argument("--context", type=int, default=1024)
    m.add_argument("--seconds", type=float, default=2.0)
    c = sub.add_parser("compare")
    c.add_argument("report")
    options = parser.parse_args()
    return _measure(options) if options.command == "measure" else _compare(options)


if __name__ == "__main__":
    sys.exit(main())

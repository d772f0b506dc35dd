"""The profiler: its pure parts, and one short sweep against the simulator (the same code the Job runs)."""

from __future__ import annotations

import math

from wattkeeper.api import ProfilePoint
from wattkeeper_runtime.profiler import (
    ProfileTarget,
    SweepConfig,
    histogram_quantile,
    parse_metrics,
    profile,
    server_argv,
    sweep_configs,
)

METRICS = """# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0"} 120.0
# TYPE vllm:inter_token_latency_seconds histogram
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.01"} 50.0
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.02"} 90.0
vllm:inter_token_latency_seconds_bucket{engine="0",le="+Inf"} 100.0
vllm:inter_token_latency_seconds_sum{engine="0"} 1.2
vllm:inter_token_latency_seconds_count{engine="0"} 100.0
# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0",modelName="NVIDIA H100 80GB HBM3",DCGM_FI_DRIVER_VERSION="570.1"} 1000
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="1",modelName="NVIDIA H100 80GB HBM3",DCGM_FI_DRIVER_VERSION="570.1"} 500
"""


def test_parse_metrics_sums_gpus_and_reads_provenance() -> None:
    snap = parse_metrics(METRICS)
    assert snap.generation_tokens == 120 and snap.energy_millijoules == 1500
    assert snap.gpu_model == "NVIDIA H100 80GB HBM3" and snap.driver_version == "570.1"
    assert snap.itl_count == 100 and math.isclose(snap.itl_sum_seconds, 1.2)


def test_histogram_quantile_as_prometheus() -> None:
    buckets = parse_metrics(METRICS).itl_buckets
    assert math.isclose(histogram_quantile(buckets, 0.5) or 0, 0.01)
    assert math.isclose(histogram_quantile(buckets, 0.7) or 0, 0.015)
    assert histogram_quantile(buckets, 0.99) == 0.02  # in the +Inf bucket: its lower bound
    assert histogram_quantile((), 0.5) is None


def test_sweep_always_includes_the_default_limit() -> None:
    configs = sweep_configs({"precisions": ["bf16", "fp8"], "maxNumSeqs": [32, 64], "gpuPowerLimitsWatts": [450]})
    assert len(configs) == 8 and SweepConfig("fp8", 1, 64, 450.0) in configs and SweepConfig("bf16", 1, 32, None) \
        in configs


def test_server_argv_is_the_launchers_and_the_sim_gets_the_limit() -> None:
    target = ProfileTarget("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", "H100", 8.0, False)
    real = server_argv(target, SweepConfig("fp8", 2, 64, 450.0), 8123)
    assert real[:3] == ["vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct"]
    assert "--quantization" in real and "--gpu-power-limit-watts" not in real  # the agent applies it on a GPU
    target.simulate = True
    sim = server_argv(target, SweepConfig("fp8", 2, 64, 450.0), 8123, python="py")
    assert sim[:4] == ["py", "-m", "wattkeeper_runtime.cli", "sim"]
    assert sim[sim.index("--gpu-power-limit-watts") + 1] == "450"


def test_a_short_sweep_against_the_simulator_gives_valid_points() -> None:
    target = ProfileTarget("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", "H100", 8.0,
                           simulate=True, speedup=10.0)
    sweep = {"precisions": ["bf16"], "maxNumSeqs": [32], "gpuPowerLimitsWatts": [400], "concurrencies": [8],
             "shapes": [{"inputTokens": 256, "outputTokens": 64}], "secondsPerPoint": 15}
    patches: list[dict] = []
    points = profile(target, sweep, patches.append, server_timeout_seconds=60)
    assert patches[-1]["phase"] == "Measured" and patches[-1]["provenance"]["energySource"] == "simulated"
    assert len(points) == 2
    parsed = [ProfilePoint.model_validate(p) for p in points]  # what the EnergyProfile status accepts
    default, limited = sorted(parsed, key=lambda p: p.gpu_power_limit_watts or 0)
    assert default.gpu_power_limit_watts is None
    assert limited.gpu_power_limit_watts == 400 and limited.watts <= 400 * 1.02
    assert all(p.batch_size > 1 and p.itl_p50_seconds and p.ttft_p95_seconds for p in parsed)

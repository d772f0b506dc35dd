"""The energy model: catalog, physics-shaped behaviour, consistency between predict() and the step methods."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from wattkeeper.energy.catalog import ACCELERATORS, get_accelerator, get_precision, model_from_name
from wattkeeper.energy.datasets import shared_data_dir
from wattkeeper.energy.model import Coefficients, EnergyModel, build_features, load_default_coefficients
from wattkeeper.energy.types import ServingConfig, Workload

H100 = get_accelerator("H100")
LLAMA_8B = model_from_name("meta-llama/Llama-3.1-8B-Instruct", 8.0)
LLAMA_70B = model_from_name("meta-llama/Llama-3.1-70B-Instruct", 70.0)
QWEN_235B = model_from_name("Qwen/Qwen3-235B-A22B", 235.0, 22.0, "MoE")


@pytest.fixture(scope="module")
def em() -> EnergyModel:
    return EnergyModel.default()


def test_catalog_has_the_required_accelerators() -> None:
    for name in ("H100", "H200", "B200", "A100", "L40S"):
        acc = get_accelerator(name.lower())
        assert acc.name == name
        assert 0 < acc.idle_watts < acc.power_limit_watts
        assert acc.memory_bytes > 40e9 and acc.memory_bandwidth_bytes_per_second > 5e11
    assert set(ACCELERATORS) >= {"H100", "H200", "B200", "A100", "L40S"}


def test_unknown_accelerator_and_precision_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown accelerator 'TPU'"):
        get_accelerator("TPU")
    with pytest.raises(ValueError, match="unknown precision"):
        get_precision("int3")
    assert get_precision("bfloat16").name == "bf16"


def test_committed_coefficients_load_and_round_trip() -> None:
    c = load_default_coefficients()
    assert c.metadata["rows"] == 485
    again = Coefficients.from_json(c.to_json())
    assert again.values == pytest.approx(c.values)
    with pytest.raises(ValueError, match="schema"):
        Coefficients.from_json('{"schema_version": 99, "values": {}, "all_reduce_tables": {}}')


def test_power_lies_between_idle_and_limit_and_saturates(em: EnergyModel) -> None:
    cfg = ServingConfig("bf16", 1, 1024)
    assert em.power_watts(LLAMA_8B, H100, cfg, 0) == pytest.approx(H100.idle_watts)
    watts = [em.power_watts(LLAMA_8B, H100, cfg, b) for b in (1, 8, 64, 256, 1024)]
    assert all(H100.idle_watts < w <= H100.power_limit_watts for w in watts)
    assert watts == sorted(watts)
    # Near the limit the curve flattens: the last doubling adds less than the first ones.
    assert watts[-1] - watts[-2] < watts[2] - watts[1]
    half = em.power_watts(LLAMA_8B, H100, cfg, 64, busy_fraction=0.5)
    assert half == pytest.approx(0.5 * watts[2] + 0.5 * H100.idle_watts)


def test_batching_cuts_energy_per_token_steeply(em: EnergyModel) -> None:
    small = em.predict(LLAMA_8B, H100, ServingConfig("bf16", 1, 8))
    large = em.predict(LLAMA_8B, H100, ServingConfig("bf16", 1, 512))
    assert large.joules_per_token < small.joules_per_token / 3
    assert large.watts > small.watts
    assert large.itl_p50_seconds > small.itl_p50_seconds


def test_fp8_loses_at_small_batch_and_wins_at_large() -> None:
    """ML.ENERGY, Qwen3-235B on 8xH100: fp8 costs more per token at batch 8 and less at batch 128 and above."""
    em = EnergyModel.default()
    wl = Workload(math.inf, 300, 8000)

    def jpt(precision: str, batch: int) -> float:
        return em.predict(QWEN_235B, H100, ServingConfig(precision, 8, batch), wl).joules_per_token

    assert jpt("fp8", 8) > jpt("bf16", 8)
    assert jpt("fp8", 256) < jpt("bf16", 256)


def test_weight_only_quantization_can_cost_more_per_decoded_token(em: EnergyModel) -> None:
    cfg = {p: ServingConfig(p, 1, 256) for p in ("bf16", "int8", "int4-awq")}
    bf16 = em.predict(LLAMA_8B, H100, cfg["bf16"]).joules_per_token
    assert em.predict(LLAMA_8B, H100, cfg["int8"]).joules_per_token > bf16
    assert em.predict(LLAMA_8B, H100, cfg["int4-awq"]).joules_per_token > bf16
    # ...while its smaller weights leave far more room for KV cache.
    assert em.kv_cache_capacity_tokens(LLAMA_70B, H100, ServingConfig("int4-awq", 1)) > 0


def test_memory_fit(em: EnergyModel) -> None:
    assert not em.fits(LLAMA_70B, H100, ServingConfig("bf16", 1))
    assert em.fits(LLAMA_70B, H100, ServingConfig("bf16", 2))
    assert em.fits(LLAMA_70B, H100, ServingConfig("fp8", 1))
    assert em.weights_bytes(LLAMA_70B, ServingConfig("bf16")) == pytest.approx(140e9)
    p = em.predict(LLAMA_70B, H100, ServingConfig("bf16", 1))
    assert not p.fits_memory and p.kv_cache_tokens == 0
    assert em.kv_cache_capacity_tokens(LLAMA_8B, H100, ServingConfig("bf16", 2)) > 2 * em.kv_cache_capacity_tokens(
        LLAMA_8B, H100, ServingConfig("bf16", 1)
    )


def test_tensor_parallel_pays_all_reduce(em: EnergyModel) -> None:
    f = em.features(LLAMA_70B, H100, ServingConfig("bf16", 4))
    comm = em.evaluator._comm_seconds(f, np.array([64.0]))
    assert comm[0] > 0
    f1 = em.features(LLAMA_8B, H100, ServingConfig("bf16", 1))
    assert em.evaluator._comm_seconds(f1, np.array([64.0]))[0] == 0
    # TP buys latency at the price of more GPUs.
    tp2 = em.predict(LLAMA_70B, H100, ServingConfig("bf16", 2, 64))
    tp8 = em.predict(LLAMA_70B, H100, ServingConfig("bf16", 8, 64))
    assert tp8.itl_p50_seconds < tp2.itl_p50_seconds


def test_step_methods_are_consistent_with_predict(em: EnergyModel) -> None:
    cfg = ServingConfig("bf16", 1, 64)
    wl = Workload(math.inf, 1000, 500)
    p = em.predict(LLAMA_8B, H100, cfg, wl)
    step = em.decode_step_seconds(
        LLAMA_8B, H100, cfg, p.batch_size, 1000 + 250, prompt_tokens=p.batch_size * 2, prompt_length=1000
    )
    assert p.output_tokens_per_second == pytest.approx(p.batch_size / step, rel=1e-6)
    assert em.prefill_seconds(LLAMA_8B, H100, cfg, 4000) > em.prefill_seconds(LLAMA_8B, H100, cfg, 500)
    assert em.decode_step_seconds(LLAMA_8B, H100, cfg, 128, 1000) > em.decode_step_seconds(LLAMA_8B, H100, cfg, 8, 1000)


def test_prediction_under_load(em: EnergyModel) -> None:
    cfg = ServingConfig("bf16", 1, 256)
    light = em.predict(LLAMA_8B, H100, cfg, Workload(0.5, 1024, 256))
    heavy = em.predict(LLAMA_8B, H100, cfg, Workload(8.0, 1024, 256))
    assert light.output_tokens_per_second == pytest.approx(128.0)
    assert heavy.batch_size > light.batch_size
    assert heavy.joules_per_token < light.joules_per_token
    assert light.utilisation < heavy.utilisation < 1.0
    assert H100.idle_watts < light.watts < heavy.watts
    overload = em.predict(LLAMA_8B, H100, cfg, Workload(500.0, 1024, 256))
    assert overload.utilisation > 1.0 and math.isinf(overload.ttft_p95_seconds)


def test_power_limit_lowers_power_and_slows(em: EnergyModel) -> None:
    free = em.predict(LLAMA_8B, H100, ServingConfig("bf16", 1, 512))
    capped = em.predict(LLAMA_8B, H100, ServingConfig("bf16", 1, 512, gpu_power_limit_watts=400))
    assert capped.watts <= 400 + 1e-6 < free.watts
    assert capped.output_tokens_per_second < free.output_tokens_per_second


def test_profile_points_override_the_model_where_measured(em: EnergyModel) -> None:
    from wattkeeper.api.profile import ProfilePoint

    points = [
        ProfilePoint(
            precision="bf16",
            tensor_parallel=1,
            max_num_seqs=b,
            batch_size=b,
            output_tokens_per_second=tps,
            watts=w,
            joules_per_token=w / tps,
            itl_p50_seconds=b / tps,
            itl_p90_seconds=1.2 * b / tps,
        )
        for b, tps, w in ((8, 900.0, 430.0), (64, 4300.0, 515.0), (256, 7700.0, 633.0))
    ]
    p = em.predict(LLAMA_8B, H100, ServingConfig("bf16", 1, 64), profile=points)
    assert p.source == "profile"
    assert p.watts == pytest.approx(515.0, rel=0.05)
    other = em.predict(LLAMA_8B, H100, ServingConfig("fp8", 1, 64), profile=points)
    assert other.source == "model"


def test_shared_data_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WATTKEEPER_DATA_DIR", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.setenv("WATTKEEPER_DATA_DIR", str(tmp_path / "missing"))
    assert shared_data_dir() is None


def test_step_seconds_is_the_steps_own_figure(em: EnergyModel) -> None:
    """Evaluator.step_seconds (the latency model's path: row-only parts cached, watts only where a power limit can
    cap) gives step().step_seconds bit for bit, dense and MoE, with and without limits."""
    ev = em.evaluator
    for model in (LLAMA_70B, QWEN_235B):
        rows = [(model, H100, ServingConfig("bf16" if p == 0 else "fp8", tp, gpu_power_limit_watts=limit))
                for p in (0, 1) for tp in (1, 2, 4, 8) for limit in (None, 350.0, 490.0)]
        f = build_features(rows, em.coefficients)
        rng = np.random.default_rng(3)
        for _ in range(3):
            batch = rng.uniform(0.0, 300.0, len(f))
            context = rng.uniform(100.0, 8000.0, len(f))
            prompt = rng.choice([0.0, 16.0, 700.0, 8192.0], len(f))
            length = np.maximum(prompt, 1.0)
            plain = ev.step(f, batch, context, prompt, length).step_seconds
            fast = ev.step_seconds(f, batch, context, prompt, length)
            assert np.array_equal(plain, fast)

"""Verify before rollout, the learned latency margin, and the planner's opt-in latency features."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from wattkeeper.energy.catalog import get_accelerator, model_from_name
from wattkeeper.energy.latency import TokenDistribution
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import ServingConfig, Workload
from wattkeeper.planner import PlanRequest, plan
from wattkeeper.planner.load import ArrivalSample
from wattkeeper.planner.verify import (
    MARGIN_MAX,
    MARGIN_MIN,
    LatencyMargin,
    choose_verified,
    replay,
    update_margin,
)

LLAMA_8B = model_from_name("meta-llama/Llama-3.1-8B-Instruct", 8.0)
LLAMA_70B = model_from_name("meta-llama/Llama-3.1-70B-Instruct", 70.0)


def poisson_sample(rate: float, seconds: float, prompt: float = 1000, output: float = 200, seed: int = 4):
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate * seconds)
    t = np.sort(rng.uniform(0, seconds, n))
    p = np.maximum(rng.lognormal(np.log(prompt) - 0.5, 1.0, n), 1).astype(int)
    o = np.maximum(rng.lognormal(np.log(output) - 0.32, 0.8, n), 1).astype(int)
    return ArrivalSample.from_arrays(t, p, o)


# --- margin ---------------------------------------------------------------------------------------------------


def test_margin_learns_the_measured_ratio() -> None:
    m = LatencyMargin()
    assert m.ttft_factor() == 1.0 and m.itl_factor() == 1.0
    m = update_margin(m, 1.0, 1.5, 0.05, 0.05)
    assert m.ttft_samples == 1 and m.ttft_factor(spread=0.0) == pytest.approx(1.5)
    assert m.itl_factor(spread=0.0) == pytest.approx(1.0)
    for _ in range(30):
        m = update_margin(m, 1.0, 1.5, 0.05, 0.05)
    assert m.ttft_factor(spread=0.0) == pytest.approx(1.5, rel=1e-6)
    assert m.ttft_log_variance == pytest.approx(0.0, abs=1e-9)


def test_margin_spread_adds_safety_and_is_bounded() -> None:
    m = LatencyMargin()
    for measured in (1.0, 2.0) * 10:
        m = update_margin(m, 1.0, measured, None, None)
    assert m.ttft_factor(spread=1.0) > m.ttft_factor(spread=0.0) > 1.0
    big = LatencyMargin()
    for _ in range(5):
        big = update_margin(big, 0.1, 10.0, 1.0, 0.01)
    assert big.ttft_factor() == MARGIN_MAX and big.itl_factor() == MARGIN_MIN


def test_margin_ignores_missing_or_broken_figures() -> None:
    m = LatencyMargin()
    for args in ((None, 1.0, 0.1, None), (0.0, 1.0, math.nan, 0.1), (1.0, math.inf, -1.0, 0.1)):
        assert update_margin(m, *args) == m
    with pytest.raises(ValueError):
        update_margin(m, 1.0, 1.0, 1.0, 1.0, weight=0.0)


# --- replay ---------------------------------------------------------------------------------------------------


def test_replay_separates_enough_from_too_few_replicas() -> None:
    config = ServingConfig("bf16", 4, 256, 8192)
    sample = poisson_sample(16.0, 60.0)
    enough = replay(LLAMA_70B, "H100", config, 4, sample, 2.0, 0.1)
    too_few = replay(LLAMA_70B, "H100", config, 1, sample, 2.0, 0.1)
    assert enough.within_share >= 0.99
    assert too_few.within_share < enough.within_share
    # A margin of 3x on TTFT makes the same replay stricter.
    strict = replay(LLAMA_70B, "H100", config, 4, sample, 2.0, 0.1, ttft_margin=50.0)
    assert strict.ttft_share < enough.ttft_share
    with pytest.raises(ValueError):
        replay(LLAMA_70B, "H100", config, 0, sample, 2.0, 0.1)


def test_choose_verified_takes_the_cheapest_that_passes() -> None:
    base = PlanRequest(model=LLAMA_70B, accelerator="H100", workload=Workload(16.0, 1000, 200))
    result = plan(base)
    assert result.chosen is not None
    c = replace(result.chosen, config=ServingConfig("bf16", 4, 256, 8192))
    cheap = replace(c, replicas=1, total_watts=1.0)
    fine = replace(c, replicas=4, total_watts=2.0)
    request = replace(base, replay=poisson_sample(16.0, 60.0))
    winner, outcomes = choose_verified([fine, cheap], request)
    assert winner is fine
    assert [o.replicas for o in outcomes] == [1, 4]  # cheapest tried first, stops at the first pass
    assert choose_verified([fine], base) == (None, [])


# --- the planner's opt-ins ------------------------------------------------------------------------------------


def test_defaults_keep_the_steady_model() -> None:
    a = plan(PlanRequest(model=LLAMA_70B, accelerator="H100", workload=Workload(5.0, 1155, 211)))
    b = plan(
        PlanRequest(
            model=LLAMA_70B,
            accelerator="H100",
            workload=Workload(5.0, 1155, 211),
            latency_model="steady",
            slo_basis="p95",
        )
    )
    assert a.to_dict() == b.to_dict()
    assert a.chosen is not None and a.chosen.predicted_within_share is None
    assert not a.verification and not a.alternatives


def queued_request(**kw: object) -> PlanRequest:
    base = PlanRequest(
        model=LLAMA_70B,
        accelerator="H100",
        workload=Workload(5.0, 1155, 211),
        allowed_precisions=("bf16", "fp8"),
        latency_model="queued",
        tokens=TokenDistribution.from_means(1155, 211),
        slo_basis="requests",
        chunk_budget_within_itl=True,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_queued_plan_meets_the_request_share_and_the_chunk_rule() -> None:
    result = plan(queued_request())
    assert result.feasible and result.chosen is not None
    c = result.chosen
    assert c.predicted_within_share is not None and c.predicted_within_share >= 0.99
    assert c.config.max_num_batched_tokens in (512, 1024, 2048, 4096, 8192, 16384)
    # The step carrying a full chunk beside the planned batch stays within the ITL SLO.
    em = EnergyModel.default()
    f = em.features(LLAMA_70B, get_accelerator("H100"), c.config)
    r = em.evaluator.under_load_queued(f, np.array([5.0 / c.replicas]), TokenDistribution.from_means(1155, 211))
    assert r["chunk_step_seconds"][0] <= 0.1


def test_a_larger_margin_or_longer_prompts_cost_more() -> None:
    plain = plan(queued_request())
    careful = plan(queued_request(ttft_margin=3.0, itl_margin=1.3))
    longer = plan(queued_request(tokens=TokenDistribution.from_means(4000, 211)))
    assert plain.chosen is not None and careful.chosen is not None and longer.chosen is not None
    assert careful.chosen.total_watts >= plain.chosen.total_watts
    assert longer.chosen.total_watts >= plain.chosen.total_watts


def test_bursts_cost_more_than_a_smooth_stream() -> None:
    smooth = plan(queued_request(workload=Workload(8.0, 1155, 211)))
    bursty = plan(queued_request(workload=Workload(8.0, 1155, 211), rate_levels=((0.4, 2 / 3), (2.2, 1 / 3))))
    assert smooth.chosen is not None and bursty.chosen is not None
    assert bursty.chosen.total_watts > smooth.chosen.total_watts


def test_plan_with_replay_records_the_verification() -> None:
    result = plan(queued_request(replay=poisson_sample(5.0, 60.0, 1155, 211)))
    assert result.chosen is not None and result.verification
    assert "replay" in result.reason
    assert result.to_dict()["verification"][0]["requests"] > 0


def test_bad_opt_ins_are_refused() -> None:
    with pytest.raises(ValueError):
        plan(queued_request(request_share=1.0))
    with pytest.raises(ValueError):
        plan(queued_request(ttft_margin=0.0))
    with pytest.raises(ValueError):
        plan(queued_request(latency_model="steady"))  # slo_basis "requests" needs the queued model


def test_relaxed_verification_may_replay_cheaper_plans_the_model_doubts() -> None:
    sample = poisson_sample(5.0, 60.0, 1155, 211)
    strict = plan(queued_request(replay=sample))
    relaxed = plan(queued_request(replay=sample, verify_relaxed_share=0.9))
    assert strict.chosen is not None and relaxed.chosen is not None
    # Never dearer than the strict choice: it only adds cheaper candidates to the replay.
    assert relaxed.chosen.total_watts <= strict.chosen.total_watts + 1e-6
    assert relaxed.verification and relaxed.verification[-1].within_share >= 0.99

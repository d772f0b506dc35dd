"""Property tests (hypothesis) of issue 11's pure functions: the queued latency model, the load estimate, the
latency margin, and the planner with the queued model."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from wattkeeper.energy.catalog import get_accelerator, model_from_name
from wattkeeper.energy.latency import TokenDistribution
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import ServingConfig, Workload
from wattkeeper.planner import PlanRequest, estimate_load, plan
from wattkeeper.planner.verify import MARGIN_MAX, MARGIN_MIN, LatencyMargin, update_margin

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
LLAMA_70B = model_from_name("meta-llama/Llama-3.1-70B-Instruct", 70.0)
CONFIGS = [
    ServingConfig("bf16", 4, 256, 8192),
    ServingConfig("fp8", 2, 128, 2048),
    ServingConfig("fp8", 4, 256, 512),
]


def queued(config: ServingConfig, rate: float, tokens: TokenDistribution, dispersion: float = 1.0):
    em = EnergyModel.default()
    f = em.features(LLAMA_70B, get_accelerator("H100"), config)
    return em.evaluator.under_load_queued(
        f, np.array([rate]), tokens, arrival_dispersion=dispersion, thresholds=(2.0, 0.1)
    )


@SETTINGS
@given(
    st.sampled_from(CONFIGS),
    st.floats(0.05, 3.0),
    st.floats(1.1, 2.0),
    st.floats(100, 4000),
    st.floats(10, 1000),
)
def test_more_load_never_lowers_ttft_or_the_miss_share(
    config: ServingConfig, rate: float, factor: float, prompt: float, output: float
) -> None:
    tokens = TokenDistribution.from_means(prompt, output)
    low, high = queued(config, rate, tokens), queued(config, rate * factor, tokens)
    assert high["ttft_p95"][0] >= low["ttft_p95"][0] * 0.98
    assert high["ttft_miss_share"][0] >= low["ttft_miss_share"][0] - 1e-3
    assert high["utilisation"][0] >= low["utilisation"][0]
    for r in (low, high):
        assert r["itl_p50"][0] <= r["itl_p90"][0] + 1e-12 <= r["itl_p95"][0] + 2e-12
        assert 0.0 <= r["chunk_gap_share"][0] <= 1.0


@SETTINGS
@given(st.sampled_from(CONFIGS), st.floats(0.05, 2.0), st.floats(1.0, 20.0))
def test_grouped_arrivals_never_wait_less(config: ServingConfig, rate: float, dispersion: float) -> None:
    tokens = TokenDistribution.from_means(1155, 211)
    grouped, poisson = queued(config, rate, tokens, dispersion), queued(config, rate, tokens)
    # (1% slack: the batch spread moves the residual step a little either way.)
    assert grouped["ttft_p95"][0] >= poisson["ttft_p95"][0] * 0.99
    assert grouped["ttft_miss_share"][0] >= poisson["ttft_miss_share"][0] - 1e-3


@SETTINGS
@given(
    st.lists(st.integers(0, 40), min_size=30, max_size=900),
    st.floats(0.0, 300.0),
)
def test_the_planned_rate_covers_the_bursts_and_the_mean(counts: list[int], lead_s: float) -> None:
    est = estimate_load(counts, 1.0, lead_seconds=lead_s)
    assert est.requests_per_second >= est.burst_rate >= 0.0
    assert est.queued_rate >= est.mean_rate - 1e-9
    assert est.forecast_rise >= 0.0 and est.arrival_dispersion >= 1.0
    assert math.isclose(sum(w for _, w in est.rate_levels), 1.0, rel_tol=1e-9)


@SETTINGS
@given(st.lists(st.tuples(st.floats(1e-3, 10.0), st.floats(1e-3, 10.0)), min_size=1, max_size=30))
def test_margin_factors_stay_bounded(pairs: list[tuple[float, float]]) -> None:
    m = LatencyMargin()
    for predicted, measured in pairs:
        m = update_margin(m, predicted, measured, predicted, measured)
    for factor in (m.ttft_factor(), m.itl_factor(), m.ttft_factor(0.0)):
        assert MARGIN_MIN <= factor <= MARGIN_MAX
    assert m.ttft_samples == len(pairs) and m.ttft_log_variance >= 0.0


@settings(max_examples=8, deadline=None, derandomize=True)
@given(st.floats(1.0, 12.0), st.floats(1.0, 3.0))
def test_queued_plans_never_get_cheaper_with_more_load_or_margin(rps: float, margin: float) -> None:
    base = PlanRequest(
        model=LLAMA_70B,
        accelerator="H100",
        workload=Workload(rps, 1155, 211),
        allowed_precisions=("bf16", "fp8"),
        latency_model="queued",
        slo_basis="requests",
        chunk_budget_within_itl=True,
    )
    plain = plan(base)
    careful = plan(replace(base, ttft_margin=margin, itl_margin=margin))
    busier = plan(replace(base, workload=Workload(rps * 1.5, 1155, 211)))
    assert plain.chosen is not None and careful.chosen is not None and busier.chosen is not None
    if plain.feasible and careful.feasible:
        assert careful.chosen.total_watts >= plain.chosen.total_watts * (1 - 0.006)
    if plain.feasible and busier.feasible:
        assert busier.chosen.total_watts >= plain.chosen.total_watts * (1 - 0.006)

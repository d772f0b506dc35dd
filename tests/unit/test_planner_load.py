"""Burst-aware load estimate (planner/load.py): pure functions from counts and token samples."""

from __future__ import annotations

import numpy as np
import pytest
from wattkeeper.planner.load import (
    ArrivalSample,
    counts_from_counter,
    estimate_load,
    linear_trend,
    rate_levels,
    window_rates,
)


def test_steady_poisson_plans_near_the_mean() -> None:
    rng = np.random.default_rng(1)
    counts = rng.poisson(5.0, 600)  # 1-s bins, 5 req/s
    est = estimate_load(counts, 1.0)
    assert est.mean_rate == pytest.approx(5.0, rel=0.05)
    # The p95 of 10-s rates of a Poisson stream sits a little above the mean (noise, no bursts).
    assert 5.0 < est.burst_rate < 6.5
    assert est.forecast_rise == pytest.approx(0.0, abs=0.3)
    assert est.requests_per_second >= est.burst_rate
    assert est.tokens is None and est.mean_prompt_tokens is None
    assert est.arrival_dispersion < 1.6  # Poisson: about 1


def test_bursts_raise_the_planned_rate_above_the_minute_mean() -> None:
    # 10 s at 15 req/s, then 20 s at 2.5 req/s: a minute mean of ~6.7, bursts at 15.
    pattern = np.concatenate([np.full(10, 15.0), np.full(20, 2.5)])
    counts = np.tile(pattern, 20)
    est = estimate_load(counts, 1.0)
    assert est.mean_rate == pytest.approx(6.67, rel=0.02)
    assert est.burst_rate >= 13.0  # sliding 10-s windows: only some sit wholly inside a burst
    # The 10-s counts vary far beyond Poisson around their local (70-s) mean: the latency model takes that as
    # grouped arrivals; the rate levels keep only the variance the dispersion does not explain, averaging to 1.
    assert est.arrival_dispersion > 10.0
    assert sum(a * w for a, w in est.rate_levels) == pytest.approx(1.0, rel=1e-6)
    # Levels against Poisson chance alone (dispersion 1) keep the bursts.
    levels = rate_levels(counts, 1.0)
    assert sum(w for _, w in levels) == pytest.approx(1.0)
    assert sum(a * w for a, w in levels) == pytest.approx(1.0, rel=1e-6)  # factors average to the mean
    assert max(a for a, _ in levels) > 1.8


def test_a_rising_trend_is_planned_one_lead_time_ahead() -> None:
    t = np.arange(600)
    counts = 2.0 + t / 100.0  # +0.01 req/s per second
    est = estimate_load(counts, 1.0, lead_seconds=80.0)
    assert est.trend_per_second == pytest.approx(0.01, rel=0.1)
    assert est.forecast_rise == pytest.approx(0.8, rel=0.1)
    assert est.requests_per_second == pytest.approx(max(est.burst_rate, est.recent_rate) + est.forecast_rise)
    falling = estimate_load(counts[::-1], 1.0, lead_seconds=80.0)
    assert falling.forecast_rise == 0.0  # a fall is not planned for before it happens
    assert est.growth_factor > 1.0 and falling.growth_factor == 1.0


def test_token_distributions_come_with_enough_samples() -> None:
    rng = np.random.default_rng(2)
    prompts = rng.lognormal(6.5, 1.0, 500)
    outputs = rng.lognormal(5.0, 0.7, 500)
    est = estimate_load(np.full(60, 3.0), 1.0, prompts, outputs)
    assert est.tokens is not None
    assert est.tokens.prompt_tokens[-1] > 3 * est.tokens.prompt_tokens[0]  # the spread is kept, not the mean
    assert est.mean_prompt_tokens == pytest.approx(float(np.mean(prompts)))
    thin = estimate_load(np.full(60, 3.0), 1.0, prompts[:5], outputs[:5])
    assert thin.tokens is None and thin.mean_prompt_tokens is not None
    with pytest.raises(ValueError):
        estimate_load(np.full(60, 3.0), 1.0, prompts[:5], outputs[:4])


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        estimate_load([1, 2, 3], 0.0)
    with pytest.raises(ValueError):
        estimate_load([1, -2, 3], 1.0)
    with pytest.raises(ValueError):
        estimate_load([1, 2, 3], 1.0, burst_quantile=0.0)
    with pytest.raises(ValueError):
        counts_from_counter([0.0, 1.0, 1.0], [0, 1, 2], 1.0)
    with pytest.raises(ValueError):
        ArrivalSample((1.0, 0.5), (1, 1), (1, 1))
    with pytest.raises(ValueError):
        ArrivalSample((0.5,), (1, 1), (1,))


def test_counter_samples_become_counts_through_resets() -> None:
    # A counter sampled every 2 s at 3 req/s, reset to 0 at t=10 (a pod restart) and counting on.
    times = np.arange(0.0, 21.0, 2.0)
    totals = [0, 6, 12, 18, 24, 30, 6, 12, 18, 24, 30]
    counts = counts_from_counter(times, totals, 1.0)
    assert counts.size == 20
    assert counts.sum() == pytest.approx(60.0)
    assert np.allclose(counts, 3.0)


def test_window_rates_rate_levels_and_trend_helpers() -> None:
    assert window_rates([], 1.0).size == 0
    assert window_rates([2, 2, 2], 1.0, 10.0)[0] == pytest.approx(2.0)
    rates = window_rates(np.arange(20), 1.0, 10.0)
    assert rates.size == 11 and rates[0] == pytest.approx(4.5)
    assert rate_levels([1, 1, 1], 1.0) == ((1.0, 1.0),)
    assert linear_trend([1, 2], 1.0) == 0.0
    # Shrunk by standard errors of the fit: nothing left of a slope within the scatter, or with three points.
    assert linear_trend([1, 2, 3], 1.0, confidence=1.0) == 0.0
    assert linear_trend([3, 1, 4, 1, 5, 2, 3], 1.0, confidence=1.0) == 0.0
    line = np.arange(60, dtype=float)  # six 10-s buckets on a line: no scatter, nothing shrunk
    assert linear_trend(line, 1.0, confidence=1.0) == pytest.approx(linear_trend(line, 1.0))


def test_arrival_sample_sorts_and_measures() -> None:
    s = ArrivalSample.from_arrays([3.0, 1.0, 2.0], [30, 10, 20], [3, 1, 2])
    assert s.arrival_s == (1.0, 2.0, 3.0) and s.prompt_tokens == (10, 20, 30)
    assert len(s) == 3 and s.duration_s == 2.0


def test_slow_swings_are_the_level_not_grouping() -> None:
    # Poisson at a rate that swings slowly (+-50% over 10 minutes): no grouping, the swing shows as levels.
    rng = np.random.default_rng(3)
    t = np.arange(600)
    counts = rng.poisson(5.0 * (1.0 + 0.5 * np.sin(2 * np.pi * t / 600.0)))
    est = estimate_load(counts, 1.0)
    assert est.arrival_dispersion < 1.6
    assert max(a for a, _ in est.rate_levels) > 1.2
    # The current level is where the swing stands now, not the 10-minute mean.
    assert est.level_rate == pytest.approx(float(counts[-120:].mean()))


def test_a_histogram_expands_into_its_quantiles() -> None:
    """As histogram_quantile reads it: linear within a bucket, the first from 0, +Inf at the largest bound."""
    from wattkeeper.planner.load import sample_from_histogram, token_sample_from_histograms

    bounds = [100.0, 1000.0, float("inf")]
    assert sample_from_histogram(bounds, [0.0, 0.0, 0.0]) == ()
    even = sample_from_histogram(bounds, [0.0, 10.0, 10.0], size=10)
    assert even == pytest.approx([145.0 + 90.0 * k for k in range(10)])  # all in (100, 1000]
    top = sample_from_histogram(bounds, [5.0, 5.0, 10.0], size=4)
    assert top[:2] == pytest.approx([25.0, 75.0]) and top[2:] == (1000.0, 1000.0)
    prompts, outputs = token_sample_from_histograms((bounds, [0.0, 10.0, 10.0]), (bounds, [10.0, 10.0, 10.0]), 10)
    assert len(prompts) == len(outputs) == 10 and sorted(outputs) == pytest.approx([5.0 + 10.0 * k for k in range(10)])
    assert list(outputs) != sorted(outputs)  # no pairing kept: not sorted beside sorted prompts
    assert token_sample_from_histograms((bounds, [0.0] * 3), (bounds, [1.0] * 3)) == ((), ())

"""Verify before rollout in the control core (issue 11 item 3): arrivals synthesised from the telemetry's counts
and token samples, and the tick's search replaying its cheapest candidates on them."""

from __future__ import annotations

from dataclasses import replace

import pytest
from wattkeeper.control import FleetState, Memory, Signals, TickInputs, Tuning
from wattkeeper.control.load import estimate_load
from wattkeeper.control.tick import replay_sample, search, tick_request
from wattkeeper.planner.load import synthesised_sample

from tests.unit.test_control_bursts import BASE, EM, INTENT, bursty_counts

PROMPTS = tuple(float(x) for x in (800, 1200, 400, 1600))
OUTPUTS = tuple(float(x) for x in (200, 300, 100, 50))


def test_counts_are_kept_per_bin_and_spread_within_it() -> None:
    counts = (3.0, 0.0, 7.0, 1.0)
    sample = synthesised_sample(counts, 15.0, PROMPTS, OUTPUTS)
    assert sample is not None and len(sample) == 11
    per_bin = [sum(1 for t in sample.arrival_s if 15.0 * b <= t < 15.0 * (b + 1)) for b in range(4)]
    assert per_bin == [3, 0, 7, 1]
    assert sample.arrival_s[:3] == pytest.approx((2.5, 7.5, 12.5))  # evenly spaced within the bin


def test_fractional_counts_keep_the_total() -> None:
    counts = (0.4, 0.4, 0.4, 2.6, 1.2)
    sample = synthesised_sample(counts, 15.0, PROMPTS, OUTPUTS)
    assert sample is not None and len(sample) == round(sum(counts))


def test_the_sample_is_deterministic_and_pairs_tokens_in_order() -> None:
    counts = bursty_counts()
    a = synthesised_sample(counts, 15.0, PROMPTS, OUTPUTS)
    b = synthesised_sample(counts, 15.0, PROMPTS, OUTPUTS)
    assert a is not None and a == b and hash(a) == hash(b)
    pairs = {(int(p), int(o)) for p, o in zip(PROMPTS, OUTPUTS, strict=True)}
    assert set(zip(a.prompt_tokens, a.output_tokens, strict=True)) == pairs
    assert a.prompt_tokens[:4] == (800, 1200, 400, 1600)


def test_only_recent_bins_are_kept() -> None:
    sample = synthesised_sample((1.0,) * 40, 15.0, PROMPTS, OUTPUTS, max_seconds=60.0)
    assert sample is not None and len(sample) == 4


@pytest.mark.parametrize("counts, prompts", [((), PROMPTS), ((0.0, 0.0), PROMPTS), ((3.0,), ())])
def test_nothing_to_replay(counts: tuple[float, ...], prompts: tuple[float, ...]) -> None:
    assert synthesised_sample(counts, 15.0, prompts, OUTPUTS) is None


def signals_with_arrivals() -> Signals:
    return replace(BASE, arrival_counts=bursty_counts(), arrival_resolution_seconds=15.0,
                   prompt_tokens_sample=tuple([800.0, 1200.0] * 20),
                   output_tokens_sample=tuple([200.0, 300.0] * 20))


def test_the_tick_verifies_by_replay_where_telemetry_carries_arrivals() -> None:
    memory, signals = Memory(), signals_with_arrivals()
    load = estimate_load(INTENT, memory, signals, 100.0)
    inputs = TickInputs(INTENT, memory, signals, FleetState(), now_s=100.0, tuning=Tuning(verify_by_replay=True))
    request = tick_request(inputs, memory, load, None)
    assert request.replay is not None and request.replay == replay_sample(signals)
    assert len(request.replay) == round(sum(bursty_counts()[-20:]))
    _, chosen, result = search(inputs, memory, load, None, EM)
    assert chosen is not None and result is not None and result.verification
    # Off by the setting, or without counts (cold start, spec load): the model alone, as before.
    off = tick_request(replace(inputs, tuning=Tuning(verify_by_replay=False)), memory, load, None)
    assert off.replay is None
    assert tick_request(replace(inputs, tuning=Tuning()), memory, load, None).replay is None  # off by default
    cold = replace(inputs, signals=BASE)
    assert tick_request(cold, memory, estimate_load(INTENT, memory, BASE, 100.0), None).replay is None


def test_the_operator_setting_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from wattkeeper.controller.settings import OperatorSettings

    monkeypatch.delenv("WATTKEEPER_VERIFY_BY_REPLAY", raising=False)
    assert OperatorSettings().verify_by_replay is False and Tuning().verify_by_replay is False
    monkeypatch.setenv("WATTKEEPER_VERIFY_BY_REPLAY", "true")
    assert OperatorSettings().verify_by_replay is True

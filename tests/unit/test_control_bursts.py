"""Plan for what is scored (issue 11 items 1 and 4) in the control core: burst-aware load where telemetry carries
it (and today's load where it does not), the queued model at 99% of requests by default, the learned margin."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from wattkeeper.bench.fleet import Observation
from wattkeeper.bench.groundtruth import model_shape
from wattkeeper.bench.trace import Trace
from wattkeeper.bench.wattkeeper_policy import recent_arrivals, recent_telemetry
from wattkeeper.control import FleetState, Memory, Plan, ServiceIntent, Signals, TickInputs, Tuning
from wattkeeper.control.corrections import latency_correction
from wattkeeper.control.load import estimate_load
from wattkeeper.control.planning import evaluate
from wattkeeper.control.tick import tick_request
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import ServingConfig, Workload

EM = EnergyModel.default()
INTENT = ServiceIntent(model=model_shape("meta-llama/Llama-3.1-70B-Instruct"), accelerator="H100",
                       allowed_precisions=("bf16", "fp8"), slo_ttft_p95_seconds=2.0, slo_itl_p95_seconds=0.1)
BASE = Signals(window_seconds=60.0, watts=3000.0, finished_requests_per_second=5.0, waiting_requests=0.0,
               mean_input_tokens=1000.0, mean_output_tokens=250.0, ttft_p95_seconds=0.4, itl_p95_seconds=0.06)


def bursty_counts(seed: int = 1) -> tuple[float, ...]:
    """Ten minutes at 15-s resolution: 5 req/s on average, one bin in five at three times the rest's rate."""
    rng = np.random.default_rng(seed)
    rates = np.where(np.arange(40) % 5 == 0, 5.0 * 15 / 7, 5.0 * 5 / 7)
    return tuple(float(x) for x in rng.poisson(rates * 15.0))


def test_without_burst_telemetry_the_load_is_todays() -> None:
    load = estimate_load(INTENT, Memory(), BASE, 100.0)
    assert load.bursts is None and load.workload == Workload(5.0, 1000.0, 250.0)


def test_arrival_counts_give_rate_levels_and_at_least_the_queued_rate() -> None:
    counts = bursty_counts()
    signals = replace(BASE, arrival_counts=counts, arrival_resolution_seconds=15.0,
                      prompt_tokens_sample=tuple([800.0, 1200.0] * 20), output_tokens_sample=tuple([200.0, 300.0] * 20))
    load = estimate_load(INTENT, Memory(), signals, 100.0)
    assert load.bursts is not None
    assert load.bursts.burst_rate > load.bursts.mean_rate
    # The busy bins travel to the queued model, as clustering or as a rate level.
    assert load.bursts.arrival_dispersion > 1.2 or max(f for f, _ in load.bursts.rate_levels) > 1.2
    assert load.bursts.tokens is not None
    assert load.workload.requests_per_second >= load.bursts.queued_rate * 0.999


def test_a_burst_quantile_alone_is_the_busiest_five_percent() -> None:
    load = estimate_load(INTENT, Memory(), replace(BASE, burst_requests_per_second=12.0), 100.0)
    assert load.bursts is not None
    assert load.bursts.rate_levels == ((1.0, 0.95), (pytest.approx(12.0 / 5.0), 0.05))
    assert load.workload.requests_per_second == 5.0


DEFAULT = Tuning()


def inputs(memory: Memory, tuning: Tuning = DEFAULT) -> TickInputs:
    return TickInputs(INTENT, memory, BASE, FleetState(), now_s=100.0, tuning=tuning)


def test_the_core_plans_for_what_is_scored_by_default() -> None:
    memory = Memory(ttft_correction=1.3, itl_correction=1.1)
    load = estimate_load(INTENT, memory, BASE, 100.0)
    request = tick_request(inputs(memory), memory, load, 5000.0, margin=(1.3, 1.1))
    assert (request.latency_model, request.slo_basis, request.request_share) == ("queued", "requests", 0.99)
    assert not request.chunk_budget_within_itl  # at 100 ms the mean ITL is what is scored, the model judges it
    assert (request.ttft_margin, request.itl_margin) == (1.3, 1.1)  # the learned margin multiplies predictions
    assert request.slo_ttft_p95_seconds == INTENT.slo_ttft_p95_seconds  # not divided into the SLO as well
    assert request.allocation_watts is not None and request.allocation_watts < 5000.0  # headroom under the cap
    steady = tick_request(inputs(memory, Tuning(latency_model="steady")), memory, load, 5000.0)
    assert (steady.latency_model, steady.slo_basis) == ("steady", "p95")
    assert steady.slo_ttft_p95_seconds == pytest.approx(INTENT.slo_ttft_p95_seconds / 1.3)


def test_the_margin_is_learned_within_its_bounds() -> None:
    running = Plan(ServingConfig("bf16", 4, 256, 2048), 1)
    workload = Workload(3.0, 1000.0, 250.0)
    predicted = evaluate(INTENT, running, workload, EM)
    assert predicted is not None
    fleet = FleetState(exists=True, replicas=1, ready_replicas=1)
    slow = replace(BASE, ttft_p95_seconds=predicted.ttft_p95_seconds * 40, itl_p95_seconds=predicted.itl_p95_seconds)
    ttft, itl = latency_correction((1.0, 1.0), INTENT, running, slow, fleet, workload, EM, Tuning(), predicted)
    assert ttft == 3.0 and itl == 1.0  # half way up to the bounded ratio (5) in one window
    fast = replace(BASE, ttft_p95_seconds=predicted.ttft_p95_seconds, itl_p95_seconds=predicted.itl_p95_seconds)
    ttft, _ = latency_correction((5.0, 1.0), INTENT, running, fast, fleet, workload, EM, Tuning(), predicted)
    assert 1.0 < ttft < 5.0  # slow down: one good window moves it a step
    steady = Tuning(latency_model="steady")
    ttft_steady, _ = latency_correction((1.0, 1.0), INTENT, running, slow, fleet, workload, EM, steady, predicted)
    assert 1.0 < ttft_steady < 3.0  # the steady model's correction moves by the slower EWMA both ways


def test_the_benchmark_reads_arrivals_at_the_scrape_resolution() -> None:
    arrivals = np.sort(np.random.default_rng(3).uniform(0, 900, 3000))
    trace = Trace(arrivals, np.full(3000, 500, dtype=np.int64), np.full(3000, 100, dtype=np.int64))
    got = recent_arrivals(trace, 900.0, 15.0)
    assert got["arrival_resolution_seconds"] == 15.0 and len(got["arrival_counts"]) == 40
    assert sum(got["arrival_counts"]) == int(np.sum((arrivals >= 300.0) & (arrivals < 900.0)))
    assert set(got["prompt_tokens_sample"]) == {500.0}
    assert recent_arrivals(trace, 10.0, 15.0) == {}


def test_the_benchmark_reads_what_the_operators_telemetry_reads() -> None:
    """First tokens per scrape interval (vLLM counts no arrivals) and the lengths as vLLM's 1-2-5 histograms
    hold them, expanded as the operator expands them: PromQL's histogram_quantile, linear within a bucket."""
    first = tuple(np.sort(np.random.default_rng(4).uniform(250, 900, 2000)))
    obs = Observation(now_s=915.0, window_s=60.0, requests_per_second=3.0, mean_input_tokens=None,
                      mean_output_tokens=None, watts=1000.0, ttft_p95_seconds=None, itl_p95_seconds=None,
                      running_requests=0, waiting_requests=0, serving_replicas=1, loading_replicas=0,
                      draining_replicas=0, active_per_replica_mean=0.0, history_end_s=900.0, first_token_s=first,
                      finished_prompt_tokens=(700,) * 50 + (3000,) * 50, finished_output_tokens=(150,) * 100)
    got = recent_telemetry(obs, 15.0)
    assert got["arrival_resolution_seconds"] == 15.0 and len(got["arrival_counts"]) == 40
    assert sum(got["arrival_counts"]) == sum(1 for t in first if 300.0 <= t < 900.0)
    prompts, outputs = got["prompt_tokens_sample"], got["output_tokens_sample"]
    assert len(prompts) == len(outputs) == 200
    assert all(500.0 <= p <= 1000.0 for p in prompts[:100]) and all(2000.0 <= p <= 5000.0 for p in prompts[100:])
    assert all(100.0 <= o <= 200.0 for o in outputs)


def test_the_token_means_are_the_historys_where_telemetry_carries_it() -> None:
    """Under a backlog the window's finished requests are the short ones (conv-x4-cap: 16 output tokens read
    where 230 is the mean): the history's lengths set the load's means."""
    signals = replace(BASE, mean_output_tokens=16.0, arrival_counts=bursty_counts(), arrival_resolution_seconds=15.0,
                      prompt_tokens_sample=tuple([800.0, 1200.0] * 20), output_tokens_sample=tuple([200.0, 260.0] * 20))
    load = estimate_load(INTENT, Memory(), signals, 100.0)
    assert load.workload.output_tokens == pytest.approx(230.0) and load.workload.input_tokens == pytest.approx(1000.0)


def test_margins_are_learned_per_configuration() -> None:
    """A margin learned on one configuration is its own; an unmeasured one starts from the largest learned for its
    precision (the model's error is mostly the precision's), another precision from the model as it is."""
    from wattkeeper.control import ConfigMargin
    from wattkeeper.control.tick import margin_of, search

    memory = Memory(margins=(ConfigMargin("fp8 tp4", 4.0, 2.0),))
    assert margin_of(memory, ServingConfig("fp8", 4, 256, 1024)) == (4.0, 2.0)
    assert margin_of(memory, ServingConfig("fp8", 8, 256, 1024)) == (4.0, 2.0)
    assert margin_of(memory, ServingConfig("bf16", 4, 256, 1024)) == (1.0, 1.0)
    both = Memory(margins=(ConfigMargin("fp8 tp4", 4.0, 2.0), ConfigMargin("bf16 tp4", 1.2, 1.0)))
    assert margin_of(both, ServingConfig("bf16", 8, 256, 1024)) == (1.2, 1.0)
    load = estimate_load(INTENT, Memory(), BASE, 100.0)
    trusted, _, _ = search(inputs(Memory()), Memory(), load, None, EM)
    assert trusted is not None
    preferred = trusted.config.precision  # what the model alone prefers here
    other = "fp8" if preferred == "bf16" else "bf16"
    doubt = Memory(margins=(*(ConfigMargin(f"{preferred} tp{tp}", 4.0, 2.0) for tp in (1, 2, 4, 8)),
                            ConfigMargin(f"{other} tp4", 1.0, 1.0)))
    doubted, _, _ = search(inputs(doubt), doubt, load, None, EM)
    assert doubted is not None and doubted.config.precision != preferred  # a 4x error there moves the plan off


def test_an_unmeasured_precision_carries_the_models_own_error() -> None:
    """Nothing measured: every configuration is planned with `Tuning.unmeasured_margin`, and a precision neither
    measured nor the model's reference (bf16) must beat a trusted one by that error to be chosen."""
    from wattkeeper.control import ConfigMargin
    from wattkeeper.control.tick import margin_of, search

    assert margin_of(Memory(), ServingConfig("fp8", 4, 256, 1024), DEFAULT) == (2.0, 2.0)
    assert margin_of(Memory(), ServingConfig("fp8", 4, 256, 1024), Tuning(unmeasured_margin=1.0)) == (1.0, 1.0)
    assert margin_of(Memory(), ServingConfig("fp8", 4, 256, 1024)) == (1.0, 1.0)  # the EWMA starts at the model
    quiet = replace(BASE, finished_requests_per_second=2.0)
    load = estimate_load(INTENT, Memory(), quiet, 100.0)

    def best(memory: Memory, tuning: Tuning) -> tuple[str, float]:
        p, c, _ = search(TickInputs(INTENT, memory, quiet, FleetState(), now_s=100.0, tuning=tuning), memory, load,
                         None, EM)
        assert p is not None and c is not None
        return p.config.precision, c.total_watts

    naive = best(Memory(), Tuning(unmeasured_margin=1.0))
    assert naive[0] == "fp8"  # the model alone: fp8 for about half the watts of bf16 (1342 W)
    cold = best(Memory(), DEFAULT)
    assert cold[0] == "bf16" and cold[1] < 2 * naive[1]  # not half enough to trust what the model says of fp8
    fp8_measured = Memory(margins=(ConfigMargin("fp8 tp2", 1.0, 1.0),))
    assert best(fp8_measured, DEFAULT)[0] == "fp8"  # measured, it is trusted


def test_the_margin_is_learned_at_the_rate_that_entered_service() -> None:
    """A fleet short of capacity finishes less than it admits (conv-x4: 11 req/s finished, 27 first tokens a
    second): its latency is judged against the model at what it admitted, not read as a model error of 2x."""
    from wattkeeper.control.tick import corrections

    running = Plan(ServingConfig("bf16", 4, 256, 8192), 1)
    memory = Memory(running=running, last_applied_s=0.0)
    fleet = FleetState(exists=True, replicas=1, ready_replicas=1)
    tokens = {"prompt_tokens_sample": (1000.0,) * 40, "output_tokens_sample": (250.0,) * 40}
    slow = replace(BASE, finished_requests_per_second=3.0, itl_p95_seconds=0.09, ttft_p95_seconds=1.0,
                   arrival_resolution_seconds=15.0, **tokens)
    finished = replace(slow, arrival_counts=(45.0,) * 40)  # 3 req/s admitted: as many as finished
    admitted = replace(slow, arrival_counts=(90.0,) * 40)  # 6 req/s admitted, 3 finished
    learned = []
    for signals in (finished, admitted):
        tick_inputs = TickInputs(INTENT, memory, signals, fleet, now_s=1000.0)
        learned.append(corrections(tick_inputs, estimate_load(INTENT, memory, signals, 1000.0), EM))
    assert learned[1].itl_correction < learned[0].itl_correction
    assert learned[1].ttft_correction < learned[0].ttft_correction


def test_a_window_whose_arrivals_fell_teaches_no_margin() -> None:
    """conv-x1 at the trace's end: arrivals 7.6 -> 2.0 req/s over one window, ITL 90 ms within its SLO; its
    latencies belong to requests admitted at the rate before, and predicted at this window's rate they read as a
    2.6x margin that sent x2 to x4 with no SLO missed. Such a window keeps the margins; a steady one teaches."""
    from wattkeeper.control.tick import arrivals_fell, corrections

    running = Plan(ServingConfig("bf16", 4, 256, 8192), 2)
    memory = Memory(running=running, last_applied_s=0.0)
    fleet = FleetState(exists=True, replicas=2, ready_replicas=2)
    steady = replace(BASE, finished_requests_per_second=7.5, itl_p95_seconds=0.09, ttft_p95_seconds=0.5,
                     arrival_resolution_seconds=15.0, arrival_counts=(114.0,) * 36 + (120.0, 3.0, 0.0, 0.0))
    fell = replace(steady, finished_requests_per_second=2.45)
    kept = replace(steady, arrival_counts=(114.0,) * 40)
    assert arrivals_fell(fell) and not arrivals_fell(kept)
    assert not arrivals_fell(replace(fell, arrival_counts=(0.0, 0.0, 0.0, 0.0)))  # no window before to compare
    got = []
    for signals in (fell, kept):
        tick_inputs = TickInputs(INTENT, memory, signals, fleet, now_s=1000.0)
        got.append(corrections(tick_inputs, estimate_load(INTENT, memory, signals, 1000.0), EM))
    assert got[0].margins == memory.margins and got[0].itl_correction == memory.itl_correction
    assert got[1].margins != memory.margins


def ramp_signals(bins: list[float], behind: bool = True) -> Signals:
    """Arrival counts in 15-s bins, from a fleet behind them (two requests waiting: the trend is taken whole) or
    keeping up (none waiting, both p95s within the SLO)."""
    return replace(BASE, arrival_counts=tuple(bins), arrival_resolution_seconds=15.0,
                   waiting_requests=2.0 if behind else 0.0)


def test_a_forecast_is_held_until_its_time_and_dropped_when_the_rate_did_not_rise() -> None:
    """decode-heavy's start: three 15-s bins at 1.1, 1.6 and 2.0 req/s read as a trend of +1.7 req/s one model
    load ahead; the fleet was doubled for the whole cooldown at 1.5 req/s."""
    start = [17.0, 24.0, 30.0]
    first = estimate_load(INTENT, Memory(), ramp_signals(start), 60.0)
    assert first.bursts is not None and first.bursts.forecast_rise > 1.0
    assert first.peak_forecast_rps == pytest.approx(first.bursts.forecast_rise, rel=0.01)
    memory = Memory(peak_load_rps=first.peak_load_rps, peak_load_at_s=first.peak_load_at_s,
                    peak_forecast_rps=first.peak_forecast_rps)
    level = [17.0, 24.0, 30.0, 25.0, 17.0, 23.0, 19.0]  # it levelled off
    # Before the time the forecast was for, it is held as any peak is.
    early = estimate_load(INTENT, memory, ramp_signals(level[:5]), 90.0)
    assert early.workload.requests_per_second == first.workload.requests_per_second
    # Its time has come and the rate measured has not risen: only the measured part is held (from when it was
    # measured, for the rest of the cooldown).
    later = estimate_load(INTENT, memory, ramp_signals(level), 150.0)
    measured_part = first.workload.requests_per_second - first.peak_forecast_rps
    assert later.workload.requests_per_second == pytest.approx(measured_part, abs=0.01)
    assert (later.peak_load_at_s, later.peak_forecast_rps) == (60.0, 0.0)


def test_a_forecast_the_rate_followed_keeps_its_hold() -> None:
    start = [17.0, 24.0, 30.0]
    first = estimate_load(INTENT, Memory(), ramp_signals(start), 60.0)
    memory = Memory(peak_load_rps=first.peak_load_rps, peak_load_at_s=first.peak_load_at_s,
                    peak_forecast_rps=first.peak_forecast_rps)
    rising = [17.0, 24.0, 30.0, 33.0, 34.0, 36.0, 36.0]  # it rose, if less than forecast
    later = estimate_load(INTENT, memory, ramp_signals(rising), 150.0)
    assert later.workload.requests_per_second >= first.workload.requests_per_second
    # A forecast that was never made (a peak measured, not forecast) is held for the cooldown as before.
    measured_peak = Memory(peak_load_rps=9.0, peak_load_at_s=60.0)
    assert estimate_load(INTENT, measured_peak, ramp_signals([17.0] * 7), 150.0).workload.requests_per_second == 9.0


def test_a_held_peak_counts_the_bursts_once_while_the_fleet_keeps_up() -> None:
    """The peak held over the cooldown already is a busy stretch: while the fleet keeps up, each rate level counts
    only where today's rate at that level reaches above the peak. prefill-heavy s1: tp8 x1 was judged to miss at
    the very rate it had been chosen for, because the falling load lifted the busiest level to 1.37x the mean."""
    # Ten minutes whose rate swings +-40% around 5 req/s over five minutes: levels, not clustering.
    swing = tuple(float(round(15.0 * 5.0 * (1.0 + 0.4 * np.sin(2 * np.pi * i / 20)))) for i in range(40))
    signals = replace(BASE, arrival_counts=swing, arrival_resolution_seconds=15.0)
    today = estimate_load(INTENT, Memory(), signals, 1000.0)
    assert today.bursts is not None
    busiest = max(f for f, _ in today.bursts.rate_levels)
    assert busiest > 1.2
    peak = today.workload.requests_per_second * 1.3
    held = Memory(peak_load_rps=peak, peak_load_at_s=900.0)
    load = estimate_load(INTENT, held, signals, 1000.0)
    assert load.workload.requests_per_second == peak and load.bursts is not None
    # The busiest level is planned at today's busiest rate or the peak, whichever is higher; none below the peak.
    planned = [load.workload.requests_per_second * f for f, _ in load.bursts.rate_levels]
    assert max(planned) == pytest.approx(max(peak, today.bursts.queued_rate * busiest), rel=0.02)
    assert min(planned) == pytest.approx(peak)
    # A fleet that is behind (a queue, a p95 over its SLO) keeps the levels whole: the backlog is what it must catch.
    behind = estimate_load(INTENT, held, replace(signals, waiting_requests=3.0), 1000.0)
    assert behind.bursts is not None and behind.bursts.rate_levels == today.bursts.rate_levels
    missed = estimate_load(INTENT, held, replace(signals, itl_p95_seconds=0.2), 1000.0)
    assert missed.bursts is not None and missed.bursts.rate_levels == today.bursts.rate_levels


def test_a_fleet_that_keeps_up_plans_a_trend_only_beyond_the_scatter() -> None:
    """decode-heavy s1: the first bins (1.1, 1.6, 2.0 req/s) read as a rise of +1.7 req/s one model load ahead,
    and the fleet that kept up with them was doubled for a cooldown at 1.5 req/s. While the fleet keeps up, a
    trend counts only by what stands a standard error out of the arrivals' scatter: three bins leave none to
    judge by; a steady ramp keeps most of its rise; a fleet behind takes it whole."""
    start = [17.0, 24.0, 30.0]
    keeping_up = estimate_load(INTENT, Memory(), ramp_signals(start, behind=False), 60.0)
    assert keeping_up.bursts is not None and keeping_up.bursts.forecast_rise == 0.0
    assert keeping_up.peak_forecast_rps == 0.0
    behind = estimate_load(INTENT, Memory(), ramp_signals(start), 60.0)
    assert behind.bursts is not None and behind.bursts.forecast_rise > 1.0
    rng = np.random.default_rng(3)
    steady = [float(rng.poisson(30.0 + 3.0 * i)) for i in range(20)]  # +0.2 req/s a bin, Poisson scatter
    whole = estimate_load(INTENT, Memory(), ramp_signals(steady), 300.0)
    shrunk = estimate_load(INTENT, Memory(), ramp_signals(steady, behind=False), 300.0)
    assert whole.bursts is not None and shrunk.bursts is not None
    assert 0.6 * whole.bursts.forecast_rise < shrunk.bursts.forecast_rise < whole.bursts.forecast_rise
    noisy = [30.0, 45.0, 28.0, 50.0, 26.0, 31.0, 52.0, 27.0, 33.0, 55.0]  # bursts, no ramp to speak of
    assert estimate_load(INTENT, Memory(), ramp_signals(noisy, behind=False), 150.0).peak_forecast_rps == 0.0

"""Canaries (control/canary.py): one replica of an untried configuration beside the fleet, measured on its own,
its margin learned before a restart trusts it; and the fleet simulator's canary replica."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from wattkeeper.bench.fleet import FleetSimulator, FleetTarget, Observation
from wattkeeper.bench.groundtruth import GroundTruth, model_shape
from wattkeeper.bench.trace import synthetic_trace
from wattkeeper.control import Canary, FleetState, Memory, Plan, ServiceIntent, Signals, TickInputs, Tuning
from wattkeeper.control import canary as canaries
from wattkeeper.control.load import estimate_load
from wattkeeper.control.planning import allocation_for
from wattkeeper.control.switching import configuration_key
from wattkeeper.control.tick import canary_after, decide_tick, evaluate_own, margin_key, margin_of
from wattkeeper.control.types import ConfigMargin, RecentConfiguration, Verdict
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import ServingConfig, Workload

EM = EnergyModel.default()
INTENT = ServiceIntent(model=model_shape("meta-llama/Llama-3.1-70B-Instruct"), accelerator="H100",
                       allowed_precisions=("bf16", "fp8"), slo_ttft_p95_seconds=2.0, slo_itl_p95_seconds=0.1)
RUNNING = Plan(ServingConfig("bf16", 4, 512, 8192), 3)
ON = Tuning(canaries=True)
FLEET = FleetState(exists=True, replicas=3, ready_replicas=3)


def signals(rps: float = 16.0, ttft: float = 0.3, itl: float = 0.04, waiting: float = 0.2) -> Signals:
    return Signals(window_seconds=60.0, watts=8000.0, finished_requests_per_second=rps, waiting_requests=waiting,
                   running_requests=rps * 6, mean_input_tokens=1000.0, mean_output_tokens=250.0,
                   ttft_p95_seconds=ttft, itl_p95_seconds=itl, request_itl_p95_seconds=itl * 0.8,
                   arrival_counts=(rps * 15.0,) * 16, arrival_resolution_seconds=15.0)


def settled_memory() -> Memory:
    return Memory(running=RUNNING, last_applied_s=0.0, planned_load=Workload(16.0, 1000.0, 250.0),
                  margins=(ConfigMargin(margin_key(RUNNING.config), 1.0, 1.0),))


def inputs(memory: Memory, now_s: float = 1200.0, **overrides: object) -> TickInputs:
    base = TickInputs(INTENT, memory, signals(), FLEET, now_s=now_s, tuning=ON)
    return replace(base, **overrides)  # type: ignore[arg-type]


def test_the_load_is_the_fleets_and_the_canarys() -> None:
    """The canary borrows a share of the traffic: the load planned for is both pods' arrivals together (aligned at
    the last scrape), the latencies and watts stay the fleet's."""
    fleet = signals(rps=6.0)
    canary = replace(signals(rps=2.0, ttft=5.0), arrival_counts=(30.0, 30.0), watts=900.0)
    merged = canaries.with_canary_load(fleet, canary)
    assert merged is not None
    assert merged.finished_requests_per_second == pytest.approx(8.0)
    assert merged.arrival_counts[:-2] == fleet.arrival_counts[:-2]
    assert merged.arrival_counts[-2:] == (120.0, 120.0)
    assert merged.ttft_p95_seconds == fleet.ttft_p95_seconds and merged.watts == fleet.watts
    assert canaries.with_canary_load(fleet, None) is fleet


def test_a_canary_starts_where_an_untried_configuration_would_save_enough() -> None:
    """A settled fleet that keeps up, with room beside it: the planner, were every untried configuration as wrong
    as the running one, would move to one that saves at least CANARY_SAVING: one replica of it, nothing
    restarted. Not with canaries off, not beside one replica, not for a configuration measured or canaried
    lately, not beyond the allocation."""
    memory = settled_memory()
    tick = decide_tick(inputs(memory), EM)
    assert tick.apply is None, tick.reason
    assert tick.canary is not None and tick.canary.replicas == 1, tick.canary_reason
    key = margin_key(tick.canary.config)
    assert key != margin_key(RUNNING.config) and "canary" in tick.canary_reason
    assert tick.memory.canary == Canary(tick.canary, 1200.0)

    assert decide_tick(inputs(memory, tuning=Tuning()), EM).canary is None  # off by default
    one = replace(memory, running=Plan(RUNNING.config, 1))
    assert decide_tick(inputs(one, fleet=FleetState(exists=True, replicas=1, ready_replicas=1)), EM).canary is None
    lately = replace(memory, canaries_ended=(RecentConfiguration(key, 1000.0),))
    assert decide_tick(inputs(lately), EM).canary != tick.canary
    # Beyond the allocation: the fleet's own watts leave no room for it.
    at = inputs(memory)
    own = evaluate_own(at, memory, estimate_load(INTENT, memory, at.signals, at.now_s), RUNNING, EM)
    assert own is not None
    tight = decide_tick(inputs(memory, allocation_watts=allocation_for(own.total_watts * 1.02)), EM)
    assert tight.apply is None and tight.canary is None
    roomy = decide_tick(inputs(memory, allocation_watts=allocation_for(own.total_watts * 1.6)), EM)
    assert roomy.canary == tick.canary


def test_a_canary_is_measured_then_ends_with_its_margin_learned() -> None:
    """Its first measured window replaces the untried prior (no measurement), the second averages in, and it ends;
    the configuration is then judged by its own margin and not canaried again within the horizon."""
    memory = settled_memory()
    started = decide_tick(inputs(memory), EM)
    assert started.canary is not None
    config = started.canary.config
    assert margin_of(started.memory, config, ON) == (2.0, 2.0) or config.precision == "bf16"
    ready = FleetState(exists=True, replicas=1, ready_replicas=1)
    own = signals(rps=4.0, ttft=0.4, itl=0.05)
    m = started.memory
    loading = decide_tick(inputs(m, now_s=1230.0, canary_fleet=FleetState(exists=True, replicas=1, rolling=True),
                                 canary_signals=None), EM)
    assert loading.memory.canary is not None and loading.memory.canary.ready_s is None
    first = decide_tick(inputs(loading.memory, now_s=1290.0, canary_fleet=ready, canary_signals=own), EM)
    c = first.memory.canary
    assert c is not None and c.ready_s == 1290.0 and c.windows == 0  # ready, not yet settled
    t = 1290.0 + 90.0
    measured = decide_tick(inputs(first.memory, now_s=t, canary_fleet=ready, canary_signals=own), EM)
    c = measured.memory.canary
    assert c is not None and c.windows == 1
    learned = margin_of(measured.memory, config, ON)
    assert any(r.configuration == margin_key(config) for r in measured.memory.margins)
    assert learned != (2.0, 2.0)
    done = decide_tick(inputs(measured.memory, now_s=t + 30.0, canary_fleet=ready, canary_signals=own), EM)
    assert done.memory.canary is None and done.canary is None
    assert "measured over 2 windows" in done.canary_reason
    assert [r.configuration for r in done.memory.canaries_ended] == [margin_key(config)]


def test_a_canary_that_misses_its_slo_ends_at_once() -> None:
    memory = settled_memory()
    started = decide_tick(inputs(memory), EM)
    assert started.canary is not None
    ready = FleetState(exists=True, replicas=1, ready_replicas=1)
    m = replace(started.memory, canary=replace(started.memory.canary, ready_s=1200.0))  # type: ignore[arg-type]
    late = signals(rps=4.0, ttft=6.0, itl=0.05)
    tick = decide_tick(inputs(m, now_s=1300.0, canary_fleet=ready, canary_signals=late), EM)
    assert tick.canary is None and "missed the SLO" in tick.canary_reason and "failed" in tick.canary_reason
    ttft, itl = margin_of(tick.memory, started.canary.config, ON)
    assert ttft > 2.0 and itl >= 2.0  # remembered as no better than a configuration never tried
    # Its configuration is not planned for within the horizon (one window at a share does not bound the error at
    # the fleet's load), nor canaried again.
    assert tick.memory.canaries_ended[-1].failed
    key = configuration_key(started.canary.config)
    assert canaries.failed(tick.memory, 1400.0, INTENT.horizon_seconds) == {key}
    assert canaries.failed(tick.memory, 1300.0 + INTENT.horizon_seconds, INTENT.horizon_seconds) == frozenset()
    later = decide_tick(inputs(replace(tick.memory, running=RUNNING), now_s=1500.0), EM)
    assert later.proposed is not None and configuration_key(later.proposed.config) != key
    assert later.canary is None or configuration_key(later.canary.config) != key


def test_a_canary_ends_on_timeout_and_when_the_fleet_restarts() -> None:
    memory = settled_memory()
    started = decide_tick(inputs(memory), EM)
    assert started.canary is not None
    never = decide_tick(inputs(started.memory, now_s=1200.0 + 3600.0,
                               canary_fleet=FleetState(exists=True, replicas=1, rolling=True)), EM)
    assert never.canary is None and "not measured within" in never.canary_reason
    m = started.memory
    restart = Verdict("Applied", "saving", "restart", Plan(ServingConfig("fp8", 8, 512, 8192), 1))
    load = estimate_load(INTENT, m, signals(), 1230.0)
    after, reason = canary_after(inputs(replace(m, running=RUNNING), now_s=1230.0), m, load, restart, EM, "")
    assert after.canary is None and "restarts" in reason


# --- the fleet simulator's canary ---------------------------------------------------------------------------------

BASE = ServingConfig("bf16", 1, 256, 8192)
CANARY = ServingConfig("fp8", 1, 256, 2048)


@pytest.fixture(scope="module")
def gt8b() -> GroundTruth:
    return GroundTruth.create(model_shape("meta-llama/Llama-3.1-8B-Instruct"), "H100", EnergyModel.default(),
                              use_measured=False)


class CanaryBetween:
    """Two replicas of BASE; a canary of CANARY from `start_s` until `end_s`; records the observations."""

    name = "canary"
    interval_s = 15.0

    def __init__(self, start_s: float, end_s: float) -> None:
        self.start_s, self.end_s = start_s, end_s
        self.seen: list[Observation] = []

    def initial(self) -> FleetTarget:
        return FleetTarget(BASE, 2)

    def decide(self, obs: Observation, current: FleetTarget) -> FleetTarget | None:
        self.seen.append(obs)
        wanted = CANARY if self.start_s <= obs.now_s < self.end_s else None
        return replace(current, canary=wanted) if wanted != current.canary else None


def test_the_simulated_canary_serves_its_share_and_is_observed_on_its_own(gt8b: GroundTruth) -> None:
    trace = synthetic_trace([(420.0, 8.0)], input_tokens=400, output_tokens=150, seed=3)
    policy = CanaryBetween(60.0, 300.0)
    run = FleetSimulator(trace, gt8b, tail_s=60.0).run(policy)
    assert [c.kind for c in run.changes] == ["canary", "canary-end"]
    assert np.all(np.isfinite(run.ttft_s))
    during = [o for o in policy.seen if 200.0 <= o.now_s < 300.0]
    assert during and all(o.canary is not None and o.canary.serving_replicas == 1 for o in during)
    for o in during:
        assert o.canary is not None and o.serving_replicas == 2
        # The canary took about a third of the requests; the fleet's figures are its own two replicas'.
        share = o.canary.finished_requests_per_second / (o.canary.finished_requests_per_second
                                                         + o.finished_requests_per_second)
        assert 0.15 < share < 0.5
        assert 0 < o.canary.watts < o.watts
    after = [o for o in policy.seen if o.now_s >= 420.0]
    assert after and all(o.canary is None for o in after)
    # While it ran, one GPU more was provisioned.
    i = round(200.0 / run.sample_s)
    assert run.gpus[i] == pytest.approx(3.0)


def test_a_canary_further_from_the_model_than_the_prior_fails() -> None:
    """Within the SLO at its share, but measured at more than the untried prior over the model: the margin a
    canary measures does not bound the error at a fleet's load where the model is that wrong (prefill-heavy s3:
    an fp8 tp8 canary at a TTFT margin of 3.3 within the SLO, fp8 tp8 x1 then at 4.6 and 87.8% within both)."""
    memory = settled_memory()
    started = decide_tick(inputs(memory), EM)
    assert started.canary is not None
    ready = FleetState(exists=True, replicas=1, ready_replicas=1)
    m = replace(started.memory, canary=replace(started.memory.canary, ready_s=1200.0))  # type: ignore[arg-type]
    ok = decide_tick(inputs(m, now_s=1300.0, canary_fleet=ready, canary_signals=signals(rps=4.0)), EM)
    ttft, _ = margin_of(ok.memory, started.canary.config, ON)
    predicted_s = 0.3 / ttft  # the model's TTFT p95 for the canary at its share (0.3 s measured above)
    slow_s = 3.0 * predicted_s  # a margin of 3: beyond the prior of 2, still within the 2-s SLO
    assert slow_s < INTENT.slo_ttft_p95_seconds
    tick = decide_tick(inputs(m, now_s=1300.0, canary_fleet=ready, canary_signals=signals(rps=4.0, ttft=slow_s)), EM)
    assert margin_of(tick.memory, started.canary.config, ON)[0] == pytest.approx(3.0, rel=0.01)
    assert tick.canary is None and "failed" in tick.canary_reason and "beyond" in tick.canary_reason
    assert tick.memory.canaries_ended[-1].failed

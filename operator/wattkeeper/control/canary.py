"""Canaries: an untried configuration measured on one replica beside the fleet before a restart trusts it.

An untried configuration carries the model's own error as its margin (`Tuning.unmeasured_margin`), so the planner
never restarts the fleet into one on the model's figures alone: tried at 1.4 instead of 2, the cold start took fp8
on figures far better than the ground truth's and kept 54-62% of requests within SLO (bench/README.md). But a
configuration never run is never measured, and the energy it could save stays unknown (the oracle's tp8 for
conv-x4, tp2 for prefill-heavy, fp8 for decode-heavy). A canary closes that loop: where the model says an untried
configuration would save at least `CANARY_SAVING` of the running plan's watts, were its error the running
configuration's, one replica of it serves beside the fleet behind the same Service (the operator's Deployment
`<service>-canary`), its own pods' telemetry teaches its margin over `CANARY_WINDOWS` windows, and it ends. The
tick's planner then judges the configuration with that margin like any other: a restart into it still goes
through the switching rule.

The canary's pods are not the fleet's: `TickInputs.signals` are the fleet's pods, `canary_signals` the canary's,
and the load planned for is both together (`with_canary_load`).
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..energy.catalog import get_accelerator
from ..energy.model import EnergyModel
from ..energy.types import Workload
from ..planner import model_load_seconds
from ..planner.load import thinned_dispersion
from . import tick  # imports this module in turn: its helpers are looked up when called
from .planning import evaluate, evaluate_in, planned_watts, significant
from .types import Canary, LoadEstimate, Memory, Plan, RecentConfiguration, Signals, TickInputs

# The saving, as the model predicts it with the running configuration's margin, that is worth a canary.
CANARY_SAVING = 0.10
# Telemetry windows measured on the canary before it ends.
CANARY_WINDOWS = 2
# The fleet a canary runs beside: its share of the requests is at most 1 / (1 + this). A canary that misses its
# SLO makes its share late until it ends.
CANARY_MIN_REPLICAS = 2
# Canaries ended kept in memory.
CANARIES_KEPT = 8


def with_canary_load(signals: Signals | None, canary: Signals | None) -> Signals | None:
    """The service's load: the fleet's telemetry with the canary's arrivals, requests and token lengths added (the
    planner plans the whole service's traffic; the canary only borrows a share of it while it runs). Latencies and
    watts stay the fleet's."""
    if signals is None or canary is None:
        return signals
    counts = signals.arrival_counts
    if canary.arrival_counts and counts and canary.arrival_resolution_seconds == signals.arrival_resolution_seconds:
        # Aligned at their ends: both histories end at the same scrape; the canary's is shorter.
        a, b = list(counts), list(canary.arrival_counts)
        n = max(len(a), len(b))
        a, b = [0.0] * (n - len(a)) + a, [0.0] * (n - len(b)) + b
        counts = tuple(x + y for x, y in zip(a, b, strict=True))

    def total(x: float | None, y: float | None) -> float | None:
        return x if y is None else (y if x is None else x + y)

    def weighted(x: float | None, y: float | None) -> float | None:
        """Means weighted by the requests each finished."""
        wx, wy = signals.finished_requests_per_second or 0.0, canary.finished_requests_per_second or 0.0
        if y is None or wy <= 0:
            return x
        if x is None or wx <= 0:
            return y
        return (x * wx + y * wy) / (wx + wy)

    return replace(
        signals,
        finished_requests_per_second=total(signals.finished_requests_per_second,
                                           canary.finished_requests_per_second),
        waiting_requests=total(signals.waiting_requests, canary.waiting_requests),
        waiting_growth_per_second=total(signals.waiting_growth_per_second, canary.waiting_growth_per_second),
        running_requests=total(signals.running_requests, canary.running_requests),
        mean_input_tokens=weighted(signals.mean_input_tokens, canary.mean_input_tokens),
        mean_output_tokens=weighted(signals.mean_output_tokens, canary.mean_output_tokens),
        burst_requests_per_second=total(signals.burst_requests_per_second, canary.burst_requests_per_second),
        arrival_counts=counts,
        prompt_tokens_sample=signals.prompt_tokens_sample + canary.prompt_tokens_sample,
        output_tokens_sample=signals.output_tokens_sample + canary.output_tokens_sample,
    )


def canary_load(load: LoadEstimate, served_rps: float, total_rps: float) -> LoadEstimate:
    """The load of the canary's share: its served rate, and the service's bursts thinned to that share (a
    random share `p` of a clustered stream has variance over mean 1 + p (D - 1))."""
    bursts = load.bursts
    if bursts is not None and total_rps > 0:
        share = min(1.0, served_rps / total_rps)
        bursts = replace(bursts, arrival_dispersion=float(thinned_dispersion(bursts.arrival_dispersion, share)))
    return replace(load, workload=replace(load.workload, requests_per_second=served_rps), bursts=bursts)


def end(memory: Memory, now_s: float, failed: bool = False) -> Memory:
    """The memory with its canary ended now (kept in `canaries_ended`, so it is not canaried again soon; `failed`:
    see `failed`)."""
    if memory.canary is None:
        return memory
    key = tick.margin_key(memory.canary.plan.config)
    kept = tuple(r for r in memory.canaries_ended if r.configuration != key)
    ended = (*kept, RecentConfiguration(key, now_s, failed=failed))[-CANARIES_KEPT:]
    return replace(memory, canary=None, canaries_ended=ended)


def failed(memory: Memory, now_s: float, horizon_s: float) -> frozenset[str]:
    """The configurations (`switching.configuration_key`: precision, TP, KV dtype) whose canary failed within the
    horizon: its requests missed the SLO, or its margin exceeded the untried prior (`Tuning.unmeasured_margin`, the
    model's own p90 error). Never planned for until then: the margin a canary measures at its share of the load
    does not bound the error at the load a fleet of it would carry, where the model is that wrong (queueing
    amplifies a slow prefill). prefill-heavy s3: the fp8 tp4 canary missed at a TTFT margin of 2.63, and with that
    margin learned (fp8 no longer untried) the fleet restarted into fp8 tp4 x4, whose TTFT margin rose to 4.3 (93.2%
    within both SLOs); the fp8 tp8 canary met the SLO at a margin of 3.3, and fp8 tp8 x1 then ran at 4.6 (87.8%)."""
    # A margin key is the configuration key and the chunk budget (tick.margin_key): "fp8 tp4 tok8192".
    return frozenset(r.configuration.rsplit(" tok", 1)[0] for r in memory.canaries_ended
                     if r.failed and now_s - r.left_at_s < horizon_s)


def timeout_seconds(inputs: TickInputs, canary: Canary) -> float:
    """How long a canary may take: its model load, then a settle time and its windows, and one window more."""
    accelerator = get_accelerator(inputs.intent.accelerator)
    config = canary.plan.config
    window_s = inputs.canary_signals.window_seconds if inputs.canary_signals is not None else 60.0
    return model_load_seconds(inputs.intent.model, accelerator, config.precision, config.tensor_parallel) \
        + inputs.settle_seconds + (CANARY_WINDOWS + 1) * window_s


def canary_missed(inputs: TickInputs) -> bool:
    """The canary's own requests missed an SLO: its TTFT p95, or its requests' ITL p95 (what users feel; the
    token-gap p95 where telemetry has no per-request figure)."""
    s, intent = inputs.canary_signals, inputs.intent
    if s is None:
        return False
    itl = s.request_itl_p95_seconds if s.request_itl_p95_seconds is not None else s.itl_p95_seconds
    return bool((s.ttft_p95_seconds and s.ttft_p95_seconds > intent.slo_ttft_p95_seconds)
                or (itl and itl > intent.slo_itl_p95_seconds))


def learn(inputs: TickInputs, memory: Memory, load: LoadEstimate,
          energy_model: EnergyModel) -> tuple[Memory, str]:
    """Step 2b of a tick: the canary's window measured, its configuration's margin learned (the first window's
    ratio replaces the prior, which is no measurement; later windows average in), and the canary ended when its
    windows are measured, it missed its SLO, it took too long, or it is no longer wanted. Returns the memory and,
    where the canary ended, why."""
    canary = memory.canary
    if canary is None:
        return memory, ""
    now = inputs.now_s
    config = canary.plan.config
    if not inputs.tuning.canaries or inputs.intent.pinned is not None or inputs.spec_changed \
            or not inputs.intent.allow_disruptive:
        return end(memory, now), f"canary {config.short()} ended: the spec or the settings no longer allow it"
    fleet = inputs.canary_fleet
    if canary.ready_s is None and fleet.exists and fleet.ready_replicas > 0 and not fleet.rolling:
        canary = replace(canary, ready_s=now)
        memory = replace(memory, canary=canary)
    if now - canary.started_s > timeout_seconds(inputs, canary):
        return end(memory, now), (f"canary {config.short()} ended: not measured within "
                                  f"{timeout_seconds(inputs, canary):.0f} s of its start")
    s = inputs.canary_signals
    if canary.ready_s is None or now - canary.ready_s < inputs.settle_seconds or s is None \
            or not s.finished_requests_per_second or fleet.rolling:
        return memory, ""
    # The margin is learned as the fleet's is (control/tick.py `corrections`): measured over the model's own
    # prediction for one replica at the rate it served (its first tokens, where more entered than finished).
    rates = tick.arrival_rates(s)
    served = s.finished_requests_per_second
    if rates is not None:
        served = max(served, rates[0])
    total = load.workload.requests_per_second
    predicted = evaluate_in(tick.tick_request(inputs, memory, canary_load(load, served, total), None), canary.plan,
                            energy_model)
    low, high = inputs.tuning.latency_margin_bounds
    margins: list[float] = []
    before = tick.margin_of(memory, config, inputs.tuning)
    missed = canary_missed(inputs)
    prior = inputs.tuning.unmeasured_margin
    for i, (measured, model) in enumerate(((s.ttft_p95_seconds, predicted.ttft_p95_seconds if predicted else None),
                                           (s.itl_p95_seconds, predicted.itl_p95_seconds if predicted else None))):
        if not measured or not model or not math.isfinite(model) or model <= 0:
            # Nothing to learn from (no latency measured): the canary's measurement says the model as it is.
            margins.append(before[i] if canary.windows else 1.0)
            continue
        ratio = min(max(measured / model, low), high)
        margin = ratio if canary.windows == 0 else (before[i] * canary.windows + ratio) / (canary.windows + 1)
        if missed:
            margin = max(margin, prior)  # no better than a configuration never tried
        margins.append(significant(margin) or 1.0)
    canary = replace(canary, windows=canary.windows + 1)
    memory = replace(memory, canary=canary, margins=tick.learned(memory, config, margins[0], margins[1]))
    what = f"margin TTFT {margins[0]:g}, ITL {margins[1]:g}"
    if missed:
        return end(memory, now, failed=True), (f"canary {config.short()} failed: its requests missed the SLO "
                                               f"({what}); not planned for within the horizon")
    if max(margins) > prior:
        return end(memory, now, failed=True), (f"canary {config.short()} failed: {what}, beyond the untried "
                                               f"configuration's {prior:g}; not planned for within the horizon")
    if canary.windows >= CANARY_WINDOWS:
        return end(memory, now), f"canary {config.short()} measured over {canary.windows} windows: {what}"
    return memory, ""


def fits(inputs: TickInputs, memory: Memory, load: LoadEstimate, candidate: Plan, energy_model: EnergyModel,
         running_watts: float) -> bool:
    """The canary fits beside the fleet: within max GPUs, and under the allocation with the fleet's predicted
    watts at the load and the canary's at its share."""
    running = memory.running
    assert running is not None
    intent = inputs.intent
    if intent.max_gpus is not None \
            and running.replicas * running.config.tensor_parallel + candidate.config.tensor_parallel > intent.max_gpus:
        return False
    allowed = planned_watts(inputs.allocation_watts)
    if allowed is None:
        return True
    share = load.workload.requests_per_second / (inputs.fleet.ready_replicas + 1)
    own = evaluate(intent, candidate, Workload(share, load.workload.input_tokens, load.workload.output_tokens),
                   energy_model, memory.power_correction)
    return own is not None and running_watts + own.total_watts <= allowed


def start(inputs: TickInputs, memory: Memory, load: LoadEstimate, energy_model: EnergyModel,
          keeps_up: bool, settled: bool) -> tuple[Memory, str]:
    """Step 5 of a tick that changes nothing: a canary started where the planner, were every untried
    configuration as wrong as the running one, would move to one that saves at least `CANARY_SAVING` of the
    running plan's watts. Returns the memory (with the canary) and why, or the memory as it was and ""."""
    running, intent, tuning = memory.running, inputs.intent, inputs.tuning
    if memory.canary is not None or running is None or not tuning.canaries or tuning.latency_model != "queued" \
            or intent.pinned is not None or not intent.allow_disruptive or inputs.spec_changed \
            or not inputs.fleet.exists or inputs.fleet.rolling or not keeps_up or not settled \
            or memory.missed_since_s is not None or inputs.fleet.ready_replicas < CANARY_MIN_REPLICAS \
            or memory.bridged_limit_watts is not None:
        return memory, ""
    own = tick.evaluate_own(inputs, memory, load, running, energy_model)
    if own is None:
        return memory, ""
    # The running configuration's error stands for every untried one's: what the planner would choose were the
    # model no more wrong elsewhere than here.
    assumed = max(1.0, *tick.margin_of(memory, running.config, tuning))
    hopeful = replace(inputs, tuning=replace(tuning, unmeasured_margin=assumed))
    avoid = failed(memory, inputs.now_s, intent.horizon_seconds)
    best, candidate, result = tick.search(hopeful, memory, load, inputs.allocation_watts, energy_model, avoid=avoid)
    if best is None or candidate is None or result is None or not result.feasible:
        return memory, ""
    key = tick.margin_key(best.config)
    if any(r.configuration == key for r in memory.margins):
        return memory, ""  # measured already: the planner judges it with its own margin
    if any(r.configuration == key and inputs.now_s - r.left_at_s < intent.horizon_seconds
           for r in memory.canaries_ended):
        return memory, ""
    running_watts = own.total_watts * memory.power_correction
    if candidate.total_watts * memory.power_correction > (1.0 - CANARY_SAVING) * running_watts:
        return memory, ""
    plan = Plan(best.config, 1)
    if not fits(inputs, memory, load, plan, energy_model, running_watts):
        return memory, ""
    reason = (f"canary {best.config.short()} x1 beside {running.describe()}: the model predicts "
              f"{best.describe()} at {candidate.total_watts:.0f} W against {own.total_watts:.0f} W, were its "
              f"error the running configuration's ({assumed:g}); its own is measured before any restart")
    return replace(memory, canary=Canary(plan, inputs.now_s)), reason

"""Step 2 of a tick: the online corrections of the model from measurements of the running plan.

Only a fleet that is not rolling says something about the model's error: during a roll telemetry mixes the old
pods with the new ones.
"""

from __future__ import annotations

import math

from ..energy.catalog import get_accelerator
from ..energy.model import EnergyModel
from ..energy.types import Workload
from ..planner import Candidate
from .planning import evaluate, significant
from .types import FleetState, Plan, ServiceIntent, Signals, Tuning


def _measurable(signals: Signals | None, fleet: FleetState, running: Plan | None) -> bool:
    return signals is not None and running is not None and fleet.ready_replicas > 0 and not fleet.rolling


def power_correction(previous: float, intent: ServiceIntent, running: Plan | None, signals: Signals | None,
                     fleet: FleetState, workload: Workload, energy_model: EnergyModel, tuning: Tuning) -> float:
    """Measured over predicted power of the running plan, smoothed (EWMA), bounded, with hysteresis."""
    if not _measurable(signals, fleet, running):
        return previous
    assert signals is not None and running is not None
    ready = fleet.ready_replicas
    per_replica = Workload(workload.requests_per_second / ready, workload.input_tokens, workload.output_tokens)
    predicted = energy_model.predict(intent.model, get_accelerator(intent.accelerator), running.config,
                                     per_replica).watts * ready
    if predicted <= 0 or signals.watts <= 0:
        return previous
    low, high = tuning.power_correction_bounds
    ratio = min(max(signals.watts / predicted, low), high)
    alpha = tuning.power_correction_smoothing
    updated = min(max((1 - alpha) * previous + alpha * ratio, low), high)
    # Hysteresis: move only on a change worth acting on, so a settled service stops rewriting its status.
    if abs(updated - previous) < 0.02 * previous:
        return previous
    return significant(updated, 3) or 1.0


UP_SMOOTHING = 0.5


def latency_correction(previous: tuple[float, float], intent: ServiceIntent, running: Plan | None,
                       signals: Signals | None, fleet: FleetState, workload: Workload, energy_model: EnergyModel,
                       tuning: Tuning, predicted: Candidate | None = None) -> tuple[float, float]:
    """Measured over predicted p95 TTFT and ITL of the running plan, smoothed and bounded: the learned margin.

    The queueing the model predicts is an approximation; the measured latency is not. With the queued model
    (the default) the planner multiplies its predictions by this margin (PlanRequest.ttft_margin/itl_margin) and
    `predicted` is that model's own figure for the running plan; with the steady model it plans against
    SLO / correction and the prediction is the steady model's. Either way the plan keeps the SLO where the model
    proved optimistic, and spends less where it proved pessimistic."""
    if not _measurable(signals, fleet, running) or not (signals and signals.finished_requests_per_second):
        return previous
    assert signals is not None and running is not None
    if predicted is None:
        predicted = evaluate(intent, running, workload, energy_model)
    if predicted is None:
        return previous
    queued = tuning.latency_model == "queued"
    low, high = tuning.latency_margin_bounds if queued else tuning.latency_correction_bounds
    alpha = tuning.power_correction_smoothing
    out = []
    for before, measured, model in ((previous[0], signals.ttft_p95_seconds, predicted.ttft_p95_seconds),
                                    (previous[1], signals.itl_p95_seconds, predicted.itl_p95_seconds)):
        if not measured or not model or not math.isfinite(model) or model <= 0:
            out.append(before)
            continue
        # The model's own error is measured / model (the plan was made against SLO / before).
        # One window's ratio is bounded before it is averaged in: a backlog left by the last plan reads as a
        # model error of 10x or more for a window or two.
        ratio = min(max(measured / model, low), high)
        updated = min(max((1 - alpha) * before + alpha * ratio, low), high)
        if queued and ratio > before:
            # Faster up than down: a margin that lags an optimistic model misses the SLO for every window it
            # lags; one window's spike (a burst, a backlog) must not set it alone.
            updated = min(max((1 - UP_SMOOTHING) * before + UP_SMOOTHING * ratio, low), high)
        out.append(before if abs(updated - before) < 0.05 * before else (significant(updated) or 1.0))
    return out[0], out[1]

"""Step 1 of a tick: the load to plan for, estimated from what telemetry shows."""

from __future__ import annotations

from ..energy.types import Workload
from .planning import significant
from .types import LoadEstimate, Memory, ServiceIntent, Signals


def offered_rate(finished_per_second: float, waiting_requests: float | None, window_s: float) -> float:
    """The load offered, not just served: a saturated fleet finishes fewer requests than arrive, and the rest
    queue. Counting the queue over the window keeps a saturated plan from looking over-provisioned."""
    return max(finished_per_second, 0.0) + max(waiting_requests or 0.0, 0.0) / max(window_s, 1.0)


def stabilised_rate(measured: float, peak: float | None, peak_at: float | None, now: float,
                    window_s: float) -> tuple[float, float]:
    """(rate to plan for, when it was measured): the highest rate measured within `window_s`, held until it is
    older than that, then the current measurement. Like an autoscaler's scale-down stabilisation: a lull shorter
    than the window is noise in a Poisson stream, and planning for it shrinks the fleet only to grow it back."""
    if peak is not None and peak_at is not None and measured == peak and now - peak_at <= window_s / 2:
        return peak, peak_at  # the same rate again: a new timestamp at most twice a window (few status writes)
    if peak is None or peak_at is None or now - peak_at > window_s or measured >= peak:
        return measured, now
    return peak, peak_at


def estimate_load(intent: ServiceIntent, memory: Memory, signals: Signals | None, now_s: float) -> LoadEstimate:
    """Measured when telemetry shows a finished-request rate (stabilised over the cooldown); else, when
    telemetry is lost, the load the running plan was made for; else the spec's."""
    spec = intent.default_workload
    if signals is not None and signals.finished_requests_per_second is not None:
        offered = significant(offered_rate(signals.finished_requests_per_second, signals.waiting_requests,
                                           signals.window_seconds)) or 0.0
        rate, at = stabilised_rate(offered, memory.peak_load_rps, memory.peak_load_at_s, now_s,
                                   intent.cooldown_seconds)
        workload = Workload(
            requests_per_second=significant(rate) or 0.0,
            input_tokens=significant(signals.mean_input_tokens) or spec.input_tokens,
            output_tokens=significant(signals.mean_output_tokens) or spec.output_tokens,
        )
        return LoadEstimate(workload, "measured", rate, at)
    if signals is None and memory.planned_load is not None and memory.running is not None:
        return LoadEstimate(memory.planned_load, "held", memory.peak_load_rps, memory.peak_load_at_s)
    return LoadEstimate(spec, "spec", memory.peak_load_rps, memory.peak_load_at_s)

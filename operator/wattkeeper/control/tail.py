"""The model's tail, learned online: requests measured over an SLO against those the model predicted.

The queued latency model (energy/latency.py) predicts the share of requests over each threshold, and the planner
keeps that share under 1% at the load it plans for. Its tail was fitted on the simulator's engine, not on the
service: where it predicts 1-2% late requests and the service, measured, has none window after window (prefill-heavy
on bf16 tp8: predicted 98.2% within both at 4.8 req/s, measured 100% over the whole run), it asks for a second
replica the fleet never needed. The counts come from vLLM's histograms: TTFTs over the TTFT SLO
(vllm:time_to_first_token_seconds) and finished requests whose mean inter-token latency exceeded the ITL SLO
(vllm:request_time_per_output_token_seconds), over the telemetry window; the prediction is the running plan's at
the load of that window, as planned (its latency margins applied).

Both counts are summed with a decay, and the predicted shares of misses are scaled by their ratio, with a prior of
`TAIL_PRIOR_MISSES` on each side: a few windows without any miss where the model predicted a few do not yet move
it, and a service whose model predicts almost none learns nothing from measuring none.
"""

from __future__ import annotations

from dataclasses import replace

from .types import Memory, Signals

# Per tick, what the earlier windows still count for (windows overlap between ticks: each request is counted in
# about two of them, on both sides alike).
TAIL_DECAY = 0.9
TAIL_PRIOR_MISSES = 5.0
TAIL_SCALE_BOUNDS = (0.35, 4.0)
# Windows whose running plan the model predicts to keep less than this share teach nothing of the tail.
MIN_PREDICTED_SHARE = 0.9


def measured_misses(s: Signals | None) -> tuple[float, float] | None:
    """(requests over either SLO, requests measured) over the window, or None without the counts."""
    if s is None or s.ttft_misses is None or s.itl_misses is None or not s.ttft_observed:
        return None
    return s.ttft_misses + s.itl_misses, max(s.ttft_observed, s.itl_observed or 0.0)


def learned(memory: Memory, signals: Signals | None, predicted_within_share: float | None) -> Memory:
    """`memory` with one more window of the tail's evidence (unchanged without the counts or a prediction)."""
    counts = measured_misses(signals)
    if counts is None or predicted_within_share is None or predicted_within_share < MIN_PREDICTED_SHARE:
        # A plan the model finds short of capacity misses everything in its eyes: what the tail is, it cannot say.
        return memory
    misses, observed = counts
    predicted = max(0.0, 1.0 - predicted_within_share) * observed
    return replace(memory,
                   tail_measured_misses=round(TAIL_DECAY * memory.tail_measured_misses + misses, 3),
                   tail_predicted_misses=round(TAIL_DECAY * memory.tail_predicted_misses + predicted, 3))


def scale(memory: Memory) -> float:
    """Measured over predicted misses, with the prior on both sides, bounded: what the predicted shares of
    requests over the SLOs are multiplied by."""
    ratio = (memory.tail_measured_misses + TAIL_PRIOR_MISSES) / (memory.tail_predicted_misses + TAIL_PRIOR_MISSES)
    lo, hi = TAIL_SCALE_BOUNDS
    return min(max(ratio, lo), hi)


def evidence_for(miss_scale: float) -> tuple[float, float]:
    """(measured, predicted) misses that give `miss_scale` (status keeps the scale): how a budget prices a
    service's demand as the service's own tick plans (control/budget.py)."""
    if miss_scale >= 1.0:
        return TAIL_PRIOR_MISSES * (miss_scale - 1.0), 0.0
    return 0.0, TAIL_PRIOR_MISSES * (1.0 / miss_scale - 1.0)

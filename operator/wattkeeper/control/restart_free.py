"""Restart-free first (issue 11 item 5): the move without a restart, the capacity order, and the history that keeps
the loop from returning to a configuration it just left.

Under a cap the loop used to swing between two configurations: each restart removed a replica's capacity for a
model load, which caused the SLO miss that triggered the next move. Three rules stop that, all pure:
- a forced move (allocation cut, overshoot, SLO missed) first rescales the running configuration (replicas, and the
  GPU power limit where the node agent applies it: planner/inplace.py), which restarts nothing;
- capacity is one strict order, the load a plan carries (load / predicted utilisation), so two plans can never
  each have "more capacity" than the other;
- a configuration left less than `RECENT_SECONDS` ago is not returned to unless the budget or the spec changed.
"""

from __future__ import annotations

from dataclasses import replace

from ..planner import Candidate
from .planning import allocation_changed, significant
from .switching import CAPACITY_MARGIN, CAPACITY_STEP, configuration_key
from .types import Memory, Plan, RecentConfiguration, ShortFleet

RECENT_SECONDS = 1800.0  # no A -> B -> A within 30 minutes
# At most 2 restarts an hour (issue 11): after a restart the next one that is not forced by the budget waits this
# long under the same allocation, whatever the load did. Each restart takes a replica's capacity away for a model
# load; two within minutes under a cap (conv-x1-cap: tok8192 -> tok2048 at 510 s for an ITL miss, back at 1740 s
# when the load moved) cost more SLO than the second one bought.
RESTART_SPACING_SECONDS = 1800.0
RECENT_KEPT = 4
# A rescale of the running configuration is taken over a restart when it draws at most this much more than the
# planner's proposal: a restart costs a model load of idle GPUs and a replica's capacity for a minute.
SCALE_ONLY_WATTS_FACTOR = 1.25


def gpus(p: Plan) -> int:
    return p.replicas * p.config.tensor_parallel


def more_capacity(running_plan: Plan, proposed_plan: Plan, running: Candidate | None,
                  proposed: Candidate | None) -> bool:
    """Whether `proposed` carries more load than `running`, in one strict order: at one load a plan's capacity is
    load / predicted utilisation, so the lower utilisation (by the 2% margin) has more. Only when the model
    cannot evaluate one of them do GPUs decide."""
    if running is not None and proposed is not None:
        return proposed.prediction.utilisation * CAPACITY_MARGIN < running.prediction.utilisation
    if proposed is None:
        return False
    return running is None or gpus(proposed_plan) > gpus(running_plan)


def capacity_ratio(a: Candidate | None, b: Candidate | None) -> float | None:
    """The load `a` carries over the load `b` carries, both at one load (None when either is unknown)."""
    if a is None or b is None or a.prediction.utilisation <= 0 or b.prediction.utilisation <= 0:
        return None
    return b.prediction.utilisation / a.prediction.utilisation


def scale_only_suffices(in_place: Candidate, proposed: Candidate | None) -> bool:
    """Whether rescaling the running configuration does what the proposal's restart would: it meets the SLO
    within `SCALE_ONLY_WATTS_FACTOR` of the proposal's watts, or, when the proposal misses the SLO too (a cap's
    fallback), it carries at least as much load."""
    if proposed is None:
        return in_place.meets_slo
    if in_place.meets_slo:
        return not proposed.meets_slo or in_place.total_watts <= SCALE_ONLY_WATTS_FACTOR * proposed.total_watts
    if proposed.meets_slo:
        return False
    return not (proposed.prediction.utilisation * CAPACITY_MARGIN < in_place.prediction.utilisation)


def load_moved(then_rps: float | None, now_rps: float | None) -> bool:
    """Whether the load moved by a capacity step (`CAPACITY_STEP`, either way) since `then_rps`."""
    if then_rps is None or now_rps is None or then_rps <= 0 or now_rps <= 0:
        return False
    return max(now_rps / then_rps, then_rps / now_rps) >= CAPACITY_STEP


def blocked(memory: Memory, now_s: float, allocation_watts: float | None, load_rps: float | None = None) -> set[str]:
    """The configurations left within `RECENT_SECONDS` under the same allocation and about the same load: not to be
    returned to. The swings this stops happened at one load under one cap; a load that doubled is a new question."""
    return {r.configuration for r in memory.recent_configurations
            if now_s - r.left_at_s < RECENT_SECONDS and not allocation_changed(r.allocation_watts, allocation_watts)
            and not load_moved(r.load_rps, load_rps)}


def restarted_recently(memory: Memory, now_s: float, allocation_watts: float | None) -> bool:
    """Whether pods were restarted within `RESTART_SPACING_SECONDS` under the same allocation (each restart left a
    configuration, so the anti-flap history dates them; it keeps `RECENT_SECONDS` >= the spacing)."""
    return any(now_s - r.left_at_s < RESTART_SPACING_SECONDS and not allocation_changed(r.allocation_watts,
                                                                                       allocation_watts)
               for r in memory.recent_configurations)


def recently_left(memory: Memory, proposed: Plan, now_s: float, allocation_watts: float | None,
                  load_rps: float | None = None) -> bool:
    """Whether `proposed`'s configuration was left within `RECENT_SECONDS` under the same allocation and load."""
    return configuration_key(proposed.config) in blocked(memory, now_s, allocation_watts, load_rps)


def remember_left(memory: Memory, left: Plan, now_s: float, allocation_watts: float | None,
                  load_rps: float | None = None) -> Memory:
    """Add the configuration just left; entries older than `RECENT_SECONDS` (and beyond `RECENT_KEPT`) go."""
    key = configuration_key(left.config)
    kept = [r for r in memory.recent_configurations if now_s - r.left_at_s < RECENT_SECONDS and r.configuration != key]
    entry = RecentConfiguration(key, round(now_s, 3), round(allocation_watts, 1) if allocation_watts else None,
                                significant(load_rps) if load_rps else None)
    return replace(memory, recent_configurations=(*kept, entry)[-RECENT_KEPT:])


SHORT_KEPT = 4


def short_key(plan: Plan) -> str:
    """A fleet's vLLM arguments, without the GPU power limit (set in place, and lifted to bridge a scale-up)."""
    return replace(plan.config, gpu_power_limit_watts=None).short()


def remember_short(memory: Memory, short: Plan, now_s: float, allocation_watts: float | None,
                   load_rps: float) -> Memory:
    """Add a fleet measured short (`ShortFleet`); entries older than `RECENT_SECONDS` (and beyond `SHORT_KEPT`) go,
    and so does one the new one says more than: the same arguments, as many replicas or fewer, short at as much load
    or more. x1 short at 4 req/s still bans x1 at 3.5 req/s after x2 was short at 6."""
    key = short_key(short)
    kept = [e for e in memory.measured_short if now_s - e.at_s < RECENT_SECONDS
            and not (e.configuration == key and e.replicas <= short.replicas and e.load_rps >= load_rps)]
    entry = ShortFleet(key, short.replicas, round(now_s, 3), significant(load_rps) or load_rps,
                       round(allocation_watts, 1) if allocation_watts else None)
    return replace(memory, measured_short=(*kept, entry)[-SHORT_KEPT:])


def measured_short(memory: Memory, target: Plan, now_s: float, allocation_watts: float | None,
                   load_rps: float) -> ShortFleet | None:
    """The fleet measured short within `RECENT_SECONDS`, under the same allocation, that `target` would go back to:
    its arguments with as many replicas or fewer, while the rate served (`load_rps`, measured as `ShortFleet.load_rps`
    was) is not a capacity step below the rate it served when it was measured short."""
    key = short_key(target)
    for e in reversed(memory.measured_short):
        if e.configuration == key and target.replicas <= e.replicas and now_s - e.at_s < RECENT_SECONDS \
                and not allocation_changed(e.allocation_watts, allocation_watts) \
                and load_rps * CAPACITY_STEP > e.load_rps:
            return e
    return None

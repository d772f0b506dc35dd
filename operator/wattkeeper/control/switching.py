"""THE rule that decides a reconfiguration. Every branch is here, in order, and each has a unit test
(tests/unit/test_control_switching.py).

Given the plan that runs and the one the planner proposes at this tick's load, the rule answers Applied, Held or
Unchanged, names the branch (`cause`) and says why:

 1. initial       nothing runs yet                                   -> apply the proposal
 2. spec-changed  the user changed the spec                          -> apply at once
 3. unchanged     the proposal is the running plan                   -> nothing (or re-apply if the pods drifted)
 4. allocation-cut the running plan's predicted watts exceed the allocation (a budget was cut) -> apply at once,
                  by prediction when telemetry is silent: silence never blocks a cut
 5. slo-by-prediction  telemetry is silent, and by prediction the running plan misses its SLO at the held load
                  while the proposal meets it (an allocation was lifted) -> apply: silence never keeps a service
                  degraded that its budget no longer degrades
    telemetry-lost telemetry is silent otherwise                      -> hold: never move *because of* silence
 6. settling      a forced move (measured overshoot, capacity needed) before the fleet has settled -> hold:
                  judge a plan only on measurements of it
 7. measured-overshoot / capacity  forced and settled                -> apply; a capacity move that would take
                  the only replica down (an in-place restart: no room under the allocation to surge) is not forced,
                  since it removes all capacity for a model load: it waits for the cooldown and the saving test
 8. cooldown      an optional move inside the cooldown               -> hold
 9. pinned        Pinned mode serves the spec's plan                 -> apply
10. saving / not-worth  the saving over the horizon against the cost of moving (planner.should_switch)
Whenever the rule holds but the pods no longer match the running plan (changed by hand), the running plan is
re-applied (cause `drift`): holding a plan means keeping it, not just not changing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from ..planner import SwitchDecision
from .types import LoadSource, Plan, Verdict

# A fleet may read up to 2% over its allocation before that counts: measurement noise, and rounding in status.
OVERSHOOT_TOLERANCE = 1.02


@dataclass(frozen=True)
class SwitchFacts:
    """Everything the rule looks at, computed by `control.tick` (or written out by hand in a test)."""

    running: Plan | None
    proposed: Plan
    now_s: float
    plan_reason: str = ""  # the planner's explanation of the proposal
    fleet_exists: bool = True
    fleet_matches_plan: bool = True
    spec_changed: bool = False
    telemetry: bool = True  # telemetry showed something usable this tick
    load_source: LoadSource = "measured"
    allocation_watts: float | None = None  # enforced allocation
    running_predicted_watts: float | None = None  # the running plan at this load, by the (corrected) model
    measured_watts: float | None = None
    running_meets_slo: bool | None = None  # by prediction, at this tick's load (None: not evaluated)
    proposed_meets_slo: bool | None = None
    more_capacity: bool = False  # the proposal carries the load with more headroom than the running plan
    under_pressure: bool = False  # requests wait, an SLO is missed, or nothing was measured yet
    settled: bool = True  # the roll is done, old pods drained, a telemetry window has passed since the change
    outage: bool = False  # the move restarts the only replica in place (no surge): nothing serves while it loads
    cooldown_until_s: float | None = None
    pinned: bool = False
    worth_it: Callable[[], SwitchDecision] | None = None  # saving vs cost; only called when it is the question


def allocation_cut(f: SwitchFacts) -> bool:
    return (f.allocation_watts is not None and f.running_predicted_watts is not None
            and f.running_predicted_watts > f.allocation_watts * OVERSHOOT_TOLERANCE)


def measured_overshoot(f: SwitchFacts) -> bool:
    return (f.allocation_watts is not None and f.measured_watts is not None
            and f.measured_watts > f.allocation_watts * OVERSHOOT_TOLERANCE)


def format_time(seconds: float) -> str:
    """An absolute time: wall-clock seconds as RFC 3339, the benchmark's trace seconds as they are."""
    if seconds > 1e9:
        return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return f"t={seconds:.0f}s"


def switching_rule(f: SwitchFacts) -> Verdict:
    to = f.proposed.describe()
    if f.running is None or not f.fleet_exists:
        return Verdict("Applied", "initial", f"initial plan: {f.plan_reason}", f.proposed)
    running = f.running.describe()
    if f.spec_changed and f.proposed != f.running:
        return Verdict("Applied", "spec-changed", f"spec changed: {f.plan_reason}", f.proposed)
    if f.proposed == f.running:
        return _hold(f, Verdict("Unchanged", "unchanged", ""))
    if allocation_cut(f):
        assert f.allocation_watts is not None and f.running_predicted_watts is not None
        how = "" if f.telemetry else "; acting on predicted watts: no telemetry"
        return Verdict("Applied", "allocation-cut",
                       f"over the power allocation (running plan predicted {f.running_predicted_watts:.0f} W, "
                       f"allocation {f.allocation_watts:.0f} W{how}): {f.plan_reason}", f.proposed)
    if not f.telemetry and f.load_source != "spec" and f.running_meets_slo is False and f.proposed_meets_slo:
        return Verdict("Applied", "slo-by-prediction",
                       f"the running plan misses its SLO by prediction; acting on predicted latency: no telemetry: "
                       f"{f.plan_reason}", f.proposed)
    if not f.telemetry and f.load_source != "spec":
        return _hold(f, Verdict("Held", "telemetry-lost",
                                f"telemetry unavailable, holding {running} (would move to {to})"))
    overshoot = measured_overshoot(f)
    capacity = f.more_capacity and f.under_pressure and not f.outage
    if (overshoot or capacity) and not f.settled:
        # Until the roll is done, the old pods have drained and a telemetry window has passed, telemetry shows
        # the old fleet too, and acting on it flaps.
        return _hold(f, Verdict("Held", "settling", f"settling after the last change before moving to {to}"))
    if overshoot:
        return Verdict("Applied", "measured-overshoot", f"over the power allocation: {f.plan_reason}", f.proposed)
    if capacity:
        return Verdict("Applied", "capacity", f"more capacity needed: {f.plan_reason}", f.proposed)
    if f.cooldown_until_s is not None and f.now_s < f.cooldown_until_s:
        # An absolute time, not "N s left": the reason must not change every tick, or every tick would write.
        return _hold(f, Verdict("Held", "cooldown",
                                f"cooldown until {format_time(f.cooldown_until_s)} before moving to {to}"))
    if f.pinned or f.worth_it is None:
        return Verdict("Applied", "pinned", f.plan_reason, f.proposed)
    verdict = f.worth_it()
    if not verdict.switch:
        return _hold(f, Verdict("Held", "not-worth", f"keeping {running}: {verdict.reason}"))
    return Verdict("Applied", "saving", f"{verdict.reason}: {f.plan_reason}", f.proposed)


def _hold(f: SwitchFacts, verdict: Verdict) -> Verdict:
    """Holding a plan means keeping it: pods that drifted from it (changed by hand) get it back."""
    if f.fleet_matches_plan or f.running is None:
        return verdict
    why = "Deployment drifted from the plan; re-applied"
    if verdict.reason:
        why += f" ({verdict.reason})"
    return Verdict("Applied", "drift", why, f.running)

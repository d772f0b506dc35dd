"""THE rule that decides a reconfiguration. Every branch is here, in order, and each has a unit test
(tests/unit/test_control_switching.py).

Given the plan that runs and the one the planner proposes at this tick's load, the rule answers Applied, Held or
Unchanged, names the branch (`cause`) and says why:

 1. initial       nothing runs yet                                   -> apply the proposal
 2. spec-changed  the user changed the spec                          -> apply at once
 3. unchanged     the proposal is the running plan                   -> nothing (or re-apply if the pods drifted)
 4. allocation-cut the running plan's predicted watts exceed the allocation (a budget was cut) -> apply at once,
                  by prediction when telemetry is silent: silence never blocks a cut; but never into a plan
                  predicted to draw as much as the running one (hold: nothing draws less)
 5. slo-by-prediction  telemetry is silent, and by prediction the running plan misses its SLO at the held load
                  while the proposal meets it (an allocation was lifted) -> apply: silence never keeps a service
                  degraded that its budget no longer degrades
    telemetry-lost telemetry is silent otherwise                      -> hold: never move *because of* silence
 6. settling      a forced move (measured overshoot, capacity needed) before the fleet has settled -> hold:
                  judge a plan only on measurements of it; but replicas of the running configuration added on a
                  predicted miss alone, the load planned for a capacity step above the one the running plan was
                  applied at, are not held (the estimate reads arrivals, not the fleet in transition)
 7. measured-overshoot / capacity  forced and settled                -> apply; no capacity restart while the arrivals
                  fell by a capacity step and nothing queues, nor into a fallback while the fleet keeps up as measured; a capacity move that would take
                  the only replica down (an in-place restart: no room under the allocation to surge) is not forced,
                  since it removes all capacity for a model load: it waits for the cooldown and the saving test.
                  A capacity restart goes only into a plan predicted to meet the SLO. Measured room to spare
                  (both p95s within 60% of their SLO, under one request waiting) outweighs the model: a queue of a
                  request now and then is no shortfall, and a predicted miss is not acted on where the running
                  plan was measured carrying about that load, or where the arrivals fell below the held peak.
                  A restart into other batch limits whose roll surges, ahead of a predicted miss, is taken over
                  a rescale that would draw a capacity step more watts (`_cheaper_by_surge`).
 8. cooldown      an optional move inside the cooldown               -> hold; but with room to spare measured (by the
                  p95s, or by what is scored: `keeps_scored`), giving up replicas without a restart is not
                  held: the load planned for is already the peak held over the stabilisation window (as the
                  HPA's scale-down stabilisation), and a second wait kept 16 replicas where 5 carried the load
                  (conv-x4)
 9. pinned        Pinned mode serves the spec's plan                 -> apply
10. saving / not-worth / recently-left  the saving over the horizon against the cost of moving
                  (planner.should_switch), the proposal's and the rescale's, the larger net saving wins; a
                  restart for a saving only into a plan predicted to meet the SLO; never back to a fleet measured
                  short lately (`measured-short`: settled, under pressure, left by a capacity move; as few
                  replicas of its arguments, within 30 minutes, while the rate served is not a capacity step below
                  what it served then); nor to fewer replicas loaded a capacity step beyond what their latency
                  margin was learned at, where they miss the SLO with the model's doubt (`beyond-measured-load`)
Restart-free first (control/restart_free.py): in 4, 5 and 7 the running configuration rescaled (`in_place`:
replicas, GPU power limit) is applied instead of a restart when it does what the restart would, or when the
restart would return to a configuration left < 30 minutes ago under the same allocation (`recently_left`).
A capacity restart into a cap's fallback (predicted to miss the SLO) never returns to a configuration left < 30
minutes ago, even when the load moved since (`left_at_any_load`).
At most 2 restarts an hour (`restarted_recently`, cause `restart-spacing`): within 30 minutes of a restart under
the same allocation only a forced move (a cut, a measured overshoot) restarts pods again; capacity comes from a
rescale, a saving waits.
Whenever the rule holds but the pods no longer match the running plan (changed by hand), the running plan is
re-applied (cause `drift`): holding a plan means keeping it, not just not changing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from ..energy.types import ServingConfig
from ..planner import SwitchDecision
from .types import LoadSource, Plan, Verdict

# A fleet may read up to 2% over its allocation before that counts: measurement noise, and rounding in status.
OVERSHOOT_TOLERANCE = 1.02
# Capacity worth a restart, or given up to avoid one, when no plan within the watts meets the SLO: 25%.
CAPACITY_STEP = 1.25
# Capacities within 2% are equal: the model is not more precise, and a strict margin keeps the order asymmetric.
CAPACITY_MARGIN = 1.02


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
    proposed_predicted_watts: float | None = None  # the proposal at this load, by the same model
    measured_watts: float | None = None
    running_meets_slo: bool | None = None  # by prediction, at this tick's load (None: not evaluated)
    proposed_meets_slo: bool | None = None
    more_capacity: bool = False  # the proposal carries the load with more headroom than the running plan
    under_pressure: bool = False  # requests wait, an SLO is missed, or nothing was measured yet
    # The arrivals in the window are a capacity step below the recent ones (the load planned for is a peak the
    # stabilisation holds over a load that fell), and hardly anything waits: no capacity restart on it.
    load_fell: bool = False
    # Measured, the fleet keeps up: no SLO missed and under one request waits on average over the window.
    keeps_up: bool = False
    slo_missed: bool = False  # the measured p95 TTFT or ITL is over its SLO
    # The load planned for is a capacity step above the load the running plan was applied at.
    load_rose: bool = False
    # Measured, the running plan carried about the load planned for with room to spare (tick.py `carries_load`):
    # a prediction that it misses there is the model's error, not a rise; no capacity move on it alone.
    carries_load: bool = False
    # Measured, the running plan has room to spare (tick.py `has_slack`): a request or two waiting now and then
    # is then no shortfall.
    has_slack: bool = False
    # Measured, the running plan kept what is scored with room (tick.py `keeps_scored`): both p95s within their
    # SLOs, all but a few requests within both, a queue that neither builds nor waits long; at the load planned
    # for (`carries_load`), a request or two waiting is then no shortfall either.
    keeps_scored: bool = False
    settled: bool = True  # the roll is done, old pods drained, a telemetry window has passed since the change
    outage: bool = False  # the move restarts the only replica in place (no surge): nothing serves while it loads
    surges: bool = False  # the proposal's roll surges: its replicas load beside the running ones (tick.rolls_with_surge)
    cooldown_until_s: float | None = None
    pinned: bool = False
    worth_it: Callable[[], SwitchDecision] | None = None  # saving vs cost; only called when it is the question
    # Restart-free first (control/restart_free.py): the running configuration rescaled (replicas, GPU power
    # limit) within the allocation, offered only when the proposal would restart pods.
    in_place: Plan | None = None
    in_place_suffices: bool = False  # it does what the proposal's restart would (restart_free.scale_only_suffices)
    in_place_more_capacity: bool = False  # it carries more load than the running plan
    in_place_worth_it: Callable[[], SwitchDecision] | None = None
    in_place_predicted_watts: float | None = None  # the rescale at this load, by the same model as the proposal
    recently_left: bool = False  # the proposal's configuration was left < 30 min ago under the same allocation
    # ... and so it was whatever the load did since (the load lift of the ban is for a return that meets the SLO at
    # the new load, not for a cap's fallback: `_capacity_target`).
    left_at_any_load: bool = False
    # Pods were restarted within 30 minutes under the same allocation (restart_free.restarted_recently): at most 2
    # restarts an hour, so only a forced move (a cut, an overshoot) restarts again; capacity comes from a rescale.
    restarted_recently: bool = False
    # Load carried at this tick's load (load / predicted utilisation): the proposal's over the running plan's, the
    # rescale's over the proposal's (None: not evaluated).
    proposed_capacity_ratio: float | None = None
    in_place_capacity_ratio: float | None = None
    # The proposal's / the rescale's fleet was measured short lately at about this load (restart_free.measured_short):
    # when, in words; None where it was not. No saving goes back to it.
    proposed_short: str | None = None
    in_place_short: str | None = None
    # The proposal / the rescale gives up replicas of the running arguments, loading each one beyond what their
    # latency margin was learned at, and misses the SLO with the model's doubt on it (tick.beyond_learned_load): in
    # words; None where not. No saving goes there.
    proposed_beyond: str | None = None
    in_place_beyond: str | None = None

    @property
    def proposed_restarts(self) -> bool:
        """The proposal changes more than replicas and the GPU power limit (those change without a restart)."""
        return self.running is not None and restarts(self.running, self.proposed)


def configuration_key(config: ServingConfig) -> str:
    """A configuration as the anti-flap history knows it: precision, TP and KV-cache dtype. A return to the same
    weights and sharding with other batch limits is still a return (A -> B -> A')."""
    text = f"{config.precision} tp{config.tensor_parallel}"
    return text + (f" kv-{config.kv_cache_dtype}" if config.kv_cache_dtype else "")


def restarts(running: Plan, proposed: Plan) -> bool:
    """Whether moving from `running` to `proposed` restarts pods: any vLLM argument changes; replicas and the GPU
    power limit (set in place by the node agent) do not."""
    return replace(running.config, gpu_power_limit_watts=None) != replace(proposed.config, gpu_power_limit_watts=None)


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
    alt = f.in_place if f.proposed_restarts and f.in_place is not None and f.in_place != f.running else None
    if allocation_cut(f):
        assert f.allocation_watts is not None and f.running_predicted_watts is not None
        how = "" if f.telemetry else "; acting on predicted watts: no telemetry"
        target, why = _forced_target(f, alt)
        if target is f.proposed and not _draws_less(f):
            # Nothing that fits draws less than what runs (the running plan already is the least power there
            # is): a restart would cost a model load for no watt saved, and the next tick would swing back.
            return _hold(f, Verdict("Held", "allocation-cut",
                                    f"over the power allocation (running plan predicted {f.running_predicted_watts:.0f}"
                                    f" W, allocation {f.allocation_watts:.0f} W{how}), and nothing draws less: "
                                    f"keeping {running} (the proposal {to} would draw "
                                    f"{f.proposed_predicted_watts or 0:.0f} W)"))
        return Verdict("Applied", "allocation-cut",
                       f"over the power allocation (running plan predicted {f.running_predicted_watts:.0f} W, "
                       f"allocation {f.allocation_watts:.0f} W{how}): {why}", target)
    if not f.telemetry and f.load_source != "spec" and f.running_meets_slo is False and f.proposed_meets_slo:
        target, why = _forced_target(f, alt)
        return Verdict("Applied", "slo-by-prediction",
                       f"the running plan misses its SLO by prediction; acting on predicted latency: no telemetry: "
                       f"{why}", target)
    if not f.telemetry and f.load_source != "spec":
        return _hold(f, Verdict("Held", "telemetry-lost",
                                f"telemetry unavailable, holding {running} (would move to {to})"))
    overshoot = measured_overshoot(f)
    # Pressure measured (a queue, an SLO missed), or predicted: the running plan misses what is scored at this
    # load while the proposal meets it (a rise the window's p95s do not show yet).
    # Not where the measurement of the running plan contradicts it: it carried about that load with room to spare,
    # or the arrivals fell a capacity step below the held peak and it has room to spare (no rise to get ahead of).
    predicted_miss = f.running_meets_slo is False and bool(f.proposed_meets_slo) and not f.carries_load \
        and not (f.load_fell and f.has_slack)
    # A request or two waiting now and then is no shortfall where both p95s have room to spare (`carries_load`).
    # Nor where it kept what is scored at the load planned for (`keeps_scored`, `carries_load`): a queue of about a
    # request at 22 req/s is 45 ms of wait. Not where the load planned for is a rise it has not served yet.
    pressure = f.under_pressure and not (f.has_slack or (f.keeps_scored and f.carries_load))
    capacity = _capacity_target(f, alt, restart=not f.load_fell) if (pressure or predicted_miss) else None
    # Replicas of the running configuration added on a predicted miss alone (nothing measured short) after the load
    # rose a capacity step above the one the running plan was applied at are not held for settling: the estimate
    # reads the arrivals, not the fleet in transition, and adding restarts nothing (bursty s4: 3.2 -> 4.7 req/s in
    # the first minute; x2 held until 180 s lost 91 requests). Without the rise the wait stays: a prediction a
    # tick after a shed (prefill-heavy s8: x1 <-> x2 every 90-150 s) is the model's scatter, not a rise.
    adds_only = capacity is not None and predicted_miss and f.load_rose and not pressure and not overshoot \
        and not restarts(f.running, capacity[0]) and capacity[0].replicas > f.running.replicas
    if (overshoot or capacity) and not f.settled and not adds_only:
        # Until the roll is done, the old pods have drained and a telemetry window has passed, telemetry shows
        # the old fleet too, and acting on it flaps.
        return _hold(f, Verdict("Held", "settling", f"settling after the last change before moving to {to}"))
    if overshoot:
        target, why = _forced_target(f, alt)
        return Verdict("Applied", "measured-overshoot", f"over the power allocation: {why}", target)
    if capacity is not None:
        return Verdict("Applied", "capacity", f"more capacity needed: {capacity[1]}", capacity[0])
    cooling = f.cooldown_until_s is not None and f.now_s < f.cooldown_until_s
    # Room to spare inside the cooldown: by the p95s (`has_slack`) or by what is scored (`keeps_scored`). A fleet
    # with an 8192-token chunk budget reads a token-gap p95 of 80-95 ms while its requests' mean ITL p95 is 35 ms:
    # by the p95s alone conv-x4 s2 held tp4 x6 for a cooldown at 19 req/s where x4 kept 99.7% (bench/README.md).
    room = f.has_slack or f.keeps_scored
    if cooling and not (room and _sheds_without_restart(f, alt)):
        # An absolute time, not "N s left": the reason must not change every tick, or every tick would write.
        assert f.cooldown_until_s is not None
        return _hold(f, Verdict("Held", "cooldown",
                                f"cooldown until {format_time(f.cooldown_until_s)} before moving to {to}"))
    if f.pinned or f.worth_it is None:
        return Verdict("Applied", "pinned", f.plan_reason, f.proposed)
    return _optional(f, alt, in_place_only=cooling)


def _sheds_without_restart(f: SwitchFacts, alt: Plan | None) -> bool:
    """Whether the move on offer gives up replicas without restarting any: the proposal, or else the running
    configuration rescaled."""
    if f.running is None:
        return False
    if not f.proposed_restarts:
        return f.proposed.replicas < f.running.replicas
    return alt is not None and alt.replicas < f.running.replicas


def _draws_less(f: SwitchFacts) -> bool:
    """Whether the proposal is predicted to draw less than the running plan (unknown counts as less)."""
    if f.proposed_predicted_watts is None or f.running_predicted_watts is None:
        return True
    return f.proposed_predicted_watts < f.running_predicted_watts / CAPACITY_MARGIN


def _no_restart(f: SwitchFacts, alt: Plan) -> str:
    return f"no restart: {alt.describe()} (the running configuration rescaled) instead of {f.proposed.describe()}"


def _forced_target(f: SwitchFacts, alt: Plan | None) -> tuple[Plan, str]:
    """A forced move rescales the running configuration when that does what the restart would, or when the
    restart would return to a configuration just left; else the proposal."""
    if alt is not None and f.in_place_suffices:
        return alt, _no_restart(f, alt)
    # Rescaling gives up less than a capacity step: taken over a restart that would return to a configuration
    # just left, or that would miss the SLO as well (a cap's fallback: a restart buys no SLO there).
    close = f.in_place_capacity_ratio is None or f.in_place_capacity_ratio * CAPACITY_STEP >= 1.0
    if alt is not None and close and (f.recently_left or f.restarted_recently or not f.proposed_meets_slo):
        return alt, _no_restart(f, alt)
    return f.proposed, f.plan_reason


def _cheaper_by_surge(f: SwitchFacts) -> bool:
    """Whether a restart ahead of a predicted miss costs no capacity and saves a capacity step of watts against the
    rescale: the running plan is predicted to miss at this load and the proposal to meet it (an SLO measured missed
    restarts into such a proposal anyway, `_capacity_target`), the proposal's roll surges (its replicas load beside
    the running ones: nothing serves less meanwhile), it is neither a return to a configuration just left nor a
    third restart within the hour, and the rescale would draw at least CAPACITY_STEP x its watts. Restart-free first
    is for a miss, where a roll's lost replica deepens it; a surge loses none. The capacity order does not see this
    one: a smaller chunk budget keeps the ITL tail at a load where the larger one misses it at about the same
    throughput (prefill-heavy s2 at 450 s: bf16 tp8 tok8192 x1 -> x2 for 300 s, where tok2048 x1 draws 3448 W).
    Only batch limits may change (`configuration_key`: precision, TP, KV dtype kept): the weights as measured,
    with their learned margin. Another TP or precision carries the untried prior, and a miss there costs a second
    move (bursty s3: tp4 x2 -> tp8 x1 at 180 s learned an ITL margin of 1.6-2.6 and ran tp8 x2, 16 GPUs, from
    900 s, where tp4 x2-x3 kept 99.5%)."""
    if f.running is None or configuration_key(f.running.config) != configuration_key(f.proposed.config):
        return False
    if f.running_meets_slo is not False or not f.proposed_meets_slo:
        return False
    if not (f.proposed_restarts and f.surges) or f.outage or f.recently_left or f.restarted_recently:
        return False
    if f.in_place_predicted_watts is None or f.proposed_predicted_watts is None:
        return False
    return f.in_place_predicted_watts >= f.proposed_predicted_watts * CAPACITY_STEP


def _capacity_target(f: SwitchFacts, alt: Plan | None, restart: bool = True) -> tuple[Plan, str] | None:
    """Where more capacity comes from, restart-free first; a restart only while the load is there (`restart`: it
    did not fall), into a plan predicted to meet the SLO, not taking the only replica down, and not back to a
    configuration just left (for a fallback predicted to miss the SLO: left within 30 minutes, whatever the load
    did)."""
    if alt is not None and f.in_place_more_capacity and f.in_place_suffices:
        return alt, _no_restart(f, alt)
    if f.more_capacity and not f.proposed_restarts:
        return f.proposed, f.plan_reason
    if not restart:
        return (alt, _no_restart(f, alt)) if alt is not None and f.in_place_more_capacity else None
    # A restart for capacity goes into a plan predicted to meet the SLO; when none within the watts does (a cap's
    # fallback), only into one carrying a capacity step more, and never back to a configuration left within 30
    # minutes, even at a load that moved by a capacity step since: the lift is for a return that meets the SLO at
    # the new load; a fallback predicted to miss it there buys a model load for a miss either way, on a capacity
    # ratio that rests on two learned margins (conv-x4-cap: bf16 tp4, left at 420 s at 19 req/s, restarted back
    # into at 1860 s at 33.5 req/s, predicted 6.5 s TTFT p95, on a bf16 tp8 ITL margin that one draining window
    # had raised from 0.92 to 1.53).
    # A fallback only on a shortfall measured (the SLO missed, a queue): where the running plan keeps up as
    # measured, a prediction that it misses is no reason to restart into another plan predicted to miss too
    # (bursty-cap s2: TTFT p95 1.0 s, ITL p95 95 ms, a queue of 0.08; tp8 tok8192 -> tok2048 at 2.5x the SLO).
    step = f.proposed_capacity_ratio is not None and f.proposed_capacity_ratio >= CAPACITY_STEP \
        and not f.left_at_any_load and not f.keeps_up
    # A fallback buys no SLO by a restart: a rescale that adds capacity and gives up less than a capacity step
    # against it is taken instead, as a forced move takes it (`_forced_target`; bursty-cap s2: tp8 tok8192 ->
    # tok2048, a fallback 2.5x over the SLO, restarted where lifting the GPU power limit carried the load).
    close = f.in_place_capacity_ratio is None or f.in_place_capacity_ratio * CAPACITY_STEP >= 1.0
    if alt is not None and f.in_place_more_capacity and not f.proposed_meets_slo and close:
        return alt, _no_restart(f, alt)
    spaced = not f.recently_left and not f.restarted_recently
    if f.more_capacity and (f.proposed_meets_slo or step) and not f.outage and spaced:
        return f.proposed, f.plan_reason
    # The SLO measured missed, the proposal predicted to meet it: a restart even without more load carried (a
    # smaller batch limit that keeps the ITL, say). A restart only: fewer replicas of the running configuration
    # are not "more capacity" (with a longer settling wait, tried, conv-x4 s1 went x6 -> x4 here at 690 s, as
    # "capacity").
    if f.slo_missed and f.proposed_meets_slo and f.proposed_restarts and not f.outage and spaced:
        return f.proposed, f.plan_reason
    if _cheaper_by_surge(f):
        return f.proposed, f.plan_reason
    if alt is not None and f.in_place_more_capacity:
        return alt, _no_restart(f, alt)
    return None


def _optional(f: SwitchFacts, alt: Plan | None, in_place_only: bool = False) -> Verdict:
    """An optional move: the one whose saving over the horizon beats its cost by the most; never back to a
    configuration just left."""
    assert f.worth_it is not None
    options: list[tuple[Plan, SwitchDecision]] = []
    # While the SLO is missed no optional move gives up capacity, however much it saves, unless it is predicted
    # to meet the SLO.
    gives_up = f.slo_missed and not f.proposed_meets_slo and f.proposed_capacity_ratio is not None \
        and f.proposed_capacity_ratio * CAPACITY_MARGIN < 1.0
    # A restart for a saving goes only into a plan predicted to meet the SLO: one that misses it trades requests
    # for watts, which only a forced move (a cut, an overshoot) may do; a saving bought so, under a cap, was a
    # reload into an untried precision that then needed more replicas than the cap holds.
    gamble = f.proposed_restarts and f.proposed_meets_slo is False
    spaced = not (f.proposed_restarts and (f.recently_left or f.restarted_recently))
    # A fleet measured short at about this load is no saving, whatever the model says of it: x2 -> x1 90 s after
    # x1 was measured short took prefill-heavy s7 to 98.21% within both SLOs.
    restart = f.worth_it() if spaced and not gives_up and not gamble and f.proposed_short is None \
        and f.proposed_beyond is None and not (in_place_only and f.proposed_restarts) else None
    if restart is not None:
        options.append((f.proposed, restart))
    shrinks = f.slo_missed and alt is not None and f.running is not None and alt.replicas < f.running.replicas
    if alt is not None and f.in_place_worth_it is not None and not shrinks and f.in_place_short is None \
            and f.in_place_beyond is None:
        options.append((alt, f.in_place_worth_it()))
    moves = [(p, d) for p, d in options if d.switch]
    if moves:
        target, verdict = max(moves, key=lambda o: o[1].saving_joules - o[1].cost_joules)
        if target == f.proposed:
            return Verdict("Applied", "saving", f"{verdict.reason}: {f.plan_reason}", target)
        return Verdict("Applied", "saving", f"{verdict.reason}: {_no_restart(f, target)}", target)
    if restart is None and gamble:
        return _hold(f, Verdict("Held", "not-worth", f"keeping {f.running.describe() if f.running else ''}: "
                                f"{f.proposed.describe()} is predicted to miss the SLO; a saving never restarts "
                                "into that"))
    if restart is None and gives_up:
        return _hold(f, Verdict("Held", "not-worth", f"keeping {f.running.describe() if f.running else ''}: "
                                "the SLO is missed, no optional move gives up capacity"))
    keeping = f"keeping {f.running.describe() if f.running else 'the running plan'}"
    short = f.proposed_short if restart is None and f.proposed_short is not None else f.in_place_short
    if short is not None:
        return _hold(f, Verdict("Held", "measured-short", f"{keeping}: {short}"))
    beyond = f.proposed_beyond if restart is None and f.proposed_beyond is not None else f.in_place_beyond
    if beyond is not None:
        return _hold(f, Verdict("Held", "beyond-measured-load", f"{keeping}: {beyond}"))
    if restart is None and f.recently_left:
        return _hold(f, Verdict("Held", "recently-left",
                                f"{keeping}: {f.proposed.config.short()} was left less than 30 minutes ago"))
    if restart is None and f.restarted_recently:
        return _hold(f, Verdict("Held", "restart-spacing", f"{keeping}: pods were restarted less than 30 minutes "
                                "ago (at most 2 restarts an hour)"))
    if restart is None:
        # Inside the cooldown only a shed without a restart may move (`in_place_only`), and it was not worth it.
        assert f.cooldown_until_s is not None
        return _hold(f, Verdict("Held", "cooldown", f"cooldown until {format_time(f.cooldown_until_s)} before "
                                f"moving to {f.proposed.describe()}"))
    return _hold(f, Verdict("Held", "not-worth",
                            f"keeping {f.running.describe() if f.running else ''}: {restart.reason}"))


def _hold(f: SwitchFacts, verdict: Verdict) -> Verdict:
    """Holding a plan means keeping it: pods that drifted from it (changed by hand) get it back."""
    if f.fleet_matches_plan or f.running is None:
        return verdict
    why = "Deployment drifted from the plan; re-applied"
    if verdict.reason:
        why += f" ({verdict.reason})"
    return Verdict("Applied", "drift", why, f.running)

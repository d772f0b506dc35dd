"""The switching rule (control/switching.py), one case per branch, as a table."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from wattkeeper.control import Plan, SwitchFacts, switching_rule
from wattkeeper.energy.types import ServingConfig
from wattkeeper.planner import SwitchDecision

RUNNING = Plan(ServingConfig("bf16", 1, 256, 8192), 2)
BIGGER = Plan(ServingConfig("bf16", 1, 256, 8192), 3)
FP8 = Plan(ServingConfig("fp8", 1, 256, 8192), 1)
SMALLER = Plan(ServingConfig("bf16", 1, 256, 8192), 1)
SMALL_CHUNK = Plan(ServingConfig("bf16", 1, 256, 2048), 1)
SAVES = SwitchDecision(True, "saves 0.5 kWh", 2e6, 1e6)
NOT_WORTH = SwitchDecision(False, "saving does not beat the cost", 1e5, 1e6)


def facts(**overrides: Any) -> SwitchFacts:
    base = SwitchFacts(running=RUNNING, proposed=FP8, now_s=1000.0, plan_reason="least energy",
                       worth_it=lambda: SAVES, running_predicted_watts=1000.0, measured_watts=1000.0)
    return replace(base, **overrides)


# A queue, the running plan predicted to miss, and a restart into other batch limits that surges, against a rescale
# predicted to draw a capacity step (1.25x) more watts (switching._cheaper_by_surge).
SURGING = facts(under_pressure=True, running_meets_slo=False, proposed_meets_slo=True, in_place=BIGGER,
                in_place_more_capacity=True, surges=True, proposed=SMALL_CHUNK, proposed_predicted_watts=1000.0,
                in_place_predicted_watts=1250.0, cooldown_until_s=5000.0)

# (case, facts, action, cause, what is applied)
CASES: list[tuple[str, SwitchFacts, str, str, Plan | None]] = [
    ("nothing runs yet", facts(running=None), "Applied", "initial", FP8),
    ("no Deployment yet", facts(fleet_exists=False), "Applied", "initial", FP8),
    ("spec changed", facts(spec_changed=True, cooldown_until_s=5000.0), "Applied", "spec-changed", FP8),
    ("spec changed, same plan", facts(spec_changed=True, proposed=RUNNING), "Unchanged", "unchanged", None),
    ("the proposal is the running plan", facts(proposed=RUNNING), "Unchanged", "unchanged", None),
    ("drifted, same plan: re-apply", facts(proposed=RUNNING, fleet_matches_plan=False), "Applied", "drift",
     RUNNING),
    ("allocation cut, measured", facts(allocation_watts=600.0, cooldown_until_s=5000.0, settled=False),
     "Applied", "allocation-cut", FP8),
    ("allocation cut, no telemetry: acts on prediction",
     facts(allocation_watts=600.0, telemetry=False, measured_watts=None, load_source="held"),
     "Applied", "allocation-cut", FP8),
    ("allocation cut, but the proposal draws more than what runs: hold, no restart for nothing",
     facts(allocation_watts=600.0, proposed_predicted_watts=1300.0), "Held", "allocation-cut", None),
    ("allocation cut, the proposal draws about as much (within 2%): hold",
     facts(allocation_watts=600.0, proposed_predicted_watts=990.0), "Held", "allocation-cut", None),
    ("allocation cut, the proposal draws less: apply", facts(allocation_watts=600.0, proposed_predicted_watts=700.0),
     "Applied", "allocation-cut", FP8),
    ("a saving into a restart predicted to miss the SLO: hold",
     facts(proposed_meets_slo=False), "Held", "not-worth", None),
    ("allocation within 2%: no cut", facts(allocation_watts=990.0, cooldown_until_s=5000.0),
     "Held", "cooldown", None),
    ("telemetry lost: hold", facts(telemetry=False, measured_watts=None, load_source="held"),
     "Held", "telemetry-lost", None),
    ("telemetry lost, the running plan misses its SLO by prediction: restore it",
     facts(telemetry=False, measured_watts=None, load_source="held", running_meets_slo=False,
           proposed_meets_slo=True, cooldown_until_s=5000.0), "Applied", "slo-by-prediction", FP8),
    ("telemetry lost, neither plan meets the SLO: hold",
     facts(telemetry=False, measured_watts=None, load_source="held", running_meets_slo=False,
           proposed_meets_slo=False), "Held", "telemetry-lost", None),
    ("telemetry lost, drifted: re-apply the running plan",
     facts(telemetry=False, measured_watts=None, load_source="held", fleet_matches_plan=False),
     "Applied", "drift", RUNNING),
    ("nothing measured yet, spec load: not held for silence",
     facts(telemetry=False, measured_watts=None, load_source="spec", cooldown_until_s=5000.0),
     "Held", "cooldown", None),
    ("measured overshoot before settling", facts(allocation_watts=1200.0, measured_watts=1300.0, settled=False),
     "Held", "settling", None),
    ("measured overshoot, settled", facts(allocation_watts=1200.0, measured_watts=1300.0, cooldown_until_s=5000.0),
     "Applied", "measured-overshoot", FP8),
    ("capacity needed before settling", facts(proposed=BIGGER, more_capacity=True, under_pressure=True,
                                              settled=False), "Held", "settling", None),
    ("a predicted miss after the load rose a capacity step, before settling: replicas added, no wait",
     facts(proposed=BIGGER, more_capacity=True, running_meets_slo=False, proposed_meets_slo=True, load_rose=True,
           settled=False), "Applied", "capacity", BIGGER),
    ("a predicted miss before settling, the load not risen a capacity step: wait",
     facts(proposed=BIGGER, more_capacity=True, running_meets_slo=False, proposed_meets_slo=True, settled=False),
     "Held", "settling", None),
    ("a predicted miss after a rise, before settling, into a restart: wait",
     facts(more_capacity=True, running_meets_slo=False, proposed_meets_slo=True, load_rose=True, settled=False),
     "Held", "settling", None),
    ("pressure measured after a rise, before settling: wait (the window shows the fleet in transition)",
     facts(proposed=BIGGER, more_capacity=True, under_pressure=True, running_meets_slo=False,
           proposed_meets_slo=True, load_rose=True, settled=False), "Held", "settling", None),
    ("capacity needed, settled, in cooldown", facts(proposed=BIGGER, more_capacity=True, under_pressure=True,
                                                    cooldown_until_s=5000.0), "Applied", "capacity", BIGGER),
    ("a predicted miss, settled, in cooldown", facts(proposed=BIGGER, more_capacity=True, running_meets_slo=False,
                                                      proposed_meets_slo=True, cooldown_until_s=5000.0),
     "Applied", "capacity", BIGGER),
    ("a predicted miss the measurement contradicts (it carried the load with room to spare): no capacity move",
     facts(proposed=BIGGER, more_capacity=True, running_meets_slo=False, proposed_meets_slo=True, carries_load=True,
           has_slack=True, cooldown_until_s=5000.0), "Held", "cooldown", None),
    ("a predicted miss at a held peak the arrivals fell below, with room to spare: no capacity move",
     facts(proposed=BIGGER, more_capacity=True, running_meets_slo=False, proposed_meets_slo=True, load_fell=True,
           has_slack=True, cooldown_until_s=5000.0), "Held", "cooldown", None),
    ("a request now and then waits, both p95s with room to spare: no pressure",
     facts(proposed=BIGGER, more_capacity=True, under_pressure=True, has_slack=True, cooldown_until_s=5000.0),
     "Held", "cooldown", None),
    ("a queue of about a request, nearly every request within both SLOs at the load planned for: no pressure",
     facts(proposed=BIGGER, more_capacity=True, under_pressure=True, keeps_scored=True, carries_load=True,
           cooldown_until_s=5000.0), "Held", "cooldown", None),
    ("the same, but the load planned for is a rise it has not served (conv-x4 s7's cold start): capacity",
     facts(proposed=BIGGER, more_capacity=True, under_pressure=True, keeps_scored=True, cooldown_until_s=5000.0),
     "Applied", "capacity", BIGGER),
    ("a queue, the running plan predicted to miss; a restart into other batch limits that surges draws a "
     "capacity step less than the rescale: the restart (nothing serves less while it loads)",
     SURGING, "Applied", "capacity", SMALL_CHUNK),
    ("the same, but into another TP or precision (untried): restart-free first",
     replace(SURGING, proposed=FP8), "Applied", "capacity", BIGGER),
    ("the same, but the roll does not surge: restart-free first",
     replace(SURGING, surges=False), "Applied", "capacity", BIGGER),
    ("the same, surging, the rescale under a capacity step more watts: restart-free first",
     replace(SURGING, in_place_predicted_watts=1240.0), "Applied", "capacity", BIGGER),
    ("the same, surging, a restart within 30 minutes of the last: restart-free first",
     replace(SURGING, restarted_recently=True), "Applied", "capacity", BIGGER),
    ("more capacity without pressure is optional", facts(proposed=BIGGER, more_capacity=True,
                                                         cooldown_until_s=5000.0), "Held", "cooldown", None),
    ("capacity by restarting the only replica in place: not forced",
     facts(more_capacity=True, under_pressure=True, outage=True, cooldown_until_s=5000.0), "Held", "cooldown", None),
    ("cooldown", facts(cooldown_until_s=1200.0), "Held", "cooldown", None),
    ("cooldown, room to spare, a scale-down without restart: the held peak is the stabilisation, no wait",
     facts(proposed=SMALLER, has_slack=True, cooldown_until_s=1200.0), "Applied", "saving", SMALLER),
    ("cooldown, what is scored kept with room, a scale-down without restart: no wait either",
     facts(proposed=SMALLER, keeps_scored=True, cooldown_until_s=1200.0), "Applied", "saving", SMALLER),
    ("cooldown, a scale-down without restart but no room to spare: wait",
     facts(proposed=SMALLER, cooldown_until_s=1200.0), "Held", "cooldown", None),
    ("cooldown, room to spare, a restart proposed: only its rescale may move",
     facts(has_slack=True, in_place=SMALLER, in_place_worth_it=lambda: SAVES, cooldown_until_s=1200.0),
     "Applied", "saving", SMALLER),
    ("cooldown, room to spare, a restart proposed, shedding in place not worth it: wait for the cooldown",
     facts(has_slack=True, in_place=SMALLER, in_place_worth_it=lambda: NOT_WORTH, cooldown_until_s=1200.0),
     "Held", "cooldown", None),
    ("cooldown, room to spare, a restart proposed and nothing to shed in place: wait",
     facts(has_slack=True, cooldown_until_s=1200.0), "Held", "cooldown", None),
    ("cooldown, drifted: re-apply", facts(cooldown_until_s=1200.0, fleet_matches_plan=False), "Applied", "drift",
     RUNNING),
    ("cooldown over, saving beats the cost", facts(cooldown_until_s=900.0), "Applied", "saving", FP8),
    ("saving does not beat the cost", facts(worth_it=lambda: NOT_WORTH), "Held", "not-worth", None),
    ("pinned", facts(pinned=True, worth_it=None), "Applied", "pinned", FP8),
]


@pytest.mark.parametrize(("case", "given", "action", "cause", "applied"), CASES, ids=[c[0] for c in CASES])
def test_switching_rule(case: str, given: SwitchFacts, action: str, cause: str, applied: Plan | None) -> None:
    verdict = switching_rule(given)
    assert (verdict.action, verdict.cause) == (action, cause), verdict.reason
    assert verdict.apply == applied
    if action != "Unchanged":
        assert verdict.reason


def test_a_cut_without_telemetry_says_it_acts_on_prediction() -> None:
    verdict = switching_rule(facts(allocation_watts=600.0, telemetry=False, measured_watts=None, load_source="held"))
    assert "acting on predicted watts: no telemetry" in verdict.reason
    measured = switching_rule(facts(allocation_watts=600.0))
    assert "no telemetry" not in measured.reason


def test_the_saving_test_is_asked_only_when_it_is_the_question() -> None:
    def boom() -> SwitchDecision:
        raise AssertionError("should_switch asked for a forced move")

    assert switching_rule(facts(allocation_watts=600.0, worth_it=boom)).cause == "allocation-cut"
    assert switching_rule(facts(cooldown_until_s=5000.0, worth_it=boom)).cause == "cooldown"


def test_cooldown_reason_is_an_absolute_time() -> None:
    wall = switching_rule(facts(now_s=1.7e9, cooldown_until_s=1.7e9 + 60))
    assert "cooldown until 2023-11-14T22:14:20Z" in wall.reason
    trace = switching_rule(facts(now_s=100.0, cooldown_until_s=300.0))
    assert "cooldown until t=300s" in trace.reason

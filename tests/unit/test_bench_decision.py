"""`wattkeeper bench decision-time` times a decision whose question is new, not a memoised answer."""

from __future__ import annotations

from wattkeeper.bench.decision import decision_request, measure
from wattkeeper.planner.search import clear_plan_cache, plan


def test_the_decision_time_is_not_a_cache_hit() -> None:
    figures = measure(repeats=2)
    # A memoised plan is a dictionary lookup (microseconds); the 2016-candidate search, solved lazily, is ~10 ms.
    assert figures["planOnly"]["medianCpuMs"] > 2.0, figures
    assert figures["planAndVerifyWithPowerLimits"]["candidates"] == 2 * figures["planOnly"]["candidates"]
    assert figures["planAndVerifyWithPowerLimitsEveryCandidate"]["chosen"] == \
        figures["planAndVerifyWithPowerLimits"]["chosen"]


def test_clearing_the_cache_keeps_the_answer() -> None:
    request = decision_request(verify=False)
    first = plan(request)
    clear_plan_cache()
    again = plan(request)
    assert again is not first and again.chosen == first.chosen

"""The demo's tightening level and its PASS/FAIL checks (hack/demo.py), pure."""

from __future__ import annotations

from typing import Any

import demo
import pytest


def alloc(minimum: float | None, floor: float, watts: float = 5000.0) -> dict[str, Any]:
    out: dict[str, Any] = {"watts": watts, "floorWatts": floor}
    if minimum is not None:
        out["minimumWatts"] = minimum
    return out


@pytest.mark.parametrize(("case", "allocations", "drawn", "limit"), [
    ("the services' least watts for their SLOs, +5%", [alloc(1254, 545), alloc(686, 539)], 2500.0, 1940 * 1.05),
    ("drawing about their least watts already: cut to those +5%, not below", [alloc(1254, 545), alloc(1200, 539)],
     2500.0, 2454 * 1.05),
    ("at their floors: the floors +5%", [alloc(545, 545), alloc(539, 539)], 1150.0, 1084 * 1.05),
    ("a service without an SLO plan counts its floor", [alloc(None, 545), alloc(686, 539)], 2500.0,
     (545 + 686) * 1.05),
    ("nothing allocated yet: 90% of the power drawn", [], 2000.0, 1800.0),
])
def test_tightened_limit(case: str, allocations: list[dict[str, Any]], drawn: float, limit: float) -> None:
    got, rule = demo.tightened_limit(allocations, drawn)
    assert got == pytest.approx(limit), case
    assert rule


@pytest.mark.parametrize(("case", "at_headroom", "limit"), [
    ("room for more load: its least watts +5%", 2200.0, 2200 * 1.05),
    ("more than a real cut allows: 95% of the power drawn", 2600.0, 2500 * 0.95),
    ("no higher than the peak's own: unchanged", 1900.0, 1940 * 1.05),
])
def test_tightened_limit_leaves_room_for_more_load(case: str, at_headroom: float, limit: float) -> None:
    got, rule = demo.tightened_limit([alloc(1254, 545), alloc(686, 539)], 2500.0, at_headroom)
    assert got == pytest.approx(limit), case
    assert "more load" in rule or at_headroom <= 1940


@pytest.mark.parametrize(("after_watts", "before_jpt", "after_jpt", "passed"), [
    (1000.0, 0.30, 0.29, [True, True]),
    (1030.0, 0.30, 0.33, [False, True]),  # 3% over the limit; J/token +10% is allowed
    (990.0, 0.30, 0.34, [True, False]),
    (None, None, 0.3, [False, False]),  # nothing measured is no pass
])
def test_judge(after_watts: float | None, before_jpt: float | None, after_jpt: float | None,
               passed: list[bool]) -> None:
    checks = demo.judge(1000.0, {"joules_per_token": before_jpt},
                        {"average_watts": after_watts, "joules_per_token": after_jpt})
    assert [c["passed"] for c in checks] == passed


def sample(t_s: float, **services: dict[str, Any]) -> demo.Sample:
    base = {"config": "bf16 tp1 seqs512", "replicas": 2, "settled": True, "slo": "True"}
    return demo.Sample(t_s, "p", 1000.0, 2000.0, {"_budget": {}, **{n: {**base, **v} for n, v in services.items()}})


@pytest.mark.parametrize(("case", "late", "reasons"), [
    ("one plan, ready and within its SLO through the window: settled", {}, []),
    ("a rollout within the window", {"settled": False}, ["chat: rolling out or not ready"]),
    ("a plan that changed within the window", {"replicas": 3}, ["chat: its plan changed"]),
    ("an SLO missed within the window", {"slo": "False"}, ["chat: SLO missed"]),
])
def test_the_cut_waits_for_a_settled_fleet(case: str, late: dict[str, Any], reasons: list[str]) -> None:
    samples = [sample(t, chat={}, assistant={}) for t in range(0, 40, 2)]
    samples.append(sample(40, chat=late, assistant={}))
    assert demo.unsettled(samples, 42.0, 30.0) == reasons, case
    # What happened before the window does not count.
    assert demo.unsettled(samples + [sample(t, chat={}, assistant={}) for t in range(42, 80, 2)], 80.0, 30.0) == []


def test_no_cut_before_a_whole_window_is_observed() -> None:
    assert demo.unsettled([demo.Sample(10.0, "p", None, None)], 20.0, 30.0) == ["not observed for a whole window yet"]

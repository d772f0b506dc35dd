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
    ("no cut the services can meet: forced to 90% of the power drawn", [alloc(1254, 545), alloc(1200, 539)],
     2500.0, 2250.0),
    ("forced, but never below the floors +5%", [alloc(545, 545), alloc(539, 539)], 1150.0, 1084 * 1.05),
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

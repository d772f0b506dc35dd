"""The core's decision with a canary a test decides (the core's own canary rule is tested in
tests/unit/test_control_canary.py): for tests of what the operator does with a canary."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from wattkeeper.control import Canary, Plan, RecentConfiguration, TickDecision
from wattkeeper.control.tick import margin_key
from wattkeeper.controller import decide as decide_module
from wattkeeper.energy.model import EnergyModel


def fake_canary(monkeypatch: pytest.MonkeyPatch, canary: Plan | None, reason: str) -> None:
    """`decide_tick` as it is, but deciding `canary` (None: none), remembered and ended as the core records them
    (an ended canary under its margin key, e.g. "fp8 tp1 tok4096")."""
    real = decide_module.decide_tick

    def fake(inputs: Any, model: EnergyModel) -> TickDecision:
        tick = real(inputs, model)
        before = inputs.memory.canary
        remembered = before if before is not None and before.plan == canary else (
            Canary(canary, inputs.now_s) if canary else None)
        ended = tick.memory.canaries_ended
        if canary is None and before is not None:
            ended += (RecentConfiguration(margin_key(before.plan.config), inputs.now_s),)
        return replace(tick, canary=canary, canary_reason=reason,
                       memory=replace(tick.memory, canary=remembered, canaries_ended=ended))

    monkeypatch.setattr(decide_module, "decide_tick", fake)

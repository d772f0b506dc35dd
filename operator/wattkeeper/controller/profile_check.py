"""Which points of an EnergyProfile make no physical sense on its GPU: the profile's status names them and the
planner never sees them."""

from __future__ import annotations

from wattkeeper.api import EnergyProfile
from wattkeeper.api.profile import point_problems
from wattkeeper.energy.catalog import get_accelerator


def rejected_points(profile: EnergyProfile) -> dict[int, str]:
    """Index -> why, for the points that make no physical sense on the profile's GPU. Pure."""
    accelerator = get_accelerator(str(profile.spec.accelerator))
    out: dict[int, str] = {}
    for index, point in enumerate(profile.spec.points):
        problems = point_problems(point, accelerator.idle_watts, accelerator.power_limit_watts)
        if problems:
            out[index] = "; ".join(problems)
    return out

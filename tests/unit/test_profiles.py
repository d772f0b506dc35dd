"""EnergyProfile status: how many points are accepted, and what is wrong."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import yaml
from wattkeeper.controller.profiles import profile_status

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_profile_points_are_counted() -> None:
    body = yaml.safe_load((ROOT / "examples" / "energyprofile.yaml").read_text())
    body["metadata"]["generation"] = 3
    status = profile_status(body, NOW)
    assert status["pointCount"] == 2 and status["observedGeneration"] == 3
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Accepted")


def test_duplicate_points_are_reported() -> None:
    body = yaml.safe_load((ROOT / "examples" / "energyprofile.yaml").read_text())
    body["spec"]["points"].append(dict(body["spec"]["points"][0]))
    status = profile_status(body, NOW)
    assert status["pointCount"] == 3
    assert "more than once" in status["conditions"][0]["message"]


def test_an_invalid_profile_is_not_ready() -> None:
    body = yaml.safe_load((ROOT / "examples" / "energyprofile.yaml").read_text())
    body["spec"]["points"][0]["watts"] = -1
    status = profile_status(body, NOW)
    assert status["pointCount"] == 0 and status["conditions"][0]["reason"] == "InvalidSpec"

"""The control loop runs only in the instance kopf's peering made active."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from wattkeeper.controller.loop import peering_active

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def peer(priority: int, seen_seconds_ago: float, lifetime: int = 60) -> dict[str, object]:
    return {"priority": priority, "lifetime": lifetime,
            "lastseen": (NOW - timedelta(seconds=seen_seconds_ago)).isoformat()}


def test_highest_live_priority_is_active() -> None:
    peers = {"a": peer(500, 5), "b": peer(200, 5)}
    assert peering_active(peers, 500, NOW)
    assert not peering_active(peers, 200, NOW)


def test_dead_peers_do_not_count() -> None:
    assert peering_active({"a": peer(900, 120), "b": peer(200, 5)}, 200, NOW)


def test_equal_priorities_all_pause_as_kopf_does() -> None:
    assert not peering_active({"a": peer(300, 1), "b": peer(300, 1)}, 300, NOW)

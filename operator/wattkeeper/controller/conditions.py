"""Conditions as pure list updates: a transition time moves only when the status flips."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def set_condition(
    conditions: list[dict[str, Any]], type_: str, status: bool | None, reason: str, message: str,
    now: datetime, generation: int | None = None,
) -> list[dict[str, Any]]:
    text = "Unknown" if status is None else ("True" if status else "False")
    out = [dict(c) for c in conditions if c.get("type") != type_]
    old = next((c for c in conditions if c.get("type") == type_), None)
    changed = old is None or old.get("status") != text
    new = {
        "type": type_,
        "status": text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now.isoformat(timespec="seconds").replace("+00:00", "Z") if changed or old is None else old.get("lastTransitionTime"),
    }
    if generation is not None:
        new["observedGeneration"] = generation
    out.append(new)
    return sorted(out, key=lambda c: str(c["type"]))


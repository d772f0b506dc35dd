"""The load shape in a service's status (`observed.loadShape`): the bursts and lengths its tick planned with,
written by the service's decision and read by the budgets that select it (controller/budgets.py `service_load`),
so that a budget prices the service's demand as the service's own tick plans (control/budget.py `LoadShape`).

Pure translation, no I/O.
"""

from __future__ import annotations

from typing import Any

from wattkeeper.control import LoadShape, significant
from wattkeeper.energy.latency import TokenDistribution

# The levels and lengths move a little every pass: a shape within 10% of the one written keeps it (no write).
SHAPE_DEADBAND = 0.1


def _rounded(value: float) -> float:
    return significant(value) or 0.0


def shape_status(shape: LoadShape) -> dict[str, Any]:
    """The shape as status keeps it (camelCase, three significant digits)."""
    out: dict[str, Any] = {
        "rateLevels": [{"factor": _rounded(f), "share": _rounded(w)} for f, w in shape.rate_levels],
        "arrivalDispersion": _rounded(shape.arrival_dispersion),
    }
    t = shape.tokens
    if t is not None:
        out["tokens"] = {
            "promptTokens": [_rounded(v) for v in t.prompt_tokens],
            "outputTokens": [_rounded(v) for v in t.output_tokens],
            "weights": [_rounded(v) for v in t.weights],
            "meanPromptTokens": _rounded(t.mean_prompt_tokens),
            "meanOutputTokens": _rounded(t.mean_output_tokens),
            "promptSecondMoment": _rounded(t.prompt_second_moment),
            "decodeContextTokens": _rounded(t.decode_context_tokens),
        }
    return out


def shape_from_status(raw: Any) -> LoadShape | None:
    """The shape a status holds; None where it holds none or one that does not parse (the budget then prices the
    service as Poisson arrivals at its mean lengths, as before the shape was kept)."""
    if not isinstance(raw, dict) or not raw:
        return None
    try:
        levels = tuple((float(r["factor"]), float(r["share"])) for r in raw.get("rateLevels") or ())
        tokens: TokenDistribution | None = None
        t = raw.get("tokens")
        if isinstance(t, dict) and t:
            prompts = tuple(float(v) for v in t["promptTokens"])
            outputs = tuple(float(v) for v in t["outputTokens"])
            weights = tuple(float(v) for v in t["weights"])
            if not prompts or not len(prompts) == len(outputs) == len(weights):
                return None
            tokens = TokenDistribution(
                prompt_tokens=prompts, output_tokens=outputs, weights=weights,
                mean_prompt_tokens=float(t["meanPromptTokens"]), mean_output_tokens=float(t["meanOutputTokens"]),
                prompt_second_moment=float(t["promptSecondMoment"]),
                decode_context_tokens=float(t["decodeContextTokens"]),
            )
        return LoadShape(levels or ((1.0, 1.0),), float(raw.get("arrivalDispersion") or 1.0), tokens)
    except (KeyError, TypeError, ValueError):
        return None


def steady_shape(new: dict[str, Any], old: Any, tolerance: float = SHAPE_DEADBAND) -> dict[str, Any]:
    """The shape written before where every figure of the new one is within `tolerance` of it."""
    return old if isinstance(old, dict) and _close(new, old, tolerance) else new


def _close(a: Any, b: Any, tolerance: float) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tolerance) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tolerance) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= tolerance * max(abs(a), abs(b))
    return bool(a == b)

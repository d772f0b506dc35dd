"""Scored as users feel it (issue 10 item 5): per request, per 5-minute window, against the cap.

- A request is OK when its TTFT is within the TTFT threshold and its own mean inter-token latency (the time from
  its first to its last token over its gaps) is within the ITL threshold; a request that never finished is not OK.
- The SLO target is met when at least `TARGET_SHARE` of all requests are OK. The same share is computed per
  5-minute window of arrivals and the worst window is reported beside it (a bad five minutes is what users notice).
- A cap is held when every 5-minute average of the fleet's power (sliding by one 5-s sample) is within 2% of it.
- A policy that misses the target is FAILING: its energy is shown, never as a saving. Relative energy against a
  baseline is given only when both runs keep the target (`relative_energy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .fleet import FleetRun
from .report import CAP_TOLERANCE, CAP_WINDOW_S, max_window_average_watts

TARGET_SHARE = 0.99
WINDOW_S = 300.0
# Windows with fewer requests than this say little about a share (one miss is more than 1%); they still count in
# the total, and are reported as their own count, but not as the worst window.
MIN_WINDOW_REQUESTS = 20

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Thresholds:
    ttft_seconds: float
    itl_seconds: float


def requests_ok(run: FleetRun, thresholds: Thresholds) -> BoolArray:
    """Per request (trace order): finished, TTFT within its threshold and its own mean ITL within its threshold."""
    ttft = np.nan_to_num(run.ttft_s, nan=np.inf)
    itl = np.nan_to_num(run.mean_itl_s, nan=np.inf)
    return np.asarray((ttft <= thresholds.ttft_seconds) & (itl <= thresholds.itl_seconds), dtype=bool)


def window_shares(
    ok: BoolArray, arrival_s: npt.NDArray[np.float64], window_s: float = WINDOW_S
) -> list[tuple[float, int, float]]:
    """(window start, requests, share OK) per window of arrivals, in time order; empty windows left out."""
    if ok.size == 0:
        return []
    index = (arrival_s // window_s).astype(np.int64)
    counts = np.bincount(index)
    good = np.bincount(index, weights=ok.astype(float))
    return [(k * window_s, int(n), float(good[k] / n)) for k, n in enumerate(counts) if n > 0]


@dataclass(frozen=True)
class Score:
    within_share: float
    worst_window_share: float
    worst_window_start_s: float
    keeps_target: bool
    restarts: int
    restarts_per_hour: float
    max_five_minute_watts: float
    cap_watts: float | None
    cap_held: bool | None

    @property
    def verdict(self) -> str:
        if not self.keeps_target:
            return "FAILING"
        if self.cap_held is False:
            return "OVER CAP"
        return "ok"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "withinBothSlos": round(self.within_share, 5),
            "worstFiveMinuteWithinBoth": round(self.worst_window_share, 5),
            "worstFiveMinuteStartSeconds": self.worst_window_start_s,
            "keepsTarget": self.keeps_target,
            "verdict": self.verdict,
            "restartsPerHour": round(self.restarts_per_hour, 2),
        }
        if self.cap_watts is not None:
            out["capHeld"] = self.cap_held
        return out


def score(
    run: FleetRun,
    arrival_s: npt.NDArray[np.float64],
    thresholds: Thresholds,
    cap_watts: float | None = None,
    duration_s: float | None = None,
) -> Score:
    ok = requests_ok(run, thresholds)
    windows = window_shares(ok, arrival_s)
    counted = [w for w in windows if w[1] >= MIN_WINDOW_REQUESTS] or windows
    worst = min(counted, key=lambda w: w[2]) if counted else (0.0, 0, 1.0)
    share = float(ok.mean()) if ok.size else 1.0
    restarts = sum(1 for c in run.changes if c.kind == "restart")
    hours = max(duration_s if duration_s is not None else run.horizon_s, 1.0) / 3600.0
    peak = max_window_average_watts(run, CAP_WINDOW_S)
    held = None if cap_watts is None else peak <= cap_watts * (1.0 + CAP_TOLERANCE)
    return Score(
        within_share=share,
        worst_window_share=worst[2],
        worst_window_start_s=worst[0],
        keeps_target=share >= TARGET_SHARE,
        restarts=restarts,
        restarts_per_hour=restarts / hours,
        max_five_minute_watts=peak,
        cap_watts=cap_watts,
        cap_held=held,
    )


def relative_energy(policy: dict[str, Any], baseline: dict[str, Any] | None) -> float | None:
    """Energy of `policy` over `baseline`'s, or None unless both keep the target (a failing run saves nothing)."""
    if baseline is None or not policy.get("keepsTarget") or not baseline.get("keepsTarget"):
        return None
    if not baseline.get("energyKWh"):
        return None
    return float(policy["energyKWh"]) / float(baseline["energyKWh"])


def oracle_distance(policy: dict[str, Any], oracle: dict[str, Any] | None) -> float | None:
    """Energy above the verified oracle's, relative (+0.10: 10% more); None without a verified oracle."""
    if oracle is None or not oracle.get("energyKWh"):
        return None
    return float(policy["energyKWh"]) / float(oracle["energyKWh"]) - 1.0

"""Summaries of fleet runs: the figures per policy, the terminal table, the JSON document and the power plot."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .fleet import FleetRun, weighted_percentile

CAP_WINDOW_S = 300.0
CAP_TOLERANCE = 0.02  # the target: never more than 2% above the cap over any 5-minute window


def max_window_average_watts(run: FleetRun, window_s: float = CAP_WINDOW_S) -> float:
    """Highest average power over any window of `window_s` (sliding by one sample), from the energy counter."""
    e = run.energy_joules
    k = max(1, round(window_s / run.sample_s))
    if e.size <= k:
        return float((e[-1] - e[0]) / max(run.horizon_s, 1e-9))
    return float(np.max(e[k:] - e[:-k]) / (k * run.sample_s))


def power_series(run: FleetRun, bin_s: float = 60.0) -> tuple[list[float], list[float]]:
    """(minute, average watts) per bin, from the energy counter."""
    k = max(1, round(bin_s / run.sample_s))
    e = run.energy_joules[::k]
    watts = np.diff(e) / (k * run.sample_s)
    minutes = (np.arange(watts.size) * k * run.sample_s + k * run.sample_s / 2) / 60.0
    return minutes.tolist(), watts.tolist()


def _finite(value: float, digits: int = 4) -> float | None:
    return round(float(value), digits) if math.isfinite(value) else None


def summarise(
    run: FleetRun,
    slo_ttft_s: float,
    slo_itl_s: float,
    allocation_watts: float | None = None,
    sources: dict[str, str] | None = None,
    decisions: Sequence[Any] = (),
) -> dict[str, Any]:
    energy_j = float(run.energy_joules[-1])
    finished = ~np.isnan(run.ttft_s)
    n = run.ttft_s.size
    # An unfinished request missed both SLOs.
    ttft_ok = finished & (np.nan_to_num(run.ttft_s, nan=np.inf) <= slo_ttft_s)
    itl_ok = finished & (np.nan_to_num(run.mean_itl_s, nan=np.inf) <= slo_itl_s)
    both = ttft_ok & itl_ok
    restarts = sum(1 for c in run.changes if c.kind == "restart")
    plan_ms = [d.plan_ms for d in decisions if getattr(d, "plan_ms", 0) > 0]
    out: dict[str, Any] = {
        "policy": run.policy,
        "energyKWh": round(energy_j / 3.6e6, 4),
        "joulesPerOutputToken": round(energy_j / max(run.output_tokens, 1), 4),
        "averageWatts": round(energy_j / run.horizon_s, 1),
        "gpuHours": round(float(run.gpus.sum()) * run.sample_s / 3600.0, 3),
        "requests": int(n),
        "completed": int(finished.sum()),
        "withinTtftSlo": round(float(ttft_ok.mean()), 5) if n else None,
        "withinItlSlo": round(float(itl_ok.mean()), 5) if n else None,
        "withinBothSlos": round(float(both.mean()), 5) if n else None,
        "ttftP95Seconds": _finite(float(np.nanpercentile(run.ttft_s, 95))) if finished.any() else None,
        # The SLO's own metric: the 95th percentile over every inter-token gap of every request.
        "itlP95Seconds": _finite(weighted_percentile(run.itl_values_s, run.itl_counts, 95.0), 5),
        "requestMeanItlP95Seconds": _finite(float(np.nanpercentile(run.mean_itl_s, 95)), 5) if finished.any() else None,
        "reconfigurations": len(run.changes),
        "restarts": restarts,
        "initial": run.initial,
        "configurations": run.configs_used,
        "changes": [
            {"timeSeconds": round(c.time_s, 1), "target": c.target, "kind": c.kind, "reason": c.reason}
            for c in run.changes
        ],
        "maxFiveMinuteWatts": round(max_window_average_watts(run), 1),
        "horizonSeconds": run.horizon_s,
        "simulationWallSeconds": round(run.wall_seconds, 2),
        "engineSteps": run.steps,
    }
    if plan_ms:
        out["planMsMedian"] = round(float(np.median(plan_ms)), 3)
        out["decisions"] = len(plan_ms)
    if allocation_watts is not None:
        out["powerCapWatts"] = round(allocation_watts, 1)
        out["maxFiveMinuteOverCap"] = round(out["maxFiveMinuteWatts"] / allocation_watts - 1.0, 4)
        out["withinCap"] = out["maxFiveMinuteWatts"] <= allocation_watts * (1.0 + CAP_TOLERANCE)
    if sources is not None:
        out["groundTruth"] = {cfg: sources.get(cfg, "?") for cfg in run.configs_used}
    return out


def compare(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per policy: energy over static-right-sized's and static-peak's (only when both runs keep the SLO target:
    a failing run saves nothing) and the distance from oracle-verified (always, with the oracle's own verdict)."""
    from .scoring import oracle_distance, relative_energy

    oracle = summaries.get("oracle-verified")
    out: dict[str, Any] = {}
    for name, s in summaries.items():
        entry: dict[str, Any] = {"verdict": s.get("verdict")}
        for key, base in (("energyVsRightSized", "static-right-sized"), ("energyVsPeak", "static-peak")):
            ratio = relative_energy(s, summaries.get(base))
            entry[key] = None if ratio is None else round(ratio, 4)
        distance = oracle_distance(s, oracle)
        entry["fromOracle"] = None if distance is None else round(distance, 4)
        out[name] = entry
    if oracle is not None:
        out["oracleKeepsTarget"] = bool(oracle.get("keepsTarget"))
    return out


POLICY_COLOURS = {
    "static-peak": "#7f7f7f",
    "static-right-sized": "#bcbd22",
    "autoscaler-tuned": "#1f77b4",
    "wattkeeper": "#2ca02c",
    "oracle-verified": "#d62728",
}


def plot_power(runs: Sequence[FleetRun], path: Path, title: str, allocation_watts: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    for run in runs:
        minutes, watts = power_series(run)
        ax.plot(minutes, np.asarray(watts) / 1000.0, label=run.policy, color=POLICY_COLOURS.get(run.policy), lw=1.4)
    if allocation_watts is not None:
        ax.axhline(allocation_watts / 1000.0, color="black", ls="--", lw=1, label="power cap")
    ax.set_xlabel("minute of the trace")
    ax.set_ylabel("GPU power, 1-minute average (kW)")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_json(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table_rows(
    scenario: str, summaries: dict[str, dict[str, Any]], comparison: dict[str, Any] | None = None
) -> list[list[str]]:
    """One row per policy: verdict, energy (relative only when the target is kept), SLO shares, restarts, cap."""
    comparison = comparison if comparison is not None else compare(summaries)
    rows = []
    for name, s in summaries.items():
        c = comparison.get(name, {})
        cap = "-"
        if s.get("powerCapWatts") is not None:
            held = "held" if s.get("capHeld") else "BROKEN"
            cap = f"{s['maxFiveMinuteWatts'] / 1000:.1f}/{s['powerCapWatts'] / 1000:.1f} kW {held}"
        distance = c.get("fromOracle")
        rows.append(
            [
                scenario,
                name,
                str(s.get("verdict", "-")),
                f"{s['energyKWh']:.2f}",
                _ratio(c.get("energyVsRightSized")),
                _ratio(c.get("energyVsPeak")),
                "-" if distance is None else f"{distance * 100:+.1f}%",
                _pct(s["withinBothSlos"]),
                _pct(s.get("worstFiveMinuteWithinBoth")),
                f"{s['restarts']} ({s.get('restartsPerHour', 0.0):.1f}/h)",
                cap,
            ]
        )
    return rows


TABLE_HEADERS = [
    "scenario",
    "policy",
    "verdict",
    "kWh",
    "vs right-sized",
    "vs peak",
    "from oracle",
    "both ok",
    "worst 5 min",
    "restarts",
    "max 5-min / cap",
]


def print_table(rows: list[list[str]], title: str) -> str:
    """Print with rich; return the same table as plain text (for README and logs)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for h in TABLE_HEADERS:
        table.add_column(h, justify="left" if h in ("scenario", "policy") else "right")
    for r in rows:
        table.add_row(*r)
    import sys

    # Wide enough for every column when the output is a file or a pipe (make bench | tee).
    Console(width=None if sys.stdout.isatty() else 180).print(table)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(TABLE_HEADERS)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(TABLE_HEADERS, widths, strict=True))]
    lines.append("-|-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)

"""The demo's scenario, shortened, with assertions: on the simulated GPU cluster (KWOK nodes, one vLLM simulator
per pod, a real Prometheus, the operator as a process), load rises, the budget is tightened, and the budget holds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_tightened_budget_holds_and_nothing_is_left_behind(tmp_path: Path) -> None:
    import demo

    started = time.monotonic()
    with demo.demo_session(tmp_path, duration_s=220, interval_s=4, keep_cluster=True, quiet=True) as session:
        summary = session.run()
        session.plot(tmp_path / "demo.png")
        teardown = session.delete_services()
    elapsed = time.monotonic() - started
    print(json.dumps({k: v for k, v in summary.items() if k != "final"}, indent=2, default=str))
    print(f"e2e scenario took {elapsed:.0f}s")

    cap = summary["cap_watts"]
    assert cap is not None and summary["average_watts_last_30s"] is not None
    # After the tightening, the last window's average power is within 5% of the cap or below it.
    assert summary["average_watts_last_30s"] <= cap * 1.05, summary
    # SLO attainment is measured and reported for every service.
    for name, figures in summary["slo_attainment"].items():
        assert figures["requests"] > 0, name
        assert figures["ttft_within_slo"] is not None and figures["itl_within_slo"] is not None, name
    # The operator reconfigured at least once after the first plan.
    assert sum(summary["decisions"].values()) > len(summary["decisions"])
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    # Deleting the services leaves no objects and no simulator processes behind.
    assert teardown["objects"] == [], teardown
    assert not any(teardown["simulators"].values()), teardown
    assert teardown["sim_processes"] == [], teardown

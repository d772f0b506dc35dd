"""The scale benchmark, short: 100 services (20 under one budget) against the real apiserver, the operator as a
real process. `make bench-scale` runs the 1,000-service version; figures in bench/README.md ("Scale")."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_100_services_converge_and_idle_passes_write_nothing(cluster, crds_installed) -> None:  # type: ignore[no-untyped-def]
    import bench_scale

    figures = bench_scale.run(services=100, budgeted=20, interval_seconds=5.0, workers=8, out=None)
    assert figures["converge_seconds"] <= 60
    assert figures["writes_per_idle_pass"] == 0, figures["idle_passes_by_kind"]
    assert figures["budget_change_seconds"] <= 5
    assert figures["rss_megabytes"] <= 250
    # A restart with nothing changed re-plans nothing: every decision says Unchanged.
    assert set(figures["decisions_after_restart"]) <= {"Unchanged"}

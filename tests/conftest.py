"""Test tiers: unit tests always run; slower tiers are opted into with flags (`make test` passes them all).

    pytest                                   unit only
    pytest --integration                     + tests against a real kube-apiserver/etcd/controller-manager
    pytest --integration --e2e               + the simulated GPU cluster (scheduler, KWOK, Prometheus, simulators)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "hack"))

TIERS = {"integration": "--integration", "e2e": "--e2e", "helm": "--integration"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--integration", action="store_true", help="run tests against the local control plane")
    parser.addoption("--e2e", action="store_true", help="run end-to-end tests on the simulated GPU cluster")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for marker, flag in TIERS.items():
            if marker in item.keywords and not config.getoption(flag.lstrip("-")):
                item.add_marker(pytest.mark.skip(reason=f"{marker} tier: pass {flag} (make test does)"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the local cluster if this test session started it; a cluster that was already running stays."""
    localcluster = sys.modules.get("localcluster")
    if localcluster is not None and getattr(localcluster, "started_here", False) \
            and not os.environ.get("WATTKEEPER_KEEP_CLUSTER"):
        localcluster.down()


def shared_data_dir() -> Path | None:
    """../shared/data beside the checkout, or WATTKEEPER_DATA_DIR."""
    env = os.environ.get("WATTKEEPER_DATA_DIR")
    candidate = Path(env) if env else ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("reference data not found: ../shared/data beside the checkout, or set WATTKEEPER_DATA_DIR")
    return path

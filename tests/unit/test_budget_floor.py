"""The budget floor at high request rates, the ProtectBudget fallback's choice within the watts, and the
allocation in a service's status when no plan fits (issue 11, found by an earlier attempt: above ~20 req/s the
floor of a 70B service dropped to 0 W because the planner returned no plan at all)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from wattkeeper.api import LLMService
from wattkeeper.bench.groundtruth import model_shape
from wattkeeper.control import ServiceIntent
from wattkeeper.control.budget import ServiceLoad, service_demand
from wattkeeper.control.planning import evaluate, plan_request
from wattkeeper.controller.decide import Allocation, DeploymentState, ServiceInputs, decide
from wattkeeper.controller.settings import OperatorSettings
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import Plan, ServingConfig, Workload
from wattkeeper.planner import plan

EM = EnergyModel.default()
INTENT_70B = ServiceIntent(model=model_shape("meta-llama/Llama-3.1-70B-Instruct"), accelerator="H100",
                           allowed_precisions=("bf16", "fp8"), slo_ttft_p95_seconds=2.0, slo_itl_p95_seconds=0.1,
                           max_replicas=8)


@pytest.mark.parametrize("rate", [1.0, 10.0, 20.0, 30.0, 100.0, 200.0])
def test_floor_never_drops_to_zero_at_high_rates(rate: float) -> None:
    d = service_demand(ServiceLoad("chat", 1, INTENT_70B, Workload(rate, 1000, 250)), EM)
    assert d.floor_watts > 300.0
    assert d.desired_watts >= d.floor_watts


def test_protect_budget_serves_what_fits_with_the_most_capacity() -> None:
    """20 req/s cannot be carried within 3.3 kW: the fallback serves what fits, and of the fleets within the
    watts it takes the one with the most capacity, never more replicas of a worse config at the same watts."""
    request = plan_request(INTENT_70B, Workload(20.0, 1000, 250), 3270.0)
    chosen = plan(request, EM).chosen
    assert chosen is not None and chosen.total_watts <= 3270.0
    worse = evaluate(INTENT_70B, Plan(ServingConfig("fp8", 1, 8, 2048), 4), Workload(20.0, 1000, 250), EM)
    assert worse is not None and worse.total_watts <= 3270.0
    assert chosen.prediction.utilisation < worse.prediction.utilisation


def test_allocation_is_written_when_no_plan_exists() -> None:
    svc = LLMService.model_validate({
        "metadata": {"name": "chat", "namespace": "ns", "generation": 1},
        "spec": {
            "model": {"name": "meta-llama/Llama-3.1-70B-Instruct", "parametersBillions": 70},
            "quality": {"allowedPrecisions": ["bf16"]},
            "slo": {"ttftP95Seconds": 2.0, "itlP95Seconds": 0.1},
            "scaling": {"minReplicas": 1, "maxReplicas": 1},
            "accelerator": {"type": "H100", "maxTensorParallel": 1},  # 140 GB of weights on one 80 GB GPU
            "workload": {"requestsPerSecond": 1, "inputTokens": 500, "outputTokens": 150},
        },
    })
    settings = OperatorSettings(telemetry_window_seconds=60.0, metrics_port=0, health_port=0)
    alloc = Allocation(watts=1234.0, budget="b", budgets=("b",))
    inputs = ServiceInputs(svc, {}, alloc, None, "no data", DeploymentState(), datetime(2026, 1, 1, tzinfo=UTC))
    decision = decide(inputs, EM, settings)
    assert decision.action == "Rejected"
    status = json.loads(json.dumps(decision.status))
    assert status["allocation"] == {"budgets": ["b"], "enforced": True, "watts": 1234.0, "budget": "b"}

"""The operator's adapters to the core: status <-> memory round trips and the Deployment's drift."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from wattkeeper.api import EnergyBudget, LLMService, ServingConfigSpec
from wattkeeper.control.budget import decide_budget
from wattkeeper.controller.budgets import accounting_status, budget_intent, budget_memory, service_load
from wattkeeper.controller.decide import (
    DeploymentState,
    fleet_state,
    memory_from_status,
    running_plan,
    signals_from_observation,
    within_slo_share,
)
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import Plan, ServingConfig, Workload
from wattkeeper.render import config_hash
from wattkeeper.telemetry import ServiceObservation

PLAN = Plan(ServingConfig("fp8", 2, 128, 8192, gpu_power_limit_watts=500.0), 3)


def service() -> LLMService:
    return LLMService.model_validate({
        "metadata": {"name": "chat", "namespace": "ns", "generation": 1},
        "spec": {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "parametersBillions": 8},
                 "slo": {"ttftP95Seconds": 2.0, "itlP95Seconds": 0.1}},
    })


def test_serving_config_spec_converts_both_ways() -> None:
    spec = ServingConfigSpec.from_plan(PLAN)
    assert spec.to_plan() == PLAN
    assert spec.to_wire() == {"precision": "fp8", "tensorParallel": 2, "maxNumSeqs": 128,
                              "maxNumBatchedTokens": 8192, "replicas": 3, "gpuPowerLimitWatts": 500.0}
    assert PLAN.describe() == "fp8 tp2 seqs128 tok8192 gpu-limit500W x3"


def test_status_round_trip_of_the_core_memory() -> None:
    status = {
        "plan": {**ServingConfigSpec.from_plan(PLAN).to_wire(), "plannedLoadRps": 4.2, "plannedInputTokens": 512.0},
        "observed": {"peakLoadRps": 5.0, "peakLoadAt": "2026-01-01T12:00:00Z", "peakForecastRps": 0.8,
                     "powerCorrection": 1.1},
        "lastAppliedAt": "2026-01-01T11:59:00Z",
    }
    memory = memory_from_status(json.loads(json.dumps(status)), Workload(1.0, 1000.0, 200.0))
    assert memory.running == PLAN == running_plan(status)
    assert memory.planned_load == Workload(4.2, 512.0, 200.0)  # a token count status lacks: the spec's
    assert memory.peak_load_at_s == datetime(2026, 1, 1, 12, 0, tzinfo=UTC).timestamp()
    assert memory.peak_forecast_rps == 0.8  # the part of the peak a trend forecast (control/load.py)
    # The most the running plan carried with room (control/tick.py carried_rps): none until measured.
    assert memory.carried_rps is None
    carried = memory_from_status({**status, "observed": {**status["observed"], "carriedRps": 22.4}}, Workload(1.0))
    assert carried.carried_rps == 22.4
    assert (memory.power_correction, memory.ttft_correction) == (1.1, 1.0)
    assert memory_from_status({}, Workload(1.0)).running is None
    # Applied and not seen rolled out since: awaited (a status from before rollouts were tracked, too).
    assert memory.awaiting_rollout and memory.rolled_out_s is None
    rolled = memory_from_status({**status, "rolledOutAt": "2026-01-01T11:59:04Z"}, Workload(1.0))
    assert not rolled.awaiting_rollout and rolled.rolled_out_s == memory.last_applied_s + 4  # type: ignore[operator]
    assert memory_from_status({**status, "rolledOutAt": "2026-01-01T11:58:00Z"}, Workload(1.0)).awaiting_rollout
    # A scale-up bridged with the GPU power limit: the plan keeps its limit, the pods go without it meanwhile.
    assert memory.bridged_limit_watts is None
    assert memory_from_status({**status, "powerLimitLiftedFromWatts": 500.0}, Workload(1.0)).bridged_limit_watts == 500
    # A streak of measured SLO misses (control/tick.py missed_since) outlives the operator's restart.
    assert memory.missed_since_s is None
    missed = memory_from_status({**status, "sloMissedSince": "2026-01-01T11:59:30Z"}, Workload(1.0))
    assert missed.missed_since_s == memory.last_applied_s + 30  # type: ignore[operator]
    # The canary beside the fleet and the configurations canaried lately (control/canary.py) outlive it too.
    assert memory.canary is None and memory.canaries_ended == ()
    canaried = memory_from_status(json.loads(json.dumps({
        **status,
        "canary": {**ServingConfigSpec.from_plan(Plan(PLAN.config, 1)).to_wire(), "configuration": "fp8 tp2",
                   "startedAt": "2026-01-01T11:59:10Z", "readyAt": "2026-01-01T11:59:40Z", "measuredWindows": 2},
        "canariesEnded": [{"configuration": "bf16 tp4 tok8192", "endedAt": "2026-01-01T11:40:00Z"}],
    })), Workload(1.0))
    assert canaried.canary is not None and canaried.canary.plan == Plan(PLAN.config, 1)
    assert (canaried.canary.started_s, canaried.canary.ready_s, canaried.canary.windows) == (
        memory.last_applied_s + 10, memory.last_applied_s + 40, 2)  # type: ignore[operator]
    assert [(r.configuration, r.left_at_s) for r in canaried.canaries_ended] == [
        ("bf16 tp4 tok8192", memory.last_applied_s - 19 * 60)]  # type: ignore[operator]
    # The tail's evidence (control/tail.py) outlives it as well.
    assert (memory.tail_measured_misses, memory.tail_predicted_misses) == (0.0, 0.0)
    tailed = memory_from_status({**status, "observed": {**status["observed"], "sloMissesMeasured": 1.5,
                                                        "sloMissesPredicted": 6.0}}, Workload(1.0))
    assert (tailed.tail_measured_misses, tailed.tail_predicted_misses) == (1.5, 6.0)


def test_requests_over_the_slos_are_read_from_the_histograms_buckets() -> None:
    obs = ServiceObservation(watts=500.0, requests_per_second=5.0,
                             ttft_bucket_rates=((1.0, 4.0), (2.5, 4.9), (math.inf, 5.0)),
                             request_itl_bucket_rates=((0.075, 4.0), (0.1, 4.75), (math.inf, 5.0)))
    s = signals_from_observation(obs, 60.0, (2.0, 0.1))
    assert s is not None
    # TTFT over 2 s: those over the 2.5-s bound (a lower bound); mean ITL over 0.1 s: exact, a bound.
    assert (s.ttft_misses, s.ttft_observed) == pytest.approx((6.0, 300.0))
    assert (s.itl_misses, s.itl_observed) == pytest.approx((15.0, 300.0))
    assert within_slo_share(obs, 60.0, (2.0, 0.1)) == pytest.approx(0.93)
    assert signals_from_observation(obs, 60.0).ttft_misses is None  # type: ignore[union-attr]  # no SLOs asked
    assert within_slo_share(ServiceObservation(watts=1.0), 60.0, (2.0, 0.1)) is None


def test_fleet_state_sees_drift_and_rolls() -> None:
    svc = service()
    digest = config_hash(svc, PLAN)
    steady = fleet_state(svc, DeploymentState(True, digest, 3, 3, 3), PLAN)
    assert steady.matches_plan and not steady.rolling
    scaled_by_hand = fleet_state(svc, DeploymentState(True, digest, 4, 4, 4), PLAN)
    assert not scaled_by_hand.matches_plan
    edited = fleet_state(svc, DeploymentState(True, "other", 3, 3, 3), PLAN)
    assert not edited.matches_plan
    rolling = fleet_state(svc, DeploymentState(True, digest, 3, 2, 1), PLAN)
    assert rolling.rolling
    assert fleet_state(svc, DeploymentState(), None).matches_plan


def test_budget_status_round_trip_writes_nothing_when_nothing_changes() -> None:
    budget = EnergyBudget.model_validate({
        "metadata": {"name": "b", "namespace": "ns"},
        "spec": {"power": {"limitWatts": 5000, "window": "5m"}, "energy": {"limitKilowattHours": 50, "period": "24h"}},
    })
    em = EnergyModel.default()
    now = datetime(2026, 1, 1, 12, 0, 7, tzinfo=UTC).timestamp()
    first = decide_budget(budget_intent(budget), budget_memory({}), [], 1234.56, now, 30.0, em)
    status = json.loads(json.dumps(accounting_status(budget, {}, first.accounting)))
    assert status["measuredWatts"] == 1234.6 and status["windowAverageWatts"] == 1234.6
    # Read back as the next pass would: the same memory, so silence (nothing measured) writes the same status.
    again = decide_budget(budget_intent(budget), budget_memory(status), [], None, now + 30, 30.0, em)
    assert budget_memory(status) == first.accounting.memory
    assert accounting_status(budget, status, again.accounting) == status


@pytest.mark.parametrize(("status", "rps"), [
    # A saturated fleet finishes 3 req/s while 20 arrive: the budget sizes on what the service plans for.
    ({"observed": {"requestsPerSecond": 3.0, "peakLoadRps": 20.0}, "plan": {"plannedLoadRps": 18.0}}, 20.0),
    ({"observed": {"requestsPerSecond": 3.0}, "plan": {"plannedLoadRps": 18.0}}, 3.0),
    ({"plan": {"plannedLoadRps": 18.0}}, 18.0),
    ({}, 1.0),  # the spec's workload
])
def test_budget_sees_the_load_the_service_plans_for(status: dict[str, Any], rps: float) -> None:
    assert service_load(service(), status).load.requests_per_second == rps

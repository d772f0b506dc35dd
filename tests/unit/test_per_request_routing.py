"""Per-request routing (Tuning.per_request_routing): each replica planned for its random share of a burst."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from wattkeeper.control import Tuning
from wattkeeper.control.planning import scored
from wattkeeper.controller.settings import OperatorSettings
from wattkeeper.energy.catalog import model_from_name
from wattkeeper.energy.latency import TokenDistribution
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import Workload
from wattkeeper.planner import PlanRequest, plan
from wattkeeper.planner.load import thinned_dispersion

from tests.support.run_flags import settings_from_run_flags

LLAMA_70B = model_from_name("meta-llama/Llama-3.1-70B-Instruct", 70.0)


def test_a_random_share_of_a_clustered_stream_is_less_clustered() -> None:
    # Groups of X split member by member with probability p: Binomial(X, p), E[Y^2]/E[Y] = 1 + p (D - 1).
    assert float(thinned_dispersion(13.0, 0.5)) == pytest.approx(7.0)
    assert float(thinned_dispersion(13.0, 1.0)) == pytest.approx(13.0)
    assert float(thinned_dispersion(0.5, 0.5)) == pytest.approx(1.0)  # Poisson stays Poisson
    assert np.allclose(thinned_dispersion(9.0, np.array([1.0, 0.5, 0.25])), [9.0, 5.0, 3.0])
    # The empirical check: clusters of 8 spread member by member over 4 replicas.
    rng = np.random.default_rng(5)
    groups = rng.poisson(2.0, 200_000)  # clusters per bin
    sizes = [rng.integers(4, 13, n) for n in groups]
    service = np.array([s.sum() for s in sizes], dtype=float)
    replica = np.array([rng.binomial(s, 0.25).sum() for s in sizes], dtype=float)
    d_service = service.var() / service.mean()
    assert replica.var() / replica.mean() == pytest.approx(float(thinned_dispersion(d_service, 0.25)), rel=0.03)


def _request(per_request: bool, replicas: int) -> PlanRequest:
    tokens = TokenDistribution.from_means(1200, 220)
    return PlanRequest(
        model=LLAMA_70B, accelerator="H100", workload=Workload(6.0, 1200, 220), allowed_precisions=("bf16",),
        tensor_parallel_options=(4,), max_num_seqs_options=(512,), max_num_batched_tokens_options=(8192,),
        min_replicas=replicas, max_replicas=replicas, latency_model="queued", tokens=tokens,
        arrival_dispersion=15.0, slo_basis="requests", per_request_routing=per_request, frontier=True,
    )


def test_routed_per_request_a_fleet_waits_less_behind_a_burst() -> None:
    em = EnergyModel.default()

    def ttft(per_request: bool, replicas: int) -> float:
        result = plan(_request(per_request, replicas), em)
        chosen = result.candidates[0] if result.candidates else result.chosen
        assert chosen is not None and chosen.replicas == replicas
        return chosen.prediction.ttft_p95_seconds

    # One replica sees the whole stream either way; two share its clusters only when routed per request.
    assert ttft(True, 1) == pytest.approx(ttft(False, 1))
    assert ttft(True, 2) < 0.8 * ttft(False, 2)
    assert ttft(True, 4) < ttft(True, 2)


def test_the_tick_asks_with_the_operators_routing() -> None:
    intent = SimpleNamespace(slo_itl_p95_seconds=0.1)
    base = PlanRequest(model=LLAMA_70B, accelerator="H100", workload=Workload(4.0, 1000, 200))
    assert not scored(base, intent, Tuning()).per_request_routing  # type: ignore[arg-type]
    assert scored(base, intent, Tuning(per_request_routing=True)).per_request_routing  # type: ignore[arg-type]
    assert not replace(base).per_request_routing


def test_settings_and_the_run_flag_switch_per_request_routing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATTKEEPER_PER_REQUEST_ROUTING", raising=False)
    assert OperatorSettings().per_request_routing is False  # off: the rendered Service balances connections
    monkeypatch.setenv("WATTKEEPER_PER_REQUEST_ROUTING", "true")
    assert OperatorSettings().per_request_routing is True
    monkeypatch.delenv("WATTKEEPER_PER_REQUEST_ROUTING")
    assert settings_from_run_flags(monkeypatch, "--per-request-routing").per_request_routing is True

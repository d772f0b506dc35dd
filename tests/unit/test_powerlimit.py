"""The GPU power limit as a lever: the model against published measurements, options, the in-place choice, and
a limit that changes nothing but a pod annotation (no new pod-template hash, no restart)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from wattkeeper.api import LLMService
from wattkeeper.control.planning import plan_request
from wattkeeper.controller.planning import intent_from_service
from wattkeeper.controller.powerlimits import pod_limit_patches
from wattkeeper.energy.catalog import get_accelerator, model_from_name
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.powerlimit import PUBLISHED_CAP_EFFECTS, clamp_limit_watts, limit_options_watts
from wattkeeper.energy.types import ModelShape, Plan, Workload
from wattkeeper.energy.types import ServingConfig as EngineConfig
from wattkeeper.planner import PlanRequest
from wattkeeper.planner.inplace import in_place_limit
from wattkeeper.render import render_deployment
from wattkeeper.render.objects import config_hash

LLAMA_8B = model_from_name("meta-llama/Llama-3.1-8B-Instruct", 8.0)


@pytest.mark.parametrize("batch", [16, 64, 256])
def test_model_reproduces_the_published_capping_figures(batch: int) -> None:
    """Samsi et al. 2023: A100, LLaMA-65B-sized inference, 70% of the default limit: energy -22..-24%, time
    +6..+7%. The model (A100 SXM, 400 W -> 280 W, the same fraction) within a few points of both."""
    published = PUBLISHED_CAP_EFFECTS[0]
    fraction = published.limit_watts / published.default_watts
    em = EnergyModel.default()
    a100 = get_accelerator("A100")
    model = ModelShape("llama-65b", 65.0)
    base = em.predict(model, a100, EngineConfig("bf16", 4, batch))
    capped = em.predict(model, a100, EngineConfig("bf16", 4, batch,
                                                  gpu_power_limit_watts=a100.power_limit_watts * fraction))
    energy = capped.joules_per_token / base.joules_per_token - 1
    time = base.output_tokens_per_second / capped.output_tokens_per_second - 1
    assert published.energy_change[0] - 0.04 <= energy <= published.energy_change[1] + 0.04, energy
    assert published.time_change[0] - 0.03 <= time <= published.time_change[1] + 0.03, time


def test_a_limit_above_the_draw_changes_nothing() -> None:
    """Memory-bound decode at a small batch draws far below the board limit: a mild cap is an illusion there."""
    em = EnergyModel.default()
    h100 = get_accelerator("H100")
    base = em.predict(LLAMA_8B, h100, EngineConfig("bf16", 1, 8))
    assert base.watts < 595
    capped = em.predict(LLAMA_8B, h100, EngineConfig("bf16", 1, 8, gpu_power_limit_watts=595))
    assert capped.joules_per_token == pytest.approx(base.joules_per_token)


def test_limit_options_stay_within_the_card() -> None:
    h100 = get_accelerator("H100")
    assert limit_options_watts(h100) == (None, 595.0, 490.0, 385.0)
    assert limit_options_watts(h100, (0.2,)) == (None, 200.0)  # the card's minimum
    assert clamp_limit_watts(h100, 900) is None and clamp_limit_watts(h100, 100) == 200.0


def request(rps: float, cap: float | None) -> PlanRequest:
    return PlanRequest(model=LLAMA_8B, accelerator="H100", workload=Workload(rps, 1024, 256),
                       allowed_precisions=("bf16",), slo_ttft_p95_seconds=5.0, slo_itl_p95_seconds=0.2,
                       allocation_watts=cap, fallback="ProtectBudget")


def test_in_place_limit_meets_a_cut_allocation_without_a_restart() -> None:
    running = EngineConfig("bf16", 1, 256, 8192)
    free = in_place_limit(request(20.0, None), running, 2)
    assert free.within_power and free.candidate is not None
    drawn = free.options[0].total_watts  # at the default limit
    cut = in_place_limit(request(20.0, drawn * 0.85), running, 2)
    assert cut.gpu_power_limit_watts is not None and cut.within_power
    assert cut.candidate is not None and cut.candidate.total_watts <= drawn * 0.85
    assert cut.candidate.config.precision == "bf16" and cut.candidate.replicas == 2  # nothing else changes
    hopeless = in_place_limit(request(20.0, 50.0), running, 2)
    assert not hopeless.within_power and "smaller configuration" in hopeless.reason


SERVICE = LLMService.model_validate({
    "apiVersion": "wattkeeper.io/v1alpha1", "kind": "LLMService",
    "metadata": {"name": "llm", "namespace": "ns", "uid": "u1"},
    "spec": {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "parametersBillions": 8},
             "slo": {"ttftP95Seconds": 2, "itlP95Seconds": 0.1}, "accelerator": {"type": "H100"}},
})


def test_a_power_limit_never_changes_the_pod_template() -> None:
    plain = Plan(EngineConfig("bf16", max_num_seqs=128), 2)
    limited = Plan(replace(plain.config, gpu_power_limit_watts=450.0), 2)
    assert config_hash(SERVICE, plain) == config_hash(SERVICE, limited)
    a, b = render_deployment(SERVICE, plain), render_deployment(SERVICE, limited)
    assert a["spec"] == b["spec"]  # same template: no new ReplicaSet, no restart
    assert b["metadata"]["annotations"]["wattkeeper.io/gpu-power-limit-watts"] == "450"


def test_a_rescale_never_changes_the_pod_template() -> None:
    # The digest lives in the pod template: were the replica count in it, every scale-up or scale-down would roll
    # all pods (a new ReplicaSet), and the restart-free moves would restart everything.
    one = Plan(EngineConfig("bf16", max_num_seqs=128), 1)
    three = Plan(one.config, 3)
    assert config_hash(SERVICE, one) == config_hash(SERVICE, three)
    a, b = render_deployment(SERVICE, one), render_deployment(SERVICE, three)
    assert a["spec"]["template"] == b["spec"]["template"]
    assert (a["spec"]["replicas"], b["spec"]["replicas"]) == (1, 3)


def test_pod_patches_carry_the_limit_to_running_pods() -> None:
    pods = [
        {"metadata": {"name": "a", "annotations": {"wattkeeper.io/gpu-power-limit-watts": "450"}}},
        {"metadata": {"name": "b"}},
        {"metadata": {"name": "c", "deletionTimestamp": "2026-01-01T00:00:00Z"}},
    ]
    assert pod_limit_patches(pods, 450.0) == [("b", {"metadata": {"annotations": {
        "wattkeeper.io/gpu-power-limit-watts": "450"}}})]
    assert [name for name, _ in pod_limit_patches(pods, None)] == ["a"]  # removing the limit


def test_the_operator_offers_limits_only_with_the_agent() -> None:
    wl = Workload(5.0, 1024, 256)
    assert plan_request(intent_from_service(SERVICE), wl, None).gpu_power_limits_watts == (None,)
    with_agent = intent_from_service(SERVICE, power_limits=True)
    assert plan_request(with_agent, wl, None).gpu_power_limits_watts == (None, 595.0, 490.0, 385.0)


def test_a_limit_only_change_is_in_place() -> None:
    from wattkeeper.planner.inplace import is_in_place_change

    base = EngineConfig("bf16", 1, 256)
    assert is_in_place_change(base, replace(base, gpu_power_limit_watts=490.0))
    assert not is_in_place_change(base, base)
    assert not is_in_place_change(base, replace(base, max_num_seqs=128, gpu_power_limit_watts=490.0))

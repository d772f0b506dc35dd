"""Property tests of the planner (hypothesis): monotone in load, SLO and cap; never outside the allowed space."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from wattkeeper.energy.catalog import model_from_name
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import Workload
from wattkeeper.planner import PlanRequest, plan

MODELS = [
    model_from_name("meta-llama/Llama-3.1-8B-Instruct", 8.0),
    model_from_name("Qwen/Qwen3-14B", 14.0),
    model_from_name("meta-llama/Llama-3.1-70B-Instruct", 70.0),
]
PRECISIONS = ["bf16", "fp8", "int8", "int4-awq"]
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

requests = st.builds(
    lambda model, rps, inp, out, precisions, ttft, itl, gpu: PlanRequest(
        model=model,
        accelerator=gpu,
        workload=Workload(rps, inp, out),
        allowed_precisions=tuple(precisions),
        slo_ttft_p95_seconds=ttft,
        slo_itl_p95_seconds=itl,
    ),
    st.sampled_from(MODELS),
    st.floats(0.1, 60.0),
    st.sampled_from([256.0, 1024.0, 3000.0]),
    st.sampled_from([64.0, 256.0, 1024.0]),
    st.lists(st.sampled_from(PRECISIONS), min_size=1, max_size=3, unique=True),
    st.floats(0.5, 5.0),
    st.floats(0.03, 0.3),
    st.sampled_from(["H100", "H200", "A100"]),
)


@SETTINGS
@given(requests, st.floats(1.2, 4.0))
def test_more_load_never_needs_fewer_gpus(req: PlanRequest, factor: float) -> None:
    low = plan(req)
    high = plan(
        replace(req, workload=replace(req.workload, requests_per_second=req.workload.requests_per_second * factor))
    )
    if low.feasible and high.feasible:
        assert low.chosen is not None and high.chosen is not None
        assert high.chosen.gpus >= low.chosen.gpus


@SETTINGS
@given(requests, st.floats(0.3, 0.95))
def test_tighter_slo_never_lowers_energy(req: PlanRequest, tighten: float) -> None:
    loose = plan(req)
    tight = plan(
        replace(
            req,
            slo_itl_p95_seconds=req.slo_itl_p95_seconds * tighten,
            slo_ttft_p95_seconds=req.slo_ttft_p95_seconds * tighten,
        )
    )
    if loose.feasible and tight.feasible:
        assert loose.chosen is not None and tight.chosen is not None
        assert tight.chosen.total_watts >= loose.chosen.total_watts - 1e-6


@SETTINGS
@given(requests, st.floats(0.2, 1.5), st.sampled_from(["ProtectBudget", "ProtectSLO"]))
def test_power_cap_never_raises_predicted_power(req: PlanRequest, fraction: float, fallback: str) -> None:
    free = plan(req)
    if free.chosen is None:
        return
    capped = plan(replace(req, allocation_watts=free.chosen.total_watts * fraction, fallback=fallback))
    if capped.chosen is not None:
        assert capped.chosen.total_watts <= free.chosen.total_watts + 1e-6


@SETTINGS
@given(requests)
def test_only_allowed_precisions_and_only_what_fits(req: PlanRequest) -> None:
    result = plan(req)
    em = EnergyModel.default()
    from wattkeeper.energy.catalog import get_accelerator

    acc = get_accelerator(req.accelerator)
    shown = [c for c in (result.chosen, result.runner_up, *result.candidates) if c is not None]
    for c in shown:
        assert c.config.precision in req.allowed_precisions
        assert c.fits_memory
        seq = req.workload.input_tokens + req.workload.output_tokens
        assert em.fits(req.model, acc, c.config, sequence_tokens=seq)
        assert req.min_replicas <= c.replicas <= req.max_replicas

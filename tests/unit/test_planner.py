"""Planner: choices, explanations, fallbacks, the switching rule, budget allocation and decision time."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from wattkeeper.energy.catalog import get_accelerator, model_from_name
from wattkeeper.energy.types import Workload
from wattkeeper.planner import (
    PlanRequest,
    ServiceDemand,
    allocate_watts,
    minimum_watts_for_slo,
    plan,
    should_switch,
)

LLAMA_8B = model_from_name("meta-llama/Llama-3.1-8B-Instruct", 8.0)
LLAMA_70B = model_from_name("meta-llama/Llama-3.1-70B-Instruct", 70.0)


def request(model=LLAMA_8B, rps: float = 10.0, **kw: object) -> PlanRequest:
    base = PlanRequest(
        model=model,
        accelerator="H100",
        workload=Workload(rps, 1024, 256),
        allowed_precisions=("bf16", "fp8"),
        slo_ttft_p95_seconds=2.0,
        slo_itl_p95_seconds=0.1,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_plan_meets_slos_and_explains() -> None:
    result = plan(request())
    assert result.feasible and result.chosen is not None
    c = result.chosen
    assert c.itl_p95_seconds <= 0.1 and c.ttft_p95_seconds <= 2.0 and c.fits_memory
    assert c.config.precision in ("bf16", "fp8")
    assert "Least energy" in result.reason and result.binding in ("slo-ttft", "slo-itl", "power", "memory", "none")
    assert result.runner_up is not None and result.runner_up.total_watts >= c.total_watts
    assert result.candidates, "the frontier is not empty"
    assert result.to_dict()["chosen"]["replicas"] == c.replicas


def test_70b_needs_more_than_one_gpu_per_replica() -> None:
    result = plan(request(LLAMA_70B, allowed_precisions=("bf16",)))
    assert result.chosen is not None and result.chosen.config.tensor_parallel >= 2


def test_tight_itl_slo_binds() -> None:
    result = plan(request(rps=40.0, slo_itl_p95_seconds=0.02))
    assert result.binding == "slo-itl" or not result.feasible


def test_power_cap_fallbacks() -> None:
    free = plan(request(rps=20.0, slo_itl_p95_seconds=0.04))
    assert free.chosen is not None
    cap = free.chosen.total_watts * 0.8
    protect_budget = plan(request(rps=20.0, slo_itl_p95_seconds=0.04, allocation_watts=cap, fallback="ProtectBudget"))
    assert not protect_budget.feasible and protect_budget.binding == "power"
    assert protect_budget.chosen is not None and protect_budget.chosen.total_watts <= cap
    assert not protect_budget.chosen.meets_slo and "ProtectBudget" in protect_budget.reason
    protect_slo = plan(request(allocation_watts=300.0, fallback="ProtectSLO"))
    assert not protect_slo.feasible and protect_slo.chosen is not None
    assert protect_slo.chosen.meets_slo and protect_slo.chosen.total_watts > 300.0
    assert "ProtectSLO" in protect_slo.reason


def test_nothing_fits() -> None:
    result = plan(request(model_from_name("big", 2000.0), max_tensor_parallel=1))
    assert not result.feasible and result.chosen is None and result.binding == "memory"


def test_corrections_scale_predictions() -> None:
    base = plan(request())
    hot = plan(request(power_correction=1.2))
    assert base.chosen is not None and hot.chosen is not None
    assert hot.chosen.total_watts == pytest.approx(base.chosen.total_watts * 1.2, rel=0.02) or (
        hot.chosen.config != base.chosen.config
    )


def test_minimum_watts_for_slo_ignores_the_cap() -> None:
    needed = minimum_watts_for_slo(request(allocation_watts=100.0))
    assert needed is not None and needed > 100.0


def test_planner_decides_within_ten_milliseconds() -> None:
    req = request(LLAMA_70B, rps=10.0)
    plan(req)  # warm the feature cache, as the running operator would be
    runs = 20
    started = time.perf_counter()
    for _ in range(runs):
        plan(req)
    per_decision_ms = (time.perf_counter() - started) / runs * 1000
    # The target is 10 ms on the 2-core dev machine; allow slack for a loaded CI runner.
    assert per_decision_ms < 30, per_decision_ms


def test_switching_rule() -> None:
    acc = get_accelerator("H100")
    low = plan(request(rps=2.0)).chosen
    high = plan(request(rps=40.0)).chosen
    assert low is not None and high is not None
    assert should_switch(None, low, 600, LLAMA_8B, acc).switch
    assert not should_switch(low, low, 600, LLAMA_8B, acc).switch
    # Load rose: the running small plan misses its SLO at 40 rps only if re-evaluated; compare energy instead.
    cheaper = replace(high, total_watts=high.total_watts * 0.9, config=replace(high.config, precision="fp8"))
    short = should_switch(high, cheaper, 10, LLAMA_8B, acc)
    assert not short.switch and short.cost_joules > short.saving_joules
    long = should_switch(high, cheaper, 24 * 3600, LLAMA_8B, acc)
    assert long.switch and long.saving_joules > long.cost_joules
    tiny = replace(high, total_watts=high.total_watts * 0.99, config=replace(high.config, precision="fp8"))
    assert not should_switch(high, tiny, 24 * 3600, LLAMA_8B, acc).switch  # hysteresis
    broken = replace(high, meets_itl=False)
    assert should_switch(broken, cheaper, 1, LLAMA_8B, acc).switch
    # A GPU power limit alone is set in place by the node agent: no restart, no cost, even over a short horizon.
    limited = replace(high, total_watts=high.total_watts * 0.9, config=replace(high.config, gpu_power_limit_watts=490.0))
    in_place = should_switch(high, limited, 10, LLAMA_8B, acc)
    assert in_place.switch and in_place.cost_joules == 0.0 and "no restart" in in_place.reason


def test_allocation_degrades_lowest_priority_first() -> None:
    demands = [
        ServiceDemand("chat", priority=10, minimum_watts=600, desired_watts=700, floor_watts=100, joules_per_token=0.2),
        ServiceDemand(
            "batch", priority=1, minimum_watts=900, desired_watts=1000, floor_watts=100, joules_per_token=0.1
        ),
    ]
    plenty = {a.name: a for a in allocate_watts(3000, demands)}
    assert not plenty["chat"].degraded and not plenty["batch"].degraded
    # each gets at least its unconstrained plan, and the spare is shared as headroom in proportion to need
    assert plenty["chat"].watts >= 700 and plenty["batch"].watts >= 1000
    assert sum(a.watts for a in plenty.values()) == pytest.approx(3000)
    assert plenty["batch"].watts / plenty["chat"].watts == pytest.approx(1000 / 700)
    tight = {a.name: a for a in allocate_watts(1000, demands)}
    assert not tight["chat"].degraded and tight["batch"].degraded
    assert sum(a.watts for a in tight.values()) == pytest.approx(1000)
    assert "chat" in tight["batch"].reason
    starved = allocate_watts(100, demands)
    # Below the floors: the budget is shared in proportion to the floors, never exceeded.
    assert all(a.degraded for a in starved) and sum(a.watts for a in starved) == pytest.approx(100)


def _without_frontier(result: object) -> dict[str, object]:
    d = result.to_dict()  # type: ignore[attr-defined]
    d.pop("frontier")
    return d


@pytest.mark.parametrize("case", ["decision", "lever", "cap", "protect-budget", "margins", "overload", "idle",
                                  "replay-fails"])
def test_a_plan_without_the_frontier_is_the_plan_with_it(case: str) -> None:
    """Without the frontier the queued model is solved cheapest first, only as far as the answer needs
    (search._plan_once), and the chosen plan is replayed on its own first (search._plan): the chosen plan,
    runner-up, binding, reason and replays must be those of the full evaluation, and the alternatives listed the
    first of its. hack/plan_equivalence.py checks the same over 1,545 requests."""
    from wattkeeper.bench.decision import decision_request
    from wattkeeper.planner.search import clear_plan_cache

    base = replace(decision_request(verify=True, power_limits=case == "lever"), frontier=True)
    wl = base.workload
    asked = {
        "decision": base,
        "lever": base,
        "cap": replace(base, allocation_watts=2000.0),
        "protect-budget": replace(base, allocation_watts=1500.0, fallback="ProtectBudget"),
        "margins": replace(base, ttft_margin=1.4, itl_margin=1.8, verify_relaxed_share=0.95, max_gpus=8),
        "overload": replace(base, workload=Workload(wl.requests_per_second * 40, wl.input_tokens, wl.output_tokens)),
        "idle": replace(base, workload=Workload(0.05, wl.input_tokens, wl.output_tokens), replay=None),
        # The arrivals replayed twice as fast: the chosen plan fails its replay, and the next ones are tried.
        "replay-fails": replace(base, replay_rate_scale=2.0),
    }[case]
    clear_plan_cache()
    full = plan(asked)
    clear_plan_cache()
    lazy = plan(replace(asked, frontier=False))
    assert full.candidates and not lazy.candidates
    assert _without_frontier(lazy) == _without_frontier(full)
    assert lazy.alternatives == full.alternatives[: len(lazy.alternatives)]
    assert bool(lazy.alternatives) == bool(full.alternatives)
    assert [o.within_share for o in lazy.verification] == [o.within_share for o in full.verification]
    if case == "replay-fails":
        assert len(lazy.verification) == 3 and lazy.verification[0].within_share < 0.99


def test_a_plan_without_the_frontier_solves_only_the_cheap_end_of_the_grid() -> None:
    """What makes the control core's decision cheap: for the decision-time benchmark's 70B request the queued
    model solves under half of its distinct questions."""
    from wattkeeper.bench.decision import decision_request
    from wattkeeper.energy.model import EnergyModel
    from wattkeeper.planner import search

    asked = replace(decision_request(verify=False, power_limits=True), frontier=False)
    solved: list[int] = []
    original = search._QueuedFigures.solve

    def counting(self: search._QueuedFigures, questions: object) -> None:
        original(self, questions)  # type: ignore[arg-type]
        solved.append(int(self.solved.sum()))
        solved.append(self.questions)

    search._QueuedFigures.solve = counting  # type: ignore[method-assign]
    try:
        search._plan_once(asked, EnergyModel.default())
    finally:
        search._QueuedFigures.solve = original  # type: ignore[method-assign]
    assert 0 < solved[-2] < 0.5 * solved[-1]


def test_the_control_cores_searches_are_solved_lazily_too() -> None:
    """The control core plans at the workload's means rounded (control/load.py `significant`), which are not the
    token distribution's own: the queued model then starts from the steady figures at the distribution's means,
    worked out per question up front, so the lazy search still knows every candidate's power. Its answers are
    the full evaluation's, and it solves under half of the questions."""
    from wattkeeper.bench.decision import decision_request
    from wattkeeper.energy.model import EnergyModel
    from wattkeeper.planner import search

    asked = decision_request(verify=False, power_limits=True)
    tokens = asked.token_distribution()
    rounded = Workload(asked.workload.requests_per_second, round(tokens.mean_prompt_tokens, -1),
                       round(tokens.mean_output_tokens, -1))
    assert (rounded.input_tokens, rounded.output_tokens) != (tokens.mean_prompt_tokens, tokens.mean_output_tokens)
    asked = replace(asked, workload=rounded, tokens=tokens)
    search.clear_plan_cache()
    full = plan(replace(asked, frontier=True))
    search.clear_plan_cache()
    solved: list[tuple[int, int]] = []
    original = search._QueuedFigures.solve

    def counting(self: search._QueuedFigures, questions: object) -> None:
        original(self, questions)  # type: ignore[arg-type]
        solved.append((int(self.solved.sum()), self.questions))

    search._QueuedFigures.solve = counting  # type: ignore[method-assign]
    try:
        lazy = search._plan(asked, EnergyModel.default())
    finally:
        search._QueuedFigures.solve = original  # type: ignore[method-assign]
    assert _without_frontier(lazy) == _without_frontier(full)
    assert 0 < solved[-1][0] < 0.5 * solved[-1][1]


def _groups_of(base: PlanRequest) -> list[PlanRequest]:
    """Margin groups as the control core asks them (control/tick.py `search`): per precision, TPs sharing chunk
    budgets, each with its own latency margins."""
    return [
        replace(base, allowed_precisions=("bf16",), tensor_parallel_options=(8,), max_num_batched_tokens_options=(
            2048, 8192), chunk_budget_options=(2048, 8192), ttft_margin=0.9, itl_margin=1.3),
        replace(base, allowed_precisions=("bf16",), tensor_parallel_options=(1, 2, 4), max_num_batched_tokens_options=(
            2048, 8192), chunk_budget_options=(2048, 8192), ttft_margin=2.0, itl_margin=2.0),
        replace(base, allowed_precisions=("fp8",), tensor_parallel_options=(1, 2, 4, 8),
                max_num_batched_tokens_options=(8192,), chunk_budget_options=(8192,), ttft_margin=1.2, itl_margin=1.1),
        replace(base, allowed_precisions=("fp8",), tensor_parallel_options=(1, 2, 4, 8),
                max_num_batched_tokens_options=(2048,), chunk_budget_options=(2048,), ttft_margin=1.0, itl_margin=1.0),
    ]


@pytest.mark.parametrize("case", ["plain", "cap", "protect-budget", "overload"])
def test_margin_groups_planned_together_answer_as_planned_apart(case: str) -> None:
    """planner.plan_groups evaluates the control core's margin groups in one pass of the queued model, each
    candidate against its own group's margins: every answer must be the one `plan` gives the group alone."""
    from wattkeeper.bench.decision import decision_request
    from wattkeeper.planner import plan_groups
    from wattkeeper.planner.search import _groupable, clear_plan_cache

    base = decision_request(verify=False, power_limits=True)
    wl = base.workload
    base = {
        "plain": base,
        "cap": replace(base, allocation_watts=2500.0),
        "protect-budget": replace(base, allocation_watts=1200.0, fallback="ProtectBudget"),
        "overload": replace(base, workload=Workload(wl.requests_per_second * 60, wl.input_tokens, wl.output_tokens),
                            max_replicas=8),
    }[case]
    groups = _groups_of(base)
    assert _groupable(groups)
    clear_plan_cache()
    apart = [plan(g) for g in groups]
    clear_plan_cache()
    together = plan_groups(groups)
    for a, t in zip(apart, together, strict=True):
        assert t.to_dict() == a.to_dict()
        assert t.chosen == a.chosen and t.runner_up == a.runner_up
    assert plan_groups(groups) == together  # memoised as plan() memoises


def test_requests_that_differ_otherwise_are_planned_apart() -> None:
    from wattkeeper.bench.decision import decision_request
    from wattkeeper.planner.search import _groupable

    groups = _groups_of(decision_request(verify=False))
    assert not _groupable([groups[0], replace(groups[1], workload=Workload(9.0, 1000, 200))])
    assert not _groupable([groups[0], replace(groups[1], tensor_parallel_options=(8,))])  # the same candidates twice
    assert not _groupable([replace(g, frontier=True) for g in groups])
    assert not _groupable([replace(g, latency_model="steady", slo_basis="p95") for g in groups])


def test_margin_groups_with_profile_points_are_planned_one_by_one() -> None:
    """An EnergyProfile's points (api.ProfilePoint, unhashable) travel in the request: plan_groups answers those as
    `plan` does, each on its own, rather than failing the service's tick (TypeError: unhashable type)."""
    from wattkeeper.api import ProfilePoint
    from wattkeeper.bench.decision import decision_request
    from wattkeeper.planner import plan_groups

    pts = [ProfilePoint(precision="bf16", tensor_parallel=8, max_num_seqs=64, batch_size=60,
                        output_tokens_per_second=3000, watts=4000, joules_per_token=4000 / 3000)]
    groups = [replace(g, profile=pts) for g in _groups_of(decision_request(verify=False))]
    answers = plan_groups(groups)
    assert len(answers) == len(groups) and answers[0].to_dict() == plan(groups[0]).to_dict()

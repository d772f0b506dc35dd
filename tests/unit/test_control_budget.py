"""The budget's pure decision: accounting, allocation, and combining the shares of several budgets."""

from __future__ import annotations

from dataclasses import replace

import pytest
from wattkeeper.bench.groundtruth import model_shape
from wattkeeper.control import FleetState, Memory, ServiceIntent, TickInputs, decide_tick
from wattkeeper.control.budget import (
    BudgetIntent,
    BudgetMemory,
    BudgetShare,
    ServiceLoad,
    account,
    decide_budget,
    fleet_sizes,
    service_demand,
    shares_to_allocation,
)
from wattkeeper.control.planning import allocation_changed
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import Workload
from wattkeeper.planner import ServiceDemand, allocate_watts

EM = EnergyModel.default()
HOUR = 3600.0
INTENT = ServiceIntent(model=model_shape("meta-llama/Llama-3.1-8B-Instruct"), accelerator="H100",
                       allowed_precisions=("bf16", "fp8"), slo_ttft_p95_seconds=2.0, slo_itl_p95_seconds=0.05,
                       max_replicas=8)


# --- accounting --------------------------------------------------------------------------------------------------

ENERGY = BudgetIntent(energy_limit_kwh=10.0, energy_period_seconds=24 * HOUR)


@pytest.mark.parametrize(("case", "budget", "memory", "measured", "now", "used", "allocatable"), [
    ("first pass: nothing used yet, the allowance spread over the period",
     ENERGY, BudgetMemory(), 1000.0, 0.0, 0.0, 10.0 * 3.6e6 / (24 * HOUR)),
    ("an hour at 1 kW is 1 kWh", ENERGY, BudgetMemory(period_start_s=0.0, last_accounted_s=0.0), 1000.0, HOUR,
     1.0, 9.0 * 3.6e6 / (23 * HOUR)),
    ("silence accounts nothing", ENERGY, BudgetMemory(period_start_s=0.0, energy_used_kwh=2.0, last_accounted_s=0.0),
     None, HOUR, 2.0, 8.0 * 3.6e6 / (23 * HOUR)),
    ("a new period resets usage", ENERGY,
     BudgetMemory(period_start_s=0.0, energy_used_kwh=9.0, last_accounted_s=25 * HOUR - 36), 1000.0, 25 * HOUR,
     0.01, 9.99 * 3.6e6 / (23 * HOUR)),
    ("a power limit alone", BudgetIntent(power_limit_watts=800.0), BudgetMemory(), 500.0, 0.0, 0.0, 800.0),
    ("the tighter of power and energy", replace(ENERGY, power_limit_watts=100.0), BudgetMemory(), 50.0, 0.0, 0.0,
     100.0),
    ("no limit at all", BudgetIntent(), BudgetMemory(), 500.0, 0.0, 0.0, None),
])
def test_account(case: str, budget: BudgetIntent, memory: BudgetMemory, measured: float | None, now: float,
                 used: float, allocatable: float | None) -> None:
    acc = account(budget, memory, measured, now, 30.0)
    assert acc.memory.energy_used_kwh == pytest.approx(used, abs=1e-3)
    if allocatable is None:
        assert acc.allocatable_watts is None
    else:
        assert acc.allocatable_watts == pytest.approx(allocatable, rel=1e-3)


def test_window_average_and_exhaustion() -> None:
    budget = BudgetIntent(power_limit_watts=1000.0, power_window_seconds=60.0, energy_limit_kwh=1.0,
                          energy_period_seconds=24 * HOUR)
    memory = BudgetMemory(power_samples=((0.0, 400.0), (30.0, 600.0)), period_start_s=0.0, last_accounted_s=30.0)
    acc = account(budget, memory, 800.0, 90.0, 30.0)
    assert [s[0] for s in acc.memory.power_samples] == [30.0, 90.0]  # older than the window: dropped
    assert acc.window_average_watts == 700.0
    assert acc.forecast_exhaustion_s is not None and acc.forecast_exhaustion_s < 24 * HOUR


# --- allocation --------------------------------------------------------------------------------------------------


def demand(name: str, priority: int, minimum: float | None, desired: float, floor: float = 0.0,
           jpt: float = 0.5, tokens: float = 1000.0, full: float | None = None) -> ServiceDemand:
    return ServiceDemand(name, priority, minimum, desired, floor, jpt, tokens if minimum is not None else 0.0, full)


@pytest.mark.parametrize(("case", "total", "demands", "watts", "degraded"), [
    ("enough for all: spare headroom shared by need", 3000.0,
     [demand("a", 100, 500, 800), demand("b", 100, 500, 700)], {"a": 1600.0, "b": 1400.0}, set()),
    ("short: the lower priority is degraded first", 900.0,
     [demand("hi", 200, 600, 600, 100), demand("lo", 100, 600, 600, 100)], {"hi": 600.0, "lo": 300.0}, {"lo"}),
    ("below the floors: shared in proportion to the floors, never past the budget", 100.0,
     [demand("a", 100, 500, 500, 100), demand("b", 100, 500, 500, 300)], {"a": 25.0, "b": 75.0}, {"a", "b"}),
    ("no plan meets the SLO: degraded at any watts", 5000.0, [demand("a", 100, None, 900)], {"a": 5000.0}, {"a"}),
    ("spare watts go to the more efficient first", 1300.0,
     [demand("cheap", 100, 500, 800, jpt=0.1), demand("dear", 100, 500, 800, jpt=0.9)],
     {"cheap": 800.0, "dear": 500.0}, set()),
    ("within a priority, SLO-meeting tokens per watt above the floor first", 1100.0,
     [demand("few", 100, 600, 600, 100, tokens=500.0), demand("many", 100, 600, 600, 100, tokens=2000.0)],
     {"few": 500.0, "many": 600.0}, {"few"}),
    ("within a priority, one that does not fit is skipped for one that does", 900.0,
     [demand("big", 100, 900, 900, 100, tokens=4800.0), demand("small", 100, 300, 300, 100, tokens=1000.0)],
     {"big": 600.0, "small": 300.0}, {"big"}),
    ("the higher priority first, even when a lower one would buy more tokens per watt", 1000.0,
     [demand("hi", 200, 900, 900, 100), demand("lo", 100, 300, 300, 100, tokens=9000.0)],
     {"hi": 900.0, "lo": 100.0}, {"lo"}),
    ("a short higher priority: the lower one keeps its floor only", 900.0,
     [demand("hi", 200, 1000, 1000, 100), demand("lo", 100, 300, 300, 100)], {"hi": 800.0, "lo": 100.0},
     {"hi", "lo"}),
    ("a short one's remainder comes before burst headroom for one that meets its SLO", 1500.0,
     [demand("a", 100, 400, 900, 100, tokens=3000.0), demand("b", 100, 1200, 1200, 100, tokens=1000.0)],
     {"a": 400.0, "b": 1100.0}, {"b"}),
    ("held at their floors, both get one full batch before the short one takes the rest", 1500.0,
     [demand("hi", 200, 1254, 1254, 545, full=686), demand("lo", 100, 686, 1254, 539, full=686)],
     {"hi": 814.0, "lo": 686.0}, {"hi"}),
    ("no lift when every SLO need fits", 1900.0,
     [demand("hi", 200, 1254, 1254, 545, full=686), demand("lo", 100, 700, 1254, 539, full=686)],
     {"hi": 1254.0, "lo": 646.0}, {"lo"}),
    ("a lift that does not fit whole is not made", 1200.0,
     [demand("hi", 200, 1254, 1254, 545, full=686), demand("lo", 100, 686, 1254, 539, full=686)],
     {"hi": 661.0, "lo": 539.0}, {"hi", "lo"}),
])
def test_allocate_watts(case: str, total: float, demands: list[ServiceDemand], watts: dict[str, float],
                        degraded: set[str]) -> None:
    out = {a.name: a for a in allocate_watts(total, demands)}
    assert {n: round(a.watts, 1) for n, a in out.items()} == pytest.approx(watts), case
    assert {n for n, a in out.items() if a.degraded} == degraded, case
    floors = sum(d.floor_watts for d in demands)
    assert sum(a.watts for a in out.values()) <= total + 1e-6, case
    for d in demands:
        assert out[d.name].watts >= d.floor_watts * min(1.0, total / max(floors, 1e-9)) - 1e-6, case
        assert out[d.name].reason.startswith(f"priority {d.priority}: "), case


def test_allocation_reasons_say_why() -> None:
    out = {a.name: a for a in allocate_watts(1000.0, [
        demand("hi", 200, 600, 600, 100), demand("lo", 100, 600, 600, 100), demand("peer", 100, 300, 300, 100)])}
    assert "meets its SLO" in out["hi"].reason and "SLO-meeting tokens/s per W" in out["hi"].reason
    assert "needs 600 W" in out["lo"].reason and "after higher-priority hi" in out["lo"].reason
    assert "at its priority peer" in out["lo"].reason


def test_decide_budget_splits_by_priority() -> None:
    load = Workload(20.0, 1000.0, 250.0)
    services = [ServiceLoad("chat", 200, INTENT, load), ServiceLoad("batch", 100, INTENT, load)]
    roomy = decide_budget(BudgetIntent(power_limit_watts=20_000.0), BudgetMemory(), services, 1000.0, 0.0, 30.0, EM)
    assert roomy.degraded == () and roomy.within is True
    assert sum(roomy.allocation_watts().values()) == pytest.approx(20_000.0, rel=1e-3)
    needs = {a.name: a.minimum_watts for a in roomy.allocations}
    assert needs["chat"] is not None
    floor = service_demand(services[1], EM).floor_watts
    tight_watts = needs["chat"] + floor + 10.0
    tight = decide_budget(BudgetIntent(power_limit_watts=tight_watts), BudgetMemory(), services, None, 0.0, 30.0, EM)
    assert tight.degraded == ("batch",)
    assert tight.within is None and tight.within_reason == "NoMeasurement"
    over = decide_budget(BudgetIntent(power_limit_watts=500.0), BudgetMemory(), services, 900.0, 0.0, 30.0, EM)
    assert over.within is False and over.within_reason == "OverLimit"
    free = decide_budget(BudgetIntent(), BudgetMemory(), services, 900.0, 0.0, 30.0, EM)
    assert free.allocations == () and free.within_reason == "NoLimit"


CHAT = replace(INTENT, slo_ttft_p95_seconds=1.0, slo_itl_p95_seconds=0.05, max_replicas=4, max_tensor_parallel=2)
ASSISTANT = replace(CHAT, slo_ttft_p95_seconds=2.5, slo_itl_p95_seconds=0.1)


def test_a_budget_at_the_least_slo_watts_is_met_by_the_services_own_ticks() -> None:
    """The demo's two services at their risen load: a budget tightened to what their SLOs need (minimumWatts) gives
    each a share under which its own tick (the queued model, 99% of requests, the untried prior) runs a plan that
    meets the SLO, with J/token no worse than its unconstrained plan (never a shrunken batch). Priced with the
    steady p95 model and without the tick's headroom, the chat's share was 30% short of that."""
    load = Workload(13.5, 1000.0, 250.0)
    services = [ServiceLoad("chat", 200, CHAT, load), ServiceLoad("assistant", 100, ASSISTANT, load)]
    roomy = decide_budget(BudgetIntent(power_limit_watts=20_000.0), BudgetMemory(), services, None, 0.0, 30.0, EM)
    minimum = {a.name: a.minimum_watts for a in roomy.allocations}
    assert all(m is not None for m in minimum.values())
    need = sum(m for m in minimum.values() if m is not None)
    assert need <= roomy.projected_watts + 1.0
    tight = decide_budget(BudgetIntent(power_limit_watts=need * 1.01), BudgetMemory(), services, None, 0.0, 30.0,
                          EM)
    assert tight.degraded == ()
    for service, share in zip(services, tight.allocations, strict=True):
        intent = replace(service.intent, default_workload=load)
        free = decide_tick(TickInputs(intent, Memory(), None, FleetState(), now_s=0.0), EM).candidate
        capped = decide_tick(TickInputs(intent, Memory(), None, FleetState(), now_s=0.0,
                                        allocation_watts=share.allocation_watts), EM).candidate
        assert capped is not None and free is not None, share.reason
        assert capped.meets_slo, (share.reason, capped.describe())
        assert capped.total_watts <= share.allocation_watts
        assert capped.joules_per_token <= free.joules_per_token * 1.001, capped.describe()


def test_the_full_batch_floor_buys_a_full_batch() -> None:
    """A service the budget can give only its smallest fleet at a full batch runs that, not a shrunken batch that
    fits under the tick's power headroom (the demo's assistant: max-num-seqs 8 at 2.4x the J/token)."""
    load = Workload(40.0, 1500.0, 340.0)
    intent = replace(ASSISTANT, default_workload=load)
    demand = service_demand(ServiceLoad("assistant", 100, intent, load), EM)
    assert demand.full_batch_watts is not None and demand.full_batch_watts > demand.floor_watts
    tick = decide_tick(TickInputs(intent, Memory(), None, FleetState(), now_s=0.0,
                                  allocation_watts=demand.full_batch_watts), EM)
    assert tick.candidate is not None and tick.candidate.config.max_num_seqs >= 256, tick.candidate.describe()


@pytest.mark.parametrize(("replicas", "sizes"), [
    (1, [1]), (3, [1, 2, 3]), (8, [1, 2, 3, 4, 5, 6, 7, 8]), (20, [10, 11, 13, 14, 16, 17, 19, 20]),
])
def test_fleet_sizes(replicas: int, sizes: list[int]) -> None:
    assert fleet_sizes(1, replicas) == sizes


@pytest.mark.parametrize(("before", "after", "changed"), [
    (None, None, False), (None, 100.0, True), (100.0, None, True), (100.0, 100.9, False), (1000.0, 1009.0, False),
    (1000.0, 1011.0, True),
])
def test_allocation_changed(before: float | None, after: float | None, changed: bool) -> None:
    assert allocation_changed(before, after) is changed


@pytest.mark.parametrize(("shares", "watts", "advised", "budgets"), [
    ([], None, None, ()),
    ([BudgetShare("a", True, 500.0), BudgetShare("b", True, 300.0)], 300.0, None, ("a", "b")),
    ([BudgetShare("a", True, 500.0), BudgetShare("adv", False, 100.0)], 500.0, None, ("a", "adv")),
    ([BudgetShare("adv", False, 100.0), BudgetShare("adv2", False, 80.0)], None, 80.0, ("adv", "adv2")),
    ([BudgetShare("new", True, None)], None, None, ("new",)),  # selected, not allocated yet
])
def test_shares_to_allocation(shares: list[BudgetShare], watts: float | None, advised: float | None,
                              budgets: tuple[str, ...]) -> None:
    combined = shares_to_allocation(shares)
    assert (combined.allocation_watts, combined.advised_watts, combined.budgets) == (watts, advised, budgets)

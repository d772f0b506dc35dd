"""Parity: the operator's adapter (controller/decide.py, status round trip included) and the benchmark's
Wattkeeper policy (bench/wattkeeper_policy.py), driven with one sequence of signals, decide the same.

Both sides get the same telemetry: finished requests per second, the queue averaged over the 60 s window, power,
latency, a rolling fleet while a replica loads; and the same allocation. The operator's side keeps its memory in
status (serialised as the API server holds it); the benchmark keeps it in the policy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from wattkeeper.api import LLMService
from wattkeeper.bench.fleet import FleetTarget, Observation
from wattkeeper.bench.policies import BenchSpec
from wattkeeper.bench.trace import synthetic_trace
from wattkeeper.bench.wattkeeper_policy import WattkeeperPolicy
from wattkeeper.control import Plan
from wattkeeper.controller.decide import Allocation, DeploymentState, ServiceInputs, decide, memory_from_status
from wattkeeper.controller.planning import intent_from_service, model_shape
from wattkeeper.controller.settings import OperatorSettings
from wattkeeper.energy.model import EnergyModel
from wattkeeper.render import config_hash
from wattkeeper.telemetry import ServiceObservation
from wattkeeper_runtime.simmetrics import ITL_BUCKETS, TTFT_BUCKETS

BASE = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
EM = EnergyModel.default()
WINDOW_S = 60.0
IN_TOKENS, OUT_TOKENS = 500.0, 150.0
CUT_WATTS = 700.0  # below the 2-replica plan's 900 W: the budget is cut during the cooldown


def service() -> LLMService:
    return LLMService.model_validate({
        "metadata": {"name": "chat", "namespace": "ns", "generation": 1},
        "spec": {
            "model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "parametersBillions": 8, "layers": 32,
                      "kvHeads": 8, "headDim": 128},
            "quality": {"allowedPrecisions": ["bf16", "fp8"]},
            "slo": {"ttftP95Seconds": 2.0, "itlP95Seconds": 0.03},
            "scaling": {"minReplicas": 1, "maxReplicas": 8},
            "accelerator": {"type": "H100", "maxTensorParallel": 8},
            "workload": {"requestsPerSecond": 8, "inputTokens": 500, "outputTokens": 150},
        },
    })


@dataclass(frozen=True)
class Step:
    """One tick's signals: what telemetry shows over the last window."""

    t_s: float
    finished_rps: float
    waiting: float = 0.0
    watts_per_replica: float = 420.0
    ttft_s: float = 0.2
    itl_s: float = 0.02
    rolling: bool = False  # one replica still loading
    allocation_watts: float | None = None


def steps() -> list[Step]:
    out = [Step(t, 8.0) for t in range(30, 150, 30)]
    out += [Step(150, 25.0, waiting=40.0, ttft_s=3.0)]  # saturated: more capacity, at once
    out += [Step(t, 40.0, waiting=80.0, ttft_s=4.0, rolling=True) for t in (180, 210)]  # more still: settling
    out += [Step(240, 40.0, waiting=80.0, ttft_s=4.0)]  # settled 90 s after the change: more capacity again
    out += [Step(270, 40.0, rolling=True)]
    out += [Step(t, 26.0, watts_per_replica=600.0) for t in range(300, 360, 30)]
    out += [Step(t, 26.0, watts_per_replica=500.0, allocation_watts=CUT_WATTS) for t in range(360, 450, 30)]
    out += [Step(t, 3.0, watts_per_replica=300.0) for t in range(450, 1200, 30)]  # a lull: held, then saving
    out += [Step(t, 3.0, allocation_watts=250.0) for t in range(1200, 1290, 30)]  # a cut the plan already fits
    return out


def window_latencies(step: Step) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The window's TTFTs and finished requests' mean ITLs: most well within the SLOs, 2% over each."""
    n = int(step.finished_rps * WINDOW_S)
    late = max(n // 50, 1)
    return ((step.ttft_s,) * (n - late) + (3.0,) * late, (step.itl_s * 0.8,) * (n - late) + (0.06,) * late)


def cumulative_rates(values: tuple[float, ...], bounds: tuple[float, ...]) -> tuple[tuple[float, float], ...]:
    """A histogram's cumulative bucket rates as Prometheus' `sum by (le) (rate(..._bucket[60s]))` gives them."""
    return tuple((le, sum(1 for v in values if v <= le) / WINDOW_S) for le in (*bounds, math.inf))


def observation(step: Step, replicas: int) -> ServiceObservation:
    ready = replicas - 1 if step.rolling else replicas
    ttfts, itls = window_latencies(step)
    return ServiceObservation(
        ttft_bucket_rates=cumulative_rates(ttfts, TTFT_BUCKETS),
        request_itl_bucket_rates=cumulative_rates(itls, ITL_BUCKETS),
        watts=step.watts_per_replica * replicas, output_tokens_per_second=step.finished_rps * OUT_TOKENS,
        requests_per_second=step.finished_rps, prompt_tokens_per_second=step.finished_rps * IN_TOKENS,
        ttft_p95_seconds=step.ttft_s, itl_p95_seconds=step.itl_s, running_requests=10.0,
        waiting_requests=step.waiting, pods_reporting=ready, power_source="test",
    )


def bench_observation(step: Step, replicas: int) -> Observation:
    ready = replicas - 1 if step.rolling else replicas
    return Observation(
        now_s=step.t_s, window_s=WINDOW_S, requests_per_second=step.finished_rps, mean_input_tokens=IN_TOKENS,
        mean_output_tokens=OUT_TOKENS, watts=step.watts_per_replica * replicas, ttft_p95_seconds=step.ttft_s,
        itl_p95_seconds=step.itl_s, running_requests=10, waiting_requests=int(step.waiting), serving_replicas=ready,
        loading_replicas=1 if step.rolling else 0, draining_replicas=0, active_per_replica_mean=0.0,
        finished_requests_per_second=step.finished_rps, mean_waiting_requests=step.waiting,
        mean_running_requests=10.0, window_ttfts_s=window_latencies(step)[0],
        window_mean_itls_s=window_latencies(step)[1],
    )


class Operator:
    """The operator's side: ServiceInputs from the service, the stored status and the Deployment; status back."""

    def __init__(self) -> None:
        self.svc = service()
        self.status: dict[str, Any] = {}
        self.settings = OperatorSettings(telemetry_window_seconds=WINDOW_S, metrics_port=0, health_port=0)
        self.deployment = DeploymentState()

    def tick(self, t_s: float, obs: ServiceObservation | None, allocation_watts: float | None,
             rolling: bool = False) -> tuple[str, str, str | None]:
        alloc = Allocation(watts=allocation_watts, budget="b", budgets=("b",)) if allocation_watts else Allocation()
        if self.deployment.exists:
            n = self.deployment.replicas
            self.deployment = replace(self.deployment, ready_replicas=n - 1 if rolling else n,
                                      updated_replicas=n - 1 if rolling else n)
        inputs = ServiceInputs(self.svc, self.status, alloc, obs, None if obs else "no data", self.deployment,
                               BASE + timedelta(seconds=t_s), telemetry_window_seconds=WINDOW_S)
        decision = decide(inputs, EM, self.settings)
        self.status = json.loads(json.dumps(decision.status))  # as the API server stores it
        applied = None
        if decision.apply is not None:
            applied = decision.apply.describe()
            n = decision.apply.replicas
            self.deployment = DeploymentState(True, config_hash(self.svc, decision.apply), n, n, n)
        return decision.action, decision.cause, applied


def bench_policy() -> WattkeeperPolicy:
    svc = service()
    trace = synthetic_trace([(60.0, 4.0)], input_tokens=500, output_tokens=150)
    spec = BenchSpec(model_shape(svc), "H100", 2.0, 0.03, max_replicas=8)
    # The operator's side is fed no burst telemetry here, so neither is the benchmark's (same signals, same core).
    policy = WattkeeperPolicy(spec, trace, EM, bursts=False)
    # The service's spec workload stands for the load seen before the trace starts, on both sides.
    operator_intent = intent_from_service(svc)
    policy.intent = replace(policy.intent, default_workload=operator_intent.default_workload)
    assert policy.intent == operator_intent, "the benchmark must serve the service the operator serves"
    return policy


def comparable(memory: Any, offset_s: float) -> tuple[Any, ...]:
    def shift(value: float | None) -> float | None:
        return None if value is None else round(value - offset_s, 3)

    recent = tuple((r.configuration, shift(r.left_at_s), r.allocation_watts) for r in memory.recent_configurations)
    canary = None if memory.canary is None else (memory.canary.plan, shift(memory.canary.started_s),
                                                   shift(memory.canary.ready_s), memory.canary.windows)
    ended = tuple((r.configuration, shift(r.left_at_s), r.allocation_watts) for r in memory.canaries_ended)
    short = tuple((e.configuration, e.replicas, shift(e.at_s), e.load_rps, e.allocation_watts)
                  for e in memory.measured_short)
    return (memory.running, shift(memory.last_applied_s), memory.planned_load, memory.peak_load_rps,
            shift(memory.peak_load_at_s), memory.power_correction, memory.ttft_correction, memory.itl_correction,
            recent, memory.margins, memory.awaiting_rollout, shift(memory.rolled_out_s), memory.bridged_limit_watts,
            shift(memory.missed_since_s), canary, ended, memory.tail_measured_misses, memory.tail_predicted_misses,
            short)


def test_operator_and_benchmark_decide_the_same() -> None:
    op = Operator()
    policy = bench_policy()

    first = op.tick(0.0, None, None)
    target = policy.initial()
    bench_first = policy.ticks[-1]
    assert first == (bench_first.action, bench_first.cause, target and Plan(target.config, target.replicas).describe())

    operator_log: list[tuple[str, str, str | None]] = [first]
    bench_log: list[tuple[str, str, str | None]] = [first]
    current: FleetTarget = target
    for step in steps():
        replicas = op.deployment.replicas
        assert replicas == current.replicas
        operator_log.append(op.tick(step.t_s, observation(step, replicas), step.allocation_watts, step.rolling))
        policy.spec = replace(policy.spec, allocation_watts=step.allocation_watts)
        proposal = policy.decide(bench_observation(step, current.replicas), current)
        tick = policy.ticks[-1]
        bench_log.append((tick.action, tick.cause, tick.apply.describe() if tick.apply else None))
        if proposal is not None:
            current = proposal
        assert operator_log[-1] == bench_log[-1], f"t={step.t_s}: {operator_log[-1]} != {bench_log[-1]}"
        remembered = memory_from_status(op.status, intent_from_service(op.svc).default_workload)
        assert comparable(remembered, BASE.timestamp()) == comparable(policy.memory, 0.0), f"t={step.t_s}"

    # Both learned the model's tail from the same requests over the SLOs (control/tail.py).
    assert policy.memory.tail_measured_misses > 0 and policy.memory.tail_predicted_misses > 0
    causes = {cause for _, cause, _ in operator_log}
    # The sequence exercises the rule's main branches, so that parity means something.
    assert {"initial", "capacity", "unchanged", "allocation-cut"} <= causes, causes
    assert causes & {"settling", "cooldown", "not-worth", "saving"}, causes


def test_operator_acts_on_a_cut_without_telemetry() -> None:
    """Issue 14 item 3 through the operator's adapter: silence never blocks a cut, and the decision says so."""
    op = Operator()
    op.svc = service().model_copy(update={"spec": service().spec.model_copy(
        update={"workload": service().spec.workload.model_copy(update={"requests_per_second": 30.0})})})
    op.tick(0.0, None, None)
    predicted = op.status["plan"]["predicted"]["watts"]
    action, cause, applied = op.tick(30.0, None, None)
    assert (action, applied) in (("Unchanged", None), ("Held", None))
    action, cause, applied = op.tick(60.0, None, predicted * 0.5)
    assert (action, cause) == ("Applied", "allocation-cut") and applied is not None
    last = op.status["decisions"][-1]
    assert "acting on predicted watts: no telemetry" in last["reason"]
    telemetry = next(c for c in op.status["conditions"] if c["type"] == "TelemetryAvailable")
    assert telemetry["status"] == "False"
    assert op.status["plan"]["predicted"]["watts"] <= predicted * 0.5 * 1.02
    # The budget goes away, telemetry still silent: the degraded plan does not stay for want of measurements.
    action, cause, applied = op.tick(90.0, None, None)
    assert (action, cause) == ("Applied", "slo-by-prediction"), op.status["decisions"][-1]
    # Restart-free first (issue 11 item 5): more replicas of the running configuration where they meet the SLO, at
    # no more watts than the first plan (which doubted the precision the model is not calibrated on).
    assert op.status["plan"]["predicted"]["watts"] <= predicted


def test_no_telemetry_learns_no_margin_and_moves_nothing() -> None:
    """Silence teaches nothing: a settled service without telemetry keeps the untried-precision prior instead of
    "learning" the model as it is, so its proposal stays its plan (the scale test's idle passes wrote otherwise)."""
    for rps in (12.0, 18.0, 21.0):
        op = Operator()
        op.svc = service().model_copy(update={"spec": service().spec.model_copy(
            update={"workload": service().spec.workload.model_copy(update={"requests_per_second": rps})})})
        actions = [op.tick(30.0 * k, None, 2500.0)[0] for k in range(6)]
        assert actions == ["Applied"] + ["Unchanged"] * 5, (rps, op.status["decisions"][-1])
        assert not (op.status.get("observed") or {}).get("latencyMargins"), rps

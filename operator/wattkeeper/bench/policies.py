"""The policies compared: what users run today and Wattkeeper's control loop (the oracle is bench/oracle.py).

- `StaticPolicy`: bf16 replicas with vLLM's default batch limits, as many as the trace's peak minute needs to
  meet the SLOs by the planner's own capacity model; never changes.
- `AutoscalerPolicy`: the same fixed configuration, replicas scaled on active (running + waiting) requests per
  replica like KEDA/KServe/KubeAI: scale up at once, scale down only to the highest recommendation of the
  stabilisation window.
- `WattkeeperPolicy` (bench/wattkeeper_policy.py): the operator's own control core, fed what its telemetry would
  show of the simulated fleet.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from .. import control
from ..control import Plan, ServiceIntent
from ..energy.catalog import Accelerator, get_accelerator
from ..energy.model import EnergyModel
from ..energy.powerlimit import limit_options_watts
from ..energy.types import ModelShape, ServingConfig, Workload
from ..planner import Candidate
from .fleet import FleetTarget, Observation
from .trace import Trace

_GIB = float(2**30)
ORACLE_LIMIT_FRACTION = 0.7  # the one reduced GPU power limit oracle-verified tries besides the default


def vllm_default_limits(accelerator: Accelerator) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) that `vllm serve` 0.11 picks when the user sets neither.

    vLLM's EngineArgs.get_batch_defaults: GPUs with at least 70 GiB that are not A100s (H100, H200, B200, MI300)
    get 1024 sequences and 8192 tokens for the OpenAI server; other GPUs 256 and 2048 (vllm-project/vllm#16158
    reverted 1024 to 256 everywhere except H100/H200-class GPUs).
    """
    if accelerator.memory_bytes >= 70 * _GIB and accelerator.name.upper() != "A100":
        return 1024, 8192
    return 256, 2048


@dataclass(frozen=True)
class BenchSpec:
    """What every policy serves: the same model, GPU type, SLOs; Wattkeeper's quality floor and cap."""

    model: ModelShape
    gpu: str
    slo_ttft_p95_seconds: float
    slo_itl_p95_seconds: float
    allowed_precisions: tuple[str, ...] = ("bf16", "fp8")
    baseline_precision: str = "bf16"
    max_replicas: int = 64
    max_tensor_parallel: int = 8
    allocation_watts: float | None = None
    baseline_tensor_parallel: int | None = None  # None: the smallest TP whose KV cache holds 64 mean requests
    # Wattkeeper may set GPU power limits (the operator's --power-limits: a node agent applies them in place).
    power_limits: bool = False

    @property
    def accelerator(self) -> Accelerator:
        return get_accelerator(self.gpu)

    @property
    def gpu_power_limits_watts(self) -> tuple[float | None, ...]:
        """The limits Wattkeeper may choose: the card's default only, or with `power_limits` exactly the oracle's
        (the default and 70% of it, oracle.LIMIT_FRACTION), not the operator's wider default set
        (`limit_options_watts` with no fractions: 85%, 70%, 55% too). The same lever for both keeps the
        comparison fair: a gap to the oracle is then the control loop's, not a difference in what it may set."""
        if not self.power_limits:
            return (None,)
        return limit_options_watts(self.accelerator, (ORACLE_LIMIT_FRACTION,))

    def intent(self, default_workload: Workload | None = None, cooldown_seconds: float = 300.0,
               horizon_seconds: float = 3600.0) -> ServiceIntent:
        """The service as the control core sees it (what an LLMService spec says in the operator)."""
        return ServiceIntent(
            model=self.model,
            accelerator=self.accelerator.name,
            allowed_precisions=self.allowed_precisions,
            slo_ttft_p95_seconds=self.slo_ttft_p95_seconds,
            slo_itl_p95_seconds=self.slo_itl_p95_seconds,
            min_replicas=1,
            max_replicas=self.max_replicas,
            max_tensor_parallel=self.max_tensor_parallel,
            fallback="ProtectBudget",
            default_workload=default_workload or Workload(1.0),
            cooldown_seconds=cooldown_seconds,
            horizon_seconds=horizon_seconds,
            gpu_power_limits_watts=self.gpu_power_limits_watts,
        )


def evaluate(
    spec: BenchSpec,
    config: ServingConfig,
    replicas: int,
    workload: Workload,
    energy_model: EnergyModel,
    power_correction: float = 1.0,
) -> Candidate | None:
    """The planner's figures for exactly one configuration and replica count (the control core's `evaluate`)."""
    return control.evaluate(spec.intent(), Plan(config, replicas), workload, energy_model, power_correction)


def baseline_config(spec: BenchSpec, trace: Trace, energy_model: EnergyModel) -> ServingConfig:
    """bf16 at the smallest TP that leaves KV cache for 64 mean-sized requests, with vLLM's default limits."""
    acc = spec.accelerator
    seqs, tokens = vllm_default_limits(acc)
    mean_tokens = float(trace.input_tokens.mean() + trace.output_tokens.mean()) if len(trace) else 2048.0
    options = [spec.baseline_tensor_parallel] if spec.baseline_tensor_parallel else [1, 2, 4, 8]
    for tp in options:
        config = ServingConfig(spec.baseline_precision, tp, seqs, tokens)
        if energy_model.kv_cache_capacity_tokens(spec.model, acc, config) >= 64 * mean_tokens:
            return config
    return ServingConfig(spec.baseline_precision, options[-1], seqs, tokens)


def size_for_load(
    spec: BenchSpec, config: ServingConfig, workload: Workload, energy_model: EnergyModel
) -> tuple[int, str]:
    """The fewest replicas of `config` that the planner predicts meet both SLOs at `workload`."""
    best: tuple[float, int] | None = None
    for n in range(1, spec.max_replicas + 1):
        c = evaluate(spec, config, n, workload, energy_model)
        if c is None:
            continue
        if c.meets_slo:
            return n, f"{n} replicas meet the SLOs at {workload.requests_per_second:.2f} req/s (planner prediction)"
        violation = max(c.ttft_p95_seconds / spec.slo_ttft_p95_seconds, c.itl_p95_seconds / spec.slo_itl_p95_seconds)
        if best is None or violation < best[0] - 1e-6:
            best = (violation, n)
    n = best[1] if best else spec.max_replicas
    return n, f"no replica count meets the SLOs by prediction; {n} misses them least"


def trace_workload(trace: Trace, start_s: float, end_s: float, peak_bin_s: float = 60.0) -> Workload:
    """The true load of a stretch of the trace: its busiest `peak_bin_s` rate and its mean token counts."""
    w = trace.window(start_s, end_s)
    if not len(w):
        return Workload(0.0, 512.0, 128.0)
    bins = np.bincount(((w.arrival_s - start_s) // peak_bin_s).astype(np.int64))
    full = max(1, int((end_s - start_s) // peak_bin_s))
    rate = float(bins[:full].max() if bins[:full].size else bins.max()) / peak_bin_s
    return Workload(rate, float(w.input_tokens.mean()), float(w.output_tokens.mean()))


# --- static and autoscaler -----------------------------------------------------------------------------------------


@dataclass
class StaticPolicy:
    spec: BenchSpec
    trace: Trace
    energy_model: EnergyModel
    name: str = "static"
    interval_s: float = 3600.0 * 24
    note: str = ""

    def initial(self) -> FleetTarget:
        config = baseline_config(self.spec, self.trace, self.energy_model)
        rate, inp, out = self.trace.peak_minute()
        n, why = size_for_load(self.spec, config, Workload(rate, inp, out), self.energy_model)
        self.note = f"sized for the peak minute: {why}"
        return FleetTarget(config, n, self.note)

    def decide(self, obs: Observation, current: FleetTarget) -> FleetTarget | None:
        return None


@dataclass
class AutoscalerPolicy:
    """KEDA/HPA on vLLM's running + waiting requests per replica, as KubeAI and KServe set it up.

    The target concurrency is tuned the way a careful user would after a load test: the planner's running batch
    of one replica at the highest rate at which it still meets both SLOs (KubeAI's untuned default, 100, lets
    this 70B configuration fall behind its prefill load and oscillate). Scale-up is immediate, scale-down
    follows the highest recommendation of the last 300 s (HPA's stabilisation window).
    """

    spec: BenchSpec
    trace: Trace
    energy_model: EnergyModel
    target_active_per_replica: float | None = None  # None: tuned as above
    interval_s: float = 15.0
    scale_down_stabilisation_s: float = 300.0
    tolerance: float = 0.1  # HPA's default: no change within 10% of the target
    min_replicas: int = 1
    max_replicas: int | None = None  # None: the spec's
    name: str = "autoscaler"
    note: str = ""
    _history: deque[tuple[float, int]] = field(default_factory=deque)

    def _tuned_target(self, config: ServingConfig) -> float:
        mean = Workload(1.0, float(self.trace.input_tokens.mean()), float(self.trace.output_tokens.mean()))
        lo, hi = 0.0, 200.0
        best = 8.0
        for _ in range(12):  # bisection on the per-replica rate that still meets both SLOs
            mid = (lo + hi) / 2
            c = evaluate(self.spec, config, 1, replace(mean, requests_per_second=mid), self.energy_model)
            if c is not None and c.meets_slo and c.prediction.utilisation < 1.0:
                lo, best = mid, max(c.prediction.batch_size, 8.0)
            else:
                hi = mid
        return round(best)

    def initial(self) -> FleetTarget:
        config = baseline_config(self.spec, self.trace, self.energy_model)
        if self.target_active_per_replica is None:
            self.target_active_per_replica = self._tuned_target(config)
        self.note = f"target {self.target_active_per_replica:.0f} active requests per replica"
        # Warm start: the replicas its own rule holds at the first minute's load (predicted running batch).
        first = trace_workload(self.trace, 0.0, 60.0)
        n = self.min_replicas
        while n < self._ceiling:
            c = evaluate(self.spec, config, n, first, self.energy_model)
            if (
                c is not None
                and c.prediction.utilisation < 1.0
                and c.prediction.batch_size <= self.target_active_per_replica
            ):
                break
            n += 1
        self._history.append((0.0, n))  # the running count is a recommendation of the stabilisation window too
        return FleetTarget(config, n, "warm start")

    @property
    def _ceiling(self) -> int:
        return min(self.max_replicas or self.spec.max_replicas, self.spec.max_replicas)

    def decide(self, obs: Observation, current: FleetTarget) -> FleetTarget | None:
        ready = max(obs.serving_replicas, 1)
        target = self.target_active_per_replica or 100.0
        ratio = obs.active_per_replica_mean / target
        desired = current.replicas
        if abs(ratio - 1.0) > self.tolerance:
            desired = max(self.min_replicas, min(self._ceiling, math.ceil(ratio * ready)))
        self._history.append((obs.now_s, desired))
        while self._history and self._history[0][0] < obs.now_s - self.scale_down_stabilisation_s:
            self._history.popleft()
        if desired > current.replicas:
            # HPA's default scale-up policy: at most double, or four pods more, per period.
            desired = min(desired, max(2 * current.replicas, current.replicas + 4), self._ceiling)
            return replace(current, replicas=desired, reason=f"active/replica {obs.active_per_replica_mean:.0f}")
        stabilised = max(d for _, d in self._history)
        if stabilised < current.replicas:
            return replace(
                current, replicas=stabilised, reason=f"active/replica {obs.active_per_replica_mean:.0f} for 300 s"
            )
        return None


@dataclass
class Decision:
    """One decision of a planning policy, as `WattkeeperPolicy` records them."""

    time_s: float
    action: str  # Applied, Held, Unchanged, Rejected
    reason: str
    plan_ms: float

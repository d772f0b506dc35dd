"""Wattkeeper in the benchmark: the operator's own control core (`wattkeeper.control`), fed what the operator's
telemetry would show of the simulated fleet.

Nothing of the decision is here. This file only translates: the simulator's `Observation` of the trailing
telemetry window becomes the core's `Signals` (finished requests per second, not arrivals; the queue averaged
over the window, as `avg_over_time(vllm:num_requests_waiting[w])`; the window ends at the last Prometheus scrape,
up to one scrape interval before the tick), the fleet's replica states become the core's
`FleetState` (rolling while replicas load or drain), and the core's decision becomes a `FleetTarget`. The settle
rule, the corrections, the cooldown and the switching rule are the operator's, with the operator's defaults
(interval 30 s, cooldown 300 s, horizon 3600 s, the pods' termination grace as the drain bound).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from wattkeeper_runtime.simmetrics import ITL_BUCKETS, TTFT_BUCKETS, build_1_2_5_buckets

from ..control import FleetState, Memory, Plan, Signals, TickDecision, TickInputs, Tuning, decide_tick, settle_seconds
from ..energy.model import EnergyModel
from ..energy.types import ServingConfig
from ..render.objects import TERMINATION_GRACE_SECONDS
from ..telemetry.buckets import over_threshold
from ..telemetry.history import token_samples
from .fleet import FleetTarget, Observation
from .policies import BenchSpec, Decision, trace_workload
from .trace import Trace

HISTORY_SECONDS = 600.0  # planner/load.py HISTORY_SECONDS: ten minutes of counts
MAX_TOKEN_SAMPLE = 2000


def signals_of(obs: Observation, trace: Trace | None = None, lag_s: float = 0.0,
               resolution_s: float = 15.0, slos: tuple[float, float] | None = None) -> Signals:
    """What the operator's telemetry shows of the simulated fleet over the trailing window; with `trace`, also the
    bursts and token lengths of the last `HISTORY_SECONDS` up to the last scrape (`recent_arrivals`)."""
    signals = Signals(
        window_seconds=obs.window_s,
        watts=obs.watts,
        finished_requests_per_second=obs.finished_requests_per_second,
        waiting_requests=obs.mean_waiting_requests,
        waiting_growth_per_second=obs.waiting_growth_per_second,
        running_requests=obs.mean_running_requests,
        mean_input_tokens=obs.mean_input_tokens,
        mean_output_tokens=obs.mean_output_tokens,
        ttft_p95_seconds=obs.ttft_p95_seconds,
        itl_p95_seconds=obs.itl_p95_seconds,
        request_itl_p95_seconds=obs.request_itl_p95_seconds,
    )
    if slos is not None:
        # As the operator reads them: vLLM's histograms' bucket counts, late above the first bound at or over an
        # SLO (telemetry/buckets.py `over_threshold`).
        ttft = over_threshold(slos[0], window_bucket_rates(obs.window_ttfts_s, TTFT_BUCKETS, obs.window_s), obs.window_s)
        itl = over_threshold(slos[1], window_bucket_rates(obs.window_mean_itls_s, ITL_BUCKETS, obs.window_s), obs.window_s)
        signals = replace(signals, ttft_misses=ttft[0] if ttft else None, ttft_observed=ttft[1] if ttft else None,
                          itl_misses=itl[0] if itl else None, itl_observed=itl[1] if itl else None)
    if trace is None:
        return signals
    if obs.history_end_s is not None and (obs.first_token_s or obs.finished_prompt_tokens):
        return replace(signals, **recent_telemetry(obs, resolution_s))
    return replace(signals, **recent_arrivals(trace, obs.now_s - lag_s, resolution_s))


# vLLM's token histograms' buckets: 1, 2, 5, 10, ... up to max-model-len (vLLM 0.11.1 v1/metrics/loggers.py
# build_1_2_5_buckets(max_model_len)); Llama 3.1's context: 131,072 tokens.
TOKEN_BUCKETS = (*build_1_2_5_buckets(131072), math.inf)


def window_bucket_rates(values: tuple[float, ...], bounds: tuple[float, ...],
                 window_s: float) -> tuple[tuple[float, float], ...]:
    """A window's observations as a Prometheus histogram's cumulative bucket rates (per second), +Inf last."""
    if not values or window_s <= 0:
        return ()
    v = np.sort(np.asarray(values, dtype=float))
    edges = (*bounds, math.inf)
    return tuple((le, float(np.searchsorted(v, le, side="right")) / window_s) for le in edges)


def recent_telemetry(obs: Observation, resolution_s: float) -> dict[str, Any]:
    """What the operator's telemetry reads of the last `HISTORY_SECONDS` (telemetry/prometheus.py): requests per
    scrape interval from the first-token counter (vLLM counts no arrivals; a request's first token comes a TTFT
    after it arrived, so a backlog shows as a waiting queue, not as counts), and the token lengths as vLLM's
    histograms hold them, expanded by the operator's own `telemetry.history.token_samples`."""
    end_s = obs.history_end_s if obs.history_end_s is not None else obs.now_s
    bins = int(min(HISTORY_SECONDS, end_s) // resolution_s)
    if bins < 1:
        return {}
    start_s = end_s - bins * resolution_s
    times = np.asarray(obs.first_token_s, dtype=float)
    times = times[(times >= start_s) & (times < end_s)]
    counts = np.bincount(((times - start_s) // resolution_s).astype(np.int64), minlength=bins)[:bins]
    bounds = np.asarray(TOKEN_BUCKETS, dtype=float)

    def histogram(values: tuple[int, ...]) -> tuple[list[float], list[float]]:
        v = np.asarray(values, dtype=float)
        return list(bounds), [float(np.count_nonzero(v <= b)) for b in bounds]

    prompts, outputs = token_samples(histogram(obs.finished_prompt_tokens), histogram(obs.finished_output_tokens))
    return {
        "arrival_counts": tuple(float(c) for c in counts),
        "arrival_resolution_seconds": resolution_s,
        "prompt_tokens_sample": prompts,
        "output_tokens_sample": outputs,
    }


def recent_arrivals(trace: Trace, end_s: float, resolution_s: float) -> dict[str, Any]:
    """Arrival counts per scrape interval over the last `HISTORY_SECONDS` before `end_s` (what a request counter
    read at each scrape shows: counted on arrival, as a router or gateway counts, so a saturated fleet's backlog is
    in it), and the prompt and output lengths of those requests (what vLLM's token histograms show; the output
    lengths of requests still running are the trace's, a small look-ahead)."""
    start_s = max(0.0, end_s - HISTORY_SECONDS)
    bins = int((end_s - start_s) // resolution_s)
    if bins < 1:
        return {}
    start_s = end_s - bins * resolution_s
    lo, hi = np.searchsorted(trace.arrival_s, [start_s, end_s], side="left")
    arrivals = trace.arrival_s[lo:hi]
    counts = np.bincount(((arrivals - start_s) // resolution_s).astype(np.int64), minlength=bins)[:bins]
    step = max(1, (hi - lo) // MAX_TOKEN_SAMPLE)
    return {
        "arrival_counts": tuple(float(c) for c in counts),
        "arrival_resolution_seconds": resolution_s,
        "prompt_tokens_sample": tuple(float(x) for x in trace.input_tokens[lo:hi:step]),
        "output_tokens_sample": tuple(float(x) for x in trace.output_tokens[lo:hi:step]),
    }


def canary_config(tick: TickDecision) -> ServingConfig | None:
    return tick.canary.config if tick.canary is not None else None


def pods_config(plan: Plan, memory: Memory) -> ServingConfig:
    """What the pods run: the plan, without its GPU power limit while a scale-up is bridged (as the operator
    annotates the pods, `controller/services.py`)."""
    if memory.bridged_limit_watts is not None:
        return replace(plan.config, gpu_power_limit_watts=None)
    return plan.config


def canary_of(obs: Observation) -> FleetState:
    """The canary's Deployment as the operator sees it: one replica, rolling while it loads or drains."""
    seen = obs.canary
    if seen is None:
        return FleetState()
    return FleetState(exists=True, replicas=1, ready_replicas=seen.serving_replicas, rolling=not seen.settled)


def fleet_of(obs: Observation, current: FleetTarget) -> FleetState:
    """The Deployment as the operator sees it: rolling while a replica loads or an old one drains."""
    return FleetState(
        exists=True,
        matches_plan=True,  # nobody edits the simulated fleet by hand
        replicas=current.replicas,
        ready_replicas=obs.serving_replicas,
        rolling=not obs.settled,
    )


@dataclass
class WattkeeperPolicy:
    spec: BenchSpec
    trace: Trace
    energy_model: EnergyModel
    name: str = "wattkeeper"
    interval_s: float = 30.0  # the operator's control-loop interval (OperatorSettings.interval_seconds)
    cooldown_s: float = 300.0  # LLMService spec.reconfiguration.cooldownSeconds, default
    horizon_s: float = 3600.0  # spec.reconfiguration.horizonSeconds, default
    # The service ran before the trace starts: its spec's workload is the load of the first minute.
    warmup_s: float = 60.0
    drain_s: float = float(TERMINATION_GRACE_SECONDS)
    # Prometheus' scrape interval: the operator's rate() over the window sees data up to one scrape old.
    scrape_interval_s: float = 15.0
    tuning: Tuning = field(default_factory=Tuning)
    # Feed the core the bursts and token lengths of recent arrivals at the scrape resolution (issue 11 item 1).
    bursts: bool = True
    # Read the history as the operator's telemetry does (first-token counts and token histograms, `recent_telemetry`);
    # False: the arrivals themselves (a router's counter) and the exact lengths (`recent_arrivals`).
    as_operator: bool = True
    memory: Memory = field(default_factory=Memory)
    decisions: list[Decision] = field(default_factory=list)
    ticks: list[TickDecision] = field(default_factory=list)  # every decision of the core, for tests and reports
    note: str = ""

    @property
    def history_seconds(self) -> float:
        """Read by the fleet simulator: how much history the observations carry (`recent_telemetry`)."""
        return HISTORY_SECONDS if self.bursts and self.as_operator else 0.0

    @property
    def telemetry_lag_s(self) -> float:
        """Read by the fleet simulator: the window it shows ends this long before now."""
        return self.scrape_interval_s

    def __post_init__(self) -> None:
        warm = trace_workload(self.trace, 0.0, self.warmup_s, peak_bin_s=self.warmup_s)
        self.intent = self.spec.intent(warm, cooldown_seconds=self.cooldown_s, horizon_seconds=self.horizon_s)

    def _tick(self, now_s: float, signals: Signals | None, fleet: FleetState, window_s: float,
              canary_signals: Signals | None = None, canary_fleet: FleetState | None = None) -> TickDecision:
        inputs = TickInputs(
            intent=self.intent,
            memory=self.memory,
            signals=signals,
            fleet=fleet,
            now_s=now_s,
            allocation_watts=self.spec.allocation_watts,
            settle_seconds=settle_seconds(window_s, self.drain_s),
            tuning=self.tuning,
            canary_signals=canary_signals,
            canary_fleet=canary_fleet or FleetState(),
        )
        t0 = time.perf_counter()
        tick = decide_tick(inputs, self.energy_model)
        ms = (time.perf_counter() - t0) * 1000.0
        self.memory = tick.memory
        self.ticks.append(tick)
        what = f": {tick.apply.describe()}" if tick.apply is not None else ""
        self.decisions.append(Decision(now_s, tick.action, tick.reason + what, ms))
        return tick

    def _target(self, tick: TickDecision) -> FleetTarget:
        assert tick.apply is not None
        return FleetTarget(pods_config(tick.apply, tick.memory), tick.apply.replicas, tick.reason, surge=tick.surge,
                           canary=canary_config(tick))

    def initial(self) -> FleetTarget:
        tick = self._tick(0.0, None, FleetState(exists=False), 60.0)
        if tick.apply is None:
            raise RuntimeError(f"the planner finds no configuration: {tick.reason}")
        return self._target(tick)

    def decide(self, obs: Observation, current: FleetTarget) -> FleetTarget | None:
        signals = signals_of(obs, self.trace if self.bursts else None, self.telemetry_lag_s, self.scrape_interval_s,
                             (self.spec.slo_ttft_p95_seconds, self.spec.slo_itl_p95_seconds))
        # The canary's own pods: their history as the operator's telemetry reads it (first tokens, token
        # histograms); where the fleet's counts are the trace's arrivals (a router's counter) they hold the
        # canary's share already.
        canary_signals = signals_of(obs.canary) if obs.canary is not None else None
        if canary_signals is not None and self.bursts and self.as_operator and obs.canary is not None \
                and obs.canary.history_end_s is not None:
            canary_signals = replace(canary_signals, **recent_telemetry(obs.canary, self.scrape_interval_s))
        bridged = self.memory.bridged_limit_watts is not None
        tick = self._tick(obs.now_s, signals, fleet_of(obs, current), obs.window_s, canary_signals,
                          canary_of(obs))
        if tick.apply is not None:
            return self._target(tick)
        running = tick.memory.running
        if bridged and tick.memory.bridged_limit_watts is None and running is not None:
            # The bridge ends: the plan's own GPU power limit back on its pods, as the operator syncs it.
            return FleetTarget(running.config, running.replicas, "the added replicas serve: the power limit back",
                               surge=False, canary=canary_config(tick))
        if canary_config(tick) != current.canary:
            return replace(current, reason=tick.canary_reason, canary=canary_config(tick))
        return None

"""The fleet simulator: a trace replayed through replicas of the runtime's `BatchingEngine` behind a router.

Replicas go LOADING -> SERVING -> DRAINING -> STOPPED. A loading replica draws its GPUs' idle power for
`model_load_seconds` and serves nothing; a serving one takes new requests from the router (least outstanding
requests first); a draining one finishes what it holds and then releases its GPUs. A new target of the same
configuration adds loading replicas or drains surplus ones; a target with another configuration starts a whole
new set (surge, blue/green) and drains the old set once every new replica serves, so capacity never dips.
A target that differs from the running configuration only in its GPU power limit restarts nothing: the node agent
sets the limit on the running pods' GPUs (nvmlDeviceSetPowerManagementLimit), so the live replicas keep their
queues and KV cache and step at the ground truth of the new limit from `LIMIT_SETTLE_SECONDS` on (a `Change` of
kind "limit", never counted as a restart).

Time advances arrival by arrival: before routing a request every serving engine is stepped up to its arrival
(engines only step while they hold work). Every `sample_s` the fleet's cumulative energy is read from the
engines' own energy counters (power integrated over virtual time), so the power series is exactly the
derivative of the energy total. Every `policy.interval_s` the policy sees an `Observation` of the trailing
window, built only from what a real operator could measure, and may return a new `FleetTarget`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from wattkeeper_runtime.engine import BatchingEngine, EngineRequest

from ..energy.powerlimit import LIMIT_SETTLE_SECONDS
from ..energy.types import Plan, ServingConfig
from ..planner.inplace import is_in_place_change
from .groundtruth import GroundTruth
from .trace import Trace

T = TypeVar("T")

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FleetTarget:
    config: ServingConfig
    replicas: int
    reason: str = ""
    # How a change of configuration rolls out, as the operator renders the Deployment: True, a new set beside the
    # old one (capacity never dips, power does rise); False, in place like maxSurge 0 / maxUnavailable 1 (one old
    # replica stops before each new one loads, so power never rises above the running fleet's).
    surge: bool = True
    # One replica of another configuration serving beside the fleet (control/canary.py; the operator's Deployment
    # `<service>-canary`): routed its share like any replica, measured on its own. None: no canary.
    canary: ServingConfig | None = None

    def same_shape(self, other: FleetTarget | None) -> bool:
        return other is not None and other.config == self.config and other.replicas == self.replicas \
            and other.canary == self.canary

    def describe(self) -> str:
        return Plan(self.config, self.replicas).describe()


@dataclass(frozen=True)
class Observation:
    """What an operator measures over the trailing window (Prometheus rates and histograms, DCGM power)."""

    now_s: float
    window_s: float
    requests_per_second: float  # arrivals
    mean_input_tokens: float | None
    mean_output_tokens: float | None  # of requests completed in the window
    watts: float  # all provisioned GPUs, averaged over the window
    ttft_p95_seconds: float | None
    itl_p95_seconds: float | None
    running_requests: int
    waiting_requests: int
    serving_replicas: int
    loading_replicas: int
    draining_replicas: int
    active_per_replica_mean: float  # (running + waiting) per serving replica, averaged over the window
    # What the operator's telemetry shows (vllm:request_success_total, num_requests_waiting/running averaged
    # over the window): requests that finished, not arrivals; a saturated fleet finishes fewer than arrive.
    finished_requests_per_second: float = 0.0
    mean_waiting_requests: float = 0.0
    mean_running_requests: float = 0.0
    # The slope of the waiting count over the window's samples (least squares, as PromQL deriv reads
    # vllm:num_requests_waiting); None with fewer than two samples.
    waiting_growth_per_second: float | None = None
    # The p95 over requests finished in the window of each one's mean ITL, as vLLM's
    # vllm:request_time_per_output_token_seconds shows it (Signals.request_itl_p95_seconds).
    request_itl_p95_seconds: float | None = None
    # For a policy that reads the history as the operator's telemetry does (`Policy.history_seconds` > 0), over
    # that long up to the window's end: when each request got its first token (vllm:time_to_first_token_seconds is
    # observed then, its _count read at every scrape), and the prompt and output lengths of the requests that
    # finished (vllm:request_prompt_tokens / request_generation_tokens are observed at the finish).
    history_end_s: float | None = None
    # Each TTFT observed in the window (at the first token) and each finished request's mean ITL (at its finish):
    # vLLM's histograms hold them as bucket counts (the share over an SLO is a bucket's count over the total).
    window_ttfts_s: tuple[float, ...] = ()
    window_mean_itls_s: tuple[float, ...] = ()
    first_token_s: tuple[float, ...] = ()
    finished_prompt_tokens: tuple[int, ...] = ()
    finished_output_tokens: tuple[int, ...] = ()
    # The canary's pods, observed on their own (every other field is the fleet's pods only); None: no canary
    # replica is live.
    canary: Observation | None = None

    @property
    def settled(self) -> bool:
        return self.loading_replicas == 0 and self.draining_replicas == 0 and self.serving_replicas > 0


class Policy(Protocol):
    name: str
    interval_s: float

    def initial(self) -> FleetTarget: ...

    def decide(self, obs: Observation, current: FleetTarget) -> FleetTarget | None: ...


class State(Enum):
    LOADING = "loading"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass
class Replica:
    index: int
    config: ServingConfig
    engine: BatchingEngine
    provisioned_s: float
    ready_s: float
    loading_watts: float
    state: State
    stopped_s: float | None = None
    outstanding: int = 0
    canary: bool = False  # the canary beside the fleet: routed to, never part of the fleet's rollouts

    @property
    def gpus(self) -> int:
        return self.config.tensor_parallel

    def energy_joules_at(self, t_s: float) -> float:
        """Loading energy, then the engine's own integral of power; frozen once stopped."""
        if self.stopped_s is not None:
            t_s = min(t_s, self.stopped_s)
        loading = self.loading_watts * max(0.0, min(t_s, self.ready_s) - self.provisioned_s)
        if t_s <= self.ready_s:
            return loading
        return loading + self.engine.energy_joules_at(t_s)


@dataclass
class Change:
    time_s: float
    target: str
    # "restart": a new configuration (its replicas load the model); "scale": only the replica count changes;
    # "limit": only the GPU power limit changes, set on the running replicas in place (and, if the count changes
    # too, on the added ones). Only "restart" counts as a restart (scoring.py, report.py).
    kind: str
    reason: str


@dataclass
class FleetRun:
    """Everything a run produced, for the report."""

    policy: str
    horizon_s: float
    sample_s: float
    energy_joules: FloatArray  # cumulative at each sample time (index i is time i * sample_s)
    gpus: FloatArray  # provisioned GPUs during each sample interval (time-averaged)
    ttft_s: FloatArray  # per request, in trace order (nan if unfinished)
    mean_itl_s: FloatArray  # per request: (finish - first token) / (output - 1); 0 for one-token outputs
    itl_values_s: FloatArray  # token-level inter-token latencies, as (value, count) pairs
    itl_counts: npt.NDArray[np.int64]
    output_tokens: int
    changes: list[Change]
    configs_used: list[str]
    initial: str
    wall_seconds: float = 0.0
    steps: int = 0
    aborted: bool = False  # stopped early by a `Cutoff` (tuning only: never a reported run)
    abort_reason: str = ""  # "misses" or "energy"


@dataclass(frozen=True)
class Cutoff:
    """Stop a tuning replay once its outcome is decided: more scored requests finished outside the thresholds than
    `max_misses` (it cannot keep the target), or more energy spent than `max_joules` (it cannot be the cheapest).
    Requests before index `scored_from` (a warm-up) are not counted."""

    ttft_seconds: float
    itl_seconds: float
    max_misses: int
    max_joules: float = math.inf
    scored_from: int = 0
    energy_until_s: float = math.inf  # the energy bound applies up to this time only (a window's end)

    @staticmethod
    def misses_allowed(requests: int, share: float) -> int:
        """The most misses among `requests` that still keep `share` of them."""
        return requests - math.ceil(share * requests - 1e-9)


@dataclass
class _Window:
    """Per-sample buffers of what telemetry would have seen, kept for the trailing window."""

    ttft: list[float] = field(default_factory=list)
    mean_itl: list[float] = field(default_factory=list)  # per finished request, as `FleetRun.mean_itl_s`
    itl_values: list[float] = field(default_factory=list)
    itl_counts: list[int] = field(default_factory=list)
    completed: int = 0
    completed_output_tokens: int = 0
    active_total: float = 0.0  # running + waiting summed over serving replicas, at the sample time
    waiting_total: float = 0.0  # waiting summed over serving replicas, at the sample time
    serving: int = 0


class FleetSimulator:
    def __init__(
        self,
        trace: Trace,
        ground_truth: GroundTruth,
        load_seconds: dict[tuple[str, int], float] | None = None,
        sample_s: float = 5.0,
        telemetry_window_s: float = 60.0,
        tail_s: float = 120.0,
    ) -> None:
        self.trace = trace
        self.gt = ground_truth
        self.sample_s = sample_s
        self.telemetry_window_s = telemetry_window_s
        self.tail_s = tail_s
        self._load_seconds = load_seconds or {}

    def load_seconds(self, config: ServingConfig) -> float:
        from ..planner import model_load_seconds

        key = (config.precision, config.tensor_parallel)
        if key not in self._load_seconds:
            self._load_seconds[key] = model_load_seconds(
                self.gt.model, self.gt.accelerator, config.precision, config.tensor_parallel
            )
        return self._load_seconds[key]

    # ------------------------------------------------------------------------------------------------------------
    def run(self, policy: Policy, cutoff: Cutoff | None = None) -> FleetRun:
        import time

        wall0 = time.perf_counter()
        trace = self.trace
        n = len(trace)
        arrivals = trace.arrival_s.tolist()
        inputs = trace.input_tokens.tolist()
        outputs = trace.output_tokens.tolist()
        ttft = np.full(n, np.nan)
        mean_itl = np.full(n, np.nan)
        itl_values: list[float] = []
        itl_counts: list[int] = []
        replicas: list[Replica] = []
        changes: list[Change] = []
        configs_used: list[str] = []
        pending: deque[int] = deque()  # arrived while nothing served (only possible while everything loads)
        # What the operator's telemetry keeps a history of (Observation.first_token_s and the finished lengths),
        # in the order the replicas' steps ran: each replica's steps in time order, the replicas interleaved.
        history_s = float(getattr(policy, "history_seconds", 0.0))
        first_tokens: list[float] = []
        finished_log: list[tuple[float, int, int]] = []
        canary_first_tokens: list[float] = []
        canary_finished_log: list[tuple[float, int, int]] = []
        settling: deque[tuple[float, Replica, ServingConfig]] = deque()  # limits set, in effect from the time given
        steps = 0
        misses = 0
        aborted = False
        abort_reason = ""
        now = 0.0
        target = policy.initial()

        def start_replica(config: ServingConfig, now_s: float, warm: bool, canary: bool = False) -> Replica:
            load_s = 0.0 if warm else self.load_seconds(config)
            engine = BatchingEngine(
                self.gt.timing(config),
                max_num_seqs=config.max_num_seqs,
                max_num_batched_tokens=config.max_num_batched_tokens,
                start_s=now_s + load_s,
            )
            r = Replica(
                index=len(replicas),
                config=config,
                engine=engine,
                provisioned_s=now_s,
                ready_s=now_s + load_s,
                loading_watts=self.gt.idle_watts(config),
                state=State.SERVING if warm else State.LOADING,
                canary=canary,
            )
            replicas.append(r)
            if config.short() not in configs_used:
                configs_used.append(config.short())
            return r

        window: deque[_Window] = deque()
        current = _Window()
        canary_window: deque[_Window] = deque()
        canary_current = _Window()
        canary_energy = [0.0]
        window_len = max(1, round(self.telemetry_window_s / self.sample_s))
        # A policy that reads Prometheus sees the window that ended at the last scrape (`telemetry_lag_s`).
        lag_len = max(0, round(float(getattr(policy, "telemetry_lag_s", 0.0)) / self.sample_s))

        def advance(r: Replica, t_s: float) -> None:
            nonlocal steps, misses
            e = r.engine
            cur = canary_current if r.canary else current
            tokens_log = canary_first_tokens if r.canary else first_tokens
            done_log = canary_finished_log if r.canary else finished_log
            while (e.running or e.waiting) and e.clock_s < t_s:
                res = e.step(e.clock_s)
                steps += 1
                if history_s > 0:
                    tokens_log.extend(res.end_s for _ in res.ttft_samples_s)
                    done_log.extend((res.end_s, q.prompt_tokens, q.output_tokens) for q in res.finished)
                s = res.itl_samples_s
                if s:
                    if s[0] == s[-1]:
                        itl_values.append(s[0])
                        itl_counts.append(len(s))
                        cur.itl_values.append(s[0])
                        cur.itl_counts.append(len(s))
                    else:
                        for x in s:
                            itl_values.append(x)
                            itl_counts.append(1)
                            cur.itl_values.append(x)
                            cur.itl_counts.append(1)
                for req in res.finished:
                    i = int(req.request_id)
                    first = req.first_token_s if req.first_token_s is not None else res.end_s
                    ttft[i] = first - req.arrival_s
                    mean_itl[i] = (res.end_s - first) / (req.output_tokens - 1) if req.output_tokens > 1 else 0.0
                    cur.ttft.append(ttft[i])
                    cur.mean_itl.append(mean_itl[i])
                    cur.completed += 1
                    cur.completed_output_tokens += req.output_tokens
                    r.outstanding -= 1
                    if cutoff is not None and i >= cutoff.scored_from and (
                        ttft[i] > cutoff.ttft_seconds or mean_itl[i] > cutoff.itl_seconds
                    ):
                        misses += 1
            if r.state is State.DRAINING and not (e.running or e.waiting):
                r.state = State.STOPPED
                r.stopped_s = max(e.clock_s, r.ready_s)

        def route(i: int, t_s: float) -> None:
            best: Replica | None = None
            for r in replicas:
                if r.state is State.SERVING and (best is None or r.outstanding < best.outstanding):
                    best = r
            if best is None:
                pending.append(i)
                return
            best.engine.submit(EngineRequest(str(i), inputs[i], outputs[i]), t_s)
            best.outstanding += 1

        def roll_in_place(t_s: float) -> None:
            """A Deployment rolling with maxSurge 0 and maxUnavailable 1: never more pods than desired, at most one
            of them unavailable; old replicas go first, one per new replica."""
            while True:
                live = [r for r in replicas if r.state in (State.LOADING, State.SERVING) and not r.canary]
                old = [r for r in live if r.config != target.config]
                new = [r for r in live if r.config == target.config]
                available = sum(1 for r in live if r.state is State.SERVING)
                if len(live) > target.replicas and old:
                    drain(min(old, key=lambda r: (r.state is not State.LOADING, r.outstanding)))
                elif len(new) >= target.replicas:
                    return
                elif len(live) < target.replicas:
                    start_replica(target.config, t_s, warm=False)
                elif old and available >= target.replicas:
                    drain(min(old, key=lambda r: r.outstanding))
                else:
                    return

        def activate(t_s: float) -> None:
            """Loading replicas whose model is loaded start serving; a finished rollout drains the old set."""
            changed = False
            for r in replicas:
                if r.state is State.LOADING and r.ready_s <= t_s:
                    r.state = State.SERVING
                    changed = True
            if not changed:
                return
            if not target.surge:
                roll_in_place(t_s)
            target_cfg = target.config
            fleet = [r for r in replicas if not r.canary]
            new_serving = [r for r in fleet if r.state is State.SERVING and r.config == target_cfg]
            loading_new = any(r.state is State.LOADING and r.config == target_cfg for r in fleet)
            if not loading_new and len(new_serving) >= 1:
                for r in fleet:
                    if r.state is State.SERVING and r.config != target_cfg:
                        drain(r)
            while pending and any(r.state is State.SERVING for r in replicas):
                j = pending.popleft()
                route(j, max(t_s, arrivals[j]))

        def drain(r: Replica) -> None:
            if r.state is State.LOADING:
                r.state = State.STOPPED  # cancelled while loading: only its loading energy counts
                r.stopped_s = now
                return
            r.state = State.DRAINING
            if not (r.engine.running or r.engine.waiting):
                r.state = State.STOPPED
                r.stopped_s = max(now, r.ready_s)

        def set_limit(config: ServingConfig, t_s: float) -> None:
            """The node agent sets the new limit on every live replica's GPUs: nothing restarts. NVML's
            nvmlDeviceSetPowerManagementLimit ("Set new power limit of this device", NVML API reference, Device
            Commands; nvidia-ml-py's pynvml wraps it as is) is a device setting that the card's power management
            enforces on whatever runs on it ("if the card's total power draw reaches this limit the power
            management algorithm kicks in", nvmlDeviceGetPowerManagementLimit); no process is restarted and it
            needs none (runtime/wattkeeper_runtime/powercontrol.py applies it to GPUs with vLLM running)."""
            for r in replicas:
                if r.state in (State.LOADING, State.SERVING) and not r.canary \
                        and is_in_place_change(r.config, config):
                    r.config = config
                    settling.append((t_s + LIMIT_SETTLE_SECONDS, r, config))
            if config.short() not in configs_used:
                configs_used.append(config.short())

        def settle(t_s: float) -> None:
            """Limits that took effect by `t_s` shape the replicas' steps and power from the time they took effect
            (every arrival before `t_s` is routed, so stepping a replica up to that time first is safe)."""
            while settling and settling[0][0] <= t_s:
                due, r, config = settling.popleft()
                if r.config == config and r.state is not State.STOPPED:
                    advance(r, due)
                    r.engine.retime(self.gt.timing(config), due)

        def apply(new: FleetTarget, t_s: float) -> None:
            nonlocal target
            old = target
            if new.config != old.config or new.replicas != old.replicas:
                apply_fleet(new, t_s)
            target = new
            if new.canary != old.canary:
                sync_canary(new, t_s)

        def sync_canary(new: FleetTarget, t_s: float) -> None:
            """One replica of `new.canary` beside the fleet (a Deployment of its own), or none: a canary of another
            configuration, or one no longer wanted, drains."""
            live = [r for r in replicas if r.canary and r.state in (State.LOADING, State.SERVING)]
            for r in live:
                if r.config != new.canary:
                    drain(r)
            kind = "canary-end" if new.canary is None else "canary"
            changes.append(Change(t_s, new.canary.short() if new.canary else "", kind, new.reason))
            if new.canary is not None and not any(r.config == new.canary for r in live):
                start_replica(new.canary, t_s, warm=False, canary=True)

        def apply_fleet(new: FleetTarget, t_s: float) -> None:
            nonlocal target
            limit_only = is_in_place_change(target.config, new.config)
            if limit_only:
                set_limit(new.config, t_s)
            same_config = limit_only or new.config == target.config
            kind = "limit" if limit_only else "scale" if same_config else "restart"
            changes.append(Change(t_s, new.describe(), kind, new.reason))
            target = new
            fleet = [r for r in replicas if not r.canary]
            for r in fleet:  # a rollout superseded before it finished: its loading replicas are cancelled
                if r.state is State.LOADING and r.config != new.config:
                    drain(r)
            if not same_config and not new.surge:
                roll_in_place(t_s)
                return
            live = [r for r in fleet if r.state in (State.LOADING, State.SERVING) and r.config == new.config]
            if len(live) < new.replicas:
                for _ in range(new.replicas - len(live)):
                    start_replica(new.config, t_s, warm=False)
            elif len(live) > new.replicas:
                # Cancel loading ones first, then drain the least busy.
                surplus = sorted(live, key=lambda r: (r.state is not State.LOADING, r.outstanding))
                for r in surplus[: len(live) - new.replicas]:
                    drain(r)
            if same_config:
                return
            # A rollout: old replicas keep serving until the new set serves (see activate); if the new set is
            # already serving (a rollback to a configuration still running), drain the others now.
            fleet = [r for r in replicas if not r.canary]
            if not any(r.state is State.LOADING and r.config == new.config for r in fleet):
                for r in fleet:
                    if r.state is State.SERVING and r.config != new.config:
                        drain(r)

        # --- the run ---------------------------------------------------------------------------------------------
        for _ in range(target.replicas):
            start_replica(target.config, 0.0, warm=True)  # the fleet was deployed before the trace starts
        initial = target.describe()
        horizon = math.ceil((trace.duration_s + self.tail_s) / self.sample_s) * self.sample_s
        energy_samples = [0.0]
        gpu_samples: list[float] = []
        next_policy_s = policy.interval_s
        arrival_i = 0
        k = 0
        while True:
            k += 1
            t_sample = k * self.sample_s
            # Arrivals of this sample interval.
            while arrival_i < n and arrivals[arrival_i] < t_sample:
                t = arrivals[arrival_i]
                now = t
                settle(t)
                activate(t)
                for r in replicas:
                    if r.state is State.SERVING:
                        advance(r, t)
                route(arrival_i, t)
                arrival_i += 1
            now = t_sample
            settle(t_sample)
            activate(t_sample)
            for r in replicas:
                if r.state in (State.SERVING, State.DRAINING):
                    advance(r, t_sample)
            # GPUs provisioned over the interval, pro rata for replicas that started or stopped inside it.
            t0 = t_sample - self.sample_s
            gpu_seconds = 0.0
            for r in replicas:
                end = r.stopped_s if r.stopped_s is not None else t_sample
                overlap = min(end, t_sample) - max(r.provisioned_s, t0)
                if overlap > 0:
                    gpu_seconds += overlap * r.gpus
            gpu_samples.append(gpu_seconds / self.sample_s)
            energy_samples.append(sum(r.energy_joules_at(t_sample) for r in replicas))
            canary_energy.append(sum(r.energy_joules_at(t_sample) for r in replicas if r.canary))
            for buffer, of_role, is_canary in ((window, current, False), (canary_window, canary_current, True)):
                serving = [r for r in replicas if r.state is State.SERVING and r.canary == is_canary]
                of_role.serving = len(serving)
                of_role.active_total = float(sum(len(r.engine.running) + len(r.engine.waiting) for r in serving))
                of_role.waiting_total = float(sum(len(r.engine.waiting) for r in serving))
                buffer.append(of_role)
                if len(buffer) > window_len + lag_len:
                    buffer.popleft()
            current, canary_current = _Window(), _Window()
            done = (
                arrival_i >= n
                and not pending
                and all(not (r.engine.running or r.engine.waiting) for r in replicas if r.state is not State.STOPPED)
            )
            if t_sample >= horizon and done:
                break
            over_energy = cutoff is not None and t_sample <= cutoff.energy_until_s and (
                energy_samples[-1] > cutoff.max_joules
            )
            if cutoff is not None and (misses > cutoff.max_misses or over_energy):
                aborted = True
                abort_reason = "misses" if misses > cutoff.max_misses else "energy"
                break
            if t_sample + 1e-9 >= next_policy_s:
                next_policy_s += policy.interval_s
                # The fleet's pods and the canary's, each on its own (the operator's queries match pod names).
                fleet_energy = [a - b for a, b in zip(energy_samples, canary_energy, strict=True)]
                obs = self._observe(t_sample, window, fleet_energy, [r for r in replicas if not r.canary],
                                    arrivals, inputs, arrival_i, window_len, lag_len)
                if history_s > 0:
                    obs = with_history(obs, first_tokens, finished_log, history_s)
                canaries = [r for r in replicas if r.canary]
                if any(r.state is not State.STOPPED for r in canaries):
                    seen = self._observe(t_sample, canary_window, canary_energy, canaries, arrivals, inputs,
                                         arrival_i, window_len, lag_len)
                    if history_s > 0:
                        seen = with_history(seen, canary_first_tokens, canary_finished_log, history_s)
                    obs = replace(obs, canary=seen)
                proposal = policy.decide(obs, target)
                if proposal is not None and not proposal.same_shape(target):
                    apply(proposal, t_sample)
        return FleetRun(
            policy=policy.name,
            horizon_s=k * self.sample_s,
            sample_s=self.sample_s,
            energy_joules=np.asarray(energy_samples, dtype=float),
            gpus=np.asarray(gpu_samples, dtype=float),
            ttft_s=ttft,
            mean_itl_s=mean_itl,
            itl_values_s=np.asarray(itl_values, dtype=float),
            itl_counts=np.asarray(itl_counts, dtype=np.int64),
            output_tokens=int(trace.output_tokens.sum()),
            changes=changes,
            configs_used=configs_used,
            initial=initial,
            wall_seconds=time.perf_counter() - wall0,
            steps=steps,
            aborted=aborted,
            abort_reason=abort_reason,
        )

    def _observe(
        self,
        t_s: float,
        window: deque[_Window],
        energy_samples: list[float],
        replicas: list[Replica],
        arrivals: list[float],
        inputs: list[int],
        arrived: int,
        window_len: int | None = None,
        lag_len: int = 0,
    ) -> Observation:
        lag_len = min(lag_len, max(len(window) - 1, 0))
        seen = list(window)[: len(window) - lag_len][-(window_len or len(window)):]
        end_s = t_s - lag_len * self.sample_s
        arrived = _bisect_left(arrivals, end_s, 0, arrived)
        window = deque(seen)
        span_s = len(window) * self.sample_s
        lo = _bisect_left(arrivals, end_s - span_s, 0, arrived)
        count = arrived - lo
        completed = sum(w.completed for w in window)
        out_tokens = sum(w.completed_output_tokens for w in window)
        ttfts = [x for w in window for x in w.ttft]
        mean_itls = [x for w in window for x in w.mean_itl]
        itl_v = [x for w in window for x in w.itl_values]
        itl_c = [c for w in window for c in w.itl_counts]
        end = len(energy_samples) - 1 - lag_len
        watts = (energy_samples[end] - energy_samples[end - len(window)]) / span_s if span_s > 0 else 0.0
        serving = [r for r in replicas if r.state is State.SERVING]
        active = [w.active_total / w.serving for w in window if w.serving]
        return Observation(
            now_s=t_s,
            window_s=span_s,
            requests_per_second=count / span_s if span_s > 0 else 0.0,
            mean_input_tokens=(sum(inputs[lo:arrived]) / count) if count else None,
            mean_output_tokens=(out_tokens / completed) if completed else None,
            watts=watts,
            ttft_p95_seconds=float(np.percentile(ttfts, 95)) if ttfts else None,
            itl_p95_seconds=weighted_percentile(np.asarray(itl_v), np.asarray(itl_c), 95.0) if itl_v else None,
            running_requests=sum(len(r.engine.running) for r in serving),
            waiting_requests=sum(len(r.engine.waiting) for r in serving),
            serving_replicas=len(serving),
            loading_replicas=sum(1 for r in replicas if r.state is State.LOADING),
            draining_replicas=sum(1 for r in replicas if r.state is State.DRAINING),
            active_per_replica_mean=float(np.mean(active)) if active else 0.0,
            finished_requests_per_second=completed / span_s if span_s > 0 else 0.0,
            mean_waiting_requests=float(np.mean([w.waiting_total for w in window])) if window else 0.0,
            mean_running_requests=float(np.mean([w.active_total - w.waiting_total for w in window])) if window else 0.0,
            waiting_growth_per_second=_slope([w.waiting_total for w in window], self.sample_s),
            request_itl_p95_seconds=float(np.percentile(mean_itls, 95)) if mean_itls else None,
            history_end_s=end_s,
            window_ttfts_s=tuple(ttfts),
            window_mean_itls_s=tuple(mean_itls),
        )


def _slope(values: list[int] | list[float], step_s: float) -> float | None:
    """The least-squares slope per second of evenly spaced samples (PromQL deriv); None with fewer than two."""
    if len(values) < 2 or step_s <= 0:
        return None
    x = np.arange(len(values), dtype=float) * step_s
    return float(np.polyfit(x, np.asarray(values, dtype=float), 1)[0])


def with_history(obs: Observation, first_tokens: list[float], finished: list[tuple[float, int, int]],
                 history_s: float) -> Observation:
    """`obs` with the last `history_s` of first tokens and finished requests up to the window's end. The logs are
    in step order (each replica's steps in time order, the replicas interleaved within a sample), so only their
    tails are read, back to a minute before the history starts."""
    end_s = obs.history_end_s if obs.history_end_s is not None else obs.now_s
    start_s = end_s - history_s
    times = sorted(t for t in _tail(first_tokens, start_s, lambda t: t) if start_s <= t < end_s)
    done = [f for f in _tail(finished, start_s, lambda f: f[0]) if start_s <= f[0] < end_s]
    return replace(obs, history_end_s=end_s, first_token_s=tuple(times),
                   finished_prompt_tokens=tuple(f[1] for f in done), finished_output_tokens=tuple(f[2] for f in done))


def _tail(log: list[T], start_s: float, time_of: Callable[[T], float]) -> list[T]:
    """The entries from the last one more than a minute older than `start_s` on (a generous bound: the replicas'
    steps interleave within a sample, never by minutes)."""
    i = len(log)
    while i > 0 and time_of(log[i - 1]) >= start_s - 60.0:
        i -= 1
    return log[i:]


def _bisect_left(values: list[float], x: float, lo: int, hi: int) -> int:
    import bisect

    return bisect.bisect_left(values, x, lo, hi)


def weighted_percentile(values: FloatArray, counts: npt.NDArray[np.int64], q: float) -> float:
    """The q-th percentile of values repeated counts times (the lower value at a boundary, like a histogram)."""
    if values.size == 0:
        return math.nan
    order = np.argsort(values, kind="stable")
    v = values[order]
    c = np.cumsum(counts[order])
    rank = q / 100.0 * c[-1]
    i = int(np.searchsorted(c, rank, side="left"))
    return float(v[min(i, v.size - 1)])

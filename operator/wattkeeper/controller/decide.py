"""The operator's adapter to the control core, for one service.

Kubernetes objects and status in, the core's inputs out (`tick_inputs`); the core's decision in, the new status,
the configuration to apply and the events out (`decide`). The decision itself (load estimate, corrections, plan,
the switching rule, the Advise verdict) is `wattkeeper.control`; what is here is only translation and the
conditions users read. No I/O: `services.py` reads and writes around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from wattkeeper.api import LLMService, ProfilePoint, ServiceMode, ServingConfigSpec
from wattkeeper.control import (
    OVERSHOOT_TOLERANCE,
    Canary,
    ConfigMargin,
    FleetState,
    Memory,
    Plan,
    RecentConfiguration,
    ShortFleet,
    Signals,
    TickDecision,
    TickInputs,
    Tuning,
    decide_tick,
    settle_seconds,
    significant,
    tail,
)
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import Workload
from wattkeeper.render import RenderError, config_hash
from wattkeeper.render.objects import TERMINATION_GRACE_SECONDS, vllm_argv
from wattkeeper.telemetry import ServiceObservation
from wattkeeper.telemetry.buckets import over_threshold

from .conditions import set_condition
from .planning import intent_from_service, predicted_figures
from .settings import OperatorSettings


@dataclass(frozen=True)
class Allocation:
    """The watts a service may draw: the tightest over the budgets that select it."""

    watts: float | None = None
    budget: str | None = None
    budgets: tuple[str, ...] = ()
    enforced: bool = True
    advised_watts: float | None = None  # from an Advise budget: recorded, not enforced
    advised_budget: str | None = None

    @property
    def allocation_watts(self) -> float | None:
        """The enforced share of a budget for this service (None: no enforced budget)."""
        return self.watts if self.enforced else None

    def to_status(self) -> dict[str, Any] | None:
        if not self.budgets:
            return None
        out: dict[str, Any] = {"budgets": list(self.budgets), "enforced": self.enforced}
        if self.watts is not None:
            out["watts"] = round(self.watts, 1)
            out["budget"] = self.budget
        elif self.advised_watts is not None:
            out["watts"] = round(self.advised_watts, 1)
            out["budget"] = self.advised_budget
            out["enforced"] = False
        return out


@dataclass(frozen=True)
class DeploymentState:
    exists: bool = False
    config_hash: str | None = None
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0


@dataclass
class ServiceInputs:
    service: LLMService
    status: dict[str, Any]  # the raw status as read, to diff against
    allocation: Allocation
    observation: ServiceObservation | None
    telemetry_error: str | None
    deployment: DeploymentState
    now: datetime
    profile: list[ProfilePoint] = field(default_factory=list)
    trigger: str = "tick"
    telemetry_window_seconds: float = 60.0
    power_limits: bool = False  # plan GPU power limits (the node agent applies them)
    # The canary's Deployment (`<name>-canary`) and what telemetry showed of its pods (None: not measured, or
    # nothing usable: a canary's silence never fails the service's tick).
    canary_deployment: DeploymentState = field(default_factory=DeploymentState)
    canary_observation: ServiceObservation | None = None
    # Why this service may not run a canary: `<name>-canary` is a Deployment it does not own (another service's
    # own Deployment), or its own Deployment is another service's canary. None: no conflict.
    canary_conflict: str | None = None


@dataclass
class ServiceDecision:
    apply: Plan | None  # the plan to render and apply, None to leave the Deployment alone
    surge: bool
    status: dict[str, Any]
    events: list[tuple[str, str, str]]  # (type, reason, message)
    action: str  # Applied, Held, Unchanged, Advised, Rejected
    cause: str = ""  # the branch of the switching rule (control/switching.py)
    canary: Plan | None = None  # the canary to run beside the Deployment (one replica); None: none (delete it)


# --- Kubernetes -> core ----------------------------------------------------------------------------------------------


def running_plan(status: dict[str, Any]) -> Plan | None:
    """The plan the operator applied last, as its status records it."""
    return _plan_from_wire(status.get("plan") or {})


def canary_plan(status: dict[str, Any]) -> Plan | None:
    """The canary's plan as status records it (status.canary, the wire format of status.plan); None: none runs."""
    return _plan_from_wire(status.get("canary") or {})


def _plan_from_wire(plan_status: dict[str, Any]) -> Plan | None:
    if not plan_status.get("precision"):
        return None
    return ServingConfigSpec(
        precision=plan_status["precision"],
        tensor_parallel=plan_status.get("tensorParallel", 1),
        max_num_seqs=plan_status.get("maxNumSeqs", 256),
        max_num_batched_tokens=plan_status.get("maxNumBatchedTokens", 8192),
        replicas=plan_status.get("replicas", 1),
        kv_cache_dtype=plan_status.get("kvCacheDtype"),
        gpu_power_limit_watts=plan_status.get("gpuPowerLimitWatts"),
    ).to_plan()


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(str(text).replace("Z", "+00:00"))


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _seconds(text: str | None) -> float | None:
    moment = _parse_time(text)
    return moment.timestamp() if moment is not None else None


def memory_from_status(status: dict[str, Any], default_workload: Workload) -> Memory:
    """What the core remembers, as status keeps it (token counts the status lacks default to the spec's)."""
    plan_status = status.get("plan") or {}
    observed = status.get("observed") or {}
    running = running_plan(status)
    planned: Workload | None = None
    if plan_status.get("plannedLoadRps") is not None:
        planned = Workload(float(plan_status["plannedLoadRps"]),
                           float(plan_status.get("plannedInputTokens") or default_workload.input_tokens),
                           float(plan_status.get("plannedOutputTokens") or default_workload.output_tokens))
    peak = observed.get("peakLoadRps")
    last_applied_s, rolled_out_s = _seconds(status.get("lastAppliedAt")), _seconds(status.get("rolledOutAt"))
    return Memory(
        running=running,
        last_applied_s=last_applied_s,
        # Applied and not seen rolled out since (a status from before rollouts were tracked, too: one wait more).
        awaiting_rollout=last_applied_s is not None and (rolled_out_s is None or rolled_out_s < last_applied_s),
        rolled_out_s=rolled_out_s,
        bridged_limit_watts=status.get("powerLimitLiftedFromWatts"),
        missed_since_s=_seconds(status.get("sloMissedSince")),
        planned_load=planned,
        peak_load_rps=float(peak) if peak is not None else None,
        peak_load_at_s=_seconds(observed.get("peakLoadAt")),
        peak_forecast_rps=float(observed.get("peakForecastRps") or 0.0),
        carried_rps=float(observed["carriedRps"]) if observed.get("carriedRps") is not None else None,
        power_correction=float(observed.get("powerCorrection") or 1.0),
        ttft_correction=float(observed.get("ttftCorrection") or 1.0),
        itl_correction=float(observed.get("itlCorrection") or 1.0),
        tail_measured_misses=float(observed.get("sloMissesMeasured") or 0.0),
        tail_predicted_misses=float(observed.get("sloMissesPredicted") or 0.0),
        margins=tuple(
            ConfigMargin(str(r["configuration"]), float(r.get("ttft") or 1.0), float(r.get("itl") or 1.0),
                         float(r["rpsPerReplica"]) if r.get("rpsPerReplica") else None)
            for r in observed.get("latencyMargins") or [] if r.get("configuration")
        ),
        recent_configurations=tuple(
            RecentConfiguration(str(r["configuration"]), left, r.get("allocationWatts"), r.get("loadRps"))
            for r in plan_status.get("recentConfigurations") or []
            if r.get("configuration") and (left := _seconds(r.get("leftAt"))) is not None
        ),
        measured_short=tuple(
            ShortFleet(str(r["configuration"]), int(r["replicas"]), at, float(r["loadRps"]), r.get("allocationWatts"))
            for r in plan_status.get("measuredShort") or []
            if r.get("configuration") and r.get("replicas") and r.get("loadRps") is not None
            and (at := _seconds(r.get("measuredAt"))) is not None
        ),
        canary=canary_from_status(status),
        canaries_ended=tuple(
            RecentConfiguration(str(r["configuration"]), ended, r.get("allocationWatts"), r.get("loadRps"),
                                failed=bool(r.get("failed")))
            for r in status.get("canariesEnded") or []
            if r.get("configuration") and (ended := _seconds(r.get("endedAt"))) is not None
        ),
    )


def canary_from_status(status: dict[str, Any]) -> Canary | None:
    """Memory.canary from status.canary (None without a plan or a start time: nothing the core can judge)."""
    plan = canary_plan(status)
    started = _seconds((status.get("canary") or {}).get("startedAt"))
    if plan is None or started is None:
        return None
    raw = status["canary"]
    return Canary(plan=plan, started_s=started, ready_s=_seconds(raw.get("readyAt")),
                  windows=int(raw.get("measuredWindows") or 0))


def canary_status(canary: Canary, now: datetime) -> dict[str, Any]:
    """status.canary: the plan in status.plan's wire format, its short description, and the core's memory of it."""
    out: dict[str, Any] = {"configuration": canary.plan.describe(),
                           **ServingConfigSpec.from_plan(canary.plan).to_wire(),
                           "startedAt": _iso(datetime.fromtimestamp(canary.started_s, tz=now.tzinfo)),
                           "measuredWindows": canary.windows}
    if canary.ready_s is not None:
        out["readyAt"] = _iso(datetime.fromtimestamp(canary.ready_s, tz=now.tzinfo))
    return out


def canaries_ended_status(memory: Memory, now: datetime) -> list[dict[str, Any]]:
    return [{"configuration": r.configuration,
             "endedAt": _iso(datetime.fromtimestamp(r.left_at_s, tz=now.tzinfo)),
             **({"allocationWatts": r.allocation_watts} if r.allocation_watts is not None else {}),
             **({"loadRps": r.load_rps} if r.load_rps is not None else {}),
             **({"failed": True} if r.failed else {})}
            for r in memory.canaries_ended]


def signals_from_observation(obs: ServiceObservation | None, window_seconds: float,
                             slos: tuple[float, float] | None = None) -> Signals | None:
    """The core's signals from a telemetry read; with `slos` (TTFT, ITL seconds), the requests over each counted
    on vLLM's histograms (`telemetry/buckets.py over_threshold`)."""
    if obs is None:
        return None
    ttft = over_threshold(slos[0], obs.ttft_bucket_rates, window_seconds) if slos else None
    itl = over_threshold(slos[1], obs.request_itl_bucket_rates, window_seconds) if slos else None
    return Signals(
        window_seconds=window_seconds, watts=obs.watts, finished_requests_per_second=obs.requests_per_second,
        waiting_requests=obs.waiting_requests, running_requests=obs.running_requests,
        waiting_growth_per_second=obs.waiting_growth_per_second,
        mean_input_tokens=obs.mean_input_tokens, mean_output_tokens=obs.mean_output_tokens,
        ttft_p95_seconds=obs.ttft_p95_seconds, itl_p95_seconds=obs.itl_p95_seconds,
        request_itl_p95_seconds=obs.request_itl_p95_seconds,
        burst_requests_per_second=obs.burst_requests_per_second,
        arrival_counts=obs.arrival_counts, arrival_resolution_seconds=obs.arrival_resolution_seconds,
        prompt_tokens_sample=obs.prompt_tokens_sample, output_tokens_sample=obs.output_tokens_sample,
        ttft_misses=ttft[0] if ttft else None, ttft_observed=ttft[1] if ttft else None,
        itl_misses=itl[0] if itl else None, itl_observed=itl[1] if itl else None,
    )


def svc_slos(service: LLMService) -> tuple[float, float]:
    """A service's (TTFT, ITL) SLOs in seconds."""
    return service.spec.slo.ttft_p95_seconds, service.spec.slo.itl_p95_seconds


def within_slo_share(obs: ServiceObservation | None, window_seconds: float,
                     slos: tuple[float, float]) -> float | None:
    """The share of the window's requests within both SLOs, at least (status.observed.withinSloShare): one minus the
    shares over each (the two may overlap), counted on vLLM's histograms; None without the TTFT histogram."""
    if obs is None:
        return None
    ttft = over_threshold(slos[0], obs.ttft_bucket_rates, window_seconds)
    itl = over_threshold(slos[1], obs.request_itl_bucket_rates, window_seconds)
    if ttft is None or not ttft[1]:
        return None
    over = ttft[0] / ttft[1] + (itl[0] / itl[1] if itl and itl[1] else 0.0)
    return round(max(0.0, 1.0 - over), 4)


def fleet_state(service: LLMService, dep: DeploymentState, running: Plan | None) -> FleetState:
    matches = running is None or (dep.config_hash == config_hash(service, running)
                                  and dep.replicas == running.replicas)
    return FleetState(
        exists=dep.exists, matches_plan=not dep.exists or matches, replicas=dep.replicas,
        ready_replicas=dep.ready_replicas,
        rolling=dep.updated_replicas < dep.replicas or dep.ready_replicas < dep.replicas,
    )


def canaries_allowed(inputs: ServiceInputs, settings: OperatorSettings) -> bool:
    """Whether the core may run a canary for this service: the operator's setting (`canaries`, off by default), never for a
    Pinned service (served as written), never where the name `<name>-canary` is taken (`canary_conflict`)."""
    return settings.canaries and inputs.service.spec.mode != ServiceMode.PINNED and inputs.canary_conflict is None


def tick_inputs(inputs: ServiceInputs, settings: OperatorSettings) -> TickInputs:
    """The core's inputs from what the operator read: the service, its status, the Deployment, telemetry."""
    svc = inputs.service
    alloc = inputs.allocation
    intent = intent_from_service(svc, inputs.profile, inputs.power_limits)
    memory = memory_from_status(inputs.status, intent.default_workload)
    canary = memory.canary.plan if memory.canary is not None else None
    return TickInputs(
        intent=intent,
        memory=memory,
        signals=signals_from_observation(inputs.observation, inputs.telemetry_window_seconds,
                                         (intent.slo_ttft_p95_seconds, intent.slo_itl_p95_seconds)),
        fleet=fleet_state(svc, inputs.deployment, running_plan(inputs.status)),
        now_s=inputs.now.timestamp(),
        spec_changed=inputs.status.get("observedGeneration") != svc.metadata.generation,
        allocation_watts=alloc.allocation_watts,
        advised_allocation_watts=alloc.advised_watts,
        # The operator cannot see terminating pods: their termination grace bounds the drain.
        settle_seconds=settle_seconds(settings.telemetry_window_seconds, TERMINATION_GRACE_SECONDS),
        tuning=Tuning(power_correction_smoothing=settings.power_correction_smoothing,
                      power_correction_bounds=settings.power_correction_bounds,
                      verify_by_replay=settings.verify_by_replay,
                      canaries=canaries_allowed(inputs, settings),
                      per_request_routing=settings.per_request_routing),
        # The canary's own pods: measured only while status says one runs (`canary_observation` is None else).
        canary_signals=signals_from_observation(inputs.canary_observation, inputs.telemetry_window_seconds,
                                                (intent.slo_ttft_p95_seconds, intent.slo_itl_p95_seconds))
        if canary is not None else None,
        canary_fleet=fleet_state(svc, inputs.canary_deployment, canary),
    )


# --- core -> Kubernetes ----------------------------------------------------------------------------------------------


def _plan_status(tick: TickDecision, applied: Plan, now: datetime) -> dict[str, Any]:
    out: dict[str, Any] = dict(ServingConfigSpec.from_plan(applied).to_wire())
    workload = tick.load.workload
    out.update({
        "reason": tick.reason,
        "plannedLoadRps": significant(workload.requests_per_second),
        "plannedInputTokens": significant(workload.input_tokens),
        "plannedOutputTokens": significant(workload.output_tokens),
        "decidedAt": _iso(now),
    })
    if tick.candidate is not None:
        out["predicted"] = {k: v for k, v in predicted_figures(tick.candidate).items() if v is not None}
    if tick.result is not None:
        out["binding"] = tick.result.binding
        out["feasible"] = tick.result.feasible
        if tick.result.runner_up is not None:
            r = tick.result.runner_up
            out["runnerUp"] = f"{Plan(r.config, r.replicas).describe()}: {r.joules_per_token:.3f} J/token, " \
                              f"{r.total_watts:.0f} W"
    return out


def _sync_recent(status: dict[str, Any], memory: Memory, now: datetime) -> None:
    """status.plan.recentConfigurations and measuredShort as the core remembers them (they change only when a
    restart or a capacity move is applied or the spec changes, so a settled service writes nothing)."""
    plan_status = status.get("plan")
    if not isinstance(plan_status, dict):
        return
    recent = [{"configuration": r.configuration,
               "leftAt": _iso(datetime.fromtimestamp(r.left_at_s, tz=now.tzinfo)),
               **({"allocationWatts": r.allocation_watts} if r.allocation_watts is not None else {}),
               **({"loadRps": r.load_rps} if r.load_rps is not None else {})}
              for r in memory.recent_configurations]
    short = [{"configuration": e.configuration, "replicas": e.replicas,
              "measuredAt": _iso(datetime.fromtimestamp(e.at_s, tz=now.tzinfo)), "loadRps": e.load_rps,
              **({"allocationWatts": e.allocation_watts} if e.allocation_watts is not None else {})}
             for e in memory.measured_short]
    if recent == (plan_status.get("recentConfigurations") or []) \
            and short == (plan_status.get("measuredShort") or []):
        return
    plan_status = dict(plan_status)
    for key, value in (("recentConfigurations", recent), ("measuredShort", short)):
        if value:
            plan_status[key] = value
        else:
            plan_status.pop(key, None)
    status["plan"] = plan_status


def _append_decision(status: dict[str, Any], now: datetime, action: str, reason: str, configuration: str | None,
                     kept: int) -> None:
    decisions = list(status.get("decisions") or [])
    last = decisions[-1] if decisions else None
    if last and last.get("action") == action and last.get("configuration") == configuration \
            and last.get("reason") == reason:
        return  # the same decision again: no new entry, so a held service stays quiet
    decisions.append({"time": _iso(now), "action": action, "reason": reason, "configuration": configuration})
    status["decisions"] = decisions[-kept:]


# Shown measurements move in status only when they move by more than this share. A counter rate over a window a
# few scrapes long is that noisy at rest: an idle pod at a steady 110 W read 110, 105, 110, 105 W from
# rate(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION[...]) as scrapes fell either side of the window's edge (4.5%), which
# rewrote an idle service's status; the planner reads its corrections unsteadied, so this only quiets the display.
STATUS_DEADBAND = 0.05
MEASURED_KEYS = ("watts", "joulesPerToken", "tokensPerSecond", "requestsPerSecond", "ttftP95Seconds", "itlP95Seconds",
                 "requestItlP95Seconds", "withinSloShare", "runningRequests", "waitingRequests")


def decide(inputs: ServiceInputs, energy_model: EnergyModel, settings: OperatorSettings) -> ServiceDecision:
    svc = inputs.service
    spec = svc.spec
    now = inputs.now
    generation = svc.metadata.generation
    old = inputs.status
    status: dict[str, Any] = {k: v for k, v in old.items()}
    conditions: list[dict[str, Any]] = list(old.get("conditions") or [])
    events: list[tuple[str, str, str]] = []
    spec_changed = old.get("observedGeneration") != generation
    dep = inputs.deployment
    alloc = inputs.allocation

    def cond(type_: str, ok: bool | None, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, ok, reason, message, now, generation)

    def rejected(reason: str, message: str, event: bool) -> ServiceDecision:
        cond("Degraded", True, reason, message)
        if event:
            events.append(("Warning", reason, message))
        status["conditions"] = conditions
        status["observedGeneration"] = generation
        # Nothing that runs is touched: a canary status records runs on.
        return ServiceDecision(None, True, _clean(status), events, "Rejected", "invalid", canary_plan(old))

    # Telemetry: silence is not zero.
    obs = inputs.observation
    if obs is not None:
        cond("TelemetryAvailable", True, "Measured", f"{obs.pods_reporting} pods reporting ({obs.power_source})")
    elif dep.ready_replicas > 0:
        cond("TelemetryAvailable", False, "TelemetryUnavailable",
             f"{inputs.telemetry_error or 'no measurements'}; holding the last configuration "
             "(a cut allocation is still acted on, by prediction)")
    else:
        cond("TelemetryAvailable", None, "NoPods", "no ready replicas to measure yet")

    try:
        tick = decide_tick(tick_inputs(inputs, settings), energy_model)
    except ValueError as err:  # a spec the planner cannot take (an unknown accelerator or precision)
        return rejected("InvalidSpec", f"cannot plan: {err}", True)

    if tick.proposed is None:
        message = f"no configuration can serve {spec.model.name} on {spec.accelerator.type}: {tick.reason}"
        cond("Degraded", True, "NoFeasibleConfiguration", message)
        cond("Ready", dep.ready_replicas > 0, "NoFeasibleConfiguration" if dep.ready_replicas == 0 else
             "HoldingLastConfiguration", message)
        if spec_changed or not any(c.get("reason") == "NoFeasibleConfiguration" for c in old.get("conditions") or []):
            events.append(("Warning", "NoFeasibleConfiguration", message))
        _append_decision(status, now, "Rejected", message, None, settings.decisions_kept)
        _write_allocation(status, alloc)  # the share holds whether or not a plan fits it: say what it is
        status["conditions"] = conditions
        status["observedGeneration"] = generation
        return ServiceDecision(None, True, _clean(status), events, "Rejected", tick.cause, canary_plan(old))

    # Render once to reject specs that cannot become a command line (extra args overriding planned flags).
    try:
        vllm_argv(svc, tick.proposed)
    except RenderError as err:
        return rejected("InvalidSpec", f"cannot render the vLLM command: {err}", spec_changed)

    running = tick.memory.running
    apply_config = tick.apply

    # Advise-mode budgets: say what would change, change nothing.
    if tick.advised is not None:
        text = (f"budget {alloc.advised_budget} (Advise) would move to {tick.advised.describe()} to fit "
                f"{alloc.advised_watts:.0f} W")
        before = len(status.get("decisions") or [])
        _append_decision(status, now, "Advised", text, tick.advised.describe(), settings.decisions_kept)
        if len(status.get("decisions") or []) != before:
            events.append(("Normal", "Advised", text))

    effective = tick.apply or running or tick.proposed
    if tick.apply is not None:
        if tick.cause != "drift":  # a re-apply keeps the plan, its reason and its cooldown
            status["plan"] = _plan_status(tick, tick.apply, now)
            status["lastAppliedAt"] = _iso(now)
        _append_decision(status, now, "Applied", tick.reason, tick.apply.describe(), settings.decisions_kept)
        events.append(("Normal", "Planned" if tick.cause == "initial" else "Reconfigured",
                       f"{tick.apply.describe()}: {tick.reason}"))
    elif tick.action == "Held":
        before = len(status.get("decisions") or [])
        _append_decision(status, now, "Held", tick.reason, tick.proposed.describe(), settings.decisions_kept)
        if len(status.get("decisions") or []) != before:
            events.append(("Normal", "Held", tick.reason))

    # Observed figures and what the core remembers, rounded so that noise does not cause writes.
    memory = tick.memory
    _sync_recent(status, memory, now)
    canary, memory = _sync_canary(status, tick, memory, canaries_allowed(inputs, settings), now)
    events.extend(canary_events(canary_plan(old), canary, tick.canary_reason))
    if memory.rolled_out_s is not None and not memory.awaiting_rollout:
        status["rolledOutAt"] = _iso(datetime.fromtimestamp(memory.rolled_out_s, tz=now.tzinfo))
    if memory.missed_since_s is not None:
        status["sloMissedSince"] = _iso(datetime.fromtimestamp(memory.missed_since_s, tz=now.tzinfo))
    else:
        status.pop("sloMissedSince", None)
    lifted = status.get("powerLimitLiftedFromWatts")
    if memory.bridged_limit_watts is not None:
        status["powerLimitLiftedFromWatts"] = memory.bridged_limit_watts
        if lifted is None:
            events.append(("Normal", "PowerLimitLifted",
                           f"GPU power limit {memory.bridged_limit_watts:g} W lifted on the running pods while the "
                           "added replicas load"))
    elif lifted is not None:
        status.pop("powerLimitLiftedFromWatts", None)
        if tick.apply is None:
            events.append(("Normal", "PowerLimitRestored",
                           f"the added replicas serve: GPU power limit back to {float(lifted):g} W"))
    remembered: dict[str, Any] = {"powerCorrection": memory.power_correction,
                                  "ttftCorrection": memory.ttft_correction, "itlCorrection": memory.itl_correction}
    if memory.tail_measured_misses or memory.tail_predicted_misses:
        remembered.update(sloMissesMeasured=memory.tail_measured_misses,
                          sloMissesPredicted=memory.tail_predicted_misses, missScale=significant(tail.scale(memory)))
    if memory.margins:
        remembered["latencyMargins"] = [{"configuration": r.configuration, "ttft": r.ttft, "itl": r.itl,
                                         **({"rpsPerReplica": r.rps_per_replica} if r.rps_per_replica else {})}
                                        for r in memory.margins]
    if obs is not None:
        status["observed"] = {k: v for k, v in {
            "watts": significant(obs.watts), "joulesPerToken": significant(obs.joules_per_token),
            "tokensPerSecond": significant(obs.output_tokens_per_second),
            "requestsPerSecond": significant(obs.requests_per_second),
            "ttftP95Seconds": significant(obs.ttft_p95_seconds), "itlP95Seconds": significant(obs.itl_p95_seconds),
            "requestItlP95Seconds": significant(obs.request_itl_p95_seconds),
            "withinSloShare": within_slo_share(obs, inputs.telemetry_window_seconds, svc_slos(inputs.service)),
            "runningRequests": significant(obs.running_requests),
            "waitingRequests": significant(obs.waiting_requests),
            **remembered,
        }.items() if v is not None}
        if tick.load.source == "measured" and memory.peak_load_rps is not None and memory.peak_load_at_s is not None:
            status["observed"].update({"peakLoadRps": memory.peak_load_rps,
                                       "peakLoadAt": _iso(datetime.fromtimestamp(memory.peak_load_at_s,
                                                                                 tz=now.tzinfo))})
            if memory.peak_forecast_rps > 0:
                status["observed"]["peakForecastRps"] = memory.peak_forecast_rps
        if memory.carried_rps is not None:
            status["observed"]["carriedRps"] = memory.carried_rps
        status["observed"] = _steady(status["observed"], old.get("observed") or {}, MEASURED_KEYS)
    elif any(v != 1.0 for v in remembered.values()):  # (a list of margins is never 1.0)
        status.setdefault("observed", {}).update(remembered)
    if obs is None and memory.carried_rps is None and "carriedRps" in (status.get("observed") or {}):
        # A change made without telemetry: what the plan before it carried is not this plan's (a new dict: the
        # old status is what the patch is diffed against).
        status["observed"] = {k: v for k, v in status["observed"].items() if k != "carriedRps"}
    _write_allocation(status, alloc)

    # Conditions.
    desired = effective.replicas
    ready = dep.ready_replicas >= desired and (desired == 0 or dep.ready_replicas > 0)
    rolling = apply_config is not None or (dep.exists and (dep.updated_replicas < desired or dep.ready_replicas < desired))
    cond("Ready", ready and apply_config is None, "AllReplicasReady" if ready else "ReplicasNotReady",
         f"{dep.ready_replicas}/{desired} replicas ready")
    cond("Progressing", rolling, "RollingOut" if rolling else "Stable",
         f"rolling out {effective.describe()}" if rolling else f"serving {effective.describe()}")
    slo_state, slo_reason, slo_message = _slo_condition(inputs, status)
    cond("SLOMet", slo_state, slo_reason, slo_message)
    within, within_reason, within_message = _budget_condition(inputs, status, alloc.allocation_watts, alloc)
    cond("WithinBudget", within, within_reason, within_message)
    if inputs.canary_conflict is not None:
        cond("NameConflict", True, "CanaryNameTaken", inputs.canary_conflict)
    else:  # written only while there is a conflict: a service without one carries no such condition
        conditions = [c for c in conditions if c.get("type") != "NameConflict"]
    feasible = tick.result.feasible if tick.result is not None else True
    if feasible:
        cond("Degraded", False, "AsPlanned", "the plan meets both SLOs within the allocation")
    else:
        cond("Degraded", True, "Fallback", f"{spec.fallback}: {tick.result.reason if tick.result else ''}")

    status["conditions"] = conditions
    status["observedGeneration"] = generation
    status["replicas"] = dep.replicas
    status["readyReplicas"] = dep.ready_replicas
    return ServiceDecision(apply_config, tick.surge, _clean(status), events, tick.action, tick.cause, canary)


def _sync_canary(status: dict[str, Any], tick: TickDecision, memory: Memory, allowed: bool,
                 now: datetime) -> tuple[Plan | None, Memory]:
    """status.canary and status.canariesEnded from the core's decision; returns the canary to run (None: none,
    delete one that exists) and the memory as status now holds it. The core decides; the operator never runs a
    canary that is not allowed here (`canaries_allowed`), and status records exactly the canary that runs."""
    canary = tick.canary if allowed else None
    if canary is None:
        memory = replace(memory, canary=None)
        status.pop("canary", None)
    else:
        remembered = memory.canary
        if remembered is None or remembered.plan != canary:  # the core decided one it does not remember: now
            remembered = Canary(plan=canary, started_s=now.timestamp())
            memory = replace(memory, canary=remembered)
        status["canary"] = canary_status(remembered, now)
    ended = canaries_ended_status(memory, now)
    if ended:
        status["canariesEnded"] = ended
    else:
        status.pop("canariesEnded", None)
    return canary, memory


def canary_events(before: Plan | None, after: Plan | None, reason: str) -> list[tuple[str, str, str]]:
    """CanaryEnded when the canary status recorded stops (or gives way to another configuration), CanaryStarted
    when one starts; the message is the core's reason (`TickDecision.canary_reason`)."""
    if (before.config if before else None) == (after.config if after else None):
        return []
    out: list[tuple[str, str, str]] = []
    if before is not None:
        out.append(("Normal", "CanaryEnded", reason or f"canary {before.describe()} ended"))
    if after is not None:
        out.append(("Normal", "CanaryStarted", reason or f"canary {after.describe()} started beside the fleet"))
    return out


def _write_allocation(status: dict[str, Any], alloc: Allocation) -> None:
    alloc_status = alloc.to_status()
    if alloc_status is None:
        status.pop("allocation", None)
    else:
        status["allocation"] = alloc_status


def _steady(new: dict[str, Any], old: dict[str, Any], keys: tuple[str, ...],
            tolerance: float = STATUS_DEADBAND) -> dict[str, Any]:
    """Keep the written measurement where the new one is within `tolerance` of it: a meter that reads 109 W, then
    110 W, then 109 W would otherwise rewrite status every pass (an idle service must make no writes). Only what is
    shown is steadied; what the core reads back (corrections, the remembered peak) is written as decided."""
    out = dict(new)
    for key in keys:
        value, before = new.get(key), old.get(key)
        if isinstance(value, (int, float)) and isinstance(before, (int, float)) and not isinstance(value, bool) \
                and abs(value - before) <= tolerance * max(abs(value), abs(before)):
            out[key] = before
    return out


def _slo_missed(inputs: ServiceInputs) -> bool:
    obs = inputs.observation
    slo = inputs.service.spec.slo
    if obs is None:
        return False
    return bool((obs.ttft_p95_seconds and obs.ttft_p95_seconds > slo.ttft_p95_seconds)
                or (obs.itl_p95_seconds and obs.itl_p95_seconds > slo.itl_p95_seconds))


def _slo_condition(inputs: ServiceInputs, status: dict[str, Any]) -> tuple[bool | None, str, str]:
    slo = inputs.service.spec.slo
    obs = inputs.observation
    if obs is not None and (obs.ttft_p95_seconds is not None or obs.itl_p95_seconds is not None):
        missed = _slo_missed(inputs)
        text = (f"measured TTFT p95 {_fmt(obs.ttft_p95_seconds)} (SLO {slo.ttft_p95_seconds}s), "
                f"ITL p95 {_fmt(obs.itl_p95_seconds)} (SLO {slo.itl_p95_seconds}s)")
        return (not missed), ("SLOMissed" if missed else "Measured"), text
    predicted = ((status.get("plan") or {}).get("predicted") or {})
    if predicted.get("ttftP95Seconds") is not None:
        ok = predicted["ttftP95Seconds"] <= slo.ttft_p95_seconds and predicted.get("itlP95Seconds", 0) <= slo.itl_p95_seconds
        return ok, "Predicted", (f"no latency measured yet; predicted TTFT p95 {_fmt(predicted['ttftP95Seconds'])}, "
                                 f"ITL p95 {_fmt(predicted.get('itlP95Seconds'))}")
    return None, "NoMeasurement", "no latency measured yet"


def _budget_condition(inputs: ServiceInputs, status: dict[str, Any], allocation_watts: float | None,
                      alloc: Allocation) -> tuple[bool | None, str, str]:
    if not alloc.budgets:
        return True, "NoBudget", "no EnergyBudget selects this service"
    limit = allocation_watts if allocation_watts is not None else alloc.advised_watts
    if limit is None:
        return None, "NoAllocation", f"budgets {', '.join(alloc.budgets)} have not allocated watts yet"
    source = "measured" if inputs.observation is not None else "predicted"
    # A canary's watts are the service's: it draws from the same allocation (controller/budgets.py adds them too).
    watts = measured_watts(inputs.observation, inputs.canary_observation) if inputs.observation is not None else \
        ((status.get("plan") or {}).get("predicted") or {}).get("watts")
    bound = f"allocation {limit:.0f} W from budget {alloc.budget or alloc.advised_budget}"
    if len(alloc.budgets) > 1:
        bound += f" (the tightest of {', '.join(alloc.budgets)})"
    if watts is None:
        return None, "NoMeasurement", bound
    ok = watts <= limit * OVERSHOOT_TOLERANCE
    return ok, ("WithinAllocation" if ok else "OverAllocation"), f"{source} {watts:.0f} W against {bound}"


def measured_watts(fleet: ServiceObservation, canary: ServiceObservation | None) -> float:
    """A service's measured watts: its Deployment's pods and, while one runs and is measured, its canary's."""
    return fleet.watts + (canary.watts if canary is not None else 0.0)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}s"


def _clean(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if v is not None}

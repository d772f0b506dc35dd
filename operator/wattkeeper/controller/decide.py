"""The control loop's decision for one service, as a pure function of what was read.

Inputs: the service (spec and the status the operator wrote before), its power allocation, the telemetry
observation (or why there is none), the Deployment's state and the clock. Output: the configuration to apply (or
none), the new status, and the events to post. No I/O here: `services.py` reads and writes around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from wattkeeper.api import LLMService, ProfilePoint, ServiceMode, ServingConfig
from wattkeeper.energy.catalog import get_accelerator
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import Workload
from wattkeeper.planner import Candidate, PlanResult, plan, should_switch
from wattkeeper.render import RenderError, config_hash
from wattkeeper.render.objects import TERMINATION_GRACE_SECONDS, vllm_argv
from wattkeeper.telemetry import ServiceObservation

from .conditions import set_condition
from .planning import (
    evaluate_config,
    model_shape,
    plan_request,
    predicted_figures,
    significant,
    to_api_config,
    to_engine_config,
)
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


@dataclass
class ServiceDecision:
    apply: ServingConfig | None  # the configuration to render and apply, None to leave the Deployment alone
    surge: bool
    status: dict[str, Any]
    events: list[tuple[str, str, str]]  # (type, reason, message)
    action: str  # Applied, Held, Unchanged, Advised, Rejected


def _current_config(status: dict[str, Any]) -> ServingConfig | None:
    plan_status = status.get("plan") or {}
    if not plan_status.get("precision"):
        return None
    return ServingConfig(
        precision=plan_status["precision"],
        tensor_parallel=plan_status.get("tensorParallel", 1),
        max_num_seqs=plan_status.get("maxNumSeqs", 256),
        max_num_batched_tokens=plan_status.get("maxNumBatchedTokens", 8192),
        replicas=plan_status.get("replicas", 1),
        kv_cache_dtype=plan_status.get("kvCacheDtype"),
        gpu_power_limit_watts=plan_status.get("gpuPowerLimitWatts"),
    )


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def stabilised_rate(measured: float, peak: float | None, peak_at: float | None, now: float,
                    window_s: float) -> tuple[float, float]:
    """(rate to plan for, when it was measured): the highest rate measured within `window_s`, held until it is
    older than that, then the current measurement. Like an autoscaler's scale-down stabilisation: a lull shorter
    than the window is noise in a Poisson stream, and planning for it shrinks the fleet only to grow it back.
    Times in seconds on any one clock; the benchmark's policy calls this same function."""
    if peak is not None and peak_at is not None and measured == peak and now - peak_at <= window_s / 2:
        return peak, peak_at  # the same rate again: a new timestamp at most twice a window (few status writes)
    if peak is None or peak_at is None or now - peak_at > window_s or measured >= peak:
        return measured, now
    return peak, peak_at


def offered_rate(finished_per_second: float, waiting_requests: float | None, window_s: float) -> float:
    """The load offered, not just served: a saturated fleet finishes fewer requests than arrive, and the rest
    queue. Counting the queue's growth over the window keeps a saturated plan from looking over-provisioned.
    The benchmark's policy calls this too."""
    return max(finished_per_second, 0.0) + max(waiting_requests or 0.0, 0.0) / max(window_s, 1.0)


def _load_peak(inputs: ServiceInputs) -> tuple[float, datetime] | None:
    """The stabilised measured rate and when it was measured (None without a measured rate)."""
    obs = inputs.observation
    if obs is None or obs.requests_per_second is None:
        return None
    observed = inputs.status.get("observed") or {}
    peak = observed.get("peakLoadRps")
    peak_at = _parse_time(observed.get("peakLoadAt"))
    rate, at = stabilised_rate(
        significant(offered_rate(obs.requests_per_second, obs.waiting_requests,
                                 inputs.telemetry_window_seconds)) or 0.0,
        float(peak) if peak is not None else None,
        peak_at.timestamp() if peak_at is not None else None,
        inputs.now.timestamp(),
        float(inputs.service.spec.reconfiguration.cooldown_seconds),
    )
    return rate, datetime.fromtimestamp(at, tz=inputs.now.tzinfo)


def _workload(inputs: ServiceInputs) -> tuple[Workload, str]:
    """The load to plan for: measured when telemetry has it (the highest rate within the cooldown, see
    `stabilised_rate`), else the last planned-for load, else the spec's."""
    spec = inputs.service.spec
    obs = inputs.observation
    plan_status = inputs.status.get("plan") or {}
    peak = _load_peak(inputs)
    if obs is not None and obs.requests_per_second is not None and peak is not None:
        # Requests still in the batch count too: a long-output workload finishes few requests per window.
        rate = peak[0]
        return Workload(
            requests_per_second=significant(rate) or 0.0,
            input_tokens=significant(obs.mean_input_tokens) or float(spec.workload.input_tokens),
            output_tokens=significant(obs.mean_output_tokens) or float(spec.workload.output_tokens),
        ), "measured"
    if plan_status.get("plannedLoadRps") is not None and inputs.observation is None and _current_config(inputs.status):
        return Workload(
            requests_per_second=float(plan_status["plannedLoadRps"]),
            input_tokens=float(plan_status.get("plannedInputTokens") or spec.workload.input_tokens),
            output_tokens=float(plan_status.get("plannedOutputTokens") or spec.workload.output_tokens),
        ), "held"
    return Workload(
        requests_per_second=spec.workload.requests_per_second,
        input_tokens=float(spec.workload.input_tokens),
        output_tokens=float(spec.workload.output_tokens),
    ), "spec"


def _power_correction(inputs: ServiceInputs, energy_model: EnergyModel, settings: OperatorSettings,
                      current: ServingConfig | None, workload: Workload) -> float:
    """Measured over predicted power for the running configuration, smoothed (EWMA) and bounded."""
    observed = inputs.status.get("observed") or {}
    previous = float(observed.get("powerCorrection") or 1.0)
    obs = inputs.observation
    dep = inputs.deployment
    if obs is None or current is None or dep.ready_replicas <= 0 or dep.updated_replicas < dep.replicas:
        return previous  # only a settled fleet says something about the model's error
    accelerator = get_accelerator(str(inputs.service.spec.accelerator.type))
    per_replica = Workload(workload.requests_per_second / max(dep.ready_replicas, 1), workload.input_tokens,
                           workload.output_tokens)
    predicted = energy_model.predict(model_shape(inputs.service), accelerator, to_engine_config(current),
                                     per_replica).watts * dep.ready_replicas
    if predicted <= 0 or obs.watts <= 0:
        return previous
    low, high = settings.power_correction_bounds
    ratio = min(max(obs.watts / predicted, low), high)
    alpha = settings.power_correction_smoothing
    updated = min(max((1 - alpha) * previous + alpha * ratio, low), high)
    # Hysteresis: move only on a change worth acting on, so a settled service stops rewriting its status.
    if abs(updated - previous) < 0.02 * previous:
        return previous
    return significant(updated, 3) or 1.0


LATENCY_CORRECTION_BOUNDS = (0.5, 5.0)


def _latency_correction(inputs: ServiceInputs, energy_model: EnergyModel, settings: OperatorSettings,
                        current: ServingConfig | None, workload: Workload) -> tuple[float, float]:
    """Measured over predicted p95 TTFT and ITL of the running configuration, smoothed and bounded.

    The queueing the model predicts is an approximation; the measured latency is not. Planning against
    SLO / correction keeps the SLO met where the model is optimistic, and lets it spend less where it is not."""
    observed = inputs.status.get("observed") or {}
    previous = (float(observed.get("ttftCorrection") or 1.0), float(observed.get("itlCorrection") or 1.0))
    obs = inputs.observation
    dep = inputs.deployment
    if obs is None or current is None or dep.ready_replicas <= 0 or dep.updated_replicas < dep.replicas \
            or not obs.requests_per_second:
        return previous
    predicted = evaluate_config(inputs.service, current, workload, profile=inputs.profile, energy_model=energy_model)
    if predicted is None:
        return previous
    low, high = LATENCY_CORRECTION_BOUNDS
    alpha = settings.power_correction_smoothing
    out = []
    for before, measured, model in ((previous[0], obs.ttft_p95_seconds, predicted.ttft_p95_seconds),
                                    (previous[1], obs.itl_p95_seconds, predicted.itl_p95_seconds)):
        if not measured or not model or not math.isfinite(model) or model <= 0:
            out.append(before)
            continue
        # The running plan was made with `before` applied, so the model's own error is measured / model.
        updated = min(max((1 - alpha) * before + alpha * (measured / model), low), high)
        out.append(before if abs(updated - before) < 0.05 * before else (significant(updated) or 1.0))
    return out[0], out[1]


def _plan_status(candidate: Candidate | None, config: ServingConfig, result: PlanResult | None,
                 workload: Workload, now: datetime, reason: str) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in config.to_wire().items()}
    out.update({
        "reason": reason,
        "plannedLoadRps": significant(workload.requests_per_second),
        "plannedInputTokens": significant(workload.input_tokens),
        "plannedOutputTokens": significant(workload.output_tokens),
        "decidedAt": _iso(now),
    })
    if candidate is not None:
        out["predicted"] = {k: v for k, v in predicted_figures(candidate).items() if v is not None}
    if result is not None:
        out["binding"] = result.binding
        out["feasible"] = result.feasible
        if result.runner_up is not None:
            r = result.runner_up
            out["runnerUp"] = f"{r.config.short()} x{r.replicas}: {r.joules_per_token:.3f} J/token, {r.total_watts:.0f} W"
    return out


def _short(config: ServingConfig) -> str:
    text = f"{config.precision} tp{config.tensor_parallel} seqs{config.max_num_seqs} tokens{config.max_num_batched_tokens}"
    return f"{text} x{config.replicas}"


def _append_decision(status: dict[str, Any], now: datetime, action: str, reason: str, configuration: str | None,
                     kept: int) -> None:
    decisions = list(status.get("decisions") or [])
    last = decisions[-1] if decisions else None
    if last and last.get("action") == action and last.get("configuration") == configuration \
            and last.get("reason") == reason:
        return  # the same decision again: no new entry, so a held service stays quiet
    decisions.append({"time": _iso(now), "action": action, "reason": reason, "configuration": configuration})
    status["decisions"] = decisions[-kept:]


def _run_planner(inputs: ServiceInputs, energy_model: EnergyModel, workload: Workload, cap: float | None,
                 correction: float, only: ServingConfig | None,
                 latency: tuple[float, float] = (1.0, 1.0)) -> PlanResult:
    request = plan_request(inputs.service, workload, cap, correction, inputs.profile, only=only,
                           latency_correction=latency, power_limits=inputs.power_limits)
    return plan(request, energy_model)


def decide(inputs: ServiceInputs, energy_model: EnergyModel, settings: OperatorSettings) -> ServiceDecision:
    svc = inputs.service
    spec = svc.spec
    now = inputs.now
    generation = svc.metadata.generation
    old = inputs.status
    status: dict[str, Any] = {k: v for k, v in old.items()}
    conditions: list[dict[str, Any]] = list(old.get("conditions") or [])
    events: list[tuple[str, str, str]] = []
    current = _current_config(old)
    spec_changed = old.get("observedGeneration") != generation
    dep = inputs.deployment

    def cond(type_: str, ok: bool | None, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, ok, reason, message, now, generation)

    # Telemetry: silence is not zero.
    obs = inputs.observation
    if obs is not None:
        cond("TelemetryAvailable", True, "Measured", f"{obs.pods_reporting} pods reporting ({obs.power_source})")
    elif dep.ready_replicas > 0:
        cond("TelemetryAvailable", False, "TelemetryUnavailable",
             f"{inputs.telemetry_error or 'no measurements'}; holding the last configuration")
    else:
        cond("TelemetryAvailable", None, "NoPods", "no ready replicas to measure yet")

    workload, load_source = _workload(inputs)
    correction = _power_correction(inputs, energy_model, settings, current, workload)
    latency = _latency_correction(inputs, energy_model, settings, current, workload)
    alloc = inputs.allocation
    cap = alloc.watts if alloc.enforced else None

    # The plan: pinned as written, or searched.
    result: PlanResult | None = None
    candidate: Candidate | None = None
    try:
        if spec.mode == ServiceMode.PINNED and spec.pinned is not None:
            proposed = spec.pinned
            candidate = evaluate_config(svc, proposed, workload, correction, inputs.profile, energy_model)
            reason = "pinned in spec; the operator only measures"
        else:
            only = current if (current is not None and not spec.reconfiguration.allow_disruptive) else None
            result = _run_planner(inputs, energy_model, workload, cap, correction, only, latency)
            if result.chosen is None:
                message = f"no configuration can serve {spec.model.name} on {spec.accelerator.type}: {result.reason}"
                cond("Degraded", True, "NoFeasibleConfiguration", message)
                cond("Ready", dep.ready_replicas > 0, "NoFeasibleConfiguration" if dep.ready_replicas == 0 else
                     "HoldingLastConfiguration", message)
                if old.get("observedGeneration") != generation or not any(
                        c.get("reason") == "NoFeasibleConfiguration" for c in old.get("conditions") or []):
                    events.append(("Warning", "NoFeasibleConfiguration", message))
                _append_decision(status, now, "Rejected", message, None, settings.decisions_kept)
                status["conditions"] = conditions
                status["observedGeneration"] = generation
                return ServiceDecision(None, True, _clean(status), events, "Rejected")
            candidate = result.chosen
            proposed = to_api_config(candidate)
            reason = result.reason
    except (ValueError, RenderError) as err:
        message = f"cannot plan: {err}"
        cond("Degraded", True, "InvalidSpec", message)
        events.append(("Warning", "InvalidSpec", message))
        status["conditions"] = conditions
        status["observedGeneration"] = generation
        return ServiceDecision(None, True, _clean(status), events, "Rejected")

    # Render once to reject specs that cannot become a command line (extra args overriding planned flags).
    try:
        vllm_argv(svc, proposed)
    except RenderError as err:
        message = f"cannot render the vLLM command: {err}"
        cond("Degraded", True, "InvalidSpec", message)
        if spec_changed:
            events.append(("Warning", "InvalidSpec", message))
        status["conditions"] = conditions
        status["observedGeneration"] = generation
        return ServiceDecision(None, True, _clean(status), events, "Rejected")

    # The switching rule.
    apply_config: ServingConfig | None = None
    action = "Unchanged"
    why = ""
    current_hash_matches = dep.exists and current is not None and dep.config_hash == config_hash(svc, current)
    if current is None or not dep.exists:
        apply_config, action, why = proposed, "Applied", f"initial plan: {reason}"
    elif spec_changed and proposed != current:
        apply_config, action, why = proposed, "Applied", f"spec changed: {reason}"
    elif not current_hash_matches and proposed == current:
        apply_config, action, why = proposed, "Applied", "Deployment drifted from the plan; re-applied"
    elif proposed == current:
        action = "Unchanged"
    elif obs is None and load_source != "spec":
        action, why = "Held", f"telemetry unavailable, holding {_short(current)} (would move to {_short(proposed)})"
    else:
        running = evaluate_config(svc, current, workload, correction, inputs.profile, energy_model)
        # Two ways over the allocation: the running plan cannot fit it even by prediction (the allocation was cut,
        # so act now), or it should fit but measures over (judge that only once the fleet has settled).
        allocation_cut = cap is not None and running is not None and running.total_watts > cap * 1.02
        measured_over = cap is not None and obs is not None and obs.watts > cap * 1.02
        over_budget = allocation_cut or measured_over
        more = (proposed.replicas * proposed.tensor_parallel > current.replicas * current.tensor_parallel
                or proposed.max_num_seqs > current.max_num_seqs or more_capacity(running, candidate))
        needs_capacity = more and (obs is None or (obs.waiting_requests or 0) > 0 or _slo_missed(inputs))
        forced = over_budget or needs_capacity or spec_changed
        last_applied = _parse_time(old.get("lastAppliedAt"))
        cooldown = timedelta(seconds=spec.reconfiguration.cooldown_seconds)
        rolling = dep.updated_replicas < dep.replicas or dep.ready_replicas < dep.replicas
        since_s = (now - last_applied).total_seconds() if last_applied is not None else None
        settle_s = settings.telemetry_window_seconds + TERMINATION_GRACE_SECONDS
        if forced and not (spec_changed or allocation_cut) and not settled(since_s, settle_s, rolling):
            # Judge a configuration only on measurements of it: until the roll is done, the old pods have drained
            # and a telemetry window has passed, telemetry shows the old fleet too, and acting on it flaps.
            action, why = "Held", f"settling after the last change before moving to {_short(proposed)}"
        elif not forced and last_applied is not None and now - last_applied < cooldown:
            # An absolute time, not "N s left": the reason must not change every tick, or every tick would write.
            action, why = "Held", f"cooldown until {_iso(last_applied + cooldown)} before moving to {_short(proposed)}"
        else:
            verdict = None
            if not forced and result is not None and candidate is not None:
                current_candidate = evaluate_config(svc, current, workload, correction, inputs.profile,
                                                    energy_model)
                accelerator = get_accelerator(str(spec.accelerator.type))
                verdict = should_switch(current_candidate, candidate, float(spec.reconfiguration.horizon_seconds),
                                        model_shape(svc), accelerator)
            if verdict is not None and not verdict.switch:
                action, why = "Held", f"keeping {_short(current)}: {verdict.reason}"
            else:
                cause = "over the power allocation" if over_budget else (
                    "more capacity needed" if needs_capacity else (verdict.reason if verdict else reason))
                apply_config, action, why = proposed, "Applied", f"{cause}: {reason}"

    # Advise-mode budgets: say what would change, change nothing.
    if alloc.advised_watts is not None and spec.mode != ServiceMode.PINNED and current is not None:
        advised = _run_planner(inputs, energy_model, workload, alloc.advised_watts, correction, None, latency)
        if advised.chosen is not None:
            advised_config = to_api_config(advised.chosen)
            if advised_config != (apply_config or current):
                text = (f"budget {alloc.advised_budget} (Advise) would move to {_short(advised_config)} to fit "
                        f"{alloc.advised_watts:.0f} W")
                before = len(status.get("decisions") or [])
                _append_decision(status, now, "Advised", text, _short(advised_config), settings.decisions_kept)
                if len(status.get("decisions") or []) != before:
                    events.append(("Normal", "Advised", text))

    effective = apply_config or current or proposed
    if apply_config is not None:
        status["plan"] = _plan_status(candidate, apply_config, result, workload, now, why)
        status["lastAppliedAt"] = _iso(now)
        _append_decision(status, now, "Applied", why, _short(apply_config), settings.decisions_kept)
        events.append(("Normal", "Reconfigured" if current is not None else "Planned",
                       f"{_short(apply_config)}: {why}"))
    elif action == "Held":
        before = len(status.get("decisions") or [])
        _append_decision(status, now, "Held", why, _short(proposed), settings.decisions_kept)
        if len(status.get("decisions") or []) != before:
            events.append(("Normal", "Held", why))

    # Observed figures, rounded so that noise does not cause writes.
    if obs is not None:
        status["observed"] = {k: v for k, v in {
            "watts": significant(obs.watts), "joulesPerToken": significant(obs.joules_per_token),
            "tokensPerSecond": significant(obs.output_tokens_per_second), "requestsPerSecond": significant(obs.requests_per_second),
            "ttftP95Seconds": significant(obs.ttft_p95_seconds), "itlP95Seconds": significant(obs.itl_p95_seconds),
            "runningRequests": significant(obs.running_requests), "waitingRequests": significant(obs.waiting_requests),
            "powerCorrection": correction, "ttftCorrection": latency[0], "itlCorrection": latency[1],
        }.items() if v is not None}
        peak = _load_peak(inputs)
        if peak is not None:
            status["observed"].update({"peakLoadRps": peak[0], "peakLoadAt": _iso(peak[1])})
    elif correction != 1.0 or latency != (1.0, 1.0):
        status.setdefault("observed", {}).update(
            {"powerCorrection": correction, "ttftCorrection": latency[0], "itlCorrection": latency[1]})
    alloc_status = alloc.to_status()
    if alloc_status is None:
        status.pop("allocation", None)
    else:
        status["allocation"] = alloc_status

    # Conditions.
    desired = effective.replicas
    ready = dep.ready_replicas >= desired and (desired == 0 or dep.ready_replicas > 0)
    rolling = apply_config is not None or (dep.exists and (dep.updated_replicas < desired or dep.ready_replicas < desired))
    cond("Ready", ready and apply_config is None, "AllReplicasReady" if ready else "ReplicasNotReady",
         f"{dep.ready_replicas}/{desired} replicas ready")
    cond("Progressing", rolling, "RollingOut" if rolling else "Stable",
         f"rolling out {_short(effective)}" if rolling else f"serving {_short(effective)}")
    slo_state, slo_reason, slo_message = _slo_condition(inputs, status)
    cond("SLOMet", slo_state, slo_reason, slo_message)
    within, within_reason, within_message = _budget_condition(inputs, status, cap, alloc)
    cond("WithinBudget", within, within_reason, within_message)
    feasible = result.feasible if result is not None else True
    if feasible:
        cond("Degraded", False, "AsPlanned", "the plan meets both SLOs within the allocation")
    else:
        cond("Degraded", True, "Fallback", f"{spec.fallback}: {result.reason if result else ''}")

    status["conditions"] = conditions
    status["observedGeneration"] = generation
    status["replicas"] = dep.replicas
    status["readyReplicas"] = dep.ready_replicas
    surge = cap is None or _headroom(inputs, candidate, cap)
    return ServiceDecision(apply_config, surge, _clean(status), events, action)


def settled(since_last_change_s: float | None, settle_s: float, rolling: bool) -> bool:
    """Whether the running configuration has been measured long enough to be judged: its roll is done and
    `settle_s` (a telemetry window, plus the old pods' drain) has passed since it was applied. The benchmark's
    policy calls this too."""
    if rolling:
        return False
    return since_last_change_s is None or since_last_change_s >= settle_s


def more_capacity(running: Candidate | None, proposed: Candidate | None) -> bool:
    """Whether the proposal carries the load with more headroom than the running plan: a lower utilisation at
    the same load (1 x TP4 -> 1 x TP8 is more capacity with as many replicas). The benchmark's policy calls this."""
    if proposed is None:
        return False
    if running is None:
        return True
    return proposed.prediction.utilisation < running.prediction.utilisation


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


def _budget_condition(inputs: ServiceInputs, status: dict[str, Any], cap: float | None,
                      alloc: Allocation) -> tuple[bool | None, str, str]:
    if not alloc.budgets:
        return True, "NoBudget", "no EnergyBudget selects this service"
    limit = cap if cap is not None else alloc.advised_watts
    if limit is None:
        return None, "NoAllocation", f"budgets {', '.join(alloc.budgets)} have not allocated watts yet"
    source = "measured" if inputs.observation is not None else "predicted"
    watts = inputs.observation.watts if inputs.observation is not None else \
        ((status.get("plan") or {}).get("predicted") or {}).get("watts")
    bound = f"allocation {limit:.0f} W from budget {alloc.budget or alloc.advised_budget}"
    if len(alloc.budgets) > 1:
        bound += f" (the tightest of {', '.join(alloc.budgets)})"
    if watts is None:
        return None, "NoMeasurement", bound
    ok = watts <= limit * 1.02
    return ok, ("WithinAllocation" if ok else "OverAllocation"), f"{source} {watts:.0f} W against {bound}"


def _headroom(inputs: ServiceInputs, candidate: Candidate | None, cap: float) -> bool:
    """Roll with surge only when one more replica fits under the allocation."""
    if candidate is None or candidate.replicas <= 0:
        return True
    per_replica = candidate.total_watts / candidate.replicas
    return candidate.total_watts + per_replica <= cap


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}s"


def _clean(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if v is not None}

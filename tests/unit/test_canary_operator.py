"""The operator's side of the canary (control/types.py Canary): its pods told apart from the fleet's, its
Deployment rendered, its status round trip, the reconcile's create/delete decision, settings, events, budgets."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from wattkeeper.api import LLMService
from wattkeeper.control import Canary, Memory, Plan, RecentConfiguration
from wattkeeper.controller.decide import (
    Allocation,
    DeploymentState,
    ServiceInputs,
    canaries_ended_status,
    canary_events,
    canary_plan,
    canary_status,
    decide,
    measured_watts,
    memory_from_status,
    tick_inputs,
)
from wattkeeper.controller.services import (
    canary_conflict,
    canary_expected,
    canary_pods_selector,
    canary_write,
    deployment_drift,
    is_canary_of,
    pods_selector,
    scrape_selectors,
)
from wattkeeper.controller.settings import OperatorSettings
from wattkeeper.controller.snapshot import Snapshot
from wattkeeper.energy.model import EnergyModel
from wattkeeper.energy.types import ServingConfig, Workload
from wattkeeper.render import canary_name, config_hash, render_canary_deployment, render_deployment, render_service
from wattkeeper.telemetry import ServiceObservation, TelemetryUnavailable
from wattkeeper.telemetry.base import pod_name_pattern
from wattkeeper.telemetry.batch import service_of_pod

from tests.support.canary import fake_canary
from tests.support.run_flags import settings_from_run_flags

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
FLEET = Plan(ServingConfig("bf16", 2, 256, 8192), 2)
CANARY = Plan(ServingConfig("fp8", 1, 128, 4096), 1)
EM = EnergyModel.default()


def service(name: str = "chat", mode: str | None = None) -> LLMService:
    spec: dict[str, Any] = {
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "parametersBillions": 8},
        "quality": {"allowedPrecisions": ["bf16", "fp8"]},
        "slo": {"ttftP95Seconds": 2.0, "itlP95Seconds": 0.1},
    }
    if mode == "Pinned":
        spec |= {"mode": "Pinned", "pinned": {"precision": "bf16", "tensorParallel": 2, "replicas": 2}}
    return LLMService.model_validate({"metadata": {"name": name, "namespace": "ns", "generation": 1, "uid": "u-1"},
                                      "spec": spec})


def settings(**kw: Any) -> OperatorSettings:
    return OperatorSettings(metrics_port=0, health_port=0, **kw)


# --- telemetry ---------------------------------------------------------------------------------------------------


def test_the_fleets_pod_pattern_leaves_the_canarys_pods_out() -> None:
    """PromQL regexes are anchored: the fleet's pattern, as the queries use it, does not match canary pods."""
    def matches(pattern: str, pod: str) -> bool:
        return re.fullmatch(pattern, pod) is not None

    assert matches(pod_name_pattern("svc"), "svc-7d9f8c6b5-xk2lp")
    assert not matches(pod_name_pattern("svc"), "svc-canary-abc12-xyz9")
    assert matches(pod_name_pattern(canary_name("svc")), "svc-canary-abc12-xyz9")
    assert not matches(pod_name_pattern(canary_name("svc")), "svc-7d9f8c6b5-xk2lp")
    # The Prometheus batch attributes pods by name the same way: a canary's pods are its Deployment's.
    assert service_of_pod("svc-canary-abc12-xyz9") == canary_name("svc")
    assert service_of_pod("svc-7d9f8c6b5-xk2lp") == "svc"


def test_label_selectors_tell_the_canary_pods_apart() -> None:
    assert pods_selector("svc") == "wattkeeper.io/service=svc,wattkeeper.io/role!=canary"
    assert canary_pods_selector("svc") == "wattkeeper.io/service=svc,wattkeeper.io/role=canary"
    assert scrape_selectors("svc") == [pods_selector("svc")]
    assert scrape_selectors(canary_name("svc")) == [pods_selector("svc-canary"), canary_pods_selector("svc")]


class Recording:
    """A telemetry source (not Prometheus: one call per Deployment) that records what it was asked."""

    def __init__(self, fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.asked: list[tuple[str, str]] = []
        self.fail = fail

    def observe_service(self, namespace: str, name: str, window_seconds: float) -> ServiceObservation:
        self.asked.append((namespace, name))
        if name in self.fail:
            raise TelemetryUnavailable("silent")
        return ServiceObservation(watts=700.0 if name.endswith("-canary") else 1000.0)


def _snapshot(statuses: dict[str, dict[str, Any]], deployments: list[str]) -> Snapshot:
    ready = {"status": {"readyReplicas": 1}}
    return Snapshot(
        services={("ns", n): {"metadata": {"name": n, "namespace": "ns"}, "status": s} for n, s in statuses.items()},
        budgets={}, profiles={},
        deployments={("ns", d): {"metadata": {"name": d, "namespace": "ns"}, **ready} for d in deployments},
        core_services={},
    )


def test_a_canary_is_measured_only_while_status_says_one_runs() -> None:
    with_canary = {"canary": canary_status(Canary(CANARY, NOW.timestamp()), NOW)}
    snap = _snapshot({"a": {}, "b": with_canary}, ["a", "b", "a-canary", "b-canary"])
    source = Recording()
    snap.measure(SimpleNamespace(telemetry=source, settings=settings()))  # type: ignore[arg-type]
    assert sorted(source.asked) == [("ns", "a"), ("ns", "b"), ("ns", "b-canary")]  # a's stray canary: no query
    reads = snap.reads("ns", "b")
    assert reads.canary_deployment is not None and isinstance(reads.canary_observation, ServiceObservation)
    assert snap.reads("ns", "a").canary_observation is None
    # A service named like another's canary is measured as itself, never as that canary.
    clash = _snapshot({"b": with_canary, "b-canary": {}}, ["b", "b-canary"])
    clash.measure(SimpleNamespace(telemetry=Recording(), settings=settings()))  # type: ignore[arg-type]
    assert clash.reads("ns", "b").canary_observation is None


def test_canary_expected_reads_status() -> None:
    assert not canary_expected({})
    assert canary_expected({"canary": canary_status(Canary(CANARY, NOW.timestamp()), NOW)})


# --- rendering ---------------------------------------------------------------------------------------------------


def test_the_canary_deployment() -> None:
    svc = service()
    canary = render_canary_deployment(svc, Plan(CANARY.config, 3))  # always one replica
    main = render_deployment(svc, FLEET)
    assert canary["metadata"]["name"] == "chat-canary" and canary["spec"]["replicas"] == 1
    assert canary["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert canary["metadata"]["ownerReferences"][0]["kind"] == "LLMService"
    labels = canary["spec"]["template"]["metadata"]["labels"]
    assert labels["wattkeeper.io/role"] == "canary" and canary["metadata"]["labels"]["wattkeeper.io/role"] == "canary"
    # The Service's selector selects canary pods (they take their share of the traffic) ...
    assert render_service(svc)["spec"]["selector"].items() <= labels.items()
    # ... the canary's own selector only canary pods, and the main one carries no role label.
    selector = canary["spec"]["selector"]["matchLabels"]
    assert selector == {"wattkeeper.io/service": "chat", "wattkeeper.io/role": "canary"}
    assert "wattkeeper.io/role" not in main["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    # The canary's configuration: vLLM flags and GPUs.
    container = canary["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "1"
    assert args[args.index("--max-num-seqs") + 1] == "128"
    assert args[args.index("--max-num-batched-tokens") + 1] == "4096"
    assert args[args.index("--quantization") + 1] == "fp8"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert canary["metadata"]["annotations"]["wattkeeper.io/config-hash"] == config_hash(svc, CANARY)
    # The main Deployment is not touched by it.
    assert main["metadata"]["name"] == "chat" and main["spec"]["selector"]["matchLabels"] == {
        "wattkeeper.io/service": "chat"}


# --- reconcile: create, repair, delete -----------------------------------------------------------------------------


def test_canary_write_creates_repairs_and_deletes() -> None:
    svc = service()
    desired = render_canary_deployment(svc, CANARY)
    assert canary_write(desired, None, False) == "apply"  # none yet: create it
    assert canary_write(desired, desired, True) is None  # as it should be
    scaled = {**desired, "spec": {**desired["spec"], "replicas": 3}}
    assert deployment_drift(desired, scaled) is not None and canary_write(desired, scaled, True) == "apply"
    other = render_canary_deployment(svc, Plan(ServingConfig("bf16", 4, 256, 8192), 1))
    assert canary_write(other, desired, True) == "apply"  # another configuration: rolled to it
    assert canary_write(None, desired, True) == "delete"  # the core says no canary: remove ours
    assert canary_write(None, None, False) is None
    foreign = render_deployment(service("chat-canary"), FLEET)  # LLMService chat-canary's own Deployment
    assert canary_write(desired, foreign, False) is None and canary_write(None, foreign, False) is None


def test_a_taken_name_blocks_the_canary() -> None:
    svc = service()
    ours = render_canary_deployment(svc, CANARY)
    assert is_canary_of(svc, ours) and canary_conflict(svc, None, ours) is None
    foreign = render_deployment(service("chat-canary"), FLEET)
    assert not is_canary_of(svc, foreign)
    assert "chat-canary" in (canary_conflict(svc, None, foreign) or "")
    # Owned by a service of the same name that was deleted and made again (another uid): not ours.
    stale = {**ours, "metadata": {**ours["metadata"], "ownerReferences": [{"kind": "LLMService", "uid": "old"}]}}
    assert not is_canary_of(svc, stale)
    # The LLMService named chat-canary: its Deployment's name is chat's canary.
    named = service("chat-canary")
    assert "canary of LLMService chat" in (canary_conflict(named, ours, None) or "")
    assert canary_conflict(named, render_deployment(named, FLEET), None) is None


# --- status round trip -----------------------------------------------------------------------------------------


def test_status_round_trip_of_the_canary() -> None:
    canary = Canary(CANARY, NOW.timestamp(), ready_s=NOW.timestamp() + 120, windows=3)
    ended = (RecentConfiguration("bf16 tp8 tok8192", NOW.timestamp() - 600),
             RecentConfiguration("fp8 tp2 tok4096", NOW.timestamp() - 60, 900.0, 4.5))
    memory = Memory(canary=canary, canaries_ended=ended)
    status: dict[str, Any] = {"canary": canary_status(canary, NOW),
                              "canariesEnded": canaries_ended_status(memory, NOW)}
    assert status["canary"]["configuration"] == CANARY.describe()
    assert status["canary"]["precision"] == "fp8" and status["canary"]["replicas"] == 1
    assert status["canary"]["startedAt"] == "2026-01-01T12:00:00Z"
    assert status["canariesEnded"][0] == {"configuration": "bf16 tp8 tok8192", "endedAt": "2026-01-01T11:50:00Z"}
    missed = replace(memory, canaries_ended=(replace(ended[0], failed=True),))
    assert canaries_ended_status(missed, NOW)[0]["failed"] is True
    assert memory_from_status({"canariesEnded": canaries_ended_status(missed, NOW)},
                              Workload(1.0)).canaries_ended == missed.canaries_ended
    back = memory_from_status(json.loads(json.dumps(status)), Workload(1.0))
    assert back.canary == canary and back.canaries_ended == ended
    assert canary_plan(status) == CANARY
    # Not started yet, or no canary: none.
    assert memory_from_status({}, Workload(1.0)).canary is None
    assert memory_from_status({"canary": {"precision": "fp8"}}, Workload(1.0)).canary is None
    # The status model takes the fields (the CRD is generated from it).
    LLMService.model_validate({**service().model_dump(by_alias=True), "status": status})


def test_tick_inputs_carry_the_canary_only_while_one_runs() -> None:
    svc = service()
    obs = ServiceObservation(watts=300.0, requests_per_second=2.0)
    dep = DeploymentState(True, config_hash(svc, CANARY), 1, 1, 1)
    none = tick_inputs(ServiceInputs(svc, {}, Allocation(), None, None, DeploymentState(), NOW,
                                     canary_deployment=dep, canary_observation=obs), settings(canaries=True))
    assert none.canary_signals is None and none.tuning.canaries
    status = {"canary": canary_status(Canary(CANARY, NOW.timestamp()), NOW)}
    inputs = ServiceInputs(svc, status, Allocation(), None, None, DeploymentState(), NOW,
                           canary_deployment=dep, canary_observation=obs)
    running = tick_inputs(inputs, settings(canaries=True))
    assert running.canary_signals is not None and running.canary_signals.watts == 300.0
    assert running.canary_fleet.exists and running.canary_fleet.matches_plan and not running.canary_fleet.rolling
    assert running.memory.canary is not None and running.memory.canary.plan == CANARY
    # Switched off, pinned, or the name taken: the core is told no canary may run.
    assert not tick_inputs(inputs, settings(canaries=False)).tuning.canaries
    assert not tick_inputs(replace(inputs, service=service(mode="Pinned")), settings(canaries=True)).tuning.canaries
    assert not tick_inputs(replace(inputs, canary_conflict="taken"), settings(canaries=True)).tuning.canaries


def test_tick_inputs_carry_the_operators_routing() -> None:
    inputs = ServiceInputs(service(), {}, Allocation(), None, None, DeploymentState(), NOW)
    assert not tick_inputs(inputs, settings()).tuning.per_request_routing
    assert tick_inputs(inputs, settings(per_request_routing=True)).tuning.per_request_routing


def test_settings_switch_canaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATTKEEPER_CANARIES", raising=False)
    assert OperatorSettings().canaries is False  # off by default, as in the core (Tuning.canaries)
    monkeypatch.setenv("WATTKEEPER_CANARIES", "true")
    assert OperatorSettings().canaries is True


def test_the_run_flag_switches_canaries_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from_run_flags(monkeypatch, "--canaries").canaries is True


# --- decide: status, events ------------------------------------------------------------------------------------


def test_decide_writes_the_canary_and_says_when_it_starts_and_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    svc = service()
    fake_canary(monkeypatch, CANARY, "fp8 tp1 would save 20%: measured beside the fleet first")
    first = decide(ServiceInputs(svc, {}, Allocation(), None, None, DeploymentState(), NOW), EM, settings(canaries=True))
    assert first.canary == CANARY
    assert first.status["canary"]["configuration"] == CANARY.describe()
    assert ("Normal", "CanaryStarted", "fp8 tp1 would save 20%: measured beside the fleet first") in first.events
    status = json.loads(json.dumps(first.status))
    again = decide(ServiceInputs(svc, status, Allocation(), None, None, DeploymentState(), NOW + timedelta(seconds=30)),
                   EM, settings(canaries=True))
    assert again.canary == CANARY and again.status["canary"] == status["canary"]  # unchanged: no write, no event
    assert not [e for e in again.events if e[1].startswith("Canary")]
    fake_canary(monkeypatch, None, "fp8 tp1 learned: margin 1.1")
    ended = decide(ServiceInputs(svc, status, Allocation(), None, None, DeploymentState(), NOW + timedelta(seconds=60)),
                   EM, settings(canaries=True))
    assert ended.canary is None and "canary" not in ended.status
    assert ended.status["canariesEnded"][0]["configuration"] == "fp8 tp1 tok4096"
    assert ("Normal", "CanaryEnded", "fp8 tp1 learned: margin 1.1") in ended.events


def test_decide_never_runs_a_canary_that_may_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_canary(monkeypatch, CANARY, "would save")
    for inputs, conf in (
        (ServiceInputs(service(mode="Pinned"), {}, Allocation(), None, None, DeploymentState(), NOW), settings(canaries=True)),
        (ServiceInputs(service(), {}, Allocation(), None, None, DeploymentState(), NOW), settings(canaries=False)),
        (ServiceInputs(service(), {}, Allocation(), None, None, DeploymentState(), NOW, canary_conflict="taken"),
         settings(canaries=True)),
    ):
        decision = decide(inputs, EM, conf)
        assert decision.canary is None and "canary" not in decision.status
        assert not [e for e in decision.events if e[1].startswith("Canary")]
    conflict = decide(ServiceInputs(service(), {}, Allocation(), None, None, DeploymentState(), NOW,
                                    canary_conflict="Deployment chat-canary is taken"), EM, settings(canaries=True))
    assert any(c["type"] == "NameConflict" and c["status"] == "True" for c in conflict.status["conditions"])
    clear = decide(ServiceInputs(service(), json.loads(json.dumps(conflict.status)), Allocation(), None, None,
                                 DeploymentState(), NOW), EM, settings(canaries=True))
    assert not any(c["type"] == "NameConflict" for c in clear.status["conditions"])


def test_a_change_without_telemetry_forgets_what_the_plan_before_carried() -> None:
    """status.observed.carriedRps belongs to the running plan (control/tick.py carried_rps): a plan applied in a
    tick without telemetry must not inherit it, and the status read stays as read (the patch is diffed against
    it)."""
    old = {"observed": {"carriedRps": 22.4, "powerCorrection": 1.0}}
    read = json.loads(json.dumps(old))
    decision = decide(ServiceInputs(service(), read, Allocation(), None, None, DeploymentState(), NOW), EM,
                      settings())
    assert decision.apply is not None  # the initial plan
    assert "carriedRps" not in (decision.status.get("observed") or {})
    assert read == old


def test_canary_events() -> None:
    other = Plan(ServingConfig("bf16", 4, 256, 8192), 1)
    assert canary_events(None, None, "") == [] and canary_events(CANARY, CANARY, "x") == []
    assert [e[1] for e in canary_events(None, CANARY, "")] == ["CanaryStarted"]
    assert [e[1] for e in canary_events(CANARY, None, "")] == ["CanaryEnded"]
    assert [e[1] for e in canary_events(CANARY, other, "")] == ["CanaryEnded", "CanaryStarted"]


# --- budgets -----------------------------------------------------------------------------------------------------


def test_the_canarys_watts_are_the_services() -> None:
    fleet = ServiceObservation(watts=1000.0)
    assert measured_watts(fleet, None) == 1000.0
    assert measured_watts(fleet, ServiceObservation(watts=350.0)) == 1350.0

"""The power-limit node agent against fake NVML: apply, restore, conflicts, restarts, unmanaged pods, safety."""

from __future__ import annotations

import threading

import pytest
from wattkeeper_runtime.agent import (
    ANNOTATION_REQUEST,
    PodInfo,
    PowerLimitAgent,
    decide,
    parse_request_watts,
)
from wattkeeper_runtime.podresources import PodRef, decode_device_owners
from wattkeeper_runtime.powercontrol import FakePowerLimitControl, LimitConstraints


class FakeDirectory:
    def __init__(self) -> None:
        self.pod_infos: dict[tuple[str, str], PodInfo] = {}
        self.reports: list[tuple[str, str, dict[str, float]]] = []
        self.fail = False

    def pods(self) -> dict[tuple[str, str], PodInfo]:
        if self.fail:
            raise ConnectionError("apiserver down")
        return dict(self.pod_infos)

    def report(self, namespace: str, name: str, applied_watts: dict[str, float], message: str) -> None:
        self.reports.append((namespace, name, dict(applied_watts)))

    def add(self, name: str, watts: str | None, managed: bool = True) -> None:
        self.pod_infos[("ns", name)] = PodInfo("ns", name, managed, watts)


class Owners:
    def __init__(self) -> None:
        self.map: dict[str, list[PodRef]] = {}
        self.fail = False

    def __call__(self) -> dict[str, list[PodRef]]:
        if self.fail:
            raise ConnectionError("kubelet socket gone")
        return {k: list(v) for k, v in self.map.items()}

    def hold(self, uuid: str, *pods: str) -> None:
        self.map[uuid] = [PodRef("ns", p, "vllm") for p in pods]


@pytest.fixture
def setup() -> tuple[FakePowerLimitControl, Owners, FakeDirectory, PowerLimitAgent]:
    gpus = FakePowerLimitControl.h100s(4)
    owners, pods = Owners(), FakeDirectory()
    return gpus, owners, pods, PowerLimitAgent(gpus, owners, pods)


def limits(gpus: FakePowerLimitControl) -> list[int]:
    return [g.limit_milliwatts for g in gpus.gpus]


def uuid(i: int) -> str:
    return f"GPU-fake0000-0000-0000-0000-{i:012d}"


def test_applies_a_managed_pods_request_and_reports_it(setup) -> None:
    gpus, owners, pods, agent = setup
    owners.hold(uuid(0), "llm-a")
    owners.hold(uuid(1), "llm-a")
    pods.add("llm-a", "450")
    agent.cycle()
    assert limits(gpus) == [450_000, 450_000, 700_000, 700_000]
    assert pods.reports == [("ns", "llm-a", {uuid(0): 450.0, uuid(1): 450.0})]
    assert agent.metrics.registry.get_sample_value(
        "wattkeeper_agent_gpu_power_limit_watts",
        {"gpu": "0", "uuid": uuid(0), "namespace": "ns", "pod": "llm-a", "state": "limited"}) == 450.0
    # Idempotent: a second pass writes nothing and reports nothing new.
    writes = len(gpus.sets)
    agent.cycle()
    assert len(gpus.sets) == writes and len(pods.reports) == 1


def test_changing_the_request_changes_the_limit_in_place(setup) -> None:
    gpus, owners, pods, agent = setup
    owners.hold(uuid(0), "llm-a")
    pods.add("llm-a", "450")
    agent.cycle()
    pods.add("llm-a", "350")
    agent.cycle()
    assert gpus.gpus[0].limit_milliwatts == 350_000
    pods.add("llm-a", None)  # the plan dropped the limit: back to the card's default
    agent.cycle()
    assert gpus.gpus[0].limit_milliwatts == 700_000 and uuid(0) not in agent.limited


def test_restores_the_default_when_the_pod_goes_away(setup) -> None:
    gpus, owners, pods, agent = setup
    owners.hold(uuid(2), "llm-a")
    pods.add("llm-a", "300")
    agent.cycle()
    assert gpus.gpus[2].limit_milliwatts == 300_000
    del pods.pod_infos[("ns", "llm-a")]  # deleted in the API, the kubelet still lists it while it terminates
    agent.cycle()
    assert gpus.gpus[2].limit_milliwatts == 700_000
    owners.map.clear()
    agent.cycle()
    assert limits(gpus) == [700_000] * 4


def test_never_below_the_minimum_nor_above_the_default(setup) -> None:
    gpus, owners, pods, agent = setup
    gpus.gpus[1].max_milliwatts = 750_000  # some boards allow more than their default: never raise power
    owners.hold(uuid(0), "low")
    owners.hold(uuid(1), "high")
    pods.add("low", "50")
    pods.add("high", "740")
    decisions = {d.uuid: d for d in agent.cycle()}
    assert gpus.gpus[0].limit_milliwatts == 200_000 and "clamped" in decisions[uuid(0)].reason
    assert gpus.gpus[1].limit_milliwatts == 700_000 and decisions[uuid(1)].state == "default"
    assert all(200_000 <= mw <= 700_000 for _, mw in gpus.sets)


def test_invalid_request_fails_closed(setup) -> None:
    gpus, owners, pods, agent = setup
    owners.hold(uuid(0), "llm-a")
    pods.add("llm-a", "400")
    agent.cycle()
    pods.add("llm-a", "lots")
    (d, *_) = agent.cycle()
    assert d.state == "invalid" and gpus.gpus[0].limit_milliwatts == 700_000
    assert parse_request_watts("-3")[1] and parse_request_watts("nan")[1] and parse_request_watts(" ") == (None, None)


def test_conflict_between_pods_gets_the_default(setup) -> None:
    gpus, owners, pods, agent = setup
    owners.hold(uuid(0), "llm-a", "llm-b")  # the kubelet lists one GPU for two pods: trust neither
    pods.add("llm-a", "300")
    pods.add("llm-b", "500")
    owners.hold(uuid(1), "llm-b")
    decisions = {d.uuid: d for d in agent.cycle()}
    assert decisions[uuid(0)].state == "conflict" and gpus.gpus[0].limit_milliwatts == 700_000
    # Each pod's own GPU gets its own request: pods on one node never set each other's GPUs.
    assert gpus.gpus[1].limit_milliwatts == 500_000


def test_refuses_the_gpu_of_an_unmanaged_pod(setup) -> None:
    gpus, owners, pods, agent = setup
    gpus.gpus[3].limit_milliwatts = 600_000  # someone else's choice, e.g. set by its owner with nvidia-smi
    owners.hold(uuid(3), "training-job")
    pods.add("training-job", "250", managed=False)  # even with our annotation: not ours to touch
    decisions = {d.uuid: d for d in agent.cycle()}
    assert decisions[uuid(3)].state == "refused" and decisions[uuid(3)].target_milliwatts is None
    assert gpus.gpus[3].limit_milliwatts == 600_000
    assert all(u != uuid(3) for u, _ in gpus.sets)
    assert not any(name == "training-job" for _, name, _ in pods.reports)


def test_restart_with_limits_left_behind(setup) -> None:
    gpus, owners, pods, agent = setup
    owners.hold(uuid(0), "llm-a")
    owners.hold(uuid(1), "llm-b")
    pods.add("llm-a", "400")
    pods.add("llm-b", "400")
    agent.cycle()
    # The agent dies without cleaning up (SIGKILL, OOM); meanwhile llm-b goes away and llm-a stays.
    del owners.map[uuid(1)]
    del pods.pod_infos[("ns", "llm-b")]
    gpus.gpus[2].limit_milliwatts = 300_000  # and a stray limit on a free GPU
    restarted = PowerLimitAgent(gpus, owners, pods)
    restarted.cycle()
    assert limits(gpus) == [400_000, 700_000, 700_000, 700_000]
    assert restarted.limited == {uuid(0)}


def test_sigterm_restores_every_limited_gpu(setup) -> None:
    gpus, owners, pods, agent = setup
    owners.hold(uuid(0), "llm-a")
    pods.add("llm-a", "400")
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop, 0.01))
    thread.start()
    for _ in range(200):
        if gpus.gpus[0].limit_milliwatts == 400_000:
            break
        stop.wait(0.01)
    assert gpus.gpus[0].limit_milliwatts == 400_000
    stop.set()  # what the SIGTERM handler does
    thread.join(5)
    assert limits(gpus) == [700_000] * 4


def test_fails_closed_when_the_kubelet_or_apiserver_is_unreadable(setup) -> None:
    gpus, owners, pods, agent = setup
    owners.hold(uuid(0), "llm-a")
    pods.add("llm-a", "400")
    agent.cycle()
    owners.fail = True
    agent.cycle()
    assert gpus.gpus[0].limit_milliwatts == 700_000
    owners.fail = False
    agent.cycle()
    assert gpus.gpus[0].limit_milliwatts == 400_000
    pods.fail = True
    agent.cycle()
    assert gpus.gpus[0].limit_milliwatts == 700_000
    assert agent.metrics.registry.get_sample_value("wattkeeper_agent_errors_total", {"kind": "api"}) == 1.0


def test_a_failed_set_restores_the_default(setup) -> None:
    gpus, owners, pods, agent = setup
    owners.hold(uuid(0), "llm-a")
    pods.add("llm-a", "400")
    agent.cycle()
    pods.add("llm-a", "300")
    gpus.gpus[0].fail_set = True  # e.g. the container lost root
    (d, *_) = agent.cycle()
    assert "failed" in d.reason
    gpus.gpus[0].fail_set = False
    agent.cycle()  # next pass applies it
    assert gpus.gpus[0].limit_milliwatts == 300_000


def test_decide_is_pure_and_names_the_rules() -> None:
    c = LimitConstraints(200_000, 700_000, 700_000)
    pods = {("ns", "a"): PodInfo("ns", "a", True, "500")}
    assert decide(0, "u", c, [], pods, False).target_milliwatts == 700_000
    assert decide(0, "u", c, [PodRef("ns", "a")], pods, False).target_milliwatts == 500_000
    assert ANNOTATION_REQUEST == "wattkeeper.io/gpu-power-limit-watts"


def test_decode_device_owners_keeps_every_claim() -> None:
    def msg(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    def pod(name: str, device: str) -> bytes:
        devices = msg(1, b"nvidia.com/gpu") + msg(2, device.encode())
        container = msg(1, b"vllm") + msg(2, devices)
        return msg(1, name.encode()) + msg(2, b"ns") + msg(3, container)

    data = msg(1, pod("a", "GPU-1")) + msg(1, pod("b", "GPU-1"))
    assert decode_device_owners(data) == {"GPU-1": [PodRef("ns", "a", "vllm"), PodRef("ns", "b", "vllm")]}


def test_no_report_for_a_managed_pod_that_never_asked(setup) -> None:
    _gpus, owners, pods, agent = setup
    owners.hold(uuid(0), "llm-a")
    pods.add("llm-a", None)
    agent.cycle()
    assert pods.reports == []
    pods.add("llm-a", "500")
    agent.cycle()
    pods.add("llm-a", None)
    agent.cycle()  # back to the default: said once
    assert [r[2] for r in pods.reports] == [{uuid(0): 500.0}, {uuid(0): 700.0}]

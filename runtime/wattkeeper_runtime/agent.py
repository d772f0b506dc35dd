"""The node agent for GPU power limits (`wattkeeper-runtime agent`, a DaemonSet, off by default in the chart).

How a limit travels (no restart anywhere): the operator plans `gpuPowerLimitWatts` and writes it as the annotation
`wattkeeper.io/gpu-power-limit-watts` onto the *running pods* of the service (a metadata patch of each Pod). It is
deliberately not on the Deployment's pod template: any template change, an annotation included, makes a new
ReplicaSet and rolls every pod. New pods of a rollout get the annotation on the operator's next tick (seconds);
until then they run at the card's default limit, which is the safe side. The agent on each node:
1. asks the kubelet's pod-resources API which container holds which GPU (UUIDs, from NVIDIA's device plugin),
2. lists the pods on its node (label `app.kubernetes.io/managed-by=wattkeeper` marks the managed ones),
3. for every GPU decides a limit (`decide`, pure): the managed holder's request clamped to
   [card minimum, card default]; the default for free GPUs, for managed pods without a valid request, and for
   GPUs two pods claim (conflict); GPUs of unmanaged pods are refused: never written (unless this agent wrote
   them earlier, then they go back to the default),
4. applies it with nvmlDeviceSetPowerManagementLimit where it differs from the card's current limit, and
5. reports: Prometheus metrics, the annotation `wattkeeper.io/gpu-power-limit-applied` on the pod, and an Event.
It fails closed: when the kubelet or the API server cannot be read, or a set fails, the GPUs it had limited go
back to their default limit. On SIGTERM it restores the default on every GPU it limited; at start every GPU that
no managed pod requests a limit for is set to its default (limits left behind by a previous agent included).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from .podresources import PodRef
from .powercontrol import LimitConstraints, PowerLimitControl, PowerLimitError

log = logging.getLogger(__name__)

ANNOTATION_REQUEST = "wattkeeper.io/gpu-power-limit-watts"
ANNOTATION_APPLIED = "wattkeeper.io/gpu-power-limit-applied"
MANAGED_LABEL = "app.kubernetes.io/managed-by"
MANAGED_VALUE = "wattkeeper"

State = Literal["limited", "default", "refused", "conflict", "invalid"]


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    managed: bool
    request_annotation: str | None = None  # the raw annotation, watts as a decimal number


@dataclass(frozen=True)
class Decision:
    index: int
    uuid: str
    target_milliwatts: int | None  # None: leave the GPU alone
    state: State
    reason: str
    pod: PodRef | None = None


def parse_request_watts(text: str | None) -> tuple[float | None, str | None]:
    """(watts, None) for a valid request, (None, None) when absent, (None, why) when malformed."""
    if text is None or text.strip() == "":
        return None, None
    try:
        watts = float(text)
    except ValueError:
        return None, f"annotation {ANNOTATION_REQUEST}={text!r} is not a number of watts"
    if not math.isfinite(watts) or watts <= 0:
        return None, f"annotation {ANNOTATION_REQUEST}={text!r} must be a positive number of watts"
    return watts, None


def decide(
    index: int,
    uuid: str,
    constraints: LimitConstraints,
    holders: list[PodRef],
    pods: Mapping[tuple[str, str], PodInfo],
    limited_by_us: bool,
) -> Decision:
    """The limit one GPU should have (pure). See the module docstring for the rules."""
    default = constraints.default_milliwatts
    distinct = sorted({(h.namespace, h.pod) for h in holders})
    if not distinct:
        return Decision(index, uuid, default, "default", "no pod holds this GPU")
    infos = [pods.get(key) for key in distinct]
    if any(info is not None and not info.managed for info in infos):
        owner = next(info for info in infos if info is not None and not info.managed)
        ref = PodRef(owner.namespace, owner.name)
        if limited_by_us:  # it was ours under a managed pod; hand it back as the card's default
            return Decision(index, uuid, default, "refused", "held by a pod Wattkeeper does not manage", ref)
        return Decision(index, uuid, None, "refused", "held by a pod Wattkeeper does not manage; left untouched", ref)
    if len(distinct) > 1:
        return Decision(index, uuid, default, "conflict",
                        f"claimed by {len(distinct)} pods ({', '.join('/'.join(k) for k in distinct)}); default")
    info = infos[0]
    ref = PodRef(*distinct[0])
    if info is None:  # the kubelet still lists a pod the API server no longer has: it is going away
        return Decision(index, uuid, default, "default", "its pod is gone", ref)
    watts, error = parse_request_watts(info.request_annotation)
    if error:
        return Decision(index, uuid, default, "invalid", error + "; default", ref)
    if watts is None:
        return Decision(index, uuid, default, "default", "no limit requested", ref)
    wanted = round(watts * 1000)
    target = constraints.clamp(wanted)
    reason = f"requested {watts:g} W"
    if target != wanted:
        reason += (f", clamped to {target / 1000:g} W (card minimum {constraints.min_milliwatts / 1000:g} W, "
                   f"default {default / 1000:g} W)")
    state: State = "limited" if target < default else "default"
    return Decision(index, uuid, target, state, reason, ref)


class PodDirectory(Protocol):
    """The agent's view of the API server: pods on its node, and where it reports what it applied."""

    def pods(self) -> dict[tuple[str, str], PodInfo]: ...

    def report(self, namespace: str, name: str, applied_watts: dict[str, float], message: str) -> None: ...


OwnerLister = Callable[[], dict[str, list[PodRef]]]


@dataclass
class AgentMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.limit = Gauge("wattkeeper_agent_gpu_power_limit_watts", "Power limit the agent left on the GPU, W.",
                           ["gpu", "uuid", "namespace", "pod", "state"], registry=self.registry)
        self.default = Gauge("wattkeeper_agent_gpu_default_power_limit_watts", "The card's default power limit, W.",
                             ["gpu", "uuid"], registry=self.registry)
        self.sets = Counter("wattkeeper_agent_power_limit_sets", "Power limits written to GPUs.", ["uuid"],
                            registry=self.registry)
        self.errors = Counter("wattkeeper_agent_errors", "Failures, by kind; each failed closed.", ["kind"],
                              registry=self.registry)


class PowerLimitAgent:
    """One node's agent. `cycle()` is one pass; `run()` repeats it until stopped, then restores defaults."""

    def __init__(self, control: PowerLimitControl, owners: OwnerLister, directory: PodDirectory,
                 metrics: AgentMetrics | None = None) -> None:
        self.control = control
        self.owners = owners
        self.directory = directory
        self.metrics = metrics or AgentMetrics()
        self.limited: set[str] = set()  # GPUs this process set below their default
        self._reported: dict[tuple[str, str], dict[str, float]] = {}

    def _set(self, index: int, uuid: str, target: int) -> None:
        if self.control.limit_milliwatts(index) != target:
            self.control.set_limit_milliwatts(index, target)
            self.metrics.sets.labels(uuid).inc()
            log.info("GPU %d (%s): power limit set to %.0f W", index, uuid, target / 1000)

    def _restore(self, index: int, uuid: str, constraints: LimitConstraints | None = None) -> bool:
        try:
            c = constraints or self.control.constraints(index)
            self._set(index, uuid, c.default_milliwatts)
        except PowerLimitError as error:
            self.metrics.errors.labels("restore").inc()
            log.error("GPU %d (%s): could not restore the default limit: %s", index, uuid, error)
            return False
        self.limited.discard(uuid)
        return True

    def fail_closed(self, why: str) -> None:
        """Every GPU this agent limited goes back to its default limit."""
        log.warning("failing closed (%s): restoring default limits", why)
        for index in range(self.control.count()):
            uuid = self.control.uuid(index)
            if uuid in self.limited:
                self._restore(index, uuid)

    def cycle(self) -> list[Decision]:
        try:
            owners = self.owners()
        except Exception as error:  # kubelet unreachable: no GPU can be attributed
            self.metrics.errors.labels("pod-resources").inc()
            self.fail_closed(f"pod-resources: {error}")
            return []
        try:
            pods = self.directory.pods()
        except Exception as error:
            self.metrics.errors.labels("api").inc()
            self.fail_closed(f"listing pods: {error}")
            return []
        decisions: list[Decision] = []
        self.metrics.limit.clear()
        applied: dict[tuple[str, str], dict[str, float]] = {}
        for index in range(self.control.count()):
            uuid = self.control.uuid(index)
            try:
                constraints = self.control.constraints(index)
            except PowerLimitError as error:
                self.metrics.errors.labels("nvml").inc()
                log.error("GPU %d: cannot read its limits: %s", index, error)
                continue
            d = decide(index, uuid, constraints, owners.get(uuid, []), pods, uuid in self.limited)
            if d.target_milliwatts is not None:
                try:
                    self._set(index, uuid, d.target_milliwatts)
                    if d.target_milliwatts < constraints.default_milliwatts:
                        self.limited.add(uuid)
                    else:
                        self.limited.discard(uuid)
                except PowerLimitError as error:
                    self.metrics.errors.labels("set").inc()
                    log.error("GPU %d (%s): %s; restoring the default", index, uuid, error)
                    self._restore(index, uuid, constraints)
                    d = Decision(index, uuid, constraints.default_milliwatts, "default",
                                 f"{d.reason}; setting it failed ({error}), default restored", d.pod)
            decisions.append(d)
            try:
                now_watts = self.control.limit_milliwatts(index) / 1000
            except PowerLimitError:
                now_watts = math.nan
            pod = d.pod or PodRef()
            self.metrics.limit.labels(str(index), uuid, pod.namespace, pod.pod, d.state).set(now_watts)
            self.metrics.default.labels(str(index), uuid).set(constraints.default_milliwatts / 1000)
            # Report on pods that asked for something (or were told before): a managed pod that never asked for a
            # limit gets no annotation and no Event.
            key = (pod.namespace, pod.pod)
            if d.pod is not None and d.state != "refused" and (
                    d.state != "default" or d.reason != "no limit requested" or key in self._reported):
                applied.setdefault(key, {})[uuid] = now_watts
        for (namespace, name), by_gpu in applied.items():
            if self._reported.get((namespace, name)) == by_gpu:
                continue
            reasons = "; ".join(f"{d.uuid}: {d.reason}" for d in decisions
                                if d.pod is not None and (d.pod.namespace, d.pod.pod) == (namespace, name))
            try:
                self.directory.report(namespace, name, by_gpu, reasons)
                self._reported[(namespace, name)] = by_gpu
            except Exception as error:  # reporting is best effort; the limit itself is in force
                self.metrics.errors.labels("report").inc()
                log.warning("could not report on pod %s/%s: %s", namespace, name, error)
        for gone in set(self._reported) - set(applied):
            self._reported.pop(gone, None)
        return decisions

    def shutdown(self) -> None:
        """SIGTERM: hand every limited GPU back at its default limit."""
        self.fail_closed("agent stopping")

    def run(self, stop: threading.Event, interval_seconds: float = 5.0) -> None:
        try:
            while not stop.is_set():
                self.cycle()
                stop.wait(interval_seconds)
        finally:
            self.shutdown()


class KubernetesPodDirectory:
    """Pods on one node through the API server (list with a field selector; patch the pod; post an Event)."""

    def __init__(self, node_name: str, kubeconfig: str | None = None, api_client: Any = None) -> None:
        from kubernetes import client, config

        if api_client is None:
            if kubeconfig:
                config.load_kube_config(config_file=kubeconfig)
            else:
                config.load_incluster_config()
        self._api = api_client or client.ApiClient()
        self._core: Any = client.CoreV1Api(self._api)  # Any: we hand it plain dicts, as the API accepts
        self.node_name = node_name

    def pods(self) -> dict[tuple[str, str], PodInfo]:
        result = self._core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node_name}",
                                                        _request_timeout=10)
        out: dict[tuple[str, str], PodInfo] = {}
        for pod in result.items:
            meta = self._api.sanitize_for_serialization(pod).get("metadata") or {}
            labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
            key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
            out[key] = PodInfo(*key, labels.get(MANAGED_LABEL) == MANAGED_VALUE, annotations.get(ANNOTATION_REQUEST))
        return out

    def report(self, namespace: str, name: str, applied_watts: dict[str, float], message: str) -> None:
        value = json.dumps({k: round(v, 1) for k, v in sorted(applied_watts.items())}, separators=(",", ":"))
        self._core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": {ANNOTATION_APPLIED: value}}},
                                        _request_timeout=10)
        event: dict[str, Any] = {
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {"kind": "Pod", "namespace": namespace, "name": name, "apiVersion": "v1"},
            "reason": "GpuPowerLimit",
            "message": f"on {self.node_name}: {message}"[:1000],
            "type": "Normal",
            "source": {"component": "wattkeeper-agent", "host": self.node_name},
        }
        self._core.create_namespaced_event(namespace, event, _request_timeout=10)
